//! The tokio proxy: accept loops per shared listener, the TLS (SNI) path, the
//! HTTP/1.x (Host) path with per-request routing, upstream keep-alive, and the
//! run-time controls (reload, routes, graceful shutdown).

use crate::access::{AccessLog, Entry};
use crate::http::{self, Body, Chunked, HeadError, RequestHead};
use crate::metrics::Stats;
use crate::proxy_protocol;
use crate::sni::{self, SniError};
use crate::table::{Config, ConfigError, ListenerConfig, Protocol, Route, RouteConfig, Table};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

/// Largest response head accepted from a target.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Idle upstream connections kept per target.
const POOL_PER_TARGET: usize = 64;
const POOL_IDLE: Duration = Duration::from_secs(30);
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, io::Error),
}

/// Idle connections to targets, shared by all client connections. Rows that
/// send a PROXY header never pool: their upstream connection names one client.
#[derive(Default)]
struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<(TcpStream, Instant)>>>,
}

impl Pool {
    /// An idle connection to `addr`. With `retryable` (the request can be sent
    /// again if this connection turns out closed) a recently used connection is
    /// taken without probing it, saving a system call per request.
    fn take(&self, addr: SocketAddr, retryable: bool) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap();
        let list = idle.get_mut(&addr)?;
        while let Some((s, at)) = list.pop() {
            let age = at.elapsed();
            if age > POOL_IDLE {
                continue;
            }
            if retryable && age < Duration::from_secs(1) {
                return Some(s);
            }
            // A closed or chatty idle connection is of no use.
            match s.try_read(&mut [0u8; 1]) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(s),
                _ => continue,
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, s: TcpStream) {
        let mut idle = self.idle.lock().unwrap();
        let list = idle.entry(addr).or_default();
        if list.len() < POOL_PER_TARGET {
            list.push((s, Instant::now()));
        }
    }
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
            match proxy_protocol::decode(&c.buf) {
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
                        .write_all(&http::simple_response(
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
        serve_tls(shared, listen, &cfg, c, head_deadline).await
    } else {
        serve_http(shared, listen, c, head_deadline).await
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

// ---------------------------------------------------------------- TLS path

async fn serve_tls(
    shared: &Arc<Shared>,
    listen: SocketAddr,
    cfg: &ListenerConfig,
    mut c: Client,
    deadline: tokio::time::Instant,
) {
    let start = Instant::now();
    let hello = loop {
        match sni::parse_client_hello(&c.buf, cfg.max_header_bytes) {
            Ok(Some(h)) => break h,
            Ok(None) => match read_more(&mut c.stream, &mut c.buf, Some(deadline)).await {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    shared
                        .table
                        .load()
                        .listeners
                        .get(&listen)
                        .map(|l| l.unmatched.errors.fetch_add(1, Relaxed));
                    warn!(client = %c.peer, listen = %listen, error = %e, "TLS: no complete ClientHello");
                    return;
                }
            },
            Err(e) => {
                shared
                    .table
                    .load()
                    .listeners
                    .get(&listen)
                    .map(|l| l.unmatched.errors.fetch_add(1, Relaxed));
                warn!(client = %c.peer, listen = %listen, error = %e, "TLS: refused malformed ClientHello");
                let desc = if matches!(e, SniError::BadServerName) {
                    sni::ALERT_UNRECOGNIZED_NAME
                } else {
                    sni::ALERT_DECODE_ERROR
                };
                let _ = c.stream.write_all(&sni::alert(desc)).await;
                return;
            }
        }
    };
    let name = hello.server_name.as_deref();
    let route = {
        let table = shared.table.load();
        let Some(lt) = table.listeners.get(&listen) else {
            return;
        };
        match lt.lookup(name) {
            Some(r) => r.clone(),
            None => {
                lt.unmatched.errors.fetch_add(1, Relaxed);
                warn!(client = %c.peer, listen = %listen, sni = name.unwrap_or("-"), "TLS: unknown name, unrecognized_name sent");
                let _ = c
                    .stream
                    .write_all(&sni::alert(sni::ALERT_UNRECOGNIZED_NAME))
                    .await;
                log(
                    shared,
                    &c,
                    listen,
                    "tls",
                    name,
                    None,
                    0,
                    0,
                    start,
                    Some("unknown name"),
                );
                return;
            }
        }
    };
    let st = &route.stats;
    st.connections.fetch_add(1, Relaxed);
    st.requests.fetch_add(1, Relaxed);
    let Some(_slot) = st.acquire(route.cfg.max_connections) else {
        st.errors.fetch_add(1, Relaxed);
        warn!(client = %c.peer, sni = name.unwrap_or("-"), target = %route.cfg.target, "TLS: row connection limit reached, closed");
        log(
            shared,
            &c,
            listen,
            "tls",
            name,
            Some(&route),
            0,
            0,
            start,
            Some("limit"),
        );
        return;
    };
    let mut up = match connect(&route, cfg.connect_timeout.0).await {
        Ok((s, _)) => s,
        Err(e) => {
            st.errors.fetch_add(1, Relaxed);
            warn!(client = %c.peer, sni = name.unwrap_or("-"), target = %route.cfg.target, error = %e, "TLS: target down, connection closed");
            log(
                shared,
                &c,
                listen,
                "tls",
                name,
                Some(&route),
                0,
                0,
                start,
                Some("target down"),
            );
            return;
        }
    };
    let mut first = Vec::with_capacity(c.buf.len() + 64);
    if let Some(v) = route.cfg.proxy_protocol {
        first.extend_from_slice(&proxy_protocol::encode(v, c.peer, c.local()));
    }
    first.extend_from_slice(&c.buf);
    if up.write_all(&first).await.is_err() {
        st.errors.fetch_add(1, Relaxed);
        return;
    }
    let (cin, cout, res) = splice(&mut c.stream, &mut up, cfg.idle_timeout.0).await;
    let cin = cin + c.buf.len() as u64;
    st.add_bytes(cin, cout);
    st.observe(start.elapsed());
    let err = res.err().map(|e| e.to_string());
    log(
        shared,
        &c,
        listen,
        "tls",
        name,
        Some(&route),
        cin,
        cout,
        start,
        err.as_deref(),
    );
}

/// Counts bytes and notes activity on a stream being spliced.
struct Tracked<'a> {
    s: &'a mut TcpStream,
    bytes: &'a AtomicU64,
    last: &'a AtomicU64,
    epoch: Instant,
}

impl AsyncRead for Tracked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.s).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.bytes.fetch_add(n as u64, Relaxed);
            self.last
                .store(self.epoch.elapsed().as_millis() as u64, Relaxed);
        }
        r
    }
}

