#![no_main]
use bulkhead_portshare::sni::parse_client_hello;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = parse_client_hello(data, 16 * 1024);
    if let Ok(Some(h)) = &whole {
        assert!(h.consumed <= data.len());
        // The answer depends only on the records it consumed.
        assert_eq!(parse_client_hello(&data[..h.consumed], 16 * 1024), whole);
    }
    // Feeding a prefix never claims a result the whole input contradicts.
    if data.len() > 1 {
        if let Ok(Some(h)) = parse_client_hello(&data[..data.len() / 2], 16 * 1024) {
            assert_eq!(whole, Ok(Some(h)));
        }
    }
});
