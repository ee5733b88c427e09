//! The tokio proxy: accept loops per shared listener and the run-time controls
//! (reload, routes, graceful shutdown). The TLS (SNI) path is in [`tls`], the
//! HTTP/1.x (Host) path in [`http`] (its decisions in `crate::http::proxy`),
//! the shared pool of target connections in [`pool`].

mod http;
mod pool;
mod tls;

use crate::access::{AccessLog, Entry};
use crate::metrics::Stats;
use crate::table::{Config, ConfigError, ListenerConfig, Protocol, Route, RouteConfig, Table};
use arc_swap::ArcSwap;
use pool::Pool;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, io::Error),
}

/// Counts open client connections so shutdown can wait for them.
#[derive(Default)]
struct Tracker {
    open: AtomicUsize,
    zero: Notify,
}

struct ConnGuard(Arc<Shared>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.tracker.open.fetch_sub(1, Relaxed) == 1 {
            self.0.tracker.zero.notify_waiters();
        }
    }
}

struct Shared {
    table: ArcSwap<Table>,
    stats: Arc<Stats>,
    pool: Pool,
    tracker: Tracker,
    shutdown: watch::Sender<bool>,
    access: Option<AccessLog>,
}

struct ListenerHandle {
    stop: watch::Sender<bool>,
    local: SocketAddr,
}

/// A running shared-port proxy.
pub struct Server {
    shared: Arc<Shared>,
    listeners: Mutex<HashMap<SocketAddr, ListenerHandle>>,
    /// Serialises table changes so two admin calls cannot lose each other's row.
    change: tokio::sync::Mutex<()>,
}

