//! Disks hot-plugged into running partitions, and the one check every disk
//! path the API is given passes (at create and at hot-plug).

use super::{engine_err, Manager};
use crate::api::{ApiError, AttachDisk, AttachedDisk, DetachedDisk};
use bulkhead_engine::{AdapterSpec, DiskFormat, DiskSpec, EngineError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the guest has to release a disk being removed. ACPI hot-plug on
/// q35 releases it within a fraction of a second (shared notes, §5); a guest
/// that never does must not hold the API call forever.
const DETACH_TIMEOUT: Duration = Duration::from_secs(30);

/// The disk path check, deliberately minimal: an absolute path to an existing
/// regular file or block device.
///
/// MERGE POINT: storage roots (issue 13, item 1) replace the body of this
/// function (paths confined to configured roots, symlinks resolved, qcow2
/// backing files checked). Every disk path the API accepts goes through here
/// and nowhere else, so the swap is one place.
pub fn check_disk_path(path: &str) -> Result<PathBuf, ApiError> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(ApiError::BadRequest(format!(
            "disk {path:?} must be an absolute path"
        )));
    }
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() || m.file_type().is_block_device() => Ok(p.to_path_buf()),
        Ok(_) => Err(ApiError::BadRequest(format!(
            "disk {path:?} is neither a file nor a block device"
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ApiError::BadRequest(format!(
            "disk {path:?} does not exist"
        ))),
        Err(e) => Err(ApiError::BadRequest(format!("disk {path:?}: {e}"))),
    }
}

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

fn attached(d: &DiskSpec, slot: u32) -> AttachedDisk {
    AttachedDisk {
        id: d.id.clone(),
        path: d.path.to_string_lossy().into_owned(),
        format: d.format.as_str().to_string(),
        readonly: d.readonly,
        slot,
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
        let lock = self.op_lock(name);
        let _g = lock.lock().await;
        let rec = self.get(name)?;
        if rec.hotplug_slots == 0 {
            return Err(ApiError::Conflict(format!(
                "partition {name:?} has no hot-plug ports; create it with --hotplug N to add disks while it runs"
            )));
        }
        let path = check_disk_path(&req.path)?;
        let format = disk_format(&path, req.format.as_deref())?;
        if let Some(id) = &req.id {
            if !bulkhead_engine::spec::valid_name(id) || id.len() > 16 {
                return Err(ApiError::BadRequest(format!(
                    "disk id {id:?} must be 1-16 characters of a-z, 0-9 and '-'"
                )));
            }
        }
        let p = self.ready_partition(name)?;
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
        let id = match req.id {
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
        let disk = DiskSpec {
            id,
            path,
            format,
            readonly: req.readonly,
        };
        p.hotplug_disk(disk.clone()).await.map_err(hotplug_err)?;
        let slot = p
            .hotplugged()
            .iter()
            .find(|h| h.adapter.id() == disk.id)
            .map(|h| h.slot)
            .ok_or_else(|| ApiError::Internal("hot-plugged disk not recorded".into()))?;
        let ev = format!("disk {} hot-plugged ({})", disk.id, disk.path.display());
        tracing::info!(partition = name, disk = %disk.id, slot, "disk hot-plugged");
        self.record_event(name, &ev);
        Ok(attached(&disk, slot))
    }

    /// Unplugs a hot-plugged disk; answers once the guest released it.
    pub(super) async fn detach_disk(&self, name: &str, id: &str) -> Result<DetachedDisk, ApiError> {
        let lock = self.op_lock(name);
        let _g = lock.lock().await;
        self.get(name)?;
        let p = self.ready_partition(name)?;
        if !p.hotplugged().iter().any(|h| h.adapter.id() == id) {
            return Err(ApiError::NoDevice(format!(
                "partition {name:?} has no hot-plugged disk {id:?}"
            )));
        }
        p.unplug(id, DETACH_TIMEOUT).await.map_err(|e| {
            engine_err(format!(
                "removing disk {id:?}: {e} (the disk stays attached until the guest releases it)"
            ))
        })?;
        tracing::info!(partition = name, disk = id, "disk removed");
        self.record_event(name, &format!("disk {id} removed"));
        Ok(DetachedDisk { id: id.to_string() })
    }

    /// Adds to the partition's history. The device change it records has
    /// happened either way, so a failed write is logged, not reported.
    fn record_event(&self, name: &str, event: &str) {
        if let Err(e) = self.modify(name, event, |_| {}) {
            tracing::warn!(partition = name, error = %e, event, "recording event");
        }
    }

    /// The disks hot-plugged into a partition's running QEMU.
    pub(super) fn hotplugged_disks(&self, name: &str) -> Vec<AttachedDisk> {
        let live = self
            .live
            .lock()
            .unwrap()
            .get(name)
            .map(|l| l.partition.clone());
        let mut v: Vec<AttachedDisk> = live
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
    fn disk_paths_are_checked_in_one_place() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.qcow2");
        std::fs::write(&f, b"x").unwrap();
        let ok = check_disk_path(f.to_str().unwrap()).unwrap();
        assert_eq!(disk_format(&ok, None).unwrap(), DiskFormat::Qcow2);
        assert_eq!(disk_format(&ok, Some("raw")).unwrap(), DiskFormat::Raw);
        assert_eq!(disk_format(&ok, Some("vmdk")).unwrap_err().status(), 400);
        for bad in ["a.qcow2", "/no/such/disk.raw", d.path().to_str().unwrap()] {
            let e = check_disk_path(bad).unwrap_err();
            assert_eq!(e.status(), 400, "{bad}: {e}");
        }
    }
}
