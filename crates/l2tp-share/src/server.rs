//! The resource server (LAC): accepts tunnels on the profile's addresses, dials for
//! OCRQ, arms answer mode for AICRQ and routes the call back as ICRQ, hangs up on CDN,
//! and turns modem results into CDN codes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bulkhead_l2tp::result::*;
use bulkhead_l2tp::tunnel::{resolve_tie, Tie, BEARER_ANALOG, FRAMING_ASYNC};
use bulkhead_l2tp::{header, CallMode, Event, Message, MessageType, ResultCode, Tunnel};
use bulkhead_modem::dte::{Dte, DteError};
use bulkhead_modem::hayes::Code;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::call::{bridge, End, Stream};
use crate::driver::{self, AppEvent, SessionMsg, SessionRx, TunnelHandle};
use crate::pool::{after_failure, settle, After, Pool, Slot, Taken};
use crate::profile::ServerProfile;

struct Shared {
    profile: ServerProfile,
    pool: Pool,
    /// Tunnels to the LNSes that devices forward rings to: one per LNS, shared.
    to_lns: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<Option<TunnelHandle>>>>>,
    /// Our SCCRQs still unanswered: an SCCRQ from the same peer meanwhile is a tie.
    opening: Mutex<Vec<Opening>>,
}

/// An SCCRQ of ours in flight, for the tie breaker (§4.4.3).
struct Opening {
    peer: IpAddr,
    tie_breaker: Option<[u8; 8]>,
    /// Told when we lose; dropped when both sides lose.
    lost: oneshot::Sender<oneshot::Receiver<TunnelHandle>>,
}

/// What to do with an SCCRQ from a peer.
enum Answer {
    /// Answer it; `Some` when it won a tie: the loser waits for the tunnel once up.
    Yes(Option<oneshot::Sender<TunnelHandle>>),
    /// Ignore it: our own SCCRQ to that peer wins, or both lost.
    No(Tie),
}

impl Shared {
    /// Settles an SCCRQ from `peer` against our unanswered SCCRQs to it (§4.4.3).
    fn settle(&self, peer: IpAddr, theirs: Option<[u8; 8]>) -> Answer {
        let mut opening = self.opening.lock().expect("opening lock");
        let Some(i) = opening.iter().position(|o| o.peer == peer) else {
            return Answer::Yes(None);
        };
        match resolve_tie(opening[i].tie_breaker, theirs) {
            Tie::KeepBoth => Answer::Yes(None),
            t @ Tie::KeepOurs => Answer::No(t),
            t @ Tie::DiscardBoth => {
                // Dropping `lost` tells our side to discard and try again.
                opening.swap_remove(i);
                Answer::No(t)
            }
            Tie::KeepTheirs => {
                let ours = opening.swap_remove(i);
                let (up_tx, up_rx) = oneshot::channel();
                let _ = ours.lost.send(up_rx);
                Answer::Yes(Some(up_tx))
            }
        }
    }

    /// The tunnel to `lns` for forwarded rings, opened when there is none.
    async fn tunnel_to(&self, lns: SocketAddr) -> anyhow::Result<TunnelHandle> {
        let cell = self
            .to_lns
            .lock()
            .expect("to_lns lock")
            .entry(lns)
            .or_default()
            .clone();
        let mut cell = cell.lock().await;
        if let Some(h) = cell.as_ref().filter(|h| !h.is_closed()) {
            return Ok(h.clone());
        }
        let h = self.open_to(lns).await?;
        *cell = Some(h.clone());
        Ok(h)
    }

