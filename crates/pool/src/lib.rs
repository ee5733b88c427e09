//! Service pools, sans I/O: the allocator core and the users who may allocate.
//!
//! [`Allocator`] holds pools, partition states, sessions and the FIFO wait queue and
//! returns [`Action`]s for the manager to carry out; [`Users`] holds who may run
//! which program, with token hashes only. The gateway protocol is
//! `bulkhead-pool-proto`.

mod allocator;
mod types;
mod users;

pub use allocator::{primary_id, Allocator, Request, MAX_START_FAILURES};
pub use types::*;
pub use users::{Token, TokenHash, User, UserError, Users};
