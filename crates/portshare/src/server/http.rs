//! The HTTP/1.x (Host) path: per-request routing on keep-alive client
//! connections, target connections kept and pooled, bodies streamed. Every
//! decision is `http::proxy`'s; this loop moves bytes.

use super::pool::probe;
use super::tls::splice;
use super::{connect, read_more, Client, Shared};
use crate::http::proxy::{self, BodyReader, Event, ResponseError, ResponseReader};
use crate::http::{self, HeadError, RequestHead};
use crate::proxy_protocol;
use crate::table::{ListenerTable, Route};
use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, warn};

/// Largest response head accepted from a target.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

pub(super) struct Upstream {
    stream: TcpStream,
    buf: Vec<u8>,
    addr: SocketAddr,
    route: Arc<Route>,
    /// Came from a pool or an earlier request: may have been closed meanwhile.
    reused: bool,
}

/// How a request cycle ended, when it did not end well.
enum Fail {
    /// The client went away mid-body: just close.
    Client,
    /// The request body's framing is not canonical; `responded`: part of a
    /// response already reached the client (then no 400 can follow).
    BadBody(HeadError, bool),
    /// Nothing usable came back before the response head; `received`: some
    /// bytes did (then the request must not be sent again).
    NoResponse(io::Error, bool),
    /// The target's response head was malformed.
    BadResponse(ResponseError),
    /// The response was cut after it had started reaching the client.
    Midway,
}

struct Done {
    status: u16,
    verdict: proxy::Verdict,
    upgrade: bool,
    bytes_in: u64,
    bytes_out: u64,
}

