//! Running netlink and TUN work inside a named network namespace (`ip netns`
//! style, a file under /run/netns). Sockets and TUN devices belong to the
//! namespace of the thread that opens them, so the work runs on a short-lived
//! thread that has joined the namespace; the caller's threads never move.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::HostnetError;

const NETNS_DIR: &str = "/run/netns";

pub fn run<R, F>(netns: Option<&str>, f: F) -> Result<R, HostnetError>
where
    R: Send,
    F: FnOnce() -> Result<R, HostnetError> + Send,
{
    let Some(ns) = netns else {
        return f();
    };
    if ns.is_empty() || ns == "." || ns == ".." || ns.contains('/') {
        return Err(HostnetError::InvalidName(ns.to_string()));
    }
    let path = Path::new(NETNS_DIR).join(ns);
    let file = File::open(&path).map_err(|e| HostnetError::Io {
        op: format!("opening network namespace {}", path.display()),
        source: e,
    })?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns(2) on a descriptor we hold open for the call; it
            // moves only this thread, which ends when `f` returns, so no other
            // code runs in the namespace by surprise.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(HostnetError::Io {
                    op: format!("entering network namespace {ns}"),
                    source: std::io::Error::last_os_error(),
                });
            }
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
