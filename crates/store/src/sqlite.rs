//! The embedded store: one SQLite file (by default under the data directory;
//! several daemons may share one file, SQLite's locks serialise their writes).

mod grants;
mod pools;
mod remote_restart;
mod routes;

use crate::migrations::MIGRATIONS;
use crate::{
    now_ms, Admission, Event, GrantLogEntry, GrantTableDoc, LuLock, LuRecord, PartitionRecord,
    Result, Scope, Store, StoreError,
};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// SQLite behind [`Store`]. One connection, serialised by a mutex and used
/// only from tokio's blocking pool, so a slow disk or a lock held by another
/// process never stalls the reactor. Every write is one `BEGIN IMMEDIATE`
/// transaction: it holds the database's write lock from its first read, which
/// is what makes [`Store::admit`]'s check and write atomic across processes.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

/// How long a write waits for another process's write lock before the store
/// reports itself unavailable.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A failure inside a blocking call, before it is made backend-neutral.
pub(crate) enum Fail {
    Store(StoreError),
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// SQLite's error in words, as a [`StoreError`]: a lock that stayed taken
/// is `Unavailable` (retry later), anything else `Backend`.
pub(crate) fn neutral(op: &'static str, e: rusqlite::Error) -> StoreError {
    let message = e.to_string();
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable { op, message }
        }
        _ => StoreError::Backend { op, message },
    }
}

pub(crate) type Sql<T> = std::result::Result<T, Fail>;

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    /// Records written before host ids existed are given to `host`.
    pub fn open(path: &Path, host: &str) -> Result<Self> {
        let conn = Connection::open(path).map_err(|e| neutral("open", e))?;
        Self::init(conn, host)
    }

    /// A private in-memory database, for tests.
    pub fn in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory().map_err(|e| neutral("open", e))?;
        Self::init(conn, "")
    }

    fn init(mut conn: Connection, host: &str) -> Result<Self> {
        let setup = |conn: &mut Connection| -> Sql<()> {
            conn.busy_timeout(BUSY_TIMEOUT)?;
            // WAL keeps readers (the CLI's sqlite3, a second daemon) off the writer's
            // back; NORMAL sync is durable across process crashes, which is what we need.
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            migrate(conn, host)
        };
        setup(&mut conn).map_err(|f| finish("open", f))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The schema version (number of migrations applied).
    pub fn schema_version(&self) -> Result<i64> {
        let conn = lock(&self.conn);
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| neutral("schema_version", e))
    }

    /// Runs `f` on the connection in tokio's blocking pool.
    pub(crate) async fn call<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Connection) -> Sql<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&conn)))
            .await
            .map_err(|e| StoreError::Backend {
                op,
                message: format!("store task ended: {e}"),
            })?
            .map_err(|f| finish(op, f))
    }
}

fn finish(op: &'static str, f: Fail) -> StoreError {
    match f {
        Fail::Store(e) => e,
        Fail::Sql(e) => neutral(op, e),
    }
}

fn lock(conn: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    // A panic while holding the lock leaves SQLite consistent (the
    // transaction rolls back on drop), so a poisoned lock is still usable.
    conn.lock().unwrap_or_else(|e| e.into_inner())
}

/// Applies the missing migrations in one transaction, then gives records
/// that have no host (written before migration 4) to `host`.
fn migrate(conn: &mut Connection, host: &str) -> Sql<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(StoreError::TooNew {
            found: version,
            supported,
        }
        .into());
    }
    for sql in &MIGRATIONS[version as usize..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", supported)?;
    if !host.is_empty() {
        tx.execute(
            "UPDATE partitions SET host = ?1, record = json_set(record, '$.host', ?1)
             WHERE host = ''",
            [host],
        )?;
    }
    tx.commit()?;
    Ok(())
}

fn decode(name: &str, json: &str, revision: i64) -> Result<PartitionRecord> {
    let mut rec: PartitionRecord = serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        name: name.to_string(),
        reason: e.to_string(),
    })?;
    rec.revision = revision as u64;
    Ok(rec)
}

fn encode(rec: &PartitionRecord) -> String {
    // Serialising plain data with string keys cannot fail.
    serde_json::to_string(rec).expect("record serialises")
}

