//! Guest requests as the agent relays them: never panics, errors stay short, and
//! whatever parses serialises to a request that parses back to the same value.
#![no_main]
use bulkhead_grant::request::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok(req) => {
            let again = serde_json::to_vec(&req).expect("a parsed request serialises");
            assert_eq!(parse_request(&again).expect("and parses back"), req);
        }
        Err(e) => assert!(e.to_string().len() < 512, "error too long: {e}"),
    }
});
