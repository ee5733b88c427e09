//! The phone line between two modem models, sans I/O.
//!
//! TCP carries no ring-back or busy tone, so a modem model that calls another one says
//! who it is and waits to be answered: right after the TCP connect it sends [`PREAMBLE`];
//! the far modem replies with one status line, [`ANSWER`] when it goes off hook (ATA or
//! auto-answer) or [`BUSY`] when its line is in use. A plain TCP client never sends the
//! preamble, so the answering side tells the two kinds of caller apart from the first
//! bytes alone ([`classify`]), and plain callers see nothing of the handshake (except
//! `BUSY\r\n` when turned away).

/// Sent by a calling modem model right after the TCP connect. It starts with SYN
/// (0x16), which neither a terminal user nor a text protocol sends first.
pub const PREAMBLE: &[u8] = b"\x16BULKHEAD-MODEM CALL\r\n";
/// The answering modem went off hook: call data follows.
pub const ANSWER: &[u8] = b"ANSWER\r\n";
/// The line is in use; the connection is closed after it.
pub const BUSY: &[u8] = b"BUSY\r\n";
/// The longest status line the calling side reads before calling it garbage.
pub const MAX_STATUS: usize = 64;

/// Who is calling, from the bytes the caller sent so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// Another modem model; call data starts at this offset (after the preamble).
    Modem { data_at: usize },
    /// A plain TCP client: every byte is call data.
    Plain,
    /// Nothing yet, or a strict prefix of the preamble: more bytes decide.
    Undecided,
}

/// Classifies a caller from the first bytes it sent.
pub fn classify(early: &[u8]) -> Caller {
    if early.starts_with(PREAMBLE) {
        Caller::Modem {
            data_at: PREAMBLE.len(),
        }
    } else if PREAMBLE.starts_with(early) {
        Caller::Undecided
    } else {
        Caller::Plain
    }
}

/// What the called modem replied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Answer,
    Busy,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("no status line in the first {MAX_STATUS} bytes")]
    TooLong,
    #[error("unknown status line {0:?}")]
    Unknown(String),
}

/// Reads the status line from the start of what the called modem sent.
/// `Ok(None)`: incomplete, read more. `Ok(Some((status, n)))`: the line is `n` bytes
/// long; anything after it is call data.
pub fn status(buf: &[u8]) -> Result<Option<(Status, usize)>, StatusError> {
    let Some(end) = buf.iter().take(MAX_STATUS).position(|b| *b == b'\n') else {
        return if buf.len() >= MAX_STATUS {
            Err(StatusError::TooLong)
        } else {
            Ok(None)
        };
    };
    let used = end + 1;
    match &buf[..used] {
        l if l == ANSWER => Ok(Some((Status::Answer, used))),
        l if l == BUSY => Ok(Some((Status::Busy, used))),
        l => Err(StatusError::Unknown(
            String::from_utf8_lossy(l).into_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_modem_plain_and_undecided_callers() {
        assert_eq!(classify(b""), Caller::Undecided);
        assert_eq!(classify(&PREAMBLE[..5]), Caller::Undecided);
        assert_eq!(classify(&PREAMBLE[..PREAMBLE.len() - 1]), Caller::Undecided);
        assert_eq!(classify(PREAMBLE), Caller::Modem { data_at: 22 });
        let mut more = PREAMBLE.to_vec();
        more.extend_from_slice(b"data");
        assert_eq!(classify(&more), Caller::Modem { data_at: 22 });
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Caller::Plain);
        assert_eq!(classify(b"\x16BULKHEAD-MODEM CALL\n"), Caller::Plain);
        // A TLS ClientHello also starts with 0x16; it parts ways at the next byte.
        assert_eq!(classify(b"\x16\x03\x01"), Caller::Plain);
    }

    #[test]
    fn reads_status_lines() {
        assert_eq!(status(b""), Ok(None));
        assert_eq!(status(b"ANSW"), Ok(None));
        assert_eq!(status(b"ANSWER\r\n"), Ok(Some((Status::Answer, 8))));
        assert_eq!(status(b"ANSWER\r\nhello"), Ok(Some((Status::Answer, 8))));
        assert_eq!(status(b"BUSY\r\n"), Ok(Some((Status::Busy, 6))));
        assert!(matches!(
            status(b"CONNECT\r\n"),
            Err(StatusError::Unknown(_))
        ));
        assert!(matches!(status(b"ANSWER\n"), Err(StatusError::Unknown(_))));
        assert_eq!(status(&[b'x'; MAX_STATUS - 1]), Ok(None));
        assert_eq!(status(&[b'x'; MAX_STATUS]), Err(StatusError::TooLong));
        // A newline past the bound does not count.
        let mut long = vec![b'x'; MAX_STATUS];
        long.push(b'\n');
        assert_eq!(status(&long), Err(StatusError::TooLong));
    }
}
