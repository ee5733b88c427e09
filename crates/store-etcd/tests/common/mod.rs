//! What the etcd test binaries share: one 3-member cluster per binary, for
//! the tests that do not harm it, each under a prefix of its own.

use bulkhead_store_etcd::{connect, EtcdStore};
use bulkhead_testbed::EtcdCluster;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

pub fn shared() -> &'static EtcdCluster {
    static CLUSTER: OnceLock<EtcdCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| EtcdCluster::start(3))
}

/// A key prefix no other test (or test process) uses.
pub fn fresh_prefix(tag: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("/bulkhead-test/{}/{tag}-{n}", std::process::id())
}

pub async fn store_at(endpoints: &[String], prefix: &str) -> EtcdStore {
    connect(endpoints, prefix).await.expect("connect to etcd")
}
