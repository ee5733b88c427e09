//! Sans-I/O HTTP/1.x heads and framing: enough to route a request by Host, find
//! where each message ends on a keep-alive connection, and map virtual ports in
//! response headers back to the shared port. Bodies are never buffered.

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
    #[error("invalid or conflicting Content-Length")]
    BadContentLength,
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
    /// Host name to route on: lower-cased, port removed. `None` for an HTTP/1.0
    /// request without Host.
    pub host: Option<String>,
    /// The authority exactly as the client addressed it (`a.test:8080`), used
    /// when mapping virtual ports back.
    pub authority: Option<String>,
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

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&c| c == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn parse_length(v: &[u8], current: Option<u64>) -> Result<u64, HeadError> {
    // A list of identical values is allowed (RFC 9110 §8.6); anything else is not.
    let mut out = current;
    for part in v.split(|&c| c == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(HeadError::BadContentLength);
        }
        let n: u64 = std::str::from_utf8(part)
            .unwrap()
            .parse()
            .map_err(|_| HeadError::BadContentLength)?;
        match out {
            Some(m) if m != n => return Err(HeadError::BadContentLength),
            _ => out = Some(n),
        }
    }
    out.ok_or(HeadError::BadContentLength)
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

/// Parses a request head at the start of `buf`. `Ok(None)`: need more bytes.
pub fn parse_request(buf: &[u8], max_head: usize) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf).map_err(map_httparse)? {
        httparse::Status::Complete(n) if n > max_head => return Err(HeadError::TooLarge(max_head)),
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial if buf.len() >= max_head => {
            return Err(HeadError::TooLarge(max_head))
        }
        httparse::Status::Partial => return Ok(None),
    };
    let version = req.version.ok_or(HeadError::Version)?;
    let method = req.method.ok_or(HeadError::Malformed("method"))?;
    if method == "CONNECT" {
        return Err(HeadError::Connect);
    }
    let path = req.path.ok_or(HeadError::Malformed("target"))?;

    let mut host_hdr: Option<&[u8]> = None;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te_seen = false;
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
            te_seen = true;
            // Only chunked as the final coding delimits a request body (RFC 9112 §6.3).
            let last = h
                .value
                .split(|&c| c == b',')
                .next_back()
                .unwrap_or(b"")
                .trim_ascii();
            chunked = last.eq_ignore_ascii_case(b"chunked");
            if !chunked {
                return Err(HeadError::BadTransferEncoding);
            }
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
    if te_seen && length.is_some() {
        return Err(HeadError::LengthAndChunked);
    }
    if te_seen && version == 0 {
        return Err(HeadError::BadTransferEncoding);
    }
    // Absolute-form targets carry the authority and win over Host (RFC 9112 §3.2.2).
    let absolute = path
        .strip_prefix("http://")
        .or_else(|| path.strip_prefix("https://"))
        .map(|rest| rest.split(['/', '?']).next().unwrap_or(""));
    let authority = match (absolute, host_hdr) {
        (Some(a), _) => Some(a.as_bytes()),
        (None, Some(h)) => Some(h),
        (None, None) if version == 0 => None,
        (None, None) => return Err(HeadError::MissingHost),
    };
    let (host, authority) = match authority {
        Some(a) if !a.is_empty() => (
            Some(host_of_authority(a)?),
            Some(String::from_utf8(a.to_vec()).map_err(|_| HeadError::BadHost)?),
        ),
        _ => (None, None),
    };
    let keep_alive = if version == 1 { !close } else { keep && !close };
    Ok(Some(RequestHead {
        len,
        version,
        is_head: method == "HEAD",
        host,
        authority,
        body: if chunked {
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

/// The request head without its Connection headers (hop-by-hop: they concern
/// the client's connection, not the proxy's connection to the target).
pub fn strip_connection_header(head: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len());
    for (i, line) in head.split_inclusive(|&c| c == b'\n').enumerate() {
        let is_conn = i > 0 && line.len() > 11 && line[..11].eq_ignore_ascii_case(b"connection:");
        if !is_conn {
            out.extend_from_slice(line);
        }
    }
    out
}

/// The response head with its Connection headers replaced by `connection: close`.
pub fn set_connection_close(head: &[u8]) -> Vec<u8> {
    let mut out = strip_connection_header(head);
    // Insert before the blank line that ends the head.
    let end = if out.ends_with(b"\r\n\r\n") {
        out.len() - 2
    } else {
        out.len().saturating_sub(1)
    };
    out.splice(end..end, b"connection: close\r\n".iter().copied());
    out
}

/// Parses a response head. `request_is_head` removes the body of a HEAD reply.
pub fn parse_response(
    buf: &[u8],
    max_head: usize,
    request_is_head: bool,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let len = match res.parse(buf).map_err(map_httparse)? {
        httparse::Status::Complete(n) if n > max_head => return Err(HeadError::TooLarge(max_head)),
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial if buf.len() >= max_head => {
            return Err(HeadError::TooLarge(max_head))
        }
        httparse::Status::Partial => return Ok(None),
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
            let last = h
                .value
                .split(|&c| c == b',')
                .next_back()
                .unwrap_or(b"")
                .trim_ascii();
            te = Some(last.eq_ignore_ascii_case(b"chunked"));
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
    let keep_alive = body != Body::Close && if version == 1 { !close } else { keep && !close };
    Ok(Some(ResponseHead {
        len,
        status,
        body,
        keep_alive,
        has_uri_headers: uri,
    }))
}

/// Rewrites `scheme://host:virtual_port` inside Location, Content-Location and
/// Refresh headers of a response head to `scheme://public_authority`, so the
/// client never sees the virtual port. `hosts` are the names the server may use
/// for itself (the requested host name, the target's address). Returns `None`
/// when nothing changed.
pub fn rewrite_uri_headers(
    head: &[u8],
    hosts: &[&str],
    virtual_port: u16,
    public_authority: &str,
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(head.len() + 16);
    let mut changed = false;
    let port = virtual_port.to_string();
    for line in head.split_inclusive(|&c| c == b'\n') {
        let colon = line.iter().position(|&c| c == b':');
        let is_uri = colon.is_some_and(|i| {
            let n = &line[..i];
            n.eq_ignore_ascii_case(b"location")
                || n.eq_ignore_ascii_case(b"content-location")
                || n.eq_ignore_ascii_case(b"refresh")
        });
        if !is_uri {
            out.extend_from_slice(line);
            continue;
        }
        let mut rest = line;
        while let Some(i) = find(rest, b"://") {
            let (before, after) = rest.split_at(i + 3);
            out.extend_from_slice(before);
            let end = after
                .iter()
                .position(|&c| {
                    matches!(
                        c,
                        b'/' | b'?' | b'#' | b'\r' | b'\n' | b' ' | b';' | b'"' | b'\''
                    )
                })
                .unwrap_or(after.len());
            let auth = &after[..end];
            let hit = auth.iter().rposition(|&c| c == b':').is_some_and(|c| {
                let (h, p) = (&auth[..c], &auth[c + 1..]);
                p == port.as_bytes() && hosts.iter().any(|x| h.eq_ignore_ascii_case(x.as_bytes()))
            });
            if hit {
                out.extend_from_slice(public_authority.as_bytes());
                changed = true;
            } else {
                out.extend_from_slice(auth);
            }
            rest = &after[end..];
        }
        out.extend_from_slice(rest);
    }
    changed.then_some(out)
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Sans-I/O chunked-body delimiter: finds where a chunked body ends without
/// decoding it, so the raw bytes are forwarded unchanged.
#[derive(Debug, Clone, Default)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    line: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    FinalLf,
    Done,
}

/// Longest chunk-extension or trailer line accepted.
const MAX_CHUNK_LINE: usize = 8192;

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes body bytes from `buf`; returns how many belong to the body
    /// (all of `buf` unless the body ends inside it).
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, HeadError> {
        use ChunkState::*;
        let mut i = 0;
        while i < buf.len() && self.state != Done {
            if self.state == Data {
                let n = (self.size.min((buf.len() - i) as u64)) as usize;
                self.size -= n as u64;
                i += n;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let c = buf[i];
            i += 1;
            self.state = match self.state {
                Size => match c {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits == 16 {
                            return Err(HeadError::Chunked("chunk size too large"));
                        }
                        self.digits += 1;
                        self.size = self.size << 4 | (c as char).to_digit(16).unwrap() as u64;
                        Size
                    }
                    _ if self.digits == 0 => return Err(HeadError::Chunked("missing chunk size")),
                    b';' | b' ' | b'\t' => {
                        self.line = 0;
                        Ext
                    }
                    b'\r' => SizeLf,
                    b'\n' => self.after_size(),
                    _ => return Err(HeadError::Chunked("bad chunk size")),
                },
                Ext => match c {
                    b'\r' => SizeLf,
                    b'\n' => self.after_size(),
                    _ => {
                        self.line += 1;
                        if self.line > MAX_CHUNK_LINE {
                            return Err(HeadError::Chunked("chunk extension too long"));
                        }
                        Ext
                    }
                },
                SizeLf if c == b'\n' => self.after_size(),
                DataCr if c == b'\r' => DataLf,
                DataCr | DataLf if c == b'\n' => {
                    self.digits = 0;
                    Size
                }
                TrailerStart => match c {
                    b'\r' => FinalLf,
                    b'\n' => Done,
                    _ => {
                        self.line = 1;
                        Trailer
                    }
                },
                Trailer => match c {
                    b'\n' => TrailerStart,
                    _ => {
                        self.line += 1;
                        if self.line > MAX_CHUNK_LINE {
                            return Err(HeadError::Chunked("trailer too long"));
                        }
                        Trailer
                    }
                },
                FinalLf if c == b'\n' => Done,
                _ => return Err(HeadError::Chunked("bad line ending")),
            };
        }
        Ok(i)
    }

    fn after_size(&mut self) -> ChunkState {
        if self.size == 0 {
            ChunkState::TrailerStart
        } else {
            ChunkState::Data
        }
    }
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

    #[test]
    fn request_basics() {
        let r = parse_request(b"GET /x HTTP/1.1\r\nHost: A.Test:8080\r\n\r\nrest", 8192)
            .unwrap()
            .unwrap();
        assert_eq!(r.len, 38);
        assert_eq!(r.host.as_deref(), Some("a.test"));
        assert_eq!(r.authority.as_deref(), Some("A.Test:8080"));
        assert_eq!(r.body, Body::None);
        assert!(r.keep_alive);
        assert_eq!(parse_request(b"GET /x HTTP/1.1\r\nHost: a", 8192), Ok(None));
    }

    #[test]
    fn http10_and_absolute_form() {
        let r = parse_request(b"GET / HTTP/1.0\r\n\r\n", 8192)
            .unwrap()
            .unwrap();
        assert_eq!((r.host, r.keep_alive, r.version), (None, false, 0));
        let r = parse_request(
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nHost: b.test\r\n\r\n",
            8192,
        )
        .unwrap()
        .unwrap();
        assert!(r.keep_alive);
        let r = parse_request(
            b"GET http://c.test:81/p HTTP/1.1\r\nHost: other\r\n\r\n",
            8192,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.host.as_deref(), Some("c.test"));
        let r = parse_request(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", 8192)
            .unwrap()
            .unwrap();
        assert_eq!(r.host.as_deref(), Some("[::1]"));
    }

    #[test]
    fn framing() {
        let r = parse_request(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
            8192,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.body, Body::Length(5));
        let r = parse_request(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nExpect: 100-continue\r\n\r\n", 8192)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, Body::Chunked);
        assert!(r.expect_continue);
        let r = parse_request(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            8192,
        )
        .unwrap()
        .unwrap();
        assert!(r.upgrade);
    }

    #[test]
    fn refusals() {
        let e = |b: &[u8]| parse_request(b, 8192).unwrap_err();
        assert_eq!(e(b"GET / HTTP/1.1\r\n\r\n"), HeadError::MissingHost);
        assert_eq!(
            e(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            HeadError::DuplicateHost
        );
        assert_eq!(
            e(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
            HeadError::BadHost
        );
        assert_eq!(
            e(b"GET / HTTP/1.1\r\nHost: a:99999999\r\n\r\n"),
            HeadError::BadHost
        );
        assert_eq!(
            e(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            HeadError::BadContentLength
        );
        assert_eq!(
            e(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"),
            HeadError::BadContentLength
        );
        assert_eq!(
            e(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HeadError::LengthAndChunked
        );
        assert_eq!(
            e(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
            HeadError::BadTransferEncoding
        );
        assert_eq!(
            e(b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n"),
            HeadError::Connect
        );
        assert_eq!(
            e(b"\x16\x03\x01 / HTTP/1.1\r\n\r\n"),
            HeadError::Malformed("token")
        );
        assert_eq!(
            parse_request(&[b'a'; 100], 64).unwrap_err(),
            HeadError::TooLarge(64)
        );
    }

    #[test]
    fn strips_connection() {
        let h = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX: 1\r\n\r\n";
        let r = parse_request(h, 8192).unwrap().unwrap();
        assert!(r.close_requested && !r.keep_alive);
        assert_eq!(
            strip_connection_header(h),
            b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n"
        );
        let r = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            set_connection_close(r),
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nconnection: close\r\n\r\n"
        );
        assert_eq!(
            set_connection_close(b"HTTP/1.1 200 OK\n\n"),
            b"HTTP/1.1 200 OK\nconnection: close\r\n\n"
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
    }

    #[test]
    fn rewrites_virtual_port() {
        let head = b"HTTP/1.1 301 Moved\r\nLocation: http://a.test:9001/x?y\r\nRefresh: 3; url=https://127.0.0.1:9001/z\r\nX-Other: http://a.test:9001/\r\nContent-Location: http://b.test:9001/\r\n\r\n";
        let out = rewrite_uri_headers(head, &["a.test", "127.0.0.1"], 9001, "a.test:8080").unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains("Location: http://a.test:8080/x?y\r\n"),
            "{out}"
        );
        assert!(
            out.contains("Refresh: 3; url=https://a.test:8080/z\r\n"),
            "{out}"
        );
        assert!(out.contains("X-Other: http://a.test:9001/\r\n"), "{out}");
        assert!(
            out.contains("Content-Location: http://b.test:9001/\r\n"),
            "{out}"
        );
        assert_eq!(
            rewrite_uri_headers(b"HTTP/1.1 200 OK\r\nLocation: /rel\r\n\r\n", &["a"], 1, "a"),
            None
        );
    }

    #[test]
    fn chunked_ends_where_it_should() {
        let body = b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let mut c = Chunked::default();
        assert_eq!(c.feed(body).unwrap(), body.len() - 4);
        assert!(c.is_done());
        // Byte by byte gives the same answer.
        let mut c = Chunked::default();
        let mut n = 0;
        for b in body.iter() {
            n += c.feed(std::slice::from_ref(b)).unwrap();
            if c.is_done() {
                break;
            }
        }
        assert_eq!(n, body.len() - 4);
        assert!(Chunked::default().feed(b"zz\r\n").is_err());
        assert!(Chunked::default().feed(b"11111111111111111\r\n").is_err());
        assert!(Chunked::default().feed(b"1\r\nab").is_err());
    }
}
