//! The allocator's vocabulary: pool specs, partition states, the actions it asks the
//! manager to carry out, and its errors.

use bulkhead_pool_proto::{ErrorCode, RefuseReason, SessionId};
use serde::{Deserialize, Serialize};

/// One pool, as `bulkhead pool create` states it (the allocator's part of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    pub name: String,
    /// The transaction program name its partitions serve.
    pub program: String,
    /// Partitions created at once and kept at least (`--size`).
    pub size: u32,
    /// Ceiling under load (`--max`, defaults to size).
    pub max: u32,
    /// Idle (or starting) partitions kept in reserve while below max.
    pub min_idle: u32,
    /// Replace a partition after this many sessions (`--recycle-after`; 1 = fresh
    /// partition for every session).
    pub recycle_after: Option<u32>,
}

/// A partition's place in its pool's life cycle (`pool show`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "session")]
pub enum PartitionState {
    /// Started cold or from the template; idle once its program answers.
    Booting,
    Idle,
    InSession(SessionId),
    /// DEALLOCATE received; the program's cleanup runs.
    Cleaning(SessionId),
    /// Being replaced by a fresh partition under the same primary id.
    Recycling,
    /// Kept failing to start; waits for an administrator's `retry`.
    Failed,
}

impl PartitionState {
    /// Every `as_str` name, in life-cycle order (metrics report each, zero too).
    pub const NAMES: [&'static str; 6] = [
        "booting",
        "idle",
        "in-session",
        "cleaning",
        "recycling",
        "failed",
    ];

    pub fn session(&self) -> Option<SessionId> {
        match self {
            Self::InSession(s) | Self::Cleaning(s) => Some(*s),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Booting => "booting",
            Self::Idle => "idle",
            Self::InSession(_) => "in-session",
            Self::Cleaning(_) => "cleaning",
            Self::Recycling => "recycling",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    pub pool: String,
    /// `NAME-i`; an administrator reaches the partition by it at all times.
    pub primary_id: String,
    pub state: PartitionState,
    /// The user of the current session; cleared when its cleanup is done.
    pub alternate_id: Option<String>,
    pub sessions_served: u64,
    /// Sessions since this partition was last started fresh (for `recycle_after`).
    pub since_recycle: u32,
    /// Consecutive failed starts.
    pub start_failures: u32,
}

impl Partition {
    pub(crate) fn new(pool: &str, primary_id: &str) -> Self {
        Self {
            pool: pool.to_owned(),
            primary_id: primary_id.to_owned(),
            state: PartitionState::Booting,
            alternate_id: None,
            sessions_served: 0,
            since_recycle: 0,
            start_failures: 0,
        }
    }
}

/// The allocator's number for one ALLOCATE, answered exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// How a partition is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Start {
    /// Boot and start the program.
    Cold,
    /// Restore the pool's saved, program-ready state (then re-identify the clone).
    Template,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub session: SessionId,
    pub partition: String,
    pub program: String,
    pub alternate_id: String,
}

/// What the manager is asked to do; each start ends in `partition_ready` or
/// `partition_failed`, each cleanup in `cleanup_done`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The answer to a request: ALLOCATED (connect the client to the partition and
    /// send it the session line) or REFUSED.
    Answer {
        request: RequestId,
        result: Result<Allocation, RefuseReason>,
    },
    /// Create and start a new partition.
    Boot { partition: String, from: Start },
    /// Stop the partition and start a fresh one under the same primary id.
    Recycle { partition: String, from: Start },
    /// Tell the program the conversation ends and run the pool's cleanup.
    Cleanup {
        partition: String,
        session: SessionId,
    },
    /// Send CONFIRMED to the client of a deallocation with confirm.
    Confirmed { session: SessionId },
    /// Send ERROR to the session's client and close its conversation.
    EndSession { session: SessionId, code: ErrorCode },
    /// Stop and remove the partition.
    Destroy { partition: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("bad pool spec: {0}")]
    BadSpec(String),
    #[error("pool {0} exists")]
    PoolExists(String),
    #[error("no pool {0}")]
    UnknownPool(String),
    #[error("no partition {0}")]
    UnknownPartition(String),
    #[error("no session {0}")]
    UnknownSession(SessionId),
    #[error("session {0} is not in progress")]
    NotInSession(SessionId),
    #[error("session {0} is not being cleaned up")]
    NotCleaning(SessionId),
    #[error("partition {0} is not starting")]
    NotStarting(String),
    #[error("partition {0} has not failed")]
    NotFailed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_name_is_listed() {
        let s = SessionId(1);
        for st in [
            PartitionState::Booting,
            PartitionState::Idle,
            PartitionState::InSession(s),
            PartitionState::Cleaning(s),
            PartitionState::Recycling,
            PartitionState::Failed,
        ] {
            assert!(PartitionState::NAMES.contains(&st.as_str()), "{st:?}");
        }
    }
}
