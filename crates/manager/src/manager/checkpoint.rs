//! Checkpoints (issue 12 item 3): a running partition's state saved into
//! its hibernation data while it runs on (the engine's
//! `Partition::checkpoint`), periodically (`checkpoint_every_ms`) or on
//! request; `restore-checkpoint` resumes a stopped or failed partition from
//! the last one. docs/cluster.md, "Checkpoints".
//!
//! Order of writes: the image goes into a fresh directory beside the
//! previous one (`<partition>.ckpt-<ms>.tmp`, state and manifest fsynced,
//! then renamed to `<partition>.ckpt-<ms>`, the parent fsynced); the record
//! then names it (`hibernation`, reason `checkpoint`, state still
//! `running`) in one compare-and-swap; only then are the previous image and
//! disk point removed. A failure anywhere before the record leaves the
//! guest running, the record and the previous checkpoint as they were.

use super::*;
use bulkhead_engine::checkpoint::{CheckpointOptions, POINT_PREFIX};
use bulkhead_engine::snapshot::read_manifest;
use bulkhead_store::HibernationRecord;

/// How often the periodic task looks for checkpoints due.
const TICK: Duration = Duration::from_secs(1);

/// Per-partition checkpoint bookkeeping of this daemon.
#[derive(Default)]
pub(crate) struct Checkpoints {
    /// Checkpoints taken by this daemon, by partition (the N of the events).
    count: Mutex<HashMap<String, u64>>,
    /// The last attempt, so a failing one is not retried at once.
    tried: Mutex<HashMap<String, std::time::Instant>>,
}