impl AsyncWrite for Tracked<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.s).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.s).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.s).poll_shutdown(cx)
    }
}

/// Copies both ways until both sides close, or nothing moved for `idle`.
/// Returns bytes client→target, target→client and how it ended.
async fn splice(
    client: &mut TcpStream,
    target: &mut TcpStream,
    idle: Duration,
) -> (u64, u64, io::Result<()>) {
    let (cin, cout, last) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let epoch = Instant::now();
    let mut a = Tracked {
        s: client,
        bytes: &cin,
        last: &last,
        epoch,
    };
    let mut b = Tracked {
        s: target,
        bytes: &cout,
        last: &last,
        epoch,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, READ_CHUNK, READ_CHUNK);
    tokio::pin!(copy);
    let res = loop {
        let since = Duration::from_millis(epoch.elapsed().as_millis() as u64 - last.load(Relaxed));
        let wait = idle.saturating_sub(since);
        if wait.is_zero() {
            break Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
        }
        tokio::select! {
            r = &mut copy => break r.map(|_| ()),
            _ = tokio::time::sleep(wait) => {}
        }
    };
    (cin.load(Relaxed), cout.load(Relaxed), res)
}

#[allow(clippy::too_many_arguments)]
fn log(
    shared: &Shared,
    c: &Client,
    listen: SocketAddr,
    kind: &'static str,
    host: Option<&str>,
    route: Option<&Route>,
    bytes_in: u64,
    bytes_out: u64,
    start: Instant,
    error: Option<&str>,
) {
    if let Some(a) = &shared.access {
        a.write(Entry {
            client: c.peer,
            listen,
            kind,
            host,
            route: route.map(|r| r.cfg.domain.as_str()),
            target: route.map(|r| r.cfg.target.as_str()),
            request: None,
            status: None,
            bytes_in,
            bytes_out,
            duration_us: start.elapsed().as_micros() as u64,
            error,
        });
    }
}

