//! TLS through the shared port: routed by SNI without terminating TLS, against
//! openssl s_server backends, with curl and openssl s_client as clients.

mod common;
use common::*;

use bulkhead_portshare::sni::synthetic_client_hello;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn routes_by_sni_wildcard_and_default() {
    let a = tls_backend("a.test", "-WWW").await;
    let b = tls_backend("b.test", "-WWW").await;
    let w = tls_backend("wild", "-WWW").await;
    let d = tls_backend("default", "-WWW").await;
    let (_s, p) = start(config(vec![
        route("a.test", a.addr),
        route("b.test", b.addr),
        route("*.w.test", w.addr),
        route("*", d.addr),
    ]))
    .await;
    assert_eq!(
        curl_tls(p, "a.test", "/who").await,
        (true, "a.test\n".into())
    );
    assert_eq!(
        curl_tls(p, "b.test", "/who").await,
        (true, "b.test\n".into())
    );
    assert_eq!(
        curl_tls(p, "x.w.test", "/who").await,
        (true, "wild\n".into())
    );
    assert_eq!(
        curl_tls(p, "other.test", "/who").await,
        (true, "default\n".into())
    );
    // curl sends no SNI for an IP literal: the default row takes it.
    let out = tokio::process::Command::new("curl")
        .args(["-sk", "--max-time", "30"])
        .arg(format!("https://127.0.0.1:{}/who", p.port()))
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "default\n");
}

#[tokio::test]
async fn tls_and_plain_http_share_one_port() {
    let t = tls_backend("a.test", "-WWW").await;
    let h = http_backend("plain").await;
    let mut cfg = config(vec![route("a.test", t.addr)]);
    // Same name, plain HTTP: a second listener would be usual, but auto mode
    // tells the two apart on one port; this row serves both kinds.
    cfg.routes[0].target = t.addr.to_string();
    let (s, p) = start(cfg).await;
    assert_eq!(curl_tls(p, "a.test", "/who").await.1, "a.test\n");
    s.add_route(route("plain.test", h)).await.unwrap();
    assert_eq!(get(p, "plain.test", "/").await.body, "plain GET / body=0");
}

#[tokio::test]
async fn any_protocol_inside_tls() {
    let r = tls_backend("rev.test", "-rev").await;
    let (_s, p) = start(config(vec![route("rev.test", r.addr)])).await;
    let mut c = tokio::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-connect"])
        .arg(p.to_string())
        .args(["-servername", "rev.test"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(c.stdout.take().unwrap()).lines();
    stdin.write_all(b"hello portshare\n").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let l = lines.next_line().await.unwrap().expect("s_client output");
            if l.contains("erahstrop") {
                return l;
            }
        }
    })
    .await
    .expect("reversed line");
    assert_eq!(got.trim(), "erahstrop olleh");
}

