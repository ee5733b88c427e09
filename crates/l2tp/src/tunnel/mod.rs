//! Tunnel and session state machines (RFC 2661 §5, §7) for both roles (LAC, LNS) and
//! both call directions, plus the AICRQ/AICRP extension ([`crate::ext`]).
//!
//! A [`Tunnel`] is one control connection. Feed it datagrams with [`Tunnel::handle`] and
//! expirations with [`Tunnel::handle_timeout`]; drain [`Tunnel::poll_transmit`] and
//! [`Tunnel::poll_event`]; ask [`Tunnel::poll_timeout`] when to call back.
//!
//! One `Tunnel`, three files by job: `control` (the control connection: setup,
//! authentication, reliable delivery, Hello, StopCCN, and the datagram entry point),
//! `session` (incoming and outgoing call state machines, data messages) and
//! `extension` (AICRQ/AICRP, the raw call mode).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::avp::{CallErrors, ResultCode};
use crate::channel::{Channel, ChannelConfig};
use crate::{ext, Avp, DecodeError, Message, MessageType};

mod control;
mod extension;
mod session;

pub use control::{resolve_tie, sccrq_tie_breaker, Tie};
use extension::OUR_CAPS;
use session::Session;

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
}