impl Server {
    /// Validates `config`, binds every listener (and the metrics and admin
    /// endpoints) and starts serving. Must be called inside a tokio runtime.
    pub async fn start(config: Config) -> anyhow::Result<Arc<Server>> {
        let stats = Arc::new(Stats::default());
        let table = Table::build(config.clone(), &stats)?;
        let access = match &config.access_log {
            Some(p) => Some(AccessLog::open(p)?),
            None => None,
        };
        let (shutdown, _) = watch::channel(false);
        let server = Arc::new(Server {
            shared: Arc::new(Shared {
                table: ArcSwap::from_pointee(table),
                stats,
                pool: Pool::default(),
                tracker: Tracker::default(),
                shutdown,
                access,
            }),
            listeners: Mutex::new(HashMap::new()),
            change: tokio::sync::Mutex::new(()),
        });
        let bound = bind_all(&config.listeners, &HashMap::<SocketAddr, ()>::new()).await?;
        server.start_listeners(bound);
        if let Some(addr) = config.metrics {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| ServerError::Bind(addr, e))?;
            tokio::spawn(crate::admin::serve_metrics(
                l,
                server.shared.stats.clone(),
                server.shutdown_rx(),
            ));
        }
        if let Some(path) = &config.admin_socket {
            let l = crate::admin::bind_admin(path)?;
            tokio::spawn(crate::admin::serve_admin(l, server.clone()));
        }
        Ok(server)
    }

    fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shared.shutdown.subscribe()
    }

    fn start_listeners(&self, bound: Vec<(SocketAddr, TcpListener)>) {
        let mut map = self.listeners.lock().unwrap();
        for (addr, l) in bound {
            let (stop, stop_rx) = watch::channel(false);
            let local = l.local_addr().unwrap_or(addr);
            info!(listen = %addr, "portshare listening");
            tokio::spawn(accept_loop(
                self.shared.clone(),
                addr,
                l,
                stop_rx,
                self.shutdown_rx(),
            ));
            map.insert(addr, ListenerHandle { stop, local });
        }
    }

    /// The bound address of a configured listener (useful with port 0).
    pub fn local_addr(&self, listen: SocketAddr) -> Option<SocketAddr> {
        self.listeners.lock().unwrap().get(&listen).map(|h| h.local)
    }

    /// The table in force now.
    pub fn table(&self) -> Arc<Table> {
        self.shared.table.load_full()
    }

    pub fn metrics(&self) -> String {
        self.shared.stats.render()
    }

    /// Replaces the whole configuration: new listeners are bound first (a bind
    /// failure changes nothing), then the table is swapped atomically, then
    /// listeners no longer configured stop accepting. Open connections keep
    /// the rows they were routed with.
    pub async fn reload(&self, config: Config) -> anyhow::Result<()> {
        let _g = self.change.lock().await;
        self.apply(config).await
    }

    async fn apply(&self, config: Config) -> anyhow::Result<()> {
        let table = Table::build(config.clone(), &self.shared.stats)?;
        let running: HashMap<SocketAddr, ()> = self
            .listeners
            .lock()
            .unwrap()
            .keys()
            .map(|k| (*k, ()))
            .collect();
        let bound = bind_all(&config.listeners, &running).await?;
        self.shared.table.store(Arc::new(table));
        self.start_listeners(bound);
        let mut map = self.listeners.lock().unwrap();
        map.retain(|addr, h| {
            let keep = config.listeners.iter().any(|l| l.listen == *addr);
            if !keep {
                info!(listen = %addr, "listener removed from the table; it stops accepting");
                let _ = h.stop.send(true);
            }
            keep
        });
        Ok(())
    }

    /// Adds a row, or replaces the row with the same listener and domain.
    pub async fn add_route(&self, route: RouteConfig) -> anyhow::Result<()> {
        let _g = self.change.lock().await;
        let cfg = self.table().with_route(route);
        self.apply(cfg).await
    }

    pub async fn remove_route(&self, listen: SocketAddr, domain: &str) -> anyhow::Result<()> {
        let _g = self.change.lock().await;
        let cfg = self.table().without_route(listen, domain)?;
        self.apply(cfg).await
    }

    /// Stops accepting everywhere, lets open connections finish (keep-alive
    /// connections close after their current request) and returns when all are
    /// done or `deadline` passed; returns the number still open.
    pub async fn shutdown(&self, deadline: Duration) -> usize {
        let _ = self.shared.shutdown.send(true);
        let t = &self.shared.tracker;
        let wait = async {
            loop {
                let notified = t.zero.notified();
                if t.open.load(Relaxed) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        t.open.load(Relaxed)
    }
}

async fn bind_all(
    wanted: &[ListenerConfig],
    running: &HashMap<SocketAddr, impl Sized>,
) -> Result<Vec<(SocketAddr, TcpListener)>, ServerError> {
    let mut out = Vec::new();
    for l in wanted.iter().filter(|l| !running.contains_key(&l.listen)) {
        let sock = if l.listen.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(|e| ServerError::Bind(l.listen, e))?;
        sock.set_reuseaddr(true)
            .map_err(|e| ServerError::Bind(l.listen, e))?;
        sock.bind(l.listen)
            .map_err(|e| ServerError::Bind(l.listen, e))?;
        defer_accept(&sock, l.header_timeout.0).map_err(|e| ServerError::Bind(l.listen, e))?;
        out.push((
            l.listen,
            sock.listen(1024)
                .map_err(|e| ServerError::Bind(l.listen, e))?,
        ));
    }
    Ok(out)
}

/// Every protocol here has the client speak first (HTTP, TLS, a PROXY header), so the
/// kernel may hand a connection over only once its first bytes are in: one wakeup and
/// one empty read fewer per connection (nginx's `deferred`, HAProxy's `defer-accept`).
/// A client that stays silent is still handed over after about `wait`, and the
/// listener's timeouts then apply as before.
fn defer_accept(sock: &tokio::net::TcpSocket, wait: Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let secs: libc::c_int = wait.as_secs().clamp(1, 3600) as libc::c_int;
    // SAFETY: the fd is a live socket owned by `sock`; the option value is a c_int
    // whose size is passed alongside.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

async fn accept_loop(
    shared: Arc<Shared>,
    listen: SocketAddr,
    l: TcpListener,
    mut stop: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(listen = %listen, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
            _ = shutdown.changed() => break,
        };
        shared.tracker.open.fetch_add(1, Relaxed);
        let guard = ConnGuard(shared.clone());
        let shared = shared.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let _ = stream.set_nodelay(true);
            handle(&shared, listen, stream, peer).await;
        });
    }
    debug!(listen = %listen, "accept loop ended");
}

