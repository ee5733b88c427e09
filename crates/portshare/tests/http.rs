//! Plain HTTP/1.x through the shared port, against real hyper servers on
//! their own virtual ports.

mod common;
use common::*;

use bulkhead_portshare::proxy_protocol::Version;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn routes_by_host() {
    let a = http_backend("A").await;
    let b = http_backend("B").await;
    let (_s, p) = start(config(vec![route("a.test", a), route("b.test", b)])).await;
    assert_eq!(get(p, "a.test", "/x").await.body, "A GET /x body=0");
    assert_eq!(get(p, "B.TEST:8080", "/y").await.body, "B GET /y body=0");
}

#[tokio::test]
async fn routes_each_request_on_one_keepalive_connection() {
    let a = http_backend("A").await;
    let b = http_backend("B").await;
    let (_s, p) = start(config(vec![route("a.test", a), route("b.test", b)])).await;
    let mut s = TcpStream::connect(p).await.unwrap();
    for (host, want) in [
        ("a.test", "A"),
        ("b.test", "B"),
        ("a.test", "A"),
        ("b.test", "B"),
    ] {
        s.write_all(format!("GET /k HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let r = read_response(&mut s).await;
        assert_eq!(r.body, format!("{want} GET /k body=0"));
    }
    // Pipelined: both requests in one write, answered in order by their own servers.
    s.write_all(
        b"GET /p1 HTTP/1.1\r\nHost: b.test\r\n\r\nGET /p2 HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(read_response(&mut s).await.body, "B GET /p1 body=0");
    assert_eq!(read_response(&mut s).await.body, "A GET /p2 body=0");
}

#[tokio::test]
async fn wildcard_and_default_rows() {
    let a = http_backend("exact").await;
    let w = http_backend("wild").await;
    let d = http_backend("default").await;
    let (_s, p) = start(config(vec![
        route("a.dom1.com", a),
        route("*.dom1.com", w),
        route("*", d),
    ]))
    .await;
    assert_eq!(get(p, "a.dom1.com", "/").await.body, "exact GET / body=0");
    assert_eq!(get(p, "x.dom1.com", "/").await.body, "wild GET / body=0");
    assert_eq!(get(p, "y.x.dom1.com", "/").await.body, "wild GET / body=0");
    assert_eq!(get(p, "dom1.com", "/").await.body, "default GET / body=0");
    assert_eq!(
        get(p, "elsewhere.org", "/").await.body,
        "default GET / body=0"
    );
}

#[tokio::test]
async fn unknown_host_gets_421_and_connection_stays_usable() {
    let a = http_backend("A").await;
    let (_s, p) = start(config(vec![route("a.test", a)])).await;
    let mut s = TcpStream::connect(p).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: nobody.test\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 421);
    assert!(r.body.contains("nobody.test"));
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.body, "A GET / body=0");
}

#[tokio::test]
async fn target_down_gets_502() {
    // A port that was just free: nothing listens there.
    let dead = {
        let l = std::net::TcpListener::bind(ANY).unwrap();
        l.local_addr().unwrap()
    };
    let (s, p) = start(config(vec![route("down.test", dead)])).await;
    let r = get(p, "down.test", "/").await;
    assert_eq!(r.status, 502);
    assert!(r.body.contains("down.test is not answering"), "{}", r.body);
    assert!(s
        .metrics()
        .contains("portshare_errors_total{listener=\"127.0.0.1:0\",domain=\"down.test\"} 1"));
}

#[tokio::test]
async fn location_headers_mapped_back_to_shared_port() {
    let a = http_backend("A").await;
    let (_s, p) = start(config(vec![route("a.test", a)])).await;
    let authority = format!("a.test:{}", p.port());
    let r = get(p, &authority, "/redirect").await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location").unwrap(),
        format!("http://{authority}/landed?q=1")
    );
    assert_eq!(
        r.header("content-location").unwrap(),
        format!("http://{authority}/c")
    );
    assert_eq!(
        r.header("refresh").unwrap(),
        format!("5; url=http://{authority}/r")
    );
    // Other headers are the server's business.
    assert_eq!(
        r.header("x-untouched").unwrap(),
        format!("http://a.test:{}/u", a.port())
    );
    assert_eq!(r.body, "moved");
}

