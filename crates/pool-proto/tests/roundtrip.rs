//! Property tests: every valid frame encodes and decodes back equal however the
//! bytes are split; arbitrary bytes never panic the decoder nor make it hold more
//! than one frame.
use bulkhead_pool_proto::*;
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9._@-]{0,63}"
}

fn frame() -> impl Strategy<Value = Frame> {
    let known_reason = (1u8..=10).prop_map(RefuseReason::from_code);
    let any_reason = prop_oneof![known_reason, (11u8..).prop_map(RefuseReason::Other)];
    let code = prop_oneof![
        (1u8..=5).prop_map(ErrorCode::from_code),
        (6u8..).prop_map(ErrorCode::Other)
    ];
    prop_oneof![
        (1u16..10, 0u16..10).prop_map(|(a, d)| Frame::Hello {
            min_version: a,
            max_version: a + d
        }),
        any::<u16>().prop_map(|version| Frame::Welcome { version }),
        (name(), name(), "[!-~]{0,128}", 0..=MAX_WAIT_MS).prop_map(
            |(program, user, credential, wait_ms)| Frame::Allocate(Allocate {
                program,
                user,
                credential,
                wait_ms
            })
        ),
        (1u64..).prop_map(|s| Frame::Allocated {
            session: SessionId(s)
        }),
        (any_reason, ".{0,100}").prop_filter_map("message bound", |(reason, message)| {
            (message.len() <= MAX_MESSAGE_LEN).then_some(Frame::Refused { reason, message })
        }),
        (code, ".{0,100}").prop_filter_map("message bound", |(code, message)| {
            (message.len() <= MAX_MESSAGE_LEN).then_some(Frame::Error { code, message })
        }),
        proptest::collection::vec(any::<u8>(), 0..2048).prop_map(Frame::Data),
        any::<bool>().prop_map(|confirm| Frame::Deallocate { confirm }),
        Just(Frame::Confirmed),
    ]
}

proptest! {
    #[test]
    fn frames_round_trip_across_any_split(
        frames in proptest::collection::vec(frame(), 1..8),
        cuts in proptest::collection::vec(1usize..64, 1..64),
    ) {
        let mut bytes = Vec::new();
        for f in &frames {
            f.encode(&mut bytes).unwrap();
        }
        let mut d = Decoder::new();
        let mut got = Vec::new();
        let mut rest = &bytes[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            i += 1;
            let mut chunk = &rest[..n];
            while !chunk.is_empty() {
                if let Some(f) = d.decode(&mut chunk).unwrap() {
                    got.push(f);
                }
            }
            rest = &rest[n..];
        }
        prop_assert_eq!(got, frames);
        prop_assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096)
    ) {
        let mut d = Decoder::new();
        let mut input = &bytes[..];
        while !input.is_empty() {
            let before = input.len();
            match d.decode(&mut input) {
                Ok(Some(f)) => {
                    // Whatever decodes is valid and re-encodes to the bytes it came from.
                    let again = f.to_bytes().unwrap();
                    let consumed = &bytes[bytes.len() - before..bytes.len() - input.len()];
                    prop_assert!(consumed.ends_with(&again));
                }
                Ok(None) => prop_assert!(input.is_empty()),
                Err(_) => break,
            }
            prop_assert!(d.buffered() <= HEADER_LEN + MAX_FRAME_LEN);
        }
    }

    #[test]
    fn session_line_round_trips(session in 1u64.., program in name(), alt in name()) {
        let l = SessionLine { session: SessionId(session), program, alternate_id: alt };
        let text = l.encode().unwrap();
        prop_assert!(text.len() <= MAX_SESSION_LINE_LEN);
        prop_assert_eq!(SessionLine::parse(text.as_bytes()).unwrap(), l);
    }
}

proptest! {
    /// Valid frames with one byte changed: decode to something valid or a clean error.
    #[test]
    fn mutated_frames_decode_or_fail_cleanly(f in frame(), at in any::<prop::sample::Index>(), b in any::<u8>()) {
        let mut bytes = f.to_bytes().unwrap();
        let i = at.index(bytes.len());
        bytes[i] = b;
        let mut d = Decoder::new();
        let mut input = &bytes[..];
        if let Ok(Some(g)) = d.decode(&mut input) {
            prop_assert!(g.validate().is_ok());
        }
        prop_assert!(d.buffered() <= HEADER_LEN + MAX_FRAME_LEN);
    }
}

proptest! {
    /// Both ends run the same table: whatever one end may send, the other accepts,
    /// and they agree on the state afterwards; whatever it may not send changes nothing.
    #[test]
    fn both_ends_agree_on_every_state(steps in proptest::collection::vec((any::<bool>(), frame()), 1..40)) {
        let mut c = Connection::client();
        let mut s = Connection::server();
        let hello = c.take_transmit();
        s.recv(&mut &hello[..]).unwrap();
        let welcome = s.take_transmit();
        c.recv(&mut &welcome[..]).unwrap();
        for (from_client, f) in steps {
            let (tx, rx) = if from_client { (&mut c, &mut s) } else { (&mut s, &mut c) };
            let before = tx.state();
            if tx.send(&f).is_err() {
                prop_assert_eq!(tx.state(), before);
                prop_assert!(!tx.has_transmit());
                continue;
            }
            let bytes = tx.take_transmit();
            let mut input = &bytes[..];
            prop_assert_eq!(rx.recv(&mut input), Ok(Some(f)));
            prop_assert!(input.is_empty());
            prop_assert_eq!(c.state(), s.state());
            if c.state() == State::Closed {
                break;
            }
        }
    }
}
