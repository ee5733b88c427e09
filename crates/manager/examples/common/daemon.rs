//! The bulkheadd the manager benchmarks run: release binaries beside the
//! example, a temporary data dir, the unix socket and a TLS TCP API.

// Each benchmark uses its own part of it.
#![allow(dead_code)]

use bulkhead_manager::client::{Client, Endpoint};
use bulkhead_manager::tls::Trust;
use bulkhead_testbed::image_dir as image;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

pub fn bin(name: &str) -> PathBuf {
    // The example sits in target/release/examples; the binaries one level up.
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join(name)
}

pub struct Daemon {
    pub child: std::process::Child,
    pub bridge: String,
    pub socket: PathBuf,
    pub tcp: String,
    pub dir: tempfile::TempDir,
}

pub const TOKEN: &str = "bench-token-0123456789";

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with("bench", 234, "")
    }

    /// A daemon of its own beside others: `tag` names its bridge and
    /// cgroups, `octet` its subnet 10.<octet>.0.0/24; `extra` is appended
    /// to its configuration right after `[capacity]`'s lines (so it may add
    /// to that table, then open others such as `[cluster]`).
    pub fn start_with(tag: &str, octet: u8, extra: &str) -> Daemon {
        let bridge = format!("bh{tag}0");
        let dir = tempfile::Builder::new()
            .prefix("bhbench")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("api.sock");
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = {:?}\nsocket = {:?}\nimage_dir = {:?}\n[network]\nbridge = {bridge:?}\nsubnet = \"10.{octet}.0.0/24\"\n\
                 [cgroup]\ninstance = {tag:?}\n\
                 [api]\ntcp = {tcp:?}\ntoken = {TOKEN:?}\n\
                 [capacity]\ncpu_overcommit = 20.0\n{extra}",
                dir.path().join("data"),
                socket,
                image()
            ),
        )
        .unwrap();
        let mut child = Command::new(bin("bulkheadd"))
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "warn,bulkhead_manager::server=info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("bulkheadd (cargo build --release first)");
        let err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if l.contains("API listening") {
                    if let Some(t) = tx.take() {
                        let _ = t.send(());
                    }
                } else if tx.is_none() && !l.contains("INFO") {
                    eprintln!("bulkheadd: {l}");
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("bulkheadd did not start");
        Daemon {
            child,
            bridge,
            socket,
            tcp,
            dir,
        }
    }

    pub fn client(&self) -> Client {
        Client::unix(&self.socket)
    }

    /// The daemon's self-signed certificate's SHA-256, as a user pins it.
    pub fn fingerprint(&self) -> String {
        let cert = self.dir.path().join("data/tls/cert.pem");
        bulkhead_manager::tls::file_fingerprint(&cert).unwrap()
    }

    pub fn tls_client(&self) -> Client {
        Client::new(Endpoint::Tcp {
            addr: self.tcp.clone(),
            token: Some(TOKEN.into()),
            tls: Trust::Fingerprint(self.fingerprint())
                .client_config()
                .unwrap(),
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = bulkhead_hostnet::delete_link(&self.bridge, None);
    }
}

/// Creates and starts partition `name` on the VLAN (1 vCPU, `memory_mib`,
/// 100% CPU) and returns its VLAN address once its agent is ready.
pub async fn boot_on_vlan(c: &Client, name: &str, memory_mib: u64) -> anyhow::Result<String> {
    c.post(
        "/v1/partitions",
        &serde_json::json!({ "name": name, "memory_mib": memory_mib, "cpu_percent": 100, "net": true }),
    )
    .await?;
    let rec = c
        .post(
            &format!("/v1/partitions/{name}/start"),
            &serde_json::json!({ "wait": true }),
        )
        .await?;
    vlan_ip(&rec)
}

/// The VLAN address (no prefix) of a partition record.
pub fn vlan_ip(rec: &serde_json::Value) -> anyhow::Result<String> {
    rec["net"]["ip"]
        .as_str()
        .and_then(|ip| ip.split('/').next())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no VLAN address in {rec}"))
}
