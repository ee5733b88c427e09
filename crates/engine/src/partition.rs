//! A running partition: one QEMU process, its QMP session and its agent.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bulkhead_agent::{AgentClient, PowerAction, ReadyInfo};
use bulkhead_qmp::{wait_event, QmpClient};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

mod mirror;
mod region;

pub use mirror::MirrorJob;
pub(crate) use region::release_share_dir;
pub use region::RegionPlug;

use crate::cmdline::{self, ResolvedMachine};
use crate::jail::{self, Jail, Reveal};
use crate::spec::{AdapterSpec, DiskSpec, PartitionSpec};
use bulkhead_hostnet::tap;

use crate::{host, EngineError};

/// Where and how a partition's QEMU runs, beyond what the spec says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchOptions {
    /// Holds the QMP, agent and console sockets, the console log, the pid file
    /// and QEMU's own log. One directory per partition.
    pub run_dir: PathBuf,
    /// `cgroup.procs` files QEMU joins before it executes (CPU entitlement and
    /// memory limit), so no QEMU thread ever runs outside them.
    #[serde(default)]
    pub cgroup_procs: Vec<PathBuf>,
    /// seccomp sandbox as libvirt sets it.
    pub sandbox: bool,
    /// Unprivileged user QEMU runs as: with `confine`, QEMU is executed as
    /// this user from the start; without, QEMU drops to it itself (`-runas`)
    /// after opening its files.
    #[serde(default)]
    pub run_as: Option<String>,
    /// Run QEMU in its own mount namespace holding only /usr, a private /dev
    /// and the partition's own files (see `jail`), with the files it needs
    /// given to `run_as`.
    #[serde(default)]
    pub confine: bool,
    /// Kill QEMU when the `Partition` handle is dropped (tests, foreground runs).
    /// Off for a manager, whose partitions outlive it.
    #[serde(default)]
    pub kill_on_drop: bool,
    /// QEMU gets SIGKILL when this process dies, even by SIGKILL (foreground
    /// runs). Off for a manager, whose partitions it re-adopts.
    #[serde(default)]
    pub die_with_parent: bool,
    /// Named network namespace (`ip netns`) QEMU and its TAPs live in; the
    /// host's own when absent.
    #[serde(default)]
    pub netns: Option<String>,
}

impl LaunchOptions {
    pub fn new(run_dir: impl Into<PathBuf>) -> LaunchOptions {
        LaunchOptions {
            run_dir: run_dir.into(),
            cgroup_procs: Vec::new(),
            sandbox: true,
            run_as: None,
            confine: false,
            kill_on_drop: false,
            die_with_parent: false,
            netns: None,
        }
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.run_dir.join("qmp.sock")
    }
    pub fn agent_socket(&self) -> PathBuf {
        self.run_dir.join("agent.sock")
    }
    pub fn console_socket(&self) -> PathBuf {
        self.run_dir.join("console.sock")
    }
    pub fn console_log(&self) -> PathBuf {
        self.run_dir.join("console.log")
    }
    pub fn pidfile(&self) -> PathBuf {
        self.run_dir.join("qemu.pid")
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.run_dir.join("qemu.log")
    }
}

/// Why a partition's QEMU ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExitReason {
    /// The guest powered off (agent shutdown, ACPI power button, poweroff).
    Poweroff,
    /// The guest rebooted; QEMU runs with -no-reboot so that ends it.
    GuestReset,
    /// The guest kernel panicked; `message` is the panic line from its console.
    GuestPanic { message: String },
    /// QEMU was told to quit (QMP quit or SIGTERM).
    HostQuit,
    /// QEMU was killed by a signal without shutting down.
    Killed { signal: i32 },
    /// QEMU failed by itself; `message` is the end of its log.
    QemuError { message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub reason: ExitReason,
    /// The last lines of the guest console.
    pub console_tail: Vec<String>,
}

impl ExitInfo {
    /// Whether the partition ended the way nobody asked for.
    pub fn is_failure(&self) -> bool {
        matches!(
            self.reason,
            ExitReason::GuestPanic { .. }
                | ExitReason::Killed { .. }
                | ExitReason::QemuError { .. }
        )
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Poweroff => write!(f, "guest powered off"),
            ExitReason::GuestReset => write!(f, "guest reset"),
            ExitReason::GuestPanic { message } => write!(f, "guest panicked: {message}"),
            ExitReason::HostQuit => write!(f, "stopped by the host"),
            ExitReason::Killed { signal } => write!(f, "QEMU killed by signal {signal}"),
            ExitReason::QemuError { message } => write!(f, "QEMU failed: {message}"),
        }
    }
}

/// QEMU's run state as QMP reports it, simplified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Paused,
    Shutdown,
    Other,
}

/// A device hot-plugged into a running partition, kept so that a restore can
/// add it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotplugRecord {
    pub slot: u32,
    pub adapter: AdapterSpec,
    /// The fd sets holding the adapter's files in QEMU, removed with it.
    #[serde(default)]
    pub fdsets: Vec<u64>,
}

pub struct Partition {
    spec: PartitionSpec,
    opts: LaunchOptions,
    machine: ResolvedMachine,
    pid: u32,
    /// Identifies the process behind `pid` (its start time, in clock ticks
    /// since boot): a pid alone may be reused by another process.
    start_time: u64,
    /// QEMU's command line as the kernel shows it, recorded at spawn.
    proc_cmdline: Vec<u8>,
    /// Held from spawn or adoption: signals reach this process and no other.
    pidfd: Option<OwnedFd>,
    qmp: QmpClient,
    agent: AgentClient,
    taps: Vec<String>,
    exit: watch::Receiver<Option<ExitInfo>>,
    hotplugged: Mutex<BTreeMap<String, HotplugRecord>>,
    /// Watches QEMU; aborted with the handle so its QMP connection closes and
    /// a later `adopt` can connect (QEMU serves one QMP client at a time).
    monitor: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("name", &self.spec.name)
            .field("pid", &self.pid)
            .finish()
    }
}

