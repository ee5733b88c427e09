//! Sans-I/O TLS ClientHello reader: bytes in, server name out, TLS untouched.
//!
//! The proxy buffers what the client sent, calls [`parse_client_hello`] until it
//! answers, then replays the same bytes to the target. Handshake fragments spread
//! over several records are reassembled (large post-quantum key shares do that).

use thiserror::Error;

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
/// Largest record a peer may send (RFC 8446 §5.1 plus the TLS 1.2 expansion allowance).
const MAX_RECORD: usize = (1 << 14) + 2048;

/// TLS alert descriptions the proxy sends before closing.
pub const ALERT_UNRECOGNIZED_NAME: u8 = 112;
pub const ALERT_DECODE_ERROR: u8 = 50;
pub const ALERT_INTERNAL_ERROR: u8 = 80;

/// What the proxy needs from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// Lower-cased host name from the server_name extension, if any.
    pub server_name: Option<String>,
    /// ALPN protocol names offered, in order (for logs and metrics only).
    pub alpn: Vec<Vec<u8>>,
    /// Bytes of input that the ClientHello records took.
    pub consumed: usize,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SniError {
    #[error("not a TLS handshake record (content type {0})")]
    NotHandshake(u8),
    #[error("unsupported record version {0}.{1}")]
    BadVersion(u8, u8),
    #[error("record length {0} exceeds the TLS maximum")]
    RecordTooLarge(usize),
    #[error("first handshake message is type {0}, not ClientHello")]
    NotClientHello(u8),
    #[error("ClientHello of {0} bytes exceeds the limit of {1}")]
    TooLarge(usize, usize),
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    #[error("invalid server name")]
    BadServerName,
}

/// Parses the ClientHello at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some(hello))` once the whole
/// ClientHello is in, or an error for anything that is not a well-formed one.
/// `max_hello` bounds the reassembled handshake message.
pub fn parse_client_hello(buf: &[u8], max_hello: usize) -> Result<Option<ClientHello>, SniError> {
    // Reassemble the handshake stream from consecutive handshake records.
    let mut hs: Vec<u8> = Vec::new();
    let mut pos = 0;
    loop {
        if buf.len() < pos + 5 {
            // Check what we can of a partial header so garbage fails fast.
            if let Some(&t) = buf.get(pos) {
                if t != CONTENT_HANDSHAKE {
                    return Err(SniError::NotHandshake(t));
                }
            }
            if let Some(&major) = buf.get(pos + 1) {
                if major != 3 {
                    return Err(SniError::BadVersion(
                        major,
                        buf.get(pos + 2).copied().unwrap_or(0),
                    ));
                }
            }
            return Ok(None);
        }
        let hdr = &buf[pos..pos + 5];
        if hdr[0] != CONTENT_HANDSHAKE {
            return Err(SniError::NotHandshake(hdr[0]));
        }
        if hdr[1] != 3 {
            return Err(SniError::BadVersion(hdr[1], hdr[2]));
        }
        let len = u16::from_be_bytes([hdr[3], hdr[4]]) as usize;
        if len > MAX_RECORD {
            return Err(SniError::RecordTooLarge(len));
        }
        if len == 0 {
            return Err(SniError::Malformed("empty handshake record"));
        }
        let body_start = pos + 5;
        let avail = buf.len().saturating_sub(body_start).min(len);
        hs.extend_from_slice(&buf[body_start..body_start + avail]);
        if hs.len() >= 4 {
            if hs[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(SniError::NotClientHello(hs[0]));
            }
            let msg_len = u32::from_be_bytes([0, hs[1], hs[2], hs[3]]) as usize;
            if msg_len > max_hello {
                return Err(SniError::TooLarge(msg_len, max_hello));
            }
            if hs.len() >= 4 + msg_len {
                if avail < len {
                    // The message ends before the record does: wait for the
                    // whole record so `consumed` stays on a record boundary.
                    return Ok(None);
                }
                let mut hello = parse_body(&hs[4..4 + msg_len])?;
                hello.consumed = body_start + len;
                return Ok(Some(hello));
            }
        } else if let Some(&t) = hs.first() {
            if t != HANDSHAKE_CLIENT_HELLO {
                return Err(SniError::NotClientHello(t));
            }
        }
        if avail < len {
            return Ok(None);
        }
        pos = body_start + len;
    }
}

