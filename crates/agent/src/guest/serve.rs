//! Serving the host over the virtio-serial port.
//!
//! Port quirks (see docs/guest-image.md): the port is found by name under
//! /sys/class/virtio-ports; while no host client is connected, writes block,
//! reads return EOF and poll reports POLLHUP continuously. So the port is
//! opened non-blocking, and while the host is away it is polled on a short
//! timer instead of waiting on it.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::children::{Children, ExecError};
use super::relay::{self, Relay};
use super::{power, procfs, region, sys};
use crate::cmdline::validate_hostname;
use crate::proto::{
    self, Frame, GuestInfo, HostLine, LineDecoder, PowerAction, ReadyInfo, Request, RequestBody,
    Response, MAX_LINE, PORT_NAME, PROTOCOL_VERSION,
};

/// Test knob simulating a hostile agent: while this file exists,
/// `region_unmap` requests get no answer at all (the host must force).
pub const IGNORE_UNMAP: &str = "/run/bulkhead/ignore-unmap";

/// Facts fixed at ready time, returned by `hello`.
pub struct Boot {
    pub boot_ms: u64,
    pub root_lu: bool,
}

/// Finds /dev/vportNpM for the port named `name`.
pub fn find_port(name: &str) -> Option<PathBuf> {
    let dir = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    for e in dir.flatten() {
        let n = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if n.trim_end() == name {
            return Some(Path::new("/dev").join(e.file_name()));
        }
    }
    None
}

