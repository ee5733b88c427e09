//! Real etcd clusters for tests: n members of Debian's `etcd` on free
//! loopback ports, each with a data directory of its own.
//!
//! Members are spawned by one long-lived thread with `PR_SET_PDEATHSIG`, so
//! they die with the test process even when the cluster is a `static` that
//! is never dropped (the death signal follows the spawning thread, and a
//! test's own thread ends with the test).

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a cluster may take to elect a leader on a loaded 2-core host.
const LEADER_DEADLINE: Duration = Duration::from_secs(30);

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// n etcd members on loopback; killed, and their directories removed, on drop.
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: PathBuf,
    initial_cluster: String,
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` from a thread that lives as long as the process, with
/// SIGKILL as its parent-death signal.
fn spawn_owned(mut cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("etcd-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    });
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply, result) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply))
        .expect("spawner alive");
    result.recv().expect("spawner replies")
}

/// `n` distinct loopback ports nobody listens on now (the OS picks them;
/// all are held until all are chosen, so none repeats).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

/// Removes the directories of clusters whose test process is gone (a
/// `static` cluster is never dropped).
fn sweep_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("bulkhead-etcd-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok());
        // SAFETY: kill with signal 0 only checks that the pid exists.
        if pid.is_some_and(|p| unsafe { libc::kill(p, 0) } != 0) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The command line of one etcd member (client and peer URLs `http://ip:port`).
pub(crate) fn member_command(
    name: &str,
    data: &Path,
    client: &str,
    peer: &str,
    initial_cluster: &str,
    state: &str,
    token: &str,
) -> Command {
    let mut cmd = Command::new("etcd");
    cmd.args(["--name", name])
        .arg("--data-dir")
        .arg(data)
        .args(["--listen-client-urls", client])
        .args(["--advertise-client-urls", client])
        .args(["--listen-peer-urls", peer])
        .args(["--initial-advertise-peer-urls", peer])
        .args(["--initial-cluster", initial_cluster])
        .args(["--initial-cluster-state", state])
        .args(["--initial-cluster-token", token]);
    cmd
}

impl EtcdCluster {
    /// Starts `n` members and waits (bounded) until they have elected a
    /// leader. Panics with the members' logs if they do not.
    pub fn start(n: usize) -> EtcdCluster {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let root = std::env::temp_dir();
        sweep_stale(&root);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = root.join(format!("bulkhead-etcd-{}-{seq}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let ports = free_ports(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data: dir.join(format!("m{i}.data")),
                log: dir.join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            dir,
            initial_cluster,
        };
        for i in 0..n {
            cluster.spawn(i, "new");
        }
        cluster.wait_for_leader();
        cluster
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("member log");
        let mut cmd = member_command(
            &m.name,
            &m.data,
            &format!("http://127.0.0.1:{}", m.client_port),
            &format!("http://127.0.0.1:{}", m.peer_port),
            &self.initial_cluster,
            state,
            &self.dir.to_string_lossy(),
        );
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        let child = spawn_owned(cmd).unwrap_or_else(|e| {
            panic!("cannot start etcd (scripts/bootstrap installs etcd-server): {e}")
        });
        self.members[i].child = Some(child);
    }

    /// The client URLs of every member, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    fn running(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .collect()
    }

    /// Member `i`'s status through etcdctl: (its own id, the leader's id),
    /// `None` when it does not answer or knows no leader.
    fn status(&self, i: usize) -> Option<(String, String)> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint(i)])
            .args(["--command-timeout=1s", "endpoint", "status", "-w", "json"])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        // `"member_id":123,...,"leader":456`; a leader of 0 is none.
        let field = |name: &str| -> Option<String> {
            let tag = format!("\"{name}\":");
            let at = text.find(&tag)? + tag.len();
            let id: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            (!id.is_empty() && id != "0").then_some(id)
        };
        Some((field("member_id")?, field("leader")?))
    }

    fn leader_seen_by(&self, i: usize) -> Option<String> {
        self.status(i).map(|(_, leader)| leader)
    }

    /// The index of the member that leads now, if one does.
    pub fn leader(&self) -> Option<usize> {
        self.running()
            .into_iter()
            .find(|&i| self.status(i).is_some_and(|(me, leader)| me == leader))
    }

    /// Waits until every running member names the same leader (bounded).
    pub fn wait_for_leader(&self) {
        let deadline = Instant::now() + LEADER_DEADLINE;
        loop {
            let seen: Vec<_> = self
                .running()
                .into_iter()
                .map(|i| self.leader_seen_by(i))
                .collect();
            if seen.first().is_some_and(|l| l.is_some()) && seen.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "etcd cluster has no leader after {LEADER_DEADLINE:?} (saw {seen:?}); logs:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills member `i` (SIGKILL) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data directory (after [`Self::kill`]).
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} still runs");
        self.spawn(i, "existing");
    }

    /// The tail of every member's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let tail: Vec<_> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {} ---\n", m.name));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
