//! A cluster of bulkheadd hosts on one machine (`scripts/cluster` and the
//! cluster tests share it): host `a`, `b`, `c`… each in its own network
//! namespace, joined by veths to an underlay bridge in the root namespace;
//! a 3-member etcd cluster on the underlay bridge's address; one repository
//! directory every host sees. Processes are detached (they outlive the
//! `scripts/cluster up` that started them) and written down in the cluster's
//! directory, so `down` — from any process — removes everything.
//!
//! Every name carries the cluster's name (`BULKHEAD_CLUSTER` for the script),
//! so a test's cluster runs beside a user's.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long every host may take to be up (daemons start in seconds; a loaded
/// 2-core machine is slower).
const UP_DEADLINE: Duration = Duration::from_secs(120);

/// The VXLAN overhead on top of the guests' 1500-byte frames.
pub const UNDERLAY_MTU: u32 = 1550;

/// What `up` makes.
#[derive(Debug, Clone)]
pub struct Options {
    pub hosts: usize,
    /// Membership lease of every host.
    pub lease_ms: u64,
    /// Guest image directory of the daemons.
    pub image_dir: PathBuf,
    /// The `bulkhead` and `bulkheadd` binaries.
    pub bin_dir: PathBuf,
}

/// One host of a cluster.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub netns: String,
    /// Its underlay address; its TCP API listens there on [`API_PORT`].
    pub underlay: String,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub data_dir: PathBuf,
}

/// The TCP API port of every host (each on its own address).
pub const API_PORT: u16 = 7070;

/// A cluster that is up. Dropping it does nothing: [`down`] takes it down
/// (tests hold a [`Guard`]).
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub dir: PathBuf,
    pub hosts: Vec<Host>,
    pub etcd: Vec<String>,
    pub token: String,
    pub repository: PathBuf,
}

/// Takes the cluster of this name down when dropped (a test's cluster, even
/// on a panic or a half-done `up`).
pub struct Guard(pub String);

impl Drop for Guard {
    fn drop(&mut self) {
        down(&self.0);
    }
}

/// A test's cluster: `hosts` hosts with membership lease `lease_ms`, named
/// after `tag` and this process, on the built binaries and the guest image;
/// taken down when the guard drops (even on a panic).
pub fn up_for_test(tag: &str, hosts: usize, lease_ms: u64) -> (Guard, Cluster) {
    let name = format!("{tag}{}", std::process::id() % 100_000);
    let bin_dir = crate::bulkhead_bin()
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let opts = Options {
        hosts,
        lease_ms,
        image_dir: crate::image_dir(),
        bin_dir,
    };
    let guard = Guard(name.clone());
    let c = up(&name, &opts).unwrap_or_else(|e| panic!("cluster up: {e}"));
    (guard, c)
}

/// An exclusive lock on a file, held until dropped.
struct Lock(#[allow(dead_code)] std::fs::File);

impl Lock {
    fn take(path: &Path) -> Result<Lock, String> {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: flock on a file descriptor this function owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "locking {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Lock(f))
    }
}

/// A third octet for 172.31.X.0/24 that no address of the root namespace
/// is in: from the name's hash on, the first free one.
fn pick_octet(name: &str) -> Result<u32, String> {
    let addrs = ip(&["-4", "-o", "addr", "show"])?;
    let used: std::collections::HashSet<u32> = addrs
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("172.31."))
        .filter_map(|r| r.split('.').next()?.parse().ok())
        .collect();
    let start = fnv(name) >> 24;
    (0..256)
        .map(|i| (start + i) % 256)
        .find(|o| (1..255).contains(o) && !used.contains(o))
        .ok_or_else(|| "no free 172.31.X.0/24 left for a cluster".to_string())
}

/// The cluster's directory, under the system's temporary directory.
pub fn dir_of(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("bulkhead-cluster-{name}"))
}

fn fnv(s: &str) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in s.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    h
}

/// Short names derived from the cluster's name: interface names have 15
/// characters at most.
struct Names {
    tag: String,
    /// The cluster's underlay is 172.31.<third_octet>.0/24 ([`pick_octet`]).
    third_octet: u32,
}

