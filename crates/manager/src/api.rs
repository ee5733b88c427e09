//! The API's vocabulary: every call is one [`ApiRequest`] (as Firecracker's
//! `VmmAction` and Cloud Hypervisor's `ApiRequest`), answered by
//! `Manager::handle` in one place and answered with one typed [`ApiReply`]
//! (as Firecracker's `VmmData`); the HTTP layer only translates. The same
//! types derive the OpenAPI schemas (`openapi.rs`), so the document cannot
//! drift from what is served.

use bulkhead_store::{DiskRecord, Event, PartitionRecord, PartitionState, RestartPolicy};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/partitions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePartition {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,47}$")]
    pub name: String,
    /// At most the daemon's `partitions.max_vcpus` (64 unless configured).
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 255, default = 1)]
    pub vcpus: u32,
    /// Guest memory: at least the daemon's minimum, at most the host's memory.
    #[schema(minimum = 96)]
    pub memory_mib: u64,
    /// CPU entitlement, percent of one host CPU (1 to 100 × vcpus).
    #[schema(minimum = 1)]
    pub cpu_percent: u32,
    /// Guest image directory; the daemon's default when absent.
    #[serde(default)]
    pub image: Option<String>,
    /// Extra kernel command line.
    #[serde(default)]
    pub cmdline: Option<String>,
    #[serde(default)]
    pub disks: Vec<DiskRecord>,
    /// Attach to the internal VLAN with a manager-assigned address.
    #[serde(default)]
    pub net: bool,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// PCIe root ports kept free for disks hot-plugged while it runs (makes
    /// the machine q35); 0 for none.
    #[serde(default)]
    #[schema(maximum = 16)]
    pub hotplug_slots: u32,
    /// Named guest CPU model (`x86-64-v2` when absent); see docs/manager.md.
    #[serde(default)]
    pub cpu_model: Option<String>,
    /// The cluster host (its name) that owns and runs the partition; the
    /// host that got the call when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Hibernate the partition after this many seconds of idleness (guest
    /// CPU and adapter traffic below the thresholds of docs/manager.md).
    #[serde(default)]
    #[schema(minimum = 10, maximum = 2592000)]
    pub hibernate_idle_secs: Option<u64>,
    /// Checkpoint the running partition this often, ms (5 s to 1 day;
    /// docs/cluster.md, "Checkpoints"); never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 5000, maximum = 86400000)]
    pub checkpoint_every_ms: Option<u64>,
    /// The owning client (tenant); the partition's own name when absent.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,47}$")]
    pub client: Option<String>,
    /// LUs of the repository to attach (after `disks`), each of this
    /// partition's client; locked in the store while it runs.
    #[serde(default)]
    pub lus: Vec<crate::lu::types::LuAttach>,
    /// Host serial lines the partition owns, and the L2TP resource server
    /// its agent starts on them (docs/l2tp.md). A line another partition
    /// of this host holds is refused (409).
    #[serde(
        default,
        skip_serializing_if = "bulkhead_store::PartitionDevices::is_empty"
    )]
    pub devices: bulkhead_store::PartitionDevices,
    /// What the cluster does when its host is lost: resume, reboot or
    /// none (docs/cluster.md, "Host loss").
    #[serde(default)]
    pub ha: bulkhead_store::HaPolicy,
}

fn one() -> u32 {
    1
}

impl CreatePartition {
    /// A partition of that size, everything else as the API defaults it.
    pub fn new(name: &str, vcpus: u32, memory_mib: u64, cpu_percent: u32) -> Self {
        Self {
            name: name.into(),
            vcpus,
            memory_mib,
            cpu_percent,
            image: None,
            cmdline: None,
            disks: vec![],
            net: false,
            restart_policy: RestartPolicy::default(),
            hotplug_slots: 0,
            cpu_model: None,
            host: None,
            hibernate_idle_secs: None,
            checkpoint_every_ms: None,
            client: None,
            lus: vec![],
            devices: Default::default(),
            ha: Default::default(),
        }
    }
}

/// Body of `POST /v1/partitions/{name}/start` and `.../restart`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartOptions {
    /// Answer only once the agent reports ready (or the start failed).
    #[serde(default)]
    pub wait: bool,
}

/// Body of `POST /v1/partitions/{name}/resume` (optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumeOptions {
    /// The cluster host (by name) to resume on; the host that got the call
    /// when absent. It must see the repository holding the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Before the restore, promote the redundant copy of every mirrored LU
    /// the partition writes (`lu promote`, not forced): a copy not in step
    /// refuses the resume (409) with nothing changed (docs/cluster.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promote_mirror: bool,
}

