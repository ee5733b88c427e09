//! Redundant LUs (issue 12 item 5), the API side: the typed commands
//! (`lu mirror`, `lu unmirror`, `lu promote`), their HTTP forms and OpenAPI
//! entries, which host carries each out, and the CLI's calls. The manager
//! side is `manager::lu_mirror`.
//!
//! A mirrored LU has a redundant copy: a second LU of the same client and
//! size that a QEMU `blockdev-mirror` job (write-blocking) keeps equal to it
//! while the primary is attached writable, and that `qemu-img` copies when it
//! is not. The copy is attached read-only only.

#![allow(dead_code)]

use crate::api::{ApiError, ErrorBody};
use crate::lu::types::LuView;
use crate::manager::Manager;
use crate::server::body_required;
use bulkhead_store::LockMode;
use hyper::Method;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `POST /v1/lus/{name}/mirror`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorLu {
    /// The copy's name: a new LU (`<name>-mirror` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,47}$")]
    pub copy: Option<String>,
}

/// Body of `POST /v1/lus/{name}/promote`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteLu {
    /// Promote a copy that is not in step (stale or broken): the writes it
    /// lacks are lost.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorCommand {
    Mirror { lu: String, req: MirrorLu },
    Unmirror { lu: String },
    Promote { lu: String, req: PromoteLu },
}

impl MirrorCommand {
    pub fn lu(&self) -> &str {
        match self {
            Self::Mirror { lu, .. } | Self::Unmirror { lu } | Self::Promote { lu, .. } => lu,
        }
    }
}

/// A body that must be a JSON object (serde would also fill a struct from
/// an array, which the document does not allow).
fn object_body<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, ApiError> {
    let v: serde_json::Value = body_required(b)?;
    if !v.is_object() {
        return Err(ApiError::BadRequest(
            "malformed JSON body: expected an object".into(),
        ));
    }
    body_required(b)
}

/// The routes of `/v1/lus/{name}/mirror` and `/v1/lus/{name}/promote`;
/// `None` for a method these paths do not take.
pub fn route(
    method: &Method,
    lu: &str,
    verb: &str,
    b: &[u8],
) -> Option<Result<MirrorCommand, ApiError>> {
    let lu = lu.to_string();
    Some(match (method, verb) {
        (&Method::POST, "mirror") => object_body(b).map(|req| MirrorCommand::Mirror { lu, req }),
        (&Method::DELETE, "mirror") => Ok(MirrorCommand::Unmirror { lu }),
        (&Method::POST, "promote") => object_body(b).map(|req| MirrorCommand::Promote { lu, req }),
        _ => return None,
    })
}

/// The HTTP form of a command (what [`route`] parses back).
pub fn http_of(c: &MirrorCommand) -> Result<(Method, String, Vec<u8>), ApiError> {
    let base = lu_base(c.lu())?;
    let json = |v: &dyn crate::cluster::forward::erased::Json| v.bytes();
    Ok(match c {
        MirrorCommand::Mirror { req, .. } => (Method::POST, format!("{base}/mirror"), json(req)),
        MirrorCommand::Unmirror { .. } => (Method::DELETE, format!("{base}/mirror"), Vec::new()),
        MirrorCommand::Promote { req, .. } => (Method::POST, format!("{base}/promote"), json(req)),
    })
}

fn lu_base(lu: &str) -> Result<String, ApiError> {
    super::check_name("LU", lu).map_err(ApiError::BadRequest)?;
    Ok(format!("/v1/lus/{}", crate::client::encode_segment(lu)))
}

/// Which host carries a command out: the one whose partition holds the
/// primary writable (its QEMU runs, or will run, the mirror job); `None`
/// when no host does, or this one.
pub(crate) async fn carried_out_by(
    m: &Manager,
    c: &MirrorCommand,
) -> Result<Option<crate::cluster::forward::Owner>, ApiError> {
    if matches!(c, MirrorCommand::Promote { .. }) {
        // Promotion is a store change, refused while anyone writes the LU.
        return Ok(None);
    }
    let locks = m.store().lu_locks(Some(c.lu())).await?;
    Ok(locks
        .into_iter()
        .find(|l| l.mode == LockMode::Rw && l.host != m.host_id() && !l.partition.contains(':'))
        .map(|l| crate::cluster::forward::Owner::Id(l.host)))
}

