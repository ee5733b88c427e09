//! The remote-restart commands of the API: one [`RemoteRestartCommand`] per
//! call, answered by `Manager::remote_restart` with one
//! [`RemoteRestartReply`]; `api.rs` carries them as
//! `ApiRequest::RemoteRestart` and `ApiReply::RemoteRestart`. Where each is
//! carried out ([`carried_out_by`]), its HTTP form ([`http_of`]), and the
//! operations' OpenAPI entries (never called: they carry `#[utoipa::path]`).

#![allow(dead_code)]

use super::{OperationView, StopState};
use crate::api::{ApiError, ErrorBody};
use crate::manager::Manager;
use bulkhead_store::HostState;
use hyper::Method;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `POST /v1/remote-restarts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRemoteRestart {
    /// The hibernated partition to restart.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,47}$")]
    pub partition: String,
    /// The host (by name) to restart it on; the request is carried out there.
    pub target: String,
    /// The operation token; a random one when absent (then printed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub token: Option<String>,
    /// Detail level of the operation's view, 0-2.
    #[serde(default)]
    #[schema(maximum = 2)]
    pub detail: u8,
    /// Capability bits the target must have (docs/cluster.md); 0: none asked.
    #[serde(default)]
    pub capabilities: u64,
    /// Seconds the target waits for a `stop` before it unlocks by itself;
    /// the target's `[cluster] remote_restart_timeout_secs` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 3600)]
    pub timeout_secs: Option<u64>,
    /// Promote the redundant copy of every mirrored LU the partition writes
    /// before the restore, inside the operation (`lu promote`, not forced);
    /// a copy not in step refuses the start (409) with nothing changed. A
    /// promotion stays when the operation then fails (docs/cluster.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promote_mirror: bool,
}

/// Body of `POST /v1/remote-restarts/{token}/stop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopRemoteRestart {
    pub state: StopState,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RemoteRestartCommand {
    Start(StartRemoteRestart),
    Stop {
        token: String,
        req: StopRemoteRestart,
    },
    StopCollect {
        token: String,
    },
    Show {
        token: String,
    },
    List,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum RemoteRestartReply {
    /// An operation just started (201): the partition runs on the target.
    Started(OperationView),
    Operation(OperationView),
    Operations(Vec<OperationView>),
}

impl RemoteRestartReply {
    pub fn status(&self) -> u16 {
        match self {
            Self::Started(_) => 201,
            _ => 200,
        }
    }
}

/// Which host carries a command out: `Some(host name or id)` when another.
/// `start` goes to its target, `stop` to the operation's target,
/// `stop-collect` to its source. A `stop --state failed` whose target is lost
/// is carried out by the host that got it: the target's partition died with
/// it, and what is left to undo is in the store.
pub(crate) async fn carried_out_by(
    m: &Manager,
    c: &RemoteRestartCommand,
) -> Result<Option<crate::cluster::forward::Owner>, ApiError> {
    use crate::cluster::forward::Owner;
    use RemoteRestartCommand as C;
    let here = crate::cluster::host_name(m);
    match c {
        C::Start(s) if s.target != here => Ok(Some(Owner::Name(s.target.clone()))),
        C::Stop { token, req } => {
            let op = m.operation_by_token(token).await?;
            if op.target == m.host_id() {
                return Ok(None);
            }
            let lost = m
                .store()
                .hosts()
                .await?
                .iter()
                .any(|h| h.record.id == op.target && h.state == HostState::Lost);
            if lost && req.state == StopState::Failed {
                return Ok(None);
            }
            Ok(Some(Owner::Id(op.target)))
        }
        C::StopCollect { token } => {
            let op = m.operation_by_token(token).await?;
            Ok((op.source != m.host_id()).then_some(Owner::Id(op.source)))
        }
        _ => Ok(None),
    }
}

pub fn token_path(token: &str) -> Result<String, ApiError> {
    super::check_token(token).map_err(ApiError::Forbidden)?;
    Ok(format!("/v1/remote-restarts/{token}"))
}

/// The HTTP form of a command (what `server::route` parses back).
pub fn http_of(c: &RemoteRestartCommand) -> Result<(Method, String, Vec<u8>), ApiError> {
    let json = |v: &dyn crate::cluster::forward::erased::Json| v.bytes();
    use RemoteRestartCommand as C;
    Ok(match c {
        C::Start(s) => (Method::POST, "/v1/remote-restarts".into(), json(s)),
        C::Stop { token, req } => (
            Method::POST,
            format!("{}/stop", token_path(token)?),
            json(req),
        ),
        C::StopCollect { token } => (
            Method::POST,
            format!("{}/stop-collect", token_path(token)?),
            Vec::new(),
        ),
        C::Show { token } => (Method::GET, token_path(token)?, Vec::new()),
        C::List => (Method::GET, "/v1/remote-restarts".into(), Vec::new()),
    })
}

#[utoipa::path(get, path = "/v1/remote-restarts", tag = "remote-restart", operation_id = "remote_restart_list",
    responses((status = 200, description = "every remote-restart operation, ongoing and ended", body = Vec<OperationView>)))]