#[tokio::test]
async fn framing_chunked_expect_http10_upgrade() {
    let a = http_backend("A").await;
    let (_s, p) = start(config(vec![route("a.test", a)])).await;
    let mut s = TcpStream::connect(p).await.unwrap();
    // Chunked request body with an extension and a trailer, then a second request.
    s.write_all(b"POST /c HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nT: 1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.body, "A POST /c body=11");
    // Content-Length body sent in two pieces.
    s.write_all(b"PUT /l HTTP/1.1\r\nHost: a.test\r\nContent-Length: 10\r\n\r\n12345")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"67890").await.unwrap();
    assert_eq!(read_response(&mut s).await.body, "A PUT /l body=10");
    // Expect: 100-continue: the interim 100 reaches the client before it sends the body.
    s.write_all(
        b"POST /e HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 100);
    s.write_all(b"abcd").await.unwrap();
    assert_eq!(read_response(&mut s).await.body, "A POST /e body=4");
    // HTTP/1.0 without Host goes to the default row; here there is none: 421.
    let mut s10 = TcpStream::connect(p).await.unwrap();
    s10.write_all(b"GET /old HTTP/1.0\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s10).await;
    assert_eq!(r.body, "A GET /old body=0");
    // Upgrade: after 101 the connection is a tunnel to the same server.
    let mut u = TcpStream::connect(p).await.unwrap();
    u.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let r = read_response(&mut u).await;
    assert_eq!(r.status, 101);
    u.write_all(b"ping over the tunnel").await.unwrap();
    let mut got = vec![0u8; 20];
    tokio::time::timeout(Duration::from_secs(10), u.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping over the tunnel");
}

#[tokio::test]
async fn curl_posts_with_expect_continue() {
    if !tool("curl") {
        panic!("curl missing: run scripts/bootstrap");
    }
    let a = http_backend("A").await;
    let (_s, p) = start(config(vec![route("a.test", a)])).await;
    let body = "x".repeat(200_000);
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "--http1.1",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            "@-",
        ])
        .arg("-H")
        .arg("Host: a.test")
        .arg(format!("http://{p}/big"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = out;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .await
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "A POST /big body=200000"
    );
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_reach_the_target() {
    let (t1, mut rx1) = recording_backend().await;
    let (t2, mut rx2) = recording_backend().await;
    let mut r1 = route("one.test", t1);
    r1.proxy_protocol = Some(Version::V1);
    let mut r2 = route("two.test", t2);
    r2.proxy_protocol = Some(Version::V2);
    let (_s, p) = start(config(vec![r1, r2])).await;

    let mut c = TcpStream::connect(p).await.unwrap();
    let me = c.local_addr().unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: one.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut c).await.body, "ok");
    let got = rx1.recv().await.unwrap();
    let want = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\nGET / HTTP/1.1\r\n",
        me.port(),
        p.port()
    );
    assert!(
        got.starts_with(want.as_bytes()),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    let mut c = TcpStream::connect(p).await.unwrap();
    let me = c.local_addr().unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: two.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut c).await.body, "ok");
    let got = rx2.recv().await.unwrap();
    let mut want = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\x7f\x00\x00\x01\x7f\x00\x00\x01".to_vec();
    want.extend_from_slice(&me.port().to_be_bytes());
    want.extend_from_slice(&p.port().to_be_bytes());
    want.extend_from_slice(b"GET / HTTP/1.1\r\n");
    assert!(got.starts_with(&want), "{got:?}");
}

#[tokio::test]
async fn proxy_protocol_accepted_from_trusted_front_only() {
    let (t, mut rx) = recording_backend().await;
    let mut r = route("one.test", t);
    r.proxy_protocol = Some(Version::V1);
    let mut cfg = config(vec![r]);
    cfg.listeners[0].accept_proxy_from = vec!["127.0.0.0/8".into()];
    let (_s, p) = start(cfg).await;
    let mut c = TcpStream::connect(p).await.unwrap();
    c.write_all(b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 443\r\nGET / HTTP/1.1\r\nHost: one.test\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut c).await.body, "ok");
    let got = rx.recv().await.unwrap();
    assert!(
        got.starts_with(b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 443\r\nGET /"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // A trusted peer that sends no PROXY header is refused.
    let mut c = TcpStream::connect(p).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: one.test\r\n\r\n")
        .await
        .unwrap();
    assert!(read_all(&mut c).await.is_empty());
}

#[tokio::test]
async fn malformed_requests_are_refused() {
    let a = http_backend("A").await;
    let mut cfg = config(vec![route("a.test", a)]);
    cfg.listeners[0].max_header_bytes = 1024;
    cfg.listeners[0].header_timeout = ms(300);
    let (s, p) = start(cfg).await;
    let cases: &[(&[u8], u16)] = &[
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a test\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"GET / HTTP/9.9\r\nHost: a.test\r\n\r\n", 400),
        (b"G\x01T / HTTP/1.1\r\nHost: a.test\r\n\r\n", 400),
        (b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test\r\n\r\n", 405),
    ];
    for (req, status) in cases {
        let mut c = TcpStream::connect(p).await.unwrap();
        c.write_all(req).await.unwrap();
        let r = read_response(&mut c).await;
        assert_eq!(r.status, *status, "{:?}", String::from_utf8_lossy(req));
    }
    // Oversized head.
    let mut c = TcpStream::connect(p).await.unwrap();
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a.test\r\nX: {}\r\n\r\n",
        "y".repeat(2000)
    );
    c.write_all(big.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut c).await.status, 431);
    // Slowloris: a head that never finishes is cut at header_timeout.
    let mut c = TcpStream::connect(p).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n")
        .await
        .unwrap();
    let t = std::time::Instant::now();
    assert_eq!(read_response(&mut c).await.status, 408);
    assert!(t.elapsed() < Duration::from_secs(5));
    // The proxy still serves after all that.
    assert_eq!(get(p, "a.test", "/").await.body, "A GET / body=0");
    assert!(
        s.metrics()
            .contains("portshare_errors_total{listener=\"127.0.0.1:0\",domain=\"-\"} 11"),
        "{}",
        s.metrics()
    );
}

