//! Service pools (issue 17), each side by side with its floor in one run:
//! - allocate → first reply through the gateway over a warm pool, against a
//!   direct TCP connection to the same program (p50, p99), and against a
//!   cold start (a partition booted for the request);
//! - a partition replenished from the pool's saved template against a cold
//!   boot of the same partition with its program (ABBA);
//! - the memory (PSS) of ten idle clones against ten cold-booted partitions;
//! - allocate/deallocate cycles per second against direct connections per second.
//!
//! `cargo run --release -p bulkhead-manager --example pool_bench -- [ALLOCATIONS]`
//! (bulkheadd built with `cargo build --release` first; bench/pool/run does both).

#[path = "../../engine/examples/bench_util/mod.rs"]
mod bench_util;
#[path = "common/daemon.rs"]
mod daemon;

use bench_util::{abba, ms, pair_at, pct};
use bulkhead_manager::client::Client;
use bulkhead_manager::pools::types::{AddPoolUser, CreatePool, ResizePool};
use bulkhead_pool_proto::client::Client as Gateway;
use bulkhead_pool_proto::Allocate;
use daemon::Daemon;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const PORT: u16 = 7000;
const POOL: &str = "bench";
const MEMORY_MIB: u64 = 128;

/// The program: answers the session line with one line, then echoes.
fn app() -> String {
    format!(
        "printf '%s\\n' 'read -r _ _ s p u' 'echo \"$p $s $u\"' 'cat' > /tmp/echo.sh; \
         exec nc -ll -p {PORT} -e /bin/sh /tmp/echo.sh"
    )
}

/// A direct conversation with the program: connect, session line, first reply.
async fn direct(addr: &str) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"BULKHEAD-SESSION 1 000000000000002a echo bench\n")
        .await?;
    let mut line = String::new();
    BufReader::new(&mut s).read_line(&mut line).await?;
    anyhow::ensure!(line.ends_with('\n'), "no reply from {addr}");
    Ok(t0.elapsed())
}

