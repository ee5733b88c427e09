//! Programs the agent starts from the partition's configuration (issue 15):
//! the L2TP resource server that shares the partition's modems.
//!
//! The server is a static binary the image carries ([`L2TP_SERVER`]); the
//! host sends its profile, which is written where only root reads it, and
//! the reply comes once the server listens, so the host knows it serves.

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::children::Children;
use crate::proto::ServiceStarted;

/// Where the image carries the resource server (`make image` adds it).
pub const L2TP_SERVER: &str = "/usr/sbin/bulkhead-l2tp";
const PROFILE: &str = "/run/bulkhead/l2tp-server.toml";
const LOG: &str = "/run/bulkhead/l2tp-server.log";

/// The running server's pid: one per partition.
static RUNNING: Mutex<Option<u32>> = Mutex::new(None);

type Failure = (&'static str, String);

/// Starts the server with `profile` and waits until it listens on `listen`.
pub fn start_l2tp(
    children: &Arc<Children>,
    profile: &str,
    listen: SocketAddr,
    wait: Duration,
) -> Result<ServiceStarted, Failure> {
    if !Path::new(L2TP_SERVER).is_file() {
        return Err((
            "not_found",
            format!("this image carries no L2TP resource server ({L2TP_SERVER}): rebuild it with `make image`"),
        ));
    }
    let mut running = RUNNING.lock().unwrap();
    if let Some(pid) = *running {
        if Path::new(&format!("/proc/{pid}")).exists() {
            return Err(("busy", format!("the L2TP server already runs (pid {pid})")));
        }
    }
    let io = |what: &str, e: std::io::Error| ("io", format!("{what}: {e}"));
    std::fs::create_dir_all("/run/bulkhead").map_err(|e| io("/run/bulkhead", e))?;
    // It holds the tunnel secrets: root only.
    let _ = std::fs::remove_file(PROFILE);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(PROFILE)
        .and_then(|mut f| std::io::Write::write_all(&mut f, profile.as_bytes()))
        .map_err(|e| io(PROFILE, e))?;
    let log = std::fs::File::create(LOG).map_err(|e| io(LOG, e))?;
    let log2 = log.try_clone().map_err(|e| io(LOG, e))?;
    let mut cmd = Command::new(L2TP_SERVER);
    cmd.args(["server", "--profile", PROFILE])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0);
    let mut child = children
        .spawn_owned(&mut cmd)
        .map_err(|e| ("spawn", format!("{L2TP_SERVER}: {e}")))?;
    let pid = child.id();
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let _ = children.wait_owned(&mut child);
            return Err((
                "spawn",
                format!("the L2TP server exited ({status}): {}", log_tail()),
            ));
        }
        if udp_listening(listen) {
            break;
        }
        if Instant::now() >= deadline {
            // SAFETY: signalling our own child's process group.
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            let _ = children.wait_owned(&mut child);
            return Err((
                "timeout",
                format!(
                    "the L2TP server did not listen on {listen} within {wait:?}: {}",
                    log_tail()
                ),
            ));
        }
        // Polling /proc: the server has no other way to say it is up.
        std::thread::sleep(Duration::from_millis(20));
    }
    *running = Some(pid);
    drop(running);
    let children = children.clone();
    std::thread::spawn(move || {
        let status = children.wait_owned(&mut child);
        super::log(format_args!(
            "L2TP server (pid {pid}) exited: {status:?}; log in {LOG}"
        ));
    });
    super::log(format_args!("L2TP server (pid {pid}) listens on {listen}"));
    Ok(ServiceStarted {
        pid,
        log: LOG.into(),
    })
}

/// The end of the server's log, for an error message.
fn log_tail() -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(LOG) {
        let _ = f.read_to_string(&mut s);
    }
    let tail: Vec<&str> = s.lines().rev().take(5).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// Whether a UDP socket is bound to exactly `addr` (/proc/net/udp{,6}).
fn udp_listening(addr: SocketAddr) -> bool {
    let (file, want) = match addr {
        SocketAddr::V4(a) => (
            "/proc/net/udp",
            format!(
                "{:08X}:{:04X}",
                u32::from_le_bytes(a.ip().octets()),
                a.port()
            ),
        ),
        SocketAddr::V6(a) => {
            let o = a.ip().octets();
            let words: String = o
                .chunks(4)
                .map(|c| format!("{:08X}", u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect();
            ("/proc/net/udp6", format!("{words}:{:04X}", a.port()))
        }
    };
    std::fs::read_to_string(file)
        .map(|t| bound_in(&t, &want))
        .unwrap_or(false)
}

fn bound_in(table: &str, local: &str) -> bool {
    table
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(1) == Some(local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_udp_socket_is_seen_and_others_are_not() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = s.local_addr().unwrap();
        assert!(udp_listening(a));
        drop(s);
        assert!(!udp_listening(a));
        let t = "  sl  local_address rem_address   st\n   1: 0100007F:06A5 00000000:0000 07\n";
        assert!(bound_in(t, "0100007F:06A5"));
        assert!(!bound_in(t, "0200007F:06A5"));
    }
}
