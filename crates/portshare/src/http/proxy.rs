//! The proxy's HTTP/1.1 decisions, sans I/O: where a body ends, what a target's
//! response stream means for one request (interim, switch, final, body, end),
//! whether a request may be sent again, whether a pooled connection may be
//! used, and what happens to both connections after an exchange. The tokio
//! loop in `server::http` only moves bytes as these say.

use super::{parse_response, Body, Chunked, HeadError, RequestHead, ResponseHead};
use thiserror::Error;

/// Where a message body ends.
#[derive(Debug, Clone)]
pub enum BodyReader {
    Left(u64),
    Chunked(Chunked),
    UntilClose,
}

impl BodyReader {
    pub fn new(b: Body) -> Self {
        match b {
            Body::Length(n) => BodyReader::Left(n),
            Body::Chunked => BodyReader::Chunked(Chunked::default()),
            Body::None => BodyReader::Left(0),
            Body::Close => BodyReader::UntilClose,
        }
    }

    pub fn done(&self) -> bool {
        match self {
            BodyReader::Left(n) => *n == 0,
            BodyReader::Chunked(c) => c.is_done(),
            BodyReader::UntilClose => false,
        }
    }

    /// How many bytes of `buf` belong to the body. On error none may be
    /// forwarded: the framing is not what a strict parser would read.
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, HeadError> {
        match self {
            BodyReader::Left(n) => {
                let take = (*n).min(buf.len() as u64);
                *n -= take;
                Ok(take as usize)
            }
            BodyReader::Chunked(c) if c.is_done() => Ok(0),
            BodyReader::Chunked(c) => c.feed(buf),
            BodyReader::UntilClose => Ok(buf.len()),
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ResponseError {
    #[error("malformed response head: {0}")]
    Head(HeadError),
    #[error("101 Switching Protocols to a request that did not ask to upgrade")]
    UnaskedSwitch,
    #[error("malformed response body: {0}")]
    Body(HeadError),
    #[error("target closed mid-response")]
    Truncated,
}

/// What the next bytes of a target's response stream are.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    NeedMore,
    /// A 1xx head other than 101 (`head.len` bytes): relay it, a final one follows.
    Interim(ResponseHead),
    /// 101 to an upgrade request: relay the head, then tunnel.
    Switched(ResponseHead),
    /// The final head (`head.len` bytes); its body follows.
    Final(ResponseHead),
    /// This many bytes of the buffer are body.
    Body(usize),
    /// The response is complete; `keep_alive`: its head allows reuse.
    End {
        keep_alive: bool,
    },
}

#[derive(Debug)]
enum State {
    Head,
    Body { body: BodyReader, keep_alive: bool },
    Done { keep_alive: bool },
}

/// Reads one request's response from a target, sans I/O: call [`next`] with
/// the bytes received and not yet consumed, drain what the event consumed
/// (`head.len` for heads, `n` for `Body(n)`), and call again.
///
/// [`next`]: ResponseReader::next
#[derive(Debug)]
pub struct ResponseReader {
    is_head: bool,
    upgrade: bool,
    max_head: usize,
    state: State,
}

impl ResponseReader {
    pub fn new(req: &RequestHead, max_head: usize) -> Self {
        ResponseReader {
            is_head: req.is_head,
            upgrade: req.upgrade,
            max_head,
            state: State::Head,
        }
    }

    /// True once a final head was read: from then on nothing can be retried.
    pub fn started(&self) -> bool {
        !matches!(self.state, State::Head)
    }

    pub fn next(&mut self, buf: &[u8]) -> Result<Event, ResponseError> {
        match &mut self.state {
            State::Head => {
                let Some(h) = parse_response(buf, self.max_head, self.is_head)
                    .map_err(ResponseError::Head)?
                else {
                    return Ok(Event::NeedMore);
                };
                match h.status {
                    101 if self.upgrade => {
                        self.state = State::Done { keep_alive: false };
                        Ok(Event::Switched(h))
                    }
                    101 => Err(ResponseError::UnaskedSwitch),
                    100..=199 => Ok(Event::Interim(h)),
                    _ => {
                        self.state = State::Body {
                            body: BodyReader::new(h.body),
                            keep_alive: h.keep_alive,
                        };
                        Ok(Event::Final(h))
                    }
                }
            }
            State::Body { body, keep_alive } => {
                if body.done() {
                    let keep_alive = *keep_alive;
                    self.state = State::Done { keep_alive };
                    return Ok(Event::End { keep_alive });
                }
                if buf.is_empty() {
                    return Ok(Event::NeedMore);
                }
                body.feed(buf).map(Event::Body).map_err(ResponseError::Body)
            }
            State::Done { keep_alive } => Ok(Event::End {
                keep_alive: *keep_alive,
            }),
        }
    }

    /// The target closed its side: the end of a close-delimited body, an
    /// error anywhere else.
    pub fn eof(&mut self) -> Result<Event, ResponseError> {
        match &self.state {
            State::Body {
                body: BodyReader::UntilClose,
                ..
            } => {
                self.state = State::Done { keep_alive: false };
                Ok(Event::End { keep_alive: false })
            }
            State::Done { keep_alive } => Ok(Event::End {
                keep_alive: *keep_alive,
            }),
            _ => Err(ResponseError::Truncated),
        }
    }
}

/// Whether a request that failed on a reused target connection may be sent
/// again on a new one: only an idempotent method (RFC 9110 §9.2.2) whose
/// request is still whole in hand (no body), only when nothing of a response
/// arrived, and once.
pub fn may_retry(req: &RequestHead, reused: bool, received: bool, retried: bool) -> bool {
    reused && !retried && !received && req.idempotent && req.body == Body::None
}

/// What a look at an idle pooled connection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Nothing to read, still open.
    Idle,
    /// Bytes arrived while nobody asked: an unsolicited response. They
    /// belong to no request; the connection is closed, never used.
    Readable,
    /// The target closed it (or it failed).
    Closed,
}

impl Probe {
    /// Only a connection proven idle carries the next request.
    pub fn reusable(self) -> bool {
        self == Probe::Idle
    }
}

/// What happens to both connections after one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub client_keep_alive: bool,
    pub upstream_reusable: bool,
}

