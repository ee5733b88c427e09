//! TLS passthrough to partitions on bulkheadd's shared port (issue 15):
//! two partitions each run a real TLS server (bulkhead-tls-serve, put into a
//! test image with `bulkhead image build --add`: the guest image has none),
//! each with a certificate of its own; curl by SNI on the one shared port
//! reaches each, and the certificate it sees is that partition's (curl
//! trusting only a's certificate refuses b's name).

mod common;

use common::{free_tcp_port, Daemon, Opts};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The static server `make agent` builds.
fn tls_serve() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/x86_64-unknown-linux-gnu/release/bulkhead-tls-serve");
    assert!(
        p.is_file(),
        "{} is missing: run `make agent` (make test does)",
        p.display()
    );
    p
}

/// The image in use plus bulkhead-tls-serve at /usr/bin, built into `out`.
fn tls_image(out: &Path) {
    let img = bulkhead_testbed::image_dir();
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(img.join("manifest.json")).unwrap()).unwrap();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let agent = workspace.join(manifest["agent"]["path"].as_str().unwrap());
    let add = format!("{}:/usr/bin/bulkhead-tls-serve", tls_serve().display());
    let out = Command::new(bulkhead_testbed::bulkhead_bin())
        .args(["image", "build", "--out"])
        .arg(out)
        .arg("--agent")
        .arg(&agent)
        .arg("--kernel-deb")
        .arg(manifest["kernel_deb"]["path"].as_str().unwrap())
        .arg("--add")
        .arg(&add)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// A self-signed pair for `name`: (certificate PEM, key PEM).
fn pair(name: &str) -> (String, String) {
    let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// curl https://NAME:PORT/ by SNI through the shared port, trusting `ca`
/// only: (exit code, body).
fn curl(port: u16, name: &str, ca: &Path) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{name}:{port}:127.0.0.1"))
        .arg(format!("https://{name}:{port}/"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_by_sni_reaches_each_partitions_tls_server_through_the_shared_port() {
    let port = free_tcp_port();
    let d = Daemon::start(Opts {
        extra: format!("[portshare]\nlisteners = [\"127.0.0.1:{port}\"]\nrefresh_ms = 100\n"),
        ..Default::default()
    });
    let image = d.storage_root().join("tls-image");
    tls_image(&image);
    for n in ["a", "b"] {
        d.create(n, 40, 160, json!({ "net": true, "image": image }))
            .await;
    }
    let (ra, rb) = tokio::join!(d.start_wait("a"), d.start_wait("b"));
    assert_eq!(
        (&ra["state"], &rb["state"]),
        (&json!("running"), &json!("running"))
    );

    let mut cas = Vec::new();
    for n in ["a", "b"] {
        let name = format!("tls-{n}.example.org");
        let (cert, key) = pair(&name);
        let ca = d.dir.path().join(format!("{n}.pem"));
        std::fs::write(&ca, &cert).unwrap();
        cas.push(ca);
        let script = format!(
            "cat > /tmp/c.pem <<'X'\n{cert}X\ncat > /tmp/k.pem <<'X'\n{key}X\n\
             (setsid bulkhead-tls-serve 8443 /tmp/c.pem /tmp/k.pem served-by-{n} \
             >/tmp/tls.log 2>&1 </dev/null &)\n\
             i=0; until netstat -ltn | grep -q ':8443 '; do i=$((i+1)); \
             [ $i -gt 300 ] && cat /tmp/tls.log && exit 1; sleep 0.1; done; echo up"
        );
        let r = d.exec(n, &script).await;
        assert_eq!(r["stdout"].as_str().unwrap_or("").trim(), "up", "{r:#}");
        d.client()
            .post(
                &format!("/v1/partitions/{n}/routes"),
                &json!({ "domains": [name], "port": 8443 }),
            )
            .await
            .unwrap();
    }

    // By SNI, each partition; the certificate verifies against its own pair.
    for (i, n) in ["a", "b"].iter().enumerate() {
        let name = format!("tls-{n}.example.org");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let (code, out) = loop {
            let r = curl(port, &name, &cas[i]);
            // Until the table has the row: the shared port closes an unknown name.
            if r.0 == 0 || std::time::Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!((code, out.trim()), (0, format!("served-by-{n}").as_str()));
    }
    // The certificate seen for b's name is b's: curl trusting a's only refuses it.
    let (code, out) = curl(port, "tls-b.example.org", &cas[0]);
    assert_eq!(code, 60, "a certificate problem: {out}");
}
