//! The HTTP side of the API: hyper 1 on a unix socket (0600) and, when
//! configured, on TCP with TLS and a bearer token (the transport, limits
//! and timeouts are `listen`'s). Requests become [`ApiRequest`]s here and
//! nothing else is decided here.

use crate::api::*;
use crate::listen::{self, Activity, Limits};
use crate::manager::Manager;
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;
pub const CONSOLE_PROTOCOL: &str = "bulkhead-console";

type Body = Full<Bytes>;

/// Serves the API until `shutdown` resolves. Partitions keep running after.
pub async fn serve(
    manager: Arc<Manager>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let cfg = manager.config().clone();
    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket file left by a daemon that died; a live daemon answers on it.
    if cfg.socket.exists() {
        if tokio::net::UnixStream::connect(&cfg.socket).await.is_ok() {
            anyhow::bail!("another bulkheadd is serving {}", cfg.socket.display());
        }
        std::fs::remove_file(&cfg.socket)?;
    }
    let unix = UnixListener::bind(&cfg.socket)
        .with_context(|| format!("binding {}", cfg.socket.display()))?;
    std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o600))?;
    let limits = Limits {
        header: Duration::from_millis(cfg.api.header_timeout_ms),
        idle: Duration::from_millis(cfg.api.idle_timeout_ms),
    };
    let nofile = listen::raise_nofile();
    let mut tasks = tokio::task::JoinSet::new();
    let mut fingerprint = None;
    if let Some(addr) = cfg.api.tcp {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let tls = crate::tls::server(
            cfg.api.tls_cert.as_deref().zip(cfg.api.tls_key.as_deref()),
            &cfg.data_dir,
            &certificate_names(addr.ip()),
        )?;
        let bound = listen::tcp_bound(cfg.api.max_connections, nofile);
        tracing::info!(
            addr = %l.local_addr()?,
            fingerprint = %tls.fingerprint,
            certificate = %tls.cert_path.display(),
            generated = tls.generated,
            max_connections = bound,
            "TCP API bound (TLS, bearer token required; clients pin the fingerprint or trust the certificate)"
        );
        // TCP clients always need the token (config validation guarantees one).
        let token: Arc<str> = Arc::from(cfg.token()?.context("api.tcp needs a token")?);
        let serve: listen::Serve<_> = {
            let m = manager.clone();
            Arc::new(move |io, activity| {
                Box::pin(serve_http(
                    m.clone(),
                    Some(token.clone()),
                    io,
                    activity,
                    limits,
                ))
            })
        };
        fingerprint = Some(tls.fingerprint.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config);
        tasks.spawn(listen::tcp_loop(l, bound, acceptor, limits, serve));
    }
    let serve: listen::Serve<_> = {
        let m = manager.clone();
        Arc::new(move |io, activity| Box::pin(serve_http(m.clone(), None, io, activity, limits)))
    };
    tasks.spawn(listen::unix_loop(unix, limits, serve));
    if let Some(addr) = cfg.pool.gateway {
        let tls = crate::pools::tls::acceptor(&cfg.pool, &cfg.data_dir)
            .context("the pool gateway's certificate")?;
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the pool gateway on {addr}"))?;
        tracing::info!(addr = %l.local_addr()?, tls = tls.is_some(), "pool gateway bound");
        tasks.spawn(crate::pools::gateway::serve(manager.clone(), l, tls));
    }
    if let Some(addr) = cfg.metrics.listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics endpoint on {addr}"))?;
        tracing::info!(addr = %l.local_addr()?, "metrics endpoint bound (GET /metrics)");
        tasks.spawn(crate::metrics::serve(manager.clone(), l));
    }
    // A member once it can be reached; a name another host holds stops the start.
    match crate::cluster::membership::start(manager.clone(), fingerprint).await {
        Ok(renew) => {
            tasks.spawn(renew);
        }
        Err(e) => {
            let _ = std::fs::remove_file(&cfg.socket);
            return Err(e);
        }
    }
    // Said once every listener is bound: tests and scripts wait for this line.
    tracing::info!(socket = %cfg.socket.display(), "API listening");

    // Console logs are rotated in the background.
    let m = manager.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            m.rotate_console_logs();
        }
    });

    shutdown.await;
    tasks.abort_all();
    let _ = std::fs::remove_file(&cfg.socket);
    tracing::info!("API stopped; partitions keep running");
    Ok(())
}

