//! AVP decoding: the raw iterator, every typed value decoder and unhiding.
#![no_main]
use bulkhead_l2tp::avp::{self, Avp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for raw in avp::raw_avps(data) {
        let Ok(raw) = raw else { break };
        let value = if raw.hidden {
            match avp::unhide(raw.attr, b"s3cret", &[1; 16], raw.value) {
                Ok(v) => v,
                Err(_) => continue,
            }
        } else {
            raw.value.to_vec()
        };
        if let Ok(a) = Avp::decode_value(raw.vendor, raw.attr, raw.mandatory, &value) {
            let mut out = Vec::new();
            let _ = a.encode(&mut out, None);
        }
    }
});
