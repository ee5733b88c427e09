//! The records the store keeps. They are plain data (serde), shared by the
//! store, the manager and the API, so one JSON shape goes everywhere.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a partition is in its life. Transitions are the manager's business;
/// the store only keeps the value and when it was entered.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionState {
    Defined,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
    /// Its state is being saved into its hibernation image; QEMU still runs.
    Hibernating,
    /// Saved (the record's `hibernation`); no QEMU anywhere.
    Hibernated,
    /// A daemon claimed its image and is restoring it.
    Resuming,
}

impl PartitionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Defined => "defined",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
            Self::Hibernating => "hibernating",
            Self::Hibernated => "hibernated",
            Self::Resuming => "resuming",
        }
    }

    /// A QEMU process may exist for the partition in this state.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Self::Starting | Self::Running | Self::Stopping | Self::Hibernating | Self::Resuming
        )
    }
}

impl fmt::Display for PartitionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PartitionState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "defined" => Self::Defined,
            "starting" => Self::Starting,
            "running" => Self::Running,
            "stopping" => Self::Stopping,
            "stopped" => Self::Stopped,
            "failed" => Self::Failed,
            "hibernating" => Self::Hibernating,
            "hibernated" => Self::Hibernated,
            "resuming" => Self::Resuming,
            other => return Err(format!("unknown partition state {other:?}")),
        })
    }
}

/// What the manager does when a partition's QEMU ends without being asked to.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Never,
    OnFailure,
    Always,
}

impl FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "never" | "no" => Self::Never,
            "on-failure" => Self::OnFailure,
            "always" => Self::Always,
            other => {
                return Err(format!(
                    "unknown restart policy {other:?} (never, on-failure, always)"
                ))
            }
        })
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Never => "never",
            Self::OnFailure => "on-failure",
            Self::Always => "always",
        })
    }
}

/// A disk attached to a partition: a file under the storage roots, or an LU
/// of the repository named by `lu`.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    /// For an LU, where it was when the partition was defined (the start
    /// resolves the LU's path again from the repository).
    pub path: String,
    /// `qcow2` or `raw`.
    pub format: String,
    #[serde(default)]
    pub readonly: bool,
    /// The LU (`bulkhead lu`) this disk is; locked in the store while the
    /// partition runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lu: Option<String>,
}

/// The partition's attachment to the host's internal VLAN.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRecord {
    /// Address with prefix length, e.g. `10.77.0.2/24`; unique per store.
    pub ip: String,
    pub mac: String,
}

/// One partition: its definition and its lifecycle state.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    pub name: String,
    /// The id of the host (bulkheadd) that owns the partition and runs it.
    /// Records older than host ids get the id of the first daemon that opens
    /// the store after the upgrade (migration 4).
    #[serde(default)]
    pub host: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// CPU entitlement in percent of one host CPU.
    pub cpu_percent: u32,
    /// Guest image directory (vmlinux + initramfs); the daemon's default when absent.
    #[serde(default)]
    pub image: Option<String>,
    /// Extra kernel command line.
    #[serde(default)]
    pub cmdline: Option<String>,
    #[serde(default)]
    pub disks: Vec<DiskRecord>,
    #[serde(default)]
    pub net: Option<NetRecord>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// PCIe root ports kept free for devices hot-plugged while it runs; any
    /// makes the machine q35 (migration 3 gives older records 0).
    #[serde(default)]
    pub hotplug_slots: u32,
    /// The named guest CPU model (the engine's `CpuModel`), e.g. `x86-64-v2`.
    /// Recorded at create so a saved state finds the same CPU on any host.
    #[serde(default = "default_cpu_model")]
    pub cpu_model: String,
    pub state: PartitionState,
    /// Unix time in milliseconds.
    pub created_at: u64,
    pub state_since: u64,
    #[serde(default)]
    pub started_at: Option<u64>,
    #[serde(default)]
    pub last_exit: Option<String>,
    /// QEMU's pid while active.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Restarts made by the restart policy since the last start by a user.
    #[serde(default)]
    pub restarts: u32,
    /// Bumped by every write; `Store::update` compares it.
    #[serde(default)]
    pub revision: u64,
    /// The client (tenant) owning the partition; empty in records made
    /// before clients existed, which are their own client (see [`PartitionRecord::client`]).
    #[serde(default, rename = "client")]
    pub client_name: String,
    /// Cluster-unique, given at create (or at the first start of an older
    /// record) inside the store's transaction, kept for the partition's life.
    #[serde(default)]
    pub client_id: u64,
    /// The AdapterID of each virtual adapter (`agent`, `diskN`, `net0`, a
    /// hot-plugged disk's id): unique within the partition, so with
    /// `client_id` unique in the cluster.
    #[serde(default)]
    pub adapter_ids: std::collections::BTreeMap<String, u32>,
    /// Hibernate after this many seconds of idleness (issue 14); never when absent.
    #[serde(default)]
    pub hibernate_idle_secs: Option<u64>,
    /// The image a hibernated partition resumes from (issue 14); while it
    /// runs, its last checkpoint (reason `checkpoint`).
    #[serde(default)]
    pub hibernation: Option<HibernationRecord>,
    /// Checkpoint the running partition this often, ms (issue 12); never
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every_ms: Option<u64>,
    /// Host devices the partition owns (issue 15).
    #[serde(default, skip_serializing_if = "PartitionDevices::is_empty")]
    pub devices: PartitionDevices,
    /// A service pool's saved template this partition makes or comes from
    /// (issue 17). Set by the daemon only, never through the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateLink>,
    /// What the cluster does when the partition's host is lost (issue 12).
    #[serde(default)]
    pub ha: HaPolicy,
    /// The fencing token of the partition's current claim: the etcd
    /// revision at which a host claimed it after its previous host was
    /// lost. Every write of the record and every LU attach for it must
    /// carry the current one (`StoreError::Fenced` otherwise). None until
    /// a first claim. Set by the daemon only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
    /// Claimed after a host loss and not yet running again: the
    /// orchestrator restarts it on its (new) host, even if the orchestrator
    /// that claimed it died first. Cleared once it runs. Set by the daemon
    /// only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ha_pending: bool,
}

