//! Remote restart (issue 12 item 1): a hibernated partition restarted on
//! another host under an operation token. `start` (to the target) locks the
//! partition in the store, gathers the source's adapter configuration,
//! creates what is missing on the target and restores there; `stop` (to the
//! target) ends it, removing what it created on `failed`; `stop-collect` (to
//! the source) releases what the source still holds. The typed commands are
//! in [`api`], the CLI in [`cli`], the manager's side in
//! `manager/remote_restart.rs`.

pub mod api;
pub mod cli;

use bulkhead_store::{OperationRecord, OperationState};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The capability bits of the 64-bit capability value (docs/cluster.md).
pub mod caps {
    pub const HIBERNATION: u64 = 1 << 0;
    pub const LU: u64 = 1 << 1;
    pub const REMOTE_RESTART: u64 = 1 << 2;
    /// The VLAN spans the hosts (VXLAN): a partition keeps its address.
    pub const VLAN_ACROSS_HOSTS: u64 = 1 << 3;
    pub const MIGRATION: u64 = 1 << 4;
    pub const REDUNDANT_LU: u64 = 1 << 5;
    pub const CHECKPOINTS: u64 = 1 << 6;
    pub const FENCING: u64 = 1 << 7;

    /// Each bit's name, for messages and `docs/cluster.md`.
    pub const NAMES: &[(u64, &str)] = &[
        (HIBERNATION, "hibernation"),
        (LU, "lu"),
        (REMOTE_RESTART, "remote-restart"),
        (VLAN_ACROSS_HOSTS, "vlan-across-hosts"),
        (MIGRATION, "migration"),
        (REDUNDANT_LU, "redundant-lu"),
        (CHECKPOINTS, "checkpoints"),
        (FENCING, "fencing"),
    ];

    /// The names of the bits set in `v` (unknown bits as hex).
    pub fn names(v: u64) -> Vec<String> {
        let mut out: Vec<String> = NAMES
            .iter()
            .filter(|(b, _)| v & b != 0)
            .map(|(_, n)| n.to_string())
            .collect();
        let known = NAMES.iter().fold(0, |a, (b, _)| a | b);
        if v & !known != 0 {
            out.push(format!("{:#x}", v & !known));
        }
        out
    }
}

/// The detail levels of an operation's view: 0 token, state and hosts; 1
/// also the locks, the adapters created and the deadline; 2 also the
/// gathered source adapter configuration.
pub const MAX_DETAIL: u8 = 2;

/// The longest token; tokens are 1-64 of A-Z a-z 0-9 '.' '_' '-' (printable
/// and safe in a URL path segment).
pub const MAX_TOKEN_LEN: usize = 64;

pub fn check_token(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= MAX_TOKEN_LEN
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    match ok {
        true => Ok(()),
        false => Err(format!(
            "operation token {t:?} must be 1-{MAX_TOKEN_LEN} characters of A-Z, a-z, 0-9, '.', '_', '-'"
        )),
    }
}

/// A fresh token: 128 random bits, hex.
pub fn new_token() -> String {
    let v: u128 = rand::random();
    format!("rr-{v:032x}")
}

/// Parses a capability value: decimal or 0x-prefixed hex.
pub fn parse_capabilities(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("capabilities {s:?}: {e} (decimal or 0x-hex, 64 bits)"))
}

/// An operation as the API shows it, at its detail level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OperationView {
    pub token: String,
    pub partition: String,
    /// Host names (ids when a host is not a member).
    pub source: String,
    pub target: String,
    /// starting, restoring, restored, succeeded, failed, timed-out.
    pub state: String,
    pub detail: u8,
    pub capabilities: u64,
    pub started_at: u64,
    /// The source's locks and stale adapters were released (`stop-collect`).
    pub collected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Detail 1 and up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<u64>,
    /// Detail 2: the source adapter configuration recorded with the
    /// hibernation data (the saved partition spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub source_config: Option<serde_json::Value>,
}

impl OperationView {
    pub fn of(
        op: &OperationRecord,
        name_of: impl Fn(&str) -> String,
        config: Option<serde_json::Value>,
    ) -> Self {
        let d = op.detail;
        Self {
            token: op.token.clone(),
            partition: op.partition.clone(),
            source: name_of(&op.source),
            target: name_of(&op.target),
            state: op.state.to_string(),
            detail: d,
            capabilities: op.capabilities,
            started_at: op.started_at,
            collected: op.collected,
            message: op.message.clone(),
            locks: (d >= 1).then(|| op.locks.clone()),
            created: (d >= 1).then(|| op.created.clone()),
            deadline: (d >= 1).then_some(op.deadline),
            source_config: config.filter(|_| d >= 2),
        }
    }

    pub fn holds(&self) -> bool {
        ["starting", "restoring", "restored"].contains(&self.state.as_str())
    }
}

/// What `stop` ends an operation with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StopState {
    Succeeded,
    Failed,
}

impl From<StopState> for OperationState {
    fn from(s: StopState) -> Self {
        match s {
            StopState::Succeeded => Self::Succeeded,
            StopState::Failed => Self::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked() {
        assert!(check_token(&new_token()).is_ok());
        assert!(check_token("op-1.a_B").is_ok());
        for bad in ["", "a/b", "a b", "ä", &"x".repeat(65), "../x"] {
            assert!(check_token(bad).is_err(), "{bad:?}");
        }
        assert_ne!(new_token(), new_token());
    }

    #[test]
    fn capability_values_parse_and_name() {
        assert_eq!(parse_capabilities("0x7").unwrap(), 7);
        assert_eq!(parse_capabilities("16").unwrap(), caps::MIGRATION);
        assert!(parse_capabilities("0x1_0000_0000_0000_0000").is_err());
        assert!(parse_capabilities("lots").is_err());
        assert_eq!(
            caps::names(caps::MIGRATION | 1 << 40),
            ["migration", "0x10000000000"]
        );
    }
}
