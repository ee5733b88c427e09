#![no_main]
use bulkhead_portshare::proxy_protocol::{decode, encode_v1, encode_v2};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((h, n))) = decode(data) {
        assert!(n <= data.len());
        if let Some((s, d)) = h.addrs {
            // What we decode, we can encode and decode to the same addresses.
            for enc in [encode_v1(s, d), encode_v2(s, d)] {
                let (h2, m) = decode(&enc).unwrap().unwrap();
                assert_eq!(m, enc.len());
                assert_eq!(h2.addrs, Some((s, d)));
            }
        }
    }
});
