//! The oracle: an RFC 9112 request parser as strict as a backend can be,
//! written apart from the proxy's own (no shared code), reading the exact
//! bytes a backend received. Anything it cannot read is an error.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Req {
    pub method: String,
    pub target: String,
    /// Host value, lower-cased, port removed.
    pub host: Option<String>,
    pub body: Vec<u8>,
    /// The exact bytes of this request on the wire.
    pub raw: Vec<u8>,
    pub upgrade: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole request of this many bytes.
    Req(Req, usize),
    /// Not enough bytes yet.
    Need,
    Err(String),
}

fn tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn field_value_ok(v: &[u8]) -> bool {
    v.iter()
        .all(|&c| c == b'\t' || (0x20..0x7f).contains(&c) || c >= 0x80)
}

/// CRLF-terminated lines of `buf` from `at`: (line without CRLF, next offset).
fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, String> {
    let rest = &buf[at..];
    match rest.iter().position(|&c| c == b'\n') {
        None => {
            if rest.contains(&b'\r') && !rest.ends_with(b"\r") {
                return Err("bare CR".into());
            }
            Ok(None)
        }
        Some(i) if i == 0 || rest[i - 1] != b'\r' => Err("bare LF".into()),
        Some(i) => {
            let l = &rest[..i - 1];
            if l.contains(&b'\r') {
                return Err("bare CR".into());
            }
            Ok(Some((l, at + i + 1)))
        }
    }
}

macro_rules! need {
    ($e:expr) => {
        match $e {
            Ok(Some(x)) => x,
            Ok(None) => return Parsed::Need,
            Err(e) => return Parsed::Err(e),
        }
    };
}

fn bad(s: &str) -> Parsed {
    Parsed::Err(s.to_string())
}

/// Reads one request at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let (rl, mut at) = need!(line(buf, 0));
    let parts: Vec<&[u8]> = rl.split(|&c| c == b' ').collect();
    if parts.len() != 3 || parts[0].is_empty() || !parts[0].iter().all(|&c| tchar(c)) {
        return bad("request line");
    }
    if parts[1].is_empty() || !parts[1].iter().all(|&c| (0x21..0x7f).contains(&c)) {
        return bad("request target");
    }
    let v11 = match parts[2] {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        _ => return bad("version"),
    };
    let (mut host, mut cl, mut te, mut hosts) = (None::<String>, None::<u64>, None::<Vec<u8>>, 0);
    let (mut conn_up, mut up_hdr) = (false, false);
    loop {
        let (l, next) = need!(line(buf, at));
        at = next;
        if l.is_empty() {
            break;
        }
        let colon = match l.iter().position(|&c| c == b':') {
            Some(i) if i > 0 && l[..i].iter().all(|&c| tchar(c)) => i,
            _ => return bad("field line"),
        };
        let name = String::from_utf8_lossy(&l[..colon]).to_ascii_lowercase();
        let value = l[colon + 1..].trim_ascii();
        if !field_value_ok(value) {
            return bad("field value");
        }
        match name.as_str() {
            "host" => {
                hosts += 1;
                let v = String::from_utf8_lossy(value).to_ascii_lowercase();
                let name = match v.rsplit_once(':') {
                    Some((h, p)) if !h.contains(']') || h.ends_with(']') => {
                        if !p.bytes().all(|c| c.is_ascii_digit()) {
                            return bad("host port");
                        }
                        h.to_string()
                    }
                    _ => v.clone(),
                };
                host = Some(name);
            }
            "content-length" => {
                if cl.is_some()
                    || value.is_empty()
                    || !value.iter().all(u8::is_ascii_digit)
                    || value.len() > 15
                {
                    return bad("content-length");
                }
                cl = Some(String::from_utf8_lossy(value).parse().unwrap());
            }
            "transfer-encoding" => {
                if te.is_some() {
                    return bad("transfer-encoding twice");
                }
                te = Some(value.to_ascii_lowercase());
            }
            "connection" => {
                conn_up |= String::from_utf8_lossy(value)
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            }
            "upgrade" => up_hdr = true,
            _ => {}
        }
    }
    if hosts > 1 || (v11 && hosts == 0) || host.as_deref() == Some("") {
        return bad("host");
    }
    let head_len = at;
    let body = match (te, cl) {
        (Some(_), Some(_)) => return bad("content-length and transfer-encoding"),
        (Some(t), None) if t == b"chunked" && v11 => {
            let mut body = Vec::new();
            loop {
                let (l, next) = need!(line(buf, at));
                at = next;
                let hex = l.split(|&c| c == b';').next().unwrap_or(b"");
                if hex.is_empty() || hex.len() > 8 || !hex.iter().all(u8::is_ascii_hexdigit) {
                    return bad("chunk size");
                }
                if !field_value_ok(l) {
                    return bad("chunk extension");
                }
                let n = usize::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
                if n == 0 {
                    // Trailers: fields, then the blank line.
                    loop {
                        let (l, next) = need!(line(buf, at));
                        at = next;
                        if l.is_empty() {
                            break;
                        }
                        match l.iter().position(|&c| c == b':') {
                            Some(i) if i > 0 && l[..i].iter().all(|&c| tchar(c)) => {}
                            _ => return bad("trailer"),
                        }
                    }
                    break body;
                }
                if buf.len() < at + n + 2 {
                    return Parsed::Need;
                }
                if &buf[at + n..at + n + 2] != b"\r\n" {
                    return bad("chunk data end");
                }
                body.extend_from_slice(&buf[at..at + n]);
                at += n + 2;
            }
        }
        (Some(_), None) => return bad("transfer-encoding"),
        (None, Some(n)) => {
            let n = n as usize;
            if buf.len() < at + n {
                return Parsed::Need;
            }
            at += n;
            buf[head_len..at].to_vec()
        }
        (None, None) => Vec::new(),
    };
    Parsed::Req(
        Req {
            method: String::from_utf8_lossy(parts[0]).into_owned(),
            target: String::from_utf8_lossy(parts[1]).into_owned(),
            host,
            body,
            raw: buf[..at].to_vec(),
            upgrade: conn_up && up_hdr,
        },
        at,
    )
}

/// Every request in `buf` as a backend reads them, then what stopped it:
/// `Ok(n)` with `n` bytes of an incomplete request (0: none), or an error.
/// After an upgrade request the rest is tunnel bytes, returned apart.
pub fn parse_all(buf: &[u8]) -> (Vec<Req>, Result<usize, String>, Vec<u8>) {
    let mut reqs = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        match parse(&buf[at..]) {
            Parsed::Req(r, n) => {
                at += n;
                let up = r.upgrade;
                reqs.push(r);
                if up {
                    return (reqs, Ok(0), buf[at..].to_vec());
                }
            }
            Parsed::Need => return (reqs, Ok(buf.len() - at), Vec::new()),
            Parsed::Err(e) => return (reqs, Err(e), Vec::new()),
        }
    }
    (reqs, Ok(0), Vec::new())
}

#[test]
fn the_oracle_is_strict() {
    let ok = b"POST /a HTTP/1.1\r\nHost: A.test:80\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n0\r\nT: 1\r\n\r\nGET /b HTTP/1.1\r\nHost: b.test\r\n\r\n";
    let (reqs, tail, _) = parse_all(ok);
    assert_eq!(tail, Ok(0));
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        (reqs[0].host.as_deref(), &reqs[0].body[..]),
        (Some("a.test"), &b"abc"[..])
    );
    for bad in [
        &b"GET / HTTP/1.1\nHost: a\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n y\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n",
    ] {
        assert!(
            parse_all(bad).1.is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}
