//! A client for bulkheadd's API, over its unix socket or TCP (TLS) with a token.
//! One HTTP/1.1 connection per client call: the CLI makes one call per run.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, UPGRADE};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
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
                let s = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(conn_err)?;
                let _ = s.set_nodelay(true);
                let s = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(crate::tls::server_name(addr), s)
                    .await
                    .map_err(|source| ClientError::Tls {
                        endpoint: self.describe(),
                        source,
                    })?;
                handshake!(s)
            }
        })
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let bytes = body
            .map(|b| serde_json::to_vec(b).expect("JSON values serialise"))
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

    /// One API call; a non-2xx answer becomes [`ClientError::Api`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let (status, bytes) = self.call_raw(self.request(method, path, body)?).await?;
        let v: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|e| ClientError::Http(format!("bad JSON in reply: {e}")))?
        };
        if status.is_success() {
            return Ok(v);
        }
        Err(ClientError::Api {
            status: status.as_u16(),
            code: v["error"]["code"].as_str().unwrap_or("unknown").to_string(),
            message: v["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {status}")),
        })
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
            .request(method, path, None)
            .expect("tests pass valid paths");
        *r.body_mut() = Full::new(Bytes::copy_from_slice(body));
        r
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// Attaches to a running partition's serial console.
    pub async fn console(&self, name: &str) -> Result<ConsoleStream, ClientError> {
        let mut req = self.request(Method::GET, &format!("/v1/partitions/{name}/console"), None)?;
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
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(ClientError::Api {
                status: status.as_u16(),
                code: v["error"]["code"].as_str().unwrap_or("unknown").into(),
                message: v["error"]["message"]
                    .as_str()
                    .unwrap_or("console attach refused")
                    .into(),
            });
        }
        let up = hyper::upgrade::on(resp)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        Ok(TokioIo::new(up))
    }
}
