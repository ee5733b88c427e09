//! Hibernation (issue 14) through real bulkheadd processes and real TCG
//! partitions: hibernate and resume with a counting process, a value only
//! in guest memory, the same address and a VLAN neighbour; hibernation on
//! idleness and the `exec` that wakes it; two daemons sharing one store
//! racing to resume; bulkheadd killed at the two failpoints of a hibernate.

mod common;

use common::{alive, events, Daemon, Opts, BOOT};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

fn image_dir(d: &Daemon, name: &str) -> PathBuf {
    d.dir
        .path()
        .join("data/repository/clients")
        .join(name)
        .join("hibernation")
        .join(name)
}

fn out(v: &Value) -> String {
    assert_eq!(v["code"], 0, "{v:#}");
    v["stdout"].as_str().unwrap().trim().to_string()
}

/// A secret in a tmpfs file, and a loop whose shell variable holds it and
/// whose counter counts: `/tmp/count` is "<secret> <n>".
async fn plant(d: &Daemon, name: &str) -> String {
    let secret = format!("only-in-memory-{}-{name}", std::process::id());
    out(&d.exec(name, &format!("echo {secret} > /tmp/secret")).await);
    out(&d
        .exec(
            name,
            "(s=$(cat /tmp/secret); i=0; while :; do i=$((i+1)); echo \"$s $i\" > /tmp/count; sleep 0.1; done) \
             >/dev/null 2>&1 </dev/null & echo $! > /tmp/counter.pid",
        )
        .await);
    secret
}

/// Waits in the guest (bounded) until the counter exceeds `n`; returns
/// (what the loop's variable holds, the count).
async fn count_above(d: &Daemon, name: &str, n: u64) -> (String, u64) {
    let line = out(&d
        .exec(
            name,
            &format!(
                "for i in $(seq 600); do [ $(cut -d' ' -f2 /tmp/count) -gt {n} ] && break; sleep 0.05; done; cat /tmp/count"
            ),
        )
        .await);
    let (s, c) = line.split_once(' ').expect("secret and count");
    (s.to_string(), c.parse().unwrap())
}

/// The counter still runs as the same process, with its variable intact,
/// counting on from at least `before`; and the tmpfs file is intact.
async fn memory_intact(d: &Daemon, name: &str, secret: &str, before: u64) {
    assert_eq!(out(&d.exec(name, "cat /tmp/secret").await), secret);
    assert_eq!(
        out(&d
            .exec(name, "kill -0 $(cat /tmp/counter.pid) && echo same")
            .await),
        "same"
    );
    let (s, now) = count_above(d, name, 0).await;
    assert_eq!(s, secret, "the loop's variable");
    assert!(now >= before, "counter went back: {now} < {before}");
    let (_, later) = count_above(d, name, now).await;
    assert!(later > now, "the loop counts on");
}

/// A long-running POST (hibernate, resume) that must succeed, bounded.
async fn act(d: &Daemon, name: &str, action: &str) -> Value {
    let path = format!("/v1/partitions/{name}/{action}");
    tokio::time::timeout(BOOT, d.client().post(&path, &json!(null)))
        .await
        .unwrap_or_else(|_| panic!("{action} {name} timed out"))
        .unwrap_or_else(|e| panic!("{action} {name}: {e}"))
}

