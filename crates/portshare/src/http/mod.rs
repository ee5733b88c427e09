//! Sans-I/O HTTP/1.x: strict request and response heads (RFC 9112), chunked
//! framing, the heads the proxy forwards, and the proxy's own decisions
//! ([`proxy`]: keep-alive, retry, 100-continue, upgrade, pool reuse). Enough to
//! route a request by Host, find where each message ends on a keep-alive
//! connection, and map virtual ports in response headers back to the shared
//! port. Bodies are never buffered.
//!
//! Strict means: anything a conforming parser downstream might read
//! differently is refused, never forwarded: bare LF or CR, control bytes,
//! obs-fold, Content-Length lists or duplicates, Content-Length with
//! Transfer-Encoding, a Transfer-Encoding other than one `chunked`, an empty
//! or missing Host, absolute-form with userinfo.

mod chunked;
pub mod proxy;
mod rewrite;

pub use chunked::{Chunked, MAX_CHUNK_SIZE};
pub use rewrite::{
    forward_head, port_suffix, rewrite_uri_headers, set_connection_close, strip_connection_header,
};

use crate::sni::normalize_host;
use thiserror::Error;

/// Most headers a head may carry (nginx and HAProxy allow about this many).
const MAX_HEADERS: usize = 100;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HeadError {
    #[error("head larger than {0} bytes")]
    TooLarge(usize),
    #[error("malformed head: {0}")]
    Malformed(&'static str),
    #[error("unsupported HTTP version")]
    Version,
    #[error("missing Host header")]
    MissingHost,
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("invalid host")]
    BadHost,
    #[error("invalid, listed or repeated Content-Length")]
    BadContentLength,
    #[error("malformed Transfer-Encoding (one chunked, last)")]
    BadChunkedCoding,
    #[error("unsupported Transfer-Encoding")]
    BadTransferEncoding,
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
    #[error("CONNECT is not served here")]
    Connect,
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
}

impl HeadError {
    /// The status a proxy answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge(_) => 431,
            HeadError::Connect => 405,
            HeadError::BadTransferEncoding => 501,
            _ => 400,
        }
    }
}

fn map_httparse(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::Malformed("too many headers"),
        httparse::Error::Version => HeadError::Version,
        httparse::Error::HeaderName => HeadError::Malformed("header name"),
        httparse::Error::HeaderValue => HeadError::Malformed("header value"),
        httparse::Error::NewLine => HeadError::Malformed("line ending"),
        httparse::Error::Status => HeadError::Malformed("status"),
        httparse::Error::Token => HeadError::Malformed("token"),
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
    /// Until the server closes (responses only).
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes the head takes, request line to the blank line.
    pub len: usize,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub is_head: bool,
    /// The method is idempotent (RFC 9110 §9.2.2): it may be sent again.
    pub idempotent: bool,
    /// Host name to route on: lower-cased, port removed. `None` for an HTTP/1.0
    /// request without Host.
    pub host: Option<String>,
    /// The authority exactly as the client addressed it (`a.test:8080`), used
    /// when mapping virtual ports back.
    pub authority: Option<String>,
    /// Absolute-form target: the authority comes from it, and the head is
    /// forwarded in origin-form with that Host ([`forward_head`]).
    pub absolute: bool,
    pub body: Body,
    pub keep_alive: bool,
    pub upgrade: bool,
    pub expect_continue: bool,
    /// The client asked to close (`Connection: close`); the proxy drops that
    /// hop-by-hop header so its own connection to the target stays reusable.
    pub close_requested: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub body: Body,
    pub keep_alive: bool,
    /// The head has a Location, Content-Location or Refresh header.
    pub has_uri_headers: bool,
}

/// The checks httparse leaves out: every line ends in CRLF (no bare LF or CR,
/// which parsers split differently), no control byte but HTAB, no obs-fold or
/// whitespace before the first field name.
fn check_canonical(head: &[u8]) -> Result<(), HeadError> {
    let mut line_start = false;
    for (i, &c) in head.iter().enumerate() {
        match c {
            b'\n' if i == 0 || head[i - 1] != b'\r' => return Err(HeadError::Malformed("bare LF")),
            b'\r' if head.get(i + 1) != Some(&b'\n') => {
                return Err(HeadError::Malformed("bare CR"))
            }
            b' ' | b'\t' if line_start => {
                return Err(HeadError::Malformed(
                    "obs-fold or whitespace before a field",
                ))
            }
            b'\t' | b'\r' | b'\n' => {}
            0..=0x1f | 0x7f => return Err(HeadError::Malformed("control byte")),
            _ => {}
        }
        line_start = c == b'\n';
    }
    Ok(())
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&c| c == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// One Content-Length: digits only. A list or a repeat, even of equal values,
/// is refused (nginx does), so no peer can pick another element.
fn parse_length(v: &[u8], current: Option<u64>) -> Result<u64, HeadError> {
    let v = v.trim_ascii();
    if current.is_some() || v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::BadContentLength);
    }
    Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Transfer-Encoding of a request: exactly `chunked` is served; `chunked`
