//! Shared by the image tests that boot what they built: a microvm QEMU
//! started by hand with the agent's port on a unix socket. (The engine sits
//! above this crate's concerns; these tests check the image, not the engine.)
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bulkhead_agent::AgentClient;

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

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A booting guest: its QEMU (killed on drop) and its agent client.
pub struct Guest {
    pub qemu: tokio::process::Child,
    pub agent: AgentClient,
}

/// Boots `img`'s vmlinux + initramfs.cpio.gz under TCG microvm, 256 MiB,
/// console to `dir/console.log`, with `cmdline` appended to the base kernel
/// command line and `extra` QEMU arguments (disks), and connects the agent.
pub async fn boot(dir: &Path, img: &Path, cmdline: &str, extra: &[String]) -> Guest {
    let sock = dir.join("agent.sock");
    let _ = std::fs::remove_file(&sock);
    let qemu = tokio::process::Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm",
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-m",
            "256",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()))
        .arg("-kernel")
        .arg(img.join("vmlinux"))
        .arg("-initrd")
        .arg(img.join("initramfs.cpio.gz"))
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 tsc_early_khz={} no_timer_check quiet {cmdline}",
            tsc_khz()
        ))
        .arg("-chardev")
        .arg(format!(
            "socket,id=agent0,path={},server=on,wait=off",
            sock.display()
        ))
        .args(["-device", "virtio-serial-device,id=vser0"])
        .args([
            "-device",
            "virtserialport,bus=vser0.0,chardev=agent0,name=org.bulkhead.agent.0",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("qemu-system-x86_64");
    // QEMU binds the socket itself: wait, bounded, until it accepts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let agent = loop {
        match AgentClient::connect(&sock).await {
            Ok(a) => break a,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("{e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    Guest { qemu, agent }
}
