//! The persisted form: it round-trips, holds no usable cookie, and an edited record
//! no longer matches its cookie.

mod common;

use bulkhead_grant::*;
use common::*;
use serde_json::Value;

#[test]
fn persisted_table_round_trips_and_cookies_still_accept_after_a_restart() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(31);
    let ab = issue(&mut t, &mut r, "a", mem(), "b", RW);
    let json = serde_json::to_string(&t).unwrap();
    let mut back: GrantTable = serde_json::from_str(&json).unwrap();
    back.check().unwrap();
    assert_eq!(back, t);
    back.accept(&p("b"), &ab.cookie, T0).unwrap();
}

#[test]
fn persisted_table_holds_no_cookie() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(32);
    let (ab, _) = chain_abc(&mut t, &mut r);
    let pending = issue(&mut t, &mut r, "b", Regrant(ab), "d", RO);
    let json = serde_json::to_string(&t).unwrap();
    let printed = pending.cookie.to_string();
    let secret = &printed[21..];
    assert!(!json.contains(&printed));
    assert!(
        !json.contains(secret),
        "the secret is in the persisted table"
    );
    // Nor any long stretch of it (say, truncated or split).
    for w in secret.as_bytes().windows(16) {
        assert!(!json.contains(std::str::from_utf8(w).unwrap()));
    }
}

/// Sets `grants.<id>.<field>` in the persisted JSON.
fn edit(t: &GrantTable, grant: GrantId, field: &str, value: Value) -> GrantTable {
    let mut v = serde_json::to_value(t).unwrap();
    v["grants"][grant.to_string()][field] = value;
    serde_json::from_value(v).unwrap()
}

#[test]
fn a_record_edited_in_the_store_no_longer_matches_its_cookie() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(33);
    let ab = issue(&mut t, &mut r, "a", mem(), "b", RO);
    // Someone with write access to the store hands the grant to c, or widens it.
    let mut moved = edit(&t, ab.grant, "grantee", "c".into());
    refused(&mut moved, GrantError::UnknownCookie, |t| {
        t.accept(&p("c"), &ab.cookie, T0)
    });
    let mut widened = edit(&t, ab.grant, "access", "read_write".into());
    refused(&mut widened, GrantError::UnknownCookie, |t| {
        t.accept(&p("b"), &ab.cookie, T0)
    });
    let mut regen = edit(&t, ab.grant, "generation", 99.into());
    refused(&mut regen, GrantError::UnknownCookie, |t| {
        t.accept(&p("b"), &ab.cookie, T0)
    });
}

#[test]
fn a_grant_of_an_earlier_generation_is_stale() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(34);
    let ab = issue(&mut t, &mut r, "a", mem(), "b", RO);
    let mut v = serde_json::to_value(&t).unwrap();
    v["resources"][0]["generation"] = 7.into();
    v["next_generation"] = 7.into();
    let mut t: GrantTable = serde_json::from_value(v).unwrap();
    assert!(
        t.check().is_err(),
        "check sees the live grant of another generation"
    );
    refused(&mut t, GrantError::Stale(ab.grant), |t| {
        t.accept(&p("b"), &ab.cookie, T0)
    });
}

#[test]
fn check_refuses_inconsistent_tables() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(35);
    let (ab, bc) = chain_abc(&mut t, &mut r);
    t.check().unwrap();
    // Each edit breaks one invariant (edits made through the store, bypassing the table).
    let widened_under_read_only = {
        let ro_parent = edit(&t, ab, "access", "read_only".into());
        edit(&ro_parent, bc, "access", "read_write".into())
    };
    let bad = [
        ("depth", edit(&t, bc, "depth", 3.into())),
        ("access wider than parent", widened_under_read_only),
        (
            "granter not the parent's grantee",
            edit(&t, bc, "granter", "z".into()),
        ),
        (
            "live child of an ended parent",
            edit(&t, ab, "state", "revoked".into()),
        ),
        (
            "re-grant posing as a root",
            edit(&t, bc, "parent", Value::Null),
        ),
        (
            "accepted without a time",
            edit(&t, bc, "accepted_at", Value::Null),
        ),
        ("outlives its parent", edit(&t, ab, "expires_at", 5.into())),
    ];
    for (what, b) in &bad {
        assert!(b.check().is_err(), "{what}: passed the check");
    }
}

#[test]
fn a_resource_listed_twice_is_refused_on_load() {
    let t = table_with_region(GrantConfig::default());
    let mut v = serde_json::to_value(&t).unwrap();
    let first = v["resources"][0].clone();
    v["resources"].as_array_mut().unwrap().push(first);
    assert!(serde_json::from_value::<GrantTable>(v).is_err());
}
