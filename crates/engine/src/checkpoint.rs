//! Checkpoints: a running partition's state saved into an image while it
//! runs on. QEMU migrates to the file while the guest runs (pre-copy), then
//! stops it for the last dirty pages and the devices; with
//! `pause-before-switchover` it waits, stopped and flushed, before the
//! devices, and an internal snapshot of every writable qcow2 disk is taken
//! there in one QMP `transaction`: the disks' point in time is the memory's.
//! The guest runs again as soon as the stream is complete; the image is made
//! durable while it runs. A restore of the image first reverts each disk to
//! that point ([`revert_disks`]). See docs/cluster.md, "Checkpoints".

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::partition::Partition;
use crate::snapshot::{
    err, finish_image, io_err, migrate_into, observe, poll, refuse_unmigratable, Follower,
    Manifest, SaveProgress, PARTIAL, STATE_FILE,
};
use crate::spec::{AdapterSpec, DiskFormat, DiskSpec};
use crate::EngineError;

/// Names of Bulkhead's disk points start so; others' snapshots are left alone.
pub const POINT_PREFIX: &str = "bulkhead-ckpt-";
/// How long pre-copy runs before the pause it aims at is raised tenfold.
const RAISE_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct CheckpointOptions {
    /// Migration bandwidth cap, bytes/s.
    pub max_bandwidth: u64,
    /// The pause QEMU aims at for the stop-and-copy (its `downtime-limit`);
    /// raised step by step when a guest dirties memory faster than it is
    /// copied, so a checkpoint always ends.
    pub downtime_limit: Duration,
    /// Bound on the whole checkpoint.
    pub timeout: Duration,
    pub progress: Option<tokio::sync::watch::Sender<SaveProgress>>,
    /// Called in the pause, after the disk point (crash tests kill the
    /// caller there).
    pub in_pause: Option<std::sync::Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for CheckpointOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointOptions")
            .field("max_bandwidth", &self.max_bandwidth)
            .field("downtime_limit", &self.downtime_limit)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Default for CheckpointOptions {
    fn default() -> Self {
        CheckpointOptions {
            max_bandwidth: 10 << 30,
            downtime_limit: Duration::from_millis(50),
            timeout: Duration::from_secs(600),
            progress: None,
            in_pause: None,
        }
    }
}

/// What a checkpoint cost the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointStats {
    /// The guest was stopped this long (QEMU's STOP to RESUME events).
    pub paused: Duration,
    /// Bytes of the state file.
    pub bytes: u64,
    /// From the call to the guest running again.
    pub elapsed: Duration,
}

/// The writable disks a checkpoint must take a point of: every one must be
/// qcow2 (a raw file has no internal snapshots); read-only disks need none.
pub fn point_disks<'a>(
    adapters: impl IntoIterator<Item = &'a AdapterSpec>,
) -> Result<Vec<DiskSpec>, String> {
    let mut out = Vec::new();
    for a in adapters {
        let AdapterSpec::Disk(d) = a else { continue };
        if d.readonly {
            continue;
        }
        if d.format != DiskFormat::Qcow2 {
            return Err(format!(
                "disk {} ({}) is {} and writable: a checkpoint needs a point in time of every writable disk, which only qcow2 has (attach it read-only or convert it)",
                d.id,
                d.path.display(),
                d.format.as_str()
            ));
        }
        out.push(d.clone());
    }
    Ok(out)
}

impl Partition {
    /// The adapters a checkpoint covers: the spec's and those hot-plugged.
    fn all_disks(&self) -> Result<Vec<DiskSpec>, String> {
        let plugged: Vec<AdapterSpec> = self.hotplugged().into_iter().map(|h| h.adapter).collect();
        point_disks(self.spec().adapters.iter().chain(plugged.iter()))
    }

