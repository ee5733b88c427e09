//! The TCP API against hostile network clients, on a real bulkheadd: TLS with
//! a pinned fingerprint or a CA file, tokens too short to be safe, clients
//! too slow or too silent, more connections than the daemon has
//! descriptors, and HTTP's answers for bodies too large, wrong methods and
//! the auth scheme's case. No partition boots here.

mod common;

use bulkhead_manager::client::ClientError;
use bulkhead_manager::tls::Trust;
use bytes::Bytes;
use common::{Daemon, Opts};
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, HOST};
use hyper::{Method, Request};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, Instant};

const TOKEN: &str = "a-token-of-twenty-bytes";

fn tls_daemon(extra: &str, nofile: Option<u64>) -> Daemon {
    Daemon::start(Opts {
        extra: extra.into(),
        tcp_token: Some(TOKEN.into()),
        nofile,
        ..Default::default()
    })
}

fn fingerprint(d: &Daemon) -> String {
    bulkhead_manager::tls::file_fingerprint(&d.cert()).unwrap()
}

/// A TLS stream to the daemon, pinned to its certificate, nothing sent yet.
async fn tls_stream(d: &Daemon) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let addr = d.tcp.clone().unwrap();
    let cfg = Trust::Fingerprint(fingerprint(d)).client_config().unwrap();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(bulkhead_manager::tls::server_name(&addr), tcp)
        .await
        .unwrap()
}

