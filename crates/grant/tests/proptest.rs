//! Random operation sequences against the table, checking after every step:
//! the table's invariants (no grant outlives its parent, depth bounded, access only
//! narrows), refusals change nothing, a used cookie never accepts again, forged
//! cookies never accept, the Map/Unmap effects keep an outside view of the mappings
//! exactly equal to the accepted grants, and the persisted form holds no cookie.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use bulkhead_grant::*;
use common::*;
use proptest::prelude::*;

const PARTS: [&str; 5] = ["a", "b", "c", "d", "e"];

#[derive(Debug, Clone)]
enum Op {
    Grant {
        res: usize,
        to: usize,
        ro: bool,
        life: Option<u64>,
    },
    /// `by: None`: the grant's own grantee (the usual, successful case).
    Regrant {
        grant: usize,
        by: Option<usize>,
        to: usize,
        ro: bool,
        life: Option<u64>,
    },
    /// `who: None`: the grantee; `flip`: alter one character of the cookie.
    Accept {
        cookie: usize,
        who: Option<usize>,
        flip: Option<(usize, u8)>,
    },
    Release {
        grant: usize,
        by: Option<usize>,
    },
    /// `by: None`: an administrator.
    Revoke {
        grant: usize,
        by: Option<usize>,
    },
    Stop {
        p: usize,
    },
    Advance {
        ms: u64,
    },
    Reload,
}

fn op() -> impl Strategy<Value = Op> {
    let who = prop::option::of(0..PARTS.len());
    let life = prop::option::of(1u64..20_000);
    prop_oneof![
        3 => (0..3usize, 0..PARTS.len(), any::<bool>(), life.clone()).prop_map(|(res, to, ro, life)| Op::Grant { res, to, ro, life }),
        4 => (any::<usize>(), prop::option::weighted(0.2, 0..PARTS.len()), 0..PARTS.len(), any::<bool>(), life)
            .prop_map(|(grant, by, to, ro, life)| Op::Regrant { grant, by, to, ro, life }),
        5 => (any::<usize>(), prop::option::weighted(0.2, 0..PARTS.len()), prop::option::weighted(0.15, (5..COOKIE_LEN, 0u8..16)))
            .prop_map(|(cookie, who, flip)| Op::Accept { cookie, who, flip }),
        1 => (any::<usize>(), prop::option::weighted(0.3, 0..PARTS.len())).prop_map(|(grant, by)| Op::Release { grant, by }),
        1 => (any::<usize>(), who).prop_map(|(grant, by)| Op::Revoke { grant, by }),
        1 => (0..PARTS.len()).prop_map(|p| Op::Stop { p }),
        1 => (1u64..15_000).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Reload),
    ]
}

fn resources() -> Vec<Resource> {
    vec![
        Resource::Region {
            owner: p("a"),
            name: "mem".parse().unwrap(),
            size: RegionSize::try_from(1 << 20).unwrap(),
        },
        Resource::Region {
            owner: p("b"),
            name: "buf".parse().unwrap(),
            size: RegionSize::try_from(1 << 24).unwrap(),
        },
        Resource::Disk {
            owner: p("c"),
            disk: "data".parse().unwrap(),
        },
    ]
}

struct World {
    t: GrantTable,
    now: Timestamp,
    /// Every cookie issued, by grant.
    cookies: Vec<(GrantId, Cookie)>,
    used: BTreeSet<String>,
    /// The mappings as the manager would track them from the effects alone.
    mapped: BTreeSet<(PartitionId, GrantId)>,
}

impl World {
    fn apply_effects(&mut self, effects: &[Effect]) -> Result<(), TestCaseError> {
        for e in effects {
            match e {
                Effect::Map { holder, grant, .. } => {
                    prop_assert!(
                        self.mapped.insert((holder.clone(), *grant)),
                        "mapped twice: {e:?}"
                    );
                }
                Effect::Unmap { holder, grant } => {
                    prop_assert!(
                        self.mapped.remove(&(holder.clone(), *grant)),
                        "unmap of nothing: {e:?}"
                    );
                }
            }
        }
        Ok(())
    }

    fn nth_grant(&self, i: usize) -> Option<GrantId> {
        let n = self.t.grants().count();
        (n > 0).then(|| self.t.grants().nth(i % n).unwrap().id)
    }