/// Names the self-signed certificate carries: loopback, the listen address
/// and the host's name, so a CA-file client can also check it.
fn certificate_names(ip: std::net::IpAddr) -> Vec<String> {
    let mut names = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if !ip.is_unspecified() && !ip.is_loopback() {
        names.push(ip.to_string());
    }
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && h != "localhost" {
            names.push(h.to_string());
        }
    }
    names
}

/// HTTP/1.1 on one connection: the request head must arrive within the
/// header timeout; each request is marked busy so idleness is not counted
/// while it is answered.
async fn serve_http<S>(
    manager: Arc<Manager>,
    token: Option<Arc<str>>,
    io: S,
    activity: Arc<Activity>,
    limits: Limits,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let m = manager.clone();
        let t = token.clone();
        let busy = activity.busy();
        async move {
            let r = dispatch(m, t, req, limits).await;
            drop(busy);
            Ok::<_, std::convert::Infallible>(r)
        }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await
    {
        tracing::debug!(error = %e, "API connection ended");
    }
}

fn json_response<T: serde::Serialize>(status: u16, v: &T) -> Response<Body> {
    // Only a reply the HTTP layer must never send (the console socket)
    // fails to serialise: answer 500 rather than panic the connection.
    let (status, bytes) = match serde_json::to_vec(v) {
        Ok(b) => (status, b),
        Err(e) => {
            tracing::error!(error = %e, "API reply not serialisable");
            let body = ApiError::Internal("reply not serialisable".into()).body();
            (500, serde_json::to_vec(&body).unwrap_or_default())
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.status(), &e.body());
    if let ApiError::MethodNotAllowed { allow, .. } = e {
        if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
            r.headers_mut().insert(ALLOW, v);
        }
    }
    r
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is
/// case-insensitive (RFC 9110 §11.1).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_matches(' '))
}

/// Compares without an early exit, so timing does not reveal the token.
fn token_matches(given: &[u8], want: &[u8]) -> bool {
    if given.len() != want.len() {
        return false;
    }
    given
        .iter()
        .zip(want)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

async fn dispatch(
    manager: Arc<Manager>,
    token: Option<Arc<str>>,
    req: Request<Incoming>,
    limits: Limits,
) -> Response<Body> {
    if let Some(t) = token {
        let ok = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .is_some_and(|g| token_matches(g.as_bytes(), t.as_bytes()));
        if !ok {
            return error_response(&ApiError::Unauthorized);
        }
    }
    let wants_console = req.headers().get(UPGRADE).is_some_and(|v| {
        v.as_bytes()
            .eq_ignore_ascii_case(CONSOLE_PROTOCOL.as_bytes())
    });
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if wants_console {
        return attach_console(manager, &path, req).await;
    }
    let body = match tokio::time::timeout(limits.idle, read_body(req.into_body())).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return error_response(&e),
        Err(_) => {
            let e = ApiError::RequestTimeout(format!(
                "request body not received within {} ms",
                limits.idle.as_millis()
            ));
            let mut r = error_response(&e);
            r.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
    };
    let api_req = match route(&method, &path, &query, &body) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    // Its own task: a client that goes away does not cancel an operation
    // half-way, and a panic becomes a 500 (the manager rolls the state back).
    let handled = tokio::spawn(async move { manager.handle(api_req).await }).await;
    let r = handled.unwrap_or_else(|e| {
        tracing::error!(%method, %path, error = %e, "API handler panicked");
        Err(ApiError::Internal(format!(
            "{method} {path} failed unexpectedly"
        )))
    });
    match r {
        Ok(v) => {
            let v = v.redacted();
            json_response(v.status(), &v)
        }
        Err(e) => {
            tracing::debug!(%method, %path, error = %e, "API error");
            error_response(&e)
        }
    }
}

/// Reads the body up to [`MAX_BODY`]. A larger one is read to its end (up to
/// a bound) and refused with 413, so the client gets the answer instead of a
/// reset.
async fn read_body(mut body: Incoming) -> Result<Bytes, ApiError> {
    let mut buf = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::BadRequest(format!("request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total <= MAX_BODY {
                buf.extend_from_slice(&data);
            } else if total > 64 * MAX_BODY {
                break;
            }
        }
    }
    if total > MAX_BODY {
        return Err(ApiError::PayloadTooLarge(format!(
            "request body of {total}+ bytes is over the limit of {MAX_BODY} bytes"
        )));
    }
    Ok(Bytes::from(buf))
}

