//! The client (LNS role): tunnels to the resource servers for outgoing and incoming
//! calls, `dial` (OCRQ) and `answer` (AICRQ), calls handed over as byte streams, and
//! the daemon's control socket that `bulkhead l2tp dial|answer` use.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bulkhead_l2tp::{ext, result, CallMode, Event, ResultCode, TunnelError};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::call::{bridge, End};
use crate::driver::{self, AppEvent, SessionMsg, SessionRx, TunnelHandle};
use crate::profile::ClientProfile;

/// Why a call did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{}", describe(.0))]
    Refused(ResultCode),
    #[error("{0}")]
    Tunnel(String),
    #[error("{0}")]
    Protocol(#[from] TunnelError),
    #[error("no answer in time")]
    Timeout,
}

/// A person-readable line for a CDN or AICRP result.
pub fn describe(rc: &ResultCode) -> String {
    let what = match rc.result {
        result::CDN_LOST_CARRIER => "call cleared (carrier lost)",
        result::CDN_ERROR => "call failed (error)",
        result::CDN_ADMIN => "call cleared by the administrator",
        result::CDN_NO_FACILITIES_TEMP => "no device free right now",
        result::CDN_NO_FACILITIES_PERM => "no device for this kind of call",
        result::CDN_INVALID_DESTINATION => "invalid destination",
        result::CDN_NO_CARRIER => "no carrier",
        result::CDN_BUSY => "busy",
        result::CDN_NO_DIALTONE => "no dial tone",
        result::CDN_TIMEOUT => "not established in time",
        result::CDN_NO_FRAMING => "no appropriate framing",
        _ => "call failed",
    };
    match &rc.message {
        Some(m) => format!("{what}: {m} (CDN result {})", rc.result),
        None => format!("{what} (CDN result {})", rc.result),
    }
}

struct Conn {
    handle: TunnelHandle,
    ext: Option<u32>,
    alive: Arc<AtomicBool>,
}

/// The client: one lazily opened tunnel per resource server.
pub struct Client {
    profile: ClientProfile,
    out: Mutex<Option<Conn>>,
    inc: Mutex<Option<Conn>>,
}

/// A connected call.
pub struct Call {
    pub session: u16,
    pub mode: CallMode,
    pub speed: u32,
    handle: TunnelHandle,
    rx: SessionRx,
}

/// An accepted AICRQ waiting for its call.
pub struct Armed {
    pub session: u16,
    /// The mode asked for; the LAC's ICCN confirms it.
    pub mode: CallMode,
    handle: TunnelHandle,
    rx: SessionRx,
}

impl Client {
    pub fn new(profile: ClientProfile) -> Arc<Client> {
        Arc::new(Client {
            profile,
            out: Mutex::new(None),
            inc: Mutex::new(None),
        })
    }

    fn config(&self) -> bulkhead_l2tp::Config {
        bulkhead_l2tp::Config {
            host_name: self.profile.hostname.clone(),
            secret: self.profile.secret.as_ref().map(|s| s.as_bytes().to_vec()),
            extension: Some(self.profile.vendor_id),
            hello_interval: Duration::from_secs(self.profile.hello_interval),
            hide_avps: self.profile.hide_avps,
            ..bulkhead_l2tp::Config::default()
        }
    }

