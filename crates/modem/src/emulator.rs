//! The modem model: a Hayes modem on a PTY whose phone line is TCP. `ATD<number>`
//! connects to the phone book's address; a TCP connection to the listen address rings.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

use crate::hayes::{Action, Code, Escape, Hayes};
use crate::tty::{AsyncTty, Pty};

/// Where a phone-book number leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Tcp(String),
    Busy,
    NoAnswer,
    NoDialtone,
}

impl std::str::FromStr for Line {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "busy" => Line::Busy,
            "no-answer" => Line::NoAnswer,
            "no-dialtone" => Line::NoDialtone,
            _ if s.contains(':') => Line::Tcp(s.to_string()),
            _ => {
                return Err(format!(
                    "{s:?}: expected HOST:PORT, busy, no-answer or no-dialtone"
                ))
            }
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

enum State {
    Command,
    Online(TcpStream),
    /// Escaped to command mode with the call kept.
    Held(TcpStream),
    Ringing {
        conn: TcpStream,
        next: Instant,
    },
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
            _slave: slave,
            hayes: Hayes::default(),
            state: State::Command,
            escape: Escape::default(),
            rings: 0,
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
    /// Held open so the master never sees EIO between DTE sessions.
    _slave: std::os::fd::OwnedFd,
    hayes: Hayes,
    state: State,
    escape: Escape,
    rings: u8,
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
            let net_read = async {
                match &mut self.state {
                    State::Online(c) => c.read(&mut nbuf).await,
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
                    self.on_dte_input(&tbuf[..n]).await?;
                }
                r = net_read => {
                    match r {
                        Ok(0) | Err(_) => {
                            debug!("remote hung up");
                            self.state = State::Command;
                            self.say(Code::NoCarrier, None).await?;
                        }
                        Ok(n) => self.tty.write_all(&nbuf[..n]).await?,
                    }
                }
                r = accept => {
                    let (conn, peer) = r?;
                    if matches!(self.state, State::Command) {
                        info!(%peer, "incoming call: ringing");
                        self.rings = 0;
                        self.state = State::Ringing { conn, next: Instant::now() };
                    } else {
                        // One call at a time: the caller hears busy (connection closed).
                        info!(%peer, "incoming call while busy: rejected");
                        drop(conn);
                    }
                }
                _ = sleep => self.on_timer().await?,
            }
        }
    }

    async fn on_timer(&mut self) -> anyhow::Result<()> {
        let guard = self.hayes.guard();
        match std::mem::replace(&mut self.state, State::Command) {
            State::Ringing { conn, .. } => {
                // A caller that gave up while ringing leaves a readable EOF.
                let mut probe = [0u8; 1];
                if matches!(conn.try_read(&mut probe), Ok(0)) {
                    return Ok(());
                }
                self.rings = self.rings.saturating_add(1);
                self.hayes.s[1] = self.rings;
                self.say(Code::Ring, None).await?;
                let auto = self.hayes.auto_answer();
                if auto > 0 && self.rings >= auto {
                    self.state = State::Online(conn);
                    let speed = self.cfg.speed;
                    self.say(Code::Connect, Some(speed)).await?;
                } else {
                    self.state = State::Ringing {
                        conn,
                        next: Instant::now() + self.cfg.ring_interval,
                    };
                }
            }
            State::Online(conn) => {
                if self.escape.check(Instant::now(), guard) {
                    self.state = State::Held(conn);
                    self.say(Code::Ok, None).await?;
                } else {
                    self.state = State::Online(conn);
                }
            }
            s => self.state = s,
        }
        Ok(())
    }

    async fn on_dte_input(&mut self, data: &[u8]) -> anyhow::Result<()> {
        if let State::Online(conn) = &mut self.state {
            let (esc, guard) = (self.hayes.s[2], self.hayes.guard());
            let out = self.escape.feed(Instant::now(), data, esc, guard);
            if !out.is_empty() && conn.write_all(&out).await.is_err() {
                self.state = State::Command;
                self.say(Code::NoCarrier, None).await?;
            }
            return Ok(());
        }
        for action in self.hayes.feed(data) {
            match action {
                Action::Write(w) => self.tty.write_all(&w).await?,
                Action::Dial(number) => self.dial(&number).await?,
                Action::Answer => match std::mem::replace(&mut self.state, State::Command) {
                    State::Ringing { conn, .. } => {
                        self.state = State::Online(conn);
                        let speed = self.cfg.speed;
                        self.say(Code::Connect, Some(speed)).await?;
                    }
                    s => {
                        self.state = s;
                        self.say(Code::NoCarrier, None).await?;
                    }
                },
                Action::Hangup | Action::Reset => {
                    // Dropping the connection hangs up.
                    self.state = State::Command;
                    self.escape = Escape::default();
                }
                Action::Online => match std::mem::replace(&mut self.state, State::Command) {
                    State::Held(conn) => {
                        self.state = State::Online(conn);
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

    async fn dial(&mut self, number: &str) -> anyhow::Result<()> {
        if !matches!(self.state, State::Command) {
            return Ok(self.say(Code::Error, None).await?);
        }
        let line = match self.cfg.phonebook.get(number) {
            Some(l) => l.clone(),
            None if number.contains(':') => Line::Tcp(number.to_string()),
            None => Line::Tcp(String::new()),
        };
        info!(number, ?line, "dialing");
        let code = match line {
            Line::Busy => Code::Busy,
            Line::NoAnswer => Code::NoAnswer,
            Line::NoDialtone => Code::NoDialtone,
            Line::Tcp(addr) if addr.is_empty() => Code::NoCarrier,
            Line::Tcp(addr) => {
                let wait = Duration::from_secs(self.hayes.s[7].max(1) as u64);
                match tokio::time::timeout(wait, TcpStream::connect(&addr)).await {
                    Ok(Ok(conn)) => {
                        conn.set_nodelay(true)?;
                        self.state = State::Online(conn);
                        self.escape = Escape::default();
                        let speed = self.cfg.speed;
                        return Ok(self.say(Code::Connect, Some(speed)).await?);
                    }
                    Ok(Err(_)) => Code::NoCarrier,
                    Err(_) => Code::NoAnswer,
                }
            }
        };
        Ok(self.say(code, None).await?)
    }
}
