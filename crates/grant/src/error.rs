//! Refusals of the grant table. Every variant leaves the table exactly as it was.

use crate::table::GrantState;
use crate::types::{Access, GrantId, PartitionId, ResourceId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("no resource {0}")]
    UnknownResource(ResourceId),
    #[error("resource {0} already exists")]
    ResourceExists(ResourceId),
    #[error("{by} does not own {resource}")]
    NotOwner {
        by: PartitionId,
        resource: ResourceId,
    },
    #[error("no grant {0}")]
    UnknownGrant(GrantId),
    #[error("{by} does not hold grant {grant} (it must be the grantee and have accepted it)")]
    NotHolder { by: PartitionId, grant: GrantId },
    #[error("only the owner, an upstream granter or an administrator may revoke {0}")]
    NotAllowed(GrantId),
    #[error("grant {grant} has already ended ({state:?})")]
    Ended { grant: GrantId, state: GrantState },
    /// Unknown grant id or a secret that does not match: one error, so a guest
    /// learns nothing from probing.
    #[error("unknown or forged cookie")]
    UnknownCookie,
    #[error("this cookie was issued to another partition")]
    WrongPartition,
    #[error("this cookie has already been used")]
    CookieUsed,
    #[error("this cookie has expired")]
    CookieExpired,
    #[error("grant {0} has been revoked")]
    Revoked(GrantId),
    #[error("grant {0} is for an earlier generation of its resource")]
    Stale(GrantId),
    #[error("re-grant would be {depth} deep; the bound is {max}")]
    DepthExceeded { depth: u8, max: u8 },
    #[error("access {asked} is wider than the {held} held")]
    AccessWiderThanHeld { held: Access, asked: Access },
    #[error("a partition cannot grant to itself")]
    SelfGrant,
    #[error("{0} owns this resource already")]
    GranteeIsOwner(PartitionId),
    #[error("a grant's lifetime must be at least 1 ms")]
    ZeroLifetime,
    #[error("{by} has {limit} live {what}, the most allowed")]
    TooMany {
        by: PartitionId,
        what: &'static str,
        limit: usize,
    },
}
