//! Save manifests as a shared repository may hold them: never panics, errors
//! stay short, and whatever parses serialises to a manifest that parses back
//! to the same value.
#![no_main]
use bulkhead_engine::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Manifest::parse(data) {
        Ok(m) => {
            let again = serde_json::to_vec(&m).expect("a parsed manifest serialises");
            assert_eq!(Manifest::parse(&again).expect("and parses back"), m);
        }
        Err(e) => assert!(e.len() < 1024, "error too long: {e}"),
    }
});
