//! Remote-restart operations on etcd (issue 12): one key per partition,
//! `<prefix>/operations/<partition>`, whose etcd `version` is the record's
//! revision (as for partitions and LUs); a write compares it in one Txn.

use super::{kvs, EtcdStore};
use bulkhead_store::{OperationRecord, Result, StoreError};
use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp};

fn decode(kv: &KeyValue) -> Result<OperationRecord> {
    let mut op: OperationRecord =
        serde_json::from_slice(kv.value()).map_err(|e| StoreError::Corrupt {
            name: String::from_utf8_lossy(kv.key()).into_owned(),
            reason: e.to_string(),
        })?;
    op.revision = kv.version() as u64;
    Ok(op)
}

impl EtcdStore {
    fn operation_key(&self, partition: Option<&str>) -> String {
        self.keys.under("operations", partition)
    }

    pub(crate) async fn etcd_operation_put(&self, op: &OperationRecord) -> Result<OperationRecord> {
        let key = self.operation_key(Some(&op.partition));
        let mut stored = op.clone();
        stored.revision = op.revision + 1;
        let value = serde_json::to_vec(&stored).expect("records serialise");
        // version 0 compares equal for an absent key: one Txn for insert and update.
        let txn = Txn::new()
            .when([Compare::version(
                key.clone(),
                CompareOp::Equal,
                op.revision as i64,
            )])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn("operation_put", txn).await?;
        if resp.succeeded() {
            return Ok(stored);
        }
        let found = kvs(resp.op_responses().as_slice(), 0)
            .first()
            .map_or(0, |kv| kv.version() as u64);
        Err(StoreError::operation_conflict(
            &op.partition,
            op.revision,
            found,
        ))
    }

    pub(crate) async fn etcd_operation_get(
        &self,
        partition: &str,
    ) -> Result<Option<OperationRecord>> {
        let key = self.operation_key(Some(partition));
        let (kvs, _) = self.range("operation_get", key, GetOptions::new()).await?;
        kvs.first().map(decode).transpose()
    }

    pub(crate) async fn etcd_operation_list(&self) -> Result<Vec<OperationRecord>> {
        let opts = GetOptions::new().with_prefix();
        let (kvs, _) = self
            .range("operation_list", self.operation_key(None), opts)
            .await?;
        let mut v = kvs.iter().map(decode).collect::<Result<Vec<_>>>()?;
        v.sort_by(|a, b| a.partition.cmp(&b.partition));
        Ok(v)
    }
}
