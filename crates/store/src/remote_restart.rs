//! Remote-restart operations (issue 12) as the store keeps them: one record
//! per partition, written with a compare-and-swap on its revision, so two
//! operations on one partition never both hold it.

use crate::StoreError;
use serde::{Deserialize, Serialize};

/// Where an operation is. `Starting`, `Restoring` and `Restored` hold the
/// partition (its locks); the others are over and keep the record as history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperationState {
    /// Locks taken, adapters being gathered and created on the target.
    Starting,
    /// The target restores the partition from its hibernation data.
    Restoring,
    /// The partition runs on the target; a `stop` is awaited.
    Restored,
    Succeeded,
    Failed,
    /// No stop came within the timeout: unlocked, nothing removed.
    TimedOut,
}

impl OperationState {
    /// The operation still holds its partition (and its locks).
    pub fn holds(self) -> bool {
        matches!(self, Self::Starting | Self::Restoring | Self::Restored)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Restoring => "restoring",
            Self::Restored => "restored",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed-out",
        }
    }
}

impl std::fmt::Display for OperationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One remote restart of one partition, keyed by the partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationRecord {
    /// Printable, given by the caller or generated; every later command names it.
    pub token: String,
    pub partition: String,
    /// Host ids.
    pub source: String,
    pub target: String,
    pub state: OperationState,
    /// What the operation holds while [`OperationState::holds`]: the
    /// hibernation data and the source's and target's adapters, one line each
    /// (`hibernation:<location>`, `source:<adapter>`, `target:<adapter>`).
    #[serde(default)]
    pub locks: Vec<String>,
    /// What it created on the target, removed again by a `stop --state failed`
    /// (`tap:<name>`, `lu:<lu>@<adapter>`, `agent`, `qemu`).
    #[serde(default)]
    pub created: Vec<String>,
    /// The detail level and capability bits the caller asked for.
    #[serde(default)]
    pub detail: u8,
    #[serde(default)]
    pub capabilities: u64,
    pub started_at: u64,
    /// Unix ms after which a target that got no `stop` unlocks by itself.
    pub deadline: u64,
    pub updated_at: u64,
    /// The source's locks and stale adapters were released (`stop-collect`).
    #[serde(default)]
    pub collected: bool,
    /// What ended it, in words.
    #[serde(default)]
    pub message: Option<String>,
    /// 0 before it was first stored; the store's revision after.
    #[serde(default)]
    pub revision: u64,
}

impl StoreError {
    /// The operation record of `partition` was not at revision `expected`.
    pub fn operation_conflict(partition: &str, expected: u64, found: u64) -> Self {
        Self::Conflict {
            name: format!("operations/{partition}"),
            expected,
            found,
        }
    }
}
