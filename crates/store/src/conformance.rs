//! The behaviour every [`Store`] backend must have, written once. A backend's
//! tests call [`run_all`] with a factory of fresh, empty stores:
//!
//! ```ignore
//! bulkhead_store::conformance::run_all(|| async { Arc::new(MyStore::new()) as Arc<dyn Store> }).await;
//! ```
//!
//! Each case panics with what went wrong. Enabled by the `conformance` feature.

use crate::{
    now_ms, Admission, HostRecord, HostState, LockMode, LuLock, LuRecord, NetRecord,
    PartitionRecord, PartitionState, RestartPolicy, Scope, Store, StoreError,
};
use std::future::Future;
use std::sync::Arc;

pub mod grants;
pub mod pools;
pub mod remote_restart;
pub mod routes;

/// Runs every case, each on a fresh store from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    crud(&*make().await).await;
    revisions_and_conflicts(&*make().await).await;
    unique_names_and_addresses(&*make().await).await;
    refused_admission_changes_nothing(&*make().await).await;
    admission_sees_the_others_and_completes_the_record(&*make().await).await;
    concurrent_admissions_never_over_admit(make().await).await;
    concurrent_address_allocation_never_repeats(make().await).await;
    concurrent_compare_and_swap_loses_no_write(make().await).await;
    events(&*make().await).await;
    host_ids(&*make().await).await;
    grants::run_all(&make).await;
    membership(&*make().await).await;
    hibernation_claim(make().await).await;
    lus(&*make().await).await;
    lu_locks(&*make().await).await;
    lu_insert_locked(&*make().await).await;
    lu_write_attach_race_has_one_winner(make().await).await;
    lu_mirror_pair(&*make().await).await;
    routes::run_all(&make).await;
    pools::run_all(&make).await;
    remote_restart::run_all(&make).await;
}

const HOST: &str = "3f2c0a7e-0000-4000-8000-00000000000a";
const OTHER_HOST: &str = "3f2c0a7e-0000-4000-8000-00000000000b";

/// A defined partition owned by [`HOST`], without an address.
pub fn record(name: &str) -> PartitionRecord {
    let now = now_ms();
    PartitionRecord {
        ha: Default::default(),
        fence: None,
        ha_pending: false,
        name: name.to_string(),
        host: HOST.to_string(),
        vcpus: 1,
        memory_mib: 128,
        cpu_percent: 50,
        image: None,
        cmdline: None,
        disks: vec![],
        net: None,
        restart_policy: RestartPolicy::Never,
        hotplug_slots: 0,
        cpu_model: crate::DEFAULT_CPU_MODEL.to_string(),
        state: PartitionState::Defined,
        created_at: now,
        state_since: now,
        started_at: None,
        last_exit: None,
        pid: None,
        restarts: 0,
        hibernate_idle_secs: None,
        hibernation: None,
        checkpoint_every_ms: None,
        devices: Default::default(),
        template: None,
        client_name: String::new(),
        client_id: 0,
        adapter_ids: Default::default(),
        revision: 0,
    }
}

fn with_ip(name: &str, ip: &str) -> PartitionRecord {
    let mut r = record(name);
    r.net = Some(NetRecord {
        ip: ip.to_string(),
        mac: "52:54:00:00:00:01".into(),
    });
    r
}

/// Errors say what happened in words; no backend's driver type leaks into them.
fn neutral(e: &StoreError) {
    let dbg = format!("{e:?}");
    for driver in ["rusqlite", "SqliteFailure", "tonic", "etcd_client"] {
        assert!(!dbg.contains(driver), "backend type in error: {dbg}");
    }
}

async fn names(s: &dyn Store, scope: Scope<'_>) -> Vec<String> {
    s.list(scope)
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.name)
        .collect()
}

