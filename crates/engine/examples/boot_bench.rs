//! Engine benchmarks, each next to its peer:
//! 1. start-to-ready through the engine vs plain QEMU started by hand on the
//!    same image and command line (ready = the agent's ready line for plain
//!    QEMU; the agent's handshake reply for the engine, which comes after it),
//!    in ABBA order;
//! 2. QMP round-trip latency (query-status) through the engine's client;
//! 3. N partitions of 128 MiB started at once: total time and memory;
//! 4. what the machine costs at boot, each pair in ABBA order: q35 with two
//!    hot-plug ports (what `--hotplug 2` gives) against microvm, through the
//!    engine; and the portable CPU model against `-cpu max`, by plain QEMU.
//!
//! `cargo run --release -p bulkhead-engine --example boot_bench -- [BOOTS] [CONCURRENT]`

use std::time::{Duration, Instant};

use bulkhead_engine::{cmdline, host, CpuModel, LaunchOptions, Partition, PartitionSpec};

mod bench_util;
use bench_util::{abba, ms, pair, pct};

const READY: Duration = Duration::from_secs(300);

use bulkhead_testbed::image_dir as image;

fn spec(name: &str, mib: u64) -> PartitionSpec {
    let img = image();
    let mut s = PartitionSpec::new(name, img.join("vmlinux"), img.join("initramfs.cpio.gz"));
    s.memory_mib = mib;
    s
}

/// Start-to-ready through the engine, and when the ready line reached the
/// console log (its modification time), to split guest boot from handshake.
async fn engine_boot(
    dir: &std::path::Path,
    s: PartitionSpec,
) -> anyhow::Result<(Duration, Duration)> {
    let mut o = LaunchOptions::new(dir.join(&s.name));
    o.kill_on_drop = true;
    let log = o.console_log();
    let wall0 = std::time::SystemTime::now();
    let t0 = Instant::now();
    let p = Partition::start(s, o, READY).await?;
    let t = t0.elapsed();
    let line = std::fs::metadata(&log)?.modified()?.duration_since(wall0)?;
    p.kill().await?;
    Ok((t, line.min(t)))
}