pub(super) async fn respond(c: &mut Client, status: u16, body: &str, close: bool) {
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

pub(super) async fn serve_http(
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
        let log =
            |c: &Client, route: Option<&Route>, status: u16, i: u64, o: u64, err: Option<&str>| {
                http_log(
                    shared,
                    c,
                    listen,
                    line,
                    &head,
                    route,
                    status,
                    (i, o),
                    start,
                    err,
                )
            };
        let Some(route) = lt.lookup(head.host.as_deref()).cloned() else {
            lt.unmatched.errors.fetch_add(1, Relaxed);
            let host = head.host.as_deref().unwrap_or("-");
            warn!(client = %c.peer, listen = %listen, host, "HTTP: no row for host, 421");
            let keep = head.keep_alive && head.body == http::Body::None;
            respond(
                &mut c,
                421,
                &format!("no server for {host} on this port\n"),
                !keep,
            )
            .await;
            log(&c, None, 421, 0, 0, Some("unknown host"));
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
            log(&c, Some(&route), 503, 0, 0, Some("limit"));
            return finish(shared, up);
        };
        let mut retried = false;
        let outcome = loop {
            let u = match take_upstream(shared, &mut up, &route, &c, cfg.connect_timeout.0).await {
                Ok(u) => u,
                Err(e) => break Err(Fail::NoResponse(e, false)),
            };
            let reused = u.reused;
            match exchange(&mut c, u, &head, lt, cfg.idle_timeout.0).await {
                // A kept-alive target may have closed just before our request.
                Err(Fail::NoResponse(_, received))
                    if proxy::may_retry(&head, reused, received, retried) =>
                {
                    retried = true;
                }
                other => break other,
            }
        };
        let (d, mut u) = match outcome {
            Ok(x) => x,
            Err(f) => {
                st.errors.fetch_add(1, Relaxed);
                let host = head.host.as_deref().unwrap_or("-");
                let (status, msg) = match &f {
                    Fail::NoResponse(e, _) if e.kind() == io::ErrorKind::TimedOut => {
                        (504, e.to_string())
                    }
                    Fail::NoResponse(e, _) => (502, e.to_string()),
                    Fail::BadResponse(e) => (502, e.to_string()),
                    Fail::BadBody(e, responded) => {
                        warn!(client = %c.peer, host, error = %e, "HTTP: refused malformed request body");
                        (if *responded { 0 } else { 400 }, e.to_string())
                    }
                    Fail::Client => (0, "client closed mid-request".into()),
                    Fail::Midway => (0, "target closed mid-response".into()),
                };
                if status == 400 {
                    respond(&mut c, 400, &format!("{msg}\n"), true).await;
                } else if status != 0 {
                    warn!(client = %c.peer, host, target = %route.cfg.target, error = %msg, "HTTP: target failed, {status}");
                    let body = format!("bad gateway: {} is not answering\n", route.cfg.domain);
                    respond(&mut c, status, &body, true).await;
                } else {
                    debug!(client = %c.peer, error = %msg, "HTTP: connection cut");
                }
                log(&c, Some(&route), status, 0, 0, Some(&msg));
                return finish(shared, None);
            }
        };
        st.add_bytes(d.bytes_in, d.bytes_out);
        st.observe(start.elapsed());
        log(&c, Some(&route), d.status, d.bytes_in, d.bytes_out, None);
        if d.upgrade {
            // Bytes the client sent after its request, before the 101, are
            // the tunnel's first bytes.
            let early = std::mem::take(&mut c.buf);
            if !early.is_empty() && u.stream.write_all(&early).await.is_err() {
                return;
            }
            let (i, o, _) = splice(&mut c.stream, &mut u.stream, cfg.idle_timeout.0).await;
            st.add_bytes(i + early.len() as u64, o);
            return;
        }
        up = d.verdict.upstream_reusable.then_some(u);
        if !d.verdict.client_keep_alive {
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
) -> io::Result<Upstream> {
    if let Some(u) = up.take() {
        let same = Arc::ptr_eq(&u.route, route)
            || (route.cfg.proxy_protocol.is_none()
                && u.route.cfg.proxy_protocol.is_none()
                && route.addr == Some(u.addr));
        // Idle since this client's last request: proven idle, like the pool's.
        if same && probe(&u.stream).reusable() {
            return Ok(Upstream {
                route: route.clone(),
                reused: true,
                ..u
            });
        }
        if !same {
            finish(shared, Some(u));
        }
    }
    if route.cfg.proxy_protocol.is_none() {
        if let Some(addr) = route.addr {
            if let Some(s) = shared.pool.take(addr) {
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

/// Sends one request and relays its response; returns the upstream
/// connection with the verdict on both connections.
async fn exchange(
    c: &mut Client,
    mut u: Upstream,
    head: &RequestHead,
    lt: &ListenerTable,
    idle: Duration,
) -> Result<(Done, Upstream), Fail> {
    // Head plus whatever body bytes already arrived, in one write. Framing
    // a strict parser would read otherwise is refused before anything goes.
    let mut body = BodyReader::new(head.body);
    let already = body
        .feed(&c.buf[head.len..])
        .map_err(|e| Fail::BadBody(e, false))?;
    let first = head.len + already;
    let sent = match http::forward_head(&c.buf[..head.len], head) {
        Cow::Borrowed(h) if h.len() == head.len => u.stream.write_all(&c.buf[..first]).await,
        h => {
            let mut h = h.into_owned();
            h.extend_from_slice(&c.buf[head.len..first]);
            u.stream.write_all(&h).await
        }
    };
    if let Err(e) = sent {
        return Err(Fail::NoResponse(e, false));
    }
    // A bodiless request keeps its head in the buffer until answered, so it
    // can be sent again if a reused target connection turns out dead.
    let retain = head.body == http::Body::None;
    if !retain {
        c.buf.drain(..first);
    }
    let mut bytes_in = first as u64;

    let pre_done = body.done();
    let out = AtomicU64::new(0);
    let mut reader = ResponseReader::new(head, MAX_RESPONSE_HEAD);
    let (body_res, resp) = {
        let (mut cr, mut cw) = c.stream.split();
        let (mut ur, mut uw) = u.stream.split();
        let cbuf = &mut c.buf;
        let ubuf = &mut u.buf;
        let out = &out;
        let route = &u.route;
        let own = [
            head.host.as_deref().unwrap_or(""),
            route.target_host.as_str(),
        ];
        let routed = |h: &str| {
            let name = crate::sni::normalize_host(h.as_bytes())?;
            lt.lookup_named(&name).map(|r| r.target_port)
        };
        let map = |h: &str, p: u16| {
            let a = head.authority.as_deref()?;
            proxy::map_back(h, p, (&own, route.target_port), a, &routed)
        };

        let send_body = async {
            let mut sent = 0u64;
            while !body.done() {
                let n = read_more(&mut cr, cbuf, Some(tokio::time::Instant::now() + idle))
                    .await
                    .map_err(|_| Fail::Client)?;
                if n == 0 {
                    return Err(Fail::Client);
                }
                let take = body
                    .feed(cbuf)
                    .map_err(|e| Fail::BadBody(e, out.load(Relaxed) > 0))?;
                uw.write_all(&cbuf[..take])
                    .await
                    .map_err(|_| Fail::Client)?;
                cbuf.drain(..take);
                sent += take as u64;
            }
            Ok::<u64, Fail>(sent)
        };
        let response = relay_response(&mut ur, ubuf, &mut cw, head, &mut reader, &map, idle, out);
        tokio::pin!(send_body, response);
        let mut body_res = None;
        let resp = loop {
            tokio::select! {
                biased;
                r = &mut send_body, if body_res.is_none() => body_res = Some(r?),
                r = &mut response => break r?,
            }
        };
        (body_res, resp)
    };
    // The target answered before the request body was all sent (an early
    // error reply, or a refused 100-continue): the connection cannot be reused.
    let body_sent = pre_done || body_res.is_some();
    if retain {
        c.buf.drain(..first);
    }
    bytes_in += body_res.unwrap_or(0);
    let verdict = proxy::verdict(head, resp.keep_alive, body_sent, u.buf.len(), c.buf.len());
    Ok((
        Done {
            status: resp.status,
            verdict,
            upgrade: resp.upgrade,
            bytes_in,
            bytes_out: out.load(Relaxed),
        },
        u,
    ))
}

struct Relayed {
    status: u16,
    keep_alive: bool,
    upgrade: bool,
}

/// Relays the target's response as `reader` reads it: interim heads, the
/// final head (virtual ports in URI headers mapped back by `map`) with the
/// body bytes already here in one write, then the body. `out` counts bytes
/// written to the client.
#[allow(clippy::too_many_arguments)]
async fn relay_response<R, W>(
    ur: &mut R,
    ubuf: &mut Vec<u8>,
    cw: &mut W,
    req: &RequestHead,
    reader: &mut ResponseReader,
    map: &(dyn Fn(&str, u16) -> Option<String> + Sync),
    idle: Duration,
    out: &AtomicU64,
) -> Result<Relayed, Fail>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut status = 0;
    // The final head goes out with the first body bytes, in one write: either
    // unchanged, as the first `held` bytes of `ubuf`, or rewritten in `pending`.
    let mut held = 0;
    let mut pending: Vec<u8> = Vec::new();
    let fail = |e: ResponseError, out: &AtomicU64| match e {
        ResponseError::Head(_) | ResponseError::UnaskedSwitch if out.load(Relaxed) == 0 => {
            Fail::BadResponse(e)
        }
        _ => Fail::Midway,
    };
    loop {
        let ev = reader.next(&ubuf[held..]).map_err(|e| fail(e, out))?;
        let head_bytes = |h: &http::ResponseHead, close: bool| -> Cow<'_, [u8]> {
            let raw = &ubuf[..h.len];
            let mapped = if h.has_uri_headers {
                http::rewrite_uri_headers(raw, map)
            } else {
                None
            };
            // The client asked to close but the target's head says keep-alive:
            // say close, as the proxy will (RFC 9112 §9.6).
            match (mapped, close) {
                (m, true) => Cow::Owned(http::set_connection_close(m.as_deref().unwrap_or(raw))),
                (Some(m), false) => Cow::Owned(m),
                (None, false) => Cow::Borrowed(raw),
            }
        };
        match ev {
            Event::NeedMore => {
                flush(cw, ubuf, &mut held, &mut pending, out).await?;
                let r = read_more(ur, ubuf, Some(tokio::time::Instant::now() + idle)).await;
                let r = match r {
                    Ok(0) => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "target closed before responding",
                    )),
                    r => r,
                };
                match r {
                    Ok(_) => {}
                    // Nothing of a response reached the client: a 502/504 (or a retry).
                    Err(e) if !reader.started() && out.load(Relaxed) == 0 => {
                        return Err(Fail::NoResponse(e, !ubuf.is_empty()))
                    }
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        reader.eof().map_err(|e| fail(e, out))?;
                        return Ok(Relayed {
                            status,
                            keep_alive: false,
                            upgrade: false,
                        });
                    }
                    Err(_) => return Err(Fail::Midway),
                }
            }
            Event::Interim(h) => {
                let b = head_bytes(&h, false).into_owned();
                put(cw, &b, out).await?;
                ubuf.drain(..h.len);
            }
            Event::Switched(h) => {
                // Bytes the target sent after its 101 belong to the new protocol.
                let mut b = head_bytes(&h, false).into_owned();
                b.extend_from_slice(&ubuf[h.len..]);
                put(cw, &b, out).await?;
                ubuf.clear();
                return Ok(Relayed {
                    status: 101,
                    keep_alive: false,
                    upgrade: true,
                });
            }
            Event::Final(h) => {
                status = h.status;
                match head_bytes(&h, !req.keep_alive && h.keep_alive) {
                    Cow::Borrowed(_) => held = h.len,
                    Cow::Owned(v) => {
                        pending = v;
                        ubuf.drain(..h.len);
                    }
                }
            }
            Event::Body(n) if pending.is_empty() => {
                put(cw, &ubuf[..held + n], out).await?;
                ubuf.drain(..held + n);
                held = 0;
            }
            Event::Body(n) => {
                pending.extend_from_slice(&ubuf[..n]);
                ubuf.drain(..n);
                flush(cw, ubuf, &mut held, &mut pending, out).await?;
            }
            Event::End { keep_alive } => {
                flush(cw, ubuf, &mut held, &mut pending, out).await?;
                return Ok(Relayed {
                    status,
                    keep_alive,
                    upgrade: false,
                });
            }
        }
    }
}

/// Writes what `relay_response` holds back: `held` bytes of `ubuf`, or `pending`.
async fn flush<W: AsyncWrite + Unpin>(
    cw: &mut W,
    ubuf: &mut Vec<u8>,
    held: &mut usize,
    pending: &mut Vec<u8>,
    out: &AtomicU64,
) -> Result<(), Fail> {
    if *held > 0 {
        put(cw, &ubuf[..*held], out).await?;
        ubuf.drain(..*held);
        *held = 0;
    }
    if !pending.is_empty() {
        put(cw, pending, out).await?;
        pending.clear();
    }
    Ok(())
}

/// Writes `b` to the client, counting it in `out`.
async fn put<W: AsyncWrite + Unpin>(cw: &mut W, b: &[u8], out: &AtomicU64) -> Result<(), Fail> {
    out.fetch_add(b.len() as u64, Relaxed);
    cw.write_all(b).await.map_err(|_| Fail::Client)
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
    bytes: (u64, u64),
    start: Instant,
    error: Option<&str>,
) {
    let what = super::Logged {
        kind: "http",
        host: head.host.as_deref(),
        route,
        request: line,
        status: Some(status),
    };
    super::access(shared, c, listen, what, bytes, start, error);
}