pub async fn crud(s: &dyn Store) {
    assert!(s.get("a").await.unwrap().is_none());
    assert!(s.list(Scope::All).await.unwrap().is_empty());
    let a = s.insert(&record("b"), "created").await.unwrap();
    assert_eq!(a.revision, 1);
    s.insert(&record("a"), "created").await.unwrap();
    let got = s.get("b").await.unwrap().expect("inserted");
    assert_eq!(got, a, "get returns the record as inserted");
    assert_eq!(names(s, Scope::All).await, ["a", "b"], "ordered by name");
    let mut up = got.clone();
    up.state = PartitionState::Running;
    up.pid = Some(42);
    let up = s.update(&up, "running").await.unwrap();
    assert_eq!(up.revision, 2);
    let got = s.get("b").await.unwrap().unwrap();
    assert_eq!(
        (got.state, got.pid, got.revision),
        (PartitionState::Running, Some(42), 2)
    );
    s.delete("b", 2).await.unwrap();
    assert!(s.get("b").await.unwrap().is_none());
    assert_eq!(names(s, Scope::All).await, ["a"]);
}

pub async fn revisions_and_conflicts(s: &dyn Store) {
    let r1 = s.insert(&record("p"), "").await.unwrap();
    let r2 = s.update(&r1, "second").await.unwrap();
    assert_eq!(r2.revision, 2);
    // A writer holding revision 1 lost the race: refused, nothing written.
    let mut stale = r1.clone();
    stale.memory_mib = 999;
    let e = s.update(&stale, "stale").await.unwrap_err();
    neutral(&e);
    assert!(
        matches!(
            e,
            StoreError::Conflict {
                expected: 1,
                found: 2,
                ..
            }
        ),
        "{e:?}"
    );
    let now = s.get("p").await.unwrap().unwrap();
    assert_eq!(now, r2);
    assert!(!s
        .events("p", 10)
        .await
        .unwrap()
        .iter()
        .any(|e| e.message == "stale"));
    let e = s.delete("p", 1).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e:?}");
    assert!(
        s.get("p").await.unwrap().is_some(),
        "stale delete removed it"
    );
    let mut ghost = record("ghost");
    ghost.revision = 1;
    assert!(matches!(s.update(&ghost, "").await, Err(StoreError::NotFound(n)) if n == "ghost"));
    assert!(matches!(
        s.delete("ghost", 1).await,
        Err(StoreError::NotFound(_))
    ));
    // An admitted update compares the revision too.
    let yes: Admission = Arc::new(|_, _| Ok(()));
    let e = s.admit(&r1, "", yes).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e:?}");
}

pub async fn unique_names_and_addresses(s: &dyn Store) {
    s.insert(&with_ip("a", "10.77.0.2/24"), "created")
        .await
        .unwrap();
    let mut dup = with_ip("a", "10.77.0.9/24");
    dup.memory_mib = 1;
    let e = s.insert(&dup, "dup").await.unwrap_err();
    neutral(&e);
    assert!(
        matches!(&e, StoreError::AlreadyExists(n) if n == "a"),
        "{e:?}"
    );
    assert_eq!(s.get("a").await.unwrap().unwrap().memory_mib, 128);
    // The same address with another prefix length is the same address.
    let e = s
        .insert(&with_ip("b", "10.77.0.2/16"), "")
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::AddressInUse(_)), "{e:?}");
    assert!(s.get("b").await.unwrap().is_none());
    let b = s.insert(&with_ip("b", "10.77.0.3/24"), "").await.unwrap();
    let mut moved = b.clone();
    moved.net.as_mut().unwrap().ip = "10.77.0.2/24".into();
    let e = s.update(&moved, "").await.unwrap_err();
    assert!(matches!(e, StoreError::AddressInUse(_)), "{e:?}");
    assert_eq!(s.get("b").await.unwrap().unwrap(), b);
    // Partitions without an address do not collide with each other.
    s.insert(&record("c"), "").await.unwrap();
    s.insert(&record("d"), "").await.unwrap();
    // Deleting frees the address.
    s.delete("a", 1).await.unwrap();
    s.insert(&with_ip("e", "10.77.0.2/24"), "").await.unwrap();
}