/// repeated or not last is malformed (400); any other coding is not
/// implemented (501), as nginx answers.
fn request_coding(v: &[u8]) -> Result<(), HeadError> {
    let codings: Vec<&[u8]> = v.split(|&c| c == b',').map(|t| t.trim_ascii()).collect();
    let chunked = |t: &[u8]| t.eq_ignore_ascii_case(b"chunked");
    match codings.iter().filter(|t| chunked(t)).count() {
        1 if codings.len() == 1 => Ok(()),
        1 if codings.last().is_some_and(|t| chunked(t)) => Err(HeadError::BadTransferEncoding),
        0 if codings.iter().all(|t| !t.is_empty()) => Err(HeadError::BadTransferEncoding),
        _ => Err(HeadError::BadChunkedCoding),
    }
}

/// Splits `host[:port]` / `[v6][:port]` and returns the routing name.
fn host_of_authority(auth: &[u8]) -> Result<String, HeadError> {
    if let Some(rest) = auth.strip_prefix(b"[") {
        let end = rest
            .iter()
            .position(|&c| c == b']')
            .ok_or(HeadError::BadHost)?;
        let ip = std::str::from_utf8(&rest[..end]).map_err(|_| HeadError::BadHost)?;
        ip.parse::<std::net::Ipv6Addr>()
            .map_err(|_| HeadError::BadHost)?;
        check_port(&rest[end + 1..])?;
        return Ok(format!("[{}]", ip.to_ascii_lowercase()));
    }
    let (name, port) = match auth.iter().rposition(|&c| c == b':') {
        Some(i) => (&auth[..i], &auth[i..]),
        None => (auth, &b""[..]),
    };
    check_port(port)?;
    normalize_host(name).ok_or(HeadError::BadHost)
}

fn check_port(p: &[u8]) -> Result<(), HeadError> {
    match p {
        [] => Ok(()),
        [b':', digits @ ..] if digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit) => Ok(()),
        _ => Err(HeadError::BadHost),
    }
}

