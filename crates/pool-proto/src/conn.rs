//! One connection's state machine, run by both ends: a single transition table says
//! which frame each side may send in which state. The server side answers a bad
//! peer by itself (REFUSED malformed/too-large/version) and closes.

use crate::decode::{DecodeError, Decoder};
use crate::frame::{EncodeError, Frame, FrameType, RefuseReason, VERSION};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// Where a conversation stands; both ends hold the same state once bytes in flight land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Before the client's HELLO.
    AwaitHello,
    /// HELLO sent, WELCOME not yet seen.
    AwaitWelcome,
    /// Handshake done, no session.
    Ready,
    /// ALLOCATE sent; ALLOCATED or REFUSED next.
    Allocating,
    InSession,
    /// DEALLOCATE with confirm sent; the program may still send DATA until CONFIRMED.
    Deallocating,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    #[error("malformed input: {0}")]
    Decode(#[from] DecodeError),
    #[error("{frame} from the {from:?} is not valid in state {state:?}")]
    Unexpected {
        state: State,
        frame: FrameType,
        from: Role,
    },
    #[error("no common version: peer speaks {min}..={max}, this end {VERSION}")]
    Version { min: u16, max: u16 },
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("connection closed")]
    Closed,
}

impl ConnError {
    /// The refusal a server sends for this error (None: nothing is sent).
    pub fn refusal(&self) -> Option<RefuseReason> {
        match self {
            Self::Decode(e) if e.is_too_large() => Some(RefuseReason::TooLarge),
            Self::Decode(_) | Self::Unexpected { .. } => Some(RefuseReason::Malformed),
            Self::Version { .. } => Some(RefuseReason::Version),
            Self::Encode(_) | Self::Closed => None,
        }
    }
}

/// The next state after `from` sends `frame` in `state`, or `None` if it may not.
fn transition(state: State, from: Role, frame: &Frame) -> Option<State> {
    use Role::{Client as C, Server as S};
    use State::*;
    let ty = frame.frame_type();
    match (state, from, frame) {
        (Closed, _, _) => None,
        // The server may end any conversation: a fatal refusal or an ERROR.
        (_, S, Frame::Refused { reason, .. }) if reason.is_fatal() => Some(Closed),
        (AwaitHello, _, _) | (AwaitWelcome, C, _) => match (state, from, ty) {
            (AwaitHello, C, FrameType::Hello) => Some(AwaitWelcome),
            _ => None,
        },
        (_, S, Frame::Error { .. }) => Some(Closed),
        (AwaitWelcome, S, Frame::Welcome { .. }) => Some(Ready),
        (Ready, C, Frame::Allocate(_)) => Some(Allocating),
        (Allocating, S, Frame::Allocated { .. }) => Some(InSession),
        (Allocating, S, Frame::Refused { .. }) => Some(Ready),
        (InSession, _, Frame::Data(_)) => Some(InSession),
        (InSession, C, Frame::Deallocate { confirm: true }) => Some(Deallocating),
        // Without confirm the connection ends too: DATA the server sent before it
        // saw the DEALLOCATE could otherwise land in a later session's stream.
        (InSession, C, Frame::Deallocate { confirm: false }) => Some(Closed),
        (Deallocating, S, Frame::Data(_)) => Some(Deallocating),
        (Deallocating, S, Frame::Confirmed) => Some(Ready),
        _ => None,
    }
}

/// A connection, sans I/O: feed received bytes to [`recv`](Self::recv), queue frames
/// with [`send`](Self::send), write out what [`take_transmit`](Self::take_transmit) returns.
#[derive(Debug)]
pub struct Connection {
    role: Role,
    state: State,
    decoder: Decoder,
    transmit: Vec<u8>,
}

impl Connection {
    /// A client connection; its HELLO is already queued.
    pub fn client() -> Self {
        let mut c = Self::new(Role::Client);
        c.send(&Frame::Hello {
            min_version: VERSION,
            max_version: VERSION,
        })
        .expect("HELLO is valid in the first state");
        c
    }

    pub fn server() -> Self {
        Self::new(Role::Server)
    }