// ---------------------------------------------------------------- HTTP path

struct Upstream {
    stream: TcpStream,
    buf: Vec<u8>,
    addr: SocketAddr,
    route: Arc<Route>,
    /// Came from a pool or an earlier request: may have been closed meanwhile.
    reused: bool,
}

/// How a request cycle ended, when it did not end well.
enum Fail {
    /// The client went away or misbehaved mid-body: just close.
    Client,
    /// Nothing came back from the target before its response head.
    NoResponse(io::Error),
    /// The target's response head was malformed.
    BadResponse(HeadError),
    /// The response was cut after it had started reaching the client.
    Midway,
}

struct Done {
    status: u16,
    keep_alive: bool,
    upgrade: bool,
    reusable: bool,
    bytes_in: u64,
    bytes_out: u64,
}

async fn respond(c: &mut Client, status: u16, body: &str, close: bool) {
    let _ = c
        .stream
        .write_all(&http::simple_response(
            status,
            http::reason(status),
            body,
            close,
        ))
        .await;
}

async fn serve_http(
    shared: &Arc<Shared>,
    listen: SocketAddr,
    mut c: Client,
    first_deadline: tokio::time::Instant,
) {
    let mut up: Option<Upstream> = None;
    let mut deadline = Some(first_deadline);
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let table = shared.table.load_full();
        let Some(lt) = table.listeners.get(&listen) else {
            break;
        };
        let cfg = &lt.cfg;
        // Wait for the next request: idle timeout until its first byte, then
        // the header timeout for the rest of the head.
        let head = loop {
            match http::parse_request(&c.buf, cfg.max_header_bytes) {
                Ok(Some(h)) => break Ok(h),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
            if c.buf.is_empty() {
                if *shutdown.borrow() {
                    return finish(shared, up);
                }
                let idle = tokio::time::Instant::now() + cfg.idle_timeout.0;
                let r = tokio::select! {
                    r = read_more(&mut c.stream, &mut c.buf, Some(deadline.map_or(idle, |d| d.min(idle)))) => r,
                    _ = shutdown.changed() => return finish(shared, up),
                };
                match r {
                    Ok(0) | Err(_) => return finish(shared, up),
                    Ok(_) => {}
                }
                deadline.get_or_insert(tokio::time::Instant::now() + cfg.header_timeout.0);
            } else {
                // Part of a head is here (pipelined, or the first bytes): the
                // header timeout runs from now at the latest.
                let d = *deadline.get_or_insert(tokio::time::Instant::now() + cfg.header_timeout.0);
                match read_more(&mut c.stream, &mut c.buf, Some(d)).await {
                    Ok(0) => return finish(shared, up),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                        lt.unmatched.errors.fetch_add(1, Relaxed);
                        warn!(client = %c.peer, listen = %listen, "HTTP: request head not complete within header_timeout");
                        respond(&mut c, 408, "request head timeout\n", true).await;
                        return finish(shared, up);
                    }
                    Err(_) => return finish(shared, up),
                }
            }
        };
        deadline = None;
        let head = match head {
            Ok(h) => h,
            Err(e) => {
                lt.unmatched.errors.fetch_add(1, Relaxed);
                warn!(client = %c.peer, listen = %listen, error = %e, "HTTP: refused malformed request");
                respond(&mut c, e.status(), &format!("{e}\n"), true).await;
                return finish(shared, up);
            }
        };
        // Route with the table in force now, not the one from before the wait.
        let table = shared.table.load_full();
        let Some(lt) = table.listeners.get(&listen) else {
            break;
        };
        let cfg = &lt.cfg;
        let start = Instant::now();
        // The request line, for the access log only.
        let line: Option<String> = shared.access.as_ref().map(|_| {
            let end = c
                .buf
                .iter()
                .position(|&b| b == b'\r' || b == b'\n')
                .unwrap_or(0);
            String::from_utf8_lossy(&c.buf[..end]).into_owned()
        });
        let line = line.as_deref();
        let Some(route) = lt.lookup(head.host.as_deref()).cloned() else {
            lt.unmatched.errors.fetch_add(1, Relaxed);
            let host = head.host.as_deref().unwrap_or("-");
            warn!(client = %c.peer, listen = %listen, host, "HTTP: no row for host, 421");
            let keep = head.keep_alive && head.body == Body::None;
            respond(
                &mut c,
                421,
                &format!("no server for {host} on this port\n"),
                !keep,
            )
            .await;
            http_log(
                shared,
                &c,
                listen,
                line,
                &head,
                None,
                421,
                0,
                0,
                start,
                Some("unknown host"),
            );
            if !keep {
                return finish(shared, up);
            }
            c.buf.drain(..head.len);
            continue;
        };
        let st = route.stats.clone();
        st.requests.fetch_add(1, Relaxed);
        let Some(_slot) = st.acquire(route.cfg.max_connections) else {
            st.errors.fetch_add(1, Relaxed);
            warn!(client = %c.peer, host = head.host.as_deref().unwrap_or("-"), target = %route.cfg.target, "HTTP: row limit reached, 503");
            respond(&mut c, 503, "too many connections to this server\n", true).await;
            http_log(
                shared,
                &c,
                listen,
                line,
                &head,
                Some(&route),
                503,
                0,
                0,
                start,
                Some("limit"),
            );
            return finish(shared, up);
        };
        let mut retried = false;
        let outcome = loop {
            let u = match take_upstream(
                shared,
                &mut up,
                &route,
                &c,
                cfg.connect_timeout.0,
                head.body == Body::None && !retried,
            )
            .await
            {
                Ok(u) => u,
                Err(e) => break Err(Fail::NoResponse(e)),
            };
            let reused = u.reused;
            let r = exchange(&mut c, u, &head, cfg.idle_timeout.0).await;
            match r {
                // A kept-alive upstream may have closed just before our request:
                // safe to send again on a new connection when no body was sent.
                Err(Fail::NoResponse(_)) if reused && !retried && head.body == Body::None => {
                    up = None;
                    retried = true;
                    continue;
                }
                other => break other,
            }
        };
        let outcome = match outcome {
            Ok(x) => x,
            Err(f) => {
                st.errors.fetch_add(1, Relaxed);
                let (status, msg) = match &f {
                    Fail::NoResponse(e) if e.kind() == io::ErrorKind::TimedOut => {
                        (504, e.to_string())
                    }
                    Fail::NoResponse(e) => (502, e.to_string()),
                    Fail::BadResponse(e) => (502, e.to_string()),
                    Fail::Client => (0, "client closed mid-request".into()),
                    Fail::Midway => (0, "target closed mid-response".into()),
                };
                if status != 0 {
                    warn!(client = %c.peer, host = head.host.as_deref().unwrap_or("-"), target = %route.cfg.target, error = %msg, "HTTP: target failed, {status}");
                    respond(
                        &mut c,
                        status,
                        &format!("bad gateway: {} is not answering\n", route.cfg.domain),
                        true,
                    )
                    .await;
                } else {
                    debug!(client = %c.peer, error = %msg, "HTTP: connection cut");
                }
                http_log(
                    shared,
                    &c,
                    listen,
                    line,
                    &head,
                    Some(&route),
                    status,
                    0,
                    0,
                    start,
                    Some(&msg),
                );
                return finish(shared, None);
            }
        };
        let (d, u) = outcome;
        st.add_bytes(d.bytes_in, d.bytes_out);
        st.observe(start.elapsed());
        http_log(
            shared,
            &c,
            listen,
            line,
            &head,
            Some(&route),
            d.status,
            d.bytes_in,
            d.bytes_out,
            start,
            None,
        );
        if d.upgrade {
            let mut u = u;
            let (i, o, _) = splice(&mut c.stream, &mut u.stream, cfg.idle_timeout.0).await;
            st.add_bytes(i, o);
            return;
        }
        up = if d.reusable { Some(u) } else { None };
        if !d.keep_alive {
            return finish(shared, up);
        }
    }
    finish(shared, up)
}

