//! Mirror jobs: a disk of a running partition kept in step with a second
//! qcow2 file (a redundant copy) by QEMU's `blockdev-mirror` in
//! `write-blocking` mode: a full copy first, then every guest write reaches
//! both files before the guest sees it complete.
//!
//! The copy is passed to QEMU as a descriptor (a confined QEMU opens no host
//! path), added as node `mirror-<disk>`, and the job is `mirror-<disk>`.
//! The job is never completed (that would switch the guest onto the copy):
//! it is cancelled, which after READY leaves the copy equal to the disk.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;

use super::Partition;
use crate::EngineError;

/// How a disk's mirror job stands, as `query-block-jobs` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorJob {
    /// No job for this disk.
    Absent,
    /// Copying: `done` of `total` bytes of the first pass.
    Syncing { done: u64, total: u64 },
    /// In step: every completed write is in both files.
    Ready,
    /// Ended with an error (the copy is behind the disk).
    Failed(String),
}

#[derive(Deserialize)]
struct JobInfo {
    device: String,
    #[serde(default)]
    ready: bool,
    #[serde(default)]
    status: String,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    len: u64,
    #[serde(default)]
    error: Option<String>,
}

fn job_id(disk: &str) -> String {
    format!("mirror-{disk}")
}

impl Partition {
    /// Starts mirroring disk `disk` (its adapter id) into the file `target`
    /// of format `format`, of the same virtual size. Returns once the job
    /// runs; wait for [`MirrorJob::Ready`] with [`Partition::mirror_wait_ready`].
    ///
    /// A raw target is what a live copy wants: a guest's flush does not
    /// reach a mirror's target, so a qcow2 target's metadata would stay in
    /// this QEMU's cache (unseen by readers, lost if the process dies),
    /// while a raw file's data is in the host's page cache once written.
    pub async fn mirror_start(
        &self,
        disk: &str,
        target: &Path,
        format: crate::DiskFormat,
    ) -> Result<(), EngineError> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(target)
            .map_err(|e| EngineError::Host(format!("opening {}: {e}", target.display())))?;
        let set = self.qmp.add_fd(f.into()).await?;
        let node = job_id(disk);
        let mut spec = json!({
            "driver": format.as_str(),
            "node-name": node,
            "file": {"driver": "file", "filename": format!("/dev/fdset/{set}")},
        });
        if format == crate::DiskFormat::Qcow2 {
            // Only the file given: never what a copy's header names.
            spec["backing"] = serde_json::Value::Null;
        }
        let added = self.qmp.blockdev_add(spec).await;
        if let Err(e) = added {
            let _ = self.qmp.remove_fd(set).await;
            return Err(e.into());
        }
        let started = self
            .qmp
            .execute_value(
                "blockdev-mirror",
                Some(json!({
                    "job-id": node,
                    "device": format!("drive-{disk}"),
                    "target": node,
                    "sync": "full",
                    "copy-mode": "write-blocking",
                    // Kept after an error, so its reason can be read.
                    "auto-dismiss": false,
                })),
            )
            .await;
        if let Err(e) = started {
            let _ = self.qmp.blockdev_del(&node).await;
            let _ = self.qmp.remove_fd(set).await;
            return Err(e.into());
        }
        // QEMU holds its own descriptor now; the set is no longer needed.
        let _ = self.qmp.remove_fd(set).await;
        Ok(())
    }

    /// The state of disk `disk`'s mirror job.
    pub async fn mirror_status(&self, disk: &str) -> Result<MirrorJob, EngineError> {
        let jobs: Vec<JobInfo> = self.qmp.execute("query-block-jobs", None).await?;
        let id = job_id(disk);
        let Some(j) = jobs.into_iter().find(|j| j.device == id) else {
            return Ok(MirrorJob::Absent);
        };
        Ok(match (j.error, j.status.as_str(), j.ready) {
            (Some(e), _, _) => MirrorJob::Failed(e),
            (None, "concluded" | "aborting" | "null", _) => {
                MirrorJob::Failed(format!("the mirror job ended ({})", j.status))
            }
            (None, _, true) => MirrorJob::Ready,
            (None, _, false) => MirrorJob::Syncing {
                done: j.offset,
                total: j.len,
            },
        })
    }

    /// Waits until disk `disk`'s mirror job is READY (the copy in step), up
    /// to `timeout`; a failed or vanished job is an error with its reason.
    pub async fn mirror_wait_ready(
        &self,
        disk: &str,
        timeout: Duration,
    ) -> Result<(), EngineError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.mirror_status(disk).await? {
                MirrorJob::Ready => return Ok(()),
                MirrorJob::Failed(e) => return Err(EngineError::Host(format!("mirror of {disk}: {e}"))),
                MirrorJob::Absent => {
                    return Err(EngineError::Host(format!("mirror of {disk}: no job")))
                }
                MirrorJob::Syncing { done, total } if Instant::now() >= deadline => {
                    return Err(EngineError::Host(format!(
                        "mirror of {disk}: not in step after {timeout:?} ({done} of {total} bytes copied)"
                    )))
                }
                MirrorJob::Syncing { .. } => {}
            }
            // Polling: a READY event may come before a subscriber exists.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ends disk `disk`'s mirror job without switching the guest: cancelled
    /// (after READY the copy then equals the disk), dismissed, and the copy's
    /// node removed. No job is not an error.
    pub async fn mirror_stop(&self, disk: &str) -> Result<(), EngineError> {
        let id = job_id(disk);
        if self.mirror_status(disk).await? == MirrorJob::Absent {
            let _ = self.qmp.blockdev_del(&id).await;
            return Ok(());
        }
        let _ = self
            .qmp
            .execute_value("block-job-cancel", Some(json!({"device": id})))
            .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let jobs: Vec<JobInfo> = self.qmp.execute("query-block-jobs", None).await?;
            match jobs.iter().find(|j| j.device == id) {
                None => break,
                Some(j) if j.status == "concluded" => {
                    self.qmp
                        .execute_value("job-dismiss", Some(json!({"id": id})))
                        .await?;
                    break;
                }
                Some(j) if Instant::now() >= deadline => {
                    return Err(EngineError::Host(format!(
                        "mirror of {disk}: still {} 30 s after its cancel",
                        j.status
                    )))
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        self.qmp.blockdev_del(&id).await?;
        Ok(())
    }
}
