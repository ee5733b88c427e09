//! Grants from inside the partitions: `bulkhead-guest` in A and B, relayed by
//! their agents to bulkheadd (the same handler as the on-behalf API). The
//! cookie goes from A to B over the internal VLAN. A revoke while B's agent
//! ignores the unmap request (`/run/bulkhead/ignore-unmap`) is forced: B's
//! kernel still loses the device.

mod common;

use common::grants::{addr, guest_regions, log_events};
use common::{Daemon, Opts};
use serde_json::{json, Value};

/// Runs `cmd` in `p`; returns (exit code, stdout trimmed, stderr).
async fn guest(d: &Daemon, p: &str, cmd: &str) -> (i64, String, String) {
    let r = d.exec(p, cmd).await;
    (
        r["code"].as_i64().unwrap(),
        r["stdout"].as_str().unwrap().trim().to_string(),
        r["stderr"].as_str().unwrap().to_string(),
    )
}

async fn must(d: &Daemon, p: &str, cmd: &str) -> String {
    let (code, out, err) = guest(d, p, cmd).await;
    assert_eq!(code, 0, "{p}: {cmd}: {out} {err}");
    out
}

#[tokio::test]
async fn guests_grant_accept_and_a_hostile_holder_is_forced_off() {
    let d = Daemon::start(Opts {
        extra: "[grants]\nunmap_deadline_ms = 500\n".into(),
        ..Default::default()
    });
    for p in ["a", "b"] {
        d.create(p, 30, 160, json!({ "hotplug_slots": 2, "net": true }))
            .await;
    }
    tokio::join!(d.start_wait("a"), d.start_wait("b"));
    let b_ip = common::vlan_ip(&d.show("b").await);

    let pa = must(&d, "a", "bulkhead-guest region create buf --size 1M").await;
    assert!(pa.ends_with("/resource2"), "{pa}");
    must(&d, "a", "bulkhead-guest write buf --offset 0 --data c0ffee").await;
    let line = must(&d, "a", "bulkhead-guest grant buf --to b").await;
    let (grant, cookie) = line.split_once(' ').expect("GRANT_ID COOKIE");

    // A hands the cookie to B over the VLAN (B listens, A sends).
    let listen = tokio::spawn({
        let client = d.client();
        async move {
            client
                .post(
                    "/v1/partitions/b/exec",
                    &json!({ "argv": ["/bin/sh", "-c", "nc -l -p 7070 > /tmp/cookie"], "timeout_secs": 60 }),
                )
                .await
        }
    });
    let send = format!("i=0; until echo {cookie} | nc {b_ip} 7070; do i=$((i+1)); [ $i -gt 100 ] && exit 1; sleep 0.1; done");
    must(&d, "a", &send).await;
    listen.await.unwrap().unwrap();
    assert_eq!(must(&d, "b", "cat /tmp/cookie").await, cookie);

    // B accepts the cookie it received and reads A's bytes through the grant.
    let line = must(&d, "b", "bulkhead-guest accept $(cat /tmp/cookie)").await;
    let (g, pb) = line.split_once(' ').expect("GRANT_ID PATH");
    assert_eq!(g, grant);
    let hex = must(
        &d,
        "b",
        &format!("bulkhead-guest read {grant} --offset 0 --len 3"),
    )
    .await;
    assert_eq!(hex, "c0ffee");
    // A refusal reaches the guest with its own kind, and changes nothing.
    let before = d.client().get("/v1/grants").await.unwrap();
    let (code, _, err) = guest(&d, "b", &format!("bulkhead-guest accept {cookie}")).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cookie_used"), "{err}");
    assert_eq!(d.client().get("/v1/grants").await.unwrap(), before);
    let list: Value =
        serde_json::from_str(&must(&d, "b", "bulkhead-guest list --json").await).unwrap();
    assert_eq!(list["grants"][0]["path"], pb, "{list}");

    // B's agent now ignores unmap requests; A revokes; B loses the device anyway.
    must(&d, "b", "touch /run/bulkhead/ignore-unmap").await;
    assert!(guest_regions(&d, "b").await.contains(&addr(pb)));
    let ended = must(&d, "a", &format!("bulkhead-guest revoke {grant}")).await;
    assert_eq!(ended, grant);
    assert!(!guest_regions(&d, "b").await.contains(&addr(pb)));
    let (code, _, _) = guest(
        &d,
        "b",
        &format!("bulkhead-guest read {grant} --offset 0 --len 3"),
    )
    .await;
    assert_ne!(code, 0);
    let unmapped: Vec<Value> = log_events(&d)
        .await
        .into_iter()
        .filter(|e| e["action"] == "unmapped")
        .collect();
    assert_eq!(unmapped.len(), 1, "{unmapped:?}");
    assert_eq!(unmapped[0]["agent"], "ignored", "{unmapped:?}");
    assert_eq!(unmapped[0]["outcome"], "forced", "{unmapped:?}");
    // The request came through the guest, and the log says so.
    let log = d
        .client()
        .get("/v1/grants/log?after=0&limit=1000")
        .await
        .unwrap();
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["via"] == "guest" && e["event"]["action"]["action"] == "accepted"),
        "{log}"
    );
}
