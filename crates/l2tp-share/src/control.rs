//! The client daemon's control socket, what `bulkhead l2tp dial|answer` talk to.
//!
//! Protocol: one request line, `DIAL <target> <mode>` or `ANSWER <line|*> <seconds>
//! <mode>`; replies `ARMED` (answer only), then `CONNECTED <mode> <speed>` or
//! `ERROR <text>`. After `CONNECTED` both directions carry frames, `tag(1) length(2,
//! big-endian) payload`, so that the end of a call and its reason travel with the data:
//! up, `D` call data, `E` end of input (the call stays up for the far end's answer,
//! see [`crate::call::LINGER_QUIET`]), `H` hang up; down, `D` call data, then one `X`
//! when the call is over: `L` (this side hung up) or `R` (cleared by the far end or
//! the server) followed by the reason as text. Closing the connection hangs up too.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_l2tp::{result, ResultCode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use crate::call::{End, Input, Local};
use crate::client::{describe, mode_name, parse_mode, Client};

pub const DATA: u8 = b'D';
pub const END_OF_INPUT: u8 = b'E';
pub const HANG_UP: u8 = b'H';
pub const ENDED: u8 = b'X';
/// Largest payload of one frame.
pub const MAX_PAYLOAD: usize = u16::MAX as usize;

/// One frame read from the control connection.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub tag: u8,
    pub payload: &'a [u8],
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown control frame tag {0:#04x}")]
pub struct BadFrame(pub u8);

/// Appends frames carrying `payload` (split at [`MAX_PAYLOAD`]; one empty frame for
/// an empty payload).
pub fn encode(tag: u8, payload: &[u8], out: &mut Vec<u8>) {
    let mut chunks = payload.chunks(MAX_PAYLOAD).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[tag, 0, 0]);
    }
    for c in chunks {
        out.push(tag);
        out.extend_from_slice(&(c.len() as u16).to_be_bytes());
        out.extend_from_slice(c);
    }
}

/// The first frame in `buf` and the bytes it used; `None` until it is complete.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, BadFrame> {
    let Some(&tag) = buf.first() else {
        return Ok(None);
    };
    if ![DATA, END_OF_INPUT, HANG_UP, ENDED].contains(&tag) {
        return Err(BadFrame(tag));
    }
    let Some(len) = buf.get(1..3) else {
        return Ok(None);
    };
    let len = u16::from_be_bytes([len[0], len[1]]) as usize;
    Ok(buf
        .get(3..3 + len)
        .map(|payload| (Frame { tag, payload }, 3 + len)))
}

/// The `X` frame's payload for how a call ended.
pub fn ended(end: &End) -> Vec<u8> {
    match end {
        End::Remote(rc) => format!("R{}", describe(rc)).into_bytes(),
        End::Carrier => format!(
            "R{}",
            describe(&ResultCode::new(result::CDN_LOST_CARRIER, 0, "NO CARRIER"))
        )
        .into_bytes(),
        End::Local => b"Lhung up".to_vec(),
    }
}

/// The daemon's side of a connected call's control connection.
struct Framed {
    s: UnixStream,
    /// Bytes read, not yet decoded.
    inbuf: Vec<u8>,
    /// Call data decoded, not yet handed to the call.
    data: Vec<u8>,
    out: Vec<u8>,
}

impl Local for Framed {
    async fn read(&mut self, buf: &mut [u8]) -> Input {
        loop {
            if !self.data.is_empty() {
                let n = buf.len().min(self.data.len());
                buf[..n].copy_from_slice(&self.data[..n]);
                self.data.drain(..n);
                return Input::Data(n);
            }
            match decode(&self.inbuf) {
                Ok(Some((f, used))) => {
                    let tag = f.tag;
                    if tag == DATA {
                        self.data.extend_from_slice(f.payload);
                    }
                    self.inbuf.drain(..used);
                    match tag {
                        DATA => continue,
                        END_OF_INPUT => return Input::EndOfInput,
                        _ => return Input::Closed,
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    warn!("control connection: {e}: hanging up");
                    return Input::Closed;
                }
            }
            let mut chunk = [0u8; 16384];
            // Cancel-safe: what was read is kept in `inbuf` before the next await.
            match self.s.read(&mut chunk).await {
                Ok(0) | Err(_) => return Input::Closed,
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.out.clear();
        encode(DATA, data, &mut self.out);
        self.s.write_all(&self.out).await
    }
}

/// Serves `DIAL` and `ANSWER` requests on the control socket until `stop` resolves;
/// then clears every call and tunnel ([`Client::shutdown`]) and returns.
pub async fn serve_control(
    client: Arc<Client>,
    path: &Path,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    // Only the owner may place calls.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    info!(path = %path.display(), "control socket ready");
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = &mut stop => break,
        };
        let c = client.clone();
        tokio::spawn(async move {
            if let Err(e) = control_session(c, stream).await {
                warn!("control session: {e:#}");
            }
        });
    }
    info!("stopping: clearing calls and tunnels");
    let _ = std::fs::remove_file(path);
    client.shutdown(Duration::from_secs(5)).await;
    Ok(())
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
            // Frames sent right behind the request line.
            let inbuf = stream.buffer().to_vec();
            let mut framed = Framed {
                s: stream.into_inner(),
                inbuf,
                data: Vec::new(),
                out: Vec::new(),
            };
            let end = call.run_local(&mut framed).await;
            info!(?end, "call over");
            let mut out = Vec::new();
            encode(ENDED, &ended(&end), &mut out);
            // The user may be gone already.
            let _ = framed.s.write_all(&out).await;
            let _ = framed.s.shutdown().await;
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
    while let Ok(n) = s.read(&mut b).await {
        if n == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_wait_for_their_end() {
        let mut out = Vec::new();
        encode(DATA, b"hello", &mut out);
        encode(END_OF_INPUT, b"", &mut out);
        let (f, used) = decode(&out).unwrap().unwrap();
        assert_eq!((f.tag, f.payload, used), (DATA, &b"hello"[..], 8));
        let (f, _) = decode(&out[used..]).unwrap().unwrap();
        assert_eq!((f.tag, f.payload), (END_OF_INPUT, &b""[..]));
        for cut in 0..8 {
            assert_eq!(decode(&out[..cut]).unwrap(), None, "{cut}");
        }
        assert_eq!(decode(b"Z\0\0"), Err(BadFrame(b'Z')));
        let big = vec![7u8; MAX_PAYLOAD + 10];
        let mut out = Vec::new();
        encode(DATA, &big, &mut out);
        let (f, used) = decode(&out).unwrap().unwrap();
        assert_eq!(f.payload.len(), MAX_PAYLOAD);
        assert_eq!(decode(&out[used..]).unwrap().unwrap().0.payload.len(), 10);
    }
}
