//! The HTTP side of the API: hyper 1 on a unix socket (0600) and, when
//! configured, on TCP with a bearer token. Requests become [`ApiRequest`]s
//! here and nothing else is decided here.

use crate::api::*;
use crate::manager::Manager;
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;
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
    let tcp = match cfg.api.tcp {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            tracing::info!(addr = %l.local_addr()?, "TCP API bound (bearer token required)");
            Some(l)
        }
        None => None,
    };
    // Said once every listener is bound: tests and scripts wait for this line.
    tracing::info!(socket = %cfg.socket.display(), "API listening");
    let token: Option<Arc<str>> = cfg.token()?.map(Arc::from);

    // Console logs are rotated in the background.
    let m = manager.clone();
    let rotate = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            m.rotate_console_logs();
        }
    });

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            r = unix.accept() => {
                let (s, _) = r?;
                spawn_conn(manager.clone(), None, TokioIo::new(s));
            }
            r = async { tcp.as_ref().expect("guarded").accept().await }, if tcp.is_some() => {
                let (s, _) = r?;
                let _ = s.set_nodelay(true);
                // TCP clients always need the token (config validation guarantees one).
                spawn_conn(manager.clone(), Some(token.clone().expect("validated")), TokioIo::new(s));
            }
            _ = &mut shutdown => break,
        }
    }
    rotate.abort();
    let _ = std::fs::remove_file(&cfg.socket);
    tracing::info!("API stopped; partitions keep running");
    Ok(())
}

fn spawn_conn<S>(manager: Arc<Manager>, token: Option<Arc<str>>, io: TokioIo<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req| {
            let m = manager.clone();
            let t = token.clone();
            async move { Ok::<_, std::convert::Infallible>(dispatch(m, t, req).await) }
        });
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .with_upgrades()
            .await
        {
            tracing::debug!(error = %e, "API connection ended");
        }
    });
}

fn json_response(status: u16, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(v).expect("JSON values serialise"),
    )));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.status(), &e.body())
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
) -> Response<Body> {
    if let Some(t) = token {
        let ok = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|g| token_matches(g.trim().as_bytes(), t.as_bytes()));
        if !ok {
            return error_response(&ApiError::Unauthorized);
        }
    }
    if req.method() == Method::GET && req.uri().path() == "/openapi.json" {
        return json_response(200, &crate::openapi::document());
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
    let body = match read_body(req.into_body()).await {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let api_req = match route(&method, &path, &query, &body) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let created = matches!(api_req, ApiRequest::Create(_));
    match manager.handle(api_req).await {
        Ok(v) => json_response(if created { 201 } else { 200 }, &v),
        Err(e) => {
            tracing::debug!(%method, %path, error = %e, "API error");
            error_response(&e)
        }
    }
}

/// Reads the body up to [`MAX_BODY`]. A larger one is read to its end (up to
/// a bound) and refused, so the client gets the answer instead of a reset.
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
        return Err(ApiError::BadRequest(format!(
            "request body of {total}+ bytes is over the limit of {MAX_BODY} bytes"
        )));
    }
    Ok(Bytes::from(buf))
}

/// Decodes a JSON body, an empty body meaning the type's default.
fn body<T: serde::de::DeserializeOwned + Default>(b: &[u8]) -> Result<T, ApiError> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    body_required(b)
}

fn body_required<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(b).map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn query_bool(query: &str, key: &str) -> Result<bool, ApiError> {
    match query_param(query, key) {
        None | Some("false") | Some("0") => Ok(false),
        Some("") | Some("true") | Some("1") => Ok(true),
        Some(v) => Err(ApiError::BadRequest(format!(
            "query parameter {key}={v:?} must be true or false"
        ))),
    }
}

/// Method and path to a typed request. Pure, so it is tested without a server.
pub fn route(method: &Method, path: &str, query: &str, b: &[u8]) -> Result<ApiRequest, ApiError> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let name = |s: &str| s.to_string();
    let r = match (method, segs.as_slice()) {
        (&Method::GET, ["v1", "ping"]) => ApiRequest::Ping,
        (&Method::GET, ["v1", "host"]) => ApiRequest::Host,
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
        (&Method::GET, ["v1", "partitions", n, "console"]) => ApiRequest::ConsoleLog {
            name: name(n),
            tail_lines: match query_param(query, "lines") {
                None => 50,
                Some(v) => v.parse().ok().filter(|n| *n <= 10_000).ok_or_else(|| {
                    ApiError::BadRequest(format!("lines={v:?} must be a number up to 10000"))
                })?,
            },
        },
        _ => return Err(ApiError::NoRoute(format!("{method} {path}"))),
    };
    Ok(r)
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
    let sock = match manager
        .handle(ApiRequest::Console {
            name: name.to_string(),
        })
        .await
    {
        Ok(v) => v["socket"].as_str().unwrap_or_default().to_string(),
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
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(up) => {
                let (mut ur, mut uw) = tokio::io::split(TokioIo::new(up));
                let (mut cr, mut cw) = console.into_split();
                // Either side ending ends the attachment (a detached client
                // must not hold the console until the guest next prints).
                tokio::select! {
                    _ = tokio::io::copy(&mut ur, &mut cw) => {}
                    _ = tokio::io::copy(&mut cr, &mut uw) => {}
                }
            }
            Err(e) => tracing::debug!(error = %e, "console upgrade failed"),
        }
        manager.release_console(&name);
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
        assert_eq!(e.status(), 404);
        let e = route(&Method::DELETE, "/v1/partitions/a", "force=maybe", b"").unwrap_err();
        assert_eq!(e.status(), 400);
        let e = route(&Method::GET, "/v1/partitions/a/console", "lines=x", b"").unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(route(&Method::POST, "/v1/partitions/a/exec", "", b"").is_err());
        assert!(route(&Method::POST, "/v1/partitions/a/disks", "", b"{}").is_err());
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches(b"abc", b"abc"));
        assert!(!token_matches(b"abd", b"abc"));
        assert!(!token_matches(b"ab", b"abc"));
    }
}
