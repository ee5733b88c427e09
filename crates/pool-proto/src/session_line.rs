//! The one line a program in a pool partition reads before the conversation's bytes:
//! `BULKHEAD-SESSION 1 <session> <program> <alternate-id>\n`, session as 16 lowercase
//! hex digits, the names as in ALLOCATE. Plain text so a shell script can `read` it.

use crate::frame::{check_name, SessionId};

/// The line, newline included, is never longer than this.
pub const MAX_SESSION_LINE_LEN: usize = 256;
const PREFIX: &str = "BULKHEAD-SESSION";
const LINE_VERSION: &str = "1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLine {
    pub session: SessionId,
    pub program: String,
    /// The user the session runs for (the design document's alternate user id).
    pub alternate_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionLineError {
    #[error("session line longer than {MAX_SESSION_LINE_LEN} bytes")]
    TooLong,
    #[error("session line does not end with a newline")]
    Unterminated,
    #[error("not a session line (expected `{PREFIX} {LINE_VERSION} ...`)")]
    BadPrefix,
    #[error("session line has {0} fields, expected 5")]
    FieldCount(usize),
    #[error("session id is not 16 lowercase hex digits or is zero")]
    BadSession,
    #[error("{0} is not a valid name")]
    BadName(&'static str),
}

impl SessionLine {
    /// The line, newline included. Names are checked so the line always parses back.
    pub fn encode(&self) -> Result<String, SessionLineError> {
        if self.session.0 == 0 {
            return Err(SessionLineError::BadSession);
        }
        if !check_name(&self.program) {
            return Err(SessionLineError::BadName("program"));
        }
        if !check_name(&self.alternate_id) {
            return Err(SessionLineError::BadName("alternate id"));
        }
        Ok(format!(
            "{PREFIX} {LINE_VERSION} {} {} {}\n",
            self.session, self.program, self.alternate_id
        ))
    }

    /// Parses one line, trailing newline required (a partial line is not a line).
    pub fn parse(line: &[u8]) -> Result<Self, SessionLineError> {
        if line.len() > MAX_SESSION_LINE_LEN {
            return Err(SessionLineError::TooLong);
        }
        let line = line
            .strip_suffix(b"\n")
            .ok_or(SessionLineError::Unterminated)?;
        let line = std::str::from_utf8(line).map_err(|_| SessionLineError::BadPrefix)?;
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 2 || fields[0] != PREFIX || fields[1] != LINE_VERSION {
            return Err(SessionLineError::BadPrefix);
        }
        let [_, _, session, program, alternate_id] = fields[..] else {
            return Err(SessionLineError::FieldCount(fields.len()));
        };
        let lower_hex =
            |s: &str| s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let session = match u64::from_str_radix(session, 16) {
            Ok(n) if n != 0 && lower_hex(session) => SessionId(n),
            _ => return Err(SessionLineError::BadSession),
        };
        if !check_name(program) {
            return Err(SessionLineError::BadName("program"));
        }
        if !check_name(alternate_id) {
            return Err(SessionLineError::BadName("alternate id"));
        }
        Ok(Self {
            session,
            program: program.to_owned(),
            alternate_id: alternate_id.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_parses() {
        let l = SessionLine::parse(b"BULKHEAD-SESSION 1 000000000000002a echo alice\n").unwrap();
        assert_eq!(l.session, SessionId(42));
        assert_eq!(
            (l.program.as_str(), l.alternate_id.as_str()),
            ("echo", "alice")
        );
        assert_eq!(
            l.encode().unwrap(),
            "BULKHEAD-SESSION 1 000000000000002a echo alice\n"
        );
    }

    #[test]
    fn bad_lines_refused() {
        use SessionLineError as E;
        for (line, want) in [
            (
                &b"BULKHEAD-SESSION 1 000000000000002a echo alice"[..],
                E::Unterminated,
            ),
            (b"GET / HTTP/1.1\n", E::BadPrefix),
            (
                b"BULKHEAD-SESSION 2 000000000000002a echo alice\n",
                E::BadPrefix,
            ),
            (
                b"BULKHEAD-SESSION 1 000000000000002a echo\n",
                E::FieldCount(4),
            ),
            (b"BULKHEAD-SESSION 1 2a echo alice\n", E::BadSession),
            (
                b"BULKHEAD-SESSION 1 000000000000002A echo alice\n",
                E::BadSession,
            ),
            (
                b"BULKHEAD-SESSION 1 0000000000000000 echo alice\n",
                E::BadSession,
            ),
            (
                b"BULKHEAD-SESSION 1 000000000000002a ech/o alice\n",
                E::BadName("program"),
            ),
            (&[b'x'; 300][..], E::TooLong),
        ] {
            assert_eq!(SessionLine::parse(line), Err(want));
        }
    }
}
