//! Tunnel and session state machines (RFC 2661 §5, §7) for both roles (LAC, LNS) and
//! both call directions, plus the AICRQ/AICRP extension ([`crate::ext`]).
//!
//! A [`Tunnel`] is one control connection. Feed it datagrams with [`Tunnel::handle`] and
//! expirations with [`Tunnel::handle_timeout`]; drain [`Tunnel::poll_transmit`] and
//! [`Tunnel::poll_event`]; ask [`Tunnel::poll_timeout`] when to call back.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::avp::{CallErrors, ResultCode};
use crate::channel::{seq_lt, Channel, ChannelConfig, Received};
use crate::message::{Hiding, Kind};
use crate::result::*;
use crate::{ext, find_avp, header, Avp, DecodeError, Message, MessageType};

/// Framing Capabilities / Type bits (§4.4.3).
pub const FRAMING_SYNC: u32 = 1;
pub const FRAMING_ASYNC: u32 = 2;
/// Bearer Capabilities / Type bits (§4.4.3).
pub const BEARER_DIGITAL: u32 = 1;
pub const BEARER_ANALOG: u32 = 2;

#[derive(Debug, Clone)]
pub struct Config {
    pub host_name: String,
    /// Shared secret for tunnel authentication and hidden AVPs.
    pub secret: Option<Vec<u8>>,
    /// Send a Challenge (when a secret is set) and require the peer to answer it.
    pub challenge: bool,
    pub channel: ChannelConfig,
    pub hello_interval: Duration,
    /// How long state is kept after StopCCN to re-acknowledge it (§5.7).
    pub linger: Duration,
    pub framing_caps: u32,
    /// Non-zero on a LAC that places calls: an LNS may send OCRQ only after seeing it.
    pub bearer_caps: u32,
    pub vendor_name: String,
    pub firmware_revision: u16,
    /// Vendor ID of the AICRQ/AICRP extension; `None` turns the extension off.
    pub extension: Option<u16>,
    /// Hide every hideable AVP we send (needs `secret`).
    pub hide_avps: bool,
    /// Put a Tie Breaker AVP in our SCCRQ.
    pub tie_breaker: bool,
    /// The Tie Breaker's value; `None` = random (tests pin it to force an outcome).
    pub tie_breaker_value: Option<[u8; 8]>,
    /// Ask for sequenced data messages on the calls we connect.
    pub data_sequencing: bool,
    /// Seed for IDs, challenges and padding; `None` = from the OS.
    pub rng_seed: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host_name: "bulkhead".into(),
            secret: None,
            challenge: true,
            channel: ChannelConfig::default(),
            hello_interval: Duration::from_secs(60),
            linger: Duration::from_secs(31),
            framing_caps: FRAMING_SYNC | FRAMING_ASYNC,
            bearer_caps: 0,
            vendor_name: "Bulkhead".into(),
            firmware_revision: 0x0100,
            extension: Some(ext::DEFAULT_VENDOR_ID),
            hide_avps: false,
            tie_breaker: true,
            tie_breaker_value: None,
            data_sequencing: false,
            rng_seed: None,
        }
    }
}

/// Who opened the control connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
}