pub async fn refused_admission_changes_nothing(s: &dyn Store) {
    let held = s.insert(&record("held"), "created").await.unwrap();
    let no: Admission = Arc::new(|_, _| Err("over capacity: no room".into()));
    let e = s
        .admit(&record("new"), "created", no.clone())
        .await
        .unwrap_err();
    neutral(&e);
    match &e {
        StoreError::Refused { name, reason } => {
            assert_eq!(name, "new");
            assert_eq!(reason, "over capacity: no room");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(e.to_string(), "over capacity: no room");
    assert!(s.get("new").await.unwrap().is_none());
    assert!(s.events("new", 10).await.unwrap().is_empty());
    let mut start = held.clone();
    start.state = PartitionState::Starting;
    assert!(matches!(
        s.admit(&start, "starting", no).await,
        Err(StoreError::Refused { .. })
    ));
    assert_eq!(s.get("held").await.unwrap().unwrap(), held);
    let ev = s.events("held", 10).await.unwrap();
    assert_eq!(ev.len(), 1, "{ev:?}");
    // The same write with a check that passes goes through.
    let yes: Admission = Arc::new(|_, _| Ok(()));
    let started = s.admit(&start, "starting", yes.clone()).await.unwrap();
    assert_eq!(
        (started.state, started.revision),
        (PartitionState::Starting, 2)
    );
    assert_eq!(s.admit(&record("new"), "", yes).await.unwrap().revision, 1);
    // An admitted insert of a taken name is refused like a plain one.
    let yes: Admission = Arc::new(|_, _| Ok(()));
    let e = s.admit(&record("held"), "", yes).await.unwrap_err();
    assert!(matches!(e, StoreError::AlreadyExists(_)), "{e:?}");
}

pub async fn admission_sees_the_others_and_completes_the_record(s: &dyn Store) {
    s.insert(&with_ip("a", "10.77.0.2/24"), "").await.unwrap();
    let mut b = record("b");
    b.host = OTHER_HOST.into();
    s.insert(&b, "").await.unwrap();
    let c = s.insert(&record("c"), "").await.unwrap();
    // The check sees every other record, of every host, and not the one written.
    let seen: Admission = Arc::new(|others, rec| {
        let names: Vec<_> = others.iter().map(|r| r.name.as_str()).collect();
        if names != ["a", "b"] {
            return Err(format!("saw {names:?} writing {}", rec.name));
        }
        rec.net = Some(NetRecord {
            ip: "10.77.0.3/24".into(),
            mac: "52:54:00:00:00:03".into(),
        });
        Ok(())
    });
    let c = s.admit(&c, "addressed", seen).await.unwrap();
    assert_eq!(c.net.as_ref().unwrap().ip, "10.77.0.3/24");
    assert_eq!(
        s.get("c").await.unwrap().unwrap(),
        c,
        "the completed record is stored"
    );
    // A check completing a record with a taken address is refused by the store.
    let taken: Admission = Arc::new(|_, rec| {
        rec.net = Some(NetRecord {
            ip: "10.77.0.2/24".into(),
            mac: "52:54:00:00:00:02".into(),
        });
        Ok(())
    });
    let e = s.admit(&record("d"), "", taken).await.unwrap_err();
    assert!(matches!(e, StoreError::AddressInUse(_)), "{e:?}");
    assert!(s.get("d").await.unwrap().is_none());
}

/// Room for this many partitions of [`HOST`] in the concurrency cases.
const ROOM: usize = 5;

/// Admits `n` new records named `<prefix>NN` from as many tasks at once;
/// returns how many were admitted and the refusals' reasons. Any other
/// error fails the case.
async fn admit_at_once(
    s: &Arc<dyn Store>,
    prefix: &str,
    n: usize,
    check: Admission,
) -> (usize, Vec<String>) {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (s, check) = (s.clone(), check.clone());
            let rec = record(&format!("{prefix}{i:02}"));
            tokio::spawn(async move { s.admit(&rec, "", check).await })
        })
        .collect();
    let (mut admitted, mut refusals) = (0, Vec::new());
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => admitted += 1,
            Err(StoreError::Refused { reason, .. }) => refusals.push(reason),
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    (admitted, refusals)
}

