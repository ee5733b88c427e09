//! Attribute-value pairs (RFC 2661 §4.1, §4.4) and AVP hiding (§4.3).

use crate::DecodeError;
use md5::{Digest, Md5};

/// IETF attribute types (§4.4).
pub mod attr {
    pub const MESSAGE_TYPE: u16 = 0;
    pub const RESULT_CODE: u16 = 1;
    pub const PROTOCOL_VERSION: u16 = 2;
    pub const FRAMING_CAPABILITIES: u16 = 3;
    pub const BEARER_CAPABILITIES: u16 = 4;
    pub const TIE_BREAKER: u16 = 5;
    pub const FIRMWARE_REVISION: u16 = 6;
    pub const HOST_NAME: u16 = 7;
    pub const VENDOR_NAME: u16 = 8;
    pub const ASSIGNED_TUNNEL_ID: u16 = 9;
    pub const RECEIVE_WINDOW_SIZE: u16 = 10;
    pub const CHALLENGE: u16 = 11;
    pub const Q931_CAUSE: u16 = 12;
    pub const CHALLENGE_RESPONSE: u16 = 13;
    pub const ASSIGNED_SESSION_ID: u16 = 14;
    pub const CALL_SERIAL_NUMBER: u16 = 15;
    pub const MINIMUM_BPS: u16 = 16;
    pub const MAXIMUM_BPS: u16 = 17;
    pub const BEARER_TYPE: u16 = 18;
    pub const FRAMING_TYPE: u16 = 19;
    pub const CALLED_NUMBER: u16 = 21;
    pub const CALLING_NUMBER: u16 = 22;
    pub const SUB_ADDRESS: u16 = 23;
    pub const TX_CONNECT_SPEED: u16 = 24;
    pub const PHYSICAL_CHANNEL_ID: u16 = 25;
    pub const INITIAL_RECEIVED_LCP_CONFREQ: u16 = 26;
    pub const LAST_SENT_LCP_CONFREQ: u16 = 27;
    pub const LAST_RECEIVED_LCP_CONFREQ: u16 = 28;
    pub const PROXY_AUTHEN_TYPE: u16 = 29;
    pub const PROXY_AUTHEN_NAME: u16 = 30;
    pub const PROXY_AUTHEN_CHALLENGE: u16 = 31;
    pub const PROXY_AUTHEN_ID: u16 = 32;
    pub const PROXY_AUTHEN_RESPONSE: u16 = 33;
    pub const CALL_ERRORS: u16 = 34;
    pub const ACCM: u16 = 35;
    pub const RANDOM_VECTOR: u16 = 36;
    pub const PRIVATE_GROUP_ID: u16 = 37;
    pub const RX_CONNECT_SPEED: u16 = 38;
    pub const SEQUENCING_REQUIRED: u16 = 39;
}

const M_BIT: u16 = 0x8000;
const H_BIT: u16 = 0x4000;
const RESERVED_BITS: u16 = 0x3c00;
const LEN_MASK: u16 = 0x03ff;
pub const AVP_HEADER_LEN: usize = 6;
pub const MAX_AVP_LEN: usize = 1023;

/// Result Code AVP value (§4.4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultCode {
    pub result: u16,
    pub error: Option<u16>,
    pub message: Option<String>,
}

impl ResultCode {
    /// A result with an error code (always sent: xl2tpd < 1.3.14 rejects the short form).
    pub fn new(result: u16, error: u16, message: impl Into<String>) -> Self {
        let message = message.into();
        ResultCode {
            result,
            error: Some(error),
            message: (!message.is_empty()).then_some(message),
        }
    }
}

impl std::fmt::Display for ResultCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "result {}", self.result)?;
        if let Some(e) = self.error {
            write!(f, " error {e}")?;
        }
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

/// Call Errors AVP value (§4.4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CallErrors {
    pub crc: u32,
    pub framing: u32,
    pub hardware_overruns: u32,
    pub buffer_overruns: u32,
    pub timeout: u32,
    pub alignment: u32,
}

