//! Service pools' documents on SQLite: `pool_docs` (migration 8), one row per
//! kind and name. A write is one `BEGIN IMMEDIATE` transaction that compares
//! the revision it read, like every other write.

use super::{Sql, SqliteStore};
use crate::{PoolDoc, PoolKind, Result, StoreError};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

fn revision(c: &Connection, kind: PoolKind, name: &str) -> Sql<u64> {
    Ok(c.query_row(
        "SELECT revision FROM pool_docs WHERE kind = ?1 AND name = ?2",
        params![kind.as_str(), name],
        |r| r.get::<_, i64>(0),
    )
    .optional()?
    .unwrap_or(0) as u64)
}

fn put(c: &mut Connection, kind: PoolKind, name: &str, expected: u64, body: &str) -> Sql<u64> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = revision(&tx, kind, name)?;
    if found != expected {
        return Err(StoreError::pool_conflict(kind, name, expected, found).into());
    }
    tx.execute(
        "INSERT INTO pool_docs (kind, name, revision, body) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (kind, name) DO UPDATE SET revision = ?3, body = ?4",
        params![kind.as_str(), name, (found + 1) as i64, body],
    )?;
    tx.commit()?;
    Ok(found + 1)
}

fn list(c: &mut Connection, kind: PoolKind, name: Option<&str>) -> Sql<Vec<PoolDoc>> {
    let mut stmt = c.prepare_cached(
        "SELECT name, revision, body FROM pool_docs WHERE kind = ?1 AND (?2 IS NULL OR name = ?2)
         ORDER BY name",
    )?;
    let rows = stmt.query_map(params![kind.as_str(), name], |r| {
        Ok(PoolDoc {
            name: r.get(0)?,
            revision: r.get::<_, i64>(1)? as u64,
            body: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

fn delete(c: &mut Connection, kind: PoolKind, name: &str, expected: u64) -> Sql<()> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = revision(&tx, kind, name)?;
    if found != expected || found == 0 {
        return Err(StoreError::pool_conflict(kind, name, expected, found).into());
    }
    tx.execute(
        "DELETE FROM pool_docs WHERE kind = ?1 AND name = ?2",
        params![kind.as_str(), name],
    )?;
    tx.commit()?;
    Ok(())
}

impl SqliteStore {
    pub(crate) async fn sql_pool_doc_put(
        &self,
        kind: PoolKind,
        name: &str,
        expected: u64,
        body: &str,
    ) -> Result<u64> {
        StoreError::check_pool_name(kind, name)?;
        let (name, body) = (name.to_string(), body.to_string());
        self.call("pool_doc_put", move |c| {
            put(c, kind, &name, expected, &body)
        })
        .await
    }

    pub(crate) async fn sql_pool_doc_get(
        &self,
        kind: PoolKind,
        name: &str,
    ) -> Result<Option<PoolDoc>> {
        let name = name.to_string();
        self.call("pool_doc_get", move |c| {
            Ok(list(c, kind, Some(&name))?.pop())
        })
        .await
    }

    pub(crate) async fn sql_pool_doc_list(&self, kind: PoolKind) -> Result<Vec<PoolDoc>> {
        self.call("pool_doc_list", move |c| list(c, kind, None))
            .await
    }

    pub(crate) async fn sql_pool_doc_delete(
        &self,
        kind: PoolKind,
        name: &str,
        revision: u64,
    ) -> Result<()> {
        let name = name.to_string();
        self.call("pool_doc_delete", move |c| delete(c, kind, &name, revision))
            .await
    }
}
