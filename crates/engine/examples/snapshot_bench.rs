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

use bulkhead_engine::{AgentClient, LaunchOptions, Partition, PartitionSpec, SaveOptions};
use bulkhead_qmp::QmpClient;
use bulkhead_testbed::{connect_unix, image_dir, GuestQemu};
use serde_json::json;

mod bench_util;
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

/// Plain QEMU with the engine's CPU model and a QMP socket of its own.
fn plain(dir: &Path, mib: u64, incoming: bool) -> GuestQemu {
    let mut g = GuestQemu::new(&image_dir(), dir);
    g.memory_mib = mib;
    g.extra = vec![
        "-cpu".into(),
        bulkhead_engine::CpuModel::default().qemu_cpu(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", dir.join("qmp.sock").display()),
    ];
    if incoming {
        g.extra
            .extend(["-S", "-incoming", "defer"].map(String::from));
    }
    g
}

async fn qmp_of(dir: &Path) -> anyhow::Result<QmpClient> {
    Ok(QmpClient::handshake(connect_unix(&dir.join("qmp.sock"), READY).await?).await?)
}

async fn agent_of(dir: &Path) -> anyhow::Result<AgentClient> {
    let a = AgentClient::from_stream(connect_unix(&dir.join("agent.sock"), READY).await?);
    a.wait_ready(READY).await?;
    Ok(a)
}

/// The same by hand: boot, then save and restore with raw QMP.
async fn plain_run(dir: &Path, i: usize, mib: u64) -> anyhow::Result<(Duration, Duration)> {
    let d1 = dir.join(format!("p-{i}"));
    let d2 = dir.join(format!("p2-{i}"));
    std::fs::create_dir_all(&d1)?;
    std::fs::create_dir_all(&d2)?;
    let mut src = plain(&d1, mib, false).spawn()?;
    let qmp = qmp_of(&d1).await?;
    agent_of(&d1).await?;
    let state = d1.join("state.bin");
    let t0 = Instant::now();
    qmp.migrate_set_parameters(json!({"max-bandwidth": 10u64 << 30}))
        .await?;
    qmp.stop().await?;
    qmp.get_fd("s", std::fs::File::create(&state)?.into())
        .await?;
    qmp.migrate("fd:s").await?;
    loop {
        let m = qmp.query_migrate().await?;
        match m.status.as_deref() {
            Some("completed") => break,
            Some("failed") | Some("cancelled") => anyhow::bail!("plain save: {m:?}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let save = t0.elapsed();
    src.kill().await?;

    let t0 = Instant::now();
    let mut dst = plain(&d2, mib, true).spawn()?;
    let qmp = qmp_of(&d2).await?;
    qmp.get_fd("r", std::fs::File::open(&state)?.into()).await?;
    qmp.migrate_incoming("fd:r").await?;
    while qmp.query_status().await?.status == "inmigrate" {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    qmp.cont().await?;
    agent_of(&d2).await?;
    let restore = t0.elapsed();
    dst.kill().await?;
    std::fs::remove_dir_all(&d1)?;
    std::fs::remove_dir_all(&d2)?;
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
