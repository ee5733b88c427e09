//! Async QMP client. See the crate README for the entry points.

pub mod proto;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot, watch};

pub use proto::{CommandError, Event, Greeting, QemuVersion};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("connecting to QMP socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("QMP I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP protocol: {0}")]
    Protocol(String),
    #[error("QEMU refused {command}: {} ({})", .error.desc, .error.class)]
    Command {
        command: String,
        error: CommandError,
    },
    #[error("QMP connection closed (QEMU exited?)")]
    Closed,
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error("unexpected reply to {command}: {detail}")]
    Reply { command: String, detail: String },
}

impl QmpError {
    /// QEMU's error class, when QEMU refused a command.
    pub fn class(&self) -> Option<&str> {
        match self {
            QmpError::Command { error, .. } => Some(&error.class),
            _ => None,
        }
    }
}

type Pending = HashMap<u64, oneshot::Sender<Result<Value, CommandError>>>;

struct Inner {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Mutex<Option<Pending>>,
    next_id: AtomicU64,
    events: broadcast::Sender<Event>,
    closed: watch::Receiver<bool>,
    greeting: Greeting,
}

/// A negotiated QMP session. Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct QmpClient {
    inner: Arc<Inner>,
}

/// `query-status` reply.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct StatusInfo {
    pub status: String,
    pub running: bool,
}

impl QmpClient {
    /// Connects, reads the greeting and negotiates capabilities.
    pub async fn connect(path: &Path) -> Result<QmpClient, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        Self::handshake(stream).await
    }

    /// Negotiates over an already connected stream.
    pub async fn handshake(stream: UnixStream) -> Result<QmpClient, QmpError> {
        let (read, writer) = stream.into_split();
        let mut lines = BufReader::new(read);
        let mut line = Vec::new();
        if lines.read_until(b'\n', &mut line).await? == 0 {
            return Err(QmpError::Closed);
        }
        let greeting = match proto::decode(&line) {
            Ok(proto::Message::Greeting(g)) => g,
            Ok(other) => {
                return Err(QmpError::Protocol(format!(
                    "expected greeting, got {other:?}"
                )))
            }
            Err(e) => return Err(QmpError::Protocol(e.to_string())),
        };
        let (events, _) = broadcast::channel(256);
        let (closed_tx, closed) = watch::channel(false);
        let inner = Arc::new(Inner {
            writer: tokio::sync::Mutex::new(writer),
            pending: Mutex::new(Some(HashMap::new())),
            next_id: AtomicU64::new(1),
            events,
            closed,
            greeting,
        });
        tokio::spawn(read_loop(lines, Arc::downgrade(&inner), closed_tx));
        let client = QmpClient { inner };
        client.execute_value("qmp_capabilities", None).await?;
        Ok(client)
    }

    pub fn greeting(&self) -> &Greeting {
        &self.inner.greeting
    }

    /// Runs a command and returns QEMU's `return` value as is.
    pub async fn execute_value(
        &self,
        command: &str,
        args: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.inner.pending.lock().expect("pending lock");
            match pending.as_mut() {
                Some(p) => p.insert(id, tx),
                None => return Err(QmpError::Closed),
            };
        }
        let bytes = proto::encode_command(id, command, args.as_ref());
        tracing::trace!(command, id, "qmp send");
        {
            let mut w = self.inner.writer.lock().await;
            if let Err(e) = w.write_all(&bytes).await {
                self.forget(id);
                return Err(e.into());
            }
        }
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(error)) => Err(QmpError::Command {
                command: command.to_string(),
                error,
            }),
            Err(_) => Err(QmpError::Closed),
        }
    }

    /// Runs a command and decodes its reply into `R`.
    pub async fn execute<R: DeserializeOwned>(
        &self,
        command: &str,
        args: Option<Value>,
    ) -> Result<R, QmpError> {
        let v = self.execute_value(command, args).await?;
        serde_json::from_value(v).map_err(|e| QmpError::Reply {
            command: command.to_string(),
            detail: e.to_string(),
        })
    }

    fn forget(&self, id: u64) {
        if let Some(p) = self.inner.pending.lock().expect("pending lock").as_mut() {
            p.remove(&id);
        }
    }

    /// Subscribes to events. Subscribe before sending the command whose event you
    /// wait for: QEMU may emit it before the command's reply.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// True once QEMU closed the connection.
    pub fn is_closed(&self) -> bool {
        *self.inner.closed.borrow()
    }

    /// Resolves when QEMU closes the connection (normally: it exited).
    pub async fn closed(&self) {
        let mut rx = self.inner.closed.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    pub async fn query_status(&self) -> Result<StatusInfo, QmpError> {
        self.execute("query-status", None).await
    }
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute_value("stop", None).await.map(drop)
    }
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute_value("cont", None).await.map(drop)
    }
    /// Presses the ACPI power button.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute_value("system_powerdown", None).await.map(drop)
    }
    /// Asks QEMU to exit. The connection closes right after the reply.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute_value("quit", None).await {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }
    pub async fn device_add(&self, args: Value) -> Result<(), QmpError> {
        self.execute_value("device_add", Some(args)).await.map(drop)
    }
    pub async fn device_del(&self, id: &str) -> Result<(), QmpError> {
        self.execute_value("device_del", Some(json!({ "id": id })))
            .await
            .map(drop)
    }
    pub async fn blockdev_add(&self, args: Value) -> Result<(), QmpError> {
        self.execute_value("blockdev-add", Some(args))
            .await
            .map(drop)
    }
    pub async fn blockdev_del(&self, node_name: &str) -> Result<(), QmpError> {
        self.execute_value("blockdev-del", Some(json!({ "node-name": node_name })))
            .await
            .map(drop)
    }
    pub async fn human_monitor_command(&self, line: &str) -> Result<String, QmpError> {
        self.execute(
            "human-monitor-command",
            Some(json!({ "command-line": line })),
        )
        .await
    }
}

