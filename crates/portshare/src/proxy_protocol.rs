//! Sans-I/O PROXY protocol (HAProxy's spec, v1 text and v2 binary): encode the
//! header sent ahead of a connection to a target, decode the one a trusted front
//! sends us.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use thiserror::Error;

pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_MAX: usize = 107;
/// Largest v2 address block accepted (TLVs included); HAProxy's own limit is similar.
const V2_MAX_LEN: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
}

/// Addresses carried by a header; `None` for LOCAL (v2) / UNKNOWN (v1), where the
/// connection's own addresses stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub addrs: Option<(SocketAddr, SocketAddr)>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY v1 header: {0}")]
    V1(&'static str),
    #[error("malformed PROXY v2 header: {0}")]
    V2(&'static str),
}

fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (v6(src), v6(dst))
    }
}

/// `PROXY TCP4 src dst sport dport\r\n`.
pub fn encode_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {fam} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// Binary v2 header, command PROXY, stream transport, no TLVs.
pub fn encode_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let mut out = Vec::with_capacity(52);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        _ => unreachable!("same_family unified the families"),
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

pub fn encode(v: Version, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    match v {
        Version::V1 => encode_v1(src, dst),
        Version::V2 => encode_v2(src, dst),
    }
}

/// Decodes a v1 or v2 header at the start of `buf`: `Ok(None)` needs more bytes,
/// `Ok(Some((header, consumed)))` when complete.
pub fn decode(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Ok(None)
        } else {
            decode_v2(buf)
        };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return if n < 6 { Ok(None) } else { decode_v1(buf) };
    }
    Err(ProxyError::Missing)
}

fn decode_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let Some(end) = buf.iter().take(V1_MAX).position(|&c| c == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::V1("no line end within 107 bytes"))
        } else {
            Ok(None)
        };
    };
    if end == 0 || buf[end - 1] != b'\r' {
        return Err(ProxyError::V1("line must end in CRLF"));
    }
    let line = std::str::from_utf8(&buf[..end - 1]).map_err(|_| ProxyError::V1("not ASCII"))?;
    let f: Vec<&str> = line.split(' ').collect();
    let addrs = match f.as_slice() {
        ["PROXY", "UNKNOWN", ..] => None,
        ["PROXY", fam @ ("TCP4" | "TCP6"), s, d, sp, dp] => {
            let ip = |t: &str| -> Result<IpAddr, ProxyError> {
                let ip: IpAddr = t.parse().map_err(|_| ProxyError::V1("bad address"))?;
                if ip.is_ipv4() != (*fam == "TCP4") {
                    return Err(ProxyError::V1("address family mismatch"));
                }
                Ok(ip)
            };
            let port = |t: &str| -> Result<u16, ProxyError> {
                if t.is_empty()
                    || t.len() > 5
                    || !t.bytes().all(|c| c.is_ascii_digit())
                    || (t.len() > 1 && t.starts_with('0'))
                {
                    return Err(ProxyError::V1("bad port"));
                }
                t.parse().map_err(|_| ProxyError::V1("bad port"))
            };
            Some((
                SocketAddr::new(ip(s)?, port(sp)?),
                SocketAddr::new(ip(d)?, port(dp)?),
            ))
        }
        _ => return Err(ProxyError::V1("bad fields")),
    };
    Ok(Some((Header { addrs }, end + 1)))
}

fn decode_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2("version is not 2"));
    }
    let local = match ver_cmd & 0xf {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::V2("unknown command")),
    };
    let fam = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if len > V2_MAX_LEN {
        return Err(ProxyError::V2("header too long"));
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let a = &buf[16..16 + len];
    let addrs = if local {
        None
    } else {
        match fam {
            0x11 => {
                if len < 12 {
                    return Err(ProxyError::V2("short IPv4 block"));
                }
                let s = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                let d = Ipv4Addr::new(a[4], a[5], a[6], a[7]);
                Some((
                    SocketAddr::new(s.into(), u16::from_be_bytes([a[8], a[9]])),
                    SocketAddr::new(d.into(), u16::from_be_bytes([a[10], a[11]])),
                ))
            }
            0x21 => {
                if len < 36 {
                    return Err(ProxyError::V2("short IPv6 block"));
                }
                let s = Ipv6Addr::from(<[u8; 16]>::try_from(&a[0..16]).unwrap());
                let d = Ipv6Addr::from(<[u8; 16]>::try_from(&a[16..32]).unwrap());
                Some((
                    SocketAddr::new(s.into(), u16::from_be_bytes([a[32], a[33]])),
                    SocketAddr::new(d.into(), u16::from_be_bytes([a[34], a[35]])),
                ))
            }
            // UNSPEC, UDP and unix sockets: keep the connection's own addresses.
            _ => None,
        }
    };
    Ok(Some((Header { addrs }, 16 + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let s: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let d: SocketAddr = "127.0.0.1:443".parse().unwrap();
        assert_eq!(
            encode_v1(s, d),
            b"PROXY TCP4 192.0.2.1 127.0.0.1 5000 443\r\n"
        );
        for v in [Version::V1, Version::V2] {
            let mut b = encode(v, s, d);
            b.extend_from_slice(b"GET");
            let (h, n) = decode(&b).unwrap().unwrap();
            assert_eq!(h.addrs, Some((s, d)));
            assert_eq!(&b[n..], b"GET");
            for k in 0..n {
                assert_eq!(decode(&b[..k]), Ok(None), "{v:?} prefix {k}");
            }
        }
        let s6: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        let (h, _) = decode(&encode_v2(s6, d)).unwrap().unwrap();
        assert_eq!(h.addrs.unwrap().0, s6);
    }

    #[test]
    fn refuses_bad_headers() {
        assert_eq!(decode(b"GET / HTTP/1.1\r\n"), Err(ProxyError::Missing));
        assert!(decode(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n").is_err());
        assert!(decode(b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n").is_err());
        assert!(decode(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n").is_err());
        assert!(decode(&[b'P', b'R', b'O', b'X', b'Y', b' '].repeat(30)).is_err());
        let mut b = encode_v2("1.2.3.4:1".parse().unwrap(), "5.6.7.8:2".parse().unwrap());
        b[12] = 0x31;
        assert!(decode(&b).is_err());
        assert_eq!(decode(b"PROXY UNKNOWN\r\n").unwrap().unwrap().0.addrs, None);
    }
}
