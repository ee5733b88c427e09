//! Membership on the embedded store: two daemons standing for two hosts
//! share one SQLite file; each is a member with a heartbeat, and one that
//! stops is shown lost by the other after its lease, then up once back.

mod common;

use bulkhead_store::HostState;
use common::{Daemon, Opts};
use serde_json::json;
use std::time::{Duration, Instant};

async fn states(d: &Daemon) -> Vec<(String, HostState)> {
    d.client()
        .cluster_hosts()
        .await
        .unwrap()
        .into_iter()
        .map(|h| (h.name, h.state))
        .collect()
}

async fn wait_for(d: &Daemon, want: &[(&str, HostState)], within: Duration) {
    let want: Vec<(String, HostState)> = want.iter().map(|(n, s)| (n.to_string(), *s)).collect();
    let deadline = Instant::now() + within;
    loop {
        let now = states(d).await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not {want:?} within {within:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_sharing_a_sqlite_file() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path().join("shared.db");
    let host = |name: &str| {
        Daemon::start(Opts {
            extra: format!(
                "[store]\npath = {store:?}\nhost_id = \"{name}-id\"\n\
                 [cluster]\nname = {name:?}\nlease_ms = 1000\n"
            ),
            ..Default::default()
        })
    };
    let (left, mut right) = (host("left"), host("right"));
    use HostState::{Lost, Up};
    let both_up = [("left", Up), ("right", Up)];
    wait_for(&left, &both_up, Duration::from_secs(5)).await;
    wait_for(&right, &both_up, Duration::from_secs(5)).await;
    right.create("on-right", 10, 128, json!({})).await;
    let hosts = left.client().cluster_hosts().await.unwrap();
    assert_eq!(
        (hosts[1].partitions, hosts[1].allocated.memory_mib),
        (1, 128)
    );

    // Stopped, it stops beating: lost after its lease (plus a margin).
    right.kill9();
    wait_for(
        &left,
        &[("left", Up), ("right", Lost)],
        Duration::from_secs(10),
    )
    .await;
    let e = left
        .client()
        .post("/v1/partitions/on-right/start", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("unavailable"), "{e}");
    assert!(e.to_string().contains("host right"), "{e}");
    right.spawn();
    wait_for(&left, &both_up, Duration::from_secs(10)).await;
}
