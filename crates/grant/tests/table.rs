//! The grant table's operations, one behaviour per test.

mod common;

use bulkhead_grant::*;
use common::*;

#[test]
fn owner_grants_holder_regrants_each_accept_maps_the_same_region() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(1);
    let ab = issue(&mut t, &mut r, "a", mem(), "b", RW);
    assert_eq!(t.grant(ab.grant).unwrap().state, GrantState::Issued);
    let out = t.accept(&p("b"), &ab.cookie, T0).unwrap();
    assert_eq!(
        out.effects,
        vec![Effect::Map {
            holder: p("b"),
            grant: ab.grant,
            resource: region_id("a", "mem"),
            access: RW
        }]
    );
    assert_eq!(out.events[0].action, Action::Accepted { grant: ab.grant });

    let bc = issue(&mut t, &mut r, "b", Regrant(ab.grant), "c", RO);
    let out = t.accept(&p("c"), &bc.cookie, T0).unwrap();
    assert_eq!(
        out.effects,
        vec![Effect::Map {
            holder: p("c"),
            grant: bc.grant,
            resource: region_id("a", "mem"),
            access: RO
        }]
    );
    let g = t.grant(bc.grant).unwrap();
    assert_eq!(
        (g.parent, g.depth, &g.granter, g.state),
        (Some(ab.grant), 2, &p("b"), GrantState::Accepted)
    );
    t.check().unwrap();
}

#[test]
fn cookie_presented_by_another_partition_is_refused() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(2);
    let ab = issue(&mut t, &mut r, "a", mem(), "b", RW);
    refused(&mut t, GrantError::WrongPartition, |t| {
        t.accept(&p("c"), &ab.cookie, T0)
    });
    // The owner presenting its own cookie is just another wrong partition.
    refused(&mut t, GrantError::WrongPartition, |t| {
        t.accept(&p("a"), &ab.cookie, T0)
    });
    // It still works for its grantee afterwards.
    t.accept(&p("b"), &ab.cookie, T0).unwrap();
}

#[test]
fn random_and_bit_flipped_cookies_are_unknown() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(3);
    let ab = issue(&mut t, &mut r, "a", mem(), "b", RW);
    let printed = ab.cookie.to_string();

    // A random secret with the real (public) grant id, and a random id altogether.
    let random_secret = format!("{}{}", &printed[..21], "0".repeat(64));
    let random_all = format!("bhc1_{}", "7".repeat(80));
    for s in [random_secret, random_all] {
        let c = Cookie::parse(&s).unwrap();
        refused(&mut t, GrantError::UnknownCookie, |t| {
            t.accept(&p("b"), &c, T0)
        });
    }
    // Every single-bit flip of every hex digit after the prefix.
    for i in 5..printed.len() {
        let digit = u8::from_str_radix(&printed[i..i + 1], 16).unwrap();
        for bit in 0..4 {
            let mut s = printed.clone().into_bytes();
            s[i] = format!("{:x}", digit ^ (1 << bit)).as_bytes()[0];
            let c = Cookie::parse(std::str::from_utf8(&s).unwrap()).unwrap();
            refused(&mut t, GrantError::UnknownCookie, |t| {
                t.accept(&p("b"), &c, T0)
            });
        }
    }
    t.accept(&p("b"), &ab.cookie, T0).unwrap();
}

#[test]
fn a_cookie_accepts_once() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(4);
    let ab = issue(&mut t, &mut r, "a", mem(), "b", RW);
    t.accept(&p("b"), &ab.cookie, T0).unwrap();
    refused(&mut t, GrantError::CookieUsed, |t| {
        t.accept(&p("b"), &ab.cookie, T0)
    });
    // Still used after the grant was released: a cookie never comes back.
    t.release(&p("b"), ab.grant, T0).unwrap();
    refused(&mut t, GrantError::CookieUsed, |t| {
        t.accept(&p("b"), &ab.cookie, T0)
    });
}

#[test]
fn expired_cookie_is_refused_before_and_after_expire_runs() {
    let cfg = GrantConfig {
        cookie_ttl_ms: 5_000,
        ..GrantConfig::default()
    };
    let mut t = table_with_region(cfg);
    let mut r = rng(5);
    let ab = issue(&mut t, &mut r, "a", mem(), "b", RW);
    assert_eq!(t.next_deadline(), Some(T0.plus_ms(5_000)));
    refused(&mut t, GrantError::CookieExpired, |t| {
        t.accept(&p("b"), &ab.cookie, T0.plus_ms(5_000))
    });
    let out = t.expire(T0.plus_ms(4_999));
    assert!(out.events.is_empty(), "nothing is due yet");
    let out = t.expire(T0.plus_ms(5_000));
    assert_eq!(
        out.events[0].action,
        Action::Expired {
            grant: ab.grant,
            ended: vec![ab.grant]
        }
    );
    assert!(out.effects.is_empty(), "an unaccepted grant has no mapping");
    assert_eq!(t.grant(ab.grant).unwrap().state, GrantState::Expired);
    refused(&mut t, GrantError::CookieExpired, |t| {
        t.accept(&p("b"), &ab.cookie, T0)
    });
    assert_eq!(t.next_deadline(), None);
}