pub async fn concurrent_admissions_never_over_admit(s: Arc<dyn Store>) {
    // Another host's partitions do not count against this host's room.
    let mut far = record("far");
    far.host = OTHER_HOST.into();
    s.insert(&far, "").await.unwrap();
    let check: Admission = Arc::new(|others, rec| {
        let held = others.iter().filter(|r| r.host == rec.host).count();
        if held >= ROOM {
            return Err(format!("full: {held} held"));
        }
        Ok(())
    });
    let (admitted, refusals) = admit_at_once(&s, "p", 24, check).await;
    assert_eq!(admitted, ROOM, "{refusals:?}");
    assert!(
        refusals.iter().all(|r| r.starts_with("full")),
        "{refusals:?}"
    );
    assert_eq!(s.list(Scope::Host(HOST)).await.unwrap().len(), ROOM);
}

pub async fn concurrent_address_allocation_never_repeats(s: Arc<dyn Store>) {
    // Lowest free address in a /28 of 10.77.0.0 (.1 is the gateway).
    let alloc: Admission = Arc::new(|others, rec| {
        let used: Vec<String> = others
            .iter()
            .filter_map(|r| r.net.as_ref().map(|n| n.ip.clone()))
            .collect();
        let ip = (2..15)
            .map(|h| format!("10.77.0.{h}/28"))
            .find(|ip| !used.contains(ip))
            .ok_or("no free address")?;
        rec.net = Some(NetRecord {
            ip,
            mac: "52:54:00:00:00:00".into(),
        });
        Ok(())
    });
    let (ok, refusals) = admit_at_once(&s, "n", 20, alloc).await;
    assert_eq!(ok, 13, "every address of the /28 but the gateway, once");
    assert!(
        refusals.iter().all(|r| r == "no free address"),
        "{refusals:?}"
    );
    let mut ips: Vec<_> = s
        .list(Scope::All)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.net.unwrap().ip)
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 13);
}

