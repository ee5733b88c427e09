//! What QEMU sends: bytes split into lines by the bounded framer (in chunks
//! of a fuzzer-chosen size), each line classified. Must never panic, never
//! hold more than the limit, and stop for good at the first over-long line.
#![no_main]

use bulkhead_qmp::proto::{decode, Framer};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let (split, bytes) = match data.split_first() {
        Some((s, rest)) => (*s as usize + 1, rest),
        None => return,
    };
    let mut framer = Framer::new(MAX);
    let mut lines = Vec::new();
    for chunk in bytes.chunks(split) {
        let r = framer.push(chunk, &mut lines);
        assert!(framer.buffered() <= MAX);
        for line in lines.drain(..) {
            assert!(line.len() <= MAX);
            let _ = decode(&line);
        }
        if r.is_err() {
            break;
        }
    }
});