/// Reads until the peer closes (or resets) and returns what came, or None if
/// it is still open at the deadline.
async fn until_closed<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    within: Duration,
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, r.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn tls_with_a_pinned_fingerprint_or_ca_and_nothing_else() {
    let mut d = tls_daemon("", None);
    let f = fingerprint(&d);
    // The daemon made its pair, keeps the key private and logs the fingerprint.
    use std::os::unix::fs::PermissionsExt;
    let key = d.cert().with_file_name("key.pem");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        d.log.lock().unwrap().contains(&f),
        "fingerprint {f} not logged"
    );

    assert_eq!(
        d.tcp_client().get("/v1/partitions").await.unwrap(),
        json!([])
    );
    // Lower case without colons pins the same certificate.
    let plain = f.replace(':', "").to_lowercase();
    d.tcp_client_with(Trust::Fingerprint(plain), Some(TOKEN))
        .get("/v1/ping")
        .await
        .unwrap();
    // The certificate as a CA file: it names 127.0.0.1.
    d.tcp_client_with(Trust::CaFile(d.cert()), Some(TOKEN))
        .get("/v1/ping")
        .await
        .unwrap();

    // Any other certificate is refused before the token is sent.
    let mut wrong = f.clone();
    wrong.replace_range(0..2, if f.starts_with("00") { "11" } else { "00" });
    let e = d
        .tcp_client_with(Trust::Fingerprint(wrong), Some(TOKEN))
        .get("/v1/partitions")
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Tls { .. }), "{e:?}");
    assert!(e.to_string().contains("pinned"), "{e}");
    let other = tempfile::tempdir().unwrap();
    let other_cert = bulkhead_manager::tls::server(None, other.path(), &["127.0.0.1".into()])
        .unwrap()
        .cert_path;
    let e = d
        .tcp_client_with(Trust::CaFile(other_cert), Some(TOKEN))
        .get("/v1/partitions")
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Tls { .. }), "{e:?}");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut s = tokio::net::TcpStream::connect(d.tcp.clone().unwrap())
        .await
        .unwrap();
    s.write_all(b"GET /v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = until_closed(&mut s, Duration::from_secs(20)).await;
    let got = got.expect("plain HTTP connection left open");
    assert!(
        !got.starts_with(b"HTTP/"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // A restarted daemon serves the same pair.
    d.kill9();
    d.spawn();
    assert_eq!(fingerprint(&d), f);
    d.tcp_client().get("/v1/ping").await.unwrap();
}

/// Runs bulkheadd on `config` and returns its stderr once it exits
/// (panics if it is still running after the deadline).
fn refused(config: &str, token_file: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let config = config.replace("DIR", &dir.path().display().to_string());
    std::fs::write(&cfg, &config).unwrap();
    std::fs::write(dir.path().join("t"), token_file).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bulkheadd"))
        .arg("--config")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bulkheadd accepted the configuration:\n{config}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn empty_or_short_tokens_are_refused_at_load() {
    let base = "data_dir = \"DIR/data\"\nsocket = \"DIR/s.sock\"\n[network]\nbridge = \"bhtok0\"\n[api]\ntcp = \"127.0.0.1:0\"\n";
    for token in ["", "short-token", "fifteen-bytes!!"] {
        let err = refused(&format!("{base}token = {token:?}\n"), "");
        assert!(err.contains("at least 16"), "token {token:?}: {err}");
        let err = refused(
            &format!("{base}token_file = \"DIR/t\"\n"),
            &format!("{token}\n"),
        );
        assert!(err.contains("at least 16"), "token file {token:?}: {err}");
    }
}

#[tokio::test]
async fn slow_and_silent_clients_are_dropped() {
    let d = tls_daemon(
        "[api]\nheader_timeout_ms = 1000\nidle_timeout_ms = 1000\n",
        None,
    );

    // One header byte every 300 ms: never idle, but the head is late.
    let req = b"GET /v1/ping HTTP/1.1\r\nHost: bulkheadd\r\nAuthorization: Bearer a-token-of-twenty-bytes\r\n\r\n";
    let (mut r, mut w) = tokio::io::split(tls_stream(&d).await);
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        for b in req {
            if w.write_all(&[*b]).await.is_err() || w.flush().await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        sent
    });
    // Well before the whole head could arrive (~30 s), the daemon closes.
    let got = until_closed(&mut r, Duration::from_secs(15))
        .await
        .expect("slow-header client still connected");
    assert!(
        !got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    writer.abort();

    // Connected, nothing sent: dropped, with and without a TLS handshake.
    let mut s = tokio::net::TcpStream::connect(d.tcp.clone().unwrap())
        .await
        .unwrap();
    assert!(until_closed(&mut s, Duration::from_secs(15))
        .await
        .is_some());
    let mut s = tls_stream(&d).await;
    assert!(until_closed(&mut s, Duration::from_secs(15))
        .await
        .is_some());

    // A body that trickles: 408, then closed.
    let mut s = tls_stream(&d).await;
    s.write_all(format!("POST /v1/partitions HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n{{").as_bytes())
        .await
        .unwrap();
    s.flush().await.unwrap();
    let got = until_closed(&mut s, Duration::from_secs(15))
        .await
        .expect("slow-body client still connected");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");

    // Prompt clients are served as ever.
    d.tcp_client().get("/v1/ping").await.unwrap();
}

/// Every idle connection is closed by the daemon, within a bound.
async fn all_dropped<S: tokio::io::AsyncRead + Unpin>(mut idle: Vec<S>, what: &str) {
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(
            until_closed(s, Duration::from_secs(120)).await.is_some(),
            "idle {what} connection {i} never dropped"
        );
    }
}

#[tokio::test]
async fn more_connections_than_descriptors_leave_both_sockets_serving() {
    // 128 descriptors for the whole daemon; 300 idle TCP connections.
    let mut d = tls_daemon("[api]\nheader_timeout_ms = 1500\n", Some(128));
    let addr = d.tcp.clone().unwrap();
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // The unix socket answers while they hang on.
    let v = timeout(Duration::from_secs(20), d.client().get("/v1/partitions"))
        .await
        .expect("unix API stuck during the TCP flood")
        .unwrap();
    assert_eq!(v, json!([]));
    // The daemon drops every one of them (accepted in turn as slots free up).
    all_dropped(idle, "tcp").await;
    assert!(d.alive(), "bulkheadd exited");
    d.tcp_client().get("/v1/partitions").await.unwrap();

    // The same on the unix socket, which has no bound: accepts fail for
    // lack of descriptors, and the daemon backs off instead of exiting.
    let mut idle = Vec::new();
    for _ in 0..200 {
        match timeout(
            Duration::from_secs(10),
            tokio::net::UnixStream::connect(&d.socket),
        )
        .await
        {
            Ok(Ok(s)) => idle.push(s),
            _ => break,
        }
    }
    assert!(
        idle.len() > 128,
        "only {} unix connections made",
        idle.len()
    );
    all_dropped(idle, "unix").await;
    assert!(d.alive(), "bulkheadd exited");
    assert!(
        d.log.lock().unwrap().contains("backing off"),
        "the daemon never ran out of descriptors: the test proves nothing"
    );
    d.client().get("/v1/partitions").await.unwrap();
    d.tcp_client().get("/v1/partitions").await.unwrap();
}

fn request(method: Method, path: &str, auth: Option<&str>, body: Vec<u8>) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "bulkheadd");
    if let Some(a) = auth {
        b = b.header(AUTHORIZATION, a);
    }
    b.body(Full::new(Bytes::from(body))).unwrap()
}