    async fn conn(&self, incoming: bool) -> Result<(TunnelHandle, Option<u32>), CallError> {
        let (slot, server) = if incoming {
            (&self.inc, self.profile.incoming)
        } else {
            (&self.out, self.profile.outgoing)
        };
        let server: SocketAddr = server.ok_or_else(|| {
            CallError::Tunnel(format!(
                "the profile names no resource server for {} calls",
                if incoming { "incoming" } else { "outgoing" }
            ))
        })?;
        let mut g = slot.lock().await;
        if let Some(c) = g.as_ref() {
            if c.alive.load(Ordering::Acquire) {
                return Ok((c.handle.clone(), c.ext));
            }
        }
        let (handle, mut events, first) =
            driver::connect(self.config(), server, Duration::from_secs(40))
                .await
                .map_err(|e| CallError::Tunnel(format!("{e:#}")))?;
        let ext = match first {
            Event::Connected {
                peer_extension,
                peer_host,
                ..
            } => {
                info!(%server, peer = peer_host, ?peer_extension, "tunnel up");
                peer_extension
            }
            _ => None,
        };
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        let h2 = handle.clone();
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                match e {
                    AppEvent::Tunnel(Event::Closed { .. }) => flag.store(false, Ordering::Release),
                    // We are no LAC, and take incoming calls only when armed: refuse.
                    AppEvent::Request(Event::OutgoingCallRequest { session, .. }, _)
                    | AppEvent::Request(Event::ArmRequest { session, .. }, _)
                    | AppEvent::Request(Event::IncomingCallRequest { session, .. }, _) => {
                        h2.disconnect(
                            session,
                            ResultCode::new(
                                result::CDN_NO_FACILITIES_PERM,
                                0,
                                "this client takes no such request",
                            ),
                        );
                    }
                    _ => {}
                }
            }
            flag.store(false, Ordering::Release);
        });
        *g = Some(Conn {
            handle: handle.clone(),
            ext,
            alive,
        });
        Ok((handle, ext))
    }

    fn pick_mode(mode: Option<CallMode>, ext: Option<u32>) -> CallMode {
        mode.unwrap_or(if ext.is_some_and(|c| c & ext::CAP_RAW != 0) {
            CallMode::Raw
        } else {
            CallMode::Ppp
        })
    }

    /// Dials a directory name or a number through the outgoing resource server.
    pub async fn dial(
        &self,
        target: &str,
        mode: Option<CallMode>,
        wait: Duration,
    ) -> Result<Call, CallError> {
        let number = self
            .profile
            .directory
            .get(target)
            .cloned()
            .unwrap_or_else(|| target.to_string());
        let (handle, ext) = self.conn(false).await?;
        let mode = Self::pick_mode(mode, ext);
        let (session, mut rx) = handle.place_outgoing(&number, mode).await?;
        match tokio::time::timeout(wait, established(&mut rx)).await {
            Ok(Ok((mode, speed))) => Ok(Call {
                session,
                mode,
                speed,
                handle,
                rx,
            }),
            Ok(Err(rc)) => Err(CallError::Refused(rc)),
            Err(_) => {
                handle.disconnect(
                    session,
                    ResultCode::new(result::CDN_ADMIN, 0, "dial timed out"),
                );
                Err(CallError::Timeout)
            }
        }
    }

    /// Arms the incoming resource server (AICRQ) for `duration`.
    pub async fn answer(
        &self,
        line: Option<&str>,
        duration: Duration,
        mode: Option<CallMode>,
    ) -> Result<Armed, CallError> {
        let (handle, ext) = self.conn(true).await?;
        if ext.is_none_or(|c| c & ext::CAP_AICRQ == 0) {
            return Err(CallError::Tunnel(
                "the incoming resource server does not support answer mode (AICRQ)".into(),
            ));
        }
        let mode = Self::pick_mode(mode, ext);
        let (session, mut rx) = handle.arm(line, duration, mode).await?;
        loop {
            match rx.recv().await {
                Some(SessionMsg::Event(Event::ArmReply { result: Ok(()), .. })) => {
                    return Ok(Armed {
                        session,
                        mode,
                        handle,
                        rx,
                    })
                }
                Some(SessionMsg::Event(Event::ArmReply {
                    result: Err(rc), ..
                })) => return Err(CallError::Refused(rc)),
                Some(SessionMsg::Event(Event::CallDisconnected { result, .. })) => {
                    return Err(CallError::Refused(result))
                }
                Some(_) => {}
                None => return Err(CallError::Tunnel("tunnel closed".into())),
            }
        }
    }
}

async fn established(rx: &mut SessionRx) -> Result<(CallMode, u32), ResultCode> {
    loop {
        match rx.recv().await {
            Some(SessionMsg::Event(Event::CallEstablished { mode, tx_speed, .. })) => {
                return Ok((mode, tx_speed))
            }
            Some(SessionMsg::Event(Event::CallDisconnected { result, .. })) => return Err(result),
            Some(_) => {}
            None => {
                return Err(ResultCode::new(
                    result::CDN_LOST_CARRIER,
                    1,
                    "tunnel closed",
                ))
            }
        }
    }
}

impl Armed {
    /// Waits for the ring routed back as ICRQ, accepts it (ICRP) and waits for ICCN.
    pub async fn wait_call(mut self) -> Result<Call, CallError> {
        loop {
            match self.rx.recv().await {
                Some(SessionMsg::Event(Event::IncomingCallRequest { armed: true, .. })) => {
                    self.handle.accept(self.session).await?;
                    let (mode, speed) = established(&mut self.rx)
                        .await
                        .map_err(CallError::Refused)?;
                    return Ok(Call {
                        session: self.session,
                        mode,
                        speed,
                        handle: self.handle,
                        rx: self.rx,
                    });
                }
                Some(SessionMsg::Event(Event::CallDisconnected { result, .. })) => {
                    return Err(CallError::Refused(result))
                }
                Some(_) => {}
                None => return Err(CallError::Tunnel("tunnel closed".into())),
            }
        }
    }

