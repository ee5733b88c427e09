//! Back-pressure on a session's data: a far end floods a call whose owner does not
//! read. What the driver holds for the owner stays bounded, the data that was queued
//! comes out in order before the far end's hang-up, and hang-ups still go through both
//! ways. The far end is a scripted peer on the sans-I/O core, so it sends as fast as
//! it likes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bulkhead_l2tp::tunnel::{BEARER_ANALOG, FRAMING_ASYNC};
use bulkhead_l2tp::{result, CallMode, Config, Event, ResultCode, Tunnel};
use bulkhead_l2tp_share::driver::{self, SessionMsg, SessionRx, TunnelHandle, SESSION_DATA_QUEUE};
use tokio::net::UdpSocket;

const WAIT: Duration = Duration::from_secs(60);
/// Far more than the session queue and the socket buffer hold.
const FLOOD: u32 = 3000;

/// The far end (the LAC): one tunnel on one socket, driven by the test.
struct Far {
    sock: UdpSocket,
    tunnel: Tunnel,
    near: Option<SocketAddr>,
    buf: Vec<u8>,
}

impl Far {
    async fn new() -> Far {
        let cfg = Config {
            host_name: "far".into(),
            bearer_caps: BEARER_ANALOG,
            ..Config::default()
        };
        Far {
            sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            tunnel: Tunnel::accept(cfg, Instant::now()),
            near: None,
            buf: vec![0; 65536],
        }
    }

    async fn flush(&mut self) {
        while let Some(d) = self.tunnel.poll_transmit(Instant::now()) {
            self.sock.send_to(&d, self.near.unwrap()).await.unwrap();
        }
    }