struct Listeners {
    qmp: UnixListener,
    agent: UnixListener,
    console: UnixListener,
}

fn bind(path: &Path) -> Result<UnixListener, EngineError> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path)
        .map_err(|e| EngineError::Host(format!("binding {}: {e}", path.display())))
}

impl Partition {
    /// Starts the partition's QEMU and waits for its agent to report ready.
    pub async fn start(
        spec: PartitionSpec,
        opts: LaunchOptions,
        ready_timeout: Duration,
    ) -> Result<Partition, EngineError> {
        let p = Partition::launch(spec, opts).await?;
        match p.wait_ready(ready_timeout).await {
            Ok(_) => Ok(p),
            Err(e) => {
                let _ = p.kill().await;
                Err(e)
            }
        }
    }

    /// Starts QEMU (detached: it outlives this process) and connects to its
    /// QMP and agent sockets. The guest is booting when this returns.
    pub async fn launch(
        spec: PartitionSpec,
        opts: LaunchOptions,
    ) -> Result<Partition, EngineError> {
        Self::launch_with(spec, opts, None).await
    }

    /// [`Partition::launch`] with QEMU's `-incoming` (a restore: QEMU waits,
    /// paused, for its state; see `snapshot`).
    pub(crate) async fn launch_with(
        spec: PartitionSpec,
        opts: LaunchOptions,
        incoming: Option<String>,
    ) -> Result<Partition, EngineError> {
        spec.validate()?;
        let hostinfo = host::probe();
        let machine = ResolvedMachine::for_spec(&spec);
        let kvm = cmdline::use_kvm(spec.accel, hostinfo.hardware_kvm);
        if kvm && !Path::new("/dev/kvm").exists() {
            return Err(EngineError::InvalidSpec(
                "accel kvm asked for, but /dev/kvm does not exist".into(),
            ));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&opts.run_dir)
            .map_err(|e| EngineError::Host(format!("creating {}: {e}", opts.run_dir.display())))?;
        let _ = std::fs::remove_file(opts.pidfile());

        let macs = spec
            .nets()
            .map(|n| cmdline::mac_for(&spec.name, n))
            .collect();
        let taps = {
            let (spec, opts) = (spec.clone(), opts.clone());
            bulkhead_hostnet::blocking(move || create_taps(&spec, &opts)).await?
        };
        let spawned = Self::spawn(
            &spec,
            &opts,
            machine,
            (kvm, hostinfo.tsc_khz),
            &taps,
            macs,
            incoming,
        );
        match spawned.await {
            Ok((pid, child)) => {
                // Our unreaped child: the pid cannot have been reused yet.
                let id = Identity::read(pid).unwrap_or_default();
                match Self::connect(
                    spec.clone(),
                    opts.clone(),
                    machine,
                    pid,
                    id,
                    taps.clone(),
                    Some(child),
                )
                .await
                {
                    Ok(p) => Ok(p),
                    Err(e) => {
                        kill_pid(pid);
                        remove_taps(&taps, opts.netns.as_deref());
                        Err(e)
                    }
                }
            }
            Err(e) => {
                remove_taps(&taps, opts.netns.as_deref());
                Err(e)
            }
        }
    }

