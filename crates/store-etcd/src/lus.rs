//! The trait's LU block on etcd. An LU is one JSON value at
//! `<prefix>/lus/<name>` (its revision is the key's version, as for
//! partitions); a lock is one key per holder under
//! `<prefix>/lu-locks/<lu>/`. A lock is taken by reading the LU and its
//! locks at one etcd revision R, deciding with [`check_lock`], and
//! committing only if neither the LU nor any lock of it changed after R.

use super::{encode, kvs, EtcdStore};
use bulkhead_store::{check_lock, now_ms, LuLock, LuRecord, Result, StoreError};
use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp};

fn corrupt(kv: &KeyValue, e: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        name: String::from_utf8_lossy(kv.key()).into_owned(),
        reason: e.to_string(),
    }
}

fn decode_lu(kv: &KeyValue) -> Result<LuRecord> {
    let mut lu: LuRecord = serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv, e))?;
    lu.revision = kv.version() as u64;
    Ok(lu)
}

fn decode_lock(kv: &KeyValue) -> Result<LuLock> {
    serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv, e))
}

fn decode_locks(kvs: &[KeyValue]) -> Result<Vec<LuLock>> {
    let mut v = kvs.iter().map(decode_lock).collect::<Result<Vec<_>>>()?;
    v.sort_by(|a, b| (&a.lu, &a.partition, &a.adapter).cmp(&(&b.lu, &b.partition, &b.adapter)));
    Ok(v)
}

/// The error for an LU found at `found` (None: absent) by a write expecting `expected`.
fn revision_error(name: &str, expected: u64, found: Option<&KeyValue>) -> StoreError {
    match found {
        None => StoreError::LuNotFound(name.to_string()),
        Some(kv) => StoreError::Conflict {
            name: name.to_string(),
            expected,
            found: kv.version() as u64,
        },
    }
}

fn prefix() -> Option<GetOptions> {
    Some(GetOptions::new().with_prefix())
}

impl EtcdStore {
    pub(crate) async fn etcd_lu_insert(
        &self,
        lu: &LuRecord,
        lock: Option<&LuLock>,
    ) -> Result<LuRecord> {
        let key = self.keys.lu(&lu.name);
        let mut new = lu.clone();
        new.revision = 1;
        let mut then = vec![TxnOp::put(key.clone(), encode(&new), None)];
        if let Some(lock) = lock {
            let mut lock = lock.clone();
            lock.lu = lu.name.clone();
            if lock.since == 0 {
                lock.since = now_ms();
            }
            let at = self.keys.lu_lock(&lock.lu, &lock.partition, &lock.adapter);
            then.push(TxnOp::put(at, encode(&lock), None));
        }
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then(then);
        if !self.txn("lu_insert", txn).await?.succeeded() {
            return Err(StoreError::LuExists(lu.name.clone()));
        }
        Ok(new)
    }

    pub(crate) async fn etcd_lu_get(&self, name: &str) -> Result<Option<LuRecord>> {
        let (kvs, _) = self
            .range("lu_get", self.keys.lu(name), GetOptions::new())
            .await?;
        kvs.first().map(decode_lu).transpose()
    }

