//! The TLS path: read the ClientHello without terminating TLS, route on its
//! server name, replay it to the target and splice both ways.

use super::{connect, read_more, Client, Shared, READ_CHUNK};
use crate::proxy_protocol;
use crate::sni::{self, SniError};
use crate::table::{ListenerConfig, Route};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tracing::warn;

pub(super) async fn serve_tls(
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
pub(super) async fn splice(
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
    let what = super::Logged {
        kind,
        host,
        route,
        request: None,
        status: None,
    };
    super::access(shared, c, listen, what, (bytes_in, bytes_out), start, error);
}
