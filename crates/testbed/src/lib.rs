//! Boots the guest image by hand for the crates below the engine (see README).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::net::UnixStream;

pub mod cluster;
mod etcd;
pub use etcd::EtcdCluster;

/// The agent's virtio-serial port name (the engine's `cmdline::AGENT_PORT`).
pub const AGENT_PORT: &str = "org.bulkhead.agent.0";

/// The guest image `make image` caches: `BULKHEAD_IMAGE_DIR`, else
/// ~/.cache/bulkhead/image. Panics with the fix when it is missing.
pub fn image_dir() -> PathBuf {
    let dir = std::env::var_os("BULKHEAD_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/bulkhead/image")
        });
    assert!(
        dir.join("vmlinux").is_file() && dir.join("initramfs.cpio.gz").is_file(),
        "no guest image in {}: run `make image`",
        dir.display()
    );
    dir
}

/// Makes a qcow2 image of `size` (qemu-img's syntax, e.g. "8M"), over
/// `backing` (a qcow2) when given. Fails the test if qemu-img does.
pub fn qcow2(path: &Path, size: &str, backing: Option<&Path>) {
    let mut cmd = std::process::Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2"]);
    if let Some(b) = backing {
        cmd.args(["-F", "qcow2", "-b"]).arg(b);
    }
    let out = cmd.arg(path).arg(size).output().expect("running qemu-img");
    assert!(
        out.status.success(),
        "qemu-img create {}: {out:?}",
        path.display()
    );
}

/// The built `bulkhead` binary: `BULKHEAD_BIN`, else the workspace's debug
/// build. A missing one fails the test: `make test` builds every binary
/// before running the tests.
/// Detaches every mount at or under `dir`, deepest first. A daemon killed
/// with -9 leaves its partitions' share directories bound (its restart would
/// release them); a test tearing its directory down releases them itself.
pub fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    // Field 5 is the mount point, octal-escaped by the kernel.
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("no NUL");
        // SAFETY: umount2 on a NUL-terminated path; failure is harmless here.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

pub fn bulkhead_bin() -> PathBuf {
    let p = std::env::var_os("BULKHEAD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/bulkhead")
        });
    assert!(
        p.exists(),
        "no bulkhead binary at {} (run `make test`, or `cargo build -p bulkhead-cli` first)",
        p.display()
    );
    p
}

/// The host's TSC rate in kHz for `tsc_early_khz=` (a TCG guest's TSC runs at
/// the host's rate; microvm hangs in calibration without it), from
/// /proc/cpuinfo's `cpu MHz`.
pub fn tsc_khz() -> u64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .map(|mhz| (mhz * 1000.0) as u64)
        .unwrap_or(2_600_000)
}

/// One guest's QEMU command line: `image`'s kernel and initramfs under TCG,
/// the console to `console`, the agent's port on the unix socket `agent_socket`.
#[derive(Debug, Clone)]
pub struct GuestQemu {
    pub image: PathBuf,
    /// `microvm` (virtio-mmio) or `q35` (virtio-pci).
    pub machine: String,
    pub smp: u32,
    pub memory_mib: u64,
    /// Appended to the base kernel command line.
    pub append: String,
    pub console: PathBuf,
    pub agent_socket: PathBuf,
    /// More QEMU arguments (disks, more ports).
    pub extra: Vec<String>,
}

impl GuestQemu {
    /// microvm, 1 vCPU, 256 MiB; console.log and agent.sock in `dir`.
    pub fn new(image: &Path, dir: &Path) -> GuestQemu {
        GuestQemu {
            image: image.to_path_buf(),
            machine: "microvm".into(),
            smp: 1,
            memory_mib: 256,
            append: String::new(),
            console: dir.join("console.log"),
            agent_socket: dir.join("agent.sock"),
            extra: Vec::new(),
        }
    }

    /// `virtio-…-device` on microvm, `virtio-…-pci` on q35.
    pub fn virtio(&self, kind: &str) -> String {
        let bus = if self.machine == "microvm" {
            "device"
        } else {
            "pci"
        };
        format!("virtio-{kind}-{bus}")
    }

