//! Creating, starting, stopping and destroying partitions: each step checks
//! its request, and rolls back what it did if a later step fails.

use super::*;

impl Manager {
    pub(super) fn validate(&self, c: &CreatePartition) -> Result<(), ApiError> {
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
            if d.lu.is_some() {
                return bad("a disk names an LU through `lus`, not `disks`".into());
            }
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
        if let Some(client) = &c.client {
            crate::lu::check_name("client", client).map_err(ApiError::BadRequest)?;
        }
        Ok(())
    }

    pub(super) async fn create(&self, c: CreatePartition) -> Result<PartitionRecord, ApiError> {
        self.create_linked(c, None).await
    }

    /// A create that links the partition to a pool's template (the pool
    /// driver's; the API cannot set a link).
    pub(crate) async fn create_linked(
        &self,
        c: CreatePartition,
        template: Option<TemplateLink>,
    ) -> Result<PartitionRecord, ApiError> {
        self.validate(&c)?;
        let devices = self.checked_devices(&c).await?;
        let client = c.client.clone().unwrap_or_else(|| c.name.clone());
        let mut disks = c.disks.clone();
        disks.extend(self.lu_disks(&client, &c.lus).await?);
        let now = now_ms();
        let rec = PartitionRecord {
            ha: c.ha,
            fence: None,
            ha_pending: false,
            name: c.name.clone(),
            host: self.host.clone(),
            vcpus: c.vcpus,
            memory_mib: c.memory_mib,
            cpu_percent: c.cpu_percent,
            image: c.image.clone(),
            cmdline: c.cmdline.clone(),
            disks,
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
            hibernate_idle_secs: c.hibernate_idle_secs,
            hibernation: None,
            checkpoint_every_ms: c.checkpoint_every_ms,
            devices,
            template,
            client_name: client,
            client_id: 0,
            adapter_ids: Default::default(),
            revision: 0,
        };
        if rec.checkpoint_every_ms.is_some() {
            self.check_checkpointable(&rec)?;
        }
        // Capacity and the address are decided by the store inside the
        // insert's transaction: a concurrent create here or in another
        // daemon sharing the store sees this one or is seen by it.
        let rec = self
            .store
            .admit(
                &rec,
                "created",
                devices::with_claims(lus::with_ids(self.admission(false, c.net))),
            )
            .await
            .map_err(devices::refused)?;
        tracing::info!(partition = %rec.name, cpu = rec.cpu_percent, memory_mib = rec.memory_mib, "created");
        Ok(rec)
    }

