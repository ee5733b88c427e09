//! Host loss, HA policy and fencing (issue 12) on three bulkheadd hosts in
//! network namespaces over a 3-member etcd (`bulkhead_testbed::cluster`),
//! one cluster for every phase:
//!
//! 1. kill -9 of host a (its daemon and QEMUs): `ha=reboot` runs again on
//!    another host, `ha=resume` resumes there from its last checkpoint with
//!    its memory intact, `ha=none` stays on a;
//! 2. a cut off from the others and from etcd: a self-fences, the partition
//!    runs elsewhere, never two copies at once (sampled in every namespace),
//!    and its LU shows no write of the old copy after the new one's first;
//!    healed, a cleans up and restarts nothing, and collects the remote
//!    restart it was the source of that ended while it was away;
//! 3. etcd's leader killed during a failover: it completes, or fails
//!    cleanly and a retry succeeds; never two copies;
//! 4. etcd's leader killed during a remote restart: the operation ends
//!    restored or failed (then restartable, and a retry succeeds);
//! 5. one etcd member frozen (SIGSTOP) for three leases: no host fences;
//! 6. the failover stopped right after its claim (a failpoint): the next
//!    orchestrator round restarts the claimed partition.

mod cluster_common;

use bulkhead_manager::api::{CreatePartition, StartOptions};
use bulkhead_manager::client::Client;
use bulkhead_manager::lu::types::{CreateLu, LuAttach};
use bulkhead_manager::remote_restart::api::StartRemoteRestart;
use bulkhead_manager::remote_restart::StopState;
use bulkhead_store::{HaPolicy, HostState, PartitionRecord, PartitionState};
use bulkhead_testbed::cluster::{self, Cluster};
use cluster_common::{client, exec, host_id, wait_host};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The product's default, so a phase takes seconds: the self-fence is 5/6
/// of it, the takeover margin 1/3 (the defaults). Smaller leases fenced
/// healthy hosts during an etcd leader election on a loaded 2-core host.
const LEASE_MS: u64 = 5000;
/// Host loss to running elsewhere, with a TCG boot on a loaded host.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(240);

fn spec(name: &str, ha: HaPolicy, lu: Option<&str>) -> CreatePartition {
    CreatePartition {
        client: Some("acme".into()),
        lus: lu
            .map(|l| LuAttach {
                name: l.into(),
                readonly: false,
            })
            .into_iter()
            .collect(),
        ha,
        ..CreatePartition::new(name, 1, 128, 30)
    }
}

async fn lu(cl: &Client, name: &str) {
    cl.lu_create(&CreateLu {
        name: name.into(),
        client: "acme".into(),
        size_bytes: 8 << 20,
        purpose: None,
    })
    .await
    .unwrap();
}

