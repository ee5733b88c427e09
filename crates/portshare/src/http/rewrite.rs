//! Heads as the proxy forwards them: the request head toward the target
//! (hop-by-hop Connection dropped, absolute-form made origin-form with Host
//! from its authority) and URI headers of responses mapped back to the shared
//! port. Heads reaching here passed the strict checks of [`super`], so lines
//! end in CRLF and the request line is `METHOD SP target SP version`.

use super::RequestHead;
use std::borrow::Cow;

fn is_field(line: &[u8], name: &[u8]) -> bool {
    line.len() > name.len()
        && line[name.len()] == b':'
        && line[..name.len()].eq_ignore_ascii_case(name)
}

/// The request head without its Connection headers (hop-by-hop: they concern
/// the client's connection, not the proxy's connection to the target).
pub fn strip_connection_header(head: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len());
    for (i, line) in head.split_inclusive(|&c| c == b'\n').enumerate() {
        if i == 0 || !is_field(line, b"connection") {
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

/// The origin-form of an absolute-form target (`http://a/p?q` → `/p?q`).
fn origin_form<'a>(method: &[u8], target: &'a [u8]) -> Cow<'a, [u8]> {
    let after_scheme = target
        .windows(3)
        .position(|w| w == b"://")
        .map_or(target, |i| &target[i + 3..]);
    match after_scheme.iter().position(|&c| c == b'/' || c == b'?') {
        Some(i) if after_scheme[i] == b'/' => Cow::Borrowed(&after_scheme[i..]),
        Some(i) => Cow::Owned([b"/", &after_scheme[i..]].concat()),
        // RFC 9112 §3.2.4: an OPTIONS for the server as a whole becomes `*`.
        None if method == b"OPTIONS" => Cow::Borrowed(b"*"),
        None => Cow::Borrowed(b"/"),
    }
}

/// The head sent to the target for `req` (`raw` is the client's head, `req`
/// its parse). Unchanged (borrowed) unless the client asked to close (its
/// Connection header is dropped) or used absolute-form: then the target gets
/// origin-form and a Host that is the target URI's authority (RFC 9112 §3.2.2),
/// whatever Host the client sent, as nginx does.
pub fn forward_head<'a>(raw: &'a [u8], req: &RequestHead) -> Cow<'a, [u8]> {
    // Empty lines before the request line are not part of it (RFC 9112 §2.2).
    let mut raw = raw;
    while let Some(rest) = raw.strip_prefix(b"\r\n") {
        raw = rest;
    }
    if !req.close_requested && !req.absolute {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len() + 32);
    for (i, line) in raw.split_inclusive(|&c| c == b'\n').enumerate() {
        if i == 0 && req.absolute {
            let mut parts = line.splitn(3, |&c| c == b' ');
            let (method, target, rest) = (
                parts.next().unwrap_or(b""),
                parts.next().unwrap_or(b""),
                parts.next().unwrap_or(b""),
            );
            out.extend_from_slice(method);
            out.push(b' ');
            out.extend_from_slice(&origin_form(method, target));
            out.push(b' ');
            out.extend_from_slice(rest);
            out.extend_from_slice(b"Host: ");
            out.extend_from_slice(req.authority.as_deref().unwrap_or("").as_bytes());
            out.extend_from_slice(b"\r\n");
        } else if i > 0
            && ((req.close_requested && is_field(line, b"connection"))
                || (req.absolute && is_field(line, b"host")))
        {
            continue;
        } else {
            out.extend_from_slice(line);
        }
    }
    Cow::Owned(out)
}