/// One AVP with its value decoded. Vendor AVPs and IETF AVPs this crate does not know
/// are kept as [`Avp::Other`] with their M bit, so the caller can apply §4.1's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Avp {
    ResultCode(ResultCode),
    ProtocolVersion {
        version: u8,
        revision: u8,
    },
    FramingCapabilities(u32),
    BearerCapabilities(u32),
    TieBreaker([u8; 8]),
    FirmwareRevision(u16),
    HostName(Vec<u8>),
    VendorName(Vec<u8>),
    AssignedTunnelId(u16),
    ReceiveWindowSize(u16),
    Challenge(Vec<u8>),
    Q931Cause {
        cause: u16,
        message: u8,
        advisory: Vec<u8>,
    },
    ChallengeResponse([u8; 16]),
    AssignedSessionId(u16),
    CallSerialNumber(u32),
    MinimumBps(u32),
    MaximumBps(u32),
    BearerType(u32),
    FramingType(u32),
    CalledNumber(Vec<u8>),
    CallingNumber(Vec<u8>),
    SubAddress(Vec<u8>),
    TxConnectSpeed(u32),
    PhysicalChannelId(u32),
    InitialReceivedLcpConfreq(Vec<u8>),
    LastSentLcpConfreq(Vec<u8>),
    LastReceivedLcpConfreq(Vec<u8>),
    ProxyAuthenType(u16),
    ProxyAuthenName(Vec<u8>),
    ProxyAuthenChallenge(Vec<u8>),
    /// Reserved octet and ID octet, kept as one 16-bit field.
    ProxyAuthenId(u16),
    ProxyAuthenResponse(Vec<u8>),
    CallErrors(CallErrors),
    Accm {
        send: u32,
        receive: u32,
    },
    RandomVector(Vec<u8>),
    PrivateGroupId(Vec<u8>),
    RxConnectSpeed(u32),
    SequencingRequired,
    Other {
        vendor: u16,
        attr: u16,
        mandatory: bool,
        value: Vec<u8>,
    },
}

impl Avp {
    /// (vendor, attribute type).
    pub fn id(&self) -> (u16, u16) {
        use attr::*;
        let a = match self {
            Avp::ResultCode(_) => RESULT_CODE,
            Avp::ProtocolVersion { .. } => PROTOCOL_VERSION,
            Avp::FramingCapabilities(_) => FRAMING_CAPABILITIES,
            Avp::BearerCapabilities(_) => BEARER_CAPABILITIES,
            Avp::TieBreaker(_) => TIE_BREAKER,
            Avp::FirmwareRevision(_) => FIRMWARE_REVISION,
            Avp::HostName(_) => HOST_NAME,
            Avp::VendorName(_) => VENDOR_NAME,
            Avp::AssignedTunnelId(_) => ASSIGNED_TUNNEL_ID,
            Avp::ReceiveWindowSize(_) => RECEIVE_WINDOW_SIZE,
            Avp::Challenge(_) => CHALLENGE,
            Avp::Q931Cause { .. } => Q931_CAUSE,
            Avp::ChallengeResponse(_) => CHALLENGE_RESPONSE,
            Avp::AssignedSessionId(_) => ASSIGNED_SESSION_ID,
            Avp::CallSerialNumber(_) => CALL_SERIAL_NUMBER,
            Avp::MinimumBps(_) => MINIMUM_BPS,
            Avp::MaximumBps(_) => MAXIMUM_BPS,
            Avp::BearerType(_) => BEARER_TYPE,
            Avp::FramingType(_) => FRAMING_TYPE,
            Avp::CalledNumber(_) => CALLED_NUMBER,
            Avp::CallingNumber(_) => CALLING_NUMBER,
            Avp::SubAddress(_) => SUB_ADDRESS,
            Avp::TxConnectSpeed(_) => TX_CONNECT_SPEED,
            Avp::PhysicalChannelId(_) => PHYSICAL_CHANNEL_ID,
            Avp::InitialReceivedLcpConfreq(_) => INITIAL_RECEIVED_LCP_CONFREQ,
            Avp::LastSentLcpConfreq(_) => LAST_SENT_LCP_CONFREQ,
            Avp::LastReceivedLcpConfreq(_) => LAST_RECEIVED_LCP_CONFREQ,
            Avp::ProxyAuthenType(_) => PROXY_AUTHEN_TYPE,
            Avp::ProxyAuthenName(_) => PROXY_AUTHEN_NAME,
            Avp::ProxyAuthenChallenge(_) => PROXY_AUTHEN_CHALLENGE,
            Avp::ProxyAuthenId(_) => PROXY_AUTHEN_ID,
            Avp::ProxyAuthenResponse(_) => PROXY_AUTHEN_RESPONSE,
            Avp::CallErrors(_) => CALL_ERRORS,
            Avp::Accm { .. } => ACCM,
            Avp::RandomVector(_) => RANDOM_VECTOR,
            Avp::PrivateGroupId(_) => PRIVATE_GROUP_ID,
            Avp::RxConnectSpeed(_) => RX_CONNECT_SPEED,
            Avp::SequencingRequired => SEQUENCING_REQUIRED,
            Avp::Other { vendor, attr, .. } => return (*vendor, *attr),
        };
        (0, a)
    }

