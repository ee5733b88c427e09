//! Mirrored write throughput (issue 12 item 5): one partition holds two LUs
//! of the same size, one mirrored (a write-blocking `blockdev-mirror` into
//! its redundant copy) and one not; the guest writes the same random data
//! to each, alternating ABAB, and the medians' ratio (mirrored / unmirrored
//! throughput) is printed. Target: at least 0.7. Two patterns: direct I/O
//! (`dd oflag=direct conv=fsync`: one request in flight at a time, so each
//! waits for both files' writes in a row) and buffered writes with a final
//! fsync (`dd conv=fsync`: the guest's writeback keeps several requests in
//! flight, as most applications' writes reach a disk).
//!
//! `cargo run --release -p bulkhead-manager --example mirror_bench -- [RUNS] [MIB]`
//! (bulkheadd built with `cargo build --release` first; bench/mirror/run does both).

#[path = "../../engine/examples/bench_util/mod.rs"]
mod bench_util;
#[path = "common/daemon.rs"]
mod daemon;

use bulkhead_manager::client::Client;
use bulkhead_manager::lu::mirror::{MirrorCommand, MirrorLu};
use bulkhead_manager::lu::types::CreateLu;
use daemon::Daemon;
use serde_json::json;

async fn exec(c: &Client, name: &str, cmd: &str) -> anyhow::Result<String> {
    let r = c
        .post(
            &format!("/v1/partitions/{name}/exec"),
            &json!({ "argv": ["/bin/sh", "-c", cmd], "timeout_secs": 600 }),
        )
        .await?;
    anyhow::ensure!(r["code"] == 0, "{cmd}: {r}");
    Ok(r["stdout"].as_str().unwrap_or("").trim().to_string())
}

/// One write of `mib` MiB to `dev` (`oflag` for dd: `oflag=direct` or
/// none), timed in the guest (its uptime, 10 ms steps); MB/s.
async fn write(c: &Client, name: &str, dev: &str, mib: u64, oflag: &str) -> anyhow::Result<f64> {
    let cmd = format!(
        "a=$(cut -d' ' -f1 /proc/uptime); \
         dd if=/tmp/data of=/dev/{dev} bs=1M count={mib} {oflag} conv=fsync 2>/dev/null || exit 1; \
         b=$(cut -d' ' -f1 /proc/uptime); echo \"$a $b\""
    );
    let out = exec(c, name, &cmd).await?;
    let t: Vec<f64> = out
        .split_whitespace()
        .map(|x| x.parse())
        .collect::<Result<_, _>>()?;
    let secs = (t[1] - t[0]).max(0.01);
    Ok(mib as f64 * 1.048_576 / secs)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let mib: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let d = Daemon::start_with("mir", 237, "");
    let c = d.client();
    let size = (mib + 1) << 20;
    for name in ["bm-mirrored", "bm-plain"] {
        c.lu_create(&CreateLu {
            name: name.into(),
            client: "bench".into(),
            size_bytes: size,
            purpose: None,
        })
        .await?;
    }
    // The mark, written before the copy is made (so the copy has it too).
    let file = d
        .dir
        .path()
        .join("data/repository/clients/bench/lu/bm-mirrored.qcow2");
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -P 0x4d {mib}M 4k"))
        .arg(&file)
        .output()?;
    anyhow::ensure!(out.status.success(), "qemu-io: {out:?}");
    c.lu_mirror(&MirrorCommand::Mirror {
        lu: "bm-mirrored".into(),
        req: MirrorLu::default(),
    })
    .await?;
    let p = "mirror-bench";
    c.post(
        "/v1/partitions",
        &json!({ "name": p, "memory_mib": 128 + mib, "cpu_percent": 100, "client": "bench",
                 "lus": [{ "name": "bm-mirrored" }, { "name": "bm-plain" }] }),
    )
    .await?;
    c.post(
        &format!("/v1/partitions/{p}/start"),
        &json!({ "wait": true }),
    )
    .await?;
    // The guest tells its two disks apart by the mirrored one's mark (a
    // 0x4d-filled block past the written area), whatever order it found them in.
    let find = format!(
        "for d in vda vdb; do \
           v=$(dd if=/dev/$d bs=1M skip={mib} count=1 2>/dev/null | head -c 4 | od -An -tx1 | tr -d ' '); \
           [ \"$v\" = 4d4d4d4d ] && echo $d; done; true"
    );
    let mirrored = exec(&c, p, &find).await?;
    anyhow::ensure!(
        mirrored == "vda" || mirrored == "vdb",
        "the mirrored disk was not found: {mirrored:?}"
    );
    let plain = if mirrored == "vda" { "vdb" } else { "vda" };
    exec(
        &c,
        p,
        &format!("dd if=/dev/urandom of=/tmp/data bs=1M count={mib} 2>/dev/null"),
    )
    .await?;
    for (oflag, label) in [
        ("oflag=direct", "dd oflag=direct conv=fsync"),
        ("", "dd conv=fsync, buffered"),
    ] {
        // ABAB: each pair of writes runs back to back on the same guest.
        let (mut m, mut u) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            m.push(write(&c, p, &mirrored, mib, oflag).await?);
            u.push(write(&c, p, plain, mib, oflag).await?);
        }
        let (mm, um) = (median(&mut m), median(&mut u));
        println!("mirrored writes ({mib} MiB, {label}, {runs} runs each, TCG, ABAB)");
        println!(
            "  {:<44} {:>10.1} MB/s",
            "mirrored LU (write-blocking mirror)", mm
        );
        println!("  {:<44} {:>10.1} MB/s", "unmirrored LU", um);
        println!(
            "  ratio mirrored/unmirrored: {:.3} (target >= 0.7)",
            mm / um
        );
    }
    c.post(
        &format!("/v1/partitions/{p}/stop"),
        &json!({ "force": true }),
    )
    .await?;
    Ok(())
}