    fn descendants(&self, root: GrantId) -> BTreeSet<GrantId> {
        let mut out = BTreeSet::from([root]);
        loop {
            let more: Vec<_> = self
                .t
                .grants()
                .filter(|g| g.parent.is_some_and(|p| out.contains(&p)) && !out.contains(&g.id))
                .map(|g| g.id)
                .collect();
            if more.is_empty() {
                return out;
            }
            out.extend(more);
        }
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let before = self.t.clone();
        let mut r = rng(self.now.0 ^ self.cookies.len() as u64);
        // Grants that must be over if the op succeeds.
        let mut must_end = BTreeSet::new();
        let res: Result<Vec<Effect>, GrantError> = match op.clone() {
            Op::Grant { res, to, ro, life } => {
                let rid = resources()[res].id();
                let by = rid.owner.clone();
                let access = if ro { RO } else { RW };
                let q = IssueRequest {
                    source: Source::Owned(rid),
                    grantee: p(PARTS[to]),
                    access,
                    lifetime_ms: life,
                };
                self.t.issue(&by, q, self.now, &mut r).map(|o| {
                    self.cookies.push((o.value.grant, o.value.cookie.clone()));
                    o.effects
                })
            }
            Op::Regrant {
                grant,
                by,
                to,
                ro,
                life,
            } => {
                let Some(gid) = self.nth_grant(grant) else {
                    return Ok(());
                };
                let by = by.map_or_else(
                    || self.t.grant(gid).unwrap().grantee.clone(),
                    |i| p(PARTS[i]),
                );
                let access = if ro { RO } else { RW };
                let q = IssueRequest {
                    source: Regrant(gid),
                    grantee: p(PARTS[to]),
                    access,
                    lifetime_ms: life,
                };
                let parent = self.t.grant(gid).unwrap().clone();
                self.t.issue(&by, q, self.now, &mut r).map(|o| {
                    let child = self.t.grant(o.value.grant).unwrap();
                    assert!(child.access <= parent.access && child.depth == parent.depth + 1);
                    self.cookies.push((o.value.grant, o.value.cookie.clone()));
                    o.effects
                })
            }
            Op::Accept { cookie, who, flip } => {
                if self.cookies.is_empty() {
                    return Ok(());
                }
                let (gid, c) = self.cookies[cookie % self.cookies.len()].clone();
                let who = who.map_or_else(
                    || self.t.grant(gid).map(|g| g.grantee.clone()),
                    |i| Some(p(PARTS[i])),
                );
                let Some(who) = who else { return Ok(()) };
                let mut printed = c.to_string();
                if let Some((at, x)) = flip {
                    let old = u8::from_str_radix(&printed[at..at + 1], 16).unwrap();
                    let new = format!("{:x}", old ^ x.max(1));
                    printed.replace_range(at..at + 1, &new);
                }
                let presented = Cookie::parse(&printed).unwrap();
                let out = self.t.accept(&who, &presented, self.now);
                if flip.is_some() {
                    prop_assert_eq!(out.clone().err(), Some(GrantError::UnknownCookie));
                }
                if out.is_ok() {
                    prop_assert!(self.used.insert(printed), "a used cookie accepted again");
                }
                out.map(|o| o.effects)
            }
            Op::Release { grant, by } => {
                let Some(gid) = self.nth_grant(grant) else {
                    return Ok(());
                };
                must_end = self.descendants(gid);
                let by = by.map_or_else(
                    || self.t.grant(gid).unwrap().grantee.clone(),
                    |i| p(PARTS[i]),
                );
                self.t.release(&by, gid, self.now).map(|o| o.effects)
            }
            Op::Revoke { grant, by } => {
                let Some(gid) = self.nth_grant(grant) else {
                    return Ok(());
                };
                must_end = self.descendants(gid);
                let by = by.map_or(Actor::Admin, |i| Actor::Partition(p(PARTS[i])));
                self.t.revoke(&by, gid, self.now).map(|o| o.effects)
            }
            Op::Stop { p: i } => {
                let who = p(PARTS[i]);
                for g in self
                    .t
                    .grants()
                    .filter(|g| g.resource.owner == who || g.granter == who || g.grantee == who)
                {
                    must_end.extend(self.descendants(g.id));
                }
                Ok(self.t.partition_stopped(&who, self.now).effects)
            }
            Op::Advance { ms } => {
                self.now = self.now.plus_ms(ms);
                Ok(self.t.expire(self.now).effects)
            }
            Op::Reload => {
                let json = serde_json::to_vec(&self.t).unwrap();
                self.t = serde_json::from_slice(&json).unwrap();
                prop_assert_eq!(&self.t, &before);
                Ok(vec![])
            }
        };
        match res {
            Ok(effects) => {
                self.apply_effects(&effects)?;
                for g in &must_end {
                    prop_assert!(
                        !self.t.grant(*g).unwrap().state.is_live(),
                        "{g} outlived the grant that ended"
                    );
                }
            }
            Err(_) => prop_assert_eq!(&self.t, &before, "a refusal changed the table"),
        }
        self.check_invariants()
    }

    fn check_invariants(&self) -> Result<(), TestCaseError> {
        self.t.check().map_err(TestCaseError::fail)?;
        let accepted: BTreeSet<_> = self
            .t
            .grants()
            .filter(|g| g.state == GrantState::Accepted)
            .map(|g| (g.grantee.clone(), g.id))
            .collect();
        prop_assert_eq!(
            &accepted,
            &self.mapped,
            "effects and table disagree on what is mapped"
        );
        let depth: BTreeMap<_, _> = self.t.grants().map(|g| (g.id, g.depth)).collect();
        prop_assert!(depth.values().all(|d| *d <= self.t.config().max_depth));
        // Time moves only with expire(): nothing live is past its deadline.
        prop_assert!(
            self.t.next_deadline().is_none_or(|d| d > self.now),
            "a live grant is past its deadline"
        );
        let json = serde_json::to_string(&self.t).unwrap();
        for (_, c) in &self.cookies {
            let printed = c.to_string();
            prop_assert!(
                !json.contains(&printed[21..]),
                "a cookie secret is in the persisted table"
            );
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_operation_sequences_keep_the_invariants(ops in prop::collection::vec(op(), 1..80)) {
        let mut t = GrantTable::new(GrantConfig { cookie_ttl_ms: 30_000, ..GrantConfig::default() });
        for res in resources() {
            t.add_resource(&Actor::Admin, res, T0).unwrap();
        }
        let mut w = World { t, now: T0, cookies: vec![], used: BTreeSet::new(), mapped: BTreeSet::new() };
        for op in &ops {
            w.step(op)?;
        }
    }
}
