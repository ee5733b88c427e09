//! Grants in bulkheadd: one [`GrantTable`] per daemon behind one async mutex
//! (operations are serialised), the region files it backs, the devices each
//! grant plugs into its holder, and the log.
//!
//! - `ops`: the guest requests (the on-behalf API and, later, the agent relay
//!   share one handler) and the administrator's calls;
//! - `effects`: carrying out the table's `Map`/`Unmap` on partitions;
//! - `reconcile`: after a restart, making the table and the devices agree
//!   (the plan is sans-I/O and unit-tested);
//! - `view`: what the API shows.
//!
//! The table lives in the store (`Store::commit_grant_table`: the table,
//! the mappings and the change's log lines in one transaction).
//! Write order (docs/grants.md, "Crashes"): every change is committed
//! before its devices change, so after a kill -9 the next start
//! finds either a device the table no longer allows (unplugged) or a grant
//! whose device never came (ended); both are fixed by `reconcile`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bulkhead_grant::{GrantConfig, GrantId, GrantTable, ResourceId};
use bulkhead_store::Store;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::api::ApiError;
use crate::config::Config;

mod effects;
mod lifecycle;
mod ops;
mod reconcile;
mod relay;
mod view;

pub(crate) use lifecycle::expiry_task;
pub use reconcile::{plan, Fix, Observed};
pub(crate) use relay::serve_calls;
pub use relay::wire_error;
pub use view::{GrantInfo, GrantLogEntry, RegionView};

/// Where a mapping lives: a holder's device for a grant, the owner's for its
/// region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    pub partition: String,
    /// The QEMU device id ([`grant_device`], [`region_device`]).
    pub device: String,
    /// The guest PCI address of the root port, for regions (the agent's name).
    #[serde(default)]
    pub port: Option<String>,
    pub path: String,
}

/// How a request reached the manager, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The partition's own agent channel.
    Guest,
    /// The host API (an administrator, possibly acting as a partition).
    Api,
    /// The manager itself: expiry, a partition stopping, reconciliation.
    Manager,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Guest => "guest",
            Via::Api => "api",
            Via::Manager => "manager",
        }
    }
}

/// What the store keeps as this host's grant table: the table and the live
/// mappings, written whole with the change's log lines in one transaction.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct State {
    table: GrantTable,
    /// Keyed by [`grant_key`] / [`region_key`].
    #[serde(default)]
    maps: BTreeMap<String, Mapping>,
    /// The store's revision of the document (0: never written).
    #[serde(skip)]
    revision: u64,
}

impl State {
    /// Puts the state back as it was before an operation, keeping the
    /// store's revision (commits made since have moved it on).
    pub(crate) fn restore(&mut self, before: &State) {
        let revision = self.revision;
        *self = before.clone();
        self.revision = revision;
    }
}

/// A log line as the store keeps it (the event is JSON text there).
#[derive(Serialize, Deserialize)]
struct StoredEvent {
    via: String,
    event: serde_json::Value,
}

/// The grant service of one daemon.
pub struct Grants {
    unmap_deadline_ms: u64,
    unplug_timeout_ms: u64,
    log_keep: usize,
    log_retention_ms: u64,
    dir: PathBuf,
    store: Arc<dyn Store>,
    host: String,
    pub(crate) state: tokio::sync::Mutex<State>,
    /// Wakes the expiry task when the next deadline may have moved.
    pub(crate) wake: Notify,
}

pub fn grant_key(g: GrantId) -> String {
    g.to_string()
}

pub fn region_key(r: &ResourceId) -> String {
    r.to_string()
}

/// Device ids the grant service plugs start with this; nothing else may
/// (attach-disk refuses it), so reconciliation knows what is its own.
pub const DEVICE_PREFIX: &str = "bh";

/// The device of `grant` in its holder: `bhg` + 13 hex digits of the id
/// (QEMU adapter ids here are at most 16 characters).
pub fn grant_device(g: GrantId) -> String {
    let s = g.to_string();
    format!("{DEVICE_PREFIX}g{}", &s[s.len() - 13..])
}

/// The device of a region in its owner: `bhr` + 13 hex digits of a hash of
/// the resource and its generation (a region made again is a new device).
pub fn region_device(r: &ResourceId, generation: u64) -> String {
    let h = crate::config::fnv1a(format!("{r}#{generation}").as_bytes());
    format!("{DEVICE_PREFIX}r{:013x}", h & ((1u64 << 52) - 1))
}