/// A tiny bounds-checked reader over the ClientHello body.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SniError> {
        if self.b.len() < n {
            return Err(SniError::Malformed(what));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, SniError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, SniError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], SniError> {
        let n = self.u8(what)? as usize;
        self.take(n, what)
    }
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], SniError> {
        let n = self.u16(what)? as usize;
        self.take(n, what)
    }
}

fn parse_body(body: &[u8]) -> Result<ClientHello, SniError> {
    let mut r = Reader { b: body };
    let major = r.u8("version")?;
    let minor = r.u8("version")?;
    if major != 3 {
        return Err(SniError::BadVersion(major, minor));
    }
    r.take(32, "random")?;
    let sid = r.vec8("session id")?;
    if sid.len() > 32 {
        return Err(SniError::Malformed("session id longer than 32"));
    }
    let suites = r.vec16("cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(SniError::Malformed("cipher suites length"));
    }
    if r.vec8("compression methods")?.is_empty() {
        return Err(SniError::Malformed("no compression method"));
    }
    let mut hello = ClientHello {
        server_name: None,
        alpn: Vec::new(),
        consumed: 0,
    };
    if r.b.is_empty() {
        // SSL 3.0 style hello without extensions: no SNI.
        return Ok(hello);
    }
    let mut exts = Reader {
        b: r.vec16("extensions")?,
    };
    if !r.b.is_empty() {
        return Err(SniError::Malformed("trailing bytes after extensions"));
    }
    let mut seen_sni = false;
    let mut seen_alpn = false;
    while !exts.b.is_empty() {
        let ty = exts.u16("extension type")?;
        let data = exts.vec16("extension data")?;
        match ty {
            EXT_SERVER_NAME => {
                if seen_sni {
                    return Err(SniError::Malformed("duplicate server_name extension"));
                }
                seen_sni = true;
                hello.server_name = parse_sni(data)?;
            }
            EXT_ALPN => {
                if seen_alpn {
                    return Err(SniError::Malformed("duplicate ALPN extension"));
                }
                seen_alpn = true;
                let mut list = Reader { b: data };
                let mut names = Reader {
                    b: list.vec16("ALPN list")?,
                };
                if !list.b.is_empty() {
                    return Err(SniError::Malformed("ALPN trailing bytes"));
                }
                while !names.b.is_empty() {
                    let p = names.vec8("ALPN name")?;
                    if p.is_empty() {
                        return Err(SniError::Malformed("empty ALPN name"));
                    }
                    hello.alpn.push(p.to_vec());
                }
            }
            _ => {}
        }
    }
    Ok(hello)
}

fn parse_sni(data: &[u8]) -> Result<Option<String>, SniError> {
    let mut r = Reader { b: data };
    let mut list = Reader {
        b: r.vec16("server name list")?,
    };
    if !r.b.is_empty() {
        return Err(SniError::Malformed("server name list trailing bytes"));
    }
    let mut found = None;
    while !list.b.is_empty() {
        let kind = list.u8("server name type")?;
        let name = list.vec16("server name")?;
        // RFC 6066: one name per type; only host_name (0) is defined.
        if kind == 0 {
            if found.is_some() {
                return Err(SniError::Malformed("two host names"));
            }
            found = Some(normalize_host(name).ok_or(SniError::BadServerName)?);
        }
    }
    Ok(found)
}

/// Lower-cases a DNS host name and drops one trailing dot; `None` if it has
/// characters no host name may carry. Shared with the HTTP Host path.
pub fn normalize_host(name: &[u8]) -> Option<String> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    if !name
        .iter()
        .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_')
    {
        return None;
    }
    if name.starts_with(b".") || name.windows(2).any(|w| w == b"..") {
        return None;
    }
    Some(
        name.iter()
            .map(|c| c.to_ascii_lowercase() as char)
            .collect(),
    )
}

