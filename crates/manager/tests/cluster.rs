//! Three bulkheadd hosts, each in its own network namespace, on a real
//! 3-member etcd (`bulkhead_testbed::cluster`, as `scripts/cluster`):
//! membership and `cluster hosts` from every host, a host that stops
//! renewing shown lost and up again, commands carried out by the owning host
//! wherever they arrive, and partitions on different hosts on one VLAN over
//! VXLAN with the anti-spoofing filter holding across hosts; a partition
//! hibernated on one host and resumed on another.

mod cluster_common;

use bulkhead_manager::api::{
    CreatePartition, ExecRequest, ResumeOptions, StartOptions, StopOptions,
};
use bulkhead_manager::cluster::ClusterHost;
use bulkhead_store::{HostState, PartitionRecord, PartitionState};
use bulkhead_testbed::cluster::{self, Cluster, Guard};
use cluster_common::{client, exec};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

/// The self-fence (5/6 of the lease) must outlast what one etcd member's
/// death costs a host's renewals on a loaded 2-core host: at 3000 and at
/// 5000 ms, full `make test` runs fenced a healthy host in the member-down
/// phase (its renewals stalled for over 4 s; alone the test passes).
const LEASE_MS: u64 = 10000;

/// A cluster of three hosts, taken down when the guard drops.
fn start_cluster(tag: &str) -> (Guard, Cluster) {
    cluster::up_for_test(tag, 3, LEASE_MS)
}

fn daemon_pid(c: &Cluster, host: &str) -> i32 {
    std::fs::read_to_string(c.dir.join(format!("pids/bulkheadd-{host}")))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid")
}

fn create(name: &str, host: Option<&str>) -> CreatePartition {
    CreatePartition {
        net: true,
        host: host.map(str::to_string),
        ..CreatePartition::new(name, 1, 128, 20)
    }
}

/// (name, state) of every host as `host` sees them.
async fn states(c: &Cluster, host: &str) -> Vec<(String, HostState)> {
    client(c, host)
        .cluster_hosts()
        .await
        .unwrap()
        .into_iter()
        .map(|h| (h.name, h.state))
        .collect()
}

