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
//! Write order (docs/grants.md, "Crashes"): every change is committed
//! (persisted) before its devices change, so after a kill -9 the next start
//! finds either a device the table no longer allows (unplugged) or a grant
//! whose device never came (ended); both are fixed by `reconcile`.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bulkhead_grant::{GrantConfig, GrantId, GrantTable, ResourceId};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::api::ApiError;
use crate::config::Config;

mod effects;
mod lifecycle;
mod ops;
mod reconcile;
mod view;

pub(crate) use lifecycle::expiry_task;
pub use reconcile::{plan, Fix, Observed};
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

/// Everything persisted: the table, the live mappings and the log. One
/// document, written whole, so a change and its log entries are one commit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct State {
    table: GrantTable,
    /// Keyed by [`grant_key`] / [`region_key`].
    #[serde(default)]
    maps: BTreeMap<String, Mapping>,
    #[serde(default)]
    next_seq: u64,
    #[serde(default)]
    log: VecDeque<GrantLogEntry>,
}

/// The grant service of one daemon.
pub struct Grants {
    unmap_deadline_ms: u64,
    unplug_timeout_ms: u64,
    log_keep: usize,
    dir: PathBuf,
    state_path: PathBuf,
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
    /// Loads the persisted state (or starts an empty table) and prepares the
    /// region directory.
    pub fn open(cfg: &Config) -> anyhow::Result<Arc<Grants>> {
        let g = &cfg.grants;
        let dir = cfg.region_dir();
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
        if !on_tmpfs(&dir) {
            tracing::warn!(dir = %dir.display(), "grants.region_dir is not on a memory file system; region bytes will reach the disk");
        }
        let state_path = cfg.data_dir.join("grants.json");
        let state = match std::fs::read(&state_path) {
            Ok(b) => {
                let s: State = serde_json::from_slice(&b)
                    .map_err(|e| anyhow::anyhow!("grant state {}: {e}", state_path.display()))?;
                s.table
                    .check()
                    .map_err(|e| anyhow::anyhow!("grant state {}: {e}", state_path.display()))?;
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
                table: GrantTable::new(GrantConfig {
                    max_depth: g.max_depth,
                    cookie_ttl_ms: g.cookie_ttl_ms,
                    max_live_grants_per_partition: g.max_live_grants_per_partition,
                    max_resources_per_partition: g.max_resources_per_partition,
                }),
                ..State::default()
            },
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", state_path.display())),
        };
        Ok(Arc::new(Grants {
            unmap_deadline_ms: g.unmap_deadline_ms,
            unplug_timeout_ms: g.unplug_timeout_ms,
            log_keep: g.log_keep.max(1),
            dir,
            state_path,
            state: tokio::sync::Mutex::new(state),
            wake: Notify::new(),
        }))
    }

    /// The one commit of a change: appends its log entries and writes the
    /// whole state (temporary file, fsync, rename). Until the store grows a
    /// grant table this is the seam where it will go.
    pub(crate) fn persist(
        &self,
        st: &mut State,
        via: Via,
        events: impl IntoIterator<Item = serde_json::Value>,
    ) -> Result<(), ApiError> {
        for event in events {
            st.next_seq += 1;
            st.log.push_back(GrantLogEntry {
                seq: st.next_seq,
                at_ms: bulkhead_store::now_ms(),
                via: via.as_str().into(),
                event,
            });
        }
        while st.log.len() > self.log_keep {
            st.log.pop_front();
        }
        let bytes = serde_json::to_vec(&*st).map_err(|e| ApiError::Internal(e.to_string()))?;
        write_atomic(&self.state_path, &bytes)
            .map_err(|e| ApiError::Internal(format!("writing grant state: {e}")))?;
        self.wake.notify_one();
        Ok(())
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(d) = path.parent() {
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(())
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
