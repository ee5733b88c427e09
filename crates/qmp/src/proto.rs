//! The QMP wire format without I/O: one JSON object per line.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What one line from QEMU is.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The greeting QEMU sends on connect.
    Greeting(Greeting),
    /// Successful reply to the command with this id.
    Return { id: Option<u64>, value: Value },
    /// Failed reply to the command with this id.
    Error {
        id: Option<u64>,
        error: CommandError,
    },
    /// An asynchronous event.
    Event(Event),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Greeting {
    pub version: VersionInfo,
    #[serde(default)]
    pub capabilities: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VersionInfo {
    pub qemu: QemuVersion,
    #[serde(default)]
    pub package: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

/// QEMU's error object: a class such as `CommandNotFound` or `GenericError` and a
/// human description.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct CommandError {
    pub class: String,
    pub desc: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Event {
    #[serde(rename = "event")]
    pub name: String,
    #[serde(default)]
    pub data: Value,
    #[serde(default)]
    pub timestamp: Timestamp,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Timestamp {
    pub seconds: i64,
    pub microseconds: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("QMP line is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("QMP message of unknown shape: {0}")]
    Shape(String),
}

/// Classifies one line received from QEMU.
pub fn decode(line: &[u8]) -> Result<Message, DecodeError> {
    let v: Value = serde_json::from_slice(line)?;
    let obj = v
        .as_object()
        .ok_or_else(|| DecodeError::Shape(truncate(&v)))?;
    let id = obj.get("id").and_then(Value::as_u64);
    if let Some(g) = obj.get("QMP") {
        return Ok(Message::Greeting(serde_json::from_value(g.clone())?));
    }
    if let Some(r) = obj.get("return") {
        return Ok(Message::Return {
            id,
            value: r.clone(),
        });
    }
    if let Some(e) = obj.get("error") {
        return Ok(Message::Error {
            id,
            error: serde_json::from_value(e.clone())?,
        });
    }
    if obj.contains_key("event") {
        return Ok(Message::Event(serde_json::from_value(v)?));
    }
    Err(DecodeError::Shape(truncate(&v)))
}

fn truncate(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 200 {
        s.truncate(200);
        s.push('…');
    }
    s
}

/// A line from QEMU longer than the framer's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("QMP line longer than {0} bytes")]
pub struct LineTooLong(pub usize);

/// Splits QEMU's byte stream into lines, never holding more than `max_line`
/// bytes: a peer that never sends a newline cannot grow us.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    max_line: usize,
}

impl Framer {
    pub fn new(max_line: usize) -> Framer {
        Framer {
            buf: Vec::new(),
            max_line,
        }
    }

    /// Bytes of an unfinished line held.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends `data`, pushing each line it completes (without the newline)
    /// onto `out`. Over-long lines are fatal: QMP has no way to resynchronise
    /// past one that we could trust, so the caller closes the connection.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), LineTooLong> {
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            if self.buf.len() + nl > self.max_line {
                return Err(LineTooLong(self.max_line));
            }
            self.buf.extend_from_slice(&data[..nl]);
            let line = std::mem::take(&mut self.buf);
            if !line.iter().all(u8::is_ascii_whitespace) {
                out.push(line);
            }
            data = &data[nl + 1..];
        }
        if self.buf.len() + data.len() > self.max_line {
            return Err(LineTooLong(self.max_line));
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }
}

/// Encodes a command with its id, newline-terminated.
pub fn encode_command(id: u64, command: &str, arguments: Option<&Value>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Cmd<'a> {
        execute: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        arguments: Option<&'a Value>,
        id: u64,
    }
    let mut out = serde_json::to_vec(&Cmd {
        execute: command,
        arguments,
        id,
    })
    .expect("a command always serializes");
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_greeting_return_error_event() {
        let g = decode(br#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}"#).unwrap();
        match g {
            Message::Greeting(g) => {
                assert_eq!(g.version.qemu.major, 7);
                assert_eq!(g.capabilities, vec!["oob"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decode(br#"{"return": {}, "id": 4}"#).unwrap(),
            Message::Return {
                id: Some(4),
                value: serde_json::json!({})
            }
        );
        match decode(br#"{"id": 5, "error": {"class": "CommandNotFound", "desc": "nope"}}"#)
            .unwrap()
        {
            Message::Error { id, error } => {
                assert_eq!(id, Some(5));
                assert_eq!(error.class, "CommandNotFound");
            }
            other => panic!("{other:?}"),
        }
        match decode(br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}"#).unwrap() {
            Message::Event(e) => {
                assert_eq!(e.name, "SHUTDOWN");
                assert_eq!(e.data["reason"], "guest-shutdown");
                assert_eq!(e.timestamp.seconds, 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode(b"not json").is_err());
        assert!(decode(b"[1,2]").is_err());
        assert!(decode(br#"{"something": 1}"#).is_err());
    }

    #[test]
    fn framer_splits_and_bounds_lines() {
        let mut f = Framer::new(8);
        let mut out = Vec::new();
        f.push(b"{\"a\"", &mut out).unwrap();
        assert!(out.is_empty());
        f.push(b":1}\r\n\n{}\nxy", &mut out).unwrap();
        assert_eq!(out, vec![b"{\"a\":1}\r".to_vec(), b"{}".to_vec()]);
        assert_eq!(f.buffered(), 2);
        // Exactly the limit is fine; one more byte, with or without a
        // newline in the same chunk, is not.
        let mut f = Framer::new(4);
        f.push(b"abcd\n", &mut out).unwrap();
        assert_eq!(f.push(b"abcde\n", &mut out), Err(LineTooLong(4)));
        let mut f = Framer::new(4);
        f.push(b"abc", &mut out).unwrap();
        assert_eq!(f.push(b"de", &mut out), Err(LineTooLong(4)));
        assert!(f.buffered() <= 4);
    }

    #[test]
    fn encodes_with_id_and_newline() {
        let b = encode_command(7, "query-status", None);
        assert_eq!(b.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["execute"], "query-status");
        assert_eq!(v["id"], 7);
        assert!(v.get("arguments").is_none());
    }
}
