//! LUs (logical units of the repository) and the locks of their
//! attachments: the records, the one decision whether a lock may be taken
//! (shared by every backend), and the SQLite side of the trait's LU block.

use crate::sqlite::{Fail, Sql, SqliteStore};
use crate::{now_ms, Result, StoreError};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

/// One LU: a thin qcow2 file of the repository owned by one client.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LuRecord {
    /// Unique in the cluster.
    pub name: String,
    /// The client (tenant) owning it; only that client's partitions attach it.
    pub client: String,
    /// Virtual size, bytes.
    pub size_bytes: u64,
    /// The file, relative to the repository root.
    pub path: String,
    /// What the LU is for: `data` (default), `paging` or `hibernation`.
    #[serde(default = "data")]
    pub purpose: String,
    /// Unix time in milliseconds.
    pub created_at: u64,
    /// Bumped by every write; `lu_update` compares it.
    #[serde(default)]
    pub revision: u64,
    /// On a primary: its redundant copy (`lu mirror`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<LuMirror>,
    /// On a redundant copy: the primary it mirrors. A copy is attached
    /// read-only only; the mirroring is its one writer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_of: Option<String>,
}

fn data() -> String {
    "data".into()
}

/// A primary LU's redundant copy and how far it is in step.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LuMirror {
    /// The copy's LU name (same client, same size).
    pub copy: String,
    pub state: MirrorState,
    /// Why it is broken or stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The host whose QEMU runs the mirror job, while one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// When the state was last set, Unix ms.
    #[serde(default)]
    pub since: u64,
}

/// How a redundant copy stands against its primary.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MirrorState {
    /// Holds every completed write of the primary.
    Synced,
    /// A mirror job is copying the primary (a full sync on attach).
    Syncing,
    /// Behind the primary (a promotion, or a job that ended before it was
    /// in step): the next attach of the primary copies it again.
    Stale,
    /// The mirror job failed; `reason` says why.
    Broken,
}

impl MirrorState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Synced => "synced",
            Self::Syncing => "syncing",
            Self::Stale => "stale",
            Self::Broken => "broken",
        }
    }
}

/// How an attachment uses an LU.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    Rw,
    Ro,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rw => "rw",
            Self::Ro => "ro",
        }
    }
}

/// A row of the LU status table: who uses an LU, through which adapter.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LuLock {
    pub lu: String,
    /// The host (bulkheadd id) whose QEMU opens the LU.
    pub host: String,
    /// The holder: a partition, or the manager itself for maintenance
    /// (a name no partition can have, such as `lu:NAME`).
    pub partition: String,
    /// The adapter of the holder (`disk0`, a hot-plugged disk's id...).
    pub adapter: String,
    /// Its AdapterID (0 for maintenance).
    #[serde(default)]
    pub adapter_id: u32,
    pub mode: LockMode,
    /// Unix time in milliseconds.
    #[serde(default)]
    pub since: u64,
}

impl LuLock {
    fn same_holder(&self, other: &LuLock) -> bool {
        self.partition == other.partition && self.adapter == other.adapter
    }

    fn describe(&self) -> String {
        format!(
            "partition {:?} on host {} ({} {}, AdapterID {})",
            self.partition,
            self.host,
            self.adapter,
            self.mode.as_str(),
            self.adapter_id
        )
    }
}

/// Whether `lock` may be taken on `lu` (as stored, if it is) given the
/// locks already on it: the one rule every backend applies inside its
/// transaction.
pub fn check_lock(
    name: &str,
    lu: Option<&LuRecord>,
    held: &[LuLock],
    lock: &LuLock,
    client: &str,
) -> Result<()> {
    let lu = lu.ok_or_else(|| StoreError::LuNotFound(name.to_string()))?;
    if lu.client != client {
        return Err(StoreError::Forbidden(format!(
            "LU {:?} belongs to client {:?}, not to client {client:?}: only its own client's partitions may attach it",
            lu.name, lu.client
        )));
    }
    // A partition name has no ':'; the manager's own holders (a copy being
    // made) do.
    if let (Some(primary), LockMode::Rw) = (&lu.mirror_of, lock.mode) {
        if !lock.partition.contains(':') {
            return Err(StoreError::Locked(format!(
                "LU {:?} is the redundant copy of LU {primary:?}: it is attached read-only only (unmirror it first to write it)",
                lu.name
            )));
        }
    }
    let blocking = held
        .iter()
        .find(|h| !h.same_holder(lock) && (lock.mode == LockMode::Rw || h.mode == LockMode::Rw));
    if let Some(h) = blocking {
        return Err(StoreError::Locked(format!(
            "LU {:?} is locked by {}; a {} attach is refused while it holds it",
            lu.name,
            h.describe(),
            match lock.mode {
                LockMode::Rw => "write",
                LockMode::Ro => "read-only",
            }
        )));
    }
    Ok(())
}