    async fn spawn(
        spec: &PartitionSpec,
        opts: &LaunchOptions,
        machine: ResolvedMachine,
        (kvm, tsc_khz): (bool, Option<u64>),
        taps: &[String],
        macs: Vec<String>,
        incoming: Option<String>,
    ) -> Result<(u32, tokio::process::Child), EngineError> {
        // The sockets are bound here and inherited by QEMU, as libvirt does:
        // clients can connect the moment QEMU exists, with no polling.
        let l = Listeners {
            qmp: bind(&opts.qmp_socket())?,
            agent: bind(&opts.agent_socket())?,
            console: bind(&opts.console_socket())?,
        };
        for p in [
            opts.qmp_socket(),
            opts.agent_socket(),
            opts.console_socket(),
        ] {
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
        }
        // Opened here, privileged, and inherited: the jailed QEMU could not
        // open the device itself (see `serial`).
        let serials = spec
            .serials
            .iter()
            .map(|s| crate::serial::open(&s.path))
            .collect::<Result<Vec<_>, _>>()
            .map_err(EngineError::InvalidSpec)?;
        let mut resolved = cmdline::Resolved {
            machine,
            kvm,
            tsc_khz,
            qmp_fd: l.qmp.as_raw_fd(),
            agent_fd: l.agent.as_raw_fd(),
            console_fd: l.console.as_raw_fd(),
            serial_fds: serials.iter().map(|f| f.as_raw_fd()).collect(),
            console_log: opts.console_log(),
            pidfile: opts.pidfile(),
            taps: taps.to_vec(),
            macs,
            sandbox: opts.sandbox,
            run_as: opts.run_as.clone(),
            incoming,
        };
        let mut qemu = host::qemu_binary();
        let mut jail = None;
        let args = if opts.confine {
            let (j, jspec) = confine(spec, opts, kvm, !taps.is_empty(), &mut qemu)?;
            jail = Some(j);
            // QEMU sees its files where the jail puts them, and starts unprivileged.
            resolved.console_log = Path::new(jail::JAIL_RUN).join("console.log");
            resolved.pidfile = Path::new(jail::JAIL_RUN).join("qemu.pid");
            resolved.run_as = None;
            cmdline::qemu_args(&jspec, &resolved)
        } else {
            cmdline::qemu_args(spec, &resolved)
        };
        tracing::debug!(partition = %spec.name, ?args, "starting QEMU");
        let log = std::fs::File::create(opts.qemu_log()).map_err(|e| {
            EngineError::Host(format!("creating {}: {e}", opts.qemu_log().display()))
        })?;
        let log2 = log
            .try_clone()
            .map_err(|e| EngineError::Host(format!("dup of QEMU log: {e}")))?;

        let mut inherit = vec![
            l.qmp.as_raw_fd(),
            l.agent.as_raw_fd(),
            l.console.as_raw_fd(),
        ];
        inherit.extend(serials.iter().map(|f| f.as_raw_fd()));
        let netns = match &opts.netns {
            Some(ns) => {
                let path = Path::new("/run/netns").join(ns);
                Some(std::fs::File::open(&path).map_err(|e| {
                    EngineError::InvalidSpec(format!("network namespace {ns}: {e}"))
                })?)
            }
            None => None,
        };
        let netns_fd = netns.as_ref().map(|f| f.as_raw_fd());
        let cgroups: Vec<CString> = opts
            .cgroup_procs
            .iter()
            .map(|p| CString::new(p.as_os_str().as_encoded_bytes()).expect("path without NUL"))
            .collect();
        let mut cmd = tokio::process::Command::new(&qemu);
        cmd.args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(false);
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe calls (setsid, fcntl, open, write, close,
        // and the jail's mount/mknod/pivot_root/setuid) on data prepared
        // before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = netns_fd {
                    if libc::setns(fd, libc::CLONE_NEWNET) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for &fd in &inherit {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for cg in &cgroups {
                    let fd = libc::open(cg.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let n = libc::write(fd, b"0\n".as_ptr().cast(), 2);
                    libc::close(fd);
                    if n < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Last: the cgroups above are joined while still privileged.
                if let Some(j) = &jail {
                    j.enter()?;
                }
                Ok(())
            });
        }
        let child = if opts.die_with_parent {
            crate::pdeath::die_with_parent(&mut cmd);
            crate::pdeath::spawn(cmd).await
        } else {
            cmd.spawn()
        };
        let child =
            child.map_err(|e| EngineError::QemuStart(format!("{}: {e}", qemu.display())))?;
        let pid = child
            .id()
            .ok_or_else(|| EngineError::QemuStart("QEMU exited at once".into()))?;
        // Our copies close here: if QEMU dies, clients see the socket close
        // instead of waiting on a listener nobody serves.
        drop(l);
        drop(netns);
        drop(serials);
        Ok((pid, child))
    }

    #[allow(clippy::too_many_arguments)]
    async fn connect(
        spec: PartitionSpec,
        opts: LaunchOptions,
        machine: ResolvedMachine,
        pid: u32,
        id: Identity,
        taps: Vec<String>,
        child: Option<tokio::process::Child>,
    ) -> Result<Partition, EngineError> {
        let qmp = match tokio::time::timeout(
            Duration::from_secs(60),
            QmpClient::connect(&opts.qmp_socket()),
        )
        .await
        {
            Ok(Ok(q)) => q,
            Ok(Err(e)) => {
                // Most often QEMU refused its command line: show why.
                let why = match child {
                    Some(mut c) => {
                        let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
                        tail_lines(&opts.qemu_log(), 10).join("\n")
                    }
                    None => String::new(),
                };
                return Err(if why.is_empty() {
                    EngineError::Qmp(e)
                } else {
                    EngineError::QemuStart(why)
                });
            }
            Err(_) => {
                return Err(EngineError::QemuStart(
                    "QEMU did not answer QMP within 60 s".into(),
                ))
            }
        };
        let agent = AgentClient::connect(&opts.agent_socket())
            .await
            .map_err(|e| EngineError::Agent(e.to_string()))?;
        let (tx, exit) = watch::channel(None);
        let monitor_qmp = qmp.clone();
        let monitor_opts = opts.clone();
        let monitor_taps = taps.clone();
        let events = qmp.events();
        let monitor = tokio::spawn(async move {
            let info = monitor(monitor_qmp, events, child, pid, &monitor_opts).await;
            tracing::info!(pid, reason = %info.reason, "partition exited");
            let (ns, run_dir) = (monitor_opts.netns.clone(), monitor_opts.run_dir.clone());
            bulkhead_hostnet::blocking(move || {
                remove_taps(&monitor_taps, ns.as_deref());
                release_share_dir(&run_dir);
            })
            .await;
            for s in [
                monitor_opts.qmp_socket(),
                monitor_opts.agent_socket(),
                monitor_opts.console_socket(),
            ] {
                let _ = std::fs::remove_file(s);
            }
            let _ = tx.send(Some(info));
        });
        let p = Partition {
            spec,
            opts,
            machine,
            pid,
            start_time: id.start_time,
            proc_cmdline: id.cmdline,
            pidfd: id.pidfd,
            qmp,
            agent,
            taps,
            exit,
            hotplugged: Mutex::new(BTreeMap::new()),
            monitor,
        };
        p.save_state()?;
        Ok(p)
    }

    /// Re-attaches to a partition whose QEMU is still running (after the
    /// caller restarted), from its run directory.
    ///
    /// The pid must still be the QEMU that was started: after a host reboot
    /// (or a QEMU that rewrote its pid file) it may be any other process, so
    /// its start time and command line are checked against those recorded at
    /// spawn before it is adopted, and it is signalled only through a pidfd.
    pub async fn adopt(spec: PartitionSpec, opts: LaunchOptions) -> Result<Partition, EngineError> {
        let saved: Option<SavedState> = std::fs::read(opts.run_dir.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        // The engine's own record (root's run directory) over QEMU's pid file,
        // which a confined QEMU can write.
        let pid: u32 = match &saved {
            Some(s) => s.pid,
            None => {
                let text = std::fs::read_to_string(opts.pidfile()).map_err(|e| {
                    EngineError::NotRunning(format!(
                        "no pid file {}: {e}",
                        opts.pidfile().display()
                    ))
                })?;
                text.trim().parse().map_err(|_| {
                    EngineError::NotRunning(format!("bad pid file {}", opts.pidfile().display()))
                })?
            }
        };
        if !pid_alive(pid) {
            return Err(EngineError::NotRunning(format!("QEMU pid {pid} is gone")));
        }
        let id = Identity::open(pid)
            .ok_or_else(|| EngineError::NotRunning(format!("QEMU pid {pid} is gone")))?;
        let ours = match saved
            .as_ref()
            .and_then(|s| s.start_time.zip(s.cmdline.as_ref()))
        {
            Some((start, cmdline)) => id.start_time == start && id.cmdline_args() == *cmdline,
            // Recorded by an engine that kept no identity: at least its name.
            None => id
                .cmdline_args()
                .iter()
                .any(|a| a.starts_with(&format!("guest={},", spec.name))),
        };
        if !ours {
            return Err(EngineError::NotRunning(format!(
                "pid {pid} is not the QEMU started for {} (start time or command line differ); not adopted",
                spec.name
            )));
        }
        let machine = ResolvedMachine::for_spec(&spec);
        let taps = spec
            .nets()
            .map(|n| cmdline::tap_for(&spec.name, n))
            .collect();
        let p = Self::connect(spec, opts, machine, pid, id, taps, None).await?;
        if let Some(s) = saved {
            *p.hotplugged.lock().expect("hotplug lock") = s.hotplugged;
        }
        Ok(p)
    }

    fn save_state(&self) -> Result<(), EngineError> {
        let s = SavedState {
            spec: self.spec.clone(),
            pid: self.pid,
            start_time: Some(self.start_time),
            cmdline: Some(split_cmdline(&self.proc_cmdline)),
            hotplugged: self.hotplugged.lock().expect("hotplug lock").clone(),
        };
        let path = self.opts.run_dir.join("state.json");
        let tmp = self.opts.run_dir.join("state.json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&s).expect("state serializes"),
        )
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| EngineError::Host(format!("writing {}: {e}", path.display())))
    }

    /// Waits until the agent answers, or the guest dies, or the time is up.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<ReadyInfo, EngineError> {
        let mut exit = self.exit.clone();
        tokio::select! {
            r = self.agent_ready(timeout) => match r {
                Ok(info) => Ok(info),
                Err(e) => {
                    if let Some(info) = self.exit_info() {
                        return Err(EngineError::GuestFailed { reason: info.reason.to_string(), console: info.console_tail.join("\n") });
                    }
                    Err(EngineError::NotReady {
                        timeout,
                        detail: e.to_string(),
                        console: tail_lines(&self.opts.console_log(), 15).join("\n"),
                    })
                }
            },
            _ = exit.wait_for(|e| e.is_some()) => {
                let info = self.exit_info().expect("exit info set");
                Err(EngineError::GuestFailed { reason: info.reason.to_string(), console: info.console_tail.join("\n") })
            }
        }
    }

