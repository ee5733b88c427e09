//! Hibernation (issue 14): a running partition saved into its hibernation
//! image and stopped; resumed from it, by request, by `start`, or by `exec`
//! and `console`; hibernated by the manager itself after it has been idle
//! for its `hibernate_idle_secs`.
//!
//! Order of writes (each step durable before the next), so a daemon killed
//! anywhere leaves a whole image and a hibernated partition, or the
//! partition running, never a half image taken for whole:
//!
//! 1. store: `hibernating`; QEMU pauses and writes `state.bin.partial`;
//! 2. the state is fsynced and renamed, then the manifest (with the state's
//!    SHA-256) is written, fsynced and renamed: the image is complete;
//! 3. store: `hibernated`, with the image's location, size and hash;
//! 4. QEMU is killed.
//!
//! On restart ([`Manager::recover_hibernation`]): `hibernating` with QEMU
//! alive → the guest continues (`running`) and the image is discarded;
//! `hibernating` with QEMU gone → `hibernated` if the image is complete,
//! else failed; `hibernated` → any QEMU left is killed (the generic cleanup
//! of inactive partitions); `resuming` → whatever QEMU was being restored
//! is killed and the partition is `hibernated` again (its image is intact).
//!
//! The resume's lock on the image is the store's compare-and-swap of the
//! record from `hibernated` to `resuming`: of two daemons (two hosts)
//! racing, one write wins; the other re-reads `resuming` and is refused.

use super::*;
use crate::idle::{IdleTracker, Sample, SAMPLE_EVERY};
use bulkhead_engine::snapshot::{read_manifest, SaveOptions, SaveProgress};
use bulkhead_store::HibernationRecord;

/// The environment variable naming a point at which the daemon kills itself
/// (SIGKILL) during a hibernation, for crash tests:
/// `hibernate-after-save` (image complete, store still `hibernating`, QEMU
/// paused) or `hibernate-after-record` (store `hibernated`, QEMU alive); or
/// during a checkpoint: `checkpoint-in-pause` (the guest stopped at the
/// switchover, the disk point taken).
pub const FAILPOINT_ENV: &str = "BULKHEAD_FAILPOINT";