    /// The M bit §4.4 prescribes for this attribute.
    pub fn mandatory(&self) -> bool {
        use attr::*;
        match self {
            Avp::Other { mandatory, .. } => *mandatory,
            _ => !matches!(
                self.id().1,
                TIE_BREAKER
                    | FIRMWARE_REVISION
                    | VENDOR_NAME
                    | PHYSICAL_CHANNEL_ID
                    | INITIAL_RECEIVED_LCP_CONFREQ
                    | LAST_SENT_LCP_CONFREQ
                    | LAST_RECEIVED_LCP_CONFREQ
                    | PROXY_AUTHEN_TYPE
                    | PROXY_AUTHEN_NAME
                    | PROXY_AUTHEN_CHALLENGE
                    | PROXY_AUTHEN_ID
                    | PROXY_AUTHEN_RESPONSE
                    | PRIVATE_GROUP_ID
                    | RX_CONNECT_SPEED
            ),
        }
    }

    /// Whether §4.3/§4.4 allow the H bit on this attribute.
    pub fn hideable(&self) -> bool {
        use attr::*;
        !matches!(
            self.id(),
            (
                0,
                MESSAGE_TYPE
                    | RESULT_CODE
                    | PROTOCOL_VERSION
                    | HOST_NAME
                    | RECEIVE_WINDOW_SIZE
                    | TIE_BREAKER
                    | RANDOM_VECTOR
            )
        )
    }