    /// The guest drops bytes sent to a port its agent has not opened yet, so
    /// the hello is sent when QEMU reports the port open (VSERPORT_CHANGE),
    /// not on a timer: ready is seen the moment the agent can answer.
    async fn agent_ready(
        &self,
        timeout: Duration,
    ) -> Result<ReadyInfo, bulkhead_agent::AgentError> {
        let deadline = deadline_after(timeout);
        // Subscribe before probing: an open after this point is an event, an
        // open before it answers the probe.
        let mut events = self.qmp.events();
        let probe = Duration::from_millis(150).min(timeout);
        if let Ok(info) = self.agent.wait_ready(probe).await {
            return Ok(info);
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let _ = wait_event(&mut events, left, "agent port open", |e| {
            e.name == "VSERPORT_CHANGE"
                && e.data["id"] == cmdline::AGENT_PORT_ID
                && e.data["open"] == true
        })
        .await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.agent
            .wait_ready(left.max(Duration::from_millis(1)))
            .await
    }

    pub fn spec(&self) -> &PartitionSpec {
        &self.spec
    }
    pub fn options(&self) -> &LaunchOptions {
        &self.opts
    }
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGKILL to this QEMU only: through the pidfd held since spawn or
    /// adoption, so a reused pid is never hit.
    fn signal_kill(&self) {
        match &self.pidfd {
            Some(fd) => {
                // SAFETY: pidfd_send_signal with an fd we own and no siginfo.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    );
                }
            }
            None => kill_pid(self.pid),
        }
    }
    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }
    pub fn qmp(&self) -> &QmpClient {
        &self.qmp
    }
    pub fn console_log(&self) -> PathBuf {
        self.opts.console_log()
    }
    pub fn console_socket(&self) -> PathBuf {
        self.opts.console_socket()
    }
    pub fn taps(&self) -> &[String] {
        &self.taps
    }
    /// Devices hot-plugged so far, by adapter id.
    pub fn hotplugged(&self) -> Vec<HotplugRecord> {
        self.hotplugged
            .lock()
            .expect("hotplug lock")
            .values()
            .cloned()
            .collect()
    }

    /// The exit, if QEMU has ended.
    pub fn exit_info(&self) -> Option<ExitInfo> {
        self.exit.borrow().clone()
    }

    /// Resolves when QEMU has ended, with why.
    pub async fn wait_exit(&self) -> ExitInfo {
        let mut rx = self.exit.clone();
        let r = rx.wait_for(|e| e.is_some()).await;
        match r {
            Ok(v) => v.clone().expect("checked"),
            Err(_) => ExitInfo {
                reason: ExitReason::QemuError {
                    message: "monitor ended".into(),
                },
                console_tail: Vec::new(),
            },
        }
    }

    async fn wait_exit_for(&self, t: Duration) -> Option<ExitInfo> {
        tokio::time::timeout(t, self.wait_exit()).await.ok()
    }

    pub async fn status(&self) -> Result<RunState, EngineError> {
        if self.exit_info().is_some() {
            return Ok(RunState::Shutdown);
        }
        let s = self.qmp.query_status().await?;
        Ok(match s.status.as_str() {
            "running" => RunState::Running,
            "paused" | "prelaunch" | "inmigrate" | "postmigrate" => RunState::Paused,
            "shutdown" => RunState::Shutdown,
            _ => RunState::Other,
        })
    }

    pub async fn pause(&self) -> Result<(), EngineError> {
        Ok(self.qmp.stop().await?)
    }

    pub async fn resume(&self) -> Result<(), EngineError> {
        Ok(self.qmp.cont().await?)
    }

    /// Graceful stop: the agent shuts the guest down (disks synced); if it
    /// cannot, the ACPI power button; if that is ignored, QEMU is killed.
    /// `timeout` bounds the whole.
    pub async fn stop(&self, timeout: Duration) -> Result<ExitInfo, EngineError> {
        if let Some(e) = self.exit_info() {
            return Ok(e);
        }
        let deadline = deadline_after(timeout);
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        let agent_try =
            tokio::time::timeout(left() / 2, self.agent.shutdown(PowerAction::Poweroff)).await;
        match agent_try {
            Ok(Ok(())) => {
                if let Some(e) = self.wait_exit_for(left() * 3 / 4).await {
                    return Ok(e);
                }
            }
            other => {
                tracing::info!(partition = %self.spec.name, ?other, "agent shutdown failed; pressing ACPI power button")
            }
        }
        if self.qmp.system_powerdown().await.is_ok() {
            if let Some(e) = self.wait_exit_for(left()).await {
                return Ok(e);
            }
        }
        tracing::warn!(partition = %self.spec.name, "guest ignored shutdown; killing QEMU");
        self.kill().await
    }

    /// Forced stop: QEMU is killed at once.
    pub async fn kill(&self) -> Result<ExitInfo, EngineError> {
        if let Some(e) = self.exit_info() {
            return Ok(e);
        }
        self.signal_kill();
        match self.wait_exit_for(Duration::from_secs(30)).await {
            Some(e) => Ok(e),
            None => Err(EngineError::Host(format!(
                "QEMU pid {} survived SIGKILL",
                self.pid
            ))),
        }
    }

    /// Hot-plugs a disk into a free hot-plug slot (q35 partitions with
    /// `hotplug_slots`). Returns once QEMU added the device; the guest sees it
    /// a moment later through ACPI hot-plug.
    pub async fn hotplug_disk(&self, disk: DiskSpec) -> Result<(), EngineError> {
        let slot = self.free_slot(&disk.id)?;
        self.plug(&HotplugRecord {
            slot,
            adapter: AdapterSpec::Disk(disk),
            fdsets: Vec::new(),
        })
        .await
    }

    /// A free hot-plug slot for a new adapter `id`, after checking that this
    /// partition hot-plugs at all and that `id` is valid and unused.
    fn free_slot(&self, id: &str) -> Result<u32, EngineError> {
        if self.machine != ResolvedMachine::Q35 || self.spec.hotplug_slots == 0 {
            return Err(EngineError::InvalidSpec(
                "hot-plug needs a partition created with hotplug_slots > 0".into(),
            ));
        }
        if !crate::spec::valid_name(id) || id.len() > 16 {
            return Err(EngineError::InvalidSpec(format!(
                "adapter id {id:?} is not valid"
            )));
        }
        let h = self.hotplugged.lock().expect("hotplug lock");
        if h.contains_key(id) || self.spec.adapters.iter().any(|a| a.id() == id) {
            return Err(EngineError::InvalidSpec(format!(
                "adapter id {id:?} is already in use"
            )));
        }
        (0..self.spec.hotplug_slots)
            .find(|s| !h.values().any(|r| r.slot == *s))
            .ok_or_else(|| EngineError::InvalidSpec("no free hot-plug slot".into()))
    }

    /// Passes the disk's files to QEMU, adds its block node and plugs the
    /// device into root port `slot`; a failed device_add removes the node.
    /// The fd sets made are left in `fdsets` for the caller to remove on error.
    async fn attach_disk(
        &self,
        disk: &DiskSpec,
        slot: u32,
        fdsets: &mut std::collections::BTreeMap<PathBuf, u64>,
    ) -> Result<(), EngineError> {
        self.pass_disk_files(disk, fdsets).await?;
        let node = format!("drive-{}", disk.id);
        self.qmp
            .blockdev_add(cmdline::blockdev_with(disk, &|p| {
                json!(format!("/dev/fdset/{}", fdsets[p]))
            }))
            .await?;
        let plugged = self
            .qmp
            .device_add(json!({
                "driver": "virtio-blk-pci",
                "drive": node,
                "id": disk.id,
                "bus": format!("hp{slot}"),
            }))
            .await;
        if let Err(e) = plugged {
            let _ = self.qmp.blockdev_del(&node).await;
            return Err(e.into());
        }
        Ok(())
    }

    /// Opens a disk's file and its pinned backing files and passes each to
    /// QEMU as an fd set, recording path → set in `fdsets` as it goes (so a
    /// failure part-way leaves the caller the sets to remove).
    async fn pass_disk_files(
        &self,
        disk: &DiskSpec,
        fdsets: &mut std::collections::BTreeMap<PathBuf, u64>,
    ) -> Result<(), EngineError> {
        let mut files = vec![(disk.path.clone(), disk.readonly)];
        if disk.format == crate::DiskFormat::Qcow2 {
            files.extend(
                disk.backing
                    .iter()
                    .flatten()
                    .map(|b| (b.path.clone(), true)),
            );
        }
        for (path, readonly) in files {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(!readonly)
                .open(&path)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => EngineError::MissingFile {
                        what: "disk",
                        path: path.clone(),
                    },
                    _ => EngineError::Host(format!("opening {}: {e}", path.display())),
                })?;
            let set = self.qmp.add_fd(f.into()).await?;
            fdsets.insert(path, set);
        }
        Ok(())
    }

    /// Plugs `rec`'s device into its slot and records it (its `fdsets` are
    /// replaced by this QEMU's). A restore re-plugs a saved partition's
    /// devices this way before loading its state.
    pub(crate) async fn plug(&self, rec: &HotplugRecord) -> Result<(), EngineError> {
        let AdapterSpec::Disk(disk) = &rec.adapter else {
            return Err(EngineError::InvalidSpec(format!(
                "hot-plugged adapter {:?} cannot be re-plugged",
                rec.adapter.id()
            )));
        };
        // The engine opens the files and QEMU receives descriptors: a
        // confined QEMU neither sees host paths nor may open them itself.
        let mut fdsets = std::collections::BTreeMap::new();
        let attached = self.attach_disk(disk, rec.slot, &mut fdsets).await;
        let fdsets: Vec<u64> = fdsets.into_values().collect();
        if let Err(e) = attached {
            for f in fdsets {
                let _ = self.qmp.remove_fd(f).await;
            }
            return Err(e);
        }
        let rec = HotplugRecord {
            fdsets,
            ..rec.clone()
        };
        self.hotplugged
            .lock()
            .expect("hotplug lock")
            .insert(disk.id.clone(), rec);
        self.save_state()
    }

    /// Unplugs a hot-plugged device and waits for the guest to release it.
    pub async fn unplug(&self, id: &str, timeout: Duration) -> Result<(), EngineError> {
        let rec = self
            .hotplugged
            .lock()
            .expect("hotplug lock")
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::InvalidSpec(format!("no hot-plugged device {id:?}")))?;
        let mut ev = self.qmp.events();
        match self.qmp.device_del(id).await {
            Ok(()) => {
                let deleted = wait_event(&mut ev, timeout, "DEVICE_DELETED", |e| {
                    e.name == "DEVICE_DELETED" && e.data["device"] == id
                })
                .await;
                if let Err(bulkhead_qmp::QmpError::Timeout(..)) = deleted {
                    // ACPI hot-unplug needs the guest to eject the device;
                    // QEMU 7.2 has no way to force it. Nothing is released.
                    return Err(EngineError::Host(format!(
                        "the guest did not release device {id:?} within {timeout:?} (it must \
                         acknowledge the ACPI eject); it stays plugged: unplug again, or stop \
                         the partition"
                    )));
                }
                deleted?;
            }
            // An earlier unplug timed out and the guest let go since: finish it.
            Err(e) if e.class() == Some("DeviceNotFound") => {
                tracing::info!(partition = %self.spec.name, id, "device already gone; releasing its backend");
            }
            Err(e) => return Err(e.into()),
        }
        match &rec.adapter {
            AdapterSpec::Disk(d) => self.qmp.blockdev_del(&format!("drive-{}", d.id)).await?,
            AdapterSpec::Region(r) => self.release_region(&r.id).await?,
            AdapterSpec::Net(_) => {}
        }
        for f in &rec.fdsets {
            self.qmp.remove_fd(*f).await?;
        }
        self.hotplugged.lock().expect("hotplug lock").remove(id);
        self.save_state()
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.monitor.abort();
        if self.opts.kill_on_drop && self.exit.borrow().is_none() {
            self.signal_kill();
            // Inline even on a reactor thread: a drop cannot wait for the
            // blocking pool, and deleting a link is one netlink round trip.
            remove_taps(&self.taps, self.opts.netns.as_deref());
            release_share_dir(&self.opts.run_dir);
        }
    }
}

