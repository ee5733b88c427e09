//! Thin tokio adapter: [`Transport`] moves a [`Connection`]'s bytes over any
//! `AsyncRead + AsyncWrite` (the gateway runs one per accepted socket); [`Client`] is
//! the typed client programs and the CLI use.

use crate::conn::{ConnError, Connection};
use crate::frame::{Allocate, ErrorCode, Frame, RefuseReason, SessionId, MAX_DATA_LEN};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("protocol: {0}")]
    Protocol(#[from] ConnError),
    #[error("refused ({}): {message}", reason.as_str())]
    Refused {
        reason: RefuseReason,
        message: String,
    },
    #[error("session ended by the gateway ({code:?}): {message}")]
    SessionEnded { code: ErrorCode, message: String },
    #[error("peer closed the connection mid-conversation")]
    UnexpectedEof,
    #[error("unexpected {0:?} from the peer")]
    Unexpected(Box<Frame>),
}

/// A connection state machine bound to a byte stream.
pub struct Transport<S> {
    io: S,
    conn: Connection,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Transport<S> {
    pub fn new(io: S, conn: Connection) -> Self {
        Self {
            io,
            conn,
            buf: vec![0; 16 * 1024].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Writes whatever the state machine has queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.conn.has_transmit() {
            let bytes = self.conn.take_transmit();
            self.io.write_all(&bytes).await?;
            self.io.flush().await?;
        }
        Ok(())
    }

    pub async fn send(&mut self, frame: &Frame) -> Result<(), ClientError> {
        self.conn.send(frame)?;
        self.flush().await?;
        Ok(())
    }

    /// The next valid frame from the peer. Errors close the connection; what the
    /// state machine queued in answer (a server's refusal) is written first.
    /// Cancel-safe while it waits for bytes (bytes read are kept in the transport);
    /// a cancel while it writes an automatic answer may cut that answer short.
    pub async fn recv(&mut self) -> Result<Frame, ClientError> {
        loop {
            if self.start < self.end {
                let mut input = &self.buf[self.start..self.end];
                let r = self.conn.recv(&mut input);
                self.start = self.end - input.len();
                self.flush().await?;
                if let Some(f) = r? {
                    return Ok(f);
                }
                continue;
            }
            // Both reset before the read: a recv cancelled during it must not
            // find the frames already returned still marked unread.
            self.start = 0;
            self.end = 0;
            self.end = self.io.read(&mut self.buf).await?;
            if self.end == 0 {
                return Err(ClientError::UnexpectedEof);
            }
        }
    }

    pub fn into_inner(self) -> S {
        self.io
    }
}

/// A gateway client: `connect`, `allocate`, `send`/`recv`, `deallocate`.
pub struct Client<S> {
    t: Transport<S>,
    session: Option<SessionId>,
}

impl Client<TcpStream> {
    pub async fn connect_tcp(addr: impl ToSocketAddrs) -> Result<Self, ClientError> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Self::connect(s).await
    }
}

#[cfg(feature = "tls")]
impl Client<tokio_rustls::client::TlsStream<TcpStream>> {
    /// Connects to a gateway that speaks TLS. `config` says whom to trust (a
    /// CA, a pinned certificate); `server_name` is what the certificate must
    /// name. The protocol's ALPN name is offered. A failed handshake is an
    /// `Io` error and nothing was sent.
    pub async fn connect_tls(
        addr: impl ToSocketAddrs,
        config: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
        server_name: tokio_rustls::rustls::pki_types::ServerName<'static>,
    ) -> Result<Self, ClientError> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let mut config = (*config).clone();
        config.alpn_protocols = vec![crate::ALPN.to_vec()];
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(server_name, s)
            .await?;
        Self::connect(tls).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Says HELLO over `io` and waits for the version the gateway picks.
    pub async fn connect(io: S) -> Result<Self, ClientError> {
        let mut t = Transport::new(io, Connection::client());
        t.flush().await?;
        match t.recv().await? {
            Frame::Welcome { .. } => Ok(Self { t, session: None }),
            other => Err(unexpected(other)),
        }
    }

    /// The open session, if any.
    pub fn session(&self) -> Option<SessionId> {
        self.session
    }

    /// Asks for a partition running `req.program`; a refusal leaves the connection
    /// usable unless its reason is fatal.
    pub async fn allocate(&mut self, req: Allocate) -> Result<SessionId, ClientError> {
        self.t.send(&Frame::Allocate(req)).await?;
        match self.t.recv().await? {
            Frame::Allocated { session } => {
                self.session = Some(session);
                Ok(session)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Sends conversation bytes, split into DATA frames of at most `MAX_DATA_LEN`.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), ClientError> {
        for chunk in data.chunks(MAX_DATA_LEN) {
            self.t.conn.send(&Frame::Data(chunk.to_vec()))?;
        }
        self.t.flush().await?;
        Ok(())
    }

    /// The program's next bytes.
    pub async fn recv(&mut self) -> Result<Vec<u8>, ClientError> {
        match self.t.recv().await? {
            Frame::Data(d) => Ok(d),
            other => Err(self.end(other)),
        }
    }

    /// Deallocates with confirmation: returns, once the program's cleanup is done,
    /// whatever the program still sent after the last `recv`.
    pub async fn deallocate(&mut self) -> Result<Vec<u8>, ClientError> {
        self.t.send(&Frame::Deallocate { confirm: true }).await?;
        let mut tail = Vec::new();
        loop {
            match self.t.recv().await? {
                Frame::Data(d) => tail.extend_from_slice(&d),
                Frame::Confirmed => {
                    self.session = None;
                    return Ok(tail);
                }
                other => return Err(self.end(other)),
            }
        }
    }

    fn end(&mut self, f: Frame) -> ClientError {
        self.session = None;
        unexpected(f)
    }

    pub fn into_inner(self) -> S {
        self.t.into_inner()
    }
}

fn unexpected(f: Frame) -> ClientError {
    match f {
        Frame::Refused { reason, message } => ClientError::Refused { reason, message },
        Frame::Error { code, message } => ClientError::SessionEnded { code, message },
        other => ClientError::Unexpected(Box::new(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_recv_cancelled_while_waiting_replays_nothing() {
        let (near, mut far) = tokio::io::duplex(4096);
        let mut t = Transport::new(near, Connection::client());
        t.flush().await.unwrap();
        let mut out = Vec::new();
        Frame::Welcome { version: 1 }.encode(&mut out).unwrap();
        far.write_all(&out).await.unwrap();
        assert!(matches!(t.recv().await.unwrap(), Frame::Welcome { .. }));
        // Polled once (no bytes: it waits in the read), then dropped.
        tokio::select! {
            biased;
            f = t.recv() => panic!("nothing was sent: {f:?}"),
            _ = std::future::ready(()) => {}
        }
        let mut out = Vec::new();
        Frame::Error {
            code: ErrorCode::Shutdown,
            message: "bye".into(),
        }
        .encode(&mut out)
        .unwrap();
        far.write_all(&out).await.unwrap();
        // The next frame is the new one, not WELCOME again.
        assert!(matches!(t.recv().await.unwrap(), Frame::Error { .. }));
    }
}
