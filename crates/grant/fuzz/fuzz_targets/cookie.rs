//! The strict cookie parser: never panics; whatever parses prints back to exactly the
//! input (one spelling per cookie) and names the grant its id part says.
#![no_main]
use bulkhead_grant::{Cookie, COOKIE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(c) = Cookie::parse(s) {
        assert_eq!(s.len(), COOKIE_LEN);
        assert_eq!(c.to_string(), s);
        assert_eq!(c.grant_id().to_string(), format!("gr-{}", &s[5..21]));
    }
});