/// The backing file of a region: `<dir>/<owner>.<name>.<generation>`
/// (names are `[a-z0-9-]`, so the dots cannot be ambiguous).
pub fn region_file(dir: &Path, r: &ResourceId, generation: u64) -> PathBuf {
    dir.join(format!("{}.{}.{generation}", r.owner, r.name))
}

/// Test-only crash points (`BULKHEAD_FAILPOINT=<name>`): the daemon aborts
/// there, as a kill -9 would. Compiled into debug builds only.
pub(crate) fn failpoint(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("BULKHEAD_FAILPOINT").is_ok_and(|v| v == name) {
        tracing::error!(failpoint = name, "failpoint reached; aborting");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

impl Grants {
    /// Loads this host's grant table from the store (or starts an empty
    /// one) and prepares the region directory.
    pub async fn open(
        cfg: &Config,
        store: Arc<dyn Store>,
        host: &str,
    ) -> anyhow::Result<Arc<Grants>> {
        let g = &cfg.grants;
        let dir = cfg.region_dir();
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
        if !on_tmpfs(&dir) {
            tracing::warn!(dir = %dir.display(), "grants.region_dir is not on a memory file system; region bytes will reach the disk");
        }
        let state = match store.grant_table(host).await? {
            Some(doc) => {
                let mut s: State = serde_json::from_slice(&doc.body)
                    .map_err(|e| anyhow::anyhow!("grant table of {host} in the store: {e}"))?;
                s.table
                    .check()
                    .map_err(|e| anyhow::anyhow!("grant table of {host} in the store: {e}"))?;
                s.revision = doc.revision;
                s
            }
            None => State {
                table: GrantTable::new(GrantConfig {
                    max_depth: g.max_depth,
                    cookie_ttl_ms: g.cookie_ttl_ms,
                    max_live_grants_per_partition: g.max_live_grants_per_partition,
                    max_resources_per_partition: g.max_resources_per_partition,
                }),
                ..State::default()
            },
        };
        Ok(Arc::new(Grants {
            unmap_deadline_ms: g.unmap_deadline_ms,
            unplug_timeout_ms: g.unplug_timeout_ms,
            log_keep: g.log_keep.max(1),
            log_retention_ms: g.log_retention_ms,
            dir,
            store,
            host: host.to_string(),
            state: tokio::sync::Mutex::new(state),
            wake: Notify::new(),
        }))
    }

    /// The one commit of a change: the whole state and the change's log
    /// lines, in one store transaction against the revision last read.
    pub(crate) async fn persist(
        &self,
        st: &mut State,
        via: Via,
        events: impl IntoIterator<Item = serde_json::Value>,
    ) -> Result<(), ApiError> {
        let at = bulkhead_store::now_ms();
        let log: Vec<(u64, String)> = events
            .into_iter()
            .map(|event| {
                let e = StoredEvent {
                    via: via.as_str().into(),
                    event,
                };
                (at, serde_json::to_string(&e).unwrap_or_default())
            })
            .collect();
        let body = serde_json::to_vec(&*st).map_err(|e| ApiError::Internal(e.to_string()))?;
        st.revision = self
            .store
            .commit_grant_table(&self.host, st.revision, &body, &log)
            .await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Log lines after `after`, oldest first.
    pub(crate) async fn log(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<GrantLogEntry>, ApiError> {
        let v = self.store.grant_log(&self.host, after, limit).await?;
        Ok(v.into_iter()
            .map(|e| {
                let (via, event) = match serde_json::from_str::<StoredEvent>(&e.event) {
                    Ok(s) => (s.via, s.event),
                    Err(_) => ("unknown".into(), serde_json::Value::String(e.event)),
                };
                GrantLogEntry {
                    seq: e.seq,
                    at_ms: e.at_ms,
                    via,
                    event,
                }
            })
            .collect())
    }

    /// Drops log lines and ended grants older than the retention (keeping
    /// the newest `log_keep` lines).
    pub(crate) async fn housekeeping(&self) {
        let before = bulkhead_store::now_ms().saturating_sub(self.log_retention_ms);
        if let Err(e) = self
            .store
            .prune_grant_log(&self.host, before, self.log_keep)
            .await
        {
            tracing::warn!(error = %e, "pruning the grant log");
        }
        let mut st = self.state.lock().await;
        let old = st.clone();
        if st.table.prune(bulkhead_grant::Timestamp(before)) > 0 {
            if let Err(e) = self.persist(&mut st, Via::Manager, []).await {
                st.restore(&old);
                tracing::warn!(error = %e, "pruning ended grants");
            }
        }
    }
}

fn on_tmpfs(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct we pass; the path is NUL-terminated.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type == libc::TMPFS_MAGIC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state goes to the store in one commit with its log lines, reads
    /// back whole after a "restart", and a roll-back keeps the store's
    /// revision (a stale revision would make every later commit conflict).
    #[tokio::test]
    async fn state_round_trips_through_the_store_and_roll_backs_keep_the_revision() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        cfg.grants.region_dir = Some(dir.path().join("regions"));
        let store: Arc<dyn Store> = Arc::new(bulkhead_store::SqliteStore::in_memory().unwrap());
        let g = Grants::open(&cfg, store.clone(), "h1").await.unwrap();
        let mut st = g.state.lock().await;
        let before = st.clone();
        let res = bulkhead_grant::Resource::Region {
            owner: "a".parse().unwrap(),
            name: "buf".parse().unwrap(),
            size: bulkhead_grant::RegionSize::try_from(1u64 << 20).unwrap(),
        };
        let rid = res.id();
        let o = st
            .table
            .add_resource(
                &bulkhead_grant::Actor::Admin,
                res,
                bulkhead_grant::Timestamp(1),
            )
            .unwrap();
        st.maps.insert(
            region_key(&rid),
            Mapping {
                partition: "a".into(),
                device: region_device(&rid, 1),
                port: Some("0000:00:10.0".into()),
                path: "/sys/x/resource2".into(),
            },
        );
        let ev = serde_json::to_value(&o.events[0]).unwrap();
        g.persist(&mut st, Via::Api, [ev.clone()]).await.unwrap();
        assert_eq!(st.revision, 1);
        // An operation that fails after a commit goes back to `before`, but
        // the next commit still goes through.
        st.restore(&before);
        assert_eq!(st.revision, 1);
        g.persist(&mut st, Via::Manager, []).await.unwrap();
        let log = g.log(0, 10).await.unwrap();
        assert_eq!((log.len(), log[0].via.as_str()), (1, "api"));
        assert_eq!(log[0].event, ev);
        drop(st);

        // Written again with the region, then read back by a new service.
        let mut st = g.state.lock().await;
        st.table
            .add_resource(
                &bulkhead_grant::Actor::Admin,
                bulkhead_grant::Resource::Disk {
                    owner: "a".parse().unwrap(),
                    disk: "disk0".parse().unwrap(),
                },
                bulkhead_grant::Timestamp(2),
            )
            .unwrap();
        g.persist(&mut st, Via::Api, []).await.unwrap();
        let (table, maps) = (st.table.clone(), st.maps.clone());
        drop(st);
        let g2 = Grants::open(&cfg, store, "h1").await.unwrap();
        let st2 = g2.state.lock().await;
        assert_eq!(
            (st2.table == table, st2.maps == maps, st2.revision),
            (true, true, 3)
        );
    }

    #[test]
    fn device_ids_fit_qemu_and_the_engine() {
        let g: GrantId = "gr-0123456789abcdef".parse().unwrap();
        let d = grant_device(g);
        assert_eq!(d, "bhg3456789abcdef");
        assert!(d.len() <= 16 && bulkhead_engine::spec::valid_name(&d));
        let r = ResourceId {
            kind: bulkhead_grant::ResourceKind::Region,
            owner: "a".parse().unwrap(),
            name: "buf".parse().unwrap(),
        };
        let (d1, d2) = (region_device(&r, 1), region_device(&r, 2));
        assert_ne!(d1, d2);
        assert!(
            d1.len() == 16 && bulkhead_engine::spec::valid_name(&d1),
            "{d1}"
        );
        assert!(d1.starts_with(DEVICE_PREFIX) && d.starts_with(DEVICE_PREFIX));
        assert_eq!(
            region_file(Path::new("/d"), &r, 7),
            PathBuf::from("/d/a.buf.7")
        );
    }
}