/// Body of `POST /v1/partitions/{name}/stop`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopOptions {
    /// Kill QEMU at once instead of shutting the guest down.
    #[serde(default)]
    pub force: bool,
    /// Graceful stop budget before QEMU is killed; the daemon's default when absent.
    #[serde(default)]
    #[schema(maximum = 3600)]
    pub timeout_secs: Option<u64>,
}

/// Body of `POST /v1/partitions/{name}/exec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The command and its arguments; the first is not empty.
    #[schema(min_items = 1)]
    pub argv: Vec<String>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3600)]
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Body of `POST /v1/partitions/{name}/disks`: a disk to hot-plug into a
/// running partition created with hot-plug ports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachDisk {
    /// Absolute path of the image on the host.
    pub path: String,
    /// `raw` or `qcow2`; from the file name when absent (`.qcow2`, else raw).
    #[serde(default)]
    #[schema(pattern = "^(raw|qcow2)$")]
    pub format: Option<String>,
    #[serde(default)]
    pub readonly: bool,
    /// Adapter id (1-16 of a-z, 0-9, '-'); `hotN` when absent.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,15}$")]
    pub id: Option<String>,
}

/// A disk hot-plugged into a running partition (reply of attach, and listed
/// by `show`). It lasts until removed or until the partition's QEMU ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AttachedDisk {
    pub id: String,
    pub path: String,
    pub format: String,
    pub readonly: bool,
    /// The hot-plug port (0-based) the disk occupies.
    pub slot: u32,
    /// A read-only attach of an LU another holder writes, served from this
    /// redundant copy of it (`lu mirror`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by_copy: Option<String>,
}

/// Reply of `DELETE /v1/partitions/{name}/disks/{id}`: the guest released it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DetachedDisk {
    pub id: String,
}

/// One typed command per API call.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiRequest {
    /// The OpenAPI document (`openapi.rs`).
    OpenApi,
    Ping,
    Host,
    List,
    Show {
        name: String,
    },
    Create(CreatePartition),
    Start {
        name: String,
        opts: StartOptions,
    },
    Stop {
        name: String,
        opts: StopOptions,
    },
    Restart {
        name: String,
        opts: StartOptions,
    },
    Destroy {
        name: String,
        force: bool,
    },
    Exec {
        name: String,
        req: ExecRequest,
    },
    Stats {
        name: String,
    },
    /// Resolves the console socket of a running partition (the HTTP layer splices it).
    Console {
        name: String,
    },
    ConsoleLog {
        name: String,
        tail_lines: usize,
    },
    AttachDisk {
        name: String,
        req: AttachDisk,
    },
    DetachDisk {
        name: String,
        id: String,
    },
    AttachLu {
        name: String,
        req: crate::lu::types::AttachLu,
    },
    LuCreate(crate::lu::types::CreateLu),
    LuList,
    LuShow {
        name: String,
    },
    LuResize {
        name: String,
        req: crate::lu::types::ResizeLu,
    },
    LuDelete {
        name: String,
    },
    LuRequest(crate::lu::types::RequestLu),
    /// `lu mirror`, `lu unmirror`, `lu promote` (issue 12 item 5).
    LuMirror(crate::lu::mirror::MirrorCommand),
    /// `GET /v1/grants[?partition=P]`: every grant, or those P gave, holds or owns.
    GrantList {
        partition: Option<String>,
    },
    GrantShow {
        id: String,
    },
    /// `POST /v1/grants/{id}/revoke`: an administrator revokes (cascading).
    GrantRevoke {
        id: String,
    },
    GrantLog {
        after: u64,
        limit: usize,
    },
    RegionList,
    /// `POST /v1/partitions/{name}/grant-requests`: what the partition's
    /// `bulkhead-guest` would send, made by an administrator acting as it.
    GrantRequest {
        name: String,
        req: bulkhead_grant::request::GuestRequest,
    },
    /// `GET /v1/cluster/hosts`.
    ClusterHosts,
    /// Saves a running partition into its hibernation image and stops it.
    Hibernate {
        name: String,
    },
    /// How far the running hibernation of a partition is.
    HibernateProgress {
        name: String,
    },
    /// Restores a hibernated partition from its image, on this host or the
    /// one `opts.host` names.
    Resume {
        name: String,
        opts: ResumeOptions,
    },
    /// The shared port's routes (issue 15, `crate::expose`).
    Expose(crate::expose::ExposeCommand),
    /// Service pools and their users (issue 17; `crate::pools::api`).
    Pool(crate::pools::api::PoolRequest),
    /// Remote restart (issue 12; `crate::remote_restart::api`).
    RemoteRestart(crate::remote_restart::api::RemoteRestartCommand),
    /// Checkpoints (issue 12 item 3; `crate::checkpoint`).
    Checkpoint(crate::checkpoint::CheckpointCommand),
    /// `PUT /v1/partitions/{name}/ha` (issue 12; `crate::ha::api`).
    SetHa {
        name: String,
        req: crate::ha::api::SetHa,
    },
}

