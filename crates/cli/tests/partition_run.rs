//! `bulkhead partition run`: a real partition in the foreground, its console
//! on stdout, stopped gracefully by Ctrl-C (SIGINT).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;

fn image_dir() -> String {
    bulkhead_testbed::image_dir().to_string_lossy().into_owned()
}

#[test]
fn runs_in_foreground_until_ctrl_c() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args([
            "partition",
            "run",
            "--image",
            &image_dir(),
            "--memory",
            "192M",
            "--vcpus",
            "2",
        ])
        .args(["--name", &format!("clirun-{}", std::process::id())])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    let out = std::thread::spawn(move || {
        let mut all = String::new();
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            all.push_str(&l);
            all.push('\n');
        }
        let _ = tx2.send(format!("STDOUT-END:{all}"));
    });
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    // Wait for the engine to report the agent ready (bounded by the engine's
    // own ready timeout, which fails the command).
    let mut err_lines = Vec::new();
    loop {
        let l = rx
            .recv()
            .expect("bulkhead ended before the agent was ready");
        err_lines.push(l.clone());
        if l.contains("agent ready") {
            assert!(l.contains("2 vCPU"), "{l}");
            break;
        }
        assert!(!l.contains("partition ended"), "{err_lines:?}");
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    out.join().unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    let all_err = err_lines
        .iter()
        .chain(rest.iter().filter(|l| !l.starts_with("STDOUT-END:")))
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    let console = rest
        .iter()
        .find_map(|l| l.strip_prefix("STDOUT-END:"))
        .unwrap_or_default()
        .to_string();
    assert!(status.success(), "exit {status:?}; stderr:\n{all_err}");
    assert!(
        all_err.contains("partition ended: guest powered off"),
        "{all_err}"
    );
    // The guest console reached our stdout.
    assert!(
        console.contains("bulkhead-agent: ready"),
        "console:\n{console}"
    );
}

#[test]
fn missing_image_is_a_one_line_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["partition", "run", "--image", "/nonexistent-image-dir"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kernel /nonexistent-image-dir/vmlinux does not exist"),
        "{err}"
    );
}