/// The authority of an absolute-form target (`http://a.test:81/p` →
/// `a.test:81`); the scheme is case-insensitive (RFC 9110 §4.2.3). `None` for
/// origin-form and `*`.
fn absolute_authority(target: &[u8]) -> Result<Option<&[u8]>, HeadError> {
    let rest = if target.len() > 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        &target[7..]
    } else if target.len() > 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        &target[8..]
    } else if target.first() == Some(&b'/') || target == b"*" {
        return Ok(None);
    } else {
        return Err(HeadError::Malformed("request target"));
    };
    let end = rest
        .iter()
        .position(|&c| matches!(c, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let auth = &rest[..end];
    // Userinfo would let `http://a.test@b.test/` read as either name.
    if auth.is_empty() || auth.contains(&b'@') {
        return Err(HeadError::BadHost);
    }
    Ok(Some(auth))
}

/// The length of a complete, canonical head of at most `max_head` bytes.
fn head_len(
    parsed: httparse::Result<usize>,
    buf: &[u8],
    max_head: usize,
) -> Result<Option<usize>, HeadError> {
    match parsed.map_err(map_httparse)? {
        httparse::Status::Complete(n) if n > max_head => Err(HeadError::TooLarge(max_head)),
        httparse::Status::Complete(n) => check_canonical(&buf[..n]).map(|()| Some(n)),
        httparse::Status::Partial if buf.len() >= max_head => Err(HeadError::TooLarge(max_head)),
        httparse::Status::Partial => Ok(None),
    }
}

/// Parses a request head at the start of `buf`. `Ok(None)`: need more bytes.
pub fn parse_request(buf: &[u8], max_head: usize) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Some(len) = head_len(req.parse(buf), buf, max_head)? else {
        return Ok(None);
    };
    let version = req.version.ok_or(HeadError::Version)?;
    let method = req.method.ok_or(HeadError::Malformed("method"))?;
    if method == "CONNECT" {
        return Err(HeadError::Connect);
    }
    let path = req.path.ok_or(HeadError::Malformed("target"))?;

    let mut host_hdr: Option<&[u8]> = None;
    let mut length: Option<u64> = None;
    let mut te: Option<&[u8]> = None;
    let (mut close, mut keep, mut conn_upgrade, mut has_upgrade, mut expect) =
        (false, false, false, false, false);
    for h in req.headers.iter() {
        let n = h.name.as_bytes();
        if n.eq_ignore_ascii_case(b"host") {
            if host_hdr.is_some() {
                return Err(HeadError::DuplicateHost);
            }
            host_hdr = Some(h.value.trim_ascii());
        } else if n.eq_ignore_ascii_case(b"content-length") {
            length = Some(parse_length(h.value, length)?);
        } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
            // Two fields are one list (RFC 9110 §5.3): `chunked` twice at best.
            if te.is_some() {
                return Err(HeadError::BadChunkedCoding);
            }
            te = Some(h.value);
        } else if n.eq_ignore_ascii_case(b"connection") {
            close |= has_token(h.value, "close");
            keep |= has_token(h.value, "keep-alive");
            conn_upgrade |= has_token(h.value, "upgrade");
        } else if n.eq_ignore_ascii_case(b"upgrade") {
            has_upgrade = true;
        } else if n.eq_ignore_ascii_case(b"expect") {
            expect = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    if let Some(v) = te {
        if length.is_some() {
            return Err(HeadError::LengthAndChunked);
        }
        if version == 0 {
            return Err(HeadError::BadChunkedCoding);
        }
        request_coding(v)?;
    }
    // Absolute-form targets carry the authority and win over Host (RFC 9112
    // §3.2.2); HTTP/1.1 must still send a Host (§3.2: 400 without one).
    let absolute = absolute_authority(path.as_bytes())?;
    let authority = match (absolute, host_hdr) {
        (_, None) if version == 1 => return Err(HeadError::MissingHost),
        (_, Some([])) => return Err(HeadError::BadHost),
        (Some(a), _) => Some(a),
        (None, h) => h,
    };
    let (host, authority) = match authority {
        Some(a) => (
            Some(host_of_authority(a)?),
            Some(String::from_utf8(a.to_vec()).map_err(|_| HeadError::BadHost)?),
        ),
        None => (None, None),
    };
    if let (Some(_), Some(h)) = (absolute, host_hdr) {
        // The Host that is replaced must still be a valid one.
        host_of_authority(h)?;
    }
    let keep_alive = if version == 1 { !close } else { keep && !close };
    Ok(Some(RequestHead {
        len,
        version,
        is_head: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ),
        host,
        authority,
        absolute: absolute.is_some(),
        body: if te.is_some() {
            Body::Chunked
        } else {
            match length {
                Some(0) | None => Body::None,
                Some(n) => Body::Length(n),
            }
        },
        keep_alive,
        upgrade: has_upgrade && conn_upgrade,
        expect_continue: expect,
        close_requested: close && version == 1,
    }))
}

/// Parses a response head. `request_is_head` removes the body of a HEAD reply.
pub fn parse_response(
    buf: &[u8],
    max_head: usize,
    request_is_head: bool,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let Some(len) = head_len(res.parse(buf), buf, max_head)? else {
        return Ok(None);
    };
    let version = res.version.ok_or(HeadError::Version)?;
    let status = res.code.ok_or(HeadError::Malformed("status"))?;
    let mut length = None;
    let mut te: Option<bool> = None;
    let (mut close, mut keep, mut uri) = (false, false, false);
    for h in res.headers.iter() {
        let n = h.name.as_bytes();
        if n.eq_ignore_ascii_case(b"content-length") {
            length = Some(parse_length(h.value, length)?);
        } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
            // Chunked last delimits the body; anything else reads to close.
            let last = h
                .value
                .split(|&c| c == b',')
                .next_back()
                .unwrap_or(b"")
                .trim_ascii();
            te = Some(te.is_none() && last.eq_ignore_ascii_case(b"chunked"));
        } else if n.eq_ignore_ascii_case(b"connection") {
            close |= has_token(h.value, "close");
            keep |= has_token(h.value, "keep-alive");
        } else if n.eq_ignore_ascii_case(b"location")
            || n.eq_ignore_ascii_case(b"content-location")
            || n.eq_ignore_ascii_case(b"refresh")
        {
            uri = true;
        }
    }
    let body = if request_is_head || (100..200).contains(&status) || status == 204 || status == 304
    {
        Body::None
    } else {
        match (te, length) {
            (Some(true), _) => Body::Chunked,
            (Some(false), _) => Body::Close,
            (None, Some(0)) => Body::None,
            (None, Some(n)) => Body::Length(n),
            (None, None) => Body::Close,
        }
    };
    // Both framings on one response: the body is read to close and the
    // connection is not reused (RFC 9112 §6.3).
    let keep_alive = body != Body::Close
        && !(te.is_some() && length.is_some())
        && if version == 1 { !close } else { keep && !close };
    Ok(Some(ResponseHead {
        len,
        status,
        body,
        keep_alive,
        has_uri_headers: uri,
    }))
}

