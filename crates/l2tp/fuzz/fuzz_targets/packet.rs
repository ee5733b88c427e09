//! Header + control message decoding (with a secret, so hidden AVPs are unhidden), and
//! re-encoding whatever decoded. One round normalises: an AVP with reserved bits set is
//! kept as unrecognized and re-encoded without them, so it may then read as a known AVP
//! (even a malformed one, which must fail cleanly). Whatever decodes after that round
//! must be a fixed point of encode + decode.
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
                    if let Ok(m2) = Message::decode(&out, None) {
                        let mut out2 = Vec::new();
                        m2.encode(&mut out2, None).expect("re-encodes");
                        assert_eq!(Message::decode(&out2, None).as_ref(), Ok(&m2));
                    }
                }
            }
        }
    }
});
