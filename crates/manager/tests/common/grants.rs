//! Helpers of the grant tests: requests made as a partition through the
//! on-behalf API, and what a guest sees of its regions.

use super::Daemon;
use bulkhead_manager::client::ClientError;
use serde_json::Value;
use std::time::Duration;

/// `POST /v1/partitions/{p}/grant-requests`.
pub async fn ask(d: &Daemon, p: &str, req: Value) -> Result<Value, ClientError> {
    d.client()
        .post(&format!("/v1/partitions/{p}/grant-requests"), &req)
        .await
}

pub async fn ok(d: &Daemon, p: &str, req: Value) -> Value {
    ask(d, p, req.clone())
        .await
        .unwrap_or_else(|e| panic!("{p} {req}: {e}"))
}

/// The PCI address in a region path (`/sys/bus/pci/devices/ADDR/resource2`),
/// the name `bulkhead-guest region` takes.
pub fn addr(path: &str) -> String {
    path.split('/')
        .nth(5)
        .expect("a sysfs resource path")
        .to_string()
}

/// The ivshmem devices the guest sees, by PCI address.
pub async fn guest_regions(d: &Daemon, p: &str) -> Vec<String> {
    let r = d.exec(p, "bulkhead-guest region list --json").await;
    assert_eq!(r["code"], 0, "{r}");
    let v: Value = serde_json::from_str(r["stdout"].as_str().unwrap()).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r["addr"].as_str().unwrap().to_string())
        .collect()
}

/// Waits (polling the API, bounded) until grant `id` is in `state`.
pub async fn wait_grant_state(d: &Daemon, id: &str, state: &str, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let g: Value = d.client().get(&format!("/v1/grants/{id}")).await.unwrap();
        if g["state"] == state {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "grant never {state}: {g}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every event of the grant log.
pub async fn log_events(d: &Daemon) -> Vec<Value> {
    let v = d
        .client()
        .get("/v1/grants/log?after=0&limit=10000")
        .await
        .unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].clone())
        .collect()
}
