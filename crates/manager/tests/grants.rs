//! Grants between three real partitions, through the on-behalf API
//! (`POST /v1/partitions/{name}/grant-requests`, the same handler the agent
//! relay uses): a region created in A, granted to B, re-granted read-only to
//! C; one memory in all three; every refusal with its own reason and no change
//! to the table; revoke cascading to the holders' devices; the read-only disk
//! grant; stopping the owner ending everything it gave.

mod common;

use bulkhead_manager::client::ClientError;
use common::grants::{addr, ask, guest_regions, log_events, ok, wait_grant_state};
use common::{Daemon, Opts};
use serde_json::{json, Value};
use std::time::Duration;

async fn grants(d: &Daemon) -> Value {
    d.client().get("/v1/grants").await.unwrap()
}

/// A refusal: its reason, and the table exactly as before.
async fn refused(d: &Daemon, p: &str, req: Value, reason: &str) {
    let before = grants(d).await;
    match ask(d, p, req.clone()).await {
        Err(ClientError::Api {
            code, reason: r, ..
        }) => {
            assert_eq!(code, "grant_refused", "{p} {req}");
            assert_eq!(r.as_deref(), Some(reason), "{p} {req}");
        }
        other => panic!("{p} {req}: expected refusal {reason}, got {other:?}"),
    }
    assert_eq!(
        grants(d).await,
        before,
        "refusal {reason} changed the table"
    );
}

async fn sh(d: &Daemon, p: &str, cmd: &str) -> Value {
    d.exec(p, cmd).await
}

async fn read(d: &Daemon, p: &str, path: &str) -> Result<String, String> {
    let r = sh(
        d,
        p,
        &format!(
            "bulkhead-guest region read {} --offset 0 --len 4",
            addr(path)
        ),
    )
    .await;
    if r["code"] == 0 {
        Ok(r["stdout"].as_str().unwrap().trim().to_string())
    } else {
        Err(r["stderr"].as_str().unwrap_or("").to_string())
    }
}

async fn write(d: &Daemon, p: &str, path: &str, hex: &str) -> Value {
    sh(
        d,
        p,
        &format!(
            "bulkhead-guest region write {} --offset 0 --data {hex}",
            addr(path)
        ),
    )
    .await
}