    fn write_value(&self, out: &mut Vec<u8>) {
        let u16b = |out: &mut Vec<u8>, v: u16| out.extend_from_slice(&v.to_be_bytes());
        let u32b = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&v.to_be_bytes());
        match self {
            Avp::ResultCode(r) => {
                u16b(out, r.result);
                if let Some(e) = r.error {
                    u16b(out, e);
                    if let Some(m) = &r.message {
                        out.extend_from_slice(m.as_bytes());
                    }
                }
            }
            Avp::ProtocolVersion { version, revision } => {
                out.extend_from_slice(&[*version, *revision])
            }
            Avp::FramingCapabilities(v)
            | Avp::BearerCapabilities(v)
            | Avp::CallSerialNumber(v)
            | Avp::MinimumBps(v)
            | Avp::MaximumBps(v)
            | Avp::BearerType(v)
            | Avp::FramingType(v)
            | Avp::TxConnectSpeed(v)
            | Avp::PhysicalChannelId(v)
            | Avp::RxConnectSpeed(v) => u32b(out, *v),
            Avp::TieBreaker(v) => out.extend_from_slice(v),
            Avp::FirmwareRevision(v)
            | Avp::AssignedTunnelId(v)
            | Avp::ReceiveWindowSize(v)
            | Avp::AssignedSessionId(v)
            | Avp::ProxyAuthenType(v)
            | Avp::ProxyAuthenId(v) => u16b(out, *v),
            Avp::HostName(v)
            | Avp::VendorName(v)
            | Avp::Challenge(v)
            | Avp::CalledNumber(v)
            | Avp::CallingNumber(v)
            | Avp::SubAddress(v)
            | Avp::InitialReceivedLcpConfreq(v)
            | Avp::LastSentLcpConfreq(v)
            | Avp::LastReceivedLcpConfreq(v)
            | Avp::ProxyAuthenName(v)
            | Avp::ProxyAuthenChallenge(v)
            | Avp::ProxyAuthenResponse(v)
            | Avp::RandomVector(v)
            | Avp::PrivateGroupId(v)
            | Avp::Other { value: v, .. } => out.extend_from_slice(v),
            Avp::Q931Cause {
                cause,
                message,
                advisory,
            } => {
                u16b(out, *cause);
                out.push(*message);
                out.extend_from_slice(advisory);
            }
            Avp::ChallengeResponse(v) => out.extend_from_slice(v),
            Avp::CallErrors(e) => {
                u16b(out, 0);
                for v in [
                    e.crc,
                    e.framing,
                    e.hardware_overruns,
                    e.buffer_overruns,
                    e.timeout,
                    e.alignment,
                ] {
                    u32b(out, v);
                }
            }
            Avp::Accm { send, receive } => {
                u16b(out, 0);
                u32b(out, *send);
                u32b(out, *receive);
            }
            Avp::SequencingRequired => {}
        }
    }

    /// Appends the AVP. With `hide = Some((secret, random_vector, pad))` the value is
    /// hidden as in §4.3; the caller must have put that Random Vector earlier in the message.
    pub fn encode(
        &self,
        out: &mut Vec<u8>,
        hide: Option<(&[u8], &[u8], &[u8])>,
    ) -> Result<(), EncodeError> {
        let (vendor, attr) = self.id();
        let start = out.len();
        out.extend_from_slice(&[0; AVP_HEADER_LEN]);
        let mut flags = if self.mandatory() { M_BIT } else { 0 };
        match hide {
            Some((secret, rv, pad)) if self.hideable() => {
                let mut plain = Vec::new();
                self.write_value(&mut plain);
                let mut buf = Vec::with_capacity(2 + plain.len() + pad.len());
                buf.extend_from_slice(&(plain.len() as u16).to_be_bytes());
                buf.extend_from_slice(&plain);
                buf.extend_from_slice(pad);
                hide_in_place(attr, secret, rv, &mut buf);
                out.extend_from_slice(&buf);
                flags |= H_BIT;
            }
            _ => self.write_value(out),
        }
        let len = out.len() - start;
        if len > MAX_AVP_LEN {
            out.truncate(start);
            return Err(EncodeError::AvpTooLong(attr));
        }
        out[start..start + 2].copy_from_slice(&(flags | len as u16).to_be_bytes());
        out[start + 2..start + 4].copy_from_slice(&vendor.to_be_bytes());
        out[start + 4..start + 6].copy_from_slice(&attr.to_be_bytes());
        Ok(())
    }

    /// Decodes an IETF or vendor value already unhidden.
    pub fn decode_value(
        vendor: u16,
        attr: u16,
        mandatory: bool,
        v: &[u8],
    ) -> Result<Avp, DecodeError> {
        use attr::*;
        use Avp::*;
        if vendor != 0 {
            return Ok(Avp::Other {
                vendor,
                attr,
                mandatory,
                value: v.to_vec(),
            });
        }
        let bad = || DecodeError::AvpLength(attr);
        let exact = |n: usize| if v.len() == n { Ok(()) } else { Err(bad()) };
        let u16v = || -> Result<u16, DecodeError> {
            exact(2)?;
            Ok(u16::from_be_bytes([v[0], v[1]]))
        };
        let u32v = || -> Result<u32, DecodeError> {
            exact(4)?;
            Ok(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
        };
        let be32 = |at: usize| u32::from_be_bytes([v[at], v[at + 1], v[at + 2], v[at + 3]]);
        let bytes = || v.to_vec();
        Ok(match attr {
            RESULT_CODE => {
                if v.len() < 2 || v.len() == 3 {
                    return Err(bad());
                }
                ResultCode(crate::avp::ResultCode {
                    result: u16::from_be_bytes([v[0], v[1]]),
                    error: (v.len() >= 4).then(|| u16::from_be_bytes([v[2], v[3]])),
                    message: (v.len() > 4).then(|| String::from_utf8_lossy(&v[4..]).into_owned()),
                })
            }
            PROTOCOL_VERSION => {
                exact(2)?;
                ProtocolVersion {
                    version: v[0],
                    revision: v[1],
                }
            }
            FRAMING_CAPABILITIES => FramingCapabilities(u32v()?),
            BEARER_CAPABILITIES => BearerCapabilities(u32v()?),
            TIE_BREAKER => {
                exact(8)?;
                TieBreaker(v.try_into().unwrap())
            }
            FIRMWARE_REVISION => FirmwareRevision(u16v()?),
            HOST_NAME if !v.is_empty() => HostName(bytes()),
            VENDOR_NAME => VendorName(bytes()),
            ASSIGNED_TUNNEL_ID => AssignedTunnelId(u16v()?),
            RECEIVE_WINDOW_SIZE => ReceiveWindowSize(u16v()?),
            CHALLENGE if !v.is_empty() => Challenge(bytes()),
            Q931_CAUSE => {
                if v.len() < 3 {
                    return Err(bad());
                }
                Q931Cause {
                    cause: u16::from_be_bytes([v[0], v[1]]),
                    message: v[2],
                    advisory: v[3..].to_vec(),
                }
            }
            CHALLENGE_RESPONSE => {
                exact(16)?;
                ChallengeResponse(v.try_into().unwrap())
            }
            ASSIGNED_SESSION_ID => AssignedSessionId(u16v()?),
            CALL_SERIAL_NUMBER => CallSerialNumber(u32v()?),
            MINIMUM_BPS => MinimumBps(u32v()?),
            MAXIMUM_BPS => MaximumBps(u32v()?),
            BEARER_TYPE => BearerType(u32v()?),
            FRAMING_TYPE => FramingType(u32v()?),
            CALLED_NUMBER => CalledNumber(bytes()),
            CALLING_NUMBER => CallingNumber(bytes()),
            SUB_ADDRESS => SubAddress(bytes()),
            TX_CONNECT_SPEED => TxConnectSpeed(u32v()?),
            PHYSICAL_CHANNEL_ID => PhysicalChannelId(u32v()?),
            INITIAL_RECEIVED_LCP_CONFREQ => InitialReceivedLcpConfreq(bytes()),
            LAST_SENT_LCP_CONFREQ => LastSentLcpConfreq(bytes()),
            LAST_RECEIVED_LCP_CONFREQ => LastReceivedLcpConfreq(bytes()),
            PROXY_AUTHEN_TYPE => ProxyAuthenType(u16v()?),
            PROXY_AUTHEN_NAME => ProxyAuthenName(bytes()),
            PROXY_AUTHEN_CHALLENGE => ProxyAuthenChallenge(bytes()),
            PROXY_AUTHEN_ID => ProxyAuthenId(u16v()?),
            PROXY_AUTHEN_RESPONSE => ProxyAuthenResponse(bytes()),
            CALL_ERRORS => {
                exact(26)?;
                crate::avp::Avp::CallErrors(crate::avp::CallErrors {
                    crc: be32(2),
                    framing: be32(6),
                    hardware_overruns: be32(10),
                    buffer_overruns: be32(14),
                    timeout: be32(18),
                    alignment: be32(22),
                })
            }
            ACCM => {
                exact(10)?;
                Accm {
                    send: be32(2),
                    receive: be32(6),
                }
            }
            RANDOM_VECTOR if !v.is_empty() => RandomVector(bytes()),
            PRIVATE_GROUP_ID => PrivateGroupId(bytes()),
            RX_CONNECT_SPEED => RxConnectSpeed(u32v()?),
            SEQUENCING_REQUIRED => {
                exact(0)?;
                SequencingRequired
            }
            HOST_NAME | CHALLENGE | RANDOM_VECTOR => return Err(bad()),
            _ => Other {
                vendor,
                attr,
                mandatory,
                value: bytes(),
            },
        })
    }
}

