//! Bulkhead's persistent state: one async [`Store`] trait, with SQLite
//! ([`SqliteStore`]) as the embedded default.
//!
//! The trait is shaped for a key-value store with compare-and-swap (etcd):
//! records are whole values keyed by partition name, every write names the
//! revision it read, addresses are unique across the store, and decisions
//! that depend on other records (capacity, address allocation) are made by
//! [`Store::admit`] inside the write's own transaction, so two daemons sharing
//! one store cannot both admit.

#[cfg(feature = "conformance")]
pub mod conformance;
mod grants;
mod hosts;
mod lus;
mod migrations;
mod pools;
mod record;
mod remote_restart;
mod routes;
mod sqlite;

use std::sync::Arc;

pub use grants::{GrantLogEntry, GrantTableDoc};
pub use hosts::{name_taken, HostRecord, HostState, HostStatus};
pub use lus::{check_lock, LockMode, LuLock, LuMirror, LuRecord, MirrorState};
pub use pools::{PoolDoc, PoolKind};
pub use record::{
    now_ms, DiskRecord, Event, HaPolicy, HibernateReason, HibernationRecord, L2tpServerRecord,
    NetRecord, PartitionDevices, PartitionRecord, PartitionState, RestartPolicy, TemplateLink,
    DEFAULT_CPU_MODEL,
};
pub use remote_restart::{OperationRecord, OperationState};
pub use routes::{ExposedRoute, PoolTarget};
pub use sqlite::SqliteStore;

