//! Run-time control: a unix-socket admin API (one JSON request per line, one
//! JSON answer per line) and the Prometheus metrics endpoint.

use crate::metrics::Stats;
use crate::server::Server;
use crate::table::RouteConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum AdminRequest {
    List,
    Add { route: RouteConfig },
    Remove { listen: SocketAddr, domain: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdminResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
}

/// Binds the admin socket, owner-only (it changes where traffic goes).
pub fn bind_admin(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        // A stale socket from an earlier run; a live one would still answer.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "admin socket {} is in use by a running portshare",
                path.display()
            );
        }
        std::fs::remove_file(path)?;
    }
    // SAFETY: umask only swaps the process file-creation mask; it cannot fail.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    Ok(l?)
}

pub(crate) async fn serve_admin(l: UnixListener, server: Arc<Server>) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        let server = server.clone();
        tokio::spawn(async move {
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r.take(1 << 20)).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let resp = match serde_json::from_str::<AdminRequest>(&line) {
                    Err(e) => err(format!("bad request: {e}")),
                    Ok(req) => handle(&server, req).await,
                };
                let mut out = serde_json::to_string(&resp).unwrap_or_default();
                out.push('\n');
                if w.write_all(out.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

fn err(e: String) -> AdminResponse {
    AdminResponse {
        ok: false,
        error: Some(e),
        routes: Vec::new(),
    }
}

async fn handle(server: &Server, req: AdminRequest) -> AdminResponse {
    let r = match req {
        AdminRequest::List => Ok(()),
        AdminRequest::Add { route } => {
            info!(listen = %route.listen, domain = %route.domain, target = %route.target, "admin: add route");
            server.add_route(route).await
        }
        AdminRequest::Remove { listen, domain } => {
            info!(listen = %listen, domain = %domain, "admin: remove route");
            server.remove_route(listen, &domain).await
        }
    };
    match r {
        Ok(()) => AdminResponse {
            ok: true,
            error: None,
            routes: server.table().config.routes.clone(),
        },
        Err(e) => {
            warn!(error = %e, "admin request refused");
            err(format!("{e:#}"))
        }
    }
}

/// Sends one request to a running portshare's admin socket.
pub async fn request(socket: &Path, req: &AdminRequest) -> anyhow::Result<AdminResponse> {
    let s = UnixStream::connect(socket)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to admin socket {}: {e}", socket.display()))?;
    let (r, mut w) = s.into_split();
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    w.write_all(line.as_bytes()).await?;
    let mut lines = BufReader::new(r).lines();
    let answer = lines
        .next_line()
        .await?
        .ok_or_else(|| anyhow::anyhow!("admin socket closed without answering"))?;
    Ok(serde_json::from_str(&answer)?)
}

/// Serves `GET /metrics` in the Prometheus text format; one request per connection.
pub(crate) async fn serve_metrics(
    l: TcpListener,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let s = tokio::select! {
            r = l.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut s = s;
            let mut buf = Vec::with_capacity(1024);
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            let path = loop {
                let mut h = [httparse::EMPTY_HEADER; 32];
                let mut req = httparse::Request::new(&mut h);
                match req.parse(&buf) {
                    Ok(httparse::Status::Complete(_)) => break req.path.unwrap_or("").to_string(),
                    Ok(httparse::Status::Partial) if buf.len() < 8192 => {}
                    _ => return,
                }
                match tokio::time::timeout_at(deadline, s.read_buf(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                }
            };
            let (status, ctype, body) = if path == "/metrics" {
                ("200 OK", "text/plain; version=0.0.4", stats.render())
            } else {
                ("404 Not Found", "text/plain", "try /metrics\n".to_string())
            };
            let resp = format!("HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}
