//! Checkpoints of running partitions (issue 12 item 3): the API commands
//! (answered by `Manager::checkpoint_command`, carried as
//! `ApiRequest::Checkpoint`), their HTTP form and OpenAPI entries, the
//! client's calls and `bulkhead partition checkpoint` / `restore-checkpoint`.
//! The work is in `manager/checkpoint.rs` and the engine's `checkpoint`.

use crate::api::{ApiError, ErrorBody};
use crate::cli::{print_record, ApiArgs};
use crate::client::{partition_path, Client, ClientError};
use bulkhead_store::PartitionRecord;
use hyper::Method;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Bounds of `checkpoint_every_ms`: a checkpoint copies the guest's memory,
/// so not more often than every few seconds; a day is "rarely".
pub const MIN_EVERY_MS: u64 = 5_000;
pub const MAX_EVERY_MS: u64 = 86_400_000;

/// Body of `POST /v1/partitions/{name}/checkpoint-every`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetCheckpointEvery {
    /// Milliseconds between checkpoints (5 s to 1 day); null turns them off.
    #[schema(minimum = 5000, maximum = 86400000)]
    pub every_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointCommand {
    /// `POST /v1/partitions/{name}/checkpoint`: one checkpoint now.
    Now { name: String },
    /// `POST /v1/partitions/{name}/checkpoint-every`.
    SetEvery {
        name: String,
        req: SetCheckpointEvery,
    },
    /// `POST /v1/partitions/{name}/restore-checkpoint`.
    Restore { name: String },
}

/// A checkpoint period in range (absent: off).
pub fn check_every(ms: Option<u64>) -> Result<(), ApiError> {
    match ms {
        Some(t) if !(MIN_EVERY_MS..=MAX_EVERY_MS).contains(&t) => {
            Err(ApiError::BadRequest(format!(
                "checkpoint_every_ms must be {MIN_EVERY_MS}-{MAX_EVERY_MS} (null: off), got {t}"
            )))
        }
        _ => Ok(()),
    }
}

impl CheckpointCommand {
    pub fn name(&self) -> &str {
        match self {
            Self::Now { name } | Self::SetEvery { name, .. } | Self::Restore { name } => name,
        }
    }

    pub fn check_ranges(&self) -> Result<(), ApiError> {
        match self {
            Self::SetEvery { req, .. } => check_every(req.every_ms),
            _ => Ok(()),
        }
    }

    /// The HTTP form (what `server::route` parses back).
    pub fn http_of(&self) -> Result<(Method, String, Vec<u8>), ApiError> {
        let path = |n: &str, what: &str| {
            partition_path(n)
                .map(|p| format!("{p}/{what}"))
                .map_err(|e| ApiError::BadRequest(e.to_string()))
        };
        Ok(match self {
            Self::Now { name } => (Method::POST, path(name, "checkpoint")?, Vec::new()),
            Self::SetEvery { name, req } => (
                Method::POST,
                path(name, "checkpoint-every")?,
                serde_json::to_vec(req).expect("serialises"),
            ),
            Self::Restore { name } => (Method::POST, path(name, "restore-checkpoint")?, Vec::new()),
        })
    }
}

/// The routes (`server::route` hands these paths here).
pub fn route(
    method: &Method,
    segs: &[&str],
    b: &[u8],
) -> Option<Result<CheckpointCommand, ApiError>> {
    let name = |s: &str| s.to_string();
    Some(Ok(match (method, segs) {
        (&Method::POST, ["v1", "partitions", n, "checkpoint"]) => {
            CheckpointCommand::Now { name: name(n) }
        }
        (&Method::POST, ["v1", "partitions", n, "checkpoint-every"]) => {
            match crate::server::body_required(b) {
                Ok(req) => CheckpointCommand::SetEvery { name: name(n), req },
                Err(e) => return Some(Err(e)),
            }
        }
        (&Method::POST, ["v1", "partitions", n, "restore-checkpoint"]) => {
            CheckpointCommand::Restore { name: name(n) }
        }
        _ => return None,
    }))
}

#[utoipa::path(post, path = "/v1/partitions/{name}/checkpoint", tag = "lifecycle", operation_id = "checkpoint",
    params(("name" = String, Path, description = "partition name")),
    responses(
        (status = 200, description = "checkpointed while it runs on: the record names the new image (hibernation, reason checkpoint) and stays running", body = PartitionRecord),
        (status = 404, description = "no such partition", body = ErrorBody),
        (status = 409, description = "not running, not ready, another host's, or held by a remote restart", body = ErrorBody),
        (status = 502, description = "the checkpoint failed (the partition runs on; the previous checkpoint is kept)", body = ErrorBody),
    ))]