/// What the cluster does with a partition whose host is lost (issue 12).
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HaPolicy {
    /// It stays on the lost host (until that host comes back).
    #[default]
    None,
    /// Booted again on another host, from its LUs.
    Reboot,
    /// Resumed on another host from its hibernation data; booted as
    /// `reboot` when it has none.
    Resume,
}

impl HaPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Reboot => "reboot",
            Self::Resume => "resume",
        }
    }
}

impl fmt::Display for HaPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HaPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "none" => Self::None,
            "reboot" => Self::Reboot,
            "resume" => Self::Resume,
            other => {
                return Err(format!(
                    "unknown HA policy {other:?} (resume, reboot, none)"
                ))
            }
        })
    }
}

/// How a pool partition relates to its pool's saved template.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateLink {
    /// Booted with its RAM in the template's memory file, to be saved as
    /// the template of the pool named.
    Source(String),
    /// Restored from the template of the pool named, not booted.
    Clone(String),
}

/// Host devices a partition owns, and what its agent starts to share them
/// (issue 15).
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionDevices {
    /// Host serial lines (ttys or PTYs) by canonical path, the guest's
    /// /dev/ttyS1 onwards. A line is held by one partition of its host at a
    /// time, from create to destroy.
    #[serde(default)]
    pub serial: Vec<String>,
    /// The L2TP resource server the agent starts at boot, sharing the
    /// modems on `serial` with partitions on the VLAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2tp_server: Option<Box<L2tpServerRecord>>,
}

impl PartitionDevices {
    pub fn is_empty(&self) -> bool {
        self.serial.is_empty() && self.l2tp_server.is_none()
    }
}

/// What API answers show in place of a secret the store keeps.
pub const REDACTED: &str = "(redacted)";

impl PartitionRecord {
    /// The record as API answers show it: the L2TP server's tunnel secrets
    /// replaced by [`REDACTED`] (they reach the partition's agent, not readers
    /// of the API).
    pub fn redacted(mut self) -> PartitionRecord {
        if let Some(s) = self.devices.l2tp_server.as_mut() {
            if s.secret.is_some() {
                s.secret = Some(REDACTED.into());
            }
            for v in s.secrets.values_mut() {
                *v = REDACTED.into();
            }
        }
        self
    }
}

/// A partition's L2TP resource server: its profile and directory. It
/// listens on the partition's VLAN address only, and drives every serial
/// line of the partition as a modem (`modem0` on /dev/ttyS1, ...).
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L2tpServerRecord {
    /// UDP port on the VLAN address (1701 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Host Name AVP (the partition's name when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Tunnel secret (Challenge/Response, hidden AVPs); none: no tunnel
    /// authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Secrets by the peer's Host Name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secrets: std::collections::BTreeMap<String, String>,
    /// Directory: a name such as `PRIMARY_ISP` → the number dialled.
    #[serde(default)]
    pub directory: std::collections::BTreeMap<String, String>,
}

impl PartitionRecord {
    /// The client owning the partition: its own name unless one was given.
    pub fn client(&self) -> &str {
        if self.client_name.is_empty() {
            &self.name
        } else {
            &self.client_name
        }
    }
}

/// Why a partition was hibernated.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HibernateReason {
    /// `partition hibernate`.
    Manual,
    /// Idle for its `hibernate_idle_secs`.
    Idle,
    /// A periodic or requested checkpoint of a partition that runs on: the
    /// record stays `running`, and a resume first reverts its disks to the
    /// point taken with the memory (docs/cluster.md, "Checkpoints").
    Checkpoint,
}

impl fmt::Display for HibernateReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Manual => "manual",
            Self::Idle => "idle",
            Self::Checkpoint => "checkpoint",
        })
    }
}

/// Where and what a partition's hibernation image is. Written only once the
/// image is complete (its manifest fsynced), so a record naming one names a
/// whole image.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HibernationRecord {
    /// The image directory, relative to the repository root.
    pub location: String,
    /// Size of the saved state, bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the saved state (the manifest's).
    pub sha256: String,
    /// Unix time in milliseconds.
    pub saved_at: u64,
    pub reason: HibernateReason,
    /// The machine and adapters it was saved with (the engine's spec, as JSON).
    #[cfg_attr(feature = "schema", schema(value_type = Object))]
    pub config: serde_json::Value,
}

/// The CPU model a partition gets when its creator names none. Migration 3
/// wrote this value into older records; the engine's default is the same.
pub const DEFAULT_CPU_MODEL: &str = "x86-64-v2";

fn default_cpu_model() -> String {
    DEFAULT_CPU_MODEL.to_string()
}

/// One entry in a partition's history, written in the same transaction as
/// the state change it records.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at: u64,
    pub partition: String,
    pub message: String,
}

/// Unix time now, in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