    pub(super) fn spec_for(&self, rec: &PartitionRecord) -> PartitionSpec {
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
                shared_read: false,
            }));
        }
        spec.serials = rec
            .devices
            .serial
            .iter()
            .map(|p| bulkhead_engine::serial::SerialSpec { path: p.into() })
            .collect();
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
        if let Some(link) = &rec.template {
            // A template's RAM is a file its clones map; each clone gets a
            // fresh generation id (the guest reseeds its RNG on it).
            spec.memory_file = Some(bulkhead_engine::spec::MemoryFile {
                path: self.template_memory(link),
                share: matches!(link, TemplateLink::Source(_)),
            });
            spec.vmgenid = true;
        }
        spec
    }

    /// The spec a start launches: image and disks checked against the
    /// roots again (a path may have become a symlink since create), with
    /// their canonical paths and each qcow2's backing chain pinned.
    pub(super) fn checked_spec(&self, rec: &PartitionRecord) -> Result<PartitionSpec, ApiError> {
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
            if r.lu.is_some() {
                // Locked, confined to its client's area and pinned by `lock_lus`.
                continue;
            }
            let checked = self
                .roots
                .check_disk(&r.path, &r.format)
                .map_err(ApiError::BadRequest)?;
            d.path = checked.path;
            d.backing = checked.backing;
        }
        self.check_serials(rec, &mut spec)?;
        spec.validate()
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        Ok(spec)
    }

    pub(super) fn launch_options(&self, name: &str) -> LaunchOptions {
        let mut opts = LaunchOptions::new(self.run_dir(name));
        opts.cgroup_procs = self.cgroups.open(name).procs_files();
        opts.run_as = Some(self.cfg.qemu.user.clone());
        opts.confine = true;
        opts
    }

    /// Removes everything a partition may have left on the host: its
    /// cgroup (killing what is still in it), TAP, filter rules and sockets.
    /// On the blocking pool: it waits for killed tasks, talks netlink, runs nft.
    pub(super) async fn cleanup(&self, rec: &PartitionRecord) {
        let cg = self.cgroups.open(&rec.name);
        let (spec, opts) = (self.spec_for(rec), self.launch_options(&rec.name));
        let (instance, name, net) = (self.instance.clone(), rec.name.clone(), rec.net.is_some());
        bulkhead_hostnet::blocking(move || {
            if let Err(e) = cg.remove() {
                tracing::warn!(partition = %name, error = %e, "removing cgroup");
            }
            // Removes the TAP too: `spec_for` names it.
            bulkhead_engine::cleanup_leftovers(&spec, &opts);
            if net {
                net::unguard_tap(&instance, &net::tap_name(&instance, &name));
            }
        })
        .await
    }

    pub(super) async fn start(
        self: &Arc<Self>,
        name: &str,
        wait: bool,
    ) -> Result<PartitionRecord, ApiError> {
        if self.get(name).await?.state == PartitionState::Hibernated {
            return self.resume(name, false, false).await;
        }
        let lock = self.op_lock(name);
        let _g = lock.lock().await;
        self.start_locked(name, wait, false).await
    }

    pub(super) async fn start_locked(
        self: &Arc<Self>,
        name: &str,
        wait: bool,
        by_policy: bool,
    ) -> Result<PartitionRecord, ApiError> {
        let rec = self.get(name).await?;
        self.check_owned(&rec)?;
        if rec.state.is_active() {
            return Err(ApiError::Conflict(format!(
                "partition {name:?} is already {}",
                rec.state
            )));
        }
        rec.cpu_model
            .parse::<CpuModel>()
            .map_err(ApiError::BadRequest)?;
        let mut spec = self.checked_spec(&rec)?;
        // LUs first: a refusal (another client's, locked elsewhere) changes nothing.
        self.lock_lus(&rec, &mut spec).await?;
        let event = if by_policy {
            "restarting (policy)"
        } else {
            "starting"
        };
        // Admitted by the store in the same write that marks it starting, so
        // concurrent starts (here or in another daemon) never over-commit.
        let admitted = modify_record(
            &*self.store,
            name,
            event,
            |r| {
                r.state = PartitionState::Starting;
                r.state_since = now_ms();
                r.started_at = Some(now_ms());
                r.pid = None;
                if !by_policy {
                    r.restarts = 0;
                }
                // A fresh boot: a checkpoint of an earlier run is stale.
                if r.hibernation.as_ref().map(|h| h.reason) == Some(HibernateReason::Checkpoint) {
                    r.hibernation = None;
                }
            },
            Some(&lus::with_ids(self.admission(true, false))),
        )
        .await;
        let admitted = match admitted {
            Ok(r) => r,
            Err(e) => {
                self.release_lus(name).await;
                return Err(e);
            }
        };
        self.discard_stray_checkpoints(&admitted);
        // Until the supervisor owns it, anything that ends this start early
        // (a `?`, a panic) leaves the partition failed, never `starting`.
        let undo = OnDrop::new(|| {
            self.cgroups.open(name).remove_detached();
            self.release_lus_later(name);
            let why = "start interrupted".to_string();
            self.modify_later(name, why.clone(), move |r| {
                r.state = PartitionState::Failed;
                r.state_since = now_ms();
                r.pid = None;
                r.last_exit = Some(why.clone());
            });
        });
        // Leftovers of an earlier run would make the new cgroup inherit stray tasks.
        self.cleanup(&rec).await;
        if let Err(e) = self.prepare_host(&rec).await {
            undo.disarm();
            return Err(self.start_failed(name, e).await);
        }
        let opts = self.launch_options(name);
        let t_launch = std::time::Instant::now();
        if let Some(TemplateLink::Clone(pool)) = &rec.template {
            // Restored, not booted: its agent answers when this returns.
            let partition = match self.restore_clone(pool, spec, opts).await {
                Ok(p) => p,
                Err(e) => {
                    undo.disarm();
                    return Err(self.start_failed(name, e).await);
                }
            };
            let pid = partition.pid();
            self.supervise(name, partition, false);
            undo.disarm();
            let ms = t_launch.elapsed().as_millis() as u64;
            tracing::info!(partition = name, %pool, pid, ms, "restored from the pool's template");
            let ev = format!("running (restored from the template of pool {pool} in {ms} ms)");
            return self
                .set_state(name, PartitionState::Running, &ev, |r| r.pid = Some(pid))
                .await;
        }
        let partition = match Partition::launch(spec, opts).await {
            Ok(p) => Arc::new(p),
            Err(e) => {
                undo.disarm();
                return Err(self.start_failed(name, engine_err(e)).await);
            }
        };
        let rec = self
            .modify(name, "", |r| r.pid = Some(partition.pid()))
            .await?;
        if let Err(e) = self.start_mirrors(&rec, &partition).await {
            let _ = partition.kill().await;
            undo.disarm();
            return Err(self.start_failed(name, e).await);
        }
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
            Some(Ok(())) => self.get(name).await,
            Some(Err(e)) => Err(ApiError::Engine(e)),
            None => Err(ApiError::Internal("supervisor ended".into())),
        }
    }

    /// What a partition's QEMU needs of the host before it launches (a
    /// start or a resume): its cgroup with its limits, and the anti-spoofing
    /// guard of its TAP. A failure leaves the cgroup for the caller's cleanup.
    pub(super) async fn prepare_host(&self, rec: &PartitionRecord) -> Result<(), ApiError> {
        let name = &rec.name;
        self.cgroups
            .create(
                name,
                rec.cpu_percent,
                self.memory_limit_mib(rec) << 20,
                PIDS_BASE + rec.vcpus,
            )
            .map_err(internal)?;
        if let Some(n) = &rec.net {
            let tap = net::tap_name(&self.instance, name);
            let (instance, mac, ip) = (self.instance.clone(), n.mac.clone(), n.ip.clone());
            bulkhead_hostnet::blocking(move || {
                net::addr_of(&ip)
                    .ok_or_else(|| anyhow::anyhow!("stored address {ip:?} does not parse"))
                    .and_then(|ip| Ok(net::guard_tap(&instance, &tap, &mac, ip)?))
            })
            .await
            .map_err(internal)?;
        }
        Ok(())
    }

    /// Ends a start that failed before its QEMU ran: removes the cgroup and
    /// records the partition failed with why; returns `err` to answer.
    async fn start_failed(&self, name: &str, err: ApiError) -> ApiError {
        let _ = self.cgroups.open(name).remove_off_reactor().await;
        self.release_lus(name).await;
        let msg = format!("start failed: {err}");
        let recorded = self
            .set_state(name, PartitionState::Failed, &msg, |r| {
                r.pid = None;
                r.last_exit = Some(msg.clone());
            })
            .await;
        match recorded {
            Ok(_) => err,
            Err(e) => e,
        }
    }

    /// Refuses to act on a partition another host owns: its QEMU, cgroup and
    /// TAP are that host's. Such requests are forwarded to it before they get
    /// here (`cluster::forward`); this catches a record that changed owner
    /// while the request was answered.
    pub(super) fn check_owned(&self, rec: &PartitionRecord) -> Result<(), ApiError> {
        if rec.host != self.host {
            return Err(ApiError::Conflict(format!(
                "partition {:?} now belongs to host {}; send the request again",
                rec.name, rec.host
            )));
        }
        Ok(())
    }

    pub(super) async fn stop(
        self: &Arc<Self>,
        name: &str,
        opts: StopOptions,
    ) -> Result<PartitionRecord, ApiError> {
        let lock = self.op_lock(name);
        let _g = lock.lock().await;
        self.stop_locked(name, opts).await
    }

    pub(super) async fn stop_locked(
        self: &Arc<Self>,
        name: &str,
        opts: StopOptions,
    ) -> Result<PartitionRecord, ApiError> {
        let rec = self.get(name).await?;
        self.check_owned(&rec)?;
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
                self.cleanup(&rec).await;
                return self
                    .set_state(
                        name,
                        PartitionState::Stopped,
                        "stopped (not running)",
                        |r| r.pid = None,
                    )
                    .await;
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
            self.modify_later(name, format!("stop failed; back to {before}"), move |r| {
                if r.state == PartitionState::Stopping {
                    r.state = before;
                    r.state_since = now_ms();
                }
            });
        });
        self.set_state(name, PartitionState::Stopping, "stopping", |_| {})
            .await?;
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
        self.get(name).await
    }

    pub(super) async fn restart(
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

    pub(super) async fn destroy(self: &Arc<Self>, name: &str, force: bool) -> Result<(), ApiError> {
        let lock = self.op_lock(name);
        let _g = lock.lock().await;
        let rec = self.get(name).await?;
        self.check_owned(&rec)?;
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
        let rec = self.get(name).await?;
        self.grants_partition_ended(name, true).await;
        self.cleanup(&rec).await;
        // The disks QEMU's user was given go back to their owners.
        bulkhead_engine::jail::restore_owners(&self.run_dir(name));
        let _ = std::fs::remove_dir_all(self.run_dir(name));
        self.store.delete(name, rec.revision).await?;
        self.discard_hibernation(&rec);
        self.release_lus(name).await;
        self.op_locks.lock().unwrap().remove(name);
        tracing::info!(partition = name, "destroyed");
        Ok(())
    }
}
