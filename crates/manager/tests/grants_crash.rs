//! kill -9 of bulkheadd in the middle of an accept and of a revoke (a
//! test-only failpoint aborts the daemon right after the table is committed,
//! before any device changes): the next daemon makes the table and the
//! devices in each QEMU agree, and logs what it did.

mod common;

use common::grants::{addr, ask, guest_regions, log_events, ok};
use common::{Daemon, Opts};
use serde_json::{json, Value};
use std::time::Duration;

/// Restarts the daemon with `failpoint` armed (or none).
fn respawn(d: &mut Daemon, failpoint: Option<&str>) {
    d.kill9();
    d.env = failpoint
        .map(|f| vec![("BULKHEAD_FAILPOINT".to_string(), f.to_string())])
        .unwrap_or_default();
    d.spawn();
}

/// Waits (bounded) for the daemon to die at its failpoint.
async fn wait_dead(d: &mut Daemon) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while d.alive() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "daemon survived its failpoint"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The fix lists of the log's `reconciled` events.
async fn reconciled(d: &Daemon) -> Vec<Value> {
    log_events(d)
        .await
        .into_iter()
        .filter(|e| e["action"] == "reconciled")
        .map(|e| e["fixes"].clone())
        .collect()
}

#[tokio::test]
async fn kill9_during_accept_and_revoke_leaves_table_and_devices_agreeing() {
    let mut d = Daemon::start(Opts::default());
    for p in ["a", "b"] {
        d.create(p, 30, 160, json!({ "hotplug_slots": 3 })).await;
    }
    tokio::join!(d.start_wait("a"), d.start_wait("b"));
    let r = ok(
        &d,
        "a",
        json!({"op": "region_create", "name": "buf", "size": 1 << 20}),
    )
    .await;
    let pa = r["path"].as_str().unwrap().to_string();
    let before_b = guest_regions(&d, "b").await;

    // Accept: committed, then the daemon dies before plugging into B.
    let g = ok(
        &d,
        "a",
        json!({"op": "grant", "resource": "buf", "to": "b"}),
    )
    .await;
    let (ab, cookie) = (g["grant"].as_str().unwrap(), g["cookie"].as_str().unwrap());
    respawn(&mut d, Some("grant-after-commit"));
    let r = ask(&d, "b", json!({"op": "accept", "cookie": cookie})).await;
    assert!(r.is_err(), "the accept answered: {r:?}");
    wait_dead(&mut d).await;
    respawn(&mut d, None);
    // The accepted grant has no device: ended by the manager; B has nothing.
    let g: Value = d.client().get(&format!("/v1/grants/{ab}")).await.unwrap();
    assert_eq!(g["state"], "revoked", "{g}");
    assert!(g["device"].is_null(), "{g}");
    assert_eq!(guest_regions(&d, "b").await, before_b);
    let fixes = reconciled(&d).await;
    assert!(
        fixes
            .iter()
            .flat_map(|f| f.as_array().unwrap())
            .any(|f| f["fix"] == "end" && f["grant"] == ab),
        "{fixes:?}"
    );
    // A's own region survived, still mapped, and can be granted again.
    let r = d
        .exec(
            "a",
            &format!(
                "bulkhead-guest region write {} --offset 0 --data 5a5a",
                addr(&pa)
            ),
        )
        .await;
    assert_eq!(r["code"], 0, "{r}");

    // Revoke: committed, then the daemon dies before unplugging from B.
    let g = ok(
        &d,
        "a",
        json!({"op": "grant", "resource": "buf", "to": "b"}),
    )
    .await;
    let (ab2, cookie) = (g["grant"].as_str().unwrap(), g["cookie"].as_str().unwrap());
    let m = ok(&d, "b", json!({"op": "accept", "cookie": cookie})).await;
    let dev_addr = addr(m["path"].as_str().unwrap());
    assert!(guest_regions(&d, "b").await.contains(&dev_addr));
    respawn(&mut d, Some("revoke-after-commit"));
    let r = d
        .client()
        .post(&format!("/v1/grants/{ab2}/revoke"), &json!({}))
        .await;
    assert!(r.is_err(), "the revoke answered: {r:?}");
    wait_dead(&mut d).await;
    // The device is still in B while no daemon runs: the table says revoked.
    respawn(&mut d, None);
    let g: Value = d.client().get(&format!("/v1/grants/{ab2}")).await.unwrap();
    assert_eq!(g["state"], "revoked", "{g}");
    assert!(
        !guest_regions(&d, "b").await.contains(&dev_addr),
        "the revoked grant's device is still in B"
    );
    let fixes = reconciled(&d).await;
    let last = fixes.last().unwrap().as_array().unwrap();
    assert!(
        last.iter()
            .any(|f| f["fix"] == "unplug" && f["partition"] == "b"),
        "{fixes:?}"
    );
    // A restart with nothing to fix changes nothing.
    let n = fixes.len();
    respawn(&mut d, None);
    assert_eq!(reconciled(&d).await.len(), n);

    // The owner stopped and started again gets its region back (bounded wait:
    // it is plugged once A's agent is ready).
    d.client()
        .post("/v1/partitions/a/stop", &json!({ "force": true }))
        .await
        .unwrap();
    let r: Value = d.client().get("/v1/regions").await.unwrap();
    assert!(r[0]["path"].is_null(), "{r}");
    d.start_wait("a").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let path = loop {
        let r: Value = d.client().get("/v1/regions").await.unwrap();
        if let Some(p) = r[0]["path"].as_str() {
            break p.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never replugged: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cmd = format!(
        "bulkhead-guest region write {} --offset 0 --data 7e7e",
        addr(&path)
    );
    assert_eq!(d.exec("a", &cmd).await["code"], 0);
}
