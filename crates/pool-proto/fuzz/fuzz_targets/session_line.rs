//! The in-partition session line parser: never panics; whatever parses prints back
//! to exactly the input.
#![no_main]
use bulkhead_pool_proto::SessionLine;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(l) = SessionLine::parse(data) {
        assert_eq!(l.encode().unwrap().as_bytes(), data);
    }
});