    pub fn args(&self) -> Vec<String> {
        let mut a = machine_args(&self.image, &self.machine, self.memory_mib, self.smp);
        a.extend([
            "-serial".into(),
            format!("file:{}", self.console.display()),
            "-append".into(),
            format!(
                "console=ttyS0 panic=-1 tsc_early_khz={} no_timer_check quiet {}",
                tsc_khz(),
                self.append
            ),
            "-chardev".into(),
            format!(
                "socket,id=agent0,path={},server=on,wait=off",
                self.agent_socket.display()
            ),
            "-device".into(),
            format!("{},id=vser0", self.virtio("serial")),
            "-device".into(),
            format!("virtserialport,bus=vser0.0,chardev=agent0,name={AGENT_PORT}"),
        ]);
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Starts QEMU (killed when the child is dropped).
    pub fn spawn(&self) -> std::io::Result<tokio::process::Child> {
        let _ = std::fs::remove_file(&self.agent_socket);
        tokio::process::Command::new("qemu-system-x86_64")
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
    }
}

/// The machine, TCG, memory, vCPUs and `image`'s kernel and initramfs.
fn machine_args(image: &Path, machine: &str, memory_mib: u64, smp: u32) -> Vec<String> {
    let img = |f: &str| image.join(f).to_string_lossy().into_owned();
    [
        "-M",
        machine,
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-m",
        &memory_mib.to_string(),
        "-smp",
        &smp.to_string(),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        &img("vmlinux"),
        "-initrd",
        &img("initramfs.cpio.gz"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The peer of the boot benchmarks: QEMU by hand on microvm, 1 vCPU, with the
/// kernel command line `cmdline`, the console on a pipe and the agent's port on a
/// null chardev, plus `extra` arguments. Returns the time from spawn to the line
/// `ready_line` on the console (QEMU is killed then), or an error after `timeout`.
pub async fn plain_qemu_to_ready(
    image: &Path,
    memory_mib: u64,
    cmdline: &str,
    extra: &[&str],
    ready_line: &str,
    timeout: Duration,
) -> std::io::Result<Duration> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut args = machine_args(image, "microvm", memory_mib, 1);
    args.extend(
        [
            "-append",
            cmdline,
            "-serial",
            "stdio",
            "-chardev",
            "null,id=agent0",
            "-device",
            "virtio-serial-device,id=vser0",
            "-device",
            &format!("virtserialport,bus=vser0.0,chardev=agent0,name={AGENT_PORT}"),
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string()),
    );
    let t0 = std::time::Instant::now();
    let mut child = tokio::process::Command::new("qemu-system-x86_64")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let found = tokio::time::timeout(timeout, async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains(ready_line) {
                return true;
            }
        }
        false
    })
    .await;
    let t = t0.elapsed();
    let _ = child.kill().await;
    match found {
        Ok(true) => Ok(t),
        Ok(false) => Err(std::io::Error::other(
            "plain QEMU ended before its ready line",
        )),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no ready line from plain QEMU within {timeout:?}"),
        )),
    }
}

/// Connects to a socket QEMU creates itself once it has parsed its command
/// line: retries, bounded by `timeout`.
pub async fn connect_unix(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match UnixStream::connect(path).await {
            Ok(s) => return Ok(s),
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", path.display()),
                ))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A new PTY: (master, slave, the slave's path), closed when dropped. A
/// stand-in serial line for tests of devices given to partitions.
pub fn pty() -> (
    std::os::fd::OwnedFd,
    std::os::fd::OwnedFd,
    std::path::PathBuf,
) {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (0, 0);
    // SAFETY: both out-pointers are valid; name, termios and size may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    let name = std::fs::read_link(format!("/proc/self/fd/{slave}")).expect("the PTY's name");
    // SAFETY: openpty returned two new descriptors that nothing else owns.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(master),
            std::os::fd::OwnedFd::from_raw_fd(slave),
            name,
        )
    }
}
