//! Something to type into on the serial console, as a VM's console has.
//!
//! The kernel writes to its console, but without a program reading it typed
//! lines go nowhere. The agent keeps one there, respawned whenever it exits:
//! a root LU's own getty when it has one (its accounts decide who logs in),
//! else a shell (busybox's in the initramfs). The shell runs in its own
//! session with the console as its controlling terminal, so Ctrl-C reaches
//! its foreground job and job control works. Only those who may reach the
//! partition's console socket, that is the host's API, can type into it.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::children::Children;
use super::log;

const SHELL: &str = "/bin/sh";
const GETTYS: &[&str] = &["/sbin/agetty", "/usr/sbin/agetty"];
/// A program that exits sooner than this after starting counts as failing:
/// wait before the next start, longer each time, so a broken one cannot spin.
const QUICK_EXIT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The terminal behind /dev/console: the last of the kernel's active
/// consoles (`console=` given last on the command line).
pub fn console_tty(active: &str) -> Option<&str> {
    active.split_whitespace().last()
}

/// Keeps a getty or shell on the console for as long as the agent runs.
/// Returns only when there is no console terminal to put one on.
pub fn keep(children: Arc<Children>, root_lu: bool) {
    let active = std::fs::read_to_string("/sys/class/tty/console/active").unwrap_or_default();
    let Some(tty) = console_tty(&active) else {
        return;
    };
    let dev = Path::new("/dev").join(tty);
    if !dev.exists() {
        log(format_args!("console {}: no such device", dev.display()));
        return;
    }
    let getty = if root_lu {
        GETTYS.iter().copied().find(|g| Path::new(g).exists())
    } else {
        None
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut cmd = match getty {
            Some(g) => getty_command(g, tty),
            None => shell_command(&dev),
        };
        let started = Instant::now();
        match children.spawn_owned(&mut cmd) {
            Ok(mut child) => {
                let _ = children.wait_owned(&mut child);
            }
            Err(e) => log(format_args!("console program: {e}")),
        }
        if started.elapsed() < QUICK_EXIT {
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        } else {
            backoff = Duration::from_secs(1);
        }
    }
}

/// agetty opens the terminal and makes it its own; it only needs a session
/// of its own to do so.
fn getty_command(getty: &str, tty: &str) -> Command {
    let mut cmd = Command::new(getty);
    cmd.args(["--noclear", tty, "vt220"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// A login shell (`-sh`, so it reads /etc/profile where there is one) in a
/// new session whose controlling terminal is the console.
fn shell_command(dev: &Path) -> Command {
    let path = CString::new(dev.as_os_str().as_encoded_bytes()).expect("device path without NUL");
    let mut cmd = Command::new(SHELL);
    cmd.arg0("-sh")
        .current_dir(if Path::new("/root").is_dir() {
            "/root"
        } else {
            "/"
        })
        .env("HOME", "/root")
        .env(
            "TERM",
            std::env::var("TERM").unwrap_or_else(|_| "vt220".into()),
        );
    // SAFETY: runs in the forked child before exec; setsid, open, ioctl,
    // dup2 and close are async-signal-safe, and `path` was made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::open(path.as_ptr(), libc::O_RDWR);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(fd, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for target in 0..3 {
                if libc::dup2(fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if fd > 2 {
                libc::close(fd);
            }
            Ok(())
        });
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_is_the_last_active_one() {
        assert_eq!(console_tty("ttyS0\n"), Some("ttyS0"));
        assert_eq!(console_tty("tty0 hvc0 ttyS0\n"), Some("ttyS0"));
        assert_eq!(console_tty("\n"), None);
        assert_eq!(console_tty(""), None);
    }
}
