//! The embedded store: one SQLite file under the data directory.

use crate::migrations::MIGRATIONS;
use crate::{now_ms, Event, PartitionRecord, Result, Store, StoreError};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::Mutex;

/// SQLite behind [`Store`]. One connection, serialised by a mutex: the
/// manager's writes are few and short, and this keeps every call one
/// transaction without a pool.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// A private in-memory database, for tests.
    pub fn in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL keeps readers (the CLI's sqlite3, a second process) off the writer's
        // back; NORMAL sync is durable across process crashes, which is what we need.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// The schema version (number of migrations applied).
    pub fn schema_version(&self) -> Result<i64> {
        let conn = self.lock();
        Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (the
        // transaction rolls back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Applies the missing migrations in one transaction.
fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(StoreError::TooNew {
            found: version,
            supported,
        });
    }
    for sql in &MIGRATIONS[version as usize..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", supported)?;
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

fn map_unique(err: rusqlite::Error, rec: &PartitionRecord) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, Some(msg)) = &err {
        if f.code == ErrorCode::ConstraintViolation {
            if msg.contains("partitions.ip") {
                let ip = rec.net.as_ref().map(|n| n.ip.clone()).unwrap_or_default();
                return StoreError::AddressInUse(ip);
            }
            if msg.contains("partitions.name") {
                return StoreError::AlreadyExists(rec.name.clone());
            }
        }
    }
    StoreError::Sqlite(err)
}

fn ip_key(rec: &PartitionRecord) -> Option<String> {
    // The prefix length is not part of the identity of an address.
    rec.net
        .as_ref()
        .map(|n| n.ip.split('/').next().unwrap_or(&n.ip).to_string())
}

fn add_event(tx: &rusqlite::Transaction<'_>, name: &str, message: &str) -> Result<()> {
    if !message.is_empty() {
        tx.execute(
            "INSERT INTO events (at, partition, message) VALUES (?1, ?2, ?3)",
            params![now_ms() as i64, name, message],
        )?;
    }
    Ok(())
}

impl Store for SqliteStore {
    fn insert(&self, record: &PartitionRecord, event: &str) -> Result<PartitionRecord> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut rec = record.clone();
        rec.revision = 1;
        tx.execute(
            "INSERT INTO partitions (name, revision, ip, state, record) VALUES (?1, 1, ?2, ?3, ?4)",
            params![rec.name, ip_key(&rec), rec.state.as_str(), encode(&rec)],
        )
        .map_err(|e| map_unique(e, &rec))?;
        add_event(&tx, &rec.name, event)?;
        tx.commit()?;
        Ok(rec)
    }

    fn get(&self, name: &str) -> Result<Option<PartitionRecord>> {
        let conn = self.lock();
        let row: Option<(String, i64)> = conn
            .query_row(
                "SELECT record, revision FROM partitions WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(json, rev)| decode(name, &json, rev)).transpose()
    }

    fn list(&self) -> Result<Vec<PartitionRecord>> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare_cached("SELECT name, record, revision FROM partitions ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
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

    fn update(&self, record: &PartitionRecord, event: &str) -> Result<PartitionRecord> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: Option<i64> = tx
            .query_row(
                "SELECT revision FROM partitions WHERE name = ?1",
                [&record.name],
                |r| r.get(0),
            )
            .optional()?;
        let found = found.ok_or_else(|| StoreError::NotFound(record.name.clone()))? as u64;
        if found != record.revision {
            return Err(StoreError::Conflict {
                name: record.name.clone(),
                expected: record.revision,
                found,
            });
        }
        let mut rec = record.clone();
        rec.revision = found + 1;
        tx.execute(
            "UPDATE partitions SET revision = ?2, ip = ?3, state = ?4, record = ?5 WHERE name = ?1",
            params![
                rec.name,
                rec.revision as i64,
                ip_key(&rec),
                rec.state.as_str(),
                encode(&rec)
            ],
        )
        .map_err(|e| map_unique(e, &rec))?;
        add_event(&tx, &rec.name, event)?;
        tx.commit()?;
        Ok(rec)
    }

    fn delete(&self, name: &str, revision: u64) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: Option<i64> = tx
            .query_row(
                "SELECT revision FROM partitions WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        let found = found.ok_or_else(|| StoreError::NotFound(name.to_string()))? as u64;
        if found != revision {
            return Err(StoreError::Conflict {
                name: name.to_string(),
                expected: revision,
                found,
            });
        }
        tx.execute("DELETE FROM partitions WHERE name = ?1", [name])?;
        tx.execute("DELETE FROM events WHERE partition = ?1", [name])?;
        tx.commit()?;
        Ok(())
    }

    fn events(&self, name: &str, limit: usize) -> Result<Vec<Event>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT at, message FROM events WHERE partition = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![name, limit as i64], |r| {
            Ok(Event {
                at: r.get::<_, i64>(0)? as u64,
                partition: name.to_string(),
                message: r.get(1)?,
            })
        })?;
        let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }
}
