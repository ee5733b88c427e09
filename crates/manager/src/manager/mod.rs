//! The registry: every [`ApiRequest`] is answered here. The lifecycle
//! (create, start, stop, destroy), the supervision of running partitions and
//! the recovery after a restart live in the submodules of the same names.

use crate::api::*;
use crate::capacity::{Capacity, Demand};
use crate::cgroup::{Cgroups, Layout};
use crate::config::Config;
use crate::net::{self, Subnet};
use crate::storage::Roots;
use bulkhead_engine::{
    AdapterSpec, CpuModel, DiskSpec, LaunchOptions, NetSpec, Partition, PartitionSpec,
};
use bulkhead_store::{
    now_ms, NetRecord, PartitionRecord, PartitionState, RestartPolicy, Store, StoreError,
};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

mod disks;
mod lifecycle;
mod recovery;
mod supervision;

/// A partition whose QEMU this daemon watches.
struct Live {
    partition: Arc<Partition>,
    /// Set before a requested stop, so the exit is recorded as stopped, not failed.
    stop_requested: Arc<AtomicBool>,
    /// Becomes `Some` once the agent answered (Ok) or the start failed (Err).
    ready: watch::Receiver<Option<Result<(), String>>>,
    /// Becomes true once the supervisor has recorded the exit and cleaned up.
    done: watch::Receiver<bool>,
}

pub struct Manager {
    cfg: Config,
    store: Arc<dyn Store>,
    cgroups: Cgroups,
    capacity: Capacity,
    subnet: Subnet,
    instance: String,
    /// Where disks and images may come from.
    roots: Roots,
    live: Mutex<HashMap<String, Live>>,
    /// One operation at a time per partition (start, stop, destroy...).
    op_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Serialises capacity and address decisions.
    admission: tokio::sync::Mutex<()>,
    /// Partitions whose console is attached (one attachment at a time).
    consoles: Mutex<HashSet<String>>,
}

/// Tasks a partition's cgroup may hold beyond one per vCPU: QEMU's main,
/// RCU and I/O worker threads (its block thread pool alone may reach 64).
const PIDS_BASE: u32 = 128;

