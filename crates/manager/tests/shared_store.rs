//! Two real bulkheadd processes sharing one SQLite store admit partitions
//! concurrently: capacity is never over-admitted and no address is given
//! twice, because both decisions are made inside the store's write
//! transaction, not behind either daemon's own lock.
//!
//! The two daemons stand for one host: they run on one machine, so they are
//! configured with the same host id (`[store] host_id`), which is what makes
//! them share one capacity (admission counts the records of the writer's host).
//! With distinct ids each would be a host of its own and admit up to its own
//! capacity, as the hosts of a cluster do. They also share one VLAN subnet
//! (each on its own bridge), so their address allocations can collide.
//! Everything else is their own: data directory, socket, bridge, cgroup
//! subtree.

mod common;

use common::{Daemon, Opts};
use serde_json::{json, Value};
use std::collections::HashSet;

const HOST_ID: &str = "shared-store-test-host";

fn pair(store: &std::path::Path, subnet: &str) -> (Daemon, Daemon) {
    // 2 CPUs at 100%: 200% of entitlement; memory is not what runs out.
    let extra = format!(
        "[store]\npath = {store:?}\nhost_id = {HOST_ID:?}\n\
         [capacity]\ncpus = 2\ncpu_overcommit = 1.0\nmemory_mib = 64000\n\
         memory_reserve_mib = 0\n"
    );
    let start = || {
        Daemon::start(Opts {
            extra: extra.clone(),
            subnet: Some(subnet.to_string()),
            ..Default::default()
        })
    };
    (start(), start())
}

/// Creates `n` partitions of `cpu`% (with an address if `net`), alternating
/// between the daemons, all at once. Returns the created records and the
/// refusals (code: message).
async fn race(
    a: &Daemon,
    b: &Daemon,
    prefix: &str,
    n: usize,
    cpu: u32,
    net: bool,
) -> (Vec<Value>, Vec<String>) {
    let (ca, cb) = (a.client(), b.client());
    let calls = (0..n).map(|i| {
        let c = if i % 2 == 0 { ca.clone() } else { cb.clone() };
        let body = json!({
            "name": format!("{prefix}{i:02}"),
            "memory_mib": 128,
            "cpu_percent": cpu,
            "net": net,
        });
        tokio::spawn(async move { c.post("/v1/partitions", &body).await })
    });
    let tasks: Vec<_> = calls.collect();
    let (mut ok, mut refused) = (Vec::new(), Vec::new());
    for t in tasks {
        match t.await.expect("create task") {
            Ok(v) => ok.push(v),
            Err(e) => refused.push(format!("{}: {e}", e.code().unwrap_or("none"))),
        }
    }
    (ok, refused)
}

fn addresses(recs: &[Value]) -> Vec<String> {
    recs.iter()
        .map(|r| r["net"]["ip"].as_str().expect("an address").to_string())
        .collect()
}

async fn list(d: &Daemon) -> Vec<Value> {
    let v = d.client().get("/v1/partitions").await.unwrap();
    v.as_array().expect("a list").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_daemons_sharing_a_store_never_over_admit() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path().join("shared.db");
    // A /28: addresses .2 to .14, thirteen of them.
    let subnet = format!("10.241.{}.0/28", std::process::id() % 250);
    let (a, b) = pair(&store, &subnet);

    // Capacity-bound: 16 creates of 25% racing on both daemons; 200% fits 8.
    let (ok, refused) = race(&a, &b, "cpu", 16, 25, false).await;
    assert_eq!(
        ok.len(),
        8,
        "admitted {} of 16; refused: {refused:?}",
        ok.len()
    );
    assert!(
        refused
            .iter()
            .all(|r| r.starts_with("over_capacity: over capacity: CPU")),
        "every refusal is for want of CPU: {refused:?}"
    );
    // One store: both daemons see the same records, all of the shared host.
    let (la, lb) = (list(&a).await, list(&b).await);
    assert_eq!(la, lb);
    assert_eq!(la.len(), 8);
    assert!(la.iter().all(|r| r["host"] == HOST_ID), "{la:?}");
    for (i, r) in la.iter().enumerate() {
        let name = r["name"].as_str().unwrap();
        // Either daemon may destroy: the record is the shared host's.
        let d = if i % 2 == 0 { &a } else { &b };
        d.client()
            .call(
                hyper::Method::DELETE,
                &format!("/v1/partitions/{name}"),
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("destroy {name}: {e}"));
    }
    assert!(list(&a).await.is_empty());

    // Address-bound: 20 creates of 5% (100% in all, it fits) for 13 addresses.
    let (ok, refused) = race(&a, &b, "net", 20, 5, true).await;
    assert_eq!(
        ok.len(),
        13,
        "admitted {} of 20; refused: {refused:?}",
        ok.len()
    );
    assert!(
        refused
            .iter()
            .all(|r| r.starts_with("over_capacity: no free address left in")),
        "every refusal is for want of an address: {refused:?}"
    );
    let ips = addresses(&ok);
    let distinct: HashSet<_> = ips.iter().collect();
    assert_eq!(distinct.len(), 13, "an address given twice: {ips:?}");
    let stored: HashSet<String> = addresses(&list(&b).await).into_iter().collect();
    assert_eq!(stored, ips.into_iter().collect::<HashSet<_>>());
}

/// A start is admitted by the store too, against the active partitions of
/// the host: a daemon whose capacity cannot hold the partition refuses to
/// start it, and the refusal changes nothing in the shared record.
#[tokio::test]
async fn refused_start_changes_nothing() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path().join("shared.db");
    let daemon = |cpus: u32| {
        Daemon::start(Opts {
            extra: format!(
                "[store]\npath = {store:?}\nhost_id = {HOST_ID:?}\n\
                 [capacity]\ncpus = {cpus}\ncpu_overcommit = 0.5\nmemory_mib = 64000\n"
            ),
            ..Default::default()
        })
    };
    // 200% of entitlement on one, 50% on the other.
    let (big, small) = (daemon(4), daemon(1));
    big.create("wide", 100, 128, json!({})).await;
    let before = small.show("wide").await;
    let e = small
        .client()
        .post("/v1/partitions/wide/start", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("over_capacity"), "{e}");
    assert!(e.to_string().contains("only 50% free of 50%"), "{e}");
    let after = big.show("wide").await;
    assert_eq!(after["state"], "defined");
    assert_eq!(after["revision"], before["revision"], "{after:#}");
    assert_eq!(after["events"], before["events"], "{after:#}");
}
