//! The frame decoder on arbitrary bytes fed in pieces whose sizes the first byte
//! picks: never panics, never holds more than one frame, and whatever decodes is a
//! valid frame that encodes back to exactly the bytes it came from.
#![no_main]
use bulkhead_pool_proto::{Decoder, HEADER_LEN, MAX_FRAME_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, bytes)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut d = Decoder::new();
    let mut frame_start = 0;
    let mut pos = 0;
    for chunk in bytes.chunks(step) {
        let mut input = chunk;
        while !input.is_empty() {
            let before = input.len();
            let r = d.decode(&mut input);
            pos += before - input.len();
            assert!(d.buffered() <= HEADER_LEN + MAX_FRAME_LEN);
            match r {
                Ok(Some(f)) => {
                    f.validate().expect("decoded frames are valid");
                    assert_eq!(f.to_bytes().unwrap(), &bytes[frame_start..pos]);
                    frame_start = pos;
                }
                Ok(None) => assert!(input.is_empty()),
                Err(e) => {
                    assert!(e.to_string().len() < 256);
                    // Sticky: the same error again, nothing consumed.
                    let mut again = &b"\0\0\0\x01\x31"[..];
                    assert_eq!(d.decode(&mut again), Err(e));
                    assert_eq!(again.len(), 5);
                    return;
                }
            }
        }
    }
});
