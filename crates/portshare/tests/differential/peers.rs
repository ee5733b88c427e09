//! The differential test's real parts: raw-echo backends that record the
//! exact bytes each connection brings, and nginx and HAProxy as unprivileged
//! processes on their own ports, temp config, pid and log paths (no service).

use super::strict::{parse, Parsed};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Conns = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

/// A backend for one domain. It answers each request it reads strictly with
/// `DOMAIN METHOD TARGET BODYLEN` (HEAD: the length only; a target with
/// `204`: 204), switches to echo after an upgrade request (101), and answers
/// 400 and closes at the first bytes it cannot read.
pub struct Echo {
    pub dom: &'static str,
    pub addr: SocketAddr,
    conns: Conns,
}

impl Echo {
    pub async fn start(dom: &'static str) -> Echo {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns: Conns = Arc::default();
        let all = conns.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let _ = s.set_nodelay(true);
                let rec = Arc::new(Mutex::new(Vec::new()));
                all.lock().unwrap().push(rec.clone());
                tokio::spawn(async move {
                    let (mut at, mut tunnel) = (0, false);
                    let mut chunk = [0u8; 16384];
                    loop {
                        let n = match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let buf = {
                            let mut r = rec.lock().unwrap();
                            r.extend_from_slice(&chunk[..n]);
                            r.clone()
                        };
                        if tunnel {
                            let _ = s.write_all(&chunk[..n]).await;
                            continue;
                        }
                        let mut out = Vec::new();
                        loop {
                            match parse(&buf[at..]) {
                                Parsed::Req(r, used) => {
                                    at += used;
                                    out.extend_from_slice(&answer(dom, &r));
                                    if r.upgrade {
                                        tunnel = true;
                                        out.extend_from_slice(&buf[at..]);
                                        break;
                                    }
                                }
                                Parsed::Need => break,
                                Parsed::Err(_) => {
                                    out.extend_from_slice(
                                        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                                    );
                                    let _ = s.write_all(&out).await;
                                    return;
                                }
                            }
                        }
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Echo { dom, addr, conns }
    }

    /// How many bytes each connection has brought so far.
    pub fn marks(&self) -> Vec<usize> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.lock().unwrap().len())
            .collect()
    }

    /// The bytes each connection brought since `marks` (new ones: all).
    pub fn since(&self, marks: &[usize]) -> Vec<Vec<u8>> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, c)| c.lock().unwrap()[marks.get(i).copied().unwrap_or(0)..].to_vec())
            .filter(|b| !b.is_empty())
            .collect()
    }
}

fn answer(dom: &str, r: &super::strict::Req) -> Vec<u8> {
    if r.upgrade {
        return b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n"
            .to_vec();
    }
    if r.target.contains("204") {
        return b"HTTP/1.1 204 No Content\r\n\r\n".to_vec();
    }
    let body = format!("{dom} {} {} {}", r.method, r.target, r.body.len());
    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
    let mut out = head.into_bytes();
    if r.method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// nginx or HAProxy, started on a free port, killed on drop.
pub struct Peer {
    pub name: &'static str,
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `cmd` (built for a port) until it listens; another free port if
/// the one picked was taken meanwhile.
fn spawn(name: &'static str, build: impl Fn(&std::path::Path, u16) -> Command) -> Peer {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut child = build(dir.path(), port)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e} (run scripts/bootstrap)"));
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Peer {
                    name,
                    addr,
                    child,
                    _dir: dir,
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
        eprintln!("{name} did not start on {port}: {log}");
    }
    panic!("{name} would not start");
}

/// nginx routing a.test and b.test to `a` and `b` by Host (or the target's
/// authority), unknown names to 421, upstream keep-alive on.
pub fn nginx(a: SocketAddr, b: SocketAddr) -> Peer {
    spawn("nginx", |dir, port| {
        let d = dir.display();
        let server = |name: &str, up: &str| {
            format!(
                "server {{ listen 127.0.0.1:{port}; server_name {name};
                  location / {{ proxy_pass http://{up}; proxy_http_version 1.1;
                    proxy_set_header Host $host; proxy_set_header Upgrade $http_upgrade;
                    proxy_set_header Connection $conn_up; }} }}\n"
            )
        };
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  keepalive_timeout 2s; client_header_timeout 2s; client_body_timeout 2s; send_timeout 2s;
  proxy_read_timeout 5s;
  map $http_upgrade $conn_up {{ default upgrade; '' ''; }}
  upstream ua {{ server {a}; keepalive 8; }}
  upstream ub {{ server {b}; keepalive 8; }}
  server {{ listen 127.0.0.1:{port} default_server; return 421; }}
  {}  {}
}}
",
            server("a.test", "ua"),
            server("b.test", "ub")
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut c = Command::new("nginx");
        c.arg("-p").arg(dir).arg("-c").arg(dir.join("nginx.conf"));
        c.arg("-e").arg(dir.join("error.log"));
        c
    })
}

/// HAProxy routing a.test and b.test by Host; an unknown name gets 503.
pub fn haproxy(a: SocketAddr, b: SocketAddr) -> Peer {
    spawn("haproxy", |dir, port| {
        let conf = format!(
            "global
  pidfile {d}/haproxy.pid
defaults
  mode http
  timeout connect 5s
  timeout client 2s
  timeout server 5s
  timeout http-request 2s
  timeout http-keep-alive 2s
  timeout tunnel 2s
frontend fe
  bind 127.0.0.1:{port}
  http-request set-var(req.dom) req.hdr(host),field(1,:),lower
  use_backend ba if {{ var(req.dom) -m str a.test }}
  use_backend bb if {{ var(req.dom) -m str b.test }}
backend ba
  server s {a}
backend bb
  server s {b}
",
            d = dir.display()
        );
        std::fs::write(dir.join("haproxy.cfg"), conf).unwrap();
        let mut c = Command::new("haproxy");
        c.arg("-db").arg("-f").arg(dir.join("haproxy.cfg"));
        c
    })
}
