//! DTE bytes into the Hayes command set: command lines, S-registers, result parsing and
//! `+++` detection. Fed in one piece or split in two, the command parser must do the
//! same thing (it is a byte-at-a-time machine); data without the escape character
//! passes the escape detector unchanged.
#![no_main]
use std::time::{Duration, Instant};

use bulkhead_modem::hayes::{Action, Code, Escape, Hayes};
use libfuzzer_sys::fuzz_target;

/// Adjacent writes merged, so that where the input was split does not matter.
fn normalise(actions: Vec<Action>) -> Vec<Action> {
    let mut out: Vec<Action> = Vec::new();
    for a in actions {
        match (out.last_mut(), a) {
            (Some(Action::Write(w)), Action::Write(x)) => w.extend_from_slice(&x),
            (_, a) => out.push(a),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let at = (split as usize).min(data.len());

    let mut whole = Hayes::default();
    let one = whole.feed(data);
    let mut parts = Hayes::default();
    let mut two = parts.feed(&data[..at]);
    two.extend(parts.feed(&data[at..]));
    assert_eq!(normalise(one.clone()), normalise(two));
    assert_eq!(whole.s, parts.s);
    for a in &one {
        if let Action::Write(w) = a {
            // Results are formatted from the state; they must not panic either.
            let _ = Code::parse(&String::from_utf8_lossy(w));
        }
    }
    let _ = whole.result(Code::Connect, Some(33600));
    let _ = whole.guard();

    // The escape detector, with time stepping by the split byte.
    let t0 = Instant::now();
    let guard = whole.guard();
    let esc = whole.s[2];
    let mut e = Escape::default();
    let mut out = Vec::new();
    for (i, chunk) in data.chunks(at.max(1)).enumerate() {
        let now = t0 + Duration::from_millis((i * split as usize) as u64);
        out.extend(e.feed(now, chunk, esc, guard));
        let _ = e.check(now + guard, guard);
    }
    if !data.contains(&esc) {
        assert_eq!(out, data);
    }
    assert!(out.len() <= data.len());
});
