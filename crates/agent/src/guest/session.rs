//! The pool session this partition serves (issue 17): set and cleared by the
//! host alone (`set_session` on the agent's port), kept in the agent's
//! memory, and read in the guest by `bulkhead-guest session` through the
//! agent's root-only socket. Nothing the guest sends can set it: the socket
//! answers the query and relays everything else to the manager.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use crate::proto::{CallAnswer, PoolSession, WireError};

static CURRENT: Mutex<Option<PoolSession>> = Mutex::new(None);

/// The one request `bulkhead-guest session` sends to the agent's socket.
pub const QUERY: &str = r#"{"local":"session"}"#;

/// The host's `set_session`.
pub fn set(session: Option<PoolSession>) -> Result<(), String> {
    if let Some(s) = &session {
        s.check()?;
    }
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = session;
    Ok(())
}

pub fn current() -> Option<PoolSession> {
    CURRENT.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The socket's answer when `request` is the session query (not relayed).
pub fn answer_local(request: &[u8]) -> Option<CallAnswer> {
    (request.trim_ascii() == QUERY.as_bytes()).then(|| {
        // In an object: an `ok` of null would read as no answer at all.
        CallAnswer::new(0, Ok(serde_json::json!({ "session": current() })))
    })
}

/// `bulkhead-guest session`: prints `SESSION_ID PROGRAM ALTERNATE_ID`; exit
/// 1 when no session is open, 3 when the agent does not answer.
pub fn main(socket: &Path) -> i32 {
    match query(socket) {
        Ok(Some(s)) => {
            println!("{}", s.line());
            0
        }
        Ok(None) => {
            eprintln!("bulkhead-guest: no pool session is open in this partition");
            1
        }
        Err(e) => {
            eprintln!("bulkhead-guest: {e}");
            3
        }
    }
}

fn query(socket: &Path) -> Result<Option<PoolSession>, String> {
    let fail = |e: std::io::Error| format!("cannot ask the agent at {}: {e}", socket.display());
    let mut s = UnixStream::connect(socket).map_err(fail)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(fail)?;
    s.write_all(format!("{QUERY}\n").as_bytes()).map_err(fail)?;
    let mut out = Vec::new();
    s.take(64 * 1024).read_to_end(&mut out).map_err(fail)?;
    let answer: CallAnswer = serde_json::from_slice(out.trim_ascii_end())
        .map_err(|e| format!("the agent's answer is not understood: {e}"))?;
    let v = answer
        .into_result()
        .map_err(|e: WireError| format!("{}: {}", e.kind, e.message))?;
    serde_json::from_value(v["session"].clone())
        .map_err(|e| format!("the agent's session is not understood: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_query_is_answered_here_and_sessions_are_checked() {
        let s = PoolSession {
            session: "000000000000002a".into(),
            program: "echo".into(),
            alternate_id: "alice".into(),
        };
        set(Some(s.clone())).unwrap();
        let a = answer_local(QUERY.as_bytes())
            .unwrap()
            .into_result()
            .unwrap();
        assert_eq!(
            serde_json::from_value::<PoolSession>(a["session"].clone()).unwrap(),
            s
        );
        assert_eq!(s.line(), "000000000000002a echo alice");
        // Anything else goes to the manager, as before.
        assert!(answer_local(br#"{"local":"session","x":1}"#).is_none());
        assert!(answer_local(br#"{"op":"list"}"#).is_none());
        for bad in [
            PoolSession {
                session: "2a".into(),
                ..s.clone()
            },
            PoolSession {
                alternate_id: "two words".into(),
                ..s.clone()
            },
            PoolSession {
                program: String::new(),
                ..s.clone()
            },
        ] {
            assert!(set(Some(bad)).is_err());
        }
        assert_eq!(current(), Some(s), "a refused session changes nothing");
        set(None).unwrap();
        // No session: still an answer (a null `ok` would read as none).
        let line = crate::proto::encode_line(&answer_local(QUERY.as_bytes()).unwrap());
        let a: CallAnswer = serde_json::from_slice(line.trim_ascii_end()).unwrap();
        assert!(a.into_result().unwrap()["session"].is_null());
    }
}
