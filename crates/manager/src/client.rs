//! A client for bulkheadd's API, over its unix socket or TCP (TLS) with a token.
//! One HTTP/1.1 connection per client call: the CLI makes one call per run.

use crate::api::*;
use bulkhead_grant::reply::GuestReply;
use bulkhead_grant::request::GuestRequest;
use bulkhead_store::PartitionRecord;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, UPGRADE};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`, with the bearer token and how to trust the daemon
    /// ([`crate::tls::Trust::client_config`]).
    Tcp {
        addr: String,
        token: Option<String>,
        tls: Arc<rustls::ClientConfig>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        /// With `grant_refused`: which refusal (`GrantErrorKind` names).
        reason: Option<String>,
    },
    #[error("cannot reach bulkheadd at {endpoint}: {source} (is it running? `bulkhead serve`)")]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("TLS with bulkheadd at {endpoint}: {source}")]
    Tls {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("talking to bulkheadd: {0}")]
    Http(String),
    #[error("invalid request: {0}")]
    Request(String),
}

impl ClientError {
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// The bound on a TCP connection and its TLS handshake: a live host
/// answers in milliseconds; one cut off never does.
pub const TCP_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
}

/// An attached console stream (the upgraded HTTP connection).
pub type ConsoleStream = TokioIo<hyper::upgrade::Upgraded>;

impl Client {
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }

    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Self::new(Endpoint::Unix(path.into()))
    }

    fn describe(&self) -> String {
        match &self.endpoint {
            Endpoint::Unix(p) => p.display().to_string(),
            Endpoint::Tcp { addr, .. } => addr.clone(),
        }
    }

    async fn sender(
        &self,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, ClientError> {
        let conn_err = |source| ClientError::Connect {
            endpoint: self.describe(),
            source,
        };
        macro_rules! handshake {
            ($stream:expr) => {{
                let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new($stream))
                    .await
                    .map_err(|e| ClientError::Http(e.to_string()))?;
                tokio::spawn(async move {
                    let _ = conn.with_upgrades().await;
                });
                tx
            }};
        }
        Ok(match &self.endpoint {
            Endpoint::Unix(p) => {
                handshake!(tokio::net::UnixStream::connect(p).await.map_err(conn_err)?)
            }
            Endpoint::Tcp { addr, tls, .. } => {
                // Bounded: a host cut off drops the SYNs, and the kernel's
                // retries would hold the caller for over a minute.
                let timed_out = || {
                    conn_err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection within {TCP_CONNECT_TIMEOUT:?}"),
                    ))
                };
                let s = tokio::time::timeout(TCP_CONNECT_TIMEOUT, async {
                    let s = tokio::net::TcpStream::connect(addr)
                        .await
                        .map_err(conn_err)?;
                    let _ = s.set_nodelay(true);
                    tokio_rustls::TlsConnector::from(tls.clone())
                        .connect(crate::tls::server_name(addr), s)
                        .await
                        .map_err(|source| ClientError::Tls {
                            endpoint: self.describe(),
                            source,
                        })
                })
                .await
                .map_err(|_| timed_out())??;
                handshake!(s)
            }
        })
    }

    fn request<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let bytes = body
            .map(|b| serde_json::to_vec(b).expect("API types serialise"))
            .unwrap_or_default();
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "bulkheadd");
        if body.is_some() {
            b = b.header(CONTENT_TYPE, "application/json");
        }
        if let Endpoint::Tcp { token: Some(t), .. } = &self.endpoint {
            b = b.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        // A path that is no URI (a space in it) is the caller's error, not a panic.
        b.body(Full::new(Bytes::from(bytes)))
            .map_err(|e| ClientError::Request(format!("{path:?}: {e}")))
    }

    /// One API call with a typed body and a typed reply; a non-2xx answer
    /// becomes [`ClientError::Api`].
    pub async fn send<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, ClientError> {
        let (status, bytes) = self.call_raw(self.request(method, path, body)?).await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes, None));
        }
        // An empty body reads as JSON null (for `Value` replies).
        let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(bytes)
            .map_err(|e| ClientError::Http(format!("unexpected reply to {path}: {e}")))
    }

    /// One API call with untyped JSON both ways (tests send what no typed
    /// request would).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        self.send(method, path, body).await
    }

    /// Sends a request as is and returns status and body (tests send malformed bodies this way).
    pub async fn call_raw(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let mut tx = self.sender().await?;
        let resp = tx
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        Ok((status, bytes))
    }

    /// A raw request with this client's endpoint and token.
    pub fn raw_request(&self, method: Method, path: &str, body: &[u8]) -> Request<Full<Bytes>> {
        let mut r = self
            .request::<()>(method, path, None)
            .expect("tests pass valid paths");
        *r.body_mut() = Full::new(Bytes::copy_from_slice(body));
        r
    }

    /// An untyped GET (tests; the CLI uses the typed calls below).
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// Attaches to a running partition's serial console.
    pub async fn console(&self, name: &str) -> Result<ConsoleStream, ClientError> {
        let path = format!("{}/console", partition_path(name)?);
        let mut req = self.request::<()>(Method::GET, &path, None)?;
        req.headers_mut()
            .insert(CONNECTION, "upgrade".parse().expect("static header"));
        req.headers_mut().insert(
            UPGRADE,
            crate::server::CONSOLE_PROTOCOL
                .parse()
                .expect("static header"),
        );
        let mut tx = self.sender().await?;
        let resp = tx
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(api_error(status, &bytes, Some("console attach refused")));
        }
        let up = hyper::upgrade::on(resp)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        Ok(TokioIo::new(up))
    }

    pub async fn ping(&self) -> Result<Pong, ClientError> {
        self.send::<(), _>(Method::GET, "/v1/ping", None).await
    }

    pub async fn host(&self) -> Result<HostView, ClientError> {
        self.send::<(), _>(Method::GET, "/v1/host", None).await
    }

    pub async fn cluster_hosts(&self) -> Result<Vec<crate::cluster::ClusterHost>, ClientError> {
        self.send::<(), _>(Method::GET, "/v1/cluster/hosts", None)
            .await
    }

    pub async fn list(&self) -> Result<Vec<PartitionRecord>, ClientError> {
        self.send::<(), _>(Method::GET, "/v1/partitions", None)
            .await
    }

    pub async fn create(&self, req: &CreatePartition) -> Result<PartitionRecord, ClientError> {
        self.send(Method::POST, "/v1/partitions", Some(req)).await
    }

    pub async fn show(&self, name: &str) -> Result<PartitionView, ClientError> {
        self.send::<(), _>(Method::GET, &partition_path(name)?, None)
            .await
    }

    pub async fn destroy(&self, name: &str, force: bool) -> Result<Destroyed, ClientError> {
        let q = if force { "?force=true" } else { "" };
        let path = format!("{}{q}", partition_path(name)?);
        self.send::<(), _>(Method::DELETE, &path, None).await
    }

    pub async fn start(
        &self,
        name: &str,
        opts: &StartOptions,
    ) -> Result<PartitionRecord, ClientError> {
        self.send(Method::POST, &action_path(name, "start")?, Some(opts))
            .await
    }

    pub async fn restart(
        &self,
        name: &str,
        opts: &StartOptions,
    ) -> Result<PartitionRecord, ClientError> {
        self.send(Method::POST, &action_path(name, "restart")?, Some(opts))
            .await
    }

    pub async fn stop(
        &self,
        name: &str,
        opts: &StopOptions,
    ) -> Result<PartitionRecord, ClientError> {
        self.send(Method::POST, &action_path(name, "stop")?, Some(opts))
            .await
    }

    pub async fn exec(&self, name: &str, req: &ExecRequest) -> Result<ExecResult, ClientError> {
        self.send(Method::POST, &action_path(name, "exec")?, Some(req))
            .await
    }

    pub async fn stats(&self, name: &str) -> Result<Stats, ClientError> {
        self.send::<(), _>(Method::GET, &action_path(name, "stats")?, None)
            .await
    }

    pub async fn console_log(&self, name: &str, lines: usize) -> Result<ConsoleLines, ClientError> {
        let path = format!("{}?lines={lines}", action_path(name, "console")?);
        self.send::<(), _>(Method::GET, &path, None).await
    }

    pub async fn attach_disk(
        &self,
        name: &str,
        req: &AttachDisk,
    ) -> Result<AttachedDisk, ClientError> {
        self.send(Method::POST, &action_path(name, "disks")?, Some(req))
            .await
    }

    /// Sets the partition's HA policy (any host answers).
    pub async fn set_ha(
        &self,
        name: &str,
        ha: bulkhead_store::HaPolicy,
    ) -> Result<PartitionRecord, ClientError> {
        let req = crate::ha::api::SetHa { ha };
        self.send(Method::PUT, &action_path(name, "ha")?, Some(&req))
            .await
    }

    /// Hibernates; answers once saved and stopped (long: see `hibernate_progress`).
    pub async fn hibernate(&self, name: &str) -> Result<PartitionRecord, ClientError> {
        self.send::<(), _>(Method::POST, &action_path(name, "hibernate")?, None)
            .await
    }

    pub async fn hibernate_progress(&self, name: &str) -> Result<HibernateProgress, ClientError> {
        self.send::<(), _>(Method::GET, &action_path(name, "hibernate")?, None)
            .await
    }

    pub async fn resume(&self, name: &str) -> Result<PartitionRecord, ClientError> {
        self.send::<(), _>(Method::POST, &action_path(name, "resume")?, None)
            .await
    }

    /// Resume on the cluster host `opts.host` names (this one when absent).
    pub async fn resume_with(
        &self,
        name: &str,
        opts: &ResumeOptions,
    ) -> Result<PartitionRecord, ClientError> {
        self.send(Method::POST, &action_path(name, "resume")?, Some(opts))
            .await
    }

    pub async fn detach_disk(&self, name: &str, id: &str) -> Result<DetachedDisk, ClientError> {
        let path = format!("{}/{}", action_path(name, "disks")?, encode_segment(id));
        self.send::<(), _>(Method::DELETE, &path, None).await
    }

    pub async fn grant_list(
        &self,
        partition: Option<&str>,
    ) -> Result<Vec<crate::grants::GrantInfo>, ClientError> {
        let path = match partition {
            Some(p) => format!("/v1/grants?partition={}", encode_segment(p)),
            None => "/v1/grants".into(),
        };
        self.send::<(), _>(Method::GET, &path, None).await
    }

    pub async fn grant_show(&self, id: &str) -> Result<crate::grants::GrantInfo, ClientError> {
        let path = format!("/v1/grants/{}", encode_segment(id));
        self.send::<(), _>(Method::GET, &path, None).await
    }

    pub async fn grant_revoke(&self, id: &str) -> Result<GuestReply, ClientError> {
        let path = format!("/v1/grants/{}/revoke", encode_segment(id));
        self.send::<(), _>(Method::POST, &path, None).await
    }

    pub async fn grant_log(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<crate::grants::GrantLogEntry>, ClientError> {
        let path = format!("/v1/grants/log?after={after}&limit={limit}");
        self.send::<(), _>(Method::GET, &path, None).await
    }

    pub async fn region_list(&self) -> Result<Vec<crate::grants::RegionView>, ClientError> {
        self.send::<(), _>(Method::GET, "/v1/regions", None).await
    }

    /// A grant request made as partition `name` (what its `bulkhead-guest`
    /// would send).
    pub async fn grant_request(
        &self,
        name: &str,
        req: &GuestRequest,
    ) -> Result<GuestReply, ClientError> {
        self.send(
            Method::POST,
            &action_path(name, "grant-requests")?,
            Some(req),
        )
        .await
    }
}

/// The error a non-2xx answer carries (its typed [`ErrorBody`]), or one
/// made from the status when the body is not one.
fn api_error(status: StatusCode, body: &[u8], fallback: Option<&str>) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => ClientError::Api {
            status: status.as_u16(),
            code: b.error.code.as_str().to_string(),
            message: b.error.message,
            reason: b.error.reason.map(|r| r.as_str().to_string()),
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: "unknown".into(),
            message: fallback
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {status}")),
            reason: None,
        },
    }
}

/// `/v1/partitions/NAME`, for a name the daemon would accept (checked here
/// so that a bad one is a clear error, not a panic or another request).
pub fn partition_path(name: &str) -> Result<String, ClientError> {
    check_name(name).map_err(|e| ClientError::Request(e.to_string()))?;
    Ok(format!("/v1/partitions/{}", encode_segment(name)))
}

fn action_path(name: &str, action: &str) -> Result<String, ClientError> {
    Ok(format!("{}/{action}", partition_path(name)?))
}

/// Percent-encodes one path segment: only RFC 3986 unreserved bytes pass.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
