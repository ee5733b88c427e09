//! A real bulkheadd per test: its own data directory, socket, bridge, subnet
//! and cgroup subtree, so tests run in parallel with each other and with
//! other crates' tests. Everything it made is removed on drop, even when
//! the test failed half-way.
#![allow(dead_code)]

pub mod grants;
pub mod l2tp;
pub mod pools;

use bulkhead_manager::cgroup::Layout;
use bulkhead_manager::client::{Client, Endpoint};
use bulkhead_manager::tls::Trust;
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Boots under TCG on a busy 2-core host can take tens of seconds.
pub const BOOT: Duration = Duration::from_secs(180);

static SEQ: AtomicU32 = AtomicU32::new(0);

pub use bulkhead_testbed::image_dir;

/// The daemon's default cgroup parent (`[cgroup] parent`).
pub const CGROUP_PARENT: &str = "bulkhead";

/// The cgroup hierarchies of this host, found in /proc/self/mountinfo (v1:
/// the cpu, cpuacct and memory mounts; v2: the unified mount). The helpers
/// built on it fail when a hierarchy is missing or is not a cgroup file
/// system, so a "no cgroup leaked" assertion cannot pass by looking where
/// nothing ever is.
#[derive(Debug, Clone)]
pub struct CgroupMounts(Layout);

impl CgroupMounts {
    /// This host's mounts; panics when there are none to use.
    pub fn detect() -> CgroupMounts {
        let info = std::fs::read_to_string("/proc/self/mountinfo").expect("/proc/self/mountinfo");
        CgroupMounts::from_mountinfo(&info, |p| std::fs::read_to_string(p).ok())
            .unwrap_or_else(|e| panic!("test harness: cannot find the cgroup mounts: {e:#}"))
    }

    /// The mounts a mountinfo text describes; an error when it has none usable.
    pub fn from_mountinfo(
        info: &str,
        read: impl Fn(&Path) -> Option<String>,
    ) -> anyhow::Result<CgroupMounts> {
        Ok(CgroupMounts(Layout::from_mountinfo(info, read)?))
    }

    /// The mount holding `controller` (cpu, cpuacct, memory or pids).
    pub fn mount(&self, controller: &str) -> PathBuf {
        match (&self.0, controller) {
            (Layout::V2 { root, .. }, "cpu" | "cpuacct" | "memory") => root.clone(),
            (Layout::V2 { root, pids: true }, "pids") => root.clone(),
            (Layout::V1 { cpu, .. }, "cpu") => cpu.clone(),
            (Layout::V1 { cpuacct, .. }, "cpuacct") => cpuacct.clone(),
            (Layout::V1 { memory, .. }, "memory") => memory.clone(),
            (Layout::V1 { pids: Some(p), .. }, "pids") => p.clone(),
            (_, other) => panic!("test harness: no cgroup controller {other:?}"),
        }
    }

    /// Every distinct mount, each checked to be a live cgroup file system.
    pub fn mounts(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = ["cpu", "cpuacct", "memory"]
            .iter()
            .map(|c| self.mount(c))
            .collect();
        // The pids hierarchy, when the host has one, holds partition cgroups too.
        if let Layout::V1 {
            pids: Some(pids), ..
        } = &self.0
        {
            v.push(pids.clone());
        }
        v.sort();
        v.dedup();
        for m in &v {
            assert!(
                m.join("cgroup.procs").is_file(),
                "test harness: {} is not a mounted cgroup hierarchy (no cgroup.procs)",
                m.display()
            );
        }
        v
    }

