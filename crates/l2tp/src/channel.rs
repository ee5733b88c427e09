//! The reliable control channel (RFC 2661 §5.8, Appendix A/B): Ns/Nr, ZLB acks,
//! duplicates re-acknowledged, out-of-order messages held within our receive window,
//! the peer's window with slow start, retransmission with backoff and a retry limit.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// `a` comes before `b` in sequence space (§5.8: the 32767 values before `b`).
pub fn seq_lt(a: u16, b: u16) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000
}

#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// Our receive window, advertised in SCCRQ/SCCRP.
    pub receive_window: u16,
    pub initial_timeout: Duration,
    pub max_timeout: Duration,
    /// Retransmissions of one message before the peer is declared gone.
    pub max_retransmits: u32,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            receive_window: 16,
            initial_timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(8),
            max_retransmits: 5,
        }
    }
}

struct Pending {
    ns: u16,
    session: u16,
    body: Vec<u8>,
    sent: bool,
}

/// What [`Channel::receive`] decided about an incoming message.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// In order: process it, then whatever [`Channel::pop_ready`] gives.
    Deliver,
    /// Already seen: dropped, an ack is due.
    Duplicate,
    /// Ahead of Nr: held until the gap fills.
    Held,
    /// Ahead of our window: dropped.
    Dropped,
    /// A ZLB: acks only.
    Ack,
}

/// One direction pair of the control connection's sequence state.
pub struct Channel {
    cfg: ChannelConfig,
    next_ns: u16,
    nr: u16,
    queue: VecDeque<Pending>,
    peer_window: u16,
    cwnd: f64,
    ssthresh: f64,
    deadline: Option<Instant>,
    retries: u32,
    ack_due: bool,
    held: BTreeMap<u16, (u16, Vec<u8>)>,
    failed: bool,
}

/// A datagram ready for the wire, minus the tunnel ID the caller fills in.
pub struct Outgoing<'a> {
    pub session: u16,
    pub ns: u16,
    pub nr: u16,
    /// Empty for a ZLB.
    pub body: &'a [u8],
}

impl Channel {
    pub fn new(cfg: ChannelConfig) -> Self {
        Channel {
            cfg,
            next_ns: 0,
            nr: 0,
            queue: VecDeque::new(),
            peer_window: 4,
            cwnd: 1.0,
            ssthresh: 4.0,
            deadline: None,
            retries: 0,
            ack_due: false,
            held: BTreeMap::new(),
            failed: false,
        }
    }

    pub fn config(&self) -> &ChannelConfig {
        &self.cfg
    }

    /// The peer's Receive Window Size AVP (absent = 4; 0 is invalid and ignored).
    pub fn set_peer_window(&mut self, w: u16) {
        if w > 0 {
            self.peer_window = w;
            self.ssthresh = w as f64;
        }
    }

    /// Queues a message body for reliable delivery.
    pub fn send(&mut self, session: u16, body: Vec<u8>) {
        let ns = self.next_ns;
        self.next_ns = self.next_ns.wrapping_add(1);
        self.queue.push_back(Pending {
            ns,
            session,
            body,
            sent: false,
        });
    }

    /// Takes the header's Ns/Nr of an incoming message (`zlb` when it has no body).
    pub fn receive(
        &mut self,
        now: Instant,
        ns: u16,
        nr: u16,
        zlb: bool,
        session: u16,
        body: &[u8],
    ) -> Received {
        self.ack(now, nr);
        if zlb {
            return Received::Ack;
        }
        self.ack_due = true;
        if ns == self.nr {
            self.nr = self.nr.wrapping_add(1);
            Received::Deliver
        } else if seq_lt(ns, self.nr) {
            Received::Duplicate
        } else if ns.wrapping_sub(self.nr) < self.cfg.receive_window {
            self.held.insert(ns, (session, body.to_vec()));
            Received::Held
        } else {
            Received::Dropped
        }
    }

    /// The next held message that is now in order, as (session, body).
    pub fn pop_ready(&mut self) -> Option<(u16, Vec<u8>)> {
        let v = self.held.remove(&self.nr)?;
        self.nr = self.nr.wrapping_add(1);
        Some(v)
    }

    /// Processes a peer's Nr: drops what it acknowledges.
    fn ack(&mut self, now: Instant, nr: u16) {
        let mut acked = 0;
        while let Some(p) = self.queue.front() {
            if p.sent && seq_lt(p.ns, nr) {
                self.queue.pop_front();
                acked += 1;
            } else {
                break;
            }
        }
        if acked > 0 {
            self.retries = 0;
            for _ in 0..acked {
                // Slow start below ssthresh, then congestion avoidance (Appendix A).
                self.cwnd += if self.cwnd < self.ssthresh {
                    1.0
                } else {
                    1.0 / self.cwnd
                };
            }
            self.cwnd = self.cwnd.min(self.peer_window as f64);
            self.deadline = self
                .queue
                .front()
                .filter(|p| p.sent)
                .map(|_| now + self.cfg.initial_timeout);
        }
    }

