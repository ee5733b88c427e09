//! Simultaneous tunnel opening (RFC 2661 §4.4.3): a device forwards its rings to a
//! fixed LNS, and that LNS opens a tunnel to the server at the same moment. The LNS
//! here is a scripted peer built on the sans-I/O core, so the Tie Breakers are chosen.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bulkhead_l2tp::tunnel::sccrq_tie_breaker;
use bulkhead_l2tp::{header, Config, Event, Message, MessageType, Tunnel};
use bulkhead_l2tp_share::server::{self, Running};
use common::*;
use tokio::net::{TcpStream, UdpSocket};

const WAIT: Duration = Duration::from_secs(60);

fn lns_config(tie_breaker: Option<[u8; 8]>) -> Config {
    Config {
        host_name: "lns".into(),
        secret: Some(b"s3cret".to_vec()),
        tie_breaker_value: tie_breaker,
        ..Config::default()
    }
}

enum Got {
    Event(usize, Event),
    /// A datagram for none of our tunnels (the server's SCCRQs).
    Stray(SocketAddr, Vec<u8>),
}

/// The scripted LNS: one UDP socket, the tunnels it runs, and every datagram it saw.
struct Peer {
    sock: UdpSocket,
    tunnels: Vec<(Tunnel, SocketAddr)>,
    /// (tunnel ID in the header, from, datagram) of every datagram received.
    seen: Vec<(u16, SocketAddr, Vec<u8>)>,
}

impl Peer {
    async fn bind(ip: &str) -> Peer {
        Peer {
            sock: UdpSocket::bind(format!("{ip}:0")).await.unwrap(),
            tunnels: Vec::new(),
            seen: Vec::new(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// Adds a tunnel talking to `to`; returns its index.
    async fn add(&mut self, t: Tunnel, to: SocketAddr) -> usize {
        self.tunnels.push((t, to));
        self.flush().await;
        self.tunnels.len() - 1
    }

    /// Answers an SCCRQ that arrived as a stray datagram.
    async fn answer(&mut self, sccrq: &[u8], from: SocketAddr) -> usize {
        let mut t = Tunnel::accept(lns_config(None), Instant::now());
        t.handle(Instant::now(), sccrq).unwrap();
        self.add(t, from).await
    }

    async fn flush(&mut self) {
        for (t, to) in &mut self.tunnels {
            while let Some(d) = t.poll_transmit(Instant::now()) {
                self.sock.send_to(&d, *to).await.unwrap();
            }
        }
    }

    /// Waits for one datagram or timer; returns what it brought.
    async fn step(&mut self) -> Vec<Got> {
        let deadline = self
            .tunnels
            .iter()
            .filter_map(|(t, _)| t.poll_timeout())
            .min();
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let mut buf = vec![0u8; 65536];
        let mut out = Vec::new();
        tokio::select! {
            r = self.sock.recv_from(&mut buf) => {
                let (n, from) = r.unwrap();
                let d = &buf[..n];
                let tid = header::peek_tunnel_id(d).unwrap();
                self.seen.push((tid, from, d.to_vec()));
                match self.tunnels.iter_mut().find(|(t, _)| tid != 0 && t.local_id() == tid) {
                    Some((t, _)) => {
                        let _ = t.handle(Instant::now(), d);
                    }
                    None => out.push(Got::Stray(from, d.to_vec())),
                }
            }
            _ = timer => {
                for (t, _) in &mut self.tunnels {
                    t.handle_timeout(Instant::now());
                }
            }
        }
        self.flush().await;
        for (i, (t, _)) in self.tunnels.iter_mut().enumerate() {
            while let Some(e) = t.poll_event() {
                out.push(Got::Event(i, e));
            }
        }
        out
    }

    /// Steps until `pick` returns something, within [`WAIT`].
    async fn until<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&mut Peer, Got) -> Option<T>,
    ) -> T {
        let end = tokio::time::Instant::now() + WAIT;
        loop {
            let got = tokio::time::timeout_at(end, self.step())
                .await
                .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"));
            for g in got {
                if let Some(t) = pick(self, g) {
                    return t;
                }
            }
        }
    }

    /// The next SCCRQ from the server: (from, datagram).
    async fn sccrq(&mut self) -> (SocketAddr, Vec<u8>) {
        self.until("SCCRQ from the server", |_, g| match g {
            Got::Stray(from, d) if sccrq_tie_breaker(&d).is_some() => Some((from, d)),
            _ => None,
        })
        .await
    }

    /// Accepts the server's ICRQ on tunnel `i` and waits for its ICCN.
    async fn take_call(&mut self, i: usize) {
        let session = self
            .until("ICRQ", |_, g| match g {
                Got::Event(j, Event::IncomingCallRequest { session, .. }) => {
                    assert_eq!(j, i, "the ICRQ came on the wrong tunnel");
                    Some(session)
                }
                _ => None,
            })
            .await;
        self.tunnels[i]
            .0
            .accept_call(Instant::now(), session)
            .unwrap();
        self.flush().await;
        self.until("ICCN", |_, g| match g {
            Got::Event(j, Event::CallEstablished { session: s, .. }) => {
                assert_eq!((j, s), (i, session));
                Some(())
            }
            Got::Event(_, e @ Event::CallDisconnected { .. }) => panic!("call failed: {e:?}"),
            _ => None,
        })
        .await;
    }
}

struct Bed {
    _dir: tempfile::TempDir,
    srv: Running,
    lns: Peer,
    /// The outside caller; kept so the modem keeps ringing.
    _caller: TcpStream,
}

/// A server whose device forwards rings to the scripted LNS, and a ring on it.
async fn bed() -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let lns = Peer::bind("127.0.0.1").await;
    let (tty, ring) = modem(dir.path(), "ttyF", vec![]).await;
    let mut dev = device("fwd0", tty, false, true);
    dev.forward_incoming = Some(lns.addr());
    let profile = server_profile("127.0.0.1:0".parse().unwrap(), vec![dev], &[]);
    let srv = server::start(profile).await.unwrap();
    let caller = TcpStream::connect(ring).await.unwrap();
    Bed {
        _dir: dir,
        srv,
        lns,
        _caller: caller,
    }
}

