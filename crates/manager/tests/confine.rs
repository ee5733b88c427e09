//! What a partition (or an API client) can reach: disks only from the
//! storage roots, QEMU unprivileged in its own mount namespace with a pids
//! limit, no address but its own on the VLAN, and adoption only of the QEMU
//! that was started.

mod common;

use bulkhead_manager::client::ClientError;
use bulkhead_testbed::qcow2;
use common::{Daemon, Opts};
use hyper::Method;
use serde_json::{json, Value};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn qemu_uid() -> u32 {
    let out = Command::new("id")
        .args(["-u", "bulkhead-qemu"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bulkhead-qemu missing: run scripts/bootstrap"
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn api_error(r: Result<Value, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Api {
            status, message, ..
        }) => (status, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z"))
        .unwrap_or(false)
}

async fn wait_gone(pid: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while alive(pid) {
        assert!(tokio::time::Instant::now() < deadline, "pid {pid} lives on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn disks_come_only_from_the_storage_roots() {
    let d = Daemon::start(Opts::default());
    let c = d.client();
    let data = d.dir.path().join("data");
    // Made by the daemon at start (made here too, so that on a daemon without
    // storage roots the test fails at the refusals, not here).
    let root = d.storage_root();

    // What may be used: a qcow2 whose backing file is in the root too.
    let base = root.join("base.qcow2");
    let top = root.join("top.qcow2");
    qcow2(&base, "8M", None);
    qcow2(&top, "8M", Some(&base));
    let ok = json!({ "disks": [{ "path": top, "format": "qcow2" }] });
    d.create("fine", 10, 128, ok).await;
    let before = d.client().get("/v1/partitions").await.unwrap();

    // What may not.
    std::os::unix::fs::symlink("/etc/shadow", root.join("shadow.img")).unwrap();
    let outside = d.dir.path().join("outside.qcow2");
    qcow2(&outside, "8M", None);
    let evil = root.join("evil.qcow2");
    qcow2(&evil, "8M", Some(&outside));
    let loopdev = (0..8)
        .map(|i| format!("/dev/loop{i}"))
        .find(|p| Path::new(p).exists())
        .expect("a loop device node");
    let mut cases = vec![
        (loopdev, "raw", "is a host device"),
        (
            data.join("state.db").display().to_string(),
            "raw",
            "lies in bulkheadd's data directory",
        ),
        (
            root.join("shadow.img").display().to_string(),
            "raw",
            "resolves (through a symlink) to /etc/shadow",
        ),
        (evil.display().to_string(), "qcow2", "backing file"),
        (
            format!("{}/../state.db", root.display()),
            "raw",
            "must not contain '..'",
        ),
    ];
    if Path::new("/dev/vda").exists() {
        cases.push(("/dev/vda".into(), "raw", "is a host device"));
    }
    for (path, format, needle) in cases {
        let body = json!({"name": "grab", "memory_mib": 128, "cpu_percent": 10,
                          "disks": [{"path": path, "format": format}]});
        let (status, msg) = api_error(c.post("/v1/partitions", &body).await);
        assert_eq!(status, 400, "{path}: {msg}");
        assert!(msg.contains(needle), "{path}: {msg:?} lacks {needle:?}");
        assert!(
            msg.contains(&format!("storage roots [{}]", root.display())),
            "{path}: the error names the allowed roots: {msg}"
        );
        assert_eq!(
            d.client().get("/v1/partitions").await.unwrap(),
            before,
            "{path} changed state"
        );
    }
    // The backing-file refusal names the file outside.
    let body = json!({"name": "grab", "memory_mib": 128, "cpu_percent": 10,
                      "disks": [{"path": evil, "format": "qcow2"}]});
    let (_, msg) = api_error(c.post("/v1/partitions", &body).await);
    assert!(
        msg.contains(outside.to_str().unwrap()) && msg.contains("outside"),
        "{msg}"
    );

    // An image directory outside the roots and the configured image_dir.
    std::fs::create_dir_all(d.dir.path().join("img")).unwrap();
    for f in ["vmlinux", "initramfs.cpio.gz"] {
        std::fs::copy(
            common::image_dir().join(f),
            d.dir.path().join("img").join(f),
        )
        .unwrap();
    }
    let body = json!({"name": "grab", "memory_mib": 128, "cpu_percent": 10,
                      "image": d.dir.path().join("img")});
    let (status, msg) = api_error(c.post("/v1/partitions", &body).await);
    assert_eq!(status, 400, "{msg}");
    assert!(msg.contains("outside the configured image_dir"), "{msg}");

    // A disk swapped for a symlink after create is refused at start, and the
    // partition stays as it was.
    std::fs::remove_file(&top).unwrap();
    std::os::unix::fs::symlink(&outside, &top).unwrap();
    let (status, msg) = api_error(
        c.post("/v1/partitions/fine/start", &json!({"wait": true}))
            .await,
    );
    assert_eq!(status, 400, "{msg}");
    assert!(msg.contains("through a symlink"), "{msg}");
    assert_eq!(d.client().get("/v1/partitions").await.unwrap(), before);
    assert!(d.cgroups().is_empty());
}

#[tokio::test]
async fn qemu_runs_unprivileged_in_its_own_mount_namespace() {
    let d = Daemon::start(Opts::default());
    let uid = qemu_uid();
    let data = d.dir.path().join("data");
    let root = d.storage_root();
    // A qcow2 over a backing file that carries a pattern the guest must see:
    // the pinned chain is opened inside the jail.
    let base = root.join("base.qcow2");
    let top = root.join("top.qcow2");
    qcow2(&base, "8M", None);
    let out = Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 0 4k",
            base.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    qcow2(&top, "8M", Some(&base));
    d.create(
        "jailed",
        30,
        160,
        json!({ "net": true, "vcpus": 2, "disks": [{ "path": top, "format": "qcow2" }] }),
    )
    .await;
    let v = d.start_wait("jailed").await;
    let pid = v["pid"].as_u64().unwrap();

    // Unprivileged from the start: real, effective, saved and fs uids.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids: Vec<u32> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(uids, vec![uid; 4], "{status}");
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(caps, "0000000000000000", "no capabilities left");

    // Its view of the file system: a private /dev without block devices,
    // no data directory state, no host home.
    let qroot = Path::new("/proc").join(pid.to_string()).join("root");
    let mut dev: Vec<String> = std::fs::read_dir(qroot.join("dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dev.sort();
    assert_eq!(dev, ["full", "net", "null", "random", "urandom", "zero"]);
    let jailed_data = qroot.join(data.strip_prefix("/").unwrap());
    assert!(!jailed_data.join("state.db").exists());
    let seen: Vec<String> = std::fs::read_dir(&jailed_data)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        seen.iter().all(|n| n == "storage"),
        "only the disks' own directory shows: {seen:?}"
    );
    assert!(!qroot.join("root").exists() && !qroot.join("var").exists());
    assert!(!qroot.join("proc/self").exists(), "no /proc in the jail");

    // Its files are its own while it runs.
    assert_eq!(std::fs::metadata(&top).unwrap().uid(), uid);
    let log = data.join("run/jailed/console.log");
    assert_eq!(std::fs::metadata(&log).unwrap().uid(), uid);

    // A task limit beside the CPU and memory limits, holding QEMU.
    let pids = d.cgroup_dir("pids", "jailed");
    let max = std::fs::read_to_string(pids.join("pids.max")).unwrap();
    assert_eq!(max.trim(), "130", "128 + one per vCPU");
    let procs = std::fs::read_to_string(pids.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");

    // The guest reads its disk through the pinned backing chain.
    let r = d.exec("jailed", "head -c 4 /dev/vda").await;
    assert_eq!(r["stdout"], "ZZZZ", "{r:#}");

    // Destroy gives the disk back to its owner.
    let r = d
        .client()
        .call(Method::DELETE, "/v1/partitions/jailed?force=true", None)
        .await;
    r.unwrap();
    wait_gone(pid).await;
    assert_eq!(std::fs::metadata(&top).unwrap().uid(), 0);
}

#[tokio::test]
async fn a_partition_cannot_use_a_neighbours_address() {
    let d = Daemon::start(Opts::default());
    let honest = d.create("honest", 30, 160, json!({ "net": true })).await;
    let honest_ip = honest["net"]["ip"].as_str().unwrap().to_string();
    let honest_addr = honest_ip.split('/').next().unwrap().to_string();
    // The thief asks for its neighbour's address on its kernel command line.
    let thief = d
        .create(
            "thief",
            30,
            160,
            json!({ "net": true, "cmdline": format!("bulkhead.ip={honest_ip}") }),
        )
        .await;
    let thief_addr = common::vlan_ip(&thief);
    let thief_mac = thief["net"]["mac"].as_str().unwrap().to_string();
    let gw = format!("{}.1", d.subnet_prefix);
    let (a, b) = tokio::join!(d.start_wait("honest"), d.start_wait("thief"));
    assert_eq!(a["state"], "running");
    assert_eq!(b["state"], "running");

    // The manager's address wins over the user's command line.
    let r = d.exec("thief", "ip -4 -o addr show dev eth0").await;
    let out = r["stdout"].as_str().unwrap();
    assert!(
        out.contains(&format!("{thief_addr}/")) && !out.contains(&format!("{honest_addr}/")),
        "{out}"
    );

    // Taking the address by hand: nothing it sends from it gets anywhere,
    // neither IP nor ARP.
    let r = d
        .exec(
            "thief",
            &format!(
                "ip addr add {honest_ip} dev eth0 && \
                 ping -c 2 -W 2 -I {honest_addr} {gw}; echo ping=$?; \
                 arping -c 2 -w 3 -I eth0 -s {honest_addr} {gw}; echo arping=$?"
            ),
        )
        .await;
    let out = r["stdout"].as_str().unwrap();
    assert!(out.contains("ping=1"), "spoofed IP got through: {r:#}");
    assert!(out.contains("arping=1"), "spoofed ARP got through: {r:#}");

    // Its own address still works, to the host and to its neighbour, and
    // the neighbour still reaches the host on the stolen address's behalf.
    let r = d
        .exec(
            "thief",
            &format!(
                "ip addr del {honest_ip} dev eth0 && ping -c 2 -W 5 {gw} && ping -c 2 -W 5 {honest_addr}"
            ),
        )
        .await;
    assert_eq!(r["code"], 0, "{r:#}");
    let r = d
        .exec(
            "honest",
            &format!("ping -c 2 -W 5 {gw} && ping -c 2 -W 5 {thief_addr}"),
        )
        .await;
    assert_eq!(r["code"], 0, "{r:#}");

    // A forged source MAC is dropped too (then restored: the real one works).
    let r = d
        .exec(
            "thief",
            &format!(
                "mac() {{ ip link set dev eth0 down; ip link set dev eth0 address $1; \
                          ip link set dev eth0 up; ip neigh flush dev eth0; }}; \
                 mac 52:54:00:de:ad:01; ping -c 2 -W 2 {gw}; echo forged=$?; \
                 mac {thief_mac}; ping -c 3 -W 5 {gw}; echo real=$?"
            ),
        )
        .await;
    let out = r["stdout"].as_str().unwrap();
    assert!(out.contains("forged=1") && out.contains("real=0"), "{r:#}");
}

#[tokio::test]
async fn adoption_refuses_a_pid_that_is_not_our_qemu() {
    let mut d = Daemon::start(Opts::default());
    d.create("victim", 30, 160, json!({})).await;
    let v = d.start_wait("victim").await;
    let qemu = v["pid"].as_u64().unwrap();
    d.kill9();

    // As after a reboot (or a pid file rewritten): the recorded pid now
    // belongs to another process.
    let mut other = Command::new("sleep").arg("600").spawn().unwrap();
    let other_pid = other.id();
    let run = d.dir.path().join("data/run/victim");
    std::fs::write(run.join("qemu.pid"), format!("{other_pid}\n")).unwrap();
    let state = run.join("state.json");
    let mut s: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    s["pid"] = json!(other_pid);
    std::fs::write(&state, serde_json::to_vec(&s).unwrap()).unwrap();

    d.spawn();
    let v = d.show("victim").await;
    assert_eq!(v["state"], "failed", "{v:#}");
    assert_ne!(v["pid"].as_u64(), Some(other_pid as u64), "{v:#}");
    assert!(
        v["last_exit"]
            .as_str()
            .unwrap()
            .contains("is not the QEMU started for victim"),
        "{v:#}"
    );
    // Nothing signalled the stranger; the QEMU nobody can vouch for is gone
    // with its cgroup.
    assert!(alive(other_pid as u64));
    wait_gone(qemu).await;
    other.kill().unwrap();
    other.wait().unwrap();
}
