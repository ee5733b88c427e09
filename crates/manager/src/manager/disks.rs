//! Disks hot-plugged into running partitions. Their paths pass the storage
//! roots' check (`storage::Roots::check_disk`) as disks given at create do.

use super::{engine_err, Manager};
use crate::api::{ApiError, AttachDisk, AttachedDisk, DetachedDisk};
use crate::lu::types::AttachLu;
use bulkhead_engine::{AdapterSpec, BackingFile, DiskFormat, DiskSpec, EngineError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the guest has to release a disk being removed. ACPI hot-plug on
/// q35 releases it within a fraction of a second (shared notes, §5); a guest
/// that never does must not hold the API call forever.
const DETACH_TIMEOUT: Duration = Duration::from_secs(30);

/// `raw` or `qcow2`, from the request or else from the file name.
pub fn disk_format(path: &Path, given: Option<&str>) -> Result<DiskFormat, ApiError> {
    match given {
        None => Ok(DiskFormat::guess(path)),
        Some("raw") => Ok(DiskFormat::Raw),
        Some("qcow2") => Ok(DiskFormat::Qcow2),
        Some(f) => Err(ApiError::BadRequest(format!(
            "disk format {f:?} must be raw or qcow2"
        ))),
    }
}

/// What a hot-plugged disk is: a checked file of the storage roots, or an LU.
enum Source {
    File(PathBuf, Option<Vec<BackingFile>>, DiskFormat),
    Lu(String),
}

fn attached(d: &DiskSpec, slot: u32) -> AttachedDisk {
    AttachedDisk {
        id: d.id.clone(),
        path: d.path.to_string_lossy().into_owned(),
        format: d.format.as_str().to_string(),
        readonly: d.readonly,
        slot,
        served_by_copy: None,
    }
}

/// What the engine refused because of the request is the client's error.
fn hotplug_err(e: EngineError) -> ApiError {
    match e {
        EngineError::InvalidSpec(_) | EngineError::MissingFile { .. } => {
            ApiError::BadRequest(e.to_string())
        }
        other => engine_err(other),
    }
}

impl Manager {
    /// Hot-plugs a disk into a running partition's free hot-plug port.
    pub(super) async fn attach_disk(
        &self,
        name: &str,
        req: AttachDisk,
    ) -> Result<AttachedDisk, ApiError> {
        let format = disk_format(Path::new(&req.path), req.format.as_deref())?;
        let checked = self
            .roots
            .check_disk(&req.path, format.as_str())
            .map_err(ApiError::BadRequest)?;
        let source = Source::File(checked.path, checked.backing, format);
        self.hotplug(name, req.id, req.readonly, source).await
    }

    /// Hot-plugs an LU of the partition's client: locked in the store for
    /// this adapter first (ownership checked in the same transaction), then
    /// confined to the client's area; the lock goes with the disk.
    pub(super) async fn attach_lu(
        &self,
        name: &str,
        req: AttachLu,
    ) -> Result<AttachedDisk, ApiError> {
        crate::lu::check_name("LU", &req.lu).map_err(ApiError::BadRequest)?;
        self.hotplug(name, req.id, req.readonly, Source::Lu(req.lu))
            .await
    }

    async fn hotplug(
        &self,
        name: &str,
        id: Option<String>,
        readonly: bool,
        source: Source,
    ) -> Result<AttachedDisk, ApiError> {
        let lock = self.op_lock(name);
        let _g = lock.lock().await;
        let rec = self.get(name).await?;
        if rec.hotplug_slots == 0 {
            return Err(ApiError::Conflict(format!(
                "partition {name:?} has no hot-plug ports; create it with --hotplug N to add disks while it runs"
            )));
        }
        if let Some(id) = &id {
            if !bulkhead_engine::spec::valid_name(id) || id.len() > 16 {
                return Err(ApiError::BadRequest(format!(
                    "disk id {id:?} must be 1-16 characters of a-z, 0-9 and '-'"
                )));
            }
            if id.starts_with(crate::grants::DEVICE_PREFIX) {
                return Err(ApiError::BadRequest(format!(
                    "disk id {id:?}: ids starting with {:?} are the grant service's",
                    crate::grants::DEVICE_PREFIX
                )));
            }
        }
        let p = self.ready_partition(name).await?;
        let used = p.hotplugged();
        if used.len() >= rec.hotplug_slots as usize {
            return Err(ApiError::Conflict(format!(
                "all {} hot-plug ports of {name:?} are in use; remove a disk first",
                rec.hotplug_slots
            )));
        }
        let taken = |id: &str| {
            used.iter().any(|h| h.adapter.id() == id)
                || p.spec().adapters.iter().any(|a| a.id() == id)
        };
        let id = match id {
            Some(id) if taken(&id) => {
                return Err(ApiError::Conflict(format!(
                    "partition {name:?} already has a device {id:?}"
                )))
            }
            Some(id) => id,
            None => (0..)
                .map(|i| format!("hot{i}"))
                .find(|id| !taken(id))
                .expect("a free id among infinitely many"),
        };
        let (path, backing, format, lu, copy) = match source {
            Source::File(path, backing, format) => (path, backing, format, None, None),
            Source::Lu(lu) => {
                let (checked, copy) = self.lock_hotplugged_lu(&rec, &id, &lu, readonly).await?;
                let format = crate::lu::format_of(&checked.path.to_string_lossy());
                (checked.path, checked.backing, format, Some(lu), copy)
            }
        };
        let disk = DiskSpec {
            id,
            path,
            format,
            readonly,
            backing,
            shared_read: copy.is_some(),
        };
        if let Err(e) = p.hotplug_disk(disk.clone()).await {
            if lu.is_some() {
                self.release_adapter(name, &disk.id).await;
            }
            return Err(hotplug_err(e));
        }
        if let (Some(l), false) = (&lu, readonly) {
            // A mirrored LU attaches only with its copy in step.
            if let Err(e) = self.mirror_attached(l, &disk.id, &p).await {
                if let Err(u) = p.unplug(&disk.id, DETACH_TIMEOUT).await {
                    tracing::warn!(partition = name, disk = %disk.id, error = %u, "removing a disk whose mirror failed");
                }
                self.release_adapter(name, &disk.id).await;
                return Err(e);
            }
        }
        let slot = p
            .hotplugged()
            .iter()
            .find(|h| h.adapter.id() == disk.id)
            .map(|h| h.slot)
            .ok_or_else(|| ApiError::Internal("hot-plugged disk not recorded".into()))?;
        let what = match (&lu, &copy) {
            (Some(l), Some(c)) => format!("LU {l} read from its redundant copy {c}: "),
            (Some(l), None) => format!("LU {l}: "),
            _ => String::new(),
        };
        let ev = format!(
            "disk {} hot-plugged ({what}{})",
            disk.id,
            disk.path.display()
        );
        tracing::info!(partition = name, disk = %disk.id, slot, "disk hot-plugged");
        self.record_event(name, &ev).await;
        Ok(AttachedDisk {
            served_by_copy: copy,
            ..attached(&disk, slot)
        })
    }

    /// Unplugs a hot-plugged disk; answers once the guest released it.
    pub(super) async fn detach_disk(&self, name: &str, id: &str) -> Result<DetachedDisk, ApiError> {
        let lock = self.op_lock(name);
        let _g = lock.lock().await;
        self.get(name).await?;
        let p = self.ready_partition(name).await?;
        if !p.hotplugged().iter().any(|h| h.adapter.id() == id) {
            return Err(ApiError::NoDevice(format!(
                "partition {name:?} has no hot-plugged disk {id:?}"
            )));
        }
        // A mirror job holds the disk's node; it ends first (the copy in step).
        p.mirror_stop(id).await.map_err(engine_err)?;
        p.unplug(id, DETACH_TIMEOUT).await.map_err(|e| {
            engine_err(format!(
                "removing disk {id:?}: {e} (the disk stays attached until the guest releases it)"
            ))
        })?;
        self.release_adapter(name, id).await;
        tracing::info!(partition = name, disk = id, "disk removed");
        self.record_event(name, &format!("disk {id} removed")).await;
        Ok(DetachedDisk { id: id.to_string() })
    }

    /// Adds to the partition's history. The device change it records has
    /// happened either way, so a failed write is logged, not reported.
    pub(crate) async fn record_event(&self, name: &str, event: &str) {
        if let Err(e) = self.modify(name, event, |_| {}).await {
            tracing::warn!(partition = name, error = %e, event, "recording event");
        }
    }

    /// The disks hot-plugged into a partition's running QEMU.
    pub(super) fn hotplugged_disks(&self, name: &str) -> Vec<AttachedDisk> {
        let mut v: Vec<AttachedDisk> = self
            .running(name)
            .map(|p| p.hotplugged())
            .unwrap_or_default()
            .iter()
            .filter_map(|h| match &h.adapter {
                AdapterSpec::Disk(d) => Some(attached(d, h.slot)),
                _ => None,
            })
            .collect();
        v.sort_by_key(|d| d.slot);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_formats_come_from_the_request_or_the_name() {
        let p = Path::new("/lu/a.qcow2");
        assert_eq!(disk_format(p, None).unwrap(), DiskFormat::Qcow2);
        assert_eq!(disk_format(p, Some("raw")).unwrap(), DiskFormat::Raw);
        assert_eq!(disk_format(p, Some("vmdk")).unwrap_err().status(), 400);
    }
}