    /// Saves the partition's state into `dir` (as [`Partition::save`]) while
    /// it runs, with a disk point named `point` taken in every writable disk
    /// at the instant of the memory; the guest runs on. On failure the guest
    /// runs as before, no point of that name is left and `dir` holds no
    /// image (a previous image there is not touched: give a fresh `dir`).
    pub async fn checkpoint(
        &self,
        dir: &Path,
        point: &str,
        opts: CheckpointOptions,
    ) -> Result<(Manifest, CheckpointStats), EngineError> {
        let t0 = Instant::now();
        if let Some(e) = self.exit_info() {
            return Err(EngineError::NotRunning(e.reason.to_string()));
        }
        if !point.starts_with(POINT_PREFIX) {
            return Err(err(format!("a disk point is named {POINT_PREFIX}...")));
        }
        let disks = self.all_disks().map_err(err)?;
        refuse_unmigratable(self).await?;
        if !self.qmp().query_status().await?.running {
            return Err(err("the guest is not running: nothing to checkpoint"));
        }
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let partial = dir.join(format!("{STATE_FILE}{PARTIAL}"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .map_err(|e| io_err(&partial, e))?;
        let mut events = self.qmp().events();
        let follower = Follower::start(&partial)?;
        let migrated = self
            .migrate_live(&file, &disks, point, &opts, &follower)
            .await;
        // The guest runs again before anything else: the pause ends here.
        let resumed = self.cont_if_stopped().await;
        let elapsed = t0.elapsed();
        let hashed = follower.finish().await;
        let done = match (migrated, resumed, hashed) {
            (Ok(seen), Ok(()), Ok(hashed)) => {
                let paused = pause_of(&mut events, seen).await;
                finish_image(self, dir, file, &partial, hashed, Some(point.to_string()))
                    .await
                    .map(|m| {
                        let bytes = m.state.len;
                        let stats = CheckpointStats {
                            paused,
                            bytes,
                            elapsed,
                        };
                        (m, stats)
                    })
            }
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e),
        };
        if done.is_err() {
            let _ = std::fs::remove_file(&partial);
            let _ = std::fs::remove_file(dir.join(crate::snapshot::MANIFEST_FILE));
            let _ = std::fs::remove_file(dir.join(STATE_FILE));
            if self.exit_info().is_none() {
                self.drop_disk_point(point).await;
            }
        }
        done
    }

    /// Pre-copy, then the point taken in the pause before the switchover.
    /// Returns how long the pause lasted as seen from here (a fallback when
    /// QEMU's events are missing).
    async fn migrate_live(
        &self,
        file: &std::fs::File,
        disks: &[DiskSpec],
        point: &str,
        opts: &CheckpointOptions,
        follower: &Follower,
    ) -> Result<Duration, EngineError> {
        let qmp = self.qmp();
        let shared = self.spec().memory_file.as_ref().is_some_and(|m| m.share);
        let limit = opts.downtime_limit.as_millis().max(1) as u64;
        qmp.migrate_set_parameters(
            json!({ "max-bandwidth": opts.max_bandwidth, "downtime-limit": limit }),
        )
        .await?;
        qmp.migrate_set_capabilities(&[
            ("x-ignore-shared", shared),
            ("pause-before-switchover", true),
        ])
        .await?;
        if let Err(e) = migrate_into(qmp, file).await {
            self.switchover_pause_off().await;
            return Err(e);
        }
        let start = tokio::time::Instant::now();
        let deadline = start + opts.timeout;
        // (downtime limit ms, when to raise it next, when the pause began)
        let state = std::sync::Mutex::new((limit, start + RAISE_EVERY, None::<Instant>));
        let done = poll(self, deadline, "during the checkpoint", || async {
            let now = tokio::time::Instant::now();
            let raise = {
                let mut s = state.lock().unwrap();
                let due = now >= s.1 && s.2.is_none();
                if due {
                    // Not converging (a guest dirtying memory fast): accept
                    // a longer pause rather than copy forever.
                    s.0 = (s.0 * 10).min(60_000);
                    s.1 = now + RAISE_EVERY;
                }
                due.then_some(s.0)
            };
            if let Some(l) = raise {
                qmp.migrate_set_parameters(json!({ "downtime-limit": l }))
                    .await?;
            }
            let info = qmp.query_migrate().await?;
            let pausing = info.status.as_deref() == Some("pre-switchover")
                && state.lock().unwrap().2.is_none();
            if pausing {
                state.lock().unwrap().2 = Some(Instant::now());
                // Stopped and flushed: the disks' point is now.
                snapshot_disks(qmp, disks, point).await?;
                if let Some(f) = &opts.in_pause {
                    f();
                }
                qmp.execute_value(
                    "migrate-continue",
                    Some(json!({ "state": "pre-switchover" })),
                )
                .await?;
            }
            observe(&info, follower, &opts.progress)
        })
        .await;
        let paused_at = state.lock().unwrap().2;
        if done.is_err() && self.exit_info().is_none() {
            let _ = qmp.migrate_cancel().await;
            // A cancel is asynchronous: wait until it has ended so the
            // guest is not left stopped by a late switchover.
            let until = tokio::time::Instant::now() + Duration::from_secs(30);
            let _ = poll(self, until, "cancelling the checkpoint", || async {
                let s = qmp.query_migrate().await?.status.unwrap_or_default();
                Ok(matches!(s.as_str(), "cancelled" | "failed" | "completed").then_some(()))
            })
            .await;
        }
        self.switchover_pause_off().await;
        done.map(|()| paused_at.map_or(Duration::ZERO, |t| t.elapsed()))
    }

    /// For a caller that restarted and adopted this QEMU: a checkpoint it
    /// left midway (pre-copy, or the guest stopped at or after the
    /// switchover) is cancelled and the guest runs again. True when there
    /// was one.
    pub async fn end_interrupted_checkpoint(&self) -> Result<bool, EngineError> {
        let qmp = self.qmp();
        let st = qmp.query_migrate().await?.status.unwrap_or_default();
        let mid = !matches!(
            st.as_str(),
            "" | "none" | "completed" | "failed" | "cancelled"
        );
        if mid {
            let _ = qmp.migrate_cancel().await;
            let until = tokio::time::Instant::now() + Duration::from_secs(30);
            poll(self, until, "cancelling a checkpoint", || async {
                let s = qmp.query_migrate().await?.status.unwrap_or_default();
                Ok(matches!(s.as_str(), "cancelled" | "failed" | "completed").then_some(()))
            })
            .await?;
        }
        self.switchover_pause_off().await;
        let status = qmp.query_status().await?;
        let left_stopped = matches!(status.status.as_str(), "postmigrate" | "finish-migrate");
        if (mid || left_stopped) && !status.running {
            qmp.cont().await?;
        }
        Ok(mid || left_stopped)
    }

    /// A later save (a hibernation) must not stop at the switchover.
    async fn switchover_pause_off(&self) {
        let _ = self
            .qmp()
            .migrate_set_capabilities(&[("pause-before-switchover", false)])
            .await;
    }

    async fn cont_if_stopped(&self) -> Result<(), EngineError> {
        if self.exit_info().is_some() {
            return Err(EngineError::NotRunning(
                "QEMU ended during the checkpoint".into(),
            ));
        }
        if !self.qmp().query_status().await?.running {
            self.qmp().cont().await?;
        }
        Ok(())
    }

    /// Deletes disk point `point` from every writable disk of the running
    /// partition (a checkpoint superseded or not recorded). Best effort: a
    /// disk without it is skipped, and a point left over is removed at the
    /// next revert.
    pub async fn drop_disk_point(&self, point: &str) {
        let Ok(disks) = self.all_disks() else { return };
        for d in disks {
            let r = self
                .qmp()
                .execute_value(
                    "blockdev-snapshot-delete-internal-sync",
                    Some(json!({ "device": node(&d), "name": point })),
                )
                .await;
            if let Err(e) = r {
                tracing::debug!(disk = %d.id, point, error = %e, "dropping a disk point");
            }
        }
    }
}

fn node(d: &DiskSpec) -> String {
    format!("drive-{}", d.id)
}

/// One internal snapshot per disk, all or none (a QMP transaction).
async fn snapshot_disks(
    qmp: &bulkhead_qmp::QmpClient,
    disks: &[DiskSpec],
    point: &str,
) -> Result<(), EngineError> {
    if disks.is_empty() {
        return Ok(());
    }
    let actions: Vec<Value> = disks
        .iter()
        .map(|d| {
            json!({
                "type": "blockdev-snapshot-internal-sync",
                "data": { "device": node(d), "name": point },
            })
        })
        .collect();
    qmp.execute_value("transaction", Some(json!({ "actions": actions })))
        .await
        .map_err(|e| err(format!("taking the disks' point {point}: {e}")))?;
    Ok(())
}

/// The pause from QEMU's own STOP and RESUME events (their timestamps),
/// else `fallback`.
async fn pause_of(
    events: &mut tokio::sync::broadcast::Receiver<bulkhead_qmp::Event>,
    fallback: Duration,
) -> Duration {
    let micros =
        |e: &bulkhead_qmp::Event| e.timestamp.seconds * 1_000_000 + e.timestamp.microseconds;
    let mut stop = None;
    let wait = Duration::from_secs(2);
    while let Ok(ev) = bulkhead_qmp::wait_event(events, wait, "RESUME", |e| {
        matches!(e.name.as_str(), "STOP" | "RESUME")
    })
    .await
    {
        match (ev.name.as_str(), stop) {
            ("STOP", _) => stop = Some(micros(&ev)),
            ("RESUME", Some(s)) => {
                return Duration::from_micros(micros(&ev).saturating_sub(s).max(0) as u64)
            }
            _ => {}
        }
    }
    fallback
}

/// Reverts each writable disk to point `point` (the disks of a stopped
/// partition, before a restore of the checkpoint that names it), then
/// deletes every other Bulkhead point in them. A disk without the point is
/// refused before any disk is touched. Blocking: runs `qemu-img`.
pub fn revert_disks(disks: &[DiskSpec], point: &str) -> Result<(), EngineError> {
    // The name comes from a manifest in a shared repository: one of ours
    // or nothing (it becomes an argument of qemu-img).
    let plain = point
        .strip_prefix(POINT_PREFIX)
        .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()));
    if !plain {
        return Err(err(format!("{point:?} is not a Bulkhead disk point")));
    }
    let mut lists = Vec::new();
    for d in disks {
        let names = points_of(&d.path)?;
        if !names.iter().any(|n| n == point) {
            return Err(err(format!(
                "disk {} ({}) has no point {point}: it is not the disk the checkpoint was taken with",
                d.id,
                d.path.display()
            )));
        }
        lists.push((d.path.clone(), names));
    }
    for (path, names) in lists {
        qemu_img(&["snapshot", "-a", point], &path)?;
        for n in names.iter().filter(|n| *n != point) {
            qemu_img(&["snapshot", "-d", n], &path)?;
        }
    }
    Ok(())
}

