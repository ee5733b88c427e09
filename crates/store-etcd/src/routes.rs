//! The trait's route block on etcd (issue 15). A route is one JSON value at
//! `<prefix>/routes/<listener domain>` (escaped). A put reads the key, decides
//! with [`ExposedRoute::taken_by`], and commits only if the key is still as
//! read (its mod revision); a lost race decides again, a bounded number of times.

use super::{encode, EtcdStore};
use bulkhead_store::{ExposedRoute, Result, StoreError};
use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp};

/// Tries of a compare-and-swap before the store reports itself busy.
const TRIES: usize = 16;

fn decode(kv: &KeyValue) -> Result<ExposedRoute> {
    serde_json::from_slice(kv.value()).map_err(|e| StoreError::Corrupt {
        name: String::from_utf8_lossy(kv.key()).into_owned(),
        reason: e.to_string(),
    })
}

fn busy(op: &'static str) -> StoreError {
    StoreError::Unavailable {
        op,
        message: "routes kept changing under the write".into(),
    }
}

impl EtcdStore {
    fn route_key(&self, listener: &str, domain: &str) -> String {
        // A listener (ADDR:PORT) holds no space, so the pair is unambiguous.
        self.keys
            .under("routes", Some(&format!("{listener} {domain}")))
    }

    async fn route_kvs(&self, op: &'static str) -> Result<Vec<KeyValue>> {
        let opts = GetOptions::new().with_prefix();
        Ok(self
            .range(op, self.keys.under("routes", None), opts)
            .await?
            .0)
    }

    pub(crate) async fn etcd_route_put(&self, route: &ExposedRoute) -> Result<()> {
        let key = self.route_key(&route.listener, &route.domain);
        for _ in 0..TRIES {
            let (kvs, _) = self
                .range("route_put", key.clone(), GetOptions::new())
                .await?;
            let seen = match kvs.first() {
                Some(kv) => {
                    if let Some(e) = route.taken_by(&decode(kv)?) {
                        return Err(e);
                    }
                    kv.mod_revision()
                }
                None => 0,
            };
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, seen)])
                .and_then([TxnOp::put(key.clone(), encode(route), None)]);
            if self.txn("route_put", txn).await?.succeeded() {
                return Ok(());
            }
        }
        Err(busy("route_put"))
    }

    pub(crate) async fn etcd_route_remove(
        &self,
        partition: &str,
        domain: Option<&str>,
    ) -> Result<Vec<ExposedRoute>> {
        for _ in 0..TRIES {
            let mut gone = Vec::new();
            let (mut when, mut ops) = (Vec::new(), Vec::new());
            for kv in self.route_kvs("route_remove").await? {
                let r = decode(&kv)?;
                if r.matches(partition, domain) {
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    when.push(Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        kv.mod_revision(),
                    ));
                    ops.push(TxnOp::delete(key, None));
                    gone.push(r);
                }
            }
            if gone.is_empty() {
                return Ok(gone);
            }
            let txn = Txn::new().when(when).and_then(ops);
            if self.txn("route_remove", txn).await?.succeeded() {
                return Ok(gone);
            }
        }
        Err(busy("route_remove"))
    }

    pub(crate) async fn etcd_routes(&self) -> Result<Vec<ExposedRoute>> {
        let mut v = self
            .route_kvs("routes")
            .await?
            .iter()
            .map(decode)
            .collect::<Result<Vec<_>>>()?;
        v.sort_by(|a, b| a.key().cmp(&b.key()));
        Ok(v)
    }
}