/// What a call's data channel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallMode {
    /// PPP frames (RFC 2661's data channel); the LAC converts async HDLC.
    Ppp,
    /// A raw byte stream (extension; only with peers that advertised it).
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// We sent StopCCN.
    Local,
    /// The peer sent StopCCN.
    Remote,
    /// The peer stopped acknowledging (retries exhausted).
    Timeout,
    /// We lost a tie (§4.4.3) and dropped the tunnel without a word.
    Discarded,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The control connection is established.
    Connected {
        peer_host: String,
        peer_extension: Option<u32>,
        peer_bearer_caps: u32,
    },
    /// The control connection is gone, and with it every session.
    Closed {
        reason: CloseReason,
        result: Option<ResultCode>,
    },
    /// LAC: the LNS asks us to dial. Answer with [`Tunnel::accept_call`] then
    /// [`Tunnel::call_connected`], or [`Tunnel::disconnect_call`].
    OutgoingCallRequest {
        session: u16,
        called_number: String,
        sub_address: Option<String>,
        min_bps: u32,
        max_bps: u32,
        bearer_type: u32,
        framing_type: u32,
        mode: CallMode,
    },
    /// LNS: the LAC has an incoming call. `armed`: it answers our AICRQ.
    IncomingCallRequest {
        session: u16,
        calling_number: Option<String>,
        called_number: Option<String>,
        armed: bool,
    },
    /// LAC: the LNS asks us to arm answer mode (AICRQ). Answer with [`Tunnel::reply_arm`].
    ArmRequest {
        session: u16,
        line: Option<String>,
        duration: Duration,
        mode: CallMode,
    },
    /// LNS: the LAC's answer to our AICRQ.
    ArmReply {
        session: u16,
        result: Result<(), ResultCode>,
    },
    /// OCRP (at the LNS) or ICRP (at the LAC) arrived.
    CallReplied {
        session: u16,
    },
    CallEstablished {
        session: u16,
        mode: CallMode,
        tx_speed: u32,
        framing_type: u32,
        sequencing: bool,
    },
    CallDisconnected {
        session: u16,
        result: ResultCode,
        local: bool,
    },
    WanErrors {
        session: u16,
        errors: CallErrors,
    },
    LinkInfo {
        session: u16,
        send_accm: u32,
        receive_accm: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("datagram for tunnel {0}, not this one")]
    WrongTunnel(u16),
    #[error("the tunnel is not established")]
    NotEstablished,
    #[error("no session {0}")]
    NoSession(u16),
    #[error("session {0} is not in a state for that")]
    SessionState(u16),
    #[error("the peer did not advertise the Bulkhead extension")]
    ExtensionNotSupported,
    #[error("the peer is no LAC (no Bearer Capabilities): it cannot place calls")]
    NotALac,
    #[error("no free session ID")]
    NoSessionId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Responder waiting for SCCRQ.
    Listen,
    WaitCtlReply,
    WaitCtlConn,
    Established,
    Closing {
        until: Instant,
    },
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessState {
    /// A request arrived; the application decides.
    WaitApp,
    /// We sent OCRQ/ICRQ and wait for the reply.
    WaitReply,
    /// LAC: reply exchanged, dialing/answering. LNS: waiting for OCCN/ICCN.
    WaitConnect,
    Established,
    /// LNS: AICRQ sent.
    ArmSent,
    /// Armed: LAC waits for a ring, LNS for the ICRQ.
    Armed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Outgoing,
    Incoming,
    Arm,
}

#[derive(Debug)]
struct Session {
    peer: u16,
    state: SessState,
    dir: Dir,
    lac: bool,
    mode: CallMode,
    sequencing: bool,
    data_ns: u16,
    data_nr: u16,
    arm_deadline: Option<Instant>,
}

impl Session {
    fn new(peer: u16, state: SessState, dir: Dir, lac: bool, mode: CallMode) -> Self {
        Session {
            peer,
            state,
            dir,
            lac,
            mode,
            sequencing: false,
            data_ns: 0,
            data_nr: 0,
            arm_deadline: None,
        }
    }
}

pub struct Tunnel {
    cfg: Config,
    role: Role,
    state: State,
    local_id: u16,
    peer_id: u16,
    channel: Channel,
    sessions: HashMap<u16, Session>,
    events: VecDeque<Event>,
    our_challenge: Option<Vec<u8>>,
    peer_challenge: Option<Vec<u8>>,
    peer_host: String,
    peer_ext: Option<u32>,
    peer_bearer: u32,
    tie_breaker: [u8; 8],
    hello_at: Option<Instant>,
    rng: StdRng,
    serial: u32,
}

/// Our extension capability bits.
const OUR_CAPS: u32 = ext::CAP_AICRQ | ext::CAP_RAW;

impl Tunnel {
    fn new(cfg: Config, role: Role, state: State) -> Self {
        let mut rng = match cfg.rng_seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        let local_id = rng.gen_range(1..=u16::MAX);
        let tie_breaker = cfg.tie_breaker_value.unwrap_or_else(|| rng.gen());
        Tunnel {
            channel: Channel::new(cfg.channel.clone()),
            cfg,
            role,
            state,
            local_id,
            peer_id: 0,
            sessions: HashMap::new(),
            events: VecDeque::new(),
            our_challenge: None,
            peer_challenge: None,
            peer_host: String::new(),
            peer_ext: None,
            peer_bearer: 0,
            tie_breaker,
            hello_at: None,
            rng,
            serial: 0,
        }
    }