/// Why a store operation failed. Nothing was written when one is returned.
/// Backend-neutral: a backend maps its own errors to these, so callers (and a
/// second backend) never see a driver's types.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("partition {0:?} already exists")]
    AlreadyExists(String),
    #[error("partition {0:?} not found")]
    NotFound(String),
    #[error("address {0} is already assigned to another partition")]
    AddressInUse(String),
    #[error(
        "partition {name:?} changed concurrently (revision {expected} expected, {found} found)"
    )]
    Conflict {
        name: String,
        expected: u64,
        found: u64,
    },
    /// An [`Admission`] check said no; its reason, unchanged.
    #[error("{reason}")]
    Refused { name: String, reason: String },
    /// The record cannot be stored as it is (e.g. no owning host).
    #[error("invalid record for partition {name:?}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("state database schema version {found} is newer than this Bulkhead ({supported}); upgrade Bulkhead")]
    TooNew { found: i64, supported: i64 },
    #[error("corrupt record for partition {name:?}: {reason}")]
    Corrupt { name: String, reason: String },
    /// The backend is there but could not answer in time (locked, busy,
    /// no quorum); the operation may succeed if retried later.
    #[error("state store unavailable during {op}: {message}")]
    Unavailable { op: &'static str, message: String },
    /// Any other failure of the backend, described in words.
    #[error("state store failed during {op}: {message}")]
    Backend { op: &'static str, message: String },
    // --- LUs and clients (issue 14) ---
    #[error("LU {0:?} not found")]
    LuNotFound(String),
    #[error("LU {0:?} already exists")]
    LuExists(String),
    /// The LU belongs to another client than the one asking.
    #[error("{0}")]
    Forbidden(String),
    /// The LU is locked by an attachment that excludes the one asked for.
    #[error("{0}")]
    Locked(String),
    // --- exposed routes (issue 15) ---
    /// Another partition holds this (listener, domain).
    #[error("domain {domain} on {listener} is routed to partition {holder:?}")]
    RouteTaken {
        listener: String,
        domain: String,
        holder: String,
    },
    // --- fencing (issue 12) ---
    /// The writer's fencing token is not the partition's current claim: it
    /// is a stale holder (its host was declared lost and the partition
    /// claimed by another).
    #[error("partition {name:?}: fencing token {held} is stale (the current claim is {current}, by host {holder}); a stale holder may not write or attach")]
    Fenced {
        name: String,
        held: u64,
        current: u64,
        holder: String,
    },
    /// A claim's precondition did not hold (the host is up again, the
    /// record or the claim changed); nothing was written.
    #[error("partition {name:?} not claimed: {reason}")]
    NotClaimed { name: String, reason: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which records [`Store::list`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every record in the store (every host of a cluster).
    All,
    /// The records owned by one host.
    Host(&'a str),
}

/// The pure decision of an admitted write. It sees every record in the store
/// as the write's transaction sees it, except the one being written, and may
/// complete the record (e.g. allocate an address) or refuse with a reason.
/// Backends may run it more than once (etcd retries when the range changed),
/// each time on the record as the caller gave it, so it must have no side
/// effects.
pub type Admission = Arc<
    dyn Fn(&[PartitionRecord], &mut PartitionRecord) -> std::result::Result<(), String>
        + Send
        + Sync,
>;

/// Partition state, one transaction per call. Every record names the host
/// that owns it (`PartitionRecord::host`, never empty).
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// Adds a new record; its revision becomes 1. Fails if the name or the
    /// address is taken.
    async fn insert(&self, record: &PartitionRecord, event: &str) -> Result<PartitionRecord>;
    async fn get(&self, name: &str) -> Result<Option<PartitionRecord>>;
    /// The records in `scope`, ordered by name.
    async fn list(&self, scope: Scope<'_>) -> Result<Vec<PartitionRecord>>;
    /// Replaces the record if its stored revision is still `record.revision`,
    /// appending `event` (unless empty) to its history in the same
    /// transaction. Returns the record as stored (revision + 1).
    async fn update(&self, record: &PartitionRecord, event: &str) -> Result<PartitionRecord>;
    /// Removes the record (and its history) if its revision is still `revision`.
    async fn delete(&self, name: &str, revision: u64) -> Result<()>;
    /// The newest `limit` events of a partition, oldest first.
    async fn events(&self, name: &str, limit: usize) -> Result<Vec<Event>>;
    /// Writes `record` only if `check` passes over the store's other records,
    /// evaluated inside the write's transaction: an insert when
    /// `record.revision` is 0, else an update against that revision. A
    /// refusal is [`StoreError::Refused`] and writes nothing. Writes to other
    /// records meanwhile never make it fail with `Conflict` (the backend
    /// decides again on what it then reads); only this record changing does.
    async fn admit(
        &self,
        record: &PartitionRecord,
        event: &str,
        check: Admission,
    ) -> Result<PartitionRecord>;

    // --- grants (issue 11) ---
    /// The grant table of `host`, or None if it never wrote one.
    async fn grant_table(&self, host: &str) -> Result<Option<GrantTableDoc>>;
    /// Replaces `host`'s grant table if its revision is still `expected` (0:
    /// none stored yet) and appends `log` (each `(at_ms, event_json)`) to its
    /// log, all in ONE transaction. Returns the new revision. A revision
    /// mismatch is `StoreError::Conflict { name: format!("grants/{host}"),
    /// expected, found }` and writes nothing.
    async fn commit_grant_table(
        &self,
        host: &str,
        expected: u64,
        body: &[u8],
        log: &[(u64, String)],
    ) -> Result<u64>;
    /// Log lines of `host` with seq > `after`, oldest first, at most `limit`.
    async fn grant_log(&self, host: &str, after: u64, limit: usize) -> Result<Vec<GrantLogEntry>>;
    /// Drops log lines older than `before_ms`, keeping at least the newest
    /// `keep`; returns how many went.
    async fn prune_grant_log(&self, host: &str, before_ms: u64, keep: usize) -> Result<u64>;
    // --- hosts (issue 14) ---

    /// Makes `host` a member (or updates its record) and starts its liveness:
    /// it stays up while [`Store::renew_host`] is called within `ttl`. A
    /// name another id holds is [`StoreError::Refused`] (see [`name_taken`]).
    async fn register_host(&self, _host: &HostRecord, _ttl: std::time::Duration) -> Result<()> {
        Err(no_membership("register_host"))
    }

    /// Keeps host `id` up for another ttl. After it was lost, makes it up
    /// again (the record is permanent; only liveness lapses).
    async fn renew_host(&self, _id: &str) -> Result<()> {
        Err(no_membership("renew_host"))
    }

    /// Every member with its state, ordered by name.
    async fn hosts(&self) -> Result<Vec<HostStatus>> {
        Err(no_membership("hosts"))
    }

    // --- LUs and clients (issue 14) ---
    // Defaults answer "not supported", so a store that has no LUs (a test
    // double) still builds; both backends implement every one.

    /// Adds an LU record (revision 1); [`StoreError::LuExists`] if the name
    /// is taken anywhere in the cluster.
    async fn lu_insert(&self, lu: &LuRecord) -> Result<LuRecord> {
        let _ = lu;
        Err(unsupported("lu_insert"))
    }
    /// [`Store::lu_insert`] with `lock` (its LU is `lu`) written in the
    /// same transaction: no one attaches, grows or copies the LU between
    /// its record appearing and its maker having made its file.
    async fn lu_insert_locked(&self, lu: &LuRecord, lock: &LuLock) -> Result<LuRecord> {
        let _ = (lu, lock);
        Err(unsupported("lu_insert_locked"))
    }
    async fn lu_get(&self, name: &str) -> Result<Option<LuRecord>> {
        let _ = name;
        Err(unsupported("lu_get"))
    }
    /// Every LU, ordered by name.
    async fn lu_list(&self) -> Result<Vec<LuRecord>> {
        Err(unsupported("lu_list"))
    }
    /// Replaces the LU record if its stored revision is still `lu.revision`.
    async fn lu_update(&self, lu: &LuRecord) -> Result<LuRecord> {
        let _ = lu;
        Err(unsupported("lu_update"))
    }
    /// Writes two LU records in one transaction (a mirror's primary and
    /// copy): each with revision 0 is inserted ([`StoreError::LuExists`] if
    /// taken), each other replaced if its stored revision is still its
    /// own. Either both are written or neither.
    async fn lu_put_pair(&self, pair: &[LuRecord; 2]) -> Result<[LuRecord; 2]> {
        let _ = pair;
        Err(unsupported("lu_put_pair"))
    }
    /// Removes the LU record if its revision is still `revision` and nothing
    /// holds a lock on it ([`StoreError::Locked`] otherwise).
    async fn lu_delete(&self, name: &str, revision: u64) -> Result<()> {
        let _ = (name, revision);
        Err(unsupported("lu_delete"))
    }
    /// In one transaction: the LU exists, belongs to `client`
    /// ([`StoreError::Forbidden`] otherwise), and no other holder's lock
    /// excludes this one (a write lock excludes every other, a read lock
    /// excludes writers; [`StoreError::Locked`] naming the holder). Then
    /// the lock is written (replacing one of the same partition and adapter).
    /// Returns the LU as locked.
    async fn lu_lock(&self, lock: &LuLock, client: &str) -> Result<LuRecord> {
        let _ = (lock, client);
        Err(unsupported("lu_lock"))
    }
    /// The locks on `lu`, or on every LU; ordered by LU, partition, adapter.
    async fn lu_locks(&self, lu: Option<&str>) -> Result<Vec<LuLock>> {
        let _ = lu;
        Err(unsupported("lu_locks"))
    }
    /// Releases the locks `partition` holds (those of one adapter, or all);
    /// returns how many were released.
    async fn lu_unlock(&self, partition: &str, adapter: Option<&str>) -> Result<usize> {
        let _ = (partition, adapter);
        Err(unsupported("lu_unlock"))
    }

    // --- exposed routes (issue 15) ---
    // Defaults answer "not supported", as for LUs; both backends implement them.

    /// Adds `route`, or replaces the row of the same (listener, domain) if
    /// the same partition holds it; [`StoreError::RouteTaken`] naming the
    /// holder otherwise. Decided in the write's own transaction.
    async fn route_put(&self, route: &ExposedRoute) -> Result<()> {
        let _ = route;
        Err(routes::unsupported("route_put"))
    }
    /// Removes `partition`'s routes (those of `domain` on every listener, or
    /// all); returns what was removed.
    async fn route_remove(
        &self,
        partition: &str,
        domain: Option<&str>,
    ) -> Result<Vec<ExposedRoute>> {
        let _ = (partition, domain);
        Err(routes::unsupported("route_remove"))
    }
    /// Every route, ordered by listener then domain.
    async fn routes(&self) -> Result<Vec<ExposedRoute>> {
        Err(routes::unsupported("routes"))
    }
    // --- service pools (issue 17) ---
    // Pool statements and pool users, each a JSON body the manager owns
    // (`PoolDoc`), keyed by kind and name. Defaults answer "not supported"
    // so test doubles still build; both backends implement every one.

    /// Writes `body` under `kind`/`name` if the stored revision is still
    /// `expected` (0: none stored yet). Returns the new revision. A mismatch
    /// is `StoreError::Conflict { name: "<kind>/<name>", .. }` and writes nothing.
    async fn pool_doc_put(
        &self,
        kind: PoolKind,
        name: &str,
        expected: u64,
        body: &str,
    ) -> Result<u64> {
        let _ = (kind, name, expected, body);
        Err(no_pools("pool_doc_put"))
    }
    async fn pool_doc_get(&self, kind: PoolKind, name: &str) -> Result<Option<PoolDoc>> {
        let _ = (kind, name);
        Err(no_pools("pool_doc_get"))
    }
    /// Every document of `kind`, ordered by name.
    async fn pool_doc_list(&self, kind: PoolKind) -> Result<Vec<PoolDoc>> {
        let _ = kind;
        Err(no_pools("pool_doc_list"))
    }
    /// Removes the document if its revision is still `revision` (a
    /// `Conflict` otherwise, with `found` 0 when it is absent).
    async fn pool_doc_delete(&self, kind: PoolKind, name: &str, revision: u64) -> Result<()> {
        let _ = (kind, name, revision);
        Err(no_pools("pool_doc_delete"))
    }
    // --- remote restart (issue 12) ---
    // Operation records, one per partition. Defaults answer "not supported"
    // so test doubles still build; both backends implement every one.

    /// Writes `op` under its partition if the stored revision is still
    /// `op.revision` (0: none stored yet); returns it as stored (revision + 1).
    /// A mismatch is [`StoreError::operation_conflict`] and writes nothing.
    async fn operation_put(&self, op: &OperationRecord) -> Result<OperationRecord> {
        let _ = op;
        Err(no_operations("operation_put"))
    }
    async fn operation_get(&self, partition: &str) -> Result<Option<OperationRecord>> {
        let _ = partition;
        Err(no_operations("operation_get"))
    }
    /// Every operation record, ordered by partition.
    async fn operation_list(&self) -> Result<Vec<OperationRecord>> {
        Err(no_operations("operation_list"))
    }

    // --- host loss and fencing (issue 12) ---
    // A store of one host has no other host to fail over to: the defaults
    // make HA inert (no leader, no claims, locks without tokens).

    /// Takes or keeps the role `role` (e.g. `orchestrator`) for `id`, bound
    /// to a lease of `ttl`: true while `id` holds it. A holder that stops
    /// calling loses it one `ttl` later; another caller then gets it.
    async fn campaign(&self, role: &str, id: &str, ttl: std::time::Duration) -> Result<bool> {
        let _ = (role, id, ttl);
        Ok(false)
    }

    /// Claims `name` for host `to` after its host `lost` was declared lost:
    /// in one transaction, `lost` holds no lease, the record is still at
    /// `revision` and the partition's claim is still `fence` (None: never
    /// claimed). Returns the new fencing token (the claim's revision); the
    /// caller then writes the record carrying it. [`StoreError::NotClaimed`]
    /// when a precondition failed.
    async fn claim(
        &self,
        name: &str,
        lost: &str,
        to: &str,
        revision: u64,
        fence: Option<u64>,
    ) -> Result<u64> {
        let _ = (lost, to, revision, fence);
        Err(StoreError::NotClaimed {
            name: name.to_string(),
            reason: "this store has no cluster to claim in".into(),
        })
    }

    /// [`Store::lu_lock`] for a partition holding fencing token `fence`:
    /// refused with [`StoreError::Fenced`] unless it is the partition's
    /// current claim (checked in the lock's own transaction).
    async fn lu_lock_fenced(
        &self,
        lock: &LuLock,
        client: &str,
        fence: Option<u64>,
    ) -> Result<LuRecord> {
        let _ = fence;
        self.lu_lock(lock, client).await
    }
}

fn no_operations(op: &'static str) -> StoreError {
    StoreError::Backend {
        op,
        message: "this store keeps no remote-restart operations".into(),
    }
}

/// What a store without membership (a test wrapper) answers.
fn no_membership(op: &'static str) -> StoreError {
    StoreError::Backend {
        op,
        message: "this store keeps no cluster membership".into(),
    }
}

fn no_pools(op: &'static str) -> StoreError {
    StoreError::Backend {
        op,
        message: "this store keeps no service pools".into(),
    }
}

fn unsupported(op: &'static str) -> StoreError {
    StoreError::Backend {
        op,
        message: "this store keeps no LUs".into(),
    }
}