#[test]
fn revoked_cookie_is_refused() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(6);
    let ab = issue(&mut t, &mut r, "a", mem(), "b", RW);
    let out = t.revoke(&Actor::Partition(p("a")), ab.grant, T0).unwrap();
    assert!(out.effects.is_empty());
    refused(&mut t, GrantError::Revoked(ab.grant), |t| {
        t.accept(&p("b"), &ab.cookie, T0)
    });
}

#[test]
fn depth_is_bounded() {
    let mut t = table_with_region(GrantConfig {
        max_depth: 3,
        ..GrantConfig::default()
    });
    let mut r = rng(7);
    let g1 = grant_accepted(&mut t, &mut r, "a", mem(), "b", RW);
    let g2 = grant_accepted(&mut t, &mut r, "b", Regrant(g1), "c", RW);
    let g3 = grant_accepted(&mut t, &mut r, "c", Regrant(g2), "d", RW);
    assert_eq!(t.grant(g3).unwrap().depth, 3);
    let want = GrantError::DepthExceeded { depth: 4, max: 3 };
    refused(&mut t, want, |t| {
        try_issue(t, &mut r, "d", Regrant(g3), "e", RO)
    });
}

#[test]
fn default_depth_bound_is_four() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(8);
    let mut g = grant_accepted(&mut t, &mut r, "a", mem(), "p1", RW);
    for i in 2..=4 {
        g = grant_accepted(
            &mut t,
            &mut r,
            &format!("p{}", i - 1),
            Regrant(g),
            &format!("p{i}"),
            RW,
        );
    }
    let want = GrantError::DepthExceeded { depth: 5, max: 4 };
    refused(&mut t, want, |t| {
        try_issue(t, &mut r, "p4", Regrant(g), "p5", RW)
    });
}

#[test]
fn access_only_narrows() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(9);
    let ab = grant_accepted(&mut t, &mut r, "a", mem(), "b", RO);
    let want = GrantError::AccessWiderThanHeld {
        held: RO,
        asked: RW,
    };
    refused(&mut t, want, |t| {
        try_issue(t, &mut r, "b", Regrant(ab), "c", RW)
    });
    // Read-only on from read-only is fine.
    issue(&mut t, &mut r, "b", Regrant(ab), "c", RO);
}

#[test]
fn disks_are_granted_read_only() {
    let mut t = GrantTable::new(GrantConfig::default());
    let mut r = rng(10);
    let disk = Resource::Disk {
        owner: p("a"),
        disk: "data".parse().unwrap(),
    };
    let id = disk.id();
    t.add_resource(&Actor::Admin, disk, T0).unwrap();
    let want = GrantError::AccessWiderThanHeld {
        held: RO,
        asked: RW,
    };
    refused(&mut t, want, |t| {
        t.issue(&p("a"), req(Source::Owned(id.clone()), "b", RW), T0, &mut r)
    });
    let g = grant_accepted(&mut t, &mut r, "a", Source::Owned(id.clone()), "b", RO);
    assert_eq!(t.grant(g).unwrap().resource, id);
}

#[test]
fn granting_what_one_does_not_own_or_hold_is_refused() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(11);
    let rid = region_id("a", "mem");
    refused(
        &mut t,
        GrantError::NotOwner {
            by: p("b"),
            resource: rid.clone(),
        },
        |t| {
            t.issue(
                &p("b"),
                req(Source::Owned(rid.clone()), "c", RO),
                T0,
                &mut r,
            )
        },
    );
    let missing = region_id("a", "nope");
    refused(&mut t, GrantError::UnknownResource(missing.clone()), |t| {
        t.issue(
            &p("a"),
            req(Source::Owned(missing.clone()), "c", RO),
            T0,
            &mut r,
        )
    });
    // b has a cookie but has not accepted: it holds nothing yet.
    let ab = issue(&mut t, &mut r, "a", mem(), "b", RW);
    refused(
        &mut t,
        GrantError::NotHolder {
            by: p("b"),
            grant: ab.grant,
        },
        |t| try_issue(t, &mut r, "b", Regrant(ab.grant), "c", RO),
    );
    t.accept(&p("b"), &ab.cookie, T0).unwrap();
    // c cannot re-grant b's grant.
    refused(
        &mut t,
        GrantError::NotHolder {
            by: p("c"),
            grant: ab.grant,
        },
        |t| try_issue(t, &mut r, "c", Regrant(ab.grant), "d", RO),
    );
    // Nor can b once its grant has ended.
    t.revoke(&Actor::Admin, ab.grant, T0).unwrap();
    refused(
        &mut t,
        GrantError::Ended {
            grant: ab.grant,
            state: GrantState::Revoked,
        },
        |t| try_issue(t, &mut r, "b", Regrant(ab.grant), "c", RO),
    );
}