fn corrupt(name: &str, e: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        name: name.to_string(),
        reason: e.to_string(),
    }
}

pub(crate) fn decode_lu(name: &str, json: &[u8], revision: u64) -> Result<LuRecord> {
    let mut lu: LuRecord = serde_json::from_slice(json).map_err(|e| corrupt(name, e))?;
    lu.revision = revision;
    Ok(lu)
}

pub(crate) fn decode_lock(name: &str, json: &[u8]) -> Result<LuLock> {
    serde_json::from_slice(json).map_err(|e| corrupt(name, e))
}

pub(crate) fn encode<T: Serialize>(v: &T) -> String {
    // Plain data with string keys always serialises.
    serde_json::to_string(v).expect("record serialises")
}

fn get_lu(c: &Connection, name: &str) -> Sql<Option<LuRecord>> {
    let row: Option<(String, i64)> = c
        .query_row(
            "SELECT record, revision FROM lus WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(row
        .map(|(j, rev)| decode_lu(name, j.as_bytes(), rev as u64))
        .transpose()?)
}

fn locks_of(c: &Connection, lu: Option<&str>) -> Sql<Vec<LuLock>> {
    let mut stmt = c.prepare_cached(
        "SELECT lu, record FROM lu_locks WHERE ?1 IS NULL OR lu = ?1
         ORDER BY lu, partition, adapter",
    )?;
    let rows = stmt.query_map([lu], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (lu, json) = row?;
        out.push(decode_lock(&lu, json.as_bytes())?);
    }
    Ok(out)
}

fn put_lu(tx: &rusqlite::Transaction<'_>, lu: &LuRecord, insert: bool) -> Sql<()> {
    let sql = if insert {
        "INSERT INTO lus (name, revision, record) VALUES (?1, ?2, ?3)"
    } else {
        "UPDATE lus SET revision = ?2, record = ?3 WHERE name = ?1"
    };
    tx.execute(sql, params![lu.name, lu.revision as i64, encode(lu)])?;
    Ok(())
}

fn conflict(name: &str, expected: u64, found: Option<&LuRecord>) -> Fail {
    match found {
        None => StoreError::LuNotFound(name.to_string()).into(),
        Some(f) => StoreError::Conflict {
            name: name.to_string(),
            expected,
            found: f.revision,
        }
        .into(),
    }
}

