//! What reaches bulkheadd from a client: method, path, query and body go
//! through `server::route` (JSON bodies into typed requests); the same bytes,
//! as text, through the Authorization header's parser, the TLS fingerprint
//! parser and the TOML configuration parser. Nothing may panic, and
//! every refusal must be a one-line API error.
#![no_main]

use libfuzzer_sys::fuzz_target;

const METHODS: [hyper::Method; 4] = [
    hyper::Method::GET,
    hyper::Method::POST,
    hyper::Method::DELETE,
    hyper::Method::PUT,
];

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let method = &METHODS[(data[0] % 4) as usize];
    let rest = &data[1..];
    // "path?query\nbody": the head is text, the body any bytes.
    let (head, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let (path, query) = head.split_once('?').unwrap_or((&head, ""));
    if let Err(e) = bulkhead_manager::server::route(method, path, query, body) {
        let line = e.to_string();
        assert!(!line.is_empty());
        let _ = e.body();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(t) = bulkhead_manager::server::bearer(text) {
            assert!(text.len() > t.len());
        }
        let _ = bulkhead_manager::tls::parse_fingerprint(text);
        if let Ok(cfg) = bulkhead_manager::config::Config::parse(text) {
            let _ = cfg.validate();
        }
    }
});
