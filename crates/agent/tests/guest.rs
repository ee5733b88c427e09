//! The agent in a real guest: QEMU (TCG) boots the image `make image` built
//! (BULKHEAD_IMAGE_DIR, default ~/.cache/bulkhead/image) and the host client
//! talks to the agent over the virtio-serial port's unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_agent::{AgentClient, AgentError, PowerAction, READY_LINE};
use bulkhead_testbed::{connect_unix, image_dir, GuestQemu};

/// Generous: guests boot under TCG on a shared 2-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

struct Guest {
    qemu: tokio::process::Child,
    console: PathBuf,
    agent: AgentClient,
}

/// Boots a guest (`machine`: microvm with virtio-mmio, or q35 with
/// virtio-pci) with one virtio disk (`disk`, qcow2) and a QMP socket, and
/// connects to its agent socket.
async fn boot(machine: &str, dir: &Path, disk: &Path, append: &str, smp: u32) -> Guest {
    let mut q = GuestQemu::new(&image_dir(), dir);
    q.machine = machine.into();
    q.smp = smp;
    q.append = append.into();
    let blk = q.virtio("blk");
    q.extra = vec![
        "-drive".into(),
        format!("id=d0,file={},format=qcow2,if=none", disk.display()),
        "-device".into(),
        format!("{blk},drive=d0"),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", dir.join("qmp.sock").display()),
    ];
    let qemu = q
        .spawn()
        .expect("qemu-system-x86_64 (scripts/bootstrap installs it)");
    let stream = connect_unix(&q.agent_socket, Duration::from_secs(30))
        .await
        .unwrap();
    Guest {
        qemu,
        console: q.console,
        agent: AgentClient::from_stream(stream),
    }
}

fn qcow2(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&p)
        .arg("64M")
        .status()
        .expect("qemu-img (qemu-utils)");
    assert!(st.success());
    p
}

fn argv(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_serves_a_real_guest_and_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let disk = qcow2(dir.path(), "disk.qcow2");
    let mut g = boot(
        "microvm",
        dir.path(),
        &disk,
        "bulkhead.hostname=agent-test bulkhead.bogus=1",
        2,
    )
    .await;

    let ready = g.agent.wait_ready(BOOT_TIMEOUT).await.expect("agent ready");
    assert_eq!(
        ready.protocol_version,
        bulkhead_agent::proto::PROTOCOL_VERSION
    );
    assert_eq!(ready.hostname, "agent-test");
    assert_eq!(ready.ncpus, 2);
    assert!(ready.kernel_release.ends_with("-cloud-amd64"), "{ready:?}");
    assert!(ready.boot_ms > 0 && !ready.root_lu);
    let console = std::fs::read_to_string(&g.console).unwrap();
    assert!(console.contains(READY_LINE), "{console}");
    assert!(console.contains("ignoring bulkhead.bogus"), "{console}");

    // exec: exit code, stdout, stderr, stdin.
    let out = g
        .agent
        .exec(
            &argv(&["sh", "-c", "read x; echo out:$x; echo err >&2; exit 5"]),
            Some(b"in\n".to_vec()),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(
        (out.code, &out.stdout[..], &out.stderr[..]),
        (5, &b"out:in\n"[..], &b"err\n"[..])
    );

    // The modules the devices need were loaded: the disk and the port exist.
    let out = g
        .agent
        .exec(
            &argv(&[
                "sh",
                "-c",
                "ls /dev/vda && cat /sys/class/virtio-ports/*/name",
            ]),
            None,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(out.code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("org.bulkhead.agent.0"));

    // Concurrent requests: a slow exec does not hold up a quick one.
    let sleep2 = argv(&["sleep", "2"]);
    let slow = g.agent.exec(&sleep2, None, Duration::from_secs(60));
    let quick = g.agent.info();
    let (slow, info) = tokio::join!(slow, quick);
    assert_eq!(slow.unwrap().code, 0);
    let info = info.unwrap();
    assert!(info.mem_total_kib > 100_000 && info.mem_available_kib <= info.mem_total_kib);
    assert!(info.uptime_ms >= ready.boot_ms);

    // Timeouts and failures.
    match g
        .agent
        .exec(&argv(&["sleep", "60"]), None, Duration::from_millis(500))
        .await
    {
        Err(AgentError::Timeout { .. }) => {}
        other => panic!("{other:?}"),
    }
    match g
        .agent
        .exec(&argv(&["/no/such/program"]), None, Duration::from_secs(10))
        .await
    {
        Err(AgentError::Guest { kind, .. }) => assert_eq!(kind, "spawn"),
        other => panic!("{other:?}"),
    }

    // PID 1 reaps orphans: background children of exited shells leave no zombies.
    let out = g
        .agent
        .exec(
            &argv(&["sh", "-c", "for i in 1 2 3 4; do (sleep 0.1 &); done"]),
            None,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(out.code, 0);
    let out = g
        .agent
        .exec(
            &argv(&[
                "sh",
                "-c",
                "sleep 1; cat /proc/[0-9]*/stat 2>/dev/null | grep -c ') Z ' || true",
            ]),
            None,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n");

    g.agent.set_hostname("renamed").await.unwrap();
    assert_eq!(g.agent.info().await.unwrap().hostname, "renamed");
    assert!(matches!(
        g.agent.set_hostname("bad name").await,
        Err(AgentError::Guest { .. })
    ));

    // A write that nobody syncs is on the disk after a clean shutdown.
    let out = g
        .agent
        .exec(
            &argv(&[
                "sh",
                "-c",
                "echo MARKER-4711 | dd of=/dev/vda bs=512 seek=1 2>/dev/null",
            ]),
            None,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(out.code, 0);
    g.agent.shutdown(PowerAction::Poweroff).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), g.qemu.wait())
        .await
        .expect("guest powers off after the ack")
        .unwrap();
    assert!(status.success(), "{status}");
    let read = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "read -v 512 16"])
        .arg(&disk)
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&read.stdout);
    assert!(dump.contains("4d 41 52 4b 45 52 2d 34 37 31 31"), "{dump}");

    // The connection is gone with QEMU.
    assert!(matches!(g.agent.info().await, Err(AgentError::Closed(_))));
}

