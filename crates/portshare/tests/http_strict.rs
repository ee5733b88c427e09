//! Issue 10's defects, one test each, against real sockets: responses never
//! cross between clients, non-canonical framing is refused before anything
//! is forwarded, absolute-form targets win over Host, only idempotent
//! requests are retried, early tunnel bytes survive an upgrade, an empty Host
//! is refused and another row's virtual port is mapped back.

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Reads one request head (bodiless requests only) from `s` into `buf`;
/// returns its request line, or `None` at EOF.
async fn next_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..i + 4).collect();
            let line = String::from_utf8_lossy(&head);
            return Some(line.lines().next().unwrap_or("").to_string());
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn answer(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A keep-alive target that answers each request with its own path. After
/// answering a path starting `/then-unsolicited`, it waits for `go`, then
/// writes a second, unsolicited response on the same connection and says so
/// on `written` (a buggy or hostile server).
async fn unsolicited_backend() -> (SocketAddr, mpsc::Sender<()>, mpsc::Receiver<()>) {
    let l = TcpListener::bind(ANY).await.unwrap();
    let addr = l.local_addr().unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>(4);
    let (written_tx, written_rx) = mpsc::channel::<()>(4);
    let go_rx = Arc::new(tokio::sync::Mutex::new(go_rx));
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let (go_rx, written_tx) = (go_rx.clone(), written_tx.clone());
            // Sent when written: Nagle would hold the unsolicited response
            // back until the proxy acknowledges the first one.
            s.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(line) = next_head(&mut s, &mut buf).await {
                    let path = line.split(' ').nth(1).unwrap_or("").to_string();
                    if s.write_all(&answer(&path)).await.is_err() {
                        return;
                    }
                    if path.starts_with("/then-unsolicited") {
                        go_rx.lock().await.recv().await;
                        let _ = s.write_all(&answer("unsolicited")).await;
                        let _ = written_tx.send(()).await;
                    }
                }
            });
        }
    });
    (addr, go_tx, written_rx)
}