/// `keep_alive`: the response allows reuse; `body_sent`: the whole request
/// body reached the target (false when the target answered early, e.g. a
/// refused `100-continue`); `upstream_leftover`: bytes the target sent after
/// its response; `client_leftover`: bytes the client sent after this request.
pub fn verdict(
    req: &RequestHead,
    keep_alive: bool,
    body_sent: bool,
    upstream_leftover: usize,
    client_leftover: usize,
) -> Verdict {
    Verdict {
        // Bytes sent after an upgrade request that was not switched were
        // meant for another protocol: they are not read as a next request.
        client_keep_alive: keep_alive
            && req.keep_alive
            && body_sent
            && !(req.upgrade && client_leftover > 0),
        // Extra bytes after a response mean the target is confused.
        upstream_reusable: keep_alive && body_sent && upstream_leftover == 0,
    }
}

/// The public authority for `host:port` named in a response's URI header, if
/// it names a virtual port: the client's own authority for the answering
/// target (`own`: the requested name or the target's host, and its port), or
/// `host` on the shared port when `host` is routed by a named row
/// (`routed_port` gives that row's target port) to a target on `port`.
pub fn map_back(
    host: &str,
    port: u16,
    own: (&[&str], u16),
    client_authority: &str,
    routed_port: &dyn Fn(&str) -> Option<u16>,
) -> Option<String> {
    if port == own.1 && own.0.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return Some(client_authority.to_string());
    }
    (routed_port(host)? == port).then(|| format!("{host}{}", super::port_suffix(client_authority)))
}