/// Sends QMP commands (after the capabilities handshake) and returns what
/// QEMU answered up to the last command's return.
async fn qmp(sock: &Path, commands: &[&str]) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::UnixStream::connect(sock).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd).lines();
    let mut seen = String::new();
    lines.next_line().await.unwrap().expect("QMP greeting");
    for cmd in std::iter::once("qmp_capabilities").chain(commands.iter().copied()) {
        wr.write_all(format!("{{\"execute\":\"{cmd}\"}}\n").as_bytes())
            .await
            .unwrap();
        loop {
            let line = lines.next_line().await.unwrap().expect("QMP reply");
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("\"return\"") || line.contains("\"error\"") {
                break;
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acpi_power_button_powers_off_cleanly_on_q35() {
    // q35: virtio over PCI and the ACPI PM1 power button (microvm, in the
    // other test, covers virtio-mmio).
    let dir = tempfile::tempdir().unwrap();
    let disk = qcow2(dir.path(), "disk.qcow2");
    let mut g = boot("q35", dir.path(), &disk, "", 1).await;
    g.agent.wait_ready(BOOT_TIMEOUT).await.expect("agent ready");
    let out = g
        .agent
        .exec(
            &argv(&[
                "sh",
                "-c",
                "echo BUTTON-0815 | dd of=/dev/vda bs=512 seek=2 2>/dev/null",
            ]),
            None,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(out.code, 0);
    let replies = qmp(&dir.path().join("qmp.sock"), &["system_powerdown"]).await;
    assert!(replies.contains("\"return\""), "{replies}");
    let status = tokio::time::timeout(Duration::from_secs(60), g.qemu.wait())
        .await
        .expect("the power button powers the guest off")
        .unwrap();
    assert!(status.success(), "{status}");
    let console = std::fs::read_to_string(&g.console).unwrap();
    assert!(console.contains("power button"), "{console}");
    let read = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "read -v 1024 16"])
        .arg(&disk)
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&read.stdout);
    assert!(dump.contains("42 55 54 54 4f 4e 2d 30 38 31 35"), "{dump}");
}
