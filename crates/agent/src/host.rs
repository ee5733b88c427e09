//! Host-side client of bulkhead-agent, over the unix socket QEMU serves the
//! agent's virtio-serial port on.
//!
//! One background task reads replies and hands each to the request waiting
//! for its id, so every method takes `&self` and requests may run concurrently.
//! The same task receives the agent's upward calls (`bulkhead-guest` grant
//! requests) and hands them, bounded and without ever waiting, to whoever took
//! [`AgentClient::take_calls`]; see [`GuestCall`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::oneshot;

use crate::proto::{
    self, call_kind, AgentLine, CallAnswer, Frame, LineDecoder, Request, RequestBody, Response,
    WireError, MAX_CALLS_IN_FLIGHT, MAX_LINE, PROTOCOL_VERSION,
};
pub use crate::proto::{ExecOutput, GuestInfo, PowerAction, ReadyInfo, RegionInfo, RegionUnmapped};

/// Slack added to an exec's own timeout before the host gives up on the
/// reply (the guest enforces the timeout itself; TCG guests can be slow).
const EXEC_GRACE: Duration = Duration::from_secs(10);
/// Time allowed for quick requests (info, set_hostname).
const QUICK_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for a clean shutdown to be acked (stop processes, sync, remount).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// What can go wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot connect to the agent socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("agent did not answer {what} within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("agent connection closed: {0}")]
    Closed(String),
    #[error("agent protocol error: {0}")]
    Protocol(String),
    #[error("agent failed ({kind}): {message}")]
    Guest { kind: String, message: String },
}

/// Who waits for the reply with a given id.
enum Waiter {
    Once(oneshot::Sender<Response>),
    /// One of the hellos `wait_ready` sent: any of their replies will do.
    Hello(tokio::sync::mpsc::UnboundedSender<Response>),
}

#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, Waiter>,
    /// Set once the reader has stopped: why the connection is gone.
    closed: Option<String>,
}

/// Answers to calls waiting to be written. Refusals the reader makes on its
/// own are bounded (a guest that floods calls and never reads gets its extra
/// ones dropped); answers to [`GuestCall`]s are bounded by the calls in flight.
#[derive(Clone)]
struct Outbox {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
}

/// Most answer lines waiting to be written before the reader's own refusals
/// are dropped.
const MAX_QUEUED_ANSWERS: usize = 4 * MAX_CALLS_IN_FLIGHT;

impl Outbox {
    fn send(&self, call: u64, r: Result<serde_json::Value, WireError>) {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let _ = self.tx.send(proto::encode_line(&CallAnswer::new(call, r)));
    }

    fn refuse(&self, call: u64, kind: &str, message: &str) {
        if self.queued.load(Ordering::SeqCst) >= MAX_QUEUED_ANSWERS {
            tracing::warn!(
                call,
                kind,
                "agent is not reading its answers; refusal dropped"
            );
            return;
        }
        self.send(call, Err(WireError::new(kind, message)));
    }
}

/// One upward call from the guest: a `bulkhead-guest` request for the
/// manager. Answer it with [`GuestCall::reply`]; dropped unanswered, it answers
/// `internal`, so the guest never waits for nothing. Nothing in the request
/// says who is asking: the partition is the one whose client it came from.
pub struct GuestCall {
    /// The guest's request object, byte for byte (a `GuestRequest` to parse
    /// with `bulkhead_grant::request::parse_request`; untrusted).
    pub request: Vec<u8>,
    call: u64,
    answered: bool,
    outbox: Outbox,
    in_flight: Arc<AtomicUsize>,
}

impl std::fmt::Debug for GuestCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestCall")
            .field("call", &self.call)
            .field("request", &String::from_utf8_lossy(&self.request))
            .finish()
    }
}

impl GuestCall {
    /// The agent's number for this call.
    pub fn id(&self) -> u64 {
        self.call
    }

    /// Sends the answer: a `GuestReply` object, or an error whose kind is a
    /// `GrantErrorKind` name or one of [`proto::call_kind`].
    pub fn reply(mut self, result: Result<serde_json::Value, WireError>) {
        self.answered = true;
        self.outbox.send(self.call, result);
    }
}