/// Waits until `name` runs on a host other than `not` and answers an exec;
/// returns its record.
async fn running_elsewhere(cl: &Client, name: &str, not: &str) -> PartitionRecord {
    let deadline = Instant::now() + FAILOVER_DEADLINE;
    loop {
        if let Ok(v) = cl.show(name).await {
            let r = v.record;
            if r.state == PartitionState::Running && r.host != not {
                let (code, _) = exec(cl, name, "true").await;
                if code == 0 {
                    return r;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{name} not running elsewhere: {:?} on {}; events {:?}",
                r.state,
                r.host,
                v.events.iter().map(|e| &e.message).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The partition's events; none while its host cannot be asked (a host
/// not yet declared lost is still forwarded to, and does not answer).
async fn events(cl: &Client, name: &str) -> Vec<String> {
    cl.show(name)
        .await
        .map(|v| v.events.into_iter().map(|e| e.message).collect())
        .unwrap_or_default()
}

/// Every QEMU of partition `name` in the cluster's namespaces, sampled
/// every few ms until stopped: the most seen at once, and the namespaces
/// that ran it, in order.
struct Sampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<(usize, Vec<String>)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(c: &Cluster, name: &str) -> Sampler {
        let inodes: Vec<(u64, String)> = c
            .hosts
            .iter()
            .map(|h| {
                let ino = std::fs::metadata(format!("/run/netns/{}", h.netns))
                    .expect("netns")
                    .ino();
                (ino, h.name.clone())
            })
            .collect();
        let needle = format!("guest={name},");
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<(usize, Vec<String>)>> = Arc::default();
        let (s, v) = (stop.clone(), Arc::clone(&seen));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let mut hosts = Vec::new();
                for pid in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let p = pid.path();
                    let Ok(cmd) = std::fs::read(p.join("cmdline")) else {
                        continue;
                    };
                    if !String::from_utf8_lossy(&cmd).contains(&needle) {
                        continue;
                    }
                    // A zombie has run its course: not a copy.
                    let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
                    if stat.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')) {
                        continue;
                    }
                    let Ok(ns) = std::fs::metadata(p.join("ns/net")) else {
                        continue;
                    };
                    if let Some((_, h)) = inodes.iter().find(|(i, _)| *i == ns.ino()) {
                        hosts.push(h.clone());
                    }
                }
                let mut g = v.lock().unwrap();
                g.0 = g.0.max(hosts.len());
                if let [h] = hosts.as_slice() {
                    if g.1.last() != Some(h) {
                        g.1.push(h.clone());
                    }
                }
                drop(g);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Sampler {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// (most copies at once, the hosts that ran it in order).
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.seen.lock().unwrap().clone()
    }
}

/// The guest loop appending `<boot id> <slot>` records, one per 512-byte
/// slot of its LU (/dev/vda), from the first empty slot on. Each write is
/// fsynced: `sync` alone sends a raw block device no flush, and QEMU keeps
/// the qcow2 metadata of unflushed writes in memory (lost with a SIGKILL).
const WRITER: &str = r#"(B=$(cat /proc/sys/kernel/random/boot_id); i=0
while [ -n "$(dd if=/dev/vda bs=512 skip=$i count=1 2>/dev/null | tr -d '\000')" ]; do i=$((i+1)); done
while :; do printf '%s %d\n' "$B" $i | dd of=/dev/vda bs=512 seek=$i count=1 conv=sync,notrunc,fsync 2>/dev/null; i=$((i+1)); sleep 0.3 2>/dev/null || sleep 1; done) </dev/null >/dev/null 2>&1 &
cat /proc/sys/kernel/random/boot_id"#;

/// The records on the LU file as the host reads it (QEMU's lock shared).
fn lu_records(path: &std::path::Path) -> Vec<(String, usize)> {
    let raw = std::env::temp_dir().join(format!("ha-lu-{}.raw", std::process::id()));
    let st = Command::new("qemu-img")
        .args(["convert", "-U", "-f", "qcow2", "-O", "raw"])
        .arg(path)
        .arg(&raw)
        .status()
        .expect("qemu-img");
    assert!(st.success());
    let bytes = std::fs::read(&raw).unwrap();
    let _ = std::fs::remove_file(&raw);
    bytes
        .chunks(512)
        .map(|s| {
            String::from_utf8_lossy(s)
                .trim_end_matches('\0')
                .trim()
                .to_string()
        })
        .take_while(|s| !s.is_empty())
        .map(|s| {
            let (b, i) = s.split_once(' ').expect("record");
            (b.to_string(), i.parse().expect("slot"))
        })
        .collect()
}

async fn lu_file(c: &Cluster, cl: &Client, lu: &str) -> std::path::PathBuf {
    let v = cl.lu_show(lu).await.unwrap();
    c.repository.join(&v.record.path)
}

/// Slots written so far by boot `boot` (read in the guest).
async fn written_by(cl: &Client, name: &str, boot: &str) -> usize {
    let script = format!(
        "dd if=/dev/vda bs=512 count=2048 2>/dev/null | tr '\\000' '\\n' | grep -c '^{boot} '"
    );
    let (_, out) = exec(cl, name, &script).await;
    out.trim().parse().unwrap_or(0)
}

async fn wait_written(cl: &Client, name: &str, boot: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while written_by(cl, name, boot).await < n {
        assert!(Instant::now() < deadline, "{name}: writer {boot} stalled");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn log_of(c: &Cluster, host: &str) -> String {
    let dir = c.dir.join(host);
    ["bulkheadd.log", "bulkheadd.restarts.log"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default())
        .collect()
}

/// `etcdctl endpoint status` of every member, in `c.etcd`'s order.
fn etcd_status(c: &Cluster) -> Vec<serde_json::Value> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &c.etcd.join(","),
            "endpoint",
            "status",
            "-w",
            "json",
        ])
        .output()
        .expect("etcdctl");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    v.as_array().unwrap().clone()
}

/// The index of etcd's leader in `c.etcd`.
fn etcd_leader(c: &Cluster) -> usize {
    etcd_status(c)
        .iter()
        .position(|s| s["Status"]["header"]["member_id"] == s["Status"]["leader"])
        .expect("a leader")
}

/// Hands etcd's leadership to member `to` (`etcdctl move-leader`).
fn move_etcd_leader(c: &Cluster, to: usize) {
    let status = etcd_status(c);
    let id = status[to]["Status"]["header"]["member_id"]
        .as_u64()
        .expect("a member id");
    let ok = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &c.etcd[etcd_leader(c)]])
        .args(["move-leader", &format!("{id:x}")])
        .status()
        .expect("etcdctl")
        .success();
    assert!(ok, "etcdctl move-leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_loss_and_fencing_on_three_hosts() {
    let (_guard, c) = cluster::up_for_test("ha", 3, LEASE_MS);
    let c = &c;
    // HA_ONLY=kill|cut|etcd|freeze|pending runs one phase (when working on it).
    let only = std::env::var("HA_ONLY").unwrap_or_default();
    let on = |p: &str| only.is_empty() || only == p;
    if on("kill") {
        killed_host(c).await;
    }
    if on("cut") {
        cut_host(c).await;
    }
    if on("etcd") {
        etcd_leader_killed(c).await;
        etcd_leader_killed_mid_remote_restart(c).await;
    }
    if on("freeze") {
        etcd_member_frozen(c).await;
    }
    if on("pending") {
        orchestrator_stopped_after_claim(c).await;
    }
}

