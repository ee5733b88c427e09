//! Cluster membership on etcd (issue 14): the record of host `<id>` at
//! `<prefix>/hosts/<id>` (permanent), its liveness as `<prefix>/host-alive/<id>`
//! attached to a lease the daemon keeps alive (the key vanishes with the
//! lease), and `<prefix>/host-names/<name>` holding the id that owns a name.

use crate::{bounded, decode_json, encode, kvs, not_sent, EtcdStore, Member, RETRY_PAUSE};
use bulkhead_store::{name_taken, HostRecord, HostState, HostStatus, Result, StoreError};
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// etcd leases are whole seconds; a ttl under one is one.
pub(crate) fn ttl_secs(ttl: Duration) -> i64 {
    (ttl.as_millis().div_ceil(1000) as i64).max(1)
}

impl EtcdStore {
    fn host_key(&self, id: &str) -> String {
        self.keys.under("hosts", Some(id))
    }

    pub(crate) fn alive_key(&self, id: &str) -> String {
        self.keys.under("host-alive", Some(id))
    }

    fn name_key(&self, name: &str) -> String {
        self.keys.under("host-names", Some(name))
    }

    /// A fresh lease. A request that reached no etcd (a member down) is
    /// sent again, to whichever member the client picks next, until the
    /// timeout, as `EtcdStore::call` does: one member down must not cost a
    /// renewal (the self-fence counts them).
    pub(crate) async fn grant(&self, op: &'static str, ttl: i64) -> Result<i64> {
        let deadline = std::time::Instant::now() + self.opts.timeout;
        loop {
            let mut lease = self.lease.clone();
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match bounded(op, left, lease.grant(ttl, None)).await {
                Ok(r) => return Ok(r.id()),
                Err(StoreError::Unavailable { message, .. })
                    if not_sent(&message) && std::time::Instant::now() + RETRY_PAUSE < deadline =>
                {
                    tracing::debug!(op, %message, "lease grant not delivered; trying again");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) async fn register_host_impl(&self, rec: &HostRecord, ttl: Duration) -> Result<()> {
        let op = "register_host";
        let ttl = ttl_secs(ttl);
        let lease = self.grant(op, ttl).await?;
        let (host, alive, name) = (
            self.host_key(&rec.id),
            self.alive_key(&rec.id),
            self.name_key(&rec.name),
        );
        // The name this id held before, freed if it changes.
        let (old, _) = self.range(op, host.clone(), GetOptions::new()).await?;
        let old_name = old
            .first()
            .and_then(|kv| decode_json::<HostRecord>(kv, "host").ok())
            .map(|h| h.name)
            .filter(|n| *n != rec.name);
        let mut then = vec![
            TxnOp::put(host, encode(rec), None),
            TxnOp::put(alive, "", Some(PutOptions::new().with_lease(lease))),
        ];
        if let Some(n) = &old_name {
            then.push(TxnOp::delete(self.name_key(n), None));
        }
        // The name is ours already, or free (then it becomes ours).
        let ours = Txn::new()
            .when([Compare::value(
                name.clone(),
                CompareOp::Equal,
                rec.id.clone(),
            )])
            .and_then(then.clone())
            .or_else([TxnOp::get(name.clone(), None)]);
        let resp = self.txn(op, ours).await?;
        let mut holder = None;
        if !resp.succeeded() {
            if let Some(kv) = kvs(&resp.op_responses(), 0).first() {
                holder = Some(String::from_utf8_lossy(kv.value()).into_owned());
            } else {
                then.push(TxnOp::put(name.clone(), rec.id.clone(), None));
                let free = Txn::new()
                    .when([Compare::create_revision(name.clone(), CompareOp::Equal, 0)])
                    .and_then(then)
                    .or_else([TxnOp::get(name.clone(), None)]);
                let resp = self.txn(op, free).await?;
                if !resp.succeeded() {
                    holder = Some(
                        kvs(&resp.op_responses(), 0)
                            .first()
                            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                            .unwrap_or_default(),
                    );
                }
            }
        }
        if let Some(h) = holder {
            let mut l = self.lease.clone();
            let _ = bounded(op, self.opts.timeout, l.revoke(lease)).await;
            return Err(name_taken(&rec.name, &h));
        }
        let previous = self
            .leases
            .lock()
            .unwrap()
            .insert(rec.id.clone(), (lease, ttl));
        if let Some((p, _)) = previous.filter(|(p, _)| *p != lease) {
            let mut l = self.lease.clone();
            let _ = bounded(op, self.opts.timeout, l.revoke(p)).await;
        }
        Ok(())
    }

    /// Renews by moving the alive key to a fresh lease and revoking the old
    /// one: unary calls only. (A keep-alive stream that outlived a paused
    /// daemon was seen to hang on every later renewal.) Each try goes to
    /// one member; a member that fails it, or a try the caller abandons
    /// (dropped while waiting), sends the next to the next member.
    pub(crate) async fn renew_host_impl(&self, id: &str) -> Result<()> {
        let not_found =
            || StoreError::NotFound(format!("host {id} (not registered by this store)"));
        let (old, ttl) = self
            .leases
            .lock()
            .unwrap()
            .get(id)
            .copied()
            .ok_or_else(not_found)?;
        let n = self.members.len();
        let mut last = None;
        for _ in 0..n {
            let at = self.pick_member(Duration::from_secs(ttl as u64));
            let mut rotate = Rotate {
                next: &self.next_member,
                shunned: &self.shunned,
                at,
                done: false,
            };
            match self.renew_on(&self.members[at], id, old, ttl).await {
                Ok(fresh) => {
                    rotate.done = true;
                    let Some(fresh) = fresh else {
                        return Err(not_found());
                    };
                    self.leases
                        .lock()
                        .unwrap()
                        .insert(id.to_string(), (fresh, ttl));
                    return Ok(());
                }
                // Safe to send again: a lease granted twice only expires,
                // and the move compares the lease it moves from.
                Err(e @ StoreError::Unavailable { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(not_found))
    }

    /// The member the next try goes to: the one renewals go to now, or
    /// the next after it that no try failed on or was abandoned on within
    /// `shun` (a frozen member would otherwise come round again in three
    /// tries); any one when all were.
    fn pick_member(&self, shun: Duration) -> usize {
        let n = self.members.len();
        let start = self.next_member.load(Ordering::SeqCst);
        let shunned = self.shunned.lock().unwrap();
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| shunned[i].is_none_or(|t| t.elapsed() >= shun))
            .unwrap_or(start % n)
    }

    /// One try on `member`: the fresh lease the alive key is now on, or
    /// `None` when it is on neither `old` nor gone (not this store's).
    async fn renew_on(&self, member: &Member, id: &str, old: i64, ttl: i64) -> Result<Option<i64>> {
        let op = "renew_host";
        let t = self.opts.timeout;
        let mut lease = member.lease.clone();
        let fresh = bounded(op, t, lease.grant(ttl, None)).await?.id();
        // The alive key must still be on the lease this store last put it
        // on, or gone (a lapsed lease: renewing makes the host up again):
        // an abandoned try (its request still in flight) can then never
        // move the key back onto its own, older lease after a later renewal
        // succeeded.
        let (host, alive) = (self.host_key(id), self.alive_key(id));
        let put = || TxnOp::put(alive.clone(), "", Some(PutOptions::new().with_lease(fresh)));
        let exists = || Compare::version(host.clone(), CompareOp::Greater, 0);
        let txn = Txn::new()
            .when([
                exists(),
                Compare::lease(alive.clone(), CompareOp::Equal, old),
            ])
            .and_then([put()])
            .or_else([TxnOp::txn(
                Txn::new()
                    .when([
                        exists(),
                        Compare::create_revision(alive.clone(), CompareOp::Equal, 0),
                    ])
                    .and_then([put()]),
            )]);
        let mut kv = member.kv.clone();
        let moved = bounded(op, t, kv.txn(txn)).await.map(|r| {
            r.succeeded()
                || matches!(
                    r.op_responses().first(),
                    Some(etcd_client::TxnOpResponse::Txn(t)) if t.succeeded()
                )
        });
        // The lease the alive key is not on is revoked (best effort: it
        // expires anyway), off the renewal's path: a renewal is two raft
        // writes, not three, which a loaded host's self-fence deadline feels.
        let stale = if matches!(moved, Ok(true)) {
            old
        } else {
            fresh
        };
        let mut l = self.lease.clone();
        tokio::spawn(async move {
            let _ = bounded(op, t, l.revoke(stale)).await;
        });
        Ok(moved?.then_some(fresh))
    }

    pub(crate) async fn hosts_impl(&self) -> Result<Vec<HostStatus>> {
        let op = "hosts";
        let all = || Some(GetOptions::new().with_prefix());
        // One Txn: records and liveness read at the same revision.
        let txn = Txn::new().and_then([
            TxnOp::get(self.keys.under("hosts", None), all()),
            TxnOp::get(self.keys.under("host-alive", None), all()),
        ]);
        let resp = self.txn(op, txn).await?;
        let r = resp.op_responses();
        let alive: HashSet<Vec<u8>> = kvs(&r, 1).iter().map(|kv| kv.key().to_vec()).collect();
        let mut out = kvs(&r, 0)
            .iter()
            .map(|kv| {
                let record: HostRecord = decode_json(kv, "host")?;
                let up = alive.contains(self.alive_key(&record.id).as_bytes());
                let state = if up { HostState::Up } else { HostState::Lost };
                Ok(HostStatus { record, state })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        Ok(out)
    }
}

/// Keeps the renewals on the member of a try that succeeded; otherwise,
/// including when the caller drops the try mid-way, shuns that member for
/// a while and moves the renewals to the next.
struct Rotate<'a> {
    next: &'a AtomicUsize,
    shunned: &'a std::sync::Mutex<Vec<Option<std::time::Instant>>>,
    at: usize,
    done: bool,
}

impl Drop for Rotate<'_> {
    fn drop(&mut self) {
        let mut shunned = self.shunned.lock().unwrap();
        if self.done {
            shunned[self.at] = None;
            self.next.store(self.at, Ordering::SeqCst);
        } else {
            shunned[self.at] = Some(std::time::Instant::now());
            self.next
                .store((self.at + 1) % shunned.len(), Ordering::SeqCst);
        }
    }
}
