//! The agent's request path: bytes from the host, split into lines by the
//! framer (in arbitrary chunks), each decoded as a request. Must never panic;
//! a decoded request must re-encode to a line that decodes to itself.
#![no_main]

use bulkhead_agent::proto::{decode_request, encode_line, Frame, LineDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (split, bytes) = match data.split_first() {
        Some((s, rest)) => (*s as usize + 1, rest),
        None => return,
    };
    let mut dec = LineDecoder::new(4096);
    for chunk in bytes.chunks(split) {
        for frame in dec.push(chunk) {
            if let Frame::Line(line) = frame {
                assert!(line.len() <= 4096);
                if let Ok(req) = decode_request(&line) {
                    let again = encode_line(&req);
                    let back = decode_request(&again[..again.len() - 1]).expect("re-decodes");
                    assert_eq!(back, req);
                }
            }
        }
    }
    if let Ok(s) = std::str::from_utf8(bytes) {
        let _ = bulkhead_agent::cmdline::parse(s);
    }
});