/// Phase 6: the failover stops right after its claim (failpoint
/// `ha-after-claim` on b and c, as if the orchestrator died there): the
/// partition is claimed but not running; a next orchestrator round
/// restarts it on its new host.
async fn orchestrator_stopped_after_claim(c: &Cluster) {
    for h in ["b", "c"] {
        cluster::restart_host(c, h, &[("BULKHEAD_FAILPOINT", "ha-after-claim")]).unwrap();
    }
    let (a, b) = (client(c, "a"), client(c, "b"));
    for h in ["a", "b", "c"] {
        wait_host(&b, h, HostState::Up).await;
    }
    let a_id = host_id(&b, "a").await;
    a.create(&spec("hap", HaPolicy::Reboot, None))
        .await
        .unwrap();
    a.start("hap", &StartOptions { wait: true }).await.unwrap();
    cluster::kill_host_all(c, "a").unwrap();
    let hap = running_elsewhere(&b, "hap", &a_id).await;
    assert!(!hap.ha_pending, "still marked pending: {hap:?}");
    let ev = events(&b, "hap").await;
    for step in ["claimed by", "running on"] {
        assert!(ev.iter().any(|e| e.contains(step)), "{step}: {ev:?}");
    }
    assert!(
        ["b", "c"]
            .iter()
            .any(|h| log_of(c, h).contains("failpoint ha-after-claim")),
        "no failover stopped after its claim"
    );
    b.destroy("hap", true).await.unwrap();
    for h in ["b", "c", "a"] {
        cluster::restart_host(c, h, &[]).unwrap();
    }
    for h in ["a", "b", "c"] {
        wait_host(&b, h, HostState::Up).await;
    }
}

