//! Service pools' documents on etcd (issue 17): one key per document,
//! `<prefix>/pools/<name>` and `<prefix>/pool-users/<name>`, whose etcd
//! `version` is the document's revision (as for partitions and LUs). The value
//! carries the name beside the body, so a listing needs no unescaping.

use super::{kvs, EtcdStore};
use bulkhead_store::{PoolDoc, PoolKind, Result, StoreError};
use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Stored {
    name: String,
    body: String,
}

fn decode(kv: &KeyValue) -> Result<PoolDoc> {
    let s: Stored = serde_json::from_slice(kv.value()).map_err(|e| StoreError::Corrupt {
        name: String::from_utf8_lossy(kv.key()).into_owned(),
        reason: e.to_string(),
    })?;
    Ok(PoolDoc {
        name: s.name,
        revision: kv.version() as u64,
        body: s.body,
    })
}

fn found(r: &[etcd_client::TxnOpResponse]) -> u64 {
    kvs(r, 0).first().map_or(0, |kv| kv.version() as u64)
}

impl EtcdStore {
    fn pool_key(&self, kind: PoolKind, name: &str) -> String {
        self.keys.under(kind.as_str(), Some(name))
    }

    pub(crate) async fn etcd_pool_doc_put(
        &self,
        kind: PoolKind,
        name: &str,
        expected: u64,
        body: &str,
    ) -> Result<u64> {
        StoreError::check_pool_name(kind, name)?;
        let key = self.pool_key(kind, name);
        let value = serde_json::to_string(&Stored {
            name: name.into(),
            body: body.into(),
        })
        .expect("strings serialise");
        // version 0 compares equal for an absent key: one Txn for insert and update.
        let txn = Txn::new()
            .when([Compare::version(
                key.clone(),
                CompareOp::Equal,
                expected as i64,
            )])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn("pool_doc_put", txn).await?;
        if resp.succeeded() {
            return Ok(expected + 1);
        }
        let f = found(resp.op_responses().as_slice());
        Err(StoreError::pool_conflict(kind, name, expected, f))
    }

    pub(crate) async fn etcd_pool_doc_get(
        &self,
        kind: PoolKind,
        name: &str,
    ) -> Result<Option<PoolDoc>> {
        let key = self.pool_key(kind, name);
        let (kvs, _) = self.range("pool_doc_get", key, GetOptions::new()).await?;
        kvs.first().map(decode).transpose()
    }

    pub(crate) async fn etcd_pool_doc_list(&self, kind: PoolKind) -> Result<Vec<PoolDoc>> {
        let opts = GetOptions::new().with_prefix();
        let range = self.keys.under(kind.as_str(), None);
        let (kvs, _) = self.range("pool_doc_list", range, opts).await?;
        let mut v = kvs.iter().map(decode).collect::<Result<Vec<_>>>()?;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    pub(crate) async fn etcd_pool_doc_delete(
        &self,
        kind: PoolKind,
        name: &str,
        revision: u64,
    ) -> Result<()> {
        let key = self.pool_key(kind, name);
        if revision == 0 {
            return Err(StoreError::pool_conflict(kind, name, 0, 0));
        }
        let txn = Txn::new()
            .when([Compare::version(
                key.clone(),
                CompareOp::Equal,
                revision as i64,
            )])
            .and_then([TxnOp::delete(key.clone(), None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn("pool_doc_delete", txn).await?;
        if resp.succeeded() {
            return Ok(());
        }
        let f = found(resp.op_responses().as_slice());
        Err(StoreError::pool_conflict(kind, name, revision, f))
    }
}
