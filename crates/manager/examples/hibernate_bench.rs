//! Hibernate and resume through bulkheadd (the API, the store, the image's
//! fsync and SHA-256) against plain QEMU saving and restoring the same
//! guest by hand (migrate to and from an fd), and resume against a cold boot
//! of the same partition; ABBA order, medians and p90s, ratios.
//!
//! `cargo run --release -p bulkhead-manager --example hibernate_bench -- [RUNS] [MEMORY_MIB...]`
//! (bulkheadd built with `cargo build --release` first; bench/hibernate/run does both).

#[path = "../../engine/examples/bench_util/mod.rs"]
mod bench_util;
#[path = "common/daemon.rs"]
mod daemon;

use bench_util::plain::plain_run;
use bench_util::{abba, pair};
use bulkhead_manager::client::Client;
use daemon::Daemon;
use serde_json::json;
use std::time::{Duration, Instant};

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
    let d = Daemon::start_with("hib", 236, "");
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
