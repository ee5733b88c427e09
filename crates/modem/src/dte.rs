//! The DTE side: drives a Hayes modem over a serial line (a real tty or the model's
//! PTY): reset, dial, wait for RING, answer, hang up, then hands over the data stream.
//!
//! Every command waits for its own final result, and a command is only sent to a modem
//! known to be in step: after a hang-up or anything unexpected the line is drained and
//! `AT` must be answered `OK` first, so an old reply is never read as a new one.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::hayes::Code;
use crate::tty::AsyncTty;

/// Settings the DTE relies on: no echo, verbose results with speeds, DTR drop hangs up
/// (&D2), no auto-answer, short escape guard (0.1 s) for modems that ignore DTR.
const SETUP: &str = "E0V1Q0X4&D2S0=0S12=5";
/// How long a modem has to say it hung up after DTR drops; one that says nothing is
/// then asked with `AT`, and one still online is escaped with `+++`.
const DTR_WAIT: Duration = Duration::from_secs(1);
/// How long `AT` may take to be answered.
const SYNC_WAIT: Duration = Duration::from_secs(2);
/// Silence that ends a drain of a line whose state is unknown.
const QUIET: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum DteError {
    #[error("serial line: {0}")]
    Io(#[from] std::io::Error),
    #[error("modem did not answer {0:?} in time")]
    Timeout(String),
    #[error("modem said {0:?}")]
    Result(Code),
}

/// A modem on a serial line, in command mode.
pub struct Dte {
    tty: AsyncTty,
    buf: Vec<u8>,
    /// A command went unanswered: replies may be late, drain until quiet first.
    lost_step: bool,
}

impl Dte {
    pub fn open(path: &Path) -> std::io::Result<Dte> {
        Ok(Dte {
            tty: AsyncTty::open(path)?,
            buf: Vec::new(),
            lost_step: true,
        })
    }

    /// Resets the modem to a known state ([`SETUP`]).
    pub async fn init(&mut self) -> Result<(), DteError> {
        self.lost_step = true;
        self.sync().await?;
        let _ = self.command("Z", Duration::from_secs(5)).await;
        self.sync().await?;
        self.command(SETUP, Duration::from_secs(5)).await?;
        Ok(())
    }

    /// Brings the modem in step: drops what is on the line (all of it until quiet when
    /// a reply may still be on its way), then asks for a register (`ATS7?`). Replies
    /// come in order, and only this probe's reply is a value followed by `OK`: a
    /// late `OK` of an older command, before it, is skipped.
    pub async fn sync(&mut self) -> Result<(), DteError> {
        self.drain().await?;
        // A leading CR ends whatever partial command line the modem holds.
        self.tty.write_all(b"\rATS7?\r").await?;
        let r = tokio::time::timeout(SYNC_WAIT, async {
            let mut value = false;
            loop {
                let line = self.line().await?;
                if !line.is_empty() && line.len() <= 3 && line.bytes().all(|b| b.is_ascii_digit()) {
                    value = true;
                } else if Code::parse(&line) == Some((Code::Ok, None)) && value {
                    return Ok::<_, DteError>(());
                } else {
                    value = false;
                }
            }
        })
        .await;
        match r {
            Ok(r) => {
                self.lost_step = false;
                r
            }
            Err(_) => {
                self.lost_step = true;
                Err(DteError::Timeout("AT".into()))
            }
        }
    }

    async fn drain(&mut self) -> Result<(), DteError> {
        self.buf.clear();
        let mut chunk = [0u8; 512];
        loop {
            match self.tty.try_read(&mut chunk) {
                Ok(n) if n > 0 => continue,
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        if self.lost_step {
            // Late replies: read until the line has been quiet for a while.
            while let Ok(r) = tokio::time::timeout(QUIET, self.tty.read(&mut chunk)).await {
                if r? == 0 {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Sends `AT<cmd>` and waits for its final result: Ok on `OK` or `CONNECT`.
    pub async fn command(
        &mut self,
        cmd: &str,
        wait: Duration,
    ) -> Result<(Code, Option<u32>), DteError> {
        self.tty.write_all(format!("AT{cmd}\r").as_bytes()).await?;
        let (code, speed) = self.final_result(cmd, wait).await?;
        match code {
            Code::Ok | Code::Connect => Ok((code, speed)),
            other => Err(DteError::Result(other)),
        }
    }

    /// Dials; Ok(speed) only on `CONNECT` (a bare `CONNECT` is 300 bit/s, as Hayes
    /// defines it). Any other result, `OK` included, is an error.
    pub async fn dial(&mut self, number: &str, wait: Duration) -> Result<u32, DteError> {
        self.sync().await?;
        self.connect(&format!("DT{number}"), wait).await
    }

    /// Waits for a RING.
    pub async fn wait_ring(&mut self) -> Result<(), DteError> {
        loop {
            let line = self.line().await?;
            if Code::parse(&line) == Some((Code::Ring, None)) {
                return Ok(());
            }
        }
    }

    /// Answers a ringing line; Ok(speed) only on `CONNECT`.
    pub async fn answer(&mut self, wait: Duration) -> Result<u32, DteError> {
        self.connect("A", wait).await
    }

    async fn connect(&mut self, cmd: &str, wait: Duration) -> Result<u32, DteError> {
        match self.command(cmd, wait).await? {
            (Code::Connect, speed) => Ok(speed.unwrap_or(300)),
            (other, _) => {
                // `OK` to a dial is no carrier: the modem may be one step behind.
                self.lost_step = true;
                Err(DteError::Result(other))
            }
        }
    }

    /// Hangs up and returns once the modem is in command mode and in step. DTR drops
    /// first (&D2: the modem hangs up at once and says `NO CARRIER`); a modem that
    /// stays online is escaped with guard time, `+++` and `ATH0`.
    pub async fn hangup(&mut self) -> Result<(), DteError> {
        let saved = self.tty.drop_dtr()?;
        let said = tokio::time::timeout(DTR_WAIT, async {
            loop {
                // Call data still arriving is dropped with the call.
                let line = self.line().await?;
                if matches!(Code::parse(&line), Some((Code::NoCarrier | Code::Ok, None))) {
                    return Ok::<_, DteError>(());
                }
            }
        })
        .await;
        self.tty.restore(&saved)?;
        match said {
            Ok(r) => {
                r?;
                return self.sync().await;
            }
            // Silent on DTR: in command mode already, or ignoring DTR (then `AT` would
            // go to the far end as data): the escape works either way.
            Err(_) => self.escape().await,
        }
    }

    /// The escape sequence with guard time, then `ATH0`.
    async fn escape(&mut self) -> Result<(), DteError> {
        let guard = Duration::from_millis(150);
        tokio::time::sleep(guard).await;
        self.tty.write_all(b"+++").await?;
        let deadline = Instant::now() + guard + Duration::from_secs(1);
        // The escape's own OK, if the modem was online.
        let _ = tokio::time::timeout_at(deadline, async {
            loop {
                let line = self.line().await?;
                if Code::parse(&line) == Some((Code::Ok, None)) {
                    return Ok::<_, DteError>(());
                }
            }
        })
        .await;
        self.lost_step = true;
        self.sync().await?;
        self.command("H0", Duration::from_secs(3)).await?;
        Ok(())
    }

    /// The serial line and any bytes already read past the last result (call data).
    pub fn data(&mut self) -> (&mut AsyncTty, Vec<u8>) {
        (&mut self.tty, std::mem::take(&mut self.buf))
    }

    async fn line(&mut self) -> Result<String, DteError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\r' || *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&line).trim().to_string();
                if !text.is_empty() {
                    return Ok(text);
                }
                continue;
            }
            let mut chunk = [0u8; 512];
            let n = self.tty.read(&mut chunk).await?;
            if n == 0 {
                return Err(DteError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn final_result(
        &mut self,
        cmd: &str,
        wait: Duration,
    ) -> Result<(Code, Option<u32>), DteError> {
        let fut = async {
            loop {
                let line = self.line().await?;
                match Code::parse(&line) {
                    Some((Code::Ring, _)) | None => continue,
                    Some((code, speed)) => {
                        if code == Code::Connect {
                            // A CONNECT line ends at CR LF; drop the LF so data starts clean.
                            if self.buf.first() == Some(&b'\n') {
                                self.buf.remove(0);
                            }
                        }
                        return Ok::<_, DteError>((code, speed));
                    }
                }
            }
        };
        match tokio::time::timeout(wait, fut).await {
            Ok(r) => r,
            Err(_) => {
                // Its result may still come: the next command must not take it.
                self.lost_step = true;
                Err(DteError::Timeout(cmd.to_string()))
            }
        }
    }
}
