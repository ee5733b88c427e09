//! Scale to zero: a hibernated partition's rows reach a loopback listener
//! of its own here. A connection to it resumes the partition, is held
//! (at most `max_held` at once, each at most `hold`; else 503) until the
//! partition's server accepts on its virtual port, and is then spliced to
//! it. Once the partition runs, the table reaches it directly again.

use super::doors::{http_error, Doors};
use crate::api::{ApiRequest, ResumeOptions};
use crate::manager::Manager;
use bulkhead_store::PartitionState;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

/// How often a held connection looks at the partition again.
const POLL: Duration = Duration::from_millis(100);

pub(super) struct Wakers {
    doors: Doors<(String, u16)>,
    held: Arc<Semaphore>,
    hold: Duration,
}

impl Wakers {
    pub fn new(max_held: usize, hold: Duration) -> Self {
        Self {
            doors: Doors::default(),
            held: Arc::new(Semaphore::new(max_held)),
            hold,
        }
    }

    /// The loopback address that wakes `partition` for `port`, made on first use.
    pub fn target(
        &self,
        m: &Weak<Manager>,
        partition: &str,
        ip: IpAddr,
        port: u16,
    ) -> std::io::Result<SocketAddr> {
        let key = (partition.to_string(), port);
        self.doors.target(&key, |l| {
            let ctx = Held {
                m: m.clone(),
                name: partition.to_string(),
                fallback: SocketAddr::new(ip, port),
                hold: self.hold,
                resuming: Arc::default(),
            };
            tokio::spawn(accept_loop(l, Arc::new(ctx), self.held.clone()))
        })
    }

    /// Drops the wakers of rows no longer waking.
    pub fn retain(&self, keep: &HashSet<(String, u16)>) {
        self.doors.retain(keep);
    }
}

struct Held {
    m: Weak<Manager>,
    name: String,
    /// The address the partition had when hibernated (it keeps it).
    fallback: SocketAddr,
    hold: Duration,
    /// One resume at a time, however many connections wait.
    resuming: Arc<AtomicBool>,
}

async fn accept_loop(l: TcpListener, ctx: Arc<Held>, held: Arc<Semaphore>) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        match held.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(serve(s, permit, ctx.clone()));
            }
            Err(_) => {
                warn!(partition = %ctx.name, "waking: too many connections held, 503");
                tokio::spawn(async move { http_error(&mut s, 503, "too many waiting").await });
            }
        }
    }
}

async fn serve(mut client: TcpStream, _permit: OwnedSemaphorePermit, ctx: Arc<Held>) {
    let start = tokio::time::Instant::now();
    let deadline = start + ctx.hold;
    let mut up = loop {
        if tokio::time::Instant::now() >= deadline {
            warn!(partition = %ctx.name, "waking: server not answering in time, 503");
            return http_error(&mut client, 503, "the partition is still waking up").await;
        }
        let Some(m) = ctx.m.upgrade() else { return };
        let rec = match m.store().get(&ctx.name).await {
            Ok(Some(r)) => r,
            Ok(None) => return http_error(&mut client, 502, "the partition is gone").await,
            Err(e) => {
                debug!(error = %e, "waking: store not answering; again");
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        match rec.state {
            PartitionState::Hibernated => resume(&m, &ctx),
            PartitionState::Running => {
                let (_, ip) = super::routes::route_state(&rec);
                let to = ip.map_or(ctx.fallback, |ip| SocketAddr::new(ip, ctx.fallback.port()));
                if let Ok(Ok(s)) = tokio::time::timeout(POLL * 10, TcpStream::connect(to)).await {
                    info!(partition = %ctx.name, waited_ms = start.elapsed().as_millis() as u64, "woken; serving the held connection");
                    break s;
                }
            }
            PartitionState::Hibernating | PartitionState::Resuming | PartitionState::Starting => {}
            _ => return http_error(&mut client, 502, "the partition is not running").await,
        }
        drop(m);
        tokio::time::sleep(POLL).await;
    };
    let _ = up.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
}

/// Resumes the partition here unless a resume started by a connection runs.
fn resume(m: &Arc<Manager>, ctx: &Held) {
    if ctx.resuming.swap(true, Ordering::SeqCst) {
        return;
    }
    let (m, flag, name) = (m.clone(), ctx.resuming.clone(), ctx.name.clone());
    tokio::spawn(async move {
        info!(partition = %name, "a connection to its domain resumes it");
        let req = ApiRequest::Resume {
            name: name.clone(),
            opts: ResumeOptions::default(),
        };
        if let Err(e) = m.handle(req).await {
            warn!(partition = %name, error = %e, "resume for a held connection failed");
        }
        flag.store(false, Ordering::SeqCst);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn connections_beyond_the_bound_get_503_at_once() {
        // No connection may be held: the next one is refused, whatever the partition.
        let w = Wakers::new(0, Duration::from_secs(3600));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let addr = w.target(&Weak::new(), "p", ip, 8080).unwrap();
        assert_eq!(
            w.target(&Weak::new(), "p", ip, 8080).unwrap(),
            addr,
            "one per row"
        );
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_string(&mut out))
            .await
            .expect("answered without being held")
            .unwrap();
        assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
        // A row no longer waking stops accepting.
        w.retain(&HashSet::new());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "still accepting");
            tokio::task::yield_now().await;
        }
    }
}
