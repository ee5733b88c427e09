//! Shared by the engine's integration tests: the guest image, run directories,
//! and network namespaces the tests make for themselves.
#![allow(dead_code)]

use std::process::Command;
use std::time::Duration;

use bulkhead_engine::{LaunchOptions, Partition, PartitionSpec};

/// Under TCG on a busy 2-core host a boot can take tens of seconds.
pub const READY: Duration = Duration::from_secs(180);
pub const CMD: Duration = Duration::from_secs(60);

pub use bulkhead_testbed::image_dir;

pub fn spec(name: &str) -> PartitionSpec {
    let img = image_dir();
    PartitionSpec::new(name, img.join("vmlinux"), img.join("initramfs.cpio.gz"))
}

/// A unique partition name per test process, so parallel test binaries and
/// leftovers of killed runs never collide.
pub fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

pub fn opts(dir: &tempfile::TempDir, name: &str) -> LaunchOptions {
    let mut o = LaunchOptions::new(dir.path().join(name));
    o.kill_on_drop = true;
    o
}

pub fn sh(cmd: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), cmd.into()]
}

/// A network namespace with a bridge in it, deleted on drop.
pub struct NetNs {
    pub name: String,
    pub bridge: String,
}

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        let name = format!("bh-{tag}-{}", std::process::id());
        let bridge = "br0".to_string();
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "add", &bridge, "type", "bridge"]);
        run(&["ip", "-n", &name, "link", "set", &bridge, "up"]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        NetNs { name, bridge }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect(args[0]);
    assert!(
        out.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// Runs a shell command in the guest; it must exit 0. Its trimmed stdout.
pub async fn exec_ok(p: &Partition, cmd: &str) -> String {
    let out = p
        .agent()
        .exec(&sh(cmd), None, CMD)
        .await
        .expect("agent exec");
    assert_eq!(
        out.code,
        0,
        "{cmd}: stdout {} stderr {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}
