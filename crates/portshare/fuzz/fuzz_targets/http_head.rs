#![no_main]
use bulkhead_portshare::http::{parse_request, parse_response, rewrite_uri_headers, Chunked};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(r)) = parse_request(data, 8192) {
        assert!(r.len <= data.len());
        // Whatever follows the head, a chunked body delimiter must not panic
        // and never claims more than it was given.
        let rest = &data[r.len..];
        let mut c = Chunked::default();
        if let Ok(n) = c.feed(rest) {
            assert!(n <= rest.len());
        }
    }
    if let Ok(Some(r)) = parse_response(data, 8192, false) {
        assert!(r.len <= data.len());
        let out = rewrite_uri_headers(&data[..r.len], &["a.test", "127.0.0.1"], 9001, "a.test:8080");
        if let Some(o) = out {
            // The rewritten head still parses as a response with the same status.
            let again = parse_response(&o, 1 << 20, false).ok().flatten().map(|x| x.status);
            assert_eq!(again, Some(r.status));
        }
    }
    // Byte-at-a-time chunked parsing agrees with one-shot parsing.
    let mut one = Chunked::default();
    let whole = one.feed(data);
    let mut step = Chunked::default();
    let mut n = 0;
    let mut err = false;
    for b in data {
        match step.feed(std::slice::from_ref(b)) {
            Ok(k) => n += k,
            Err(_) => {
                err = true;
                break;
            }
        }
        if step.is_done() {
            break;
        }
    }
    match whole {
        Ok(k) => {
            assert!(!err);
            assert_eq!(k, n);
            assert_eq!(one.is_done(), step.is_done());
        }
        Err(_) => assert!(err),
    }
});
