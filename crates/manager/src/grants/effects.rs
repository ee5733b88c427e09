//! Carrying out the table's effects on partitions: a `Map` plugs the
//! resource into the holder and has its agent map it (the reply waits until
//! the mapping is usable); an `Unmap` asks the agent to let go, then unplugs
//! the device whatever the agent did, and pauses the holder if even the
//! guest kernel keeps the device.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_engine::{DiskSpec, Partition, RegionSpec};
use bulkhead_grant::{Access, GrantId, Resource, ResourceId, ResourceKind};
use serde_json::json;

use super::{grant_device, region_file, Mapping, State};
use crate::api::ApiError;
use crate::manager::Manager;

/// How long a plugged resource may take to reach the guest and be mapped
/// before the operation fails and is rolled back. ACPI hot-plug under a loaded
/// TCG host takes about a second; the bound matters because operations hold
/// the service's lock, so a guest that never maps must not stall the others.
const MAP_WAIT: Duration = Duration::from_secs(20);

fn engine(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::Engine(format!("{what}: {e}"))
}

impl Manager {
    /// Plugs a region file into `p` as device `device` and has its agent map
    /// it; on a failed map the device is unplugged again.
    pub(super) async fn plug_and_map_region(
        &self,
        p: &Partition,
        device: &str,
        file: &Path,
        readonly: bool,
    ) -> Result<Mapping, ApiError> {
        let plug = p
            .plug_region(RegionSpec {
                id: device.to_string(),
                path: file.to_path_buf(),
                readonly,
            })
            .await
            .map_err(|e| engine("plugging the region", e))?;
        match p.agent().region_map(&plug.port, MAP_WAIT).await {
            Ok(info) => Ok(Mapping {
                partition: p.spec().name.clone(),
                device: device.to_string(),
                port: Some(plug.port),
                path: info.path.to_string_lossy().into_owned(),
            }),
            Err(e) => {
                let _ = p.unplug(device, self.unplug_timeout()).await;
                Err(engine("the guest did not map the region", e))
            }
        }
    }

    /// `Effect::Map`: the resource of `grant` into `holder`, read-only when
    /// the grant is (the host enforces it: a read-only mount and backend).
    pub(super) async fn map_grant(
        &self,
        st: &State,
        grant: GrantId,
        holder: &str,
        resource: &ResourceId,
        access: Access,
    ) -> Result<Mapping, ApiError> {
        let p = self.ready_partition(holder).await?;
        let entry = st
            .table
            .resource(resource)
            .ok_or_else(|| ApiError::Internal(format!("{resource} vanished")))?;
        let device = grant_device(grant);
        match &entry.resource {
            Resource::Region { .. } => {
                let file = region_file(&self.grants.dir, resource, entry.generation);
                self.plug_and_map_region(&p, &device, &file, access == Access::ReadOnly)
                    .await
            }
            Resource::Disk { owner, disk } => {
                self.map_disk(&p, &device, owner.as_str(), disk.as_str())
                    .await
            }
        }
    }

    /// The owner's disk `disk` (`diskN`, its N-th disk) hot-plugged read-only
    /// into `p`; the path is the block device the guest made for it.
    async fn map_disk(
        &self,
        p: &Partition,
        device: &str,
        owner: &str,
        disk: &str,
    ) -> Result<Mapping, ApiError> {
        let rec = self.owner_disk(owner, disk).await?;
        let format = crate::manager::disk_format(Path::new(&rec.path), Some(&rec.format))?;
        let checked = self
            .roots()
            .check_disk(&rec.path, format.as_str())
            .map_err(ApiError::BadRequest)?;
        p.hotplug_disk(DiskSpec {
            id: device.to_string(),
            path: checked.path,
            format,
            readonly: true,
            backing: checked.backing,
            shared_read: false,
        })
        .await
        .map_err(|e| engine("plugging the disk", e))?;
        let port = p
            .hotplugged()
            .iter()
            .find(|h| h.adapter.id() == device)
            .map(|h| bulkhead_engine::cmdline::hotplug_port_address(h.slot));
        let found = match &port {
            Some(port) => block_device(p, port).await,
            None => Err(ApiError::Internal("hot-plugged disk not recorded".into())),
        };
        match found {
            Ok(path) => Ok(Mapping {
                partition: p.spec().name.clone(),
                device: device.to_string(),
                port: None,
                path,
            }),
            Err(e) => {
                let _ = p.unplug(device, self.unplug_timeout()).await;
                Err(e)
            }
        }
    }

