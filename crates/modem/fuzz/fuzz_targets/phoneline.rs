//! Network bytes into the phone-line readers: the answering modem's caller classifier
//! and the calling modem's status-line reader. A decided caller stays decided whatever
//! follows; the status reader gives the same answer on a whole buffer and on the
//! chunks a socket may deliver, and never reads past its bound.
#![no_main]
use bulkhead_modem::phoneline::{classify, status, Caller, MAX_STATUS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let at = (split as usize).min(data.len());

    // Classifier: decided at a prefix means decided the same on the whole.
    let first = classify(&data[..at]);
    let all = classify(data);
    if first != Caller::Undecided {
        assert_eq!(first, all);
    }
    if let Caller::Modem { data_at } = all {
        assert!(data_at <= data.len());
    }

    // Status reader, whole and incremental (as the dialing side reads it).
    let whole = status(data);
    if let Ok(Some((_, used))) = &whole {
        assert!(*used <= data.len() && *used <= MAX_STATUS);
        assert_eq!(data[*used - 1], b'\n');
    }
    let mut buf = Vec::new();
    let mut seen = None;
    for chunk in data.chunks(at.max(1)) {
        buf.extend_from_slice(chunk);
        match status(&buf) {
            Ok(None) => continue,
            r => {
                seen = Some(r);
                break;
            }
        }
    }
    match seen {
        Some(r) => assert_eq!(r, whole),
        None => assert_eq!(whole, Ok(None)),
    }
});
