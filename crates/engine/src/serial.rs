//! Host serial lines owned by a partition (issue 15): a real tty or a PTY
//! (the modem model's) becomes a 16550 UART of the guest's own.
//!
//! The engine opens the device itself (it runs privileged) and hands QEMU
//! the descriptor through an fd set (`-add-fd`, then `path=/dev/fdset/N`),
//! so the confined, unprivileged QEMU needs neither a node in its jail nor
//! the right to open the device: it holds exactly the line it was given.
//!
//! The guest sees the lines as `/dev/ttyS1`, `/dev/ttyS2`, `/dev/ttyS3` in
//! spec order (ISA UARTs at the legacy ports 0x2f8, 0x3e8, 0x2e8; ttyS0 is
//! the console). Debian's cloud kernel probes four legacy UARTs
//! (`SERIAL_8250_RUNTIME_UARTS=4`) on microvm and q35 alike.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Serial lines a partition may own: the UARTs the guest kernel probes
/// beyond its console.
pub const MAX_SERIALS: usize = 3;

/// A host serial line given to the partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSpec {
    /// The host tty (canonical path; the caller resolves symlinks).
    pub path: PathBuf,
}

/// The guest's name for the `index`-th serial line of a spec.
pub fn guest_tty(index: usize) -> String {
    format!("/dev/ttyS{}", index + 1)
}

/// Linux's tty majors that are never a serial line to give away: virtual
/// consoles (4, minors below 64; 64 and up are ttyS*), and 5 (/dev/tty,
/// /dev/console, /dev/ptmx).
fn is_console(rdev: u64) -> bool {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (major == 4 && minor < 64) || major == 5
}

/// Resolves `path` and checks that it names a serial line a partition may
/// own: a character device that is a terminal, not a console. Returns the
/// canonical path (what claims compare). Opens the device to ask whether
/// it is a tty, without becoming its controlling terminal.
pub fn check_device(path: &Path) -> Result<PathBuf, String> {
    let canon = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let m = std::fs::metadata(&canon).map_err(|e| format!("{}: {e}", canon.display()))?;
    if !m.file_type().is_char_device() {
        return Err(format!(
            "{} is not a character device (a serial line is a tty such as /dev/ttyS1 or a PTY)",
            canon.display()
        ));
    }
    if is_console(m.rdev()) {
        return Err(format!(
            "{} is a console or terminal multiplexer, not a serial line",
            canon.display()
        ));
    }
    let active = std::fs::read_to_string(ACTIVE_CONSOLES).unwrap_or_default();
    if is_active_console(&canon, &active) {
        return Err(format!(
            "{} is the host's kernel console ({ACTIVE_CONSOLES}), not a free serial line",
            canon.display()
        ));
    }
    if let Some((pid, comm)) = controlling_process(m.rdev()) {
        return Err(format!(
            "{} is the controlling terminal of process {pid} ({comm}), a login or a shell: not a free serial line",
            canon.display()
        ));
    }
    let fd = open(&canon)?;
    // SAFETY: isatty only reads the descriptor's state; fd is open.
    if unsafe { libc::isatty(fd.as_raw_fd()) } != 1 {
        return Err(format!("{} is not a terminal", canon.display()));
    }
    Ok(canon)
}

/// The ttys the kernel prints its console on (`console=`), e.g. `ttyS0`.
const ACTIVE_CONSOLES: &str = "/sys/class/tty/console/active";

/// Whether `dev` is one of the consoles `active` (that file's text) names.
fn is_active_console(dev: &Path, active: &str) -> bool {
    active
        .split_whitespace()
        .any(|name| Path::new("/dev").join(name) == dev)
}

/// A process whose controlling terminal is the device `rdev` (from
/// /proc/PID/stat's `tty_nr`): a session's terminal (an ssh login's PTY)
/// is never handed to a partition, which would read its keystrokes.
fn controlling_process(rdev: u64) -> Option<(u32, String)> {
    let (major, minor) = (libc::major(rdev) as u64, libc::minor(rdev) as u64);
    // The kernel's new_encode_dev, as /proc/PID/stat prints tty_nr.
    let want = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // comm is in parentheses and may hold spaces: fields follow the last ')'.
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        // rest: state ppid pgrp session tty_nr ...
        let tty_nr = rest
            .split_whitespace()
            .nth(4)
            .and_then(|t| t.parse::<u64>().ok());
        if tty_nr == Some(want) && want != 0 {
            let comm = head.split_once(" (").map(|(_, c)| c).unwrap_or("");
            return Some((pid, comm.to_string()));
        }
    }
    None
}