    /// Opens a tunnel to `lns`, settling a tie with an SCCRQ it sends us meanwhile:
    /// if ours loses, the tunnel it opened is used instead; if both lose, try again.
    async fn open_to(&self, lns: SocketAddr) -> anyhow::Result<TunnelHandle> {
        let wait = Duration::from_secs(40);
        // Ties twice in a row are already rare (random 64-bit values, random pauses).
        const ATTEMPTS: u32 = 5;
        for _ in 0..ATTEMPTS {
            let cfg = tunnel_config(&self.profile, self.profile.secret.as_deref());
            let tunnel = Tunnel::connect(cfg, Instant::now());
            let (lost_tx, lost_rx) = oneshot::channel();
            self.opening.lock().expect("opening lock").push(Opening {
                peer: lns.ip(),
                tie_breaker: tunnel.tie_breaker(),
                lost: lost_tx,
            });
            let dialing = driver::dial(tunnel, lns).await;
            let outcome = match dialing {
                Err(e) => Err(anyhow::Error::from(e).context(format!("opening a tunnel to {lns}"))),
                Ok(d) => {
                    let ours = d.handle.clone();
                    tokio::select! {
                        r = d.established(wait) => r.map(|(h, mut events, _)| {
                            tokio::spawn(async move { while events.recv().await.is_some() {} });
                            Some(h)
                        }),
                        lost = lost_rx => {
                            ours.discard();
                            match lost {
                                Ok(up) => {
                                    info!(%lns, "tie lost: the LNS's own tunnel carries our calls");
                                    match tokio::time::timeout(wait, up).await {
                                        Ok(Ok(h)) => Ok(Some(h)),
                                        _ => Ok(None),
                                    }
                                }
                                Err(_) => {
                                    info!(%lns, "equal tie breakers: both tunnels dropped");
                                    Ok(None)
                                }
                            }
                        }
                    }
                }
            };
            // Ours, if still listed, now has its receiver gone: prune finished openings.
            self.opening
                .lock()
                .expect("opening lock")
                .retain(|o| !o.lost.is_closed());
            match outcome {
                Ok(Some(h)) => return Ok(h),
                // Both lost, or the winner's tunnel never came up: a random pause so
                // that the next two SCCRQs do not cross again.
                Ok(None) => {
                    let ms = rand::random::<u64>() % 1000;
                    tokio::time::sleep(Duration::from_millis(100 + ms)).await;
                }
                Err(e) => return Err(e),
            }
        }
        anyhow::bail!("no tunnel to {lns} after {ATTEMPTS} tied or failed attempts")
    }
}

/// The CDN for a modem's dial or answer failure.
pub fn cdn_for(e: &DteError) -> ResultCode {
    match e {
        DteError::Result(Code::Busy) => ResultCode::new(CDN_BUSY, ERR_NONE, "BUSY"),
        DteError::Result(Code::NoCarrier) => {
            ResultCode::new(CDN_NO_CARRIER, ERR_NONE, "NO CARRIER")
        }
        DteError::Result(Code::NoDialtone) => {
            ResultCode::new(CDN_NO_DIALTONE, ERR_NONE, "NO DIALTONE")
        }
        DteError::Result(Code::NoAnswer) => ResultCode::new(CDN_TIMEOUT, ERR_NONE, "NO ANSWER"),
        DteError::Timeout(_) => ResultCode::new(CDN_TIMEOUT, ERR_NONE, "no CONNECT in time"),
        DteError::Result(c) => {
            ResultCode::new(CDN_ERROR, ERR_VENDOR, format!("modem said {}", c.text()))
        }
        DteError::Io(e) => ResultCode::new(CDN_ERROR, ERR_VENDOR, format!("modem line: {e}")),
    }
}

fn dialable(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_digit() || "+*#,-() WwPpTt".contains(c))
        && s.chars().any(|c| c.is_ascii_digit())
}

/// Runs the resource server until the process ends.
pub async fn run(profile: ServerProfile) -> anyhow::Result<()> {
    let server = start(profile).await?;
    server.wait().await;
    Ok(())
}

/// A started server.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
    /// Stops listening (tunnels already up end with their tasks).
    pub fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Opens the devices and binds every listen address.
pub async fn start(profile: ServerProfile) -> anyhow::Result<Running> {
    profile.validate()?;
    let mut slots = Vec::new();
    for d in &profile.devices {
        let mut dte = Dte::open(&d.tty)
            .with_context(|| format!("opening device {} ({})", d.name, d.tty.display()))?;
        dte.init()
            .await
            .with_context(|| format!("initialising the modem on {}", d.tty.display()))?;
        slots.push(Slot {
            cfg: d.clone(),
            dte: Some(dte),
            releasing: false,
        });
    }
    let shared = Arc::new(Shared {
        profile: profile.clone(),
        pool: Pool::new(slots),
        to_lns: Mutex::new(HashMap::new()),
        opening: Mutex::new(Vec::new()),
    });
    let mut tasks = Vec::new();
    let mut addrs = Vec::new();
    for a in &profile.listen {
        if a.ip().is_unspecified() {
            warn!(addr = %a, "listening on every address: tunnels will be accepted on public addresses too");
        }
        let socket = UdpSocket::bind(a)
            .await
            .with_context(|| format!("binding {a}"))?;
        driver::grow_buffers(&socket);
        let socket = Arc::new(socket);
        let local = socket.local_addr()?;
        info!(addr = %local, "accepting L2TP tunnels");
        addrs.push(local);
        tasks.push(tokio::spawn(listen(socket, shared.clone())));
    }
    for (i, d) in profile.devices.iter().enumerate() {
        if let Some(lns) = d.forward_incoming {
            let dte = shared.pool.take_index(i).expect("just opened");
            tasks.push(tokio::spawn(forward_incoming(
                dte,
                d.name.clone(),
                lns,
                shared.clone(),
            )));
        }
    }
    Ok(Running { addrs, tasks })
}

