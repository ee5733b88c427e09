//! The modem model: a Hayes modem on a PTY whose phone line is TCP. `ATD<number>`
//! connects to the phone book's address; a TCP connection to the listen address rings.
//! Between two modem models the [`phoneline`](crate::phoneline) handshake carries the
//! answer and the busy signal that TCP lacks.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info};

use crate::hayes::{Action, Code, Escape, Hayes};
use crate::phoneline::{self, Caller, Status};
use crate::tty::{AsyncTty, Pty};

/// What a ringing modem keeps of a caller's early bytes; past it the caller waits
/// (TCP backpressure) until the call is answered.
const EARLY_CAP: usize = 4096;
/// The first RING waits up to this long for the caller's first bytes, so that a DTE
/// answering at once still lets a calling modem's preamble arrive before call data.
const RING_SETTLE: Duration = Duration::from_millis(200);
/// How long a caller turned away with BUSY is given to hang up.
const BUSY_LINGER: Duration = Duration::from_secs(5);
/// Callers being turned away at once; more are just disconnected.
const BUSY_TASKS: usize = 32;

/// Where a phone-book number leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A plain TCP service: CONNECT as soon as TCP connects.
    Tcp(String),
    /// Another modem model: CONNECT when it answers, BUSY when its line is in use.
    Modem(String),
    Busy,
    NoAnswer,
    NoDialtone,
}

impl std::str::FromStr for Line {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        let bad = || {
            format!("{s:?}: expected HOST:PORT, modem:HOST:PORT, busy, no-answer or no-dialtone")
        };
        Ok(match lower.as_str() {
            "busy" => Line::Busy,
            "no-answer" => Line::NoAnswer,
            "no-dialtone" => Line::NoDialtone,
            _ if lower.starts_with("modem:") => {
                let addr = &s["modem:".len()..];
                if !addr.contains(':') {
                    return Err(bad());
                }
                Line::Modem(addr.to_string())
            }
            _ if s.contains(':') => Line::Tcp(s.to_string()),
            _ => return Err(bad()),
        })
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Symlink to the PTY slave.
    pub link: PathBuf,
    pub phonebook: HashMap<String, Line>,
    /// Incoming calls: TCP connections here ring.
    pub listen: Option<SocketAddr>,
    /// Reported in CONNECT.
    pub speed: u32,
    /// Time between RINGs.
    pub ring_interval: Duration,
}

/// A call in progress.
struct Call {
    conn: TcpStream,
    /// Answered before the caller's first bytes said whether it is a modem model: those
    /// bytes so far (a strict prefix of the preamble), held until more decide.
    undecided: Option<Vec<u8>>,
}

/// How a dial attempt ended.
enum Dialed {
    /// Call data the far end sent along with its answer comes too.
    Connect(TcpStream, Vec<u8>),
    Fail(Code),
}

type Dialing = Pin<Box<dyn Future<Output = Dialed> + Send>>;

enum State {
    Command,
    /// Waiting for carrier; any DTE input aborts.
    Dialing(Dialing),
    Online(Call),
    /// Escaped to command mode with the call kept.
    Held(Call),
    Ringing {
        conn: TcpStream,
        next: Instant,
        /// What the caller sent before the answer.
        early: Vec<u8>,
    },
}

/// What happened on the phone line.
enum LineEvent {
    Data(std::io::Result<usize>),
    Early(std::io::Result<usize>),
    Dialed(Dialed),
}

/// A modem whose PTY and listener exist; [`Emulator::run`] serves it.
pub struct Emulator {
    modem: Modem,
    listener: Option<TcpListener>,
}

