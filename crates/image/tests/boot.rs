//! An image with `--add`ed programs boots and runs them: a dynamically linked
//! host program (its libraries and ELF interpreter come along) and a script.
//! Uses the static agent `make agent` built.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bulkhead_agent::{AgentClient, PowerAction};
use bulkhead_image::build::{self, BuildOptions};

/// The host's TSC rate in kHz for `tsc_early_khz=` (a TCG guest's TSC runs at
/// the host's rate; microvm hangs in calibration without it), from
/// /proc/cpuinfo's `cpu MHz`.
fn tsc_khz() -> u64 {
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

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_programs_run_in_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let script = dir.path().join("hello.sh");
    std::fs::write(&script, "#!/bin/sh\necho \"hello from $(hostname)\"\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut opts = BuildOptions::new(&img);
    opts.agent = workspace().join(bulkhead_image::DEFAULT_AGENT);
    opts.adds = vec![
        "/usr/bin/xz:/opt/bin/xz".parse().unwrap(),
        format!("{}:/usr/local/bin/hello", script.display())
            .parse()
            .unwrap(),
    ];
    let built = tokio::task::spawn_blocking(move || build::build(&opts, &mut |l| eprintln!("{l}")))
        .await
        .unwrap()
        .expect("image builds (run `make agent` first)");
    assert!(built
        .manifest()
        .added
        .iter()
        .any(|(d, _)| d.starts_with("/lib64/ld-linux-x86-64.so.2")));

    let sock = dir.path().join("agent.sock");
    let mut qemu = tokio::process::Command::new("qemu-system-x86_64")
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
        .arg(format!("file:{}", dir.path().join("console.log").display()))
        .arg("-kernel")
        .arg(img.join("vmlinux"))
        .arg("-initrd")
        .arg(img.join("initramfs.cpio.gz"))
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 tsc_early_khz={} no_timer_check quiet bulkhead.hostname=adds",
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
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("qemu-system-x86_64");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let agent = loop {
        match AgentClient::connect(&sock).await {
            Ok(a) => break a,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("{e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    agent
        .wait_ready(Duration::from_secs(120))
        .await
        .expect("ready");

    let out = agent
        .exec(
            &["/opt/bin/xz".into(), "--version".into()],
            None,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(out.code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("XZ Utils"));
    let out = agent
        .exec(&["hello".into()], None, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from adds\n");

    agent.shutdown(PowerAction::Poweroff).await.unwrap();
    let st = tokio::time::timeout(Duration::from_secs(60), qemu.wait())
        .await
        .expect("powers off")
        .unwrap();
    assert!(st.success());
}