fn tunnel_config(p: &ServerProfile, secret: Option<&str>) -> bulkhead_l2tp::Config {
    bulkhead_l2tp::Config {
        host_name: p.hostname.clone(),
        secret: secret.map(|s| s.as_bytes().to_vec()),
        bearer_caps: BEARER_ANALOG,
        extension: Some(p.vendor_id),
        hello_interval: Duration::from_secs(p.hello_interval),
        hide_avps: p.hide_avps,
        ..bulkhead_l2tp::Config::default()
    }
}

/// Demultiplexes one listen socket's datagrams to tunnels, creating one per new SCCRQ.
async fn listen(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut by_id: HashMap<u16, (SocketAddr, mpsc::Sender<Vec<u8>>)> = HashMap::new();
    let mut by_peer: HashMap<(SocketAddr, u16), u16> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                debug!("recv: {e}");
                continue;
            }
        };
        let d = &buf[..n];
        let Some(tid) = header::peek_tunnel_id(d) else {
            continue;
        };
        let target = if tid != 0 {
            by_id
                .get(&tid)
                .filter(|(peer, _)| *peer == from)
                .map(|(_, tx)| (tid, tx.clone()))
        } else {
            // A new SCCRQ, or a retransmission of one already being answered.
            let Some((host, peer_tid, tie_breaker)) = sccrq_identity(d, &shared.profile) else {
                continue;
            };
            match by_peer.get(&(from, peer_tid)) {
                Some(id) => by_id.get(id).map(|(_, tx)| (*id, tx.clone())),
                None => {
                    let on_up = match shared.settle(from.ip(), tie_breaker) {
                        Answer::Yes(on_up) => on_up,
                        Answer::No(tie) => {
                            info!(peer = %from, host, ?tie, "SCCRQ crossed ours: ignored");
                            continue;
                        }
                    };
                    let secret = shared.profile.secret_for(&host).map(str::to_string);
                    let mut tunnel = Tunnel::accept(
                        tunnel_config(&shared.profile, secret.as_deref()),
                        Instant::now(),
                    );
                    while by_id.contains_key(&tunnel.local_id()) {
                        tunnel = Tunnel::accept(
                            tunnel_config(&shared.profile, secret.as_deref()),
                            Instant::now(),
                        );
                    }
                    let id = tunnel.local_id();
                    info!(peer = %from, host, tunnel = id, "new tunnel");
                    let (tx, rx) = mpsc::channel(1024);
                    let (handle, events) =
                        driver::spawn(tunnel, socket.clone(), from, driver::Inbound::Channel(rx));
                    tokio::spawn(serve_tunnel(handle, events, shared.clone(), on_up));
                    by_id.insert(id, (from, tx.clone()));
                    by_peer.insert((from, peer_tid), id);
                    Some((id, tx))
                }
            }
        };
        if let Some((id, tx)) = target {
            // Waiting for a busy tunnel leaves datagrams in the socket buffer rather than
            // dropping them here.
            if tx.send(d.to_vec()).await.is_err() {
                by_id.remove(&id);
                by_peer.retain(|_, v| *v != id);
            }
        }
    }
}

/// Host Name, Assigned Tunnel ID and Tie Breaker of an SCCRQ. Host Name is never
/// hidden (§4.4.3); it picks the secret that unhides the rest.
fn sccrq_identity(d: &[u8], profile: &ServerProfile) -> Option<(String, u16, Option<[u8; 8]>)> {
    let (h, body) = header::decode(d).ok()?;
    if !h.control || body.is_empty() {
        return None;
    }
    let host = bulkhead_l2tp::avp::raw_avps(body)
        .map_while(Result::ok)
        .find(|a| a.vendor == 0 && a.attr == bulkhead_l2tp::avp::attr::HOST_NAME && !a.hidden)
        .map(|a| String::from_utf8_lossy(a.value).into_owned())?;
    let secret = profile.secret_for(&host).map(str::as_bytes);
    let m = Message::decode(body, secret).ok()?;
    if m.message_type() != Some(MessageType::Sccrq) {
        return None;
    }
    let tid = m.find(|a| {
        if let bulkhead_l2tp::Avp::AssignedTunnelId(t) = a {
            Some(*t)
        } else {
            None
        }
    })?;
    let tie_breaker = m.find(|a| match a {
        bulkhead_l2tp::Avp::TieBreaker(t) => Some(*t),
        _ => None,
    });
    Some((host, tid, tie_breaker))
}

