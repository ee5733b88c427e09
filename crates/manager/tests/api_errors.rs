//! Every bad input gets its own error and changes nothing, against a real
//! bulkheadd (no partition needs to boot for these).

mod common;

use bulkhead_manager::client::ClientError;
use bulkhead_manager::tls::Trust;
use common::{Daemon, Opts};
use hyper::Method;
use serde_json::{json, Value};

fn code(r: Result<Value, ClientError>) -> (u16, String, String) {
    match r {
        Err(ClientError::Api {
            status,
            code,
            message,
            ..
        }) => (status, code, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn snapshot(d: &Daemon) -> Value {
    let list = d.client().get("/v1/partitions").await.unwrap();
    let host = d.client().get("/v1/host").await.unwrap();
    json!({ "list": list, "allocated": host["allocated"] })
}

#[tokio::test]
async fn bad_inputs_get_their_own_error_and_change_nothing() {
    // One host CPU, no overcommit: 100% of entitlement to hand out.
    let d = Daemon::start(Opts {
        extra: "[capacity]\ncpus = 1\ncpu_overcommit = 1.0\nmemory_mib = 4096\nmemory_reserve_mib = 1024\nqemu_overhead_mib = 100\n".into(),
        ..Default::default()
    });
    let c = d.client();
    d.create("first", 60, 256, json!({ "net": true })).await;
    let before = snapshot(&d).await;

    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            "duplicate name",
            json!({"name":"first","memory_mib":128,"cpu_percent":10}),
            409,
            "already_exists",
            "already exists",
        ),
        (
            "zero vcpus",
            json!({"name":"b","vcpus":0,"memory_mib":128,"cpu_percent":10}),
            400,
            "invalid_argument",
            "vcpus",
        ),
        (
            "absurd vcpus",
            json!({"name":"b","vcpus":100000,"memory_mib":128,"cpu_percent":10}),
            400,
            "invalid_argument",
            "vcpus",
        ),
        (
            "zero memory",
            json!({"name":"b","memory_mib":0,"cpu_percent":10}),
            400,
            "invalid_argument",
            "too small",
        ),
        (
            "absurd memory",
            json!({"name":"b","memory_mib":1u64<<40,"cpu_percent":10}),
            400,
            "invalid_argument",
            "more than the host",
        ),
        (
            "zero cpu",
            json!({"name":"b","memory_mib":128,"cpu_percent":0}),
            400,
            "invalid_argument",
            "cpu entitlement",
        ),
        (
            "cpu beyond vcpus",
            json!({"name":"b","vcpus":1,"memory_mib":128,"cpu_percent":150}),
            400,
            "invalid_argument",
            "cpu entitlement",
        ),
        (
            "bad name",
            json!({"name":"Bad Name","memory_mib":128,"cpu_percent":10}),
            400,
            "invalid_argument",
            "partition name",
        ),
        (
            "missing image",
            json!({"name":"b","memory_mib":128,"cpu_percent":10,"image":"/nonexistent"}),
            400,
            "invalid_argument",
            "vmlinux",
        ),
        (
            "missing disk",
            json!({"name":"b","memory_mib":128,"cpu_percent":10,"disks":[{"path":"/nope.qcow2","format":"qcow2"}]}),
            400,
            "invalid_argument",
            "does not exist",
        ),
        (
            "over capacity cpu",
            json!({"name":"b","memory_mib":128,"cpu_percent":41}),
            507,
            "over_capacity",
            "only 40% free of 100%",
        ),
        (
            "over capacity memory",
            json!({"name":"b","memory_mib":2800,"cpu_percent":10}),
            507,
            "over_capacity",
            "MiB free",
        ),
        (
            "unknown field",
            json!({"name":"b","memory_mib":128,"cpu_percent":10,"colour":"red"}),
            400,
            "invalid_argument",
            "unknown field",
        ),
        (
            "wrong type",
            json!({"name":"b","memory_mib":"lots","cpu_percent":10}),
            400,
            "invalid_argument",
            "malformed JSON",
        ),
        (
            "missing field",
            json!({"name":"b"}),
            400,
            "invalid_argument",
            "missing field",
        ),
    ];
    for (what, body, status, want_code, needle) in cases {
        let (s, k, m) = code(c.post("/v1/partitions", &body).await);
        assert_eq!((s, k.as_str()), (status, want_code), "{what}: {m}");
        assert!(m.contains(needle), "{what}: {m:?} lacks {needle:?}");
        assert!(!m.contains('\n'), "{what}: error is one line: {m:?}");
        assert_eq!(snapshot(&d).await, before, "{what} changed state");
    }

    // Malformed JSON, an empty body and a huge body.
    for (what, body, needle) in [
        ("malformed", b"{\"name\": ".to_vec(), "malformed JSON"),
        ("empty", Vec::new(), "malformed JSON"),
    ] {
        let (s, b) = c
            .call_raw(c.raw_request(Method::POST, "/v1/partitions", &body))
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(s.as_u16(), 400, "{what}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{what}: {v}"
        );
    }
    assert_eq!(snapshot(&d).await, before);

    // Unknown partition, for every verb.
    for (m, p) in [
        (Method::GET, "/v1/partitions/ghost"),
        (Method::DELETE, "/v1/partitions/ghost"),
        (Method::POST, "/v1/partitions/ghost/start"),
        (Method::POST, "/v1/partitions/ghost/stop"),
        (Method::POST, "/v1/partitions/ghost/restart"),
        (Method::GET, "/v1/partitions/ghost/stats"),
        (Method::GET, "/v1/partitions/ghost/console"),
    ] {
        let (s, k, msg) = code(c.call(m.clone(), p, None).await);
        assert_eq!((s, k.as_str()), (404, "not_found"), "{m} {p}: {msg}");
        assert!(msg.contains("\"ghost\""), "{msg}");
    }
    let (s, k, _) = code(
        c.post("/v1/partitions/ghost/exec", &json!({"argv": ["true"]}))
            .await,
    );
    assert_eq!((s, k.as_str()), (404, "not_found"));
    // A defined partition is not running: stop, exec and console are conflicts.
    let (s, k, m) = code(c.post("/v1/partitions/first/stop", &json!({})).await);
    assert_eq!((s, k.as_str()), (409, "conflict"), "{m}");
    assert!(m.contains("defined"), "{m}");
    let (s, _, m) = code(
        c.post("/v1/partitions/first/exec", &json!({"argv": []}))
            .await,
    );
    assert_eq!(s, 400, "{m}");
    let (s, _, m) = code(
        c.post("/v1/partitions/first/exec", &json!({"argv": ["true"]}))
            .await,
    );
    assert_eq!(s, 409, "{m}");
    let (s, k, _) = code(c.get("/v1/nothing-here").await);
    assert_eq!((s, k.as_str()), (404, "no_route"));
    let (s, _, _) = code(
        c.post("/v1/partitions/first/start", &json!({"wait": "yes"}))
            .await,
    );
    assert_eq!(s, 400);
    assert_eq!(snapshot(&d).await, before);

    // Freed capacity is reusable, and addresses are unique.
    let second = d.create("second", 40, 128, json!({ "net": true })).await;
    let first = d.show("first").await;
    assert_ne!(first["net"]["ip"], second["net"]["ip"]);
    assert_eq!(first["net"]["ip"], format!("{}.2/24", d.subnet_prefix));
    c.call(Method::DELETE, "/v1/partitions/second", None)
        .await
        .unwrap();
    assert_eq!(snapshot(&d).await, before);

    // The OpenAPI document describes the API.
    let doc = c.get("/openapi.json").await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/partitions/{name}/start"]["post"].is_object());
}

#[tokio::test]
async fn tcp_needs_the_bearer_token_and_the_socket_is_private() {
    let d = Daemon::start(Opts {
        tcp_token: Some("s3cret-token-of-16+".into()),
        ..Default::default()
    });
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let f = bulkhead_manager::tls::file_fingerprint(&d.cert()).unwrap();
    for token in [
        None,
        Some("wrong"),
        Some("s3cret-token-of-16"),
        Some("s3cret-token-of-16+-"),
    ] {
        let c = d.tcp_client_with(Trust::Fingerprint(f.clone()), token);
        let (s, k, _) = code(c.get("/v1/partitions").await);
        assert_eq!((s, k.as_str()), (401, "unauthorized"), "token {token:?}");
        let (s, _, _) = code(
            c.post(
                "/v1/partitions",
                &json!({"name":"x","memory_mib":128,"cpu_percent":10}),
            )
            .await,
        );
        assert_eq!(s, 401);
    }
    assert_eq!(d.client().get("/v1/partitions").await.unwrap(), json!([]));
    let good = d.tcp_client();
    good.post(
        "/v1/partitions",
        &json!({"name":"x","memory_mib":128,"cpu_percent":10}),
    )
    .await
    .unwrap();
    assert_eq!(good.get("/v1/partitions").await.unwrap()[0]["name"], "x");
}

#[tokio::test]
async fn state_survives_a_daemon_restart() {
    let mut d = Daemon::start(Opts::default());
    d.create(
        "keep",
        10,
        128,
        json!({ "net": true, "restart_policy": "on-failure" }),
    )
    .await;
    d.kill9();
    d.spawn();
    let v = d.show("keep").await;
    assert_eq!(v["state"], "defined");
    assert_eq!(v["restart_policy"], "on-failure");
    assert_eq!(v["net"]["ip"], format!("{}.2/24", d.subnet_prefix));
    assert!(d.cgroups().is_empty() && d.taps().is_empty());
}

#[tokio::test]
async fn a_start_that_fails_leaves_nothing_behind() {
    let d = Daemon::start(Opts::default());
    // An image whose kernel is garbage: QEMU refuses it. (In the storage
    // root: an image directory must be there or the configured one.)
    let img = d.dir.path().join("data/storage/bad-image");
    std::fs::create_dir_all(&img).unwrap();
    std::fs::write(img.join("vmlinux"), vec![0u8; 1 << 20]).unwrap();
    std::fs::copy(
        common::image_dir().join("initramfs.cpio.gz"),
        img.join("initramfs.cpio.gz"),
    )
    .unwrap();
    d.create("broken", 10, 128, json!({ "net": true, "image": img }))
        .await;
    let e = d
        .client()
        .post("/v1/partitions/broken/start", &json!({ "wait": true }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("engine"), "{e}");
    eprintln!("start error: {e}");
    let v = d.show("broken").await;
    assert_eq!(v["state"], "failed", "{v:#}");
    assert!(
        v["last_exit"].as_str().unwrap().starts_with("start failed"),
        "{v:#}"
    );
    assert!(v["pid"].is_null());
    assert!(d.cgroups().is_empty(), "{:?}", d.cgroups());
    assert!(d.taps().is_empty(), "{:?}", d.taps());
}