/// Reply of `GET /v1/partitions/{name}/hibernate`: bytes of guest RAM saved
/// so far while a hibernation runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HibernateProgress {
    pub name: String,
    pub state: PartitionState,
    /// A hibernation of this partition is running on this daemon.
    pub active: bool,
    pub transferred: u64,
    pub total: u64,
}

/// The partition name rule, one message for the daemon and the CLI.
pub fn check_name(name: &str) -> Result<(), ApiError> {
    if bulkhead_engine::spec::valid_name(name) {
        return Ok(());
    }
    Err(ApiError::BadRequest(format!(
        "partition name {name:?} must be 1-48 characters of a-z, 0-9 and '-', not starting with '-'"
    )))
}

/// Bounds of `hibernate_idle_secs`: idleness is sampled every few seconds,
/// and thirty days is "never" in practice.
pub const MIN_IDLE_SECS: u64 = 10;
pub const MAX_IDLE_SECS: u64 = 30 * 24 * 3600;

/// Longest duration a request may ask for (stop and exec timeouts).
pub const MAX_TIMEOUT_SECS: u64 = 3600;

impl ApiRequest {
    /// Refuses durations and sizes out of range before anything acts on
    /// them (a stop timeout near 2^64 once overflowed the deadline sum).
    pub fn check_ranges(&self) -> Result<(), ApiError> {
        let secs = |what: &str, v: Option<u64>, min: u64| match v {
            Some(t) if !(min..=MAX_TIMEOUT_SECS).contains(&t) => Err(ApiError::BadRequest(
                format!("{what} must be {min}-{MAX_TIMEOUT_SECS} seconds, got {t}"),
            )),
            _ => Ok(()),
        };
        match self {
            Self::Stop { opts, .. } => secs("timeout_secs", opts.timeout_secs, 0),
            Self::Exec { req, .. } => secs("timeout_secs", req.timeout_secs, 1),
            Self::Create(c) => match c.hibernate_idle_secs {
                Some(t) if !(MIN_IDLE_SECS..=MAX_IDLE_SECS).contains(&t) => {
                    Err(ApiError::BadRequest(format!(
                        "hibernate_idle_secs must be {MIN_IDLE_SECS}-{MAX_IDLE_SECS}, got {t}"
                    )))
                }
                _ => crate::checkpoint::check_every(c.checkpoint_every_ms),
            },
            Self::Checkpoint(c) => c.check_ranges(),
            _ => Ok(()),
        }
    }
}

/// What `show` returns: the record plus what only the daemon knows.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PartitionView {
    #[serde(flatten)]
    pub record: PartitionRecord,
    /// Memory limit of the partition's cgroup (guest + QEMU overhead), MiB.
    pub memory_limit_mib: u64,
    #[serde(default)]
    pub tap: Option<String>,
    #[serde(default)]
    pub console_log: Option<String>,
    #[serde(default)]
    pub events: Vec<Event>,
    /// Disks hot-plugged into the running QEMU.
    #[serde(default)]
    pub hotplugged_disks: Vec<AttachedDisk>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    pub name: String,
    pub state: PartitionState,
    pub cpu_entitlement_percent: u32,
    /// CPU time used by QEMU (all threads) since it started, ns.
    pub cpu_time_ns: u64,
    /// Average CPU use since start, percent of one CPU.
    pub cpu_avg_percent: f64,
    /// CPU use over the last sampling interval, percent of one CPU.
    pub cpu_recent_percent: f64,
    pub cpu_limit_percent: Option<u64>,
    /// Memory charged to the partition's cgroup (guest + QEMU), bytes.
    pub memory_bytes: u64,
    pub memory_limit_bytes: u64,
    /// QEMU's resident set, bytes.
    pub rss_bytes: u64,
    pub uptime_ms: u64,
    pub pid: Option<u32>,
    /// What the guest's agent reports (kernel, load, memory), when it answers.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub guest: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostView {
    pub version: String,
    pub cgroup_version: u8,
    pub bridge: String,
    pub subnet: String,
    pub capacity: crate::capacity::Capacity,
    pub allocated: crate::capacity::Demand,
    pub running: crate::capacity::Demand,
    pub partitions: usize,
}

