//! Sans-I/O L2TPv2 (RFC 2661): header, AVPs (hidden and vendor), control messages,
//! the reliable control channel, tunnel and session state machines for both roles and
//! both call directions, and Bulkhead's AICRQ/AICRP extension ([`ext`]).
//!
//! Nothing here touches a socket or a clock: [`Tunnel`] takes datagrams and the time,
//! and hands back datagrams, a timer deadline and [`Event`]s, as quinn-proto does.

pub mod avp;
pub mod channel;
pub mod ext;
pub mod hdlc;
pub mod header;
pub mod message;
pub mod tunnel;

pub use avp::{Avp, ResultCode};
pub use message::{Kind, Message, MessageType};
pub use tunnel::{CallMode, Config, Event, Role, Tunnel, TunnelError};

/// Default L2TP UDP port (§8.1).
pub const PORT: u16 = 1701;

/// Why bytes from the network were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated")]
    Truncated,
    #[error("unsupported L2TP version {0}")]
    Version(u8),
    #[error("control message with bad header flags {0:#06x}")]
    ControlFlags(u16),
    #[error("bad length field {0}")]
    Length(usize),
    #[error("bad AVP length {0}")]
    AvpHeaderLength(usize),
    #[error("AVP {0} has a value of the wrong size")]
    AvpLength(u16),
    #[error("first AVP is not a Message Type")]
    NoMessageType,
    #[error("hidden AVP {0} cannot be unhidden (no secret or Random Vector, or bad length)")]
    Hidden(u16),
}

/// Result codes (§4.4.2) used by this crate, by name.
pub mod result {
    /// StopCCN results.
    pub const STOP_GENERAL_CLEAR: u16 = 1;
    pub const STOP_GENERAL_ERROR: u16 = 2;
    pub const STOP_NOT_AUTHORIZED: u16 = 4;
    pub const STOP_BAD_VERSION: u16 = 5;
    pub const STOP_SHUTTING_DOWN: u16 = 6;
    pub const STOP_FSM_ERROR: u16 = 7;
    /// CDN results.
    pub const CDN_LOST_CARRIER: u16 = 1;
    pub const CDN_ERROR: u16 = 2;
    pub const CDN_ADMIN: u16 = 3;
    pub const CDN_NO_FACILITIES_TEMP: u16 = 4;
    pub const CDN_NO_FACILITIES_PERM: u16 = 5;
    pub const CDN_INVALID_DESTINATION: u16 = 6;
    pub const CDN_NO_CARRIER: u16 = 7;
    pub const CDN_BUSY: u16 = 8;
    pub const CDN_NO_DIALTONE: u16 = 9;
    pub const CDN_TIMEOUT: u16 = 10;
    pub const CDN_NO_FRAMING: u16 = 11;
    /// General error codes.
    pub const ERR_NONE: u16 = 0;
    pub const ERR_NO_CONTROL: u16 = 1;
    pub const ERR_LENGTH: u16 = 2;
    pub const ERR_RANGE: u16 = 3;
    pub const ERR_NO_RESOURCES: u16 = 4;
    pub const ERR_BAD_SESSION: u16 = 5;
    pub const ERR_VENDOR: u16 = 6;
    pub const ERR_TRY_ANOTHER: u16 = 7;
    pub const ERR_UNKNOWN_MANDATORY: u16 = 8;
}
