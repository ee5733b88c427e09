//! The guest side: bulkhead-agent as PID 1.
//!
//! Stage 1 (from the initramfs): mount the API file systems, load the modules
//! in /lib/modules/load.list, set the host name, configure the network from
//! the command line; with `bulkhead.root=` switch into the root LU and exec its
//! /usr/sbin/bulkhead-agent (stage 2, which skips what is done). Then print
//! the ready line, reap zombies, watch the power button, keep a shell (or a
//! root LU's getty) on the console and serve the host.

pub mod children;
pub mod console;
pub mod grants;
pub mod identity;
pub mod power;
pub mod procfs;
pub mod region;
pub mod relay;
pub mod serve;
pub mod service;
pub mod session;
pub mod sys;
pub mod tool;

use std::path::Path;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::cmdline::{self, BootConfig};
use crate::proto::READY_LINE;

/// Set in the environment of the stage-2 agent after switch_root.
const STAGE_ENV: &str = "BULKHEAD_AGENT_STAGE";
/// Where the stage-2 agent lives in a root LU.
pub const ROOT_AGENT: &str = "/usr/sbin/bulkhead-agent";
const LOAD_LIST: &str = "/lib/modules/load.list";

/// Logs a line on the console. Never panics: PID 1 may have no console at all
/// (`-serial none`), and a panicking PID 1 panics the kernel.
pub(crate) fn log(msg: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "bulkhead-agent: {msg}");
}