/// Reply of `GET /v1/ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Pong {
    pub ok: bool,
}

/// Reply of `DELETE /v1/partitions/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Destroyed {
    /// The name of the partition destroyed.
    pub destroyed: String,
}

/// Reply of `GET /v1/partitions/{name}/console`: the console log's last lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConsoleLines {
    pub lines: Vec<String>,
}

/// Reply of `GET /openapi.json`: the generated document (`openapi.rs`).
#[derive(Clone, Serialize)]
#[serde(transparent)]
pub struct ApiDocument(pub &'static utoipa::openapi::OpenApi);

impl std::fmt::Debug for ApiDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiDocument({} paths)", self.0.paths.paths.len())
    }
}

/// Every answer of `Manager::handle`, one variant per kind of reply. The
/// HTTP layer serialises the inner value (the variant is not on the wire)
/// with the status [`ApiReply::status`] gives.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ApiReply {
    OpenApi(ApiDocument),
    Pong(Pong),
    Host(HostView),
    Partitions(Vec<PartitionRecord>),
    /// A partition just defined (201).
    Created(PartitionRecord),
    Partition(PartitionRecord),
    View(Box<PartitionView>),
    Destroyed(Destroyed),
    Exec(ExecResult),
    Stats(Box<Stats>),
    ConsoleLog(ConsoleLines),
    /// The console socket of a running partition: the HTTP layer splices it
    /// into an upgraded connection and never sends this value.
    #[serde(skip)]
    ConsoleSocket(std::path::PathBuf),
    DiskAttached(AttachedDisk),
    DiskDetached(DetachedDisk),
    /// An LU just made (201).
    LuCreated(crate::lu::types::LuView),
    Lu(crate::lu::types::LuView),
    Lus(Vec<crate::lu::types::LuView>),
    LuDeleted(crate::lu::types::LuDeleted),
    LuRequested(crate::lu::types::LuRequested),
    Grants(Vec<crate::grants::GrantInfo>),
    Grant(Box<crate::grants::GrantInfo>),
    GrantLog(Vec<crate::grants::GrantLogEntry>),
    Regions(Vec<crate::grants::RegionView>),
    GuestReply(bulkhead_grant::reply::GuestReply),
    HibernateProgress(HibernateProgress),
    ClusterHosts(Vec<crate::cluster::ClusterHost>),
    Expose(crate::expose::ExposeReply),
    /// The answer of the host that carried the request out, unchanged.
    Forwarded(Forwarded),
    /// Service pools (issue 17).
    Pool(crate::pools::api::PoolReply),
    /// Remote restart (issue 12).
    RemoteRestart(crate::remote_restart::api::RemoteRestartReply),
}

/// A reply another host gave to a forwarded request: sent on as it came.
#[derive(Debug, Clone)]
pub struct Forwarded {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Serialize for Forwarded {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.body.serialize(s)
    }
}

impl ApiReply {
    /// The reply as it goes on the wire: records without their secrets.
    pub fn redacted(self) -> ApiReply {
        match self {
            Self::Partitions(v) => {
                Self::Partitions(v.into_iter().map(PartitionRecord::redacted).collect())
            }
            Self::Created(r) => Self::Created(r.redacted()),
            Self::Partition(r) => Self::Partition(r.redacted()),
            Self::View(mut v) => {
                v.record = v.record.redacted();
                Self::View(v)
            }
            other => other,
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Self::Created(_) | Self::LuCreated(_) => 201,
            Self::Forwarded(f) => f.status,
            Self::Pool(p) => p.status(),
            Self::RemoteRestart(r) => r.status(),
            _ => 200,
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// One line for a person.
    pub message: String,
    /// With `grant_refused`: which refusal, one name per kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<bulkhead_grant::reply::GrantErrorKind>,
}

/// The stable, machine-readable kind of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    Conflict,
    OverCapacity,
    Unauthorized,
    Forbidden,
    NoRoute,
    MethodNotAllowed,
    RequestTimeout,
    PayloadTooLarge,
    Engine,
    Unavailable,
    Internal,
    /// The grant table refused (`reason` says which refusal); nothing changed.
    GrantRefused,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::Conflict => "conflict",
            Self::OverCapacity => "over_capacity",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NoRoute => "no_route",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RequestTimeout => "request_timeout",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Engine => "engine",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::GrantRefused => "grant_refused",
        }
    }
}

