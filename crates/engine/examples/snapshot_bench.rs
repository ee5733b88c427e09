//! Save and restore through the engine against plain QEMU doing the same by
//! hand (QMP `stop`, `getfd`, `migrate fd:`, then a new QEMU with `-incoming
//! defer`, `migrate-incoming fd:`, `cont`), on the same image, machine and
//! CPU model, in ABBA order:
//! 1. save: from the request to a complete state file (the engine adds its
//!    fsync, SHA-256 and manifest);
//! 2. restore: from the request to the agent's first answer (the engine adds
//!    its checks of the state file and the guest clock setting);
//! 3. for scale, one cold boot to the agent's first answer.
//!
//! `cargo run --release -p bulkhead-engine --example snapshot_bench -- [RUNS] [MEMORY_MIB]`

use std::path::Path;
use std::time::{Duration, Instant};

use bulkhead_engine::{LaunchOptions, Partition, PartitionSpec, SaveOptions};
use bulkhead_testbed::image_dir;

mod bench_util;
use bench_util::plain::plain_run;
use bench_util::{abba, pair};

const READY: Duration = Duration::from_secs(300);

fn spec(name: &str, mib: u64) -> PartitionSpec {
    let img = image_dir();
    let mut s = PartitionSpec::new(name, img.join("vmlinux"), img.join("initramfs.cpio.gz"));
    s.memory_mib = mib;
    s
}

fn opts(dir: &Path, name: &str) -> LaunchOptions {
    let mut o = LaunchOptions::new(dir.join(name));
    o.kill_on_drop = true;
    o
}

/// Boots through the engine, then times save and restore.
async fn engine_run(dir: &Path, i: usize, mib: u64) -> anyhow::Result<(Duration, Duration)> {
    let p = Partition::start(spec(&format!("sbench-{i}"), mib), opts(dir, "e"), READY).await?;
    let img = dir.join(format!("e-img-{i}"));
    let t0 = Instant::now();
    p.save(&img, SaveOptions::default()).await?;
    let save = t0.elapsed();
    p.kill().await?;
    drop(p);
    let t0 = Instant::now();
    let (q, _) = Partition::restore(&img, opts(dir, "e2"), READY).await?;
    let restore = t0.elapsed();
    q.kill().await?;
    std::fs::remove_dir_all(&img)?;
    Ok((save, restore))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let mib: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(256);
    let dir = tempfile::tempdir()?;
    let (eng, pl) = abba(
        runs,
        |i| engine_run(dir.path(), i, mib),
        |i| plain_run(dir.path(), i, mib),
    )
    .await?;
    let (mut es, mut er): (Vec<_>, Vec<_>) = eng.into_iter().unzip();
    let (mut ps, mut pr): (Vec<_>, Vec<_>) = pl.into_iter().unzip();
    println!("save and restore, {runs} runs each, microvm TCG, 1 vCPU, {mib} MiB (ms)");
    println!("  {:<38} {:>10} {:>10}", "", "median ms", "p90 ms");
    pair(
        "save: bulkhead engine",
        &mut es,
        "save: plain QEMU by hand",
        &mut ps,
    );
    pair(
        "restore to agent: bulkhead engine",
        &mut er,
        "restore to agent: plain QEMU by hand",
        &mut pr,
    );
    let t0 = Instant::now();
    let p = Partition::start(spec("sbench-cold", mib), opts(dir.path(), "cold"), READY).await?;
    println!(
        "  cold boot to agent (one, for scale): {:.0} ms",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    p.kill().await?;
    Ok(())
}
