//! Frame types, their bounds, and the encoder. Parsing a frame body lives here too
//! (one place knows each layout); the streaming part is in `decode`.

use crate::decode::DecodeError;
use std::fmt;

/// The protocol version this crate speaks.
pub const VERSION: u16 = 1;
/// First bytes of HELLO: a stray client (HTTP, TLS to a plain port) is told apart at once.
pub const MAGIC: [u8; 4] = *b"BHPL";
/// The ALPN protocol name of the gateway over TLS.
pub const ALPN: &[u8] = b"bulkhead-pool/1";
/// Length prefix (u32, big-endian) that precedes every frame.
pub const HEADER_LEN: usize = 4;
/// Largest frame (type byte + payload) either side may send.
pub const MAX_FRAME_LEN: usize = 65_536;
/// Largest DATA payload: the frame bound less the type byte.
pub const MAX_DATA_LEN: usize = MAX_FRAME_LEN - 1;
/// Program and user names (the user name is the session's alternate id).
pub const MAX_NAME_LEN: usize = 64;
/// Credentials (tokens) are printable ASCII up to this length.
pub const MAX_CREDENTIAL_LEN: usize = 128;
/// Human-readable text in REFUSED and ERROR.
pub const MAX_MESSAGE_LEN: usize = 512;
/// Longest wait an ALLOCATE may ask for (5 minutes).
pub const MAX_WAIT_MS: u32 = 300_000;

/// A session, as the allocator numbers it; never zero on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(transparent)
)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// ALLOCATE's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocate {
    /// The transaction program name.
    pub program: String,
    pub user: String,
    pub credential: String,
    /// How long to wait in the pool's queue when no partition is idle (0: do not wait).
    pub wait_ms: u32,
}

/// Why an ALLOCATE (or the connection) was refused. The last four end the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefuseReason {
    UnknownProgram,
    UnknownUser,
    BadCredential,
    NotPermitted,
    PoolExhausted,
    UserLimit,
    Malformed,
    TooLarge,
    Version,
    Internal,
    /// A code from a newer peer; kept so it can be shown and passed on.
    Other(u8),
}

impl RefuseReason {
    pub fn code(self) -> u8 {
        match self {
            Self::UnknownProgram => 1,
            Self::UnknownUser => 2,
            Self::BadCredential => 3,
            Self::NotPermitted => 4,
            Self::PoolExhausted => 5,
            Self::UserLimit => 6,
            Self::Malformed => 7,
            Self::TooLarge => 8,
            Self::Version => 9,
            Self::Internal => 10,
            Self::Other(c) => c,
        }
    }

    pub fn from_code(c: u8) -> Self {
        match c {
            1 => Self::UnknownProgram,
            2 => Self::UnknownUser,
            3 => Self::BadCredential,
            4 => Self::NotPermitted,
            5 => Self::PoolExhausted,
            6 => Self::UserLimit,
            7 => Self::Malformed,
            8 => Self::TooLarge,
            9 => Self::Version,
            10 => Self::Internal,
            c => Self::Other(c),
        }
    }

    /// Whether the server closes the connection after this refusal.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            Self::Malformed | Self::TooLarge | Self::Version | Self::Internal
        )
    }

    /// Short stable name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownProgram => "unknown-program",
            Self::UnknownUser => "unknown-user",
            Self::BadCredential => "bad-credential",
            Self::NotPermitted => "not-permitted",
            Self::PoolExhausted => "pool-exhausted",
            Self::UserLimit => "user-limit",
            Self::Malformed => "malformed",
            Self::TooLarge => "too-large",
            Self::Version => "version",
            Self::Internal => "internal",
            Self::Other(_) => "other",
        }
    }
}

/// Why the server ended a session on its own; every ERROR ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    ProgramDied,
    IdleTimeout,
    CleanupFailed,
    Shutdown,
    Internal,
    Other(u8),
}

impl ErrorCode {
    pub fn code(self) -> u8 {
        match self {
            Self::ProgramDied => 1,
            Self::IdleTimeout => 2,
            Self::CleanupFailed => 3,
            Self::Shutdown => 4,
            Self::Internal => 5,
            Self::Other(c) => c,
        }
    }

    pub fn from_code(c: u8) -> Self {
        match c {
            1 => Self::ProgramDied,
            2 => Self::IdleTimeout,
            3 => Self::CleanupFailed,
            4 => Self::Shutdown,
            5 => Self::Internal,
            c => Self::Other(c),
        }
    }
}