/// Decodes an optional JSON body: empty or `null` means the type's default
/// (the document marks these bodies optional).
fn body<T: serde::de::DeserializeOwned + Default>(b: &[u8]) -> Result<T, ApiError> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    Ok(body_required::<Option<T>>(b)?.unwrap_or_default())
}

pub(crate) fn body_required<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, ApiError> {
    let malformed =
        |e: serde_json::Error| ApiError::BadRequest(format!("malformed JSON body: {e}"));
    let mut v: serde_json::Value = serde_json::from_slice(b).map_err(malformed)?;
    whole_floats_to_integers(&mut v);
    T::deserialize(v).map_err(malformed)
}

/// JSON Schema's `integer` (the document's) takes `5.0`, serde's integers do
/// not: a number with no fraction becomes an integer before the typed
/// decode. Depth is bounded by serde_json's recursion limit.
fn whole_floats_to_integers(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) => {
            let Some(f) = n.as_f64().filter(|f| n.is_f64() && f.fract() == 0.0) else {
                return;
            };
            // The bounds are exact powers of two, so the casts cannot saturate.
            if (0.0..18446744073709551616.0).contains(&f) {
                *v = Value::from(f as u64);
            } else if (-9223372036854775808.0..0.0).contains(&f) {
                *v = Value::from(f as i64);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(whole_floats_to_integers),
        Value::Object(o) => o.values_mut().for_each(whole_floats_to_integers),
        _ => {}
    }
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// A boolean query parameter: `true` or `false`, as the document says (a
/// bare `force` or `force=` once meant true; schemathesis found it).
fn query_bool(query: &str, key: &str) -> Result<bool, ApiError> {
    match query_param(query, key) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => Err(ApiError::BadRequest(format!(
            "query parameter {key}={v:?} must be true or false"
        ))),
    }
}

/// Most log entries one `GET /v1/grants/log` returns.
pub const MAX_LOG_LIMIT: u64 = 10_000;

/// A whole-number query parameter from 0 to `max`, `default` when absent.
fn query_number(query: &str, key: &str, default: u64, max: u64) -> Result<u64, ApiError> {
    match query_param(query, key) {
        None => Ok(default),
        Some(v) => v.parse().ok().filter(|n| *n <= max).ok_or_else(|| {
            ApiError::BadRequest(format!("{key}={v:?} must be a whole number up to {max}"))
        }),
    }
}

