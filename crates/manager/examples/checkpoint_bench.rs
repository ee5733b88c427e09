//! The guest's pause per checkpoint (issue 12 item 3): a partition
//! checkpointed through bulkheadd (live pre-copy, the pause only for the
//! last dirty pages, the devices and the disk point) against plain QEMU of
//! the same size saving the same guest stop-and-copy by hand (QMP `stop`,
//! `migrate` to a file, `cont`), with the guest idle and with it rewriting a
//! 128 MiB buffer without pause; ABBA order, medians and p90s, ratios. Both
//! pauses are QEMU's own: from its STOP event to its RESUME event.
//!
//! `cargo run --release -p bulkhead-manager --example checkpoint_bench -- [RUNS] [MEMORY_MIB]`
//! (bulkheadd built with `cargo build --release` first; bench/checkpoint/run does both).

#[path = "../../engine/examples/bench_util/mod.rs"]
mod bench_util;
#[path = "common/daemon.rs"]
mod daemon;

use bench_util::abba;
use bench_util::plain::{agent_of, migrate_to_file, plain, qmp_of};
use bulkhead_manager::client::Client;
use bulkhead_qmp::{wait_event, QmpClient};
use daemon::Daemon;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

const NAME: &str = "ckb";

/// Rewrites a 128 MiB tmpfs file over and over: 128 MiB of guest memory
/// dirtied as fast as the guest's CPU goes.
const DIRTY: &str = "dd if=/dev/zero of=/dev/shm/buf bs=1M count=128 2>/dev/null; \
    (while :; do dd if=/dev/zero of=/dev/shm/buf bs=1M count=128 conv=notrunc 2>/dev/null; done) \
    >/dev/null 2>&1 </dev/null &";

/// One checkpoint through the API; its pause from the event it recorded
/// (`checkpoint N: paused X ms, Y MiB`).
async fn bulkhead_pause(c: &Client) -> anyhow::Result<Duration> {
    c.post(&format!("/v1/partitions/{NAME}/checkpoint"), &json!(null))
        .await?;
    let v = c.get(&format!("/v1/partitions/{NAME}")).await?;
    let ev = v["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["message"].as_str())
        .rfind(|m| m.starts_with("checkpoint ") && m.contains(": paused "))
        .ok_or_else(|| anyhow::anyhow!("no checkpoint event"))?;
    let ms: u64 = ev
        .split(": paused ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("unreadable event {ev:?}"))?;
    Ok(Duration::from_millis(ms))
}

/// Plain QEMU: stop, migrate to a file, cont; the pause from QEMU's events.
async fn plain_pause(qmp: &QmpClient, dir: &Path) -> anyhow::Result<Duration> {
    let mut events = qmp.events();
    qmp.stop().await?;
    migrate_to_file(qmp, &dir.join("state.bin")).await?;
    qmp.cont().await?;
    let at = |e: &bulkhead_qmp::Event| e.timestamp.seconds * 1_000_000 + e.timestamp.microseconds;
    let t = Duration::from_secs(10);
    let stop = wait_event(&mut events, t, "STOP", |e| e.name == "STOP").await?;
    let resume = wait_event(&mut events, t, "RESUME", |e| e.name == "RESUME").await?;
    Ok(Duration::from_micros(
        (at(&resume) - at(&stop)).max(0) as u64
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let mib: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(256);
    let d = Daemon::start_with("ckb", 239, "");
    let c = d.client();
    c.post(
        "/v1/partitions",
        &json!({ "name": NAME, "memory_mib": mib, "cpu_percent": 100 }),
    )
    .await?;
    c.post(
        &format!("/v1/partitions/{NAME}/start"),
        &json!({ "wait": true }),
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let mut q = plain(dir.path(), mib, false).spawn()?;
    let qmp = qmp_of(dir.path()).await?;
    let agent = agent_of(dir.path()).await?;
    qmp.migrate_set_parameters(json!({"max-bandwidth": 10u64 << 30}))
        .await?;
    for (load, dirty) in [("idle", false), ("dirtying 128 MiB", true)] {
        if dirty {
            let sh = |s: &str| vec!["/bin/sh".to_string(), "-c".into(), s.into()];
            c.post(
                &format!("/v1/partitions/{NAME}/exec"),
                &json!({ "argv": sh(DIRTY), "timeout_secs": 60 }),
            )
            .await?;
            agent
                .exec(&sh(DIRTY), None, Duration::from_secs(60))
                .await?;
        }
        let (mut bh, mut pl) = abba(
            runs,
            |_| bulkhead_pause(&c),
            |_| plain_pause(&qmp, dir.path()),
        )
        .await?;
        println!(
            "guest pause per checkpoint, {runs} runs each, TCG, 1 vCPU, {mib} MiB, guest {load} (ms)"
        );
        println!("  {:<38} {:>10} {:>10}", "", "median ms", "p90 ms");
        bench_util::pair_to(
            1,
            "bulkheadd checkpoint (live pre-copy)",
            &mut bh,
            "plain QEMU stop, migrate, cont",
            &mut pl,
        );
    }
    q.kill().await?;
    c.post(
        &format!("/v1/partitions/{NAME}/stop"),
        &json!({ "force": true }),
    )
    .await?;
    Ok(())
}