#[cfg(test)]
mod tests {
    use super::super::parse_request;
    use super::*;

    fn req(b: &[u8]) -> RequestHead {
        parse_request(b, 8192).unwrap().unwrap()
    }

    /// Feeds `stream` to a reader for `r` and returns the events, bodies
    /// collapsed to their byte counts, and what was left unconsumed.
    fn run(
        r: &RequestHead,
        stream: &[u8],
        eof: bool,
    ) -> (Vec<Event>, Result<usize, ResponseError>) {
        let mut rd = ResponseReader::new(r, 8192);
        let mut buf = stream.to_vec();
        let mut out = Vec::new();
        loop {
            let ev = match rd.next(&buf) {
                Ok(Event::NeedMore) if eof => rd.eof(),
                other => other,
            };
            match ev {
                Ok(Event::NeedMore) => return (out, Ok(buf.len())),
                Ok(e) => {
                    let used = match &e {
                        Event::Interim(h) | Event::Final(h) | Event::Switched(h) => h.len,
                        Event::Body(n) => *n,
                        _ => 0,
                    };
                    buf.drain(..used);
                    let end = matches!(e, Event::End { .. } | Event::Switched(_));
                    out.push(e);
                    if end {
                        return (out, Ok(buf.len()));
                    }
                }
                Err(e) => return (out, Err(e)),
            }
        }
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    #[test]
    fn body_readers() {
        let mut b = BodyReader::new(Body::Length(3));
        assert_eq!(b.feed(b"abcdef").unwrap(), 3);
        assert!(b.done());
        let mut b = BodyReader::new(Body::Close);
        assert_eq!(b.feed(b"abc").unwrap(), 3);
        assert!(!b.done());
        assert!(BodyReader::new(Body::None).done());
        assert!(BodyReader::new(Body::Chunked).feed(b"5\nhello").is_err());
    }

    #[test]
    fn a_response_ends_where_its_framing_says() {
        let r = req(GET);
        let (ev, left) = run(
            &r,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
            false,
        );
        assert!(matches!(ev[0], Event::Final(ref h) if h.status == 200));
        assert_eq!(ev[1], Event::Body(2));
        assert_eq!(ev[2], Event::End { keep_alive: true });
        // What follows is not this request's: left for the caller to see.
        assert_eq!(left, Ok(17));
        let (ev, left) = run(
            &r,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            false,
        );
        assert_eq!(ev.last(), Some(&Event::End { keep_alive: true }));
        assert_eq!(left, Ok(0));
        // Close-delimited: ends at EOF and is never reused.
        let (ev, _) = run(&r, b"HTTP/1.1 200 OK\r\n\r\nall of it", true);
        assert_eq!(ev.last(), Some(&Event::End { keep_alive: false }));
        // Cut short: an error, not a short success.
        let (_, e) = run(
            &r,
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
            true,
        );
        assert_eq!(e, Err(ResponseError::Truncated));
        // A strict reader refuses loose response framing too.
        let (_, e) = run(
            &r,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n",
            false,
        );
        assert!(matches!(e, Err(ResponseError::Body(_))));
    }

    #[test]
    fn head_and_204_have_no_body() {
        let (ev, left) = run(
            &req(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"),
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            false,
        );
        assert_eq!(ev.last(), Some(&Event::End { keep_alive: true }));
        assert_eq!(left, Ok(0));
        // A 204 that carries bytes anyway leaves them over: the connection is
        // then not reused (see `verdict`).
        let (ev, left) = run(
            &req(GET),
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
            false,
        );
        assert_eq!(ev.last(), Some(&Event::End { keep_alive: true }));
        assert_eq!(left, Ok(5));
    }

    #[test]
    fn interim_responses_then_final() {
        let (ev, _) = run(
            &req(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n"),
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(matches!(ev[0], Event::Interim(ref h) if h.status == 100));
        assert!(matches!(ev[1], Event::Interim(ref h) if h.status == 103));
        assert!(matches!(ev[2], Event::Final(ref h) if h.status == 201));
    }

    #[test]
    fn switch_only_when_asked() {
        let up = req(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: ws\r\n\r\n");
        let (ev, left) = run(
            &up,
            b"HTTP/1.1 101 Switching Protocols\r\n\r\ntunnel bytes",
            false,
        );
        assert!(matches!(ev[0], Event::Switched(_)));
        assert_eq!(left, Ok(12));
        let (_, e) = run(
            &req(GET),
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            false,
        );
        assert_eq!(e, Err(ResponseError::UnaskedSwitch));
    }

    #[test]
    fn retry_only_idempotent_bodiless_unanswered_once() {
        let get = req(GET);
        assert!(may_retry(&get, true, false, false));
        assert!(
            !may_retry(&get, false, false, false),
            "a new connection failed: no retry"
        );
        assert!(
            !may_retry(&get, true, true, false),
            "part of a response arrived"
        );
        assert!(!may_retry(&get, true, false, true), "once");
        let post0 = req(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        assert!(
            !may_retry(&post0, true, false, false),
            "POST is not idempotent"
        );
        let put = req(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n");
        assert!(!may_retry(&put, true, false, false), "its body is gone");
        let del = req(b"DELETE / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(may_retry(&del, true, false, false));
    }

    #[test]
    fn pool_takes_only_proven_idle_connections() {
        assert!(Probe::Idle.reusable());
        assert!(!Probe::Readable.reusable());
        assert!(!Probe::Closed.reusable());
    }

    #[test]
    fn verdicts() {
        let get = req(GET);
        let ok = verdict(&get, true, true, 0, 0);
        assert_eq!(
            ok,
            Verdict {
                client_keep_alive: true,
                upstream_reusable: true
            }
        );
        // Extra bytes from the target after its response: never reused.
        assert!(!verdict(&get, true, true, 3, 0).upstream_reusable);
        // Answered before the body was all sent (a refused 100-continue):
        // neither connection is in a known state.
        let v = verdict(&get, true, false, 0, 0);
        assert_eq!(
            v,
            Verdict {
                client_keep_alive: false,
                upstream_reusable: false
            }
        );
        // The client asked to close: the target connection is still pooled.
        let close = req(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        assert_eq!(
            verdict(&close, true, true, 0, 0),
            Verdict {
                client_keep_alive: false,
                upstream_reusable: true
            }
        );
        // An upgrade refused by the target with tunnel bytes already sent:
        // those bytes are not read as a next request.
        let up = req(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: ws\r\n\r\n");
        assert!(!verdict(&up, true, true, 0, 4).client_keep_alive);
        assert!(verdict(&up, true, true, 0, 0).client_keep_alive);
    }

    #[test]
    fn maps_own_and_other_rows_virtual_ports() {
        let routed = |h: &str| match h {
            "b.test" => Some(9002),
            _ => None,
        };
        let own: (&[&str], u16) = (&["a.test", "127.0.0.1"], 9001);
        assert_eq!(
            map_back("a.test", 9001, own, "a.test:8080", &routed).as_deref(),
            Some("a.test:8080")
        );
        assert_eq!(
            map_back("127.0.0.1", 9001, own, "a.test:8080", &routed).as_deref(),
            Some("a.test:8080")
        );
        // Another row's virtual port: that row's name on the shared port.
        assert_eq!(
            map_back("b.test", 9002, own, "a.test:8080", &routed).as_deref(),
            Some("b.test:8080")
        );
        assert_eq!(
            map_back("b.test", 9002, own, "a.test", &routed).as_deref(),
            Some("b.test")
        );
        assert_eq!(map_back("b.test", 9003, own, "a.test:8080", &routed), None);
        assert_eq!(map_back("c.test", 9001, own, "a.test:8080", &routed), None);
    }
}
