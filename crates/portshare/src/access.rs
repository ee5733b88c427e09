//! Structured access log: one JSON object per line, written by its own thread
//! so a slow disk never stalls the proxy (entries are dropped if it falls behind).

use serde::Serialize;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Serialize)]
pub struct Entry<'a> {
    pub client: SocketAddr,
    pub listen: SocketAddr,
    /// `http` or `tls`.
    pub kind: &'static str,
    /// Host header or SNI as the client sent it (normalised).
    pub host: Option<&'a str>,
    /// The row that matched (`a.test`, `*.dom1.com`, `*`).
    pub route: Option<&'a str>,
    pub target: Option<&'a str>,
    /// Request line (HTTP).
    pub request: Option<&'a str>,
    pub status: Option<u16>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_us: u64,
    pub error: Option<&'a str>,
}

#[derive(Serialize)]
struct Line<'a> {
    ts: f64,
    #[serde(flatten)]
    e: Entry<'a>,
}

pub struct AccessLog {
    tx: SyncSender<String>,
}

impl AccessLog {
    pub fn open(path: &Path) -> std::io::Result<AccessLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, rx) = sync_channel::<String>(4096);
        std::thread::Builder::new()
            .name("portshare-access".into())
            .spawn(move || {
                let mut w = std::io::BufWriter::new(file);
                while let Ok(line) = rx.recv() {
                    let _ = w.write_all(line.as_bytes());
                    // Flush when the queue is drained so tail -f sees entries promptly.
                    while let Ok(more) = rx.try_recv() {
                        let _ = w.write_all(more.as_bytes());
                    }
                    let _ = w.flush();
                }
            })?;
        Ok(AccessLog { tx })
    }

    pub fn write(&self, e: Entry<'_>) {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let Ok(mut s) = serde_json::to_string(&Line { ts, e }) else {
            return;
        };
        s.push('\n');
        if let Err(TrySendError::Full(_)) = self.tx.try_send(s) {
            tracing::warn!("access log writer behind; entry dropped");
        }
    }
}
