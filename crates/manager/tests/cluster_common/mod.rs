//! Helpers of the tests on a three-host cluster (`cluster.rs`,
//! `remote_restart.rs`).

use bulkhead_manager::api::ExecRequest;
use bulkhead_manager::client::Client;
use bulkhead_testbed::cluster::Cluster;

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