impl Drop for GuestCall {
    fn drop(&mut self) {
        if !self.answered {
            self.outbox.send(
                self.call,
                Err(WireError::new(
                    call_kind::INTERNAL,
                    "the manager dropped the request without answering",
                )),
            );
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where the reader hands calls.
struct CallSink {
    tx: tokio::sync::mpsc::Sender<GuestCall>,
    taken: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
    outbox: Outbox,
}

impl CallSink {
    /// Never waits: the reader must keep reading replies whatever the consumer does.
    fn deliver(&self, line: AgentLine) {
        let (call, request) = match line {
            AgentLine::Call { call, request } => (call, request),
            AgentLine::BadCall { call, message } => {
                return self.outbox.refuse(call, call_kind::BAD_REQUEST, &message)
            }
            AgentLine::Response(_) => return,
        };
        if !self.taken.load(Ordering::SeqCst) {
            return self.outbox.refuse(
                call,
                call_kind::UNAVAILABLE,
                "no manager is listening to this partition's requests",
            );
        }
        if self.in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_CALLS_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return self.outbox.refuse(
                call,
                call_kind::BUSY,
                &format!("{MAX_CALLS_IN_FLIGHT} requests of this partition are in flight"),
            );
        }
        let gc = GuestCall {
            request,
            call,
            answered: false,
            outbox: self.outbox.clone(),
            in_flight: self.in_flight.clone(),
        };
        if let Err(e) = self.tx.try_send(gc) {
            let gc = match e {
                tokio::sync::mpsc::error::TrySendError::Full(gc)
                | tokio::sync::mpsc::error::TrySendError::Closed(gc) => gc,
            };
            gc.reply(Err(WireError::new(
                call_kind::UNAVAILABLE,
                "the manager is not taking this partition's requests",
            )));
        }
    }
}

/// A connection to one partition's agent.
pub struct AgentClient {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
    calls: Mutex<Option<tokio::sync::mpsc::Receiver<GuestCall>>>,
    calls_taken: Arc<AtomicBool>,
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl AgentClient {
    /// Connect to the unix socket QEMU serves the port on
    /// (`-chardev socket,id=agent0,path=P,server=on,wait=off`).
    pub async fn connect(path: &Path) -> Result<AgentClient, AgentError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| AgentError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self::from_stream(stream))
    }

    /// Wraps an already connected stream (tests, or a socket passed in).
    pub fn from_stream(stream: UnixStream) -> AgentClient {
        let (mut rd, wr) = stream.into_split();
        let writer = Arc::new(tokio::sync::Mutex::new(wr));
        let pending = Arc::new(Mutex::new(Pending::default()));
        let pending2 = pending.clone();
        let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let outbox = Outbox {
            tx: out_tx,
            queued: Arc::new(AtomicUsize::new(0)),
        };
        // Writes call answers; runs until every GuestCall and the reader are gone.
        let (w, queued) = (writer.clone(), outbox.queued.clone());
        tokio::spawn(async move {
            let mut broken = false;
            while let Some(line) = out_rx.recv().await {
                if !broken {
                    broken = w.lock().await.write_all(&line).await.is_err();
                }
                queued.fetch_sub(1, Ordering::SeqCst);
            }
        });
        let (calls_tx, calls_rx) = tokio::sync::mpsc::channel(MAX_CALLS_IN_FLIGHT);
        let calls_taken = Arc::new(AtomicBool::new(false));
        let sink = CallSink {
            tx: calls_tx,
            taken: calls_taken.clone(),
            in_flight: Arc::new(AtomicUsize::new(0)),
            outbox,
        };
        let reader = tokio::spawn(async move {
            let mut decoder = LineDecoder::new(MAX_LINE);
            let mut buf = vec![0u8; 65536];
            let reason = loop {
                let n = match rd.read(&mut buf).await {
                    Ok(0) => break "end of stream (QEMU or the guest went away)".to_string(),
                    Ok(n) => n,
                    Err(e) => break format!("read: {e}"),
                };
                for frame in decoder.push(&buf[..n]) {
                    let Frame::Line(line) = frame else {
                        tracing::warn!("agent sent an over-long line; dropped");
                        continue;
                    };
                    match proto::decode_agent_line(&line) {
                        Ok(AgentLine::Response(resp)) => {
                            let tx = pending2.lock().unwrap().waiting.remove(&resp.id);
                            match tx {
                                Some(Waiter::Once(tx)) => {
                                    let _ = tx.send(resp);
                                }
                                Some(Waiter::Hello(tx)) => {
                                    let _ = tx.send(resp);
                                }
                                // A late answer to a request that timed out
                                // (e.g. an early hello): nobody waits for it.
                                None => tracing::debug!(id = resp.id, "unclaimed agent reply"),
                            }
                        }
                        Ok(call) => sink.deliver(call),
                        Err(e) => tracing::warn!(
                            "undecodable agent reply: {e}: {}",
                            String::from_utf8_lossy(&line[..line.len().min(200)])
                        ),
                    }
                }
            };
            let mut p = pending2.lock().unwrap();
            p.closed = Some(reason);
            // Dropping the senders wakes every waiter with "closed".
            p.waiting.clear();
        });
        AgentClient {
            writer,
            pending,
            next_id: AtomicU64::new(1),
            reader,
            calls: Mutex::new(Some(calls_rx)),
            calls_taken,
        }
    }

    /// The guest's upward calls (`bulkhead-guest` requests), for the manager:
    /// Some the first time, None after. Until taken, and once the receiver is
    /// dropped or full, the client answers each call `unavailable` itself.
    pub fn take_calls(&self) -> Option<tokio::sync::mpsc::Receiver<GuestCall>> {
        let rx = self.calls.lock().unwrap().take()?;
        self.calls_taken.store(true, Ordering::SeqCst);
        Some(rx)
    }

    fn closed_error(&self) -> AgentError {
        let reason = self.pending.lock().unwrap().closed.clone();
        AgentError::Closed(reason.unwrap_or_else(|| "connection lost".into()))
    }

    /// Sends one request and waits up to `timeout` for its reply.
    async fn call(
        &self,
        body: RequestBody,
        what: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value, AgentError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.pending.lock().unwrap();
            if let Some(reason) = &p.closed {
                return Err(AgentError::Closed(reason.clone()));
            }
            p.waiting.insert(id, Waiter::Once(tx));
        }
        let line = proto::encode_line(&Request { id, body });
        let write = async {
            let mut w = self.writer.lock().await;
            w.write_all(&line).await
        };
        if let Err(e) = write.await {
            self.pending.lock().unwrap().waiting.remove(&id);
            return Err(AgentError::Closed(format!("write: {e}")));
        }
        let resp = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(_)) => return Err(self.closed_error()),
            Err(_) => {
                self.pending.lock().unwrap().waiting.remove(&id);
                return Err(AgentError::Timeout {
                    what: what.to_string(),
                    timeout,
                });
            }
        };
        match (resp.ok, resp.err) {
            (_, Some(err)) => Err(AgentError::Guest {
                kind: err.kind,
                message: err.message,
            }),
            (Some(v), None) => Ok(v),
            (None, None) => Err(AgentError::Protocol(format!(
                "reply {id} to {what} has neither \"ok\" nor \"err\""
            ))),
        }
    }

    fn decode<T: DeserializeOwned>(v: serde_json::Value, what: &str) -> Result<T, AgentError> {
        serde_json::from_value(v)
            .map_err(|e| AgentError::Protocol(format!("bad reply to {what}: {e}")))
    }

    /// Handshake: re-sends hello (the guest drops bytes until the agent opens
    /// the port) every 100 ms until the agent answers any of them or the
    /// timeout passes. A constant, short interval: ready is seen at most one
    /// interval after the agent opens its port.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<ReadyInfo, AgentError> {
        const EVERY: Duration = Duration::from_millis(100);
        let deadline = tokio::time::Instant::now() + timeout;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut sent: Vec<u64> = Vec::new();
        let forget = |sent: &[u64]| {
            let mut p = self.pending.lock().unwrap();
            for id in sent {
                p.waiting.remove(id);
            }
        };
        let resp = loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                forget(&sent);
                return Err(AgentError::Timeout {
                    what: "hello".into(),
                    timeout,
                });
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            {
                let mut p = self.pending.lock().unwrap();
                if let Some(reason) = &p.closed {
                    let e = AgentError::Closed(reason.clone());
                    drop(p);
                    forget(&sent);
                    return Err(e);
                }
                p.waiting.insert(id, Waiter::Hello(tx.clone()));
            }
            sent.push(id);
            let body = RequestBody::Hello {
                min_version: PROTOCOL_VERSION,
                max_version: PROTOCOL_VERSION,
            };
            let line = proto::encode_line(&Request { id, body });
            if let Err(e) = self.writer.lock().await.write_all(&line).await {
                forget(&sent);
                return Err(AgentError::Closed(format!("write: {e}")));
            }
            let wait = EVERY.min(deadline.saturating_duration_since(now));
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(resp)) => break resp,
                // Every sender is gone: the reader stopped.
                Ok(None) => {
                    forget(&sent);
                    return Err(self.closed_error());
                }
                Err(_) => {}
            }
        };
        forget(&sent);
        if let Some(err) = resp.err {
            return Err(AgentError::Guest {
                kind: err.kind,
                message: err.message,
            });
        }
        let v = resp.ok.ok_or_else(|| {
            AgentError::Protocol("reply to hello has neither \"ok\" nor \"err\"".into())
        })?;
        let info: ReadyInfo = Self::decode(v, "hello")?;
        if info.protocol_version != PROTOCOL_VERSION {
            return Err(AgentError::Protocol(format!(
                "agent chose protocol {}, expected {PROTOCOL_VERSION}",
                info.protocol_version
            )));
        }
        Ok(info)
    }

    /// Runs `argv` in the guest; the guest kills it after `timeout`
    /// ([`AgentError::Timeout`]).
    pub async fn exec(
        &self,
        argv: &[String],
        stdin: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<ExecOutput, AgentError> {
        let what = format!("exec {:?}", argv.first().map(String::as_str).unwrap_or(""));
        let body = RequestBody::Exec {
            argv: argv.to_vec(),
            stdin,
            timeout_ms: timeout.as_millis().min(u64::MAX as u128) as u64,
        };
        match self.call(body, &what, timeout + EXEC_GRACE).await {
            Ok(v) => Self::decode(v, &what),
            Err(AgentError::Guest { kind, .. }) if kind == "timeout" => {
                Err(AgentError::Timeout { what, timeout })
            }
            Err(e) => Err(e),
        }
    }

    /// Memory, uptime, load, CPUs and host name of the guest.
    pub async fn info(&self) -> Result<GuestInfo, AgentError> {
        let v = self.call(RequestBody::Info, "info", QUICK_TIMEOUT).await?;
        Self::decode(v, "info")
    }

    pub async fn set_hostname(&self, name: &str) -> Result<(), AgentError> {
        let body = RequestBody::SetHostname { name: name.into() };
        self.call(body, "set_hostname", QUICK_TIMEOUT).await?;
        Ok(())
    }

    /// Starts the image's L2TP resource server with `profile` (TOML) and
    /// returns once it listens on UDP `listen` (at most `wait`).
    pub async fn l2tp_server(
        &self,
        profile: &str,
        listen: std::net::SocketAddr,
        wait: Duration,
    ) -> Result<crate::proto::ServiceStarted, AgentError> {
        let body = RequestBody::L2tpServer {
            profile: profile.into(),
            listen,
            wait_ms: wait.as_millis().min(u64::MAX as u128) as u64,
        };
        let v = self.call(body, "l2tp_server", wait + QUICK_TIMEOUT).await?;
        Self::decode(v, "l2tp_server")
    }

    /// Tells the agent the pool session the partition now serves (None:
    /// the session ended); `bulkhead-guest session` prints it.
    pub async fn set_session(
        &self,
        session: Option<crate::proto::PoolSession>,
    ) -> Result<(), AgentError> {
        let body = RequestBody::SetSession { session };
        self.call(body, "set_session", QUICK_TIMEOUT).await?;
        Ok(())
    }

    /// Gives a restored clone its own identity (host name, clock, NICs).
    pub async fn reidentify(&self, r: crate::proto::Reidentity) -> Result<(), AgentError> {
        self.call(RequestBody::Reidentify(r), "reidentify", QUICK_TIMEOUT)
            .await?;
        Ok(())
    }

    /// The shared-memory regions the guest sees.
    pub async fn region_list(&self) -> Result<Vec<RegionInfo>, AgentError> {
        let v = self
            .call(RequestBody::RegionList, "region_list", QUICK_TIMEOUT)
            .await?;
        Self::decode(v, "region_list")
    }

    /// Has the guest enable region `name` (the port address the engine
    /// reported at plug), waiting up to `wait` for the hot-plug to reach it;
    /// returns once programs can map it.
    pub async fn region_map(&self, name: &str, wait: Duration) -> Result<RegionInfo, AgentError> {
        let body = RequestBody::RegionMap {
            name: name.into(),
            wait_ms: wait.as_millis().min(u64::MAX as u128) as u64,
        };
        let v = self.call(body, "region_map", wait + QUICK_TIMEOUT).await?;
        Self::decode(v, "region_map")
    }

    /// Has the guest cut its mappings of region `name` off; reports which
    /// guest processes still held it.
    pub async fn region_unmap(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<RegionUnmapped, AgentError> {
        let body = RequestBody::RegionUnmap { name: name.into() };
        let v = self.call(body, "region_unmap", timeout).await?;
        Self::decode(v, "region_unmap")
    }

    /// Clean shutdown; returns once the agent acked (disks synced). The guest
    /// powers off (or reboots) right after.
    pub async fn shutdown(&self, action: PowerAction) -> Result<(), AgentError> {
        self.call(
            RequestBody::Shutdown { action },
            "shutdown",
            SHUTDOWN_TIMEOUT,
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    /// A scripted fake agent on the other end of a socketpair: answers each
    /// request line with whatever `answer` returns (None = stay silent).
    fn fake_agent(
        answer: impl Fn(Request) -> Option<String> + Send + 'static,
    ) -> (AgentClient, tokio::task::JoinHandle<()>) {
        let (a, b) = UnixStream::pair().unwrap();
        let task = tokio::spawn(async move {
            let (rd, mut wr) = b.into_split();
            let mut lines = BufReader::new(rd).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let req = proto::decode_request(line.as_bytes()).unwrap();
                if let Some(mut out) = answer(req) {
                    out.push('\n');
                    wr.write_all(out.as_bytes()).await.unwrap();
                }
            }
        });
        (AgentClient::from_stream(a), task)
    }

    fn ready(id: u64) -> String {
        let info = ReadyInfo {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "t".into(),
            boot_ms: 1234,
            hostname: "h".into(),
            ncpus: 2,
            kernel_release: "6.1".into(),
            root_lu: false,
        };
        String::from_utf8(proto::encode_line(&Response::ok(id, &info)))
            .unwrap()
            .trim_end()
            .into()
    }

    #[tokio::test]
    async fn wait_ready_resends_hello_until_answered() {
        // Drops the first two hellos, as a guest that has not opened the port yet.
        let seen = Arc::new(AtomicU64::new(0));
        let s = seen.clone();
        let (c, _t) = fake_agent(move |req| {
            let n = s.fetch_add(1, Ordering::SeqCst);
            (n >= 2).then(|| ready(req.id))
        });
        let info = c.wait_ready(Duration::from_secs(20)).await.unwrap();
        assert_eq!(info.boot_ms, 1234);
        assert_eq!(info.ncpus, 2);
        assert!(seen.load(Ordering::SeqCst) >= 3);
    }

    #[tokio::test]
    async fn wait_ready_takes_a_late_answer_to_an_earlier_hello() {
        // Answers only the first hello, 350 ms late (after several re-sends).
        let (a, b) = UnixStream::pair().unwrap();
        let _agent = tokio::spawn(async move {
            let (rd, mut wr) = b.into_split();
            let mut lines = BufReader::new(rd).lines();
            let first = lines.next_line().await.unwrap().unwrap();
            let id = proto::decode_request(first.as_bytes()).unwrap().id;
            tokio::time::sleep(Duration::from_millis(350)).await;
            wr.write_all(format!("{}\n", ready(id)).as_bytes())
                .await
                .unwrap();
            while let Ok(Some(_)) = lines.next_line().await {}
        });
        let c = AgentClient::from_stream(a);
        let info = c.wait_ready(Duration::from_secs(10)).await.unwrap();
        assert_eq!(info.boot_ms, 1234);
        // Nothing is left registered for the hellos.
        assert!(c.pending.lock().unwrap().waiting.is_empty());
    }

    #[tokio::test]
    async fn wait_ready_times_out() {
        let (c, _t) = fake_agent(|_| None);
        let e = c.wait_ready(Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(e, AgentError::Timeout { .. }), "{e}");
    }

    #[tokio::test]
    async fn concurrent_requests_are_demultiplexed() {
        // Answers exec requests with their argv[0] as stdout.
        let (c, _t) = fake_agent(|req| match req.body {
            RequestBody::Exec { argv, .. } => {
                let out = ExecOutput {
                    code: argv[0].len() as i32,
                    stdout: argv[0].as_bytes().to_vec(),
                    stderr: vec![],
                };
                Some(
                    String::from_utf8(proto::encode_line(&Response::ok(req.id, &out)))
                        .unwrap()
                        .trim_end()
                        .into(),
                )
            }
            _ => None,
        });
        let c = Arc::new(c);
        let mut tasks = Vec::new();
        for i in 0..20 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let word = "x".repeat(i + 1);
                let out = c
                    .exec(std::slice::from_ref(&word), None, Duration::from_secs(5))
                    .await
                    .unwrap();
                assert_eq!(out.stdout, word.as_bytes());
                assert_eq!(out.code, (i + 1) as i32);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    #[tokio::test]
    async fn errors_are_distinguished() {
        let (c, t) = fake_agent(|req| match req.body {
            RequestBody::SetHostname { .. } => Some(format!(
                "{{\"id\":{},\"err\":{{\"kind\":\"bad_request\",\"message\":\"no\"}}}}",
                req.id
            )),
            RequestBody::Info => Some(format!("{{\"id\":{},\"ok\":{{\"x\":1}}}}", req.id)),
            RequestBody::Exec { .. } => Some(format!(
                "{{\"id\":{},\"err\":{{\"kind\":\"timeout\",\"message\":\"killed\"}}}}",
                req.id
            )),
            _ => Some(format!("{{\"id\":{}}}", req.id)),
        });
        match c.set_hostname("x").await {
            Err(AgentError::Guest { kind, message }) => {
                assert_eq!(kind, "bad_request");
                assert_eq!(message, "no");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(c.info().await, Err(AgentError::Protocol(_))));
        assert!(matches!(
            c.exec(&["sleep".into()], None, Duration::from_millis(10))
                .await,
            Err(AgentError::Timeout { .. })
        ));
        assert!(matches!(
            c.shutdown(PowerAction::Poweroff).await,
            Err(AgentError::Protocol(_))
        ));
        t.abort();
        let _ = t.await;
        // The fake agent's socket is gone now: requests fail as closed.
        let e = c.info().await.unwrap_err();
        assert!(matches!(e, AgentError::Closed(_)), "{e}");
    }

    /// The guest end of a socketpair that sends raw lines and collects the
    /// call answers it gets.
    struct FakeGuest {
        wr: tokio::net::unix::OwnedWriteHalf,
        lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    }

    impl FakeGuest {
        fn new() -> (AgentClient, FakeGuest) {
            let (a, b) = UnixStream::pair().unwrap();
            let (rd, wr) = b.into_split();
            let g = FakeGuest {
                wr,
                lines: BufReader::new(rd).lines(),
            };
            (AgentClient::from_stream(a), g)
        }

        async fn send(&mut self, line: &str) {
            self.wr
                .write_all(format!("{line}\n").as_bytes())
                .await
                .unwrap();
        }

        async fn answer(&mut self) -> CallAnswer {
            let line = tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
                .await
                .expect("an answer in time")
                .unwrap()
                .unwrap();
            serde_json::from_str(&line).unwrap()
        }
    }

    fn err_kind(a: CallAnswer) -> String {
        a.into_result().unwrap_err().kind
    }

    #[tokio::test]
    async fn calls_reach_the_taker_byte_for_byte_and_are_answered() {
        let (c, mut g) = FakeGuest::new();
        let mut rx = c.take_calls().unwrap();
        assert!(c.take_calls().is_none());
        // Odd spacing on purpose: the manager sees the guest's own bytes.
        g.send(r#"{"call":7,"request":{"op" : "list"}}"#).await;
        let call = rx.recv().await.unwrap();
        assert_eq!(call.request, br#"{"op" : "list"}"#);
        assert_eq!(call.id(), 7);
        call.reply(Ok(
            serde_json::json!({"reply":"list","owned":[],"grants":[]}),
        ));
        let a = g.answer().await;
        assert_eq!(a.call, 7);
        assert_eq!(a.into_result().unwrap()["reply"], "list");
        // A refusal travels as err with its kind.
        g.send(r#"{"call":8,"request":{"op":"accept","cookie":"x"}}"#)
            .await;
        rx.recv()
            .await
            .unwrap()
            .reply(Err(WireError::new("unknown_cookie", "no")));
        let a = g.answer().await;
        assert_eq!((a.call, err_kind(a)), (8, "unknown_cookie".to_string()));
        // Dropped without a reply: internal.
        g.send(r#"{"call":9,"request":{}}"#).await;
        drop(rx.recv().await.unwrap());
        assert_eq!(err_kind(g.answer().await), call_kind::INTERNAL);
        // Host requests still work alongside.
        drop(rx);
        g.send(r#"{"call":10,"request":{}}"#).await;
        assert_eq!(err_kind(g.answer().await), call_kind::UNAVAILABLE);
    }

    #[tokio::test]
    async fn calls_nobody_takes_are_unavailable_and_bad_ones_refused() {
        let (c, mut g) = FakeGuest::new();
        g.send(r#"{"call":1,"request":{"op":"list"}}"#).await;
        let a = g.answer().await;
        assert_eq!(
            (a.call, err_kind(a)),
            (1, call_kind::UNAVAILABLE.to_string())
        );
        let _rx = c.take_calls().unwrap();
        for (n, bad) in [
            (2, r#"{"call":2,"request":[1,2]}"#.to_string()),
            (3, r#"{"call":3,"request":{},"extra":1}"#.to_string()),
            (
                4,
                format!(
                    r#"{{"call":4,"request":{{"x":"{}"}}}}"#,
                    "a".repeat(proto::MAX_REQUEST_BYTES)
                ),
            ),
        ] {
            g.send(&bad).await;
            let a = g.answer().await;
            assert_eq!(
                (a.call, err_kind(a)),
                (n, call_kind::BAD_REQUEST.to_string())
            );
        }
    }

    #[tokio::test]
    async fn calls_in_flight_are_bounded_and_a_full_receiver_never_blocks_the_reader() {
        let (a, b) = UnixStream::pair().unwrap();
        let c = AgentClient::from_stream(a);
        let mut rx = c.take_calls().unwrap();
        let (rd, mut wr) = b.into_split();
        let mut lines = BufReader::new(rd).lines();
        // Nobody receives: the first 16 wait in the channel, the rest are busy.
        for n in 0..(MAX_CALLS_IN_FLIGHT as u64 + 3) {
            wr.write_all(format!("{{\"call\":{n},\"request\":{{}}}}\n").as_bytes())
                .await
                .unwrap();
        }
        for _ in 0..3 {
            let line = lines.next_line().await.unwrap().unwrap();
            let a: CallAnswer = serde_json::from_str(&line).unwrap();
            assert!(a.call >= MAX_CALLS_IN_FLIGHT as u64, "{line}");
            assert_eq!(err_kind(a), call_kind::BUSY);
        }
        // The reader still serves replies to host requests meanwhile.
        let info = GuestInfo {
            mem_total_kib: 1,
            mem_free_kib: 1,
            mem_available_kib: 1,
            uptime_ms: 1,
            load: [0.0; 3],
            ncpus: 1,
            hostname: "h".into(),
        };
        let q = tokio::spawn(async move { c.info().await.map(|_| c) });
        let line = lines.next_line().await.unwrap().unwrap();
        let id = proto::decode_request(line.as_bytes()).unwrap().id;
        wr.write_all(&proto::encode_line(&Response::ok(id, &info)))
            .await
            .unwrap();
        let _c = q.await.unwrap().unwrap();
        let first = rx.recv().await.unwrap();
        assert_eq!(first.id(), 0);
    }

    #[tokio::test]
    async fn connect_failure_names_the_path() {
        let e = AgentClient::connect(Path::new("/nonexistent/agent.sock"))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, AgentError::Connect { .. }));
        assert!(e.to_string().contains("/nonexistent/agent.sock"));
    }
}