fn engine_err(e: impl std::fmt::Display) -> ApiError {
    ApiError::Engine(e.to_string())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

impl Manager {
    /// Opens the store, prepares the host (bridge, cgroup tree) and re-adopts
    /// the partitions a previous daemon left running.
    pub async fn open(cfg: Config) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        // QEMU never runs as root: without its user there is nothing to start.
        bulkhead_engine::jail::lookup_user(&cfg.qemu.user).map_err(|e| {
            anyhow::anyhow!("qemu.user: {e}; create it with scripts/bootstrap or name another")
        })?;
        let roots = Roots::open(&cfg.storage_roots(), &cfg.data_dir, &cfg.image_dir)?;
        let store = bulkhead_store::SqliteStore::open(&cfg.data_dir.join("state.db"))?;
        let layout = Layout::detect()?;
        let instance = cfg.cgroup_instance();
        let cgroups = Cgroups::new(layout, &cfg.cgroup.parent, &instance);
        let capacity = Capacity::detect(&cfg.capacity);
        let subnet = Subnet::parse(&cfg.network.subnet)?;
        net::ensure_bridge(&cfg.network.bridge, &subnet)?;
        net::ensure_filter(&instance)?;
        let m = Arc::new(Self {
            cfg,
            store: Arc::new(store),
            cgroups,
            capacity,
            subnet,
            instance,
            roots,
            live: Mutex::new(HashMap::new()),
            op_locks: Mutex::new(HashMap::new()),
            admission: tokio::sync::Mutex::new(()),
            consoles: Mutex::new(HashSet::new()),
        });
        m.recover().await?;
        Ok(m)
    }

    /// Ends a console attachment made through `ApiRequest::Console`.
    pub fn release_console(&self, name: &str) {
        self.consoles.lock().unwrap().remove(name);
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// The one place every API request is answered, with a typed reply.
    pub async fn handle(self: &Arc<Self>, req: ApiRequest) -> Result<ApiReply, ApiError> {
        use ApiReply as R;
        Ok(match req {
            ApiRequest::OpenApi => R::OpenApi(ApiDocument(crate::openapi::document())),
            ApiRequest::Ping => R::Pong(Pong { ok: true }),
            ApiRequest::Host => R::Host(self.host()?),
            ApiRequest::List => R::Partitions(self.store.list()?),
            ApiRequest::Show { name } => R::View(Box::new(self.show(&name)?)),
            ApiRequest::Create(c) => R::Created(self.create(c).await?),
            ApiRequest::Start { name, opts } => R::Partition(self.start(&name, opts.wait).await?),
            ApiRequest::Stop { name, opts } => R::Partition(self.stop(&name, opts).await?),
            ApiRequest::Restart { name, opts } => {
                R::Partition(self.restart(&name, opts.wait).await?)
            }
            ApiRequest::Destroy { name, force } => {
                self.destroy(&name, force).await?;
                R::Destroyed(Destroyed { destroyed: name })
            }
            ApiRequest::Exec { name, req } => R::Exec(self.exec(&name, req).await?),
            ApiRequest::Stats { name } => R::Stats(Box::new(self.stats(&name).await?)),
            ApiRequest::Console { name } => {
                let p = self.live_partition(&name)?;
                // QEMU's console socket takes one client; a second would hang unserved.
                if !self.consoles.lock().unwrap().insert(name.clone()) {
                    return Err(ApiError::Conflict(format!(
                        "console of {name:?} is already attached; one attachment at a time"
                    )));
                }
                R::ConsoleSocket(p.console_socket())
            }
            ApiRequest::ConsoleLog { name, tail_lines } => {
                self.get(&name)?;
                let log = self.run_dir(&name).join("console.log");
                R::ConsoleLog(ConsoleLines {
                    lines: bulkhead_engine::tail_lines(&log, tail_lines),
                })
            }
            ApiRequest::AttachDisk { name, req } => {
                R::DiskAttached(self.attach_disk(&name, req).await?)
            }
            ApiRequest::DetachDisk { name, id } => {
                R::DiskDetached(self.detach_disk(&name, &id).await?)
            }
        })
    }

    fn get(&self, name: &str) -> Result<PartitionRecord, ApiError> {
        self.store
            .get(name)?
            .ok_or_else(|| ApiError::NotFound(name.to_string()))
    }

    fn op_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.op_locks
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// The partition's running QEMU, if this daemon supervises one.
    fn running(&self, name: &str) -> Option<Arc<Partition>> {
        self.live
            .lock()
            .unwrap()
            .get(name)
            .map(|l| l.partition.clone())
    }

    fn live_partition(&self, name: &str) -> Result<Arc<Partition>, ApiError> {
        if let Some(p) = self.running(name) {
            return Ok(p);
        }
        let rec = self.get(name)?;
        Err(ApiError::Conflict(format!(
            "partition {name:?} is {}, not running",
            rec.state
        )))
    }

    /// A running partition whose agent has answered (409 otherwise).
    fn ready_partition(&self, name: &str) -> Result<Arc<Partition>, ApiError> {
        let p = self.live_partition(name)?;
        let ready = {
            let map = self.live.lock().unwrap();
            map.get(name).map(|l| l.ready.borrow().clone())
        };
        if !matches!(ready, Some(Some(Ok(())))) {
            return Err(ApiError::Conflict(format!(
                "partition {name:?} is still starting"
            )));
        }
        Ok(p)
    }

    fn run_dir(&self, name: &str) -> PathBuf {
        self.cfg.data_dir.join("run").join(name)
    }

    fn memory_limit_mib(&self, rec: &PartitionRecord) -> u64 {
        rec.memory_mib + self.cfg.capacity.qemu_overhead_mib
    }

    fn demand(&self, rec: &PartitionRecord) -> Demand {
        Demand {
            cpu_percent: rec.cpu_percent as u64,
            memory_mib: self.memory_limit_mib(rec),
        }
    }

    /// Applies `f` to the stored record, retrying on concurrent writes.
    fn modify(
        &self,
        name: &str,
        event: &str,
        f: impl Fn(&mut PartitionRecord),
    ) -> Result<PartitionRecord, ApiError> {
        loop {
            let mut rec = self.get(name)?;
            f(&mut rec);
            match self.store.update(&rec, event) {
                Ok(r) => return Ok(r),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn set_state(
        &self,
        name: &str,
        state: PartitionState,
        event: &str,
        f: impl Fn(&mut PartitionRecord),
    ) -> Result<PartitionRecord, ApiError> {
        self.modify(name, event, |r| {
            r.state = state;
            r.state_since = now_ms();
            f(r);
        })
    }

    fn host(&self) -> Result<HostView, ApiError> {
        let recs = self.store.list()?;
        Ok(HostView {
            version: env!("CARGO_PKG_VERSION").into(),
            cgroup_version: self.cgroups.layout().version(),
            bridge: self.cfg.network.bridge.clone(),
            subnet: self.cfg.network.subnet.clone(),
            capacity: self.capacity,
            allocated: recs.iter().map(|r| self.demand(r)).sum(),
            running: recs
                .iter()
                .filter(|r| r.state.is_active())
                .map(|r| self.demand(r))
                .sum(),
            partitions: recs.len(),
        })
    }

    fn show(&self, name: &str) -> Result<PartitionView, ApiError> {
        let rec = self.get(name)?;
        let events = self.store.events(name, 10)?;
        Ok(PartitionView {
            memory_limit_mib: self.memory_limit_mib(&rec),
            tap: rec
                .net
                .as_ref()
                .map(|_| net::tap_name(&self.instance, name)),
            console_log: Some(
                self.run_dir(name)
                    .join("console.log")
                    .to_string_lossy()
                    .into_owned(),
            ),
            hotplugged_disks: self.hotplugged_disks(name),
            record: rec,
            events,
        })
    }

    fn image_dir(&self, rec_image: Option<&str>) -> PathBuf {
        rec_image
            .map(PathBuf::from)
            .unwrap_or_else(|| self.cfg.image_dir.clone())
    }
}

/// Runs its closure when dropped (an early return, a panic) unless disarmed.
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> OnDrop<F> {
    fn new(f: F) -> Self {
        Self(Some(f))
    }

    fn disarm(mut self) {
        self.0 = None;
    }
}

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

pub fn rotate_if_larger(log: &Path, max: u64) -> std::io::Result<bool> {
    let len = match std::fs::metadata(log) {
        Ok(m) => m.len(),
        Err(_) => return Ok(false),
    };
    if len <= max {
        return Ok(false);
    }
    let old = log.with_extension("log.1");
    std::fs::copy(log, &old)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(log)?
        .set_len(0)?;
    Ok(true)
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = l.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("data_dir", &self.cfg.data_dir)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rotation_keeps_one_generation() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("console.log");
        std::fs::write(&log, vec![b'x'; 100]).unwrap();
        assert!(!super::rotate_if_larger(&log, 100).unwrap());
        std::fs::write(&log, vec![b'y'; 150]).unwrap();
        assert!(super::rotate_if_larger(&log, 100).unwrap());
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        assert_eq!(
            std::fs::read(d.path().join("console.log.1")).unwrap().len(),
            150
        );
    }
}
