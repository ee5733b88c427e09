//! bulkheadd on the cluster store: `[cluster] etcd = [...]` makes the daemon
//! keep its records in a real 3-member etcd cluster instead of SQLite.

mod common;

use bulkhead_store::{Scope, Store};
use bulkhead_testbed::EtcdCluster;
use common::{Daemon, Opts};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_runs_on_etcd() {
    let cluster = EtcdCluster::start(3);
    let prefix = format!("/bulkhead-test/{}/daemon", std::process::id());
    let host = "etcd-store-test-host";
    let extra = format!(
        "[store]\nhost_id = {host:?}\n[cluster]\netcd = {:?}\nprefix = {prefix:?}\n",
        cluster.endpoints()
    );
    let mut d = Daemon::start(Opts {
        extra,
        ..Default::default()
    });
    let made = d.create("on-etcd", 10, 128, json!({ "net": true })).await;
    let ip = made["net"]["ip"].as_str().expect("an address").to_string();

    // The record is in etcd, under the prefix, owned by this daemon's host;
    // no SQLite database was made.
    let etcd = bulkhead_store_etcd::connect(&cluster.endpoints(), &prefix)
        .await
        .unwrap();
    let rec = etcd.get("on-etcd").await.unwrap().expect("record in etcd");
    assert_eq!(rec.host, host);
    assert_eq!(rec.net.as_ref().map(|n| n.ip.as_str()), Some(ip.as_str()));
    assert!(!d.dir.path().join("data/state.db").exists());

    // A record another host wrote into the cluster is listed by this one.
    let mut theirs = bulkhead_store::conformance::record("elsewhere");
    theirs.host = "another-host".into();
    etcd.insert(&theirs, "created").await.unwrap();
    let list = d.client().get("/v1/partitions").await.unwrap();
    let mut names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["elsewhere", "on-etcd"]);

    // The state outlives the daemon: a new one on the same cluster sees it.
    d.kill9();
    d.spawn();
    let shown = d.show("on-etcd").await;
    assert_eq!(shown["net"]["ip"], ip.as_str());
    d.client()
        .call(hyper::Method::DELETE, "/v1/partitions/on-etcd", None)
        .await
        .unwrap();
    let left: Vec<_> = etcd
        .list(Scope::All)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(left, ["elsewhere"]);
}

/// Two daemons of one host on one etcd cluster create at once: the manager's
/// admission (capacity, then the lowest free address) is decided by etcd's
/// transactions, so neither over-admits and no address is given twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_etcd_never_over_admit() {
    let cluster = EtcdCluster::start(3);
    let prefix = format!("/bulkhead-test/{}/pair", std::process::id());
    let subnet = format!("10.242.{}.0/24", std::process::id() % 250);
    // 2 CPUs at 100%: room for eight partitions of 25%.
    let extra = format!(
        "[store]\nhost_id = \"etcd-pair-host\"\n\
         [capacity]\ncpus = 2\ncpu_overcommit = 1.0\nmemory_mib = 64000\nmemory_reserve_mib = 0\n\
         [cluster]\netcd = {:?}\nprefix = {prefix:?}\n",
        cluster.endpoints()
    );
    let daemons: Vec<Daemon> = (0..2)
        .map(|_| {
            Daemon::start(Opts {
                extra: extra.clone(),
                subnet: Some(subnet.clone()),
                ..Default::default()
            })
        })
        .collect();
    // Every other one without an address: capacity alone must hold them.
    let creates: Vec<_> = (0..14)
        .map(|i| {
            let c = daemons[i % 2].client();
            let net = i % 4 < 2;
            let body = json!({ "name": format!("c{i:02}"), "memory_mib": 128, "cpu_percent": 25, "net": net });
            tokio::spawn(async move { c.post("/v1/partitions", &body).await })
        })
        .collect();
    let (mut admitted, mut ips) = (0, Vec::new());
    for t in creates {
        match t.await.unwrap() {
            Ok(v) => {
                admitted += 1;
                ips.extend(v["net"]["ip"].as_str().map(str::to_string));
            }
            Err(e) => assert_eq!(e.code(), Some("over_capacity"), "{e}"),
        }
    }
    assert_eq!(admitted, 8, "over capacity (or under): {admitted} admitted");
    let given = ips.len();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), given, "an address given twice");
    let etcd = bulkhead_store_etcd::connect(&cluster.endpoints(), &prefix)
        .await
        .unwrap();
    assert_eq!(etcd.list(Scope::All).await.unwrap().len(), 8);
}
