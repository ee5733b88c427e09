#![no_main]
//! Random target response streams fed to the pooled-connection logic: one
//! upstream connection carries request after request while `verdict` allows
//! it; bytes arriving while it sits idle in the pool close it. No response
//! is ever read from bytes that arrived before its request was sent, and the
//! outcome does not depend on how the stream was split.
use bulkhead_portshare::http::parse_request;
use bulkhead_portshare::http::proxy::{verdict, Event, Probe, ResponseReader};
use libfuzzer_sys::fuzz_target;

const REQS: [&[u8]; 4] = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: ws\r\n\r\n",
];

/// (request index, status, body bytes, complete) per response.
type Outcome = Vec<(usize, u16, usize, bool)>;

fn request(k: u8) -> bulkhead_portshare::http::RequestHead {
    parse_request(REQS[k as usize % REQS.len()], 8192).unwrap().unwrap()
}

/// One connection carrying the requests `kinds` in turn. `chunks`: what the
/// target sends, each (arrives while the connection is idle in the pool,
/// bytes), delivered `split` bytes at a time.
fn simulate(kinds: &[u8], chunks: &[(bool, Vec<u8>)], split: usize) -> Outcome {
    let pieces: Vec<(bool, &[u8])> = chunks
        .iter()
        .flat_map(|(idle, b)| b.chunks(split.max(1)).map(move |p| (*idle, p)))
        .collect();
    let mut next = 0;
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let (mut received, mut consumed) = (0usize, 0usize);
    for (i, k) in kinds.iter().enumerate() {
        let req = request(*k);
        // The request is sent now: its response is made of what arrives from here on.
        let sent_at = received;
        assert!(buf.is_empty(), "a reused connection holds unread bytes");
        let mut rd = ResponseReader::new(&req, 8192);
        let (mut status, mut body, mut end) = (0u16, 0usize, None);
        loop {
            let ev = match rd.next(&buf) {
                Ok(Event::NeedMore) if next < pieces.len() => {
                    received += pieces[next].1.len();
                    buf.extend_from_slice(pieces[next].1);
                    next += 1;
                    continue;
                }
                Ok(Event::NeedMore) => rd.eof(),
                other => other,
            };
            let Ok(ev) = ev else { break };
            let used = match &ev {
                Event::NeedMore => unreachable!("eof never needs more"),
                Event::Interim(h) | Event::Final(h) | Event::Switched(h) => {
                    assert!(consumed >= sent_at, "response read from bytes that came before its request");
                    status = h.status;
                    h.len
                }
                Event::Body(n) => {
                    body += n;
                    *n
                }
                Event::End { keep_alive } => {
                    end = Some(*keep_alive);
                    break;
                }
            };
            assert!(used <= buf.len());
            buf.drain(..used);
            consumed += used;
            if matches!(ev, Event::Switched(_)) {
                out.push((i, 101, 0, true));
                return out;
            }
        }
        out.push((i, status, body, end.is_some()));
        let Some(keep_alive) = end else { return out };
        if !verdict(&req, keep_alive, true, buf.len(), 0).upstream_reusable {
            return out;
        }
        // Pooled: whatever arrives before the next request is unsolicited.
        let probe = match pieces.get(next) {
            Some((true, _)) => Probe::Readable,
            _ => Probe::Idle,
        };
        if !probe.reusable() {
            return out;
        }
    }
    out
}

/// One response read from `stream` in pieces of `split` bytes: (events, bytes consumed).
fn single(k: u8, stream: &[u8], split: usize) -> (Vec<Event>, usize) {
    let req = request(k);
    let mut rd = ResponseReader::new(&req, 8192);
    let (mut buf, mut fed, mut consumed) = (Vec::new(), 0, 0);
    let mut events = Vec::new();
    loop {
        let ev = match rd.next(&buf) {
            Ok(Event::NeedMore) if fed < stream.len() => {
                let n = split.min(stream.len() - fed);
                buf.extend_from_slice(&stream[fed..fed + n]);
                fed += n;
                continue;
            }
            Ok(Event::NeedMore) => rd.eof(),
            other => other,
        };
        let Ok(ev) = ev else { return (events, usize::MAX) };
        let used = match &ev {
            Event::Interim(h) | Event::Final(h) | Event::Switched(h) => h.len,
            Event::Body(n) => *n,
            _ => 0,
        };
        buf.drain(..used);
        consumed += used;
        let end = matches!(ev, Event::End { .. } | Event::Switched(_) | Event::NeedMore);
        // Body events depend on how bytes arrive; their sum does not.
        match (events.last_mut(), &ev) {
            (Some(Event::Body(a)), Event::Body(b)) => *a += b,
            _ => events.push(ev),
        }
        if end {
            return (events, consumed);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    // However the stream is split, one response reads the same.
    let whole = single(n, rest, usize::MAX);
    assert_eq!(whole, single(n, rest, 1));
    assert_eq!(whole, single(n, rest, 3));
    let kinds: Vec<u8> = (0..(n % 6) + 1).map(|i| n.rotate_left(i as u32 * 2) & 3).collect();
    // Chunks: [len][flags][bytes...]
    let mut chunks = Vec::new();
    let mut r = rest;
    while r.len() >= 2 {
        let (len, idle) = (r[0] as usize, r[1] & 1 == 1);
        let body = &r[2..(2 + len).min(r.len())];
        chunks.push((idle, body.to_vec()));
        r = &r[2 + body.len()..];
    }
    for split in [usize::MAX, 1, 4] {
        simulate(&kinds, &chunks, split);
    }
});
