//! The pool gateway's surroundings through a real bulkheadd (issue 17): the
//! daemon's Prometheus endpoint moving as the gateway allocates and refuses.

mod common;

use bulkhead_pool_proto::client::Client as Gateway;
use bulkhead_pool_proto::{Frame, RefuseReason};
use common::pools::*;
use common::{Daemon, Opts};
use std::io::{Read, Write};
use std::time::Duration;

/// One HTTP/1.1 request to the metrics endpoint: (status, body).
fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: metrics.example.org\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

fn scrape(addr: &str) -> String {
    let (status, body) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of one series (`name{labels}` exactly as exposed), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|v| v.strip_prefix(' '))
            .map(|v| v.trim().parse().unwrap())
    })
}

/// A counter's value; one never moved is not exposed yet.
fn count(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or(0.0)
}

fn gauge(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

const IDLE: &str = r#"bulkhead_pool_partitions{pool="m",state="idle"}"#;
const IN_SESSION: &str = r#"bulkhead_pool_partitions{pool="m",state="in-session"}"#;
const QUEUE: &str = r#"bulkhead_pool_queue_length{program="echo"}"#;
const ALLOCATIONS: &str = r#"bulkhead_pool_allocations_total{pool="m",program="echo"}"#;
const LATENCY_COUNT: &str = r#"bulkhead_pool_allocate_seconds_count{program="echo"}"#;

fn refusals(text: &str, r: RefuseReason) -> f64 {
    count(
        text,
        &format!(
            r#"bulkhead_pool_refusals_total{{reason="{}",code="{}"}}"#,
            r.as_str(),
            r.code()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_metrics_move_as_the_gateway_allocates_queues_and_refuses() {
    let gw = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start(Opts {
        extra: format!("[pool]\ngateway = {gw:?}\n[metrics]\nlisten = {metrics:?}\n"),
        ..Default::default()
    });
    // Only GET /metrics is served.
    assert_eq!(http(&metrics, "GET", "/").0, 404);
    assert_eq!(http(&metrics, "POST", "/metrics").0, 405);

    let alice = add_user(&d, "alice", "echo", 3);
    d.client()
        .pool_create(&statement("m", "echo", 1))
        .await
        .unwrap();
    wait_pool(&d, "m", 1, "idle").await;
    let t0 = scrape(&metrics);
    assert_eq!(gauge(&t0, IDLE), 1.0, "{t0}");
    assert_eq!(gauge(&t0, IN_SESSION), 0.0);
    assert_eq!(
        gauge(&t0, r#"bulkhead_pool_partitions{pool="m",state="booting"}"#),
        0.0
    );
    assert_eq!(gauge(&t0, QUEUE), 0.0);
    assert_eq!(gauge(&t0, r#"bulkhead_partitions{state="running"}"#), 1.0);

    // Refusals, each counted under its own reason.
    let mut g = Gateway::connect_tcp(gw.as_str()).await.unwrap();
    for r in [
        req("echo", "mallory", &alice, 0),
        req("echo", "alice", "bhp_wrong", 0),
    ] {
        g.allocate(r).await.unwrap_err();
    }
    let mut dealloc = Vec::new();
    Frame::Deallocate { confirm: true }
        .encode(&mut dealloc)
        .unwrap();
    assert!(matches!(
        raw_exchange(&gw, &dealloc),
        Frame::Refused {
            reason: RefuseReason::Malformed,
            ..
        }
    ));
    let t1 = scrape(&metrics);
    for (r, n) in [
        (RefuseReason::UnknownUser, 1.0),
        (RefuseReason::BadCredential, 1.0),
        (RefuseReason::Malformed, 1.0),
        (RefuseReason::PoolExhausted, 0.0),
    ] {
        assert_eq!(refusals(&t1, r) - refusals(&t0, r), n, "{r:?}\n{t1}");
    }
    assert_eq!(count(&t1, ALLOCATIONS), count(&t0, ALLOCATIONS));

    // A session: counted, timed, the partition in session.
    g.allocate(req("echo", "alice", &alice, 5_000))
        .await
        .unwrap();
    let t2 = scrape(&metrics);
    assert_eq!(count(&t2, ALLOCATIONS) - count(&t0, ALLOCATIONS), 1.0);
    assert_eq!(count(&t2, LATENCY_COUNT) - count(&t0, LATENCY_COUNT), 1.0);
    assert_eq!((gauge(&t2, IN_SESSION), gauge(&t2, IDLE)), (1.0, 0.0));

    // None idle: a request that may not wait is refused as exhausted, one
    // that may wait is queued until the session ends.
    let mut g2 = Gateway::connect_tcp(gw.as_str()).await.unwrap();
    g2.allocate(req("echo", "alice", &alice, 0))
        .await
        .unwrap_err();
    let (gw2, token) = (gw.clone(), alice.clone());
    let queued = tokio::spawn(async move {
        let mut g = Gateway::connect_tcp(gw2.as_str()).await.unwrap();
        g.allocate(req("echo", "alice", &token, 120_000))
            .await
            .unwrap();
        g.deallocate().await.unwrap();
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let t3 = loop {
        let t = scrape(&metrics);
        if gauge(&t, QUEUE) == 1.0 {
            break t;
        }
        assert!(tokio::time::Instant::now() < deadline, "never queued:\n{t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        refusals(&t3, RefuseReason::PoolExhausted) - refusals(&t0, RefuseReason::PoolExhausted),
        1.0
    );
    g.deallocate().await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), queued)
        .await
        .unwrap()
        .unwrap();
    wait_pool(&d, "m", 1, "idle").await;
    let t4 = scrape(&metrics);
    assert_eq!(gauge(&t4, QUEUE), 0.0);
    assert_eq!(count(&t4, ALLOCATIONS) - count(&t0, ALLOCATIONS), 2.0);
    assert_eq!(count(&t4, LATENCY_COUNT) - count(&t0, LATENCY_COUNT), 2.0);
    assert_eq!((gauge(&t4, IN_SESSION), gauge(&t4, IDLE)), (0.0, 1.0));
}
