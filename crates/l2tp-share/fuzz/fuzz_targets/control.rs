//! Bytes from outside the daemon: control-socket frames (`control::decode`) and a
//! modem's reads checked for a trailing NO CARRIER (`call::before_no_carrier`).
//! Decoding is the same on the whole buffer and on the chunks a socket delivers, never
//! reads past the buffer, and re-encoding the frames gives the bytes back.
#![no_main]
use bulkhead_l2tp_share::{call, control};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    if let Some(keep) = call::before_no_carrier(data) {
        assert!(keep <= data.len());
    }

    // Whole buffer: frames until incomplete or bad.
    let mut whole = Vec::new();
    let mut at = 0;
    let whole_end = loop {
        match control::decode(&data[at..]) {
            Ok(Some((f, used))) => {
                assert!(used >= 3 && at + used <= data.len());
                whole.push((f.tag, f.payload.to_vec()));
                at += used;
            }
            r => break r.map(|_| ()),
        }
    };
    // Re-encoded, the frames are the bytes they came from.
    let mut again = Vec::new();
    for (tag, p) in &whole {
        control::encode(*tag, p, &mut again);
    }
    assert_eq!(again, &data[..at]);

    // The same bytes in chunks, decoded as the daemon reads its socket.
    let mut buf = Vec::new();
    let mut got = Vec::new();
    let mut bad = None;
    'outer: for chunk in data.chunks((split as usize).max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            match control::decode(&buf) {
                Ok(Some((f, used))) => {
                    got.push((f.tag, f.payload.to_vec()));
                    buf.drain(..used);
                }
                Ok(None) => break,
                Err(e) => {
                    bad = Some(e);
                    break 'outer;
                }
            }
        }
    }
    assert_eq!(got, whole);
    assert_eq!(bad.is_some(), whole_end.is_err());
});
