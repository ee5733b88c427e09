//! The registry and lifecycle: every [`ApiRequest`] is handled here, and each
//! running partition has a supervisor task that records how its QEMU ended
//! and applies the restart policy.

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
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

mod disks;

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

    /// The one place every API request is answered.
    pub async fn handle(self: &Arc<Self>, req: ApiRequest) -> Result<Value, ApiError> {
        match req {
            ApiRequest::Ping => Ok(json!({ "ok": true })),
            ApiRequest::Host => self.host().map(to_json),
            ApiRequest::List => Ok(to_json(self.store.list()?)),
            ApiRequest::Show { name } => self.show(&name).map(to_json),
            ApiRequest::Create(c) => self.create(c).await.map(to_json),
            ApiRequest::Start { name, opts } => self.start(&name, opts.wait).await.map(to_json),
            ApiRequest::Stop { name, opts } => self.stop(&name, opts).await.map(to_json),
            ApiRequest::Restart { name, opts } => self.restart(&name, opts.wait).await.map(to_json),
            ApiRequest::Destroy { name, force } => {
                self.destroy(&name, force).await?;
                Ok(json!({ "destroyed": name }))
            }
            ApiRequest::Exec { name, req } => self.exec(&name, req).await.map(to_json),
            ApiRequest::Stats { name } => self.stats(&name).await.map(to_json),
            ApiRequest::Console { name } => {
                let p = self.live_partition(&name)?;
                // QEMU's console socket takes one client; a second would hang unserved.
                if !self.consoles.lock().unwrap().insert(name.clone()) {
                    return Err(ApiError::Conflict(format!(
                        "console of {name:?} is already attached; one attachment at a time"
                    )));
                }
                Ok(json!({ "socket": p.console_socket() }))
            }
            ApiRequest::ConsoleLog { name, tail_lines } => {
                self.get(&name)?;
                let log = self.run_dir(&name).join("console.log");
                Ok(json!({ "lines": bulkhead_engine::tail_lines(&log, tail_lines) }))
            }
            ApiRequest::AttachDisk { name, req } => self.attach_disk(&name, req).await.map(to_json),
            ApiRequest::DetachDisk { name, id } => self.detach_disk(&name, &id).await.map(to_json),
        }
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

    fn validate(&self, c: &CreatePartition) -> Result<(), ApiError> {
        let bad = |m: String| Err(ApiError::BadRequest(m));
        check_name(&c.name)?;
        let max_vcpus = self
            .cfg
            .partitions
            .max_vcpus
            .min(bulkhead_engine::spec::MAX_VCPUS);
        if c.vcpus == 0 || c.vcpus > max_vcpus {
            return bad(format!("vcpus must be 1-{max_vcpus}, got {}", c.vcpus));
        }
        let min_mem = self
            .cfg
            .partitions
            .min_memory_mib
            .max(bulkhead_engine::spec::MIN_MEMORY_MIB);
        if c.memory_mib < min_mem {
            return bad(format!(
                "memory {} MiB is too small: at least {min_mem} MiB",
                c.memory_mib
            ));
        }
        if c.memory_mib > self.capacity.host_memory_mib {
            return bad(format!(
                "memory {} MiB is more than the host has ({} MiB)",
                c.memory_mib, self.capacity.host_memory_mib
            ));
        }
        if c.cpu_percent == 0 || c.cpu_percent > c.vcpus * 100 {
            return bad(format!(
                "cpu entitlement must be 1-{}% for {} vCPU(s) (100% is one host CPU), got {}%",
                c.vcpus * 100,
                c.vcpus,
                c.cpu_percent
            ));
        }
        let image = self.image_dir(c.image.as_deref());
        for f in ["vmlinux", "initramfs.cpio.gz"] {
            if !image.join(f).is_file() {
                return bad(format!(
                    "image {} has no {f} (build one with `bulkhead image build`)",
                    image.display()
                ));
            }
        }
        self.roots
            .check_image(&image)
            .map_err(ApiError::BadRequest)?;
        if let Some(cl) = &c.cmdline {
            bulkhead_engine::spec::check_cmdline(cl).map_err(ApiError::BadRequest)?;
        }
        for d in &c.disks {
            self.roots
                .check_disk(&d.path, &d.format)
                .map_err(ApiError::BadRequest)?;
        }
        if c.hotplug_slots > bulkhead_engine::spec::MAX_HOTPLUG_SLOTS {
            return bad(format!(
                "hot-plug ports must be 0-{}, got {}",
                bulkhead_engine::spec::MAX_HOTPLUG_SLOTS,
                c.hotplug_slots
            ));
        }
        if let Some(m) = &c.cpu_model {
            m.parse::<CpuModel>().map_err(ApiError::BadRequest)?;
        }
        Ok(())
    }

    async fn create(&self, c: CreatePartition) -> Result<PartitionRecord, ApiError> {
        self.validate(&c)?;
        let _adm = self.admission.lock().await;
        if self.store.get(&c.name)?.is_some() {
            return Err(ApiError::AlreadyExists(c.name));
        }
        let all = self.store.list()?;
        let now = now_ms();
        let mut rec = PartitionRecord {
            name: c.name.clone(),
            vcpus: c.vcpus,
            memory_mib: c.memory_mib,
            cpu_percent: c.cpu_percent,
            image: c.image.clone(),
            cmdline: c.cmdline.clone(),
            disks: c.disks.clone(),
            net: None,
            restart_policy: c.restart_policy,
            hotplug_slots: c.hotplug_slots,
            // Recorded by name at create, so the default changing later never
            // changes this partition's CPU.
            cpu_model: c
                .cpu_model
                .clone()
                .unwrap_or_else(|| CpuModel::default().name().to_string()),
            state: PartitionState::Defined,
            created_at: now,
            state_since: now,
            started_at: None,
            last_exit: None,
            pid: None,
            restarts: 0,
            revision: 0,
        };
        let held: Demand = all.iter().map(|r| self.demand(r)).sum();
        self.capacity
            .admit(held, self.demand(&rec))
            .map_err(|e| ApiError::OverCapacity(e.to_string()))?;
        if c.net {
            let used: HashSet<_> = all
                .iter()
                .filter_map(|r| r.net.as_ref().and_then(|n| net::addr_of(&n.ip)))
                .collect();
            let ip = self.subnet.allocate(&used).ok_or_else(|| {
                ApiError::OverCapacity(format!(
                    "no free address left in {}",
                    self.cfg.network.subnet
                ))
            })?;
            let mac = net::mac_for(net::addr_of(&ip).expect("allocated address parses"));
            rec.net = Some(NetRecord { ip, mac });
        }
        let rec = self.store.insert(&rec, "created")?;
        tracing::info!(partition = %rec.name, cpu = rec.cpu_percent, memory_mib = rec.memory_mib, "created");
        Ok(rec)
    }

    fn spec_for(&self, rec: &PartitionRecord) -> PartitionSpec {
        let image = self.image_dir(rec.image.as_deref());
        let mut spec = PartitionSpec::new(
            &rec.name,
            image.join("vmlinux"),
            image.join("initramfs.cpio.gz"),
        );
        spec.vcpus = rec.vcpus;
        spec.memory_mib = rec.memory_mib;
        spec.boot.cmdline = rec.cmdline.clone().unwrap_or_default();
        spec.hotplug_slots = rec.hotplug_slots;
        // A record that names no known model is refused by `start_locked`.
        spec.cpu_model = rec.cpu_model.parse().unwrap_or_default();
        for (i, d) in rec.disks.iter().enumerate() {
            let path = PathBuf::from(&d.path);
            spec.adapters.push(AdapterSpec::Disk(DiskSpec {
                id: format!("disk{i}"),
                format: disks::disk_format(&path, Some(&d.format)).unwrap_or_default(),
                path,
                readonly: d.readonly,
                backing: None,
            }));
        }
        if let Some(n) = &rec.net {
            spec.adapters.push(AdapterSpec::Net(NetSpec {
                id: "net0".into(),
                bridge: self.cfg.network.bridge.clone(),
                mac: Some(n.mac.clone()),
                tap: Some(net::tap_name(&self.instance, &rec.name)),
                ip: Some(n.ip.clone()),
                gateway: Some(self.subnet.gateway().to_string()),
            }));
        }
        spec
    }

    /// The spec a start launches: image and disks checked against the
    /// roots again (a path may have become a symlink since create), with
    /// their canonical paths and each qcow2's backing chain pinned.
    fn checked_spec(&self, rec: &PartitionRecord) -> Result<PartitionSpec, ApiError> {
        let mut spec = self.spec_for(rec);
        let image = self
            .roots
            .check_image(&self.image_dir(rec.image.as_deref()))
            .map_err(ApiError::BadRequest)?;
        spec.boot.kernel = image.join("vmlinux");
        spec.boot.initramfs = Some(image.join("initramfs.cpio.gz"));
        let mut disks = rec.disks.iter();
        for a in spec.adapters.iter_mut() {
            let (AdapterSpec::Disk(d), Some(r)) = (a, disks.next()) else {
                continue;
            };
            let checked = self
                .roots
                .check_disk(&r.path, &r.format)
                .map_err(ApiError::BadRequest)?;
            d.path = checked.path;
            d.backing = checked.backing;
        }
        spec.validate()
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        Ok(spec)
    }

    fn launch_options(&self, name: &str) -> LaunchOptions {
        let mut opts = LaunchOptions::new(self.run_dir(name));
        opts.cgroup_procs = self.cgroups.open(name).procs_files();
        opts.run_as = Some(self.cfg.qemu.user.clone());
        opts.confine = true;
        opts
    }

    /// Removes everything a partition may have left on the host: its
    /// cgroup (killing what is still in it), TAP and sockets.
    fn cleanup(&self, rec: &PartitionRecord) {
        let cg = self.cgroups.open(&rec.name);
        if let Err(e) = cg.remove() {
            tracing::warn!(partition = %rec.name, error = %e, "removing cgroup");
        }
        bulkhead_engine::cleanup_leftovers(&self.spec_for(rec), &self.launch_options(&rec.name));
        if rec.net.is_some() {
            let tap = net::tap_name(&self.instance, &rec.name);
            let _ = net::delete_link(&tap);
            net::unguard_tap(&self.instance, &tap);
        }
    }

    async fn start(self: &Arc<Self>, name: &str, wait: bool) -> Result<PartitionRecord, ApiError> {
        let lock = self.op_lock(name);
        let _g = lock.lock().await;
        self.start_locked(name, wait, false).await
    }

    async fn start_locked(
        self: &Arc<Self>,
        name: &str,
        wait: bool,
        by_policy: bool,
    ) -> Result<PartitionRecord, ApiError> {
        let rec = self.get(name)?;
        if rec.state.is_active() {
            return Err(ApiError::Conflict(format!(
                "partition {name:?} is already {}",
                rec.state
            )));
        }
        rec.cpu_model
            .parse::<CpuModel>()
            .map_err(ApiError::BadRequest)?;
        let spec = self.checked_spec(&rec)?;
        let cg;
        {
            let _adm = self.admission.lock().await;
            let held: Demand = self
                .store
                .list()?
                .iter()
                .filter(|r| r.state.is_active() && r.name != name)
                .map(|r| self.demand(r))
                .sum();
            self.capacity
                .admit(held, self.demand(&rec))
                .map_err(|e| ApiError::OverCapacity(e.to_string()))?;
            // Leftovers of an earlier run would make the new cgroup inherit stray tasks.
            self.cleanup(&rec);
            cg = self
                .cgroups
                .create(
                    name,
                    rec.cpu_percent,
                    self.memory_limit_mib(&rec) << 20,
                    PIDS_BASE + rec.vcpus,
                )
                .map_err(internal)?;
            if let Some(n) = &rec.net {
                let tap = net::tap_name(&self.instance, name);
                let ip = net::addr_of(&n.ip).ok_or_else(|| internal("stored address"))?;
                if let Err(e) = net::guard_tap(&self.instance, &tap, &n.mac, ip) {
                    let _ = cg.remove();
                    return Err(internal(e));
                }
            }
            let event = if by_policy {
                "restarting (policy)"
            } else {
                "starting"
            };
            if let Err(e) = self.set_state(name, PartitionState::Starting, event, |r| {
                r.started_at = Some(now_ms());
                r.pid = None;
                if !by_policy {
                    r.restarts = 0;
                }
            }) {
                let _ = cg.remove();
                return Err(e);
            }
        }
        // Until the supervisor owns it, anything that ends this start early
        // (a `?`, a panic) leaves the partition failed, never `starting`.
        let undo = OnDrop::new(|| {
            let _ = cg.remove();
            let why = "start interrupted".to_string();
            let _ = self.set_state(name, PartitionState::Failed, &why, |r| {
                r.pid = None;
                r.last_exit = Some(why.clone());
            });
        });
        let opts = self.launch_options(name);
        let t_launch = std::time::Instant::now();
        let partition = match Partition::launch(spec, opts).await {
            Ok(p) => Arc::new(p),
            Err(e) => {
                undo.disarm();
                let _ = cg.remove();
                let msg = format!("start failed: {e}");
                self.set_state(name, PartitionState::Failed, &msg, |r| {
                    r.pid = None;
                    r.last_exit = Some(msg.clone());
                })?;
                return Err(engine_err(e));
            }
        };
        let rec = self.modify(name, "", |r| r.pid = Some(partition.pid()))?;
        tracing::info!(
            partition = name,
            pid = partition.pid(),
            launch_ms = t_launch.elapsed().as_millis() as u64,
            "QEMU launched"
        );
        let mut ready = self.supervise(name, partition, true);
        undo.disarm();
        if !wait {
            return Ok(rec);
        }
        let _ = ready.wait_for(|r| r.is_some()).await;
        let outcome = ready.borrow().clone();
        match outcome {
            Some(Ok(())) => self.get(name),
            Some(Err(e)) => Err(ApiError::Engine(e)),
            None => Err(ApiError::Internal("supervisor ended".into())),
        }
    }

    /// Starts the supervisor of a launched (or adopted) partition. The
    /// returned channel reports the agent's ready or the start's failure.
    fn supervise(
        self: &Arc<Self>,
        name: &str,
        partition: Arc<Partition>,
        wait_ready: bool,
    ) -> watch::Receiver<Option<Result<(), String>>> {
        let (ready_tx, ready_rx) = watch::channel(if wait_ready { None } else { Some(Ok(())) });
        let (done_tx, done_rx) = watch::channel(false);
        let stop_requested = Arc::new(AtomicBool::new(false));
        self.live.lock().unwrap().insert(
            name.to_string(),
            Live {
                partition: partition.clone(),
                stop_requested: stop_requested.clone(),
                ready: ready_rx.clone(),
                done: done_rx,
            },
        );
        let m = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let mut start_error = None;
            if wait_ready {
                let timeout = Duration::from_secs(m.cfg.partitions.ready_timeout_secs);
                let t0 = std::time::Instant::now();
                match partition.wait_ready(timeout).await {
                    Ok(info) => {
                        tracing::info!(partition = %name, ready_ms = t0.elapsed().as_millis() as u64, guest_boot_ms = info.boot_ms, "agent ready");
                        let ev = format!("running (guest boot {} ms)", info.boot_ms);
                        let r = m.modify(&name, &ev, |r| {
                            // A stop may have begun meanwhile; it owns the state then.
                            if r.state == PartitionState::Starting {
                                r.state = PartitionState::Running;
                                r.state_since = now_ms();
                            }
                        });
                        if let Err(e) = r {
                            tracing::warn!(partition = %name, error = %e, "recording ready");
                        }
                        let _ = ready_tx.send(Some(Ok(())));
                    }
                    Err(e) => {
                        tracing::warn!(partition = %name, error = %e, "start failed");
                        let _ = partition.kill().await;
                        start_error = Some(e.to_string());
                    }
                }
            }
            let exit = partition.wait_exit().await;
            let requested = stop_requested.load(Ordering::SeqCst);
            let failed = !requested && (start_error.is_some() || exit.is_failure());
            let reason = match &start_error {
                Some(e) => format!("start failed: {e}"),
                None => exit.reason.to_string(),
            };
            let state = if failed {
                PartitionState::Failed
            } else {
                PartitionState::Stopped
            };
            // Clean up before recording the state, so a stopped partition has nothing left.
            match m.store.get(&name) {
                Ok(Some(rec)) => m.cleanup(&rec),
                _ => {
                    let _ = m.cgroups.open(&name).remove();
                }
            }
            m.live.lock().unwrap().remove(&name);
            let ev = format!("{state}: {reason}");
            let rec = m.set_state(&name, state, &ev, |r| {
                r.pid = None;
                r.last_exit = Some(reason.clone());
            });
            tracing::info!(partition = %name, %state, %reason, "partition ended");
            let _ = ready_tx.send(Some(Err(reason.clone())));
            let _ = done_tx.send(true);
            let Ok(rec) = rec else { return };
            let restart = !requested
                && match rec.restart_policy {
                    RestartPolicy::Never => false,
                    RestartPolicy::OnFailure => failed,
                    RestartPolicy::Always => true,
                };
            if restart {
                m.clone().restart_by_policy(name, rec.restarts).await;
            }
        });
        ready_rx
    }

    async fn restart_by_policy(self: Arc<Self>, name: String, restarts: u32) {
        if restarts >= self.cfg.partitions.max_restarts {
            let _ = self.modify(&name, "restart policy gave up: too many restarts", |_| {});
            return;
        }
        // Back off a little more each time, so a crash loop does not eat the host.
        let delay = Duration::from_millis(500u64 << restarts.min(6));
        tokio::time::sleep(delay).await;
        let lock = self.op_lock(&name);
        let _g = lock.lock().await;
        // A user may have stopped, started or destroyed it meanwhile.
        match self.store.get(&name) {
            Ok(Some(r))
                if r.state == PartitionState::Failed || r.state == PartitionState::Stopped => {}
            _ => return,
        }
        let _ = self.modify(&name, "", |r| r.restarts = restarts + 1);
        if let Err(e) = self.start_locked(&name, false, true).await {
            tracing::warn!(partition = %name, error = %e, "policy restart failed");
        }
    }

    async fn stop(&self, name: &str, opts: StopOptions) -> Result<PartitionRecord, ApiError> {
        let lock = self.op_lock(name);
        let _g = lock.lock().await;
        self.stop_locked(name, opts).await
    }

    async fn stop_locked(
        &self,
        name: &str,
        opts: StopOptions,
    ) -> Result<PartitionRecord, ApiError> {
        let rec = self.get(name)?;
        let live = {
            let map = self.live.lock().unwrap();
            map.get(name).map(|l| {
                (
                    l.partition.clone(),
                    l.stop_requested.clone(),
                    l.done.clone(),
                )
            })
        };
        let Some((partition, flag, mut done)) = live else {
            if rec.state.is_active() {
                // Recorded active but not watched: nothing runs (recovery found it gone).
                self.cleanup(&rec);
                return self.set_state(
                    name,
                    PartitionState::Stopped,
                    "stopped (not running)",
                    |r| r.pid = None,
                );
            }
            return Err(ApiError::Conflict(format!(
                "partition {name:?} is {}, not running",
                rec.state
            )));
        };
        flag.store(true, Ordering::SeqCst);
        // Until the supervisor has recorded the exit, a stop that fails (an
        // error, a panic) puts the partition back as it was, still watched.
        let before = rec.state;
        let undo = OnDrop::new(|| {
            flag.store(false, Ordering::SeqCst);
            let _ = self.modify(name, &format!("stop failed; back to {before}"), |r| {
                if r.state == PartitionState::Stopping {
                    r.state = before;
                    r.state_since = now_ms();
                }
            });
        });
        self.set_state(name, PartitionState::Stopping, "stopping", |_| {})?;
        let r = if opts.force {
            partition.kill().await
        } else {
            let t = opts
                .timeout_secs
                .unwrap_or(self.cfg.partitions.stop_timeout_secs);
            partition.stop(Duration::from_secs(t)).await
        };
        if let Err(e) = r {
            return Err(engine_err(e));
        }
        // The supervisor records the exit and cleans up; answer once it has.
        let _ = done.wait_for(|d| *d).await;
        undo.disarm();
        self.get(name)
    }

    async fn restart(
        self: &Arc<Self>,
        name: &str,
        wait: bool,
    ) -> Result<PartitionRecord, ApiError> {
        let lock = self.op_lock(name);
        let _g = lock.lock().await;
        if self.live.lock().unwrap().contains_key(name) {
            self.stop_locked(name, StopOptions::default()).await?;
        }
        self.start_locked(name, wait, false).await
    }

    async fn destroy(&self, name: &str, force: bool) -> Result<(), ApiError> {
        let lock = self.op_lock(name);
        let _g = lock.lock().await;
        let rec = self.get(name)?;
        if rec.state.is_active() {
            if !force {
                return Err(ApiError::Conflict(format!(
                    "partition {name:?} is {}; stop it first or destroy with --force",
                    rec.state
                )));
            }
            self.stop_locked(
                name,
                StopOptions {
                    force: true,
                    timeout_secs: None,
                },
            )
            .await?;
        }
        let rec = self.get(name)?;
        self.cleanup(&rec);
        // The disks QEMU's user was given go back to their owners.
        bulkhead_engine::jail::restore_owners(&self.run_dir(name));
        let _ = std::fs::remove_dir_all(self.run_dir(name));
        self.store.delete(name, rec.revision)?;
        self.op_locks.lock().unwrap().remove(name);
        tracing::info!(partition = name, "destroyed");
        Ok(())
    }

    async fn exec(&self, name: &str, req: ExecRequest) -> Result<ExecResult, ApiError> {
        if req.argv.is_empty() || req.argv[0].is_empty() {
            return Err(ApiError::BadRequest("exec needs a command".into()));
        }
        let p = self.ready_partition(name)?;
        let t = Duration::from_secs(req.timeout_secs.unwrap_or(60).clamp(1, 3600));
        let out = p
            .agent()
            .exec(&req.argv, None, t)
            .await
            .map_err(engine_err)?;
        Ok(ExecResult {
            code: out.code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    async fn stats(&self, name: &str) -> Result<Stats, ApiError> {
        let rec = self.get(name)?;
        let cg = self.cgroups.open(name);
        let live = self.running(name);
        let mut s = Stats {
            name: name.to_string(),
            state: rec.state.to_string(),
            cpu_entitlement_percent: rec.cpu_percent,
            cpu_time_ns: 0,
            cpu_avg_percent: 0.0,
            cpu_recent_percent: 0.0,
            cpu_limit_percent: None,
            memory_bytes: 0,
            memory_limit_bytes: self.memory_limit_mib(&rec) << 20,
            rss_bytes: 0,
            uptime_ms: 0,
            pid: rec.pid,
            guest: None,
        };
        let Some(p) = live else { return Ok(s) };
        if cg.exists() {
            let t0 = std::time::Instant::now();
            let u0 = cg.cpu_usage_ns().map_err(internal)?;
            // Recent use: CPU time over a short window.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let u1 = cg.cpu_usage_ns().map_err(internal)?;
            let dt = t0.elapsed().as_nanos().max(1) as f64;
            s.cpu_time_ns = u1;
            s.cpu_recent_percent = round1((u1 - u0) as f64 * 100.0 / dt);
            s.cpu_limit_percent = cg.cpu_limit_percent().ok().flatten();
            s.memory_bytes = cg.memory_bytes().unwrap_or(0);
        }
        s.uptime_ms = rec
            .started_at
            .map(|t| now_ms().saturating_sub(t))
            .unwrap_or(0);
        if s.uptime_ms > 0 {
            s.cpu_avg_percent = round1(s.cpu_time_ns as f64 / 1e4 / s.uptime_ms as f64);
        }
        s.rss_bytes = rss_bytes(p.pid()).unwrap_or(0);
        if let Ok(Ok(info)) = tokio::time::timeout(Duration::from_secs(2), p.agent().info()).await {
            s.guest = serde_json::to_value(info).ok();
        }
        Ok(s)
    }

    /// Re-adopts what a previous daemon left running and removes what
    /// nobody owns any more (cgroups, TAPs, run directories).
    async fn recover(self: &Arc<Self>) -> anyhow::Result<()> {
        let recs = self.store.list()?;
        for rec in &recs {
            if !rec.state.is_active() {
                self.cleanup(rec);
                continue;
            }
            let spec = self.spec_for(rec);
            let opts = self.launch_options(&rec.name);
            match Partition::adopt(spec, opts).await {
                Ok(p) => {
                    let p = Arc::new(p);
                    tracing::info!(partition = %rec.name, pid = p.pid(), state = %rec.state, "re-adopted");
                    let _ = self.modify(&rec.name, "re-adopted by a new bulkheadd", |r| {
                        r.pid = Some(p.pid())
                    });
                    let starting = rec.state == PartitionState::Starting;
                    self.supervise(&rec.name, p.clone(), starting);
                    if rec.state == PartitionState::Stopping {
                        // Finish the stop the previous daemon began.
                        let m = self.clone();
                        let name = rec.name.clone();
                        tokio::spawn(async move {
                            let _ = m.stop(&name, StopOptions::default()).await;
                        });
                    }
                }
                Err(e) => {
                    tracing::info!(partition = %rec.name, error = %e, "not re-adoptable; cleaning up");
                    self.cleanup(rec);
                    let (state, why) = match rec.state {
                        PartitionState::Running => (
                            PartitionState::Failed,
                            format!("QEMU ended while bulkheadd was down ({e})"),
                        ),
                        _ => (
                            PartitionState::Stopped,
                            format!("{} interrupted by a bulkheadd restart", rec.state),
                        ),
                    };
                    self.set_state(&rec.name, state, &why, |r| {
                        r.pid = None;
                        r.last_exit = Some(why.clone());
                    })?;
                    if state == PartitionState::Failed && rec.restart_policy != RestartPolicy::Never
                    {
                        tokio::spawn(
                            self.clone()
                                .restart_by_policy(rec.name.clone(), rec.restarts),
                        );
                    }
                }
            }
        }
        self.reconcile();
        Ok(())
    }

    /// Removes host objects under this daemon's names that no live partition owns.
    fn reconcile(&self) {
        let live: HashSet<String> = self.live.lock().unwrap().keys().cloned().collect();
        for name in self.cgroups.list() {
            if !live.contains(&name) {
                tracing::info!(cgroup = %name, "removing orphan cgroup");
                let _ = self.cgroups.open(&name).remove();
            }
        }
        let owned: HashSet<String> = live
            .iter()
            .map(|n| net::tap_name(&self.instance, n))
            .collect();
        for port in net::bridge_ports(&self.cfg.network.bridge) {
            if port.starts_with("bht") && !owned.contains(&port) {
                tracing::info!(tap = %port, "removing orphan TAP");
                let _ = net::delete_link(&port);
                net::unguard_tap(&self.instance, &port);
            }
        }
        let known: HashSet<String> = self
            .store
            .list()
            .map(|v| v.into_iter().map(|r| r.name).collect())
            .unwrap_or_default();
        if let Ok(dirs) = std::fs::read_dir(self.cfg.data_dir.join("run")) {
            for d in dirs.flatten() {
                let n = d.file_name().to_string_lossy().into_owned();
                if !known.contains(&n) {
                    let _ = std::fs::remove_dir_all(d.path());
                }
            }
        }
    }

    /// Rotates console logs that grew past the limit (copy, then truncate:
    /// QEMU appends, so it keeps writing at the new end).
    pub fn rotate_console_logs(&self) {
        let max = self.cfg.partitions.console_log_max_bytes;
        let names: Vec<String> = self.live.lock().unwrap().keys().cloned().collect();
        for n in names {
            let log = self.run_dir(&n).join("console.log");
            if let Err(e) = rotate_if_larger(&log, max) {
                tracing::warn!(partition = %n, error = %e, "rotating console log");
            }
        }
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

fn to_json<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).expect("API types serialise")
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