    fn new(role: Role) -> Self {
        Self {
            role,
            state: State::AwaitHello,
            decoder: Decoder::new(),
            transmit: Vec::new(),
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn state(&self) -> State {
        self.state
    }

    fn peer(&self) -> Role {
        match self.role {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        }
    }

    /// Queues `frame` if this end may send it now; otherwise changes nothing.
    pub fn send(&mut self, frame: &Frame) -> Result<(), ConnError> {
        if self.state == State::Closed {
            return Err(ConnError::Closed);
        }
        let next = transition(self.state, self.role, frame).ok_or(ConnError::Unexpected {
            state: self.state,
            frame: frame.frame_type(),
            from: self.role,
        })?;
        frame.encode(&mut self.transmit)?;
        self.state = next;
        Ok(())
    }

    /// Bytes queued for the peer, handed over once.
    pub fn take_transmit(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.transmit)
    }

    /// Whether bytes are waiting for [`take_transmit`](Self::take_transmit).
    pub fn has_transmit(&self) -> bool {
        !self.transmit.is_empty()
    }

    /// Consumes bytes from the front of `input` up to one frame and returns it once
    /// complete and valid in the current state. A server answers HELLO itself (WELCOME
    /// or REFUSED version). On any error the connection is closed; a server has then
    /// queued the refusal that tells the client why.
    pub fn recv(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, ConnError> {
        if self.state == State::Closed {
            return Err(ConnError::Closed);
        }
        let frame = match self.decoder.decode(input) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(None),
            Err(e) => {
                let e = ConnError::from(e);
                self.fail(&e);
                return Err(e);
            }
        };
        let Some(next) = transition(self.state, self.peer(), &frame) else {
            let e = ConnError::Unexpected {
                state: self.state,
                frame: frame.frame_type(),
                from: self.peer(),
            };
            self.fail(&e);
            return Err(e);
        };
        self.state = next;
        if let (
            Role::Server,
            Frame::Hello {
                min_version,
                max_version,
            },
        ) = (self.role, &frame)
        {
            if !(*min_version..=*max_version).contains(&VERSION) {
                let e = ConnError::Version {
                    min: *min_version,
                    max: *max_version,
                };
                self.fail(&e);
                return Err(e);
            }
            self.send(&Frame::Welcome { version: VERSION })?;
        }
        Ok(Some(frame))
    }

    /// Ends the connection; a server first queues a fatal refusal saying why.
    fn fail(&mut self, e: &ConnError) {
        if let (Role::Server, Some(reason)) = (self.role, e.refusal()) {
            let refusal = Frame::Refused {
                reason,
                message: e.to_string(),
            };
            // Valid in every open state (fatal refusals always are).
            let _ = self.send(&refusal);
        }
        self.state = State::Closed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Allocate, ErrorCode, SessionId};

    /// Moves everything queued on `from` into `to`, returning the frames `to` accepted.
    fn pump(from: &mut Connection, to: &mut Connection) -> Result<Vec<Frame>, ConnError> {
        let bytes = from.take_transmit();
        let mut input = &bytes[..];
        let mut got = Vec::new();
        while !input.is_empty() {
            if let Some(f) = to.recv(&mut input)? {
                got.push(f);
            }
        }
        Ok(got)
    }

    fn handshake() -> (Connection, Connection) {
        let mut c = Connection::client();
        let mut s = Connection::server();
        pump(&mut c, &mut s).unwrap();
        assert_eq!(
            pump(&mut s, &mut c).unwrap(),
            vec![Frame::Welcome { version: VERSION }]
        );
        assert_eq!((c.state(), s.state()), (State::Ready, State::Ready));
        (c, s)
    }

    fn in_session() -> (Connection, Connection) {
        let (mut c, mut s) = handshake();
        c.send(&Frame::Allocate(Allocate {
            program: "echo".into(),
            user: "alice".into(),
            credential: "t".into(),
            wait_ms: 0,
        }))
        .unwrap();
        pump(&mut c, &mut s).unwrap();
        s.send(&Frame::Allocated {
            session: SessionId(9),
        })
        .unwrap();
        pump(&mut s, &mut c).unwrap();
        assert_eq!((c.state(), s.state()), (State::InSession, State::InSession));
        (c, s)
    }

    #[test]
    fn full_conversation() {
        let (mut c, mut s) = in_session();
        c.send(&Frame::Data(b"ping".to_vec())).unwrap();
        s.send(&Frame::Data(b"pong".to_vec())).unwrap();
        assert_eq!(
            pump(&mut c, &mut s).unwrap(),
            vec![Frame::Data(b"ping".to_vec())]
        );
        c.send(&Frame::Deallocate { confirm: true }).unwrap();
        // DATA from the server crossing the DEALLOCATE is still accepted.
        pump(&mut s, &mut c).unwrap();
        pump(&mut c, &mut s).unwrap();
        s.send(&Frame::Data(b"bye".to_vec())).unwrap();
        s.send(&Frame::Confirmed).unwrap();
        pump(&mut s, &mut c).unwrap();
        assert_eq!((c.state(), s.state()), (State::Ready, State::Ready));
    }

    #[test]
    fn server_refuses_data_before_a_session_and_closes() {
        let (mut c, mut s) = handshake();
        // A hostile client skips the state check by writing raw bytes.
        let mut input = &Frame::Data(b"x".to_vec()).to_bytes().unwrap()[..];
        assert!(matches!(
            s.recv(&mut input),
            Err(ConnError::Unexpected {
                state: State::Ready,
                frame: FrameType::Data,
                from: Role::Client
            })
        ));
        assert_eq!(s.state(), State::Closed);
        let got = pump(&mut s, &mut c).unwrap();
        assert!(matches!(
            &got[..],
            [Frame::Refused {
                reason: RefuseReason::Malformed,
                ..
            }]
        ));
        assert_eq!(c.state(), State::Closed);
    }

    #[test]
    fn send_checks_state_and_changes_nothing_on_refusal() {
        let (mut c, _s) = handshake();
        let e = c.send(&Frame::Deallocate { confirm: true }).unwrap_err();
        assert!(matches!(e, ConnError::Unexpected { .. }));
        assert_eq!(c.state(), State::Ready);
        assert!(!c.has_transmit());
        // A server-only frame from the client.
        assert!(c.send(&Frame::Confirmed).is_err());
    }

    #[test]
    fn version_mismatch_refused() {
        let mut s = Connection::server();
        let mut input = &Frame::Hello {
            min_version: 2,
            max_version: 4,
        }
        .to_bytes()
        .unwrap()[..];
        assert_eq!(
            s.recv(&mut input),
            Err(ConnError::Version { min: 2, max: 4 })
        );
        let mut c = Connection::client();
        c.take_transmit();
        let got = pump(&mut s, &mut c).unwrap();
        assert!(matches!(
            &got[..],
            [Frame::Refused {
                reason: RefuseReason::Version,
                ..
            }]
        ));
    }

    #[test]
    fn too_large_refused_as_too_large() {
        let (_c, mut s) = handshake();
        let mut input: &[u8] = &u32::MAX.to_be_bytes();
        assert!(s.recv(&mut input).is_err());
        let mut c = Connection::client();
        c.take_transmit();
        let out = s.take_transmit();
        let mut d = Decoder::new();
        let f = d.decode(&mut &out[..]).unwrap().unwrap();
        assert!(matches!(
            f,
            Frame::Refused {
                reason: RefuseReason::TooLarge,
                ..
            }
        ));
    }

    #[test]
    fn deallocate_without_confirm_closes_both_ends() {
        let (mut c, mut s) = in_session();
        s.send(&Frame::Data(b"in flight".to_vec())).unwrap();
        c.send(&Frame::Deallocate { confirm: false }).unwrap();
        assert_eq!(c.state(), State::Closed);
        pump(&mut c, &mut s).unwrap();
        assert_eq!(s.state(), State::Closed);
        // The DATA that crossed it is not taken for anything.
        assert_eq!(pump(&mut s, &mut c), Err(ConnError::Closed));
    }

    #[test]
    fn error_ends_session() {
        let (mut c, mut s) = in_session();
        s.send(&Frame::Error {
            code: ErrorCode::ProgramDied,
            message: "exit 1".into(),
        })
        .unwrap();
        pump(&mut s, &mut c).unwrap();
        assert_eq!((c.state(), s.state()), (State::Closed, State::Closed));
        assert_eq!(c.send(&Frame::Data(vec![])), Err(ConnError::Closed));
    }
}
