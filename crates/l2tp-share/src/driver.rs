//! The thin tokio loop around one sans-I/O [`Tunnel`]: datagrams in and out, timers,
//! commands from the application, and events routed to the session they concern.
//!
//! Back-pressure: each session's data reaches its owner through a bounded queue
//! ([`SESSION_DATA_QUEUE`]). While it is full the loop stops reading datagrams (they
//! wait in the socket buffer, and the far end's excess is lost there as on any
//! congested link) but keeps serving commands and timers, so a hang-up still goes out.
//! A queue that stays full for [`DATA_STALL_LIMIT`] has its data dropped while full,
//! so that the peer's control messages behind it are read and acknowledged in time.
//! Events travel apart from data and never wait for room; data to the peer is bounded
//! too ([`TunnelHandle::send_data`] waits) and apart from the commands.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_l2tp::{CallMode, Event, ResultCode, Tunnel, TunnelError};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::session::{session_channel, SessionTx};
pub use crate::session::{SessionMsg, SessionRx, DATA_STALL_LIMIT, SESSION_DATA_QUEUE};

/// Data messages to the peer queued in the tunnel's task (sequenced calls).
const OUTBOUND_DATA_QUEUE: usize = 64;

/// What the tunnel's owner receives.
#[derive(Debug)]
pub enum AppEvent {
    /// Connected or Closed.
    Tunnel(Event),
    /// A request from the peer that creates a session (OCRQ, AICRQ, unarmed ICRQ);
    /// the session's further events and data arrive on the receiver.
    Request(Event, SessionRx),
}

type Reply<T> = oneshot::Sender<Result<T, TunnelError>>;

enum Cmd {
    Outgoing {
        number: String,
        mode: CallMode,
        tx: SessionTx,
        reply: Reply<u16>,
    },
    Incoming {
        calling: Option<String>,
        called: Option<String>,
        armed: Option<u16>,
        tx: Option<SessionTx>,
        reply: Reply<u16>,
    },
    Arm {
        line: Option<String>,
        duration: Duration,
        mode: CallMode,
        tx: SessionTx,
        reply: Reply<u16>,
    },
    Accept {
        session: u16,
        reply: Reply<()>,
    },
    ReplyArm {
        session: u16,
        result: Result<Duration, ResultCode>,
        reply: Reply<()>,
    },
    Connected {
        session: u16,
        speed: u32,
        framing: u32,
        reply: Reply<()>,
    },
    Disconnect {
        session: u16,
        result: ResultCode,
    },
    Close(ResultCode),
    Shutdown {
        result: ResultCode,
        acked: oneshot::Sender<()>,
    },
    Discard,
    DataPath {
        session: u16,
        reply: oneshot::Sender<Option<DataSender>>,
    },
}

/// Sends an established, unsequenced call's data straight to the socket, without a
/// hop through the tunnel's task.
#[derive(Clone)]
pub struct DataSender {
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    tunnel: u16,
    session: u16,
}

impl DataSender {
    /// Frames `payload` as a data message (in `buf`) and sends it.
    pub async fn send(&self, payload: &[u8], buf: &mut Vec<u8>) -> std::io::Result<()> {
        buf.clear();
        bulkhead_l2tp::header::encode_data(buf, self.tunnel, self.session, None, payload.len());
        buf.extend_from_slice(payload);
        self.socket.send_to(buf, self.peer).await.map(|_| ())
    }
}

/// Commands for a running tunnel. Cheap to clone.
#[derive(Clone)]
pub struct TunnelHandle {
    /// Control: few, and never behind data.
    cmd: mpsc::UnboundedSender<Cmd>,
    /// Data for the peer (session, payload): bounded, so a fast sender waits.
    data: mpsc::Sender<(u16, Vec<u8>)>,
}

fn gone() -> TunnelError {
    TunnelError::NotEstablished
}

