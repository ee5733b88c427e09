//! The CPU entitlement is enforced: a busy loop in a 25% partition never gets
//! more than a quarter of a CPU, read from the cgroup's CPU accounting.

mod common;

use common::{Daemon, Opts};
use serde_json::json;
use std::time::{Duration, Instant};

fn usage_ns(d: &Daemon, name: &str) -> u64 {
    std::fs::read_to_string(d.cgroup_dir("cpuacct", name).join("cpuacct.usage"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn throttled(d: &Daemon, name: &str) -> u64 {
    let s = std::fs::read_to_string(d.cgroup_dir("cpu", name).join("cpu.stat")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn busy_partition_gets_no_more_than_its_entitlement() {
    let d = Daemon::start(Opts::default());
    d.create("quarter", 25, 160, json!({})).await;
    d.start_wait("quarter").await;
    // Two busy loops, so the guest would happily take more than one CPU's worth.
    let r = d
        .exec(
            "quarter",
            "for i in 1 2; do (while :; do :; done) </dev/null >/dev/null 2>&1 & done; echo started",
        )
        .await;
    assert_eq!(r["stdout"], "started\n", "{r:#}");
    let throttled0 = throttled(&d, "quarter");
    let mut shares = Vec::new();
    for _ in 0..3 {
        let (t0, u0) = (Instant::now(), usage_ns(&d, "quarter"));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let share = (usage_ns(&d, "quarter") - u0) as f64 / t0.elapsed().as_nanos() as f64;
        shares.push(share);
    }
    eprintln!("CPU share per 2 s window: {shares:?}");
    for s in &shares {
        // CFS enforces per 100 ms period; allow one period of slack per window.
        assert!(
            *s <= 0.25 * 1.05 + 0.05,
            "used {s:.3} of a CPU, entitlement 0.25"
        );
    }
    // The loop did run and was held back, so the bound above was the limit at work.
    let mean = shares.iter().sum::<f64>() / shares.len() as f64;
    assert!(mean > 0.15, "busy loop barely ran: {shares:?}");
    assert!(throttled(&d, "quarter") > throttled0, "never throttled");
    let s = d
        .client()
        .get("/v1/partitions/quarter/stats")
        .await
        .unwrap();
    assert!(s["cpu_recent_percent"].as_f64().unwrap() <= 35.0, "{s:#}");
    assert_eq!(s["cpu_entitlement_percent"], 25);
}
