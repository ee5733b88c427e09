//! Clean shutdown (stop processes, sync, unmount or remount read-only) and
//! the ACPI power button.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{procfs, sys};
use crate::proto::PowerAction;

static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// Prepares the disks for power-off. Runs once; later calls return false.
pub fn prepare_shutdown() -> bool {
    if SHUTTING_DOWN.swap(true, Ordering::SeqCst) {
        return false;
    }
    // SAFETY: kill(-1) signals every process but PID 1 (us); no pointers.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        if !user_processes_left() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
        libc::sync();
    }
    let mounts = std::fs::read_to_string("/proc/mounts")
        .map(|t| procfs::mounts(&t))
        .unwrap_or_default();
    // Innermost first.
    for m in mounts.iter().rev() {
        if procfs::is_virtual_fs(&m.fstype) {
            continue;
        }
        let target = Path::new(&m.target);
        if m.target != "/" && sys::umount(target).is_ok() {
            continue;
        }
        if let Err(e) = sys::mount("", target, "", libc::MS_REMOUNT | libc::MS_RDONLY, "") {
            super::log(format_args!("remount {} read-only: {e}", m.target));
        }
    }
    // SAFETY: no preconditions.
    unsafe { libc::sync() };
    true
}

/// Whether any process other than us is still alive. kill(-1, 0) cannot
/// tell: it counts kernel threads. They (and zombies) have an empty cmdline.
fn user_processes_left() -> bool {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.bytes().all(|b| b.is_ascii_digit())
            && name != me
            && std::fs::read(e.path().join("cmdline")).is_ok_and(|c| !c.is_empty())
    })
}

/// Powers off or reboots now. Only returns on failure (not PID 1's privileges).
pub fn power(action: PowerAction) -> std::io::Error {
    let cmd = match action {
        PowerAction::Poweroff => libc::RB_POWER_OFF,
        PowerAction::Reboot => libc::RB_AUTOBOOT,
    };
    // SAFETY: reboot(2) with a valid command; the disks were synced.
    unsafe { libc::reboot(cmd) };
    std::io::Error::last_os_error()
}

/// EVIOCGBIT(EV_KEY, len): which key codes a device can report.
fn eviocgbit_key(len: usize) -> libc::c_ulong {
    const IOC_READ: libc::c_ulong = 2;
    (IOC_READ << 30) | ((len as libc::c_ulong) << 16) | ((b'E' as libc::c_ulong) << 8) | 0x21
}

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

/// Watches every input device that reports KEY_POWER; on a press, shuts down
/// cleanly and powers off (what QMP `system_powerdown` asks for).
pub fn watch_power_button() {
    let Ok(dir) = std::fs::read_dir("/dev/input") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("event") {
            continue;
        }
        let path = entry.path();
        let Ok(fd) = sys::open(&path, libc::O_RDONLY) else {
            continue;
        };
        let mut bits = [0u8; 96];
        // SAFETY: the ioctl writes at most bits.len() bytes into bits.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                eviocgbit_key(bits.len()) as _,
                bits.as_mut_ptr(),
            )
        };
        let k = KEY_POWER as usize;
        if rc < 0 || bits[k / 8] & (1 << (k % 8)) == 0 {
            continue;
        }
        std::thread::spawn(move || {
            // struct input_event on 64-bit: timeval (16), type u16, code u16, value i32.
            let mut ev = [0u8; 24];
            loop {
                match sys::read(&fd, &mut ev) {
                    Ok(24) => {
                        let ty = u16::from_ne_bytes([ev[16], ev[17]]);
                        let code = u16::from_ne_bytes([ev[18], ev[19]]);
                        let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
                        if ty == EV_KEY && code == KEY_POWER && value == 1 {
                            super::log(format_args!("power button: shutting down"));
                            if prepare_shutdown() {
                                let e = power(PowerAction::Poweroff);
                                super::log(format_args!("poweroff: {e}"));
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn eviocgbit_matches_linux_header() {
        // _IOC(_IOC_READ, 'E', 0x20 + EV_KEY, 96) from <linux/input.h>.
        assert_eq!(super::eviocgbit_key(96), 0x8060_4521);
    }
}
