//! What the table's operations take and give back.

use serde::{Deserialize, Serialize};

use crate::cookie::Cookie;
use crate::types::{Access, Actor, GrantId, PartitionId, ResourceId, Timestamp};

/// Where a new grant comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The owner grants a resource it owns.
    Owned(ResourceId),
    /// A holder re-grants what it holds through this grant (`--regrant`).
    Regrant(GrantId),
}

/// A grant asked for: by the owner of a resource, or by a holder re-granting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRequest {
    pub source: Source,
    pub grantee: PartitionId,
    pub access: Access,
    /// How long the grant lasts once issued; `None`: until it is ended. A re-grant
    /// never outlives its parent, whatever is asked.
    pub lifetime_ms: Option<u64>,
}

/// What the manager must do after an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// Hot-plug `resource` into `holder` and have its agent map it.
    Map {
        holder: PartitionId,
        grant: GrantId,
        resource: ResourceId,
        access: Access,
    },
    /// Have `holder`'s agent unmap `grant`'s device, then unplug it (forced after the
    /// deadline). Listed deepest grant first.
    Unmap { holder: PartitionId, grant: GrantId },
}

/// A line of `bulkhead grant log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at: Timestamp,
    pub actor: Actor,
    pub action: Action,
}

/// What happened. `ended` lists the grants that ended with it (descendants
/// included), deepest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    ResourceAdded {
        resource: ResourceId,
    },
    ResourceRemoved {
        resource: ResourceId,
        ended: Vec<GrantId>,
    },
    Issued {
        grant: GrantId,
        resource: ResourceId,
        grantee: PartitionId,
        access: Access,
        parent: Option<GrantId>,
    },
    Accepted {
        grant: GrantId,
    },
    Released {
        grant: GrantId,
        ended: Vec<GrantId>,
    },
    Revoked {
        grant: GrantId,
        ended: Vec<GrantId>,
    },
    Expired {
        grant: GrantId,
        ended: Vec<GrantId>,
    },
    PartitionStopped {
        partition: PartitionId,
        ended: Vec<GrantId>,
    },
}

/// The result of a successful operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome<T> {
    pub value: T,
    pub effects: Vec<Effect>,
    pub events: Vec<Event>,
}

impl<T> Outcome<T> {
    /// An outcome with the one log event most operations have.
    pub(crate) fn logged(
        value: T,
        effects: Vec<Effect>,
        at: Timestamp,
        actor: Actor,
        action: Action,
    ) -> Self {
        Outcome {
            value,
            effects,
            events: vec![Event { at, actor, action }],
        }
    }
}

/// A new grant and its cookie, for the granter to hand over. The cookie exists only
/// here: the table keeps its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub grant: GrantId,
    pub cookie: Cookie,
}