pub fn remote_restart_list() {}

#[utoipa::path(post, path = "/v1/remote-restarts", tag = "remote-restart", operation_id = "remote_restart_start",
    request_body = StartRemoteRestart,
    responses(
        (status = 201, description = "locked under the token and restored on the target, which waits for a stop", body = OperationView),
        (status = 400, description = "malformed request, bad token, detail out of range, unknown target", body = ErrorBody),
        (status = 403, description = "an LU of the partition belongs to another client", body = ErrorBody),
        (status = 404, description = "no such partition", body = ErrorBody),
        (status = 409, description = "not hibernated, held by another operation, the token is another operation's, the target lacks a capability asked for, or (promote_mirror) a mirrored LU's copy is not in step or the LU is held", body = ErrorBody),
        (status = 502, description = "the restore failed; the operation failed and the partition is hibernated on its source", body = ErrorBody),
        (status = 503, description = "the target cannot be reached", body = ErrorBody),
        (status = 507, description = "the target has not the capacity", body = ErrorBody),
    ))]
pub fn remote_restart_start() {}

#[utoipa::path(get, path = "/v1/remote-restarts/{token}", tag = "remote-restart", operation_id = "remote_restart_show",
    params(("token" = String, Path, description = "operation token", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    responses(
        (status = 200, description = "the operation", body = OperationView),
        (status = 403, description = "no operation has this token", body = ErrorBody),
    ))]
pub fn remote_restart_show() {}

#[utoipa::path(post, path = "/v1/remote-restarts/{token}/stop", tag = "remote-restart", operation_id = "remote_restart_stop",
    params(("token" = String, Path, description = "operation token", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    request_body = StopRemoteRestart,
    responses(
        (status = 200, description = "unlocked; on failed, every adapter the operation created is gone and the partition is hibernated on its source", body = OperationView),
        (status = 400, description = "malformed request", body = ErrorBody),
        (status = 403, description = "no operation has this token", body = ErrorBody),
        (status = 409, description = "the operation has already ended", body = ErrorBody),
        (status = 503, description = "the target cannot be reached", body = ErrorBody),
    ))]
pub fn remote_restart_stop() {}

#[utoipa::path(post, path = "/v1/remote-restarts/{token}/stop-collect", tag = "remote-restart", operation_id = "remote_restart_stop_collect",
    params(("token" = String, Path, description = "operation token", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    responses(
        (status = 200, description = "the source's locks and stale adapters released", body = OperationView),
        (status = 403, description = "no operation has this token", body = ErrorBody),
        (status = 409, description = "the target has not stopped the operation yet, or it was collected", body = ErrorBody),
        (status = 503, description = "the source cannot be reached", body = ErrorBody),
    ))]
pub fn remote_restart_stop_collect() {}