/// One AVP as it sits on the wire, value still hidden if H is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawAvp<'a> {
    pub mandatory: bool,
    pub hidden: bool,
    /// A reserved bit was set: §4.1 says treat the AVP as unrecognized.
    pub reserved: bool,
    pub vendor: u16,
    pub attr: u16,
    pub value: &'a [u8],
}

/// Iterates the AVPs of a control message body.
pub fn raw_avps(mut buf: &[u8]) -> impl Iterator<Item = Result<RawAvp<'_>, DecodeError>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        if buf.len() < AVP_HEADER_LEN {
            buf = &[];
            return Some(Err(DecodeError::Truncated));
        }
        let flags = u16::from_be_bytes([buf[0], buf[1]]);
        let len = (flags & LEN_MASK) as usize;
        if len < AVP_HEADER_LEN || len > buf.len() {
            buf = &[];
            return Some(Err(DecodeError::AvpHeaderLength(len)));
        }
        let avp = RawAvp {
            mandatory: flags & M_BIT != 0,
            hidden: flags & H_BIT != 0,
            reserved: flags & RESERVED_BITS != 0,
            vendor: u16::from_be_bytes([buf[2], buf[3]]),
            attr: u16::from_be_bytes([buf[4], buf[5]]),
            value: &buf[AVP_HEADER_LEN..len],
        };
        buf = &buf[len..];
        Some(Ok(avp))
    })
}

