//! Loopback listeners the table routes to when a row's target is not a
//! partition's server but something here (a waking partition, a pool's
//! program): one per key, made on first use, dropped with its key.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Mutex;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

struct Door {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Drop for Door {
    fn drop(&mut self) {
        // Stops accepting; connections already accepted finish on their own.
        self.accept.abort();
    }
}

pub(super) struct Doors<K> {
    by_key: Mutex<HashMap<K, Door>>,
}

impl<K> Default for Doors<K> {
    fn default() -> Self {
        Self {
            by_key: Mutex::default(),
        }
    }
}

impl<K: Hash + Eq + Clone> Doors<K> {
    /// `key`'s loopback address; a new one runs `accept` on its listener.
    pub fn target(
        &self,
        key: &K,
        accept: impl FnOnce(TcpListener) -> JoinHandle<()>,
    ) -> std::io::Result<SocketAddr> {
        let mut map = self.by_key.lock().unwrap();
        if let Some(d) = map.get(key) {
            return Ok(d.addr);
        }
        let std = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        std.set_nonblocking(true)?;
        let l = TcpListener::from_std(std)?;
        let addr = l.local_addr()?;
        map.insert(
            key.clone(),
            Door {
                addr,
                accept: accept(l),
            },
        );
        Ok(addr)
    }

    /// Drops the doors of keys not in `keep`.
    pub fn retain(&self, keep: &HashSet<K>) {
        self.by_key.lock().unwrap().retain(|k, _| keep.contains(k));
    }
}

/// Answers `s` with a short HTTP error and closes it.
pub(crate) async fn http_error(s: &mut tokio::net::TcpStream, status: u16, why: &str) {
    use tokio::io::AsyncWriteExt;
    let reason = match status {
        503 => "Service Unavailable",
        _ => "Bad Gateway",
    };
    let body = format!("{why}\n");
    let r = bulkhead_portshare::http::simple_response(status, reason, &body, true);
    let _ = s.write_all(&r).await;
    let _ = s.shutdown().await;
}