pub fn checkpoint() {}

#[utoipa::path(post, path = "/v1/partitions/{name}/checkpoint-every", tag = "lifecycle", operation_id = "checkpoint_every",
    params(("name" = String, Path, description = "partition name")),
    request_body = SetCheckpointEvery,
    responses(
        (status = 200, description = "the period recorded (null: checkpoints off)", body = PartitionRecord),
        (status = 400, description = "out of range, or a writable disk that is not qcow2", body = ErrorBody),
        (status = 404, description = "no such partition", body = ErrorBody),
    ))]
pub fn checkpoint_every() {}

#[utoipa::path(post, path = "/v1/partitions/{name}/restore-checkpoint", tag = "lifecycle", operation_id = "restore_checkpoint",
    params(("name" = String, Path, description = "partition name")),
    responses(
        (status = 200, description = "its disks reverted to the checkpoint's point, its memory restored; running, agent ready", body = PartitionRecord),
        (status = 404, description = "no such partition", body = ErrorBody),
        (status = 409, description = "not stopped or failed, or no checkpoint", body = ErrorBody),
        (status = 502, description = "the restore failed; the partition is hibernated with the checkpoint", body = ErrorBody),
    ))]
pub fn restore_checkpoint() {}

impl Client {
    pub async fn checkpoint(&self, name: &str) -> Result<PartitionRecord, ClientError> {
        let (m, path, _) = CheckpointCommand::Now { name: name.into() }
            .http_of()
            .map_err(|e| ClientError::Request(e.to_string()))?;
        self.send::<(), _>(m, &path, None).await
    }
    pub async fn checkpoint_every(
        &self,
        name: &str,
        every_ms: Option<u64>,
    ) -> Result<PartitionRecord, ClientError> {
        let path = format!("{}/checkpoint-every", partition_path(name)?);
        self.send(Method::POST, &path, Some(&SetCheckpointEvery { every_ms }))
            .await
    }
    pub async fn restore_checkpoint(&self, name: &str) -> Result<PartitionRecord, ClientError> {
        let path = format!("{}/restore-checkpoint", partition_path(name)?);
        self.send::<(), _>(Method::POST, &path, None).await
    }
}

/// `bulkhead partition checkpoint NAME [--every 30s|0]`.
#[derive(Debug, clap::Args)]
pub struct CheckpointArgs {
    pub name: String,
    /// Set how often instead (e.g. 30s, 5m; at least 5s); 0 turns them off.
    #[arg(long)]
    pub every: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `--checkpoint-every` / `--every`: a duration; 0 is off (None).
pub fn parse_every(s: &str) -> anyhow::Result<Option<u64>> {
    let ms = crate::cli::parse_duration_secs(s)?.saturating_mul(1000);
    Ok((ms > 0).then_some(ms))
}

pub async fn checkpoint_cli(a: CheckpointArgs) -> anyhow::Result<()> {
    let client = a.api.client()?;
    let rec = match &a.every {
        Some(e) => client.checkpoint_every(&a.name, parse_every(e)?).await?,
        None => client.checkpoint(&a.name).await?,
    };
    print_record(&rec, a.json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_round_trip_and_bounds() {
        for c in [
            CheckpointCommand::Now { name: "p".into() },
            CheckpointCommand::SetEvery {
                name: "p".into(),
                req: SetCheckpointEvery {
                    every_ms: Some(30_000),
                },
            },
            CheckpointCommand::Restore { name: "p".into() },
        ] {
            let (m, path, body) = c.http_of().unwrap();
            let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            assert_eq!(route(&m, &segs, &body).unwrap().unwrap(), c);
        }
        assert!(check_every(Some(0)).is_err());
        assert!(check_every(None).is_ok());
        assert!(check_every(Some(MIN_EVERY_MS)).is_ok());
        assert!(check_every(Some(MIN_EVERY_MS - 1)).is_err());
        assert!(check_every(Some(MAX_EVERY_MS + 1)).is_err());
        assert_eq!(parse_every("30s").unwrap(), Some(30_000));
        assert_eq!(parse_every("0").unwrap(), None);
    }
}
