//! Session state machines (§5.2–§5.4, §7.4–§7.5): outgoing calls (OCRQ/OCRP/OCCN),
//! incoming calls (ICRQ/ICRP/ICCN), CDN, and the data messages of established calls.

use std::time::Instant;

use rand::Rng;

use super::{
    CallMode, Event, State, Tunnel, TunnelError, BEARER_ANALOG, BEARER_DIGITAL, FRAMING_ASYNC,
};
use crate::avp::ResultCode;
use crate::channel::seq_lt;
use crate::result::*;
use crate::{ext, find_avp, header, Avp, Message, MessageType};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SessState {
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
pub(super) enum Dir {
    Outgoing,
    Incoming,
    Arm,
}

#[derive(Debug)]
pub(super) struct Session {
    pub(super) peer: u16,
    pub(super) state: SessState,
    pub(super) dir: Dir,
    pub(super) lac: bool,
    pub(super) mode: CallMode,
    pub(super) sequencing: bool,
    pub(super) data_ns: u16,
    pub(super) data_nr: u16,
    pub(super) arm_deadline: Option<Instant>,
}

impl Session {
    pub(super) fn new(peer: u16, state: SessState, dir: Dir, lac: bool, mode: CallMode) -> Self {
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

impl Tunnel {
    pub(super) fn data<'a>(
        &mut self,
        h: header::Header,
        body: &'a [u8],
    ) -> Option<(u16, &'a [u8])> {
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

    /// CDN in answer to a session message we cannot accept.
    pub(super) fn refuse_session_message(
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

    pub(super) fn send_cdn(&mut self, local: u16, peer: u16, rc: ResultCode) {
        self.send(
            peer,
            Message::new(
                MessageType::Cdn,
                vec![Avp::ResultCode(rc), Avp::AssignedSessionId(local)],
            ),
        );
    }

    pub(super) fn new_session_id(&mut self) -> Result<u16, TunnelError> {
        for _ in 0..64 {
            let id = self.rng.gen_range(1..=u16::MAX);
            if !self.sessions.contains_key(&id) {
                return Ok(id);
            }
        }
        Err(TunnelError::NoSessionId)
    }

    pub(super) fn on_ocrq(&mut self, now: Instant, m: Message) {
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

    pub(super) fn on_icrq(&mut self, now: Instant, m: Message) {
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

    pub(super) fn on_call_reply(
        &mut self,
        now: Instant,
        hsession: u16,
        t: MessageType,
        m: Message,
    ) {
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

    pub(super) fn on_call_connected(
        &mut self,
        now: Instant,
        hsession: u16,
        t: MessageType,
        m: Message,
    ) {
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

    pub(super) fn on_cdn(&mut self, hsession: u16, m: Message) {
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

    // ---- Commands from the application ----

    pub(super) fn require_established(&self) -> Result<(), TunnelError> {
        if self.state == State::Established {
            Ok(())
        } else {
            Err(TunnelError::NotEstablished)
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

pub(super) fn assigned_session(m: &Message) -> Option<u16> {
    find_avp!(m, Avp::AssignedSessionId)
}
