//! The image builder's parsers of outside bytes: the bzImage setup header of a
//! user-supplied kernel package, the cpio reader, and the --add / --size
//! arguments. None may panic; a payload found must lie inside the input.
#![no_main]

use bulkhead_image::{build::AddSpec, cpio, kernel, rootfs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = kernel::bzimage_payload(data) {
        assert!(p.len() >= 8 && p.len() <= data.len());
    }
    let _ = cpio::read(data);
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(a) = s.parse::<AddSpec>() {
            assert!(a.dest.starts_with('/'));
        }
        let _ = rootfs::parse_size(s);
    }
});