pub async fn concurrent_compare_and_swap_loses_no_write(s: Arc<dyn Store>) {
    s.insert(&record("counter"), "").await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut conflicts = 0u32;
                loop {
                    let mut r = s.get("counter").await.unwrap().unwrap();
                    r.restarts += 1;
                    match s.update(&r, "").await {
                        Ok(_) => return conflicts,
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("unexpected error {e:?}"),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let r = s.get("counter").await.unwrap().unwrap();
    assert_eq!(r.restarts, 16, "every increment counted once");
    assert_eq!(r.revision, 17);
}

pub async fn events(s: &dyn Store) {
    let mut r = s.insert(&record("e"), "created").await.unwrap();
    for i in 0..5 {
        r = s.update(&r, &format!("step {i}")).await.unwrap();
    }
    // An empty event writes no history.
    r = s.update(&r, "").await.unwrap();
    let all = s.events("e", 100).await.unwrap();
    let msgs: Vec<_> = all.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        msgs,
        ["created", "step 0", "step 1", "step 2", "step 3", "step 4"]
    );
    assert!(all.iter().all(|e| e.partition == "e" && e.at > 0));
    assert!(all.windows(2).all(|w| w[0].at <= w[1].at));
    let last: Vec<_> = s
        .events("e", 2)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(last, ["step 3", "step 4"], "the newest, oldest first");
    s.insert(&record("other"), "other created").await.unwrap();
    assert_eq!(s.events("e", 100).await.unwrap().len(), 6);
    s.delete("e", r.revision).await.unwrap();
    assert!(
        s.events("e", 100).await.unwrap().is_empty(),
        "history goes with the record"
    );
    // A name used again starts a fresh history.
    s.insert(&record("e"), "again").await.unwrap();
    let again: Vec<_> = s
        .events("e", 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(again, ["again"]);
}

pub async fn host_ids(s: &dyn Store) {
    s.insert(&record("mine"), "").await.unwrap();
    let mut theirs = record("theirs");
    theirs.host = OTHER_HOST.into();
    s.insert(&theirs, "").await.unwrap();
    assert_eq!(s.get("theirs").await.unwrap().unwrap().host, OTHER_HOST);
    assert_eq!(names(s, Scope::Host(HOST)).await, ["mine"]);
    assert_eq!(names(s, Scope::Host(OTHER_HOST)).await, ["theirs"]);
    assert!(names(s, Scope::Host("nobody")).await.is_empty());
    assert_eq!(names(s, Scope::All).await, ["mine", "theirs"]);
    // A record changes host by an update (a partition resumed elsewhere).
    let mut moved = s.get("mine").await.unwrap().unwrap();
    moved.host = OTHER_HOST.into();
    s.update(&moved, "moved").await.unwrap();
    assert!(names(s, Scope::Host(HOST)).await.is_empty());
    // Every record has an owner: one without is refused, by every write.
    let mut orphan = record("orphan");
    orphan.host.clear();
    let e = s.insert(&orphan, "").await.unwrap_err();
    neutral(&e);
    assert!(matches!(e, StoreError::Invalid { .. }), "{e:?}");
    let yes: Admission = Arc::new(|_, _| Ok(()));
    assert!(matches!(
        s.admit(&orphan, "", yes).await,
        Err(StoreError::Invalid { .. })
    ));
    let mut unowned = s.get("theirs").await.unwrap().unwrap();
    unowned.host.clear();
    assert!(matches!(
        s.update(&unowned, "").await,
        Err(StoreError::Invalid { .. })
    ));
    assert!(s.get("orphan").await.unwrap().is_none());
}

/// A member record as a daemon registers it.
pub fn host(id: &str, name: &str) -> HostRecord {
    HostRecord {
        id: id.to_string(),
        name: name.to_string(),
        endpoints: vec![format!("{name}.example.org:7070")],
        tls_fingerprint: None,
        underlay: Some("192.0.2.1".into()),
        cpus: 2,
        memory_mib: 4096,
        started_at: now_ms(),
        version: "0.1.0".into(),
    }
}

async fn states(s: &dyn Store) -> Vec<(String, HostState)> {
    s.hosts()
        .await
        .expect("hosts")
        .into_iter()
        .map(|h| (h.record.name, h.state))
        .collect()
}

/// Waits (bounded) until host `name` is in `want`.
async fn wait_state(s: &dyn Store, name: &str, want: HostState, within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let now = states(s).await;
        if now.iter().any(|(n, st)| n == name && *st == want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "host {name} not {want:?} within {within:?}: {now:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

pub async fn membership(s: &dyn Store) {
    use std::time::Duration;
    const THIRD: &str = "3f2c0a7e-0000-4000-8000-00000000000c";
    let long = Duration::from_secs(600);
    assert!(s.hosts().await.unwrap().is_empty());
    let a = host(HOST, "a");
    s.register_host(&a, long).await.unwrap();
    s.register_host(&host(OTHER_HOST, "b"), long).await.unwrap();
    let all = s.hosts().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].record, a, "the record as registered");
    assert_eq!(
        states(s).await,
        [("a".into(), HostState::Up), ("b".into(), HostState::Up)]
    );

    // A name is one host's: another id asking for it is refused, and nothing changes.
    let e = s.register_host(&host(THIRD, "a"), long).await.unwrap_err();
    neutral(&e);
    assert!(matches!(e, StoreError::Refused { .. }), "{e:?}");
    assert!(e.to_string().contains(HOST), "names the holder: {e}");
    assert_eq!(s.hosts().await.unwrap().len(), 2);

    // The same id registers again (a restart): its record is replaced, and
    // a new name frees the old one.
    let mut a2 = host(HOST, "a2");
    a2.endpoints = vec!["a.example.org:7071".into()];
    s.register_host(&a2, long).await.unwrap();
    let all = s.hosts().await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().any(|h| h.record == a2));
    s.register_host(&host(THIRD, "a"), long).await.unwrap();
    assert_eq!(s.hosts().await.unwrap().len(), 3);

    // Liveness: a host that stops renewing is lost after its ttl, the
    // others stay up; renewing makes it up again.
    let e = s.renew_host("no-such-host").await.unwrap_err();
    neutral(&e);
    let short = Duration::from_secs(2);
    s.register_host(&host("3f2c0a7e-0000-4000-8000-00000000000d", "d"), short)
        .await
        .unwrap();
    wait_state(s, "d", HostState::Up, Duration::from_secs(1)).await;
    wait_state(s, "d", HostState::Lost, Duration::from_secs(15)).await;
    assert!(states(s)
        .await
        .iter()
        .filter(|(n, _)| n != "d")
        .all(|(_, st)| *st == HostState::Up));
    s.renew_host("3f2c0a7e-0000-4000-8000-00000000000d")
        .await
        .unwrap();
    wait_state(s, "d", HostState::Up, Duration::from_secs(5)).await;
}

/// Issue 14: a hibernated record keeps its image's description, and the
/// claim of the image (hibernated → resuming, a compare-and-swap) is won by
/// exactly one of two writers who read the same revision.
pub async fn hibernation_claim(s: Arc<dyn Store>) {
    let mut r = record("sleepy");
    r.state = PartitionState::Hibernated;
    r.hibernate_idle_secs = Some(600);
    r.hibernation = Some(crate::HibernationRecord {
        location: "clients/sleepy/hibernation/sleepy".into(),
        bytes: 70 << 20,
        sha256: "ab".repeat(32),
        saved_at: now_ms(),
        reason: crate::HibernateReason::Idle,
        config: serde_json::json!({ "vcpus": 1, "adapters": [] }),
    });
    let stored = s.insert(&r, "hibernated").await.unwrap();
    let got = s.get("sleepy").await.unwrap().unwrap();
    assert_eq!(got, stored);
    assert_eq!(got.hibernation, r.hibernation);
    assert_eq!(got.state, PartitionState::Hibernated);
    let claim = |host: &'static str| {
        let (s, mut c) = (s.clone(), got.clone());
        c.state = PartitionState::Resuming;
        c.host = host.to_string();
        tokio::spawn(async move { s.update(&c, "resuming").await })
    };
    let (a, b) = (claim(HOST), claim(OTHER_HOST));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert!(
        a.is_ok() != b.is_ok(),
        "exactly one claim wins: {a:?} / {b:?}"
    );
    let lost = if a.is_ok() { b } else { a };
    assert!(matches!(lost, Err(StoreError::Conflict { .. })), "{lost:?}");
    let after = s.get("sleepy").await.unwrap().unwrap();
    assert_eq!(after.state, PartitionState::Resuming);
    assert_eq!(after.revision, got.revision + 1);
}

