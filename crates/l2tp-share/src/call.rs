//! Moving a connected call's bytes between the user's side (a modem line, a PTY, a
//! socket, the control connection) and its L2TP session, with the call's framing: PPP
//! calls carry async HDLC on the stream and PPP frames in the tunnel (RFC 1662 ↔ RFC
//! 2661); raw calls carry the bytes unchanged.

use std::future::Future;
use std::time::Duration;

use bulkhead_l2tp::hdlc;
use bulkhead_l2tp::{CallMode, Event, ResultCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::driver::{SessionMsg, SessionRx, TunnelHandle};

/// Largest payload put in one data message for raw calls (fits a 1500-byte MTU).
pub const RAW_CHUNK: usize = 1400;

/// After the user's end of input, the call stays up for the far end's answer until
/// the far end has been quiet this long...
pub const LINGER_QUIET: Duration = Duration::from_secs(1);
/// ...and at most this long in all; then the call is hung up.
pub const LINGER_MAX: Duration = Duration::from_secs(10);

/// Why a bridged call ended.
#[derive(Debug)]
pub enum End {
    /// The user's side hung up, closed or failed (or its end of input was followed
    /// by the far end's silence).
    Local,
    /// The modem reported NO CARRIER.
    Carrier,
    /// The peer cleared the call (CDN) or the tunnel went away.
    Remote(ResultCode),
}

/// What the user's side gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// `n` bytes in the buffer.
    Data(usize),
    /// No more input, but the call's answer is still wanted (a half-close).
    EndOfInput,
    /// Hang up now.
    Closed,
}

/// The user's side of a call. `read` must be cancel-safe (it races the session).
pub trait Local {
    fn read(&mut self, buf: &mut [u8]) -> impl Future<Output = Input> + Send;
    fn write(&mut self, data: &[u8]) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// A plain byte stream: its end is a hang-up.
pub struct Stream<S>(pub S);

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Local for Stream<S> {
    async fn read(&mut self, buf: &mut [u8]) -> Input {
        match self.0.read(buf).await {
            Ok(0) | Err(_) => Input::Closed,
            Ok(n) => Input::Data(n),
        }
    }
    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.0.write_all(data).await
    }
}

