//! What the host API shows of the grant table: grants, regions and the log.
//! Plain DTOs built from the table, so the table's own types stay free of
//! schema derives they do not need.

use bulkhead_grant::{Access, Grant, GrantState, Resource, ResourceEntry, ResourceKind};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Mapping;

/// One grant, as `GET /v1/grants` shows it. Never carries a cookie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GrantInfo {
    /// `gr-` and 16 hex digits.
    pub id: String,
    /// `region:OWNER/NAME` or `disk:OWNER/NAME`.
    pub resource: String,
    pub kind: ResourceKind,
    pub owner: String,
    pub granter: String,
    pub grantee: String,
    pub access: Access,
    #[serde(default)]
    pub parent: Option<String>,
    pub depth: u8,
    pub state: GrantState,
    /// Milliseconds since the Unix epoch.
    pub issued_at: u64,
    #[serde(default)]
    pub accepted_at: Option<u64>,
    #[serde(default)]
    pub ended_at: Option<u64>,
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// The device plugged into the grantee, while mapped.
    #[serde(default)]
    pub device: Option<String>,
    /// What the grantee maps (a region's BAR file, a disk's block device).
    #[serde(default)]
    pub path: Option<String>,
}

impl GrantInfo {
    pub(super) fn new(g: &Grant, m: Option<&Mapping>) -> GrantInfo {
        GrantInfo {
            id: g.id.to_string(),
            resource: g.resource.to_string(),
            kind: g.resource.kind,
            owner: g.resource.owner.to_string(),
            granter: g.granter.to_string(),
            grantee: g.grantee.to_string(),
            access: g.access,
            parent: g.parent.map(|p| p.to_string()),
            depth: g.depth,
            state: g.state,
            issued_at: g.issued_at.0,
            accepted_at: g.accepted_at.map(|t| t.0),
            ended_at: g.ended_at.map(|t| t.0),
            expires_at: g.expires_at.map(|t| t.0),
            device: m.map(|m| m.device.clone()),
            path: m.map(|m| m.path.clone()),
        }
    }
}

/// A resource a partition owns, with who holds it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegionView {
    pub resource: String,
    pub kind: ResourceKind,
    pub owner: String,
    pub name: String,
    /// Bytes (regions).
    #[serde(default)]
    pub size: Option<u64>,
    pub generation: u64,
    pub created_at: u64,
    /// The backing file on the host (regions).
    #[serde(default)]
    pub file: Option<String>,
    /// Where the owner has it mapped, while it does.
    #[serde(default)]
    pub path: Option<String>,
    /// Partitions holding an accepted grant of it.
    pub holders: Vec<String>,
}

impl RegionView {
    pub(super) fn new(
        e: &ResourceEntry,
        file: Option<String>,
        m: Option<&Mapping>,
        holders: Vec<String>,
    ) -> RegionView {
        let id = e.resource.id();
        RegionView {
            resource: id.to_string(),
            kind: id.kind,
            owner: id.owner.to_string(),
            name: id.name.to_string(),
            size: match &e.resource {
                Resource::Region { size, .. } => Some(size.bytes()),
                Resource::Disk { .. } => None,
            },
            generation: e.generation,
            created_at: e.created_at.0,
            file,
            path: m.map(|m| m.path.clone()),
            holders,
        }
    }
}

/// A line of `bulkhead grant log`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GrantLogEntry {
    /// Increases by one per entry; `?after=` pages on it.
    pub seq: u64,
    pub at_ms: u64,
    /// How the request came: `guest` (the partition's agent), `api` (an
    /// administrator acting as the partition, or for itself), `manager`.
    pub via: String,
    /// The table's event (actor and action), or the manager's record of what
    /// it did to devices (`unmapped`, `reconciled`).
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
}
