//! Real servers for the portshare tests: hyper HTTP/1.1 backends, raw TCP
//! backends that record what arrives, openssl s_server TLS backends.
#![allow(dead_code)]

use bulkhead_portshare::table::{Config, Dur, ListenerConfig, RouteConfig};
use bulkhead_portshare::Server;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const ANY: &str = "127.0.0.1:0";

pub fn listen() -> SocketAddr {
    ANY.parse().unwrap()
}

pub fn route(domain: &str, target: SocketAddr) -> RouteConfig {
    RouteConfig {
        listen: listen(),
        domain: domain.into(),
        target: target.to_string(),
        proxy_protocol: None,
        max_connections: None,
    }
}

pub fn config(routes: Vec<RouteConfig>) -> Config {
    Config {
        listeners: vec![ListenerConfig::new(listen())],
        routes,
        ..Default::default()
    }
}

pub fn ms(n: u64) -> Dur {
    Dur(Duration::from_millis(n))
}

/// Starts the proxy; returns it and the shared port's real address.
pub async fn start(cfg: Config) -> (Arc<Server>, SocketAddr) {
    let s = Server::start(cfg).await.expect("server starts");
    let a = s.local_addr(listen()).expect("listener bound");
    (s, a)
}

/// An HTTP/1.1 server on its own virtual port. It answers `NAME METHOD PATH
/// body=N`; `/redirect` answers 302 naming its virtual port; `/slow` takes
/// 1.5 s; `/ws` upgrades to an echo protocol.
pub async fn http_backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind(ANY).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(name, addr, req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

async fn handle(
    name: &'static str,
    addr: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let hostname = host
        .rsplit_once(':')
        .map(|(h, _)| h.to_string())
        .unwrap_or(host.clone());
    match path.as_str() {
        "/redirect" => Ok(Response::builder()
            .status(302)
            .header(
                "location",
                format!("http://{hostname}:{}/landed?q=1", addr.port()),
            )
            .header(
                "content-location",
                format!("http://127.0.0.1:{}/c", addr.port()),
            )
            .header(
                "refresh",
                format!("5; url=http://{hostname}:{}/r", addr.port()),
            )
            .header(
                "x-untouched",
                format!("http://{hostname}:{}/u", addr.port()),
            )
            .body(Full::new(Bytes::from_static(b"moved")))
            .unwrap()),
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok(Response::new(Full::new(Bytes::from(format!(
                "{name} slow done"
            )))))
        }
        "/ws" => {
            let up = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = up.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            Ok(Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "echo")
                .body(Full::new(Bytes::new()))
                .unwrap())
        }
        _ => {
            let method = req.method().to_string();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok(Response::new(Full::new(Bytes::from(format!(
                "{name} {method} {path} body={}",
                body.len()
            )))))
        }
    }
}

/// A raw TCP server: records the first bytes of each connection (until the
/// blank line of an HTTP head) and answers with a fixed 200.
pub async fn recording_backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let l = TcpListener::bind(ANY).await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = tx.send(buf);
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (addr, rx)
}

/// A response read off a raw connection.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Reads one response (Content-Length or close-delimited) from `s`.
pub async fn read_response(s: &mut TcpStream) -> Resp {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head[9..12].parse().unwrap();
    let mut r = Resp {
        status,
        head,
        body: String::new(),
    };
    let len = r
        .header("content-length")
        .map(|v| v.parse::<usize>().unwrap());
    let mut body = buf[head_end..].to_vec();
    match len {
        Some(n) => {
            while body.len() < n {
                let k = tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(k > 0, "body cut short");
                body.extend_from_slice(&chunk[..k]);
            }
        }
        None if status == 101 || status == 100 => {}
        None => {
            let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut body)).await;
        }
    }
    r.body = String::from_utf8_lossy(&body).to_string();
    r
}

pub async fn get(proxy: SocketAddr, host: &str, path: &str) -> Resp {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    read_response(&mut s).await
}

/// Reads until EOF (or 10 s) and returns what came.
pub async fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    out
}

pub fn tool(name: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// An `openssl s_server` TLS backend on its own virtual port. With `-WWW` it
/// serves files from its directory (`/who` holds `name`); with `-rev` it is a
/// line-reversing non-HTTP protocol.
pub struct TlsBackend {
    pub addr: SocketAddr,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A temporary directory holding a self-signed EC certificate for `cn`: c.pem, k.pem.
pub fn self_signed(cn: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args(["-keyout", "k.pem", "-out", "c.pem", "-days", "2", "-subj"])
        .arg(format!("/CN={cn}"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    dir
}

pub async fn tls_backend(name: &str, mode: &str) -> TlsBackend {
    use tokio::io::AsyncBufReadExt;
    assert!(tool("openssl"), "openssl missing: run scripts/bootstrap");
    let dir = self_signed(name);
    std::fs::write(dir.path().join("who"), format!("{name}\n")).unwrap();
    let mut child = tokio::process::Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            "127.0.0.1:0",
            "-cert",
            "c.pem",
            "-key",
            "k.pem",
            mode,
        ])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if let Some(a) = l.strip_prefix("ACCEPT ") {
                return a.trim().parse::<SocketAddr>().unwrap();
            }
        }
        panic!("s_server exited");
    })
    .await
    .expect("s_server ready");
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    TlsBackend {
        addr,
        child,
        _dir: dir,
    }
}

/// `curl https://NAME:PORT/PATH` through the proxy, SNI set to NAME.
pub async fn curl_tls(proxy: SocketAddr, name: &str, path: &str) -> (bool, String) {
    assert!(tool("curl"), "curl missing: run scripts/bootstrap");
    let out = tokio::process::Command::new("curl")
        .args(["-sk", "--max-time", "30", "--resolve"])
        .arg(format!("{name}:{}:127.0.0.1", proxy.port()))
        .arg(format!("https://{name}:{}{path}", proxy.port()))
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}
