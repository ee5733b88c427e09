//! Helpers of the tests on a three-host cluster (`cluster.rs`,
//! `remote_restart.rs`, `ha.rs`).

use bulkhead_manager::api::ExecRequest;
use bulkhead_manager::client::Client;
use bulkhead_store::HostState;
use bulkhead_testbed::cluster::Cluster;
use std::time::{Duration, Instant};

/// The API client of `host`, on its unix socket.
pub fn client(c: &Cluster, host: &str) -> Client {
    let h = c.hosts.iter().find(|h| h.name == host).expect("host");
    Client::unix(&h.socket)
}

/// `sh -c script` in partition `name`: its exit code and output.
pub async fn exec(cl: &Client, name: &str, script: &str) -> (i32, String) {
    let r = cl
        .exec(
            name,
            &ExecRequest {
                argv: vec!["sh".into(), "-c".into(), script.into()],
                timeout_secs: Some(60),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("exec {script:?} in {name}: {e}"));
    (r.code, format!("{}{}", r.stdout, r.stderr))
}

/// The id of member `name`, as `cl`'s host lists it.
#[allow(dead_code)]
pub async fn host_id(cl: &Client, name: &str) -> String {
    cl.cluster_hosts()
        .await
        .unwrap()
        .into_iter()
        .find(|h| h.name == name)
        .expect("member")
        .id
}

/// Waits (up to a minute) until `cl`'s host sees `host` in state `want`; a
/// call the store cannot answer meanwhile is tried again.
#[allow(dead_code)]
pub async fn wait_host(cl: &Client, host: &str, want: HostState) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(hosts) = cl.cluster_hosts().await {
            if hosts.iter().any(|h| h.name == host && h.state == want) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{host} not {want:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
