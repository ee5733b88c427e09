//! Scale to zero through the shared port (issue 15): the first response from
//! a hibernated partition (resumed by the request) against a response from
//! the same partition running; and, running, the shared port against curl
//! straight to the partition's VLAN address. Medians and p90s, ratios; for
//! the shared port against straight, p99 too (issue 15's target: a ratio at
//! p99 of at most 1.2).
//!
//! `cargo run --release -p bulkhead-manager --example expose_bench -- [RUNS]`
//! (bulkheadd built with `cargo build --release` first; bench/expose/run does both).

#[path = "../../engine/examples/bench_util/mod.rs"]
mod bench_util;
#[path = "common/daemon.rs"]
mod daemon;

use bench_util::{ms, pair, pct};
use daemon::Daemon;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One GET on a new connection, to the end of the body (httpd closes).
async fn get(to: SocketAddr, host: &str) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let mut s = tokio::net::TcpStream::connect(to).await?;
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(300), s.read_to_end(&mut out)).await??;
    anyhow::ensure!(
        out.starts_with(b"HTTP/1.1 200") || out.starts_with(b"HTTP/1.0 200"),
        "not a 200: {}",
        String::from_utf8_lossy(&out)
    );
    Ok(t0.elapsed())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10);
    let shared: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let d = Daemon::start_with(
        "exp",
        237,
        &format!("[portshare]\nlisteners = [\"{shared}\"]\nrefresh_ms = 50\n"),
    );
    let c = d.client();
    let name = "web";
    let ip = daemon::boot_on_vlan(&c, name, 256).await?;
    let direct: SocketAddr = format!("{ip}:8080").parse()?;
    c.post(
        &format!("/v1/partitions/{name}/exec"),
        &json!({ "argv": ["/bin/sh", "-c", "mkdir -p /www && echo hi > /www/index.html && httpd -p 8080 -h /www"] }),
    )
    .await?;
    c.post(
        &format!("/v1/partitions/{name}/routes"),
        &json!({ "domains": ["web.example.org"], "port": 8080 }),
    )
    .await?;
    // The table follows within refresh_ms; wait for the first answer (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(shared, "web.example.org").await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the shared port never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut via, mut straight) = (Vec::new(), Vec::new());
    for i in 0..runs.max(1) * 10 {
        if i % 2 == 0 {
            via.push(get(shared, "web.example.org").await?);
            straight.push(get(direct, "web.example.org").await?);
        } else {
            straight.push(get(direct, "web.example.org").await?);
            via.push(get(shared, "web.example.org").await?);
        }
    }
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        c.post(&format!("/v1/partitions/{name}/hibernate"), &json!(null))
            .await?;
        cold.push(get(shared, "web.example.org").await?);
        warm.push(get(shared, "web.example.org").await?);
    }
    println!("shared port to a partition (busybox httpd), TCG, 1 vCPU, 256 MiB (ms)");
    println!("  {:<38} {:>10} {:>10}", "", "median ms", "p90 ms");
    pair(
        "GET via the shared port",
        &mut via,
        "GET straight to the VLAN address",
        &mut straight,
    );
    let (v99, s99) = (ms(pct(&mut via, 0.99)), ms(pct(&mut straight, 0.99)));
    println!(
        "  p99 ms: via {v99:.1}, straight {s99:.1}; ratio at p99 {:.3} ({} GETs each)",
        v99 / s99,
        via.len()
    );
    pair(
        "first GET, hibernated (resumes it)",
        &mut cold,
        "GET, running",
        &mut warm,
    );
    // QEMU outlives its daemon by design (a restarted one re-adopts it).
    c.destroy(name, true).await?;
    Ok(())
}