fn issued(v: &Value) -> (String, String) {
    assert_eq!(v["reply"], "issued", "{v}");
    (
        v["grant"].as_str().unwrap().to_string(),
        v["cookie"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn three_partitions_share_one_region_and_revocation_cascades() {
    let d = Daemon::start(Opts {
        extra: "[grants]\nmax_depth = 3\n".into(),
        ..Default::default()
    });
    // A's disk: read-only in A too, so B can open it while A runs (QEMU's
    // image locks refuse a reader beside a writer).
    let disk = d.storage_root().join("a-disk.raw");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..8].copy_from_slice(b"BULKDISK");
    std::fs::write(&disk, &bytes).unwrap();
    let part = |disks: Value| json!({ "hotplug_slots": 4, "disks": disks });
    d.create(
        "a",
        30,
        160,
        part(json!([{ "path": disk.to_str().unwrap(), "format": "raw", "readonly": true }])),
    )
    .await;
    d.create("b", 30, 160, part(json!([]))).await;
    d.create("c", 30, 160, part(json!([]))).await;
    tokio::join!(d.start_wait("a"), d.start_wait("b"), d.start_wait("c"));

    // A creates a region; it is mapped in A and listed with its size.
    let r = ok(
        &d,
        "a",
        json!({"op": "region_create", "name": "buf", "size": 1 << 20}),
    )
    .await;
    assert_eq!(r["reply"], "region", "{r}");
    assert_eq!(r["size"], 1 << 20);
    let pa = r["path"].as_str().unwrap().to_string();
    assert_eq!(write(&d, "a", &pa, "cafebabe").await["code"], 0);
    assert_eq!(read(&d, "a", &pa).await.unwrap(), "cafebabe");
    let regions = d.client().get("/v1/regions").await.unwrap();
    assert_eq!(regions[0]["resource"], "region:a/buf", "{regions}");
    // Over the owner's memory entitlement (160 MiB): refused, nothing made.
    let e = ask(
        &d,
        "a",
        json!({"op": "region_create", "name": "big", "size": 1 << 30}),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ClientError::Api { status: 507, .. }), "{e:?}");
    refused(
        &d,
        "a",
        json!({"op": "region_create", "name": "buf", "size": 1 << 20}),
        "resource_exists",
    )
    .await;

    // A grants to B; refusals of the cookie first, each changing nothing.
    let (ab, cookie) = issued(
        &ok(
            &d,
            "a",
            json!({"op": "grant", "resource": "buf", "to": "b"}),
        )
        .await,
    );
    refused(
        &d,
        "c",
        json!({"op": "accept", "cookie": cookie}),
        "wrong_partition",
    )
    .await;
    let random = format!("bhc1_{}{}", &ab[3..], "ab".repeat(32));
    refused(
        &d,
        "b",
        json!({"op": "accept", "cookie": random}),
        "unknown_cookie",
    )
    .await;
    let mut flipped = cookie.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(flipped).unwrap();
    refused(
        &d,
        "b",
        json!({"op": "accept", "cookie": flipped}),
        "unknown_cookie",
    )
    .await;
    refused(
        &d,
        "b",
        json!({"op": "grant", "resource": "buf", "to": "c"}),
        "unknown_resource",
    )
    .await;

    // B accepts: mapped, and reads A's bytes.
    let m = ok(&d, "b", json!({"op": "accept", "cookie": cookie})).await;
    assert_eq!(m["reply"], "mapped", "{m}");
    assert_eq!(m["access"], "read_write");
    let pb = m["path"].as_str().unwrap().to_string();
    assert_eq!(read(&d, "b", &pb).await.unwrap(), "cafebabe");
    refused(
        &d,
        "b",
        json!({"op": "accept", "cookie": cookie}),
        "cookie_used",
    )
    .await;

    // B re-grants to C read-only; C reads the same memory.
    let (bc, cookie2) = issued(
        &ok(
            &d,
            "b",
            json!({"op": "regrant", "grant": ab, "to": "c", "read_only": true}),
        )
        .await,
    );
    let m = ok(&d, "c", json!({"op": "accept", "cookie": cookie2})).await;
    assert_eq!(m["access"], "read_only");
    let pc = m["path"].as_str().unwrap().to_string();
    assert_eq!(read(&d, "c", &pc).await.unwrap(), "cafebabe");
    // C holds read-only: no read-write re-grant; C does not hold A→B.
    refused(
        &d,
        "c",
        json!({"op": "regrant", "grant": bc, "to": "b", "read_only": false}),
        "access_wider_than_held",
    )
    .await;
    refused(
        &d,
        "c",
        json!({"op": "regrant", "grant": ab, "to": "b", "read_only": true}),
        "not_holder",
    )
    .await;
    // C → B (depth 3, the bound): B may not go one further.
    let (cb, cookie5) = issued(
        &ok(
            &d,
            "c",
            json!({"op": "regrant", "grant": bc, "to": "b", "read_only": true}),
        )
        .await,
    );
    let pb2 = ok(&d, "b", json!({"op": "accept", "cookie": cookie5})).await["path"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(read(&d, "b", &pb2).await.unwrap(), "cafebabe");
    refused(
        &d,
        "b",
        json!({"op": "regrant", "grant": cb, "to": "c", "read_only": true}),
        "depth_exceeded",
    )
    .await;
    let (ac, cookie3) = issued(
        &ok(
            &d,
            "a",
            json!({"op": "grant", "resource": "buf", "to": "c"}),
        )
        .await,
    );
    ok(&d, "a", json!({"op": "revoke", "grant": ac})).await;
    refused(
        &d,
        "c",
        json!({"op": "accept", "cookie": cookie3}),
        "revoked",
    )
    .await;
    let (exp, cookie4) = issued(
        &ok(
            &d,
            "a",
            json!({"op": "grant", "resource": "buf", "to": "c", "expires_ms": 1}),
        )
        .await,
    );
    // The expiry task ends it (bounded wait), then the cookie is refused.
    wait_grant_state(&d, &exp, "expired", Duration::from_secs(30)).await;
    refused(
        &d,
        "c",
        json!({"op": "accept", "cookie": cookie4}),
        "cookie_expired",
    )
    .await;

    // One memory: A writes, B and C read; C's write through its read-only
    // grant does not reach A's region (the host refuses it).
    assert_eq!(write(&d, "a", &pa, "0badf00d").await["code"], 0);
    assert_eq!(read(&d, "b", &pb).await.unwrap(), "0badf00d");
    assert_eq!(read(&d, "c", &pc).await.unwrap(), "0badf00d");
    write(&d, "c", &pc, "11111111").await;
    assert_eq!(read(&d, "a", &pa).await.unwrap(), "0badf00d");
    assert_eq!(write(&d, "b", &pb, "22222222").await["code"], 0);
    assert_eq!(read(&d, "a", &pa).await.unwrap(), "22222222");

    // The grant list shows the chain with the holders' devices.
    let g: Value = d.client().get(&format!("/v1/grants/{bc}")).await.unwrap();
    assert_eq!(
        (g["parent"].as_str(), g["depth"].as_u64()),
        (Some(ab.as_str()), Some(2))
    );
    assert!(g["device"].as_str().unwrap().starts_with("bhg"), "{g}");
    let e = d
        .client()
        .get("/v1/grants/gr-00000000000000aa")
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Api { status: 404, .. }), "{e:?}");

    // Revoke A→B as an administrator: B's and C's devices go, deepest first.
    let (rb, rc) = (guest_regions(&d, "b").await, guest_regions(&d, "c").await);
    assert!(rb.contains(&addr(&pb)) && rc.contains(&addr(&pc)));
    let e = d
        .client()
        .post(&format!("/v1/grants/{ab}/revoke"), &json!({}))
        .await
        .unwrap();
    assert_eq!(e["reply"], "ended", "{e}");
    assert_eq!(e["ended"], json!([cb, bc, ab]));
    assert!(!guest_regions(&d, "b").await.contains(&addr(&pb)));
    assert!(!guest_regions(&d, "b").await.contains(&addr(&pb2)));
    assert!(!guest_regions(&d, "c").await.contains(&addr(&pc)));
    assert_eq!(write(&d, "a", &pa, "33333333").await["code"], 0);
    assert!(read(&d, "b", &pb).await.is_err());
    assert!(read(&d, "c", &pc).await.is_err());
    let unmapped: Vec<Value> = log_events(&d)
        .await
        .into_iter()
        .filter(|e| e["action"] == "unmapped")
        .collect();
    let who: Vec<&str> = unmapped
        .iter()
        .map(|u| u["partition"].as_str().unwrap())
        .collect();
    assert_eq!(who, ["b", "c", "b"], "deepest first: {unmapped:?}");
    for u in &unmapped {
        assert_eq!(u["outcome"], "unplugged", "{u}");
    }
    let again = d
        .client()
        .post(&format!("/v1/grants/{ab}/revoke"), &json!({}))
        .await;
    assert!(
        matches!(again, Err(ClientError::Api { status: 409, .. })),
        "{again:?}"
    );

    // The read-only disk grant: B reads A's disk; a write fails.
    let (dg, dcookie) = issued(
        &ok(&d, "a", json!({"op": "grant", "resource": "disk0", "kind": "disk", "to": "b", "read_only": true})).await,
    );
    let m = ok(&d, "b", json!({"op": "accept", "cookie": dcookie})).await;
    let dev = m["path"].as_str().unwrap().to_string();
    assert!(dev.starts_with("/dev/vd"), "{m}");
    let r = sh(&d, "b", &format!("head -c 8 {dev}")).await;
    assert_eq!(r["stdout"], "BULKDISK", "{r}");
    let r = sh(
        &d,
        "b",
        &format!("echo overwrite | dd of={dev} conv=fsync 2>&1"),
    )
    .await;
    assert_ne!(r["code"], 0, "a write to a read-only grant succeeded: {r}");
    assert_eq!(&std::fs::read(&disk).unwrap()[..8], b"BULKDISK");

    // Stopping A ends every grant of A's: B loses the disk.
    d.client()
        .post("/v1/partitions/a/stop", &json!({ "force": true }))
        .await
        .unwrap();
    wait_grant_state(&d, &dg, "revoked", Duration::from_secs(60)).await;
    let live: Vec<Value> = grants(&d)
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["state"] == "issued" || g["state"] == "accepted")
        .cloned()
        .collect();
    assert!(live.is_empty(), "{live:?}");
    let r = sh(&d, "b", &format!("test -e {dev}")).await;
    assert_ne!(r["code"], 0, "B still has A's disk after A stopped");
}
