//! The client (LNS role): tunnels to the resource servers for outgoing and incoming
//! calls, `dial` (OCRQ) and `answer` (AICRQ), calls handed over as byte streams, and
//! [`Client::shutdown`] that clears them all (the daemon's control socket is in
//! [`crate::control`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bulkhead_l2tp::{ext, result, CallMode, Event, ResultCode, TunnelError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::call::{bridge, End, Local, Stream};
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
    pub(crate) handle: TunnelHandle,
    rx: SessionRx,
    /// The call has been cleared (by either side): dropping it sends nothing.
    cleared: bool,
}

/// A call dropped without being run (its user went away) is hung up.
impl Drop for Call {
    fn drop(&mut self) {
        if !self.cleared {
            self.handle.disconnect(
                self.session,
                ResultCode::new(result::CDN_ADMIN, 0, "hung up by the client"),
            );
        }
    }
}

/// An accepted AICRQ waiting for its call.
pub struct Armed {
    pub session: u16,
    /// The mode asked for; the LAC's ICCN confirms it.
    pub mode: CallMode,
    pub(crate) handle: TunnelHandle,
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

    /// Clears every call and armed request (CDN) and both tunnels (StopCCN), and
    /// waits (at most `wait`) until the servers have acknowledged it.
    pub async fn shutdown(&self, wait: Duration) {
        let rc = ResultCode::new(result::STOP_SHUTTING_DOWN, 0, "client shutting down");
        let mut handles = Vec::new();
        for slot in [&self.out, &self.inc] {
            if let Some(c) = slot.lock().await.take() {
                if c.alive.load(Ordering::Acquire) {
                    handles.push(c.handle);
                }
            }
        }
        // Both StopCCNs leave now; then wait for their acknowledgements.
        let acked: Vec<_> = handles.iter().map(|h| h.shutdown(rc.clone())).collect();
        let all = async {
            for a in acked {
                a.await;
            }
        };
        if tokio::time::timeout(wait, all).await.is_err() {
            warn!("the resource server did not acknowledge the shutdown in time");
        }
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
                cleared: false,
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
                        cleared: false,
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
    pub async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(self, stream: &mut S) -> End {
        self.run_local(&mut Stream(stream)).await
    }

    /// Carries the call over the user's side `local` until either side ends it; an
    /// end of input ([`Input::EndOfInput`](crate::call::Input)) waits for the far
    /// end's answer first.
    pub async fn run_local<L: Local>(mut self, local: &mut L) -> End {
        let end = bridge(
            local,
            Vec::new(),
            &self.handle,
            self.session,
            &mut self.rx,
            self.mode,
            false,
        )
        .await;
        // Cleared by the peer already; otherwise `drop` hangs up.
        self.cleared = matches!(end, End::Remote(_));
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

pub fn mode_name(m: CallMode) -> &'static str {
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