impl Names {
    fn new(name: &str) -> Self {
        let h = fnv(name);
        let octet = std::fs::read_to_string(dir_of(name).join("octet"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Self {
            tag: format!("{:06x}", h & 0xff_ffff),
            third_octet: octet,
        }
    }
    fn bridge(&self) -> String {
        format!("bhu{}", self.tag)
    }
    fn veth(&self, host: &str) -> String {
        format!("bhv{}{host}", self.tag)
    }
    fn netns(&self, cluster: &str, host: &str) -> String {
        format!("bhc-{cluster}-{host}")
    }
    fn gateway(&self) -> String {
        format!("172.31.{}.1", self.third_octet)
    }
    fn underlay(&self, i: usize) -> String {
        format!("172.31.{}.{}", self.third_octet, 10 + i)
    }
    fn instance(&self, host: &str) -> String {
        format!("c{}{host}", self.tag)
    }
}

fn host_name(i: usize) -> String {
    assert!(i < 26, "at most 26 hosts (a-z)");
    ((b'a' + i as u8) as char).to_string()
}

/// Runs a command that must succeed; its output in the error otherwise.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(args))
}

/// Spawns a detached process (its own process group, no controlling
/// terminal's signals) with its output in `log`, and records its pid.
fn spawn_detached(mut cmd: Command, log: &Path, pidfile: &Path) -> Result<u32, String> {
    let f = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone().map_err(|e| e.to_string())?)
        .stderr(f)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting {cmd:?}: {e}"))?;
    std::fs::write(pidfile, child.id().to_string()).map_err(|e| e.to_string())?;
    // Not waited for: it outlives this process (init reaps it).
    let id = child.id();
    std::mem::forget(child);
    Ok(id)
}

/// Makes `cmd` start in the named network namespace. Only the network
/// namespace: `ip netns exec` would also mount a fresh /sys, hiding the
/// cgroup file systems the daemon needs.
fn in_netns(cmd: &mut Command, netns: &str) -> Result<(), String> {
    use std::os::fd::{AsRawFd, OwnedFd};
    let path = format!("/run/netns/{netns}");
    let fd: OwnedFd = std::fs::File::open(&path)
        .map_err(|e| format!("{path}: {e}"))?
        .into();
    // SAFETY: setns is async-signal-safe; the fd lives in the closure until exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// The pids recorded in the cluster's directory.
fn pids(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(dir.join("pids")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
        .collect()
}

/// Free TCP ports on `ip` (the OS picks them; all held until all are chosen).
fn free_ports(ip: &str, n: usize) -> Result<Vec<u16>, String> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind((ip, 0)).map_err(|e| format!("bind {ip}: {e}")))
        .collect::<Result<_, _>>()?;
    Ok(held
        .iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect())
}

fn random_token() -> String {
    let u = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap_or_default();
    format!("{}{}", u.trim().replace('-', ""), std::process::id())
}

/// The cluster as recorded by `up` (its hosts from the directory layout).
fn describe(name: &str, n: usize) -> Cluster {
    let dir = dir_of(name);
    let names = Names::new(name);
    let hosts = (0..n)
        .map(|i| {
            let h = host_name(i);
            let hd = dir.join(&h);
            Host {
                netns: names.netns(name, &h),
                underlay: names.underlay(i),
                socket: hd.join("api.sock"),
                log: hd.join("bulkheadd.log"),
                data_dir: hd.join("data"),
                name: h,
            }
        })
        .collect();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    Cluster {
        name: name.to_string(),
        hosts,
        etcd: read("etcd").lines().map(str::to_string).collect(),
        token: read("token").trim().to_string(),
        repository: dir.join("repository"),
        dir,
    }
}