/// `timeout` from now; an absurd timeout means no deadline rather than an
/// overflow panic (the engine's callers are not all the manager, which
/// range-checks first).
fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

#[derive(Serialize, Deserialize)]
struct SavedState {
    spec: PartitionSpec,
    pid: u32,
    /// Identity of `pid` (see `Identity`); absent in older records.
    #[serde(default)]
    start_time: Option<u64>,
    #[serde(default)]
    cmdline: Option<Vec<String>>,
    hotplugged: BTreeMap<String, HotplugRecord>,
}

/// Prepares a confined QEMU: the files it needs given to its user (their
/// owners recorded for `jail::restore_owners`), the jail that shows them,
/// and the spec rewritten to where the jail puts the boot files. Disks and
/// their backing files appear at their own (canonical) paths, so backing
/// file names inside a qcow2 resolve as on the host.
fn confine(
    spec: &PartitionSpec,
    opts: &LaunchOptions,
    kvm: bool,
    net: bool,
    qemu: &mut PathBuf,
) -> Result<(Jail, PartitionSpec), EngineError> {
    let host_err = |p: &Path, e: std::io::Error| EngineError::Host(format!("{}: {e}", p.display()));
    let user = opts.run_as.as_deref().map(jail::lookup_user).transpose()?;
    let root = opts.run_dir.join("root");
    std::fs::create_dir_all(&root).map_err(|e| host_err(&root, e))?;
    let run = Path::new(jail::JAIL_RUN);
    let mut files = Vec::new();
    // QEMU writes these two itself.
    for (f, inside) in [
        (opts.console_log(), "console.log"),
        (opts.pidfile(), "qemu.pid"),
    ] {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&f)
            .map_err(|e| host_err(&f, e))?;
        if let Some(u) = user {
            std::os::unix::fs::chown(&f, Some(u.uid), Some(u.gid)).map_err(|e| host_err(&f, e))?;
        }
        files.push(Reveal {
            host: f,
            inside: run.join(inside),
            writable: true,
        });
    }
    let mut jspec = spec.clone();
    let mut grants = Vec::new();
    files.push(Reveal {
        host: spec.boot.kernel.clone(),
        inside: run.join("vmlinux"),
        writable: false,
    });
    grants.push((spec.boot.kernel.clone(), false));
    jspec.boot.kernel = run.join("vmlinux");
    if let Some(i) = &spec.boot.initramfs {
        files.push(Reveal {
            host: i.clone(),
            inside: run.join("initramfs"),
            writable: false,
        });
        grants.push((i.clone(), false));
        jspec.boot.initramfs = Some(run.join("initramfs"));
    }
    for a in jspec.adapters.iter_mut() {
        let AdapterSpec::Disk(d) = a else { continue };
        d.path = std::fs::canonicalize(&d.path).map_err(|e| host_err(&d.path, e))?;
        files.push(Reveal {
            host: d.path.clone(),
            inside: d.path.clone(),
            writable: !d.readonly,
        });
        grants.push((d.path.clone(), !d.readonly));
        for b in d.backing.iter().flatten() {
            files.push(Reveal {
                host: b.path.clone(),
                inside: b.path.clone(),
                writable: false,
            });
            grants.push((b.path.clone(), false));
        }
    }
    // Regions plugged later appear here (see `region`).
    if spec.hotplug_slots > 0 {
        files.push(Reveal {
            host: region::prepare_share_dir(&opts.run_dir)?,
            inside: run.join("shm"),
            writable: false,
        });
    }
    if let Some(m) = &spec.memory_file {
        // QEMU opens it read-write even to map it copy-on-write.
        if !m.path.exists() {
            std::fs::File::create(&m.path).map_err(|e| host_err(&m.path, e))?;
        }
        let path = std::fs::canonicalize(&m.path).map_err(|e| host_err(&m.path, e))?;
        files.push(Reveal {
            host: path.clone(),
            inside: path.clone(),
            writable: true,
        });
        grants.push((path.clone(), true));
        jspec.memory_file.as_mut().expect("checked").path = path;
    }
    // The binary is found on PATH now; the jail holds /usr and nothing else.
    let bin = host::find_binary(qemu)
        .ok_or_else(|| EngineError::QemuStart(format!("{} not found", qemu.display())))?;
    if !bin.starts_with("/usr/") {
        files.push(Reveal {
            host: bin.clone(),
            inside: bin.clone(),
            writable: false,
        });
    }
    *qemu = bin;
    if let Some(u) = user {
        jail::grant(&opts.run_dir, u, &grants)?;
    }
    let mut devices = vec![
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
    ];
    if net {
        devices.push("/dev/net/tun");
    }
    if kvm {
        devices.push("/dev/kvm");
    }
    let j = Jail::plan(&root, &devices, &files, user)?;
    Ok((j, jspec))
}

