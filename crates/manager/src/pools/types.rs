//! The pool API's vocabulary (issue 17): the pool statement, its views, and
//! the users who may allocate. Typed like the rest of `api.rs`, and the same
//! types derive the OpenAPI schemas.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/pools`: the pool statement (`bulkhead pool create`). It is also
/// what the store keeps, so a restarted daemon re-adopts the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePool {
    /// The pool's name; its partitions are `NAME-1` ... `NAME-N`.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,39}$")]
    pub name: String,
    /// The program (transaction program name) the partitions serve.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")]
    pub program: String,
    /// Partitions created at once and kept at least.
    #[schema(minimum = 1, maximum = 64)]
    pub size: u32,
    /// Ceiling under load; `size` when absent.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 64)]
    pub max: Option<u32>,
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 255, default = 1)]
    pub vcpus: u32,
    #[schema(minimum = 96)]
    pub memory_mib: u64,
    #[schema(minimum = 1)]
    pub cpu_percent: u32,
    /// Guest image directory; the daemon's default when absent.
    #[serde(default)]
    pub image: Option<String>,
    /// The program's command, run by the agent with `/bin/sh -c` in each
    /// partition once it has booted.
    #[schema(min_length = 1, max_length = 4096)]
    pub app: String,
    /// The TCP port the program answers on (over the internal VLAN).
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    /// Run by the agent after each session; its exit status 0 confirms.
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub cleanup: Option<String>,
    /// Replace a partition after this many sessions (1: fresh for every one).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub recycle_after: Option<u32>,
    /// Untrusted users: `recycle_after` defaults to 1.
    #[serde(default)]
    pub untrusted: bool,
}

fn one() -> u32 {
    1
}

/// Body of `POST /v1/pools/{name}/resize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizePool {
    #[schema(minimum = 1, maximum = 64)]
    pub size: u32,
    /// The new ceiling; the new size when absent.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 64)]
    pub max: Option<u32>,
}

/// One partition of a pool (`pool show`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolPartitionView {
    /// Its partition name: the administrator reaches it by it at all times.
    pub primary_id: String,
    /// booting, idle, in-session, cleaning, recycling or failed.
    pub state: String,
    /// The user of the current session.
    #[serde(default)]
    pub alternate_id: Option<String>,
    #[serde(default)]
    pub session: Option<u64>,
    pub sessions_served: u64,
}

/// A pool: its statement and its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolView {
    #[serde(flatten)]
    pub statement: CreatePool,
    pub partitions: Vec<PoolPartitionView>,
}

/// Reply of `DELETE /v1/pools/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolDestroyed {
    pub destroyed: String,
    /// The partitions destroyed with it.
    pub partitions: Vec<String>,
}

/// `POST /v1/pool-users`: a user who may allocate (`bulkhead pool user add`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddPoolUser {
    /// The user's name: a session's alternate id.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")]
    pub name: String,
    /// The programs the user may allocate.
    #[schema(min_items = 1)]
    pub programs: Vec<String>,
    /// Concurrent sessions (queued requests count); 1 when absent.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1024)]
    pub max_sessions: Option<u32>,
}

/// A pool user as listed: never the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolUserView {
    pub name: String,
    pub programs: Vec<String>,
    pub max_sessions: u32,
}

/// Reply of `POST /v1/pool-users` (201): the token, shown this once; the
/// store keeps only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolUserAdded {
    #[serde(flatten)]
    pub user: PoolUserView,
    pub token: String,
}

/// Reply of `DELETE /v1/pool-users/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolUserRemoved {
    pub removed: String,
}
