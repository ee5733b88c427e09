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
