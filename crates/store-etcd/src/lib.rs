//! Bulkhead's cluster store: [`bulkhead_store::Store`] on etcd (v3 API, only
//! what etcd 3.4 has). See README.md for the key layout.
//!
//! - A record is one JSON value at `<prefix>/partitions/<name>`; its revision
//!   is the key's etcd `version` (1 when created, +1 on every write, reset by
//!   a delete), so compare-and-swap is a Txn comparing that version.
//! - An address is unique because the write that gives it also creates
//!   `<prefix>/addresses/<ip>` in the same Txn, compared absent.
//! - Events are keys under `<prefix>/events/<name>/`, numbered by the record
//!   version that wrote them, the oldest trimmed past [`keys::EVENT_HISTORY`].
//! - [`Store::admit`] reads every record at one etcd revision R, runs the
//!   check, and commits only if no record key changed after R; if some did it
//!   decides again, a bounded number of times.
//!
//! Every call is bounded by [`Options::timeout`]; an etcd without a leader,
//! out of reach or too slow gives [`StoreError::Unavailable`].

mod claims;
mod grants;
mod hosts;
mod keys;
mod lus;
mod pools;
mod remote_restart;
mod routes;

use bulkhead_store::{
    now_ms, Admission, Event, GrantLogEntry, GrantTableDoc, LuLock, LuRecord, PartitionRecord,
    Result, Scope, Store, StoreError,
};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, KvClient,
    LeaseClient, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use keys::{Keys, EVENT_HISTORY};
use std::future::Future;
use std::time::{Duration, Instant};

/// How the store talks to etcd.
#[derive(Debug, Clone)]
pub struct Options {
    /// The bound on every call, connecting included. Past it the call fails
    /// with [`StoreError::Unavailable`] (a write may or may not have landed,
    /// as with any lost reply; the revision compare makes a retry safe).
    pub timeout: Duration,
    /// How many times [`Store::admit`] reads and decides again when other
    /// records changed under it, before it gives up as `Unavailable`.
    pub admit_attempts: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            admit_attempts: 64,
        }
    }
}

/// etcd behind [`Store`]. Cheap to share: the client multiplexes calls over
/// its connections to every endpoint.
pub struct EtcdStore {
    kv: KvClient,
    keys: Keys,
    opts: Options,
    /// Membership leases (hosts.rs).
    lease: LeaseClient,
    /// The lease and its ttl (s) of each host registered through this store.
    leases: std::sync::Mutex<std::collections::HashMap<String, (i64, i64)>>,
    /// The lease of each role this store holds (claims.rs).
    roles: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    /// One connection per member, for membership renewals (hosts.rs).
    members: Vec<Member>,
    /// The member the next renewal goes to.
    next_member: std::sync::atomic::AtomicUsize,
    /// When a renewal try last failed or was abandoned on each member.
    shunned: std::sync::Mutex<Vec<Option<Instant>>>,
}

/// A connection to one member alone. The shared client balances calls over
/// every member and may send one renewal after another to a member that
/// takes requests but never answers them (frozen, or cut off with its
/// connection still open); a renewal abandoned on one of these moves the
/// next to another member.
struct Member {
    kv: KvClient,
    lease: LeaseClient,
}

/// Connects to the etcd cluster at `endpoints` (`http://host:port`) with the
/// default [`Options`]; every key lives under `prefix` (e.g. `/bulkhead/v1`),
/// so several stores (or tests) can share one cluster.
pub async fn connect(endpoints: &[impl AsRef<str>], prefix: &str) -> Result<EtcdStore> {
    connect_with(endpoints, prefix, Options::default()).await
}