/// Pumps bytes both ways until one side ends. `initial` is stream data already read.
/// With `watch_carrier`, a `NO CARRIER` result at the end of a read ends the call
/// (what a modem says when the far end hangs up). After the user's end of input the
/// far end's data still flows, until it has been quiet for [`LINGER_QUIET`] (at most
/// [`LINGER_MAX`]).
pub async fn bridge<L: Local>(
    stream: &mut L,
    initial: Vec<u8>,
    handle: &TunnelHandle,
    session: u16,
    rx: &mut SessionRx,
    mode: CallMode,
    watch_carrier: bool,
) -> End {
    let mut decoder = hdlc::Decoder::default();
    let mut accm = 0xffff_ffffu32;
    let mut buf = vec![0u8; 16384];
    let mut out = Vec::with_capacity(4096);
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut wire = Vec::with_capacity(2048);
    let fast = handle.data_sender(session).await;
    let mut pending = initial;
    // The far end may have hung up before the call got here: its NO CARRIER is then
    // in the bytes read with CONNECT.
    let mut carrier_lost = false;
    if let Some(keep) = watch_carrier.then(|| before_no_carrier(&pending)).flatten() {
        pending.truncate(keep);
        carrier_lost = true;
    }
    // Set at the end of input: (hang up at the latest, hang up when quiet until).
    let mut lingering: Option<(Instant, Instant)> = None;
    loop {
        if !pending.is_empty() {
            // Cut the stream into payloads: raw chunks, or whole PPP frames.
            match mode {
                CallMode::Raw => frames.extend(pending.chunks(RAW_CHUNK).map(<[u8]>::to_vec)),
                CallMode::Ppp => decoder.feed(&pending, |f| frames.push(f.to_vec())),
            }
            pending.clear();
            for f in frames.drain(..) {
                match &fast {
                    Some(d) => {
                        // Awaiting the socket pushes back on the stream; an error (no
                        // route, peer gone) loses the message as a lossy link would.
                        let _ = d.send(&f, &mut wire).await;
                    }
                    None => {
                        // Waits while the tunnel's queue is full: back-pressure.
                        handle.send_data(session, f).await;
                    }
                }
            }
        }
        if carrier_lost {
            return End::Carrier;
        }
        let linger_end = lingering.map(|(max, quiet)| max.min(quiet));
        let linger = async {
            match linger_end {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = stream.read(&mut buf), if lingering.is_none() => {
                let n = match r {
                    Input::Data(n) => n,
                    Input::EndOfInput => {
                        let now = Instant::now();
                        lingering = Some((now + LINGER_MAX, now + LINGER_QUIET));
                        continue;
                    }
                    Input::Closed => return End::Local,
                };
                let data = &buf[..n];
                if let Some(keep) = watch_carrier.then(|| before_no_carrier(data)).flatten() {
                    pending.extend_from_slice(&data[..keep]);
                    // Send what came before the result, then end.
                    carrier_lost = true;
                    continue;
                }
                pending.extend_from_slice(data);
            }
            m = rx.recv() => match m {
                Some(SessionMsg::Data(p)) => {
                    if let Some((_, quiet)) = &mut lingering {
                        *quiet = Instant::now() + LINGER_QUIET;
                    }
                    let w = match mode {
                        CallMode::Raw => stream.write(&p).await,
                        CallMode::Ppp => {
                            out.clear();
                            hdlc::encode(&p, accm, &mut out);
                            stream.write(&out).await
                        }
                    };
                    if w.is_err() {
                        return End::Local;
                    }
                }
                Some(SessionMsg::Event(Event::CallDisconnected { result, .. })) => return End::Remote(result),
                Some(SessionMsg::Event(Event::LinkInfo { send_accm, .. })) => accm = send_accm,
                Some(SessionMsg::Event(_)) => {}
                None => return End::Remote(ResultCode::new(bulkhead_l2tp::result::CDN_LOST_CARRIER, 1, "tunnel gone")),
            },
            _ = linger => return End::Local,
        }
    }
}

const NO_CARRIER: &[u8] = b"NO CARRIER";

/// When `d` (bytes read from a modem) ends with a `NO CARRIER` result: how many bytes
/// before it are call data.
pub fn before_no_carrier(d: &[u8]) -> Option<usize> {
    ends_with_no_carrier(d).then(|| d.len() - trailing_result_len(d))
}

fn ends_with_no_carrier(d: &[u8]) -> bool {
    let t = trim_end(d);
    t.ends_with(NO_CARRIER) && {
        let before = &t[..t.len() - NO_CARRIER.len()];
        before.is_empty() || before.ends_with(b"\n") || before.ends_with(b"\r")
    }
}

fn trailing_result_len(d: &[u8]) -> usize {
    // The exact verbose result: the CR LF before it is the modem's, not call data.
    const RESULT: &[u8] = b"\r\nNO CARRIER\r\n";
    if d.ends_with(RESULT) {
        return RESULT.len();
    }
    let t = trim_end(d);
    let mut start = t.len() - NO_CARRIER.len();
    while start > 0 && matches!(d[start - 1], b'\r' | b'\n') {
        start -= 1;
    }
    d.len() - start
}

fn trim_end(d: &[u8]) -> &[u8] {
    let mut e = d.len();
    while e > 0 && matches!(d[e - 1], b'\r' | b'\n') {
        e -= 1;
    }
    &d[..e]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_carrier_detection() {
        assert!(ends_with_no_carrier(b"\r\nNO CARRIER\r\n"));
        assert!(ends_with_no_carrier(b"data\r\nNO CARRIER\r\n"));
        assert!(!ends_with_no_carrier(b"I said NO CARRIER"));
        let d = b"data\r\nNO CARRIER\r\n";
        assert_eq!(&d[..d.len() - trailing_result_len(d)], b"data");
        let d = b"bye\n\r\nNO CARRIER\r\n";
        assert_eq!(&d[..d.len() - trailing_result_len(d)], b"bye\n");
    }
}