/// Plain QEMU: the same machine, CPU model and kernel command line, console on
/// stdout, the agent port backed by a null chardev, the same seccomp sandbox;
/// timed to the ready line. `cpu` overrides the CPU (`-cpu` given last wins).
async fn plain_boot(i: usize, cpu: Option<&str>) -> anyhow::Result<Duration> {
    let s = spec(&format!("plain-{i}"), 256);
    let append = cmdline::kernel_cmdline(&s, false, host::probe().tsc_khz);
    let cpu = cpu.map_or_else(|| s.cpu_model.qemu_cpu(), str::to_string);
    let extra = [
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-cpu",
        &cpu,
    ];
    Ok(bulkhead_testbed::plain_qemu_to_ready(
        &image(),
        s.memory_mib,
        &append,
        &extra,
        bulkhead_engine::READY_LINE,
        READY,
    )
    .await?)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let boots: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let concurrent: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let dir = tempfile::tempdir()?;

    // 1. Start-to-ready, engine against plain QEMU, ABBA.
    let (eng_both, mut plain) = abba(
        boots,
        |i| engine_boot(dir.path(), spec(&format!("bench-{i}"), 256)),
        |i| plain_boot(i, None),
    )
    .await?;
    let (mut eng, mut eng_line): (Vec<Duration>, Vec<Duration>) = eng_both.into_iter().unzip();
    let (e50, e90) = (pct(&mut eng, 0.5), pct(&mut eng, 0.9));
    let (p50, p90) = (pct(&mut plain, 0.5), pct(&mut plain, 0.9));
    println!("start-to-ready, {boots} boots each, microvm TCG, 1 vCPU, 256 MiB");
    println!("  {:<22} {:>10} {:>10}", "", "median ms", "p90 ms");
    println!(
        "  {:<22} {:>10.0} {:>10.0}",
        "bulkhead engine",
        ms(e50),
        ms(e90)
    );
    let (l50, l90) = (pct(&mut eng_line, 0.5), pct(&mut eng_line, 0.9));
    println!(
        "  {:<22} {:>10.0} {:>10.0}",
        "  of which ready line",
        ms(l50),
        ms(l90)
    );
    println!(
        "  {:<22} {:>10.0} {:>10.0}",
        "plain QEMU by hand",
        ms(p50),
        ms(p90)
    );
    println!(
        "  ratio engine/plain: median {:.3}, p90 {:.3}",
        ms(e50) / ms(p50),
        ms(e90) / ms(p90)
    );

    // 2. QMP round trip.
    let mut o = LaunchOptions::new(dir.path().join("qmp"));
    o.kill_on_drop = true;
    let p = Partition::launch(spec("bench-qmp", 256), o).await?;
    let mut rtt = Vec::new();
    for _ in 0..2000 {
        let t0 = Instant::now();
        p.qmp().query_status().await?;
        rtt.push(t0.elapsed());
    }
    println!(
        "QMP round trip (query-status, 2000 calls): median {:.1} us, p99 {:.1} us",
        pct(&mut rtt, 0.5).as_secs_f64() * 1e6,
        pct(&mut rtt, 0.99).as_secs_f64() * 1e6
    );
    p.kill().await?;

    // 3. Concurrent partitions.
    let t0 = Instant::now();
    let starts = (0..concurrent).map(|i| {
        let mut o = LaunchOptions::new(dir.path().join(format!("c{i}")));
        o.kill_on_drop = true;
        Partition::start(spec(&format!("bench-c{i}"), 128), o, READY)
    });
    let parts: Vec<Partition> = futures_join_all(starts).await?;
    let total = t0.elapsed();
    let rss: u64 = parts.iter().map(|p| rss_kib(p.pid())).sum();
    println!(
        "{concurrent} partitions of 128 MiB started at once: all ready in {:.1} s, QEMU RSS total {} MiB ({} MiB each)",
        total.as_secs_f64(),
        rss / 1024,
        rss / 1024 / concurrent as u64
    );
    for p in &parts {
        p.kill().await?;
    }

    // 4. Machine costs at boot.
    let d = dir.path();
    let (mut q35, mut micro) = abba(
        boots,
        |i| {
            let mut s = spec(&format!("bench-q35-{i}"), 256);
            s.hotplug_slots = 2;
            async move { Ok(engine_boot(d, s).await?.0) }
        },
        |i| async move {
            Ok(engine_boot(d, spec(&format!("bench-mvm-{i}"), 256))
                .await?
                .0)
        },
    )
    .await?;
    println!(
        "machine cost at boot, engine start-to-ready, {boots} boots each (ABBA), 1 vCPU, 256 MiB"
    );
    println!("  {:<38} {:>10} {:>10}", "", "median ms", "p90 ms");
    pair(
        "q35 + 2 hot-plug ports (--hotplug 2)",
        &mut q35,
        "microvm",
        &mut micro,
    );
    let model = CpuModel::default();
    let model_cpu = model.qemu_cpu();
    let (mut portable, mut max) = abba(
        boots,
        |i| plain_boot(i, Some(&model_cpu)),
        |i| plain_boot(i, Some("max")),
    )
    .await?;
    println!(
        "CPU model cost at boot, plain QEMU to the ready line, {boots} boots each (ABBA), microvm"
    );
    println!("  {:<38} {:>10} {:>10}", "", "median ms", "p90 ms");
    pair(
        &format!("-cpu {} (portable)", model.name()),
        &mut portable,
        "-cpu max",
        &mut max,
    );
    Ok(())
}

async fn futures_join_all<F, T, E>(futs: impl Iterator<Item = F>) -> Result<Vec<T>, E>
where
    F: std::future::Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task")?);
    }
    Ok(out)
}