impl crate::client::Client {
    pub async fn lu_mirror(&self, c: &MirrorCommand) -> Result<LuView, crate::client::ClientError> {
        let (method, path, body) =
            http_of(c).map_err(|e| crate::client::ClientError::Request(e.to_string()))?;
        let body: Option<serde_json::Value> = match body.is_empty() {
            true => None,
            false => Some(serde_json::from_slice(&body).expect("our own JSON")),
        };
        self.send(method, &path, body.as_ref()).await
    }
}

#[utoipa::path(post, path = "/v1/lus/{name}/mirror", tag = "lus", operation_id = "lu_mirror",
    params(("name" = String, Path, description = "the primary LU")),
    request_body = MirrorLu,
    responses(
        (status = 200, description = "the copy is made and in step (`mirror.state` synced); while a \
            partition holds the LU writable, by a write-blocking mirror job in its QEMU", body = LuView),
        (status = 400, description = "a malformed body, a bad copy name", body = ErrorBody),
        (status = 404, description = "no such LU", body = ErrorBody),
        (status = 409, description = "already mirrored, itself a copy, the copy's name is taken (by any \
            client), or the LU is being changed", body = ErrorBody),
        (status = 502, description = "the copy could not be made (everything rolled back)", body = ErrorBody),
    ))]
fn lu_mirror() {}

#[utoipa::path(delete, path = "/v1/lus/{name}/mirror", tag = "lus", operation_id = "lu_unmirror",
    params(("name" = String, Path, description = "the primary LU")),
    responses(
        (status = 200, description = "the mirror job (if any) is stopped; the copy stays as an ordinary LU", body = LuView),
        (status = 404, description = "no such LU", body = ErrorBody),
        (status = 409, description = "the LU is not mirrored", body = ErrorBody),
    ))]
fn lu_unmirror() {}

#[utoipa::path(post, path = "/v1/lus/{name}/promote", tag = "lus", operation_id = "lu_promote",
    params(("name" = String, Path, description = "the primary LU")),
    request_body = PromoteLu,
    responses(
        (status = 200, description = "the copy's file is the LU's now; the old file is the copy, \
            stale until the next attach re-syncs it", body = LuView),
        (status = 400, description = "a malformed body", body = ErrorBody),
        (status = 404, description = "no such LU", body = ErrorBody),
        (status = 409, description = "not mirrored, attached by a host that is not lost, the copy is \
            being read, or the copy is not in step (without force)", body = ErrorBody),
    ))]
fn lu_promote() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_survive_the_round_trip() {
        let cmds = [
            MirrorCommand::Mirror {
                lu: "vol".into(),
                req: MirrorLu {
                    copy: Some("vol-b".into()),
                },
            },
            MirrorCommand::Mirror {
                lu: "vol".into(),
                req: MirrorLu::default(),
            },
            MirrorCommand::Unmirror { lu: "vol".into() },
            MirrorCommand::Promote {
                lu: "vol".into(),
                req: PromoteLu { force: true },
            },
        ];
        for c in cmds {
            let (m, path, body) = http_of(&c).unwrap();
            let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            assert_eq!(route(&m, segs[2], segs[3], &body).unwrap().unwrap(), c);
        }
        assert!(http_of(&MirrorCommand::Unmirror { lu: "../x".into() }).is_err());
        let bad = route(&Method::POST, "vol", "mirror", br#"{"copy":"x","extra":1}"#);
        assert!(matches!(bad, Some(Err(ApiError::BadRequest(_)))));
        assert!(route(&Method::GET, "vol", "mirror", b"").is_none());
        for body in [&b"[]"[..], b"", b"null", b"[false]"] {
            let r = route(&Method::POST, "vol", "promote", body);
            assert!(matches!(r, Some(Err(ApiError::BadRequest(_)))), "{body:?}");
        }
    }
}