#[tokio::test]
async fn unknown_name_gets_unrecognized_name_alert() {
    let a = tls_backend("a.test", "-WWW").await;
    let (s, p) = start(config(vec![route("a.test", a.addr)])).await;
    let mut c = TcpStream::connect(p).await.unwrap();
    c.write_all(&synthetic_client_hello(Some("nope.test"), &["h2"]))
        .await
        .unwrap();
    assert_eq!(read_all(&mut c).await, vec![21, 3, 1, 0, 2, 2, 112]);
    // The real client agrees.
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(p.to_string())
        .args(["-servername", "nope.test"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("unrecognized name"), "{text}");
    assert!(s
        .metrics()
        .contains("portshare_errors_total{listener=\"127.0.0.1:0\",domain=\"-\"} 2"));
}

#[tokio::test]
async fn target_down_closes_the_connection() {
    let dead = std::net::TcpListener::bind(ANY)
        .unwrap()
        .local_addr()
        .unwrap();
    let (s, p) = start(config(vec![route("down.test", dead)])).await;
    let mut c = TcpStream::connect(p).await.unwrap();
    c.write_all(&synthetic_client_hello(Some("down.test"), &[]))
        .await
        .unwrap();
    assert!(read_all(&mut c).await.is_empty());
    assert!(s
        .metrics()
        .contains("portshare_errors_total{listener=\"127.0.0.1:0\",domain=\"down.test\"} 1"));
}

#[tokio::test]
async fn malformed_client_hello_is_refused() {
    let a = tls_backend("a.test", "-WWW").await;
    let mut cfg = config(vec![route("*", a.addr)]);
    cfg.listeners[0].protocol = bulkhead_portshare::table::Protocol::Tls;
    cfg.listeners[0].header_timeout = ms(300);
    let (s, p) = start(cfg).await;
    let mut server_hello = synthetic_client_hello(Some("a.test"), &[]);
    server_hello[5] = 2;
    let mut bad_name = synthetic_client_hello(Some("a.test"), &[]);
    let n = bad_name.len();
    bad_name[n - 1] = b'/';
    let cases: Vec<(Vec<u8>, u8)> = vec![
        (server_hello, 50),
        (vec![22, 3, 1, 0xff, 0xff], 50),
        (vec![22, 9, 9, 0, 1, 1], 50),
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), 50),
        (bad_name, 112),
    ];
    for (bytes, alert) in cases {
        let mut c = TcpStream::connect(p).await.unwrap();
        c.write_all(&bytes).await.unwrap();
        assert_eq!(
            read_all(&mut c).await,
            vec![21, 3, 1, 0, 2, 2, alert],
            "{bytes:?}"
        );
    }
    // A ClientHello that never completes is cut at header_timeout.
    let mut c = TcpStream::connect(p).await.unwrap();
    c.write_all(&synthetic_client_hello(Some("a.test"), &[])[..20])
        .await
        .unwrap();
    let t = std::time::Instant::now();
    assert!(read_all(&mut c).await.is_empty());
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(
        s.metrics()
            .contains("portshare_errors_total{listener=\"127.0.0.1:0\",domain=\"-\"} 6"),
        "{}",
        s.metrics()
    );
    // Still serving.
    assert_eq!(curl_tls(p, "a.test", "/who").await.1, "a.test\n");
}

#[tokio::test]
async fn proxy_protocol_before_the_client_hello() {
    let (t, mut rx) = recording_backend().await;
    let mut r = route("pp.test", t);
    r.proxy_protocol = Some(bulkhead_portshare::proxy_protocol::Version::V1);
    let (_s, p) = start(config(vec![r])).await;
    let mut c = TcpStream::connect(p).await.unwrap();
    let me = c.local_addr().unwrap();
    let hello = synthetic_client_hello(Some("pp.test"), &[]);
    c.write_all(&hello).await.unwrap();
    // The recording backend waits for a blank line; send one after the hello.
    c.write_all(b"\r\n\r\n").await.unwrap();
    let got = rx.recv().await.unwrap();
    let mut want = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
        me.port(),
        p.port()
    )
    .into_bytes();
    want.extend_from_slice(&hello);
    assert!(got.starts_with(&want));
}

#[tokio::test]
async fn http2_inside_tls() {
    assert!(tool("nghttpd"), "nghttpd missing: run scripts/bootstrap");
    let dir = self_signed("h2.test");
    std::fs::write(dir.path().join("who"), "h2 server\n").unwrap();
    let port = std::net::TcpListener::bind(ANY)
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _srv = tokio::process::Command::new("nghttpd")
        .args(["-a", "127.0.0.1", "-d", "."])
        .arg(port.to_string())
        .args(["k.pem", "c.pem"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let target: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while TcpStream::connect(target).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("nghttpd listening");
    let (_s, p) = start(config(vec![route("h2.test", target)])).await;
    let out = tokio::process::Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "--max-time",
            "30",
            "-w",
            "proto=%{http_version}",
            "--resolve",
        ])
        .arg(format!("h2.test:{}:127.0.0.1", p.port()))
        .arg(format!("https://h2.test:{}/who", p.port()))
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "h2 server\nproto=2");
}
