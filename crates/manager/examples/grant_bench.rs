//! Grant benchmarks, each next to the floor QEMU gives in the same run:
//! 1. accept → mapping usable in the grantee (bulkheadd: the on-behalf
//!    `accept`, which checks the cookie, commits the table, hot-plugs the
//!    region and has the agent map it) against the same hot-plug and map done
//!    by hand (the engine's QMP `object_add` + `device_add` and the agent's
//!    `region_map`) on partitions of the same spec, alternating ABBA;
//! 2. revoke of a three-deep chain (A → B → C → D) until every holder is
//!    unmapped, against unmapping and unplugging the same three devices by hand;
//! 3. a 64 MiB copy out of a granted mapping inside the guest against the
//!    same copy within the guest's RAM (`bulkhead-guest copy-bench`);
//! 4. grants issued per second (cookie, table commit, log line), next to the
//!    rate of an API call that writes nothing (`GET /v1/grants/{id}`).
//!
//! `cargo run --release -p bulkhead-manager --example grant_bench -- [ROUNDS]`
//! (bench/grants/run builds the binaries and runs this).

use bulkhead_engine::{LaunchOptions, Partition, PartitionSpec, RegionPlug, RegionSpec};
use bulkhead_manager::client::Client;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[path = "common/daemon.rs"]
mod daemon;
use daemon::Daemon;

const READY: Duration = Duration::from_secs(300);
const MEM: u64 = 256;
const REGION: u64 = 64 << 20;

async fn ask(c: &Client, p: &str, req: Value) -> Value {
    c.post(&format!("/v1/partitions/{p}/grant-requests"), &req)
        .await
        .unwrap_or_else(|e| panic!("{p} {req}: {e}"))
}

async fn exec(c: &Client, p: &str, cmd: &str) -> String {
    let r: Value = c
        .post(
            &format!("/v1/partitions/{p}/exec"),
            &json!({ "argv": ["/bin/sh", "-c", cmd], "timeout_secs": 600 }),
        )
        .await
        .unwrap_or_else(|e| panic!("exec in {p}: {e}"));
    assert_eq!(r["code"], 0, "{cmd} in {p}: {r}");
    r["stdout"].as_str().unwrap_or_default().trim().to_string()
}

/// Grants `resource` (or re-grants `parent`) from `from` to `to` and has `to`
/// accept it; returns (grant id, time of the accept alone).
async fn grant_and_accept(
    c: &Client,
    from: &str,
    to: &str,
    source: Result<&str, &str>,
) -> (String, Duration) {
    let req = match source {
        Ok(resource) => json!({ "op": "grant", "resource": resource, "to": to }),
        Err(parent) => json!({ "op": "regrant", "grant": parent, "to": to }),
    };
    let issued = ask(c, from, req).await;
    let t = Instant::now();
    let mapped = ask(c, to, json!({ "op": "accept", "cookie": issued["cookie"] })).await;
    let took = t.elapsed();
    assert_eq!(mapped["reply"], "mapped", "{mapped}");
    (issued["grant"].as_str().unwrap().to_string(), took)
}

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn row(label: &str, v: &[Duration]) {
    println!(
        "{label:<44} median {:>8.1} ms   p90 {:>8.1} ms   (n={})",
        ms(pct(v, 0.5)),
        ms(pct(v, 0.9)),
        v.len()
    );
}

fn ratio(label: &str, a: &[Duration], b: &[Duration]) {
    println!(
        "{label:<44} {:.3} x (median)",
        pct(a, 0.5).as_secs_f64() / pct(b, 0.5).as_secs_f64()
    );
}

/// The hand side: partitions the engine runs directly, of the spec the
/// manager gives its own (same memory, hot-plug ports, kernel and image).
struct Hand {
    _dir: tempfile::TempDir,
    parts: Vec<Partition>,
    file: std::path::PathBuf,
}

impl Hand {
    async fn start(n: usize) -> Hand {
        let dir = tempfile::Builder::new()
            .prefix("bhgrantbench")
            .tempdir()
            .unwrap();
        let img = bulkhead_testbed::image_dir();
        let mut starts = Vec::new();
        for i in 0..n {
            let name = format!("gbh{i}-{}", std::process::id());
            let mut spec =
                PartitionSpec::new(&name, img.join("vmlinux"), img.join("initramfs.cpio.gz"));
            spec.memory_mib = MEM;
            spec.hotplug_slots = 4;
            let mut o = LaunchOptions::new(dir.path().join(&name));
            o.kill_on_drop = true;
            starts.push(tokio::spawn(Partition::start(spec, o, READY)));
        }
        let mut parts = Vec::new();
        for s in starts {
            parts.push(s.await.unwrap().expect("hand partition"));
        }
        // Region files live on the same memory filesystem as the manager's.
        let file =
            std::path::PathBuf::from(format!("/dev/shm/bhgrantbench-{}", std::process::id()));
        let f = std::fs::File::create(&file).unwrap();
        f.set_len(REGION).unwrap();
        Hand {
            _dir: dir,
            parts,
            file,
        }
    }

    /// Plug + map in partition `i`: the floor of an accept.
    async fn plug(&self, i: usize, id: &str) -> (RegionPlug, Duration) {
        let p = &self.parts[i];
        let t = Instant::now();
        let plug = p
            .plug_region(RegionSpec {
                id: id.into(),
                path: self.file.clone(),
                readonly: false,
            })
            .await
            .unwrap();
        p.agent()
            .region_map(&plug.port, Duration::from_secs(60))
            .await
            .unwrap();
        (plug, t.elapsed())
    }