/// Entry point of the binary. As PID 1 it must never exit: after a failure
/// (or a panic) it logs and idles, so the kernel does not panic.
pub fn main() -> ! {
    if let Err(p) = std::panic::catch_unwind(run) {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        log(format_args!("internal error: {msg}"));
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn run() {
    let pid1 = std::process::id() == 1;
    let stage2 = std::env::var_os(STAGE_ENV).is_some();
    std::env::set_var(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    if std::env::var_os("HOME").is_none() {
        std::env::set_var("HOME", "/root");
    }
    std::env::remove_var(STAGE_ENV);

    let mut root_lu = false;
    let mut deferred: Vec<String> = Vec::new();
    if pid1 && !stage2 {
        mount_api_filesystems();
        sys::ensure_console_fds();
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (cfg, warnings) = cmdline::parse(&cmdline);
    // bulkhead.debug: one console line per boot step with the guest's uptime.
    let step = |what: &str| {
        if cfg.debug {
            log(format_args!("{what} at {} ms", sys::boottime_ms()));
        }
    };
    step("api file systems mounted");
    if pid1 && !stage2 {
        for w in &warnings {
            log(format_args!("ignoring {w}"));
        }
        // Without a root LU to switch into, the power button's modules load
        // after the ready line (they are in the initramfs only, so a root LU
        // boot loads them now).
        let defer = cfg.root.is_none();
        deferred = load_modules(Path::new(LOAD_LIST), cfg.debug, defer);
        step("modules loaded");
        set_hostname(&cfg);
        configure_network(&cfg);
        step("network configured");
        if let Some(dev) = &cfg.root {
            // Only returns on failure: then keep serving from the initramfs.
            let e = switch_root(dev, cfg.rootfstype());
            log(format_args!("root LU {dev}: {e}; staying in the initramfs"));
        }
    } else if stage2 {
        root_lu = true;
        // The LU's own /etc/hostname names it unless the command line does.
        if cfg.hostname.is_none() {
            let name = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            let name = name.trim();
            if cmdline::validate_hostname(name).is_ok() {
                if let Err(e) = sys::sethostname(name) {
                    log(format_args!("sethostname {name}: {e}"));
                }
            }
        }
    }

    // Open the host channel first when it is already there, so the agent
    // answers the moment the ready line is out; never wait for it here: the
    // ready line does not depend on the host channel.
    let port = serve::open_port_now();
    step(if port.is_some() {
        "host port opened"
    } else {
        "host port not there yet"
    });
    // The engine waits for this exact line on the console.
    {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{READY_LINE}").and_then(|_| out.flush());
    }
    let boot_ms = sys::boottime_ms();

    let children = children::Children::new();
    if pid1 {
        children.spawn_reaper();
        let console_children = children.clone();
        std::thread::spawn(move || {
            // Right after the ready line the host's first hello is waiting: on
            // a 1-vCPU guest under TCG these loads would hold up its answer.
            wait_host_greeted(Duration::from_secs(1));
            for m in &deferred {
                if let Err(e) = sys::finit_module(Path::new(m)) {
                    log(format_args!("module {m}: {e}"));
                }
            }
            std::thread::spawn(move || console::keep(console_children, root_lu));
            power::watch_power_button();
        });
    }
    let e = serve::serve(serve::Boot { boot_ms, root_lu }, children, port);
    log(format_args!("cannot serve the host: {e}"));
}

fn mount_api_filesystems() {
    use libc::{MS_NODEV, MS_NOEXEC, MS_NOSUID};
    let mounts: [(&str, &str, &str, libc::c_ulong, &str); 7] = [
        (
            "proc",
            "/proc",
            "proc",
            MS_NOSUID | MS_NODEV | MS_NOEXEC,
            "",
        ),
        (
            "sysfs",
            "/sys",
            "sysfs",
            MS_NOSUID | MS_NODEV | MS_NOEXEC,
            "",
        ),
        ("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755"),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MS_NOSUID | MS_NOEXEC,
            "gid=5,mode=620,ptmxmode=666",
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            MS_NOSUID | MS_NODEV,
            "mode=1777",
        ),
        ("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"),
        ("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"),
    ];
    for (src, target, fstype, flags, data) in mounts {
        let t = Path::new(target);
        let _ = std::fs::create_dir_all(t);
        if let Err(e) = sys::mount(src, t, fstype, flags, data) {
            if e.raw_os_error() != Some(libc::EBUSY) {
                log(format_args!("mount {target}: {e}"));
            }
        }
    }
}

/// Loads the modules listed one path per line (blank lines and `#` comments
/// allowed), in order. A module that fails is logged; boot goes on.
/// Modules only the power-button watcher needs; they may load after the
/// ready line, off the boot's critical path.
const POWER_BUTTON_MODULES: &[&str] = &["button", "evdev"];

/// Loads the listed modules in order; with `defer`, returns the power-button
/// ones unloaded for the caller to load later.
fn load_modules(list: &Path, debug: bool, defer: bool) -> Vec<String> {
    let mut deferred = Vec::new();
    let Ok(text) = std::fs::read_to_string(list) else {
        return deferred;
    };
    // Transports only load where their bus has virtio devices: no PCI ones
    // on a plain microvm, no MMIO ones on q35. (Neither bus gains virtio
    // devices later without already having one: MMIO devices are fixed at
    // boot, and a PCI bus that can hot-plug carries the agent's own port.)
    let pci = has_virtio_pci();
    let mmio = has_virtio_mmio();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name = Path::new(line)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("");
        if !transport_wanted(name, pci, mmio) {
            continue;
        }
        if defer && POWER_BUTTON_MODULES.contains(&name) {
            deferred.push(line.to_string());
            continue;
        }
        let t0 = sys::boottime_ms();
        if let Err(e) = sys::finit_module(Path::new(line)) {
            log(format_args!("module {line}: {e}"));
        }
        if debug {
            log(format_args!("{name}: {} ms", sys::boottime_ms() - t0));
        }
    }
    deferred
}

/// Whether a module from the load list is needed, given which virtio
/// transports have devices. Everything but the transports always is.
pub fn transport_wanted(module: &str, virtio_pci: bool, virtio_mmio: bool) -> bool {
    match module {
        "virtio_pci" | "virtio_pci_modern_dev" | "virtio_pci_legacy_dev" => virtio_pci,
        "virtio_mmio" => virtio_mmio,
        _ => true,
    }
}

/// Virtio PCI ids: vendor 0x1af4, device 0x1000..=0x107f (ivshmem, 0x1110,
/// is not virtio).
pub fn is_virtio_pci_id(vendor: &str, device: &str) -> bool {
    let hex = |s: &str| u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok();
    hex(vendor) == Some(0x1af4) && hex(device).is_some_and(|d| (0x1000..=0x107f).contains(&d))
}

fn has_virtio_pci() -> bool {
    let Ok(dir) = std::fs::read_dir("/sys/bus/pci/devices") else {
        return false;
    };
    dir.flatten().any(|e| {
        let read = |f: &str| std::fs::read_to_string(e.path().join(f)).unwrap_or_default();
        is_virtio_pci_id(&read("vendor"), &read("device"))
    })
}

/// ACPI (`LNRO0005:NN`, as QEMU microvm describes them) or device-tree /
/// command-line (`...virtio_mmio...`) virtio-mmio devices.
fn has_virtio_mmio() -> bool {
    let Ok(dir) = std::fs::read_dir("/sys/bus/platform/devices") else {
        return false;
    };
    dir.flatten().any(|e| {
        let n = e.file_name();
        let n = n.to_string_lossy();
        n.starts_with("LNRO0005") || n.contains("virtio_mmio") || n.contains("virtio-mmio")
    })
}

fn set_hostname(cfg: &BootConfig) {
    let name = cfg.hostname.as_deref().unwrap_or("bulkhead");
    if let Err(e) = sys::sethostname(name) {
        log(format_args!("sethostname {name}: {e}"));
    }
}

fn configure_network(cfg: &BootConfig) {
    if let Err(e) = sys::ifconfig("lo", None) {
        log(format_args!("lo up: {e}"));
    }
    let Some((ip, prefix)) = cfg.ip else {
        return;
    };
    let iface = cfg.iface();
    // The NIC's driver probes during module load; allow for a late one.
    let sysfs = Path::new("/sys/class/net").join(iface);
    let mut waited = Duration::ZERO;
    while !sysfs.exists() && waited < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
        waited += Duration::from_millis(20);
    }
    if let Err(e) = sys::ifconfig(iface, Some((ip, cmdline::netmask(prefix)))) {
        log(format_args!("{iface} {ip}/{prefix}: {e}"));
        return;
    }
    if let Some(gw) = cfg.gw {
        if let Err(e) = sys::add_default_route(gw) {
            log(format_args!("default route via {gw}: {e}"));
        }
    }
}

/// Mounts the root LU, moves the API mounts into it, makes it `/` and execs
/// its agent. Returns only on failure.
fn switch_root(dev: &str, fstype: &str) -> std::io::Error {
    let new = Path::new("/newroot");
    let _ = std::fs::create_dir_all(new);
    let devpath = Path::new(dev);
    let mut waited = Duration::ZERO;
    while !devpath.exists() && waited < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
        waited += Duration::from_millis(20);
    }
    if let Err(e) = sys::mount(dev, new, fstype, 0, "") {
        return e;
    }
    if !new.join(ROOT_AGENT.trim_start_matches('/')).exists() {
        let _ = sys::umount(new);
        return std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{ROOT_AGENT} is missing in the root LU"),
        );
    }
    for m in ["/dev", "/proc", "/sys", "/run", "/tmp"] {
        let target = new.join(m.trim_start_matches('/'));
        let _ = std::fs::create_dir_all(&target);
        if let Err(e) = sys::mount(m, &target, "", libc::MS_MOVE, "") {
            log(format_args!("move {m}: {e}"));
        }
    }
    if let Err(e) = std::env::set_current_dir(new) {
        return e;
    }
    if let Err(e) = sys::mount(".", Path::new("/"), "", libc::MS_MOVE, "") {
        return e;
    }
    if let Err(e) = sys::chroot(Path::new(".")) {
        return e;
    }
    let _ = std::env::set_current_dir("/");
    use std::os::unix::process::CommandExt;
    std::process::Command::new(ROOT_AGENT)
        .env(STAGE_ENV, "2")
        .exec()
}

