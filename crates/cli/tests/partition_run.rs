//! `bulkhead partition run`: a real partition in the foreground, its console
//! on stdout and stdin, stopped gracefully by Ctrl-C, SIGTERM or SIGHUP, and
//! never outlived by its QEMU.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Under TCG on a busy 2-core host a boot can take tens of seconds.
const BOOT: Duration = Duration::from_secs(240);
const EXIT: Duration = Duration::from_secs(90);

fn image_dir() -> String {
    bulkhead_testbed::image_dir().to_string_lossy().into_owned()
}

/// A partition name no other test or run shares: it marks our QEMU in /proc.
fn unique(tag: &str) -> String {
    format!("clirun-{tag}-{}", std::process::id())
}

/// One `bulkhead partition run`, its stderr as lines and stdout as bytes.
struct Run {
    child: Child,
    name: String,
    stdin: Option<ChildStdin>,
    stderr: mpsc::Receiver<String>,
    stdout: mpsc::Receiver<Vec<u8>>,
    err_seen: Vec<String>,
    out_seen: Vec<u8>,
}

impl Run {
    fn start(tag: &str, stdin: bool) -> Run {
        let name = unique(tag);
        let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args(["partition", "run", "--image", &image_dir()])
            .args(["--memory", "192M", "--vcpus", "2", "--name", &name])
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (etx, stderr) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = etx.send(l);
            }
        });
        let (otx, stdout) = mpsc::channel();
        let mut out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || otx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Run {
            stdin: child.stdin.take(),
            child,
            name,
            stderr,
            stdout,
            err_seen: Vec::new(),
            out_seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `what`; fails on the partition's end.
    fn wait_stderr(&mut self, what: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(l) => {
                    self.err_seen.push(l.clone());
                    if l.contains(what) {
                        return l;
                    }
                    assert!(
                        !l.contains("partition ended"),
                        "ended before {what:?}: {:#?}",
                        self.err_seen
                    );
                }
                Err(e) => panic!("no {what:?} ({e}); stderr: {:#?}", self.err_seen),
            }
        }
    }

    /// Waits up to `within` for the console (stdout) to show `what`.
    fn console_shows(&mut self, what: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while !String::from_utf8_lossy(&self.out_seen).contains(what) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(chunk) => self.out_seen.extend(chunk),
                Err(_) => return false,
            }
        }
        true
    }

    fn expect_console(&mut self, what: &str, why: &str) {
        assert!(
            self.console_shows(what, Duration::from_secs(60)),
            "{why}; console:\n{}",
            String::from_utf8_lossy(&self.out_seen)
        );
    }

    /// Types `line` on the console until `expect` comes back: the serial
    /// port drops what arrives before the guest's shell opens it.
    fn type_until(&mut self, line: &str, expect: &str) {
        let deadline = Instant::now() + BOOT;
        while Instant::now() < deadline {
            self.type_raw(line.as_bytes());
            if self.console_shows(expect, Duration::from_secs(3)) {
                return;
            }
        }
        panic!(
            "{expect:?} never came back; console:\n{}",
            String::from_utf8_lossy(&self.out_seen)
        );
    }

    fn type_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("started with stdin");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits (bounded) for the command to exit and returns its status.
    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "bulkhead did not exit; stderr: {:#?}",
                self.err_seen
            );
            // Drain stderr meanwhile, so it can never block on a full pipe.
            if let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(100)) {
                self.err_seen.push(l);
            }
        }
    }

    /// Everything the command wrote to stderr: after it exited, the reader
    /// thread may still be delivering its last lines, so read until the pipe
    /// closes (bounded, in case a child process still holds it open).
    fn rest_of_stderr(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(l) => self.err_seen.push(l),
                Err(_) => break,
            }
        }
        self.err_seen.join("\n")
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // Whatever the test's outcome, leave no QEMU and no run directory.
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in qemu_pids(&self.name) {
            // SAFETY: kill(2) on a QEMU this test started.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        let run_dir =
            std::env::temp_dir().join(format!("bulkhead-run-{}-{}", self.name, self.child.id()));
        let _ = std::fs::remove_dir_all(run_dir);
    }
}

