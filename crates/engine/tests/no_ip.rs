//! A partition's TAP is made without the `ip` command: PATH points at an
//! empty directory (QEMU is named by $BULKHEAD_QEMU) and the guest still
//! reaches its bridge. Its own test binary, since it changes the process's
//! environment.

mod common;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use bulkhead_engine::{AdapterSpec, ExitReason, NetSpec, Partition};
use common::*;

fn on_path(bin: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join(bin))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{bin} on PATH"))
}

/// Puts PATH back when the test ends, even by a panic, before the namespace
/// (whose drop runs `ip`) goes.
struct RestorePath(OsString);

impl Drop for RestorePath {
    fn drop(&mut self) {
        std::env::set_var("PATH", &self.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn partition_network_needs_no_ip_command() {
    let ns = NetNs::new("noip");
    run(&[
        "ip",
        "-n",
        &ns.name,
        "addr",
        "add",
        "10.201.0.1/24",
        "dev",
        &ns.bridge,
    ]);
    let ip = on_path("ip");
    if std::env::var_os("BULKHEAD_QEMU").is_none() {
        std::env::set_var("BULKHEAD_QEMU", on_path("qemu-system-x86_64"));
    }
    let empty = tempfile::tempdir().unwrap();
    let _restore = RestorePath(std::env::var_os("PATH").unwrap());
    std::env::set_var("PATH", empty.path());
    assert!(
        Command::new("ip").arg("-V").output().is_err(),
        "no ip on PATH"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(&unique("noip"));
    s.adapters.push(AdapterSpec::Net(NetSpec {
        id: "n0".into(),
        bridge: ns.bridge.clone(),
        mac: None,
        tap: None,
        ip: Some("10.201.0.2/24".into()),
        gateway: None,
    }));
    let mut o = opts(&dir, "noip");
    o.netns = Some(ns.name.clone());
    let p = Partition::start(s, o, READY)
        .await
        .expect("boot with a TAP");
    let tap = p.taps()[0].clone();
    let out = p
        .agent()
        .exec(&sh("ping -c 1 -W 10 10.201.0.1"), None, CMD)
        .await
        .expect("agent exec");
    assert_eq!(out.code, 0, "guest reaches the bridge: {:?}", out);
    let shown = Command::new(&ip)
        .args(["-n", &ns.name, "-j", "link", "show", "dev", &tap])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains(&format!("\"master\":\"{}\"", ns.bridge)),
        "{shown}"
    );

    let e = p.stop(std::time::Duration::from_secs(60)).await.unwrap();
    assert_eq!(e.reason, ExitReason::Poweroff);
    let gone = Command::new(&ip)
        .args(["-n", &ns.name, "link", "show", "dev", &tap])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "TAP {tap} removed when QEMU ended");
}