impl Emulator {
    /// Creates the PTY (and its symlink) and binds the listen address.
    pub async fn bind(cfg: Config) -> anyhow::Result<Emulator> {
        let pty = Pty::open()?;
        pty.watch_settings()?;
        pty.link(&cfg.link)?;
        info!(link = %cfg.link.display(), tty = %pty.slave_path.display(), "modem ready");
        let listener = match cfg.listen {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        if let Some(l) = &listener {
            info!(addr = %l.local_addr()?, "answering calls");
        }
        let (tty, slave) = pty.into_parts();
        let modem = Modem {
            cfg,
            tty,
            slave,
            hayes: Hayes::default(),
            state: State::Command,
            escape: Escape::default(),
            rings: 0,
            busy_tasks: Arc::new(Semaphore::new(BUSY_TASKS)),
        };
        Ok(Emulator { modem, listener })
    }

    /// The address that rings the modem.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.modem.run(self.listener).await
    }
}

/// Runs the modem until the process ends.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    Emulator::bind(cfg).await?.run().await
}

struct Modem {
    cfg: Config,
    tty: AsyncTty,
    /// Held open so the master never sees EIO between DTE sessions; its settings
    /// tell whether the DTE holds DTR up.
    slave: std::os::fd::OwnedFd,
    hayes: Hayes,
    state: State,
    escape: Escape,
    rings: u8,
    busy_tasks: Arc<Semaphore>,
}

impl Modem {
    async fn say(&mut self, code: Code, speed: Option<u32>) -> std::io::Result<()> {
        let r = self.hayes.result(code, speed);
        self.tty.write_all(&r).await
    }

