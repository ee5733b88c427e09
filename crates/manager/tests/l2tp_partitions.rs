//! L2TP across partitions (issue 15), with real partitions: the modem model
//! on a host PTY is given to partition M as its serial line; M's agent
//! starts the resource server on M's VLAN address; a client in partition C
//! dials PRIMARY_ISP through it to a TCP echo far end, then arms answer
//! mode (AICRQ) and an outside TCP call that rings the modem reaches C.
//! Another partition cannot take M's line until M is destroyed.

mod common;

use common::l2tp::{echo, Modem};
use common::{Daemon, Opts};
use hyper::Method;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "m0dem-s3cret";
const NUMBER: &str = "5551234";
const CONTROL: &str = "/run/l2tp-client.sock";

/// Waits (bounded) until `cond` holds.
async fn until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `cmd` in partition `p`; asserts it succeeded; returns stdout.
async fn must(d: &Daemon, p: &str, cmd: &str) -> String {
    let r = d.exec(p, cmd).await;
    assert_eq!(r["code"], 0, "{p}: {cmd}: {r:#}");
    r["stdout"].as_str().unwrap().to_string()
}

/// A shell loop waiting (bounded, about 45 s: within the exec's 60 s) for
/// `cond` in the guest.
fn guest_until(cond: &str) -> String {
    format!("i=0; until {cond}; do i=$((i+1)); [ $i -gt 450 ] && exit 1; sleep 0.1; done")
}

async fn create_with_line(d: &Daemon, name: &str, line: &Path) -> Result<Value, String> {
    d.client()
        .post(
            "/v1/partitions",
            &json!({ "name": name, "memory_mib": 160, "cpu_percent": 30, "net": true,
                     "devices": { "serial": [line] } }),
        )
        .await
        .map_err(|e| format!("{:?} {e}", e.code()))
}