/// Puts a reusable upstream connection back into the shared pool.
fn finish(shared: &Shared, up: Option<Upstream>) {
    if let Some(u) = up {
        if u.route.cfg.proxy_protocol.is_none() && u.buf.is_empty() {
            shared.pool.put(u.addr, u.stream);
        }
    }
}

async fn take_upstream(
    shared: &Shared,
    up: &mut Option<Upstream>,
    route: &Arc<Route>,
    c: &Client,
    timeout: Duration,
    retryable: bool,
) -> io::Result<Upstream> {
    if let Some(u) = up.take() {
        let same = Arc::ptr_eq(&u.route, route)
            || (route.cfg.proxy_protocol.is_none()
                && u.route.cfg.proxy_protocol.is_none()
                && route.addr == Some(u.addr));
        if same {
            return Ok(Upstream {
                route: route.clone(),
                reused: true,
                ..u
            });
        }
        finish(shared, Some(u));
    }
    if route.cfg.proxy_protocol.is_none() {
        if let Some(addr) = route.addr {
            if let Some(s) = shared.pool.take(addr, retryable) {
                return Ok(Upstream {
                    stream: s,
                    buf: Vec::with_capacity(4096),
                    addr,
                    route: route.clone(),
                    reused: true,
                });
            }
        }
    }
    let (mut s, addr) = connect(route, timeout).await?;
    route.stats.connections.fetch_add(1, Relaxed);
    if let Some(v) = route.cfg.proxy_protocol {
        s.write_all(&proxy_protocol::encode(v, c.peer, c.local()))
            .await?;
    }
    Ok(Upstream {
        stream: s,
        buf: Vec::with_capacity(4096),
        addr,
        route: route.clone(),
        reused: false,
    })
}