impl Manager {
    /// Takes one checkpoint of a running partition now. `periodic`: from the
    /// periodic task, which skips a partition busy with another operation
    /// rather than wait.
    pub(super) async fn checkpoint(
        self: &Arc<Self>,
        name: &str,
        periodic: bool,
    ) -> Result<PartitionRecord, ApiError> {
        let lock = self.op_lock(name);
        let _g = match lock.try_lock() {
            Ok(g) => g,
            Err(_) if !periodic => lock.lock().await,
            Err(_) => {
                return Err(ApiError::Conflict(format!(
                    "partition {name:?} is busy with another operation"
                )))
            }
        };
        let rec = self.get(name).await?;
        self.check_owned(&rec)?;
        if rec.state != PartitionState::Running {
            return Err(ApiError::Conflict(format!(
                "partition {name:?} is {}; only a running partition is checkpointed",
                rec.state
            )));
        }
        if periodic && rec.checkpoint_every_ms.is_none() {
            return Err(ApiError::Conflict(format!(
                "partition {name:?} has checkpoints off now"
            )));
        }
        if let Some(op) = self.store.operation_get(name).await? {
            if op.state.holds() {
                return Err(ApiError::Conflict(format!(
                    "partition {name:?} is held by remote-restart operation {}",
                    op.token
                )));
            }
        }
        let p = self.ready_partition(name).await?;
        let parent = self.repository().hibernation_dir(rec.client(), name);
        let at = now_ms();
        let point = format!("{POINT_PREFIX}{at}");
        let final_dir = parent.with_file_name(format!("{name}.ckpt-{at}"));
        let tmp = parent.with_file_name(format!("{name}.ckpt-{at}.tmp"));
        let opts = CheckpointOptions {
            in_pause: Some(Arc::new(|| {
                super::hibernate::failpoint("checkpoint-in-pause")
            })),
            ..Default::default()
        };
        let taken = p.checkpoint(&tmp, &point, opts).await;
        let (m, stats) = match taken {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(self.checkpoint_failed(name, &engine_err(e)).await);
            }
        };
        if let Err(e) = publish(&tmp, &final_dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            p.drop_disk_point(&point).await;
            return Err(self.checkpoint_failed(name, &internal(e)).await);
        }
        let location = final_dir
            .strip_prefix(self.repository().root())
            .map_err(internal)?
            .to_string_lossy()
            .into_owned();
        let h = HibernationRecord {
            location,
            bytes: m.state.len,
            sha256: m.state.sha256.clone(),
            saved_at: m.saved_at_unix_ms,
            reason: HibernateReason::Checkpoint,
            config: serde_json::to_value(&m.spec).map_err(internal)?,
        };
        let n = {
            let mut c = self.checkpoints.count.lock().unwrap();
            let n = c.entry(name.to_string()).or_default();
            *n += 1;
            *n
        };
        let ev = format!(
            "checkpoint {n}: paused {} ms, {} MiB",
            stats.paused.as_millis(),
            stats.bytes >> 20
        );
        let old = match self.record_checkpoint(name, &h, &ev).await {
            Ok(old) => old,
            Err(e) => {
                // Not the partition's: gone, with its point.
                let _ = std::fs::remove_dir_all(&final_dir);
                p.drop_disk_point(&point).await;
                return Err(self.checkpoint_failed(name, &e).await);
            }
        };
        // Only now is the previous checkpoint superseded.
        if let Some(old) = old.filter(|o| o.location != h.location) {
            if let Ok(dir) = self.image_dir_of(&old) {
                if let Some(prev) = read_manifest(&dir).ok().and_then(|m| m.disk_point) {
                    p.drop_disk_point(&prev).await;
                }
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        tracing::info!(
            partition = name,
            paused_ms = stats.paused.as_millis() as u64,
            bytes = stats.bytes,
            ms = stats.elapsed.as_millis() as u64,
            "checkpoint"
        );
        self.get(name).await
    }

    /// The record names the new checkpoint if it is still this host's and
    /// running; returns the hibernation data it named before.
    async fn record_checkpoint(
        &self,
        name: &str,
        h: &HibernationRecord,
        ev: &str,
    ) -> Result<Option<HibernationRecord>, ApiError> {
        for _ in 0..MAX_CONFLICTS {
            let mut rec = self.get(name).await?;
            if rec.state != PartitionState::Running || rec.host != self.host {
                return Err(ApiError::Conflict(format!(
                    "partition {name:?} is {} on host {} now; the checkpoint is not recorded",
                    rec.state, rec.host
                )));
            }
            let old = rec.hibernation.replace(h.clone());
            match self.store.update(&rec, ev).await {
                Ok(_) => return Ok(old),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::Conflict(format!(
            "partition {name:?} kept changing; the checkpoint is not recorded"
        )))
    }

    /// An event for the failure (the record's content is unchanged: an
    /// update that only appends the event); the error to return.
    async fn checkpoint_failed(&self, name: &str, e: &ApiError) -> ApiError {
        let msg = format!("checkpoint failed, running on: {e}");
        tracing::warn!(partition = name, error = %e, "checkpoint failed");
        if let Err(w) = self.modify(name, &msg, |_| {}).await {
            tracing::warn!(partition = name, error = %w, "recording a failed checkpoint");
        }
        ApiError::Engine(msg)
    }

    /// Sets (or with None, clears) how often a partition is checkpointed.
    /// A writable disk without points in time (raw) is refused.
    pub(super) async fn set_checkpoint_every(
        &self,
        name: &str,
        every: Option<u64>,
    ) -> Result<PartitionRecord, ApiError> {
        let rec = self.get(name).await?;
        self.check_owned(&rec)?;
        if every.is_some() {
            self.check_checkpointable(&rec)?;
        }
        let ev = match every {
            Some(ms) => format!("checkpoints every {} s", ms / 1000),
            None => "checkpoints off".to_string(),
        };
        self.modify(name, &ev, |r| r.checkpoint_every_ms = every)
            .await
    }

    /// Refuses a partition a checkpoint could not take a disk point of.
    pub(super) fn check_checkpointable(&self, rec: &PartitionRecord) -> Result<(), ApiError> {
        let spec = self.spec_for(rec);
        bulkhead_engine::checkpoint::point_disks(spec.adapters.iter())
            .map(drop)
            .map_err(|e| ApiError::BadRequest(format!("partition {:?}: {e}", rec.name)))
    }

    /// `restore-checkpoint`: a stopped or failed partition resumes from its
    /// last checkpoint (memory, and its disks reverted to the checkpoint's
    /// point), through the normal resume path.
    pub(super) async fn restore_checkpoint(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<PartitionRecord, ApiError> {
        {
            let lock = self.op_lock(name);
            let _g = lock.lock().await;
            let rec = self.get(name).await?;
            self.check_owned(&rec)?;
            if !matches!(rec.state, PartitionState::Stopped | PartitionState::Failed) {
                return Err(ApiError::Conflict(format!(
                    "partition {name:?} is {}; only a stopped or failed partition is restored from its checkpoint",
                    rec.state
                )));
            }
            if !rec
                .hibernation
                .as_ref()
                .is_some_and(|h| h.reason == HibernateReason::Checkpoint)
            {
                return Err(ApiError::Conflict(format!(
                    "partition {name:?} has no checkpoint"
                )));
            }
            self.cleanup(&rec).await;
            let ev = "restoring from its last checkpoint";
            self.store_cas_state(&rec, PartitionState::Hibernated, ev)
                .await?;
        }
        self.resume(name, false, false).await
    }

    /// `rec` (as read) goes to `state` in one compare-and-swap.
    async fn store_cas_state(
        &self,
        rec: &PartitionRecord,
        state: PartitionState,
        ev: &str,
    ) -> Result<(), ApiError> {
        let mut r = rec.clone();
        r.state = state;
        r.state_since = now_ms();
        r.pid = None;
        match self.store.update(&r, ev).await {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict { .. }) => Err(ApiError::Conflict(format!(
                "partition {:?} changed meanwhile; try again",
                rec.name
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Before a restore from checkpoint data: the disks go back to the
    /// checkpoint's point (their content when the memory was saved).
    pub(super) async fn revert_to_checkpoint(
        &self,
        h: &HibernationRecord,
        m: &bulkhead_engine::Manifest,
        spec: &PartitionSpec,
    ) -> Result<(), ApiError> {
        if h.reason != HibernateReason::Checkpoint {
            return Ok(());
        }
        let Some(point) = m.disk_point.clone() else {
            return Ok(());
        };
        let plugged = m.hotplugged.iter().map(|r| &r.adapter);
        let disks = bulkhead_engine::checkpoint::point_disks(spec.adapters.iter().chain(plugged))
            .map_err(ApiError::Conflict)?;
        tokio::task::spawn_blocking(move || {
            bulkhead_engine::checkpoint::revert_disks(&disks, &point)
        })
        .await
        .map_err(internal)?
        .map_err(engine_err)
    }

    /// Removes a partition's checkpoint images no record names (a daemon
    /// killed between the rename and the record, or before the cleanup).
    pub(super) fn discard_stray_checkpoints(&self, rec: &PartitionRecord) {
        let parent = self.repository().hibernation_dir(rec.client(), &rec.name);
        let Some(dir) = parent.parent() else { return };
        let keep = rec
            .hibernation
            .as_ref()
            .and_then(|h| self.image_dir_of(h).ok());
        let prefix = format!("{}.ckpt-", rec.name);
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = e.path();
            let ours = e.file_name().to_string_lossy().starts_with(&prefix);
            if ours && Some(&path) != keep.as_ref() {
                let _ = std::fs::remove_dir_all(path);
            }
        }
    }

    /// Starts the task that checkpoints running partitions every their
    /// `checkpoint_every_ms`. It ends with the manager.
    pub(super) fn watch_checkpoints(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            loop {
                tick.tick().await;
                let Some(m) = weak.upgrade() else { return };
                m.checkpoints_due().await;
            }
        });
    }

    async fn checkpoints_due(self: &Arc<Self>) {
        let Ok(recs) = self.store.list(Scope::Host(&self.host)).await else {
            return;
        };
        let live: HashSet<String> = self.live.lock().unwrap().keys().cloned().collect();
        let now = now_ms();
        for r in recs {
            let Some(every) = r.checkpoint_every_ms else {
                continue;
            };
            if r.state != PartitionState::Running || !live.contains(&r.name) {
                self.checkpoints.tried.lock().unwrap().remove(&r.name);
                continue;
            }
            // From the last checkpoint recorded, else from the start.
            let last = match &r.hibernation {
                Some(h) if h.reason == HibernateReason::Checkpoint => h.saved_at,
                _ => r.started_at.unwrap_or(r.state_since),
            };
            let recently = self
                .checkpoints
                .tried
                .lock()
                .unwrap()
                .get(&r.name)
                .is_some_and(|t| t.elapsed() < Duration::from_millis(every));
            if now.saturating_sub(last) < every || recently {
                continue;
            }
            self.checkpoints
                .tried
                .lock()
                .unwrap()
                .insert(r.name.clone(), std::time::Instant::now());
            // One at a time: checkpoints share the host's disk bandwidth.
            if let Err(e) = self.checkpoint(&r.name, true).await {
                tracing::debug!(partition = %r.name, error = %e, "periodic checkpoint");
            }
        }
    }
}

/// The image in `tmp` becomes `dir`, durably.
fn publish(tmp: &Path, dir: &Path) -> std::io::Result<()> {
    std::fs::rename(tmp, dir)?;
    std::fs::File::open(dir.parent().unwrap_or(Path::new("/")))?.sync_all()
}

impl Manager {
    pub(super) async fn checkpoint_command(
        self: &Arc<Self>,
        c: crate::checkpoint::CheckpointCommand,
    ) -> Result<PartitionRecord, ApiError> {
        use crate::checkpoint::CheckpointCommand as C;
        match c {
            C::Now { name } => self.checkpoint(&name, false).await,
            C::SetEvery { name, req } => self.set_checkpoint_every(&name, req.every_ms).await,
            C::Restore { name } => self.restore_checkpoint(&name).await,
        }
    }
}