// --- LUs and clients (issue 14) ---

pub fn lu(name: &str, client: &str) -> LuRecord {
    LuRecord {
        name: name.into(),
        client: client.into(),
        size_bytes: 1 << 30,
        path: format!("clients/{client}/lu/{name}.qcow2"),
        purpose: "data".into(),
        created_at: now_ms(),
        revision: 0,
        mirror: None,
        mirror_of: None,
    }
}

pub fn lu_lock_of(lu: &str, host: &str, partition: &str, mode: LockMode) -> LuLock {
    LuLock {
        lu: lu.into(),
        host: host.into(),
        partition: partition.into(),
        adapter: "disk0".into(),
        adapter_id: 2,
        mode,
        since: 0,
    }
}

pub async fn lus(s: &dyn Store) {
    assert!(s.lu_get("a").await.unwrap().is_none());
    let a = s.lu_insert(&lu("a", "c1")).await.unwrap();
    assert_eq!(a.revision, 1);
    s.lu_insert(&lu("b", "c2")).await.unwrap();
    let e = s.lu_insert(&lu("a", "c2")).await.unwrap_err();
    neutral(&e);
    assert!(matches!(&e, StoreError::LuExists(n) if n == "a"), "{e:?}");
    assert_eq!(
        s.lu_get("a").await.unwrap().unwrap(),
        a,
        "unchanged by the refused insert"
    );
    let names: Vec<_> = s
        .lu_list()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    // LUs and partitions are separate names.
    s.insert(&record("a"), "").await.unwrap();
    let mut grown = a.clone();
    grown.size_bytes *= 2;
    let grown = s.lu_update(&grown).await.unwrap();
    assert_eq!((grown.revision, grown.size_bytes), (2, 2 << 30));
    let e = s.lu_update(&a).await.unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Conflict {
                expected: 1,
                found: 2,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(matches!(
        s.lu_delete("a", 1).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        s.lu_delete("zz", 1).await,
        Err(StoreError::LuNotFound(_))
    ));
    let mut ghost = lu("zz", "c1");
    ghost.revision = 1;
    assert!(matches!(
        s.lu_update(&ghost).await,
        Err(StoreError::LuNotFound(_))
    ));
    s.lu_delete("a", 2).await.unwrap();
    assert!(s.lu_get("a").await.unwrap().is_none());
    assert!(s.get("a").await.unwrap().is_some(), "the partition a stays");
    // The name is free again.
    assert_eq!(s.lu_insert(&lu("a", "c3")).await.unwrap().revision, 1);
}

/// An LU inserted with its maker's lock is never seen unlocked: the lock
/// is there at once and excludes every other; a refused insert writes no
/// lock either.
pub async fn lu_insert_locked(s: &dyn Store) {
    let maker = lu_lock_of("n", HOST, "lu:n:maker", LockMode::Rw);
    let r = s.lu_insert_locked(&lu("n", "c1"), &maker).await.unwrap();
    assert_eq!(r.revision, 1);
    let held = s.lu_locks(Some("n")).await.unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].partition, "lu:n:maker");
    assert!(held[0].since > 0, "{held:?}");
    for mode in [LockMode::Rw, LockMode::Ro] {
        let e = s
            .lu_lock(&lu_lock_of("n", OTHER_HOST, "p", mode), "c1")
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Locked(_)), "{e:?}");
    }
    let other = lu_lock_of("n", HOST, "lu:n:other", LockMode::Rw);
    let e = s
        .lu_insert_locked(&lu("n", "c2"), &other)
        .await
        .unwrap_err();
    assert!(matches!(&e, StoreError::LuExists(n) if n == "n"), "{e:?}");
    assert_eq!(s.lu_locks(Some("n")).await.unwrap().len(), 1);
    assert_eq!(s.lu_unlock("lu:n:maker", None).await.unwrap(), 1);
    s.lu_lock(&lu_lock_of("n", OTHER_HOST, "p", LockMode::Rw), "c1")
        .await
        .unwrap();
}