/// Method and path to a typed request. Pure, so it is tested without a server.
pub fn route(method: &Method, path: &str, query: &str, b: &[u8]) -> Result<ApiRequest, ApiError> {
    use crate::expose::ExposeCommand;
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let name = |s: &str| s.to_string();
    let r = match (method, segs.as_slice()) {
        (&Method::GET, ["openapi.json"]) => ApiRequest::OpenApi,
        (&Method::GET, ["v1", "ping"]) => ApiRequest::Ping,
        (&Method::GET, ["v1", "host"]) => ApiRequest::Host,
        (&Method::GET, ["v1", "cluster", "hosts"]) => ApiRequest::ClusterHosts,
        (&Method::GET, ["v1", "partitions"]) => ApiRequest::List,
        (&Method::POST, ["v1", "partitions"]) => ApiRequest::Create(body_required(b)?),
        (&Method::GET, ["v1", "partitions", n]) => ApiRequest::Show { name: name(n) },
        (&Method::DELETE, ["v1", "partitions", n]) => ApiRequest::Destroy {
            name: name(n),
            force: query_bool(query, "force")?,
        },
        (&Method::POST, ["v1", "partitions", n, "start"]) => ApiRequest::Start {
            name: name(n),
            opts: body(b)?,
        },
        (&Method::POST, ["v1", "partitions", n, "stop"]) => ApiRequest::Stop {
            name: name(n),
            opts: body(b)?,
        },
        (&Method::POST, ["v1", "partitions", n, "restart"]) => ApiRequest::Restart {
            name: name(n),
            opts: body(b)?,
        },
        (&Method::POST, ["v1", "partitions", n, "exec"]) => ApiRequest::Exec {
            name: name(n),
            req: body_required(b)?,
        },
        (&Method::GET, ["v1", "partitions", n, "stats"]) => ApiRequest::Stats { name: name(n) },
        (&Method::POST, ["v1", "partitions", n, "disks"]) => ApiRequest::AttachDisk {
            name: name(n),
            req: body_required(b)?,
        },
        (&Method::DELETE, ["v1", "partitions", n, "disks", id]) => ApiRequest::DetachDisk {
            name: name(n),
            id: name(id),
        },
        (&Method::PUT, ["v1", "partitions", n, "ha"]) => ApiRequest::SetHa {
            name: name(n),
            req: body_required(b)?,
        },
        (&Method::POST, ["v1", "partitions", n, "hibernate"]) => {
            ApiRequest::Hibernate { name: name(n) }
        }
        (&Method::GET, ["v1", "partitions", n, "hibernate"]) => {
            ApiRequest::HibernateProgress { name: name(n) }
        }
        (&Method::POST, ["v1", "partitions", n, "resume"]) => ApiRequest::Resume {
            name: name(n),
            opts: body(b)?,
        },
        (&Method::POST, ["v1", "partitions", n, "grant-requests"]) => ApiRequest::GrantRequest {
            name: name(n),
            // The guests' own parser: the same bounds and refusals either way.
            req: bulkhead_grant::request::parse_request(b)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?,
        },
        (&Method::GET, ["v1", "grants"]) => ApiRequest::GrantList {
            partition: match query_param(query, "partition") {
                None => None,
                Some(p) => {
                    check_name(p)?;
                    Some(p.to_string())
                }
            },
        },
        (&Method::GET, ["v1", "grants", "log"]) => ApiRequest::GrantLog {
            // JSON Schema's int64, as the document says.
            after: query_number(query, "after", 0, i64::MAX as u64)?,
            limit: query_number(query, "limit", 100, MAX_LOG_LIMIT)? as usize,
        },
        (&Method::GET, ["v1", "grants", id]) => ApiRequest::GrantShow { id: name(id) },
        (&Method::POST, ["v1", "grants", id, "revoke"]) => ApiRequest::GrantRevoke { id: name(id) },
        (&Method::GET, ["v1", "regions"]) => ApiRequest::RegionList,
        (&Method::POST, ["v1", "partitions", n, "lus"]) => ApiRequest::AttachLu {
            name: name(n),
            req: body_required(b)?,
        },
        (&Method::GET, ["v1", "lus"]) => ApiRequest::LuList,
        (&Method::POST, ["v1", "lus"]) => ApiRequest::LuCreate(body_required(b)?),
        (&Method::GET, ["v1", "lus", n]) => ApiRequest::LuShow { name: name(n) },
        (&Method::DELETE, ["v1", "lus", n]) => ApiRequest::LuDelete { name: name(n) },
        (m, ["v1", "lus", n, verb @ ("mirror" | "promote")]) => {
            match crate::lu::mirror::route(m, &name(n), verb, b) {
                Some(c) => ApiRequest::LuMirror(c?),
                None => return Err(not_routed(m, &segs)),
            }
        }
        (&Method::POST, ["v1", "lus", n, "resize"]) => ApiRequest::LuResize {
            name: name(n),
            req: body_required(b)?,
        },
        (&Method::POST, ["v1", "lu-requests"]) => ApiRequest::LuRequest(body_required(b)?),
        (&Method::GET, ["v1", "routes"]) => ApiRequest::Expose(ExposeCommand::List),
        (&Method::POST, ["v1", "partitions", n, "routes"]) => {
            ApiRequest::Expose(ExposeCommand::Expose {
                name: name(n),
                req: body_required(b)?,
            })
        }
        (&Method::DELETE, ["v1", "partitions", n, "routes"]) => {
            ApiRequest::Expose(ExposeCommand::Unexpose {
                name: name(n),
                domain: query_param(query, "domain").map(str::to_string),
            })
        }
        (&Method::POST, ["v1", "programs", p, "routes"]) => {
            ApiRequest::Expose(ExposeCommand::ExposePool {
                program: name(p),
                req: body_required(b)?,
            })
        }
        (&Method::DELETE, ["v1", "programs", p, "routes"]) => {
            ApiRequest::Expose(ExposeCommand::UnexposePool {
                program: name(p),
                domain: query_param(query, "domain").map(str::to_string),
            })
        }
        (m, ["v1", "pools" | "pool-users", ..]) => {
            ApiRequest::Pool(pool_route(m, &segs, query, b)?)
        }
        (m, ["v1", "remote-restarts", ..]) => ApiRequest::RemoteRestart(rr_route(m, &segs, b)?),
        (m, ["v1", "partitions", _, "checkpoint" | "checkpoint-every" | "restore-checkpoint"]) => {
            match crate::checkpoint::route(m, &segs, b) {
                Some(c) => ApiRequest::Checkpoint(c?),
                None => return Err(not_routed(m, &segs)),
            }
        }
        (&Method::GET, ["v1", "partitions", n, "console"]) => ApiRequest::ConsoleLog {
            name: name(n),
            tail_lines: match query_param(query, "lines") {
                None => 50,
                Some(v) => v.parse().ok().filter(|n| *n <= 10_000).ok_or_else(|| {
                    ApiError::BadRequest(format!("lines={v:?} must be a number up to 10000"))
                })?,
            },
        },
        _ => {
            return Err(match allowed_methods(&segs) {
                Some(allow) => ApiError::MethodNotAllowed {
                    method: method.to_string(),
                    path: path.to_string(),
                    allow,
                },
                None => ApiError::NoRoute(format!("{method} {path}")),
            })
        }
    };
    r.check_ranges()?;
    Ok(r)
}

