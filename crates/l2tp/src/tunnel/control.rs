//! The control connection (§5.1, §5.5, §5.7): SCCRQ/SCCRP/SCCCN with the challenge,
//! reliable delivery through [`Channel`], Hello, StopCCN, timers, and the entry point
//! for every datagram, which hands session and vendor messages on.

use std::time::Instant;

use md5::{Digest, Md5};
use rand::Rng;

use super::{CloseReason, Event, State, Tunnel, TunnelError, OUR_CAPS};
use crate::avp::ResultCode;
use crate::channel::Received;
use crate::message::{Hiding, Kind};
use crate::result::*;
use crate::{ext, find_avp, header, Avp, Message, MessageType};

impl Tunnel {
    pub(super) fn sccr_avps(&self) -> Vec<Avp> {
        let mut v = vec![
            Avp::ProtocolVersion {
                version: 1,
                revision: 0,
            },
            Avp::HostName(self.cfg.host_name.as_bytes().to_vec()),
            Avp::FramingCapabilities(self.cfg.framing_caps),
        ];
        if self.cfg.bearer_caps != 0 {
            v.push(Avp::BearerCapabilities(self.cfg.bearer_caps));
        }
        v.push(Avp::AssignedTunnelId(self.local_id));
        v.push(Avp::ReceiveWindowSize(self.cfg.channel.receive_window));
        v.push(Avp::FirmwareRevision(self.cfg.firmware_revision));
        v.push(Avp::VendorName(self.cfg.vendor_name.as_bytes().to_vec()));
        if let Some(c) = &self.our_challenge {
            v.push(Avp::Challenge(c.clone()));
        }
        v
    }

    pub(super) fn send(&mut self, session: u16, msg: Message) {
        let mut body = Vec::new();
        let hide = match (&self.cfg.secret, self.cfg.hide_avps) {
            (Some(s), true) => {
                let pad_len = self.rng.gen_range(0..8);
                let pad: Vec<u8> = (0..pad_len).map(|_| self.rng.gen()).collect();
                Some((s.clone(), self.rng.gen::<[u8; 16]>(), pad))
            }
            _ => None,
        };
        let hiding = hide.as_ref().map(|(s, rv, pad)| Hiding {
            secret: s,
            random_vector: *rv,
            pad,
        });
        // Our own messages are always within limits; an error here is a bug.
        msg.encode(&mut body, hiding.as_ref())
            .expect("encode control message");
        tracing::debug!(tunnel = self.local_id, kind = ?msg.kind, session, "send");
        self.channel.send(session, body);
    }

