//! Wire protocol between the host and bulkhead-agent, sans I/O.
//!
//! One JSON object per line (newline-delimited JSON) in each direction.
//! The host sends requests `{"id":N,"op":"...",...}`; the agent answers each
//! with `{"id":N,"ok":{...}}` or `{"id":N,"err":{"kind":"...","message":"..."}}`.
//! Ids let several requests be in flight at once (the host demultiplexes).
//! Bytes (exec stdin/stdout/stderr) travel base64-encoded.
//!
//! Version negotiation: `hello` carries the range of protocol versions the
//! host speaks; the agent answers with [`PROTOCOL_VERSION`] if it is in range,
//! else with an `unsupported_version` error.
//!
//! Upward calls (`bulkhead-guest`'s grant requests, relayed to the manager):
//! the agent may send `{"call":N,"request":{...}}`, N its own counter and the
//! request the guest's `GuestRequest` object (bulkhead-grant), at most
//! [`MAX_REQUEST_BYTES`] bytes, relayed byte for byte. The host answers with
//! `{"call":N,"ok":{<GuestReply>}}` or `{"call":N,"err":{"kind":"...","message":"..."}}`
//! ([`CallAnswer`]). Error kinds: the grant refusals
//! (`bulkhead_grant::reply::GrantErrorKind::as_str()`), plus [`call_kind`]'s
//! `bad_request`, `unavailable` (no manager listening, or the host side is
//! gone), `timeout`, `busy` (too many calls in flight) and `internal`. The
//! agent bounds calls in flight ([`MAX_CALLS_IN_FLIGHT`]) and times each out
//! itself, so a host that ignores calls (an older one logs and drops the
//! line) leaves the guest with `timeout`, never a hang. The request never says
//! who is asking: the host knows the partition from the channel.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Version of this protocol. Bump on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;
/// Name of the virtio-serial port the agent serves (`-device virtserialport,name=...`).
pub const PORT_NAME: &str = "org.bulkhead.agent.0";
/// Exact line the agent prints on /dev/console once user space is up.
pub const READY_LINE: &str = "bulkhead-agent: ready";
/// Longest line either side accepts. Exec output is capped below this.
pub const MAX_LINE: usize = 64 * 1024 * 1024;
/// Cap on each of exec stdout and stderr kept by the agent.
pub const MAX_EXEC_OUTPUT: usize = 16 * 1024 * 1024;
/// Largest request object an upward call carries.
pub use bulkhead_grant::request::MAX_REQUEST_BYTES;
/// Upward calls in flight at once, per partition (each side enforces it).
pub const MAX_CALLS_IN_FLIGHT: usize = 16;

/// Error kinds of upward calls besides the grant refusals.
pub mod call_kind {
    /// The request is not one JSON object of at most `MAX_REQUEST_BYTES`.
    pub const BAD_REQUEST: &str = "bad_request";
    /// No manager is listening, or the host side went away.
    pub const UNAVAILABLE: &str = "unavailable";
    /// No answer in time.
    pub const TIMEOUT: &str = "timeout";
    /// Too many calls in flight.
    pub const BUSY: &str = "busy";
    /// The host dropped the call without answering.
    pub const INTERNAL: &str = "internal";
}

/// A request from the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    #[serde(flatten)]
    pub body: RequestBody,
}

/// What the host asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RequestBody {
    /// Version negotiation; answered with [`ReadyInfo`].
    Hello { min_version: u32, max_version: u32 },
    /// Run a program; answered with [`ExecOutput`].
    Exec {
        argv: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_b64")]
        stdin: Option<Vec<u8>>,
        timeout_ms: u64,
    },
    /// Memory, uptime, load; answered with [`GuestInfo`].
    Info,
    /// Answered with an empty object.
    SetHostname { name: String },
    /// Sync, remount read-only, ack (empty object), then power off or reboot.
    Shutdown { action: PowerAction },
    /// The guest's shared-memory regions (ivshmem devices); answered with a
    /// list of [`RegionInfo`].
    RegionList,
    /// Waits up to `wait_ms` for the region `name` (its port's PCI address or
    /// its own) to appear, then enables it for mapping; answered with
    /// [`RegionInfo`] once the mapping is usable.
    RegionMap {
        name: String,
        #[serde(default)]
        wait_ms: u64,
    },
    /// Cuts every mapping in the guest off the region (memory decoding off);
    /// answered with [`RegionUnmapped`].
    RegionUnmap { name: String },
    /// Starts the image's L2TP resource server with this profile (TOML)
    /// and waits up to `wait_ms` until it listens on UDP `listen`;
    /// answered with [`ServiceStarted`] (issue 15).
    L2tpServer {
        profile: String,
        listen: std::net::SocketAddr,
        #[serde(default)]
        wait_ms: u64,
    },
    /// The pool session this partition now serves, or none (issue 17):
    /// what `bulkhead-guest session` prints. Only the host sets it.
    /// Answered with an empty object.
    SetSession { session: Option<PoolSession> },
    /// A restored clone takes its own identity (issue 17): its host name,
    /// the host's clock, and per NIC (found by the template's MAC) its own
    /// MAC, address and default route. One request, no process started.
    /// Answered with an empty object.
    Reidentify(Reidentity),
}

