//! Two sans-I/O tunnels wired back to back with explicit time: establishment,
//! authentication, every call flow, the extension, loss and retransmission.

use std::time::{Duration, Instant};

use bulkhead_l2tp::tunnel::{resolve_tie, sccrq_tie_breaker, CloseReason, Tie, BEARER_ANALOG};
use bulkhead_l2tp::{
    ext, header, result, Avp, CallMode, Config, Event, Message, MessageType, ResultCode, Tunnel,
};

struct Pair {
    now: Instant,
    lns: Tunnel,
    lac: Tunnel,
    lns_events: Vec<Event>,
    lac_events: Vec<Event>,
    /// Datagrams sent LNS→LAC and LAC→LNS, for assertions.
    wire: Vec<(bool, Vec<u8>)>,
    /// Drop the n-th datagram (counted over both directions) when set.
    drop: Vec<usize>,
    sent: usize,
}

fn cfg(name: &str, secret: Option<&str>, seed: u64) -> Config {
    Config {
        host_name: name.into(),
        secret: secret.map(|s| s.as_bytes().to_vec()),
        rng_seed: Some(seed),
        ..Config::default()
    }
}

impl Pair {
    fn new(lns_cfg: Config, mut lac_cfg: Config) -> Pair {
        let now = Instant::now();
        lac_cfg.bearer_caps = BEARER_ANALOG;
        Pair {
            now,
            lns: Tunnel::connect(lns_cfg, now),
            lac: Tunnel::accept(lac_cfg, now),
            lns_events: vec![],
            lac_events: vec![],
            wire: vec![],
            drop: vec![],
            sent: 0,
        }
    }

    /// Delivers everything queued until both sides are quiet.
    fn run(&mut self) {
        loop {
            let mut moved = false;
            while let Some(d) = self.lns.poll_transmit(self.now) {
                moved = true;
                self.sent += 1;
                self.wire.push((true, d.clone()));
                if !self.drop.contains(&self.sent) {
                    let _ = self.lac.handle(self.now, &d);
                }
            }
            while let Some(d) = self.lac.poll_transmit(self.now) {
                moved = true;
                self.sent += 1;
                self.wire.push((false, d.clone()));
                if !self.drop.contains(&self.sent) {
                    let _ = self.lns.handle(self.now, &d);
                }
            }
            while let Some(e) = self.lns.poll_event() {
                self.lns_events.push(e);
            }
            while let Some(e) = self.lac.poll_event() {
                self.lac_events.push(e);
            }
            if !moved {
                break;
            }
        }
    }

