//! After a restart (or a kill -9 half-way through an accept or a revoke):
//! the table and the devices plugged into each QEMU are made to agree.
//! [`plan`] is sans-I/O: a table, the recorded mappings and what each running
//! QEMU has plugged in, to a list of [`Fix`]es; the manager carries them out.
//!
//! The rules (docs/grants.md, "Crashes"): a device of ours that no live grant
//! or region accounts for is unplugged; an accepted grant whose device is
//! missing is ended (revoked by the manager, logged: its holder never got the
//! reply, or lost the device); a partition that no longer runs ends what it
//! gave and held, as a stop does; an owner's region without its device is
//! plugged into the owner again.

use std::collections::{BTreeMap, BTreeSet};

use bulkhead_grant::{GrantId, GrantState, GrantTable, ResourceId, ResourceKind};
use serde::Serialize;

use super::{grant_device, region_device, Mapping, DEVICE_PREFIX};

/// What runs now: each running partition and the device ids of ours
/// (starting with [`DEVICE_PREFIX`]) plugged into its QEMU.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub running: BTreeMap<String, BTreeSet<String>>,
}

/// One repair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "fix", rename_all = "snake_case")]
pub enum Fix {
    /// A device of ours that nothing live accounts for.
    Unplug { partition: String, device: String },
    /// A partition in a live grant that does not run: as if it stopped now.
    Stopped { partition: String },
    /// An accepted grant whose holder runs without its device.
    End { grant: GrantId },
    /// A recorded mapping whose device is not there (or no longer allowed).
    Forget { key: String },
    /// An owner runs without its region's device.
    Replug { resource: ResourceId },
}

pub fn plan(table: &GrantTable, maps: &BTreeMap<String, Mapping>, obs: &Observed) -> Vec<Fix> {
    let runs = |p: &str| obs.running.contains_key(p);
    let has = |p: &str, d: &str| obs.running.get(p).is_some_and(|s| s.contains(d));
    let mut expected: BTreeSet<(String, String)> = BTreeSet::new();
    let mut fixes = Vec::new();

    let mut stopped: BTreeSet<String> = BTreeSet::new();
    for g in table.grants().filter(|g| g.state.is_live()) {
        for p in [&g.resource.owner, &g.granter, &g.grantee] {
            if !runs(p.as_str()) {
                stopped.insert(p.to_string());
            }
        }
    }
    // Grants that stay live after the stops are what the devices must match.
    let ends_with_stop = |g: &bulkhead_grant::Grant| {
        let mut up = Some(g);
        while let Some(x) = up {
            if [&x.resource.owner, &x.granter, &x.grantee]
                .iter()
                .any(|p| stopped.contains(p.as_str()))
            {
                return true;
            }
            up = x.parent.and_then(|p| table.grant(p));
        }
        false
    };
    let mut ended = BTreeSet::new();
    for g in table.grants().filter(|g| g.state == GrantState::Accepted) {
        if ends_with_stop(g) {
            continue;
        }
        let device = grant_device(g.id);
        if has(g.grantee.as_str(), &device) {
            expected.insert((g.grantee.to_string(), device));
        } else {
            ended.insert(g.id);
        }
    }
    // Ending a grant ends its descendants: their devices go too.
    let ended_closure = |id: GrantId| {
        let mut up = table.grant(id);
        while let Some(x) = up {
            if ended.contains(&x.id) {
                return true;
            }
            up = x.parent.and_then(|p| table.grant(p));
        }
        false
    };
    expected.retain(|(_, d)| {
        !table.grants().any(|g| {
            grant_device(g.id) == *d && g.state == GrantState::Accepted && ended_closure(g.id)
        })
    });
    let mut replug = Vec::new();
    for e in table.resources() {
        let id = e.resource.id();
        if id.kind != ResourceKind::Region || !runs(id.owner.as_str()) {
            continue;
        }
        let device = region_device(&id, e.generation);
        if has(id.owner.as_str(), &device) {
            expected.insert((id.owner.to_string(), device));
        } else {
            replug.push(id);
        }
    }

    for (p, devices) in &obs.running {
        for d in devices.iter().filter(|d| d.starts_with(DEVICE_PREFIX)) {
            if !expected.contains(&(p.clone(), d.clone())) {
                fixes.push(Fix::Unplug {
                    partition: p.clone(),
                    device: d.clone(),
                });
            }
        }
    }
    fixes.extend(
        stopped
            .into_iter()
            .map(|partition| Fix::Stopped { partition }),
    );
    // Only the roots: ending them ends the rest.
    for id in &ended {
        let parent_ended = table
            .grant(*id)
            .and_then(|g| g.parent)
            .is_some_and(ended_closure);
        if !parent_ended {
            fixes.push(Fix::End { grant: *id });
        }
    }
    for (key, m) in maps {
        if !expected.contains(&(m.partition.clone(), m.device.clone())) {
            fixes.push(Fix::Forget { key: key.clone() });
        }
    }
    fixes.extend(replug.into_iter().map(|resource| Fix::Replug { resource }));
    fixes
}

#[cfg(test)]
mod tests {
    use super::super::{grant_key, region_key};
    use super::*;
    use bulkhead_grant::{
        Access, Actor, IssueRequest, PartitionId, RegionSize, Resource, Source, Timestamp,
    };
    use rand::rngs::OsRng;

    fn pid(s: &str) -> PartitionId {
        s.parse().unwrap()
    }