#[tokio::test]
async fn http_answers_413_405_and_any_case_of_bearer() {
    let d = tls_daemon("", None);
    let c = d.tcp_client();
    let auth = format!("Bearer {TOKEN}");

    let (s, b) = c
        .call_raw(request(
            Method::POST,
            "/v1/partitions",
            Some(&auth),
            vec![b' '; 2 << 20],
        ))
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(s.as_u16(), 413, "{v}");
    assert_eq!(v["error"]["code"], "payload_too_large");

    for (m, p, allow) in [
        (Method::PUT, "/v1/partitions/x", "GET, DELETE"),
        (Method::GET, "/v1/partitions/x/start", "POST"),
        (Method::DELETE, "/v1/partitions", "GET, POST"),
        (Method::POST, "/openapi.json", "GET"),
    ] {
        let mut tx = c.call_raw(request(m.clone(), p, Some(&auth), vec![])).await;
        let (s, b) = tx.as_mut().unwrap();
        let v: Value = serde_json::from_slice(b).unwrap();
        assert_eq!(s.as_u16(), 405, "{m} {p}: {v}");
        assert_eq!(v["error"]["code"], "method_not_allowed", "{m} {p}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(allow),
            "{v}"
        );
    }
    // The Allow header itself, read off the wire.
    let mut s = tls_stream(&d).await;
    s.write_all(format!("PUT /v1/partitions/x HTTP/1.1\r\nHost: b\r\nAuthorization: {auth}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let got = until_closed(&mut s, Duration::from_secs(15)).await.unwrap();
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert!(text.contains("\r\nallow: get, delete\r\n"), "{text}");
    // Unknown paths stay 404.
    let (s, _) = c
        .call_raw(request(Method::GET, "/v1/nothing", Some(&auth), vec![]))
        .await
        .unwrap();
    assert_eq!(s.as_u16(), 404);

    for a in [
        format!("bearer {TOKEN}"),
        format!("BEARER {TOKEN}"),
        format!("BeArEr  {TOKEN}"),
    ] {
        let (s, _) = c
            .call_raw(request(Method::GET, "/v1/partitions", Some(&a), vec![]))
            .await
            .unwrap();
        assert_eq!(s.as_u16(), 200, "{a}");
    }
    for a in [
        format!("Basic {TOKEN}"),
        format!("Bearer{TOKEN}"),
        TOKEN.to_string(),
    ] {
        let (s, _) = c
            .call_raw(request(Method::GET, "/v1/partitions", Some(&a), vec![]))
            .await
            .unwrap();
        assert_eq!(s.as_u16(), 401, "{a}");
    }
}
