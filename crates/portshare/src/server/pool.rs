//! Idle connections to targets, shared by all client connections. A
//! connection is handed out only once proven idle: bytes that arrived while it
//! sat in the pool are an unsolicited response that belongs to no request, and
//! the connection is closed rather than let the next client read them.

use crate::http::proxy::Probe;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Idle upstream connections kept per target.
const POOL_PER_TARGET: usize = 64;
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Rows that send a PROXY header never pool: their upstream connection names
/// one client.
#[derive(Default)]
pub(super) struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<(TcpStream, Instant)>>>,
}

/// Looks at a connection without consuming anything: a non-blocking peek
/// asks the kernel itself, so a response that arrived a moment ago counts
/// even if the runtime has not yet seen its readiness event.
pub(super) fn probe(s: &TcpStream) -> Probe {
    let mut b = 0u8;
    // SAFETY: the fd is a live socket owned by `s`; `b` is a live 1-byte buffer.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            (&mut b as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => Probe::Closed,
        n if n > 0 => Probe::Readable,
        _ => match std::io::Error::last_os_error().kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Probe::Idle,
            _ => Probe::Closed,
        },
    }
}

impl Pool {
    /// An idle connection to `addr`, proven idle now; stale, closed and
    /// chatty ones met on the way are dropped (closed).
    pub(super) fn take(&self, addr: SocketAddr) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap();
        let list = idle.get_mut(&addr)?;
        while let Some((s, at)) = list.pop() {
            if at.elapsed() <= POOL_IDLE && probe(&s).reusable() {
                return Some(s);
            }
        }
        None
    }

    pub(super) fn put(&self, addr: SocketAddr, s: TcpStream) {
        let mut idle = self.idle.lock().unwrap();
        let list = idle.entry(addr).or_default();
        if list.len() < POOL_PER_TARGET {
            list.push((s, Instant::now()));
        }
    }
}
