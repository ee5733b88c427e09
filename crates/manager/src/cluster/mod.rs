//! The cluster side of a daemon (issue 14): its membership (registered at
//! start, renewed in the background), the one view of every host that
//! `GET /v1/cluster/hosts` gives, the forwarding of commands to the host that
//! owns a partition, and the VXLAN ports that join the hosts' VLAN bridges.

pub mod cli;
pub mod forward;
pub mod membership;
pub mod vxlan;

use crate::api::ApiError;
use crate::manager::Manager;
use bulkhead_store::{HostState, Scope};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a host offers, as it registered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostCapacity {
    pub cpus: u32,
    pub memory_mib: u64,
}

/// What the partition records owned by a host ask for (all of them, defined or running).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct Allocation {
    pub vcpus: u64,
    pub memory_mib: u64,
}

/// One row of `GET /v1/cluster/hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterHost {
    pub name: String,
    pub id: String,
    pub state: HostState,
    pub capacity: HostCapacity,
    pub allocated: Allocation,
    pub partitions: usize,
    /// Its TCP API (`address:port`), where commands are forwarded.
    pub endpoints: Vec<String>,
    /// Its address on the hosts' network (the VXLAN tunnels end there).
    pub underlay: Option<String>,
    /// Unix time in milliseconds of the daemon's start.
    pub started_at: u64,
    pub version: String,
}

/// This daemon's name in the cluster: configured, else its host id.
pub fn host_name(m: &Manager) -> String {
    m.config()
        .cluster
        .name
        .clone()
        .unwrap_or_else(|| m.host_id().to_string())
}

/// Every member and what its partitions hold, read from the store: the same
/// answer from every host.
pub async fn hosts(m: &Manager) -> Result<Vec<ClusterHost>, ApiError> {
    let members = m.store().hosts().await?;
    let recs = m.store().list(Scope::All).await?;
    Ok(hosts_of(members, &recs))
}

/// The members with what the records `recs` hold on each.
pub fn hosts_of(
    members: Vec<bulkhead_store::HostStatus>,
    recs: &[bulkhead_store::PartitionRecord],
) -> Vec<ClusterHost> {
    members
        .into_iter()
        .map(|h| {
            let mine: Vec<_> = recs.iter().filter(|r| r.host == h.record.id).collect();
            ClusterHost {
                allocated: Allocation {
                    vcpus: mine.iter().map(|r| r.vcpus as u64).sum(),
                    memory_mib: mine.iter().map(|r| r.memory_mib).sum(),
                },
                partitions: mine.len(),
                name: h.record.name,
                id: h.record.id,
                state: h.state,
                capacity: HostCapacity {
                    cpus: h.record.cpus,
                    memory_mib: h.record.memory_mib,
                },
                endpoints: h.record.endpoints,
                underlay: h.record.underlay,
                started_at: h.record.started_at,
                version: h.record.version,
            }
        })
        .collect()
}
