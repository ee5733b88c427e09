//! `image rootfs` end to end: debootstrap a Debian root LU (the package set is
//! cached after the first run), boot it under QEMU with the image `make image`
//! built and `bulkhead.root=/dev/vda`, and check that a file written in one
//! boot is there in the next (clean shutdown, no journal recovery), and that
//! the LU's own getty holds the serial console.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_image::rootfs::{self, RootfsOptions};

mod common;

use common::{boot, workspace};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

async fn boot_and(dir: &Path, lu: &Path, script: &str) -> (bulkhead_agent::ReadyInfo, String) {
    let img = bulkhead_testbed::image_dir();
    let extra = [
        "-drive".to_string(),
        format!("id=d0,file={},format=qcow2,if=none", lu.display()),
        "-device".to_string(),
        "virtio-blk-device,drive=d0".to_string(),
    ];
    let g = boot(dir, &img, "bulkhead.root=/dev/vda", &extra).await;
    let agent = &g.agent;
    let ready = agent.wait_ready(BOOT_TIMEOUT).await.expect("agent ready");
    let out = agent
        .exec(
            &["sh".into(), "-c".into(), script.into()],
            None,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(out.code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    g.power_off().await;
    (ready, String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_root_lu_boots_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let lu = dir.path().join("root.qcow2");
    let mut opts = RootfsOptions::new(&lu);
    opts.size_bytes = 512 << 20;
    opts.agent = workspace().join(bulkhead_image::DEFAULT_AGENT);
    opts.hostname = "lu-test".into();
    let mut steps = 0;
    let built = tokio::task::spawn_blocking(move || {
        rootfs::rootfs(&opts, &mut |l| {
            eprintln!("{l}");
            steps += 1;
        })
        .map(|_| steps)
    })
    .await
    .unwrap();
    assert_eq!(
        built.expect("rootfs builds"),
        5,
        "one progress line per step"
    );

    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&lu)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 512u64 << 20);

    let (ready, out) = boot_and(
        dir.path(),
        &lu,
        // The LU's own getty holds its console (started after the agent
        // greeted the host: wait for it, bounded).
        "grep -q bookworm /etc/os-release && cat /etc/hostname && echo persisted-42 > /root/note \
         && for i in $(seq 300); do cat /proc/[0-9]*/comm 2>/dev/null | grep -qx agetty && break; \
         sleep 0.1; done; cat /proc/[0-9]*/comm 2>/dev/null | grep -x agetty",
    )
    .await;
    assert!(ready.root_lu, "{ready:?}");
    assert_eq!(ready.hostname, "lu-test");
    assert_eq!(out, "lu-test\nagetty\n");

    let (_, out) = boot_and(
        dir.path(),
        &lu,
        "cat /root/note; dmesg | grep -c 'recovery complete' || true",
    )
    .await;
    assert_eq!(out, "persisted-42\n0\n");
}

#[test]
fn rootfs_rejects_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = RootfsOptions::new(dir.path().join("x.qcow2"));
    o.agent = PathBuf::from("/bin/busybox");
    o.size_bytes = 1 << 20;
    let e = rootfs::rootfs(&o, &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("too small"), "{e}");
    o.size_bytes = 1 << 30;
    o.agent = dir.path().join("none");
    let e = rootfs::rootfs(&o, &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("make agent"), "{e}");
    assert!(!dir.path().join("x.qcow2").exists());
}
