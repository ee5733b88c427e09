//! The service-pool gateway protocol (docs/pool-protocol.md), sans-I/O.
//!
//! [`Frame`] and its [`encode`](Frame::encode) / [`Decoder`] are the wire format;
//! [`Connection`] is the per-connection state machine both ends run (which frame is
//! valid in which state); [`SessionLine`] is the one line a program in a pool
//! partition reads before the conversation. No sockets, no clocks: the caller moves
//! bytes. [`client`] (feature `tokio`) is the thin async adapter for programs and the CLI.

mod conn;
mod decode;
mod frame;
mod session_line;

#[cfg(feature = "tokio")]
pub mod client;

pub use conn::{ConnError, Connection, Role, State};
pub use decode::{DecodeError, Decoder};
pub use frame::{
    check_name, Allocate, ErrorCode, Frame, FrameType, RefuseReason, SessionId, ALPN, HEADER_LEN,
    MAGIC, MAX_CREDENTIAL_LEN, MAX_DATA_LEN, MAX_FRAME_LEN, MAX_MESSAGE_LEN, MAX_NAME_LEN,
    MAX_WAIT_MS, VERSION,
};
pub use session_line::{SessionLine, SessionLineError, MAX_SESSION_LINE_LEN};