/// [`connect`] with explicit [`Options`]. Fails with `Unavailable` unless a
/// quorum of the cluster answers within the timeout.
pub async fn connect_with(
    endpoints: &[impl AsRef<str>],
    prefix: &str,
    opts: Options,
) -> Result<EtcdStore> {
    if endpoints.is_empty() {
        return Err(StoreError::Backend {
            op: "connect",
            message: "no etcd endpoint given".into(),
        });
    }
    let t = opts.timeout;
    let options = ConnectOptions::new()
        // Short, so that a member that is down leaves time to try another.
        .with_connect_timeout(t / 4)
        .with_timeout(t)
        .with_keep_alive(Duration::from_secs(2), t)
        // Without a leader the server answers at once instead of waiting.
        .with_require_leader(true);
    let client = bounded(
        "connect",
        t,
        Client::connect(endpoints, Some(options.clone())),
    )
    .await?;
    let mut members = Vec::new();
    for e in endpoints {
        // Lazy: nothing is sent before the first renewal.
        let one = bounded("connect", t, Client::connect([e], Some(options.clone()))).await?;
        members.push(Member {
            kv: one.kv_client(),
            lease: one.lease_client(),
        });
    }
    let store = EtcdStore {
        kv: client.kv_client(),
        keys: Keys::new(prefix),
        opts,
        lease: client.lease_client(),
        leases: Default::default(),
        roles: Default::default(),
        shunned: std::sync::Mutex::new(vec![None; members.len()]),
        members,
        next_member: Default::default(),
    };
    // The client connects lazily: one linearizable read proves a quorum.
    let probe = GetOptions::new().with_prefix().with_count_only();
    store
        .range("connect", store.keys.partitions(), probe)
        .await?;
    Ok(store)
}

/// Runs `fut` within `timeout`, its failure made backend-neutral.
async fn bounded<T>(
    op: &'static str,
    timeout: Duration,
    fut: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(neutral(op, e)),
        Err(_) => Err(StoreError::Unavailable {
            op,
            message: format!("etcd did not answer within {timeout:?}"),
        }),
    }
}

/// etcd's error in words, as a [`StoreError`]: no leader, no connection, a
/// server-side timeout or overload are `Unavailable` (retry later); anything
/// else `Backend`. No client type survives into the error.
fn neutral(op: &'static str, e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    use tonic::Code;
    let (transient, message) = match &e {
        E::GRpcStatus(s) => {
            let m = s.message();
            let transient = matches!(
                s.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
            ) || [
                "no leader",
                "timed out",
                "leader changed",
                "too many requests",
            ]
            .iter()
            .any(|w| m.contains(w));
            (transient, format!("{m} (gRPC {:?})", s.code()))
        }
        E::TransportError(t) => (true, format!("cannot reach etcd: {t}")),
        E::IoError(io) => (true, format!("cannot reach etcd: {io}")),
        other => (false, other.to_string()),
    };
    if transient {
        StoreError::Unavailable { op, message }
    } else {
        StoreError::Backend { op, message }
    }
}

/// Between two tries of a call that reached no etcd.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Whether an `Unavailable` message (from [`neutral`]) says the request was
/// never taken by a member, so sending it again cannot apply it twice. A
/// server-side timeout is not one of these: the write may have been proposed.
/// "leader changed" is: etcd gives it only while waiting for a linearizable
/// read's index, before anything was proposed (a member's death elects a
/// new leader, and the reads of that moment get it).
fn not_sent(message: &str) -> bool {
    [
        "cannot reach etcd",
        "tcp connect error",
        "no leader",
        "leader changed",
    ]
    .iter()
    .any(|w| message.contains(w))
}

fn decode(keys: &Keys, kv: &KeyValue) -> Result<PartitionRecord> {
    let key = String::from_utf8_lossy(kv.key());
    let corrupt = |reason: String| StoreError::Corrupt {
        name: key.to_string(),
        reason,
    };
    let mut rec: PartitionRecord =
        serde_json::from_slice(kv.value()).map_err(|e| corrupt(e.to_string()))?;
    if keys.partition(&rec.name) != key {
        return Err(corrupt(format!("holds the record of {:?}", rec.name)));
    }
    rec.revision = kv.version() as u64;
    Ok(rec)
}