/// Rewrites the authority of every `scheme://host:port` inside Location,
/// Content-Location and Refresh headers of a response head for which `map`
/// answers with a public authority, so the client never sees a virtual port.
/// Returns `None` when nothing changed.
pub fn rewrite_uri_headers(
    head: &[u8],
    map: &dyn Fn(&str, u16) -> Option<String>,
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(head.len() + 16);
    let mut changed = false;
    for line in head.split_inclusive(|&c| c == b'\n') {
        let is_uri = is_field(line, b"location")
            || is_field(line, b"content-location")
            || is_field(line, b"refresh");
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
            let public = auth.iter().rposition(|&c| c == b':').and_then(|c| {
                let host = std::str::from_utf8(&auth[..c]).ok()?;
                let port = std::str::from_utf8(&auth[c + 1..]).ok()?.parse().ok()?;
                map(host, port)
            });
            match public {
                Some(p) => {
                    out.extend_from_slice(p.as_bytes());
                    changed = true;
                }
                None => out.extend_from_slice(auth),
            }
            rest = &after[end..];
        }
        out.extend_from_slice(rest);
    }
    changed.then_some(out)
}

/// The `:port` part of an authority as the client wrote it (`""` without one).
pub fn port_suffix(authority: &str) -> &str {
    match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => &authority[i..],
        _ => "",
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

#[cfg(test)]
mod tests {
    use super::super::parse_request;
    use super::*;

    fn fwd(raw: &[u8]) -> String {
        let r = parse_request(raw, 8192).unwrap().unwrap();
        String::from_utf8(forward_head(&raw[..r.len], &r).into_owned()).unwrap()
    }

    #[test]
    fn connection_dropped_when_the_client_closes() {
        let h = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX: 1\r\n\r\n";
        assert_eq!(fwd(h), "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n");
        let r = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            set_connection_close(r),
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nconnection: close\r\n\r\n"
        );
        // A canonical head with nothing to change is forwarded as it is.
        let h = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n";
        let r = parse_request(h, 8192).unwrap().unwrap();
        assert!(matches!(forward_head(h, &r), Cow::Borrowed(_)));
    }

    #[test]
    fn absolute_form_authority_wins_over_host() {
        assert_eq!(
            fwd(b"GET http://b.test/p?q HTTP/1.1\r\nHost: a.test\r\nX: 1\r\n\r\n"),
            "GET /p?q HTTP/1.1\r\nHost: b.test\r\nX: 1\r\n\r\n"
        );
        assert_eq!(
            fwd(b"GET HTTP://B.test:81?x HTTP/1.1\r\nHost: b.test:81\r\n\r\n"),
            "GET /?x HTTP/1.1\r\nHost: B.test:81\r\n\r\n"
        );
        assert_eq!(
            fwd(b"OPTIONS http://b.test HTTP/1.0\r\n\r\n"),
            "OPTIONS * HTTP/1.0\r\nHost: b.test\r\n\r\n"
        );
        // Found by fuzzing: an empty line before the request line.
        assert_eq!(
            fwd(b"\r\nGET http://b.test/p HTTP/1.1\r\nHost: a\r\n\r\n"),
            "GET /p HTTP/1.1\r\nHost: b.test\r\n\r\n"
        );
        assert_eq!(
            fwd(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        );
    }

    #[test]
    fn maps_virtual_ports_back() {
        let head = b"HTTP/1.1 301 Moved\r\nLocation: http://a.test:9001/x?y\r\nRefresh: 3; url=https://127.0.0.1:9001/z\r\nX-Other: http://a.test:9001/\r\nContent-Location: http://b.test:9002/\r\n\r\n";
        let map = |h: &str, p: u16| match (h, p) {
            ("a.test" | "127.0.0.1", 9001) => Some("a.test:8080".to_string()),
            ("b.test", 9002) => Some("b.test:8080".to_string()),
            _ => None,
        };
        let out = String::from_utf8(rewrite_uri_headers(head, &map).unwrap()).unwrap();
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
            out.contains("Content-Location: http://b.test:8080/\r\n"),
            "{out}"
        );
        assert_eq!(
            rewrite_uri_headers(b"HTTP/1.1 200 OK\r\nLocation: /rel\r\n\r\n", &map),
            None
        );
        assert_eq!(port_suffix("a.test:8080"), ":8080");
        assert_eq!(port_suffix("a.test"), "");
        assert_eq!(port_suffix("[::1]"), "");
        assert_eq!(port_suffix("[::1]:80"), ":80");
    }
}
