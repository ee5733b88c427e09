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
    now_ms, Admission, DiskRecord, HibernateReason, NetRecord, PartitionRecord, PartitionState,
    RestartPolicy, Scope, Store, StoreError, TemplateLink,
};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

mod checkpoint;
mod devices;
mod disks;
mod ha;
mod hibernate;
pub(crate) use disks::disk_format;
mod lifecycle;
mod lu_mirror;
mod lus;
mod recovery;
mod remote_restart;
pub use remote_restart::FAILPOINT_MID_RESTORE;
mod supervision;
mod templates;

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
    /// This daemon's host id: the owner written into the records it creates.
    host: String,
    cgroups: Cgroups,
    capacity: Capacity,
    subnet: Subnet,
    instance: String,
    /// Where disks and images may come from.
    roots: Roots,
    /// The LU repository.
    repo: crate::lu::Repository,
    live: Mutex<HashMap<String, Live>>,
    /// One operation at a time per partition (start, stop, destroy...).
    op_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Partitions whose console is attached (one attachment at a time).
    consoles: Mutex<HashSet<String>>,
    /// Progress of the hibernations running here, by partition.
    hibernations: Mutex<HashMap<String, watch::Receiver<bulkhead_engine::snapshot::SaveProgress>>>,
    /// The grant table and what it plugged where (`crate::grants`).
    pub(crate) grants: Arc<crate::grants::Grants>,
    /// The shared port (issue 15, `crate::expose`).
    pub(crate) expose: crate::expose::Exposer,
    /// Service pools (issue 17): the allocator and the statements.
    pub(crate) pools: crate::pools::Pools,
    /// Checkpoints taken here (issue 12 item 3).
    checkpoints: checkpoint::Checkpoints,
    /// Host loss and fencing (issue 12, `ha.rs`).
    ha: ha::HaState,
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
    /// Opens the configured store (etcd when `cluster.etcd` names endpoints,
    /// else SQLite at `store.path`, by default `<data_dir>/state.db`) under
    /// this daemon's host id, then as
    /// [`Manager::with_store`].
    pub async fn open(cfg: Config) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        let host = match &cfg.store.host_id {
            Some(h) => h.clone(),
            None => crate::host_id::load_or_create(&cfg.data_dir)?,
        };
        let store: Arc<dyn Store> = if cfg.cluster.etcd.is_empty() {
            let path = cfg.store_path();
            let sqlite = bulkhead_store::SqliteStore::open(&path, &host)
                .map_err(|e| anyhow::anyhow!("state store {}: {e}", path.display()))?;
            Arc::new(sqlite)
        } else {
            let c = &cfg.cluster;
            let opts = bulkhead_store_etcd::Options {
                timeout: Duration::from_millis(c.timeout_ms),
                ..Default::default()
            };
            let etcd = bulkhead_store_etcd::connect_with(&c.etcd, &c.prefix, opts)
                .await
                .map_err(|e| anyhow::anyhow!("cluster store (etcd {:?}): {e}", c.etcd))?;
            Arc::new(etcd)
        };
        Self::with_store(cfg, store, host).await
    }

    /// Runs on the store it is given, as host `host`: prepares the host
    /// (bridge, cgroup tree) and re-adopts the partitions of `host` a
    /// previous daemon left running.
    pub async fn with_store(
        cfg: Config,
        store: Arc<dyn Store>,
        host: String,
    ) -> anyhow::Result<Arc<Self>> {
        crate::host_id::check(&host).map_err(anyhow::Error::msg)?;
        std::fs::create_dir_all(&cfg.data_dir)?;
        // QEMU never runs as root: without its user there is nothing to start.
        bulkhead_engine::jail::lookup_user(&cfg.qemu.user).map_err(|e| {
            anyhow::anyhow!("qemu.user: {e}; create it with scripts/bootstrap or name another")
        })?;
        let roots = Roots::open(&cfg.storage_roots(), &cfg.data_dir, &cfg.image_dir)?;
        let repo = crate::lu::Repository::open(&cfg.repository_dir())?;
        crate::lu::check_apart(repo.root(), roots.roots()).map_err(anyhow::Error::msg)?;
        let layout = Layout::detect()?;
        let instance = cfg.cgroup_instance();
        let cgroups = Cgroups::new(layout, &cfg.cgroup.parent, &instance);
        let capacity = Capacity::detect(&cfg.capacity);
        let subnet = Subnet::parse(&cfg.network.subnet)?;
        let (bridge, inst) = (cfg.network.bridge.clone(), instance.clone());
        bulkhead_hostnet::blocking(move || -> anyhow::Result<()> {
            net::ensure_bridge(&bridge, &subnet)?;
            Ok(net::ensure_filter(&inst)?)
        })
        .await?;
        let grants = crate::grants::Grants::open(&cfg, store.clone(), &host).await?;
        grants.housekeeping().await;
        let expose = crate::expose::Exposer::start(&cfg.portshare).await?;
        let m = Arc::new(Self {
            grants: grants.clone(),
            expose,
            cfg,
            store,
            host,
            cgroups,
            capacity,
            subnet,
            instance,
            roots,
            repo,
            live: Mutex::new(HashMap::new()),
            op_locks: Mutex::new(HashMap::new()),
            consoles: Mutex::new(HashSet::new()),
            hibernations: Mutex::default(),
            pools: Default::default(),
            checkpoints: Default::default(),
            ha: Default::default(),
        });
        m.recover().await?;
        m.recover_operations().await?;
        m.watch_idleness();
        m.watch_checkpoints();
        crate::expose::spawn_sync(&m);
        // Once every running partition is adopted: the table and the devices
        // are made to agree before any request is served.
        m.grants_reconcile().await;
        m.pools_recover().await;
        tokio::spawn(crate::grants::expiry_task(Arc::downgrade(&m), grants));
        Ok(m)
    }

    /// Ends a console attachment made through `ApiRequest::Console`.
    pub fn release_console(&self, name: &str) {
        self.consoles.lock().unwrap().remove(name);
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// This daemon's host id (the owner in the records it creates).
    pub fn host_id(&self) -> &str {
        &self.host
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// The one place every API request is answered, with a typed reply.
    pub async fn handle(self: &Arc<Self>, req: ApiRequest) -> Result<ApiReply, ApiError> {
        use ApiReply as R;
        // A fenced host writes nothing until it is a member again.
        if !matches!(req, ApiRequest::Ping | ApiRequest::OpenApi) {
            self.check_not_fenced()?;
        }
        // A partition another host owns is that host's to act on.
        if let Some(r) = crate::cluster::forward::elsewhere(self, &req).await? {
            return Ok(r);
        }
        // A partition a remote-restart operation holds is the operation's.
        self.operation_guard(&req).await?;
        Ok(match req {
            ApiRequest::OpenApi => R::OpenApi(ApiDocument(crate::openapi::document())),
            ApiRequest::Ping => R::Pong(Pong { ok: true }),
            ApiRequest::Host => R::Host(self.host().await?),
            ApiRequest::List => R::Partitions(self.store.list(Scope::All).await?),
            ApiRequest::Show { name } => R::View(Box::new(self.show(&name).await?)),
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
            ApiRequest::Exec { name, req } => {
                self.wake(&name).await?;
                R::Exec(self.exec(&name, req).await?)
            }
            ApiRequest::Stats { name } => R::Stats(Box::new(self.stats(&name).await?)),
            ApiRequest::Console { name } => {
                self.wake(&name).await?;
                let p = self.live_partition(&name).await?;
                // QEMU's console socket takes one client; a second would hang unserved.
                if !self.consoles.lock().unwrap().insert(name.clone()) {
                    return Err(ApiError::Conflict(format!(
                        "console of {name:?} is already attached; one attachment at a time"
                    )));
                }
                R::ConsoleSocket(p.console_socket())
            }
            ApiRequest::ConsoleLog { name, tail_lines } => {
                self.get(&name).await?;
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
            ApiRequest::ClusterHosts => R::ClusterHosts(crate::cluster::hosts(self).await?),
            ApiRequest::Hibernate { name } => {
                R::Partition(self.hibernate(&name, HibernateReason::Manual).await?)
            }
            ApiRequest::HibernateProgress { name } => {
                R::HibernateProgress(self.hibernate_progress(&name).await?)
            }
            ApiRequest::Resume { name, opts } => {
                R::Partition(self.resume(&name, false, opts.promote_mirror).await?)
            }
            ApiRequest::GrantList { partition } => {
                R::Grants(self.grant_list(partition.as_deref()).await?)
            }
            ApiRequest::GrantShow { id } => R::Grant(Box::new(self.grant_show(&id).await?)),
            ApiRequest::GrantRevoke { id } => R::GuestReply(self.grant_revoke(&id).await?),
            ApiRequest::GrantLog { after, limit } => {
                R::GrantLog(self.grant_log(after, limit).await?)
            }
            ApiRequest::RegionList => R::Regions(self.region_list().await),
            ApiRequest::GrantRequest { name, req } => R::GuestReply(
                self.grant_request(&name, crate::grants::Via::Api, req)
                    .await?,
            ),
            ApiRequest::AttachLu { name, req } => {
                R::DiskAttached(self.attach_lu(&name, req).await?)
            }
            ApiRequest::LuCreate(c) => R::LuCreated(self.lu_create(c).await?),
            ApiRequest::LuList => R::Lus(self.lu_list().await?),
            ApiRequest::LuShow { name } => R::Lu(self.lu_show(&name).await?),
            ApiRequest::LuResize { name, req } => {
                R::Lu(self.lu_resize(&name, req.size_bytes).await?)
            }
            ApiRequest::LuDelete { name } => R::LuDeleted(self.lu_delete(&name).await?),
            ApiRequest::LuRequest(r) => R::LuRequested(self.lu_request(r).await?),
            ApiRequest::LuMirror(c) => R::Lu(self.lu_mirror_command(c).await?),
            ApiRequest::Expose(c) => R::Expose(crate::expose::handle(self, c).await?),
            ApiRequest::Pool(r) => R::Pool(self.pool_handle(r).await?),
            ApiRequest::RemoteRestart(c) => R::RemoteRestart(self.remote_restart(c).await?),
            ApiRequest::Checkpoint(c) => R::Partition(self.checkpoint_command(c).await?),
            ApiRequest::SetHa { name, req } => R::Partition(self.set_ha(&name, req.ha).await?),
        })
    }

    pub(crate) async fn get(&self, name: &str) -> Result<PartitionRecord, ApiError> {
        get_record(&*self.store, name).await
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
    pub(crate) fn running(&self, name: &str) -> Option<Arc<Partition>> {
        self.live
            .lock()
            .unwrap()
            .get(name)
            .map(|l| l.partition.clone())
    }

    async fn live_partition(&self, name: &str) -> Result<Arc<Partition>, ApiError> {
        if let Some(p) = self.running(name) {
            return Ok(p);
        }
        let rec = self.get(name).await?;
        Err(ApiError::Conflict(format!(
            "partition {name:?} is {}, not running",
            rec.state
        )))
    }

    /// A running partition whose agent has answered (409 otherwise).
    pub(crate) async fn ready_partition(&self, name: &str) -> Result<Arc<Partition>, ApiError> {
        let p = self.live_partition(name).await?;
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

    /// A running partition's supervision handles for an exit the caller
    /// asks for: the flag that makes it no failure, and the supervisor's end.
    fn stop_handles(
        &self,
        name: &str,
    ) -> Result<(Arc<AtomicBool>, watch::Receiver<bool>), ApiError> {
        let map = self.live.lock().unwrap();
        let l = map
            .get(name)
            .ok_or_else(|| ApiError::Conflict(format!("partition {name:?} is not running")))?;
        Ok((l.stop_requested.clone(), l.done.clone()))
    }

    /// Names of the partitions whose QEMU this daemon watches.
    pub(crate) fn running_names(&self) -> Vec<String> {
        self.live.lock().unwrap().keys().cloned().collect()
    }

    pub(crate) fn roots(&self) -> &Roots {
        &self.roots
    }

    fn run_dir(&self, name: &str) -> PathBuf {
        self.cfg.data_dir.join("run").join(name)
    }

    fn memory_limit_mib(&self, rec: &PartitionRecord) -> u64 {
        rec.memory_mib + self.cfg.capacity.qemu_overhead_mib
    }

    fn demand(&self, rec: &PartitionRecord) -> Demand {
        demand(rec, self.cfg.capacity.qemu_overhead_mib)
    }

    /// Applies `f` to the stored record, retrying on concurrent writes
    /// (at most [`MAX_CONFLICTS`] times).
    async fn modify(
        &self,
        name: &str,
        event: &str,
        f: impl Fn(&mut PartitionRecord),
    ) -> Result<PartitionRecord, ApiError> {
        modify_record(&*self.store, name, event, f, None).await
    }

    /// As [`Manager::modify`], from a place that cannot wait (a drop guard):
    /// the write is made by a task.
    fn modify_later(
        self: &Arc<Self>,
        name: &str,
        event: String,
        f: impl Fn(&mut PartitionRecord) + Send + Sync + 'static,
    ) {
        let (m, name) = (self.clone(), name.to_string());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(partition = %name, %event, "no runtime to record the change");
            return;
        };
        rt.spawn(async move {
            if let Err(e) = m.modify(&name, &event, f).await {
                tracing::warn!(partition = %name, error = %e, %event, "recording change");
            }
        });
    }

    async fn set_state(
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
        .await
    }

    /// The decision whether one more partition fits on this host, made by
    /// the store inside its write: `active_only` counts running partitions
    /// (a start) rather than every defined one (a create); with `net` it also
    /// gives the record the lowest address no record in the store holds.
    fn admission(&self, active_only: bool, net: bool) -> Admission {
        let capacity = self.capacity;
        let overhead = self.cfg.capacity.qemu_overhead_mib;
        let subnet = self.subnet;
        let subnet_name = self.cfg.network.subnet.clone();
        Arc::new(move |others, rec| {
            let held: Demand = others
                .iter()
                .filter(|r| r.host == rec.host && (!active_only || r.state.is_active()))
                .map(|r| demand(r, overhead))
                .sum();
            capacity
                .admit(held, demand(rec, overhead))
                .map_err(|e| e.to_string())?;
            if net {
                let used: HashSet<_> = others
                    .iter()
                    .filter_map(|r| r.net.as_ref().and_then(|n| net::addr_of(&n.ip)))
                    .collect();
                let ip = subnet
                    .allocate(&used)
                    .ok_or_else(|| format!("no free address left in {subnet_name}"))?;
                let mac = net::mac_for(net::addr_of(&ip).expect("allocated address parses"));
                rec.net = Some(NetRecord { ip, mac });
            }
            Ok(())
        })
    }

    async fn host(&self) -> Result<HostView, ApiError> {
        let recs = self.store.list(Scope::Host(&self.host)).await?;
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

    async fn show(&self, name: &str) -> Result<PartitionView, ApiError> {
        let rec = self.get(name).await?;
        let events = self.store.events(name, 10).await?;
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

/// What a partition holds of its host: its entitlement, and its guest
/// memory plus QEMU's own.
fn demand(rec: &PartitionRecord, qemu_overhead_mib: u64) -> Demand {
    Demand {
        cpu_percent: rec.cpu_percent as u64,
        memory_mib: rec.memory_mib + qemu_overhead_mib,
    }
}

async fn get_record(store: &dyn Store, name: &str) -> Result<PartitionRecord, ApiError> {
    store
        .get(name)
        .await?
        .ok_or_else(|| ApiError::NotFound(name.to_string()))
}

/// Conflicts in a row a read-modify-write survives before giving up: each
/// means another writer changed the record between our read and our write;
/// this many means something keeps rewriting it, and waiting longer would
/// hang the request.
const MAX_CONFLICTS: u32 = 16;

/// Reads the record, applies `f` and writes it back against the revision
/// read (through `check` when given), again on a conflict, at most
/// [`MAX_CONFLICTS`] times; then a 409 naming the partition.
async fn modify_record(
    store: &dyn Store,
    name: &str,
    event: &str,
    f: impl Fn(&mut PartitionRecord),
    check: Option<&Admission>,
) -> Result<PartitionRecord, ApiError> {
    for _ in 0..MAX_CONFLICTS {
        let mut rec = get_record(store, name).await?;
        f(&mut rec);
        let written = match check {
            Some(c) => store.admit(&rec, event, c.clone()).await,
            None => store.update(&rec, event).await,
        };
        match written {
            Ok(r) => return Ok(r),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(refused_is_capacity(e)),
        }
    }
    Err(ApiError::Conflict(format!(
        "partition {name:?} kept changing during this update ({MAX_CONFLICTS} conflicting writes in a row); gave up, try again"
    )))
}

/// Every admission check of the manager's refuses for want of room.
fn refused_is_capacity(e: StoreError) -> ApiError {
    match e {
        StoreError::Refused { reason, .. } => ApiError::OverCapacity(reason),
        e => e.into(),
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
    use super::*;
    use bulkhead_store::{conformance, Event, GrantLogEntry, GrantTableDoc, SqliteStore};
    use std::sync::atomic::AtomicU32;

    /// A store whose updates conflict `conflicts` times before going
    /// through: another writer that keeps changing the record.
    struct Contended {
        inner: SqliteStore,
        conflicts: u32,
        updates: AtomicU32,
    }

    #[async_trait::async_trait]
    impl Store for Contended {
        async fn insert(
            &self,
            r: &PartitionRecord,
            ev: &str,
        ) -> bulkhead_store::Result<PartitionRecord> {
            self.inner.insert(r, ev).await
        }
        async fn get(&self, name: &str) -> bulkhead_store::Result<Option<PartitionRecord>> {
            self.inner.get(name).await
        }
        async fn list(&self, scope: Scope<'_>) -> bulkhead_store::Result<Vec<PartitionRecord>> {
            self.inner.list(scope).await
        }
        async fn update(
            &self,
            r: &PartitionRecord,
            ev: &str,
        ) -> bulkhead_store::Result<PartitionRecord> {
            if self.updates.fetch_add(1, Ordering::SeqCst) < self.conflicts {
                return Err(StoreError::Conflict {
                    name: r.name.clone(),
                    expected: r.revision,
                    found: r.revision + 1,
                });
            }
            self.inner.update(r, ev).await
        }
        async fn delete(&self, name: &str, revision: u64) -> bulkhead_store::Result<()> {
            self.inner.delete(name, revision).await
        }
        async fn events(&self, name: &str, limit: usize) -> bulkhead_store::Result<Vec<Event>> {
            self.inner.events(name, limit).await
        }
        async fn admit(
            &self,
            r: &PartitionRecord,
            ev: &str,
            check: Admission,
        ) -> bulkhead_store::Result<PartitionRecord> {
            self.inner.admit(r, ev, check).await
        }

        // --- grants (issue 11) ---
        async fn grant_table(&self, host: &str) -> bulkhead_store::Result<Option<GrantTableDoc>> {
            self.inner.grant_table(host).await
        }
        async fn commit_grant_table(
            &self,
            host: &str,
            expected: u64,
            body: &[u8],
            log: &[(u64, String)],
        ) -> bulkhead_store::Result<u64> {
            self.inner
                .commit_grant_table(host, expected, body, log)
                .await
        }
        async fn grant_log(
            &self,
            host: &str,
            after: u64,
            limit: usize,
        ) -> bulkhead_store::Result<Vec<GrantLogEntry>> {
            self.inner.grant_log(host, after, limit).await
        }
        async fn prune_grant_log(
            &self,
            host: &str,
            before_ms: u64,
            keep: usize,
        ) -> bulkhead_store::Result<u64> {
            self.inner.prune_grant_log(host, before_ms, keep).await
        }
    }

    async fn contended(conflicts: u32) -> Contended {
        let inner = SqliteStore::in_memory().unwrap();
        inner
            .insert(&conformance::record("busy"), "created")
            .await
            .unwrap();
        Contended {
            inner,
            conflicts,
            updates: AtomicU32::new(0),
        }
    }

    #[tokio::test]
    async fn modify_gives_up_after_bounded_conflicts() {
        let s = contended(u32::MAX).await;
        // Bounded by the deadline: a modify that retries forever fails here.
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            modify_record(&s, "busy", "poked", |r| r.restarts += 1, None),
        )
        .await
        .expect("modify gave up in time");
        let e = r.unwrap_err();
        assert_eq!(e.status(), 409, "{e}");
        assert!(
            e.to_string().contains("\"busy\""),
            "names the partition: {e}"
        );
        assert_eq!(s.updates.load(Ordering::SeqCst), MAX_CONFLICTS);
        let rec = s.get("busy").await.unwrap().unwrap();
        assert_eq!((rec.restarts, rec.revision), (0, 1), "nothing written");
    }

    #[tokio::test]
    async fn modify_survives_fewer_conflicts() {
        let s = contended(MAX_CONFLICTS - 1).await;
        let rec = modify_record(&s, "busy", "poked", |r| r.restarts += 1, None)
            .await
            .unwrap();
        assert_eq!((rec.restarts, rec.revision), (1, 2));
        let ev = s.events("busy", 5).await.unwrap();
        assert_eq!(ev.last().unwrap().message, "poked");
    }

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