/// One protocol frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello {
        min_version: u16,
        max_version: u16,
    },
    Welcome {
        version: u16,
    },
    Allocate(Allocate),
    Allocated {
        session: SessionId,
    },
    Refused {
        reason: RefuseReason,
        message: String,
    },
    Data(Vec<u8>),
    /// `confirm`: the client waits for CONFIRMED; without it the server ends the
    /// session (cleanup still runs) and sends nothing more for it.
    Deallocate {
        confirm: bool,
    },
    Confirmed,
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// The type byte of each frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    Hello = 0x01,
    Welcome = 0x02,
    Allocate = 0x10,
    Allocated = 0x11,
    Refused = 0x12,
    Data = 0x20,
    Deallocate = 0x30,
    Confirmed = 0x31,
    Error = 0x40,
}

impl FrameType {
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => Self::Hello,
            0x02 => Self::Welcome,
            0x10 => Self::Allocate,
            0x11 => Self::Allocated,
            0x12 => Self::Refused,
            0x20 => Self::Data,
            0x30 => Self::Deallocate,
            0x31 => Self::Confirmed,
            0x40 => Self::Error,
            _ => return None,
        })
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Program and user names: 1..=64 of `[A-Za-z0-9._@-]`, starting with a letter or
/// digit, so they are safe in the session line, in logs and as label values.
pub fn check_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