pub async fn lu_locks(s: &dyn Store) {
    s.lu_insert(&lu("d", "c1")).await.unwrap();
    let w = lu_lock_of("d", HOST, "p1", LockMode::Rw);
    // Ownership first: another client's partition gets nothing.
    let e = s.lu_lock(&w, "c2").await.unwrap_err();
    neutral(&e);
    assert!(
        matches!(&e, StoreError::Forbidden(m) if m.contains("c1") && m.contains("c2")),
        "{e:?}"
    );
    assert!(
        s.lu_locks(Some("d")).await.unwrap().is_empty(),
        "a refusal locks nothing"
    );
    assert!(matches!(
        s.lu_lock(&lu_lock_of("none", HOST, "p1", LockMode::Rw), "c1")
            .await,
        Err(StoreError::LuNotFound(_))
    ));
    let got = s.lu_lock(&w, "c1").await.unwrap();
    assert_eq!(got.name, "d");
    // Taking the same holder's lock again replaces it (a restart).
    s.lu_lock(&w, "c1").await.unwrap();
    // Another host's write attach and read attach are refused, naming the holder.
    for mode in [LockMode::Rw, LockMode::Ro] {
        let e = s
            .lu_lock(&lu_lock_of("d", OTHER_HOST, "p2", mode), "c1")
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Locked(m) if m.contains(HOST) && m.contains("\"p1\"")),
            "{e:?}"
        );
    }
    // Nor may it be deleted while attached.
    let e = s.lu_delete("d", 1).await.unwrap_err();
    assert!(matches!(e, StoreError::Locked(_)), "{e:?}");
    assert!(s.lu_get("d").await.unwrap().is_some());
    let held = s.lu_locks(Some("d")).await.unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (
            held[0].host.as_str(),
            held[0].partition.as_str(),
            held[0].mode
        ),
        (HOST, "p1", LockMode::Rw)
    );
    assert!(held[0].since > 0);
    // Released: readers share it, a writer is then refused.
    assert_eq!(s.lu_unlock("p1", None).await.unwrap(), 1);
    s.lu_lock(&lu_lock_of("d", HOST, "r1", LockMode::Ro), "c1")
        .await
        .unwrap();
    s.lu_lock(&lu_lock_of("d", OTHER_HOST, "r2", LockMode::Ro), "c1")
        .await
        .unwrap();
    assert!(matches!(
        s.lu_lock(&lu_lock_of("d", OTHER_HOST, "w", LockMode::Rw), "c1")
            .await,
        Err(StoreError::Locked(_))
    ));
    // Unlock by adapter touches only that adapter; every lock is listed.
    s.lu_insert(&lu("e", "c1")).await.unwrap();
    let mut second = lu_lock_of("e", HOST, "r1", LockMode::Rw);
    second.adapter = "hot0".into();
    s.lu_lock(&second, "c1").await.unwrap();
    assert_eq!(s.lu_locks(None).await.unwrap().len(), 3);
    assert_eq!(s.lu_unlock("r1", Some("hot0")).await.unwrap(), 1);
    assert_eq!(s.lu_unlock("r1", Some("hot0")).await.unwrap(), 0);
    let left: Vec<_> = s
        .lu_locks(None)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.lu, l.partition))
        .collect();
    assert_eq!(
        left,
        [
            ("d".to_string(), "r1".to_string()),
            ("d".into(), "r2".into())
        ]
    );
    s.lu_unlock("r1", None).await.unwrap();
    s.lu_unlock("r2", None).await.unwrap();
    s.lu_delete("d", 1).await.unwrap();
}

