//! Remote-restart operations on SQLite: `rr_operations` (migration 10), one
//! row per partition, written in one `BEGIN IMMEDIATE` transaction that
//! compares the revision it read, like every other write.

use super::{Sql, SqliteStore};
use crate::{OperationRecord, Result, StoreError};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

fn put(c: &mut Connection, op: &OperationRecord) -> Sql<OperationRecord> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = tx
        .query_row(
            "SELECT revision FROM rr_operations WHERE partition = ?1",
            params![op.partition],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .unwrap_or(0) as u64;
    if found != op.revision {
        return Err(StoreError::operation_conflict(&op.partition, op.revision, found).into());
    }
    let mut stored = op.clone();
    stored.revision = found + 1;
    let json = serde_json::to_string(&stored).expect("records serialise");
    tx.execute(
        "INSERT INTO rr_operations (partition, token, revision, record) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (partition) DO UPDATE SET token = ?2, revision = ?3, record = ?4",
        params![op.partition, op.token, stored.revision as i64, json],
    )?;
    tx.commit()?;
    Ok(stored)
}

fn list(c: &mut Connection, partition: Option<&str>) -> Sql<Vec<OperationRecord>> {
    let mut stmt = c.prepare_cached(
        "SELECT partition, revision, record FROM rr_operations
         WHERE (?1 IS NULL OR partition = ?1) ORDER BY partition",
    )?;
    let rows = stmt.query_map(params![partition], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (name, rev, json) = row?;
        let mut op: OperationRecord =
            serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
                name: format!("operations/{name}"),
                reason: e.to_string(),
            })?;
        op.revision = rev as u64;
        out.push(op);
    }
    Ok(out)
}

impl SqliteStore {
    pub(crate) async fn sql_operation_put(&self, op: &OperationRecord) -> Result<OperationRecord> {
        let op = op.clone();
        self.call("operation_put", move |c| put(c, &op)).await
    }

    pub(crate) async fn sql_operation_get(
        &self,
        partition: &str,
    ) -> Result<Option<OperationRecord>> {
        let p = partition.to_string();
        self.call("operation_get", move |c| Ok(list(c, Some(&p))?.pop()))
            .await
    }

    pub(crate) async fn sql_operation_list(&self) -> Result<Vec<OperationRecord>> {
        self.call("operation_list", move |c| list(c, None)).await
    }
}