#[test]
fn self_grants_and_grants_back_to_the_owner_are_refused() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(12);
    refused(&mut t, GrantError::SelfGrant, |t| {
        try_issue(t, &mut r, "a", mem(), "a", RO)
    });
    let ab = grant_accepted(&mut t, &mut r, "a", mem(), "b", RW);
    refused(&mut t, GrantError::SelfGrant, |t| {
        try_issue(t, &mut r, "b", Regrant(ab), "b", RO)
    });
    refused(&mut t, GrantError::GranteeIsOwner(p("a")), |t| {
        try_issue(t, &mut r, "b", Regrant(ab), "a", RO)
    });
}

#[test]
fn revoke_cascades_to_every_descendant_deepest_first() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(13);
    let (ab, bc) = chain_abc(&mut t, &mut r);
    let cd = grant_accepted(&mut t, &mut r, "c", Regrant(bc), "d", RO);
    // A cookie b handed out but e never accepted ends too.
    let be = issue(&mut t, &mut r, "b", Regrant(ab), "e", RO);
    // An unrelated grant of the same region survives.
    let af = grant_accepted(&mut t, &mut r, "a", mem(), "f", RO);

    let out = t
        .revoke(&Actor::Partition(p("a")), ab, T0.plus_ms(1))
        .unwrap();
    assert_eq!(
        out.effects,
        vec![unmap("d", cd), unmap("c", bc), unmap("b", ab),]
    );
    let Action::Revoked { grant, ended } = &out.events[0].action else {
        panic!("{:?}", out.events)
    };
    assert_eq!(*grant, ab);
    assert_eq!(ended.len(), 4);
    assert_eq!(ended[0], cd);
    for g in [ab, bc, cd, be.grant] {
        assert_eq!(t.grant(g).unwrap().state, GrantState::Revoked, "{g}");
        assert_eq!(t.grant(g).unwrap().ended_at, Some(T0.plus_ms(1)));
    }
    assert_eq!(t.grant(af).unwrap().state, GrantState::Accepted);
    refused(&mut t, GrantError::Revoked(be.grant), |t| {
        t.accept(&p("e"), &be.cookie, T0)
    });
    t.check().unwrap();
}

#[test]
fn who_may_revoke() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(14);
    let (ab, bc) = chain_abc(&mut t, &mut r);
    // The holder of a child cannot revoke upstream, nor can a stranger.
    refused(&mut t, GrantError::NotAllowed(ab), |t| {
        t.revoke(&Actor::Partition(p("c")), ab, T0)
    });
    refused(&mut t, GrantError::NotAllowed(ab), |t| {
        t.revoke(&Actor::Partition(p("z")), ab, T0)
    });
    // A grantee cannot revoke its own grant (it releases it instead).
    refused(&mut t, GrantError::NotAllowed(bc), |t| {
        t.revoke(&Actor::Partition(p("c")), bc, T0)
    });
    refused(
        &mut t,
        GrantError::UnknownGrant("gr-0000000000000001".parse().unwrap()),
        |t| t.revoke(&Actor::Admin, "gr-0000000000000001".parse().unwrap(), T0),
    );
    // b revokes what it re-granted; a (upstream) could have too.
    t.revoke(&Actor::Partition(p("b")), bc, T0).unwrap();
    refused(
        &mut t,
        GrantError::Ended {
            grant: bc,
            state: GrantState::Revoked,
        },
        |t| t.revoke(&Actor::Admin, bc, T0),
    );
    let cd_parent_dead = try_issue(&mut t, &mut r, "c", Regrant(bc), "d", RO);
    assert_eq!(
        cd_parent_dead.unwrap_err(),
        GrantError::Ended {
            grant: bc,
            state: GrantState::Revoked
        }
    );
    // The owner revokes b's grant from further up.
    let bd = grant_accepted(&mut t, &mut r, "b", Regrant(ab), "d", RO);
    t.revoke(&Actor::Partition(p("a")), bd, T0).unwrap();
    assert_eq!(t.grant(ab).unwrap().state, GrantState::Accepted);
}