/// Until `addr` accepts a connection (bounded).
async fn until_answers(addr: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "{addr} never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Until the pool has `n` partitions, all idle (bounded).
async fn until_idle(c: &Client, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let v = c.pool_show(POOL).await?;
        if v.partitions.len() == n && v.partitions.iter().all(|p| p.state == "idle") {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "pool never had {n} idle: {v:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A partition like the pool's, booted cold with the program started; returns its program's address.
async fn cold(c: &Client, name: &str) -> anyhow::Result<String> {
    let ip = daemon::boot_on_vlan(c, name, MEMORY_MIB).await?;
    // The program, detached; it comes in as $0, so no quoting.
    let detach = "setsid /bin/sh -c \"$0\" </dev/null >/dev/null 2>&1 &";
    c.post(
        &format!("/v1/partitions/{name}/exec"),
        &json!({ "argv": ["/bin/sh", "-c", detach, app()] }),
    )
    .await?;
    let addr = format!("{ip}:{PORT}");
    until_answers(&addr).await?;
    Ok(addr)
}

/// The QEMU PSS of partitions, in MiB.
async fn pss_mib(c: &Client, names: &[String]) -> anyhow::Result<f64> {
    let mut kib = 0u64;
    for n in names {
        let rec = c.get(&format!("/v1/partitions/{n}")).await?;
        let pid = rec["pid"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("{n} has no pid"))?;
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
        kib += rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .ok_or_else(|| anyhow::anyhow!("no Pss for {pid}"))?;
    }
    Ok(kib as f64 / 1024.0)
}

fn allocate(token: &str) -> Allocate {
    Allocate {
        program: "echo".into(),
        user: "bench".into(),
        credential: token.into(),
        wait_ms: 10_000,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let allocations: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1000);
    let gw = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let d = Daemon::start_with("pool", 238, &format!("[pool]\ngateway = {gw:?}\n"));
    let c = d.client();
    let token = c
        .pool_user_add(&AddPoolUser {
            name: "bench".into(),
            programs: vec!["echo".into()],
            max_sessions: Some(4),
        })
        .await?
        .token;
    let statement = CreatePool {
        name: POOL.into(),
        program: "echo".into(),
        size: 2,
        max: None,
        vcpus: 1,
        memory_mib: MEMORY_MIB,
        cpu_percent: 100,
        image: None,
        app: app(),
        port: PORT,
        cleanup: None,
        recycle_after: None,
        untrusted: false,
    };
    let t0 = Instant::now();
    c.pool_create(&statement).await?;
    until_idle(&c, 2).await?;
    println!(
        "pool of 2 idle (template built, 2 clones) in {:.0} ms",
        ms(t0.elapsed())
    );
    let first = c.get(&format!("/v1/partitions/{POOL}-1")).await?;
    let target = format!("{}:{PORT}", daemon::vlan_ip(&first)?);

    // Allocate → first reply, against a direct conversation, interleaved.
    let mut g = Gateway::connect_tcp(gw.as_str()).await?;
    let (mut via, mut straight) = (Vec::new(), Vec::new());
    for i in 0..allocations {
        if i % 2 == 1 {
            straight.push(direct(&target).await?);
        }
        let t = Instant::now();
        g.allocate(allocate(&token)).await?;
        let reply = g.recv().await?;
        via.push(t.elapsed());
        anyhow::ensure!(reply.ends_with(b"\n"), "a partial first reply");
        g.deallocate().await?;
        if i % 2 == 0 {
            straight.push(direct(&target).await?);
        }
    }
    println!("\nallocate → first reply, TCG, 1 vCPU, {MEMORY_MIB} MiB, {allocations} each (ms)");
    println!("  {:<38} {:>10} {:>10}", "", "median ms", "p99 ms");
    pair_at(
        2,
        0.99,
        "via the gateway (warm pool)",
        &mut via,
        "direct TCP to the program",
        &mut straight,
    );
    let via50 = pct(&mut via, 0.5);

    // Replenish from the template against a cold boot (ABBA).
    let runs = 4;
    let (mut clone, mut boot) = abba(
        runs,
        |_| {
            let c = c.clone();
            async move {
                let t = Instant::now();
                c.pool_resize(POOL, &ResizePool { size: 3, max: None })
                    .await?;
                until_idle(&c, 3).await?;
                let took = t.elapsed();
                c.pool_resize(POOL, &ResizePool { size: 2, max: None })
                    .await?;
                until_idle(&c, 2).await?;
                Ok(took)
            }
        },
        |i| {
            let c = c.clone();
            async move {
                let name = format!("cold-{i}");
                let t = Instant::now();
                cold(&c, &name).await?;
                let took = t.elapsed();
                c.destroy(&name, true).await?;
                Ok(took)
            }
        },
    )
    .await?;
    println!("\na partition ready to serve, {runs} each (ms)");
    println!("  {:<38} {:>10} {:>10}", "", "median ms", "p90 ms");
    bench_util::pair(
        "restored from the pool's template",
        &mut clone,
        "booted cold, program started",
        &mut boot,
    );

    // A request served by a partition booted for it.
    let mut cold_req = Vec::new();
    for i in 0..3 {
        let name = format!("req-{i}");
        let t = Instant::now();
        let addr = cold(&c, &name).await?;
        direct(&addr).await?;
        cold_req.push(t.elapsed());
        c.destroy(&name, true).await?;
    }
    let cold50 = pct(&mut cold_req, 0.5);
    println!(
        "\ncold start (boot a partition for the request) → first reply: median {:.0} ms = {:.0} × the warm pool's {:.2} ms",
        ms(cold50),
        ms(cold50) / ms(via50),
        ms(via50)
    );

    // Cycles per second.
    let window = Duration::from_secs(5);
    let (mut cycles, t) = (0u32, Instant::now());
    while t.elapsed() < window {
        g.allocate(allocate(&token)).await?;
        g.recv().await?;
        g.deallocate().await?;
        cycles += 1;
    }
    let cycle_rate = f64::from(cycles) / t.elapsed().as_secs_f64();
    let (mut conns, t) = (0u32, Instant::now());
    while t.elapsed() < window {
        direct(&target).await?;
        conns += 1;
    }
    let conn_rate = f64::from(conns) / t.elapsed().as_secs_f64();
    println!(
        "\nallocate/deallocate cycles {cycle_rate:.0}/s vs direct conversations {conn_rate:.0}/s: ratio {:.3}",
        cycle_rate / conn_rate
    );

    // Memory of ten idle clones against ten cold-booted partitions.
    c.pool_resize(
        POOL,
        &ResizePool {
            size: 10,
            max: None,
        },
    )
    .await?;
    until_idle(&c, 10).await?;
    let clones: Vec<String> = (1..=10).map(|i| format!("{POOL}-{i}")).collect();
    let cold_names: Vec<String> = (1..=10).map(|i| format!("pss-{i}")).collect();
    let boots: Vec<_> = cold_names
        .iter()
        .map(|n| {
            let (c, n) = (c.clone(), n.clone());
            tokio::spawn(async move { cold(&c, &n).await })
        })
        .collect();
    for b in boots {
        b.await??;
    }
    // Settled: what the guests touch right after boot is done.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (pc, pb) = (pss_mib(&c, &clones).await?, pss_mib(&c, &cold_names).await?);
    println!(
        "\nPSS of ten idle partitions ({MEMORY_MIB} MiB each): clones {pc:.0} MiB vs cold-booted {pb:.0} MiB: ratio {:.3}",
        pc / pb
    );
    for n in &cold_names {
        c.destroy(n, true).await?;
    }
    // QEMU outlives its daemon by design: the pool's partitions go with it.
    c.pool_destroy(POOL, true).await?;
    Ok(())
}