/// What a clone changes of its template's identity (`reidentify`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reidentity {
    pub hostname: String,
    /// The host's clock, Unix milliseconds.
    pub clock_unix_ms: u64,
    #[serde(default)]
    pub nics: Vec<NicIdentity>,
}

/// One NIC of a clone: found by the MAC it had in the template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicIdentity {
    pub old_mac: String,
    pub new_mac: String,
    /// Its own address (CIDR); the template's stays when absent.
    #[serde(default)]
    pub ip: Option<String>,
    /// The default route's gateway, set again after the address changed.
    #[serde(default)]
    pub gateway: Option<String>,
}

/// A pool session as the partition's agent knows it (`set_session`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSession {
    /// The session id, 16 lowercase hex digits (as in the session line).
    pub session: String,
    /// The program (transaction program name).
    pub program: String,
    /// The user the session serves.
    pub alternate_id: String,
}

impl PoolSession {
    /// Longest program or alternate id (the gateway's bound).
    pub const MAX_NAME: usize = 64;

    /// Each field one non-empty word of printable ASCII, so the line
    /// `bulkhead-guest session` prints splits into exactly three.
    pub fn check(&self) -> Result<(), String> {
        let word = |s: &str| {
            !s.is_empty() && s.len() <= Self::MAX_NAME && s.bytes().all(|b| b.is_ascii_graphic())
        };
        let hex = self.session.len() == 16
            && self
                .session
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex {
            return Err(format!("session {:?} is not 16 hex digits", self.session));
        }
        if !word(&self.program) || !word(&self.alternate_id) {
            return Err("program and alternate id must be 1-64 printable characters".into());
        }
        Ok(())
    }

    /// `SESSION_ID PROGRAM ALTERNATE_ID`.
    pub fn line(&self) -> String {
        format!("{} {} {}", self.session, self.program, self.alternate_id)
    }
}

/// Reply to `l2tp_server`: the server runs and listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStarted {
    pub pid: u32,
    /// Its log (stdout and stderr) in the guest.
    pub log: String,
}

/// One shared-memory region (ivshmem device) as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionInfo {
    /// The device's PCI address in the guest.
    pub addr: String,
    /// The PCI address of the port (bridge) it sits behind, when there is one.
    pub port: Option<String>,
    /// BAR2 size in bytes (0 when the guest could not assign it).
    pub size: u64,
    /// Memory decoding on: the mapping reaches the region.
    pub enabled: bool,
    /// The file programs mmap (`MAP_SHARED`): the BAR's sysfs `resource2`.
    pub path: std::path::PathBuf,
}

/// Reply to `region_unmap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionUnmapped {
    pub addr: String,
    /// Guest processes that still had the region mapped: from now on their
    /// accesses no longer reach it.
    pub holders: Vec<u32>,
}

/// What the agent does after a clean shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    Poweroff,
    Reboot,
}

/// The agent's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err: Option<WireError>,
}

/// An error reported by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// Machine-readable: `bad_request`, `unsupported_version`, `spawn`,
    /// `timeout`, `io`, `busy`; for regions `not_found`, `no_bar`, `not_mapped`.
    pub kind: String,
    pub message: String,
}

/// An upward call from the agent: a guest's request, relayed as it came.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    pub call: u64,
    pub request: Box<serde_json::value::RawValue>,
}

