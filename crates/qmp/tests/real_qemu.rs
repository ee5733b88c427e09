//! The QMP client against a real QEMU (no guest needed: QEMU waits in -S).

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bulkhead_qmp::{wait_event, QmpClient, QmpError};

struct Qemu {
    child: Child,
    _dir: tempfile::TempDir,
    qmp: std::path::PathBuf,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Binds the QMP socket here and hands the listening fd to QEMU (as libvirt
/// does), so the client can connect at once: no polling for the socket file.
fn spawn_qemu() -> Qemu {
    let dir = tempfile::tempdir().unwrap();
    let qmp = dir.path().join("qmp.sock");
    let listener = std::os::unix::net::UnixListener::bind(&qmp).unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-M",
        "microvm",
        "-accel",
        "tcg",
        "-nodefaults",
        "-display",
        "none",
        "-S",
    ])
    .args([
        "-chardev",
        &format!("socket,id=qmp0,fd={fd},server=on,wait=off"),
    ])
    .args(["-mon", "chardev=qmp0,mode=control"]);
    // SAFETY: pre_exec runs in the forked child before exec; fcntl on an fd we
    // own is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-system-x86_64 is installed by scripts/bootstrap");
    Qemu {
        child,
        _dir: dir,
        qmp,
    }
}

async fn connect(qmp: &Path) -> QmpClient {
    tokio::time::timeout(Duration::from_secs(60), QmpClient::connect(qmp))
        .await
        .expect("QEMU answers QMP within a minute")
        .expect("QMP handshake")
}

#[tokio::test]
async fn commands_events_and_errors() {
    let q = spawn_qemu();
    let c = connect(&q.qmp).await;
    assert!(c.greeting().version.qemu.major >= 7);

    let s = c.query_status().await.unwrap();
    assert_eq!(s.status, "prelaunch");
    assert!(!s.running);

    let mut ev = c.events();
    c.cont().await.unwrap();
    wait_event(&mut ev, Duration::from_secs(30), "RESUME", |e| {
        e.name == "RESUME"
    })
    .await
    .unwrap();
    assert!(c.query_status().await.unwrap().running);

    c.stop().await.unwrap();
    wait_event(&mut ev, Duration::from_secs(30), "STOP", |e| {
        e.name == "STOP"
    })
    .await
    .unwrap();
    assert_eq!(c.query_status().await.unwrap().status, "paused");

    // Errors carry QEMU's class and description.
    let err = c.execute_value("no-such-command", None).await.unwrap_err();
    assert_eq!(err.class(), Some("CommandNotFound"));
    assert!(err.to_string().contains("no-such-command"), "{err}");
    let err = c
        .device_del("no-such-device")
        .await
        .expect_err("deleting a missing device fails");
    assert!(matches!(err, QmpError::Command { .. }), "{err}");

    // Concurrent commands are matched to their own replies.
    let (a, b, h) = tokio::join!(
        c.query_status(),
        c.execute_value("query-name", None),
        c.human_monitor_command("info status")
    );
    assert_eq!(a.unwrap().status, "paused");
    assert!(b.unwrap().is_object());
    assert!(h.unwrap().contains("paused"));

    c.quit().await.unwrap();
    wait_event(&mut ev, Duration::from_secs(30), "SHUTDOWN", |e| {
        e.name == "SHUTDOWN" && e.data["reason"] == "host-qmp-quit"
    })
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), c.closed())
        .await
        .expect("connection closes after quit");
    assert!(matches!(
        c.query_status().await.unwrap_err(),
        QmpError::Closed | QmpError::Io(_)
    ));
}

#[tokio::test]
async fn connect_to_missing_socket_is_a_clear_error() {
    let err = QmpClient::connect(Path::new("/nonexistent/qmp.sock"))
        .await
        .err()
        .expect("no socket");
    assert!(err.to_string().contains("/nonexistent/qmp.sock"), "{err}");
}