/// Waits for the next event on `rx` that `matches`, up to `timeout`.
pub async fn wait_event(
    rx: &mut broadcast::Receiver<Event>,
    timeout: Duration,
    what: &str,
    mut matches: impl FnMut(&Event) -> bool,
) -> Result<Event, QmpError> {
    let fut = async {
        loop {
            match rx.recv().await {
                Ok(ev) if matches(&ev) => return Ok(ev),
                Ok(_) => continue,
                // Falling behind drops events we did not care about; go on.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return Err(QmpError::Closed),
            }
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| QmpError::Timeout(timeout, what.to_string()))?
}

async fn read_loop(
    mut lines: BufReader<tokio::net::unix::OwnedReadHalf>,
    inner: std::sync::Weak<Inner>,
    closed: watch::Sender<bool>,
) {
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match lines.read_until(b'\n', &mut line).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "qmp read failed");
                0
            }
        };
        let Some(inner) = inner.upgrade() else { break };
        if n == 0 {
            // Dropping every waiting sender wakes its caller with Closed.
            inner.pending.lock().expect("pending lock").take();
            break;
        }
        match proto::decode(&line) {
            Ok(proto::Message::Return { id, value }) => deliver(&inner, id, Ok(value)),
            Ok(proto::Message::Error { id, error }) => deliver(&inner, id, Err(error)),
            Ok(proto::Message::Event(ev)) => {
                tracing::debug!(event = %ev.name, data = %ev.data, "qmp event");
                let _ = inner.events.send(ev);
            }
            Ok(proto::Message::Greeting(_)) => tracing::warn!("second QMP greeting ignored"),
            Err(e) => tracing::warn!(error = %e, "undecodable QMP line ignored"),
        }
    }
    let _ = closed.send(true);
}

fn deliver(inner: &Inner, id: Option<u64>, result: Result<Value, CommandError>) {
    let tx = id.and_then(|id| {
        inner
            .pending
            .lock()
            .expect("pending lock")
            .as_mut()
            .and_then(|p| p.remove(&id))
    });
    match tx {
        Some(tx) => {
            let _ = tx.send(result);
        }
        None => tracing::warn!(?id, "QMP reply for no pending command"),
    }
}