/// The host's answer to a [`Call`] (also what the agent hands `bulkhead-guest`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallAnswer {
    pub call: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err: Option<WireError>,
}

impl CallAnswer {
    pub fn new(call: u64, result: Result<serde_json::Value, WireError>) -> CallAnswer {
        match result {
            Ok(v) => CallAnswer {
                call,
                ok: Some(v),
                err: None,
            },
            Err(e) => CallAnswer {
                call,
                ok: None,
                err: Some(e),
            },
        }
    }

    /// Exactly one of `ok` and `err`, or a protocol error.
    pub fn into_result(self) -> Result<serde_json::Value, WireError> {
        match (self.ok, self.err) {
            (Some(v), None) => Ok(v),
            (None, Some(e)) => Err(e),
            _ => Err(WireError::new(
                call_kind::INTERNAL,
                "answer has not exactly one of \"ok\" and \"err\"",
            )),
        }
    }
}

impl WireError {
    pub fn new(kind: &str, message: impl Into<String>) -> WireError {
        WireError {
            kind: kind.into(),
            message: message.into(),
        }
    }
}

/// Checks a guest request before it is relayed: one JSON object of at most
/// [`MAX_REQUEST_BYTES`]. Its meaning is the manager's to check.
pub fn check_call_request(bytes: &[u8]) -> Result<Box<serde_json::value::RawValue>, WireError> {
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(WireError::new(
            call_kind::BAD_REQUEST,
            format!(
                "request is {} bytes, the most is {MAX_REQUEST_BYTES}",
                bytes.len()
            ),
        ));
    }
    let raw: Box<serde_json::value::RawValue> = serde_json::from_slice(bytes)
        .map_err(|e| WireError::new(call_kind::BAD_REQUEST, format!("request is not JSON: {e}")))?;
    if !raw.get().starts_with('{') {
        return Err(WireError::new(
            call_kind::BAD_REQUEST,
            "request is not a JSON object",
        ));
    }
    Ok(raw)
}

/// Longest call line: the request and its envelope.
const MAX_CALL_LINE: usize = MAX_REQUEST_BYTES + 64;

/// One line from the agent, as the host reads it.
#[derive(Debug, PartialEq)]
pub enum AgentLine {
    Response(Response),
    /// A well-formed call: `request` is the guest's object, byte for byte.
    Call {
        call: u64,
        request: Vec<u8>,
    },
    /// A call the host answers at once with `bad_request`.
    BadCall {
        call: u64,
        message: String,
    },
}

/// Decodes one line from the agent (without its newline): a response to a
/// host request, or an upward call. Err: neither (the line is logged, dropped).
pub fn decode_agent_line(line: &[u8]) -> Result<AgentLine, String> {
    let resp_err = match serde_json::from_slice::<Response>(line) {
        Ok(r) => return Ok(AgentLine::Response(r)),
        Err(e) => e,
    };
    // Responses may be long (exec output), calls may not: no further parsing
    // of a long line that is not a response. The agent never sends one.
    if line.len() > MAX_CALL_LINE {
        return Err(format!(
            "{} bytes, not a response, too long for a call: {resp_err}",
            line.len()
        ));
    }
    match serde_json::from_slice::<Call>(line) {
        Ok(c) => Ok(match check_call_request(c.request.get().as_bytes()) {
            Ok(_) => AgentLine::Call {
                call: c.call,
                request: c.request.get().as_bytes().to_vec(),
            },
            Err(e) => AgentLine::BadCall {
                call: c.call,
                message: e.message,
            },
        }),
        Err(call_err) => {
            // Answer a malformed call whose number can be read; else drop it.
            let v: serde_json::Value =
                serde_json::from_slice(line).map_err(|_| format!("not a response: {resp_err}"))?;
            match v.get("call").and_then(|c| c.as_u64()) {
                Some(call) => Ok(AgentLine::BadCall {
                    call,
                    message: format!("malformed call: {call_err}"),
                }),
                None => Err(format!("not a response: {resp_err}")),
            }
        }
    }
}

/// One line from the host, as the agent reads it.
#[derive(Debug, PartialEq)]
pub enum HostLine {
    Request(Request),
    Answer(CallAnswer),
}