    /// a owns region buf; a → b accepted; b → c accepted (read-only).
    fn chain() -> (GrantTable, ResourceId, GrantId, GrantId) {
        let mut t = GrantTable::new(Default::default());
        let now = Timestamp(1000);
        let res = Resource::Region {
            owner: pid("a"),
            name: "buf".parse().unwrap(),
            size: RegionSize::try_from(1u64 << 20).unwrap(),
        };
        let rid = res.id();
        t.add_resource(&Actor::Partition(pid("a")), res, now)
            .unwrap();
        let issue = |t: &mut GrantTable, by: &str, source, to: &str, access| {
            let req = IssueRequest {
                source,
                grantee: pid(to),
                access,
                lifetime_ms: None,
            };
            let i = t.issue(&pid(by), req, now, &mut OsRng).unwrap().value;
            t.accept(&pid(to), &i.cookie, now).unwrap();
            i.grant
        };
        let ab = issue(
            &mut t,
            "a",
            Source::Owned(rid.clone()),
            "b",
            Access::ReadWrite,
        );
        let bc = issue(&mut t, "b", Source::Regrant(ab), "c", Access::ReadOnly);
        (t, rid, ab, bc)
    }

    fn observed(t: &GrantTable, rid: &ResourceId, with: &[(&str, &str)]) -> Observed {
        let gen = t.resource(rid).unwrap().generation;
        let mut o = Observed::default();
        for p in ["a", "b", "c"] {
            o.running.insert(p.into(), BTreeSet::new());
        }
        for (p, d) in with {
            let d = match *d {
                "region" => region_device(rid, gen),
                other => other.to_string(),
            };
            o.running.get_mut(*p).unwrap().insert(d);
        }
        o
    }

    fn maps_for(t: &GrantTable, rid: &ResourceId) -> BTreeMap<String, Mapping> {
        let gen = t.resource(rid).unwrap().generation;
        let mut m = BTreeMap::new();
        let mk = |p: &str, d: String| Mapping {
            partition: p.into(),
            device: d,
            port: None,
            path: "/x".into(),
        };
        m.insert(region_key(rid), mk("a", region_device(rid, gen)));
        for g in t.grants().filter(|g| g.state == GrantState::Accepted) {
            m.insert(grant_key(g.id), mk(g.grantee.as_str(), grant_device(g.id)));
        }
        m
    }

    #[test]
    fn agreeing_table_and_devices_need_nothing() {
        let (t, rid, ab, bc) = chain();
        let (dab, dbc) = (grant_device(ab), grant_device(bc));
        let o = observed(&t, &rid, &[("a", "region"), ("b", &dab), ("c", &dbc)]);
        assert_eq!(plan(&t, &maps_for(&t, &rid), &o), vec![]);
    }

    #[test]
    fn accepted_grant_without_device_is_ended_with_its_descendants() {
        // kill -9 between "accept committed" and "device plugged" in b: the
        // grant ends (and c's, derived from it, with its device).
        let (t, rid, ab, bc) = chain();
        let dbc = grant_device(bc);
        let o = observed(&t, &rid, &[("a", "region"), ("c", &dbc)]);
        let fixes = plan(&t, &maps_for(&t, &rid), &o);
        assert!(fixes.contains(&Fix::End { grant: ab }), "{fixes:?}");
        assert!(
            !fixes.contains(&Fix::End { grant: bc }),
            "only roots: {fixes:?}"
        );
        assert!(fixes.contains(&Fix::Unplug {
            partition: "c".into(),
            device: dbc
        }));
        assert!(fixes.contains(&Fix::Forget { key: grant_key(ab) }));
    }

    #[test]
    fn device_without_live_grant_is_unplugged() {
        // kill -9 between "revoke committed" and "device unplugged".
        let (mut t, rid, ab, bc) = chain();
        let maps = maps_for(&t, &rid);
        t.revoke(&Actor::Admin, ab, Timestamp(2000)).unwrap();
        let (dab, dbc) = (grant_device(ab), grant_device(bc));
        let o = observed(&t, &rid, &[("a", "region"), ("b", &dab), ("c", &dbc)]);
        let fixes = plan(&t, &maps, &o);
        for (p, d) in [("b", &dab), ("c", &dbc)] {
            assert!(fixes.contains(&Fix::Unplug {
                partition: p.into(),
                device: d.clone()
            }));
        }
        assert!(!fixes.iter().any(|f| matches!(f, Fix::End { .. })));
        // Devices that are not ours are left alone.
        let mut o2 = o.clone();
        o2.running.get_mut("b").unwrap().insert("hot0".into());
        assert_eq!(plan(&t, &maps, &o2).len(), fixes.len());
    }

    #[test]
    fn stopped_partitions_end_what_they_gave_and_held() {
        let (t, rid, _ab, bc) = chain();
        let dbc = grant_device(bc);
        let mut o = observed(&t, &rid, &[("c", &dbc)]);
        o.running.remove("a");
        o.running.remove("b");
        let fixes = plan(&t, &maps_for(&t, &rid), &o);
        assert!(fixes.contains(&Fix::Stopped {
            partition: "a".into()
        }));
        assert!(fixes.contains(&Fix::Stopped {
            partition: "b".into()
        }));
        assert!(fixes.contains(&Fix::Unplug {
            partition: "c".into(),
            device: dbc
        }));
        assert!(!fixes
            .iter()
            .any(|f| matches!(f, Fix::End { .. } | Fix::Replug { .. })));
    }

    #[test]
    fn owner_without_its_region_device_gets_it_again() {
        let (t, rid, ab, bc) = chain();
        let (dab, dbc) = (grant_device(ab), grant_device(bc));
        let o = observed(&t, &rid, &[("b", &dab), ("c", &dbc)]);
        let fixes = plan(&t, &maps_for(&t, &rid), &o);
        assert!(fixes.contains(&Fix::Replug {
            resource: rid.clone()
        }));
        assert!(fixes.contains(&Fix::Forget {
            key: region_key(&rid)
        }));
    }
}