fn map_unique(err: rusqlite::Error, rec: &PartitionRecord) -> Fail {
    if let rusqlite::Error::SqliteFailure(f, Some(msg)) = &err {
        if f.code == ErrorCode::ConstraintViolation {
            if msg.contains("partitions.ip") {
                let ip = rec.net.as_ref().map(|n| n.ip.clone()).unwrap_or_default();
                return StoreError::AddressInUse(ip).into();
            }
            if msg.contains("partitions.name") {
                return StoreError::AlreadyExists(rec.name.clone()).into();
            }
        }
    }
    Fail::Sql(err)
}

fn ip_key(rec: &PartitionRecord) -> Option<String> {
    // The prefix length is not part of the identity of an address.
    rec.net
        .as_ref()
        .map(|n| n.ip.split('/').next().unwrap_or(&n.ip).to_string())
}

fn add_event(tx: &rusqlite::Transaction<'_>, name: &str, message: &str) -> Sql<()> {
    if !message.is_empty() {
        tx.execute(
            "INSERT INTO events (at, partition, message) VALUES (?1, ?2, ?3)",
            params![now_ms() as i64, name, message],
        )?;
    }
    Ok(())
}

/// Records in `scope` (all but `except`), ordered by name.
fn select(conn: &Connection, scope: Scope<'_>, except: Option<&str>) -> Sql<Vec<PartitionRecord>> {
    let (host, all) = match scope {
        Scope::All => ("", true),
        Scope::Host(h) => (h, false),
    };
    let mut stmt = conn.prepare_cached(
        "SELECT name, record, revision FROM partitions
         WHERE (?1 OR host = ?2) AND name IS NOT ?3 ORDER BY name",
    )?;
    let rows = stmt.query_map(params![all, host, except], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (name, json, rev) = row?;
        out.push(decode(&name, &json, rev)?);
    }
    Ok(out)
}

