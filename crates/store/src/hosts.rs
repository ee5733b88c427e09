//! Cluster membership: one [`HostRecord`] per daemon, and whether it is
//! still alive. SQLite keeps a heartbeat column (lost = heartbeat older than
//! the host's ttl); etcd keeps a lease (bulkhead-store-etcd).

use crate::{now_ms, Result, StoreError};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a daemon tells the cluster about itself when it starts.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// The daemon's host id (stable across restarts); partition records name it.
    pub id: String,
    /// The host's name, unique in the cluster (`partition create --host NAME`).
    pub name: String,
    /// `address:port` of its TCP API, which other hosts forward commands to;
    /// empty when it serves none.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// SHA-256 of its TCP API certificate, which forwarding hosts pin.
    #[serde(default)]
    pub tls_fingerprint: Option<String>,
    /// Its address on the hosts' own network: the VXLAN tunnels end there.
    #[serde(default)]
    pub underlay: Option<String>,
    pub cpus: u32,
    pub memory_mib: u64,
    /// Unix time in milliseconds.
    pub started_at: u64,
    pub version: String,
}

/// Whether a host keeps renewing its membership.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    Up,
    /// Its lease (etcd) or heartbeat (SQLite) ran out.
    Lost,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Lost => "lost",
        }
    }
}

/// A member as [`crate::Store::hosts`] sees it.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    #[serde(flatten)]
    pub record: HostRecord,
    pub state: HostState,
}

/// The refusal of a host name another host holds.
pub fn name_taken(name: &str, holder: &str) -> StoreError {
    StoreError::Refused {
        name: name.to_string(),
        reason: format!(
            "host name {name:?} is already registered by host id {holder}; give this host another name (or its own id back)"
        ),
    }
}

fn ms(ttl: Duration) -> i64 {
    ttl.as_millis().min(i64::MAX as u128) as i64
}

/// SQLite: registers (or re-registers) `rec` with a fresh heartbeat.
pub(crate) fn register(conn: &mut Connection, rec: &HostRecord, ttl: Duration) -> Result<()> {
    let op = "register_host";
    let sql = |e: rusqlite::Error| crate::sqlite::neutral(op, e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    let holder: Option<String> = tx
        .query_row(
            "SELECT id FROM hosts WHERE name = ?1 AND id != ?2",
            params![rec.name, rec.id],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql)?;
    if let Some(h) = holder {
        return Err(name_taken(&rec.name, &h));
    }
    let json = serde_json::to_string(rec).expect("record serialises");
    tx.execute(
        "INSERT INTO hosts (id, name, record, heartbeat, ttl_ms) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(id) DO UPDATE SET name = ?2, record = ?3, heartbeat = ?4, ttl_ms = ?5",
        params![rec.id, rec.name, json, now_ms() as i64, ms(ttl)],
    )
    .map_err(sql)?;
    tx.commit().map_err(sql)
}

/// SQLite: moves the heartbeat of host `id` to now.
pub(crate) fn renew(conn: &Connection, id: &str) -> Result<()> {
    let n = conn
        .execute(
            "UPDATE hosts SET heartbeat = ?2 WHERE id = ?1",
            params![id, now_ms() as i64],
        )
        .map_err(|e| crate::sqlite::neutral("renew_host", e))?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("host {id}")));
    }
    Ok(())
}

/// SQLite: every member, ordered by name.
pub(crate) fn list(conn: &Connection) -> Result<Vec<HostStatus>> {
    let op = "hosts";
    let sql = |e: rusqlite::Error| crate::sqlite::neutral(op, e);
    let mut stmt = conn
        .prepare_cached("SELECT id, record, heartbeat, ttl_ms FROM hosts ORDER BY name")
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(sql)?;
    let now = now_ms() as i64;
    let mut out = Vec::new();
    for row in rows {
        let (id, json, beat, ttl) = row.map_err(sql)?;
        let record: HostRecord = serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
            name: format!("host {id}"),
            reason: e.to_string(),
        })?;
        let state = if now.saturating_sub(beat) > ttl {
            HostState::Lost
        } else {
            HostState::Up
        };
        out.push(HostStatus { record, state });
    }
    Ok(out)
}