/// Decodes one line from the host: a request, or the answer to a call (it has
/// `call`, no `id`).
pub fn decode_host_line(line: &[u8]) -> Result<HostLine, DecodeError> {
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| DecodeError {
        id: None,
        message: format!("not JSON: {e}"),
    })?;
    if value.get("call").is_some() && value.get("id").is_none() {
        return serde_json::from_value(value)
            .map(HostLine::Answer)
            .map_err(|e| DecodeError {
                id: None,
                message: format!("bad call answer: {e}"),
            });
    }
    request_from_value(value).map(HostLine::Request)
}

/// Reply to `hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyInfo {
    pub protocol_version: u32,
    pub agent_version: String,
    /// Guest uptime (CLOCK_BOOTTIME) in ms when the agent printed its ready line.
    pub boot_ms: u64,
    pub hostname: String,
    pub ncpus: u32,
    pub kernel_release: String,
    /// True when the agent runs from a root LU it switched into.
    #[serde(default)]
    pub root_lu: bool,
}

/// Reply to `exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutput {
    /// Exit code, or 128 + signal number when killed by a signal (as a shell reports it).
    pub code: i32,
    #[serde(with = "b64")]
    pub stdout: Vec<u8>,
    #[serde(with = "b64")]
    pub stderr: Vec<u8>,
}

/// Reply to `info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestInfo {
    pub mem_total_kib: u64,
    pub mem_free_kib: u64,
    pub mem_available_kib: u64,
    pub uptime_ms: u64,
    pub load: [f64; 3],
    pub ncpus: u32,
    pub hostname: String,
}

/// Why a request line could not be decoded; `id` is set when it could be read,
/// so the agent can still answer that request with an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad request: {message}")]
pub struct DecodeError {
    pub id: Option<u64>,
    pub message: String,
}

/// Decodes one request line (without its newline).
pub fn decode_request(line: &[u8]) -> Result<Request, DecodeError> {
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| DecodeError {
        id: None,
        message: format!("not JSON: {e}"),
    })?;
    request_from_value(value)
}

fn request_from_value(value: serde_json::Value) -> Result<Request, DecodeError> {
    let id = value.get("id").and_then(|v| v.as_u64());
    if id.is_none() {
        return Err(DecodeError {
            id: None,
            message: "missing or invalid \"id\"".into(),
        });
    }
    serde_json::from_value(value).map_err(|e| DecodeError {
        id,
        message: e.to_string(),
    })
}

/// Encodes a message as one line, newline included.
pub fn encode_line<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing our own plain structs cannot fail.
    let mut v = serde_json::to_vec(msg).expect("serializable message");
    v.push(b'\n');
    v
}

impl Response {
    pub fn ok<T: Serialize>(id: u64, body: &T) -> Response {
        Response {
            id,
            ok: Some(serde_json::to_value(body).expect("serializable reply")),
            err: None,
        }
    }

    pub fn err(id: u64, kind: &str, message: impl Into<String>) -> Response {
        Response {
            id,
            ok: None,
            err: Some(WireError {
                kind: kind.into(),
                message: message.into(),
            }),
        }
    }
}

/// Splits a byte stream into lines. Sans I/O: feed it whatever `read` returned.
///
/// A line longer than the limit is dropped whole (up to its newline) and
/// reported once as [`Frame::TooLong`], so one bad message cannot wedge the
/// stream or exhaust memory.
#[derive(Debug)]
pub struct LineDecoder {
    buf: Vec<u8>,
    max: usize,
    /// Inside an over-long line: skip bytes until the next newline.
    discarding: bool,
}

/// One item out of [`LineDecoder`].
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Line(Vec<u8>),
    TooLong,
}

impl LineDecoder {
    pub fn new(max: usize) -> LineDecoder {
        LineDecoder {
            buf: Vec::new(),
            max,
            discarding: false,
        }
    }

    /// Forgets a partial line (the peer went away mid-line).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }

    /// Appends bytes and returns every complete frame they finish.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    let (head, rest) = (&data[..nl], &data[nl + 1..]);
                    data = rest;
                    if self.discarding {
                        self.discarding = false;
                        continue;
                    }
                    if self.buf.len() + head.len() > self.max {
                        self.buf.clear();
                        out.push(Frame::TooLong);
                        continue;
                    }
                    self.buf.extend_from_slice(head);
                    let mut line = std::mem::take(&mut self.buf);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if !line.iter().all(|b| b.is_ascii_whitespace()) {
                        out.push(Frame::Line(line));
                    }
                }
                None => {
                    if !self.discarding {
                        if self.buf.len() + data.len() > self.max {
                            self.buf.clear();
                            self.discarding = true;
                            out.push(Frame::TooLong);
                        } else {
                            self.buf.extend_from_slice(data);
                        }
                    }
                    data = &[];
                }
            }
        }
        out
    }
}

fn b64_engine() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

mod b64 {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&b64_engine().encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        b64_engine()
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

mod opt_b64 {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&b64_engine().encode(v)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => b64_engine()
                .decode(s.as_bytes())
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let reqs = [
            RequestBody::Hello {
                min_version: 1,
                max_version: 3,
            },
            RequestBody::Exec {
                argv: vec!["sh".into(), "-c".into(), "cat".into()],
                stdin: Some(b"\x00\xffhi\n".to_vec()),
                timeout_ms: 5000,
            },
            RequestBody::Exec {
                argv: vec!["true".into()],
                stdin: None,
                timeout_ms: 1,
            },
            RequestBody::Info,
            RequestBody::SetHostname { name: "p1".into() },
            RequestBody::Shutdown {
                action: PowerAction::Reboot,
            },
            RequestBody::Reidentify(Reidentity {
                hostname: "web-3".into(),
                clock_unix_ms: 1_700_000_000_123,
                nics: vec![NicIdentity {
                    old_mac: "52:54:00:00:00:01".into(),
                    new_mac: "52:54:00:0a:0b:0c".into(),
                    ip: Some("10.1.2.3/24".into()),
                    gateway: Some("10.1.2.1".into()),
                }],
            }),
        ];
        for (i, body) in reqs.into_iter().enumerate() {
            let req = Request { id: i as u64, body };
            let line = encode_line(&req);
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            let back = decode_request(&line[..line.len() - 1]).unwrap();
            assert_eq!(back, req);
        }
    }