impl TunnelHandle {
    async fn call<T>(&self, f: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, TunnelError> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(f(tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// LNS: OCRQ. Returns the session and its receiver.
    pub async fn place_outgoing(
        &self,
        number: &str,
        mode: CallMode,
    ) -> Result<(u16, SessionRx), TunnelError> {
        let (tx, rx) = session_channel();
        let number = number.to_string();
        let s = self
            .call(|reply| Cmd::Outgoing {
                number,
                mode,
                tx,
                reply,
            })
            .await?;
        Ok((s, rx))
    }

    /// LAC: ICRQ, for an armed session (its receiver keeps working) or a new one.
    pub async fn place_incoming(
        &self,
        calling: Option<&str>,
        called: Option<&str>,
        armed: Option<u16>,
    ) -> Result<(u16, Option<SessionRx>), TunnelError> {
        let (tx, rx) = if armed.is_none() {
            let (tx, rx) = session_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let (calling, called) = (calling.map(str::to_string), called.map(str::to_string));
        let s = self
            .call(|reply| Cmd::Incoming {
                calling,
                called,
                armed,
                tx,
                reply,
            })
            .await?;
        Ok((s, rx))
    }

    /// LNS: AICRQ.
    pub async fn arm(
        &self,
        line: Option<&str>,
        duration: Duration,
        mode: CallMode,
    ) -> Result<(u16, SessionRx), TunnelError> {
        let (tx, rx) = session_channel();
        let line = line.map(str::to_string);
        let s = self
            .call(|reply| Cmd::Arm {
                line,
                duration,
                mode,
                tx,
                reply,
            })
            .await?;
        Ok((s, rx))
    }

    pub async fn accept(&self, session: u16) -> Result<(), TunnelError> {
        self.call(|reply| Cmd::Accept { session, reply }).await
    }

    pub async fn reply_arm(
        &self,
        session: u16,
        result: Result<Duration, ResultCode>,
    ) -> Result<(), TunnelError> {
        self.call(|reply| Cmd::ReplyArm {
            session,
            result,
            reply,
        })
        .await
    }

    pub async fn connected(
        &self,
        session: u16,
        speed: u32,
        framing: u32,
    ) -> Result<(), TunnelError> {
        self.call(|reply| Cmd::Connected {
            session,
            speed,
            framing,
            reply,
        })
        .await
    }

    pub fn disconnect(&self, session: u16, result: ResultCode) {
        let _ = self.cmd.send(Cmd::Disconnect { session, result });
    }

    /// Queues a data message for the peer; waits while the queue is full.
    pub async fn send_data(&self, session: u16, payload: Vec<u8>) -> bool {
        self.data.send((session, payload)).await.is_ok()
    }

    pub fn close(&self, result: ResultCode) {
        let _ = self.cmd.send(Cmd::Close(result));
    }

    /// Clears every session (CDN 3) and the tunnel (StopCCN `result`); resolves when
    /// the peer has acknowledged them all (or the tunnel is gone).
    /// The commands go out at once, before the returned future is awaited.
    pub fn shutdown(&self, result: ResultCode) -> impl std::future::Future<Output = ()> {
        let (acked, rx) = oneshot::channel();
        let sent = self.cmd.send(Cmd::Shutdown { result, acked }).is_ok();
        async move {
            if sent {
                let _ = rx.await;
            }
        }
    }

    /// Drops the tunnel without a StopCCN (the loser of a tie, §4.4.3).
    pub fn discard(&self) {
        let _ = self.cmd.send(Cmd::Discard);
    }

    /// A direct sender for an established call, when its data needs no sequencing.
    pub async fn data_sender(&self, session: u16) -> Option<DataSender> {
        let (reply, rx) = oneshot::channel();
        self.cmd.send(Cmd::DataPath { session, reply }).ok()?;
        rx.await.ok().flatten()
    }

    pub fn is_closed(&self) -> bool {
        self.cmd.is_closed()
    }
}

/// Where a tunnel's datagrams come from.
pub enum Inbound {
    /// A demultiplexer shared by several tunnels forwards them (the server's listen socket).
    Channel(mpsc::Receiver<Vec<u8>>),
    /// The tunnel's own connected socket, read by the tunnel's task. `refused` is set
    /// when the peer's port is unreachable.
    Socket {
        refused: Arc<std::sync::atomic::AtomicBool>,
    },
}

/// Starts the loop for `tunnel`, talking to `peer` on `socket`; datagrams for it arrive
/// through `inbound`. Returns the command handle and the application's event stream.
pub fn spawn(
    tunnel: Tunnel,
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    inbound: Inbound,
) -> (TunnelHandle, mpsc::UnboundedReceiver<AppEvent>) {
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (data_tx, data_rx) = mpsc::channel(OUTBOUND_DATA_QUEUE);
    // Unbounded: tunnel events and call requests, paced by the control channel.
    let (app_tx, app_rx) = mpsc::unbounded_channel();
    let d = Driver {
        tunnel,
        socket,
        peer,
        sessions: HashMap::new(),
        app: app_tx,
        out: Vec::with_capacity(2048),
        data_pending: false,
        on_acked: None,
        parked: None,
    };
    tokio::spawn(d.run(inbound, cmd_rx, data_rx));
    let handle = TunnelHandle {
        cmd: cmd_tx,
        data: data_tx,
    };
    (handle, app_rx)
}

struct Driver {
    tunnel: Tunnel,
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    sessions: HashMap<u16, SessionTx>,
    app: mpsc::UnboundedSender<AppEvent>,
    out: Vec<u8>,
    /// `out` holds a data message to send (sent from the loop, where it may await).
    data_pending: bool,
    /// Told once the peer has acknowledged everything (after a shutdown).
    on_acked: Option<oneshot::Sender<()>>,
    /// A data message waiting for room in its session's queue: (session, payload,
    /// drop it at). No datagram is read meanwhile.
    parked: Option<(u16, Vec<u8>, Instant)>,
}

impl Driver {
    async fn run(
        mut self,
        mut inbound: Inbound,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
        mut data: mpsc::Receiver<(u16, Vec<u8>)>,
    ) {
        let mut cmds_open = true;
        let mut data_open = true;
        let socket = self.socket.clone();
        let mut rbuf = vec![0u8; 65536];
        loop {
            if self.data_pending {
                // Awaiting the socket pushes back on the sender instead of dropping.
                self.data_pending = false;
                let _ = self.socket.send_to(&self.out, self.peer).await;
            }
            self.flush().await;
            if self.tunnel.all_acked() || self.tunnel.is_finished() {
                if let Some(tx) = self.on_acked.take() {
                    let _ = tx.send(());
                }
            }
            if self.tunnel.is_finished() {
                break;
            }
            // The session may have gone (hang-up) while its data waited.
            if let Some((s, ..)) = &self.parked {
                if !self.sessions.contains_key(s) {
                    self.parked = None;
                }
            }
            let deadline = self.tunnel.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let room = self.room_for_parked();
            tokio::select! {
                r = room => self.unpark(r),
                n = next_datagram(&mut inbound, &socket, &mut rbuf), if self.parked.is_none() => match n {
                    Some(n) => self.datagram(&rbuf[..n]),
                    None => break,
                },
                c = cmds.recv(), if cmds_open => match c {
                    Some(c) => self.command(c),
                    None => {
                        // Everyone dropped the handle: clear the tunnel politely.
                        cmds_open = false;
                        self.tunnel.close(Instant::now(), ResultCode::new(bulkhead_l2tp::result::STOP_GENERAL_CLEAR, 0, "closed"));
                    }
                },
                d = data.recv(), if data_open => match d {
                    Some((session, payload)) => self.send_data(session, &payload),
                    None => data_open = false,
                },
                _ = sleep => self.tunnel.handle_timeout(Instant::now()),
            }
        }
        debug!(tunnel = self.tunnel.local_id(), "tunnel finished");
    }

    fn datagram(&mut self, d: &[u8]) {
        let now = Instant::now();
        match self.tunnel.handle(now, d) {
            Ok(Some((session, payload))) => self.deliver(now, session, payload),
            Ok(None) => {}
            Err(e) => debug!(tunnel = self.tunnel.local_id(), "dropped datagram: {e}"),
        }
    }

    /// Hands a data message to its session, or parks it while the queue is full.
    fn deliver(&mut self, now: Instant, session: u16, payload: &[u8]) {
        let Some(tx) = self.sessions.get_mut(&session) else {
            return;
        };
        match tx.data.try_reserve() {
            Ok(permit) => {
                permit.send(payload.to_vec());
                if tx.data.capacity() >= SESSION_DATA_QUEUE / 2 {
                    tx.full_since = None;
                }
            }
            Err(mpsc::error::TrySendError::Full(())) => {
                let since = *tx.full_since.get_or_insert(now);
                let give_up = since + DATA_STALL_LIMIT;
                if give_up > now {
                    self.parked = Some((session, payload.to_vec(), give_up));
                } else {
                    debug!(
                        tunnel = self.tunnel.local_id(),
                        session, "session owner is not reading: data dropped"
                    );
                }
            }
            // The owner is gone; the call is being cleared.
            Err(mpsc::error::TrySendError::Closed(())) => {}
        }
    }

    /// Resolves with room in the parked message's queue (`Some`), or at its deadline
    /// or when the owner is gone (`None`); never without a parked message.
    fn room_for_parked(
        &self,
    ) -> impl std::future::Future<Output = Option<mpsc::OwnedPermit<Vec<u8>>>> {
        let wait = self.parked.as_ref().and_then(|(s, _, until)| {
            let tx = self.sessions.get(s)?.data.clone();
            Some((tx, *until))
        });
        async move {
            match wait {
                Some((tx, until)) => tokio::time::timeout_at(until.into(), tx.reserve_owned())
                    .await
                    .ok()
                    .and_then(Result::ok),
                None => std::future::pending().await,
            }
        }
    }

    fn unpark(&mut self, permit: Option<mpsc::OwnedPermit<Vec<u8>>>) {
        let Some((session, payload, _)) = self.parked.take() else {
            return;
        };
        match permit {
            Some(p) => {
                p.send(payload);
            }
            // From here on its data is dropped while the queue stays full.
            None => warn!(
                tunnel = self.tunnel.local_id(),
                session, "session owner stopped reading: dropping its data while its queue is full"
            ),
        }
    }

    fn send_data(&mut self, session: u16, payload: &[u8]) {
        self.out.clear();
        if self
            .tunnel
            .encode_data(session, payload, &mut self.out)
            .is_ok()
        {
            self.data_pending = true;
        }
    }

    fn command(&mut self, c: Cmd) {
        let now = Instant::now();
        let t = &mut self.tunnel;
        match c {
            Cmd::Outgoing {
                number,
                mode,
                tx,
                reply,
            } => {
                let r = t.place_outgoing_call(now, &number, mode);
                if let Ok(s) = r {
                    self.sessions.insert(s, tx);
                }
                let _ = reply.send(r);
            }
            Cmd::Incoming {
                calling,
                called,
                armed,
                tx,
                reply,
            } => {
                let r = t.place_incoming_call(now, calling.as_deref(), called.as_deref(), armed);
                if let (Ok(s), Some(tx)) = (&r, tx) {
                    self.sessions.insert(*s, tx);
                }
                let _ = reply.send(r);
            }
            Cmd::Arm {
                line,
                duration,
                mode,
                tx,
                reply,
            } => {
                let r = t.arm(now, line.as_deref(), duration, mode);
                if let Ok(s) = r {
                    self.sessions.insert(s, tx);
                }
                let _ = reply.send(r);
            }
            Cmd::Accept { session, reply } => {
                let _ = reply.send(t.accept_call(now, session));
            }
            Cmd::ReplyArm {
                session,
                result,
                reply,
            } => {
                let refused = result.is_err();
                let _ = reply.send(t.reply_arm(now, session, result));
                if refused {
                    self.sessions.remove(&session);
                }
            }
            Cmd::Connected {
                session,
                speed,
                framing,
                reply,
            } => {
                let _ = reply.send(t.call_connected(now, session, speed, framing));
            }
            Cmd::Disconnect { session, result } => {
                let _ = t.disconnect_call(now, session, result);
            }
            Cmd::Close(rc) => t.close(now, rc),
            Cmd::Shutdown { result, acked } => {
                let cdn = ResultCode::new(
                    bulkhead_l2tp::result::CDN_ADMIN,
                    0,
                    result.message.clone().unwrap_or_default(),
                );
                for session in self.sessions.keys() {
                    let _ = t.disconnect_call(now, *session, cdn.clone());
                }
                t.close(now, result);
                self.on_acked = Some(acked);
            }
            Cmd::Discard => t.discard(),
            Cmd::DataPath { session, reply } => {
                let d = t.data_path(session).map(|(tunnel, session)| DataSender {
                    socket: self.socket.clone(),
                    peer: self.peer,
                    tunnel,
                    session,
                });
                let _ = reply.send(d);
            }
        }
    }

    async fn flush(&mut self) {
        let now = Instant::now();
        while let Some(d) = self.tunnel.poll_transmit(now) {
            if let Err(e) = self.socket.send_to(&d, self.peer).await {
                warn!(peer = %self.peer, "send: {e}");
            }
        }
        while let Some(e) = self.tunnel.poll_event() {
            self.route(e);
        }
        // Routing may have queued replies (none today), so transmit once more.
        while let Some(d) = self.tunnel.poll_transmit(now) {
            let _ = self.socket.send_to(&d, self.peer).await;
        }
    }

    fn route(&mut self, e: Event) {
        match &e {
            Event::Connected { .. } => {
                let _ = self.app.send(AppEvent::Tunnel(e));
            }
            Event::Closed { result, .. } => {
                let rc = result.clone().unwrap_or_else(|| {
                    ResultCode::new(bulkhead_l2tp::result::CDN_LOST_CARRIER, 1, "tunnel lost")
                });
                for (session, tx) in self.sessions.drain() {
                    tx.event(Event::CallDisconnected {
                        session,
                        result: rc.clone(),
                        local: false,
                    });
                }
                let _ = self.app.send(AppEvent::Tunnel(e));
            }
            Event::OutgoingCallRequest { session, .. }
            | Event::ArmRequest { session, .. }
            | Event::IncomingCallRequest {
                session,
                armed: false,
                ..
            } => {
                let (tx, rx) = session_channel();
                self.sessions.insert(*session, tx);
                let _ = self.app.send(AppEvent::Request(e, rx));
            }
            Event::IncomingCallRequest { session, .. }
            | Event::ArmReply { session, .. }
            | Event::CallReplied { session }
            | Event::CallEstablished { session, .. }
            | Event::WanErrors { session, .. }
            | Event::LinkInfo { session, .. } => {
                if let Some(tx) = self.sessions.get(session) {
                    tx.event(e);
                }
            }
            Event::CallDisconnected { session, .. } => {
                if let Some(tx) = self.sessions.remove(session) {
                    tx.event(e);
                }
            }
        }
    }
}

/// Opens a tunnel to `server` from a new UDP socket and waits until it is up.
pub async fn connect(
    cfg: bulkhead_l2tp::Config,
    server: SocketAddr,
    wait: Duration,
) -> anyhow::Result<(TunnelHandle, mpsc::UnboundedReceiver<AppEvent>, Event)> {
    dial(Tunnel::connect(cfg, Instant::now()), server)
        .await?
        .established(wait)
        .await
}

/// A tunnel whose SCCRQ is out: [`Dialing::established`] waits for the answer.
pub struct Dialing {
    pub handle: TunnelHandle,
    events: mpsc::UnboundedReceiver<AppEvent>,
    refused: Arc<std::sync::atomic::AtomicBool>,
    server: SocketAddr,
}

/// Starts `tunnel` (made by [`Tunnel::connect`]) towards `server` from a new UDP socket.
pub async fn dial(tunnel: Tunnel, server: SocketAddr) -> std::io::Result<Dialing> {
    let bind: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).await?;
    grow_buffers(&socket);
    let socket = Arc::new(socket);
    socket.connect(server).await?;
    let refused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let inbound = Inbound::Socket {
        refused: refused.clone(),
    };
    let (handle, events) = spawn(tunnel, socket, server, inbound);
    Ok(Dialing {
        handle,
        events,
        refused,
        server,
    })
}

impl Dialing {
    /// Waits until the tunnel is up (or refused, or `wait` passed).
    pub async fn established(
        mut self,
        wait: Duration,
    ) -> anyhow::Result<(TunnelHandle, mpsc::UnboundedReceiver<AppEvent>, Event)> {
        let server = self.server;
        let first = tokio::time::timeout(wait, self.events.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no answer from the L2TP server at {server}"))?
            .ok_or_else(|| {
                if self.refused.load(std::sync::atomic::Ordering::Acquire) {
                    anyhow::anyhow!("no L2TP server listens at {server} (port unreachable)")
                } else {
                    anyhow::anyhow!("tunnel to {server} ended")
                }
            })?;
        match first {
            AppEvent::Tunnel(e @ Event::Connected { .. }) => Ok((self.handle, self.events, e)),
            AppEvent::Tunnel(Event::Closed { result, .. }) => {
                let why = result
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "no answer".into());
                anyhow::bail!("the L2TP server at {server} refused the tunnel: {why}")
            }
            other => anyhow::bail!("unexpected first event {other:?}"),
        }
    }
}

/// The next datagram for the tunnel, in `buf[..n]`; `None` when the source is gone.
async fn next_datagram(
    inbound: &mut Inbound,
    socket: &UdpSocket,
    buf: &mut Vec<u8>,
) -> Option<usize> {
    match inbound {
        Inbound::Channel(rx) => {
            *buf = rx.recv().await?;
            Some(buf.len())
        }
        Inbound::Socket { refused } => match socket.recv(buf).await {
            Ok(n) => Some(n),
            // ICMP port unreachable: nothing listens there. Ending here ends the
            // tunnel at once instead of after 31 s of retries.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                refused.store(true, std::sync::atomic::Ordering::Release);
                None
            }
            Err(_) => None,
        },
    }
}

/// Larger socket buffers absorb bursts of data messages (best effort).
pub fn grow_buffers(socket: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = setsockopt(socket, sockopt::RcvBuf, &(4 << 20));
    let _ = setsockopt(socket, sockopt::SndBuf, &(4 << 20));
}