/// Serves the requests of a tunnel a peer opened. `on_up` gets the tunnel once it is up
/// (it won a tie against ours, which then uses it).
async fn serve_tunnel(
    handle: TunnelHandle,
    mut events: mpsc::UnboundedReceiver<AppEvent>,
    shared: Arc<Shared>,
    mut on_up: Option<oneshot::Sender<TunnelHandle>>,
) {
    while let Some(e) = events.recv().await {
        match e {
            AppEvent::Tunnel(Event::Connected { peer_host, .. }) => {
                info!(peer = peer_host, "tunnel up");
                if let Some(tx) = on_up.take() {
                    let _ = tx.send(handle.clone());
                }
            }
            AppEvent::Tunnel(Event::Closed { reason, result }) => {
                info!(
                    ?reason,
                    result = result.map(|r| r.to_string()),
                    "tunnel closed"
                );
            }
            AppEvent::Tunnel(_) => {}
            AppEvent::Request(
                Event::OutgoingCallRequest {
                    session,
                    called_number,
                    mode,
                    ..
                },
                rx,
            ) => {
                tokio::spawn(outgoing_call(
                    handle.clone(),
                    session,
                    called_number,
                    mode,
                    rx,
                    shared.clone(),
                ));
            }
            AppEvent::Request(
                Event::ArmRequest {
                    session,
                    line,
                    duration,
                    mode,
                },
                rx,
            ) => {
                tokio::spawn(armed_call(
                    handle.clone(),
                    session,
                    line,
                    duration,
                    mode,
                    rx,
                    shared.clone(),
                ));
            }
            AppEvent::Request(Event::IncomingCallRequest { session, .. }, _) => {
                handle.disconnect(
                    session,
                    ResultCode::new(
                        CDN_NO_FACILITIES_PERM,
                        ERR_NONE,
                        "this resource server is no LNS",
                    ),
                );
            }
            AppEvent::Request(..) => {}
        }
    }
}

/// Waits for the session's CDN (or the tunnel's end).
async fn disconnected(rx: &mut SessionRx) -> ResultCode {
    loop {
        match rx.recv().await {
            Some(SessionMsg::Event(Event::CallDisconnected { result, .. })) => return result,
            Some(_) => {}
            None => return ResultCode::new(CDN_LOST_CARRIER, ERR_NO_CONTROL, "tunnel gone"),
        }
    }
}

async fn outgoing_call(
    handle: TunnelHandle,
    session: u16,
    called: String,
    mode: CallMode,
    mut rx: SessionRx,
    shared: Arc<Shared>,
) {
    let number = match shared.profile.directory.get(&called) {
        Some(n) => n.clone(),
        None if dialable(&called) => called.clone(),
        None => {
            info!(called, "unknown directory name");
            return handle.disconnect(
                session,
                ResultCode::new(
                    CDN_INVALID_DESTINATION,
                    ERR_NONE,
                    format!("unknown directory name {called}"),
                ),
            );
        }
    };
    let mut dev = match shared.pool.take_wait(|d| d.outgoing).await {
        Ok(d) => d,
        Err(rc) => return handle.disconnect(session, rc),
    };
    info!(called, number, device = dev.name, ?mode, "dialing");
    if handle.accept(session).await.is_err() {
        return shared.pool.put_back(dev, After::Idle).await;
    }
    let wait = dev.dial_timeout;
    let dialed = tokio::select! {
        r = dev.dte.dial(&number, wait) => Some(r),
        _ = disconnected(&mut rx) => None,
    };
    match dialed {
        None => {
            info!(device = dev.name, "call cancelled while dialing");
            // DTR drop ends the dial.
            shared.pool.put_back(dev, After::Online).await;
        }
        Some(Err(e)) => {
            info!(device = dev.name, "dial failed: {e}");
            // The device is free again before the client hears the result.
            shared.pool.put_back(dev, after_failure(&e)).await;
            handle.disconnect(session, cdn_for(&e));
        }
        Some(Ok(speed)) => {
            let after = if handle
                .connected(session, speed, FRAMING_ASYNC)
                .await
                .is_ok()
            {
                run_call(&handle, session, &mut rx, &mut dev, mode).await
            } else {
                After::Online
            };
            shared.pool.put_back(dev, after).await;
        }
    }
}