/// The SQLite side of the trait's LU block; `impl Store` forwards here.
impl SqliteStore {
    pub(crate) async fn sql_lu_insert(
        &self,
        lu: &LuRecord,
        lock: Option<&LuLock>,
    ) -> Result<LuRecord> {
        let (mut lu, lock) = (lu.clone(), lock.cloned());
        self.call("lu_insert", move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if get_lu(&tx, &lu.name)?.is_some() {
                return Err(StoreError::LuExists(lu.name).into());
            }
            lu.revision = 1;
            put_lu(&tx, &lu, true)?;
            if let Some(mut lock) = lock {
                lock.lu = lu.name.clone();
                put_lock(&tx, lock)?;
            }
            tx.commit()?;
            Ok(lu)
        })
        .await
    }

    pub(crate) async fn sql_lu_get(&self, name: &str) -> Result<Option<LuRecord>> {
        let name = name.to_string();
        self.call("lu_get", move |c| get_lu(c, &name)).await
    }

    pub(crate) async fn sql_lu_list(&self) -> Result<Vec<LuRecord>> {
        self.call("lu_list", |c| {
            let mut stmt =
                c.prepare_cached("SELECT name, record, revision FROM lus ORDER BY name")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (n, j, rev) = row?;
                out.push(decode_lu(&n, j.as_bytes(), rev as u64)?);
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn sql_lu_update(&self, lu: &LuRecord) -> Result<LuRecord> {
        let mut lu = lu.clone();
        self.call("lu_update", move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let found = get_lu(&tx, &lu.name)?;
            if found.as_ref().map(|f| f.revision) != Some(lu.revision) {
                return Err(conflict(&lu.name, lu.revision, found.as_ref()));
            }
            lu.revision += 1;
            put_lu(&tx, &lu, false)?;
            tx.commit()?;
            Ok(lu)
        })
        .await
    }

    pub(crate) async fn sql_lu_put_pair(&self, pair: &[LuRecord; 2]) -> Result<[LuRecord; 2]> {
        let mut pair = pair.clone();
        self.call("lu_put_pair", move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for lu in pair.iter_mut() {
                let found = get_lu(&tx, &lu.name)?;
                let insert = lu.revision == 0;
                match (&found, insert) {
                    (Some(_), true) => return Err(StoreError::LuExists(lu.name.clone()).into()),
                    (None, true) => {}
                    (f, false) if f.as_ref().map(|f| f.revision) == Some(lu.revision) => {}
                    (f, false) => return Err(conflict(&lu.name, lu.revision, f.as_ref())),
                }
                lu.revision += 1;
                put_lu(&tx, lu, insert)?;
            }
            tx.commit()?;
            Ok(pair)
        })
        .await
    }

    pub(crate) async fn sql_lu_delete(&self, name: &str, revision: u64) -> Result<()> {
        let name = name.to_string();
        self.call("lu_delete", move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let found = get_lu(&tx, &name)?;
            if found.as_ref().map(|f| f.revision) != Some(revision) {
                return Err(conflict(&name, revision, found.as_ref()));
            }
            if let Some(h) = locks_of(&tx, Some(&name))?.first() {
                return Err(StoreError::Locked(format!(
                    "LU {name:?} is in use by {}; detach it first",
                    h.describe()
                ))
                .into());
            }
            tx.execute("DELETE FROM lus WHERE name = ?1", [&name])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn sql_lu_lock(&self, lock: &LuLock, client: &str) -> Result<LuRecord> {
        let (lock, client) = (lock.clone(), client.to_string());
        self.call("lu_lock", move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let lu = get_lu(&tx, &lock.lu)?;
            let held = locks_of(&tx, Some(&lock.lu))?;
            check_lock(&lock.lu, lu.as_ref(), &held, &lock, &client)?;
            put_lock(&tx, lock)?;
            tx.commit()?;
            Ok(lu.expect("checked present"))
        })
        .await
    }

    pub(crate) async fn sql_lu_locks(&self, lu: Option<&str>) -> Result<Vec<LuLock>> {
        let lu = lu.map(str::to_string);
        self.call("lu_locks", move |c| locks_of(c, lu.as_deref()))
            .await
    }

    pub(crate) async fn sql_lu_unlock(
        &self,
        partition: &str,
        adapter: Option<&str>,
    ) -> Result<usize> {
        let (p, a) = (partition.to_string(), adapter.map(str::to_string));
        self.call("lu_unlock", move |c| {
            Ok(c.execute(
                "DELETE FROM lu_locks WHERE partition = ?1 AND (?2 IS NULL OR adapter = ?2)",
                params![p, a],
            )?)
        })
        .await
    }
}

/// Writes `lock` (stamped now when it has no time), replacing one of the
/// same partition and adapter.
fn put_lock(c: &Connection, mut lock: LuLock) -> rusqlite::Result<()> {
    if lock.since == 0 {
        lock.since = now_ms();
    }
    c.execute(
        "INSERT OR REPLACE INTO lu_locks (lu, partition, adapter, record)
         VALUES (?1, ?2, ?3, ?4)",
        params![lock.lu, lock.partition, lock.adapter, encode(&lock)],
    )?;
    Ok(())
}