/// Starts the cluster `name` with `opts.hosts` hosts and waits until every
/// host sees every host up. Idempotent: a cluster that is whole is kept; a
/// partial one is taken down and made again.
pub fn up(name: &str, opts: &Options) -> Result<Cluster, String> {
    let dir = dir_of(name);
    let n = opts.hosts;
    if dir.join("up").exists() {
        let c = describe(name, n);
        let recorded: usize = std::fs::read_to_string(dir.join("up"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if recorded == n
            && pids(&dir).iter().all(|p| alive(*p))
            && wait_all_up(&c, opts, Duration::from_secs(10)).is_ok()
        {
            return Ok(c);
        }
    }
    down(name);
    let mut names = Names::new(name);
    std::fs::create_dir_all(dir.join("pids")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir.join("repository")).map_err(|e| e.to_string())?;
    // Plain disk paths live apart from the repository (a daemon refuses a
    // storage root that reaches into it).
    std::fs::create_dir_all(dir.join("disks")).map_err(|e| e.to_string())?;
    // The underlay: a bridge in the root namespace, one veth per host.
    let br = names.bridge();
    let mtu = UNDERLAY_MTU.to_string();
    {
        // One cluster at a time picks a subnet and takes it.
        let _lock = Lock::take(&std::env::temp_dir().join("bulkhead-cluster.lock"))?;
        let octet = pick_octet(name)?;
        std::fs::write(dir.join("octet"), octet.to_string()).map_err(|e| e.to_string())?;
        names.third_octet = octet;
        ip(&["link", "add", &br, "mtu", &mtu, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", names.gateway()),
            "dev",
            &br,
        ])?;
    }
    ip(&["link", "set", &br, "up"])?;
    for i in 0..n {
        let h = host_name(i);
        let ns = names.netns(name, &h);
        let veth = names.veth(&h);
        ip(&["netns", "add", &ns])?;
        ip(&[
            "link", "add", &veth, "mtu", &mtu, "type", "veth", "peer", "name", "ul0", "mtu", &mtu,
            "netns", &ns,
        ])?;
        ip(&["link", "set", &veth, "master", &br, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", names.underlay(i)),
            "dev",
            "ul0",
        ])?;
        ip(&["-n", &ns, "link", "set", "ul0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    }
    // etcd: three members on the underlay bridge's address.
    let gw = names.gateway();
    let ports = free_ports(&gw, 6)?;
    let initial = (0..3)
        .map(|i| format!("e{i}=http://{gw}:{}", ports[2 * i + 1]))
        .collect::<Vec<_>>()
        .join(",");
    let endpoints: Vec<String> = (0..3)
        .map(|i| format!("http://{gw}:{}", ports[2 * i]))
        .collect();
    std::fs::write(dir.join("etcd"), endpoints.join("\n")).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("etcd-initial"), &initial).map_err(|e| e.to_string())?;
    for i in 0..endpoints.len() {
        spawn_etcd_member(name, i, "new")?;
    }
    wait_etcd(&endpoints)?;
    let token = random_token();
    std::fs::write(dir.join("token"), &token).map_err(|e| e.to_string())?;
    // What `restart_host` starts again: the same build (a release bench's).
    std::fs::write(
        dir.join("bin-dir"),
        opts.bin_dir.as_os_str().as_encoded_bytes(),
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("up"), n.to_string()).map_err(|e| e.to_string())?;
    let c = describe(name, n);
    for (i, h) in c.hosts.iter().enumerate() {
        let hd = dir.join(&h.name);
        std::fs::create_dir_all(&h.data_dir).map_err(|e| e.to_string())?;
        let cfg = format!(
            "data_dir = {data:?}\nsocket = {sock:?}\nimage_dir = {img:?}\n\
             [api]\ntcp = \"{ul}:{API_PORT}\"\ntoken = {token:?}\n\
             [network]\nbridge = \"bulkhead0\"\nsubnet = \"10.77.0.0/24\"\n\
             [cgroup]\ninstance = {inst:?}\n\
             [storage]\nroots = [{disks:?}]\n\
             [cluster]\netcd = {endpoints:?}\nprefix = \"/bulkhead/{name}\"\nname = {hn:?}\n\
             repository = {repo:?}\n\
             lease_ms = {lease}\nunderlay = {ul:?}\n",
            data = h.data_dir,
            sock = h.socket,
            img = opts.image_dir,
            ul = names.underlay(i),
            inst = names.instance(&h.name),
            repo = c.repository,
            disks = dir.join("disks"),
            hn = h.name,
            lease = opts.lease_ms,
        );
        let cfg_path = hd.join("bulkheadd.toml");
        std::fs::write(&cfg_path, cfg).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(opts.bin_dir.join("bulkheadd"));
        cmd.arg("--config").arg(&cfg_path);
        in_netns(&mut cmd, &h.netns)?;
        spawn_detached(cmd, &h.log, &dir.join(format!("pids/bulkheadd-{}", h.name)))?;
    }
    wait_all_up(&c, opts, UP_DEADLINE)?;
    Ok(c)
}

/// Starts etcd member `e<i>` of cluster `name` from what `up` recorded
/// (`state` "new" at first, "existing" when it comes back).
fn spawn_etcd_member(name: &str, i: usize, state: &str) -> Result<u32, String> {
    let dir = dir_of(name);
    let initial = std::fs::read_to_string(dir.join("etcd-initial")).map_err(|e| e.to_string())?;
    let member = format!("e{i}");
    let peer = initial
        .split(',')
        .find_map(|m| m.strip_prefix(&format!("{member}=")))
        .ok_or_else(|| format!("no member {member} in {initial}"))?;
    let endpoints = std::fs::read_to_string(dir.join("etcd")).map_err(|e| e.to_string())?;
    let client = endpoints
        .lines()
        .nth(i)
        .ok_or_else(|| format!("no endpoint for {member}"))?;
    let cmd = crate::etcd::member_command(
        &member,
        &dir.join(format!("etcd-{member}")),
        client,
        peer,
        &initial,
        state,
        &format!("bulkhead-{name}"),
    );
    spawn_detached(
        cmd,
        &dir.join(format!("etcd-{member}.log")),
        &dir.join(format!("pids/etcd-{member}")),
    )
}

/// The pid recorded in `pidfile` under the cluster's `pids/`.
fn recorded_pid(c: &Cluster, pidfile: &str) -> Result<u32, String> {
    let path = c.dir.join("pids").join(pidfile);
    std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .trim()
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// kill -9 of the process whose pid `pidfile` (under the cluster's `pids/`)
/// holds, waiting (bounded) until it is gone.
fn kill_recorded(c: &Cluster, pidfile: &str) -> Result<(), String> {
    let pid = recorded_pid(c, pidfile)?;
    // SAFETY: a signal to a process this cluster started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && !zombie(pid) {
        if Instant::now() > deadline {
            return Err(format!("{pidfile} (pid {pid}) survived SIGKILL"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Kills etcd member `e<i>` (kill -9): the other two keep the quorum.
/// Returns once they answer again (a new leader elected if `e<i>` led).
pub fn kill_etcd_member(c: &Cluster, i: usize) -> Result<(), String> {
    kill_recorded(c, &format!("etcd-e{i}"))?;
    let rest: Vec<String> = c
        .etcd
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, e)| e.clone())
        .collect();
    wait_etcd(&rest)
}

/// Freezes etcd member `e<i>` (SIGSTOP): unlike a killed member, its
/// connections stay open and swallow every request sent to it until
/// [`thaw_etcd_member`].
pub fn freeze_etcd_member(c: &Cluster, i: usize) -> Result<(), String> {
    signal_recorded(c, &format!("etcd-e{i}"), libc::SIGSTOP)
}

/// Undoes [`freeze_etcd_member`] and waits until every member answers.
pub fn thaw_etcd_member(c: &Cluster, i: usize) -> Result<(), String> {
    signal_recorded(c, &format!("etcd-e{i}"), libc::SIGCONT)?;
    wait_etcd(&c.etcd)
}

fn signal_recorded(c: &Cluster, pidfile: &str, sig: i32) -> Result<(), String> {
    let pid = recorded_pid(c, pidfile)?;
    // SAFETY: a signal to a process this cluster started.
    match unsafe { libc::kill(pid as i32, sig) } {
        0 => Ok(()),
        _ => Err(format!(
            "{pidfile} (pid {pid}): {}",
            std::io::Error::last_os_error()
        )),
    }
}

/// Starts the killed member `e<i>` again on its data directory and waits
/// until every member answers.
pub fn restart_etcd_member(c: &Cluster, i: usize) -> Result<(), String> {
    spawn_etcd_member(&c.name, i, "existing")?;
    wait_etcd(&c.etcd)
}

/// kill -9 of `host`'s bulkheadd (its partitions' QEMUs live on).
pub fn kill_host(c: &Cluster, host: &str) -> Result<(), String> {
    kill_recorded(c, &format!("bulkheadd-{host}"))
}

/// Starts `host`'s bulkheadd again on its configuration, with `env` added
/// (a failpoint, for instance), and waits until its API answers. A running
/// daemon is killed (-9) first.
pub fn restart_host(c: &Cluster, host: &str, env: &[(&str, &str)]) -> Result<(), String> {
    let h = c
        .hosts
        .iter()
        .find(|h| h.name == host)
        .ok_or_else(|| format!("no host {host:?}"))?;
    kill_host(c, host)?;
    let bin_dir = std::fs::read_to_string(c.dir.join("bin-dir"))
        .map(PathBuf::from)
        .unwrap_or_else(|_| crate::bulkhead_bin().parent().expect("bin dir").into());
    let mut cmd = Command::new(bin_dir.join("bulkheadd"));
    cmd.arg("--config")
        .arg(c.dir.join(host).join("bulkheadd.toml"));
    cmd.envs(env.iter().copied());
    in_netns(&mut cmd, &h.netns)?;
    // A log of its own: the first daemon's log keeps its last words.
    let log = c.dir.join(host).join("bulkheadd.restarts.log");
    spawn_detached(cmd, &log, &c.dir.join(format!("pids/bulkheadd-{host}")))?;
    let deadline = Instant::now() + UP_DEADLINE;
    while std::os::unix::net::UnixStream::connect(&h.socket).is_err() {
        if Instant::now() > deadline {
            let t = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("{host}'s bulkheadd did not come back:\n{t}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn wait_etcd(endpoints: &[String]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoints.join(",")])
            .args(["--command-timeout=2s", "endpoint", "health"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("etcd members not healthy within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `bulkhead cluster hosts --json` through `host`'s socket: (name, state) pairs.
pub fn hosts_seen(host: &Host, bin_dir: &Path) -> Result<Vec<(String, String)>, String> {
    let out = run(Command::new(bin_dir.join("bulkhead"))
        .args(["cluster", "hosts", "--json", "--socket"])
        .arg(&host.socket))?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("cluster hosts --json: {e}: {out}"))?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .map(|h| {
                    (
                        h["name"].as_str().unwrap_or("").to_string(),
                        h["state"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Waits until every host shows every host up.
pub fn wait_all_up(c: &Cluster, opts: &Options, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let want: Vec<(String, String)> = c
        .hosts
        .iter()
        .map(|h| (h.name.clone(), "up".to_string()))
        .collect();
    let mut last = String::new();
    loop {
        let mut all = true;
        for h in &c.hosts {
            match hosts_seen(h, &opts.bin_dir) {
                Ok(seen) if seen == want => {}
                Ok(seen) => {
                    all = false;
                    last = format!("host {} sees {seen:?}", h.name);
                }
                Err(e) => {
                    all = false;
                    last = format!("host {}: {e}", h.name);
                }
            }
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            let logs: String = c
                .hosts
                .iter()
                .map(|h| {
                    let t = std::fs::read_to_string(&h.log).unwrap_or_default();
                    let tail: Vec<_> = t.lines().rev().take(8).collect();
                    format!(
                        "--- {} ---\n{}\n",
                        h.name,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                })
                .collect();
            return Err(format!(
                "not every host up within {within:?}: {last}\n{logs}"
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The cgroup directories a cluster's daemons made (`<mount>/bulkhead/c<tag><host>`).
fn cgroup_dirs(names: &Names) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = format!("c{}", names.tag);
    let mut out = Vec::new();
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let fstype = f.iter().position(|x| *x == "-").and_then(|i| f.get(i + 1));
        if !matches!(fstype, Some(&"cgroup") | Some(&"cgroup2")) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(Path::new(f[4]).join("bulkhead")) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                out.push(e.path());
            }
        }
    }
    out
}

/// Stops and removes everything of cluster `name`: every process in its
/// namespaces (daemons, QEMUs), its etcd members, namespaces, bridge,
/// cgroups and directory. Quiet about what is already gone.
pub fn down(name: &str) {
    let dir = dir_of(name);
    let names = Names::new(name);
    let prefix = format!("bhc-{name}-");
    let spaces: Vec<String> = ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| {
            n.strip_prefix(&prefix)
                .is_some_and(|h| h.len() == 1 && h.bytes().all(|b| b.is_ascii_lowercase()))
        })
        .map(str::to_string)
        .collect();
    let mut victims: Vec<u32> = pids(&dir);
    for ns in &spaces {
        victims.extend(
            ip(&["netns", "pids", ns])
                .unwrap_or_default()
                .lines()
                .filter_map(|p| p.trim().parse::<u32>().ok()),
        );
    }
    for p in &victims {
        // SAFETY: kill on a pid; a gone one is ESRCH.
        unsafe { libc::kill(*p as i32, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while victims.iter().any(|p| alive(*p) && !zombie(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for cg in cgroup_dirs(&names) {
        if let Ok(children) = std::fs::read_dir(&cg) {
            for c in children.flatten().filter(|c| c.path().is_dir()) {
                let _ = std::fs::remove_dir(c.path());
            }
        }
        let _ = std::fs::remove_dir(&cg);
    }
    for ns in &spaces {
        let _ = ip(&["netns", "del", ns]);
    }
    let _ = ip(&["link", "del", &names.bridge()]);
    crate::unmount_under(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// The running cluster `name`, as `up` recorded it.
pub fn existing(name: &str) -> Result<Cluster, String> {
    let n: usize = std::fs::read_to_string(dir_of(name).join("up"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("cluster {name:?} is not up (run `scripts/cluster up` first)"))?;
    Ok(describe(name, n))
}

fn host<'a>(c: &'a Cluster, name: &str) -> Result<&'a Host, String> {
    c.hosts
        .iter()
        .find(|h| h.name == name)
        .ok_or_else(|| format!("cluster {:?} has no host {name:?}", c.name))
}

/// `host` as if it lost power: kill -9 of its bulkheadd and of every process
/// in its network namespace (its QEMUs). Returns the pids killed.
pub fn kill_host_all(c: &Cluster, name: &str) -> Result<Vec<u32>, String> {
    let h = host(c, name)?;
    kill_host(c, name)?;
    let pids: Vec<u32> = ip(&["netns", "pids", &h.netns])?
        .lines()
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    for p in &pids {
        // SAFETY: a signal to a process in this cluster's namespace.
        unsafe { libc::kill(*p as i32, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| alive(*p) && !zombie(*p)) {
        if Instant::now() > deadline {
            return Err(format!("processes of host {name} survived SIGKILL"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(pids)
}

/// Cuts `host` off from the other hosts and from etcd: the root side of its
/// underlay veth goes down (its processes keep running, unreachable).
pub fn cut(c: &Cluster, name: &str) -> Result<(), String> {
    host(c, name)?;
    ip(&["link", "set", &Names::new(&c.name).veth(name), "down"]).map(|_| ())
}

/// Undoes [`cut`].
pub fn heal(c: &Cluster, name: &str) -> Result<(), String> {
    host(c, name)?;
    ip(&["link", "set", &Names::new(&c.name).veth(name), "up"]).map(|_| ())
}

/// The shell line that points the CLI at `host`'s API.
pub fn env_line(name: &str, host: &str) -> Result<String, String> {
    let sock = dir_of(name).join(host).join("api.sock");
    if !sock.exists() {
        return Err(format!(
            "cluster {name:?} has no host {host:?} (run `scripts/cluster up` first)"
        ));
    }
    Ok(format!("export BULKHEAD_SOCKET={}", sock.display()))
}