    /// The next datagram to put on the wire.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.state == State::Closed {
            return None;
        }
        let peer = self.peer_id;
        let o = self.channel.poll_transmit(now)?;
        let mut out = Vec::with_capacity(header::CONTROL_HEADER_LEN + o.body.len());
        header::encode_control(&mut out, peer, o.session, o.ns, o.nr, o.body.len());
        out.extend_from_slice(o.body);
        Some(out)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Tunnel::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.channel.poll_timeout();
        let mut consider = |d: Option<Instant>| {
            if let Some(d) = d {
                t = Some(t.map_or(d, |x: Instant| x.min(d)));
            }
        };
        match self.state {
            State::Closed => return None,
            State::Closing { until } => consider(Some(until)),
            State::Established => {
                consider(self.hello_at);
                for s in self.sessions.values() {
                    consider(s.arm_deadline);
                }
            }
            _ => {}
        }
        t
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.channel.handle_timeout(now) {
            if let State::Closing { .. } = self.state {
                self.state = State::Closed;
            } else {
                self.fail(CloseReason::Timeout, None);
            }
            return;
        }
        match self.state {
            State::Closing { until } if until <= now => {
                self.state = State::Closed;
                self.channel.clear();
            }
            State::Established => {
                if self.hello_at.is_some_and(|h| h <= now) {
                    self.hello_at = Some(now + self.cfg.hello_interval);
                    if self.channel.idle() {
                        self.send(0, Message::new(MessageType::Hello, vec![]));
                    }
                }
                let expired: Vec<u16> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.arm_deadline.is_some_and(|d| d <= now))
                    .map(|(id, _)| *id)
                    .collect();
                for id in expired {
                    let rc = ResultCode::new(CDN_TIMEOUT, ERR_NONE, "armed request expired");
                    let _ = self.disconnect_call(now, id, rc);
                }
            }
            _ => {}
        }
    }

    fn fail(&mut self, reason: CloseReason, result: Option<ResultCode>) {
        self.state = State::Closed;
        self.channel.clear();
        self.sessions.clear();
        self.events.push_back(Event::Closed { reason, result });
    }

    /// Clears the tunnel with StopCCN (§5.7); state lingers to re-ack it.
    pub fn close(&mut self, now: Instant, result: ResultCode) {
        if matches!(self.state, State::Closing { .. } | State::Closed) {
            return;
        }
        if self.state == State::Listen && self.peer_id == 0 {
            self.state = State::Closed;
            return;
        }
        self.send(
            0,
            Message::new(
                MessageType::StopCcn,
                vec![
                    Avp::AssignedTunnelId(self.local_id),
                    Avp::ResultCode(result.clone()),
                ],
            ),
        );
        self.sessions.clear();
        self.state = State::Closing {
            until: now + self.cfg.linger,
        };
        self.events.push_back(Event::Closed {
            reason: CloseReason::Local,
            result: Some(result),
        });
    }

    /// Forgets the tunnel without a StopCCN: what the loser of a tie must do (§4.4.3,
    /// "silently discard"). Nothing more is sent; `Closed { Discarded }` is reported.
    pub fn discard(&mut self) {
        if self.state != State::Closed {
            self.fail(CloseReason::Discarded, None);
        }
    }

    /// Takes one datagram from the peer. Data messages come back as
    /// `(local session ID, payload)`; control messages become events and replies.
    pub fn handle<'a>(
        &mut self,
        now: Instant,
        buf: &'a [u8],
    ) -> Result<Option<(u16, &'a [u8])>, TunnelError> {
        let (h, body) = header::decode(buf)?;
        if h.tunnel != self.local_id && !(h.tunnel == 0 && self.state == State::Listen) {
            return Err(TunnelError::WrongTunnel(h.tunnel));
        }
        if self.state == State::Closed {
            return Ok(None);
        }
        if self.state == State::Established {
            self.hello_at = Some(now + self.cfg.hello_interval);
        }
        if !h.control {
            return Ok(self.data(h, body));
        }
        let (ns, nr) = h.seq.expect("control header has Ns/Nr");
        // Decode before sequencing so garbage never consumes a sequence number.
        let msg = if body.is_empty() {
            None
        } else {
            Some(Message::decode(body, self.cfg.secret.as_deref()))
        };
        if let Some(Err(e)) = &msg {
            if self.state == State::Listen {
                return Err(e.clone().into());
            }
        }
        if self.state == State::Listen
            && !matches!(&msg, Some(Ok(m)) if m.message_type() == Some(MessageType::Sccrq))
        {
            return Err(TunnelError::NotEstablished);
        }
        match self
            .channel
            .receive(now, ns, nr, body.is_empty(), h.session, body)
        {
            Received::Deliver => {}
            _ => return Ok(None),
        }
        match msg {
            Some(Ok(m)) => self.on_message(now, h.session, m),
            Some(Err(e)) => {
                let rc = ResultCode::new(
                    STOP_GENERAL_ERROR,
                    ERR_LENGTH,
                    format!("malformed message: {e}"),
                );
                self.close(now, rc);
            }
            None => {}
        }
        while let Some((session, body)) = self.channel.pop_ready() {
            match Message::decode(&body, self.cfg.secret.as_deref()) {
                Ok(m) => self.on_message(now, session, m),
                Err(e) => {
                    self.close(
                        now,
                        ResultCode::new(
                            STOP_GENERAL_ERROR,
                            ERR_LENGTH,
                            format!("malformed message: {e}"),
                        ),
                    );
                }
            }
        }
        Ok(None)
    }

    pub(super) fn stop(&mut self, now: Instant, result: u16, error: u16, msg: impl Into<String>) {
        let rc = ResultCode::new(result, error, msg);
        tracing::warn!(tunnel = self.local_id, %rc, "clearing tunnel");
        self.close(now, rc);
    }

    fn on_message(&mut self, now: Instant, hsession: u16, m: Message) {
        tracing::debug!(tunnel = self.local_id, kind = ?m.kind, session = hsession, "recv");
        let t = match m.kind {
            Kind::Ietf(t) => t,
            Kind::Vendor { vendor, value } if Some(vendor) == self.cfg.extension => {
                return self.on_vendor(now, hsession, value, m);
            }
            Kind::Vendor { vendor, value } => {
                if m.mandatory {
                    self.stop(
                        now,
                        STOP_GENERAL_ERROR,
                        ERR_VENDOR,
                        format!("unknown mandatory vendor message {vendor}:{value}"),
                    );
                }
                return;
            }
            Kind::UnknownIetf(v) => {
                if m.mandatory {
                    self.stop(
                        now,
                        STOP_GENERAL_ERROR,
                        ERR_VENDOR,
                        format!("unknown mandatory message type {v}"),
                    );
                }
                return;
            }
        };
        if let Some((vendor, attr)) = m.unknown_mandatory(None) {
            let text = format!("unknown mandatory AVP {vendor}:{attr}");
            if t.is_session() && self.state == State::Established {
                self.refuse_session_message(
                    now,
                    hsession,
                    &m,
                    CDN_ERROR,
                    ERR_UNKNOWN_MANDATORY,
                    text,
                );
            } else {
                if self.peer_id == 0 {
                    // Address the StopCCN to the SCCRQ's sender.
                    self.peer_id = m
                        .find(|a| {
                            if let Avp::AssignedTunnelId(t) = a {
                                Some(*t)
                            } else {
                                None
                            }
                        })
                        .unwrap_or(0);
                }
                self.stop(now, STOP_GENERAL_ERROR, ERR_UNKNOWN_MANDATORY, text);
            }
            return;
        }
        match t {
            MessageType::Sccrq => self.on_sccrq(now, m),
            MessageType::Sccrp => self.on_sccrp(now, m),
            MessageType::Scccn => self.on_scccn(now, m),
            MessageType::StopCcn => {
                let result = find_avp!(m, Avp::ResultCode);
                self.sessions.clear();
                self.state = State::Closing {
                    until: now + self.cfg.linger,
                };
                self.events.push_back(Event::Closed {
                    reason: CloseReason::Remote,
                    result,
                });
            }
            MessageType::Hello => {}
            _ if self.state != State::Established => {
                self.stop(
                    now,
                    STOP_FSM_ERROR,
                    ERR_NONE,
                    format!("{t:?} before the tunnel was established"),
                );
            }
            MessageType::Ocrq => self.on_ocrq(now, m),
            MessageType::Icrq => self.on_icrq(now, m),
            MessageType::Ocrp | MessageType::Icrp => self.on_call_reply(now, hsession, t, m),
            MessageType::Occn | MessageType::Iccn => self.on_call_connected(now, hsession, t, m),
            MessageType::Cdn => self.on_cdn(hsession, m),
            MessageType::Wen => {
                if let Some(errors) = find_avp!(m, Avp::CallErrors) {
                    if self.sessions.contains_key(&hsession) {
                        self.events.push_back(Event::WanErrors {
                            session: hsession,
                            errors,
                        });
                    }
                }
            }
            MessageType::Sli => {
                if let Some((s, r)) = m.find(|a| match a {
                    Avp::Accm { send, receive } => Some((*send, *receive)),
                    _ => None,
                }) {
                    if self.sessions.contains_key(&hsession) {
                        self.events.push_back(Event::LinkInfo {
                            session: hsession,
                            send_accm: s,
                            receive_accm: r,
                        });
                    }
                }
            }
        }
    }

    fn check_sccr(&mut self, now: Instant, m: &Message) -> Option<u16> {
        let version = m.find(|a| match a {
            Avp::ProtocolVersion { version, revision } => Some((*version, *revision)),
            _ => None,
        });
        let peer_tid = find_avp!(m, Avp::AssignedTunnelId);
        if let Some(t) = peer_tid {
            self.peer_id = t;
        }
        if version != Some((1, 0)) {
            self.stop(
                now,
                STOP_BAD_VERSION,
                0x0100,
                "only L2TP version 1.0 (RFC 2661) is supported",
            );
            return None;
        }
        let host = m.find(|a| match a {
            Avp::HostName(h) => Some(String::from_utf8_lossy(h).into_owned()),
            _ => None,
        });
        let framing = find_avp!(m, Avp::FramingCapabilities);
        let (Some(tid), Some(host), Some(_)) = (peer_tid, host, framing) else {
            self.stop(
                now,
                STOP_GENERAL_ERROR,
                ERR_RANGE,
                "missing Host Name, Framing Capabilities or Assigned Tunnel ID",
            );
            return None;
        };
        if tid == 0 {
            self.stop(now, STOP_GENERAL_ERROR, ERR_RANGE, "Assigned Tunnel ID 0");
            return None;
        }
        self.peer_host = host;
        self.peer_bearer = m
            .find(|a| match a {
                Avp::BearerCapabilities(b) => Some(*b),
                _ => None,
            })
            .unwrap_or(0);
        if let Some(w) = find_avp!(m, Avp::ReceiveWindowSize) {
            self.channel.set_peer_window(w);
        }
        self.peer_challenge = find_avp!(m, Avp::Challenge);
        self.peer_ext = self
            .cfg
            .extension
            .and_then(|v| ext::find_u32(&m.avps, v, ext::ATTR_CAPABILITIES));
        Some(tid)
    }

    fn challenge_response(&self, id: MessageType, challenge: &[u8]) -> Option<[u8; 16]> {
        let secret = self.cfg.secret.as_ref()?;
        let mut h = Md5::new();
        h.update([id as u8]);
        h.update(secret);
        h.update(challenge);
        Some(h.finalize().into())
    }

    /// Checks the peer's answer to our challenge; clears the tunnel when wrong.
    fn verify_response(&mut self, now: Instant, id: MessageType, m: &Message) -> bool {
        let Some(ch) = self.our_challenge.clone() else {
            return true;
        };
        let got = find_avp!(m, Avp::ChallengeResponse);
        if got.is_some() && got == self.challenge_response(id, &ch) {
            return true;
        }
        let why = if got.is_none() {
            "no challenge response"
        } else {
            "challenge response does not match"
        };
        self.stop(
            now,
            STOP_NOT_AUTHORIZED,
            ERR_NONE,
            format!("tunnel authentication failed: {why}"),
        );
        false
    }

    /// Our answer to the peer's challenge, or a StopCCN when we have no secret.
    fn answer_challenge(&mut self, now: Instant, id: MessageType, avps: &mut Vec<Avp>) -> bool {
        let Some(ch) = self.peer_challenge.clone() else {
            return true;
        };
        match self.challenge_response(id, &ch) {
            Some(r) => {
                avps.push(Avp::ChallengeResponse(r));
                true
            }
            None => {
                self.stop(
                    now,
                    STOP_NOT_AUTHORIZED,
                    ERR_NONE,
                    "peer sent a challenge but no secret is configured",
                );
                false
            }
        }
    }

    fn on_sccrq(&mut self, now: Instant, m: Message) {
        if self.state != State::Listen {
            return self.stop(now, STOP_FSM_ERROR, ERR_NONE, "SCCRQ on an existing tunnel");
        }
        if self.check_sccr(now, &m).is_none() {
            return;
        }
        if self.cfg.secret.is_some() && self.cfg.challenge {
            self.our_challenge = Some(self.rng.gen::<[u8; 16]>().to_vec());
        }
        let mut avps = self.sccr_avps();
        if !self.answer_challenge(now, MessageType::Sccrp, &mut avps) {
            return;
        }
        if let (Some(v), Some(_)) = (self.cfg.extension, self.peer_ext) {
            avps.push(ext::avp_u32(v, ext::ATTR_CAPABILITIES, OUR_CAPS));
        }
        self.send(0, Message::new(MessageType::Sccrp, avps));
        self.state = State::WaitCtlConn;
    }

    fn on_sccrp(&mut self, now: Instant, m: Message) {
        if self.state != State::WaitCtlReply {
            return self.stop(now, STOP_FSM_ERROR, ERR_NONE, "unexpected SCCRP");
        }
        if self.check_sccr(now, &m).is_none() || !self.verify_response(now, MessageType::Sccrp, &m)
        {
            return;
        }
        let mut avps = Vec::new();
        if !self.answer_challenge(now, MessageType::Scccn, &mut avps) {
            return;
        }
        self.send(0, Message::new(MessageType::Scccn, avps));
        self.established(now);
    }

    fn on_scccn(&mut self, now: Instant, m: Message) {
        if self.state != State::WaitCtlConn {
            return self.stop(now, STOP_FSM_ERROR, ERR_NONE, "unexpected SCCCN");
        }
        if self.verify_response(now, MessageType::Scccn, &m) {
            self.established(now);
        }
    }

    fn established(&mut self, now: Instant) {
        self.state = State::Established;
        self.hello_at = Some(now + self.cfg.hello_interval);
        self.events.push_back(Event::Connected {
            peer_host: self.peer_host.clone(),
            peer_extension: self.peer_ext,
            peer_bearer_caps: self.peer_bearer,
        });
    }
}

