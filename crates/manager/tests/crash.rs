//! Crashes: a partition's QEMU killed (marked failed, restarted by policy),
//! bulkheadd killed while partitions run and while one starts (state stays
//! consistent, partitions are re-adopted or cleanly stopped, nothing leaks).

mod common;

use common::{alive, Daemon, Opts, BOOT};
use serde_json::json;
use std::process::Command;
use std::time::Duration;

fn kill9(pid: u64) {
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

#[tokio::test]
async fn killed_qemu_is_marked_failed_and_restarted_by_policy() {
    let d = Daemon::start(Opts::default());
    d.create(
        "crashy",
        50,
        160,
        json!({ "net": true, "restart_policy": "on-failure" }),
    )
    .await;
    d.create("steady", 20, 160, json!({ "restart_policy": "never" }))
        .await;
    let (v, s) = tokio::join!(d.start_wait("crashy"), d.start_wait("steady"));
    let old_pid = v["pid"].as_u64().unwrap();
    let steady_pid = s["pid"].as_u64().unwrap();

    kill9(old_pid);
    kill9(steady_pid);
    // steady (policy never) stays failed with the reason.
    let s = d.wait_state("steady", &["failed"], BOOT).await;
    assert!(
        s["last_exit"]
            .as_str()
            .unwrap()
            .contains("killed by signal 9"),
        "{s:#}"
    );
    assert!(s["pid"].is_null());
    assert!(!d.cgroup_dir("cpu", "steady").exists());
    // crashy is failed, then started again by its policy with a new QEMU.
    // Running again with a new QEMU: a view read before the daemon saw the
    // death still shows the old one running.
    let v = d
        .wait_show("crashy", BOOT, |v| {
            v["state"] == "running" && v["restarts"] == 1
        })
        .await;
    let new_pid = v["pid"].as_u64().unwrap();
    assert_ne!(new_pid, old_pid);
    assert_eq!(v["restarts"], 1);
    let events: Vec<String> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("failed: QEMU killed by signal 9")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e == "restarting (policy)"),
        "{events:?}"
    );
    assert_eq!(d.exec("crashy", "echo back").await["stdout"], "back\n");
    // One QEMU, one TAP: the old ones are gone.
    let procs =
        std::fs::read_to_string(d.cgroup_dir("cpu", "crashy").join("cgroup.procs")).unwrap();
    assert_eq!(procs.lines().collect::<Vec<_>>(), vec![new_pid.to_string()]);
    assert_eq!(d.taps().len(), 1);
    assert!(!alive(old_pid));
}

