//! The strict parsers: cookies, ids, names, sizes, and guest requests.

mod common;

use bulkhead_grant::request::{
    parse_request, GuestRequest, HexData, RequestError, Target, MAX_REQUEST_BYTES,
};
use bulkhead_grant::*;
use common::*;

fn a_cookie() -> Cookie {
    let mut t = table_with_region(GrantConfig::default());
    issue(&mut t, &mut rng(41), "a", mem(), "b", RO).cookie
}

#[test]
fn cookie_prints_and_parses_back() {
    let c = a_cookie();
    let s = c.to_string();
    assert_eq!(s.len(), COOKIE_LEN);
    assert!(s.starts_with("bhc1_"));
    assert_eq!(Cookie::parse(&s).unwrap(), c);
    // The public part is the grant id.
    assert_eq!(format!("gr-{}", &s[5..21]), c.grant_id().to_string());
}

#[test]
fn cookie_debug_hides_the_secret() {
    let c = a_cookie();
    let secret = &c.to_string()[21..];
    assert!(!format!("{c:?}").contains(secret));
    assert!(!format!("{c:?}").contains(&secret[..8]));
}

#[test]
fn cookies_differ_each_time() {
    let mut t = table_with_region(GrantConfig::default());
    let mut r = rng(42);
    let a = issue(&mut t, &mut r, "a", mem(), "b", RO).cookie;
    let b = issue(&mut t, &mut r, "a", mem(), "b", RO).cookie;
    assert_ne!(a.to_string()[21..], b.to_string()[21..]);
}

#[test]
fn cookie_parser_is_strict() {
    let good = a_cookie().to_string();
    assert_eq!(Cookie::parse(""), Err(CookieParseError::Length(0)));
    assert_eq!(
        Cookie::parse(&good[..84]),
        Err(CookieParseError::Length(84))
    );
    assert_eq!(
        Cookie::parse(&format!("{good}0")),
        Err(CookieParseError::Length(86))
    );
    assert_eq!(
        Cookie::parse(&format!(" {}", &good[1..])),
        Err(CookieParseError::Prefix)
    );
    assert_eq!(
        Cookie::parse(&format!("bhc2_{}", &good[5..])),
        Err(CookieParseError::Prefix)
    );
    let mut g = good.clone().into_bytes();
    g[5] = b'A';
    assert_eq!(
        Cookie::parse(std::str::from_utf8(&g).unwrap()),
        Err(CookieParseError::Alphabet(5))
    );
    let mut g = good.clone().into_bytes();
    g[40] = b'g';
    assert_eq!(
        Cookie::parse(std::str::from_utf8(&g).unwrap()),
        Err(CookieParseError::Alphabet(40))
    );
    // Same byte length, with a multi-byte character: refused, no panic on a char boundary.
    let multi = format!("{}é{}", &good[..20], &good[22..]);
    assert_eq!(multi.len(), COOKIE_LEN);
    assert_eq!(Cookie::parse(&multi), Err(CookieParseError::Alphabet(20)));
    // Surrounding whitespace is the caller's to trim, not ours to guess.
    assert!(Cookie::parse(&format!("{}\n", &good[..84])).is_err());
}

#[test]
fn ids_names_and_sizes_are_strict() {
    assert!("gr-0123456789abcdef".parse::<GrantId>().is_ok());
    for bad in [
        "gr-0123456789ABCDEF",
        "gr-0123456789abcde",
        "gr-0123456789abcdef0",
        "g-0123456789abcdef",
        "gr-+123456789abcdef",
    ] {
        assert!(bad.parse::<GrantId>().is_err(), "{bad}");
    }
    assert!("web-1".parse::<PartitionId>().is_ok());
    for bad in ["", "-a", "A", "a b", "a/b", &"x".repeat(49)] {
        assert!(bad.parse::<PartitionId>().is_err(), "{bad:?}");
    }
    for ok in [1u64 << 20, 1 << 25, 1 << 30] {
        assert_eq!(RegionSize::try_from(ok).unwrap().bytes(), ok);
    }
    for bad in [0u64, 1 << 19, (1 << 20) + 1, 3 << 20, 1 << 31] {
        assert!(RegionSize::try_from(bad).is_err(), "{bad}");
    }
}