/// Every route the server answers: a path template (`{x}` is one segment)
/// and the methods it takes. `route` decides; this table gives a 405 its
/// `Allow`, and tests hold both it and the OpenAPI document to `route`.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/openapi.json", &["GET"]),
    ("/v1/ping", &["GET"]),
    ("/v1/host", &["GET"]),
    ("/v1/cluster/hosts", &["GET"]),
    ("/v1/partitions", &["GET", "POST"]),
    ("/v1/partitions/{name}", &["GET", "DELETE"]),
    ("/v1/partitions/{name}/start", &["POST"]),
    ("/v1/partitions/{name}/stop", &["POST"]),
    ("/v1/partitions/{name}/restart", &["POST"]),
    ("/v1/partitions/{name}/exec", &["POST"]),
    ("/v1/partitions/{name}/stats", &["GET"]),
    ("/v1/partitions/{name}/console", &["GET"]),
    ("/v1/partitions/{name}/disks", &["POST"]),
    ("/v1/partitions/{name}/disks/{id}", &["DELETE"]),
    ("/v1/partitions/{name}/hibernate", &["GET", "POST"]),
    ("/v1/partitions/{name}/ha", &["PUT"]),
    ("/v1/partitions/{name}/resume", &["POST"]),
    ("/v1/partitions/{name}/checkpoint", &["POST"]),
    ("/v1/partitions/{name}/checkpoint-every", &["POST"]),
    ("/v1/partitions/{name}/restore-checkpoint", &["POST"]),
    ("/v1/partitions/{name}/grant-requests", &["POST"]),
    ("/v1/grants", &["GET"]),
    ("/v1/grants/log", &["GET"]),
    ("/v1/grants/{id}", &["GET"]),
    ("/v1/grants/{id}/revoke", &["POST"]),
    ("/v1/regions", &["GET"]),
    ("/v1/partitions/{name}/lus", &["POST"]),
    ("/v1/lus", &["GET", "POST"]),
    ("/v1/lus/{name}", &["GET", "DELETE"]),
    ("/v1/lus/{name}/resize", &["POST"]),
    ("/v1/lus/{name}/mirror", &["POST", "DELETE"]),
    ("/v1/lus/{name}/promote", &["POST"]),
    ("/v1/lu-requests", &["POST"]),
    ("/v1/routes", &["GET"]),
    ("/v1/partitions/{name}/routes", &["POST", "DELETE"]),
    ("/v1/programs/{program}/routes", &["POST", "DELETE"]),
    ("/v1/pools", &["GET", "POST"]),
    ("/v1/pools/{name}", &["GET", "DELETE"]),
    ("/v1/pools/{name}/resize", &["POST"]),
    ("/v1/pool-users", &["GET", "POST"]),
    ("/v1/pool-users/{name}", &["DELETE"]),
    ("/v1/remote-restarts", &["GET", "POST"]),
    ("/v1/remote-restarts/{token}", &["GET"]),
    ("/v1/remote-restarts/{token}/stop", &["POST"]),
    ("/v1/remote-restarts/{token}/stop-collect", &["POST"]),
];

