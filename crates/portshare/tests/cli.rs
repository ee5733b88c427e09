//! The `bulkhead portshare` command itself: SIGHUP reload of the file, the
//! `routes` subcommand, SIGTERM finishing an in-flight request. Needs the
//! `bulkhead` binary (`make test` builds it first and sets BULKHEAD_BIN).

mod common;
use common::*;

use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use bulkhead_testbed::bulkhead_bin as bulkhead;

fn file(
    listen: std::net::SocketAddr,
    admin: &std::path::Path,
    target: std::net::SocketAddr,
) -> String {
    format!(
        "admin_socket = {admin:?}\nshutdown_timeout = \"20s\"\n[[listener]]\nlisten = \"{listen}\"\n\
         [[route]]\nlisten = \"{listen}\"\ndomain = \"a.test\"\ntarget = \"{target}\"\n"
    )
}

async fn wait_for<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while !f().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("condition within 60 s");
}

#[tokio::test]
async fn sighup_reload_routes_command_and_sigterm() {
    let bin = bulkhead();
    let a = http_backend("A").await;
    let b = http_backend("B").await;
    let dir = tempfile::tempdir().unwrap();
    let admin = dir.path().join("admin.sock");
    let cfg = dir.path().join("portshare.toml");
    let listen = std::net::TcpListener::bind(ANY)
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(&cfg, file(listen, &admin, a)).unwrap();
    let mut child = tokio::process::Command::new(&bin)
        .args(["portshare", "serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap() as i32;
    wait_for(|| async { TcpStream::connect(listen).await.is_ok() }).await;
    assert_eq!(get(listen, "a.test", "/").await.body, "A GET / body=0");

    // A keep-alive connection opened before the reload keeps working after it.
    let mut kept = TcpStream::connect(listen).await.unwrap();
    kept.write_all(b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut kept).await.body, "A GET /1 body=0");

    std::fs::write(&cfg, file(listen, &admin, b)).unwrap();
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, 1) }, 0);
    wait_for(|| async { get(listen, "a.test", "/").await.body.starts_with('B') }).await;
    kept.write_all(b"GET /2 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut kept).await.body, "B GET /2 body=0");

    // A broken file is refused and the running table stays.
    std::fs::write(&cfg, "this is [not toml").unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, 1) }, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(listen, "a.test", "/").await.body, "B GET / body=0");

    // The routes subcommand talks to the admin socket.
    let out = tokio::process::Command::new(&bin)
        .args(["portshare", "routes", "--admin"])
        .arg(&admin)
        .args([
            "add",
            "--listen",
            &listen.to_string(),
            "--domain",
            "c.test",
            "--target",
            &a.to_string(),
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokio::process::Command::new(&bin)
        .args(["portshare", "routes", "--admin"])
        .arg(&admin)
        .arg("list")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("c.test") && text.contains(&a.to_string()),
        "{text}"
    );
    assert_eq!(get(listen, "c.test", "/").await.body, "A GET / body=0");
    let out = tokio::process::Command::new(&bin)
        .args(["portshare", "routes", "--admin"])
        .arg(&admin)
        .args([
            "remove",
            "--listen",
            &listen.to_string(),
            "--domain",
            "nope.test",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no route"));

    // SIGTERM with a request in flight: it completes, then the process exits 0.
    let slow = tokio::spawn(async move { get(listen, "a.test", "/slow").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, 15) }, 0);
    let r = slow.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "B slow done"));
    let st = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(st.success());
}