    /// Opens a control connection: SCCRQ is queued.
    pub fn connect(cfg: Config, now: Instant) -> Self {
        let mut t = Tunnel::new(cfg, Role::Initiator, State::WaitCtlReply);
        if t.cfg.secret.is_some() && t.cfg.challenge {
            t.our_challenge = Some(t.rng.gen::<[u8; 16]>().to_vec());
        }
        let mut avps = t.sccr_avps();
        if t.cfg.tie_breaker {
            avps.push(Avp::TieBreaker(t.tie_breaker));
        }
        if let Some(v) = t.cfg.extension {
            avps.push(ext::avp_u32(v, ext::ATTR_CAPABILITIES, OUR_CAPS));
        }
        t.send(0, Message::new(MessageType::Sccrq, avps));
        t.hello_at = Some(now + t.cfg.hello_interval);
        t
    }

    /// Waits for an SCCRQ (the first datagram given to [`Tunnel::handle`]).
    pub fn accept(cfg: Config, now: Instant) -> Self {
        let mut t = Tunnel::new(cfg, Role::Responder, State::Listen);
        t.hello_at = Some(now + t.cfg.hello_interval);
        t
    }

    pub fn role(&self) -> Role {
        self.role
    }
    pub fn local_id(&self) -> u16 {
        self.local_id
    }
    pub fn peer_id(&self) -> u16 {
        self.peer_id
    }
    pub fn peer_host(&self) -> &str {
        &self.peer_host
    }
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }
    /// Nothing more will happen: the tunnel can be dropped.
    pub fn is_finished(&self) -> bool {
        self.state == State::Closed
    }
    /// The peer advertised the extension (capability bits).
    pub fn peer_extension(&self) -> Option<u32> {
        self.peer_ext
    }
    /// The Tie Breaker our SCCRQ carries (`None`: we sent none, or we only answer).
    pub fn tie_breaker(&self) -> Option<[u8; 8]> {
        (self.cfg.tie_breaker && self.role == Role::Initiator).then_some(self.tie_breaker)
    }
    /// Every control message sent so far has been acknowledged by the peer (a
    /// StopCCN included: the peer has it).
    pub fn all_acked(&self) -> bool {
        self.channel.idle()
    }
    /// Sessions that exist, with their peer IDs.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    fn sccr_avps(&self) -> Vec<Avp> {
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

    fn send(&mut self, session: u16, msg: Message) {
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

    fn vendor_message(&self, value: u16, avps: Vec<Avp>) -> Message {
        Message {
            kind: Kind::Vendor {
                vendor: self.cfg.extension.unwrap_or(ext::DEFAULT_VENDOR_ID),
                value,
            },
            mandatory: false,
            avps,
        }
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

    fn data<'a>(&mut self, h: header::Header, body: &'a [u8]) -> Option<(u16, &'a [u8])> {
        let s = self.sessions.get_mut(&h.session)?;
        if s.state != SessState::Established {
            return None;
        }
        if let Some((ns, _)) = h.seq {
            // Sequenced data: drop stale or duplicate packets (§5.9 leaves order to us).
            if seq_lt(ns, s.data_nr) {
                return None;
            }
            s.data_nr = ns.wrapping_add(1);
        }
        Some((h.session, body))
    }

    /// Appends one data message for `session` to `out`.
    pub fn encode_data(
        &mut self,
        session: u16,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TunnelError> {
        let peer_tunnel = self.peer_id;
        let s = self
            .sessions
            .get_mut(&session)
            .ok_or(TunnelError::NoSession(session))?;
        if s.state != SessState::Established {
            return Err(TunnelError::SessionState(session));
        }
        let seq = s.sequencing.then(|| {
            let ns = s.data_ns;
            s.data_ns = s.data_ns.wrapping_add(1);
            (ns, s.data_nr)
        });
        header::encode_data(out, peer_tunnel, s.peer, seq, payload.len());
        out.extend_from_slice(payload);
        Ok(())
    }

    /// (peer tunnel ID, peer session ID) of an established, unsequenced call: enough
    /// for a driver to frame data itself without going through the tunnel.
    pub fn data_path(&self, session: u16) -> Option<(u16, u16)> {
        let s = self.sessions.get(&session)?;
        (s.state == SessState::Established && !s.sequencing).then_some((self.peer_id, s.peer))
    }

    fn stop(&mut self, now: Instant, result: u16, error: u16, msg: impl Into<String>) {
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

    /// CDN in answer to a session message we cannot accept.
    fn refuse_session_message(
        &mut self,
        now: Instant,
        hsession: u16,
        m: &Message,
        result: u16,
        error: u16,
        text: String,
    ) {
        let peer_sid = assigned_session(m);
        let (local, peer) = if let Some(s) = self.sessions.remove(&hsession) {
            self.events.push_back(Event::CallDisconnected {
                session: hsession,
                result: ResultCode::new(result, error, text.clone()),
                local: true,
            });
            (hsession, s.peer)
        } else {
            match peer_sid {
                Some(p) => (0, p),
                None => return self.stop(now, STOP_GENERAL_ERROR, error, text),
            }
        };
        self.send_cdn(local, peer, ResultCode::new(result, error, text));
    }

    fn send_cdn(&mut self, local: u16, peer: u16, rc: ResultCode) {
        self.send(
            peer,
            Message::new(
                MessageType::Cdn,
                vec![Avp::ResultCode(rc), Avp::AssignedSessionId(local)],
            ),
        );
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

    fn new_session_id(&mut self) -> Result<u16, TunnelError> {
        for _ in 0..64 {
            let id = self.rng.gen_range(1..=u16::MAX);
            if !self.sessions.contains_key(&id) {
                return Ok(id);
            }
        }
        Err(TunnelError::NoSessionId)
    }

    fn mode_from(&self, avps: &[Avp]) -> CallMode {
        match self
            .cfg
            .extension
            .and_then(|v| ext::find_u16(avps, v, ext::ATTR_CALL_MODE))
        {
            Some(ext::MODE_RAW) => CallMode::Raw,
            _ => CallMode::Ppp,
        }
    }

    fn on_ocrq(&mut self, now: Instant, m: Message) {
        let Some(peer) = assigned_session(&m) else {
            return self.stop(
                now,
                STOP_GENERAL_ERROR,
                ERR_RANGE,
                "OCRQ without Assigned Session ID",
            );
        };
        let called = m.find(|a| match a {
            Avp::CalledNumber(n) => Some(String::from_utf8_lossy(n).into_owned()),
            _ => None,
        });
        let min_bps = find_avp!(m, Avp::MinimumBps);
        let max_bps = find_avp!(m, Avp::MaximumBps);
        let bearer = find_avp!(m, Avp::BearerType);
        let framing = find_avp!(m, Avp::FramingType);
        let serial = find_avp!(m, Avp::CallSerialNumber);
        let Ok(local) = self.new_session_id() else {
            return self.send_cdn(
                0,
                peer,
                ResultCode::new(CDN_NO_FACILITIES_TEMP, ERR_NO_RESOURCES, "no session ID"),
            );
        };
        let (Some(called), Some(min_bps), Some(max_bps), Some(bearer), Some(framing), Some(_)) =
            (called, min_bps, max_bps, bearer, framing, serial)
        else {
            return self.send_cdn(
                local,
                peer,
                ResultCode::new(CDN_ERROR, ERR_RANGE, "OCRQ is missing a mandatory AVP"),
            );
        };
        if self.cfg.bearer_caps == 0 {
            return self.send_cdn(
                local,
                peer,
                ResultCode::new(
                    CDN_NO_FACILITIES_PERM,
                    ERR_NONE,
                    "this peer places no calls",
                ),
            );
        }
        let mode = self.mode_from(&m.avps);
        let sub_address = m.find(|a| match a {
            Avp::SubAddress(s) => Some(String::from_utf8_lossy(s).into_owned()),
            _ => None,
        });
        self.sessions.insert(
            local,
            Session::new(peer, SessState::WaitApp, Dir::Outgoing, true, mode),
        );
        self.events.push_back(Event::OutgoingCallRequest {
            session: local,
            called_number: called,
            sub_address,
            min_bps,
            max_bps,
            bearer_type: bearer,
            framing_type: framing,
            mode,
        });
    }

    fn on_icrq(&mut self, now: Instant, m: Message) {
        let Some(peer) = assigned_session(&m) else {
            return self.stop(
                now,
                STOP_GENERAL_ERROR,
                ERR_RANGE,
                "ICRQ without Assigned Session ID",
            );
        };
        let has_serial = m.avps.iter().any(|a| matches!(a, Avp::CallSerialNumber(_)));
        let armed = self
            .cfg
            .extension
            .and_then(|v| ext::find_u16(&m.avps, v, ext::ATTR_ARMED_SESSION))
            .filter(|id| {
                self.sessions
                    .get(id)
                    .is_some_and(|s| s.dir == Dir::Arm && s.state == SessState::Armed)
            });
        let local = match armed {
            Some(id) => id,
            None => match self.new_session_id() {
                Ok(id) => id,
                Err(_) => {
                    return self.send_cdn(
                        0,
                        peer,
                        ResultCode::new(CDN_NO_FACILITIES_TEMP, ERR_NO_RESOURCES, "no session ID"),
                    )
                }
            },
        };
        if !has_serial {
            self.sessions.remove(&local);
            return self.send_cdn(
                local,
                peer,
                ResultCode::new(CDN_ERROR, ERR_RANGE, "ICRQ without Call Serial Number"),
            );
        }
        let mode = match armed {
            Some(id) => self.sessions[&id].mode,
            None => self.mode_from(&m.avps),
        };
        let text = |f: fn(&Avp) -> Option<&Vec<u8>>| {
            m.avps
                .iter()
                .find_map(f)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let calling_number = text(|a| {
            if let Avp::CallingNumber(v) = a {
                Some(v)
            } else {
                None
            }
        });
        let called_number = text(|a| {
            if let Avp::CalledNumber(v) = a {
                Some(v)
            } else {
                None
            }
        });
        self.sessions.insert(
            local,
            Session::new(peer, SessState::WaitApp, Dir::Incoming, false, mode),
        );
        self.events.push_back(Event::IncomingCallRequest {
            session: local,
            calling_number,
            called_number,
            armed: armed.is_some(),
        });
    }

    fn on_call_reply(&mut self, now: Instant, hsession: u16, t: MessageType, m: Message) {
        let want_dir = if t == MessageType::Ocrp {
            Dir::Outgoing
        } else {
            Dir::Incoming
        };
        let Some(peer) = assigned_session(&m) else {
            return self.refuse_session_message(
                now,
                hsession,
                &m,
                CDN_ERROR,
                ERR_RANGE,
                format!("{t:?} without Assigned Session ID"),
            );
        };
        match self.sessions.get_mut(&hsession) {
            Some(s) if s.state == SessState::WaitReply && s.dir == want_dir => {
                s.peer = peer;
                s.state = SessState::WaitConnect;
                self.events
                    .push_back(Event::CallReplied { session: hsession });
            }
            _ => {
                // §6.14: a reply for no session of ours gets a CDN back.
                self.send_cdn(
                    0,
                    peer,
                    ResultCode::new(
                        CDN_ERROR,
                        ERR_BAD_SESSION,
                        format!("{t:?} for unknown session {hsession}"),
                    ),
                );
            }
        }
    }

    fn on_call_connected(&mut self, now: Instant, hsession: u16, t: MessageType, m: Message) {
        let want_dir = if t == MessageType::Occn {
            Dir::Outgoing
        } else {
            Dir::Incoming
        };
        let speed = find_avp!(m, Avp::TxConnectSpeed);
        let framing = find_avp!(m, Avp::FramingType);
        let sequencing = m.avps.iter().any(|a| matches!(a, Avp::SequencingRequired));
        let ok = matches!(self.sessions.get(&hsession), Some(s) if s.state == SessState::WaitConnect && s.dir == want_dir && !s.lac);
        if !ok {
            return self.refuse_session_message(
                now,
                hsession,
                &m,
                CDN_ERROR,
                ERR_BAD_SESSION,
                format!("unexpected {t:?}"),
            );
        }
        let (Some(speed), Some(framing)) = (speed, framing) else {
            return self.refuse_session_message(
                now,
                hsession,
                &m,
                CDN_ERROR,
                ERR_RANGE,
                format!("{t:?} without Connect Speed or Framing Type"),
            );
        };
        let s = self.sessions.get_mut(&hsession).expect("checked");
        s.state = SessState::Established;
        s.sequencing = sequencing || self.cfg.data_sequencing;
        let mode = s.mode;
        self.events.push_back(Event::CallEstablished {
            session: hsession,
            mode,
            tx_speed: speed,
            framing_type: framing,
            sequencing: s.sequencing,
        });
    }

    fn on_cdn(&mut self, hsession: u16, m: Message) {
        let result = m
            .find(|a| {
                if let Avp::ResultCode(r) = a {
                    Some(r.clone())
                } else {
                    None
                }
            })
            .unwrap_or_else(|| ResultCode::new(CDN_ERROR, ERR_RANGE, "CDN without Result Code"));
        let key = if self.sessions.contains_key(&hsession) {
            Some(hsession)
        } else {
            // The peer may not have known our ID yet (e.g. cancelling an AICRQ).
            assigned_session(&m).and_then(|p| {
                self.sessions
                    .iter()
                    .find(|(_, s)| s.peer == p)
                    .map(|(k, _)| *k)
            })
        };
        if let Some(k) = key {
            self.sessions.remove(&k);
            self.events.push_back(Event::CallDisconnected {
                session: k,
                result,
                local: false,
            });
        }
    }

    fn on_vendor(&mut self, now: Instant, hsession: u16, value: u16, m: Message) {
        let vendor = self
            .cfg
            .extension
            .expect("vendor messages only with the extension on");
        match value {
            ext::MSG_AICRQ if self.state == State::Established => {
                let Some(peer) = assigned_session(&m) else {
                    return self.stop(
                        now,
                        STOP_GENERAL_ERROR,
                        ERR_RANGE,
                        "AICRQ without Assigned Session ID",
                    );
                };
                let Ok(local) = self.new_session_id() else {
                    return self.send_cdn(
                        0,
                        peer,
                        ResultCode::new(CDN_NO_FACILITIES_TEMP, ERR_NO_RESOURCES, "no session ID"),
                    );
                };
                let line = ext::find(&m.avps, vendor, ext::ATTR_LINE)
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                let secs = ext::find_u32(&m.avps, vendor, ext::ATTR_ARM_SECONDS).unwrap_or(60);
                let mode = self.mode_from(&m.avps);
                self.sessions.insert(
                    local,
                    Session::new(peer, SessState::WaitApp, Dir::Arm, true, mode),
                );
                self.events.push_back(Event::ArmRequest {
                    session: local,
                    line,
                    duration: Duration::from_secs(secs as u64),
                    mode,
                });
            }
            ext::MSG_AICRP if self.state == State::Established => {
                let rc = find_avp!(m, Avp::ResultCode);
                let peer = assigned_session(&m);
                let ok = matches!(self.sessions.get(&hsession), Some(s) if s.state == SessState::ArmSent);
                if !ok {
                    return;
                }
                match (rc, peer) {
                    (Some(rc), Some(peer)) if rc.result == ext::ARM_ACCEPTED => {
                        let s = self.sessions.get_mut(&hsession).expect("checked");
                        s.peer = peer;
                        s.state = SessState::Armed;
                        self.events.push_back(Event::ArmReply {
                            session: hsession,
                            result: Ok(()),
                        });
                    }
                    (rc, _) => {
                        self.sessions.remove(&hsession);
                        let rc = rc.unwrap_or_else(|| {
                            ResultCode::new(CDN_ERROR, ERR_RANGE, "AICRP without Result Code")
                        });
                        self.events.push_back(Event::ArmReply {
                            session: hsession,
                            result: Err(rc),
                        });
                    }
                }
            }
            _ => {
                if m.mandatory {
                    self.stop(
                        now,
                        STOP_GENERAL_ERROR,
                        ERR_VENDOR,
                        format!("unknown mandatory vendor message {value}"),
                    );
                }
            }
        }
    }

    // ---- Commands from the application ----

    fn require_established(&self) -> Result<(), TunnelError> {
        if self.state == State::Established {
            Ok(())
        } else {
            Err(TunnelError::NotEstablished)
        }
    }

    fn ext_mode_avp(&self, mode: CallMode) -> Result<Vec<Avp>, TunnelError> {
        match (mode, self.cfg.extension, self.peer_ext) {
            (CallMode::Ppp, _, _) => Ok(vec![]),
            (CallMode::Raw, Some(v), Some(caps)) if caps & ext::CAP_RAW != 0 => {
                Ok(vec![ext::avp_u16(v, ext::ATTR_CALL_MODE, ext::MODE_RAW)])
            }
            _ => Err(TunnelError::ExtensionNotSupported),
        }
    }

    fn next_serial(&mut self) -> u32 {
        self.serial = self.serial.wrapping_add(1);
        self.serial
    }

    /// LNS: asks the LAC to dial `called_number` (OCRQ, §5.2.2).
    pub fn place_outgoing_call(
        &mut self,
        _now: Instant,
        called_number: &str,
        mode: CallMode,
    ) -> Result<u16, TunnelError> {
        self.require_established()?;
        if self.peer_bearer == 0 {
            return Err(TunnelError::NotALac);
        }
        let mut avps_ext = self.ext_mode_avp(mode)?;
        let local = self.new_session_id()?;
        let serial = self.next_serial();
        let bearer = if self.peer_bearer & BEARER_ANALOG != 0 {
            BEARER_ANALOG
        } else {
            BEARER_DIGITAL
        };
        let mut avps = vec![
            Avp::AssignedSessionId(local),
            Avp::CallSerialNumber(serial),
            Avp::MinimumBps(300),
            Avp::MaximumBps(100_000_000),
            Avp::BearerType(bearer),
            Avp::FramingType(FRAMING_ASYNC),
            Avp::CalledNumber(called_number.as_bytes().to_vec()),
        ];
        avps.append(&mut avps_ext);
        self.sessions.insert(
            local,
            Session::new(0, SessState::WaitReply, Dir::Outgoing, false, mode),
        );
        self.send(0, Message::new(MessageType::Ocrq, avps));
        Ok(local)
    }

    /// LAC: announces an incoming call (ICRQ, §5.2.1). `armed` is the session of an
    /// accepted AICRQ this call answers.
    pub fn place_incoming_call(
        &mut self,
        _now: Instant,
        calling_number: Option<&str>,
        called_number: Option<&str>,
        armed: Option<u16>,
    ) -> Result<u16, TunnelError> {
        self.require_established()?;
        let serial = self.next_serial();
        let (local, mut ext_avps, mode) = match armed {
            Some(id) => {
                let s = self.sessions.get(&id).ok_or(TunnelError::NoSession(id))?;
                if s.state != SessState::Armed || s.dir != Dir::Arm {
                    return Err(TunnelError::SessionState(id));
                }
                let v = self
                    .cfg
                    .extension
                    .ok_or(TunnelError::ExtensionNotSupported)?;
                (
                    id,
                    vec![ext::avp_u16(v, ext::ATTR_ARMED_SESSION, s.peer)],
                    s.mode,
                )
            }
            None => (self.new_session_id()?, vec![], CallMode::Ppp),
        };
        let mut avps = vec![
            Avp::AssignedSessionId(local),
            Avp::CallSerialNumber(serial),
            Avp::BearerType(BEARER_ANALOG),
        ];
        if let Some(n) = calling_number {
            avps.push(Avp::CallingNumber(n.as_bytes().to_vec()));
        }
        if let Some(n) = called_number {
            avps.push(Avp::CalledNumber(n.as_bytes().to_vec()));
        }
        avps.append(&mut ext_avps);
        let peer = self.sessions.get(&local).map_or(0, |s| s.peer);
        self.sessions.insert(
            local,
            Session::new(peer, SessState::WaitReply, Dir::Incoming, true, mode),
        );
        self.send(0, Message::new(MessageType::Icrq, avps));
        Ok(local)
    }

    /// LNS: asks the LAC to arm answer mode on `line` (any when `None`) for `duration`
    /// (AICRQ). The returned session receives the ICRQ when a call arrives.
    pub fn arm(
        &mut self,
        _now: Instant,
        line: Option<&str>,
        duration: Duration,
        mode: CallMode,
    ) -> Result<u16, TunnelError> {
        self.require_established()?;
        let v = self
            .cfg
            .extension
            .ok_or(TunnelError::ExtensionNotSupported)?;
        if self.peer_ext.is_none_or(|c| c & ext::CAP_AICRQ == 0) {
            return Err(TunnelError::ExtensionNotSupported);
        }
        let mut avps = vec![Avp::AssignedSessionId(0)];
        avps.append(&mut self.ext_mode_avp(mode)?);
        let local = self.new_session_id()?;
        avps[0] = Avp::AssignedSessionId(local);
        if let Some(l) = line {
            avps.push(ext::avp(v, ext::ATTR_LINE, l.as_bytes().to_vec()));
        }
        avps.push(ext::avp_u32(
            v,
            ext::ATTR_ARM_SECONDS,
            duration.as_secs().min(u32::MAX as u64) as u32,
        ));
        self.sessions.insert(
            local,
            Session::new(0, SessState::ArmSent, Dir::Arm, false, mode),
        );
        let msg = self.vendor_message(ext::MSG_AICRQ, avps);
        self.send(0, msg);
        Ok(local)
    }

    /// LAC: accepts (armed for `duration` from now) or refuses an AICRQ (AICRP).
    pub fn reply_arm(
        &mut self,
        now: Instant,
        session: u16,
        result: Result<Duration, ResultCode>,
    ) -> Result<(), TunnelError> {
        self.require_established()?;
        let s = self
            .sessions
            .get_mut(&session)
            .ok_or(TunnelError::NoSession(session))?;
        if s.state != SessState::WaitApp || s.dir != Dir::Arm {
            return Err(TunnelError::SessionState(session));
        }
        let peer = s.peer;
        let rc = match result {
            Ok(d) => {
                s.state = SessState::Armed;
                s.arm_deadline = Some(now + d);
                ResultCode::new(ext::ARM_ACCEPTED, ERR_NONE, "")
            }
            Err(rc) => {
                self.sessions.remove(&session);
                rc
            }
        };
        let msg = self.vendor_message(
            ext::MSG_AICRP,
            vec![Avp::ResultCode(rc), Avp::AssignedSessionId(session)],
        );
        self.send(peer, msg);
        Ok(())
    }

    /// LAC: accepts an OCRQ (sends OCRP; dial next). LNS: accepts an ICRQ (sends ICRP).
    pub fn accept_call(&mut self, _now: Instant, session: u16) -> Result<(), TunnelError> {
        self.require_established()?;
        let s = self
            .sessions
            .get_mut(&session)
            .ok_or(TunnelError::NoSession(session))?;
        if s.state != SessState::WaitApp || s.dir == Dir::Arm {
            return Err(TunnelError::SessionState(session));
        }
        s.state = SessState::WaitConnect;
        let t = if s.dir == Dir::Outgoing {
            MessageType::Ocrp
        } else {
            MessageType::Icrp
        };
        let peer = s.peer;
        self.send(peer, Message::new(t, vec![Avp::AssignedSessionId(session)]));
        Ok(())
    }

    /// LAC: the call is connected (OCCN or ICCN).
    pub fn call_connected(
        &mut self,
        _now: Instant,
        session: u16,
        tx_speed: u32,
        framing_type: u32,
    ) -> Result<(), TunnelError> {
        self.require_established()?;
        let seq = self.cfg.data_sequencing;
        let s = self
            .sessions
            .get_mut(&session)
            .ok_or(TunnelError::NoSession(session))?;
        if s.state != SessState::WaitConnect || !s.lac {
            return Err(TunnelError::SessionState(session));
        }
        s.state = SessState::Established;
        s.sequencing = seq;
        let (peer, mode) = (s.peer, s.mode);
        let t = if s.dir == Dir::Outgoing {
            MessageType::Occn
        } else {
            MessageType::Iccn
        };
        let mut avps = vec![
            Avp::TxConnectSpeed(tx_speed),
            Avp::FramingType(framing_type),
        ];
        if seq {
            avps.push(Avp::SequencingRequired);
        }
        self.send(peer, Message::new(t, avps));
        self.events.push_back(Event::CallEstablished {
            session,
            mode,
            tx_speed,
            framing_type,
            sequencing: seq,
        });
        Ok(())
    }

    /// Either side: clears a call or cancels an armed request (CDN).
    pub fn disconnect_call(
        &mut self,
        _now: Instant,
        session: u16,
        result: ResultCode,
    ) -> Result<(), TunnelError> {
        self.require_established()?;
        let s = self
            .sessions
            .remove(&session)
            .ok_or(TunnelError::NoSession(session))?;
        self.send_cdn(session, s.peer, result.clone());
        self.events.push_back(Event::CallDisconnected {
            session,
            result,
            local: true,
        });
        Ok(())
    }
}

fn assigned_session(m: &Message) -> Option<u16> {
    find_avp!(m, Avp::AssignedSessionId)
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