fn stored_revision(tx: &rusqlite::Transaction<'_>, name: &str) -> Sql<Option<u64>> {
    Ok(tx
        .query_row(
            "SELECT revision FROM partitions WHERE name = ?1",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map(|r| r as u64))
}

#[derive(Clone, Copy, PartialEq)]
enum Write {
    Insert,
    Update,
}

/// Every write: one immediate transaction that compares the revision, runs
/// the admission check (if any) over the other records, writes the record
/// and its event.
fn write(
    conn: &mut Connection,
    mut rec: PartitionRecord,
    event: &str,
    kind: Write,
    check: Option<Admission>,
) -> Sql<PartitionRecord> {
    if rec.host.is_empty() {
        return Err(StoreError::Invalid {
            name: rec.name,
            reason: "no owning host".into(),
        }
        .into());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = stored_revision(&tx, &rec.name)?;
    match (kind, found) {
        (Write::Insert, Some(_)) => return Err(StoreError::AlreadyExists(rec.name).into()),
        (Write::Update, None) => return Err(StoreError::NotFound(rec.name).into()),
        (Write::Update, Some(found)) if found != rec.revision => {
            return Err(StoreError::Conflict {
                expected: rec.revision,
                name: rec.name,
                found,
            }
            .into())
        }
        _ => {}
    }
    if let Some(check) = check {
        let others = select(&tx, Scope::All, Some(&rec.name))?;
        if let Err(reason) = check(&others, &mut rec) {
            return Err(StoreError::Refused {
                name: rec.name,
                reason,
            }
            .into());
        }
    }
    rec.revision = found.unwrap_or(0) + 1;
    let sql = match kind {
        Write::Insert => {
            "INSERT INTO partitions (name, revision, ip, state, record, host)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
        }
        Write::Update => {
            "UPDATE partitions SET revision = ?2, ip = ?3, state = ?4, record = ?5, host = ?6
             WHERE name = ?1"
        }
    };
    tx.execute(
        sql,
        params![
            rec.name,
            rec.revision as i64,
            ip_key(&rec),
            rec.state.as_str(),
            encode(&rec),
            rec.host
        ],
    )
    .map_err(|e| map_unique(e, &rec))?;
    add_event(&tx, &rec.name, event)?;
    tx.commit()?;
    Ok(rec)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn insert(&self, record: &PartitionRecord, event: &str) -> Result<PartitionRecord> {
        let (rec, event) = (record.clone(), event.to_string());
        self.call("insert", move |c| {
            write(c, rec, &event, Write::Insert, None)
        })
        .await
    }

    async fn get(&self, name: &str) -> Result<Option<PartitionRecord>> {
        let name = name.to_string();
        self.call("get", move |c| {
            let row: Option<(String, i64)> = c
                .query_row(
                    "SELECT record, revision FROM partitions WHERE name = ?1",
                    [&name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            Ok(row
                .map(|(json, rev)| decode(&name, &json, rev))
                .transpose()?)
        })
        .await
    }

    async fn list(&self, scope: Scope<'_>) -> Result<Vec<PartitionRecord>> {
        let host = match scope {
            Scope::All => None,
            Scope::Host(h) => Some(h.to_string()),
        };
        self.call("list", move |c| {
            let scope = host.as_deref().map_or(Scope::All, Scope::Host);
            select(c, scope, None)
        })
        .await
    }

    async fn update(&self, record: &PartitionRecord, event: &str) -> Result<PartitionRecord> {
        let (rec, event) = (record.clone(), event.to_string());
        self.call("update", move |c| {
            write(c, rec, &event, Write::Update, None)
        })
        .await
    }

    async fn delete(&self, name: &str, revision: u64) -> Result<()> {
        let name = name.to_string();
        self.call("delete", move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let found =
                stored_revision(&tx, &name)?.ok_or_else(|| StoreError::NotFound(name.clone()))?;
            if found != revision {
                return Err(StoreError::Conflict {
                    name,
                    expected: revision,
                    found,
                }
                .into());
            }
            tx.execute("DELETE FROM partitions WHERE name = ?1", [&name])?;
            tx.execute("DELETE FROM events WHERE partition = ?1", [&name])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn events(&self, name: &str, limit: usize) -> Result<Vec<Event>> {
        let name = name.to_string();
        self.call("events", move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT at, message FROM events WHERE partition = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![name, limit as i64], |r| {
                Ok(Event {
                    at: r.get::<_, i64>(0)? as u64,
                    partition: name.clone(),
                    message: r.get(1)?,
                })
            })?;
            let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            out.reverse();
            Ok(out)
        })
        .await
    }

    async fn admit(
        &self,
        record: &PartitionRecord,
        event: &str,
        check: Admission,
    ) -> Result<PartitionRecord> {
        let (rec, event) = (record.clone(), event.to_string());
        let kind = if rec.revision == 0 {
            Write::Insert
        } else {
            Write::Update
        };
        self.call("admit", move |c| write(c, rec, &event, kind, Some(check)))
            .await
    }

    // --- grants (issue 11) ---
    async fn grant_table(&self, host: &str) -> Result<Option<GrantTableDoc>> {
        self.sqlite_grant_table(host).await
    }

    async fn commit_grant_table(
        &self,
        host: &str,
        expected: u64,
        body: &[u8],
        log: &[(u64, String)],
    ) -> Result<u64> {
        self.sqlite_commit_grant_table(host, expected, body, log)
            .await
    }

    async fn grant_log(&self, host: &str, after: u64, limit: usize) -> Result<Vec<GrantLogEntry>> {
        self.sqlite_grant_log(host, after, limit).await
    }

    async fn prune_grant_log(&self, host: &str, before_ms: u64, keep: usize) -> Result<u64> {
        self.sqlite_prune_grant_log(host, before_ms, keep).await
    }

    // --- hosts (issue 14) ---

    async fn register_host(
        &self,
        host: &crate::HostRecord,
        ttl: std::time::Duration,
    ) -> Result<()> {
        let host = host.clone();
        self.call("register_host", move |c| {
            Ok(crate::hosts::register(c, &host, ttl)?)
        })
        .await
    }

    async fn renew_host(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.call("renew_host", move |c| Ok(crate::hosts::renew(c, &id)?))
            .await
    }

    async fn hosts(&self) -> Result<Vec<crate::HostStatus>> {
        self.call("hosts", |c| Ok(crate::hosts::list(c)?)).await
    }

    // --- LUs and clients (issue 14) --- (in lus.rs)
    async fn lu_insert(&self, lu: &LuRecord) -> Result<LuRecord> {
        self.sql_lu_insert(lu, None).await
    }
    async fn lu_insert_locked(&self, lu: &LuRecord, lock: &LuLock) -> Result<LuRecord> {
        self.sql_lu_insert(lu, Some(lock)).await
    }
    async fn lu_get(&self, name: &str) -> Result<Option<LuRecord>> {
        self.sql_lu_get(name).await
    }
    async fn lu_list(&self) -> Result<Vec<LuRecord>> {
        self.sql_lu_list().await
    }
    async fn lu_update(&self, lu: &LuRecord) -> Result<LuRecord> {
        self.sql_lu_update(lu).await
    }
    async fn lu_put_pair(&self, pair: &[LuRecord; 2]) -> Result<[LuRecord; 2]> {
        self.sql_lu_put_pair(pair).await
    }
    async fn lu_delete(&self, name: &str, revision: u64) -> Result<()> {
        self.sql_lu_delete(name, revision).await
    }
    async fn lu_lock(&self, lock: &LuLock, client: &str) -> Result<LuRecord> {
        self.sql_lu_lock(lock, client).await
    }
    async fn lu_locks(&self, lu: Option<&str>) -> Result<Vec<LuLock>> {
        self.sql_lu_locks(lu).await
    }
    async fn lu_unlock(&self, partition: &str, adapter: Option<&str>) -> Result<usize> {
        self.sql_lu_unlock(partition, adapter).await
    }

    // --- exposed routes (issue 15) --- (in sqlite/routes.rs)
    async fn route_put(&self, route: &crate::ExposedRoute) -> Result<()> {
        self.sql_route_put(route).await
    }
    async fn route_remove(
        &self,
        partition: &str,
        domain: Option<&str>,
    ) -> Result<Vec<crate::ExposedRoute>> {
        self.sql_route_remove(partition, domain).await
    }
    async fn routes(&self) -> Result<Vec<crate::ExposedRoute>> {
        self.sql_routes().await
    }
    // --- service pools (issue 17) --- (in sqlite/pools.rs)
    async fn pool_doc_put(
        &self,
        kind: crate::PoolKind,
        name: &str,
        expected: u64,
        body: &str,
    ) -> Result<u64> {
        self.sql_pool_doc_put(kind, name, expected, body).await
    }
    async fn pool_doc_get(
        &self,
        kind: crate::PoolKind,
        name: &str,
    ) -> Result<Option<crate::PoolDoc>> {
        self.sql_pool_doc_get(kind, name).await
    }
    async fn pool_doc_list(&self, kind: crate::PoolKind) -> Result<Vec<crate::PoolDoc>> {
        self.sql_pool_doc_list(kind).await
    }
    async fn pool_doc_delete(
        &self,
        kind: crate::PoolKind,
        name: &str,
        revision: u64,
    ) -> Result<()> {
        self.sql_pool_doc_delete(kind, name, revision).await
    }
    // --- remote restart (issue 12) --- (in sqlite/remote_restart.rs)
    async fn operation_put(&self, op: &crate::OperationRecord) -> Result<crate::OperationRecord> {
        self.sql_operation_put(op).await
    }
    async fn operation_get(&self, partition: &str) -> Result<Option<crate::OperationRecord>> {
        self.sql_operation_get(partition).await
    }
    async fn operation_list(&self) -> Result<Vec<crate::OperationRecord>> {
        self.sql_operation_list().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_failures_become_words() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.db");
        std::fs::write(&p, vec![0x55u8; 8192]).unwrap();
        let e = SqliteStore::open(&p, "h").err().expect("not a database");
        assert!(matches!(e, StoreError::Backend { op: "open", .. }), "{e:?}");
        // The driver's error type is gone; only its words remain.
        assert!(!format!("{e:?}").contains("SqliteFailure"), "{e:?}");
    }
}
