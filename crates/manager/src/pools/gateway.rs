//! The pool gateway (docs/pool-protocol.md): one TCP port of bulkheadd where
//! users ALLOCATE a partition running a program, converse with it in DATA
//! frames and DEALLOCATE. Each connection runs the protocol's server state
//! machine (`bulkhead_pool_proto::Connection`); ALLOCATE is authenticated
//! against the pool users in the store, then answered by the allocator (now
//! or, queued, later); the program is reached over the internal VLAN and gets
//! the session line first. Bytes are relayed both ways until DEALLOCATE.

use super::driver::carry_out;
use crate::manager::Manager;
use bulkhead_pool::{Allocation, Request, RequestId};
use bulkhead_pool_proto::{
    Allocate, Connection, ErrorCode, Frame, RefuseReason, SessionId, SessionLine, MAX_DATA_LEN,
};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

/// How long reaching a partition's program may take.
const PROGRAM_CONNECT: Duration = Duration::from_secs(5);
/// After DEALLOCATE, how long the program may take to finish its answer and
/// close (its output is relayed meanwhile) before its cleanup runs anyway;
/// and after the cleanup, how long its last output may take to arrive.
const DRAIN: Duration = Duration::from_secs(10);

type Answer = Result<Allocation, RefuseReason>;
/// How a session ended: `None` confirmed, else the ERROR code.
type End = Option<ErrorCode>;

/// Where the allocator's answers reach the connections waiting for them.
#[derive(Default)]
pub(crate) struct Waiting {
    pub(super) answers: Mutex<HashMap<RequestId, oneshot::Sender<Answer>>>,
    sessions: Mutex<HashMap<SessionId, EndSlot>>,
}

enum EndSlot {
    Waiting(oneshot::Sender<End>),
    /// Ended before its connection listened (kept until it does).
    Ended(End),
}

impl Waiting {
    pub(crate) fn answer(&self, id: RequestId, a: Answer) {
        if let Some(tx) = self.answers.lock().unwrap().remove(&id) {
            let _ = tx.send(a);
        }
    }

    pub(crate) fn end(&self, s: SessionId, e: End) {
        let mut map = self.sessions.lock().unwrap();
        match map.remove(&s) {
            Some(EndSlot::Waiting(tx)) => {
                let _ = tx.send(e);
            }
            _ => {
                map.insert(s, EndSlot::Ended(e));
            }
        }
    }

    pub(super) fn listen(&self, s: SessionId) -> oneshot::Receiver<End> {
        let (tx, rx) = oneshot::channel();
        let mut map = self.sessions.lock().unwrap();
        match map.remove(&s) {
            Some(EndSlot::Ended(e)) => {
                let _ = tx.send(e);
            }
            _ => {
                map.insert(s, EndSlot::Waiting(tx));
            }
        }
        rx
    }
}

