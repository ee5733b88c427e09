//! The DTE side: drives a Hayes modem over a serial line (a real tty or the model's
//! PTY): reset, dial, wait for RING, answer, hang up, then hands over the data stream.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::hayes::Code;
use crate::tty::AsyncTty;

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
}

impl Dte {
    pub fn open(path: &Path) -> std::io::Result<Dte> {
        Ok(Dte {
            tty: AsyncTty::open(path)?,
            buf: Vec::new(),
        })
    }

    /// Resets the modem to a known state: no echo, verbose results, short escape guard
    /// (0.1 s, so hanging up is quick), no auto-answer.
    pub async fn init(&mut self) -> Result<(), DteError> {
        // Whatever was pending (an old call's bytes) goes first.
        self.buf.clear();
        let _ = self.command("Z", Duration::from_secs(5)).await;
        self.buf.clear();
        self.command("E0V1Q0X4S0=0S12=5", Duration::from_secs(5))
            .await?;
        Ok(())
    }

    /// Sends `AT<cmd>` and waits for its final result.
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

    /// Dials; Ok(speed) on CONNECT.
    pub async fn dial(&mut self, number: &str, wait: Duration) -> Result<u32, DteError> {
        let (_, speed) = self.command(&format!("DT{number}"), wait).await?;
        Ok(speed.unwrap_or(0))
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

    /// Answers a ringing line; Ok(speed) on CONNECT.
    pub async fn answer(&mut self, wait: Duration) -> Result<u32, DteError> {
        let (_, speed) = self.command("A", wait).await?;
        Ok(speed.unwrap_or(0))
    }

    /// Escapes to command mode (guard, `+++`, guard) and hangs up.
    pub async fn hangup(&mut self) -> Result<(), DteError> {
        let guard = Duration::from_millis(150);
        tokio::time::sleep(guard).await;
        self.tty.write_all(b"+++").await?;
        tokio::time::sleep(guard).await;
        self.buf.clear();
        // The modem may already be in command mode (remote hung up): ATH works either way.
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
        tokio::time::timeout(wait, fut)
            .await
            .map_err(|_| DteError::Timeout(cmd.to_string()))?
    }
}
