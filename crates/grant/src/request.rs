//! Grant requests that arrive from guests (`bulkhead-guest`, relayed by the agent).
//!
//! One JSON object, at most [`MAX_REQUEST_BYTES`], tagged by `op`; unknown fields,
//! unknown ops, trailing bytes and out-of-range values are refused. The partition a
//! request comes from is never in it: the manager knows it from the channel.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cookie::Cookie;
use crate::types::{Access, GrantId, PartitionId, RegionSize, ResourceKind, ResourceName};

/// Largest request accepted, in bytes (a `write` of [`MAX_IO_BYTES`] in hex fits).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Largest `read` or `write` through the shell commands; programs mmap instead.
pub const MAX_IO_BYTES: usize = 4096;
/// Longest lifetime a guest may ask for a grant: 30 days.
pub const MAX_LIFETIME_MS: u64 = 30 * 24 * 3600 * 1000;

/// Why a guest request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request is {0} bytes, the most is {MAX_REQUEST_BYTES}")]
    TooLarge(usize),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("invalid request: {0}")]
    Invalid(&'static str),
}

/// What a guest asks of the manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum GuestRequest {
    /// `region create NAME --size N`.
    RegionCreate {
        name: ResourceName,
        size: RegionSize,
    },
    /// `grant NAME --to P [--read-only] [--expires D]`: grant a resource one owns.
    Grant {
        resource: ResourceName,
        #[serde(default = "region")]
        kind: ResourceKind,
        to: PartitionId,
        #[serde(default)]
        read_only: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_ms: Option<u64>,
    },
    /// `grant --regrant GRANT_ID --to P [--read-only] [--expires D]`.
    Regrant {
        grant: GrantId,
        to: PartitionId,
        #[serde(default)]
        read_only: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_ms: Option<u64>,
    },
    Accept {
        cookie: Cookie,
    },
    Release {
        grant: GrantId,
    },
    Revoke {
        grant: GrantId,
    },
    /// A struct variant, not a unit one: serde's `deny_unknown_fields` does not
    /// reach unit variants of an internally tagged enum.
    List {},
    /// `read NAME_OR_GRANT_ID --offset O --len N`.
    Read {
        target: Target,
        offset: u64,
        len: u32,
    },
    /// `write NAME_OR_GRANT_ID --offset O --data HEX`.
    Write {
        target: Target,
        offset: u64,
        data: HexData,
    },
}

fn region() -> ResourceKind {
    ResourceKind::Region
}

impl GuestRequest {
    /// The access a `grant`/`regrant` asks for.
    pub fn access(read_only: bool) -> Access {
        if read_only {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        }
    }
}

/// A region of one's own (by name) or a held grant (by id): names starting with
/// `gr-` are refused at region creation, so the two never collide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Target {
    Region(ResourceName),
    Grant(GrantId),
}

impl TryFrom<String> for Target {
    type Error = crate::TypeError;
    fn try_from(s: String) -> Result<Self, crate::TypeError> {
        if s.starts_with(GrantId::PREFIX) {
            s.parse().map(Target::Grant)
        } else {
            ResourceName::try_from(s).map(Target::Region)
        }
    }
}

impl From<Target> for String {
    fn from(t: Target) -> String {
        t.to_string()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Region(n) => n.fmt(f),
            Target::Grant(g) => g.fmt(f),
        }
    }
}

/// Bytes to write, carried as hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HexData(pub Vec<u8>);

impl TryFrom<String> for HexData {
    type Error = hex::FromHexError;
    fn try_from(s: String) -> Result<Self, hex::FromHexError> {
        hex::decode(s).map(HexData)
    }
}

impl From<HexData> for String {
    fn from(d: HexData) -> String {
        hex::encode(d.0)
    }
}

/// Parses and checks one request. Refuses before parsing anything too large.
pub fn parse_request(bytes: &[u8]) -> Result<GuestRequest, RequestError> {
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLarge(bytes.len()));
    }
    let req: GuestRequest = serde_json::from_slice(bytes).map_err(|e| {
        // serde's messages can quote the input: keep them one short line.
        RequestError::Malformed(e.to_string().chars().take(200).collect())
    })?;
    check(&req)?;
    Ok(req)
}

fn check(req: &GuestRequest) -> Result<(), RequestError> {
    let invalid = |why| Err(RequestError::Invalid(why));
    match req {
        GuestRequest::RegionCreate { name, .. } if name.as_str().starts_with(GrantId::PREFIX) => {
            invalid("a region name may not start with \"gr-\" (that is how grant ids start)")
        }
        GuestRequest::Grant {
            expires_ms: Some(ms),
            ..
        }
        | GuestRequest::Regrant {
            expires_ms: Some(ms),
            ..
        } if !(1..=MAX_LIFETIME_MS).contains(ms) => {
            invalid("expires_ms must be from 1 ms to 30 days")
        }
        GuestRequest::Grant {
            kind: ResourceKind::Disk,
            read_only: false,
            ..
        } => invalid("a disk is only ever granted read-only"),
        GuestRequest::Read { offset, len, .. } => check_io(*offset, *len as usize),
        GuestRequest::Write { offset, data, .. } => check_io(*offset, data.0.len()),
        _ => Ok(()),
    }
}

fn check_io(offset: u64, len: usize) -> Result<(), RequestError> {
    if len == 0 || len > MAX_IO_BYTES {
        return Err(RequestError::Invalid("read and write move 1 to 4096 bytes"));
    }
    // The manager checks the end against the region's size; here only that it exists.
    if offset
        .checked_add(len as u64)
        .is_none_or(|end| end > RegionSize::MAX)
    {
        return Err(RequestError::Invalid(
            "offset + length is past the largest region",
        ));
    }
    Ok(())
}
