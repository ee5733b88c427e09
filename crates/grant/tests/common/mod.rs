//! Shared set-up for the grant table tests.
#![allow(dead_code)]

use bulkhead_grant::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

pub use bulkhead_grant::Source::Regrant;

pub const T0: Timestamp = Timestamp(1_000_000);
pub const RO: Access = Access::ReadOnly;
pub const RW: Access = Access::ReadWrite;

pub fn p(name: &str) -> PartitionId {
    name.parse().unwrap()
}

pub fn region_id(owner: &str, name: &str) -> ResourceId {
    ResourceId {
        kind: ResourceKind::Region,
        owner: p(owner),
        name: name.parse().unwrap(),
    }
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// A table where partition `a` owns a 16 MiB region `mem`.
pub fn table_with_region(config: GrantConfig) -> GrantTable {
    let mut t = GrantTable::new(config);
    let region = Resource::Region {
        owner: p("a"),
        name: "mem".parse().unwrap(),
        size: RegionSize::try_from(16 << 20).unwrap(),
    };
    t.add_resource(&Actor::Partition(p("a")), region, T0)
        .unwrap();
    t
}

pub fn req(source: Source, to: &str, access: Access) -> IssueRequest {
    IssueRequest {
        source,
        grantee: p(to),
        access,
        lifetime_ms: None,
    }
}

/// `a`'s own region `mem`, as a grant source.
pub fn mem() -> Source {
    Source::Owned(region_id("a", "mem"))
}

/// `by` grants (or re-grants) to `to` at `T0`.
pub fn try_issue(
    t: &mut GrantTable,
    r: &mut StdRng,
    by: &str,
    source: Source,
    to: &str,
    access: Access,
) -> Result<Outcome<Issued>, GrantError> {
    t.issue(&p(by), req(source, to, access), T0, r)
}

/// As [`try_issue`], which must succeed; returns the grant id and cookie.
pub fn issue(
    t: &mut GrantTable,
    r: &mut StdRng,
    by: &str,
    source: Source,
    to: &str,
    access: Access,
) -> Issued {
    try_issue(t, r, by, source, to, access).unwrap().value
}

/// `by` grants or re-grants to `to`, and `to` accepts.
pub fn grant_accepted(
    t: &mut GrantTable,
    r: &mut StdRng,
    by: &str,
    source: Source,
    to: &str,
    access: Access,
) -> GrantId {
    let i = issue(t, r, by, source, to, access);
    t.accept(&p(to), &i.cookie, T0).unwrap();
    i.grant
}

/// `by` grants (or re-grants) to `to` for `ms`, and `to` accepts, at `T0`.
pub fn accepted_for(
    t: &mut GrantTable,
    r: &mut StdRng,
    by: &str,
    source: Source,
    to: &str,
    ms: u64,
) -> Issued {
    let mut q = req(source, to, RW);
    q.lifetime_ms = Some(ms);
    let i = t.issue(&p(by), q, T0, r).unwrap().value;
    t.accept(&p(to), &i.cookie, T0).unwrap();
    i
}

pub fn unmap(holder: &str, grant: GrantId) -> Effect {
    Effect::Unmap {
        holder: p(holder),
        grant,
    }
}

/// The chain a → b → c on a's region, both accepted.
pub fn chain_abc(t: &mut GrantTable, r: &mut StdRng) -> (GrantId, GrantId) {
    let ab = grant_accepted(t, r, "a", Source::Owned(region_id("a", "mem")), "b", RW);
    let bc = grant_accepted(t, r, "b", Regrant(ab), "c", RO);
    (ab, bc)
}

/// Asserts `f` fails with `want` and leaves the table exactly as it was.
pub fn refused<T: std::fmt::Debug>(
    t: &mut GrantTable,
    want: GrantError,
    f: impl FnOnce(&mut GrantTable) -> Result<T, GrantError>,
) {
    let before = t.clone();
    let before_json = serde_json::to_string(t).unwrap();
    let got = f(t);
    assert_eq!(got.unwrap_err(), want);
    assert_eq!(*t, before, "a refusal changed the table");
    assert_eq!(serde_json::to_string(t).unwrap(), before_json);
}