/// What to do when an SCCRQ arrives from a peer we have an unanswered SCCRQ out to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tie {
    /// Ours wins: ignore their SCCRQ.
    KeepOurs,
    /// Theirs wins: discard ours silently and answer theirs.
    KeepTheirs,
    /// Equal values: both sides discard their tunnels (and may try again).
    DiscardBoth,
    /// Neither sent a Tie Breaker: two tunnels are opened.
    KeepBoth,
}

/// §4.4.3: the lower Tie Breaker wins; with one only, its sender wins.
pub fn resolve_tie(ours: Option<[u8; 8]>, theirs: Option<[u8; 8]>) -> Tie {
    match (ours, theirs) {
        (Some(o), Some(t)) if o < t => Tie::KeepOurs,
        (Some(o), Some(t)) if o > t => Tie::KeepTheirs,
        (Some(_), Some(_)) => Tie::DiscardBoth,
        (Some(_), None) => Tie::KeepOurs,
        (None, Some(_)) => Tie::KeepTheirs,
        (None, None) => Tie::KeepBoth,
    }
}

/// The Tie Breaker of an SCCRQ datagram, if it carries one.
pub fn sccrq_tie_breaker(datagram: &[u8]) -> Option<[u8; 8]> {
    let (h, body) = header::decode(datagram).ok()?;
    let m = Message::decode(body, None).ok()?;
    if !h.control || m.message_type() != Some(MessageType::Sccrq) {
        return None;
    }
    find_avp!(m, Avp::TieBreaker)
}