#[tokio::test]
async fn unsolicited_response_never_reaches_another_client() {
    let (t, go, mut written) = unsolicited_backend().await;
    let (_s, p) = start(config(vec![route("a.test", t)])).await;

    // Client 1 closes; its target connection goes back to the pool.
    let mut c1 = TcpStream::connect(p).await.unwrap();
    c1.write_all(b"GET /then-unsolicited-1 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut c1).await.body, "/then-unsolicited-1");
    // EOF: the proxy is done with client 1, so the connection is pooled.
    assert!(read_all(&mut c1).await.is_empty());
    go.send(()).await.unwrap();
    written.recv().await.unwrap();
    // Client 2 must get its own answer, not the unsolicited one.
    let r = get(p, "a.test", "/two").await;
    assert_eq!(r.body, "/two");

    // The same on one keep-alive client connection, whose target connection
    // is kept across its requests.
    let mut c3 = TcpStream::connect(p).await.unwrap();
    c3.write_all(b"GET /then-unsolicited-3 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut c3).await.body, "/then-unsolicited-3");
    go.send(()).await.unwrap();
    written.recv().await.unwrap();
    for path in ["/four", "/five"] {
        c3.write_all(format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(read_response(&mut c3).await.body, path);
    }
}

/// A target that answers the first request on each connection and closes
/// the connection when the second arrives, without answering. Records every
/// request line.
async fn closing_second_backend() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind(ANY).await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let rec = rec.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut n = 0;
                while let Some(line) = next_head(&mut s, &mut buf).await {
                    rec.lock().unwrap().push(line.clone());
                    n += 1;
                    if n == 2 {
                        return; // closed with the request unanswered
                    }
                    let path = line.split(' ').nth(1).unwrap_or("").to_string();
                    if s.write_all(&answer(&path)).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn only_idempotent_requests_are_retried() {
    let (t, seen) = closing_second_backend().await;
    let (_s, p) = start(config(vec![route("a.test", t)])).await;
    let mut c = TcpStream::connect(p).await.unwrap();
    c.write_all(b"GET /first HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut c).await.body, "/first");
    // A POST without body on the reused connection, which closes unanswered:
    // the target may have run it, so it is not sent again.
    c.write_all(b"POST /pay HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut c).await.status, 502);
    let posts = |v: &Vec<String>| v.iter().filter(|l| l.starts_with("POST /pay")).count();
    assert_eq!(
        posts(&seen.lock().unwrap()),
        1,
        "{:?}",
        seen.lock().unwrap()
    );

    // A GET in the same place is sent again on a new connection.
    let mut c = TcpStream::connect(p).await.unwrap();
    c.write_all(b"GET /first-b HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut c).await.body, "/first-b");
    c.write_all(b"GET /again HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut c).await.body, "/again");
    let v = seen.lock().unwrap();
    assert_eq!(
        v.iter().filter(|l| l.starts_with("GET /again")).count(),
        2,
        "{v:?}"
    );
}

#[tokio::test]
async fn bytes_sent_before_the_101_reach_the_tunnel() {
    let a = http_backend("A").await;
    let (_s, p) = start(config(vec![route("a.test", a)])).await;
    let mut u = TcpStream::connect(p).await.unwrap();
    // The request and the first tunnel bytes in one write.
    u.write_all(b"GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly bytes")
        .await
        .unwrap();
    let r = read_response(&mut u).await;
    assert_eq!(r.status, 101);
    let mut got = r.body.into_bytes();
    while got.len() < 11 {
        let mut b = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), u.read(&mut b))
            .await
            .expect("echo in time")
            .unwrap();
        assert!(
            n > 0,
            "tunnel closed; got {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&b[..n]);
    }
    assert_eq!(got, b"early bytes");
}

#[tokio::test]
async fn absolute_form_authority_wins_over_host() {
    let (a, mut ra) = recording_backend().await;
    let (b, mut rb) = recording_backend().await;
    let (_s, p) = start(config(vec![route("a.test", a), route("b.test", b)])).await;
    for (req, want) in [
        (
            &b"GET http://b.test/p?q HTTP/1.1\r\nHost: a.test\r\n\r\n"[..],
            "GET /p?q HTTP/1.1\r\nHost: b.test\r\n\r\n",
        ),
        (
            b"GET HTTP://B.TEST/u HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "GET /u HTTP/1.1\r\nHost: B.TEST\r\n\r\n",
        ),
    ] {
        let mut c = TcpStream::connect(p).await.unwrap();
        c.write_all(req).await.unwrap();
        assert_eq!(read_response(&mut c).await.body, "ok");
        let got = rb.recv().await.unwrap();
        assert_eq!(String::from_utf8_lossy(&got), want);
    }
    // Absolute-form without Host, in HTTP/1.1: refused (RFC 9112 §3.2).
    let mut c = TcpStream::connect(p).await.unwrap();
    c.write_all(b"GET http://b.test/ HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut c).await.status, 400);
    assert!(ra.try_recv().is_err() && rb.try_recv().is_err());
}

#[tokio::test]
async fn loose_chunked_framing_is_refused_before_anything_is_forwarded() {
    let (a, mut ra) = recording_backend().await;
    let (_s, p) = start(config(vec![route("a.test", a)])).await;
    let bodies: [&[u8]; 5] = [
        b"3\nabc\r\n0\r\n\r\n",
        b"3;x\nabc\r\n0\r\n\r\n",
        b"ffffffffffffffff\r\nabc",
        b"3\r\nabc\r\n0\r\nGET /x HTTP/1.1\r\n\r\n",
        b"3\r\nabc\n0\r\n\r\n",
    ];
    for body in bodies {
        let mut c = TcpStream::connect(p).await.unwrap();
        let mut req =
            b"POST /c HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        req.extend_from_slice(body);
        c.write_all(&req).await.unwrap();
        let r = read_response(&mut c).await;
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(body));
        assert!(r.body.contains("malformed chunked body"), "{}", r.body);
    }
    for te in ["chunked, chunked", "chunked, identity"] {
        let mut c = TcpStream::connect(p).await.unwrap();
        c.write_all(
            format!("POST /c HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(read_response(&mut c).await.status, 400, "{te}");
    }
    // Nothing reached the target: the recorder answers, so any forwarded
    // head would have been seen before the 400 came back.
    assert!(ra.try_recv().is_err());
}

#[tokio::test]
async fn empty_host_is_refused_even_with_a_default_row() {
    let a = http_backend("A").await;
    let (_s, p) = start(config(vec![route("*", a)])).await;
    for req in [
        &b"GET / HTTP/1.1\r\nHost:\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
        b"GET / HTTP/1.0\r\nHost:\r\n\r\n",
    ] {
        let mut c = TcpStream::connect(p).await.unwrap();
        c.write_all(req).await.unwrap();
        assert_eq!(read_response(&mut c).await.status, 400);
    }
    assert_eq!(get(p, "x.test", "/").await.body, "A GET / body=0");
}

#[tokio::test]
async fn location_naming_another_rows_virtual_port_maps_to_the_shared_port() {
    let b = http_backend("B").await;
    // a.test's server redirects to b.test on b's virtual port.
    let l = TcpListener::bind(ANY).await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while next_head(&mut s, &mut buf).await.is_some() {
                    let r = format!(
                        "HTTP/1.1 302 Found\r\nlocation: http://b.test:{}/x\r\ncontent-length: 0\r\n\r\n",
                        b.port()
                    );
                    if s.write_all(r.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let (_s, p) = start(config(vec![route("a.test", a), route("b.test", b)])).await;
    let r = get(p, &format!("a.test:{}", p.port()), "/go").await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location").unwrap(),
        format!("http://b.test:{}/x", p.port())
    );
}