/// Opens a serial line for QEMU: read-write, non-blocking (QEMU's chardev
/// polls it), never the opener's controlling terminal. Close-on-exec: the
/// launcher clears it on the one descriptor QEMU inherits.
pub fn open(path: &Path) -> Result<OwnedFd, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("opening serial device {}: {e}", path.display()))?;
    Ok(f.into())
}

/// fd set ids of the serial lines: clear of any other fd set a launch uses.
const FDSET_BASE: usize = 100;

/// QEMU arguments for the serial lines whose descriptors QEMU inherits as
/// `fds` (spec order): each an fd set, a `serial` chardev opened from it and
/// an ISA UART at index 1, 2, 3.
pub fn qemu_args(fds: &[i32]) -> Vec<String> {
    let mut a = Vec::new();
    for (i, fd) in fds.iter().enumerate() {
        let set = FDSET_BASE + i;
        a.extend([
            "-add-fd".to_string(),
            format!("fd={fd},set={set},opaque=serial{i}"),
            "-chardev".to_string(),
            format!("serial,id=serial{i},path=/dev/fdset/{set}"),
            "-device".to_string(),
            format!(
                "isa-serial,chardev=serial{i},index={},id=serial{i}-dev",
                i + 1
            ),
        ]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    use bulkhead_testbed::pty;

    #[test]
    fn consoles_and_non_ttys_are_refused() {
        let e = check_device(Path::new("/dev/null")).unwrap_err();
        assert!(e.contains("not a terminal"), "{e}");
        let e = check_device(Path::new("/etc/hostname")).unwrap_err();
        assert!(e.contains("not a character device"), "{e}");
        let e = check_device(Path::new("/dev/tty")).unwrap_err();
        assert!(e.contains("console"), "{e}");
        assert!(check_device(Path::new("/no/such/tty")).is_err());
    }

    #[test]
    fn a_sessions_terminal_is_refused() {
        let (_master, _slave, name) = pty();
        // A shell in its own session with the PTY as controlling terminal.
        let mut sh = std::process::Command::new("setsid")
            .args(["-c", "sh", "-c", "read x"])
            .stdin(
                std::fs::File::options()
                    .read(true)
                    .write(true)
                    .open(&name)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let e = loop {
            match check_device(&name) {
                Err(e) => break e,
                // Until the shell's setsid has taken the terminal.
                Ok(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Ok(_) => panic!("{} was accepted", name.display()),
            }
        };
        assert!(e.contains("controlling terminal"), "{e}");
        let _ = sh.kill();
        let _ = sh.wait();
    }

    #[test]
    fn the_hosts_kernel_console_is_refused() {
        assert!(is_active_console(Path::new("/dev/ttyS0"), "tty0 ttyS0\n"));
        assert!(!is_active_console(Path::new("/dev/ttyS1"), "tty0 ttyS0\n"));
        assert!(!is_active_console(Path::new("/dev/ttyS0"), ""));
    }

    #[test]
    fn a_pty_is_accepted_by_its_canonical_path() {
        let (_master, _slave, name) = pty();
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("ttyM0");
        std::os::unix::fs::symlink(&name, &link).unwrap();
        assert_eq!(check_device(&link).unwrap(), name);
    }

    #[test]
    fn each_line_is_an_fd_set_a_chardev_and_a_uart() {
        let a = qemu_args(&[7, 9]).join(" ");
        assert_eq!(
            a,
            "-add-fd fd=7,set=100,opaque=serial0 -chardev serial,id=serial0,path=/dev/fdset/100 \
             -device isa-serial,chardev=serial0,index=1,id=serial0-dev \
             -add-fd fd=9,set=101,opaque=serial1 -chardev serial,id=serial1,path=/dev/fdset/101 \
             -device isa-serial,chardev=serial1,index=2,id=serial1-dev"
        );
        assert_eq!(guest_tty(0), "/dev/ttyS1");
    }
}