/// Creates the spec's TAPs on their bridges, for `run_as`. On failure the
/// ones already made are removed. Blocking.
fn create_taps(spec: &PartitionSpec, opts: &LaunchOptions) -> Result<Vec<String>, EngineError> {
    let owner = match &opts.run_as {
        Some(u) => {
            let u = jail::lookup_user(u)?;
            Some(tap::Owner {
                uid: u.uid,
                gid: u.gid,
            })
        }
        None => None,
    };
    let mut taps = Vec::new();
    for n in spec.nets() {
        let t = cmdline::tap_for(&spec.name, n);
        if let Err(e) = tap::create(&t, &n.bridge, owner, opts.netns.as_deref()) {
            remove_taps(&taps, opts.netns.as_deref());
            return Err(e.into());
        }
        taps.push(t);
    }
    Ok(taps)
}

/// Blocking (netlink).
fn remove_taps(taps: &[String], netns: Option<&str>) {
    for t in taps {
        if let Err(e) = tap::remove(t, netns) {
            tracing::warn!(tap = %t, error = %e, "removing TAP");
        }
    }
}

fn kill_pid(pid: u32) {
    // SAFETY: kill(2) with a pid we started; no memory is involved.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

/// Whether `pid` runs. A zombie does not: where nothing reaps an orphaned
/// QEMU (a container whose PID 1 never waits), its pid lingers after exit.
pub(crate) fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself
        // contain spaces or parentheses: take the text after the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits for QEMU to end and works out why, from its events, its exit
/// status and the guest console.
async fn monitor(
    qmp: QmpClient,
    mut events: tokio::sync::broadcast::Receiver<bulkhead_qmp::Event>,
    child: Option<tokio::process::Child>,
    pid: u32,
    opts: &LaunchOptions,
) -> ExitInfo {
    let mut shutdown_reason: Option<String> = None;
    let mut panicked = false;
    let closed = qmp.closed();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) if ev.name == "SHUTDOWN" => {
                    shutdown_reason = ev.data["reason"].as_str().map(str::to_string);
                }
                Ok(ev) if ev.name == "GUEST_PANICKED" => panicked = true,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            },
            _ = &mut closed => break,
        }
    }
    if let Some(why) = qmp.failure() {
        // We closed QMP on a QEMU that broke the protocol: it can no longer
        // be driven, so it must not run on unsupervised.
        tracing::warn!(pid, error = %why, "QEMU broke QMP; killing it");
        kill_pid(pid);
    }
    // Late events queued before the close.
    while let Ok(ev) = events.try_recv() {
        if ev.name == "SHUTDOWN" {
            shutdown_reason = ev.data["reason"].as_str().map(str::to_string);
        }
    }
    let (code, signal) = match child {
        Some(mut c) => match c.wait().await {
            Ok(st) => {
                use std::os::unix::process::ExitStatusExt;
                (st.code(), st.signal())
            }
            Err(_) => (None, None),
        },
        None => {
            wait_pid_exit(pid).await;
            (None, None)
        }
    };
    // A panic's register dump and stack push its first line far up.
    let console = tail_lines(&opts.console_log(), 400);
    let panic_line = console.iter().find(|l| l.contains("Kernel panic")).cloned();
    let console_tail = console[console.len().saturating_sub(20)..].to_vec();
    let reason = if panicked || panic_line.is_some() {
        ExitReason::GuestPanic {
            message: panic_line.unwrap_or_else(|| "GUEST_PANICKED event".into()),
        }
    } else {
        match shutdown_reason.as_deref() {
            Some("guest-shutdown") => ExitReason::Poweroff,
            Some("guest-reset") => ExitReason::GuestReset,
            Some("host-qmp-quit") | Some("host-signal") | Some("host-qmp-system-reset") => {
                ExitReason::HostQuit
            }
            _ => match (signal, code) {
                (Some(s), _) => ExitReason::Killed { signal: s },
                (None, Some(0)) => ExitReason::HostQuit,
                (None, c) => {
                    let log = tail_lines(&opts.qemu_log(), 5).join(" / ");
                    if c.is_none() && log.is_empty() {
                        // An adopted QEMU that vanished without a word: killed.
                        ExitReason::Killed {
                            signal: libc::SIGKILL,
                        }
                    } else {
                        ExitReason::QemuError {
                            message: format!("exit code {c:?}: {log}"),
                        }
                    }
                }
            },
        }
    };
    ExitInfo {
        reason,
        console_tail,
    }
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open has no memory arguments; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just gave us this fd; we own it from here.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What tells one process from another that later got the same pid.
#[derive(Debug, Default)]
struct Identity {
    /// Start time, clock ticks after boot (/proc/PID/stat field 22).
    start_time: u64,
    cmdline: Vec<u8>,
    pidfd: Option<OwnedFd>,
}

