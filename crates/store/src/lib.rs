//! Bulkhead's persistent state: one [`Store`] trait, with SQLite
//! ([`SqliteStore`]) as the embedded default.
//!
//! The trait is shaped for a key-value store with compare-and-swap (etcd):
//! records are whole values keyed by partition name, every write names the
//! revision it read, and the only cross-record constraint (unique addresses)
//! is checked inside the write's transaction.

mod migrations;
mod record;
mod sqlite;

pub use record::{
    now_ms, DiskRecord, Event, NetRecord, PartitionRecord, PartitionState, RestartPolicy,
    DEFAULT_CPU_MODEL,
};
pub use sqlite::SqliteStore;

/// Why a store operation failed. Nothing was written when one is returned.
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
    #[error("state database schema version {found} is newer than this Bulkhead ({supported}); upgrade Bulkhead")]
    TooNew { found: i64, supported: i64 },
    #[error("corrupt record for partition {name:?}: {reason}")]
    Corrupt { name: String, reason: String },
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Partition state, one transaction per call.
pub trait Store: Send + Sync {
    /// Adds a new record; its revision becomes 1. Fails if the name or the
    /// address is taken.
    fn insert(&self, record: &PartitionRecord, event: &str) -> Result<PartitionRecord>;
    fn get(&self, name: &str) -> Result<Option<PartitionRecord>>;
    /// Every record, ordered by name.
    fn list(&self) -> Result<Vec<PartitionRecord>>;
    /// Replaces the record if its stored revision is still `record.revision`,
    /// appending `event` to its history in the same transaction. Returns the
    /// record as stored (revision + 1).
    fn update(&self, record: &PartitionRecord, event: &str) -> Result<PartitionRecord>;
    /// Removes the record (and its history) if its revision is still `revision`.
    fn delete(&self, name: &str, revision: u64) -> Result<()>;
    /// The newest `limit` events of a partition, oldest first.
    fn events(&self, name: &str, limit: usize) -> Result<Vec<Event>>;
}
