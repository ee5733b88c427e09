//! The API's transport: accept loops that survive accept errors, a bound on
//! TCP connections, TLS, and the timeouts that drop slow or silent clients.
//! What a connection carries (HTTP, routing) is `server`'s business.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::time::Instant;

/// The timeouts of one connection (see `ApiConfig`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header: Duration,
    pub idle: Duration,
}

/// Serves one accepted connection: a future that ends when it is done.
pub type Serve<S> =
    Arc<dyn Fn(S, Arc<Activity>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Raises the soft file-descriptor limit to the hard one (capped) and
/// returns the soft limit in force.
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on RLIMIT_NOFILE with rlimit structs we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        let want = r.rlim_max.min(1 << 20);
        if r.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return want;
            }
        }
    }
    r.rlim_cur
}

/// TCP connections served at once: the configured bound, and never more than
/// half the descriptors, so TCP clients cannot starve the unix socket, the
/// store and the partitions' sockets.
pub fn tcp_bound(max_connections: usize, nofile: u64) -> usize {
    max_connections.min((nofile / 2) as usize).max(1)
}

/// An accept error never ends the server. Running out of descriptors or
/// memory backs off (up to a second) so the loop does not spin while they
/// are short; anything else concerns one connection only.
async fn after_accept_error(e: &std::io::Error, delay: &mut Duration, what: &str) {
    let scarce = matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    );
    if !scarce {
        tracing::debug!(error = %e, listener = what, "accept failed; continuing");
        return;
    }
    tracing::warn!(error = %e, listener = what, backoff_ms = delay.as_millis() as u64, "accept failed; backing off");
    tokio::time::sleep(*delay).await;
    *delay = (*delay * 2).min(Duration::from_secs(1));
}

const FIRST_BACKOFF: Duration = Duration::from_millis(10);

/// Accepts on the unix socket for ever.
pub async fn unix_loop(
    l: UnixListener,
    limits: Limits,
    serve: Serve<Watched<tokio::net::UnixStream>>,
) {
    let mut delay = FIRST_BACKOFF;
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                delay = FIRST_BACKOFF;
                spawn_watched(s, limits, serve.clone());
            }
            Err(e) => after_accept_error(&e, &mut delay, "unix").await,
        }
    }
}

/// Accepts on TCP for ever, at most `bound` connections at once, each
/// through a TLS handshake that must finish within the header timeout.
pub async fn tcp_loop(
    l: TcpListener,
    bound: usize,
    tls: tokio_rustls::TlsAcceptor,
    limits: Limits,
    serve: Serve<tokio_rustls::server::TlsStream<Watched<tokio::net::TcpStream>>>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(bound));
    let mut delay = FIRST_BACKOFF;
    loop {
        // A slot before accepting: at the bound, clients wait in the backlog.
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        let (s, _) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                after_accept_error(&e, &mut delay, "tcp").await;
                continue;
            }
        };
        delay = FIRST_BACKOFF;
        let _ = s.set_nodelay(true);
        let tls = tls.clone();
        let serve = serve.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let activity = Arc::new(Activity::new());
            let io = Watched::new(s, activity.clone());
            let stream = match tokio::time::timeout(limits.header, tls.accept(io)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            };
            run_watched(serve(stream, activity.clone()), &activity, limits.idle).await;
        });
    }
}

fn spawn_watched<S>(s: S, limits: Limits, serve: Serve<Watched<S>>)
where
    S: Send + 'static,
{
    tokio::spawn(async move {
        let activity = Arc::new(Activity::new());
        let io = Watched::new(s, activity.clone());
        run_watched(serve(io, activity.clone()), &activity, limits.idle).await;
    });
}

/// Runs a connection until it ends or sits idle too long.
async fn run_watched(conn: impl Future<Output = ()>, activity: &Activity, idle: Duration) {
    tokio::select! {
        _ = conn => {}
        _ = activity.idle_for(idle) => tracing::debug!("closing an idle API connection"),
    }
}

/// When a connection last moved a byte, and how many of its requests are
/// being answered (an answer in progress is not idleness).
#[derive(Debug)]
pub struct Activity {
    origin: Instant,
    last_ms: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Held while a request is answered.
    pub fn busy(self: &Arc<Self>) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::SeqCst);
        BusyGuard(self.clone())
    }

    /// Resolves once nothing moved for `idle` with no request being answered.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            tokio::time::sleep_until(last + idle).await;
            let quiet = self.origin.elapsed().as_millis() as u64
                >= self.last_ms.load(Ordering::Relaxed) + idle.as_millis() as u64;
            if quiet && self.busy.load(Ordering::SeqCst) == 0 {
                return;
            }
            if self.busy.load(Ordering::SeqCst) > 0 {
                // Count idleness from the end of the answer, not its start.
                self.touch();
            }
        }
    }
}

pub struct BusyGuard(Arc<Activity>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A stream that records its activity.
pub struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_bound_keeps_half_the_descriptors() {
        assert_eq!(tcp_bound(256, 1 << 20), 256);
        assert_eq!(tcp_bound(256, 100), 50);
        assert_eq!(tcp_bound(256, 1), 1);
    }
}