impl Bed {
    /// Opens our own tunnel to the server with Tie Breaker `value` while the server's
    /// SCCRQ to us is unanswered; returns its index in `lns.tunnels`.
    async fn cross(&mut self, value: [u8; 8]) -> usize {
        let server = self.srv.addrs[0];
        let t = Tunnel::connect(lns_config(Some(value)), Instant::now());
        self.lns.add(t, server).await
    }
}

/// Proves that the server's listen loop has dealt with everything sent to it before:
/// it handles datagrams in order, so an SCCRQ from another address answered means the
/// earlier one was settled. (127.0.0.2 is another peer: no tie with it.)
async fn listen_loop_passed(server: SocketAddr) {
    let mut probe = Peer::bind("127.0.0.2").await;
    probe
        .add(Tunnel::connect(lns_config(None), Instant::now()), server)
        .await;
    probe
        .until("the probe's tunnel", |_, g| match g {
            Got::Event(0, Event::Connected { .. }) => Some(()),
            _ => None,
        })
        .await;
}

fn message_type(d: &[u8]) -> Option<MessageType> {
    let (_, body) = header::decode(d).ok()?;
    Message::decode(body, Some(b"s3cret")).ok()?.message_type()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn their_lower_tie_breaker_wins_and_carries_the_call() {
    let mut b = bed().await;
    let (ours_from, first) = b.lns.sccrq().await;
    assert_ne!(sccrq_tie_breaker(&first), Some([0; 8]));
    let mine = b.cross([0; 8]).await;
    // The server answers ours, drops its own without a word, and sends the forwarded
    // call through the tunnel we opened.
    b.lns.take_call(mine).await;
    // Its abandoned tunnel only ever sent its SCCRQ (no StopCCN).
    for (_, from, d) in &b.lns.seen {
        if *from == ours_from {
            assert_eq!(message_type(d), Some(MessageType::Sccrq));
        }
    }
    b.srv.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_lower_tie_breaker_wins_and_theirs_is_ignored() {
    let mut b = bed().await;
    let (ours_from, sccrq) = b.lns.sccrq().await;
    assert_ne!(sccrq_tie_breaker(&sccrq), Some([0xff; 8]));
    let mine = b.cross([0xff; 8]).await;
    let mine_id = b.lns.tunnels[mine].0.local_id();
    listen_loop_passed(b.srv.addrs[0]).await;
    // We lost: drop ours silently and answer the server's SCCRQ.
    b.lns.tunnels[mine].0.discard();
    let answered = b.lns.answer(&sccrq, ours_from).await;
    b.lns.take_call(answered).await;
    assert!(
        b.lns.seen.iter().all(|(tid, _, _)| *tid != mine_id),
        "the server answered the SCCRQ that lost the tie"
    );
    b.srv.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_tie_breakers_drop_both_and_the_server_tries_again() {
    let mut b = bed().await;
    let (first_from, first) = b.lns.sccrq().await;
    let value = sccrq_tie_breaker(&first).unwrap();
    let mine = b.cross(value).await;
    let mine_id = b.lns.tunnels[mine].0.local_id();
    listen_loop_passed(b.srv.addrs[0]).await;
    b.lns.tunnels[mine].0.discard();
    // The server's next SCCRQ is a new tunnel (new socket, new value), not a retry.
    let (from, sccrq) = loop {
        let (from, d) = b.lns.sccrq().await;
        if from != first_from {
            break (from, d);
        }
        assert_eq!(message_type(&d), Some(MessageType::Sccrq));
    };
    assert_ne!(sccrq_tie_breaker(&sccrq), Some(value));
    let answered = b.lns.answer(&sccrq, from).await;
    b.lns.take_call(answered).await;
    assert!(b.lns.seen.iter().all(|(tid, _, _)| *tid != mine_id));
    b.srv.abort();
}