/// A JSON value other than a partition record (`what` says which, for the error).
fn decode_json<T: serde::de::DeserializeOwned>(kv: &KeyValue, what: &str) -> Result<T> {
    serde_json::from_slice(kv.value()).map_err(|e| StoreError::Corrupt {
        name: format!("{what} at {}", String::from_utf8_lossy(kv.key())),
        reason: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(v: &T) -> String {
    // Plain data with string keys always serialises.
    serde_json::to_string(v).expect("record serialises")
}

/// The address without its prefix length: `10.0.0.2/24` and `/16` collide.
fn ip_key(rec: &PartitionRecord) -> Option<String> {
    let ip = &rec.net.as_ref()?.ip;
    Some(ip.split('/').next().unwrap_or(ip).to_string())
}

fn kvs(responses: &[TxnOpResponse], i: usize) -> &[KeyValue] {
    match responses.get(i) {
        Some(TxnOpResponse::Get(g)) => g.kvs(),
        _ => &[],
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Write {
    Insert,
    Update,
}

/// The error for a record found at `found` (0: absent) when `rec` expected
/// otherwise.
fn revision_error(kind: Write, rec: &PartitionRecord, found: u64) -> StoreError {
    match (kind, found) {
        (Write::Insert, _) => StoreError::AlreadyExists(rec.name.clone()),
        (Write::Update, 0) => StoreError::NotFound(rec.name.clone()),
        (Write::Update, found) => StoreError::Conflict {
            name: rec.name.clone(),
            expected: rec.revision,
            found,
        },
    }
}

/// What a write read before deciding.
struct Read {
    /// The record as stored, if it is.
    stored: Option<PartitionRecord>,
    /// Every other record, by name (read only for an admission).
    others: Vec<PartitionRecord>,
    /// The etcd revision the read saw.
    at: i64,
}

impl EtcdStore {
    /// One call on a clone of the KV client, bounded by the timeout. A
    /// request that certainly reached no etcd (a member down, or one without
    /// a leader) is tried again, on whichever endpoint the client picks next,
    /// until the timeout: so one member down costs a retry, not a failure.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: Fn(KvClient) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.opts.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = match bounded(op, left, f(self.kv.clone())).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let unsent = matches!(&e, StoreError::Unavailable { message, .. } if not_sent(message));
            if !unsent || Instant::now() + RETRY_PAUSE >= deadline {
                return Err(match e {
                    StoreError::Unavailable { message, .. } if unsent => StoreError::Unavailable {
                        op,
                        message: format!("{message}; still so after {:?}", self.opts.timeout),
                    },
                    e => e,
                });
            }
            tracing::debug!(op, error = %e, "etcd call not delivered; trying again");
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    async fn txn(&self, op: &'static str, txn: Txn) -> Result<etcd_client::TxnResponse> {
        self.call(op, |mut kv| {
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
    }

    async fn range(
        &self,
        op: &'static str,
        key: String,
        opts: GetOptions,
    ) -> Result<(Vec<KeyValue>, i64)> {
        let mut resp = self
            .call(op, |mut kv| {
                let (key, opts) = (key.clone(), opts.clone());
                async move { kv.get(key, Some(opts)).await }
            })
            .await?;
        let at = resp.header().map_or(0, |h| h.revision());
        Ok((resp.take_kvs(), at))
    }

    async fn read_all(&self, op: &'static str) -> Result<(Vec<PartitionRecord>, i64)> {
        let (kvs, at) = self
            .range(op, self.keys.partitions(), GetOptions::new().with_prefix())
            .await?;
        let mut recs = kvs
            .iter()
            .map(|kv| decode(&self.keys, kv))
            .collect::<Result<Vec<_>>>()?;
        // Keys are escaped names; order by the names themselves.
        recs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((recs, at))
    }

    async fn read(&self, op: &'static str, name: &str, all: bool) -> Result<Read> {
        if all {
            let (mut others, at) = self.read_all(op).await?;
            let stored = others
                .iter()
                .position(|r| r.name == name)
                .map(|i| others.remove(i));
            return Ok(Read { stored, others, at });
        }
        let (kvs, at) = self
            .range(op, self.keys.partition(name), GetOptions::new())
            .await?;
        let stored = kvs.first().map(|kv| decode(&self.keys, kv)).transpose()?;
        Ok(Read {
            stored,
            others: Vec::new(),
            at,
        })
    }

    /// The event put (unless `message` is empty) and the trimming of the
    /// history past [`EVENT_HISTORY`], for the write giving `version`.
    fn event_ops(&self, name: &str, version: u64, message: &str) -> Vec<TxnOp> {
        if message.is_empty() {
            return Vec::new();
        }
        let event = Event {
            at: now_ms(),
            partition: name.to_string(),
            message: message.to_string(),
        };
        let mut ops = vec![TxnOp::put(
            self.keys.event(name, version),
            encode(&event),
            None,
        )];
        if version > EVENT_HISTORY {
            let end = self.keys.event(name, version - EVENT_HISTORY + 1);
            ops.push(TxnOp::delete(
                self.keys.events(name),
                Some(DeleteOptions::new().with_range(end)),
            ));
        }
        ops
    }

    /// Every write: read, decide (the admission check, if any), and commit
    /// in one Txn that compares what was read. Retries only an admission
    /// whose other records changed under it.
    async fn write(
        &self,
        op: &'static str,
        rec: &PartitionRecord,
        event: &str,
        kind: Write,
        check: Option<&Admission>,
    ) -> Result<PartitionRecord> {
        if rec.host.is_empty() {
            return Err(StoreError::Invalid {
                name: rec.name.clone(),
                reason: "no owning host".into(),
            });
        }
        let key = self.keys.partition(&rec.name);
        let attempts = self.opts.admit_attempts.max(1);
        for attempt in 1..=attempts {
            let read = self.read(op, &rec.name, check.is_some()).await?;
            let found = read.stored.as_ref().map_or(0, |s| s.revision);
            let expected = match kind {
                Write::Insert => 0,
                Write::Update => rec.revision,
            };
            if found != expected || (kind == Write::Update && found == 0) {
                return Err(revision_error(kind, rec, found));
            }
            let mut new = rec.clone();
            if let Some(check) = check {
                check(&read.others, &mut new).map_err(|reason| StoreError::Refused {
                    name: rec.name.clone(),
                    reason,
                })?;
                // The key was chosen by the name: a check may complete the
                // record, not move it or disown it.
                if new.name != rec.name || new.host.is_empty() {
                    return Err(StoreError::Invalid {
                        name: rec.name.clone(),
                        reason: "the admission check renamed the record or cleared its host".into(),
                    });
                }
            }
            new.revision = found + 1;
            let (old_ip, new_ip) = (read.stored.as_ref().and_then(ip_key), ip_key(&new));

            let mut when = vec![
                Compare::version(key.clone(), CompareOp::Equal, found as i64),
                // The writer holds the partition's current claim (issue 12).
                self.fence_compare(&rec.name, rec.fence),
            ];
            if check.is_some() {
                // No record changed after the read the check decided on.
                when.push(
                    Compare::mod_revision(self.keys.partitions(), CompareOp::Less, read.at + 1)
                        .with_prefix(),
                );
            }
            let mut then = vec![TxnOp::put(key.clone(), encode(&new), None)];
            if new_ip != old_ip {
                if let Some(ip) = &new_ip {
                    let k = self.keys.address(ip);
                    when.push(Compare::create_revision(k.clone(), CompareOp::Equal, 0));
                    then.push(TxnOp::put(k, new.name.clone(), None));
                }
                if let Some(ip) = &old_ip {
                    then.push(TxnOp::delete(self.keys.address(ip), None));
                }
            }
            then.extend(self.event_ops(&new.name, new.revision, event));
            // On failure, what the compares saw: the record, the newest
            // record change, the address's holder.
            let newest = GetOptions::new()
                .with_prefix()
                .with_keys_only()
                .with_sort(SortTarget::Mod, SortOrder::Descend)
                .with_limit(1);
            let mut why = vec![
                TxnOp::get(key.clone(), None),
                TxnOp::get(self.keys.partitions(), Some(newest)),
                TxnOp::get(self.claim_key(&rec.name), None),
            ];
            if let Some(ip) = &new_ip {
                why.push(TxnOp::get(self.keys.address(ip), None));
            }
            let txn = Txn::new().when(when).and_then(then).or_else(why);
            let resp = self.txn(op, txn).await?;
            if resp.succeeded() {
                return Ok(new);
            }
            let r = resp.op_responses();
            let now = kvs(&r, 0).first().map_or(0, |kv| kv.version() as u64);
            if now != found {
                return Err(revision_error(kind, rec, now));
            }
            if let Some(e) = Self::fenced(&rec.name, rec.fence, kvs(&r, 2).first()) {
                return Err(e);
            }
            let changed = kvs(&r, 1)
                .first()
                .is_some_and(|kv| kv.mod_revision() > read.at);
            if check.is_some() && changed {
                tracing::debug!(name = %rec.name, attempt, "records changed during admission; deciding again");
                continue;
            }
            if new_ip.is_some() && !kvs(&r, 3).is_empty() {
                let ip = new.net.map(|n| n.ip).unwrap_or_default();
                return Err(StoreError::AddressInUse(ip));
            }
            return Err(StoreError::Backend {
                op,
                message: "etcd refused the transaction for no reason it reported".into(),
            });
        }
        Err(StoreError::Unavailable {
            op,
            message: format!(
                "other records changed during each of {attempts} admission attempts; retry later"
            ),
        })
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn insert(&self, record: &PartitionRecord, event: &str) -> Result<PartitionRecord> {
        self.write("insert", record, event, Write::Insert, None)
            .await
    }

    async fn get(&self, name: &str) -> Result<Option<PartitionRecord>> {
        Ok(self.read("get", name, false).await?.stored)
    }

    async fn list(&self, scope: Scope<'_>) -> Result<Vec<PartitionRecord>> {
        let (mut recs, _) = self.read_all("list").await?;
        if let Scope::Host(h) = scope {
            recs.retain(|r| r.host == h);
        }
        Ok(recs)
    }

    async fn update(&self, record: &PartitionRecord, event: &str) -> Result<PartitionRecord> {
        self.write("update", record, event, Write::Update, None)
            .await
    }

    async fn delete(&self, name: &str, revision: u64) -> Result<()> {
        let op = "delete";
        let mut rec = self
            .read(op, name, false)
            .await?
            .stored
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        let found = rec.revision;
        rec.revision = revision;
        if found != revision {
            return Err(revision_error(Write::Update, &rec, found));
        }
        let key = self.keys.partition(name);
        let mut then = vec![
            TxnOp::delete(key.clone(), None),
            TxnOp::delete(
                self.keys.events(name),
                Some(DeleteOptions::new().with_prefix()),
            ),
            // A later partition of the same name starts unclaimed.
            TxnOp::delete(self.claim_key(name), None),
        ];
        if let Some(ip) = ip_key(&rec) {
            then.push(TxnOp::delete(self.keys.address(&ip), None));
        }
        let txn = Txn::new()
            .when([Compare::version(
                key.clone(),
                CompareOp::Equal,
                found as i64,
            )])
            .and_then(then)
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn(op, txn).await?;
        if resp.succeeded() {
            return Ok(());
        }
        let now = kvs(&resp.op_responses(), 0)
            .first()
            .map_or(0, |kv| kv.version() as u64);
        Err(revision_error(Write::Update, &rec, now))
    }

    async fn events(&self, name: &str, limit: usize) -> Result<Vec<Event>> {
        if limit == 0 {
            // etcd reads a limit of 0 as "no limit".
            return Ok(Vec::new());
        }
        let opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(limit as i64);
        let (kvs, _) = self.range("events", self.keys.events(name), opts).await?;
        let mut out = kvs
            .iter()
            .map(|kv| {
                serde_json::from_slice::<Event>(kv.value()).map_err(|e| StoreError::Corrupt {
                    name: name.to_string(),
                    reason: format!("event: {e}"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }

    async fn admit(
        &self,
        record: &PartitionRecord,
        event: &str,
        check: Admission,
    ) -> Result<PartitionRecord> {
        let kind = if record.revision == 0 {
            Write::Insert
        } else {
            Write::Update
        };
        self.write("admit", record, event, kind, Some(&check)).await
    }

    // --- grants (issue 11) ---
    async fn grant_table(&self, host: &str) -> Result<Option<GrantTableDoc>> {
        self.etcd_grant_table(host).await
    }

    async fn commit_grant_table(
        &self,
        host: &str,
        expected: u64,
        body: &[u8],
        log: &[(u64, String)],
    ) -> Result<u64> {
        self.etcd_commit_grant_table(host, expected, body, log)
            .await
    }

    async fn grant_log(&self, host: &str, after: u64, limit: usize) -> Result<Vec<GrantLogEntry>> {
        self.etcd_grant_log(host, after, limit).await
    }

    async fn prune_grant_log(&self, host: &str, before_ms: u64, keep: usize) -> Result<u64> {
        self.etcd_prune_grant_log(host, before_ms, keep).await
    }

    // --- hosts (issue 14) ---

    async fn register_host(&self, host: &bulkhead_store::HostRecord, ttl: Duration) -> Result<()> {
        self.register_host_impl(host, ttl).await
    }

    async fn renew_host(&self, id: &str) -> Result<()> {
        self.renew_host_impl(id).await
    }

    async fn hosts(&self) -> Result<Vec<bulkhead_store::HostStatus>> {
        self.hosts_impl().await
    }

    // --- LUs and clients (issue 14) --- (in lus.rs)
    async fn lu_insert(&self, lu: &LuRecord) -> Result<LuRecord> {
        self.etcd_lu_insert(lu, None).await
    }
    async fn lu_insert_locked(&self, lu: &LuRecord, lock: &LuLock) -> Result<LuRecord> {
        self.etcd_lu_insert(lu, Some(lock)).await
    }
    async fn lu_get(&self, name: &str) -> Result<Option<LuRecord>> {
        self.etcd_lu_get(name).await
    }
    async fn lu_list(&self) -> Result<Vec<LuRecord>> {
        self.etcd_lu_list().await
    }
    async fn lu_update(&self, lu: &LuRecord) -> Result<LuRecord> {
        self.etcd_lu_update(lu).await
    }
    async fn lu_put_pair(&self, pair: &[LuRecord; 2]) -> Result<[LuRecord; 2]> {
        self.etcd_lu_put_pair(pair).await
    }
    async fn lu_delete(&self, name: &str, revision: u64) -> Result<()> {
        self.etcd_lu_delete(name, revision).await
    }
    async fn lu_lock(&self, lock: &LuLock, client: &str) -> Result<LuRecord> {
        self.etcd_lu_lock(lock, client, None).await
    }
    async fn lu_lock_fenced(
        &self,
        lock: &LuLock,
        client: &str,
        fence: Option<u64>,
    ) -> Result<LuRecord> {
        self.etcd_lu_lock(lock, client, fence).await
    }
    async fn lu_locks(&self, lu: Option<&str>) -> Result<Vec<LuLock>> {
        self.etcd_lu_locks(lu).await
    }
    async fn lu_unlock(&self, partition: &str, adapter: Option<&str>) -> Result<usize> {
        self.etcd_lu_unlock(partition, adapter).await
    }

    // --- exposed routes (issue 15) --- (in routes.rs)
    async fn route_put(&self, route: &bulkhead_store::ExposedRoute) -> Result<()> {
        self.etcd_route_put(route).await
    }
    async fn route_remove(
        &self,
        partition: &str,
        domain: Option<&str>,
    ) -> Result<Vec<bulkhead_store::ExposedRoute>> {
        self.etcd_route_remove(partition, domain).await
    }
    async fn routes(&self) -> Result<Vec<bulkhead_store::ExposedRoute>> {
        self.etcd_routes().await
    }
    // --- service pools (issue 17) --- (in pools.rs)
    async fn pool_doc_put(
        &self,
        kind: bulkhead_store::PoolKind,
        name: &str,
        expected: u64,
        body: &str,
    ) -> Result<u64> {
        self.etcd_pool_doc_put(kind, name, expected, body).await
    }
    async fn pool_doc_get(
        &self,
        kind: bulkhead_store::PoolKind,
        name: &str,
    ) -> Result<Option<bulkhead_store::PoolDoc>> {
        self.etcd_pool_doc_get(kind, name).await
    }
    async fn pool_doc_list(
        &self,
        kind: bulkhead_store::PoolKind,
    ) -> Result<Vec<bulkhead_store::PoolDoc>> {
        self.etcd_pool_doc_list(kind).await
    }
    async fn pool_doc_delete(
        &self,
        kind: bulkhead_store::PoolKind,
        name: &str,
        revision: u64,
    ) -> Result<()> {
        self.etcd_pool_doc_delete(kind, name, revision).await
    }
    // --- remote restart (issue 12) --- (in remote_restart.rs)
    async fn operation_put(
        &self,
        op: &bulkhead_store::OperationRecord,
    ) -> Result<bulkhead_store::OperationRecord> {
        self.etcd_operation_put(op).await
    }
    async fn operation_get(
        &self,
        partition: &str,
    ) -> Result<Option<bulkhead_store::OperationRecord>> {
        self.etcd_operation_get(partition).await
    }
    async fn operation_list(&self) -> Result<Vec<bulkhead_store::OperationRecord>> {
        self.etcd_operation_list().await
    }
    // --- host loss and fencing (issue 12) --- (in claims.rs)
    async fn campaign(&self, role: &str, id: &str, ttl: Duration) -> Result<bool> {
        self.etcd_campaign(role, id, ttl).await
    }
    async fn claim(
        &self,
        name: &str,
        lost: &str,
        to: &str,
        revision: u64,
        fence: Option<u64>,
    ) -> Result<u64> {
        self.etcd_claim(name, lost, to, revision, fence).await
    }
}