/// XORs `buf` (length field, value, padding) with §4.3's MD5 key stream, hiding it.
pub fn hide_in_place(attr: u16, secret: &[u8], rv: &[u8], buf: &mut [u8]) {
    let mut prev: Option<[u8; 16]> = None;
    for chunk in buf.chunks_mut(16) {
        let b = key_block(attr, secret, rv, prev.as_ref());
        for (c, k) in chunk.iter_mut().zip(b) {
            *c ^= k;
        }
        let mut c = [0u8; 16];
        c[..chunk.len()].copy_from_slice(chunk);
        prev = Some(c);
    }
}

/// Reverses [`hide_in_place`] and returns the original value (length field checked).
pub fn unhide(attr: u16, secret: &[u8], rv: &[u8], hidden: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut out = hidden.to_vec();
    let mut prev: Option<[u8; 16]> = None;
    for (i, chunk) in out.chunks_mut(16).enumerate() {
        let b = key_block(attr, secret, rv, prev.as_ref());
        let mut c = [0u8; 16];
        c[..chunk.len()].copy_from_slice(&hidden[i * 16..i * 16 + chunk.len()]);
        for (p, k) in chunk.iter_mut().zip(b) {
            *p ^= k;
        }
        prev = Some(c);
    }
    if out.len() < 2 {
        return Err(DecodeError::Hidden(attr));
    }
    let len = u16::from_be_bytes([out[0], out[1]]) as usize;
    if len + 2 > out.len() {
        return Err(DecodeError::Hidden(attr));
    }
    Ok(out[2..2 + len].to_vec())
}

fn key_block(attr: u16, secret: &[u8], rv: &[u8], prev: Option<&[u8; 16]>) -> [u8; 16] {
    let mut h = Md5::new();
    match prev {
        None => {
            h.update(attr.to_be_bytes());
            h.update(secret);
            h.update(rv);
        }
        Some(c) => {
            h.update(secret);
            h.update(c);
        }
    }
    h.finalize().into()
}

/// Errors building a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("AVP {0} longer than 1023 bytes")]
    AvpTooLong(u16),
    #[error("message longer than 65535 bytes")]
    MessageTooLong,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vector made with an independent Python implementation of §4.3
    /// (hashlib.md5; docs/l2tp.md shows the script): attribute 30 (Proxy Authen Name),
    /// secret "s3cret", RV 00..0f, value "alice@example", pad "PADDING".
    #[test]
    fn hidden_known_vector() {
        let rv: Vec<u8> = (0..16).collect();
        let mut buf = Vec::new();
        buf.extend_from_slice(&13u16.to_be_bytes());
        buf.extend_from_slice(b"alice@example");
        buf.extend_from_slice(b"PADDING");
        hide_in_place(30, b"s3cret", &rv, &mut buf);
        assert_eq!(hex(&buf), KNOWN_HIDDEN);
        assert_eq!(unhide(30, b"s3cret", &rv, &buf).unwrap(), b"alice@example");
        // A wrong secret gives garbage or a bad length, never the value.
        assert_ne!(
            unhide(30, b"other", &rv, &buf).ok().as_deref(),
            Some(&b"alice@example"[..])
        );
    }

    const KNOWN_HIDDEN: &str = include_str!("../tests/vectors/hidden_avp.hex");

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