    /// The next datagram to send, if any: a new message inside the window, else a ZLB
    /// when an ack is owed.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Outgoing<'_>> {
        if self.failed {
            return None;
        }
        let window = (self.cwnd as usize).min(self.peer_window as usize).max(1);
        let idx = self.queue.iter().take(window).position(|p| !p.sent);
        if let Some(i) = idx {
            if self.deadline.is_none() {
                self.deadline = Some(now + self.timeout_for(self.retries));
            }
            self.ack_due = false;
            let nr = self.nr;
            let p = &mut self.queue[i];
            p.sent = true;
            return Some(Outgoing {
                session: p.session,
                ns: p.ns,
                nr,
                body: &p.body,
            });
        }
        if self.ack_due {
            self.ack_due = false;
            return Some(Outgoing {
                session: 0,
                ns: self.next_ns,
                nr: self.nr,
                body: &[],
            });
        }
        None
    }

    fn timeout_for(&self, retries: u32) -> Duration {
        (self.cfg.initial_timeout * 2u32.saturating_pow(retries)).min(self.cfg.max_timeout)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.failed {
            None
        } else {
            self.deadline
        }
    }

    /// Handles the retransmission timer. Returns false when the retry limit is reached.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        match self.deadline {
            Some(d) if d <= now => {}
            _ => return !self.failed,
        }
        if self.retries >= self.cfg.max_retransmits {
            self.failed = true;
            self.deadline = None;
            return false;
        }
        self.retries += 1;
        // Go back to the oldest unacknowledged message with a window of one.
        self.ssthresh = (self.cwnd / 2.0).max(1.0);
        self.cwnd = 1.0;
        for p in self.queue.iter_mut() {
            p.sent = false;
        }
        self.deadline = Some(now + self.timeout_for(self.retries));
        true
    }

    /// Everything sent has been acknowledged.
    pub fn idle(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Number of datagrams waiting or in flight.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// Drops everything queued (the tunnel is gone).
    pub fn clear(&mut self) {
        self.queue.clear();
        self.deadline = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn sequence_comparison_wraps() {
        assert!(seq_lt(1, 2));
        assert!(seq_lt(65535, 0));
        assert!(!seq_lt(2, 1));
        assert!(!seq_lt(5, 5));
        assert!(seq_lt(0, 32767));
        assert!(!seq_lt(0, 32768));
    }

    #[test]
    fn retransmits_with_backoff_then_gives_up() {
        let now = t0();
        let mut c = Channel::new(ChannelConfig::default());
        c.send(0, vec![1]);
        assert_eq!(c.poll_transmit(now).unwrap().ns, 0);
        assert!(c.poll_transmit(now).is_none());
        let mut at = now;
        let mut gaps = Vec::new();
        loop {
            let d = c.poll_timeout().unwrap();
            gaps.push((d - at).as_secs());
            at = d;
            if !c.handle_timeout(at) {
                break;
            }
            let o = c.poll_transmit(at).unwrap();
            assert_eq!(o.ns, 0, "retransmission keeps Ns");
        }
        assert_eq!(gaps, vec![1, 2, 4, 8, 8, 8]);
        assert!(c.failed());
    }

    #[test]
    fn duplicates_are_reacknowledged() {
        let now = t0();
        let mut c = Channel::new(ChannelConfig::default());
        assert_eq!(c.receive(now, 0, 0, false, 0, b"a"), Received::Deliver);
        let zlb = c.poll_transmit(now).unwrap();
        assert_eq!((zlb.nr, zlb.body.len()), (1, 0));
        assert_eq!(c.receive(now, 0, 0, false, 0, b"a"), Received::Duplicate);
        let zlb = c.poll_transmit(now).unwrap();
        assert_eq!((zlb.nr, zlb.body.len()), (1, 0));
    }

    #[test]
    fn out_of_order_is_held_and_released_in_order() {
        let now = t0();
        let mut c = Channel::new(ChannelConfig::default());
        assert_eq!(c.receive(now, 2, 0, false, 0, b"c"), Received::Held);
        assert_eq!(c.receive(now, 1, 0, false, 0, b"b"), Received::Held);
        assert!(c.pop_ready().is_none());
        assert_eq!(c.receive(now, 0, 0, false, 0, b"a"), Received::Deliver);
        assert_eq!(c.pop_ready().unwrap().1, b"b");
        assert_eq!(c.pop_ready().unwrap().1, b"c");
        assert!(c.pop_ready().is_none());
        assert_eq!(c.receive(now, 40, 0, false, 0, b"z"), Received::Dropped);
    }

    #[test]
    fn window_limits_messages_in_flight() {
        let now = t0();
        let mut c = Channel::new(ChannelConfig::default());
        c.set_peer_window(2);
        for i in 0..5 {
            c.send(0, vec![i]);
        }
        // Slow start: one message until the first ack.
        assert!(c.poll_transmit(now).is_some());
        assert!(c.poll_transmit(now).is_none());
        c.receive(now, 0, 1, true, 0, &[]);
        assert!(c.poll_transmit(now).is_some());
        assert!(c.poll_transmit(now).is_some());
        assert!(c.poll_transmit(now).is_none(), "window of 2 is full");
        c.receive(now, 0, 3, true, 0, &[]);
        assert_eq!(c.pending(), 2);
    }
}