#[tokio::test]
async fn idle_keepalive_connection_is_closed() {
    let a = http_backend("A").await;
    let mut cfg = config(vec![route("a.test", a)]);
    cfg.listeners[0].idle_timeout = ms(300);
    let (_s, p) = start(cfg).await;
    let mut c = TcpStream::connect(p).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut c).await.status, 200);
    let t = std::time::Instant::now();
    assert!(read_all(&mut c).await.is_empty());
    assert!(t.elapsed() >= Duration::from_millis(250) && t.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn row_connection_limit() {
    let a = http_backend("A").await;
    let mut r = route("a.test", a);
    r.max_connections = Some(1);
    let (_s, p) = start(config(vec![r])).await;
    let slow = tokio::spawn(async move { get(p, "a.test", "/slow").await });
    // Wait until the slow request holds the row's one slot.
    let s2 = _s.clone();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !s2
            .metrics()
            .contains("portshare_active{listener=\"127.0.0.1:0\",domain=\"a.test\"} 1")
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(get(p, "a.test", "/").await.status, 503);
    assert_eq!(slow.await.unwrap().body, "A slow done");
    assert_eq!(get(p, "a.test", "/").await.status, 200);
}

#[tokio::test]
async fn metrics_endpoint_and_access_log() {
    let a = http_backend("A").await;
    let dir = tempfile::tempdir().unwrap();
    let metrics = std::net::TcpListener::bind(ANY)
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = config(vec![route("a.test", a)]);
    cfg.metrics = Some(metrics);
    cfg.access_log = Some(dir.path().join("access.jsonl"));
    let (_s, p) = start(cfg).await;
    for _ in 0..3 {
        assert_eq!(get(p, "a.test", "/m").await.status, 200);
    }
    let mut m = TcpStream::connect(metrics).await.unwrap();
    m.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut m).await;
    assert!(
        r.body
            .contains("portshare_requests_total{listener=\"127.0.0.1:0\",domain=\"a.test\"} 3"),
        "{}",
        r.body
    );
    assert!(r
        .body
        .contains("portshare_latency_seconds_count{listener=\"127.0.0.1:0\",domain=\"a.test\"} 3"));
    assert!(r
        .body
        .contains("portshare_bytes_out_total{listener=\"127.0.0.1:0\",domain=\"a.test\"}"));
    let path = dir.path().join("access.jsonl");
    let lines = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let t = std::fs::read_to_string(&path).unwrap_or_default();
            if t.lines().count() >= 3 {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(v["host"], "a.test");
    assert_eq!(v["status"], 200);
    assert_eq!(v["request"], "GET /m HTTP/1.1");
    assert_eq!(v["target"], a.to_string());
}

/// A target that closes each kept-alive connection shortly after answering:
/// the proxy's pooled connection is dead by the next request, which must be
/// sent again on a new connection rather than fail.
#[tokio::test]
async fn dead_pooled_upstream_is_retried() {
    let l = tokio::net::TcpListener::bind(ANY).await.unwrap();
    let t = l.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n = served.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let n = n.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let k = s.read(&mut buf).await.unwrap();
                    if k == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..k]);
                }
                let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = format!("answer {i}");
                s.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                // Dropped: closed while the proxy keeps it in its pool.
            });
        }
    });
    let (_s, p) = start(config(vec![route("a.test", t)])).await;
    assert_eq!(get(p, "a.test", "/").await.body, "answer 0");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = get(p, "a.test", "/").await;
    assert_eq!((r.status, r.body.as_str()), (200, "answer 1"));
}

/// A complete request followed by half of the next one in the same write:
/// the half is held to the header timeout like any other head.
#[tokio::test]
async fn pipelined_partial_head_times_out() {
    let a = http_backend("A").await;
    let mut cfg = config(vec![route("a.test", a)]);
    cfg.listeners[0].header_timeout = ms(300);
    let (_s, p) = start(cfg).await;
    let mut c = TcpStream::connect(p).await.unwrap();
    c.write_all(b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\nGET /2 HTTP/1.1\r\nHo")
        .await
        .unwrap();
    assert_eq!(read_response(&mut c).await.body, "A GET /1 body=0");
    let t = std::time::Instant::now();
    assert_eq!(read_response(&mut c).await.status, 408);
    assert!(t.elapsed() < Duration::from_secs(10));
}