/// Many holders on two hosts take a write lock on one LU at once: exactly
/// one gets it, every other is refused naming a holder.
pub async fn lu_write_attach_race_has_one_winner(s: Arc<dyn Store>) {
    s.lu_insert(&lu("shared", "c")).await.unwrap();
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let s = s.clone();
            let host = if i % 2 == 0 { HOST } else { OTHER_HOST };
            let l = lu_lock_of("shared", host, &format!("p{i:02}"), LockMode::Rw);
            tokio::spawn(async move { s.lu_lock(&l, "c").await })
        })
        .collect();
    let (mut won, mut refused) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => won += 1,
            Err(StoreError::Locked(_)) => refused += 1,
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!((won, refused), (1, 11));
    assert_eq!(s.lu_locks(Some("shared")).await.unwrap().len(), 1);
}

/// A mirror's two records are written together or not at all, and a copy
/// refuses a partition's write lock (but not the manager's own).
pub async fn lu_mirror_pair(s: &dyn Store) {
    let p = s.lu_insert(&lu("prim", "c1")).await.unwrap();
    let mut copy = lu("prim-copy", "c1");
    copy.mirror_of = Some("prim".into());
    let mut linked = p.clone();
    linked.mirror = Some(crate::LuMirror {
        copy: copy.name.clone(),
        state: crate::MirrorState::Synced,
        reason: None,
        host: None,
        since: 1,
    });
    // A stale primary revision: neither record is written.
    let mut stale = linked.clone();
    stale.revision = 7;
    let e = s.lu_put_pair(&[copy.clone(), stale]).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e:?}");
    assert!(s.lu_get("prim-copy").await.unwrap().is_none());
    // A taken name for the insert: the primary is left as it was.
    let mut taken = copy.clone();
    taken.name = "prim".into();
    let e = s.lu_put_pair(&[taken, linked.clone()]).await.unwrap_err();
    assert!(matches!(e, StoreError::LuExists(_)), "{e:?}");
    assert_eq!(s.lu_get("prim").await.unwrap().unwrap(), p);
    let [c, pr] = s.lu_put_pair(&[copy, linked]).await.unwrap();
    assert_eq!((c.revision, pr.revision), (1, p.revision + 1));
    assert_eq!(s.lu_get("prim").await.unwrap().unwrap(), pr);
    assert_eq!(s.lu_get("prim-copy").await.unwrap().unwrap(), c);
    let rw = lu_lock_of("prim-copy", HOST, "p1", LockMode::Rw);
    let e = s.lu_lock(&rw, "c1").await.unwrap_err();
    assert!(matches!(e, StoreError::Locked(_)), "{e:?}");
    let ro = lu_lock_of("prim-copy", HOST, "p1", LockMode::Ro);
    s.lu_lock(&ro, "c1").await.unwrap();
    s.lu_unlock("p1", None).await.unwrap();
    let maint = lu_lock_of("prim-copy", HOST, "lu:prim-copy:1", LockMode::Rw);
    s.lu_lock(&maint, "c1").await.unwrap();
    s.lu_unlock("lu:prim-copy:1", None).await.unwrap();
}
