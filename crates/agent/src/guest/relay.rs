//! The guest end of upward calls: `bulkhead-guest` connects to a unix socket
//! only root can reach, sends one request object on one line, and gets one
//! [`CallAnswer`] line back. The agent relays the request to the host over
//! its port as a [`Call`] and hands back the host's answer, or its own
//! `busy`/`unavailable`/`timeout`/`bad_request` error.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use crate::proto::{
    self, call_kind, Call, CallAnswer, WireError, MAX_CALLS_IN_FLIGHT, MAX_REQUEST_BYTES,
};

/// Directory of the socket: root only (0700), so no other user reaches it.
pub const RUN_DIR: &str = "/run/bulkhead";
/// The socket `bulkhead-guest` talks to.
pub const SOCKET: &str = "/run/bulkhead/agent.sock";
/// How long a call may wait for the host. Accept includes a hot-plug and the
/// guest mapping it, which under TCG on a loaded host takes many seconds.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

type Result<T> = std::result::Result<T, WireError>;

struct State {
    waiting: HashMap<u64, mpsc::SyncSender<Result<serde_json::Value>>>,
    next: u64,
    host_up: bool,
}

/// Calls in flight; shared by the socket's connection threads and the serve
/// loop (which delivers answers and tells it when the host comes and goes).
pub struct Relay {
    state: Mutex<State>,
    /// Queues one line for the host (the serve loop writes it).
    send: Box<dyn Fn(Vec<u8>) + Send + Sync>,
    timeout: Duration,
}