/// Sends one request and relays its response. On success returns the upstream
/// connection for reuse (if `reusable`).
async fn exchange(
    c: &mut Client,
    mut u: Upstream,
    head: &RequestHead,
    idle: Duration,
) -> Result<(Done, Upstream), Fail> {
    // Head plus whatever body bytes already arrived, in one write.
    let mut body_state = BodyProgress::new(head.body);
    let already = body_state
        .advance(&c.buf[head.len..])
        .map_err(|_| Fail::Client)?;
    let first = head.len + already;
    let sent = if head.close_requested {
        let mut h = http::strip_connection_header(&c.buf[..head.len]);
        h.extend_from_slice(&c.buf[head.len..first]);
        u.stream.write_all(&h).await
    } else {
        u.stream.write_all(&c.buf[..first]).await
    };
    if let Err(e) = sent {
        return Err(Fail::NoResponse(e));
    }
    // A bodiless request keeps its head in the buffer until answered, so it
    // can be sent again if a reused target connection turns out dead.
    let retain = head.body == Body::None;
    if !retain {
        c.buf.drain(..first);
    }
    let mut bytes_in = first as u64;

    let pre_done = body_state.done();
    let (body_res, resp) = {
        let (mut cr, mut cw) = c.stream.split();
        let (mut ur, mut uw) = u.stream.split();
        let cbuf = &mut c.buf;
        let ubuf = &mut u.buf;
        let authority = head.authority.as_deref();
        let route = &u.route;

        let body = async {
            let mut sent = 0u64;
            while !body_state.done() {
                let n = read_more(&mut cr, cbuf, Some(tokio::time::Instant::now() + idle))
                    .await
                    .map_err(|_| Fail::Client)?;
                if n == 0 {
                    return Err(Fail::Client);
                }
                let take = body_state.advance(cbuf).map_err(|_| Fail::Client)?;
                uw.write_all(&cbuf[..take])
                    .await
                    .map_err(|_| Fail::Client)?;
                cbuf.drain(..take);
                sent += take as u64;
            }
            Ok::<u64, Fail>(sent)
        };
        let response = relay_response(&mut ur, ubuf, &mut cw, head, authority, route, idle);
        tokio::pin!(body, response);
        let mut body_res = None;
        let resp = loop {
            tokio::select! {
                biased;
                r = &mut body, if body_res.is_none() => {
                    match r {
                        Ok(n) => body_res = Some(n),
                        Err(f) => return Err(f),
                    }
                }
                r = &mut response => break r?,
            }
        };
        (body_res, resp)
    };
    // The target answered before the request body was all sent (an early
    // error reply, or a refused 100-continue): the connection cannot be reused.
    let body_complete = pre_done || body_res.is_some();
    if retain {
        c.buf.drain(..first);
    }
    bytes_in += body_res.unwrap_or(0);
    let (status, keep, upgrade, reusable, bytes_out) = resp;
    Ok((
        Done {
            status,
            keep_alive: keep && head.keep_alive && body_complete,
            upgrade,
            reusable: reusable && body_complete,
            bytes_in,
            bytes_out,
        },
        u,
    ))
}