/// The remote-restart routes (issue 12): `/v1/remote-restarts...`.
fn rr_route(
    method: &Method,
    segs: &[&str],
    b: &[u8],
) -> Result<crate::remote_restart::api::RemoteRestartCommand, ApiError> {
    use crate::remote_restart::api::RemoteRestartCommand as C;
    let token = |s: &str| s.to_string();
    Ok(match (method, segs) {
        (&Method::GET, ["v1", "remote-restarts"]) => C::List,
        (&Method::POST, ["v1", "remote-restarts"]) => C::Start(body_required(b)?),
        (&Method::GET, ["v1", "remote-restarts", t]) => C::Show { token: token(t) },
        (&Method::POST, ["v1", "remote-restarts", t, "stop"]) => C::Stop {
            token: token(t),
            req: body_required(b)?,
        },
        (&Method::POST, ["v1", "remote-restarts", t, "stop-collect"]) => {
            C::StopCollect { token: token(t) }
        }
        _ => return Err(not_routed(method, segs)),
    })
}

/// The pool routes (issue 17): `/v1/pools...` and `/v1/pool-users...`.
fn pool_route(
    method: &Method,
    segs: &[&str],
    query: &str,
    b: &[u8],
) -> Result<crate::pools::api::PoolRequest, ApiError> {
    use crate::pools::api::PoolRequest as P;
    let name = |s: &str| s.to_string();
    Ok(match (method, segs) {
        (&Method::GET, ["v1", "pools"]) => P::List,
        (&Method::POST, ["v1", "pools"]) => P::Create(body_required(b)?),
        (&Method::GET, ["v1", "pools", n]) => P::Show { name: name(n) },
        (&Method::DELETE, ["v1", "pools", n]) => P::Destroy {
            name: name(n),
            force: query_bool(query, "force")?,
        },
        (&Method::POST, ["v1", "pools", n, "resize"]) => P::Resize {
            name: name(n),
            req: body_required(b)?,
        },
        (&Method::GET, ["v1", "pool-users"]) => P::UserList,
        (&Method::POST, ["v1", "pool-users"]) => P::UserAdd(body_required(b)?),
        (&Method::DELETE, ["v1", "pool-users", n]) => P::UserRemove { name: name(n) },
        _ => return Err(not_routed(method, segs)),
    })
}

/// A 405 (with `Allow`) for a known path, else a 404.
fn not_routed(method: &Method, segs: &[&str]) -> ApiError {
    let path = format!("/{}", segs.join("/"));
    match allowed_methods(segs) {
        Some(allow) => ApiError::MethodNotAllowed {
            method: method.to_string(),
            path,
            allow,
        },
        None => ApiError::NoRoute(format!("{method} {path}")),
    }
}

/// The methods a known path takes, for a 405's `Allow`.
fn allowed_methods(segs: &[&str]) -> Option<&'static [&'static str]> {
    ROUTES.iter().find_map(|(template, methods)| {
        let t: Vec<&str> = template.split('/').skip(1).collect();
        let same = t.len() == segs.len()
            && t.iter()
                .zip(segs)
                .all(|(t, s)| t.starts_with('{') || t == s);
        same.then_some(*methods)
    })
}

