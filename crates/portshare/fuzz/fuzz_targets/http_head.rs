#![no_main]
//! Client request streams (heads, bodies of every framing, pipelining) and
//! response heads: the strict parsers, the head the proxy forwards, and
//! chunked framing agree with themselves however the bytes are split.
use bulkhead_portshare::http::proxy::BodyReader;
use bulkhead_portshare::http::{
    forward_head, parse_request, parse_response, rewrite_uri_headers, Body,
};
use libfuzzer_sys::fuzz_target;

/// Requests read from `data` as a client stream, each as (head len, body
/// len or MAX for a framing error, complete), fed to the body reader in pieces of `step` bytes.
fn requests(data: &[u8], step: usize) -> Vec<(usize, usize, bool)> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Ok(Some(r)) = parse_request(rest, 8192) {
        assert!(r.len <= rest.len());
        let fwd = forward_head(&rest[..r.len], &r);
        // What goes to the target is itself canonical and means the same.
        let again = parse_request(&fwd, 1 << 20)
            .expect("forwarded head parses")
            .expect("forwarded head is whole");
        assert_eq!(again.len, fwd.len());
        assert_eq!(
            (&again.host, &again.authority, again.body, again.version, again.is_head, again.idempotent),
            (&r.host, &r.authority, r.body, r.version, r.is_head, r.idempotent)
        );
        assert!(!again.absolute && !again.close_requested);
        let mut body = BodyReader::new(r.body);
        assert!(r.body != Body::Close);
        let after = &rest[r.len..];
        let mut n = 0;
        let mut ok = true;
        while !body.done() && n < after.len() {
            let piece = &after[n..(n + step).min(after.len())];
            match body.feed(piece) {
                Ok(k) => {
                    assert!(k <= piece.len());
                    n += k;
                    if k < piece.len() {
                        assert!(body.done());
                    }
                }
                Err(_) => {
                    ok = false;
                    break;
                }
            }
        }
        let done = ok && body.done();
        // Where an error is found depends on the pieces; that it is, does not.
        out.push((r.len, if ok { n } else { usize::MAX }, done));
        if !done {
            break;
        }
        rest = &after[n..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // However the stream arrives, the same requests end at the same places.
    let whole = requests(data, usize::MAX);
    assert_eq!(whole, requests(data, 1));
    assert_eq!(whole, requests(data, 7));

    if let Ok(Some(r)) = parse_response(data, 8192, false) {
        assert!(r.len <= data.len());
        let map = |h: &str, p: u16| {
            (p == 9001 && (h == "a.test" || h == "127.0.0.1")).then(|| "a.test:8080".to_string())
        };
        if let Some(o) = rewrite_uri_headers(&data[..r.len], &map) {
            // The rewritten head still parses as a response with the same status.
            let again = parse_response(&o, 1 << 20, false).ok().flatten().map(|x| x.status);
            assert_eq!(again, Some(r.status));
        }
    }
});
