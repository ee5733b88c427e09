//! Host loss and fencing on etcd (issue 12).
//!
//! - A role (the orchestrator) is `<prefix>/roles/<role>` holding the id of
//!   its holder, attached to a lease of the holder's; it vanishes with the
//!   lease when the holder stops renewing it, and the next caller takes it.
//! - A partition's claim is `<prefix>/claims/<name>` holding the id of the
//!   host that claimed it after its previous host was lost. The claim's
//!   `mod_revision` is the fencing token: every record write and every LU
//!   lock for the partition compares it with the token the writer carries
//!   (an absent claim has revision 0, which matches "no token"), so a stale
//!   holder's writes fail in etcd itself, whatever that holder believes.

use crate::hosts::ttl_secs;
use crate::{bounded, kvs, EtcdStore};
use bulkhead_store::{Result, StoreError};
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use std::time::Duration;

impl EtcdStore {
    pub(crate) fn claim_key(&self, name: &str) -> String {
        self.keys.under("claims", Some(name))
    }

    fn role_key(&self, role: &str) -> String {
        self.keys.under("roles", Some(role))
    }

    /// The compare every write for partition `name` carries: its claim is
    /// still the one `fence` names.
    pub(crate) fn fence_compare(&self, name: &str, fence: Option<u64>) -> Compare {
        Compare::mod_revision(
            self.claim_key(name),
            CompareOp::Equal,
            fence.unwrap_or(0) as i64,
        )
    }

    /// The error for a write whose fence compare failed, from the claim as
    /// read (`None`: absent), or `None` when the fence was not the cause.
    pub(crate) fn fenced(
        name: &str,
        fence: Option<u64>,
        claim: Option<&etcd_client::KeyValue>,
    ) -> Option<StoreError> {
        let current = claim.map_or(0, |kv| kv.mod_revision() as u64);
        (current != fence.unwrap_or(0)).then(|| StoreError::Fenced {
            name: name.to_string(),
            held: fence.unwrap_or(0),
            current,
            holder: claim
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                .unwrap_or_else(|| "(none)".into()),
        })
    }

    pub(crate) async fn etcd_campaign(&self, role: &str, id: &str, ttl: Duration) -> Result<bool> {
        let op = "campaign";
        let key = self.role_key(role);
        let (held, _) = self.range(op, key.clone(), GetOptions::new()).await?;
        if held.first().is_some_and(|kv| kv.value() != id.as_bytes()) {
            return Ok(false);
        }
        let mut lease = self.lease.clone();
        let fresh = self.grant(op, ttl_secs(ttl)).await?;
        let put = || TxnOp::put(key.clone(), id, Some(PutOptions::new().with_lease(fresh)));
        // Ours already (moved to the fresh lease), or free.
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Equal, id)])
            .and_then([put()])
            .or_else([TxnOp::txn(
                Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([put()]),
            )]);
        let resp = self.txn(op, txn).await;
        let won = match &resp {
            Ok(r) if r.succeeded() => true,
            Ok(r) => matches!(
                r.op_responses().first(),
                Some(etcd_client::TxnOpResponse::Txn(t)) if t.succeeded()
            ),
            Err(_) => false,
        };
        let old = {
            let mut roles = self.roles.lock().unwrap();
            if won {
                roles.insert(role.to_string(), fresh)
            } else {
                Some(fresh)
            }
        };
        // The lease the key is not on is revoked (best effort: it expires anyway).
        if let Some(stale) = old.filter(|l| *l != fresh || !won) {
            let _ = bounded(op, self.opts.timeout, lease.revoke(stale)).await;
        }
        resp.map(|_| won)
    }

    pub(crate) async fn etcd_claim(
        &self,
        name: &str,
        lost: &str,
        to: &str,
        revision: u64,
        fence: Option<u64>,
    ) -> Result<u64> {
        let op = "claim";
        let (claim, record, alive) = (
            self.claim_key(name),
            self.keys.partition(name),
            self.alive_key(lost),
        );
        let txn = Txn::new()
            .when([
                Compare::create_revision(alive.clone(), CompareOp::Equal, 0),
                Compare::version(record.clone(), CompareOp::Equal, revision as i64),
                self.fence_compare(name, fence),
            ])
            .and_then([TxnOp::put(claim.clone(), to, None)])
            .or_else([
                TxnOp::get(alive, None),
                TxnOp::get(record, None),
                TxnOp::get(claim.clone(), None),
            ]);
        let resp = self.txn(op, txn).await?;
        if resp.succeeded() {
            let token = resp.header().map_or(0, |h| h.revision()) as u64;
            return Ok(token);
        }
        let r = resp.op_responses();
        let reason = if !kvs(&r, 0).is_empty() {
            format!("host {lost} holds its lease again")
        } else if kvs(&r, 1).first().map_or(0, |kv| kv.version() as u64) != revision {
            format!("the record changed (revision {revision} expected)")
        } else {
            Self::fenced(name, fence, kvs(&r, 2).first())
                .map_or_else(|| "etcd refused it".into(), |e| e.to_string())
        };
        Err(StoreError::NotClaimed {
            name: name.to_string(),
            reason,
        })
    }
}