    #[test]
    fn wire_shape_is_stable() {
        let req = decode_request(br#"{"id":7,"op":"set_hostname","name":"a"}"#).unwrap();
        assert_eq!(req.id, 7);
        assert_eq!(req.body, RequestBody::SetHostname { name: "a".into() });
        let r = decode_request(br#"{"id":1,"op":"shutdown","action":"poweroff"}"#).unwrap();
        assert_eq!(
            r.body,
            RequestBody::Shutdown {
                action: PowerAction::Poweroff
            }
        );
        let reply = ExecOutput {
            code: 3,
            stdout: b"out".to_vec(),
            stderr: vec![],
        };
        let line = String::from_utf8(encode_line(&Response::ok(9, &reply))).unwrap();
        assert_eq!(
            line,
            "{\"id\":9,\"ok\":{\"code\":3,\"stderr\":\"\",\"stdout\":\"b3V0\"}}\n"
        );
    }

    #[test]
    fn bad_requests_are_errors_with_id_when_known() {
        let e = decode_request(b"not json").unwrap_err();
        assert_eq!(e.id, None);
        let e = decode_request(br#"{"op":"info"}"#).unwrap_err();
        assert_eq!(e.id, None);
        let e = decode_request(br#"{"id":4,"op":"fly"}"#).unwrap_err();
        assert_eq!(e.id, Some(4));
        let e = decode_request(br#"{"id":5,"op":"exec","argv":"ls","timeout_ms":1}"#).unwrap_err();
        assert_eq!(e.id, Some(5));
        let e = decode_request(br#"{"id":6,"op":"exec","argv":[],"stdin":"!!!","timeout_ms":1}"#)
            .unwrap_err();
        assert_eq!(e.id, Some(6));
        assert!(e.message.contains("Invalid"), "{}", e.message);
        let e = decode_request(br#"{"id":-1,"op":"info"}"#).unwrap_err();
        assert_eq!(e.id, None);
    }

    #[test]
    fn call_lines_both_ways() {
        // Agent -> host: the request's bytes survive as they were.
        let raw =
            check_call_request(br#"{"op":"release", "grant":"gr-00000000000000aa"}"#).unwrap();
        let line = encode_line(&Call {
            call: 3,
            request: raw,
        });
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"call\":3,\"request\":{\"op\":\"release\", \"grant\":\"gr-00000000000000aa\"}}\n"
        );
        match decode_agent_line(&line[..line.len() - 1]).unwrap() {
            AgentLine::Call { call, request } => {
                assert_eq!(call, 3);
                assert_eq!(
                    request,
                    br#"{"op":"release", "grant":"gr-00000000000000aa"}"#
                );
            }
            other => panic!("{other:?}"),
        }
        // Responses are still responses.
        let r = decode_agent_line(br#"{"id":4,"ok":{}}"#).unwrap();
        assert!(matches!(r, AgentLine::Response(Response { id: 4, .. })));
        // Bad calls whose number can be read are answered, others dropped.
        for bad in [
            &br#"{"call":5,"request":"str"}"#[..],
            br#"{"call":5,"request":{},"id2":1}"#,
            br#"{"call":5}"#,
        ] {
            assert!(
                matches!(
                    decode_agent_line(bad),
                    Ok(AgentLine::BadCall { call: 5, .. })
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        for junk in [
            &b"nope"[..],
            br#"{"call":-1,"request":{}}"#,
            br#"{}"#,
            b"[]",
        ] {
            assert!(decode_agent_line(junk).is_err());
        }
        // A request just over the bound is answered; a line far over it is dropped.
        let over = |n: usize| format!(r#"{{"call":6,"request":{{"x":"{}"}}}}"#, "a".repeat(n));
        assert!(matches!(
            decode_agent_line(over(MAX_REQUEST_BYTES).as_bytes()),
            Ok(AgentLine::BadCall { call: 6, .. })
        ));
        assert!(decode_agent_line(over(2 * MAX_REQUEST_BYTES).as_bytes()).is_err());

        // Host -> agent: answers and requests are told apart.
        let ok = CallAnswer::new(3, Ok(serde_json::json!({"reply":"ended"})));
        let line = encode_line(&ok);
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"call\":3,\"ok\":{\"reply\":\"ended\"}}\n"
        );
        assert_eq!(
            decode_host_line(&line[..line.len() - 1]).unwrap(),
            HostLine::Answer(ok)
        );
        let e = decode_host_line(br#"{"call":3,"err":{"kind":"revoked","message":"m"}}"#).unwrap();
        let HostLine::Answer(a) = e else { panic!() };
        assert_eq!(a.into_result().unwrap_err().kind, "revoked");
        assert!(matches!(
            decode_host_line(br#"{"id":1,"op":"info"}"#),
            Ok(HostLine::Request(_))
        ));
        assert!(decode_host_line(br#"{"call":3,"bogus":1}"#).is_err());
        // Neither or both of ok/err: not a valid answer.
        let both = CallAnswer {
            call: 1,
            ok: Some(serde_json::json!({})),
            err: Some(WireError::new("x", "y")),
        };
        assert_eq!(both.into_result().unwrap_err().kind, call_kind::INTERNAL);
    }

    #[test]
    fn line_decoder_splits_and_joins() {
        let mut d = LineDecoder::new(100);
        assert!(d.push(b"ab").is_empty());
        assert_eq!(
            d.push(b"c\r\n\n  \nde\nf"),
            vec![Frame::Line(b"abc".to_vec()), Frame::Line(b"de".to_vec())]
        );
        assert_eq!(d.push(b"\n"), vec![Frame::Line(b"f".to_vec())]);
        d.push(b"partial");
        d.reset();
        assert_eq!(d.push(b"x\n"), vec![Frame::Line(b"x".to_vec())]);
    }

    #[test]
    fn line_decoder_drops_long_lines_and_recovers() {
        let mut d = LineDecoder::new(4);
        assert_eq!(d.push(b"123"), vec![]);
        assert_eq!(d.push(b"45"), vec![Frame::TooLong]);
        assert_eq!(d.push(b"6789"), vec![]);
        assert_eq!(d.push(b"0\nok\n"), vec![Frame::Line(b"ok".to_vec())]);
        assert_eq!(
            d.push(b"12345\nab\n"),
            vec![Frame::TooLong, Frame::Line(b"ab".to_vec())]
        );
        assert_eq!(d.push(b"1234\n"), vec![Frame::Line(b"1234".to_vec())]);
    }
}