/// Every failure the API reports: a status, a stable code and one line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("partition {0:?} not found")]
    NotFound(String),
    #[error("partition {0:?} already exists")]
    AlreadyExists(String),
    /// A device of a partition (a hot-plugged disk) that does not exist.
    #[error("{0}")]
    NoDevice(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    OverCapacity(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// The resource belongs to another client (an LU of another tenant).
    #[error("{0}")]
    Forbidden(String),
    #[error("no such API endpoint: {0}")]
    NoRoute(String),
    #[error("{method} is not allowed on {path} (allowed: {})", allow.join(", "))]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: &'static [&'static str],
    },
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    Engine(String),
    /// The state store cannot answer now (busy, no quorum); worth retrying.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The error another host answered to a forwarded request, unchanged.
    #[error("{}", detail.message)]
    Forwarded { status: u16, detail: ErrorDetail },
    /// A refusal of the grant table: the table is unchanged.
    #[error("{0}")]
    Grant(bulkhead_grant::GrantError),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Unauthorized => 401,
            Self::Forbidden(_) => 403,
            Self::NotFound(_) | Self::NoDevice(_) | Self::NoRoute(_) => 404,
            Self::MethodNotAllowed { .. } => 405,
            Self::RequestTimeout(_) => 408,
            Self::PayloadTooLarge(_) => 413,
            Self::AlreadyExists(_) | Self::Conflict(_) => 409,
            Self::OverCapacity(_) => 507,
            Self::Engine(_) => 502,
            Self::Unavailable(_) => 503,
            Self::Internal(_) => 500,
            Self::Forwarded { status, .. } => *status,
            Self::Grant(e) => match e.kind() {
                bulkhead_grant::reply::GrantErrorKind::UnknownGrant
                | bulkhead_grant::reply::GrantErrorKind::UnknownResource => 404,
                _ => 409,
            },
        }
    }

    pub fn code(&self) -> ErrorCode {
        use ErrorCode as C;
        match self {
            Self::BadRequest(_) => C::InvalidArgument,
            Self::NotFound(_) | Self::NoDevice(_) => C::NotFound,
            Self::AlreadyExists(_) => C::AlreadyExists,
            Self::Conflict(_) => C::Conflict,
            Self::OverCapacity(_) => C::OverCapacity,
            Self::Unauthorized => C::Unauthorized,
            Self::Forbidden(_) => C::Forbidden,
            Self::NoRoute(_) => C::NoRoute,
            Self::MethodNotAllowed { .. } => C::MethodNotAllowed,
            Self::RequestTimeout(_) => C::RequestTimeout,
            Self::PayloadTooLarge(_) => C::PayloadTooLarge,
            Self::Engine(_) => C::Engine,
            Self::Unavailable(_) => C::Unavailable,
            Self::Internal(_) => C::Internal,
            Self::Forwarded { detail, .. } => detail.code,
            Self::Grant(_) => C::GrantRefused,
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
                reason: match self {
                    Self::Grant(e) => Some(e.kind()),
                    _ => None,
                },
            },
        }
    }
}

impl From<bulkhead_store::StoreError> for ApiError {
    fn from(e: bulkhead_store::StoreError) -> Self {
        use bulkhead_store::StoreError as S;
        match e {
            S::AlreadyExists(n) => Self::AlreadyExists(n),
            S::NotFound(n) => Self::NotFound(n),
            S::Conflict { .. } | S::AddressInUse(_) => Self::Conflict(e.to_string()),
            S::Unavailable { .. } => Self::Unavailable(e.to_string()),
            S::LuNotFound(_) => Self::NoDevice(e.to_string()),
            S::LuExists(_)
            | S::Locked(_)
            | S::RouteTaken { .. }
            | S::Fenced { .. }
            | S::NotClaimed { .. } => Self::Conflict(e.to_string()),
            S::Forbidden(m) => Self::Forbidden(m),
            other => Self::Internal(other.to_string()),
        }
    }
}
