//! Run-time control: admin socket, reloads under load, graceful shutdown.

mod common;
use common::*;

use bulkhead_portshare::admin::{request, AdminRequest};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn admin_socket_adds_lists_removes() {
    let a = http_backend("A").await;
    let b = http_backend("B").await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("admin.sock");
    let mut cfg = config(vec![route("a.test", a)]);
    cfg.admin_socket = Some(sock.clone());
    let (_s, p) = start(cfg).await;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );

    assert_eq!(get(p, "b.test", "/").await.status, 421);
    let r = request(
        &sock,
        &AdminRequest::Add {
            route: route("b.test", b),
        },
    )
    .await
    .unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.routes.len(), 2);
    assert_eq!(get(p, "b.test", "/").await.body, "B GET / body=0");

    let r = request(&sock, &AdminRequest::List).await.unwrap();
    assert!(r
        .routes
        .iter()
        .any(|x| x.domain == "b.test" && x.target == b.to_string()));

    let r = request(
        &sock,
        &AdminRequest::Remove {
            listen: listen(),
            domain: "b.test".into(),
        },
    )
    .await
    .unwrap();
    assert!(r.ok);
    assert_eq!(get(p, "b.test", "/").await.status, 421);

    // Refusals leave the table as it was.
    let r = request(
        &sock,
        &AdminRequest::Remove {
            listen: listen(),
            domain: "b.test".into(),
        },
    )
    .await
    .unwrap();
    assert!(!r.ok && r.error.unwrap().contains("no route"));
    let mut bad = route("bad name", a);
    let r = request(&sock, &AdminRequest::Add { route: bad.clone() })
        .await
        .unwrap();
    assert!(!r.ok && r.error.unwrap().contains("invalid domain"));
    bad.domain = "c.test".into();
    bad.listen = "127.0.0.1:1".parse().unwrap();
    let r = request(&sock, &AdminRequest::Add { route: bad })
        .await
        .unwrap();
    assert!(!r.ok && r.error.unwrap().contains("no [[listener]]"));
    assert_eq!(get(p, "a.test", "/").await.body, "A GET / body=0");
}

/// Clients hammer the port on keep-alive and fresh connections while the
/// table is swapped back and forth; not one request may fail, and requests
/// after each swap go where the new table says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_change_under_load_drops_nothing() {
    let a1 = http_backend("A1").await;
    let a2 = http_backend("A2").await;
    let other = http_backend("O").await;
    let (s, p) = start(config(vec![route("a.test", a1)])).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (stop, ok) = (stop.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let keepalive = i % 2 == 0;
            let mut conn: Option<TcpStream> = None;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 5000 {
                n += 1;
                let mut c = match conn.take() {
                    Some(c) => c,
                    None => TcpStream::connect(p).await.expect("connect"),
                };
                let close = if keepalive {
                    ""
                } else {
                    "Connection: close\r\n"
                };
                c.write_all(format!("GET /{i} HTTP/1.1\r\nHost: a.test\r\n{close}\r\n").as_bytes())
                    .await
                    .expect("write");
                let r = read_response(&mut c).await;
                assert_eq!(r.status, 200, "client {i} request {n}: {r:?}");
                assert!(
                    r.body == format!("A1 GET /{i} body=0")
                        || r.body == format!("A2 GET /{i} body=0"),
                    "{}",
                    r.body
                );
                ok.fetch_add(1, Ordering::Relaxed);
                if keepalive {
                    conn = Some(c);
                }
            }
        }));
    }
    // A long TLS-style splice would also survive; here a slow request spans the swaps.
    let slow = tokio::spawn(async move { get(p, "a.test", "/slow").await });
    // A keep-alive connection idle across each swap routes its next request
    // with the new table.
    let mut kept = TcpStream::connect(p).await.unwrap();
    for round in 0..10 {
        let target = if round % 2 == 0 { a2 } else { a1 };
        let mut cfg = s.table().config.clone();
        cfg.routes = vec![
            route("a.test", target),
            route(&format!("r{round}.test"), other),
        ];
        s.reload(cfg).await.unwrap();
        // After the swap has returned, a new request must see the new table.
        let want = if round % 2 == 0 { "A2" } else { "A1" };
        assert_eq!(
            get(p, "a.test", "/check").await.body,
            format!("{want} GET /check body=0")
        );
        kept.write_all(b"GET /kept HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            read_response(&mut kept).await.body,
            format!("{want} GET /kept body=0")
        );
        assert_eq!(get(p, &format!("r{round}.test"), "/").await.status, 200);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("client task saw no failure");
    }
    assert!(slow.await.unwrap().body.ends_with("slow done"));
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "load ran: {}",
        ok.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_request() {
    let a = http_backend("A").await;
    let (s, p) = start(config(vec![route("a.test", a)])).await;
    // An idle keep-alive connection is closed by the shutdown, not waited for.
    let mut idle = TcpStream::connect(p).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut idle).await.status, 200);

    let s2 = s.clone();
    let inflight = tokio::spawn(async move { get(p, "a.test", "/slow").await });
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
    let t = std::time::Instant::now();
    let left = s.shutdown(Duration::from_secs(20)).await;
    assert_eq!(left, 0, "every connection finished before the deadline");
    assert!(t.elapsed() < Duration::from_secs(10));
    let r = inflight.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "A slow done"));
    assert!(read_all(&mut idle).await.is_empty());
    // No new connections after shutdown.
    assert!(TcpStream::connect(p).await.is_err());
}

#[tokio::test]
async fn shutdown_deadline_is_honoured() {
    let a = http_backend("A").await;
    let (s, p) = start(config(vec![route("a.test", a)])).await;
    // A client that connects and sends half a head stays open past a short deadline.
    let mut c = TcpStream::connect(p).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = std::time::Instant::now();
    let left = s.shutdown(Duration::from_millis(200)).await;
    assert_eq!(left, 1);
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn reload_adds_and_removes_listeners_atomically() {
    let a = http_backend("A").await;
    let (s, p) = start(config(vec![route("a.test", a)])).await;
    let second = std::net::TcpListener::bind(ANY)
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = s.table().config.clone();
    cfg.listeners
        .push(bulkhead_portshare::ListenerConfig::new(second));
    let mut r = route("a.test", a);
    r.listen = second;
    cfg.routes.push(r);
    s.reload(cfg.clone()).await.unwrap();
    assert_eq!(get(second, "a.test", "/").await.body, "A GET / body=0");
    // A config whose new listener cannot bind changes nothing.
    let taken = std::net::TcpListener::bind(ANY).unwrap();
    let mut bad = cfg.clone();
    bad.listeners.push(bulkhead_portshare::ListenerConfig::new(
        taken.local_addr().unwrap(),
    ));
    bad.routes.retain(|r| r.listen != listen());
    assert!(s.reload(bad).await.is_err());
    assert_eq!(get(p, "a.test", "/").await.status, 200);
    // Dropping the first listener stops it accepting; the second keeps serving.
    cfg.listeners.retain(|l| l.listen != listen());
    cfg.routes.retain(|r| r.listen != listen());
    s.reload(cfg).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while TcpStream::connect(p).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("first listener closed");
    assert_eq!(get(second, "a.test", "/").await.status, 200);
}