/// A complete short response from the proxy itself (errors, 421, 502).
pub fn simple_response(status: u16, reason: &str, body: &str, close: bool) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n{body}",
        body.len(),
        if close { "connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

pub fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(b: &[u8]) -> RequestHead {
        parse_request(b, 8192).unwrap().unwrap()
    }
    fn err(b: &[u8]) -> HeadError {
        parse_request(b, 8192).unwrap_err()
    }

    #[test]
    fn request_basics() {
        let r = req(b"GET /x HTTP/1.1\r\nHost: A.Test:8080\r\n\r\nrest");
        assert_eq!(r.len, 38);
        assert_eq!(r.host.as_deref(), Some("a.test"));
        assert_eq!(r.authority.as_deref(), Some("A.Test:8080"));
        assert_eq!(r.body, Body::None);
        assert!(r.keep_alive && r.idempotent && !r.absolute);
        assert_eq!(parse_request(b"GET /x HTTP/1.1\r\nHost: a", 8192), Ok(None));
        assert!(!req(b"POST / HTTP/1.1\r\nHost: a\r\n\r\n").idempotent);
    }

    #[test]
    fn http10_and_absolute_form() {
        let r = req(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!((r.host, r.keep_alive, r.version), (None, false, 0));
        let r = req(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nHost: b.test\r\n\r\n");
        assert!(r.keep_alive);
        let r = req(b"GET http://c.test:81/p HTTP/1.1\r\nHost: other\r\n\r\n");
        assert_eq!(r.host.as_deref(), Some("c.test"));
        assert_eq!(r.authority.as_deref(), Some("c.test:81"));
        assert!(r.absolute);
        // The scheme is case-insensitive: the authority still wins.
        let r = req(b"GET HTTP://B.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n");
        assert_eq!(r.host.as_deref(), Some("b.test"));
        let r = req(b"GET hTTpS://b.test?q HTTP/1.1\r\nHost: a.test\r\n\r\n");
        assert_eq!(r.host.as_deref(), Some("b.test"));
        // HTTP/1.0 may omit Host; HTTP/1.1 may not, absolute-form or not.
        assert_eq!(
            req(b"GET http://b.test/ HTTP/1.0\r\n\r\n").host.as_deref(),
            Some("b.test")
        );
        assert_eq!(
            err(b"GET http://b.test/ HTTP/1.1\r\n\r\n"),
            HeadError::MissingHost
        );
        assert_eq!(
            err(b"GET http://a.test@b.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n"),
            HeadError::BadHost
        );
        assert_eq!(
            err(b"GET http:///x HTTP/1.1\r\nHost: b.test\r\n\r\n"),
            HeadError::BadHost
        );
        assert_eq!(
            err(b"GET ftp://b.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n"),
            HeadError::Malformed("request target")
        );
        assert_eq!(
            err(b"GET http://b.test/ HTTP/1.1\r\nHost: a b\r\n\r\n"),
            HeadError::BadHost
        );
        let r = req(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n");
        assert_eq!(r.host.as_deref(), Some("[::1]"));
    }

    #[test]
    fn framing() {
        let r = req(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(r.body, Body::Length(5));
        let r = req(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\nExpect: 100-continue\r\n\r\n");
        assert_eq!(r.body, Body::Chunked);
        assert!(r.expect_continue);
        let r =
            req(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(r.upgrade);
    }

    #[test]
    fn refusals() {
        assert_eq!(err(b"GET / HTTP/1.1\r\n\r\n"), HeadError::MissingHost);
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            HeadError::DuplicateHost
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
            HeadError::BadHost
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: a:99999999\r\n\r\n"),
            HeadError::BadHost
        );
        // An empty Host is invalid, not a request for the default row.
        assert_eq!(err(b"GET / HTTP/1.1\r\nHost:\r\n\r\n"), HeadError::BadHost);
        assert_eq!(err(b"GET / HTTP/1.0\r\nHost: \r\n\r\n"), HeadError::BadHost);
        assert_eq!(
            err(b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n"),
            HeadError::Connect
        );
        assert_eq!(
            err(b"\x16\x03\x01 / HTTP/1.1\r\n\r\n"),
            HeadError::Malformed("token")
        );
        assert_eq!(
            parse_request(&[b'a'; 100], 64).unwrap_err(),
            HeadError::TooLarge(64)
        );
    }

    #[test]
    fn content_length_must_be_one_plain_number() {
        let cl = HeadError::BadContentLength;
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            cl
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            cl
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n"),
            cl
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"),
            cl
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n"),
            cl
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n"),
            cl
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9999999999999999999\r\n\r\n"),
            cl
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HeadError::LengthAndChunked
        );
    }

    #[test]
    fn transfer_encoding_is_one_chunked() {
        let te = |v: &str| {
            parse_request(
                format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {v}\r\n\r\n").as_bytes(),
                8192,
            )
            .map(|r| r.unwrap().body)
        };
        assert_eq!(te("chunked"), Ok(Body::Chunked));
        assert_eq!(te("chunked, chunked"), Err(HeadError::BadChunkedCoding));
        assert_eq!(te("chunked, gzip"), Err(HeadError::BadChunkedCoding));
        assert_eq!(te("chunked,"), Err(HeadError::BadChunkedCoding));
        assert_eq!(te("gzip, chunked"), Err(HeadError::BadTransferEncoding));
        assert_eq!(te("gzip"), Err(HeadError::BadTransferEncoding));
        assert_eq!(te("identity"), Err(HeadError::BadTransferEncoding));
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HeadError::BadChunkedCoding
        );
        assert_eq!(
            err(b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HeadError::BadChunkedCoding
        );
        assert_eq!(te("gzip").unwrap_err().status(), 501);
        assert_eq!(te("chunked, chunked").unwrap_err().status(), 400);
    }

    #[test]
    fn heads_must_be_canonical() {
        let m = |b: &[u8]| match parse_request(b, 8192) {
            Err(HeadError::Malformed(w)) => w,
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(b)),
        };
        assert_eq!(m(b"GET / HTTP/1.1\nHost: a\r\n\r\n"), "bare LF");
        assert_eq!(m(b"GET / HTTP/1.1\r\nHost: a\n\r\n"), "bare LF");
        assert_eq!(m(b"GET / HTTP/1.1\r\nHost: a\r\n\n"), "bare LF");
        // obs-fold: httparse or the canonical check, either refuses it.
        assert!(matches!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n"),
            HeadError::Malformed(_)
        ));
        assert_eq!(
            check_canonical(b"GET / HTTP/1.1\r\nX: 1\r\n\tfolded\r\n\r\n"),
            Err(HeadError::Malformed(
                "obs-fold or whitespace before a field"
            ))
        );
        assert!(matches!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n"),
            HeadError::Malformed(_)
        ));
        assert!(matches!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x0bb\r\n\r\n"),
            HeadError::Malformed(_)
        ));
        assert!(matches!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n"),
            HeadError::Malformed(_)
        ));
        assert!(matches!(
            err(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
            HeadError::Malformed(_)
        ));
        // Tabs in values and obs-text are fields like any other.
        req(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\tb \xe9\r\n\r\n");
        // Responses too.
        assert!(
            parse_response(b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", 8192, false).is_err()
        );
    }

    #[test]
    fn responses() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            8192,
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (r.status, r.body, r.keep_alive),
            (200, Body::Length(3), true)
        );
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", 8192, true)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, Body::None);
        let r = parse_response(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
            8192,
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.body, Body::None);
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\n", 8192, false)
            .unwrap()
            .unwrap();
        assert_eq!((r.body, r.keep_alive), (Body::Close, false));
        let r = parse_response(
            b"HTTP/1.1 302 Found\r\nLocation: http://a:1/\r\nTransfer-Encoding: chunked\r\n\r\n",
            8192,
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.body, Body::Chunked);
        assert!(r.has_uri_headers);
        // Both framings: chunked wins, and the connection is not reused.
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            8192,
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((r.body, r.keep_alive), (Body::Chunked, false));
    }
}
