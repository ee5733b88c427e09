//! The control state machine fed arbitrary datagrams and clock steps, in both roles,
//! after a real handshake so established-state code is reached too.
#![no_main]
use std::time::{Duration, Instant};

use bulkhead_l2tp::tunnel::BEARER_ANALOG;
use bulkhead_l2tp::{CallMode, Config, Tunnel};
use libfuzzer_sys::fuzz_target;

fn cfg(seed: u64) -> Config {
    Config { secret: Some(b"s3cret".to_vec()), rng_seed: Some(seed), bearer_caps: BEARER_ANALOG, ..Config::default() }
}

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut a = Tunnel::connect(cfg(1), now);
    let mut b = Tunnel::accept(cfg(2), now);
    // Handshake so the fuzzer starts from an established tunnel.
    for _ in 0..4 {
        while let Some(d) = a.poll_transmit(now) {
            let _ = b.handle(now, &d);
        }
        while let Some(d) = b.poll_transmit(now) {
            let _ = a.handle(now, &d);
        }
    }
    let _ = a.place_outgoing_call(now, "PRIMARY_ISP", CallMode::Raw);
    let _ = a.arm(now, None, Duration::from_secs(5), CallMode::Raw);
    // Chunks: first byte picks the target and a clock step, the rest is a datagram whose
    // tunnel ID is patched to the target's so it gets past demultiplexing.
    let mut t = now;
    for chunk in data.split(|b| *b == 0xa5) {
        if chunk.is_empty() {
            continue;
        }
        t += Duration::from_millis((chunk[0] as u64 & 0x0f) * 500);
        let target = if chunk[0] & 0x80 != 0 { &mut a } else { &mut b };
        let mut d = chunk[1..].to_vec();
        if d.len() >= 6 {
            let id = target.local_id().to_be_bytes();
            let at = if d[0] & 0x40 != 0 { 4 } else { 2 };
            d[at] = id[0];
            d[at + 1] = id[1];
        }
        let _ = target.handle(t, &d);
        target.handle_timeout(t);
        while target.poll_transmit(t).is_some() {}
        while target.poll_event().is_some() {}
        let _ = target.poll_timeout();
    }
});
