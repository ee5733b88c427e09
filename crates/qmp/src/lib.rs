//! Async QMP client. See the crate README for the entry points.

pub mod proto;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use proto::{CommandError, Event, Greeting, LineTooLong, QemuVersion};

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

/// Bounds on what one QMP session may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest line accepted from QEMU; a longer one ends the session.
    pub max_line: usize,
    /// How long a command (and the greeting) may take before it fails.
    pub command_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        // query-qmp-schema, the biggest reply QEMU 7.2 gives, is ~200 KiB.
        Limits {
            max_line: 8 << 20,
            command_timeout: Duration::from_secs(30),
        }
    }
}

/// One command line for the writer task, with the file descriptor that
/// travels with it (SCM_RIGHTS) for `add-fd`.
struct Outgoing {
    id: u64,
    line: Vec<u8>,
    fd: Option<OwnedFd>,
}

struct Inner {
    /// Whole command lines go to one writer task, so a caller that gives up
    /// mid-write (its future dropped) cannot leave half a line on the socket.
    writer: mpsc::UnboundedSender<Outgoing>,
    pending: Mutex<Option<Pending>>,
    /// Why the session ended, when it was our doing (a protocol violation).
    failure: Mutex<Option<String>>,
    next_id: AtomicU64,
    events: broadcast::Sender<Event>,
    closed: watch::Receiver<bool>,
    greeting: OnceLock<Greeting>,
    limits: Limits,
}

impl Inner {
    fn forget(&self, id: u64) {
        if let Some(p) = self.pending.lock().expect("pending lock").as_mut() {
            p.remove(&id);
        }
    }

    fn closed_error(&self) -> QmpError {
        match self.failure.lock().expect("failure lock").clone() {
            Some(why) => QmpError::Protocol(why),
            None => QmpError::Closed,
        }
    }
}

