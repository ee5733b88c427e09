//! The grant tables' documents as the store keeps them (issue 11, item 8).
//! The store never looks inside: the body is the manager's serialised
//! `GrantTable` and a log line's event is JSON text, so this crate does not
//! depend on the grant crate.

use crate::StoreError;

/// The grant table of one host (the manager's serialised `GrantTable`,
/// opaque here) and its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantTableDoc {
    pub body: Vec<u8>,
    pub revision: u64,
}

/// One line of the grant log: a sequence number the store assigns
/// (increasing per host, never reused), when, and the event as JSON text
/// (opaque here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantLogEntry {
    pub seq: u64,
    pub at_ms: u64,
    pub event: String,
}

impl StoreError {
    /// A grant table's revision was not `expected`: what every backend
    /// answers, under the name `grants/<host>`.
    pub fn grant_conflict(host: &str, expected: u64, found: u64) -> Self {
        Self::Conflict {
            name: format!("grants/{host}"),
            expected,
            found,
        }
    }

    /// Every backend refuses a grant table without a host: a table is one
    /// host's, and an empty id would be a key no daemon reads.
    pub fn check_grant_host(host: &str) -> Result<(), Self> {
        if host.is_empty() {
            return Err(Self::Invalid {
                name: "grants/".into(),
                reason: "a grant table needs its host's id".into(),
            });
        }
        Ok(())
    }
}