/// Splices an upgraded HTTP connection to the partition's serial console.
async fn attach_console(
    manager: Arc<Manager>,
    path: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let ["v1", "partitions", name, "console"] = segs.as_slice() else {
        return error_response(&ApiError::NoRoute(format!("console upgrade on {path}")));
    };
    // Another host's partition: its host attaches, this one splices.
    match crate::cluster::forward::console_elsewhere(&manager, name).await {
        Err(e) => return error_response(&e),
        Ok(Some(remote)) => return upgrade_and_splice(req, remote, || {}),
        Ok(None) => {}
    }
    let sock = match manager
        .handle(ApiRequest::Console {
            name: name.to_string(),
        })
        .await
    {
        Ok(ApiReply::ConsoleSocket(s)) => s,
        Ok(other) => {
            return error_response(&ApiError::Internal(format!(
                "console attach answered {other:?}"
            )))
        }
        Err(e) => return error_response(&e),
    };
    let console = match tokio::net::UnixStream::connect(&sock).await {
        Ok(s) => s,
        Err(e) => {
            manager.release_console(name);
            return error_response(&ApiError::Conflict(format!(
                "console of {name:?} is gone ({e})"
            )));
        }
    };
    let name = name.to_string();
    upgrade_and_splice(req, console, move || manager.release_console(&name))
}