    /// Unmap + unplug in partition `i`: the floor of one holder's revoke.
    async fn unplug(&self, i: usize, plug: &RegionPlug) {
        let p = &self.parts[i];
        let _ = p
            .agent()
            .region_unmap(&plug.port, Duration::from_secs(2))
            .await;
        p.unplug(&plug.id, Duration::from_secs(60)).await.unwrap();
    }
}

impl Drop for Hand {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("ROUNDS"))
        .unwrap_or(20);
    let d = Daemon::start();
    let c = d.client();
    let names = ["ga", "gb", "gc", "gd"];
    for n in names {
        c.post(
            "/v1/partitions",
            &json!({ "name": n, "vcpus": 1, "memory_mib": MEM, "cpu_percent": 100, "hotplug_slots": 4 }),
        )
        .await
        .unwrap();
    }
    let mut starts = Vec::new();
    for n in names {
        let c = d.client();
        starts.push(tokio::spawn(async move {
            c.post(
                &format!("/v1/partitions/{n}/start"),
                &json!({ "wait": true }),
            )
            .await
            .map(|_: Value| ())
        }));
    }
    for s in starts {
        s.await.unwrap().expect("start");
    }
    let hand = Hand::start(3).await;
    let region = ask(
        &c,
        "ga",
        json!({ "op": "region_create", "name": "buf", "size": REGION }),
    )
    .await;
    assert_eq!(region["reply"], "region", "{region}");

    // 1. Accept against the hand hot-plug, ABBA.
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let manager_first = i % 4 == 0 || i % 4 == 3;
        for side in [manager_first, !manager_first] {
            if side {
                let (g, took) = grant_and_accept(&c, "ga", "gb", Ok("buf")).await;
                ours.push(took);
                ask(&c, "gb", json!({ "op": "release", "grant": g })).await;
            } else {
                let (plug, took) = hand.plug(0, &format!("hand{i}")).await;
                floor.push(took);
                hand.unplug(0, &plug).await;
            }
        }
    }
    println!(
        "== accept -> mapping usable in the grantee ({MEM} MiB partitions, {} MiB region)",
        REGION >> 20
    );
    row("bulkheadd accept (cookie, store, plug, map)", &ours);
    row("by hand: QMP plug + agent map", &floor);
    ratio("accept / hand", &ours, &floor);

    // 2. Revoke of a three-deep chain against three unplugs by hand.
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for i in 0..rounds.div_ceil(4).max(3) {
        let (g1, _) = grant_and_accept(&c, "ga", "gb", Ok("buf")).await;
        let (g2, _) = grant_and_accept(&c, "gb", "gc", Err(&g1)).await;
        let _ = grant_and_accept(&c, "gc", "gd", Err(&g2)).await;
        let t = Instant::now();
        let r = ask(&c, "ga", json!({ "op": "revoke", "grant": g1 })).await;
        ours.push(t.elapsed());
        assert_eq!(r["ended"].as_array().map(Vec::len), Some(3), "{r}");
        let mut plugs = Vec::new();
        for k in 0..3 {
            plugs.push(hand.plug(k, &format!("chain{i}-{k}")).await.0);
        }
        let t = Instant::now();
        for (k, plug) in plugs.iter().enumerate().rev() {
            hand.unplug(k, plug).await;
        }
        floor.push(t.elapsed());
    }
    println!("== revoke of a three-deep chain -> every holder unmapped");
    row("bulkheadd revoke (cascade, unmap, unplug)", &ours);
    row("by hand: 3 x (agent unmap + QMP unplug)", &floor);
    ratio("revoke / hand", &ours, &floor);

    // 3. Mapped bandwidth inside the guest.
    let (g, _) = grant_and_accept(&c, "ga", "gb", Ok("buf")).await;
    let out = exec(
        &c,
        "gb",
        &format!("bulkhead-guest copy-bench {g} --size 64M --json"),
    )
    .await;
    let v: Value = serde_json::from_str(&out).unwrap();
    let (mapped, ram) = (
        v["mapped_ns"].as_f64().unwrap(),
        v["ram_ns"].as_f64().unwrap(),
    );
    let mib = |ns: f64| 64.0 / (ns / 1e9);
    println!("== 64 MiB copy inside the guest (best of 3, TCG)");
    println!(
        "{:<44} {:>8.0} MiB/s",
        "from the granted mapping",
        mib(mapped)
    );
    println!("{:<44} {:>8.0} MiB/s", "within the guest's RAM", mib(ram));
    println!("{:<44} {:.3} x", "mapped / RAM bandwidth", ram / mapped);
    ask(&c, "gb", json!({ "op": "release", "grant": g })).await;

    // 4. Grants issued per second, next to a read-only API call.
    let n = 200;
    let t = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..n {
        let r = ask(
            &c,
            "ga",
            json!({ "op": "grant", "resource": "buf", "to": "gb" }),
        )
        .await;
        ids.push(r["grant"].as_str().unwrap().to_string());
    }
    let issue = t.elapsed();
    let t = Instant::now();
    for id in &ids {
        let _: Value = c.get(&format!("/v1/grants/{id}")).await.unwrap();
    }
    let show = t.elapsed();
    println!("== grants issued per second ({n}, one after another over the unix socket)");
    println!(
        "{:<44} {:>8.0} /s",
        "grant (cookie, table commit, log line)",
        n as f64 / issue.as_secs_f64()
    );
    println!(
        "{:<44} {:>8.0} /s",
        "GET /v1/grants/{id} (writes nothing)",
        n as f64 / show.as_secs_f64()
    );
    for id in ids {
        let _ = ask(&c, "ga", json!({ "op": "revoke", "grant": id })).await;
    }
    for n in names {
        let _: Result<Value, _> = c
            .post(
                &format!("/v1/partitions/{n}/stop"),
                &json!({ "force": true }),
            )
            .await;
    }
}
