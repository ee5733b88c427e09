//! The cluster's benchmarks (issue 14), each side by side in one run:
//!
//! - `store [PARTITIONS] [REPS]`: bulkheadd on a 3-member etcd against
//!   bulkheadd on SQLite with the same PARTITIONS records: `partition create`
//!   through the API, then `partition list` through the API and as the whole
//!   `bulkhead partition list` command; ABAB order, medians and p90s, ratios.
//! - `resume [RUNS] [MEMORY_MIB]`: the local cluster of `scripts/cluster`
//!   (two hosts in network namespaces, etcd, one repository): a partition
//!   hibernated on one host and resumed on the other, against a cold boot of
//!   the same partition, both to the agent's first answer; ABBA.
//!
//! `cargo run --release -p bulkhead-manager --example cluster_bench -- store|resume ...`
//! (bulkheadd and bulkhead built with `cargo build --release` first;
//! bench/cluster/run does both).

#[path = "../../engine/examples/bench_util/mod.rs"]
mod bench_util;
#[path = "common/daemon.rs"]
mod daemon;

use bench_util::{abba, pair, pair_to};
use bulkhead_manager::api::{
    CreatePartition, ExecRequest, ResumeOptions, StartOptions, StopOptions,
};
use bulkhead_manager::client::Client;
use daemon::{bin, Daemon};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `cpu_percent` 1 for records never booted; a booted one gets a whole CPU
/// (an entitlement below it would slow the cold boot under TCG, not the resume).
fn spec(name: &str, memory_mib: u64, host: Option<&str>) -> CreatePartition {
    let cpu = if host.is_some() { 100 } else { 1 };
    CreatePartition {
        net: true,
        host: host.map(str::to_string),
        ..CreatePartition::new(name, 1, memory_mib, cpu)
    }
}

/// The whole `bulkhead partition list` command against `socket`, timed.
fn cli_list(socket: &std::path::Path) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let st = Command::new(bin("bulkhead"))
        .args(["partition", "list", "--socket"])
        .arg(socket)
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(st.success(), "bulkhead partition list: {st}");
    Ok(t.elapsed())
}

async fn store(partitions: usize, reps: usize) -> anyhow::Result<()> {
    let etcd = bulkhead_testbed::EtcdCluster::start(3);
    // Records only, never booted: a capacity that admits them all.
    let capacity = "memory_mib = 1048576\n";
    let extra = format!(
        "{capacity}[cluster]\netcd = {:?}\nprefix = \"/bench/{}\"\n",
        etcd.endpoints(),
        std::process::id()
    );
    let on_etcd = Daemon::start_with("bche", 237, &extra);
    let on_sqlite = Daemon::start_with("bchs", 238, capacity);
    let (ce, cs) = (on_etcd.client(), on_sqlite.client());
    println!(
        "bulkheadd on etcd (3 members on loopback) vs on SQLite, {partitions} partitions \
         (records, not booted); ms"
    );
    let timed = |c: &Client, name: String| {
        let c = c.clone();
        async move {
            let t = Instant::now();
            c.create(&spec(&name, 96, None)).await?;
            Ok::<_, anyhow::Error>(t.elapsed())
        }
    };
    let (mut e, mut s) = abba(
        partitions,
        |i| timed(&ce, format!("p{i}")),
        |i| timed(&cs, format!("p{i}")),
    )
    .await?;
    println!("partition create (API)                 median        p90");
    pair_to(2, "etcd", &mut e, "SQLite", &mut s);

    let list = |c: &Client| {
        let c = c.clone();
        async move {
            let t = Instant::now();
            let n = c.list().await?.len();
            anyhow::ensure!(n == partitions, "listed {n} of {partitions}");
            Ok(t.elapsed())
        }
    };
    let (mut e, mut s) = abba(reps, |_| list(&ce), |_| list(&cs)).await?;
    println!("partition list (API)");
    pair_to(2, "etcd", &mut e, "SQLite", &mut s);

    let (se, ss) = (on_etcd.socket.clone(), on_sqlite.socket.clone());
    let (mut e, mut s) = abba(
        reps.min(100),
        |_| std::future::ready(cli_list(&se)),
        |_| std::future::ready(cli_list(&ss)),
    )
    .await?;
    println!("bulkhead partition list (whole command)");
    pair_to(2, "etcd", &mut e, "SQLite", &mut s);
    Ok(())
}

/// Waits for the agent's first answer.
async fn first_answer(c: &Client, name: &str) -> anyhow::Result<()> {
    let r = c
        .exec(
            name,
            &ExecRequest {
                argv: vec!["true".into()],
                timeout_secs: Some(60),
            },
        )
        .await?;
    anyhow::ensure!(r.code == 0, "exec true: {r:?}");
    Ok(())
}

async fn resume(runs: usize, memory_mib: u64) -> anyhow::Result<()> {
    use bulkhead_testbed::cluster;
    let name = format!("cb{}", std::process::id() % 100_000);
    let opts = cluster::Options {
        hosts: 2,
        lease_ms: 5000,
        image_dir: bulkhead_testbed::image_dir(),
        bin_dir: bin("bulkhead").parent().unwrap().to_path_buf(),
    };
    let _guard = cluster::Guard(name.clone());
    let c = cluster::up(&name, &opts).map_err(anyhow::Error::msg)?;
    let a = Client::unix(&c.hosts[0].socket);
    // `pr` is hibernated and resumed, from one host to the other in turn;
    // `pc` is stopped and booted cold on a. Both the same size.
    a.create(&spec("pr", memory_mib, Some("a"))).await?;
    a.create(&spec("pc", memory_mib, Some("a"))).await?;
    a.start("pr", &StartOptions { wait: true }).await?;
    first_answer(&a, "pr").await?;
    println!(
        "{memory_mib} MiB: resume on another host (hibernated on one of two cluster hosts) \
         vs cold boot, to the agent's first answer; ms"
    );
    let moved = |i: usize| {
        let a = a.clone();
        async move {
            let from = a.show("pr").await?.record.host;
            a.hibernate("pr").await?;
            let to = if i.is_multiple_of(2) { "b" } else { "a" };
            let t = Instant::now();
            let r = a
                .resume_with(
                    "pr",
                    &ResumeOptions {
                        host: Some(to.into()),
                        ..Default::default()
                    },
                )
                .await?;
            first_answer(&a, "pr").await?;
            let took = t.elapsed();
            anyhow::ensure!(r.host != from, "resumed on the host it left");
            Ok(took)
        }
    };
    let cold = |_| {
        let a = a.clone();
        async move {
            let t = Instant::now();
            a.start("pc", &StartOptions { wait: true }).await?;
            first_answer(&a, "pc").await?;
            let took = t.elapsed();
            a.stop(
                "pc",
                &StopOptions {
                    force: true,
                    timeout_secs: None,
                },
            )
            .await?;
            Ok(took)
        }
    };
    let (mut r, mut b) = abba(runs, moved, cold).await?;
    println!("                                         median        p90");
    pair("resume on another host", &mut r, "cold boot", &mut b);
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    match args.get(1).map(String::as_str) {
        Some("store") => store(num(2, 100), num(3, 200)).await,
        Some("resume") => resume(num(2, 10), num(3, 256) as u64).await,
        _ => anyhow::bail!(
            "usage: cluster_bench store [PARTITIONS] [REPS] | resume [RUNS] [MEMORY_MIB]"
        ),
    }
}