/// A fatal TLS alert record (TLS 1.0 record version, as servers use before
/// version negotiation).
pub fn alert(description: u8) -> [u8; 7] {
    [21, 3, 1, 0, 2, 2, description]
}

/// A minimal well-formed ClientHello record offering `sni` and `alpn`: for
/// tests and fuzz seeds, not for talking to real servers.
pub fn synthetic_client_hello(sni: Option<&str>, alpn: &[&str]) -> Vec<u8> {
    let mut exts = Vec::new();
    if let Some(name) = sni {
        let mut e = Vec::new();
        e.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        e.push(0);
        e.extend_from_slice(&(name.len() as u16).to_be_bytes());
        e.extend_from_slice(name.as_bytes());
        exts.extend_from_slice(&0u16.to_be_bytes());
        exts.extend_from_slice(&(e.len() as u16).to_be_bytes());
        exts.extend_from_slice(&e);
    }
    if !alpn.is_empty() {
        let mut l = Vec::new();
        for p in alpn {
            l.push(p.len() as u8);
            l.extend_from_slice(p.as_bytes());
        }
        exts.extend_from_slice(&16u16.to_be_bytes());
        exts.extend_from_slice(&((l.len() + 2) as u16).to_be_bytes());
        exts.extend_from_slice(&(l.len() as u16).to_be_bytes());
        exts.extend_from_slice(&l);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01]);
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![22, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[cfg(test)]
mod tests {
    use super::synthetic_client_hello as hello;
    use super::*;

    #[test]
    fn reads_sni_and_alpn() {
        let h = hello(Some("A.Test."), &["h2", "http/1.1"]);
        let got = parse_client_hello(&h, 16384).unwrap().unwrap();
        assert_eq!(got.server_name.as_deref(), Some("a.test"));
        assert_eq!(got.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(got.consumed, h.len());
    }

    #[test]
    fn every_prefix_needs_more() {
        let h = hello(Some("a.test"), &[]);
        for n in 0..h.len() {
            assert_eq!(parse_client_hello(&h[..n], 16384), Ok(None), "prefix {n}");
        }
    }

    #[test]
    fn reassembles_fragments_across_records() {
        let h = hello(Some("frag.test"), &["h2"]);
        let hs = &h[5..];
        let mut split = Vec::new();
        for chunk in hs.chunks(7) {
            split.extend_from_slice(&[22, 3, 1]);
            split.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            split.extend_from_slice(chunk);
        }
        let got = parse_client_hello(&split, 16384).unwrap().unwrap();
        assert_eq!(got.server_name.as_deref(), Some("frag.test"));
        assert_eq!(got.consumed, split.len());
    }

    #[test]
    fn no_sni_is_none() {
        let h = hello(None, &[]);
        assert_eq!(
            parse_client_hello(&h, 16384).unwrap().unwrap().server_name,
            None
        );
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(
            parse_client_hello(b"GET / HTTP/1.1\r\n", 16384),
            Err(SniError::NotHandshake(b'G'))
        );
        assert!(matches!(
            parse_client_hello(&[22, 2, 0, 0, 1], 16384),
            Err(SniError::BadVersion(2, 0))
        ));
        assert!(matches!(
            parse_client_hello(&[22, 3, 1, 0xff, 0xff], 16384),
            Err(SniError::RecordTooLarge(_))
        ));
        let mut h = hello(Some("a.test"), &[]);
        h[5] = 2; // ServerHello
        assert_eq!(
            parse_client_hello(&h, 16384),
            Err(SniError::NotClientHello(2))
        );
        let h = hello(Some("bad name!"), &[]);
        assert_eq!(parse_client_hello(&h, 16384), Err(SniError::BadServerName));
        let h = hello(Some("a.test"), &[]);
        assert!(matches!(
            parse_client_hello(&h, 20),
            Err(SniError::TooLarge(_, 20))
        ));
        // The extension block claims one byte more than the message holds.
        let mut h = hello(Some("a.test"), &[]);
        h[51] += 1;
        assert!(matches!(
            parse_client_hello(&h, 16384),
            Err(SniError::Malformed(_))
        ));
    }
}
