//! Hibernate and resume through bulkheadd (the API, the store, the image's
//! fsync and SHA-256) against plain QEMU saving and restoring the same
//! guest by hand (migrate to and from an fd), and resume against a cold boot
//! of the same partition; ABBA order, medians and p90s, ratios.
//!
//! `cargo run --release -p bulkhead-manager --example hibernate_bench -- [RUNS] [MEMORY_MIB...]`
//! (bulkheadd built with `cargo build --release` first; bench/hibernate/run does both).

#[path = "../../engine/examples/bench_util/mod.rs"]
mod bench_util;

use bench_util::plain::plain_run;
use bench_util::{abba, pair};
use bulkhead_manager::client::Client;
use serde_json::json;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A release bulkheadd of its own: data directory, socket, bridge, cgroups.
struct Daemon {
    child: std::process::Child,
    socket: PathBuf,
    bridge: String,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start() -> anyhow::Result<Daemon> {
        let dir = tempfile::Builder::new().prefix("bhhib").tempdir()?;
        let socket = dir.path().join("api.sock");
        let bridge = format!("bhhib{}", std::process::id() % 100_000);
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = {:?}\nsocket = {socket:?}\nimage_dir = {:?}\n\
                 [network]\nbridge = {bridge:?}\nsubnet = \"10.236.0.0/24\"\n\
                 [capacity]\ncpu_overcommit = 20.0\n[cgroup]\ninstance = \"hibbench\"\n",
                dir.path().join("data"),
                bulkhead_testbed::image_dir(),
            ),
        )?;
        let exe = std::env::current_exe()?;
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("bulkheadd"))
            .ok_or_else(|| anyhow::anyhow!("no target directory"))?;
        let mut child = Command::new(&bin)
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "warn,bulkhead_manager::server=info")
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("{} (cargo build --release first): {e}", bin.display()))?;
        let err = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                match tx.take() {
                    Some(t) if l.contains("API listening") => {
                        let _ = t.send(());
                    }
                    t => {
                        tx = t;
                        if !l.contains("INFO") {
                            eprintln!("bulkheadd: {l}");
                        }
                    }
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .map_err(|_| anyhow::anyhow!("bulkheadd did not start"))?;
        Ok(Daemon {
            child,
            socket,
            bridge,
            _dir: dir,
        })
    }

    fn client(&self) -> Client {
        Client::unix(&self.socket)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = bulkhead_hostnet::delete_link(&self.bridge, None);
    }
}

/// Times one POST that must succeed.
async fn timed(c: &Client, path: &str, body: serde_json::Value) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    c.post(path, &body).await?;
    Ok(t0.elapsed())
}

/// Hibernate then resume the (running) partition `name`.
async fn bulkhead_run(c: &Client, name: &str) -> anyhow::Result<(Duration, Duration)> {
    let h = timed(c, &format!("/v1/partitions/{name}/hibernate"), json!(null)).await?;
    let r = timed(c, &format!("/v1/partitions/{name}/resume"), json!(null)).await?;
    Ok((h, r))
}

/// Cold boot of the same partition, from a forced stop to the agent's answer.
async fn cold_boot(c: &Client, name: &str) -> anyhow::Result<Duration> {
    c.post(
        &format!("/v1/partitions/{name}/stop"),
        &json!({ "force": true }),
    )
    .await?;
    timed(
        c,
        &format!("/v1/partitions/{name}/start"),
        json!({ "wait": true }),
    )
    .await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let sizes: Vec<u64> = match args.get(2..) {
        Some(s) if !s.is_empty() => s.iter().map(|m| m.parse()).collect::<Result<_, _>>()?,
        _ => vec![256, 1024],
    };
    let d = Daemon::start()?;
    let c = d.client();
    let dir = tempfile::tempdir()?;
    for mib in sizes {
        let name = format!("hib-{mib}");
        c.post(
            "/v1/partitions",
            &json!({ "name": name, "memory_mib": mib, "cpu_percent": 100, "net": true }),
        )
        .await?;
        c.post(
            &format!("/v1/partitions/{name}/start"),
            &json!({ "wait": true }),
        )
        .await?;
        let (bh, pl) = abba(
            runs,
            |_| bulkhead_run(&c, &name),
            |i| plain_run(dir.path(), i, mib),
        )
        .await?;
        let (mut hs, mut rs): (Vec<_>, Vec<_>) = bh.into_iter().unzip();
        let (mut ps, _): (Vec<_>, Vec<_>) = pl.into_iter().unzip();
        // Resume against a cold boot of the same partition, ABBA too.
        let (mut rs2, mut cold) = abba(
            runs,
            |_| async {
                let (_, r) = bulkhead_run(&c, &name).await?;
                Ok(r)
            },
            |_| cold_boot(&c, &name),
        )
        .await?;
        rs.append(&mut rs2);
        println!("hibernate and resume, {runs} runs each, bulkheadd, TCG, 1 vCPU, {mib} MiB (ms)");
        println!("  {:<38} {:>10} {:>10}", "", "median ms", "p90 ms");
        pair(
            "hibernate: bulkheadd (API to stopped)",
            &mut hs,
            "save: plain QEMU by hand",
            &mut ps,
        );
        pair(
            "resume: bulkheadd (API to agent)",
            &mut rs,
            "cold boot: bulkheadd (API to agent)",
            &mut cold,
        );
        c.post(
            &format!("/v1/partitions/{name}/stop"),
            &json!({ "force": true }),
        )
        .await?;
    }
    Ok(())
}