impl Relay {
    pub fn new(send: impl Fn(Vec<u8>) + Send + Sync + 'static, timeout: Duration) -> Relay {
        Relay {
            state: Mutex::new(State {
                waiting: HashMap::new(),
                next: 1,
                host_up: false,
            }),
            send: Box::new(send),
            timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Relays one request and waits (bounded) for the host's answer.
    pub fn call(&self, request: &[u8]) -> Result<serde_json::Value> {
        let raw = proto::check_call_request(request)?;
        let (tx, rx) = mpsc::sync_channel(1);
        let call = {
            let mut st = self.lock();
            if !st.host_up {
                return Err(WireError::new(
                    call_kind::UNAVAILABLE,
                    "the host is not connected to the agent",
                ));
            }
            if st.waiting.len() >= MAX_CALLS_IN_FLIGHT {
                return Err(WireError::new(
                    call_kind::BUSY,
                    format!("{MAX_CALLS_IN_FLIGHT} calls are in flight already"),
                ));
            }
            let call = st.next;
            st.next += 1;
            st.waiting.insert(call, tx);
            call
        };
        (self.send)(proto::encode_line(&Call { call, request: raw }));
        match rx.recv_timeout(self.timeout) {
            Ok(r) => r,
            Err(_) => {
                self.lock().waiting.remove(&call);
                Err(WireError::new(
                    call_kind::TIMEOUT,
                    format!("no answer from the host within {:?}", self.timeout),
                ))
            }
        }
    }

    /// The host answered a call (one that timed out is only logged).
    pub fn answer(&self, a: CallAnswer) {
        let call = a.call;
        match self.lock().waiting.remove(&call) {
            Some(tx) => {
                let _ = tx.try_send(a.into_result());
            }
            None => super::log(format_args!("answer to unknown or expired call {call}")),
        }
    }

    /// The host connection came or went; calls waiting on a host that went
    /// away fail now rather than at their timeout.
    pub fn set_host_up(&self, up: bool) {
        let mut st = self.lock();
        if st.host_up && !up {
            for (_, tx) in st.waiting.drain() {
                let _ = tx.try_send(Err(WireError::new(
                    call_kind::UNAVAILABLE,
                    "the host went away",
                )));
            }
        }
        st.host_up = up;
    }
}

/// Creates the socket (root only) and serves it on a thread.
pub fn listen(relay: Arc<Relay>, dir: &Path, socket: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    std::thread::spawn(move || serve(relay, listener));
    Ok(())
}

fn serve(relay: Arc<Relay>, listener: UnixListener) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                super::log(format_args!("{SOCKET}: accept: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        // One thread per connection, bounded: the relay bounds calls too, but
        // a client that never sends must not hold threads without limit.
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CALLS_IN_FLIGHT {
            active.fetch_sub(1, Ordering::SeqCst);
            let e = WireError::new(call_kind::BUSY, "too many bulkhead-guest connections");
            let _ = conn.write_all(&proto::encode_line(&CallAnswer::new(0, Err(e))));
            continue;
        }
        let (relay, active) = (relay.clone(), active.clone());
        std::thread::spawn(move || {
            handle(&relay, conn);
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

fn handle(relay: &Relay, mut conn: UnixStream) {
    let _ = conn.set_read_timeout(Some(READ_TIMEOUT));
    let answer = match read_request(&mut conn) {
        // `bulkhead-guest session` is answered here, from the agent's memory.
        Ok(req) => match super::session::answer_local(&req) {
            Some(local) => local,
            None => CallAnswer::new(0, relay.call(&req)),
        },
        Err(e) => CallAnswer::new(0, Err(e)),
    };
    let _ = conn.write_all(&proto::encode_line(&answer));
}

/// Reads one request: up to the first newline, or to end of stream.
pub fn read_request(r: &mut impl Read) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = r.read(&mut chunk).map_err(|e| {
            WireError::new(call_kind::BAD_REQUEST, format!("reading the request: {e}"))
        })?;
        let part = &chunk[..n];
        let nl = part.iter().position(|&b| b == b'\n');
        buf.extend_from_slice(&part[..nl.unwrap_or(n)]);
        if buf.len() > MAX_REQUEST_BYTES {
            return Err(WireError::new(
                call_kind::BAD_REQUEST,
                format!("request longer than {MAX_REQUEST_BYTES} bytes"),
            ));
        }
        if n == 0 || nl.is_some() {
            return Ok(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(timeout: Duration) -> (Arc<Relay>, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let r = Relay::new(move |l| tx.lock().unwrap().send(l).unwrap(), timeout);
        (Arc::new(r), rx)
    }

    fn sent_call(line: &[u8]) -> (u64, String) {
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        (
            v["call"].as_u64().unwrap(),
            serde_json::to_string(&v["request"]).unwrap(),
        )
    }

    #[test]
    fn a_call_is_relayed_byte_for_byte_and_answered() {
        let (r, lines) = relay(Duration::from_secs(30));
        r.set_host_up(true);
        let r2 = r.clone();
        let req = br#"{"op":"list"}"#;
        let t = std::thread::spawn(move || r2.call(req));
        let line = lines.recv().unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.starts_with(r#"{"call":"#), "{text}");
        assert!(
            text.ends_with(",\"request\":{\"op\":\"list\"}}\n"),
            "{text}"
        );
        let (call, _) = sent_call(&line);
        r.answer(CallAnswer::new(
            call,
            Ok(serde_json::json!({"reply":"list"})),
        ));
        assert_eq!(t.join().unwrap().unwrap()["reply"], "list");
    }

    #[test]
    fn refusals_before_relaying() {
        let (r, lines) = relay(Duration::from_secs(30));
        let e = r.call(br#"{"op":"list"}"#).unwrap_err();
        assert_eq!(e.kind, call_kind::UNAVAILABLE);
        r.set_host_up(true);
        for bad in [&b"[1]"[..], b"nope", b"", b"{\"op\":"] {
            assert_eq!(r.call(bad).unwrap_err().kind, call_kind::BAD_REQUEST);
        }
        let big = format!("{{\"x\":\"{}\"}}", "a".repeat(MAX_REQUEST_BYTES));
        assert_eq!(
            r.call(big.as_bytes()).unwrap_err().kind,
            call_kind::BAD_REQUEST
        );
        assert!(lines.try_recv().is_err(), "nothing may be relayed");
    }

    #[test]
    fn calls_are_bounded_and_time_out() {
        let (r, lines) = relay(Duration::from_millis(300));
        r.set_host_up(true);
        let mut ts = Vec::new();
        for _ in 0..MAX_CALLS_IN_FLIGHT {
            let r = r.clone();
            ts.push(std::thread::spawn(move || r.call(b"{}")));
        }
        // Every slot is taken once 16 lines went out.
        for _ in 0..MAX_CALLS_IN_FLIGHT {
            lines.recv().unwrap();
        }
        assert_eq!(r.call(b"{}").unwrap_err().kind, call_kind::BUSY);
        for t in ts {
            assert_eq!(t.join().unwrap().unwrap_err().kind, call_kind::TIMEOUT);
        }
        // Slots are free again; a late answer is dropped.
        r.answer(CallAnswer::new(1, Ok(serde_json::json!({}))));
        let r2 = r.clone();
        let t = std::thread::spawn(move || r2.call(b"{}"));
        lines.recv().unwrap();
        assert_eq!(t.join().unwrap().unwrap_err().kind, call_kind::TIMEOUT);
    }

    #[test]
    fn host_leaving_fails_waiting_calls() {
        let (r, lines) = relay(Duration::from_secs(60));
        r.set_host_up(true);
        let r2 = r.clone();
        let t = std::thread::spawn(move || r2.call(b"{}"));
        lines.recv().unwrap();
        r.set_host_up(false);
        assert_eq!(t.join().unwrap().unwrap_err().kind, call_kind::UNAVAILABLE);
    }

    #[test]
    fn requests_are_read_to_the_newline_and_bounded() {
        let mut one: &[u8] = b"{\"op\":\"list\"}\ntrailing";
        assert_eq!(read_request(&mut one).unwrap(), br#"{"op":"list"}"#);
        let mut eof: &[u8] = b"{}";
        assert_eq!(read_request(&mut eof).unwrap(), b"{}");
        let long = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert_eq!(
            read_request(&mut long.as_slice()).unwrap_err().kind,
            call_kind::BAD_REQUEST
        );
    }

    #[test]
    fn the_socket_is_root_only_and_answers() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("run");
        let sock = dir.join("agent.sock");
        let (r, lines) = relay(Duration::from_secs(30));
        r.set_host_up(true);
        listen(r.clone(), &dir, &sock).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);
        let r2 = r.clone();
        std::thread::spawn(move || {
            let (call, _) = sent_call(&lines.recv().unwrap());
            r2.answer(CallAnswer::new(
                call,
                Err(WireError::new("unknown_cookie", "no such cookie")),
            ));
        });
        let mut c = UnixStream::connect(&sock).unwrap();
        c.write_all(b"{\"op\":\"list\"}\n").unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        let a: CallAnswer = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(a.into_result().unwrap_err().kind, "unknown_cookie");
    }
}