    /// Advances time to the earliest timer and fires it.
    fn tick(&mut self) {
        let next = [self.lns.poll_timeout(), self.lac.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        if let Some(t) = next {
            self.now = self.now.max(t);
            self.lns.handle_timeout(self.now);
            self.lac.handle_timeout(self.now);
        }
        self.run();
    }

    fn up(lns_secret: Option<&str>, lac_secret: Option<&str>) -> Pair {
        let mut p = Pair::new(cfg("lns", lns_secret, 1), cfg("lac", lac_secret, 2));
        p.run();
        p
    }
}

fn types(wire: &[(bool, Vec<u8>)]) -> Vec<String> {
    wire.iter()
        .map(|(_, d)| {
            let (_, body) = header::decode(d).unwrap();
            if body.is_empty() {
                "ZLB".to_string()
            } else {
                match Message::decode(body, Some(b"s3cret")).unwrap().kind {
                    bulkhead_l2tp::Kind::Ietf(t) => format!("{t:?}"),
                    k => format!("{k:?}"),
                }
            }
        })
        .collect()
}

#[test]
fn tunnel_comes_up_with_mutual_challenge() {
    let p = Pair::up(Some("s3cret"), Some("s3cret"));
    assert!(p.lns.is_established() && p.lac.is_established());
    assert!(
        matches!(&p.lns_events[0], Event::Connected { peer_host, peer_extension: Some(_), peer_bearer_caps: BEARER_ANALOG } if peer_host == "lac")
    );
    assert!(matches!(&p.lac_events[0], Event::Connected { peer_host, .. } if peer_host == "lns"));
    assert_eq!(types(&p.wire), ["Sccrq", "Sccrp", "Scccn", "ZLB"]);
}

#[test]
fn wrong_secret_refuses_the_tunnel() {
    let mut p = Pair::up(Some("wrong"), Some("s3cret"));
    // The LNS finds the LAC's response to its challenge wrong and clears.
    assert!(!p.lns.is_established());
    assert!(matches!(
        &p.lns_events[0],
        Event::Closed {
            reason: CloseReason::Local,
            result: Some(ResultCode {
                result: result::STOP_NOT_AUTHORIZED,
                ..
            })
        }
    ));
    assert!(matches!(
        &p.lac_events[..],
        [Event::Closed {
            reason: CloseReason::Remote,
            ..
        }]
    ));
    // Both linger 31 s, then are finished.
    for _ in 0..10 {
        p.tick();
    }
    assert!(p.lns.is_finished() && p.lac.is_finished());
}

#[test]
fn challenge_without_a_secret_is_refused() {
    let p = Pair::up(Some("s3cret"), None);
    assert!(!p.lac.is_established());
    assert!(matches!(
        &p.lac_events[0],
        Event::Closed {
            result: Some(ResultCode { result: 4, .. }),
            ..
        }
    ));
}

#[test]
fn outgoing_call_ocrq_ocrp_occn_then_data_and_cdn() {
    let mut p = Pair::up(None, None);
    let now = p.now;
    let lns_sid = p
        .lns
        .place_outgoing_call(now, "PRIMARY_ISP", CallMode::Raw)
        .unwrap();
    p.run();
    let Some(Event::OutgoingCallRequest {
        session: lac_sid,
        called_number,
        mode: CallMode::Raw,
        bearer_type: BEARER_ANALOG,
        ..
    }) = p.lac_events.last().cloned()
    else {
        panic!("{:?}", p.lac_events)
    };
    assert_eq!(called_number, "PRIMARY_ISP");
    p.lac.accept_call(now, lac_sid).unwrap();
    p.run();
    assert_eq!(
        p.lns_events.last(),
        Some(&Event::CallReplied { session: lns_sid })
    );
    p.lac.call_connected(now, lac_sid, 33600, 2).unwrap();
    p.run();
    assert!(
        matches!(p.lns_events.last(), Some(Event::CallEstablished { session, mode: CallMode::Raw, tx_speed: 33600, .. }) if *session == lns_sid)
    );

    // Data both ways.
    let mut d = Vec::new();
    p.lns.encode_data(lns_sid, b"hello", &mut d).unwrap();
    assert_eq!(
        p.lac.handle(now, &d).unwrap(),
        Some((lac_sid, &b"hello"[..]))
    );
    let mut d = Vec::new();
    p.lac.encode_data(lac_sid, b"world", &mut d).unwrap();
    assert_eq!(
        p.lns.handle(now, &d).unwrap(),
        Some((lns_sid, &b"world"[..]))
    );

    p.lac
        .disconnect_call(
            now,
            lac_sid,
            ResultCode::new(result::CDN_LOST_CARRIER, 0, "hangup"),
        )
        .unwrap();
    p.run();
    assert!(
        matches!(p.lns_events.last(), Some(Event::CallDisconnected { session, result: ResultCode { result: 1, .. }, local: false }) if *session == lns_sid)
    );
    assert_eq!(p.lns.session_count(), 0);
    assert_eq!(p.lac.session_count(), 0);
}

#[test]
fn refused_outgoing_call_gets_cdn_with_code() {
    let mut p = Pair::up(None, None);
    let now = p.now;
    let sid = p
        .lns
        .place_outgoing_call(now, "NOWHERE", CallMode::Ppp)
        .unwrap();
    p.run();
    let Some(Event::OutgoingCallRequest { session, .. }) = p.lac_events.last().cloned() else {
        panic!()
    };
    p.lac
        .disconnect_call(
            now,
            session,
            ResultCode::new(
                result::CDN_INVALID_DESTINATION,
                0,
                "unknown directory name NOWHERE",
            ),
        )
        .unwrap();
    p.run();
    assert!(matches!(
        p.lns_events.last(),
        Some(Event::CallDisconnected { session, result: ResultCode { result: 6, message: Some(m), .. }, .. }) if *session == sid && m.contains("NOWHERE")
    ));
}

#[test]
fn incoming_call_icrq_icrp_iccn() {
    let mut p = Pair::up(None, None);
    let now = p.now;
    let lac_sid = p
        .lac
        .place_incoming_call(now, Some("5550001"), Some("5559999"), None)
        .unwrap();
    p.run();
    let Some(Event::IncomingCallRequest {
        session: lns_sid,
        calling_number: Some(c),
        armed: false,
        ..
    }) = p.lns_events.last().cloned()
    else {
        panic!("{:?}", p.lns_events)
    };
    assert_eq!(c, "5550001");
    p.lns.accept_call(now, lns_sid).unwrap();
    p.run();
    assert_eq!(
        p.lac_events.last(),
        Some(&Event::CallReplied { session: lac_sid })
    );
    p.lac.call_connected(now, lac_sid, 9600, 2).unwrap();
    p.run();
    assert!(matches!(
        p.lns_events.last(),
        Some(Event::CallEstablished {
            mode: CallMode::Ppp,
            ..
        })
    ));
    let calls: Vec<String> = types(&p.wire)[4..]
        .iter()
        .filter(|t| *t != "ZLB")
        .cloned()
        .collect();
    assert_eq!(calls, ["Icrq", "Icrp", "Iccn"]);
}

#[test]
fn aicrq_arms_then_icrq_is_tied_to_it() {
    let mut p = Pair::up(None, None);
    let now = p.now;
    let lns_sid = p
        .lns
        .arm(now, Some("modem0"), Duration::from_secs(30), CallMode::Raw)
        .unwrap();
    p.run();
    let Some(Event::ArmRequest {
        session: lac_sid,
        line: Some(l),
        duration,
        mode: CallMode::Raw,
    }) = p.lac_events.last().cloned()
    else {
        panic!("{:?}", p.lac_events)
    };
    assert_eq!((l.as_str(), duration), ("modem0", Duration::from_secs(30)));
    p.lac.reply_arm(now, lac_sid, Ok(duration)).unwrap();
    p.run();
    assert_eq!(
        p.lns_events.last(),
        Some(&Event::ArmReply {
            session: lns_sid,
            result: Ok(())
        })
    );
    // The call rings: ICRQ carries the armed session.
    let s = p
        .lac
        .place_incoming_call(now, Some("outside"), None, Some(lac_sid))
        .unwrap();
    assert_eq!(s, lac_sid);
    p.run();
    assert_eq!(
        p.lns_events.last(),
        Some(&Event::IncomingCallRequest {
            session: lns_sid,
            calling_number: Some("outside".into()),
            called_number: None,
            armed: true
        })
    );
    p.lns.accept_call(now, lns_sid).unwrap();
    p.run();
    p.lac.call_connected(now, lac_sid, 33600, 2).unwrap();
    p.run();
    assert!(
        matches!(p.lns_events.last(), Some(Event::CallEstablished { session, mode: CallMode::Raw, .. }) if *session == lns_sid)
    );
}

#[test]
fn aicrq_refused_and_cancelled_and_expired() {
    let mut p = Pair::up(None, None);
    let now = p.now;
    // Refused.
    let a = p
        .lns
        .arm(now, None, Duration::from_secs(5), CallMode::Raw)
        .unwrap();
    p.run();
    let Some(Event::ArmRequest { session, .. }) = p.lac_events.last().cloned() else {
        panic!()
    };
    p.lac
        .reply_arm(
            now,
            session,
            Err(ResultCode::new(
                result::CDN_NO_FACILITIES_TEMP,
                0,
                "all lines busy",
            )),
        )
        .unwrap();
    p.run();
    assert!(
        matches!(p.lns_events.last(), Some(Event::ArmReply { session, result: Err(ResultCode { result: 4, .. }) }) if *session == a)
    );
    // Cancelled by the LNS.
    let b = p
        .lns
        .arm(now, None, Duration::from_secs(5), CallMode::Raw)
        .unwrap();
    p.run();
    let Some(Event::ArmRequest {
        session: lb,
        duration,
        ..
    }) = p.lac_events.last().cloned()
    else {
        panic!()
    };
    p.lac.reply_arm(now, lb, Ok(duration)).unwrap();
    p.run();
    p.lns
        .disconnect_call(now, b, ResultCode::new(result::CDN_ADMIN, 0, "cancel"))
        .unwrap();
    p.run();
    assert!(
        matches!(p.lac_events.last(), Some(Event::CallDisconnected { session, local: false, .. }) if *session == lb)
    );
    // Expired: the LAC clears it with result 10 after the armed duration.
    let c = p
        .lns
        .arm(now, None, Duration::from_secs(5), CallMode::Raw)
        .unwrap();
    p.run();
    let Some(Event::ArmRequest {
        session: lc,
        duration,
        ..
    }) = p.lac_events.last().cloned()
    else {
        panic!()
    };
    p.lac.reply_arm(now, lc, Ok(duration)).unwrap();
    p.run();
    p.tick();
    assert!(p.now >= now + Duration::from_secs(5));
    assert!(
        matches!(p.lns_events.last(), Some(Event::CallDisconnected { session, result: ResultCode { result: 10, .. }, .. }) if *session == c)
    );
}

#[test]
fn aicrq_needs_a_peer_that_echoed_the_extension() {
    let mut lac = cfg("lac", None, 2);
    lac.extension = None;
    let mut p = Pair::new(cfg("lns", None, 1), lac);
    p.run();
    assert!(matches!(
        &p.lns_events[0],
        Event::Connected {
            peer_extension: None,
            ..
        }
    ));
    assert!(p
        .lns
        .arm(p.now, None, Duration::from_secs(1), CallMode::Ppp)
        .is_err());
    assert!(
        p.lns
            .place_outgoing_call(p.now, "1", CallMode::Raw)
            .is_err(),
        "raw mode needs the extension"
    );
    // No vendor AVP went to the unaware peer after its SCCRP.
    let sccrp = &p.wire[1].1;
    let (_, body) = header::decode(sccrp).unwrap();
    let m = Message::decode(body, None).unwrap();
    assert!(!m.avps.iter().any(|a| matches!(a, Avp::Other { .. })));
}

#[test]
fn lost_messages_are_retransmitted_with_backoff() {
    let mut p = Pair::new(cfg("lns", Some("k"), 1), cfg("lac", Some("k"), 2));
    let start = p.now;
    p.drop = vec![1, 2, 4]; // SCCRQ, its first retransmission, then the SCCRP
    p.run();
    assert!(!p.lns.is_established());
    while !(p.lns.is_established() && p.lac.is_established()) {
        p.tick();
        assert!(p.now - start < Duration::from_secs(30));
    }
    // SCCRQ at 0 s (lost), again at 1 s (lost), again at 3 s; SCCRP lost once, resent at 4 s.
    assert_eq!(p.now - start, Duration::from_secs(4));
    // Each side delivered every message once: one Connected event.
    assert_eq!(
        p.lns_events
            .iter()
            .filter(|e| matches!(e, Event::Connected { .. }))
            .count(),
        1
    );
    assert_eq!(
        p.lac_events
            .iter()
            .filter(|e| matches!(e, Event::Connected { .. }))
            .count(),
        1
    );
}

#[test]
fn dead_peer_is_detected_after_retries() {
    let now = Instant::now();
    let mut t = Tunnel::connect(cfg("lns", None, 1), now);
    let mut sent_at = vec![];
    let mut clock = now;
    loop {
        while t.poll_transmit(clock).is_some() {
            sent_at.push((clock - now).as_secs());
        }
        let Some(next) = t.poll_timeout() else { break };
        clock = next;
        t.handle_timeout(clock);
        if t.is_finished() {
            break;
        }
    }
    assert_eq!(sent_at, [0, 1, 3, 7, 15, 23]);
    assert_eq!(
        t.poll_event(),
        Some(Event::Closed {
            reason: CloseReason::Timeout,
            result: None
        })
    );
}

#[test]
fn hello_keepalive_after_idle() {
    let mut p = Pair::up(None, None);
    let before = p.wire.len();
    p.tick();
    let t = types(&p.wire[before..]);
    // Both ends were idle for the same time, so each may send a HELLO; each is acked.
    let hellos = t.iter().filter(|x| *x == "Hello").count();
    let zlbs = t.iter().filter(|x| *x == "ZLB").count();
    assert!(hellos >= 1 && zlbs >= 1, "{t:?}");
    assert!(p.lns.is_established() && p.lac.is_established());
}

#[test]
fn stopccn_closes_both_sides() {
    let mut p = Pair::up(None, None);
    let now = p.now;
    p.lns
        .close(now, ResultCode::new(result::STOP_GENERAL_CLEAR, 0, "bye"));
    p.run();
    assert!(matches!(
        p.lac_events.last(),
        Some(Event::Closed {
            reason: CloseReason::Remote,
            result: Some(ResultCode { result: 1, .. })
        })
    ));
    assert_eq!(types(&p.wire).last().unwrap(), "ZLB");
}

#[test]
fn unknown_mandatory_avp_clears_the_tunnel_and_m0_is_ignored() {
    // M=0 unknown AVP in SCCRQ: ignored.
    let now = Instant::now();
    let mut lac = Tunnel::accept(cfg("lac", None, 2), now);
    let sccrq = |mandatory: bool| {
        let m = Message::new(
            MessageType::Sccrq,
            vec![
                Avp::ProtocolVersion {
                    version: 1,
                    revision: 0,
                },
                Avp::HostName(b"x".to_vec()),
                Avp::FramingCapabilities(3),
                Avp::AssignedTunnelId(5),
                Avp::Other {
                    vendor: 0,
                    attr: 300,
                    mandatory,
                    value: vec![1],
                },
            ],
        );
        let mut body = Vec::new();
        m.encode(&mut body, None).unwrap();
        let mut d = Vec::new();
        header::encode_control(&mut d, 0, 0, 0, 0, body.len());
        d.extend_from_slice(&body);
        d
    };
    lac.handle(now, &sccrq(false)).unwrap();
    let reply = lac.poll_transmit(now).unwrap();
    let (_, body) = header::decode(&reply).unwrap();
    assert_eq!(
        Message::decode(body, None).unwrap().message_type(),
        Some(MessageType::Sccrp)
    );

    let mut lac = Tunnel::accept(cfg("lac", None, 2), now);
    lac.handle(now, &sccrq(true)).unwrap();
    let reply = lac.poll_transmit(now).unwrap();
    let (h, body) = header::decode(&reply).unwrap();
    let m = Message::decode(body, None).unwrap();
    assert_eq!(h.tunnel, 5);
    assert_eq!(m.message_type(), Some(MessageType::StopCcn));
    assert!(m.avps.iter().any(|a| matches!(
        a,
        Avp::ResultCode(ResultCode {
            result: 2,
            error: Some(8),
            ..
        })
    )));
}

#[test]
fn hidden_avps_between_peers() {
    let mut a = cfg("lns", Some("s3cret"), 1);
    a.hide_avps = true;
    let mut b = cfg("lac", Some("s3cret"), 2);
    b.hide_avps = true;
    let mut p = Pair::new(a, b);
    p.run();
    assert!(p.lns.is_established() && p.lac.is_established());
    // The SCCRQ really carried H-bit AVPs.
    let (_, body) = header::decode(&p.wire[0].1).unwrap();
    let hidden = bulkhead_l2tp::avp::raw_avps(body)
        .filter(|a| a.as_ref().unwrap().hidden)
        .count();
    assert!(hidden >= 3, "{hidden}");
}

#[test]
fn tie_breaker_lower_wins() {
    let now = Instant::now();
    let pinned = |v: [u8; 8], seed| Config {
        tie_breaker_value: Some(v),
        ..cfg("a", None, seed)
    };
    let low = [0, 0, 0, 0, 0, 0, 0, 7];
    let high = [0, 0, 0, 0, 0, 0, 1, 0];
    let mut a = Tunnel::connect(pinned(low, 1), now);
    let mut b = Tunnel::connect(pinned(high, 2), now);
    // Each side reads the other's value off the wire.
    let from_a = sccrq_tie_breaker(&a.poll_transmit(now).unwrap());
    let from_b = sccrq_tie_breaker(&b.poll_transmit(now).unwrap());
    assert_eq!((from_a, from_b), (Some(low), Some(high)));
    assert_eq!(resolve_tie(a.tie_breaker(), from_b), Tie::KeepOurs);
    assert_eq!(resolve_tie(b.tie_breaker(), from_a), Tie::KeepTheirs);
    assert_eq!(resolve_tie(Some(low), Some(low)), Tie::DiscardBoth);
    // Only one side sent a value: its sender wins.
    assert_eq!(resolve_tie(Some(high), None), Tie::KeepOurs);
    assert_eq!(resolve_tie(None, Some(high)), Tie::KeepTheirs);
    assert_eq!(resolve_tie(None, None), Tie::KeepBoth);
    // The loser discards silently: no StopCCN, nothing further on the wire.
    b.discard();
    assert_eq!(
        b.poll_event(),
        Some(Event::Closed {
            reason: CloseReason::Discarded,
            result: None
        })
    );
    assert!(b.is_finished());
    assert_eq!(b.poll_transmit(now + Duration::from_secs(10)), None);
    b.handle_timeout(now + Duration::from_secs(10));
    assert_eq!(b.poll_transmit(now + Duration::from_secs(10)), None);
    // A responder and an initiator that sends none have no value to compare.
    let quiet = Tunnel::connect(
        Config {
            tie_breaker: false,
            ..cfg("q", None, 3)
        },
        now,
    );
    assert_eq!(quiet.tie_breaker(), None);
    assert_eq!(Tunnel::accept(cfg("r", None, 4), now).tie_breaker(), None);
}

#[test]
fn vendor_messages_use_the_configured_vendor_id() {
    let mut l = cfg("lns", None, 1);
    l.extension = Some(4242);
    let mut c = cfg("lac", None, 2);
    c.extension = Some(4242);
    let mut p = Pair::new(l, c);
    p.run();
    let now = p.now;
    p.lns
        .arm(now, None, Duration::from_secs(5), CallMode::Ppp)
        .unwrap();
    p.run();
    let (_, d) = p
        .wire
        .iter()
        .rev()
        .find(|(to_lac, d)| *to_lac && d.len() > 12)
        .unwrap();
    let (_, body) = header::decode(d).unwrap();
    let m = Message::decode(body, None).unwrap();
    assert_eq!(
        m.kind,
        bulkhead_l2tp::Kind::Vendor {
            vendor: 4242,
            value: ext::MSG_AICRQ
        }
    );
    assert!(!m.mandatory);
}

/// A seeded lossy link with explicit time: 20% loss, 10% duplicates, reordering.
/// Thirty calls still come up, each request delivered exactly once and in order.
#[test]
fn lossy_link_delivers_every_message_once_in_order() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut p = Pair::new(cfg("lns", Some("k"), 1), cfg("lac", Some("k"), 2));
    // In flight: (deliver at, to LAC?, datagram).
    let mut flight: Vec<(Instant, bool, Vec<u8>)> = Vec::new();
    let (mut dropped, mut duplicated) = (0, 0);
    let mut placed = Vec::new();
    let mut step = 0;
    let deadline = p.now + Duration::from_secs(3600);
    loop {
        // Sends go into the lossy link.
        for to_lac in [true, false] {
            loop {
                let d = if to_lac {
                    p.lns.poll_transmit(p.now)
                } else {
                    p.lac.poll_transmit(p.now)
                };
                let Some(d) = d else { break };
                if rng.gen_bool(0.2) {
                    dropped += 1;
                    continue;
                }
                let delay = Duration::from_millis(rng.gen_range(1..200));
                if rng.gen_bool(0.1) {
                    duplicated += 1;
                    flight.push((p.now + delay * 2, to_lac, d.clone()));
                }
                flight.push((p.now + delay, to_lac, d));
            }
        }
        while let Some(e) = p.lns.poll_event() {
            p.lns_events.push(e);
        }
        while let Some(e) = p.lac.poll_event() {
            if let Event::OutgoingCallRequest { session, .. } = &e {
                p.lac.accept_call(p.now, *session).unwrap();
                p.lac.call_connected(p.now, *session, 1200, 2).unwrap();
            }
            p.lac_events.push(e);
        }
        if p.lns.is_established() && placed.len() < 30 && step % 3 == 0 {
            let number = format!("{}", 1000 + placed.len());
            placed.push(
                p.lns
                    .place_outgoing_call(p.now, &number, CallMode::Raw)
                    .unwrap(),
            );
        }
        step += 1;
        let established = p
            .lns_events
            .iter()
            .filter(|e| matches!(e, Event::CallEstablished { .. }))
            .count();
        if established == 30 {
            break;
        }
        assert!(
            p.now < deadline,
            "calls never all came up ({established}/30)"
        );
        // Advance to the next arrival or timer.
        let next_arrival = flight.iter().map(|f| f.0).min();
        let next_timer = [p.lns.poll_timeout(), p.lac.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let next = [next_arrival, next_timer]
            .into_iter()
            .flatten()
            .min()
            .expect("something pending");
        p.now = p.now.max(next);
        let (due, rest): (Vec<_>, Vec<_>) = flight.into_iter().partition(|f| f.0 <= p.now);
        flight = rest;
        for (_, to_lac, d) in due {
            if to_lac {
                let _ = p.lac.handle(p.now, &d);
            } else {
                let _ = p.lns.handle(p.now, &d);
            }
        }
        p.lns.handle_timeout(p.now);
        p.lac.handle_timeout(p.now);
    }
    assert!(
        dropped > 10 && duplicated > 2,
        "the link was not lossy enough: {dropped} dropped, {duplicated} duplicated"
    );
    // Each OCRQ reached the LAC once, in the order placed.
    let numbers: Vec<String> = p
        .lac_events
        .iter()
        .filter_map(|e| {
            if let Event::OutgoingCallRequest { called_number, .. } = e {
                Some(called_number.clone())
            } else {
                None
            }
        })
        .collect();
    let expected: Vec<String> = (0..30).map(|i| format!("{}", 1000 + i)).collect();
    assert_eq!(numbers, expected);
    // Each call was established once, for the session that placed it.
    let sessions: Vec<u16> = p
        .lns_events
        .iter()
        .filter_map(|e| {
            if let Event::CallEstablished { session, .. } = e {
                Some(*session)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(sessions, placed);
    assert_eq!(
        p.lns_events
            .iter()
            .filter(|e| matches!(e, Event::Connected { .. }))
            .count(),
        1
    );
}

/// The AICRQ bytes are exactly what docs/l2tp.md documents.
#[test]
fn aicrq_wire_format_matches_the_docs() {
    let mut p = Pair::up(None, None);
    let now = p.now;
    let sid = p
        .lns
        .arm(now, Some("modem0"), Duration::from_secs(60), CallMode::Raw)
        .unwrap();
    let d = p.lns.poll_transmit(now).unwrap();
    assert_eq!(&d[..4], &[0xc8, 0x02, 0x00, 0x3a]);
    assert_eq!(&d[6..8], &[0, 0], "header Session ID 0");
    let s = sid.to_be_bytes();
    let expected: Vec<u8> = [
        &[0x00, 0x08, 0xfd, 0xe7, 0x00, 0x00, 0x00, 0x65][..],
        &[0x80, 0x08, 0x00, 0x00, 0x00, 0x0e, s[0], s[1]],
        &[0x00, 0x08, 0xfd, 0xe7, 0x04, 0x04, 0x00, 0x01],
        &[0x00, 0x0c, 0xfd, 0xe7, 0x04, 0x01],
        b"modem0",
        &[0x00, 0x0a, 0xfd, 0xe7, 0x04, 0x02, 0x00, 0x00, 0x00, 0x3c],
    ]
    .concat();
    assert_eq!(&d[12..], &expected[..]);
}