    /// `Effect::Unmap` (and a region leaving its owner): the agent is asked to
    /// cut its mappings within the deadline, then the device is unplugged
    /// regardless (the guest kernel acks the eject whatever user space does);
    /// if the device is still there after the unplug timeout, the holder is
    /// paused so it reads nothing written later. Returns what happened, for
    /// the log.
    pub(super) async fn unmap(&self, m: &Mapping) -> serde_json::Value {
        let t0 = Instant::now();
        let Some(p) = self.running(&m.partition) else {
            // Its devices went with its QEMU.
            return json!({ "partition": m.partition, "device": m.device, "outcome": "gone" });
        };
        let deadline = Duration::from_millis(self.grants.unmap_deadline_ms);
        let agent = match &m.port {
            Some(port) => {
                match tokio::time::timeout(deadline, p.agent().region_unmap(port, deadline)).await {
                    Ok(Ok(_)) => "released".to_string(),
                    // No answer within the deadline: the agent's own timer.
                    Ok(Err(bulkhead_agent::AgentError::Timeout { .. })) => "ignored".to_string(),
                    Ok(Err(e)) => format!("failed: {e}"),
                    Err(_) => "ignored".to_string(),
                }
            }
            None => "none".to_string(),
        };
        let agent_ms = t0.elapsed().as_millis() as u64;
        let outcome = match p.unplug(&m.device, self.unplug_timeout()).await {
            Ok(()) if agent == "released" || agent == "none" => "unplugged",
            Ok(()) => "forced",
            Err(e) => {
                if device_present(&p, &m.device).await {
                    tracing::warn!(partition = %m.partition, device = %m.device, error = %e, "device kept by the guest kernel; pausing the partition");
                    match p.pause().await {
                        Ok(()) => {
                            self.record_event(
                                &m.partition,
                                &format!(
                                    "paused: the guest kept revoked device {} (resume once it is gone)",
                                    m.device
                                ),
                            )
                            .await;
                            "paused"
                        }
                        Err(_) => "stuck",
                    }
                } else {
                    "gone"
                }
            }
        };
        let total_ms = t0.elapsed().as_millis() as u64;
        tracing::info!(partition = %m.partition, device = %m.device, %agent, outcome, agent_ms, total_ms, "unmapped");
        json!({
            "action": "unmapped",
            "partition": m.partition,
            "device": m.device,
            "agent": agent,
            "outcome": outcome,
            "agent_ms": agent_ms,
            "total_ms": total_ms,
        })
    }

    pub(super) fn unplug_timeout(&self) -> Duration {
        Duration::from_millis(self.grants.unplug_timeout_ms)
    }

    /// The owner's disk named `disk` (`diskN`).
    pub(super) async fn owner_disk(
        &self,
        owner: &str,
        disk: &str,
    ) -> Result<bulkhead_store::DiskRecord, ApiError> {
        let rec = self.get(owner).await?;
        disk.strip_prefix("disk")
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| rec.disks.get(i).cloned())
            .ok_or_else(|| {
                ApiError::Grant(bulkhead_grant::GrantError::UnknownResource(ResourceId {
                    kind: ResourceKind::Disk,
                    owner: owner.parse().expect("a partition's name is a partition id"),
                    name: disk.parse().unwrap_or_else(|_| "disk".parse().unwrap()),
                }))
            })
    }

    /// Unmaps every mapping, deepest first as given, and returns the reports.
    pub(super) async fn unmap_all(self: &Arc<Self>, maps: Vec<Mapping>) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for m in maps {
            out.push(self.unmap(&m).await);
        }
        out
    }
}

/// Whether QEMU still has a device `id` (user-created devices live under
/// `/machine/peripheral`).
pub(super) async fn device_present(p: &Partition, id: &str) -> bool {
    match p.qmp().qom_list("/machine/peripheral").await {
        Ok(v) => v.iter().any(|(n, _)| n == id),
        // A QEMU that does not answer cannot be shown to have let go.
        Err(_) => true,
    }
}

/// The block device the guest made for the virtio-blk behind `port`, waited
/// for in the guest (bounded) since ACPI hot-plug reaches it a moment later.
async fn block_device(p: &Partition, port: &str) -> Result<String, ApiError> {
    let script = format!(
        "i=0; while [ $i -lt 200 ]; do for b in /sys/bus/pci/devices/{port}/*/virtio*/block/*; do \
         if [ -e \"$b\" ]; then echo /dev/${{b##*/}}; exit 0; fi; done; sleep 0.1; i=$((i+1)); done; exit 1"
    );
    let argv = vec!["/bin/sh".to_string(), "-c".to_string(), script];
    let out = p
        .agent()
        .exec(&argv, None, MAP_WAIT + Duration::from_secs(5))
        .await
        .map_err(|e| engine("finding the disk in the guest", e))?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.code != 0 || !path.starts_with("/dev/") {
        return Err(ApiError::Engine(format!(
            "the guest did not show the disk behind port {port}"
        )));
    }
    Ok(path)
}
