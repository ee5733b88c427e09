//! Moving a connected call's bytes between a byte stream (a modem line, a PTY, a
//! socket) and its L2TP session, with the call's framing: PPP calls carry async HDLC on
//! the stream and PPP frames in the tunnel (RFC 1662 ↔ RFC 2661); raw calls carry the
//! bytes unchanged.

use bulkhead_l2tp::hdlc;
use bulkhead_l2tp::{CallMode, Event, ResultCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::driver::{SessionMsg, SessionRx, TunnelHandle};

/// Largest payload put in one data message for raw calls (fits a 1500-byte MTU).
pub const RAW_CHUNK: usize = 1400;

/// Why a bridged call ended.
#[derive(Debug)]
pub enum End {
    /// The stream side closed or failed.
    Local,
    /// The modem reported NO CARRIER.
    Carrier,
    /// The peer cleared the call (CDN) or the tunnel went away.
    Remote(ResultCode),
}

/// Pumps bytes both ways until one side ends. `initial` is stream data already read.
/// With `watch_carrier`, a `NO CARRIER` result at the end of a read ends the call
/// (what a modem says when the far end hangs up).
pub async fn bridge<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
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
    let mut carrier_lost = false;
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
                        handle.send_data(session, f);
                    }
                }
            }
        }
        if carrier_lost {
            return End::Carrier;
        }
        tokio::select! {
            r = stream.read(&mut buf) => {
                let n = match r {
                    Ok(0) | Err(_) => return End::Local,
                    Ok(n) => n,
                };
                let data = &buf[..n];
                if watch_carrier && ends_with_no_carrier(data) {
                    let keep = data.len() - trailing_result_len(data);
                    pending.extend_from_slice(&data[..keep]);
                    // Send what came before the result, then end.
                    carrier_lost = true;
                    continue;
                }
                pending.extend_from_slice(data);
            }
            m = rx.recv() => match m {
                Some(SessionMsg::Data(p)) => {
                    let w = match mode {
                        CallMode::Raw => stream.write_all(&p).await,
                        CallMode::Ppp => {
                            out.clear();
                            hdlc::encode(&p, accm, &mut out);
                            stream.write_all(&out).await
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
            }
        }
    }
}

const NO_CARRIER: &[u8] = b"NO CARRIER";

fn ends_with_no_carrier(d: &[u8]) -> bool {
    let t = trim_end(d);
    t.ends_with(NO_CARRIER) && {
        let before = &t[..t.len() - NO_CARRIER.len()];
        before.is_empty() || before.ends_with(b"\n") || before.ends_with(b"\r")
    }
}

fn trailing_result_len(d: &[u8]) -> usize {
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
    }
}