    /// The cgroups (directories) under `rel` in any hierarchy: a cgroup left
    /// in only one of them is found too. `rel` not existing means none.
    pub fn children(&self, rel: &Path) -> Vec<String> {
        let mut v = Vec::new();
        for m in self.mounts() {
            let dir = m.join(rel);
            match std::fs::read_dir(&dir) {
                Ok(d) => v.extend(
                    d.map(|e| e.expect("reading a cgroup directory"))
                        .filter(|e| e.path().is_dir())
                        .map(|e| e.file_name().to_string_lossy().into_owned()),
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("test harness: reading {}: {e}", dir.display()),
            }
        }
        v.sort();
        v.dedup();
        v
    }
}

/// Running, not a zombie: a QEMU whose parent (a killed daemon) is gone is
/// reaped by init, which may take a moment or never happen in a container.
pub fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub bridge: String,
    pub subnet_prefix: String,
    pub instance: String,
    pub tcp: Option<String>,
    pub cgroup_mounts: CgroupMounts,
    pub token: Option<String>,
    /// Soft and hard RLIMIT_NOFILE for the daemon.
    pub nofile: Option<u64>,
    /// Everything the daemon logged so far.
    pub log: Arc<Mutex<String>>,
    /// Extra environment of the daemon (e.g. a failpoint); change it
    /// before a `spawn` to restart without it.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

#[derive(Default)]
pub struct Opts {
    /// Extra TOML appended to the generated configuration.
    pub extra: String,
    /// Serve TCP (TLS, a self-signed pair made by the daemon) with this token.
    pub tcp_token: Option<String>,
    /// Start the daemon with this RLIMIT_NOFILE (soft and hard).
    pub nofile: Option<u64>,
    /// The VLAN subnet (CIDR) instead of a /24 of its own, e.g. for daemons
    /// sharing one store that must allocate from one subnet.
    pub subnet: Option<String>,
    /// Extra environment of the daemon.
    pub env: Vec<(String, String)>,
}

/// A daemon with host id `host` on the SQLite store `store` and the LU
/// repository `repo`: daemons made so with different ids are different
/// hosts of one cluster store and one repository.
pub fn on_shared_store(store: &Path, repo: &Path, host: &str) -> Daemon {
    Daemon::start(Opts {
        extra: format!(
            "[store]\npath = {store:?}\nhost_id = {host:?}\n[cluster]\nrepository = {repo:?}\n"
        ),
        ..Default::default()
    })
}

/// A TCP port free on loopback right now.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    /// The daemon's default storage root (`<data_dir>/storage`), made if missing.
    pub fn storage_root(&self) -> PathBuf {
        let root = self.dir.path().join("data").join("storage");
        std::fs::create_dir_all(&root).unwrap();
        root
    }

    pub fn start(opts: Opts) -> Daemon {
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let dir = tempfile::Builder::new().prefix("bhm").tempdir().unwrap();
        let tag = format!("{:05x}{seq:x}", pid & 0xfffff);
        let bridge = format!("bhm{tag}");
        // A /24 per daemon, from the pid and a sequence number: parallel test
        // binaries do not meet.
        let subnet_prefix = format!("10.{}.{}", 180 + (seq % 60), pid % 250);
        let subnet = opts
            .subnet
            .clone()
            .unwrap_or_else(|| format!("{subnet_prefix}.0/24"));
        // The first three octets, for tests that build addresses from them.
        let subnet_prefix = subnet.rsplit_once('.').expect("a.b.c.d/len").0.to_string();
        let instance = format!("t{tag}");
        let socket = dir.path().join("api.sock");
        let tcp = opts
            .tcp_token
            .as_ref()
            .map(|_| format!("127.0.0.1:{}", free_tcp_port()));
        let mut cfg = format!(
            "data_dir = {:?}\nsocket = {:?}\nimage_dir = {:?}\n\
             [network]\nbridge = {bridge:?}\nsubnet = {subnet:?}\n\
             [cgroup]\ninstance = {instance:?}\n",
            dir.path().join("data"),
            socket,
            image_dir(),
        );
        cfg.push_str(&opts.extra);
        if let (Some(addr), Some(tok)) = (&tcp, &opts.tcp_token) {
            // Keys of [api] may come from `extra` too: append to its table.
            if !cfg.contains("[api]") {
                cfg.push_str("\n[api]\n");
            }
            cfg = cfg.replacen(
                "[api]\n",
                &format!("[api]\ntcp = {addr:?}\ntoken = {tok:?}\n"),
                1,
            );
        }
        let config = dir.path().join("bulkheadd.toml");
        std::fs::write(&config, cfg).unwrap();
        let mut d = Daemon {
            dir,
            socket,
            config,
            bridge,
            subnet_prefix,
            instance,
            tcp,
            cgroup_mounts: CgroupMounts::detect(),
            token: opts.tcp_token,
            nofile: opts.nofile,
            log: Arc::default(),
            env: opts.env,
            child: None,
        };
        d.spawn();
        d
    }