#[tokio::test]
async fn daemon_killed_while_partitions_run_readopts_them() {
    let mut d = Daemon::start(Opts::default());
    d.create("keep", 30, 160, json!({ "net": true })).await;
    d.create("lost", 30, 160, json!({ "net": true })).await;
    let (k, l) = tokio::join!(d.start_wait("keep"), d.start_wait("lost"));
    let keep_pid = k["pid"].as_u64().unwrap();
    let lost_pid = l["pid"].as_u64().unwrap();

    d.kill9();
    // Partitions outlive the daemon.
    assert!(alive(keep_pid) && alive(lost_pid));
    // While it is down: one QEMU dies, and debris appears under its names.
    kill9(lost_pid);
    let stray_cg = d.cgroup_dir("cpu", "stray");
    std::fs::create_dir(&stray_cg).unwrap();
    // A TAP under this daemon's names, and one of another daemon's on the
    // same bridge, which is not this daemon's to remove.
    let stray_tap = bulkhead_manager::net::tap_name(&d.instance, "stray");
    let foreign_tap = bulkhead_manager::net::tap_name(&format!("{}-other", d.instance), "stray");
    for t in [&stray_tap, &foreign_tap] {
        assert!(Command::new("ip")
            .args(["tuntap", "add", "dev", t, "mode", "tap"])
            .status()
            .unwrap()
            .success());
        assert!(Command::new("ip")
            .args(["link", "set", t, "master", &d.bridge])
            .status()
            .unwrap()
            .success());
    }

    d.spawn();
    let k = d.show("keep").await;
    assert_eq!(k["state"], "running", "{k:#}");
    assert_eq!(
        k["pid"].as_u64().unwrap(),
        keep_pid,
        "re-adopted, not restarted"
    );
    assert_eq!(d.exec("keep", "echo adopted").await["stdout"], "adopted\n");
    let l = d.show("lost").await;
    assert_eq!(l["state"], "failed", "{l:#}");
    assert!(
        l["last_exit"]
            .as_str()
            .unwrap()
            .contains("while bulkheadd was down"),
        "{l:#}"
    );
    // Reconciled: only keep's cgroup and TAP remain.
    assert_eq!(d.cgroups(), vec!["keep".to_string()]);
    let mut taps = d.taps();
    taps.sort();
    let mut expected = vec![
        bulkhead_manager::net::tap_name(&d.instance, "keep"),
        foreign_tap.clone(),
    ];
    expected.sort();
    assert_eq!(
        taps, expected,
        "the stray TAP removed, keep's and the other daemon's kept"
    );
    assert!(Command::new("ip")
        .args(["link", "del", &foreign_tap])
        .status()
        .unwrap()
        .success());
    assert!(!stray_cg.exists());

    // The adopted partition is supervised: a stop works and cleans up.
    let v = d
        .client()
        .post("/v1/partitions/keep/stop", &json!({}))
        .await
        .unwrap();
    assert_eq!(v["state"], "stopped");
    assert!(!alive(keep_pid));
    assert!(d.cgroups().is_empty() && d.taps().is_empty());
}

#[tokio::test]
async fn daemon_killed_during_a_start_leaves_consistent_state() {
    let mut d = Daemon::start(Opts::default());
    // Kill points: before the request lands, while QEMU is being launched,
    // and while the guest boots.
    for (i, delay_ms) in [0u64, 60, 400].into_iter().enumerate() {
        let name = format!("p{i}");
        d.create(&name, 20, 160, json!({ "net": true })).await;
        let c = d.client();
        let path = format!("/v1/partitions/{name}/start");
        let req = tokio::spawn(async move { c.post(&path, &json!({ "wait": true })).await });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        d.kill9();
        let _ = req.await;
        d.spawn();
        let v = d.show(&name).await;
        let state = v["state"].as_str().unwrap().to_string();
        match state.as_str() {
            // Adopted mid-boot: it becomes running by itself.
            "starting" | "running" => {
                let v = d.wait_state(&name, &["running"], BOOT).await;
                let pid = v["pid"].as_u64().unwrap();
                let procs =
                    std::fs::read_to_string(d.cgroup_dir("cpu", &name).join("cgroup.procs"))
                        .unwrap();
                assert_eq!(
                    procs.lines().collect::<Vec<_>>(),
                    vec![pid.to_string()],
                    "{name}"
                );
                assert_eq!(d.exec(&name, "echo ok").await["stdout"], "ok\n");
                let v = d
                    .client()
                    .post(
                        &format!("/v1/partitions/{name}/stop"),
                        &json!({"force": true}),
                    )
                    .await
                    .unwrap();
                assert_eq!(v["state"], "stopped");
            }
            // Never got going, or cleanly stopped by the new daemon.
            "defined" | "stopped" => {
                assert!(v["pid"].is_null(), "{v:#}");
            }
            other => panic!("{name}: inconsistent state {other} after a crash: {v:#}"),
        }
        eprintln!("kill after {delay_ms} ms: {name} was {state}");
        // Nothing leaked either way.
        assert!(d.cgroups().is_empty(), "{name}: {:?}", d.cgroups());
        assert!(d.taps().is_empty(), "{name}: {:?}", d.taps());
        let run = d.dir.path().join("data/run").join(&name);
        for s in ["qmp.sock", "agent.sock", "console.sock"] {
            assert!(!run.join(s).exists(), "{name}: {s} left behind");
        }
    }
}