/// Where a request body ends.
enum BodyProgress {
    Left(u64),
    Chunked(Chunked),
}

impl BodyProgress {
    fn new(b: Body) -> Self {
        match b {
            Body::Length(n) => BodyProgress::Left(n),
            Body::Chunked => BodyProgress::Chunked(Chunked::default()),
            Body::None | Body::Close => BodyProgress::Left(0),
        }
    }
    fn done(&self) -> bool {
        match self {
            BodyProgress::Left(n) => *n == 0,
            BodyProgress::Chunked(c) => c.is_done(),
        }
    }
    /// How many bytes of `buf` belong to the body.
    fn advance(&mut self, buf: &[u8]) -> Result<usize, HeadError> {
        match self {
            BodyProgress::Left(n) => {
                let take = (*n).min(buf.len() as u64);
                *n -= take;
                Ok(take as usize)
            }
            BodyProgress::Chunked(c) if c.is_done() => Ok(0),
            BodyProgress::Chunked(c) => c.feed(buf),
        }
    }
}

type Relayed = (u16, bool, bool, bool, u64);

/// Reads response heads from the target (relaying 1xx), maps virtual ports in
/// URI headers back, and relays the body. Returns (status, keep-alive,
/// upgraded, upstream reusable, bytes).
async fn relay_response<R, W>(
    ur: &mut R,
    ubuf: &mut Vec<u8>,
    cw: &mut W,
    req: &RequestHead,
    authority: Option<&str>,
    route: &Route,
    idle: Duration,
) -> Result<Relayed, Fail>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out = 0u64;
    loop {
        let head = loop {
            match http::parse_response(ubuf, MAX_RESPONSE_HEAD, req.is_head) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(e) => {
                    return Err(if out == 0 {
                        Fail::BadResponse(e)
                    } else {
                        Fail::Midway
                    })
                }
            }
            match read_more(ur, ubuf, Some(tokio::time::Instant::now() + idle)).await {
                Ok(0) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "target closed before responding",
                    );
                    return Err(if out == 0 {
                        Fail::NoResponse(e)
                    } else {
                        Fail::Midway
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(if out == 0 {
                        Fail::NoResponse(e)
                    } else {
                        Fail::Midway
                    })
                }
            }
        };
        let rewritten = if head.has_uri_headers {
            authority.and_then(|a| {
                let host = req.host.as_deref().unwrap_or("");
                http::rewrite_uri_headers(
                    &ubuf[..head.len],
                    &[host, &route.target_host],
                    route.target_port,
                    a,
                )
            })
        } else {
            None
        };
        if (100..200).contains(&head.status) {
            let w = match &rewritten {
                Some(r) => cw.write_all(r).await,
                None => cw.write_all(&ubuf[..head.len]).await,
            };
            w.map_err(|_| Fail::Client)?;
            out += head.len as u64;
            ubuf.drain(..head.len);
            if head.status == 101 {
                if !req.upgrade {
                    return Err(Fail::Midway);
                }
                // Bytes the target sent after its 101 belong to the new protocol.
                if !ubuf.is_empty() {
                    cw.write_all(ubuf).await.map_err(|_| Fail::Client)?;
                    out += ubuf.len() as u64;
                    ubuf.clear();
                }
                return Ok((101, false, true, false, out));
            }
            continue;
        }
        // Final response: head and the body bytes already here in one write.
        let mut body = match head.body {
            Body::Length(n) => BodyProgress::Left(n),
            Body::Chunked => BodyProgress::Chunked(Chunked::default()),
            Body::None => BodyProgress::Left(0),
            Body::Close => BodyProgress::Left(u64::MAX),
        };
        let take = body.advance(&ubuf[head.len..]).map_err(|_| Fail::Midway)?;
        // The client asked to close but the target's head says keep-alive:
        // say close, as the proxy will (RFC 9112 §9.6).
        let new_head = if !req.keep_alive && head.keep_alive {
            Some(http::set_connection_close(
                rewritten.as_deref().unwrap_or(&ubuf[..head.len]),
            ))
        } else {
            rewritten
        };
        match new_head {
            Some(mut h) => {
                h.extend_from_slice(&ubuf[head.len..head.len + take]);
                cw.write_all(&h).await.map_err(|_| Fail::Client)?;
                out += h.len() as u64;
            }
            None => {
                cw.write_all(&ubuf[..head.len + take])
                    .await
                    .map_err(|_| Fail::Client)?;
                out += (head.len + take) as u64;
            }
        }
        ubuf.drain(..head.len + take);
        while !body.done() {
            match read_more(ur, ubuf, Some(tokio::time::Instant::now() + idle)).await {
                Ok(0) if head.body == Body::Close => {
                    return Ok((head.status, false, false, false, out));
                }
                Ok(0) | Err(_) => return Err(Fail::Midway),
                Ok(_) => {}
            }
            let take = body.advance(ubuf).map_err(|_| Fail::Midway)?;
            cw.write_all(&ubuf[..take])
                .await
                .map_err(|_| Fail::Client)?;
            out += take as u64;
            ubuf.drain(..take);
        }
        // Extra bytes after the body mean the target is confused: don't reuse it.
        let reusable = head.keep_alive && ubuf.is_empty();
        return Ok((head.status, head.keep_alive, false, reusable, out));
    }
}

#[allow(clippy::too_many_arguments)]
fn http_log(
    shared: &Shared,
    c: &Client,
    listen: SocketAddr,
    line: Option<&str>,
    head: &RequestHead,
    route: Option<&Route>,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    start: Instant,
    error: Option<&str>,
) {
    if let Some(a) = &shared.access {
        a.write(Entry {
            client: c.peer,
            listen,
            kind: "http",
            host: head.host.as_deref(),
            route: route.map(|r| r.cfg.domain.as_str()),
            target: route.map(|r| r.cfg.target.as_str()),
            request: line,
            status: Some(status),
            bytes_in,
            bytes_out,
            duration_us: start.elapsed().as_micros() as u64,
            error,
        });
    }
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