/// Live QEMU processes whose command line carries `marker`.
fn qemu_pids(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmd.split(|&b| b == 0);
        let is_qemu = args
            .next()
            .is_some_and(|a0| String::from_utf8_lossy(a0).contains("qemu-system"));
        let marked = cmd
            .split(|&b| b == 0)
            .any(|a| String::from_utf8_lossy(a).contains(marker));
        if is_qemu && marked && alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// Running, that is neither gone nor a zombie nobody reaped yet.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Waits (bounded) until none of `pids` runs; returns those still running.
fn wait_gone(pids: &[u32], within: Duration) -> Vec<u32> {
    let deadline = Instant::now() + within;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn runs_in_foreground_until_ctrl_c() {
    let mut run = Run::start("int", false);
    let l = run.wait_stderr("agent ready", BOOT);
    assert!(l.contains("2 vCPU"), "{l}");
    run.signal(libc::SIGINT);
    let status = run.wait_exit(EXIT);
    let all_err = run.rest_of_stderr();
    assert!(status.success(), "exit {status:?}; stderr:\n{all_err}");
    assert!(
        all_err.contains("partition ended: guest powered off"),
        "{all_err}"
    );
    // The guest console reached our stdout.
    assert!(run.console_shows("bulkhead-agent: ready", Duration::from_secs(5)));
}

/// SIGTERM (and SIGHUP, a closed terminal) stop the partition as Ctrl-C does.
fn stopped_by(sig: libc::c_int, tag: &str, name: &str) {
    let mut run = Run::start(tag, false);
    run.wait_stderr("agent ready", BOOT);
    let qemu = qemu_pids(&run.name);
    assert_eq!(qemu.len(), 1, "one QEMU marked {}: {qemu:?}", run.name);
    run.signal(sig);
    let status = run.wait_exit(EXIT);
    let all_err = run.rest_of_stderr();
    assert!(status.success(), "exit {status:?}; stderr:\n{all_err}");
    assert!(all_err.contains(&format!("{name}: stopping")), "{all_err}");
    assert!(
        all_err.contains("partition ended: guest powered off"),
        "{all_err}"
    );
    assert_eq!(
        wait_gone(&qemu, EXIT),
        Vec::<u32>::new(),
        "QEMU outlived bulkhead"
    );
}

#[test]
fn sigterm_stops_the_partition() {
    stopped_by(libc::SIGTERM, "term", "SIGTERM");
}

#[test]
fn sighup_stops_the_partition() {
    stopped_by(libc::SIGHUP, "hup", "SIGHUP");
}

#[test]
fn qemu_does_not_outlive_a_killed_bulkhead() {
    let mut run = Run::start("kill", false);
    let started = run.wait_stderr("partition started (QEMU pid", BOOT);
    let qemu = qemu_pids(&run.name);
    assert_eq!(qemu.len(), 1, "one QEMU marked {}: {qemu:?}", run.name);
    assert!(
        started.contains(&format!("QEMU pid {}", qemu[0])),
        "{started}"
    );
    run.signal(libc::SIGKILL);
    run.wait_exit(EXIT);
    assert_eq!(
        wait_gone(&qemu, Duration::from_secs(30)),
        Vec::<u32>::new(),
        "QEMU outlived a killed bulkhead"
    );
}

#[test]
fn the_console_runs_a_shell_with_job_control() {
    let mut run = Run::start("console", true);
    run.wait_stderr("agent ready", BOOT);
    // The shell evaluates what it is given: an echo of the typed line would
    // show the arithmetic, not its result.
    run.type_until("echo shell-$((6*7))-ok\n", "shell-42-ok");
    // Ctrl-C reaches the foreground job: the console is the shell's
    // controlling terminal. The job reports itself running before we press it.
    run.type_raw(b"sh -c 'echo sleeping-$((1+2)); exec sleep 600'\n");
    run.expect_console("sleeping-3", "the job did not start");
    run.type_raw(b"\x03");
    run.type_raw(b"echo after-ctrl-c-$((3*5))\n");
    run.expect_console("after-ctrl-c-15", "Ctrl-C did not end the foreground job");
    // A shell that exits is replaced.
    run.type_raw(b"exit\n");
    run.type_until("echo again-$((5*5))\n", "again-25");
    run.signal(libc::SIGINT);
    assert!(run.wait_exit(EXIT).success(), "{}", run.rest_of_stderr());
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

/// docs/engine.md's first example gives no --image: it is the daemon's image
/// directory, $BULKHEAD_IMAGE_DIR else ~/.cache/bulkhead/image.
#[test]
fn image_defaults_to_the_daemons_image_dir() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["partition", "run", "--memory", "256M", "--vcpus", "2"])
        .env_remove("BULKHEAD_IMAGE_DIR")
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "kernel {}/.cache/bulkhead/image/vmlinux does not exist",
        home.path().display()
    );
    assert!(err.contains(&want), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["partition", "run"])
        .env("BULKHEAD_IMAGE_DIR", "/nonexistent-env-image")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kernel /nonexistent-env-image/vmlinux does not exist"),
        "{err}"
    );
}
