//! The pool gateway's surroundings through a real bulkheadd (issue 17): the
//! daemon's Prometheus endpoint moving as the gateway allocates and refuses;
//! the gateway over TLS (a CA and certificate made here with rcgen).

mod common;

use bulkhead_manager::tls::{file_fingerprint, server_name, Trust};
use bulkhead_pool_proto::client::{Client as Gateway, ClientError as GwError};
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

/// A CA and a certificate it signed for 127.0.0.1, as PEM files in `dir`:
/// (ca, cert, key).
fn ca_and_cert(dir: &std::path::Path, tag: &str) -> [std::path::PathBuf; 3] {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("test CA {tag}"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let paths = ["ca.pem", "cert.pem", "key.pem"].map(|f| dir.join(format!("{tag}-{f}")));
    std::fs::write(&paths[0], ca.pem()).unwrap();
    std::fs::write(&paths[1], leaf.pem()).unwrap();
    std::fs::write(&paths[2], key.serialize_pem()).unwrap();
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_speaks_tls_and_refuses_plain_text_and_strangers() {
    let certs = tempfile::tempdir().unwrap();
    let [ca, cert, key] = ca_and_cert(certs.path(), "gw");
    let [other_ca, ..] = ca_and_cert(certs.path(), "other");
    let gw = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start(Opts {
        extra: format!(
            "[pool]\ngateway = {gw:?}\ngateway_cert = {cert:?}\ngateway_key = {key:?}\n"
        ),
        ..Default::default()
    });
    let alice = add_user(&d, "alice", "echo", 1);
    d.client()
        .pool_create(&statement("t", "echo", 1))
        .await
        .unwrap();
    let idle = wait_pool(&d, "t", 1, "idle").await;
    let tls = |trust: Trust| trust.client_config().unwrap();

    // Plain text to a TLS gateway: one plain REFUSED that says so.
    match Gateway::connect_tcp(gw.as_str()).await {
        Err(GwError::Refused { reason, message }) => {
            assert_eq!(reason, RefuseReason::Malformed);
            assert!(message.contains("TLS"), "{message}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    // A certificate the client does not trust: the handshake fails.
    match Gateway::connect_tls(gw.as_str(), tls(Trust::CaFile(other_ca)), server_name(&gw)).await {
        Err(GwError::Io(e)) => assert!(e.to_string().contains("certificate"), "{e}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert_eq!(
        d.client().pool_show("t").await.unwrap(),
        idle,
        "refused clients changed the pool"
    );

    // A conversation over TLS, trusting the CA.
    let mut g = Gateway::connect_tls(
        gw.as_str(),
        tls(Trust::CaFile(ca.clone())),
        server_name(&gw),
    )
    .await
    .unwrap();
    let s = g
        .allocate(req("echo", "alice", &alice, 5_000))
        .await
        .unwrap();
    g.send(b"over tls\n").await.unwrap();
    assert_eq!(
        lines(&mut g, 2).await,
        [format!("echo echo {s} alice"), "over tls".to_string()]
    );
    g.deallocate().await.unwrap();

    // The CLI, pinning the certificate's fingerprint.
    let fp = file_fingerprint(&cert).unwrap();
    let text = pool_connect(&gw, &alice, &["--tls-fingerprint", &fp], b"from the cli\n");
    assert_eq!(text.lines().nth(1), Some("from the cli"), "{text}");
    let v = wait_pool(&d, "t", 1, "idle").await;
    assert_eq!(v.partitions[0].sessions_served, 2);
}

/// DEALLOCATE with confirm ends the program's input; its answer to the last
/// bytes, however late (within the drain bound), reaches the user before
/// CONFIRMED, and the cleanup runs only after the program closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_programs_last_answer_reaches_the_user_before_confirmed() {
    let gw = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start(Opts {
        extra: format!("[pool]\ngateway = {gw:?}\n"),
        ..Default::default()
    });
    // Answers only once its input ended, and slower than a cleanup. The
    // readiness probe's connections (no session line) end at once, and each
    // conversation keeps its bytes in a file of its own.
    let app = "printf '%s\\n' 'read -r _ || exit 0' 'cat > /tmp/in.$$' 'sleep 3' \
               'echo \"got $(wc -c < /tmp/in.$$) bytes\"' 'touch /tmp/answered' > /tmp/late.sh; \
               exec nc -ll -p 7000 -e /bin/sh /tmp/late.sh";
    let c = d.client();
    c.pool_create(&bulkhead_manager::pools::types::CreatePool {
        app: app.into(),
        cleanup: Some("test -e /tmp/answered && rm /tmp/answered".into()),
        ..statement("late", "late", 1)
    })
    .await
    .unwrap();
    wait_pool(&d, "late", 1, "idle").await;
    let token = add_user(&d, "erin", "late", 1);
    let mut g = Gateway::connect_tcp(gw.as_str()).await.unwrap();
    g.allocate(req("late", "erin", &token, 5_000))
        .await
        .unwrap();
    g.send(b"abcd").await.unwrap();
    // What came before CONFIRMED; the cleanup, which needs the program to
    // have answered, succeeded (a failed one is an error here).
    let tail = tokio::time::timeout(Duration::from_secs(60), g.deallocate())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&tail), "got 4 bytes\n");
    wait_pool(&d, "late", 1, "idle").await;
}