pub(super) fn failpoint(name: &str) {
    if std::env::var(FAILPOINT_ENV).is_ok_and(|v| v == name) {
        tracing::error!(failpoint = name, "failpoint reached: killing bulkheadd");
        // SAFETY: kill(2) of our own pid with a constant signal; no memory
        // is involved.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

impl Manager {
    /// The image directory of a record's hibernation. The location comes
    /// from the store (another host may have written it): only a plain
    /// relative path inside the repository is accepted.
    pub(super) fn image_dir_of(&self, h: &HibernationRecord) -> Result<PathBuf, ApiError> {
        let rel = Path::new(&h.location);
        let plain = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain || h.location.is_empty() {
            return Err(ApiError::Conflict(format!(
                "hibernation location {:?} is not a path inside the repository",
                h.location
            )));
        }
        Ok(self.repository().root().join(rel))
    }

    /// QEMU cannot migrate ivshmem, so before a partition's state is saved
    /// everything it gave, held or owned through grants ends (the other
    /// holders are unmapped, as when it stops), and its own shared-memory
    /// devices are unplugged. Its regions stay registered: when it runs
    /// again, the grants service plugs them back (reconcile on ready).
    pub(super) async fn end_grants_before_save(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<(), ApiError> {
        self.grants_partition_ended(name, false).await;
        let Some(p) = self.running(name) else {
            return Ok(());
        };
        for h in p.hotplugged() {
            if let bulkhead_engine::AdapterSpec::Region(r) = &h.adapter {
                p.unplug(&r.id, Duration::from_secs(5)).await.map_err(|e| {
                    ApiError::Conflict(format!(
                        "partition {name:?} still has shared memory {} plugged, which cannot be saved: {e}",
                        r.id
                    ))
                })?;
            }
        }
        Ok(())
    }

    /// Saves a running partition into its hibernation image and stops it.
    pub(super) async fn hibernate(
        self: &Arc<Self>,
        name: &str,
        reason: HibernateReason,
    ) -> Result<PartitionRecord, ApiError> {
        let lock = self.op_lock(name);
        let _g = lock.lock().await;
        let rec = self.get(name).await?;
        self.check_owned(&rec)?;
        if rec.state != PartitionState::Running {
            return Err(ApiError::Conflict(format!(
                "partition {name:?} is {}; only a running partition hibernates",
                rec.state
            )));
        }
        let p = self.ready_partition(name).await?;
        let (flag, mut done) = self.stop_handles(name)?;
        self.end_grants_before_save(name).await?;
        let dir = self.repository().hibernation_dir(rec.client(), name);
        let location = dir
            .strip_prefix(self.repository().root())
            .map_err(internal)?
            .to_string_lossy()
            .into_owned();
        self.set_state(
            name,
            PartitionState::Hibernating,
            &format!("hibernating ({reason})"),
            |_| {},
        )
        .await?;
        let (tx, rx) = watch::channel(SaveProgress::default());
        self.hibernations
            .lock()
            .unwrap()
            .insert(name.to_string(), rx);
        let _progress = OnDrop::new(|| {
            self.hibernations.lock().unwrap().remove(name);
        });
        let opts = SaveOptions {
            progress: Some(tx),
            ..Default::default()
        };
        let t0 = std::time::Instant::now();
        let m = match p.save(&dir, opts).await {
            Ok(m) => m,
            Err(e) => {
                // The engine has let the guest run on and left no image.
                let msg = format!("hibernate failed, running on: {e}");
                self.set_state(name, PartitionState::Running, &msg, |_| {})
                    .await?;
                return Err(engine_err(e));
            }
        };
        failpoint("hibernate-after-save");
        let save_ms = t0.elapsed().as_millis() as u64;
        let h = HibernationRecord {
            location,
            bytes: m.state.len,
            sha256: m.state.sha256.clone(),
            saved_at: m.saved_at_unix_ms,
            reason,
            config: serde_json::to_value(&m.spec).map_err(internal)?,
        };
        // The exit that follows is asked for: no failure, no restart policy.
        flag.store(true, Ordering::SeqCst);
        let ev = format!(
            "hibernated ({reason}): {} MiB in {} ms",
            h.bytes >> 20,
            t0.elapsed().as_millis()
        );
        let recorded = self
            .set_state(name, PartitionState::Hibernated, &ev, |r| {
                r.hibernation = Some(h.clone());
                r.started_at = None;
            })
            .await;
        let recorded = match recorded {
            Ok(r) => r,
            Err(e) => {
                // Not recorded: the image is not the partition's; it runs on.
                flag.store(false, Ordering::SeqCst);
                let _ = std::fs::remove_dir_all(&dir);
                let cont = p.resume().await;
                let msg = format!("hibernate not recorded ({e}); running on");
                let _ = self
                    .set_state(name, PartitionState::Running, &msg, |_| {})
                    .await;
                cont.map_err(engine_err)?;
                return Err(e);
            }
        };
        // A checkpoint it had is superseded by this image.
        self.discard_stray_checkpoints(&recorded);
        failpoint("hibernate-after-record");
        let recorded_ms = t0.elapsed().as_millis() as u64;
        p.kill().await.map_err(engine_err)?;
        // The supervisor cleans up (cgroup, TAP) and keeps the state.
        let _ = done.wait_for(|d| *d).await;
        tracing::info!(
            partition = name,
            %reason,
            bytes = h.bytes,
            save_ms,
            recorded_ms,
            ms = t0.elapsed().as_millis() as u64,
            "hibernated"
        );
        self.get(name).await
    }

    pub(super) async fn hibernate_progress(
        &self,
        name: &str,
    ) -> Result<crate::api::HibernateProgress, ApiError> {
        let rec = self.get(name).await?;
        let now = self
            .hibernations
            .lock()
            .unwrap()
            .get(name)
            .map(|rx| *rx.borrow());
        Ok(crate::api::HibernateProgress {
            name: name.to_string(),
            state: rec.state,
            active: now.is_some(),
            transferred: now.map_or(0, |p| p.transferred),
            total: now.map_or(0, |p| p.total),
        })
    }

    /// Restores a hibernated partition and runs it. `wake`: called for an
    /// `exec` or `console`, so a partition someone else resumed meanwhile
    /// is fine as it is. `promote`: `--promote-mirror`, checked before the
    /// image is claimed so a refusal changes nothing.
    pub(super) async fn resume(
        self: &Arc<Self>,
        name: &str,
        wake: bool,
        promote: bool,
    ) -> Result<PartitionRecord, ApiError> {
        let lock = self.op_lock(name);
        let _g = lock.lock().await;
        if promote {
            let rec = self.get(name).await?;
            if rec.state == PartitionState::Hibernated {
                self.check_promotable(&rec).await?;
            }
        }
        let Some((rec, from)) = self.claim_image(name, wake).await? else {
            return self.get(name).await;
        };
        self.run_claimed(&rec, &from, false, promote).await
    }

    /// Restores a claimed image on this host and runs it; on failure the
    /// partition is hibernated again on host `from`. `keep_image`: a remote
    /// restart keeps the image (and the record's hibernation) until its
    /// `stop`, so a failed one leaves the partition restartable; a resume
    /// deletes it once the guest runs. `promote`: the mirrored LUs'
    /// copies are promoted first (a promotion stays if the restore fails).
    pub(super) async fn run_claimed(
        self: &Arc<Self>,
        rec: &PartitionRecord,
        from: &str,
        keep_image: bool,
        promote: bool,
    ) -> Result<PartitionRecord, ApiError> {
        let name = &rec.name;
        let t0 = std::time::Instant::now();
        match self.restore_claimed(rec, promote).await {
            Ok(p) => {
                if keep_image {
                    super::remote_restart::failpoint_mid_restore().await;
                }
                let h = rec.hibernation.clone().expect("claimed with an image");
                let pid = p.pid();
                self.supervise(name, p, false);
                let ev = format!(
                    "resumed from hibernation ({} ms; saved {} s before)",
                    t0.elapsed().as_millis(),
                    now_ms().saturating_sub(h.saved_at) / 1000
                );
                let rec = self
                    .set_state(name, PartitionState::Running, &ev, |r| {
                        r.pid = Some(pid);
                        if !keep_image {
                            r.hibernation = None;
                        }
                    })
                    .await?;
                // The image is stale once the guest has run: deleted, so it
                // can never be resumed twice.
                if !keep_image {
                    if let Ok(dir) = self.image_dir_of(&h) {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                }
                tracing::info!(
                    partition = %name,
                    ms = t0.elapsed().as_millis() as u64,
                    "resumed"
                );
                Ok(rec)
            }
            Err(e) => {
                self.cleanup(rec).await;
                self.release_lus(name).await;
                let msg = format!("resume failed: {e}");
                self.set_state(name, PartitionState::Hibernated, &msg, |r| {
                    r.host = from.to_string();
                    r.pid = None;
                    r.last_exit = Some(msg.clone());
                })
                .await?;
                Err(e)
            }
        }
    }

    /// The lock on the image: the record goes from `hibernated` to
    /// `resuming` on this host in one compare-and-swap, with the capacity
    /// admission. Returns the claimed record and the host it was on, or
    /// `None` when `wake` and the partition already runs.
    pub(super) async fn claim_image(
        &self,
        name: &str,
        wake: bool,
    ) -> Result<Option<(PartitionRecord, String)>, ApiError> {
        for _ in 0..MAX_CONFLICTS {
            let mut rec = self.get(name).await?;
            match rec.state {
                PartitionState::Hibernated => {}
                PartitionState::Running if wake => return Ok(None),
                PartitionState::Resuming => {
                    return Err(ApiError::Conflict(format!(
                        "partition {name:?} is being resumed by host {}; its hibernation image is locked until that ends",
                        rec.host
                    )))
                }
                s => {
                    return Err(ApiError::Conflict(format!(
                        "partition {name:?} is {s}, not hibernated"
                    )))
                }
            }
            if rec.hibernation.is_none() {
                return Err(ApiError::Conflict(format!(
                    "partition {name:?} is hibernated but its record names no image"
                )));
            }
            let from = std::mem::replace(&mut rec.host, self.host.clone());
            rec.state = PartitionState::Resuming;
            rec.state_since = now_ms();
            rec.started_at = Some(now_ms());
            rec.pid = None;
            let ev = format!("resuming on host {} (image locked)", self.host);
            match self
                .store
                .admit(&rec, &ev, self.admission(true, false))
                .await
            {
                Ok(r) => return Ok(Some((r, from))),
                // Another writer got there first: read what it wrote.
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(refused_is_capacity(e)),
            }
        }
        Err(ApiError::Conflict(format!(
            "partition {name:?} kept changing; gave up claiming its image"
        )))
    }

    /// Checks the claimed image against its record and restores it onto
    /// this host's adapters (its TAP on its bridge, its disks).
    async fn restore_claimed(
        &self,
        rec: &PartitionRecord,
        promote: bool,
    ) -> Result<Arc<Partition>, ApiError> {
        let h = rec.hibernation.as_ref().expect("claimed with an image");
        let dir = self.image_dir_of(h)?;
        let m = read_manifest(&dir).map_err(engine_err)?;
        if m.state.sha256 != h.sha256 || m.state.len != h.bytes {
            return Err(ApiError::Engine(format!(
                "the image in {} is not the one recorded (hash or size differ)",
                dir.display()
            )));
        }
        let mut spec = self.checked_spec(rec)?;
        // Before the locks: the LU records then name the promoted files.
        if promote {
            self.promote_disks(rec).await?;
        }
        // The LU attachments, locked for this host after the ownership check.
        self.lock_lus(rec, &mut spec).await?;
        // Checkpoint data: the disks go back to the memory's instant first.
        self.revert_to_checkpoint(h, &m, &spec).await?;
        self.cleanup(rec).await;
        self.prepare_host(rec).await?;
        let opts = self.launch_options(&rec.name);
        let timeout = Duration::from_secs(self.cfg.partitions.ready_timeout_secs);
        let (p, _) = Partition::restore_onto(&dir, spec, opts, timeout)
            .await
            .map_err(engine_err)?;
        if let Err(e) = self.start_mirrors(rec, &p).await {
            let _ = p.kill().await;
            return Err(e);
        }
        Ok(Arc::new(p))
    }

    /// `exec` and `console` on a hibernated (or hibernating) partition
    /// resume it first and wait for it.
    pub(super) async fn wake(self: &Arc<Self>, name: &str) -> Result<(), ApiError> {
        let rec = self.get(name).await?;
        if matches!(
            rec.state,
            PartitionState::Hibernated | PartitionState::Hibernating
        ) {
            self.resume(name, true, false).await?;
        }
        Ok(())
    }

    /// Removes a destroyed partition's hibernation image, if it had one,
    /// and any checkpoint image of it.
    pub(super) fn discard_hibernation(&self, rec: &PartitionRecord) {
        self.discard_stray_checkpoints(&PartitionRecord {
            hibernation: None,
            ..rec.clone()
        });
        if let Some(dir) = rec
            .hibernation
            .as_ref()
            .and_then(|h| self.image_dir_of(h).ok())
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// The restart rules of the module comment for a record a previous
    /// daemon left mid-hibernation or mid-resume. True when it was handled.
    pub(super) async fn recover_hibernation(
        self: &Arc<Self>,
        rec: &PartitionRecord,
    ) -> anyhow::Result<bool> {
        let name = &rec.name;
        match rec.state {
            PartitionState::Resuming => {
                self.cleanup(rec).await;
                let why = "resume interrupted by a bulkheadd restart; hibernated again";
                self.set_state(name, PartitionState::Hibernated, why, |r| r.pid = None)
                    .await?;
                Ok(true)
            }
            PartitionState::Hibernating => {
                let dir = self.repository().hibernation_dir(rec.client(), name);
                let spec = self.spec_for(rec);
                match Partition::adopt(spec, self.launch_options(name)).await {
                    Ok(p) => {
                        // Paused by the save (or still saving): it runs on,
                        // and whatever image was made is not its state.
                        let _ = p.qmp().migrate_cancel().await;
                        p.resume().await?;
                        let _ = std::fs::remove_dir_all(&dir);
                        let p = Arc::new(p);
                        let pid = p.pid();
                        self.supervise(name, p, false);
                        let why = "hibernate interrupted by a bulkheadd restart; running on";
                        self.set_state(name, PartitionState::Running, why, |r| r.pid = Some(pid))
                            .await?;
                    }
                    Err(e) => {
                        self.cleanup(rec).await;
                        match complete_image(self.repository().root(), &dir, name) {
                            Some(h) => {
                                let why =
                                    "hibernated (the image was complete when bulkheadd restarted)";
                                self.set_state(name, PartitionState::Hibernated, why, |r| {
                                    r.pid = None;
                                    r.hibernation = Some(h.clone());
                                })
                                .await?;
                            }
                            None => {
                                let _ = std::fs::remove_dir_all(&dir);
                                let why = format!(
                                    "QEMU ended while hibernating, no complete image ({e})"
                                );
                                self.set_state(name, PartitionState::Failed, &why, |r| {
                                    r.pid = None;
                                    r.last_exit = Some(why.clone());
                                })
                                .await?;
                            }
                        }
                    }
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Starts the task that hibernates partitions idle for their
    /// `hibernate_idle_secs` (thresholds: `crate::idle`). It ends with the
    /// manager.
    pub(super) fn watch_idleness(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut trackers: HashMap<String, IdleTracker> = HashMap::new();
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tick.tick().await;
                let Some(m) = weak.upgrade() else { return };
                m.sample_idleness(&mut trackers).await;
            }
        });
    }

    async fn sample_idleness(self: &Arc<Self>, trackers: &mut HashMap<String, IdleTracker>) {
        // One read of this host's records a tick, whatever their number.
        let Ok(recs) = self.store.list(Scope::Host(&self.host)).await else {
            return;
        };
        let live: HashSet<String> = self.live.lock().unwrap().keys().cloned().collect();
        let watched: Vec<(String, u64, bool)> = recs
            .into_iter()
            .filter(|r| r.state == PartitionState::Running && live.contains(&r.name))
            .filter_map(|r| Some((r.name, r.hibernate_idle_secs?, r.net.is_some())))
            .collect();
        trackers.retain(|n, _| watched.iter().any(|(w, _, _)| w == n));
        for (name, secs, has_net) in watched {
            let Ok(cpu_ns) = self.cgroups.open(&name).cpu_usage_ns() else {
                continue;
            };
            let net_bytes = match has_net {
                true => tap_bytes(&net::tap_name(&self.instance, &name)),
                false => 0,
            };
            let idle = trackers.entry(name.clone()).or_default().observe(Sample {
                at: std::time::Instant::now(),
                cpu_ns,
                net_bytes,
            });
            if idle >= Duration::from_secs(secs) {
                trackers.remove(&name);
                tracing::info!(partition = %name, idle_secs = idle.as_secs(), "idle: hibernating");
                let m = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = m.hibernate(&name, HibernateReason::Idle).await {
                        tracing::warn!(partition = %name, error = %e, "idle hibernation failed");
                    }
                });
            }
        }
    }
}

/// Bytes received and sent on a TAP, from its kernel counters.
fn tap_bytes(tap: &str) -> u64 {
    ["rx_bytes", "tx_bytes"]
        .iter()
        .filter_map(|f| {
            std::fs::read_to_string(format!("/sys/class/net/{tap}/statistics/{f}")).ok()
        })
        .filter_map(|s| s.trim().parse::<u64>().ok())
        .sum()
}

/// The hibernation a complete image in `dir` describes (manifest present
/// and the state file of its length), for a record the restart rules mark
/// hibernated; the resume checks the hash.
fn complete_image(repository: &Path, dir: &Path, name: &str) -> Option<HibernationRecord> {
    let m = read_manifest(dir).ok()?;
    let len = std::fs::metadata(dir.join(bulkhead_engine::snapshot::STATE_FILE))
        .ok()?
        .len();
    if len != m.state.len {
        return None;
    }
    let location = dir
        .strip_prefix(repository)
        .ok()?
        .to_string_lossy()
        .into_owned();
    tracing::info!(partition = name, "complete hibernation image found");
    Some(HibernationRecord {
        location,
        bytes: m.state.len,
        sha256: m.state.sha256.clone(),
        saved_at: m.saved_at_unix_ms,
        reason: HibernateReason::Manual,
        config: serde_json::to_value(&m.spec).ok()?,
    })
}