/// Removes its command's pending entry when the caller stops waiting, whether
/// by timeout, error or its future being dropped.
struct PendingGuard<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.inner.forget(self.id);
    }
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
        Self::connect_with(path, Limits::default()).await
    }

    /// [`QmpClient::connect`] with explicit limits.
    pub async fn connect_with(path: &Path, limits: Limits) -> Result<QmpClient, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        Self::handshake_with(stream, limits).await
    }

    /// Negotiates over an already connected stream.
    pub async fn handshake(stream: UnixStream) -> Result<QmpClient, QmpError> {
        Self::handshake_with(stream, Limits::default()).await
    }

    /// [`QmpClient::handshake`] with explicit limits.
    pub async fn handshake_with(stream: UnixStream, limits: Limits) -> Result<QmpClient, QmpError> {
        let (read, write) = stream.into_split();
        let (events, _) = broadcast::channel(256);
        let (closed_tx, closed) = watch::channel(false);
        let (writer, queue) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            writer,
            pending: Mutex::new(Some(HashMap::new())),
            failure: Mutex::new(None),
            next_id: AtomicU64::new(1),
            events,
            closed,
            greeting: OnceLock::new(),
            limits,
        });
        let (greeted_tx, greeted) = oneshot::channel();
        tokio::spawn(read_loop(
            read,
            Arc::downgrade(&inner),
            closed_tx,
            greeted_tx,
        ));
        tokio::spawn(write_loop(write, queue, Arc::downgrade(&inner)));
        match tokio::time::timeout(limits.command_timeout, greeted).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(inner.closed_error()),
            Err(_) => {
                return Err(QmpError::Timeout(
                    limits.command_timeout,
                    "the QMP greeting".into(),
                ))
            }
        }
        let client = QmpClient { inner };
        client.execute_value("qmp_capabilities", None).await?;
        Ok(client)
    }

    pub fn greeting(&self) -> &Greeting {
        self.inner
            .greeting
            .get()
            .expect("handshake stores the greeting before returning a client")
    }

    /// Commands sent and not yet answered, timed out or abandoned.
    pub fn pending_commands(&self) -> usize {
        self.inner
            .pending
            .lock()
            .expect("pending lock")
            .as_ref()
            .map_or(0, HashMap::len)
    }

    /// Why the session was ended by us (a protocol violation such as an
    /// over-long line), if it was.
    pub fn failure(&self) -> Option<String> {
        self.inner.failure.lock().expect("failure lock").clone()
    }

    /// Runs a command and returns QEMU's `return` value as is, failing after
    /// the session's command timeout.
    pub async fn execute_value(
        &self,
        command: &str,
        args: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.execute_value_timeout(command, args, self.inner.limits.command_timeout)
            .await
    }

    /// [`QmpClient::execute_value`] with its own timeout. On timeout or
    /// cancellation the command is forgotten; a late reply is dropped.
    pub async fn execute_value_timeout(
        &self,
        command: &str,
        args: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.send(command, args, None, timeout).await
    }

    async fn send(
        &self,
        command: &str,
        args: Option<Value>,
        fd: Option<OwnedFd>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.inner.pending.lock().expect("pending lock");
            match pending.as_mut() {
                Some(p) => p.insert(id, tx),
                None => return Err(self.inner.closed_error()),
            };
        }
        let _guard = PendingGuard {
            inner: &self.inner,
            id,
        };
        let line = proto::encode_command(id, command, args.as_ref());
        tracing::trace!(command, id, "qmp send");
        if self.inner.writer.send(Outgoing { id, line, fd }).is_err() {
            return Err(self.inner.closed_error());
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(error))) => Err(QmpError::Command {
                command: command.to_string(),
                error,
            }),
            Ok(Err(_)) => Err(self.inner.closed_error()),
            Err(_) => Err(QmpError::Timeout(timeout, command.to_string())),
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
    /// Adds a QOM object (a memory backend, for instance); `args` holds
    /// `qom-type`, `id` and the type's properties.
    pub async fn object_add(&self, args: Value) -> Result<(), QmpError> {
        self.execute_value("object-add", Some(args)).await.map(drop)
    }
    pub async fn object_del(&self, id: &str) -> Result<(), QmpError> {
        self.execute_value("object-del", Some(json!({ "id": id })))
            .await
            .map(drop)
    }
    /// Passes `fd` to QEMU (`add-fd`): it joins a new fd set, which QEMU
    /// opens as `/dev/fdset/N`. Files reach a confined QEMU this way, as
    /// libvirt hands them over, without QEMU opening a host path. Returns N.
    pub async fn add_fd(&self, fd: OwnedFd) -> Result<u64, QmpError> {
        #[derive(Deserialize)]
        struct AddFdInfo {
            #[serde(rename = "fdset-id")]
            fdset_id: u64,
        }
        let v = self
            .send("add-fd", None, Some(fd), self.inner.limits.command_timeout)
            .await?;
        let info: AddFdInfo = serde_json::from_value(v)
            .map_err(|e| QmpError::Protocol(format!("add-fd reply: {e}")))?;
        Ok(info.fdset_id)
    }
    /// Drops an fd set; descriptors QEMU still uses stay open until it closes them.
    pub async fn remove_fd(&self, fdset_id: u64) -> Result<(), QmpError> {
        self.execute_value("remove-fd", Some(json!({ "fdset-id": fdset_id })))
            .await
            .map(drop)
    }
    /// Passes `fd` to QEMU under `name` (`getfd`), for URIs such as
    /// `fd:NAME` that take a named descriptor (migration to or from a file
    /// the host opened: a sandboxed QEMU may not spawn `exec:` helpers).
    pub async fn get_fd(&self, name: &str, fd: OwnedFd) -> Result<(), QmpError> {
        self.send(
            "getfd",
            Some(json!({ "fdname": name })),
            Some(fd),
            self.inner.limits.command_timeout,
        )
        .await
        .map(drop)
    }
    /// Closes a descriptor passed with [`QmpClient::get_fd`] and not consumed.
    pub async fn close_fd(&self, name: &str) -> Result<(), QmpError> {
        self.execute_value("closefd", Some(json!({ "fdname": name })))
            .await
            .map(drop)
    }
    /// Sets migration capabilities, e.g. `[("events", true)]`.
    pub async fn migrate_set_capabilities(&self, caps: &[(&str, bool)]) -> Result<(), QmpError> {
        let list: Vec<Value> = caps
            .iter()
            .map(|(c, on)| json!({ "capability": c, "state": on }))
            .collect();
        self.execute_value(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": list })),
        )
        .await
        .map(drop)
    }
    /// Sets migration parameters, e.g. `{"max-bandwidth": N}`.
    pub async fn migrate_set_parameters(&self, params: Value) -> Result<(), QmpError> {
        self.execute_value("migrate-set-parameters", Some(params))
            .await
            .map(drop)
    }
    /// Starts an outgoing migration; it runs on in QEMU ([`QmpClient::query_migrate`]).
    pub async fn migrate(&self, uri: &str) -> Result<(), QmpError> {
        self.execute_value("migrate", Some(json!({ "uri": uri })))
            .await
            .map(drop)
    }
    /// Starts reading an incoming migration (QEMU started with `-incoming defer`).
    pub async fn migrate_incoming(&self, uri: &str) -> Result<(), QmpError> {
        self.execute_value("migrate-incoming", Some(json!({ "uri": uri })))
            .await
            .map(drop)
    }
    pub async fn migrate_cancel(&self) -> Result<(), QmpError> {
        self.execute_value("migrate_cancel", None).await.map(drop)
    }
    pub async fn query_migrate(&self) -> Result<MigrationInfo, QmpError> {
        self.execute("query-migrate", None).await
    }
    /// Children of a QOM path: `(name, type)` such as `("ivs0", "child<ivshmem-plain>")`.
    pub async fn qom_list(&self, path: &str) -> Result<Vec<(String, String)>, QmpError> {
        #[derive(Deserialize)]
        struct Prop {
            name: String,
            #[serde(rename = "type")]
            ty: String,
        }
        let v: Vec<Prop> = self
            .execute("qom-list", Some(json!({ "path": path })))
            .await?;
        Ok(v.into_iter().map(|p| (p.name, p.ty)).collect())
    }
    pub async fn human_monitor_command(&self, line: &str) -> Result<String, QmpError> {
        self.execute(
            "human-monitor-command",
            Some(json!({ "command-line": line })),
        )
        .await
    }
}

