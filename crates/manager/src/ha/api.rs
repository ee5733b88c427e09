//! The HA policy command of the API: `PUT /v1/partitions/{name}/ha`
//! (`ApiRequest::SetHa`), answered by any host (it only rewrites the
//! record, compare-and-swap). Its OpenAPI entry is [`set_ha`] (never called).

use crate::api::ErrorBody;
use bulkhead_store::{HaPolicy, PartitionRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `PUT /v1/partitions/{name}/ha`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetHa {
    /// What the cluster does when the partition's host is lost.
    pub ha: HaPolicy,
}

#[utoipa::path(put, path = "/v1/partitions/{name}/ha", tag = "cluster", operation_id = "set_ha",
    params(("name" = String, Path, description = "partition name")),
    request_body = SetHa,
    responses(
        (status = 200, description = "the record with its new policy", body = PartitionRecord),
        (status = 400, description = "malformed body or unknown policy", body = ErrorBody),
        (status = 404, description = "no such partition", body = ErrorBody),
        (status = 409, description = "the record kept changing, or its claim moved", body = ErrorBody),
    ))]
#[allow(dead_code)]
pub(crate) fn set_ha() {}