/// Reads more bytes into `buf`, failing with TimedOut at `deadline`.
async fn read_more<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    deadline: Option<tokio::time::Instant>,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 2048 {
        buf.reserve(READ_CHUNK);
    }
    match deadline {
        Some(d) => tokio::time::timeout_at(d, r.read_buf(buf))
            .await
            .map_err(|_| io::ErrorKind::TimedOut)?,
        None => r.read_buf(buf).await,
    }
}

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The caller: the socket peer, or the address a trusted front named.
    peer: SocketAddr,
    /// The shared port as the client reached it (PROXY destination); looked
    /// up only when a row needs it, as it costs a system call.
    local: Option<SocketAddr>,
    listen: SocketAddr,
}

impl Client {
    fn local(&self) -> SocketAddr {
        self.local
            .or_else(|| self.stream.local_addr().ok())
            .unwrap_or(self.listen)
    }
}

async fn handle(shared: &Arc<Shared>, listen: SocketAddr, stream: TcpStream, peer: SocketAddr) {
    let table = shared.table.load_full();
    let Some(lt) = table.listeners.get(&listen) else {
        return;
    };
    let cfg = lt.cfg.clone();
    let head_deadline = tokio::time::Instant::now() + cfg.header_timeout.0;
    let mut c = Client {
        stream,
        buf: Vec::with_capacity(4096),
        peer,
        local: None,
        listen,
    };

    if lt.trusts_proxy_from(peer.ip()) {
        loop {
            match crate::proxy_protocol::decode(&c.buf) {
                Ok(Some((h, n))) => {
                    c.buf.drain(..n);
                    if let Some((src, dst)) = h.addrs {
                        c.peer = src;
                        c.local = Some(dst);
                    }
                    break;
                }
                Ok(None) => match read_more(&mut c.stream, &mut c.buf, Some(head_deadline)).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                Err(e) => {
                    lt.unmatched.errors.fetch_add(1, Relaxed);
                    warn!(client = %peer, listen = %listen, error = %e, "refused: bad PROXY header from trusted front");
                    return;
                }
            }
        }
    }
    drop(table);

    if c.buf.is_empty() {
        match read_more(&mut c.stream, &mut c.buf, Some(head_deadline)).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                debug!(client = %c.peer, error = %e, "no first byte");
                if e.kind() == io::ErrorKind::TimedOut {
                    let _ = c
                        .stream
                        .write_all(&crate::http::simple_response(
                            408,
                            "Request Timeout",
                            "request timeout\n",
                            true,
                        ))
                        .await;
                }
                return;
            }
        }
    }
    let tls = match cfg.protocol {
        Protocol::Tls => true,
        Protocol::Http => false,
        Protocol::Auto => c.buf[0] == 22,
    };
    if tls {
        tls::serve_tls(shared, listen, &cfg, c, head_deadline).await
    } else {
        http::serve_http(shared, listen, c, head_deadline).await
    }
}

/// What an access-log line says beyond the client and the byte counts.
struct Logged<'a> {
    kind: &'static str,
    host: Option<&'a str>,
    route: Option<&'a Route>,
    request: Option<&'a str>,
    status: Option<u16>,
}

fn access(
    shared: &Shared,
    c: &Client,
    listen: SocketAddr,
    what: Logged<'_>,
    (bytes_in, bytes_out): (u64, u64),
    start: std::time::Instant,
    error: Option<&str>,
) {
    if let Some(a) = &shared.access {
        a.write(Entry {
            client: c.peer,
            listen,
            kind: what.kind,
            host: what.host,
            route: what.route.map(|r| r.cfg.domain.as_str()),
            target: what.route.map(|r| r.cfg.target.as_str()),
            request: what.request,
            status: what.status,
            bytes_in,
            bytes_out,
            duration_us: start.elapsed().as_micros() as u64,
            error,
        });
    }
}

async fn connect(route: &Route, timeout: Duration) -> io::Result<(TcpStream, SocketAddr)> {
    let fut = async {
        let addrs: Vec<SocketAddr> = match route.addr {
            Some(a) => vec![a],
            None => tokio::net::lookup_host(&route.cfg.target).await?.collect(),
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "target resolves to no address");
        for a in addrs {
            match TcpStream::connect(a).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok((s, a));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listeners_defer_accept_until_the_first_bytes() {
        use std::os::fd::AsRawFd;
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        defer_accept(&sock, Duration::from_secs(10)).unwrap();
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: v and len are live locals sized for the option.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        // The kernel rounds to its SYN-ACK retransmission schedule.
        assert!(v >= 10, "{v}");
    }
}