async fn wait_state(c: &Cluster, seen_from: &str, host: &str, want: HostState, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = states(c, seen_from).await;
        if now.iter().any(|(n, s)| n == host && *s == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{host} not {want:?} from {seen_from} within {within:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A partition's VLAN address without its prefix length.
fn vlan_ip(r: &PartitionRecord) -> String {
    let ip = &r.net.as_ref().expect("a VLAN address").ip;
    ip.split('/').next().unwrap_or(ip).to_string()
}

fn netns_inode(path: &str) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .ino()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_one_cluster() {
    let (_guard, c) = start_cluster("t");
    let c = &c;
    let (a, b, cc) = (client(c, "a"), client(c, "b"), client(c, "c"));

    // One view from everywhere: the same three members, up, with the
    // capacity they registered.
    let views: Vec<Vec<ClusterHost>> = vec![
        a.cluster_hosts().await.unwrap(),
        b.cluster_hosts().await.unwrap(),
        cc.cluster_hosts().await.unwrap(),
    ];
    let names: Vec<_> = views[0].iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert!(views[0]
        .iter()
        .all(|h| h.state == HostState::Up && h.capacity.cpus > 0));
    let strip = |v: &[ClusterHost]| -> Vec<(String, String, HostState)> {
        v.iter()
            .map(|h| (h.name.clone(), h.id.clone(), h.state))
            .collect()
    };
    assert_eq!(strip(&views[0]), strip(&views[1]));
    assert_eq!(strip(&views[0]), strip(&views[2]));
    let b_id = views[0][1].id.clone();

    // Created from a for b: the record is b's, counted in b's allocation.
    let pb = a.create(&create("pb", Some("b"))).await.unwrap();
    assert_eq!(pb.host, b_id);
    let hosts = cc.cluster_hosts().await.unwrap();
    assert_eq!(
        (
            hosts[1].partitions,
            hosts[1].allocated.vcpus,
            hosts[1].allocated.memory_mib
        ),
        (1, 1, 128)
    );
    assert_eq!(hosts[0].partitions + hosts[2].partitions, 0);
    // The same through the CLI: `partition create --host`, `cluster hosts`.
    let cli = |args: &[&str], host: usize| {
        let out = std::process::Command::new(bulkhead_testbed::bulkhead_bin())
            .args(args)
            .arg("--socket")
            .arg(&c.hosts[host].socket)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    cli(
        &[
            "partition",
            "create",
            "pc",
            "--memory",
            "128M",
            "--cpu",
            "10%",
            "--host",
            "c",
        ],
        0,
    );
    assert_eq!(b.show("pc").await.unwrap().record.host, views[0][2].id);
    let table = cli(&["cluster", "hosts"], 1);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert_eq!(
        (rows[2][0], rows[2][1], rows[2][6]),
        ("c", "up", "1"),
        "{table}"
    );
    // `partition list` from a says which host each partition is on, by name.
    let listed = cli(&["partition", "list"], 0);
    let host_of = |name: &str| -> String {
        listed
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name))
            .unwrap_or_else(|| panic!("{name} not listed: {listed}"))[1]
            .to_string()
    };
    assert_eq!(
        (host_of("pb"), host_of("pc")),
        ("b".into(), "c".into()),
        "{listed}"
    );
    b.destroy("pc", false).await.unwrap();
    let e = a.create(&create("px", Some("nowhere"))).await.unwrap_err();
    assert!(e.to_string().contains("no host named"), "{e}");

    // Started from c: carried out by b, whose namespace its QEMU runs in.
    let started = cc.start("pb", &StartOptions { wait: true }).await.unwrap();
    assert_eq!(started.state, PartitionState::Running);
    let pid = started.pid.expect("a pid");
    let b_ns = format!("/run/netns/{}", c.hosts[1].netns);
    assert_eq!(
        netns_inode(&format!("/proc/{pid}/ns/net")),
        netns_inode(&b_ns),
        "QEMU of pb is not in b's namespace"
    );
    // `show` from c is b's: the TAP and console log it names are b's.
    let shown = cc.show("pb").await.unwrap();
    assert!(
        shown
            .console_log
            .as_deref()
            .is_some_and(|l| l.starts_with(c.hosts[1].data_dir.to_str().unwrap())),
        "{:?}",
        shown.console_log
    );
    let (code, out) = exec(&cc, "pb", "echo from-$(hostname)").await;
    assert_eq!((code, out.trim()), (0, "from-pb"));

    // A partition of a (created where the call arrived) reaches pb over the VLAN.
    let pa = a.create(&create("pa", None)).await.unwrap();
    assert_eq!(pa.host, views[0][0].id);
    a.start("pa", &StartOptions { wait: true }).await.unwrap();
    let pb_ip = vlan_ip(&pb);
    let (code, out) = exec(&b, "pa", &format!("ping -c 2 -W 5 {pb_ip}")).await;
    assert_eq!(code, 0, "pa cannot reach pb across hosts: {out}");
    // Full-size frames cross too (the underlay carries the VXLAN overhead).
    let (code, out) = exec(&a, "pa", &format!("ping -c 1 -W 5 -s 1472 {pb_ip}")).await;
    assert_eq!(code, 0, "1500-byte frames do not cross: {out}");
    // The gateway address stays each host's own: pa's ARP for it is
    // answered by a's bridge and never reaches b (which would otherwise
    // answer too, holding the same address, and learn pa from the request).
    let (code, out) = exec(&a, "pa", "ping -c 1 -W 5 10.77.0.1").await;
    assert_eq!(code, 0, "pa cannot reach its gateway: {out}");
    let pa_ip = vlan_ip(&pa);
    let b_neigh = std::process::Command::new("ip")
        .args(["-n", &c.hosts[1].netns, "neigh", "show", &pa_ip])
        .output()
        .unwrap();
    let b_neigh = String::from_utf8_lossy(&b_neigh.stdout);
    assert!(
        b_neigh.trim().is_empty(),
        "b's host saw pa's ARP for the gateway: {b_neigh}"
    );
    // A source address pa does not own is dropped at a's TAP: no answer.
    let (code, out) = exec(
        &a,
        "pa",
        &format!("ip addr add 10.77.0.200/24 dev eth0 && ping -c 2 -W 3 -I 10.77.0.200 {pb_ip}"),
    )
    .await;
    assert_ne!(code, 0, "a spoofed source reached pb across hosts: {out}");
    assert!(out.contains("0 packets received"), "{out}");

    // Hibernated on a, resumed on b (asked on c): a counter still counts as
    // the same process, a value held only in guest memory is intact, the
    // address is the same, and it reaches a partition on c across hosts.
    a.create(&create("pcc", Some("c"))).await.unwrap();
    let pcc = cc.start("pcc", &StartOptions { wait: true }).await.unwrap();
    let pcc_ip = vlan_ip(&pcc);
    let secret = format!("moved-{}", std::process::id());
    let (code, out) = exec(
        &a,
        "pa",
        &format!(
            "echo {secret} > /tmp/secret; (i=0; while :; do i=$((i+1)); echo $i > /tmp/count; \
             sleep 0.1; done) >/dev/null 2>&1 </dev/null & echo $! > /tmp/counter.pid"
        ),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let slept = a.hibernate("pa").await.unwrap();
    assert_eq!(slept.state, PartitionState::Hibernated);
    let woke = cc
        .resume_with(
            "pa",
            &ResumeOptions {
                host: Some("b".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (woke.state, woke.host.as_str()),
        (PartitionState::Running, b_id.as_str())
    );
    assert_eq!(woke.net.as_ref().unwrap().ip, pa.net.as_ref().unwrap().ip);
    let pid = woke.pid.expect("a pid");
    assert_eq!(
        netns_inode(&format!("/proc/{pid}/ns/net")),
        netns_inode(&b_ns),
        "pa did not resume in b's namespace"
    );
    let (code, out) = exec(
        &a,
        "pa",
        "cat /tmp/secret; kill -0 $(cat /tmp/counter.pid) && echo same",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&secret) && out.contains("same"), "{out}");
    let first: u64 = exec(&a, "pa", "cat /tmp/count")
        .await
        .1
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now: u64 = exec(&a, "pa", "cat /tmp/count")
            .await
            .1
            .trim()
            .parse()
            .unwrap();
        if now > first {
            break;
        }
        assert!(Instant::now() < deadline, "the counter stopped at {now}");
    }
    let (code, out) = exec(&cc, "pa", &format!("ping -c 2 -W 5 {pcc_ip}")).await;
    assert_eq!(code, 0, "pa on b cannot reach pcc on c: {out}");
    cc.destroy("pcc", true).await.unwrap();

    racing_resumes_run_once(c, &secret).await;
    etcd_member_down_keeps_working(c).await;
    killed_mid_hibernate_loses_nothing(c).await;

    // Stopped from a: b's answer, unchanged.
    let stopped = a
        .stop(
            "pb",
            &StopOptions {
                force: true,
                timeout_secs: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(stopped.state, PartitionState::Stopped);
    // An error answered by b comes back as b gave it.
    let e = cc
        .exec(
            "pb",
            &ExecRequest {
                argv: vec!["true".into()],
                timeout_secs: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("conflict"), "{e}");
    assert!(e.to_string().contains("not running"), "{e}");
    // The console of a stopped partition: b's refusal, as b gave it.
    let Err(e) = a.console("pb").await else {
        panic!("the console of a stopped partition attached")
    };
    assert_eq!(e.code(), Some("conflict"), "{e}");
    console_from_another_host(c).await;

    // b stops renewing: lost within the lease and a margin, from every host;
    // its partitions' commands answer 503 naming it; up again once resumed.
    let pid = daemon_pid(c, "b");
    // SAFETY: a signal to the daemon this test's cluster started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let margin = Duration::from_millis(LEASE_MS) + Duration::from_secs(10);
    wait_state(c, "a", "b", HostState::Lost, margin).await;
    wait_state(c, "c", "b", HostState::Lost, Duration::from_secs(2)).await;
    assert!(states(c, "a")
        .await
        .iter()
        .filter(|(n, _)| n != "b")
        .all(|(_, s)| *s == HostState::Up));
    let e = a.start("pb", &StartOptions::default()).await.unwrap_err();
    assert_eq!(e.code(), Some("unavailable"), "{e}");
    assert!(e.to_string().contains("host b"), "{e}");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    wait_state(c, "a", "b", HostState::Up, margin).await;

    // c cut off from the others and from etcd (`scripts/cluster cut`): lost,
    // as seen from a; healed: up again, its daemon the same process. Cut, it
    // fenced itself (docs/cluster.md, "Fencing"): it serves again once it
    // has rejoined (503 until then).
    let c_pid = daemon_pid(c, "c");
    cluster::cut(c, "c").unwrap();
    wait_state(c, "a", "c", HostState::Lost, margin).await;
    cluster::heal(c, "c").unwrap();
    wait_state(c, "a", "c", HostState::Up, margin).await;
    assert_eq!(daemon_pid(c, "c"), c_pid);
    for p in ["pb", "pa"] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match cc.destroy(p, true).await {
                Ok(_) => break,
                Err(e) if e.code() == Some("unavailable") => {
                    assert!(Instant::now() < deadline, "destroy {p}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("destroy {p}: {e}"),
            }
        }
    }
    assert!(a.list().await.unwrap().is_empty());
}

/// The console of `pa`, attached through b (pa runs on a or c): what the
/// guest writes to its serial line comes back through both hosts, and the
/// owner's one-attachment rule holds for an attach forwarded from c.
async fn console_from_another_host(c: &Cluster) {
    use tokio::io::AsyncReadExt;
    let b = client(c, "b");
    let mut con = b.console("pa").await.expect("a forwarded console attach");
    let marker = format!("console-via-b-{}", std::process::id());
    let (code, out) = exec(&b, "pa", &format!("echo {marker} > /dev/ttyS0")).await;
    assert_eq!(code, 0, "{out}");
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 1024];
        loop {
            let n = con.read(&mut buf).await.unwrap();
            assert!(n > 0, "console closed");
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains(&marker) {
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
    let Err(busy) = client(c, "c").console("pa").await else {
        panic!("a second attachment accepted")
    };
    assert_eq!(busy.code(), Some("conflict"), "{busy}");
    drop(con);
}

/// `pa` hibernated again, then resumed on a and on c at once (asked on
/// both): exactly one runs it, with its memory; the other is refused.
async fn racing_resumes_run_once(c: &Cluster, secret: &str) {
    let (a, cc) = (client(c, "a"), client(c, "c"));
    a.hibernate("pa").await.unwrap();
    let on = |h: &str| ResumeOptions {
        host: Some(h.into()),
        ..Default::default()
    };
    let (on_a, on_c) = (on("a"), on("c"));
    let (ra, rc) = tokio::join!(a.resume_with("pa", &on_a), cc.resume_with("pa", &on_c));
    let (won, refusal) = match (ra, rc) {
        (Ok(r), Err(e)) | (Err(e), Ok(r)) => (r, e),
        (ra, rc) => panic!("exactly one resume must run: {ra:?} / {rc:?}"),
    };
    assert_eq!(won.state, PartitionState::Running);
    assert_eq!(refusal.code(), Some("conflict"), "{refusal}");
    let msg = refusal.to_string();
    assert!(
        msg.contains("being resumed") || msg.contains("not hibernated"),
        "a clear refusal: {msg}"
    );
    // One QEMU of pa in the whole cluster, in the winner's namespace.
    let winner = c
        .hosts
        .iter()
        .find(|h| {
            netns_inode(&format!("/run/netns/{}", h.netns))
                == netns_inode(&format!("/proc/{}/ns/net", won.pid.expect("a pid")))
        })
        .expect("the winner's QEMU runs in one of the hosts");
    assert!(
        ["a", "c"].contains(&winner.name.as_str()),
        "{}",
        winner.name
    );
    let (code, out) = exec(&a, "pa", "cat /tmp/secret").await;
    assert_eq!((code, out.trim()), (0, secret));
}

/// One etcd member killed: every host keeps its lease and serves creates,
/// starts, lists and execs; the member comes back and catches up.
async fn etcd_member_down_keeps_working(c: &Cluster) {
    let (a, b, cc) = (client(c, "a"), client(c, "b"), client(c, "c"));
    cluster::kill_etcd_member(c, 2).unwrap();
    b.create(&create("pd", Some("c"))).await.unwrap();
    let pd = a.start("pd", &StartOptions { wait: true }).await.unwrap();
    assert_eq!(pd.state, PartitionState::Running);
    let (code, out) = exec(&b, "pd", "echo up").await;
    assert_eq!((code, out.trim()), (0, "up"), "{out}");
    for cl in [&a, &b, &cc] {
        let names: Vec<String> = cl
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert!(names.contains(&"pd".to_string()), "{names:?}");
    }
    // The boot took several leases' time: every lease was renewed meanwhile.
    assert!(
        states(c, "b")
            .await
            .iter()
            .all(|(_, s)| *s == HostState::Up),
        "{:?}",
        states(c, "b").await
    );
    cluster::restart_etcd_member(c, 2).unwrap();
}

/// c's bulkheadd killed (-9) at each failpoint of a hibernate of its
/// partition pd asked on a: after c's restart, pd runs on in the same QEMU
/// (image complete, not recorded: discarded), then is hibernated with a
/// whole image (recorded, QEMU not yet stopped) and resumes on b intact.
async fn killed_mid_hibernate_loses_nothing(c: &Cluster) {
    let (a, cc) = (client(c, "a"), client(c, "c"));
    let secret = format!("crash-{}", std::process::id());
    let (code, out) = exec(&a, "pd", &format!("echo {secret} > /tmp/secret")).await;
    assert_eq!(code, 0, "{out}");
    let pid = cc.show("pd").await.unwrap().record.pid.expect("a pid");
    let client_id = cc.show("pd").await.unwrap().record.client().to_string();
    let image = c
        .repository
        .join("clients")
        .join(&client_id)
        .join("hibernation/pd");
    let margin = Duration::from_millis(LEASE_MS) + Duration::from_secs(60);
    let crash_at = |fp: &'static str| async move {
        cluster::restart_host(c, "c", &[("BULKHEAD_FAILPOINT", fp)]).unwrap();
        wait_state(c, "a", "c", HostState::Up, margin).await;
        let e = client(c, "a").hibernate("pd").await;
        assert!(e.is_err(), "c answered a hibernate it should die in: {e:?}");
        cluster::restart_host(c, "c", &[]).unwrap();
        wait_state(c, "a", "c", HostState::Up, margin).await;
    };

    crash_at("hibernate-after-save").await;
    let v = a.show("pd").await.unwrap();
    assert_eq!(v.record.state, PartitionState::Running, "{v:?}");
    assert_eq!(v.record.pid, Some(pid), "the same QEMU, re-adopted");
    assert!(!image.exists(), "the unrecorded image is discarded");
    let (code, out) = exec(&a, "pd", "cat /tmp/secret").await;
    assert_eq!((code, out.trim()), (0, secret.as_str()));

    crash_at("hibernate-after-record").await;
    let v = a.show("pd").await.unwrap();
    assert_eq!(v.record.state, PartitionState::Hibernated, "{v:?}");
    let h = v.record.hibernation.as_ref().expect("a hibernation record");
    let len = std::fs::metadata(image.join("state.bin")).unwrap().len();
    assert_eq!(h.bytes, len, "the recorded image is whole");
    let woke = a
        .resume_with(
            "pd",
            &ResumeOptions {
                host: Some("b".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(woke.state, PartitionState::Running);
    let (code, out) = exec(&cc, "pd", "cat /tmp/secret").await;
    assert_eq!((code, out.trim()), (0, secret.as_str()));
    a.destroy("pd", true).await.unwrap();
}

/// A second daemon that takes a member's name under another id is refused
/// at start, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_host_name_is_refused_at_start() {
    let (_guard, c) = start_cluster("n");
    let c = &c;
    let h = &c.hosts[2];
    let dir = c.dir.join("impostor");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let cfg = format!(
        "data_dir = {:?}\nsocket = {:?}\nimage_dir = {:?}\n\
         [network]\nbridge = \"imp0\"\nsubnet = \"10.78.0.0/24\"\n\
         [cgroup]\ninstance = \"impostor{}\"\n\
         [cluster]\netcd = {:?}\nprefix = \"/bulkhead/{}\"\nname = \"a\"\n",
        dir.join("data"),
        dir.join("api.sock"),
        bulkhead_testbed::image_dir(),
        std::process::id(),
        c.etcd,
        c.name,
    );
    std::fs::write(dir.join("config.toml"), cfg).unwrap();
    let bin = bulkhead_testbed::bulkhead_bin();
    // In c's namespace, so its bridge and filter go when the cluster does.
    let out = tokio::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", h.netns))
        .arg(bin.with_file_name("bulkheadd"))
        .arg("--config")
        .arg(dir.join("config.toml"))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the impostor exits")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("host name \"a\" is already registered"),
        "{err}"
    );
    // The members are as they were.
    let names: Vec<_> = states(c, "a").await.into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["a", "b", "c"]);

    // `scripts/cluster kill c`: every process of c's namespace gone, c lost.
    let pid = daemon_pid(c, "c");
    cluster::kill_host_all(c, "c").unwrap();
    // Gone, or a zombie this test process (its spawner) has not reaped.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let dead = state.is_empty()
        || state
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
    assert!(dead, "c's bulkheadd survived: {state}");
    let left = std::process::Command::new("ip")
        .args(["netns", "pids", &h.netns])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&left.stdout)
    );
    let margin = Duration::from_millis(LEASE_MS) + Duration::from_secs(10);
    wait_state(c, "a", "c", HostState::Lost, margin).await;
}