#[test]
fn guest_requests_parse_to_typed_values() {
    let cookie = a_cookie();
    let cases = [
        (
            r#"{"op":"region_create","name":"mem","size":16777216}"#.to_string(),
            "region_create",
        ),
        (
            r#"{"op":"grant","resource":"mem","to":"b","read_only":true,"expires_ms":600000}"#
                .into(),
            "grant",
        ),
        (
            r#"{"op":"grant","resource":"data","kind":"disk","to":"b","read_only":true}"#.into(),
            "grant",
        ),
        (
            r#"{"op":"regrant","grant":"gr-00000000000000aa","to":"c"}"#.into(),
            "regrant",
        ),
        (
            format!(r#"{{"op":"accept","cookie":"{cookie}"}}"#),
            "accept",
        ),
        (
            r#"{"op":"release","grant":"gr-00000000000000aa"}"#.into(),
            "release",
        ),
        (
            r#"{"op":"revoke","grant":"gr-00000000000000aa"}"#.into(),
            "revoke",
        ),
        (r#"{"op":"list"}"#.into(), "list"),
        (
            r#"{"op":"read","target":"gr-00000000000000aa","offset":0,"len":16}"#.into(),
            "read",
        ),
        (
            r#" {"op":"write","target":"mem","offset":4096,"data":"deadbeef"} "#.into(),
            "write",
        ),
    ];
    for (json, op) in &cases {
        let req = parse_request(json.as_bytes()).unwrap_or_else(|e| panic!("{json}: {e}"));
        // What parses serialises back to the same request.
        let again = serde_json::to_string(&req).unwrap();
        assert!(again.contains(&format!(r#""op":"{op}""#)));
        assert_eq!(parse_request(again.as_bytes()).unwrap(), req);
    }
    match parse_request(cases[1].0.as_bytes()).unwrap() {
        GuestRequest::Grant {
            resource,
            kind,
            to,
            read_only,
            expires_ms,
        } => {
            assert_eq!(
                (resource.as_str(), kind, to, read_only, expires_ms),
                ("mem", ResourceKind::Region, p("b"), true, Some(600_000))
            );
        }
        other => panic!("{other:?}"),
    }
    match parse_request(cases[4].0.as_bytes()).unwrap() {
        GuestRequest::Accept { cookie: c } => assert_eq!(c, cookie),
        other => panic!("{other:?}"),
    }
    match parse_request(cases[9].0.as_bytes()).unwrap() {
        GuestRequest::Write {
            target,
            offset,
            data,
        } => {
            assert_eq!(
                (target, offset, data),
                (
                    Target::Region("mem".parse().unwrap()),
                    4096,
                    HexData(vec![0xde, 0xad, 0xbe, 0xef])
                )
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn hostile_guest_requests_are_refused() {
    let malformed = [
        "",
        "null",
        "[]",
        r#"{"op":"nope"}"#,
        r#"{"name":"mem","size":16777216}"#,
        r#"{"op":"list","extra":1}"#,
        r#"{"op":"region_create","name":"mem","size":16777216,"owner":"b"}"#,
        r#"{"op":"region_create","name":"mem","size":3}"#,
        r#"{"op":"region_create","name":"Mem","size":16777216}"#,
        r#"{"op":"region_create","name":"mem","size":-1}"#,
        r#"{"op":"region_create","name":"mem","size":1.5e7}"#,
        r#"{"op":"grant","resource":"mem","to":"../b"}"#,
        r#"{"op":"accept","cookie":"bhc1_short"}"#,
        r#"{"op":"release","grant":"gr-XYZ"}"#,
        r#"{"op":"write","target":"mem","offset":0,"data":"abc"}"#,
        r#"{"op":"list"} {"op":"list"}"#,
        r#"{"op":"list","op":"list"}"#,
    ];
    for m in malformed {
        assert!(
            matches!(parse_request(m.as_bytes()), Err(RequestError::Malformed(_))),
            "{m}"
        );
    }
    let invalid = [
        r#"{"op":"region_create","name":"gr-0123456789abcdef","size":16777216}"#,
        r#"{"op":"grant","resource":"mem","to":"b","expires_ms":0}"#,
        r#"{"op":"regrant","grant":"gr-00000000000000aa","to":"b","expires_ms":2592000001}"#,
        r#"{"op":"grant","resource":"data","kind":"disk","to":"b"}"#,
        r#"{"op":"read","target":"mem","offset":0,"len":0}"#,
        r#"{"op":"read","target":"mem","offset":0,"len":4097}"#,
        r#"{"op":"read","target":"mem","offset":18446744073709551615,"len":1}"#,
        r#"{"op":"write","target":"mem","offset":1073741824,"data":"00"}"#,
    ];
    for m in invalid {
        assert!(
            matches!(parse_request(m.as_bytes()), Err(RequestError::Invalid(_))),
            "{m}"
        );
    }
    let huge = format!(
        r#"{{"op":"list","pad":"{}"}}"#,
        " ".repeat(MAX_REQUEST_BYTES)
    );
    assert_eq!(
        parse_request(huge.as_bytes()),
        Err(RequestError::TooLarge(huge.len()))
    );
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    assert!(parse_request(deep.as_bytes()).is_err());
}

#[test]
fn request_errors_do_not_echo_hostile_input_at_length() {
    let long_name = format!(
        r#"{{"op":"region_create","name":"{}","size":16777216}}"#,
        "A".repeat(8000)
    );
    let e = parse_request(long_name.as_bytes()).unwrap_err().to_string();
    assert!(e.len() < 300, "{} bytes: {e}", e.len());
    // Multi-byte characters where a byte cut would land inside one.
    for pad in 0..4 {
        let m = format!(r#"{{"op":"{}{}"}}"#, "x".repeat(pad), "é".repeat(300));
        assert!(matches!(
            parse_request(m.as_bytes()),
            Err(RequestError::Malformed(_))
        ));
    }
}