fn check_credential(s: &str) -> bool {
    s.len() <= MAX_CREDENTIAL_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Cuts text to the message bound on a char boundary, so encoding never fails on it.
fn bounded_message(s: &str) -> &str {
    if s.len() <= MAX_MESSAGE_LEN {
        return s;
    }
    let mut end = MAX_MESSAGE_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A frame that cannot be sent as it stands (a field out of bounds).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode {frame}: {field} out of bounds")]
pub struct EncodeError {
    pub frame: FrameType,
    pub field: &'static str,
}

impl Frame {
    pub fn frame_type(&self) -> FrameType {
        match self {
            Self::Hello { .. } => FrameType::Hello,
            Self::Welcome { .. } => FrameType::Welcome,
            Self::Allocate(_) => FrameType::Allocate,
            Self::Allocated { .. } => FrameType::Allocated,
            Self::Refused { .. } => FrameType::Refused,
            Self::Data(_) => FrameType::Data,
            Self::Deallocate { .. } => FrameType::Deallocate,
            Self::Confirmed => FrameType::Confirmed,
            Self::Error { .. } => FrameType::Error,
        }
    }

    /// Checks every field against its bound; what passes encodes and decodes back equal.
    /// Messages are not checked: `encode` cuts them to `MAX_MESSAGE_LEN`.
    pub fn validate(&self) -> Result<(), EncodeError> {
        let bad = |field| {
            Err(EncodeError {
                frame: self.frame_type(),
                field,
            })
        };
        match self {
            Self::Hello {
                min_version,
                max_version,
            } if min_version > max_version || *min_version == 0 => bad("version range"),
            Self::Allocate(a) => {
                if !check_name(&a.program) {
                    bad("program")
                } else if !check_name(&a.user) {
                    bad("user")
                } else if !check_credential(&a.credential) {
                    bad("credential")
                } else if a.wait_ms > MAX_WAIT_MS {
                    bad("wait_ms")
                } else {
                    Ok(())
                }
            }
            Self::Allocated { session } if session.0 == 0 => bad("session"),
            Self::Data(d) if d.len() > MAX_DATA_LEN => bad("data"),
            _ => Ok(()),
        }
    }

    /// Appends the frame, length prefix included, to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.validate()?;
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        out.push(self.frame_type() as u8);
        match self {
            Self::Hello {
                min_version,
                max_version,
            } => {
                out.extend_from_slice(&MAGIC);
                out.extend_from_slice(&min_version.to_be_bytes());
                out.extend_from_slice(&max_version.to_be_bytes());
            }
            Self::Welcome { version } => out.extend_from_slice(&version.to_be_bytes()),
            Self::Allocate(a) => {
                for s in [&a.program, &a.user, &a.credential] {
                    out.push(s.len() as u8); // bounded above by validate()
                    out.extend_from_slice(s.as_bytes());
                }
                out.extend_from_slice(&a.wait_ms.to_be_bytes());
            }
            Self::Allocated { session } => out.extend_from_slice(&session.0.to_be_bytes()),
            Self::Refused { reason, message } => put_coded(out, reason.code(), message),
            Self::Error { code, message } => put_coded(out, code.code(), message),
            Self::Data(d) => out.extend_from_slice(d),
            Self::Deallocate { confirm } => out.push(u8::from(*confirm)),
            Self::Confirmed => {}
        }
        let len = (out.len() - start - HEADER_LEN) as u32;
        out[start..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// The frame as bytes, for callers that send one frame at a time.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut v = Vec::new();
        self.encode(&mut v)?;
        Ok(v)
    }

    /// Parses one frame's body (type byte first, length prefix already removed).
    pub fn parse(body: &[u8]) -> Result<Frame, DecodeError> {
        let (&ty, rest) = body.split_first().ok_or(DecodeError::EmptyFrame)?;
        let ty = FrameType::from_byte(ty).ok_or(DecodeError::UnknownFrameType(ty))?;
        let mut r = Reader { buf: rest, ty };
        let frame = match ty {
            FrameType::Hello => {
                if r.take(4, "magic")? != MAGIC {
                    return Err(DecodeError::BadMagic);
                }
                let min_version = r.u16("min_version")?;
                let max_version = r.u16("max_version")?;
                if min_version == 0 || min_version > max_version {
                    return Err(DecodeError::BadVersionRange {
                        min: min_version,
                        max: max_version,
                    });
                }
                Frame::Hello {
                    min_version,
                    max_version,
                }
            }
            FrameType::Welcome => Frame::Welcome {
                version: r.u16("version")?,
            },
            FrameType::Allocate => {
                let program = r.name("program")?;
                let user = r.name("user")?;
                let credential = r.str8("credential", MAX_CREDENTIAL_LEN)?;
                if !check_credential(&credential) {
                    return Err(DecodeError::BadChars {
                        field: "credential",
                    });
                }
                let wait_ms = r.u32("wait_ms")?;
                if wait_ms > MAX_WAIT_MS {
                    return Err(DecodeError::WaitTooLong {
                        ms: wait_ms,
                        max: MAX_WAIT_MS,
                    });
                }
                Frame::Allocate(Allocate {
                    program,
                    user,
                    credential,
                    wait_ms,
                })
            }
            FrameType::Allocated => {
                let session = r.u64("session")?;
                if session == 0 {
                    return Err(DecodeError::ZeroSession);
                }
                Frame::Allocated {
                    session: SessionId(session),
                }
            }
            FrameType::Refused => {
                let reason = RefuseReason::from_code(r.u8("reason")?);
                Frame::Refused {
                    reason,
                    message: r.message()?,
                }
            }
            FrameType::Error => {
                let code = ErrorCode::from_code(r.u8("code")?);
                Frame::Error {
                    code,
                    message: r.message()?,
                }
            }
            // The frame bound already holds DATA to MAX_DATA_LEN.
            FrameType::Data => Frame::Data(std::mem::take(&mut r.buf).to_vec()),
            FrameType::Deallocate => match r.u8("flags")? {
                0 => Frame::Deallocate { confirm: false },
                1 => Frame::Deallocate { confirm: true },
                flags => return Err(DecodeError::BadFlags { flags }),
            },
            FrameType::Confirmed => Frame::Confirmed,
        };
        if !r.buf.is_empty() {
            return Err(DecodeError::TrailingBytes {
                frame: ty,
                extra: r.buf.len(),
            });
        }
        Ok(frame)
    }
}

fn put_coded(out: &mut Vec<u8>, code: u8, message: &str) {
    let m = bounded_message(message);
    out.push(code);
    out.extend_from_slice(&(m.len() as u16).to_be_bytes());
    out.extend_from_slice(m.as_bytes());
}

/// Bounded field reader over one frame body.
struct Reader<'a> {
    buf: &'a [u8],
    ty: FrameType,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                frame: self.ty,
                field,
            });
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, field)?;
        Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    fn utf8(&mut self, n: usize, field: &'static str) -> Result<String, DecodeError> {
        let b = self.take(n, field)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| DecodeError::BadUtf8 { field })
    }

    fn str8(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let len = self.u8(field)? as usize;
        if len > max {
            return Err(DecodeError::FieldTooLong { field, len, max });
        }
        self.utf8(len, field)
    }

    fn name(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let s = self.str8(field, MAX_NAME_LEN)?;
        if s.is_empty() {
            return Err(DecodeError::FieldEmpty { field });
        }
        if !check_name(&s) {
            return Err(DecodeError::BadChars { field });
        }
        Ok(s)
    }

    fn message(&mut self) -> Result<String, DecodeError> {
        let len = self.u16("message")? as usize;
        if len > MAX_MESSAGE_LEN {
            return Err(DecodeError::FieldTooLong {
                field: "message",
                len,
                max: MAX_MESSAGE_LEN,
            });
        }
        self.utf8(len, "message")
    }
}