    /// Cancels the armed request (CDN).
    pub fn cancel(self) {
        self.handle.disconnect(
            self.session,
            ResultCode::new(result::CDN_ADMIN, 0, "cancelled"),
        );
    }
}

impl Call {
    /// Carries the call over `stream` until either side ends it. In PPP mode the
    /// stream carries async HDLC (what pppd writes on a tty).
    pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(mut self, stream: &mut S) -> End {
        let end = bridge(
            stream,
            Vec::new(),
            &self.handle,
            self.session,
            &mut self.rx,
            self.mode,
            false,
        )
        .await;
        if !matches!(end, End::Remote(_)) {
            self.handle.disconnect(
                self.session,
                ResultCode::new(result::CDN_ADMIN, 0, "hung up by the client"),
            );
        }
        end
    }

    /// Hands the call over as an in-process byte stream.
    pub fn into_stream(self) -> tokio::io::DuplexStream {
        let (mine, theirs) = tokio::io::duplex(256 * 1024);
        tokio::spawn(async move {
            let mut mine = mine;
            self.run(&mut mine).await;
        });
        theirs
    }
}

fn mode_name(m: CallMode) -> &'static str {
    match m {
        CallMode::Ppp => "ppp",
        CallMode::Raw => "raw",
    }
}

/// Parses `raw`, `ppp` or `auto`.
pub fn parse_mode(s: &str) -> Result<Option<CallMode>, String> {
    match s {
        "raw" => Ok(Some(CallMode::Raw)),
        "ppp" => Ok(Some(CallMode::Ppp)),
        "auto" => Ok(None),
        _ => Err(format!("{s:?}: expected raw, ppp or auto")),
    }
}

/// Serves `DIAL` and `ANSWER` requests on the control socket until the process ends.
/// Protocol: one request line, `DIAL <target> <mode>` or `ANSWER <line|*> <seconds> <mode>`;
/// replies `ARMED` (answer only), then `CONNECTED <mode> <speed>` followed by the call's
/// bytes both ways, or `ERROR <text>`.
pub async fn serve_control(client: Arc<Client>, path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    // Only the owner may place calls.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    info!(path = %path.display(), "control socket ready");
    loop {
        let (stream, _) = listener.accept().await?;
        let c = client.clone();
        tokio::spawn(async move {
            if let Err(e) = control_session(c, stream).await {
                warn!("control session: {e:#}");
            }
        });
    }
}

async fn control_session(client: Arc<Client>, stream: UnixStream) -> anyhow::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let call = match words.as_slice() {
        ["DIAL", target, mode] => {
            let mode = parse_mode(mode).map_err(anyhow::Error::msg)?;
            client.dial(target, mode, Duration::from_secs(180)).await
        }
        ["ANSWER", line, secs, mode] => {
            let mode = parse_mode(mode).map_err(anyhow::Error::msg)?;
            let line = (*line != "*").then_some(*line);
            match client
                .answer(line, Duration::from_secs(secs.parse()?), mode)
                .await
            {
                Ok(armed) => {
                    stream.get_mut().write_all(b"ARMED\n").await?;
                    let (handle, session) = (armed.handle.clone(), armed.session);
                    tokio::select! {
                        r = armed.wait_call() => r,
                        _ = peer_gone(stream.get_mut()) => {
                            // `bulkhead l2tp answer` was stopped: cancel the armed request.
                            handle.disconnect(session, ResultCode::new(result::CDN_ADMIN, 0, "cancelled"));
                            return Ok(());
                        }
                    }
                }
                Err(e) => Err(e),
            }
        }
        _ => {
            stream.get_mut().write_all(b"ERROR bad request\n").await?;
            return Ok(());
        }
    };
    match call {
        Ok(call) => {
            stream
                .get_mut()
                .write_all(
                    format!("CONNECTED {} {}\n", mode_name(call.mode), call.speed).as_bytes(),
                )
                .await?;
            let leftover = stream.buffer().to_vec();
            let mut s = stream.into_inner();
            // Bytes sent before CONNECTED arrived (raw calls only; PPP needs framing).
            if !leftover.is_empty() && call.mode == CallMode::Raw {
                call.handle.send_data(call.session, leftover);
            }
            let end = call.run(&mut s).await;
            info!(?end, "call over");
        }
        Err(e) => {
            stream
                .get_mut()
                .write_all(format!("ERROR {e}\n").as_bytes())
                .await?;
        }
    }
    Ok(())
}

/// Resolves when the control connection's peer has closed it (bytes sent before the
/// call is connected are discarded).
async fn peer_gone(s: &mut UnixStream) {
    let mut b = [0u8; 256];
    while let Ok(n) = tokio::io::AsyncReadExt::read(s, &mut b).await {
        if n == 0 {
            return;
        }
    }
}