/// `query-migrate` reply (the fields Bulkhead reads).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct MigrationInfo {
    /// `none`, `setup`, `active`, `completed`, `failed`, `cancelled`, ...
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub ram: Option<MigrationRam>,
    #[serde(default, rename = "error-desc")]
    pub error_desc: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct MigrationRam {
    /// Bytes sent so far (RAM pages, compressed zero pages counted small).
    pub transferred: u64,
    /// Guest RAM size.
    pub total: u64,
    #[serde(default)]
    pub remaining: u64,
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

async fn write_loop(
    mut write: OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    inner: std::sync::Weak<Inner>,
) {
    while let Some(Outgoing { id, line, fd }) = queue.recv().await {
        let sent = match fd {
            Some(fd) => send_with_fd(&mut write, &line, fd).await,
            None => write.write_all(&line).await,
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "qmp write failed");
            // Its caller learns at once instead of at its timeout.
            if let Some(inner) = inner.upgrade() {
                inner.forget(id);
            }
        }
    }
}

/// Writes `line` with `fd` attached to its first byte (SCM_RIGHTS); QEMU
/// takes the descriptor with the command it arrives with.
async fn send_with_fd(write: &mut OwnedWriteHalf, line: &[u8], fd: OwnedFd) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let raw = [fd.as_raw_fd()];
    let stream: &UnixStream = write.as_ref();
    let n = loop {
        stream.writable().await?;
        let r = stream.try_io(tokio::io::Interest::WRITABLE, || {
            let iov = [std::io::IoSlice::new(line)];
            let cmsg = [ControlMessage::ScmRights(&raw)];
            sendmsg::<()>(
                stream.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(std::io::Error::from)
        });
        match r {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    // The descriptor went with the first chunk; the rest of the line follows.
    write.write_all(&line[n..]).await
}

async fn read_loop(
    mut read: OwnedReadHalf,
    inner: std::sync::Weak<Inner>,
    closed: watch::Sender<bool>,
    greeted: oneshot::Sender<()>,
) {
    let mut greeted = Some(greeted);
    let max_line = match inner.upgrade() {
        Some(i) => i.limits.max_line,
        None => return,
    };
    let mut framer = proto::Framer::new(max_line);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut lines = Vec::new();
    let failure = 'session: loop {
        let n = match read.read(&mut chunk).await {
            Ok(0) => break None,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "qmp read failed");
                break None;
            }
        };
        if let Err(e) = framer.push(&chunk[..n], &mut lines) {
            break Some(e.to_string());
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        for line in lines.drain(..) {
            match proto::decode(&line) {
                Ok(proto::Message::Greeting(g)) => match greeted.take() {
                    Some(tx) => {
                        let _ = inner.greeting.set(g);
                        let _ = tx.send(());
                    }
                    None => tracing::warn!("second QMP greeting ignored"),
                },
                Ok(other) if greeted.is_some() => {
                    break 'session Some(format!("expected the QMP greeting, got {other:?}"));
                }
                Ok(proto::Message::Return { id, value }) => deliver(&inner, id, Ok(value)),
                Ok(proto::Message::Error { id, error }) => deliver(&inner, id, Err(error)),
                Ok(proto::Message::Event(ev)) => {
                    tracing::debug!(event = %ev.name, data = %ev.data, "qmp event");
                    let _ = inner.events.send(ev);
                }
                Err(e) if greeted.is_some() => break 'session Some(e.to_string()),
                Err(e) => tracing::warn!(error = %e, "undecodable QMP line ignored"),
            }
        }
    };
    if let Some(why) = &failure {
        tracing::warn!(error = %why, "closing the QMP session");
        // Both directions, so QEMU's writes fail instead of filling a socket
        // nobody reads, and our writer's fail instead of blocking.
        let _ =
            nix::sys::socket::shutdown(read.as_ref().as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
    if let Some(inner) = inner.upgrade() {
        *inner.failure.lock().expect("failure lock") = failure;
        // Dropping every waiting sender wakes its caller with the error.
        inner.pending.lock().expect("pending lock").take();
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
