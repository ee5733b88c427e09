//! Header + control message decoding (with a secret, so hidden AVPs are unhidden), and
//! re-encoding whatever decoded: it must decode to the same message again.
#![no_main]
use bulkhead_l2tp::{header, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = header::peek_tunnel_id(data);
    if let Ok((h, body)) = header::decode(data) {
        if h.control && !body.is_empty() {
            if let Ok(m) = Message::decode(body, Some(b"s3cret")) {
                let mut out = Vec::new();
                if m.encode(&mut out, None).is_ok() {
                    assert_eq!(Message::decode(&out, None).as_ref(), Ok(&m));
                }
            }
        }
    }
});
