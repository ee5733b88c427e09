//! What the manager answers to a [`GuestRequest`](crate::request::GuestRequest):
//! one JSON object tagged by `reply`. `bulkhead-guest` prints it (one line, or the
//! object itself with `--json`); the admin API's "on behalf of a partition" call
//! returns the same object, so the two paths cannot drift.
//!
//! Errors are not here: they travel as the agent protocol's error (`kind`, `message`)
//! and as the API's typed error body; [`GrantErrorKind`] names them.

use serde::{Deserialize, Serialize};

use crate::cookie::Cookie;
use crate::error::GrantError;
use crate::table::GrantState;
use crate::types::{Access, GrantId, PartitionId, ResourceId, Timestamp};

/// The manager's answer to one guest request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case", deny_unknown_fields)]
pub enum GuestReply {
    /// `region create`: the region exists and is mapped in its owner.
    Region {
        resource: ResourceId,
        size: u64,
        /// What programs in the owner mmap (`MAP_SHARED`).
        path: String,
    },
    /// `grant`, `grant --regrant`: the cookie to hand over. It exists only here.
    Issued {
        grant: GrantId,
        cookie: Cookie,
        /// The grant's own end of life, if it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<Timestamp>,
    },
    /// `accept`: the resource is mapped in the presenter and usable at `path` (a
    /// region's BAR resource file, or a read-only disk's block device).
    Mapped {
        grant: GrantId,
        resource: ResourceId,
        access: Access,
        path: String,
    },
    /// `release`, `revoke`: every grant that ended, deepest first (the one asked
    /// for last). Each former holder has been unmapped when this is sent.
    Ended { grant: GrantId, ended: Vec<GrantId> },
    /// `list`: what the asking partition owns, and every live grant it gave or holds.
    List {
        owned: Vec<OwnedView>,
        grants: Vec<GrantView>,
    },
}

/// A resource the asking partition owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnedView {
    pub resource: ResourceId,
    /// Bytes, for regions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Where it is mapped in the owner, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A grant as a partition involved in it sees it. Never carries a cookie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantView {
    pub grant: GrantId,
    pub resource: ResourceId,
    pub granter: PartitionId,
    pub grantee: PartitionId,
    pub access: Access,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<GrantId>,
    pub depth: u8,
    pub state: GrantState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// Where the grantee has it mapped, shown to the grantee only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Machine-readable names of refusals, for the agent protocol's `kind` and the
/// API's error detail: one per [`GrantError`] variant, so a test (or a program in
/// a guest) can tell every refusal apart without parsing messages.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantErrorKind {
    UnknownResource,
    ResourceExists,
    NotOwner,
    UnknownGrant,
    NotHolder,
    NotAllowed,
    Ended,
    UnknownCookie,
    WrongPartition,
    CookieUsed,
    CookieExpired,
    Revoked,
    Stale,
    DepthExceeded,
    AccessWiderThanHeld,
    SelfGrant,
    GranteeIsOwner,
    ZeroLifetime,
    TooMany,
}

impl GrantErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantErrorKind::UnknownResource => "unknown_resource",
            GrantErrorKind::ResourceExists => "resource_exists",
            GrantErrorKind::NotOwner => "not_owner",
            GrantErrorKind::UnknownGrant => "unknown_grant",
            GrantErrorKind::NotHolder => "not_holder",
            GrantErrorKind::NotAllowed => "not_allowed",
            GrantErrorKind::Ended => "ended",
            GrantErrorKind::UnknownCookie => "unknown_cookie",
            GrantErrorKind::WrongPartition => "wrong_partition",
            GrantErrorKind::CookieUsed => "cookie_used",
            GrantErrorKind::CookieExpired => "cookie_expired",
            GrantErrorKind::Revoked => "revoked",
            GrantErrorKind::Stale => "stale",
            GrantErrorKind::DepthExceeded => "depth_exceeded",
            GrantErrorKind::AccessWiderThanHeld => "access_wider_than_held",
            GrantErrorKind::SelfGrant => "self_grant",
            GrantErrorKind::GranteeIsOwner => "grantee_is_owner",
            GrantErrorKind::ZeroLifetime => "zero_lifetime",
            GrantErrorKind::TooMany => "too_many",
        }
    }
}

impl GrantError {
    /// The refusal's machine-readable name.
    pub fn kind(&self) -> GrantErrorKind {
        match self {
            GrantError::UnknownResource(_) => GrantErrorKind::UnknownResource,
            GrantError::ResourceExists(_) => GrantErrorKind::ResourceExists,
            GrantError::NotOwner { .. } => GrantErrorKind::NotOwner,
            GrantError::UnknownGrant(_) => GrantErrorKind::UnknownGrant,
            GrantError::NotHolder { .. } => GrantErrorKind::NotHolder,
            GrantError::NotAllowed(_) => GrantErrorKind::NotAllowed,
            GrantError::Ended { .. } => GrantErrorKind::Ended,
            GrantError::UnknownCookie => GrantErrorKind::UnknownCookie,
            GrantError::WrongPartition => GrantErrorKind::WrongPartition,
            GrantError::CookieUsed => GrantErrorKind::CookieUsed,
            GrantError::CookieExpired => GrantErrorKind::CookieExpired,
            GrantError::Revoked(_) => GrantErrorKind::Revoked,
            GrantError::Stale(_) => GrantErrorKind::Stale,
            GrantError::DepthExceeded { .. } => GrantErrorKind::DepthExceeded,
            GrantError::AccessWiderThanHeld { .. } => GrantErrorKind::AccessWiderThanHeld,
            GrantError::SelfGrant => GrantErrorKind::SelfGrant,
            GrantError::GranteeIsOwner(_) => GrantErrorKind::GranteeIsOwner,
            GrantError::ZeroLifetime => GrantErrorKind::ZeroLifetime,
            GrantError::TooMany { .. } => GrantErrorKind::TooMany,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_match_serde() {
        for k in [
            GrantErrorKind::UnknownCookie,
            GrantErrorKind::AccessWiderThanHeld,
            GrantErrorKind::DepthExceeded,
        ] {
            let s = serde_json::to_value(k).unwrap();
            assert_eq!(s.as_str(), Some(k.as_str()));
        }
    }

    #[test]
    fn reply_round_trips_and_refuses_unknown_fields() {
        let r = GuestReply::Ended {
            grant: "gr-00000000000000aa".parse().unwrap(),
            ended: vec!["gr-00000000000000aa".parse().unwrap()],
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains(r#""reply":"ended""#), "{s}");
        assert_eq!(serde_json::from_str::<GuestReply>(&s).unwrap(), r);
        let extra = s.replace(r#""reply":"ended""#, r#""reply":"ended","x":1"#);
        assert!(serde_json::from_str::<GuestReply>(&extra).is_err());
    }
}
