//! The nouns of the grant table: partitions, resources, grant ids, access, time.
//!
//! Every type that can arrive from outside (a guest request, the persisted table) is
//! validated when it is built, including through serde (`try_from`), so a value of
//! one of these types is always well-formed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a name, id or size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeError {
    #[error("invalid {what} {value:?}: {rule}")]
    Invalid {
        what: &'static str,
        value: String,
        rule: &'static str,
    },
}

fn invalid(what: &'static str, value: &str, rule: &'static str) -> TypeError {
    // Cap what we echo back: the value may be hostile and huge.
    let value: String = value.chars().take(64).collect();
    TypeError::Invalid { what, value, rule }
}

/// Lower-case letters, digits and '-', not starting with '-', 1..=48 bytes: the
/// partition naming rule of the manager, and the one used for region and disk names.
fn check_name(what: &'static str, s: &str) -> Result<(), TypeError> {
    let ok = !s.is_empty()
        && s.len() <= 48
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(what, s, "1-48 of [a-z0-9-], not starting with '-'"))
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $ty {
            type Error = TypeError;
            fn try_from(s: String) -> Result<Self, TypeError> {
                check_name($what, &s)?;
                Ok(Self(s))
            }
        }
        impl FromStr for $ty {
            type Err = TypeError;
            fn from_str(s: &str) -> Result<Self, TypeError> {
                Self::try_from(s.to_owned())
            }
        }
        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.0
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A partition's name, as the manager knows it.
    PartitionId,
    "partition name"
);
name_type!(
    /// A resource's name within its owner (a region name, a disk id).
    ResourceName,
    "resource name"
);

/// Size of a shared-memory region in bytes: a power of two from 1 MiB to 1 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct RegionSize(u64);

impl RegionSize {
    pub const MIN: u64 = 1 << 20;
    pub const MAX: u64 = 1 << 30;

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl TryFrom<u64> for RegionSize {
    type Error = TypeError;
    fn try_from(n: u64) -> Result<Self, TypeError> {
        if n.is_power_of_two() && (Self::MIN..=Self::MAX).contains(&n) {
            Ok(Self(n))
        } else {
            Err(invalid(
                "region size",
                &n.to_string(),
                "a power of two from 1 MiB to 1 GiB",
            ))
        }
    }
}

impl From<RegionSize> for u64 {
    fn from(s: RegionSize) -> u64 {
        s.0
    }
}

/// What a holder may do with a resource. Ordered: `ReadOnly < ReadWrite`, so a
/// re-grant is allowed when `asked <= held`.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::ReadOnly => "read-only",
            Access::ReadWrite => "read-write",
        })
    }
}

/// Milliseconds since the Unix epoch, as the caller's clock says. The table never
/// reads a clock itself.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn plus_ms(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }
}

/// The kind of a resource, as it appears in its id.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// Shared memory the manager holds for its owner (ivshmem-plain in each holder).
    Region,
    /// A disk the owner holds; only ever granted read-only.
    Disk,
}

/// Names one resource: its kind, its owner and its name within the owner.
/// Printed `region:owner/name` or `disk:owner/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceId {
    pub kind: ResourceKind,
    pub owner: PartitionId,
    pub name: ResourceName,
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ResourceKind::Region => "region",
            ResourceKind::Disk => "disk",
        };
        write!(f, "{kind}:{}/{}", self.owner, self.name)
    }
}

/// A resource a partition owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Resource {
    Region {
        owner: PartitionId,
        name: ResourceName,
        size: RegionSize,
    },
    Disk {
        owner: PartitionId,
        disk: ResourceName,
    },
}

impl Resource {
    pub fn id(&self) -> ResourceId {
        match self {
            Resource::Region { owner, name, .. } => ResourceId {
                kind: ResourceKind::Region,
                owner: owner.clone(),
                name: name.clone(),
            },
            Resource::Disk { owner, disk } => ResourceId {
                kind: ResourceKind::Disk,
                owner: owner.clone(),
                name: disk.clone(),
            },
        }
    }

    pub fn owner(&self) -> &PartitionId {
        match self {
            Resource::Region { owner, .. } | Resource::Disk { owner, .. } => owner,
        }
    }

    /// The widest access a grant of this resource may carry.
    pub fn max_access(&self) -> Access {
        match self {
            Resource::Region { .. } => Access::ReadWrite,
            Resource::Disk { .. } => Access::ReadOnly,
        }
    }
}

/// A grant's public id, printed `gr-` and 16 lower-case hex digits. Random, so ids
/// say nothing about how many grants exist; not a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GrantId(u64);

impl GrantId {
    pub const PREFIX: &'static str = "gr-";
    /// Length of the printed form.
    pub const LEN: usize = 3 + 16;

    pub(crate) fn from_u64(n: u64) -> GrantId {
        GrantId(n)
    }

    pub(crate) fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

/// Lower-case hex only: one spelling per value, so ids and cookies compare as strings.
pub(crate) fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(is_lower_hex_byte)
}

pub(crate) fn is_lower_hex_byte(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

impl FromStr for GrantId {
    type Err = TypeError;
    fn from_str(s: &str) -> Result<Self, TypeError> {
        const RULE: &str = "\"gr-\" and 16 lower-case hex digits";
        let hex = s
            .strip_prefix(Self::PREFIX)
            .filter(|h| h.len() == 16 && is_lower_hex(h))
            .ok_or_else(|| invalid("grant id", s, RULE))?;
        u64::from_str_radix(hex, 16)
            .map(GrantId)
            .map_err(|_| invalid("grant id", s, RULE))
    }
}

impl TryFrom<String> for GrantId {
    type Error = TypeError;
    fn try_from(s: String) -> Result<Self, TypeError> {
        s.parse()
    }
}

impl From<GrantId> for String {
    fn from(g: GrantId) -> String {
        g.to_string()
    }
}

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:016x}", Self::PREFIX, self.0)
    }
}

/// Who did something, for the log and for permission checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "partition", rename_all = "snake_case")]
pub enum Actor {
    /// A partition, as identified by its own agent channel.
    Partition(PartitionId),
    /// An administrator through the host API.
    Admin,
    /// The manager itself: expiry, a partition stopping.
    Manager,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Partition(p) => write!(f, "partition {p}"),
            Actor::Admin => f.write_str("admin"),
            Actor::Manager => f.write_str("manager"),
        }
    }
}
