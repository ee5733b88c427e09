//! The conformance suite against every SQLite form: in memory, a file, and
//! two connections to one file taking turns (as two daemons sharing a store).

use bulkhead_store::{
    conformance, Admission, Event, GrantLogEntry, GrantTableDoc, HostRecord, HostStatus, LuLock,
    LuRecord, OperationRecord, PartitionRecord, PoolDoc, PoolKind, Result, Scope, SqliteStore,
    Store,
};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_in_memory() {
    conformance::run_all(|| async {
        Arc::new(SqliteStore::in_memory().unwrap()) as Arc<dyn Store>
    })
    .await;
}

/// Runs the suite on stores `open` makes, each on a new file in one directory.
async fn on_files(open: impl Fn(&Path) -> Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let n = AtomicUsize::new(0);
    conformance::run_all(|| {
        let path = dir
            .path()
            .join(format!("s{}.db", n.fetch_add(1, Ordering::SeqCst)));
        let s = open(&path);
        async move { s }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_file() {
    on_files(|p| Arc::new(SqliteStore::open(p, "h").unwrap())).await;
}

/// Two connections to one file, each call going to the next: every
/// guarantee must hold across connections, not only behind one mutex.
struct TwoConnections {
    s: [SqliteStore; 2],
    turn: AtomicUsize,
}

impl TwoConnections {
    fn next(&self) -> &SqliteStore {
        &self.s[self.turn.fetch_add(1, Ordering::Relaxed) % 2]
    }
}

#[async_trait::async_trait]
impl Store for TwoConnections {
    async fn insert(&self, r: &PartitionRecord, ev: &str) -> Result<PartitionRecord> {
        self.next().insert(r, ev).await
    }
    async fn get(&self, name: &str) -> Result<Option<PartitionRecord>> {
        self.next().get(name).await
    }
    async fn list(&self, scope: Scope<'_>) -> Result<Vec<PartitionRecord>> {
        self.next().list(scope).await
    }
    async fn update(&self, r: &PartitionRecord, ev: &str) -> Result<PartitionRecord> {
        self.next().update(r, ev).await
    }
    async fn delete(&self, name: &str, revision: u64) -> Result<()> {
        self.next().delete(name, revision).await
    }
    async fn events(&self, name: &str, limit: usize) -> Result<Vec<Event>> {
        self.next().events(name, limit).await
    }
    async fn admit(
        &self,
        r: &PartitionRecord,
        ev: &str,
        check: Admission,
    ) -> Result<PartitionRecord> {
        self.next().admit(r, ev, check).await
    }

    // --- grants (issue 11) ---
    async fn grant_table(&self, host: &str) -> Result<Option<GrantTableDoc>> {
        self.next().grant_table(host).await
    }
    async fn commit_grant_table(
        &self,
        host: &str,
        expected: u64,
        body: &[u8],
        log: &[(u64, String)],
    ) -> Result<u64> {
        self.next()
            .commit_grant_table(host, expected, body, log)
            .await
    }
    async fn grant_log(&self, host: &str, after: u64, limit: usize) -> Result<Vec<GrantLogEntry>> {
        self.next().grant_log(host, after, limit).await
    }
    async fn prune_grant_log(&self, host: &str, before_ms: u64, keep: usize) -> Result<u64> {
        self.next().prune_grant_log(host, before_ms, keep).await
    }
    async fn register_host(&self, h: &HostRecord, ttl: std::time::Duration) -> Result<()> {
        self.next().register_host(h, ttl).await
    }
    async fn renew_host(&self, id: &str) -> Result<()> {
        self.next().renew_host(id).await
    }
    async fn hosts(&self) -> Result<Vec<HostStatus>> {
        self.next().hosts().await
    }
    async fn lu_insert(&self, lu: &LuRecord) -> Result<LuRecord> {
        self.next().lu_insert(lu).await
    }
    async fn lu_insert_locked(&self, lu: &LuRecord, lock: &LuLock) -> Result<LuRecord> {
        self.next().lu_insert_locked(lu, lock).await
    }
    async fn lu_get(&self, name: &str) -> Result<Option<LuRecord>> {
        self.next().lu_get(name).await
    }
    async fn lu_list(&self) -> Result<Vec<LuRecord>> {
        self.next().lu_list().await
    }
    async fn lu_update(&self, lu: &LuRecord) -> Result<LuRecord> {
        self.next().lu_update(lu).await
    }
    async fn lu_put_pair(&self, pair: &[LuRecord; 2]) -> Result<[LuRecord; 2]> {
        self.next().lu_put_pair(pair).await
    }
    async fn lu_delete(&self, name: &str, revision: u64) -> Result<()> {
        self.next().lu_delete(name, revision).await
    }
    async fn lu_lock(&self, lock: &LuLock, client: &str) -> Result<LuRecord> {
        self.next().lu_lock(lock, client).await
    }
    async fn lu_locks(&self, lu: Option<&str>) -> Result<Vec<LuLock>> {
        self.next().lu_locks(lu).await
    }
    async fn lu_unlock(&self, partition: &str, adapter: Option<&str>) -> Result<usize> {
        self.next().lu_unlock(partition, adapter).await
    }
    // --- exposed routes (issue 15) ---
    async fn route_put(&self, r: &bulkhead_store::ExposedRoute) -> Result<()> {
        self.next().route_put(r).await
    }
    async fn route_remove(
        &self,
        partition: &str,
        domain: Option<&str>,
    ) -> Result<Vec<bulkhead_store::ExposedRoute>> {
        self.next().route_remove(partition, domain).await
    }
    async fn routes(&self) -> Result<Vec<bulkhead_store::ExposedRoute>> {
        self.next().routes().await
    }
    // --- service pools (issue 17) ---
    async fn pool_doc_put(
        &self,
        k: PoolKind,
        name: &str,
        expected: u64,
        body: &str,
    ) -> Result<u64> {
        self.next().pool_doc_put(k, name, expected, body).await
    }
    async fn pool_doc_get(&self, k: PoolKind, name: &str) -> Result<Option<PoolDoc>> {
        self.next().pool_doc_get(k, name).await
    }
    async fn pool_doc_list(&self, k: PoolKind) -> Result<Vec<PoolDoc>> {
        self.next().pool_doc_list(k).await
    }
    async fn pool_doc_delete(&self, k: PoolKind, name: &str, revision: u64) -> Result<()> {
        self.next().pool_doc_delete(k, name, revision).await
    }
    // --- remote restart (issue 12) ---
    async fn operation_put(&self, op: &OperationRecord) -> Result<OperationRecord> {
        self.next().operation_put(op).await
    }
    async fn operation_get(&self, partition: &str) -> Result<Option<OperationRecord>> {
        self.next().operation_get(partition).await
    }
    async fn operation_list(&self) -> Result<Vec<OperationRecord>> {
        self.next().operation_list().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_file_shared_by_two_connections() {
    on_files(|p| {
        Arc::new(TwoConnections {
            s: [
                SqliteStore::open(p, "h").unwrap(),
                SqliteStore::open(p, "h").unwrap(),
            ],
            turn: AtomicUsize::new(0),
        })
    })
    .await;
}