/// The Bulkhead points in a qcow2 file.
fn points_of(path: &Path) -> Result<Vec<String>, EngineError> {
    let out = qemu_img(&["info", "--output=json"], path)?;
    let v: Value = serde_json::from_slice(&out)
        .map_err(|e| err(format!("qemu-img info of {}: {e}", path.display())))?;
    Ok(v["snapshots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .filter(|n| n.starts_with(POINT_PREFIX))
        .map(str::to_string)
        .collect())
}

fn qemu_img(args: &[&str], path: &Path) -> Result<Vec<u8>, EngineError> {
    let path: PathBuf = path.into();
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .arg(&path)
        .output()
        .map_err(|e| EngineError::Host(format!("running qemu-img (qemu-utils): {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "qemu-img {} {}: {}",
            args.join(" "),
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(id: &str, format: DiskFormat, readonly: bool) -> AdapterSpec {
        AdapterSpec::Disk(DiskSpec {
            id: id.into(),
            path: format!("/d/{id}").into(),
            format,
            readonly,
            backing: None,
            shared_read: false,
        })
    }

    #[test]
    fn only_writable_qcow2_disks_take_points_and_raw_is_refused() {
        let a = [
            disk("a", DiskFormat::Qcow2, false),
            disk("b", DiskFormat::Raw, true),
            disk("c", DiskFormat::Qcow2, true),
        ];
        let got = point_disks(a.iter()).unwrap();
        assert_eq!(got.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["a"]);
        let bad = [
            disk("a", DiskFormat::Qcow2, false),
            disk("r", DiskFormat::Raw, false),
        ];
        let e = point_disks(bad.iter()).unwrap_err();
        assert!(e.contains("disk r") && e.contains("raw"), "{e}");
    }

    #[test]
    fn revert_refuses_a_disk_without_the_point_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.qcow2");
        let ok = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&path)
            .arg("1M")
            .status()
            .unwrap();
        assert!(ok.success());
        qemu_img(&["snapshot", "-c", "bulkhead-ckpt-1"], &path).unwrap();
        qemu_img(&["snapshot", "-c", "bulkhead-ckpt-2"], &path).unwrap();
        qemu_img(&["snapshot", "-c", "theirs"], &path).unwrap();
        let d = DiskSpec {
            id: "d".into(),
            path: path.clone(),
            format: DiskFormat::Qcow2,
            readonly: false,
            backing: None,
            shared_read: false,
        };
        let e = revert_disks(std::slice::from_ref(&d), "bulkhead-ckpt--x").unwrap_err();
        assert!(e.to_string().contains("not a Bulkhead disk point"), "{e}");
        let e = revert_disks(std::slice::from_ref(&d), "bulkhead-ckpt-3").unwrap_err();
        assert!(e.to_string().contains("no point"), "{e}");
        assert_eq!(points_of(&path).unwrap().len(), 2);
        revert_disks(std::slice::from_ref(&d), "bulkhead-ckpt-2").unwrap();
        assert_eq!(points_of(&path).unwrap(), ["bulkhead-ckpt-2"]);
        let all = String::from_utf8(qemu_img(&["snapshot", "-l"], &path).unwrap()).unwrap();
        assert!(all.contains("theirs"), "{all}");
    }
}