/// The POST is refused with a 409.
async fn refused(d: &Daemon, name: &str, action: &str) {
    let path = format!("/v1/partitions/{name}/{action}");
    let e = d.client().post(&path, &json!(null)).await.unwrap_err();
    assert_eq!(e.code(), Some("conflict"), "{action} {name}: {e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hibernate_and_resume_keep_processes_memory_address_and_neighbours() {
    let d = Daemon::start(Opts::default());
    d.create("sleeper", 50, 256, json!({ "net": true })).await;
    d.create("peer", 30, 160, json!({ "net": true })).await;
    let (s, _) = tokio::join!(d.start_wait("sleeper"), d.start_wait("peer"));
    let ip = s["net"]["ip"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let old_pid = s["pid"].as_u64().unwrap();
    let secret = plant(&d, "sleeper").await;
    // An hour slow: the resume must set the clock from the host's.
    out(&d
        .exec(
            "sleeper",
            "date -u -s @$(( $(date +%s) - 3600 )) >/dev/null",
        )
        .await);
    let (_, before) = count_above(&d, "sleeper", 5).await;

    // Hibernate, watching the progress endpoint while it runs.
    let call = tokio::spawn({
        let c = d.client();
        async move {
            c.post("/v1/partitions/sleeper/hibernate", &json!(null))
                .await
        }
    });
    let mut seen = None;
    while !call.is_finished() {
        let p = d
            .client()
            .get("/v1/partitions/sleeper/hibernate")
            .await
            .unwrap();
        if p["active"] == true && p["total"].as_u64().unwrap() > 0 {
            seen = Some(p);
        }
        tokio::task::yield_now().await;
    }
    let h = call.await.unwrap().expect("hibernate");
    let p = seen.expect("progress was reported while saving");
    assert!(p["total"].as_u64().unwrap() >= 256 << 20, "{p}");
    assert_eq!(h["state"], "hibernated", "{h:#}");
    assert!(h["pid"].is_null());
    assert_eq!(h["hibernation"]["reason"], "manual");
    assert_eq!(
        h["hibernation"]["location"],
        "clients/sleeper/hibernation/sleeper"
    );
    let img = image_dir(&d, "sleeper");
    let state_len = std::fs::metadata(img.join("state.bin")).unwrap().len();
    assert_eq!(h["hibernation"]["bytes"], state_len);
    assert!(img.join("manifest.json").is_file());
    assert!(!img.join("state.bin.partial").exists());
    let v = d.show("sleeper").await;
    let last = events(&v).pop().unwrap();
    assert!(
        last.starts_with("hibernated (manual)"),
        "QEMU's end is no stop: {last}"
    );
    // Nothing of it runs: no QEMU, no cgroup, no TAP; the peer runs on.
    assert!(!alive(old_pid));
    assert!(!d.cgroup_dir("cpu", "sleeper").exists());
    assert_eq!(d.taps().len(), 1, "only the peer's TAP: {:?}", d.taps());
    let p = d
        .client()
        .get("/v1/partitions/sleeper/hibernate")
        .await
        .unwrap();
    assert_eq!(
        (p["active"].clone(), p["state"].clone()),
        (json!(false), json!("hibernated"))
    );
    // A second hibernate of a hibernated partition is refused.
    refused(&d, "sleeper", "hibernate").await;

    let r = act(&d, "sleeper", "resume").await;
    assert_eq!(r["state"], "running", "{r:#}");
    assert!(r["hibernation"].is_null());
    assert_ne!(r["pid"].as_u64().unwrap(), old_pid);
    assert!(!img.exists(), "the image is deleted after a resume");
    memory_intact(&d, "sleeper", &secret, before).await;
    let guest: i64 = out(&d.exec("sleeper", "date +%s").await).parse().unwrap();
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (guest - host).abs() < 30,
        "guest clock {guest}, host {host}"
    );
    assert!(
        out(&d.exec("sleeper", "ip -4 -o addr show").await).contains(&format!(" {ip}/")),
        "the same address"
    );
    out(&d
        .exec(
            "peer",
            &format!("ping -c 1 -W 10 {ip} >/dev/null && echo ok"),
        )
        .await);
    let v = d.show("sleeper").await;
    assert!(
        events(&v)
            .iter()
            .any(|e| e.starts_with("resumed from hibernation")),
        "{v:#}"
    );
    // Resuming a running partition is refused.
    refused(&d, "sleeper", "resume").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_partition_hibernates_after_its_idle_time_and_exec_wakes_it() {
    let d = Daemon::start(Opts::default());
    d.create(
        "idler",
        50,
        160,
        json!({ "net": true, "hibernate_idle_secs": 20 }),
    )
    .await;
    d.start_wait("idler").await;
    let secret = format!("idle-secret-{}", std::process::id());
    out(&d
        .exec(
            "idler",
            &format!(
                "echo {secret} > /tmp/secret; (while :; do :; done) >/dev/null 2>&1 </dev/null & echo $! > /tmp/busy.pid"
            ),
        )
        .await);
    // Busy for longer than the idle time (and a few samples more): it
    // stays running.
    let window = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < window {
        let v = d.show("idler").await;
        assert_eq!(v["state"], "running", "hibernated while busy: {v:#}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    out(&d.exec("idler", "kill $(cat /tmp/busy.pid)").await);
    let quiet = tokio::time::Instant::now();
    let v = d
        .wait_state("idler", &["hibernating", "hibernated"], BOOT)
        .await;
    assert!(
        quiet.elapsed() >= Duration::from_secs(18),
        "hibernated {:?} after the guest went idle, before its 20 s: {v:#}",
        quiet.elapsed()
    );
    let v = d.wait_state("idler", &["hibernated"], BOOT).await;
    assert_eq!(v["hibernation"]["reason"], "idle", "{v:#}");
    // Its cgroup goes after the record says hibernated (the teardown follows
    // the write), so wait for it, bounded.
    let gone = tokio::time::Instant::now() + Duration::from_secs(30);
    while d.cgroup_dir("cpu", "idler").exists() {
        assert!(
            tokio::time::Instant::now() < gone,
            "the hibernated partition's cgroup stayed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // exec resumes it first, and waits for it.
    let r = tokio::time::timeout(
        BOOT,
        d.client().post(
            "/v1/partitions/idler/exec",
            &json!({ "argv": ["cat", "/tmp/secret"] }),
        ),
    )
    .await
    .expect("exec timed out")
    .unwrap();
    assert_eq!(out(&r), secret);
    assert_eq!(d.show("idler").await["state"], "running");
}

/// Two daemons on one SQLite store (one host id, as in shared_store.rs)
/// seeing one repository directory, as the hosts of a cluster do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_daemons_racing_a_resume_run_it_once() {
    let store_dir = tempfile::tempdir().unwrap();
    // One repository directory both daemons see, as the hosts of a cluster do.
    let repo = store_dir.path().join("repository");
    let extra = format!(
        "[store]\npath = {:?}\nhost_id = \"hibernate-race-host\"\n[cluster]\nrepository = {:?}\n",
        store_dir.path().join("shared.db"),
        repo
    );
    let start = || {
        Daemon::start(Opts {
            extra: extra.clone(),
            ..Default::default()
        })
    };
    let (a, b) = (start(), start());
    a.create("contested", 40, 160, json!({})).await;
    a.start_wait("contested").await;
    let secret = format!("race-{}", std::process::id());
    out(&a
        .exec("contested", &format!("echo {secret} > /tmp/secret"))
        .await);
    act(&a, "contested", "hibernate").await;

    let (ca, cb, null) = (a.client(), b.client(), json!(null));
    let (ra, rb) = tokio::join!(
        ca.post("/v1/partitions/contested/resume", &null),
        cb.post("/v1/partitions/contested/resume", &null),
    );
    let (winner, loser, refusal) = match (ra, rb) {
        (Ok(_), Err(e)) => (&a, &b, e),
        (Err(e), Ok(_)) => (&b, &a, e),
        (ra, rb) => panic!("exactly one resume must run: {ra:?} / {rb:?}"),
    };
    assert_eq!(refusal.code(), Some("conflict"), "{refusal}");
    let msg = refusal.to_string();
    assert!(
        msg.contains("being resumed") || msg.contains("not hibernated"),
        "a clear refusal: {msg}"
    );
    assert_eq!(winner.show("contested").await["state"], "running");
    assert_eq!(
        out(&winner.exec("contested", "cat /tmp/secret").await),
        secret
    );
    assert!(winner.cgroup_dir("cpu", "contested").exists());
    assert!(
        !loser.cgroup_dir("cpu", "contested").exists(),
        "the loser runs nothing"
    );
    // `console` on a hibernated partition resumes it before attaching.
    act(winner, "contested", "hibernate").await;
    let console = tokio::time::timeout(BOOT, winner.client().console("contested"))
        .await
        .expect("console attach timed out");
    assert!(console.is_ok(), "{:?}", console.err());
    drop(console);
    assert_eq!(winner.show("contested").await["state"], "running");
    assert_eq!(
        out(&winner.exec("contested", "cat /tmp/secret").await),
        secret
    );
}

/// kill -9 of bulkheadd at each failpoint of a hibernate: after a restart,
/// the partition runs on (image complete but not recorded) or is
/// hibernated with a whole image (recorded, QEMU not yet stopped).
#[tokio::test(flavor = "multi_thread")]
async fn daemon_killed_mid_hibernate_loses_nothing() {
    let fp = |p: &str| vec![("BULKHEAD_FAILPOINT".to_string(), p.to_string())];
    let mut d = Daemon::start(Opts {
        env: fp("hibernate-after-save"),
        ..Default::default()
    });
    d.create("crashy", 50, 192, json!({ "net": true })).await;
    let v = d.start_wait("crashy").await;
    let pid = v["pid"].as_u64().unwrap();
    let secret = plant(&d, "crashy").await;
    let (_, before) = count_above(&d, "crashy", 3).await;

    // 1. Image complete, store still says hibernating, QEMU paused.
    let manifest = image_dir(&d, "crashy").join("manifest.json");
    hibernate_until_the_failpoint(&mut d, "crashy", || {
        assert!(alive(pid), "QEMU outlives the daemon");
        assert!(manifest.is_file(), "the image was complete");
    })
    .await;
    let v = d.show("crashy").await;
    assert_eq!(v["state"], "running", "{v:#}");
    assert_eq!(v["pid"].as_u64(), Some(pid), "the same QEMU, re-adopted");
    assert!(
        !image_dir(&d, "crashy").exists(),
        "the unrecorded image is discarded"
    );
    memory_intact(&d, "crashy", &secret, before).await;
    let (_, before) = count_above(&d, "crashy", 0).await;

    // 2. Store says hibernated, QEMU not yet stopped.
    d.kill9();
    d.env = fp("hibernate-after-record");
    d.spawn();
    hibernate_until_the_failpoint(&mut d, "crashy", || {}).await;
    let v = d.show("crashy").await;
    assert_eq!(v["state"], "hibernated", "{v:#}");
    assert!(!alive(pid), "the hibernated partition's QEMU is gone");
    let img = image_dir(&d, "crashy");
    let len = std::fs::metadata(img.join("state.bin")).unwrap().len();
    assert_eq!(v["hibernation"]["bytes"], len, "{v:#}");
    // A corrupted image is refused, changes nothing, and leaves the image
    // to a later resume once it is whole again.
    let flip = || {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(img.join("state.bin"))
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, len / 2).unwrap();
        f.write_all_at(&[b[0] ^ 0x5a], len / 2).unwrap();
    };
    flip();
    let e = d
        .client()
        .post("/v1/partitions/crashy/resume", &json!(null))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("engine"), "{e}");
    assert!(e.to_string().contains("corrupted"), "{e}");
    let after = d.show("crashy").await;
    assert_eq!(after["state"], "hibernated", "{after:#}");
    assert_eq!(after["hibernation"], v["hibernation"]);
    assert!(after["pid"].is_null());
    assert!(!d.cgroup_dir("cpu", "crashy").exists());
    assert!(d.taps().is_empty(), "{:?}", d.taps());
    flip();
    // `start` on a hibernated partition resumes it.
    let r = d.start_wait("crashy").await;
    assert_eq!(r["state"], "running", "{r:#}");
    memory_intact(&d, "crashy", &secret, before).await;
}

/// Hibernates through a daemon that dies at its failpoint; `check` looks
/// at what is left while it is down; then a daemon without the failpoint
/// takes over.
async fn hibernate_until_the_failpoint(d: &mut Daemon, name: &str, check: impl FnOnce()) {
    let path = format!("/v1/partitions/{name}/hibernate");
    let e = d.client().post(&path, &json!(null)).await;
    assert!(e.is_err(), "the daemon died mid-call: {e:?}");
    wait_dead(d).await;
    check();
    d.env.clear();
    d.spawn();
}

/// Waits (bounded) for the daemon to have killed itself at its failpoint.
async fn wait_dead(d: &mut Daemon) {
    let deadline = tokio::time::Instant::now() + BOOT;
    while d.alive() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the daemon did not reach its failpoint"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        d.log.lock().unwrap().contains("failpoint reached"),
        "it died at the failpoint"
    );
    d.kill9(); // reaps it
}
