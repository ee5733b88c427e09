//! Real partitions: QEMU booting Debian's kernel with our initramfs and agent
//! (under TCG on hosts without hardware virtualization). The tests in this file
//! run in parallel; each boots its own partitions.

mod common;

use std::time::Duration;

use bulkhead_engine::{
    AdapterSpec, DiskFormat, DiskSpec, EngineError, ExitReason, MachineKind, NetSpec, Partition,
    RunState,
};
use common::*;

/// An ext4 filesystem in a qcow2 LU, made on the host.
fn make_qcow2_ext4(dir: &std::path::Path) -> std::path::PathBuf {
    let raw = dir.join("fs.raw");
    let q = dir.join("fs.qcow2");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run(&["mkfs.ext4", "-q", "-F", raw.to_str().unwrap()]);
    run(&[
        "qemu-img",
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    std::fs::remove_file(raw).unwrap();
    q
}

/// Two boots on one qcow2 disk: 2 vCPUs then 1; exec round trip; a file
/// written without sync survives a graceful stop and is read back next boot.
#[tokio::test(flavor = "multi_thread")]
async fn vcpus_exec_and_disk_survive_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    let disk = make_qcow2_ext4(dir.path());
    let name = unique("persist");
    let mut s = spec(&name);
    s.vcpus = 2;
    s.adapters.push(AdapterSpec::Disk(DiskSpec {
        id: "data".into(),
        path: disk.clone(),
        format: DiskFormat::Qcow2,
        readonly: false,
        backing: None,
        shared_read: false,
    }));

    let p = Partition::start(s.clone(), opts(&dir, "boot1"), READY)
        .await
        .expect("first boot");
    assert_eq!(exec_ok(&p, "nproc").await, "2");
    let info = p.agent().info().await.unwrap();
    assert_eq!(info.ncpus, 2);

    // Exit code and both output streams come back.
    let out = p
        .agent()
        .exec(&sh("echo out; echo err >&2; exit 7"), None, CMD)
        .await
        .unwrap();
    assert_eq!(
        (out.code, text(&out.stdout), text(&out.stderr)),
        (7, "out".into(), "err".into())
    );

    let marker = format!("written-by-{}", std::process::id());
    exec_ok(
        &p,
        &format!("mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && echo {marker} > /mnt/marker"),
    )
    .await;
    let exit = p.stop(Duration::from_secs(90)).await.unwrap();
    assert_eq!(exit.reason, ExitReason::Poweroff, "graceful stop: {exit:?}");
    drop(p);

    s.vcpus = 1;
    let p = Partition::start(s, opts(&dir, "boot2"), READY)
        .await
        .expect("second boot");
    assert_eq!(exec_ok(&p, "nproc").await, "1");
    let got = exec_ok(
        &p,
        "mkdir -p /mnt && mount -t ext4 -o ro /dev/vda /mnt && cat /mnt/marker",
    )
    .await;
    assert_eq!(got, marker);
    // Forced stop: QEMU is killed, and the reason says so.
    let exit = p.kill().await.unwrap();
    assert!(
        matches!(exit.reason, ExitReason::Killed { signal: 9 }),
        "{exit:?}"
    );
    assert!(exit.is_failure());
}

/// Two partitions on one bridge (in a namespace this test makes) talk TCP.
#[tokio::test(flavor = "multi_thread")]
async fn two_partitions_on_one_bridge_talk_tcp() {
    let ns = NetNs::new("tcp");
    let dir = tempfile::tempdir().unwrap();
    let mk = |n: &str, ip: &str| {
        let mut s = spec(&unique(n));
        s.adapters.push(AdapterSpec::Net(NetSpec {
            id: "n0".into(),
            bridge: ns.bridge.clone(),
            mac: None,
            tap: None,
            ip: Some(ip.into()),
            gateway: None,
        }));
        let mut o = opts(&dir, n);
        o.netns = Some(ns.name.clone());
        (s, o)
    };
    let (sa, oa) = mk("net-a", "10.200.0.2/24");
    let (sb, ob) = mk("net-b", "10.200.0.3/24");
    let (a, b) = tokio::join!(
        Partition::start(sa, oa, READY),
        Partition::start(sb, ob, READY)
    );
    let (a, b) = (a.expect("partition a"), b.expect("partition b"));
    assert_eq!(a.taps().len(), 1);

    // A listens; B connects and sends; A's file then holds B's bytes.
    exec_ok(&a, "nc -l -p 5000 > /tmp/got 2>/dev/null </dev/null &").await;
    let payload = format!("hello-from-b-{}", std::process::id());
    exec_ok(
        &b,
        &format!("for i in $(seq 100); do echo {payload} | nc -w 5 10.200.0.2 5000 && exit 0; sleep 0.2; done; exit 1"),
    )
    .await;
    let got = exec_ok(
        &a,
        "for i in $(seq 100); do [ -s /tmp/got ] && break; sleep 0.1; done; cat /tmp/got",
    )
    .await;
    assert_eq!(got, payload);

    // A stops through its agent; B through the ACPI power button alone (the
    // second step of a graceful stop, used when the agent does not answer).
    b.qmp().system_powerdown().await.unwrap();
    let ea = a.stop(Duration::from_secs(60)).await.unwrap();
    assert_eq!(ea.reason, ExitReason::Poweroff);
    let eb = tokio::time::timeout(READY, b.wait_exit())
        .await
        .expect("ACPI power-off");
    assert_eq!(eb.reason, ExitReason::Poweroff);
    // The engine removed the TAPs when QEMU ended.
    for p in [&a, &b] {
        let out = std::process::Command::new("ip")
            .args(["-n", &ns.name, "link", "show", "dev", &p.taps()[0]])
            .output()
            .unwrap();
        assert!(!out.status.success(), "TAP {} left behind", p.taps()[0]);
    }
}

/// A disk hot-plugged through QMP appears in the guest, then unplugs.
#[tokio::test(flavor = "multi_thread")]
async fn hotplugged_disk_appears_and_unplugs() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(&unique("hotplug"));
    s.hotplug_slots = 1;
    assert_eq!(s.machine, MachineKind::Auto);
    let p = Partition::start(s, opts(&dir, "hp"), READY)
        .await
        .expect("boot q35");
    assert_eq!(exec_ok(&p, "ls /sys/block | grep -c vd || true").await, "0");

    let disk = dir.path().join("hot.raw");
    let marker = b"HOTPLUG-MARKER-123";
    let mut data = marker.to_vec();
    data.resize(1 << 20, 0);
    std::fs::write(&disk, &data).unwrap();
    p.hotplug_disk(DiskSpec {
        id: "hot0".into(),
        path: disk.clone(),
        format: DiskFormat::Raw,
        readonly: true,
        backing: None,
        shared_read: false,
    })
    .await
    .expect("hot-plug");
    assert_eq!(p.hotplugged().len(), 1);
    let got = exec_ok(
        &p,
        "for i in $(seq 300); do [ -b /dev/vda ] && break; sleep 0.1; done; dd if=/dev/vda bs=18 count=1 2>/dev/null",
    )
    .await;
    assert_eq!(got.as_bytes(), marker);

    // A second disk does not fit: one slot only.
    let err = p
        .hotplug_disk(DiskSpec {
            id: "hot1".into(),
            path: disk,
            format: DiskFormat::Raw,
            readonly: true,
            backing: None,
            shared_read: false,
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no free hot-plug slot"), "{err}");

    p.unplug("hot0", Duration::from_secs(60))
        .await
        .expect("unplug");
    assert!(p.hotplugged().is_empty());
    let left = exec_ok(&p, "for i in $(seq 100); do [ -b /dev/vda ] || break; sleep 0.1; done; ls /sys/block | grep -c vd || true").await;
    assert_eq!(left, "0");
    assert_eq!(p.status().await.unwrap(), RunState::Running);
    p.kill().await.unwrap();
}

/// A guest whose kernel panics is reported failed, with the panic line.
#[tokio::test(flavor = "multi_thread")]
async fn guest_panic_is_reported_with_reason() {
    let dir = tempfile::tempdir().unwrap();
    let p = Partition::start(spec(&unique("panic")), opts(&dir, "panic"), READY)
        .await
        .expect("boot");
    // Pause and resume first: the guest keeps running afterwards.
    p.pause().await.unwrap();
    assert_eq!(p.status().await.unwrap(), RunState::Paused);
    p.resume().await.unwrap();
    assert_eq!(p.status().await.unwrap(), RunState::Running);

    // The agent may not get to answer: the kernel dies under it.
    let _ = p
        .agent()
        .exec(
            &sh("echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger"),
            None,
            Duration::from_secs(5),
        )
        .await;
    let exit = tokio::time::timeout(READY, p.wait_exit())
        .await
        .expect("QEMU exits after the panic");
    assert!(exit.is_failure(), "{exit:?}");
    match &exit.reason {
        ExitReason::GuestPanic { message } => {
            assert!(message.contains("Kernel panic"), "{message}")
        }
        other => panic!(
            "expected a panic, got {other:?}; console: {:?}",
            exit.console_tail
        ),
    }
}

#[tokio::test]
async fn bad_specs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(&unique("bad"));
    s.boot.kernel = dir.path().join("no-such-vmlinux");
    let e = Partition::launch(s, opts(&dir, "k")).await.unwrap_err();
    assert!(
        matches!(e, EngineError::MissingFile { what: "kernel", .. }),
        "{e}"
    );
    assert!(e.to_string().contains("no-such-vmlinux"));

    let mut s = spec(&unique("bad"));
    s.memory_mib = 32;
    let e = Partition::launch(s, opts(&dir, "m")).await.unwrap_err();
    assert!(e.to_string().contains("too small"), "{e}");

    // QEMU itself refuses the option: its own words come back.
    let mut s = spec(&unique("bad"));
    s.machine_options.push("no-such-option=on".into());
    let e = Partition::launch(s, opts(&dir, "o")).await.unwrap_err();
    assert!(matches!(e, EngineError::QemuStart(_)), "{e}");
    assert!(e.to_string().contains("no-such-option"), "{e}");
}

/// QEMU outlives its handle; a new handle adopts it from the run directory.
/// QEMU also runs as an unprivileged user here.
#[tokio::test(flavor = "multi_thread")]
async fn adopt_after_the_handle_is_gone_and_run_unprivileged() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(&unique("adopt"));
    let mut o = opts(&dir, "adopt");
    o.kill_on_drop = false;
    o.run_as = Some("nobody".into());
    let p = Partition::start(s.clone(), o.clone(), READY)
        .await
        .expect("boot");
    let pid = p.pid();
    // This QEMU outlives its handle on purpose; make sure a failing assertion
    // below does not leave it running.
    struct Reap(u32);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &self.0.to_string()])
                .status();
        }
    }
    let _reap = Reap(pid);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string();
    assert!(
        !uid_line.split_whitespace().skip(1).any(|u| u == "0"),
        "QEMU runs as root: {uid_line}"
    );
    drop(p);

    let q = Partition::adopt(s, o).await.expect("adopt");
    assert_eq!(q.pid(), pid);
    assert_eq!(exec_ok(&q, "echo adopted").await, "adopted");
    let e = q.stop(Duration::from_secs(60)).await.unwrap();
    assert_eq!(e.reason, ExitReason::Poweroff);
}

/// A guest whose agent never comes up: a timeout error with console lines.
#[tokio::test(flavor = "multi_thread")]
async fn guest_that_never_gets_ready_times_out_with_console() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(&unique("noready"));
    // The kernel runs a shell instead of the agent.
    s.boot.cmdline = "rdinit=/bin/sh".into();
    let p = Partition::launch(s, opts(&dir, "noready"))
        .await
        .expect("QEMU starts");
    let e = p.wait_ready(Duration::from_secs(20)).await.unwrap_err();
    assert!(matches!(e, EngineError::NotReady { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("not ready") && msg.contains("console"),
        "{msg}"
    );
    p.kill().await.unwrap();
}
