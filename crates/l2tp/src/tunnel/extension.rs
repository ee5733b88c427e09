//! Bulkhead's AICRQ/AICRP extension and the raw call mode ([`crate::ext`]): arming
//! answer mode at the LAC, and the Call Mode AVP on call requests.

use std::time::{Duration, Instant};

use super::session::{assigned_session, Dir, SessState, Session};
use super::{CallMode, Event, State, Tunnel, TunnelError};
use crate::avp::ResultCode;
use crate::message::Kind;
use crate::result::*;
use crate::{ext, find_avp, Avp, Message};

/// Our extension capability bits.
pub(super) const OUR_CAPS: u32 = ext::CAP_AICRQ | ext::CAP_RAW;

impl Tunnel {
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

    pub(super) fn mode_from(&self, avps: &[Avp]) -> CallMode {
        match self
            .cfg
            .extension
            .and_then(|v| ext::find_u16(avps, v, ext::ATTR_CALL_MODE))
        {
            Some(ext::MODE_RAW) => CallMode::Raw,
            _ => CallMode::Ppp,
        }
    }

    pub(super) fn on_vendor(&mut self, now: Instant, hsession: u16, value: u16, m: Message) {
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

    pub(super) fn ext_mode_avp(&self, mode: CallMode) -> Result<Vec<Avp>, TunnelError> {
        match (mode, self.cfg.extension, self.peer_ext) {
            (CallMode::Ppp, _, _) => Ok(vec![]),
            (CallMode::Raw, Some(v), Some(caps)) if caps & ext::CAP_RAW != 0 => {
                Ok(vec![ext::avp_u16(v, ext::ATTR_CALL_MODE, ext::MODE_RAW)])
            }
            _ => Err(TunnelError::ExtensionNotSupported),
        }
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
}
