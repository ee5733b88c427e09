//! The thin tokio loop around one sans-I/O [`Tunnel`]: datagrams in and out, timers,
//! commands from the application, and events routed to the session they concern.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_l2tp::{CallMode, Event, ResultCode, Tunnel, TunnelError};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

/// What a session's owner receives.
#[derive(Debug)]
pub enum SessionMsg {
    Event(Event),
    Data(Vec<u8>),
}

pub type SessionRx = mpsc::UnboundedReceiver<SessionMsg>;
type SessionTx = mpsc::UnboundedSender<SessionMsg>;

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
    Data {
        session: u16,
        payload: Vec<u8>,
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
    cmd: mpsc::UnboundedSender<Cmd>,
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
        let (tx, rx) = mpsc::unbounded_channel();
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
            let (tx, rx) = mpsc::unbounded_channel();
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
        let (tx, rx) = mpsc::unbounded_channel();
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

    pub fn send_data(&self, session: u16, payload: Vec<u8>) -> bool {
        self.cmd.send(Cmd::Data { session, payload }).is_ok()
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
    };
    tokio::spawn(d.run(inbound, cmd_rx));
    (TunnelHandle { cmd: cmd_tx }, app_rx)
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
}

impl Driver {
    async fn run(mut self, mut inbound: Inbound, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        let mut cmds_open = true;
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
            let deadline = self.tunnel.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                n = next_datagram(&mut inbound, &socket, &mut rbuf) => match n {
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
                _ = sleep => self.tunnel.handle_timeout(Instant::now()),
            }
        }
        debug!(tunnel = self.tunnel.local_id(), "tunnel finished");
    }

    fn datagram(&mut self, d: &[u8]) {
        match self.tunnel.handle(Instant::now(), d) {
            Ok(Some((session, payload))) => {
                if let Some(tx) = self.sessions.get(&session) {
                    let _ = tx.send(SessionMsg::Data(payload.to_vec()));
                }
            }
            Ok(None) => {}
            Err(e) => debug!(tunnel = self.tunnel.local_id(), "dropped datagram: {e}"),
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
            Cmd::Data { session, payload } => {
                self.out.clear();
                if t.encode_data(session, &payload, &mut self.out).is_ok() {
                    self.data_pending = true;
                }
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
                    let _ = tx.send(SessionMsg::Event(Event::CallDisconnected {
                        session,
                        result: rc.clone(),
                        local: false,
                    }));
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
                let (tx, rx) = mpsc::unbounded_channel();
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
                    let _ = tx.send(SessionMsg::Event(e));
                }
            }
            Event::CallDisconnected { session, .. } => {
                if let Some(tx) = self.sessions.remove(session) {
                    let _ = tx.send(SessionMsg::Event(e));
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
