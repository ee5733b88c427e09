//! The L2TPv2 header (RFC 2661 §3.1).

use crate::DecodeError;

const T_BIT: u16 = 0x8000;
const L_BIT: u16 = 0x4000;
const S_BIT: u16 = 0x0800;
const O_BIT: u16 = 0x0200;
const P_BIT: u16 = 0x0100;
const VERSION_MASK: u16 = 0x000f;

/// Length of a control header (T, L and S set, no offset).
pub const CONTROL_HEADER_LEN: usize = 12;

/// A decoded header. Tunnel and Session IDs are the receiver's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub control: bool,
    pub tunnel: u16,
    pub session: u16,
    /// Ns and Nr, present when the S bit is set.
    pub seq: Option<(u16, u16)>,
    /// Data messages only: the P bit.
    pub priority: bool,
}

/// Splits a datagram into its header and payload, checking everything §3.1 fixes.
pub fn decode(buf: &[u8]) -> Result<(Header, &[u8]), DecodeError> {
    let flags = read_u16(buf, 0)?;
    let version = flags & VERSION_MASK;
    if version != 2 {
        return Err(DecodeError::Version(version as u8));
    }
    let control = flags & T_BIT != 0;
    let has_len = flags & L_BIT != 0;
    let has_seq = flags & S_BIT != 0;
    let has_off = flags & O_BIT != 0;
    if control && (!has_len || !has_seq || has_off) {
        return Err(DecodeError::ControlFlags(flags));
    }
    let mut at = 2;
    let mut end = buf.len();
    if has_len {
        let len = read_u16(buf, at)? as usize;
        at += 2;
        if len > buf.len() || len < 6 {
            return Err(DecodeError::Length(len));
        }
        end = len;
    }
    let tunnel = read_u16(buf, at)?;
    let session = read_u16(buf, at + 2)?;
    at += 4;
    let seq = if has_seq {
        let ns = read_u16(buf, at)?;
        let nr = read_u16(buf, at + 2)?;
        at += 4;
        Some((ns, nr))
    } else {
        None
    };
    if has_off {
        let off = read_u16(buf, at)? as usize;
        at += 2 + off;
    }
    if at > end {
        return Err(DecodeError::Length(end));
    }
    Ok((
        Header {
            control,
            tunnel,
            session,
            seq,
            priority: !control && flags & P_BIT != 0,
        },
        &buf[at..end],
    ))
}

/// Appends a control header; the length covers `payload_len` bytes that follow.
pub fn encode_control(
    out: &mut Vec<u8>,
    tunnel: u16,
    session: u16,
    ns: u16,
    nr: u16,
    payload_len: usize,
) {
    let len = (CONTROL_HEADER_LEN + payload_len) as u16;
    for v in [T_BIT | L_BIT | S_BIT | 2, len, tunnel, session, ns, nr] {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Appends a data header (L set so receivers can strip padding; S when sequenced).
pub fn encode_data(
    out: &mut Vec<u8>,
    tunnel: u16,
    session: u16,
    seq: Option<(u16, u16)>,
    payload_len: usize,
) {
    let hlen = if seq.is_some() { 12 } else { 8 };
    let flags = L_BIT | 2 | if seq.is_some() { S_BIT } else { 0 };
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&((hlen + payload_len) as u16).to_be_bytes());
    out.extend_from_slice(&tunnel.to_be_bytes());
    out.extend_from_slice(&session.to_be_bytes());
    if let Some((ns, nr)) = seq {
        out.extend_from_slice(&ns.to_be_bytes());
        out.extend_from_slice(&nr.to_be_bytes());
    }
}

/// The receiver's Tunnel ID of a datagram, for demultiplexing before a full decode.
pub fn peek_tunnel_id(buf: &[u8]) -> Option<u16> {
    let flags = read_u16(buf, 0).ok()?;
    let at = if flags & L_BIT != 0 { 4 } else { 2 };
    read_u16(buf, at).ok()
}

pub(crate) fn read_u16(buf: &[u8], at: usize) -> Result<u16, DecodeError> {
    buf.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(DecodeError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_round_trip() {
        let mut out = Vec::new();
        encode_control(&mut out, 7, 9, 3, 4, 0);
        assert_eq!(&out[..2], &[0xc8, 0x02]);
        let (h, p) = decode(&out).unwrap();
        assert!(h.control);
        assert_eq!((h.tunnel, h.session, h.seq), (7, 9, Some((3, 4))));
        assert!(p.is_empty());
    }

    #[test]
    fn data_round_trip_with_and_without_sequence() {
        for seq in [None, Some((5, 6))] {
            let mut out = Vec::new();
            encode_data(&mut out, 1, 2, seq, 3);
            out.extend_from_slice(b"abc");
            out.extend_from_slice(b"pad"); // bytes past Length are padding
            let (h, p) = decode(&out).unwrap();
            assert!(!h.control);
            assert_eq!(h.seq, seq);
            assert_eq!(p, b"abc");
        }
    }

    #[test]
    fn data_with_offset_and_no_length() {
        // T=0 L=0 S=0 O=1, tunnel 1, session 2, offset 2 + 2 pad bytes, payload "x".
        let buf = [0x02, 0x02, 0, 1, 0, 2, 0, 2, 0xaa, 0xbb, b'x'];
        let (h, p) = decode(&buf).unwrap();
        assert_eq!((h.tunnel, h.session), (1, 2));
        assert_eq!(p, b"x");
        assert_eq!(peek_tunnel_id(&buf), Some(1));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0xc8, 0x01]), Err(DecodeError::Version(1)));
        // Control without S bit.
        assert!(matches!(
            decode(&[0xc0, 0x02, 0, 8, 0, 0, 0, 0]),
            Err(DecodeError::ControlFlags(_))
        ));
        // Length longer than the datagram.
        assert_eq!(
            decode(&[0xc8, 0x02, 0, 99, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::Length(99))
        );
    }
}
