//! Service pools' documents as the store keeps them (issue 17): the pool
//! statements and the pool users, each one JSON body the manager owns (the
//! store never looks inside, so this crate does not depend on the pool crate).

use crate::StoreError;

/// Which table a pool document lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// A pool statement (`bulkhead pool create`).
    Pool,
    /// A user who may allocate (`bulkhead pool user add`): token hash only.
    User,
}

impl PoolKind {
    /// The kind's name in keys and conflict errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pool => "pools",
            Self::User => "pool-users",
        }
    }
}

/// One document and its revision (1 after the first write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDoc {
    pub name: String,
    pub revision: u64,
    pub body: String,
}

impl StoreError {
    /// A pool document's revision was not `expected`: what every backend answers.
    pub fn pool_conflict(kind: PoolKind, name: &str, expected: u64, found: u64) -> Self {
        Self::Conflict {
            name: format!("{}/{name}", kind.as_str()),
            expected,
            found,
        }
    }

    /// Every backend refuses an empty name (a key no one reads back).
    pub fn check_pool_name(kind: PoolKind, name: &str) -> Result<(), Self> {
        if name.is_empty() {
            return Err(Self::Invalid {
                name: format!("{}/", kind.as_str()),
                reason: "a pool document needs a name".into(),
            });
        }
        Ok(())
    }
}