#[tokio::test]
async fn a_client_partition_dials_and_answers_through_the_modem_partition() {
    let d = Daemon::start(Opts::default());
    let far_end = echo().await;
    let ring_port = common::free_tcp_port();
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyM0");
    let modem = Modem(
        Command::new(bulkhead_testbed::bulkhead_bin())
            .args(["modem", "emulate", "--link"])
            .arg(&link)
            .args(["--phonebook", &format!("{NUMBER}={far_end}")])
            .args(["--listen", &format!("127.0.0.1:{ring_port}")])
            .args(["--ring-interval-ms", "300"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    until("the modem model's PTY", Duration::from_secs(30), || {
        link.exists()
    })
    .await;
    let pty: PathBuf = std::fs::canonicalize(&link).unwrap();

    // M owns the line (named by the symlink) and shares it.
    d.create(
        "m",
        30,
        160,
        json!({ "net": true, "devices": {
            "serial": [link],
            "l2tp_server": { "secret": SECRET, "directory": { "PRIMARY_ISP": NUMBER } },
        }}),
    )
    .await;
    let rec = d.show("m").await;
    assert_eq!(
        rec["devices"]["serial"],
        json!([pty]),
        "recorded by canonical path"
    );
    // The tunnel secret reaches M's agent, never a reader of the API.
    assert_eq!(rec["devices"]["l2tp_server"]["secret"], "(redacted)");
    let listed = d.client().get("/v1/partitions").await.unwrap();
    assert!(!listed.to_string().contains(SECRET), "{listed}");
    d.create("c", 30, 160, json!({ "net": true })).await;

    // Nobody else takes M's line, by either name; nothing is created.
    for name in [link.as_path(), pty.as_path()] {
        let e = create_with_line(&d, "x", name).await.unwrap_err();
        assert!(
            e.contains("conflict") && e.contains("held by partition \"m\""),
            "{e}"
        );
    }
    let e = d.client().get("/v1/partitions/x").await.unwrap_err();
    assert_eq!(e.code(), Some("not_found"), "{e}");
    // Not a serial line at all.
    let e = create_with_line(&d, "x", Path::new("/dev/null"))
        .await
        .unwrap_err();
    assert!(e.contains("not a terminal"), "{e}");

    tokio::join!(d.start_wait("m"), d.start_wait("c"));
    let m_ip = common::vlan_ip(&d.show("m").await);
    let events: Vec<Value> = d.show("m").await["events"].as_array().unwrap().clone();
    assert!(
        events
            .iter()
            .any(|e| e["message"] == format!("L2TP server listening on {m_ip}:1701")),
        "{events:#?}"
    );
    // It listens on the VLAN address only.
    let udp = must(&d, "m", "cat /proc/net/udp").await;
    let port_1701: Vec<&str> = udp.lines().filter(|l| l.contains(":06A5 ")).collect();
    assert_eq!(port_1701.len(), 1, "{udp}");
    assert!(!port_1701[0].contains("00000000:06A5"), "{udp}");

    // The client daemon in C.
    let profile = format!(
        "outgoing = \"{m_ip}:1701\"\nincoming = \"{m_ip}:1701\"\nsecret = \"{SECRET}\"\ncontrol = \"{CONTROL}\"\n"
    );
    must(
        &d,
        "c",
        &format!(
            "printf '{profile}' > /tmp/client.toml && \
             (bulkhead-l2tp client --profile /tmp/client.toml > /tmp/client.log 2>&1 &) && {}",
            guest_until(&format!("[ -S {CONTROL} ]"))
        ),
    )
    .await;

    // Outgoing: a dial by directory name reaches the echo far end.
    let out = must(
        &d,
        "c",
        &format!("printf 'ping-through-m\\n' | bulkhead-l2tp dial PRIMARY_ISP --control {CONTROL} --stdio"),
    )
    .await;
    assert!(out.contains("ping-through-m"), "{out}");

    // Incoming: C arms answer mode; an outside call rings the modem.
    must(
        &d,
        "c",
        &format!(
            "(printf 'hello-from-c\\n' | bulkhead-l2tp answer --control {CONTROL} --stdio \
               > /tmp/answer.out 2> /tmp/answer.err &) && {}",
            guest_until("grep -q armed /tmp/answer.err")
        ),
    )
    .await;
    let mut call = tokio::net::TcpStream::connect(("127.0.0.1", ring_port))
        .await
        .unwrap();
    call.write_all(b"from-outside\n").await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(120), async {
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&got).contains("hello-from-c") {
            let n = call.read(&mut buf).await.unwrap();
            assert!(n > 0, "call ended: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no answer from C: {:?}",
        String::from_utf8_lossy(&got)
    );
    must(
        &d,
        "c",
        &guest_until("grep -q from-outside /tmp/answer.out"),
    )
    .await;
    drop(call);

    // Destroyed, M releases its line: another partition may take it.
    d.client()
        .call(Method::DELETE, "/v1/partitions/m?force=true", None)
        .await
        .unwrap();
    let x = create_with_line(&d, "x", &pty).await.unwrap();
    assert_eq!(x["devices"]["serial"], json!([pty]));
    drop(modem);
}

/// A partition whose L2TP server cannot start (its image lacks the binary)
/// does not come up half-configured: the start fails with why, the
/// partition is failed with no QEMU left, and it still holds its line until
/// destroyed.
#[tokio::test]
async fn a_server_that_cannot_start_fails_the_start() {
    let d = Daemon::start(Opts::default());
    // The image in use, rebuilt without bulkhead-l2tp into a storage root.
    let img = common::image_dir();
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(img.join("manifest.json")).unwrap()).unwrap();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let agent = workspace.join(manifest["agent"]["path"].as_str().unwrap());
    let bare = d.storage_root().join("no-l2tp");
    let out = Command::new(bulkhead_testbed::bulkhead_bin())
        .args(["image", "build", "--out"])
        .arg(&bare)
        .arg("--agent")
        .arg(&agent)
        .arg("--kernel-deb")
        .arg(manifest["kernel_deb"]["path"].as_str().unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // Any PTY is a line; the server never gets to use it.
    let (_master, _slave, pty) = bulkhead_testbed::pty();
    d.create(
        "n",
        30,
        160,
        json!({ "net": true, "image": bare, "devices": {
            "serial": [pty], "l2tp_server": { "directory": { "PRIMARY_ISP": NUMBER } },
        }}),
    )
    .await;
    let e = tokio::time::timeout(
        common::BOOT,
        d.client()
            .post("/v1/partitions/n/start", &json!({ "wait": true })),
    )
    .await
    .expect("start --wait timed out")
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("this image carries no L2TP resource server"),
        "{e}"
    );
    let v = d.wait_state("n", &["failed"], common::BOOT).await;
    assert!(v["pid"].is_null(), "{v:#}");
    assert!(
        v["last_exit"]
            .as_str()
            .unwrap()
            .contains("no L2TP resource server"),
        "{v:#}"
    );
    let e = create_with_line(&d, "x", &pty).await.unwrap_err();
    assert!(e.contains("held by partition \"n\""), "{e}");
    d.client()
        .call(Method::DELETE, "/v1/partitions/n", None)
        .await
        .unwrap();
    create_with_line(&d, "x", &pty).await.unwrap();
}