/// Answers 101 and, once the client's connection is upgraded, copies bytes
/// both ways between it and `console` until either side ends; then `done`.
fn upgrade_and_splice<S>(
    req: Request<Incoming>,
    console: S,
    done: impl FnOnce() + Send + 'static,
) -> Response<Body>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(up) => {
                let (mut ur, mut uw) = tokio::io::split(TokioIo::new(up));
                let (mut cr, mut cw) = tokio::io::split(console);
                // Either side ending ends the attachment (a detached client
                // must not hold the console until the guest next prints).
                tokio::select! {
                    _ = tokio::io::copy(&mut ur, &mut cw) => {}
                    _ = tokio::io::copy(&mut cr, &mut uw) => {}
                }
            }
            Err(e) => tracing::debug!(error = %e, "console upgrade failed"),
        }
        done();
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    r.headers_mut()
        .insert(UPGRADE, HeaderValue::from_static(CONSOLE_PROTOCOL));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = route(&Method::GET, "/v1/partitions/", "", b"").unwrap();
        assert_eq!(r, ApiRequest::List);
        let r = route(&Method::DELETE, "/v1/partitions/a", "force=true", b"").unwrap();
        assert_eq!(
            r,
            ApiRequest::Destroy {
                name: "a".into(),
                force: true
            }
        );
        let r = route(
            &Method::POST,
            "/v1/partitions/a/start",
            "",
            br#"{"wait":true}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            ApiRequest::Start {
                name: "a".into(),
                opts: StartOptions { wait: true }
            }
        );
        let r = route(
            &Method::POST,
            "/v1/partitions/a/disks",
            "",
            br#"{"path":"/d/x.raw","readonly":true}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            ApiRequest::AttachDisk {
                name: "a".into(),
                req: AttachDisk {
                    path: "/d/x.raw".into(),
                    format: None,
                    readonly: true,
                    id: None
                }
            }
        );
        let r = route(&Method::POST, "/v1/partitions/a/hibernate", "", b"").unwrap();
        assert_eq!(r, ApiRequest::Hibernate { name: "a".into() });
        let r = route(&Method::GET, "/v1/partitions/a/hibernate", "", b"").unwrap();
        assert_eq!(r, ApiRequest::HibernateProgress { name: "a".into() });
        let r = route(&Method::POST, "/v1/partitions/a/resume", "", b"").unwrap();
        assert_eq!(
            r,
            ApiRequest::Resume {
                name: "a".into(),
                opts: ResumeOptions::default()
            }
        );
        let idle = |t: u64| {
            format!(r#"{{"name":"a","memory_mib":128,"cpu_percent":5,"hibernate_idle_secs":{t}}}"#)
        };
        for bad in [0, 9, MAX_IDLE_SECS + 1] {
            let e = route(&Method::POST, "/v1/partitions", "", idle(bad).as_bytes()).unwrap_err();
            assert!(e.to_string().contains("hibernate_idle_secs"), "{e}");
        }
        assert!(route(&Method::POST, "/v1/partitions", "", idle(20).as_bytes()).is_ok());
        let r = route(&Method::DELETE, "/v1/partitions/a/disks/hot0", "", b"").unwrap();
        assert_eq!(
            r,
            ApiRequest::DetachDisk {
                name: "a".into(),
                id: "hot0".into()
            }
        );
        let r = route(&Method::POST, "/v1/partitions/a/stop", "", b"").unwrap();
        assert_eq!(
            r,
            ApiRequest::Stop {
                name: "a".into(),
                opts: StopOptions::default()
            }
        );
    }

    #[test]
    fn bad_requests_have_their_own_errors() {
        let e = route(&Method::POST, "/v1/partitions", "", b"{nope").unwrap_err();
        assert!(
            matches!(e, ApiError::BadRequest(ref m) if m.contains("malformed JSON")),
            "{e}"
        );
        let e = route(
            &Method::POST,
            "/v1/partitions",
            "",
            br#"{"name":"a","memory_mib":128,"cpu_percent":5,"colour":1}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = route(
            &Method::POST,
            "/v1/partitions",
            "",
            br#"{"name":"a","memory_mib":-1,"cpu_percent":5}"#,
        )
        .unwrap_err();
        assert_eq!(e.status(), 400);
        let e = route(&Method::PUT, "/v1/partitions/a", "", b"").unwrap_err();
        assert_eq!(e.status(), 405);
        assert!(matches!(
            e,
            ApiError::MethodNotAllowed {
                allow: &["GET", "DELETE"],
                ..
            }
        ));
        let e = route(&Method::GET, "/v1/partitions/a/stop", "", b"").unwrap_err();
        assert_eq!(e.status(), 405);
        let e = route(&Method::GET, "/v1/nothing", "", b"").unwrap_err();
        assert_eq!(e.status(), 404);
        let e = route(
            &Method::POST,
            "/v1/partitions/a/stop",
            "",
            br#"{"timeout_secs":18446744073709551615}"#,
        )
        .unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains("timeout_secs"), "{e}");
        for q in ["force=maybe", "force=", "force", "force=1"] {
            let e = route(&Method::DELETE, "/v1/partitions/a", q, b"").unwrap_err();
            assert_eq!(e.status(), 400, "{q}");
        }
        let e = route(&Method::GET, "/v1/partitions/a/console", "lines=x", b"").unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(route(&Method::POST, "/v1/partitions/a/exec", "", b"").is_err());
        assert!(route(&Method::POST, "/v1/partitions/a/disks", "", b"{}").is_err());
    }

    #[test]
    fn whole_floats_are_integers_as_in_json_schema() {
        let r = route(
            &Method::POST,
            "/v1/partitions/a/stop",
            "",
            br#"{"timeout_secs": 822.0}"#,
        )
        .unwrap();
        let ApiRequest::Stop { opts, .. } = r else {
            panic!("{r:?}")
        };
        assert_eq!(opts.timeout_secs, Some(822));
        for bad in [r#"{"timeout_secs": 8.5}"#, r#"{"timeout_secs": -1.0}"#] {
            let e = route(&Method::POST, "/v1/partitions/a/stop", "", bad.as_bytes());
            assert_eq!(e.unwrap_err().status(), 400, "{bad}");
        }
        // A JSON null body is the defaults, as the document's optional body says.
        let r = route(&Method::POST, "/v1/partitions/a/start", "", b"null").unwrap();
        assert_eq!(
            r,
            ApiRequest::Start {
                name: "a".into(),
                opts: StartOptions::default()
            }
        );
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches(b"abc", b"abc"));
        assert!(!token_matches(b"abd", b"abc"));
        assert!(!token_matches(b"ab", b"abc"));
    }
}