    /// Starts bulkheadd and returns once its API listens (it says so on stderr).
    pub fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulkheadd"));
        cmd.arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(n) = self.nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: between fork and exec only setrlimit runs, which is
            // async-signal-safe, on a struct copied into the closure.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let tag = self.instance.clone();
        let log = self.log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[bulkheadd {tag}] {line}");
                log.lock().unwrap().push_str(&format!("{line}\n"));
                if line.contains("API listening") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        if rx.recv_timeout(BOOT).is_err() {
            let _ = child.kill();
            panic!("bulkheadd did not start listening");
        }
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL: what a crash looks like. Partitions must survive it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs the `bulkhead` CLI with `args` against this daemon's socket.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bulkhead_testbed::bulkhead_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .env_remove("BULKHEAD_API")
            .output()
            .unwrap()
    }

    pub fn client(&self) -> Client {
        Client::unix(&self.socket)
    }

    /// The self-signed certificate the daemon made for its TCP API.
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("data/tls/cert.pem")
    }

    /// A TCP (TLS) client trusting `trust`, with this token.
    pub fn tcp_client_with(&self, trust: Trust, token: Option<&str>) -> Client {
        Client::new(Endpoint::Tcp {
            addr: self.tcp.clone().expect("daemon serves TCP"),
            token: token.map(str::to_string),
            tls: trust.client_config().unwrap(),
        })
    }

    /// A TCP client pinning the daemon's certificate, with its token.
    pub fn tcp_client(&self) -> Client {
        let f = bulkhead_manager::tls::file_fingerprint(&self.cert()).unwrap();
        self.tcp_client_with(Trust::Fingerprint(f), self.token.as_deref())
    }

    /// Whether the daemon process is still there (not exited, not reaped).
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// This daemon's cgroups, relative to a hierarchy's mount.
    pub fn cgroup_base(&self) -> PathBuf {
        Path::new(CGROUP_PARENT).join(&self.instance)
    }

    /// A partition's cgroup in the hierarchy of `controller`.
    pub fn cgroup_dir(&self, controller: &str, name: &str) -> PathBuf {
        self.cgroup_mounts
            .mount(controller)
            .join(self.cgroup_base())
            .join(name)
    }

    /// The TAPs on this daemon's bridge.
    pub fn taps(&self) -> Vec<String> {
        let dir = Path::new("/sys/class/net").join(&self.bridge).join("brif");
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Partition cgroups that exist for this daemon, in any hierarchy.
    pub fn cgroups(&self) -> Vec<String> {
        self.cgroup_mounts.children(&self.cgroup_base())
    }

    pub async fn create(&self, name: &str, cpu: u32, memory: u64, extra: Value) -> Value {
        let mut body = json!({ "name": name, "memory_mib": memory, "cpu_percent": cpu });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        self.client()
            .post("/v1/partitions", &body)
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"))
    }

    pub async fn start_wait(&self, name: &str) -> Value {
        let r = tokio::time::timeout(
            BOOT,
            self.client().post(
                &format!("/v1/partitions/{name}/start"),
                &json!({ "wait": true }),
            ),
        )
        .await
        .expect("start --wait timed out");
        r.unwrap_or_else(|e| panic!("start {name}: {e}"))
    }

    pub async fn show(&self, name: &str) -> Value {
        self.client()
            .get(&format!("/v1/partitions/{name}"))
            .await
            .unwrap()
    }

    pub async fn exec(&self, name: &str, cmd: &str) -> Value {
        self.client()
            .post(
                &format!("/v1/partitions/{name}/exec"),
                &json!({ "argv": ["/bin/sh", "-c", cmd], "timeout_secs": 60 }),
            )
            .await
            .unwrap_or_else(|e| panic!("exec in {name}: {e}"))
    }

    /// Waits (event-driven polling of the API, bounded) for a state.
    pub async fn wait_state(&self, name: &str, want: &[&str], timeout: Duration) -> Value {
        self.wait_show(name, timeout, |v| want.iter().any(|w| v["state"] == *w))
            .await
    }

    /// Waits (polling the API, bounded) until the partition's view satisfies `done`.
    pub async fn wait_show(
        &self,
        name: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let v = self.show(name).await;
            if done(&v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} never got there: {v:#}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The messages of a `show` view's events, oldest first.
pub fn events(v: &Value) -> Vec<String> {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

/// The address (without its prefix length) of a record's VLAN attachment.
pub fn vlan_ip(rec: &Value) -> String {
    let ip = rec["net"]["ip"].as_str().expect("a VLAN address");
    ip.split('/').next().unwrap().to_string()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // Kill every QEMU this daemon started (they are in its cgroups), then
        // remove the cgroups, TAPs and the bridge.
        let bases: Vec<PathBuf> = self
            .cgroup_mounts
            .mounts()
            .iter()
            .map(|m| m.join(self.cgroup_base()))
            .collect();
        for base in &bases {
            if let Ok(d) = std::fs::read_dir(base) {
                for e in d.flatten() {
                    if let Ok(procs) = std::fs::read_to_string(e.path().join("cgroup.procs")) {
                        for p in procs.lines() {
                            let _ = Command::new("kill").args(["-9", p]).status();
                        }
                    }
                }
            }
        }
        for base in &bases {
            if let Ok(d) = std::fs::read_dir(base) {
                // Partition cgroups are the directories; the rest are control files.
                for e in d.flatten().filter(|e| e.path().is_dir()) {
                    for _ in 0..50 {
                        if std::fs::remove_dir(e.path()).is_ok() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
            let _ = std::fs::remove_dir(base);
        }
        for t in self.taps() {
            let _ = Command::new("ip").args(["link", "del", &t]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
        let _ = Command::new("nft")
            .args([
                "delete",
                "table",
                "bridge",
                &format!("bulkhead-{}", self.instance),
            ])
            .status();
        bulkhead_testbed::unmount_under(self.dir.path());
    }
}