/// Phase 5: one etcd member frozen (SIGSTOP) for three leases. Its
/// connections stay open and swallow what is sent to them, so a renewal
/// sent there waits for the store's whole timeout (5 s), past the
/// self-fence deadline (5/6 of the lease): a renewal must be abandoned for
/// another well before. No host fences itself; every host stays up.
async fn etcd_member_frozen(c: &Cluster) {
    let b = client(c, "b");
    let fences = |c: &Cluster| -> usize {
        ["a", "b", "c"]
            .iter()
            .map(|h| {
                log_of(c, h)
                    .matches("self-fenced: the cluster lease")
                    .count()
            })
            .sum()
    };
    let before = fences(c);
    // The hosts up now (phase 3 leaves c down) must all be up afterwards.
    let up: Vec<String> = b
        .cluster_hosts()
        .await
        .unwrap()
        .into_iter()
        .filter(|h| h.state == HostState::Up)
        .map(|h| h.name)
        .collect();
    // The first member: renewals start there, so they must move off it.
    // A follower: a frozen leader adds an election, which is the kill
    // phases' matter.
    let member = 0;
    if etcd_leader(c) == member {
        move_etcd_leader(c, 1);
    }
    cluster::freeze_etcd_member(c, member).unwrap();
    // The store stays in use meanwhile (each daemon's own loops use it
    // too); its answers may be slow and are not what is checked.
    let window = Instant::now() + 3 * Duration::from_millis(LEASE_MS);
    while Instant::now() < window {
        let _ = tokio::time::timeout(Duration::from_secs(1), b.list()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster::thaw_etcd_member(c, member).unwrap();
    let after = fences(c);
    assert_eq!(
        after, before,
        "a host fenced itself while one etcd member was frozen"
    );
    for h in &up {
        wait_host(&b, h, HostState::Up).await;
    }
}

/// Phase 1: kill -9 of a and its QEMUs.
async fn killed_host(c: &Cluster) {
    let (a, b) = (client(c, "a"), client(c, "b"));
    let a_id = host_id(&b, "a").await;
    lu(&a, "har").await;
    a.create(&spec("har", HaPolicy::Reboot, Some("har")))
        .await
        .unwrap();
    a.create(&spec("has", HaPolicy::Resume, None))
        .await
        .unwrap();
    a.create(&spec("han", HaPolicy::None, None)).await.unwrap();
    let wait = StartOptions { wait: true };
    let (r1, r2, r3) = tokio::join!(
        a.start("har", &wait),
        a.start("has", &wait),
        a.start("han", &wait)
    );
    for r in [r1, r2, r3] {
        r.unwrap();
    }
    // has keeps running with a checkpoint: a secret written before it must
    // come back on the new host, a file written after it must not.
    let secret = format!("ha-{}", std::process::id());
    let (code, out) = exec(&a, "has", &format!("echo {secret} > /tmp/secret")).await;
    assert_eq!(code, 0, "{out}");
    let rec = a.checkpoint("has").await.unwrap();
    assert_eq!(rec.state, PartitionState::Running, "{rec:?}");
    assert!(rec.hibernation.is_some(), "no checkpoint data: {rec:?}");
    let (code, out) = exec(&a, "has", "echo late > /tmp/after").await;
    assert_eq!(code, 0, "{out}");

    cluster::kill_host_all(c, "a").unwrap();
    wait_host(&b, "a", HostState::Lost).await;

    let har = running_elsewhere(&b, "har", &a_id).await;
    assert!(har.fence.is_some(), "claimed without a token: {har:?}");
    let ev = events(&b, "har").await;
    for step in ["host a lost", "claimed by", "running on"] {
        assert!(ev.iter().any(|e| e.contains(step)), "{step}: {ev:?}");
    }
    // The LU is locked by the new host alone.
    let locks = b.lu_show("har").await.unwrap().locks;
    assert!(locks.iter().all(|l| l.host == har.host), "{locks:?}");

    let has = running_elsewhere(&b, "has", &a_id).await;
    let (code, out) = exec(&b, "has", "cat /tmp/secret").await;
    assert_eq!((code, out.trim()), (0, secret.as_str()), "memory lost");
    let (code, _) = exec(&b, "has", "test -e /tmp/after").await;
    assert_ne!(
        code, 0,
        "a write after the checkpoint survived: not resumed from it"
    );
    assert!(events(&b, "has")
        .await
        .iter()
        .any(|e| e.contains("resumed")));
    assert!(has.fence.is_some());

    // ha=none: still a's, still recorded as it was, never claimed.
    let han = b.show("han").await.unwrap().record;
    assert_eq!(han.host, a_id);
    assert!(han.fence.is_none());
    assert!(!events(&b, "han")
        .await
        .iter()
        .any(|e| e.contains("claimed")));

    // a comes back: it restarts none of what moved; room is made for the next phases.
    cluster::restart_host(c, "a", &[]).unwrap();
    wait_host(&b, "a", HostState::Up).await;
    for n in ["har", "has"] {
        assert_ne!(b.show(n).await.unwrap().record.host, a_id, "{n}");
    }
    for n in ["har", "has", "han"] {
        b.destroy(n, true).await.unwrap();
    }
}

/// Phase 2: a cut off; it self-fences, the partition moves, never two copies.
async fn cut_host(c: &Cluster) {
    let (a, b) = (client(c, "a"), client(c, "b"));
    let a_id = host_id(&b, "a").await;
    lu(&a, "hac").await;
    a.create(&spec("hac", HaPolicy::Reboot, Some("hac")))
        .await
        .unwrap();
    // hrr: a remote restart whose source is a, ended on its target while a
    // is cut off; a collects it when it comes back.
    a.create(&spec("hrr", HaPolicy::None, None)).await.unwrap();
    let wait = StartOptions { wait: true };
    let (r1, r2) = tokio::join!(a.start("hac", &wait), a.start("hrr", &wait));
    r1.unwrap();
    r2.unwrap();
    a.hibernate("hrr").await.unwrap();
    let op = b
        .remote_restart_start(&StartRemoteRestart {
            partition: "hrr".into(),
            target: "b".into(),
            token: Some("op-away".into()),
            detail: 0,
            capabilities: 0,
            timeout_secs: None,
            promote_mirror: false,
        })
        .await
        .unwrap();
    assert_eq!(op.state.as_str(), "restored");
    let (code, old_boot) = exec(&a, "hac", WRITER).await;
    assert_eq!(code, 0, "{old_boot}");
    let old_boot = old_boot.trim().to_string();
    wait_written(&a, "hac", &old_boot, 3).await;

    let sampler = Sampler::start(c, "hac");
    cluster::cut(c, "a").unwrap();
    // Until a's lease runs out its record says a: b cannot reach a, and
    // shows the record instead of failing (the forward used to wait out
    // the kernel's SYN retries, over a minute, then fail).
    let seen = b.show("hac").await.expect("show while its host is cut off");
    assert!(
        seen.record.host == a_id || seen.record.fence.is_some(),
        "{:?}",
        seen.record
    );
    let hac = running_elsewhere(&b, "hac", &a_id).await;
    let op = b
        .remote_restart_stop("op-away", StopState::Succeeded)
        .await
        .unwrap();
    assert!(!op.collected);
    let (code, new_boot) = exec(&b, "hac", WRITER).await;
    assert_eq!(code, 0, "{new_boot}");
    let new_boot = new_boot.trim().to_string();
    assert_ne!(new_boot, old_boot, "not a new boot");
    wait_written(&b, "hac", &new_boot, 3).await;
    assert!(
        log_of(c, "a").contains("self-fenced"),
        "a did not fence itself"
    );

    cluster::heal(c, "a").unwrap();
    wait_host(&b, "a", HostState::Up).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log_of(c, "a").contains("rejoin: cleaned up") {
        assert!(
            Instant::now() < deadline,
            "a did not clean up after the heal"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The remote restart that ended while a was away: collected by a.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !b.remote_restart_show("op-away").await.unwrap().collected {
        assert!(
            Instant::now() < deadline,
            "a did not collect op-away after the heal"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        b.show("hrr").await.unwrap().record.state,
        PartitionState::Running
    );
    b.destroy("hrr", true).await.unwrap();
    // More writes of the new copy after the heal: the old one stays dead.
    let now = written_by(&b, "hac", &new_boot).await;
    wait_written(&b, "hac", &new_boot, now + 3).await;
    let (most, hosts) = sampler.finish();
    assert_eq!(
        most, 1,
        "two copies ran at once (hosts in order: {hosts:?})"
    );
    let new_name = b
        .cluster_hosts()
        .await
        .unwrap()
        .into_iter()
        .find(|h| h.id == hac.host)
        .unwrap()
        .name;
    assert_eq!(hosts, ["a".to_string(), new_name], "runs in order");
    // a restarted nothing and holds nothing of it.
    assert_eq!(b.show("hac").await.unwrap().record.host, hac.host);
    let locks = b.lu_show("hac").await.unwrap().locks;
    assert!(locks.iter().all(|l| l.host == hac.host), "{locks:?}");
    assert!(a
        .list()
        .await
        .unwrap()
        .iter()
        .all(|r| r.host != a_id || r.name != "hac"));

    // The LU: the old copy's records, then only the new one's (read once
    // the new copy is stopped, its QEMU closed).
    b.stop(
        "hac",
        &bulkhead_manager::api::StopOptions {
            force: false,
            timeout_secs: None,
        },
    )
    .await
    .unwrap();
    let file = lu_file(c, &b, "hac").await;
    let recs = lu_records(&file);
    let first_new = recs
        .iter()
        .position(|(bt, _)| *bt == new_boot)
        .unwrap_or_else(|| {
            let info = Command::new("qemu-img")
                .arg("info")
                .arg(&file)
                .output()
                .unwrap();
            panic!(
                "no record of the new copy {new_boot} in {}: {recs:?}\n{}",
                file.display(),
                String::from_utf8_lossy(&info.stdout)
            )
        });
    assert!(first_new > 0, "old copy wrote nothing: {recs:?}");
    assert!(
        recs[..first_new].iter().all(|(bt, _)| *bt == old_boot),
        "{recs:?}"
    );
    assert!(
        recs[first_new..].iter().all(|(bt, _)| *bt == new_boot),
        "the old copy wrote after the new one started: {recs:?}"
    );
    for (i, (_, slot)) in recs.iter().enumerate() {
        assert_eq!(*slot, i, "slot order: {recs:?}");
    }
    b.destroy("hac", true).await.unwrap();
}

/// Phase 3: etcd's leader killed while c's partition fails over.
async fn etcd_leader_killed(c: &Cluster) {
    let (b, cc) = (client(c, "b"), client(c, "c"));
    let c_id = host_id(&b, "c").await;
    cc.create(&spec("hae", HaPolicy::Reboot, None))
        .await
        .unwrap();
    cc.start("hae", &StartOptions { wait: true }).await.unwrap();
    let sampler = Sampler::start(c, "hae");
    cluster::kill_host_all(c, "c").unwrap();
    // The moment the orchestrator acts on the loss: etcd loses its leader.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !events(&b, "hae")
        .await
        .iter()
        .any(|e| e.contains("host c lost"))
    {
        assert!(Instant::now() < deadline, "host loss not acted on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leader = etcd_leader(c);
    cluster::kill_etcd_member(c, leader).unwrap();
    // It completes, or ends cleanly (restartable on an up host) and a
    // retry succeeds.
    let deadline = Instant::now() + FAILOVER_DEADLINE;
    let rec = loop {
        let r = match b.show("hae").await {
            Ok(v) => v.record,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        let settled = r.host != c_id && !r.state.is_active();
        let failed = events(&b, "hae")
            .await
            .iter()
            .any(|e| e.contains("restart on") && e.contains("failed"));
        if settled && failed {
            b.start("hae", &StartOptions { wait: true }).await.unwrap();
        }
        if r.state == PartitionState::Running && r.host != c_id {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "hae: {:?} on {}",
            r.state,
            r.host
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let (code, _) = exec(&b, "hae", "true").await;
    assert_eq!(code, 0);
    cluster::restart_etcd_member(c, leader).unwrap();
    let (most, hosts) = sampler.finish();
    assert_eq!(most, 1, "two copies at once: {hosts:?}");
    assert!(rec.fence.is_some());
}

/// Phase 4: etcd's leader killed while a remote restart (b → a) restores:
/// the operation ends restored or failed, never held; a failed one leaves
/// the partition restartable and a retry under a new token succeeds; the
/// source collects it.
async fn etcd_leader_killed_mid_remote_restart(c: &Cluster) {
    let (a, b) = (client(c, "a"), client(c, "b"));
    let a_id = host_id(&b, "a").await;
    b.create(&spec("hrl", HaPolicy::None, None)).await.unwrap();
    b.start("hrl", &StartOptions { wait: true }).await.unwrap();
    let secret = format!("rl-{}", std::process::id());
    let (code, out) = exec(&b, "hrl", &format!("echo {secret} > /tmp/secret")).await;
    assert_eq!(code, 0, "{out}");
    b.hibernate("hrl").await.unwrap();

    let req = |token: &str| StartRemoteRestart {
        partition: "hrl".into(),
        target: "a".into(),
        token: Some(token.into()),
        detail: 0,
        capabilities: 0,
        timeout_secs: None,
        promote_mirror: false,
    };
    let starting = {
        let a = a.clone();
        let r = req("op-leader");
        tokio::spawn(async move { a.remote_restart_start(&r).await })
    };
    // Once the operation is recorded (its locks taken), etcd loses its leader.
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.remote_restart_show("op-leader").await.is_err() {
        assert!(Instant::now() < deadline, "op-leader never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leader = etcd_leader(c);
    cluster::kill_etcd_member(c, leader).unwrap();
    let first = starting.await.unwrap();
    // Settled either way, never left holding.
    let deadline = Instant::now() + FAILOVER_DEADLINE;
    let op = loop {
        if let Ok(op) = b.remote_restart_show("op-leader").await {
            if op.state.as_str() == "restored" || op.state.as_str() == "failed" {
                break op;
            }
        }
        assert!(Instant::now() < deadline, "op-leader never settled");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let token = if op.state.as_str() == "restored" {
        assert!(first.is_ok(), "restored, yet the start failed: {first:?}");
        "op-leader"
    } else {
        // Failed cleanly: hibernated on b with its data, restartable.
        let rec = b.show("hrl").await.unwrap().record;
        assert_eq!(
            rec.state,
            PartitionState::Hibernated,
            "after a failed restart: {rec:?}"
        );
        b.remote_restart_collect("op-leader").await.unwrap();
        let op = a.remote_restart_start(&req("op-leader-2")).await.unwrap();
        assert_eq!(op.state.as_str(), "restored");
        "op-leader-2"
    };
    cluster::restart_etcd_member(c, leader).unwrap();
    a.remote_restart_stop(token, StopState::Succeeded)
        .await
        .unwrap();
    assert!(b.remote_restart_collect(token).await.unwrap().collected);
    let rec = a.show("hrl").await.unwrap().record;
    assert_eq!(
        (rec.state, rec.host.as_str()),
        (PartitionState::Running, a_id.as_str())
    );
    let (code, out) = exec(&a, "hrl", "cat /tmp/secret").await;
    assert_eq!((code, out.trim()), (0, secret.as_str()), "memory lost");
    a.destroy("hrl", true).await.unwrap();
}