/// Bridges the modem and the session until either ends, then clears the other side.
async fn run_call(
    handle: &TunnelHandle,
    session: u16,
    rx: &mut SessionRx,
    dev: &mut Taken,
    mode: CallMode,
) -> After {
    info!(device = dev.name, session, "call connected");
    let (tty, initial) = dev.dte.data();
    let end = bridge(&mut Stream(tty), initial, handle, session, rx, mode, true).await;
    info!(device = dev.name, session, ?end, "call ended");
    match end {
        End::Remote(_) => After::Online,
        End::Carrier => {
            handle.disconnect(
                session,
                ResultCode::new(CDN_LOST_CARRIER, ERR_NONE, "NO CARRIER"),
            );
            After::Idle
        }
        End::Local => {
            handle.disconnect(
                session,
                ResultCode::new(CDN_LOST_CARRIER, ERR_VENDOR, "modem line closed"),
            );
            After::Unknown
        }
    }
}

async fn armed_call(
    handle: TunnelHandle,
    session: u16,
    line: Option<String>,
    duration: Duration,
    mode: CallMode,
    mut rx: SessionRx,
    shared: Arc<Shared>,
) {
    if let Some(l) = &line {
        if !shared
            .profile
            .devices
            .iter()
            .any(|d| &d.name == l && d.incoming)
        {
            let rc = ResultCode::new(
                CDN_INVALID_DESTINATION,
                ERR_NONE,
                format!("no incoming line {l}"),
            );
            let _ = handle.reply_arm(session, Err(rc)).await;
            return;
        }
    }
    let mut dev = match shared
        .pool
        .take_wait(|d| d.incoming && line.as_ref().is_none_or(|l| *l == d.name))
        .await
    {
        Ok(d) => d,
        Err(rc) => {
            let _ = handle.reply_arm(session, Err(rc)).await;
            return;
        }
    };
    if handle.reply_arm(session, Ok(duration)).await.is_err() {
        return shared.pool.put_back(dev, After::Idle).await;
    }
    info!(device = dev.name, ?duration, "armed for an incoming call");
    let rang = tokio::select! {
        r = dev.dte.wait_ring() => r.is_ok(),
        rc = disconnected(&mut rx) => {
            info!(device = dev.name, %rc, "armed request ended");
            false
        }
    };
    let after = if rang {
        info!(device = dev.name, "ring: routing the call to the client");
        answer_and_run(&handle, session, &mut rx, &mut dev, mode, Some(session)).await
    } else {
        After::Idle
    };
    shared.pool.put_back(dev, after).await;
}

/// ICRQ (tied to `armed` if set), wait for ICRP, answer, ICCN, bridge.
async fn answer_and_run(
    handle: &TunnelHandle,
    session: u16,
    rx: &mut SessionRx,
    dev: &mut Taken,
    mode: CallMode,
    armed: Option<u16>,
) -> After {
    if let Err(e) = handle.place_incoming(None, None, armed).await {
        warn!("ICRQ: {e}");
        return After::Idle;
    }
    let replied = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match rx.recv().await {
                Some(SessionMsg::Event(Event::CallReplied { .. })) => return true,
                Some(SessionMsg::Event(Event::CallDisconnected { .. })) | None => return false,
                Some(_) => {}
            }
        }
    })
    .await
    .unwrap_or(false);
    if !replied {
        info!(device = dev.name, "the LNS did not take the call");
        return After::Idle;
    }
    match dev.dte.answer(Duration::from_secs(30)).await {
        Ok(speed) => {
            if handle
                .connected(session, speed, FRAMING_ASYNC)
                .await
                .is_ok()
            {
                run_call(handle, session, rx, dev, mode).await
            } else {
                After::Online
            }
        }
        Err(e) => {
            handle.disconnect(session, cdn_for(&e));
            after_failure(&e)
        }
    }
}

/// A device whose rings go to a static LNS (no AICRQ needed), as a plain LAC does.
async fn forward_incoming(dte: Dte, name: String, lns: SocketAddr, shared: Arc<Shared>) {
    let mut dev = Taken {
        index: usize::MAX,
        name,
        dial_timeout: Duration::from_secs(60),
        dte,
    };
    loop {
        if dev.dte.wait_ring().await.is_err() {
            warn!(device = dev.name, "modem line failed; forwarding stops");
            return;
        }
        let h = match shared.tunnel_to(lns).await {
            Ok(h) => h,
            Err(e) => {
                warn!(device = dev.name, %lns, "cannot reach the LNS: {e:#}");
                continue;
            }
        };
        let after = match h.place_incoming(None, None, None).await {
            Ok((session, Some(mut rx))) => {
                answer_and_run(&h, session, &mut rx, &mut dev, CallMode::Ppp, None).await
            }
            Ok(_) => After::Idle,
            Err(e) => {
                warn!("ICRQ to {lns}: {e}");
                After::Idle
            }
        };
        settle(&mut dev, after).await;
    }
}
