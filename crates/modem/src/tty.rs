//! Non-blocking serial lines for tokio: a PTY pair for the modem model, or any tty
//! path (a real serial port, a PTY slave) for the DTE side.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::termios::{self, SetArg};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An fd read and written without blocking, through tokio's reactor.
pub struct AsyncTty {
    fd: AsyncFd<OwnedFd>,
}

impl AsyncTty {
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it until drop; it is
        // never replaced or closed behind the reactor's back.
        Ok(AsyncTty {
            fd: unsafe { AsyncFd::register(fd)? },
        })
    }

    /// Opens a tty path in raw mode (8N1, no echo, no line discipline).
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        // SAFETY: `open` just returned this descriptor and nothing else owns it.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        make_raw(&fd)?;
        AsyncTty::new(fd)
    }
}

impl AsFd for AsyncTty {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

impl AsyncTty {
    /// Reads what is already there without waiting: `WouldBlock` when nothing is.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match nix::unistd::read(self.fd.get_ref().as_raw_fd(), buf) {
            Err(nix::errno::Errno::EIO) => Ok(0),
            r => r.map_err(io::Error::from),
        }
    }

    /// Drops DTR (output speed B0, as POSIX defines a hang-up) and returns the
    /// settings that raise it again with [`AsyncTty::restore`].
    pub fn drop_dtr(&self) -> io::Result<termios::Termios> {
        let saved = termios::tcgetattr(self)?;
        let mut t = saved.clone();
        // B0 is the speed bits of the control modes all clear. Set here, not
        // with cfsetospeed: libc binds that to a versioned glibc symbol that
        // a static link (the guest image's bulkhead-l2tp) cannot resolve.
        t.control_flags.remove(termios::ControlFlags::CBAUD);
        termios::tcsetattr(self, SetArg::TCSANOW, &t)?;
        Ok(saved)
    }

    /// Puts back settings saved by [`AsyncTty::drop_dtr`] (DTR up again).
    pub fn restore(&self, t: &termios::Termios) -> io::Result<()> {
        Ok(termios::tcsetattr(self, SetArg::TCSANOW, t)?)
    }
}

/// Whether the terminal's DTE has dropped DTR (output speed B0).
pub fn dtr_dropped(fd: &impl AsFd) -> io::Result<bool> {
    let t = termios::tcgetattr(fd)?;
    // As in `drop_dtr`: B0 read from the control modes, not cfgetospeed.
    Ok(!t.control_flags.intersects(termios::ControlFlags::CBAUD))
}

/// Puts a terminal into raw mode.
pub fn make_raw(fd: &impl AsFd) -> io::Result<()> {
    let mut t = termios::tcgetattr(fd)?;
    termios::cfmakeraw(&mut t);
    termios::tcsetattr(fd, SetArg::TCSANOW, &t)?;
    Ok(())
}

impl AsyncRead for AsyncTty {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_raw_fd(), unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // A PTY master reads EIO while no slave is open: treat as end of file.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for AsyncTty {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), buf).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A PTY pair: the master for whoever plays the device, the slave's path for the
/// program that expects a serial line. The slave stays open here so the master never
/// reads EIO between two users of the line.
pub struct Pty {
    pub master: AsyncTty,
    pub slave_path: PathBuf,
    _slave: OwnedFd,
}

impl Pty {
    pub fn open() -> io::Result<Pty> {
        let r = nix::pty::openpty(None, None)?;
        make_raw(&r.slave)?;
        let slave_path = std::fs::read_link(format!("/proc/self/fd/{}", r.slave.as_raw_fd()))?;
        Ok(Pty {
            master: AsyncTty::new(r.master)?,
            slave_path,
            _slave: r.slave,
        })
    }

    /// Makes every change of the slave's settings (a DTR drop among them) show on the
    /// master: packet mode, where each read starts with a status byte (0 = data
    /// follows, non-zero = the settings changed), and EXTPROC on the slave, without
    /// which Linux reports no settings change to the master.
    pub fn watch_settings(&self) -> io::Result<()> {
        let on: libc::c_int = 1;
        // SAFETY: TIOCPKT reads one c_int through the pointer, which outlives the call;
        // the fd is the open PTY master.
        if unsafe { libc::ioctl(self.master.as_fd().as_raw_fd(), libc::TIOCPKT, &on) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut t = termios::tcgetattr(&self._slave)?;
        t.local_flags |= termios::LocalFlags::EXTPROC;
        termios::tcsetattr(&self._slave, SetArg::TCSANOW, &t)?;
        Ok(())
    }

    pub fn into_parts(self) -> (AsyncTty, OwnedFd) {
        (self.master, self._slave)
    }

    /// Also makes `link` a symlink to the slave (replacing an old link).
    pub fn link(&self, link: &Path) -> io::Result<()> {
        match std::fs::remove_file(link) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::os::unix::fs::symlink(&self.slave_path, link)
    }
}
