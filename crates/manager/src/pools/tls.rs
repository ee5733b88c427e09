//! TLS on the pool gateway (`[pool] gateway_cert`/`gateway_key`): the
//! certificate is loaded by `crate::tls` as the API's is; the gateway offers
//! only the protocol's ALPN name. A client that speaks the protocol in plain
//! text to a TLS gateway gets one plain REFUSED saying so, not TLS alerts.

use super::metrics::PoolMetrics;
use super::PoolConfig;
use bulkhead_pool_proto::{Frame, RefuseReason};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// The first byte of a TLS record carrying a handshake (ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;
/// A client has this long to send its first byte and finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Both halves of one gateway connection, plain or TLS.
pub(super) type Halves = (
    Box<dyn AsyncRead + Send + Unpin>,
    Box<dyn AsyncWrite + Send + Unpin>,
);

/// The gateway's acceptor when a certificate is configured.
pub(crate) fn acceptor(cfg: &PoolConfig, data_dir: &Path) -> anyhow::Result<Option<TlsAcceptor>> {
    let pair = match (&cfg.gateway_cert, &cfg.gateway_key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c.as_path(), k.as_path()),
        _ => anyhow::bail!("[pool] gateway_cert and gateway_key go together"),
    };
    // A configured pair: the data directory and names are for a generated one.
    let tls = crate::tls::server(Some(pair), data_dir, &[])?;
    tracing::info!(fingerprint = %tls.fingerprint, certificate = %tls.cert_path.display(), "pool gateway speaks TLS");
    let mut config = (*tls.config).clone();
    config.alpn_protocols = vec![bulkhead_pool_proto::ALPN.to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// The connection's halves: TLS once the handshake is done when `tls` is
/// given. None when the client failed the handshake or spoke plain text to
/// a TLS gateway (refused, counted).
pub(super) async fn accept(
    s: TcpStream,
    tls: Option<&TlsAcceptor>,
    metrics: &PoolMetrics,
) -> Option<Halves> {
    let Some(tls) = tls else {
        let (rd, wr) = s.into_split();
        return Some((Box::new(rd), Box::new(wr)));
    };
    let handshake = async {
        let mut first = [0u8; 1];
        if s.peek(&mut first).await.ok()? == 0 {
            return None;
        }
        if first[0] != TLS_HANDSHAKE {
            refuse_plain(s, metrics).await;
            return None;
        }
        match tls.accept(s).await {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::debug!(error = %e, "gateway TLS handshake failed");
                None
            }
        }
    };
    let t = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .ok()??;
    let (rd, wr) = tokio::io::split(t);
    Some((Box::new(rd), Box::new(wr)))
}

/// Tells a plain-text client (its HELLO starts with a length, not a TLS
/// record) that this gateway wants TLS, in the protocol's own terms.
async fn refuse_plain(mut s: TcpStream, metrics: &PoolMetrics) {
    let reason = RefuseReason::Malformed;
    metrics.refused(reason);
    let mut out = Vec::new();
    let f = Frame::Refused {
        reason,
        message: "this gateway speaks TLS: connect with --ca or --tls-fingerprint".into(),
    };
    if f.encode(&mut out).is_err() || s.write_all(&out).await.is_err() {
        return;
    }
    let _ = s.shutdown().await;
    // Closing with the client's bytes unread would reset the connection and
    // could discard the refusal before the client reads it: read them first
    // (bounded), until the client closes.
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut left = 64 * 1024usize;
        while left > 0 {
            match s.read(&mut sink).await {
                Ok(n) if n > 0 => left = left.saturating_sub(n),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}