#[test]
fn release_ends_the_grant_and_its_descendants() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(15);
    let (ab, bc) = chain_abc(&mut t, &mut r);
    refused(
        &mut t,
        GrantError::NotHolder {
            by: p("c"),
            grant: ab,
        },
        |t| t.release(&p("c"), ab, T0),
    );
    let out = t.release(&p("b"), ab, T0).unwrap();
    assert_eq!(out.effects, vec![unmap("c", bc), unmap("b", ab)]);
    assert_eq!(t.grant(ab).unwrap().state, GrantState::Released);
    assert_eq!(t.grant(bc).unwrap().state, GrantState::Revoked);
    refused(
        &mut t,
        GrantError::Ended {
            grant: ab,
            state: GrantState::Released,
        },
        |t| t.release(&p("b"), ab, T0),
    );
}

#[test]
fn declining_an_unaccepted_grant_has_nothing_to_unmap() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(16);
    let ab = issue(&mut t, &mut r, "a", mem(), "b", RW);
    let out = t.release(&p("b"), ab.grant, T0).unwrap();
    assert!(out.effects.is_empty());
    refused(&mut t, GrantError::Revoked(ab.grant), |t| {
        t.accept(&p("b"), &ab.cookie, T0)
    });
}

#[test]
fn stopping_the_owner_ends_every_grant_of_its_resources() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(17);
    let (ab, bc) = chain_abc(&mut t, &mut r);
    let pending = issue(&mut t, &mut r, "a", mem(), "d", RO);
    let out = t.partition_stopped(&p("a"), T0);
    assert_eq!(out.effects.len(), 2);
    for g in [ab, bc, pending.grant] {
        assert!(!t.grant(g).unwrap().state.is_live());
    }
    // The region itself stays registered: a stopped owner keeps its resources.
    assert!(t.resource(&region_id("a", "mem")).is_some());
}

#[test]
fn stopping_a_holder_ends_its_holdings_and_what_it_granted_on() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(18);
    let (ab, bc) = chain_abc(&mut t, &mut r);
    let ad = grant_accepted(&mut t, &mut r, "a", mem(), "d", RO);
    let out = t.partition_stopped(&p("b"), T0);
    assert_eq!(out.effects, vec![unmap("c", bc), unmap("b", ab)]);
    assert_eq!(t.grant(ad).unwrap().state, GrantState::Accepted);
    // Stopping c (a leaf holder) later ends nothing more.
    assert!(t.partition_stopped(&p("c"), T0).effects.is_empty());
}

#[test]
fn destroying_the_owner_removes_its_resources_and_a_new_one_is_a_new_generation() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(19);
    let ab = issue(&mut t, &mut r, "a", mem(), "b", RW);
    let old_gen = t.resource(&region_id("a", "mem")).unwrap().generation;
    t.partition_destroyed(&p("a"), T0);
    assert!(t.resource(&region_id("a", "mem")).is_none());
    let region = Resource::Region {
        owner: p("a"),
        name: "mem".parse().unwrap(),
        size: RegionSize::try_from(1 << 20).unwrap(),
    };
    t.add_resource(&Actor::Partition(p("a")), region, T0)
        .unwrap();
    assert!(t.resource(&region_id("a", "mem")).unwrap().generation > old_gen);
    refused(&mut t, GrantError::Revoked(ab.grant), |t| {
        t.accept(&p("b"), &ab.cookie, T0)
    });
    t.check().unwrap();
}

#[test]
fn a_regrant_never_outlives_its_parent() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(20);
    let ab = accepted_for(&mut t, &mut r, "a", mem(), "b", 60_000);
    let mut q = req(Regrant(ab.grant), "c", RO);
    q.lifetime_ms = Some(3_600_000);
    let bc = t.issue(&p("b"), q, T0, &mut r).unwrap().value;
    t.accept(&p("c"), &bc.cookie, T0).unwrap();
    assert_eq!(
        t.grant(bc.grant).unwrap().expires_at,
        Some(T0.plus_ms(60_000))
    );
    assert_eq!(t.next_deadline(), Some(T0.plus_ms(60_000)));
    let out = t.expire(T0.plus_ms(60_000));
    assert_eq!(
        out.effects,
        vec![unmap("c", bc.grant), unmap("b", ab.grant)]
    );
    assert_eq!(
        out.events.len(),
        1,
        "one expiry, its descendants listed in it"
    );
    assert_eq!(t.grant(bc.grant).unwrap().state, GrantState::Expired);
    t.check().unwrap();
}