    async fn run(mut self, listener: Option<TcpListener>) -> anyhow::Result<()> {
        let mut tbuf = vec![0u8; 16384];
        let mut nbuf = vec![0u8; 16384];
        loop {
            let guard = self.hayes.guard();
            let deadline = match &self.state {
                State::Ringing { next, .. } => Some(*next),
                State::Online(_) => self.escape.deadline(guard),
                _ => None,
            };
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let accept = async {
                match &listener {
                    Some(l) => l.accept().await,
                    None => std::future::pending().await,
                }
            };
            let line = async {
                match &mut self.state {
                    State::Online(call) => LineEvent::Data(call.conn.read(&mut nbuf).await),
                    State::Ringing { conn, early, .. } if early.len() < EARLY_CAP => {
                        let room = (EARLY_CAP - early.len()).min(nbuf.len());
                        LineEvent::Early(conn.read(&mut nbuf[..room]).await)
                    }
                    State::Dialing(call) => LineEvent::Dialed(call.as_mut().await),
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                r = self.tty.read(&mut tbuf) => {
                    let n = r?;
                    if n == 0 {
                        // No slave user right now; the slave is held open, so this is rare.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    // Packet mode: a status byte first; non-zero = the settings changed.
                    if tbuf[0] != 0 {
                        self.on_settings().await?;
                    }
                    if n > 1 {
                        self.on_dte_input(&tbuf[1..n]).await?;
                    }
                }
                ev = line => match ev {
                    LineEvent::Data(r) => self.on_line_data(r, &nbuf).await?,
                    LineEvent::Early(r) => self.on_early(r, &nbuf),
                    LineEvent::Dialed(d) => self.on_dialed(d).await?,
                },
                r = accept => {
                    let (conn, peer) = r?;
                    if matches!(self.state, State::Command) {
                        info!(%peer, "incoming call: ringing");
                        self.rings = 0;
                        self.state = State::Ringing {
                            conn,
                            next: Instant::now() + RING_SETTLE,
                            early: Vec::new(),
                        };
                    } else {
                        info!(%peer, "incoming call while the line is in use: busy");
                        self.turn_away(conn);
                    }
                }
                _ = sleep => self.on_timer().await?,
            }
        }
    }

    /// The DTE changed the line's settings: a DTR drop (B0) acts as `&D` says.
    async fn on_settings(&mut self) -> anyhow::Result<()> {
        if !crate::tty::dtr_dropped(&self.slave)? || self.hayes.dtr == 0 {
            return Ok(());
        }
        match std::mem::replace(&mut self.state, State::Command) {
            State::Online(call) if self.hayes.dtr == 1 => {
                info!("DTR dropped: command mode, call kept");
                self.state = State::Held(call);
                self.escape = Escape::default();
                self.say(Code::Ok, None).await?;
            }
            s @ (State::Online(_) | State::Held(_) | State::Dialing(_)) if self.hayes.dtr >= 2 => {
                info!("DTR dropped: hanging up");
                // Dropping the call's connection (or the dial) hangs up.
                drop(s);
                self.escape = Escape::default();
                if self.hayes.dtr == 3 {
                    self.hayes = Hayes::default();
                }
                self.say(Code::NoCarrier, None).await?;
            }
            s => self.state = s,
        }
        Ok(())
    }

    /// One call at a time: a new caller hears BUSY and is hung up on, without holding
    /// up the modem.
    fn turn_away(&self, mut conn: TcpStream) {
        let Ok(permit) = self.busy_tasks.clone().try_acquire_owned() else {
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(BUSY_LINGER, async {
                conn.write_all(phoneline::BUSY).await?;
                conn.shutdown().await?;
                // Read what the caller sent (a modem's preamble) until it hangs up:
                // closing with unread bytes would reset the connection, and a reset
                // may discard BUSY before the caller reads it.
                let mut sink = [0u8; 512];
                while conn.read(&mut sink).await? > 0 {}
                Ok::<_, std::io::Error>(())
            })
            .await;
        });
    }

    async fn on_line_data(&mut self, r: std::io::Result<usize>, nbuf: &[u8]) -> anyhow::Result<()> {
        let n = match r {
            Ok(n) if n > 0 => n,
            _ => {
                debug!("remote hung up");
                if let State::Online(Call {
                    undecided: Some(held),
                    ..
                }) = std::mem::replace(&mut self.state, State::Command)
                {
                    // A plain caller that sent a few bytes and left: they are its data.
                    self.tty.write_all(&held).await?;
                }
                return Ok(self.say(Code::NoCarrier, None).await?);
            }
        };
        let State::Online(call) = &mut self.state else {
            return Ok(());
        };
        let Some(mut early) = call.undecided.take() else {
            return Ok(self.tty.write_all(&nbuf[..n]).await?);
        };
        early.extend_from_slice(&nbuf[..n]);
        match sort_caller(&mut call.conn, early).await {
            Ok(Sorted::Data(d)) => self.tty.write_all(&d).await?,
            Ok(Sorted::Undecided(e)) => call.undecided = Some(e),
            Err(_) => {
                self.state = State::Command;
                self.say(Code::NoCarrier, None).await?;
            }
        }
        Ok(())
    }

    fn on_early(&mut self, r: std::io::Result<usize>, nbuf: &[u8]) {
        let State::Ringing { early, next, .. } = &mut self.state else {
            return;
        };
        match r {
            Ok(n) if n > 0 => {
                early.extend_from_slice(&nbuf[..n]);
                if self.rings == 0 && phoneline::classify(early) != Caller::Undecided {
                    // The caller is known: no need to wait before the first RING.
                    *next = Instant::now();
                }
            }
            _ => {
                // Ringing stops; S1 clears, as when a real line stops ringing.
                info!("the caller hung up while ringing");
                self.state = State::Command;
                self.rings = 0;
                self.hayes.s[1] = 0;
            }
        }
    }

    async fn on_dialed(&mut self, d: Dialed) -> anyhow::Result<()> {
        match d {
            Dialed::Connect(conn, data) => self.go_online(conn, None, &data).await?,
            Dialed::Fail(code) => {
                self.state = State::Command;
                self.say(code, None).await?;
            }
        }
        Ok(())
    }

    /// Goes off hook for a ringing caller.
    async fn answer(&mut self, mut conn: TcpStream, mut early: Vec<u8>) -> anyhow::Result<()> {
        // Whatever the caller sent that the loop has not read yet counts too.
        let mut chunk = [0u8; 512];
        while early.len() < EARLY_CAP {
            match conn.try_read(&mut chunk) {
                Ok(n) if n > 0 => early.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        debug!(caller = ?phoneline::classify(&early), "answering");
        let (undecided, data) = match sort_caller(&mut conn, early).await {
            Ok(Sorted::Data(d)) => (None, d),
            Ok(Sorted::Undecided(e)) => (Some(e), Vec::new()),
            Err(_) => {
                self.state = State::Command;
                return Ok(self.say(Code::NoCarrier, None).await?);
            }
        };
        self.go_online(conn, undecided, &data).await
    }

    /// Carrier: CONNECT, then the call data that came with it.
    async fn go_online(
        &mut self,
        conn: TcpStream,
        undecided: Option<Vec<u8>>,
        data: &[u8],
    ) -> anyhow::Result<()> {
        self.state = State::Online(Call { conn, undecided });
        self.escape = Escape::default();
        let speed = self.cfg.speed;
        self.say(Code::Connect, Some(speed)).await?;
        if !data.is_empty() {
            self.tty.write_all(data).await?;
        }
        Ok(())
    }

    async fn on_timer(&mut self) -> anyhow::Result<()> {
        let guard = self.hayes.guard();
        match std::mem::replace(&mut self.state, State::Command) {
            State::Ringing { conn, early, .. } => {
                self.rings = self.rings.saturating_add(1);
                self.hayes.s[1] = self.rings;
                self.say(Code::Ring, None).await?;
                let auto = self.hayes.auto_answer();
                if auto > 0 && self.rings >= auto {
                    self.answer(conn, early).await?;
                } else {
                    self.state = State::Ringing {
                        conn,
                        next: Instant::now() + self.cfg.ring_interval,
                        early,
                    };
                }
            }
            State::Online(call) => {
                if self.escape.check(Instant::now(), guard) {
                    self.state = State::Held(call);
                    self.say(Code::Ok, None).await?;
                } else {
                    self.state = State::Online(call);
                }
            }
            s => self.state = s,
        }
        Ok(())
    }

    async fn on_dte_input(&mut self, data: &[u8]) -> anyhow::Result<()> {
        match &mut self.state {
            State::Online(call) => {
                let (esc, guard) = (self.hayes.s[2], self.hayes.guard());
                let out = self.escape.feed(Instant::now(), data, esc, guard);
                if !out.is_empty() && call.conn.write_all(&out).await.is_err() {
                    self.state = State::Command;
                    self.say(Code::NoCarrier, None).await?;
                }
                return Ok(());
            }
            State::Dialing(_) => {
                // As on a real modem, a key pressed while dialing aborts the call.
                info!("dial aborted by the DTE");
                self.state = State::Command;
                return Ok(self.say(Code::NoCarrier, None).await?);
            }
            _ => {}
        }
        for action in self.hayes.feed(data) {
            match action {
                Action::Write(w) => self.tty.write_all(&w).await?,
                Action::Dial(number) => self.dial(&number).await?,
                Action::Answer => match std::mem::replace(&mut self.state, State::Command) {
                    State::Ringing { conn, early, .. } => self.answer(conn, early).await?,
                    s => {
                        self.state = s;
                        self.say(Code::NoCarrier, None).await?;
                    }
                },
                Action::Hangup | Action::Reset => {
                    // Dropping the connection hangs up (or abandons a dial).
                    self.state = State::Command;
                    self.escape = Escape::default();
                }
                Action::Online => match std::mem::replace(&mut self.state, State::Command) {
                    State::Held(call) => {
                        self.state = State::Online(call);
                        let speed = self.cfg.speed;
                        self.say(Code::Connect, Some(speed)).await?;
                    }
                    s => {
                        self.state = s;
                        self.say(Code::NoCarrier, None).await?;
                    }
                },
            }
        }
        Ok(())
    }

    /// Starts a dial; the main loop waits for carrier (S7 seconds).
    async fn dial(&mut self, number: &str) -> anyhow::Result<()> {
        if !matches!(self.state, State::Command) {
            return Ok(self.say(Code::Error, None).await?);
        }
        let line = match self.cfg.phonebook.get(number) {
            Some(l) => l.clone(),
            // Dialled directly: HOST:PORT or modem:HOST:PORT.
            None if number.contains(':') => number.parse().unwrap_or(Line::Tcp(String::new())),
            None => Line::Tcp(String::new()),
        };
        info!(number, ?line, "dialing");
        let wait = Duration::from_secs(self.hayes.s[7].max(1) as u64);
        let call: Dialing = match line {
            Line::Busy => return Ok(self.say(Code::Busy, None).await?),
            Line::NoAnswer => return Ok(self.say(Code::NoAnswer, None).await?),
            Line::NoDialtone => return Ok(self.say(Code::NoDialtone, None).await?),
            Line::Tcp(addr) if addr.is_empty() => {
                return Ok(self.say(Code::NoCarrier, None).await?)
            }
            Line::Tcp(addr) => Box::pin(call_tcp(addr, wait)),
            Line::Modem(addr) => Box::pin(call_modem(addr, wait)),
        };
        self.state = State::Dialing(call);
        Ok(())
    }
}

enum Sorted {
    /// The caller is known (a modem caller has been answered): this is its call data.
    Data(Vec<u8>),
    Undecided(Vec<u8>),
}

/// Tells a modem caller from a plain one by its first bytes, and answers a modem.
async fn sort_caller(conn: &mut TcpStream, early: Vec<u8>) -> std::io::Result<Sorted> {
    match phoneline::classify(&early) {
        Caller::Modem { data_at } => {
            conn.write_all(phoneline::ANSWER).await?;
            Ok(Sorted::Data(early[data_at..].to_vec()))
        }
        Caller::Plain => Ok(Sorted::Data(early)),
        Caller::Undecided => Ok(Sorted::Undecided(early)),
    }
}

/// A plain TCP service: carrier as soon as TCP connects.
async fn call_tcp(addr: String, wait: Duration) -> Dialed {
    match tokio::time::timeout(wait, TcpStream::connect(&addr)).await {
        Ok(Ok(conn)) => {
            let _ = conn.set_nodelay(true);
            Dialed::Connect(conn, Vec::new())
        }
        Ok(Err(_)) => Dialed::Fail(Code::NoCarrier),
        Err(_) => Dialed::Fail(Code::NoAnswer),
    }
}

/// Another modem model: carrier when it answers the preamble, within `wait` in all.
async fn call_modem(addr: String, wait: Duration) -> Dialed {
    let attempt = async {
        let Ok(mut conn) = TcpStream::connect(&addr).await else {
            return Dialed::Fail(Code::NoCarrier);
        };
        let _ = conn.set_nodelay(true);
        if conn.write_all(phoneline::PREAMBLE).await.is_err() {
            return Dialed::Fail(Code::NoCarrier);
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            match phoneline::status(&buf) {
                Ok(Some((Status::Answer, used))) => {
                    return Dialed::Connect(conn, buf.split_off(used));
                }
                Ok(Some((Status::Busy, _))) => return Dialed::Fail(Code::Busy),
                Ok(None) => {}
                Err(e) => {
                    info!(addr, "far modem: {e}");
                    return Dialed::Fail(Code::NoCarrier);
                }
            }
            match conn.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return Dialed::Fail(Code::NoCarrier),
            }
        }
    };
    tokio::time::timeout(wait, attempt)
        .await
        .unwrap_or(Dialed::Fail(Code::NoAnswer))
}

#[cfg(test)]
mod tests {
    use super::Line;

    #[test]
    fn phone_book_targets() {
        let ok = |s: &str| s.parse::<Line>().unwrap();
        assert_eq!(ok("127.0.0.1:7"), Line::Tcp("127.0.0.1:7".into()));
        assert_eq!(ok("modem:127.0.0.1:7"), Line::Modem("127.0.0.1:7".into()));
        assert_eq!(ok("MODEM:host:7"), Line::Modem("host:7".into()));
        assert_eq!(ok("Busy"), Line::Busy);
        assert_eq!(ok("no-answer"), Line::NoAnswer);
        assert_eq!(ok("no-dialtone"), Line::NoDialtone);
        for bad in ["modem:host", "modem:", "5551234", ""] {
            let e = bad.parse::<Line>().unwrap_err();
            assert!(e.contains("modem:HOST:PORT"), "{e}");
        }
    }
}