/// Serves the gateway on `l` (over TLS when `tls` is given) until the task
/// is dropped.
pub async fn serve(m: Arc<Manager>, l: TcpListener, tls: Option<TlsAcceptor>) {
    loop {
        match l.accept().await {
            Ok((s, peer)) => {
                let _ = s.set_nodelay(true);
                let (m, tls) = (m.clone(), tls.clone());
                tokio::spawn(async move {
                    tracing::debug!(%peer, "gateway connection");
                    if let Some(io) = super::tls::accept(s, tls.as_ref(), &m.pools.metrics).await {
                        conversation(m, io).await;
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "gateway accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The client's side of one connection: its reader, its writer and the
/// protocol state both share.
struct Peer {
    rd: Box<dyn AsyncRead + Send + Unpin>,
    wr: Box<dyn AsyncWrite + Send + Unpin>,
    conn: Connection,
    frames: VecDeque<Frame>,
    buf: Vec<u8>,
    metrics: super::metrics::PoolMetrics,
}

/// What the client's socket gave.
enum Input {
    Frames,
    /// Closed, failed, or broke the protocol (its refusal is sent).
    Gone,
}

impl Peer {
    async fn flush(&mut self) -> bool {
        let out = self.conn.take_transmit();
        out.is_empty() || self.wr.write_all(&out).await.is_ok()
    }

    async fn send(&mut self, f: Frame) -> bool {
        self.conn.send(&f).is_ok() && self.flush().await
    }

    /// Sends REFUSED, counted in the metrics.
    async fn refuse(&mut self, reason: RefuseReason, message: &str) -> bool {
        self.metrics.refused(reason);
        self.send(Frame::Refused {
            reason,
            message: message.into(),
        })
        .await
    }

    /// Feeds bytes read from the client to the state machine.
    async fn take(&mut self, n: std::io::Result<usize>) -> Input {
        let n = match n {
            Ok(0) | Err(_) => return Input::Gone,
            Ok(n) => n,
        };
        let mut input = &self.buf[..n];
        loop {
            match self.conn.recv(&mut input) {
                Ok(Some(f)) => self.frames.push_back(f),
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "gateway client broke the protocol");
                    if let Some(r) = e.refusal() {
                        self.metrics.refused(r);
                    }
                    self.flush().await;
                    return Input::Gone;
                }
            }
        }
        // The state machine answers HELLO itself.
        if self.flush().await {
            Input::Frames
        } else {
            Input::Gone
        }
    }

    /// The next frame, reading as needed; None once the client is gone.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.frames.pop_front() {
                return Some(f);
            }
            let n = self.rd.read(&mut self.buf).await;
            if let Input::Gone = self.take(n).await {
                return None;
            }
        }
    }
}

async fn conversation(m: Arc<Manager>, (rd, wr): super::tls::Halves) {
    let mut p = Peer {
        rd,
        wr,
        conn: Connection::server(),
        frames: VecDeque::new(),
        buf: vec![0; 64 * 1024],
        metrics: m.pools.metrics.clone(),
    };
    // Out of place frames are the state machine's to refuse; only ALLOCATE
    // reaches here in the ready state.
    while let Some(f) = p.next().await {
        if let Frame::Allocate(a) = f {
            if !session(&m, &mut p, a).await {
                return;
            }
        }
    }
}

/// Queues `req` with the allocator; its answer comes on the receiver.
pub(super) fn enqueue(m: &Arc<Manager>, req: Request) -> (RequestId, oneshot::Receiver<Answer>) {
    let (tx, rx) = oneshot::channel();
    let (id, actions) = {
        let mut alloc = m.pools.alloc.lock().unwrap();
        let (id, actions) = alloc.request(req, Instant::now());
        m.pools.waiting.answers.lock().unwrap().insert(id, tx);
        (id, actions)
    };
    carry_out(m, actions);
    (id, rx)
}

/// A waiting request's deadline passed: refuses every request whose time
/// has come (that one among them); returns when to look again, since the
/// allocator's clock may not have it due yet (no spin on an elapsed timer).
pub(super) fn tick(m: &Arc<Manager>) -> tokio::time::Instant {
    let actions = m.pools.alloc.lock().unwrap().tick(Instant::now());
    carry_out(m, actions);
    tokio::time::Instant::now() + Duration::from_millis(20)
}

/// One ALLOCATE to its end; false when the connection is over.
async fn session(m: &Arc<Manager>, p: &mut Peer, a: Allocate) -> bool {
    let received = Instant::now();
    let user = match m.pool_user_table(&a.user).await {
        Ok(users) => match users.authorize(&a.user, &a.credential, &a.program) {
            Ok(u) => u.clone(),
            Err(r) => return p.refuse(r, r.as_str()).await,
        },
        Err(e) => {
            tracing::warn!(error = %e, "gateway reading pool users");
            p.refuse(RefuseReason::Internal, "the gateway failed").await;
            return false;
        }
    };
    let wait = Duration::from_millis(a.wait_ms.into());
    let (id, mut rx) = enqueue(
        m,
        Request {
            program: a.program.clone(),
            user: user.name.clone(),
            max_sessions: user.max_sessions,
            wait,
        },
    );
    let mut deadline = tokio::time::Instant::now() + wait;
    let answer = loop {
        tokio::select! {
            r = &mut rx => break r.ok(),
            _ = tokio::time::sleep_until(deadline) => deadline = tick(m),
            n = p.rd.read(&mut p.buf) => {
                // Nothing is valid from the client while it waits: gone either way.
                let _ = p.take(n).await;
                if m.pools.alloc.lock().unwrap().cancel(id) {
                    m.pools.waiting.answers.lock().unwrap().remove(&id);
                    return false;
                }
                // Answered meanwhile: a session to end at once.
                if let Ok(Ok(alloc)) = rx.await {
                    let actions = m.pools.alloc.lock().unwrap().deallocate(alloc.session, false);
                    carry_out(m, actions.unwrap_or_default());
                }
                return false;
            }
        }
    };
    let alloc = match answer {
        Some(Ok(a)) => a,
        Some(Err(r)) => return p.refuse(r, r.as_str()).await,
        None => {
            p.refuse(RefuseReason::Internal, "the gateway failed").await;
            return false;
        }
    };
    let ended = m.pools.waiting.listen(alloc.session);
    match program(m, &alloc).await {
        Ok((pool, prog)) => {
            if !p
                .send(Frame::Allocated {
                    session: alloc.session,
                })
                .await
            {
                end_now(m, alloc.session);
                return false;
            }
            p.metrics.allocated(&pool, &alloc.program, received);
            relay(m, p, &alloc, prog, ended).await
        }
        Err(e) => {
            tracing::warn!(partition = %alloc.partition, error = %e, "gateway cannot reach the program");
            let actions = m
                .pools
                .alloc
                .lock()
                .unwrap()
                .partition_failed(&alloc.partition);
            carry_out(m, actions.unwrap_or_default());
            p.refuse(RefuseReason::Internal, "the program could not be reached")
                .await;
            false
        }
    }
}

/// The client vanished: the session ends without confirmation (cleanup runs).
fn end_now(m: &Arc<Manager>, s: SessionId) {
    let actions = m.pools.alloc.lock().unwrap().deallocate(s, false);
    carry_out(m, actions.unwrap_or_default());
}

/// Tells the partition's agent the session, connects to the session's
/// program and sends it the session line; the partition's pool and the
/// connection.
pub(super) async fn program(
    m: &Arc<Manager>,
    a: &Allocation,
) -> anyhow::Result<(String, TcpStream)> {
    let pool = m
        .pools
        .alloc
        .lock()
        .unwrap()
        .partition(&a.partition)
        .map(|p| p.pool.clone())
        .ok_or_else(|| anyhow::anyhow!("no partition {}", a.partition))?;
    let port = m
        .pools
        .statement(&pool)
        .ok_or_else(|| anyhow::anyhow!("no pool {pool}"))?
        .port;
    let rec = m
        .store()
        .get(&a.partition)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no partition {}", a.partition))?;
    let ip = rec
        .net
        .as_ref()
        .and_then(|n| crate::net::addr_of(&n.ip))
        .ok_or_else(|| anyhow::anyhow!("{} has no VLAN address", a.partition))?;
    // The agent learns the session while the connection is made; the
    // program hears of it only after both.
    let connect = tokio::time::timeout(PROGRAM_CONNECT, TcpStream::connect((ip, port)));
    let (connected, ()) = tokio::join!(connect, super::session::opened(m, a));
    let mut s = connected??;
    s.set_nodelay(true)?;
    let line = SessionLine {
        session: a.session,
        program: a.program.clone(),
        alternate_id: a.alternate_id.clone(),
    }
    .encode()?;
    s.write_all(line.as_bytes()).await?;
    Ok((pool, s))
}

/// Relays DATA both ways until the session ends; true when the connection
/// may hold another session (DEALLOCATE with confirm, CONFIRMED sent).
async fn relay(
    m: &Arc<Manager>,
    p: &mut Peer,
    a: &Allocation,
    prog: TcpStream,
    mut ended: oneshot::Receiver<End>,
) -> bool {
    let (mut prd, mut pwr) = prog.into_split();
    let mut pbuf = vec![0u8; MAX_DATA_LEN];
    let (mut deallocating, mut prog_open) = (false, true);
    // Whether the allocator was asked to end the session (cleanup, CONFIRMED).
    let mut asked = false;
    let limit = Duration::from_millis(m.config().pool.idle_timeout_ms.max(1));
    let idle = tokio::time::sleep(limit);
    tokio::pin!(idle);
    let drained = tokio::time::sleep(Duration::MAX);
    tokio::pin!(drained);
    // The cleanup runs once the program has answered (closed its side) or
    // DRAIN after DEALLOCATE: nothing it still says is cut off.
    let confirm_now = |asked: &mut bool| {
        if !std::mem::replace(asked, true) {
            let actions = m.pools.alloc.lock().unwrap().deallocate(a.session, true);
            carry_out(m, actions.unwrap_or_default());
        }
    };
    loop {
        // Frames already read (they may follow ALLOCATE in one segment).
        while let Some(f) = p.frames.pop_front() {
            match f {
                Frame::Data(d) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + limit);
                    // A program that stopped reading shows on its read side.
                    let _ = pwr.write_all(&d).await;
                }
                Frame::Deallocate { confirm } => {
                    let _ = pwr.shutdown().await; // the program's input ends
                    if !confirm {
                        let actions = m.pools.alloc.lock().unwrap().deallocate(a.session, false);
                        carry_out(m, actions.unwrap_or_default());
                        return false;
                    }
                    deallocating = true;
                    if prog_open {
                        drained.as_mut().reset(tokio::time::Instant::now() + DRAIN);
                    } else {
                        confirm_now(&mut asked);
                    }
                }
                _ => {}
            }
        }
        tokio::select! {
            n = p.rd.read(&mut p.buf), if !deallocating => {
                if let Input::Gone = p.take(n).await {
                    end_now(m, a.session);
                    return false;
                }
            }
            n = prd.read(&mut pbuf), if prog_open => match n {
                Ok(n) if n > 0 => {
                    idle.as_mut().reset(tokio::time::Instant::now() + limit);
                    if !p.send(Frame::Data(pbuf[..n].to_vec())).await {
                        end_now(m, a.session);
                        return false;
                    }
                }
                _ => {
                    prog_open = false;
                    if deallocating {
                        confirm_now(&mut asked);
                    } else {
                        // The program ended the conversation on its own: it died.
                        let actions = m.pools.alloc.lock().unwrap().partition_failed(&a.partition);
                        carry_out(m, actions.unwrap_or_default());
                    }
                }
            },
            _ = &mut drained, if deallocating && !asked => confirm_now(&mut asked),
            _ = &mut idle, if !deallocating => {
                let code = ErrorCode::IdleTimeout;
                p.send(Frame::Error { code, message: format!("no data for {limit:?}") }).await;
                end_now(m, a.session);
                return false;
            }
            e = &mut ended => {
                return match e {
                    Ok(None) => {
                        // What the program still sent after its input ended
                        // goes before CONFIRMED (bounded: it may never close).
                        let drain = async {
                            while prog_open {
                                match prd.read(&mut pbuf).await {
                                    Ok(n) if n > 0 => {
                                        if !p.send(Frame::Data(pbuf[..n].to_vec())).await {
                                            return false;
                                        }
                                    }
                                    _ => prog_open = false,
                                }
                            }
                            true
                        };
                        match tokio::time::timeout(DRAIN, drain).await {
                            Ok(false) => false,
                            _ => p.send(Frame::Confirmed).await,
                        }
                    }
                    Ok(Some(code)) => {
                        p.send(Frame::Error { code, message: format!("{code:?}") }).await;
                        false
                    }
                    Err(_) => false,
                };
            }
        }
    }
}