#[test]
fn a_grant_past_its_end_cannot_be_regranted_before_expire_runs() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(25);
    let ab = accepted_for(&mut t, &mut r, "a", mem(), "b", 1_000);
    let later = T0.plus_ms(1_000);
    let want = GrantError::Ended {
        grant: ab.grant,
        state: GrantState::Expired,
    };
    let q = req(Regrant(ab.grant), "c", RO);
    refused(&mut t, want, |t| t.issue(&p("b"), q, later, &mut r));
    // Just before its end it still can.
    let q = req(Regrant(ab.grant), "c", RO);
    t.issue(&p("b"), q, T0.plus_ms(999), &mut r).unwrap();
}

#[test]
fn zero_lifetime_is_refused() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(21);
    let mut q = req(mem(), "b", RW);
    q.lifetime_ms = Some(0);
    refused(&mut t, GrantError::ZeroLifetime, |t| {
        t.issue(&p("a"), q, T0, &mut r)
    });
}

#[test]
fn a_partition_cannot_grow_the_table_without_bound() {
    let cfg = GrantConfig {
        max_live_grants_per_partition: 3,
        max_resources_per_partition: 1,
        ..GrantConfig::default()
    };
    let mut t = table_with_region(cfg);
    let mut r = rng(22);
    let ids: Vec<_> = (0..3)
        .map(|_| issue(&mut t, &mut r, "a", mem(), "b", RO).grant)
        .collect();
    let want = GrantError::TooMany {
        by: p("a"),
        what: "grants",
        limit: 3,
    };
    refused(&mut t, want, |t| try_issue(t, &mut r, "a", mem(), "b", RO));
    // Ended grants do not count.
    t.revoke(&Actor::Admin, ids[0], T0).unwrap();
    issue(&mut t, &mut r, "a", mem(), "b", RO);

    let second = Resource::Region {
        owner: p("a"),
        name: "two".parse().unwrap(),
        size: RegionSize::try_from(1 << 20).unwrap(),
    };
    let want = GrantError::TooMany {
        by: p("a"),
        what: "resources",
        limit: 1,
    };
    refused(&mut t, want, |t| {
        t.add_resource(&Actor::Partition(p("a")), second, T0)
    });
}

#[test]
fn resources_are_added_by_their_owner_or_an_admin_once() {
    let mut t = table_with_region(GrantConfig::default());
    let region = Resource::Region {
        owner: p("a"),
        name: "mem".parse().unwrap(),
        size: RegionSize::try_from(1 << 20).unwrap(),
    };
    refused(
        &mut t,
        GrantError::ResourceExists(region_id("a", "mem")),
        |t| t.add_resource(&Actor::Admin, region.clone(), T0),
    );
    let theirs = Resource::Region {
        owner: p("a"),
        name: "x".parse().unwrap(),
        size: RegionSize::try_from(1 << 20).unwrap(),
    };
    refused(
        &mut t,
        GrantError::NotOwner {
            by: p("b"),
            resource: region_id("a", "x"),
        },
        |t| t.add_resource(&Actor::Partition(p("b")), theirs, T0),
    );
    assert_eq!(t.owned_region_bytes(&p("a")), 16 << 20);
    assert_eq!(t.owned_region_bytes(&p("b")), 0);
}

#[test]
fn visible_to_lists_what_a_partition_granted_holds_or_owns() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(23);
    let (ab, bc) = chain_abc(&mut t, &mut r);
    let ids = |who: &str| {
        t.visible_to(&p(who))
            .map(|g| g.id)
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(ids("a"), [ab, bc].into());
    assert_eq!(ids("b"), [ab, bc].into());
    assert_eq!(ids("c"), [bc].into());
    assert!(ids("z").is_empty());
}

#[test]
fn prune_forgets_only_old_ended_grants() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(24);
    let (ab, bc) = chain_abc(&mut t, &mut r);
    let ad = grant_accepted(&mut t, &mut r, "a", mem(), "d", RO);
    t.revoke(&Actor::Admin, ab, T0.plus_ms(10)).unwrap();
    assert_eq!(t.prune(T0.plus_ms(10)), 0);
    assert_eq!(t.prune(T0.plus_ms(11)), 2);
    assert!(t.grant(ab).is_none() && t.grant(bc).is_none());
    assert!(t.grant(ad).is_some());
    t.check().unwrap();
}
