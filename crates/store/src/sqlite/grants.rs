//! The grant tables on SQLite: `grant_tables` (one row per host: the body, its
//! revision, the newest log seq given) and `grant_log` (migration 5). A
//! commit is one `BEGIN IMMEDIATE` transaction, like every other write.

use super::{Sql, SqliteStore};
use crate::{GrantLogEntry, GrantTableDoc, Result, StoreError};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// SQLite's integers are signed: a u64 past i64::MAX is clamped, which for a
/// bound (`after`, `before_ms`, `limit`) means "all".
fn int(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn table(c: &mut Connection, host: &str) -> Sql<Option<GrantTableDoc>> {
    Ok(c.query_row(
        "SELECT body, revision FROM grant_tables WHERE host = ?1",
        [host],
        |r| {
            Ok(GrantTableDoc {
                body: r.get(0)?,
                revision: r.get::<_, i64>(1)? as u64,
            })
        },
    )
    .optional()?)
}

fn commit(
    c: &mut Connection,
    host: &str,
    expected: u64,
    body: &[u8],
    log: &[(u64, String)],
) -> Sql<u64> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (found, last_seq) = tx
        .query_row(
            "SELECT revision, last_seq FROM grant_tables WHERE host = ?1",
            [host],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .optional()?
        .unwrap_or((0, 0));
    if found != expected {
        return Err(StoreError::grant_conflict(host, expected, found).into());
    }
    let revision = found + 1;
    let last_seq = last_seq + log.len() as u64;
    tx.execute(
        "INSERT INTO grant_tables (host, body, revision, last_seq) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (host) DO UPDATE SET body = ?2, revision = ?3, last_seq = ?4",
        params![host, body, revision as i64, last_seq as i64],
    )?;
    let first = last_seq + 1 - log.len() as u64;
    let mut add = tx.prepare_cached(
        "INSERT INTO grant_log (host, seq, at_ms, event) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (seq, (at_ms, event)) in (first..).zip(log) {
        add.execute(params![host, seq as i64, int(*at_ms), event])?;
    }
    drop(add);
    tx.commit()?;
    Ok(revision)
}

fn log(c: &mut Connection, host: &str, after: u64, limit: usize) -> Sql<Vec<GrantLogEntry>> {
    let mut stmt = c.prepare_cached(
        "SELECT seq, at_ms, event FROM grant_log WHERE host = ?1 AND seq > ?2
         ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![host, int(after), int(limit as u64)], |r| {
        Ok(GrantLogEntry {
            seq: r.get::<_, i64>(0)? as u64,
            at_ms: r.get::<_, i64>(1)? as u64,
            event: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

fn prune(c: &mut Connection, host: &str, before_ms: u64, keep: usize) -> Sql<u64> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let gone = tx.execute(
        "DELETE FROM grant_log WHERE host = ?1 AND at_ms < ?2 AND seq NOT IN
         (SELECT seq FROM grant_log WHERE host = ?1 ORDER BY seq DESC LIMIT ?3)",
        params![host, int(before_ms), int(keep as u64)],
    )?;
    tx.commit()?;
    Ok(gone as u64)
}

impl SqliteStore {
    pub(crate) async fn sqlite_grant_table(&self, host: &str) -> Result<Option<GrantTableDoc>> {
        let host = host.to_string();
        self.call("grant_table", move |c| table(c, &host)).await
    }

    pub(crate) async fn sqlite_commit_grant_table(
        &self,
        host: &str,
        expected: u64,
        body: &[u8],
        log: &[(u64, String)],
    ) -> Result<u64> {
        StoreError::check_grant_host(host)?;
        let (host, body, log) = (host.to_string(), body.to_vec(), log.to_vec());
        self.call("commit_grant_table", move |c| {
            commit(c, &host, expected, &body, &log)
        })
        .await
    }

    pub(crate) async fn sqlite_grant_log(
        &self,
        host: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<GrantLogEntry>> {
        let host = host.to_string();
        self.call("grant_log", move |c| log(c, &host, after, limit))
            .await
    }

    pub(crate) async fn sqlite_prune_grant_log(
        &self,
        host: &str,
        before_ms: u64,
        keep: usize,
    ) -> Result<u64> {
        let host = host.to_string();
        self.call("prune_grant_log", move |c| prune(c, &host, before_ms, keep))
            .await
    }
}