    pub(crate) async fn etcd_lu_list(&self) -> Result<Vec<LuRecord>> {
        let opts = GetOptions::new().with_prefix();
        let (kvs, _) = self.range("lu_list", self.keys.lus(), opts).await?;
        let mut v = kvs.iter().map(decode_lu).collect::<Result<Vec<_>>>()?;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    pub(crate) async fn etcd_lu_update(&self, lu: &LuRecord) -> Result<LuRecord> {
        let key = self.keys.lu(&lu.name);
        let mut new = lu.clone();
        new.revision = lu.revision + 1;
        let txn = Txn::new()
            .when([Compare::version(
                key.clone(),
                CompareOp::Equal,
                lu.revision as i64,
            )])
            .and_then([TxnOp::put(key.clone(), encode(&new), None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn("lu_update", txn).await?;
        if resp.succeeded() {
            return Ok(new);
        }
        let r = resp.op_responses();
        Err(revision_error(&lu.name, lu.revision, kvs(&r, 0).first()))
    }

    pub(crate) async fn etcd_lu_put_pair(&self, pair: &[LuRecord; 2]) -> Result<[LuRecord; 2]> {
        if pair[0].name == pair[1].name {
            // etcd refuses a key twice in one txn; as SQLite, the name is taken.
            return Err(StoreError::LuExists(pair[0].name.clone()));
        }
        let mut new = pair.clone();
        let (mut when, mut puts, mut gets) = (Vec::new(), Vec::new(), Vec::new());
        for lu in new.iter_mut() {
            let key = self.keys.lu(&lu.name);
            when.push(if lu.revision == 0 {
                Compare::create_revision(key.clone(), CompareOp::Equal, 0)
            } else {
                Compare::version(key.clone(), CompareOp::Equal, lu.revision as i64)
            });
            lu.revision += 1;
            puts.push(TxnOp::put(key.clone(), encode(lu), None));
            gets.push(TxnOp::get(key, None));
        }
        let txn = Txn::new().when(when).and_then(puts).or_else(gets);
        let resp = self.txn("lu_put_pair", txn).await?;
        if resp.succeeded() {
            return Ok(new);
        }
        let r = resp.op_responses();
        for (i, lu) in pair.iter().enumerate() {
            let found = kvs(&r, i).first();
            if lu.revision == 0 && found.is_some() {
                return Err(StoreError::LuExists(lu.name.clone()));
            }
            if lu.revision != 0 && found.map(|kv| kv.version() as u64) != Some(lu.revision) {
                return Err(revision_error(&lu.name, lu.revision, found));
            }
        }
        // Both compared equal when read again: a write slipped between.
        Err(StoreError::Unavailable {
            op: "lu_put_pair",
            message: "the LUs changed during the write; retry".into(),
        })
    }

    pub(crate) async fn etcd_lu_delete(&self, name: &str, revision: u64) -> Result<()> {
        let (key, locks) = (self.keys.lu(name), self.keys.lu_locks_of(name));
        let txn = Txn::new()
            .when([
                Compare::version(key.clone(), CompareOp::Equal, revision as i64),
                // No lock of it exists (an empty range compares as zeros).
                Compare::create_revision(locks.clone(), CompareOp::Equal, 0).with_prefix(),
            ])
            .and_then([TxnOp::delete(key.clone(), None)])
            .or_else([TxnOp::get(key, None), TxnOp::get(locks, prefix())]);
        let resp = self.txn("lu_delete", txn).await?;
        if resp.succeeded() {
            return Ok(());
        }
        let r = resp.op_responses();
        let found = kvs(&r, 0).first();
        if found.is_some_and(|kv| kv.version() as u64 == revision) {
            if let Some(h) = decode_locks(kvs(&r, 1))?.first() {
                return Err(StoreError::Locked(format!(
                    "LU {name:?} is in use by partition {:?} on host {} ({}); detach it first",
                    h.partition, h.host, h.adapter
                )));
            }
        }
        Err(revision_error(name, revision, found))
    }

    /// `fence`: the token the holder carries; a lock for a claimed
    /// partition needs its current claim (claims.rs).
    pub(crate) async fn etcd_lu_lock(
        &self,
        lock: &LuLock,
        client: &str,
        fence: Option<u64>,
    ) -> Result<LuRecord> {
        let op = "lu_lock";
        let (key, locks) = (self.keys.lu(&lock.lu), self.keys.lu_locks_of(&lock.lu));
        let mut lock = lock.clone();
        if lock.since == 0 {
            lock.since = now_ms();
        }
        let attempts = self.opts.admit_attempts.max(1);
        for attempt in 1..=attempts {
            // One read at one revision: the LU and every lock on it.
            let read = Txn::new().and_then([
                TxnOp::get(key.clone(), None),
                TxnOp::get(locks.clone(), prefix()),
                TxnOp::get(self.claim_key(&lock.partition), None),
            ]);
            let resp = self.txn(op, read).await?;
            let at = resp.header().map_or(0, |h| h.revision());
            let r = resp.op_responses();
            let lu_kv = kvs(&r, 0).first().cloned();
            let lu = lu_kv.as_ref().map(decode_lu).transpose()?;
            let held = decode_locks(kvs(&r, 1))?;
            if let Some(e) = Self::fenced(&lock.partition, fence, kvs(&r, 2).first()) {
                return Err(e);
            }
            check_lock(&lock.lu, lu.as_ref(), &held, &lock, client)?;
            let lu_mod = lu_kv.as_ref().map_or(0, |kv| kv.mod_revision());
            let write = Txn::new()
                .when([
                    Compare::mod_revision(key.clone(), CompareOp::Equal, lu_mod),
                    Compare::mod_revision(locks.clone(), CompareOp::Less, at + 1).with_prefix(),
                    self.fence_compare(&lock.partition, fence),
                ])
                .and_then([TxnOp::put(
                    self.keys.lu_lock(&lock.lu, &lock.partition, &lock.adapter),
                    encode(&lock),
                    None,
                )]);
            if self.txn(op, write).await?.succeeded() {
                return Ok(lu.expect("checked present"));
            }
            tracing::debug!(lu = %lock.lu, attempt, "LU or its locks changed; deciding again");
        }
        Err(StoreError::Unavailable {
            op,
            message: format!("LU locks changed during each of {attempts} attempts; retry later"),
        })
    }

    pub(crate) async fn etcd_lu_locks(&self, lu: Option<&str>) -> Result<Vec<LuLock>> {
        let range = match lu {
            Some(lu) => self.keys.lu_locks_of(lu),
            None => self.keys.lu_locks(),
        };
        let (kvs, _) = self
            .range("lu_locks", range, GetOptions::new().with_prefix())
            .await?;
        decode_locks(&kvs)
    }

    pub(crate) async fn etcd_lu_unlock(
        &self,
        partition: &str,
        adapter: Option<&str>,
    ) -> Result<usize> {
        let (all, _) = self
            .range(
                "lu_unlock",
                self.keys.lu_locks(),
                GetOptions::new().with_prefix(),
            )
            .await?;
        let mut dels = Vec::new();
        for kv in &all {
            let l = decode_lock(kv)?;
            if l.partition == partition && adapter.is_none_or(|a| a == l.adapter) {
                dels.push(TxnOp::delete(kv.key().to_vec(), None));
            }
        }
        let n = dels.len();
        if n > 0 {
            self.txn("lu_unlock", Txn::new().and_then(dels)).await?;
        }
        Ok(n)
    }
}
