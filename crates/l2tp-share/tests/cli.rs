//! `bulkhead l2tp client|dial` as processes: the end of a call at either side, signals,
//! end of input. Needs the `bulkhead` binary (`make test` builds it first and sets
//! BULKHEAD_BIN).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bulkhead_l2tp_share::client::Client;
use bulkhead_l2tp_share::server;
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(60);

use bulkhead_testbed::bulkhead_bin as bulkhead;

/// What the far end does with a call.
#[derive(Clone, Copy)]
enum Far {
    /// Says "bye\n" and hangs up.
    SayByeAndHangUp,
    /// Echoes, each chunk after a pause (a far end that takes its time to answer).
    SlowEcho,
    /// Echoes at once.
    Echo,
}

async fn far_end(kind: Far) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                match kind {
                    Far::SayByeAndHangUp => {
                        let _ = s.write_all(b"bye\n").await;
                    }
                    Far::SlowEcho | Far::Echo => {
                        let mut b = [0u8; 4096];
                        while let Ok(n) = s.read(&mut b).await {
                            if n == 0 {
                                break;
                            }
                            if matches!(kind, Far::SlowEcho) {
                                // Not synchronisation: the far end's own pace.
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            if s.write_all(&b[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A modem whose phone book reaches `far`, a resource server with that one modem
/// (directory name FAR), and a `bulkhead l2tp client` daemon for it. Returns the
/// in-process client (for checking the modem is free), the daemon and its socket.
struct Bed {
    _dir: tempfile::TempDir,
    srv: server::Running,
    client: std::sync::Arc<Client>,
    daemon: Child,
    sock: PathBuf,
}

impl Bed {
    async fn new(far: Far) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let far = far_end(far).await;
        let srv = one_modem_server(dir.path(), far, "FAR").await;
        let sock = dir.path().join("client.sock");
        let conf = dir.path().join("client.toml");
        std::fs::write(
            &conf,
            format!(
                "hostname = \"cli-test\"\noutgoing = \"{0}\"\nincoming = \"{0}\"\nsecret = \"s3cret\"\ncontrol = {1:?}\n",
                srv.addrs[0], sock
            ),
        )
        .unwrap();
        let daemon = Command::new(bulkhead())
            .args(["l2tp", "client", "--profile"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        wait_for_path(&sock).await;
        let client = Client::new(client_profile(srv.addrs[0], "s3cret"));
        Bed {
            _dir: dir,
            srv,
            client,
            daemon,
            sock,
        }
    }

    /// `bulkhead l2tp dial FAR --stdio`, optionally with SIGINT ignored from the start.
    fn dial(&self, sigint_ignored: bool) -> Child {
        let mut c = if sigint_ignored {
            let mut c = Command::new("sh");
            c.args(["-c", "trap '' INT; exec \"$0\" \"$@\""])
                .arg(bulkhead());
            c
        } else {
            Command::new(bulkhead())
        };
        c.args(["l2tp", "dial", "FAR", "--stdio", "--control"])
            .arg(&self.sock)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// The only modem is free: a dial through another tunnel connects at once.
    async fn modem_is_free(&self) {
        let call = self.client.dial("FAR", None, WAIT).await;
        assert!(call.is_ok(), "the modem is still held: {:?}", call.err());
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.srv.abort();
    }
}

async fn wait_for_path(p: &Path) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !p.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never appeared",
            p.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads the child's stderr until a line contains `needle`; returns the lines read.
async fn stderr_until(child: &mut Child, needle: &str) -> Vec<String> {
    let err = child.stderr.as_mut().unwrap();
    let mut lines = BufReader::new(err);
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            let mut l = String::new();
            if lines.read_line(&mut l).await.unwrap() == 0 {
                panic!("stderr ended before {needle:?}: {seen:?}");
            }
            let found = l.contains(needle);
            seen.push(l);
            if found {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} on stderr in time"));
    seen
}

/// Waits for the child to exit; returns its status, stdout and the rest of stderr.
async fn finish(mut child: Child) -> (std::process::ExitStatus, Vec<u8>, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let (mut o, mut e) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let status = tokio::time::timeout(WAIT, async {
        let (_, _, s) = tokio::join!(
            o.read_to_end(&mut out),
            e.read_to_end(&mut err),
            child.wait()
        );
        s.unwrap()
    })
    .await
    .expect("the command ended in time");
    (status, out, String::from_utf8_lossy(&err).into_owned())
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id().expect("running") as i32);
    nix::sys::signal::kill(pid, sig).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_end_hang_up_ends_dial_stdio_with_the_reason() {
    let bed = Bed::new(Far::SayByeAndHangUp).await;
    // Standard input stays open: only the far end ends this call.
    let child = bed.dial(false);
    let (status, out, err) = finish(child).await;
    assert_eq!(out, b"bye\n");
    assert!(!status.success(), "{status:?} {err}");
    assert!(
        err.contains("NO CARRIER") && err.contains("CDN result 1"),
        "{err}"
    );
    bed.modem_is_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_of_input_still_returns_the_far_ends_answer() {
    let bed = Bed::new(Far::SlowEcho).await;
    let mut child = bed.dial(false);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"ping\n").await.unwrap();
    drop(stdin);
    let (status, out, err) = finish(child).await;
    assert_eq!(String::from_utf8_lossy(&out), "ping\n", "{err}");
    assert!(status.success(), "{status:?} {err}");
    assert!(err.contains("call ended: hung up"), "{err}");
    bed.modem_is_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_client_daemon_frees_the_modem_at_once() {
    let mut bed = Bed::new(Far::Echo).await;
    let mut child = bed.dial(false);
    stderr_until(&mut child, "connected").await;
    signal(&bed.daemon, nix::sys::signal::Signal::SIGTERM);
    tokio::time::timeout(WAIT, bed.daemon.wait())
        .await
        .expect("the daemon stopped in time")
        .unwrap();
    // The daemon cleared the call and its tunnel before exiting: the modem is free
    // now, not after the server's HELLO timeout.
    bed.modem_is_free().await;
    // The dial command learnt that its call is over.
    let (status, _, err) = finish(child).await;
    assert!(!status.success(), "{status:?} {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_hangs_up_even_when_ignored_at_start() {
    let bed = Bed::new(Far::Echo).await;
    // As a background job of a non-interactive shell: SIGINT ignored from the start.
    let mut child = bed.dial(true);
    stderr_until(&mut child, "connected").await;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello").await.unwrap();
    let mut back = [0u8; 5];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut back)
        .await
        .unwrap();
    assert_eq!(&back, b"hello");
    signal(&child, nix::sys::signal::Signal::SIGINT);
    let (status, _, err) = finish(child).await;
    assert!(status.success(), "{status:?} {err}");
    assert!(
        err.contains("SIGINT") && err.contains("call ended: hung up"),
        "{err}"
    );
    drop(stdin);
    bed.modem_is_free().await;
}
