//! Real partitions through a real bulkheadd: lifecycle, the internal VLAN,
//! exec, stats, console, and cleanup of everything a partition had.

mod common;

use common::{Daemon, Opts, BOOT};
use hyper::Method;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn two_partitions_run_talk_and_stop_cleanly() {
    let d = Daemon::start(Opts::default());
    let c = d.client();
    d.create("alpha", 50, 192, json!({ "net": true })).await;
    d.create("beta", 25, 160, json!({ "net": true, "vcpus": 2 }))
        .await;

    // Both start at once; each answers once its agent is ready.
    let (a, b) = tokio::join!(d.start_wait("alpha"), d.start_wait("beta"));
    assert_eq!(a["state"], "running", "{a:#}");
    assert_eq!(b["state"], "running", "{b:#}");
    let alpha_ip = common::vlan_ip(&a);

    // Cgroups hold QEMU with the entitlements and memory limits.
    for (name, quota, mem) in [("alpha", 50_000, 192), ("beta", 25_000, 160)] {
        let cpu = d.cgroup_dir("cpu", name);
        let q: i64 = std::fs::read_to_string(cpu.join("cpu.cfs_quota_us"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(q, quota, "{name}");
        let limit: u64 =
            std::fs::read_to_string(d.cgroup_dir("memory", name).join("memory.limit_in_bytes"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
        assert_eq!(
            limit,
            (mem + 192) << 20,
            "{name}: guest + default QEMU overhead"
        );
        let pid = d.show(name).await["pid"].as_u64().unwrap();
        let procs = std::fs::read_to_string(cpu.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l == pid.to_string()),
            "{name}: QEMU {pid} not in {procs}"
        );
    }
    assert_eq!(d.taps().len(), 2);

    // The internal VLAN: beta reaches alpha by its assigned address.
    let r = d.exec("beta", &format!("ping -c 2 -W 5 {alpha_ip}")).await;
    assert_eq!(r["code"], 0, "{r:#}");
    assert!(
        r["stdout"].as_str().unwrap().contains("2 packets received"),
        "{r:#}"
    );
    let r = d
        .exec("beta", "grep -c ^processor /proc/cpuinfo; exit 3")
        .await;
    assert_eq!(r["code"], 3);
    assert_eq!(r["stdout"].as_str().unwrap().trim(), "2");

    // Stats: CPU time against the entitlement, memory, uptime.
    let s = c.get("/v1/partitions/alpha/stats").await.unwrap();
    assert_eq!(s["cpu_entitlement_percent"], 50);
    assert_eq!(s["cpu_limit_percent"], 50);
    assert!(s["cpu_time_ns"].as_u64().unwrap() > 0, "{s:#}");
    assert!(s["rss_bytes"].as_u64().unwrap() > 10 << 20, "{s:#}");
    assert!(s["memory_bytes"].as_u64().unwrap() > 0, "{s:#}");
    assert!(s["uptime_ms"].as_u64().unwrap() > 0);
    assert!(
        s["guest"]["mem_total_kib"].as_u64().unwrap() > 100_000,
        "{s:#}"
    );

    // The console log has the agent's ready line.
    let log = c
        .get("/v1/partitions/alpha/console?lines=500")
        .await
        .unwrap();
    let lines: Vec<&str> = log["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("bulkhead-agent: ready")),
        "{lines:?}"
    );

    // Attach to the console: what the guest writes to it comes back.
    let mut con = c.console("alpha").await.unwrap();
    d.exec("alpha", "echo console-marker-42 > /dev/ttyS0").await;
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        loop {
            let n = con.read(&mut buf).await.unwrap();
            assert!(n > 0, "console closed");
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("console-marker-42") {
                break;
            }
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "console showed {:?}",
        String::from_utf8_lossy(&seen)
    );
    // One attachment at a time.
    let Err(busy) = c.console("alpha").await else {
        panic!("second attachment accepted");
    };
    assert_eq!(busy.code(), Some("conflict"), "{busy}");
    drop(con);

    // A running partition is not destroyed without --force, nor started twice.
    let e = c
        .call(Method::DELETE, "/v1/partitions/alpha", None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("conflict"), "{e}");
    let e = c
        .post("/v1/partitions/alpha/start", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("conflict"), "{e}");

    // Graceful stop through the agent; then nothing is left of it.
    let v = c
        .post("/v1/partitions/alpha/stop", &json!({}))
        .await
        .unwrap();
    assert_eq!(v["state"], "stopped", "{v:#}");
    assert_eq!(v["last_exit"], "guest powered off");
    assert!(v["pid"].is_null());
    assert!(!d.cgroup_dir("cpu", "alpha").exists());
    assert!(!d.cgroup_dir("memory", "alpha").exists());
    assert_eq!(d.taps().len(), 1);

    // Restart brings it back with a new QEMU.
    let v = tokio::time::timeout(
        BOOT,
        c.post("/v1/partitions/alpha/restart", &json!({"wait": true})),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(v["state"], "running");

    // Destroy --force kills a running partition and removes everything.
    c.call(Method::DELETE, "/v1/partitions/beta?force=true", None)
        .await
        .unwrap();
    let e = c.get("/v1/partitions/beta").await.unwrap_err();
    assert_eq!(e.code(), Some("not_found"));
    assert_eq!(d.cgroups(), vec!["alpha".to_string()]);
    assert_eq!(d.taps().len(), 1);
    let v = c
        .post("/v1/partitions/alpha/stop", &json!({"force": true}))
        .await
        .unwrap();
    assert_eq!(v["state"], "stopped");
    assert!(d.cgroups().is_empty() && d.taps().is_empty());
    let events = d.show("alpha").await["events"].clone();
    assert!(events.as_array().unwrap().len() >= 4, "{events:#}");
}
