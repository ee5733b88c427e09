//! Bulkhead's grant table, sans I/O: resources a partition owns, grants of them to
//! other partitions through single-use cookies, re-grants down a bounded chain, and
//! revocation that cascades to every grant derived from the one revoked (seL4's
//! capability derivation tree).
//!
//! Nothing here maps memory, talks to a guest or reads a clock: the caller passes
//! `now` and a CSPRNG, and carries out the [`Effect`]s each operation returns. The
//! table is serde-serialisable so the manager can persist it one transaction per
//! change; the persisted form holds cookie hashes, never cookies.
//!
//! Entry points: [`GrantTable`] (`add_resource`, `issue`, `accept`, `release`,
//! `revoke`, `partition_stopped`, `expire`), [`Cookie::parse`], and
//! [`request::parse_request`] for what guests send.

mod cookie;
mod error;
pub mod reply;
pub mod request;
mod table;
mod types;

pub use cookie::{Cookie, CookieDigest, CookieParseError, COOKIE_LEN};
pub use error::GrantError;
pub use table::{
    Action, Effect, Event, Grant, GrantConfig, GrantState, GrantTable, IssueRequest, Issued,
    Outcome, ResourceEntry, Source,
};
pub use types::{
    Access, Actor, GrantId, PartitionId, RegionSize, Resource, ResourceId, ResourceKind,
    ResourceName, Timestamp, TypeError,
};