impl Identity {
    /// Reads the identity of `pid` and holds a pidfd on it.
    fn read(pid: u32) -> Option<Identity> {
        let pidfd = pidfd_open(pid);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised name start at field 3 (state).
        let start_time = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(22 - 3)?
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        Some(Identity {
            start_time,
            cmdline,
            pidfd,
        })
    }

    /// Like `read`, for a process that is not our child: the pidfd is taken
    /// first, so what is read afterwards is the process the pidfd holds (a
    /// pid reused in between shows a different start time).
    fn open(pid: u32) -> Option<Identity> {
        let id = Identity::read(pid)?;
        id.pidfd.as_ref()?;
        Some(id)
    }

    fn cmdline_args(&self) -> Vec<String> {
        split_cmdline(&self.cmdline)
    }
}

fn split_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Waits for a process that is not our child to end, through a pidfd.
async fn wait_pid_exit(pid: u32) {
    let Some(owned) = pidfd_open(pid) else {
        return; // Already gone.
    };
    // SAFETY: the AsyncFd owns the pidfd, so it stays open for as long as
    // it is registered, and it is deregistered before it is closed on drop.
    if let Ok(afd) =
        unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
    {
        let _ = afd.readable().await;
    }
}

/// The last `n` non-empty lines of a text file, escape sequences removed.
pub fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let start = bytes.len().saturating_sub(64 * 1024);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<String> = text
        .lines()
        .map(strip_escapes)
        .map(|l| l.trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c2 in chars.by_ref() {
                    if c2.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_sees_ourselves_and_not_the_dead() {
        assert!(pid_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Exited but not yet reaped: a zombie counts as gone.
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z"))
            .unwrap_or(false)
        {
            std::thread::yield_now();
        }
        assert!(!pid_alive(pid));
        child.wait().unwrap();
        assert!(!pid_alive(pid));
    }

    #[test]
    fn tail_strips_escapes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        std::fs::write(&p, "a\n\x1b[2Jb\r\n\nc\n").unwrap();
        assert_eq!(tail_lines(&p, 2), vec!["b", "c"]);
        assert!(tail_lines(&d.path().join("none"), 2).is_empty());
    }

    #[test]
    fn failures_are_classified() {
        let e = |reason| ExitInfo {
            reason,
            console_tail: vec![],
        };
        assert!(!e(ExitReason::Poweroff).is_failure());
        assert!(e(ExitReason::GuestPanic {
            message: "x".into()
        })
        .is_failure());
        assert!(e(ExitReason::Killed { signal: 9 }).is_failure());
    }
}
