//! The LU API's requests and replies (`/v1/lus`, `/v1/lu-requests`), typed
//! as the partition API's are, and in its OpenAPI document.

use bulkhead_store::{LuLock, LuRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/lus`: a new thin LU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLu {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,47}$")]
    pub name: String,
    /// The owning client; only its partitions may attach the LU.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,47}$")]
    pub client: String,
    /// Virtual size: whole 512-byte sectors, 1 MiB to 64 TiB.
    #[schema(minimum = 1048576, maximum = 70368744177664_u64, multiple_of = 512)]
    pub size_bytes: u64,
    /// `data` (default), `paging` or `hibernation`.
    #[serde(default)]
    #[schema(pattern = "^(data|paging|hibernation)$")]
    pub purpose: Option<String>,
}

/// `POST /v1/lus/{name}/resize`: grow an LU no one has attached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeLu {
    /// The new virtual size; not smaller than the current one.
    #[schema(minimum = 1048576, maximum = 70368744177664_u64, multiple_of = 512)]
    pub size_bytes: u64,
}

/// `POST /v1/lu-requests`: an LU of the client with at least this capacity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestLu {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,47}$")]
    pub client: String,
    #[schema(minimum = 1048576, maximum = 70368744177664_u64, multiple_of = 512)]
    pub min_bytes: u64,
    /// `data` (default), `paging` or `hibernation`: only LUs of this purpose
    /// are reused or grown.
    #[serde(default)]
    #[schema(pattern = "^(data|paging|hibernation)$")]
    pub purpose: Option<String>,
}

/// An LU as `lu show` gives it: the record, its file's use, who holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LuView {
    #[serde(flatten)]
    pub record: LuRecord,
    /// The file on this host (the repository root joined with `path`).
    pub file: String,
    /// Virtual size read from the file.
    pub virtual_bytes: u64,
    /// Bytes the file occupies (grows as the guest writes).
    pub allocated_bytes: u64,
    /// The attachments holding it (the LU status table).
    pub locks: Vec<LuLock>,
    /// Why the file could not be read (missing, not a qcow2); the sizes
    /// are then the record's and 0.
    #[serde(default)]
    pub problem: Option<String>,
}

/// Which of the three `lu request` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LuOutcome {
    /// An LU not in use already had the capacity.
    Reused,
    /// An LU not in use was grown by the missing amount.
    Grown,
    /// A new thin LU of exactly the capacity was made.
    Created,
}

/// Reply of `POST /v1/lu-requests`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LuRequested {
    pub outcome: LuOutcome,
    /// How much a grown LU grew (0 otherwise).
    pub grown_by_bytes: u64,
    pub lu: LuView,
}

/// Reply of `DELETE /v1/lus/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LuDeleted {
    pub deleted: String,
}

/// Body of `POST /v1/partitions/{name}/lus`: hot-plug an LU of the
/// partition's client into a running partition created with hot-plug ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachLu {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,47}$")]
    pub lu: String,
    #[serde(default)]
    pub readonly: bool,
    /// Adapter id (1-16 of a-z, 0-9, '-'); `hotN` when absent.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,15}$")]
    pub id: Option<String>,
}

/// An LU a partition attaches (`partition create --lu NAME[:ro]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LuAttach {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,47}$")]
    pub name: String,
    /// Attach read-only (read-only attachments may share an LU).
    #[serde(default)]
    pub readonly: bool,
}