/// Set once the host's first hello has been answered.
static HOST_GREETED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// The serve loop answered a hello: work deferred behind it may start.
pub(crate) fn host_greeted() {
    let (lock, cv) = &HOST_GREETED;
    *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
    cv.notify_all();
}

/// Waits until the host was greeted, or `max` passed (no host connected).
fn wait_host_greeted(max: Duration) {
    let (lock, cv) = &HOST_GREETED;
    let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
    let _ = cv.wait_timeout_while(guard, max, |greeted| !*greeted);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_load_only_where_their_bus_has_devices() {
        assert!(!transport_wanted("virtio_pci", false, true));
        assert!(!transport_wanted("virtio_pci_legacy_dev", false, true));
        assert!(transport_wanted("virtio_pci_modern_dev", true, false));
        assert!(!transport_wanted("virtio_mmio", true, false));
        assert!(transport_wanted("virtio_mmio", false, true));
        for always in ["virtio", "virtio_ring", "virtio_blk", "virtio_net", "evdev"] {
            assert!(transport_wanted(always, false, false));
        }
    }

    #[test]
    fn virtio_pci_ids() {
        assert!(is_virtio_pci_id("0x1af4\n", "0x1003\n"));
        assert!(is_virtio_pci_id("0x1af4", "0x1041"));
        assert!(!is_virtio_pci_id("0x1af4", "0x1110")); // ivshmem
        assert!(!is_virtio_pci_id("0x8086", "0x1003"));
        assert!(!is_virtio_pci_id("", ""));
    }
}