/// Waits for the agent port to appear (device probing may lag module load).
fn wait_port() -> PathBuf {
    let mut delay = Duration::from_millis(10);
    let mut warned = false;
    loop {
        if let Some(p) = find_port(PORT_NAME) {
            if p.exists() {
                return p;
            }
        }
        if !warned && delay >= Duration::from_millis(500) {
            super::log(format_args!("waiting for virtio-serial port {PORT_NAME}"));
            warned = true;
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

enum Out {
    Reply(Vec<u8>),
    /// Write the ack, then power off.
    PowerAfter(Vec<u8>, PowerAction),
}

/// Opens the agent port if it exists now (no waiting).
pub fn open_port_now() -> Option<(PathBuf, OwnedFd)> {
    let path = find_port(PORT_NAME)?;
    let fd = sys::open(&path, libc::O_RDWR | libc::O_NONBLOCK | libc::O_NOCTTY).ok()?;
    Some((path, fd))
}

/// Serves requests forever (returns only when the port cannot be opened).
/// `opened`: the port, when it was opened before the ready line.
pub fn serve(
    boot: Boot,
    children: Arc<Children>,
    opened: Option<(PathBuf, OwnedFd)>,
) -> std::io::Error {
    let (path, port) = match opened {
        Some(p) => p,
        None => {
            let path = wait_port();
            match sys::open(&path, libc::O_RDWR | libc::O_NONBLOCK | libc::O_NOCTTY) {
                Ok(fd) => (path, fd),
                Err(e) => return e,
            }
        }
    };
    let wake = match sys::eventfd() {
        Ok(fd) => Arc::new(fd),
        Err(e) => return e,
    };
    let (tx, rx) = mpsc::channel::<Out>();
    let boot = Arc::new(boot);
    // bulkhead-guest's calls go out through the same queue as replies.
    let relay = {
        let (tx, wake) = (tx.clone(), wake.clone());
        Arc::new(Relay::new(
            move |line| reply_from_worker(&tx, &wake, Out::Reply(line)),
            relay::CALL_TIMEOUT,
        ))
    };
    if let Err(e) = relay::listen(
        relay.clone(),
        Path::new(relay::RUN_DIR),
        Path::new(relay::SOCKET),
    ) {
        super::log(format_args!(
            "{}: {e}; bulkhead-guest cannot reach the host",
            relay::SOCKET
        ));
    }
    let mut decoder = LineDecoder::new(MAX_LINE);
    let mut out: VecDeque<u8> = VecDeque::new();
    // Usually the host is already connected when the port opens: find out at
    // once rather than after the first host-away poll interval, so the
    // host's first hello is answered the moment it arrives.
    let mut host_up = {
        let mut probe = libc::pollfd {
            fd: port.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: probe is one valid pollfd; timeout 0 does not block.
        unsafe { libc::poll(&mut probe, 1, 0) };
        probe.revents & libc::POLLHUP == 0
    };
    let mut power_after: Option<(PowerAction, Instant)> = None;
    let mut buf = vec![0u8; 65536];
    // A hello was read whose reply may still be queued in `out`.
    let mut hello_reply_pending = false;

    loop {
        let mut fds = [
            libc::pollfd {
                fd: port.as_raw_fd(),
                events: libc::POLLIN | if out.is_empty() { 0 } else { libc::POLLOUT },
                revents: 0,
            },
            libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // While the host is away the port reports POLLHUP constantly: look
        // again on a timer (it clears when a host connects).
        let timeout_ms = if host_up { -1 } else { 50 };
        let timeout_ms = match power_after {
            Some(_) => 50,
            None => timeout_ms,
        };
        let polled = if host_up {
            // SAFETY: fds is a valid array of two pollfd entries.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) }
        } else {
            // Host away: wait on the wake fd only, then probe the port below.
            // SAFETY: fds[1] is one valid pollfd entry.
            unsafe { libc::poll(&mut fds[1], 1, timeout_ms) }
        };
        if polled < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return e;
            }
            continue;
        }
        // The port's state: from the poll above while the host is up, else
        // probed without blocking.
        let port_revents = if host_up {
            fds[0].revents
        } else {
            let mut probe = libc::pollfd {
                fd: port.as_raw_fd(),
                events: libc::POLLIN | libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: probe is one valid pollfd; timeout 0 does not block.
            unsafe { libc::poll(&mut probe, 1, 0) };
            probe.revents
        };
        let hup = port_revents & libc::POLLHUP != 0;
        if hup && host_up {
            // Host went away: drop its half-read line and its stale replies.
            decoder.reset();
            out.clear();
        }
        host_up = !hup;
        relay.set_host_up(host_up);

        if fds[1].revents != 0 {
            let mut wake_buf = [0u8; 8];
            let _ = sys::read(&wake, &mut wake_buf);
        }
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Out::Reply(b) => out.extend(b),
                Out::PowerAfter(b, action) => {
                    out.extend(b);
                    power_after = Some((action, Instant::now() + Duration::from_secs(2)));
                }
            }
        }

        if host_up && port_revents & libc::POLLIN != 0 {
            match sys::read(&port, &mut buf) {
                Ok(0) => {
                    decoder.reset();
                    host_up = false;
                    relay.set_host_up(false);
                }
                Ok(n) => {
                    for frame in decoder.push(&buf[..n]) {
                        let reply = match frame {
                            Frame::TooLong => Some(Response::err(
                                0,
                                "bad_request",
                                format!("line longer than {MAX_LINE} bytes"),
                            )),
                            Frame::Line(line) => match proto::decode_host_line(&line) {
                                Ok(HostLine::Request(req)) => {
                                    hello_reply_pending |=
                                        matches!(req.body, RequestBody::Hello { .. });
                                    dispatch(req, &boot, &children, &tx, &wake)
                                }
                                Ok(HostLine::Answer(a)) => {
                                    relay.answer(a);
                                    None
                                }
                                Err(e) => {
                                    Some(Response::err(e.id.unwrap_or(0), "bad_request", e.message))
                                }
                            },
                        };
                        if let Some(r) = reply {
                            out.extend(proto::encode_line(&r));
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => super::log(format_args!("read {}: {e}", path.display())),
            }
        }

        while host_up && !out.is_empty() {
            let (a, _) = out.as_slices();
            match sys::write(&port, a) {
                Ok(n) => {
                    out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    out.clear();
                    break;
                }
            }
        }

        if hello_reply_pending && out.is_empty() {
            // The reply is out: deferred boot work may take the CPU now.
            hello_reply_pending = false;
            super::host_greeted();
        }

        if let Some((action, deadline)) = power_after {
            if out.is_empty() || Instant::now() >= deadline {
                let e = power::power(action);
                super::log(format_args!("power off: {e}"));
                power_after = None;
            }
        }
    }
}

fn reply_from_worker(tx: &mpsc::Sender<Out>, wake: &OwnedFd, msg: Out) {
    let _ = tx.send(msg);
    let one = 1u64.to_ne_bytes();
    let _ = sys::write(wake, &one);
}

/// Handles one request: quick ones inline (returns the reply), slow ones on a
/// worker thread (returns None; the worker sends the reply).
fn dispatch(
    req: Request,
    boot: &Arc<Boot>,
    children: &Arc<Children>,
    tx: &mpsc::Sender<Out>,
    wake: &Arc<OwnedFd>,
) -> Option<Response> {
    let id = req.id;
    match req.body {
        RequestBody::Hello {
            min_version,
            max_version,
        } => {
            if !(min_version..=max_version).contains(&PROTOCOL_VERSION) {
                return Some(Response::err(
                    id,
                    "unsupported_version",
                    format!(
                        "agent speaks protocol {PROTOCOL_VERSION}, host asked for {min_version}..={max_version}"
                    ),
                ));
            }
            Some(Response::ok(
                id,
                &ReadyInfo {
                    protocol_version: PROTOCOL_VERSION,
                    agent_version: env!("CARGO_PKG_VERSION").into(),
                    boot_ms: boot.boot_ms,
                    hostname: sys::hostname(),
                    ncpus: sys::ncpus(),
                    kernel_release: sys::kernel_release(),
                    root_lu: boot.root_lu,
                },
            ))
        }
        RequestBody::Info => Some(Response::ok(id, &info())),
        RequestBody::SetHostname { name } => Some(match validate_hostname(&name) {
            Err(e) => Response::err(id, "bad_request", e),
            Ok(()) => match sys::sethostname(&name) {
                Ok(()) => Response::ok(id, &serde_json::json!({})),
                Err(e) => Response::err(id, "io", format!("sethostname: {e}")),
            },
        }),
        RequestBody::Exec {
            argv,
            stdin,
            timeout_ms,
        } => {
            let (children, tx, wake) = (children.clone(), tx.clone(), wake.clone());
            std::thread::spawn(move || {
                let r = match children.exec(&argv, stdin, Duration::from_millis(timeout_ms)) {
                    Ok(out) => Response::ok(id, &out),
                    Err(ExecError::Spawn(m)) => Response::err(id, "spawn", m),
                    Err(ExecError::Timeout(t)) => Response::err(
                        id,
                        "timeout",
                        format!(
                            "{} did not finish within {t:?}; killed",
                            argv.first().map(String::as_str).unwrap_or("")
                        ),
                    ),
                };
                reply_from_worker(&tx, &wake, Out::Reply(proto::encode_line(&r)));
            });
            None
        }
        RequestBody::L2tpServer {
            profile,
            listen,
            wait_ms,
        } => {
            let (children, tx, wake) = (children.clone(), tx.clone(), wake.clone());
            std::thread::spawn(move || {
                let wait = Duration::from_millis(wait_ms);
                let r = match super::service::start_l2tp(&children, &profile, listen, wait) {
                    Ok(started) => Response::ok(id, &started),
                    Err((kind, m)) => Response::err(id, kind, m),
                };
                reply_from_worker(&tx, &wake, Out::Reply(proto::encode_line(&r)));
            });
            None
        }
        RequestBody::Reidentify(r) => Some(match super::identity::apply(&r) {
            Ok(()) => Response::ok(id, &serde_json::json!({})),
            Err(e) => Response::err(id, "bad_request", e),
        }),
        RequestBody::SetSession { session } => Some(match super::session::set(session) {
            Ok(()) => Response::ok(id, &serde_json::json!({})),
            Err(e) => Response::err(id, "bad_request", e),
        }),
        RequestBody::RegionList => Some(match region::list(Path::new(region::PCI_DEVICES)) {
            Ok(all) => Response::ok(id, &all),
            Err(e) => Response::err(id, e.kind(), e.to_string()),
        }),
        // These wait (for a hot-plug to land) or scan every process's maps:
        // on a worker, so the port keeps serving.
        RequestBody::RegionMap { name, wait_ms } => {
            let (tx, wake) = (tx.clone(), wake.clone());
            std::thread::spawn(move || {
                let dev = Path::new(region::PCI_DEVICES);
                let r = match region::map(dev, &name, Duration::from_millis(wait_ms)) {
                    Ok(info) => Response::ok(id, &info),
                    Err(e) => Response::err(id, e.kind(), e.to_string()),
                };
                reply_from_worker(&tx, &wake, Out::Reply(proto::encode_line(&r)));
            });
            None
        }
        RequestBody::RegionUnmap { name } if Path::new(IGNORE_UNMAP).exists() => {
            super::log(format_args!(
                "region_unmap {name} ignored ({IGNORE_UNMAP} exists: test knob)"
            ));
            None
        }
        RequestBody::RegionUnmap { name } => {
            let (tx, wake) = (tx.clone(), wake.clone());
            std::thread::spawn(move || {
                let r = match region::unmap(Path::new(region::PCI_DEVICES), &name) {
                    Ok(u) => Response::ok(id, &u),
                    Err(e) => Response::err(id, e.kind(), e.to_string()),
                };
                reply_from_worker(&tx, &wake, Out::Reply(proto::encode_line(&r)));
            });
            None
        }
        RequestBody::Shutdown { action } => {
            let (tx, wake) = (tx.clone(), wake.clone());
            std::thread::spawn(move || {
                if power::prepare_shutdown() {
                    let ack = proto::encode_line(&Response::ok(id, &serde_json::json!({})));
                    reply_from_worker(&tx, &wake, Out::PowerAfter(ack, action));
                } else {
                    let r = Response::err(id, "busy", "a shutdown is already in progress");
                    reply_from_worker(&tx, &wake, Out::Reply(proto::encode_line(&r)));
                }
            });
            None
        }
    }
}

fn info() -> GuestInfo {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let (total, free, avail) = procfs::meminfo(&read("/proc/meminfo"));
    GuestInfo {
        mem_total_kib: total,
        mem_free_kib: free,
        mem_available_kib: avail,
        uptime_ms: procfs::uptime_ms(&read("/proc/uptime")),
        load: procfs::loadavg(&read("/proc/loadavg")),
        ncpus: sys::ncpus(),
        hostname: sys::hostname(),
    }
}