    /// One datagram or timer; the events it brought.
    async fn step(&mut self) -> Vec<Event> {
        let timer = self.tunnel.poll_timeout();
        tokio::select! {
            r = self.sock.recv_from(&mut self.buf) => {
                let (n, from) = r.unwrap();
                self.near = Some(from);
                // Data from the near end is not looked at.
                let _ = self.tunnel.handle(Instant::now(), &self.buf[..n]);
            }
            _ = async {
                match timer {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            } => self.tunnel.handle_timeout(Instant::now()),
        }
        self.flush().await;
        std::iter::from_fn(|| self.tunnel.poll_event()).collect()
    }

    /// Steps until `pick` finds its event, within [`WAIT`].
    async fn until<T>(&mut self, what: &str, mut pick: impl FnMut(Event) -> Option<T>) -> T {
        let end = tokio::time::Instant::now() + WAIT;
        loop {
            let events = tokio::time::timeout_at(end, self.step())
                .await
                .unwrap_or_else(|_| panic!("far end: no {what} within {WAIT:?}"));
            if let Some(t) = events.into_iter().find_map(&mut pick) {
                return t;
            }
        }
    }

    /// Sends `count` data messages on `session`, each carrying its index.
    async fn flood(&mut self, session: u16, count: u32) {
        let mut out = Vec::new();
        for i in 0..count {
            let mut payload = vec![0x5a; 1000];
            payload[..4].copy_from_slice(&i.to_be_bytes());
            out.clear();
            self.tunnel
                .encode_data(session, &payload, &mut out)
                .unwrap();
            self.sock.send_to(&out, self.near.unwrap()).await.unwrap();
            if i % 32 == 0 {
                // Let the near end's task run, as a real sender would.
                tokio::task::yield_now().await;
            }
        }
    }
}

/// The near end (the LNS, on the driver) with a tunnel up to the far end.
async fn tunnel(far: &mut Far) -> TunnelHandle {
    let cfg = Config {
        host_name: "near".into(),
        ..Config::default()
    };
    let addr = far.sock.local_addr().unwrap();
    let dialing = driver::dial(Tunnel::connect(cfg, Instant::now()), addr)
        .await
        .unwrap();
    far.until("Connected", |e| {
        matches!(e, Event::Connected { .. }).then_some(())
    })
    .await;
    let (handle, _events, _) = dialing.established(WAIT).await.unwrap();
    handle
}

/// Places a call from the near end and connects it at the far end:
/// (near session, far session, near receiver).
async fn call(far: &mut Far, handle: &TunnelHandle) -> (u16, u16, SessionRx) {
    let (near, mut rx) = handle.place_outgoing("555", CallMode::Raw).await.unwrap();
    let far_session = far
        .until("OCRQ", |e| match e {
            Event::OutgoingCallRequest { session, .. } => Some(session),
            _ => None,
        })
        .await;
    let now = Instant::now();
    far.tunnel.accept_call(now, far_session).unwrap();
    far.tunnel
        .call_connected(now, far_session, 33600, FRAMING_ASYNC)
        .unwrap();
    far.flush().await;
    tokio::time::timeout(WAIT, async {
        loop {
            match rx.recv().await {
                Some(SessionMsg::Event(Event::CallEstablished { .. })) => break,
                Some(SessionMsg::Event(Event::CallDisconnected { result, .. })) => {
                    panic!("call refused: {result}")
                }
                Some(_) => {}
                None => panic!("tunnel gone"),
            }
        }
    })
    .await
    .expect("call established");
    (near, far_session, rx)
}

fn index(d: &[u8]) -> u32 {
    u32::from_be_bytes(d[..4].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_the_owner_does_not_read_stays_bounded_and_the_far_hang_up_arrives() {
    let mut far = Far::new().await;
    let handle = tunnel(&mut far).await;
    let (_, far_session, mut rx) = call(&mut far, &handle).await;

    far.flood(far_session, FLOOD).await;
    let rc = ResultCode::new(result::CDN_ADMIN, 0, "far end hangs up");
    far.tunnel
        .disconnect_call(Instant::now(), far_session, rc)
        .unwrap();
    far.flush().await;
    // The near end acknowledges the CDN sent after the flood: it got past the data
    // although nobody reads it.
    let end = tokio::time::Instant::now() + WAIT;
    while !far.tunnel.all_acked() {
        tokio::time::timeout_at(end, far.step())
            .await
            .expect("the near end acknowledges the CDN behind the flood");
    }
    let queued = rx.len();
    assert!(
        queued <= SESSION_DATA_QUEUE,
        "{queued} data messages held for an owner that does not read (bound {SESSION_DATA_QUEUE})"
    );

    // What was queued comes out in order, then the far end's hang-up, then nothing.
    let mut got = Vec::new();
    let result = loop {
        match tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("session message")
        {
            Some(SessionMsg::Data(d)) => got.push(index(&d)),
            Some(SessionMsg::Event(Event::CallDisconnected { result, local, .. })) => {
                assert!(!local);
                break result;
            }
            Some(SessionMsg::Event(e)) => panic!("unexpected {e:?}"),
            None => panic!("session ended without its hang-up"),
        }
    };
    assert_eq!(result.result, result::CDN_ADMIN, "{result}");
    assert_eq!(got.len(), queued);
    assert_eq!(got.first(), Some(&0), "the first data message was lost");
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "data out of order: {got:?}"
    );
    assert!(rx.recv().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_hang_up_goes_out_while_the_session_queue_is_full() {
    let mut far = Far::new().await;
    let handle = tunnel(&mut far).await;
    let (near_session, far_session, rx) = call(&mut far, &handle).await;
    // A second call on the same tunnel, read as it comes.
    let (_, far_other, mut other_rx) = call(&mut far, &handle).await;

    far.flood(far_session, FLOOD).await;
    tokio::time::timeout(WAIT, async {
        while rx.len() < SESSION_DATA_QUEUE {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the session queue fills");

    handle.disconnect(
        near_session,
        ResultCode::new(result::CDN_ADMIN, 0, "near end hangs up"),
    );
    let (session, result) = far
        .until("CDN from the near end", |e| match e {
            Event::CallDisconnected {
                session, result, ..
            } => Some((session, result)),
            _ => None,
        })
        .await;
    assert_eq!(session, far_session);
    assert_eq!(result.result, result::CDN_ADMIN, "{result}");

    // The tunnel still carries the other call's data.
    far.flood(far_other, 1).await;
    match tokio::time::timeout(WAIT, other_rx.recv())
        .await
        .expect("data")
    {
        Some(SessionMsg::Data(d)) => assert_eq!(index(&d), 0),
        other => panic!("expected data, got {other:?}"),
    }
    drop(rx);
}
