//! The etcd store against real etcd clusters (Debian's `etcd`, started by
//! `bulkhead_testbed::EtcdCluster`): the conformance suite, admission races
//! between clients, and failures of members.
//!
//! One 3-member cluster is shared by the tests that do not harm it, each
//! under a prefix of its own; the tests that kill members start their own.

use bulkhead_store::{conformance, Admission, NetRecord, Scope, Store, StoreError};
use bulkhead_store_etcd::{connect_with, Options};
use bulkhead_testbed::EtcdCluster;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{fresh_prefix, shared, store_at};

fn opts(timeout: Duration) -> Options {
    Options {
        timeout,
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_three_member_cluster() {
    let endpoints = shared().endpoints();
    conformance::run_all(|| {
        let endpoints = endpoints.clone();
        async move {
            Arc::new(store_at(&endpoints, &fresh_prefix("conformance")).await) as Arc<dyn Store>
        }
    })
    .await;
}

/// Clients on different members admit at once: capacity and addresses are
/// decided by etcd's transactions, not by any process's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_races_between_clients_never_over_admit_nor_repeat_an_address() {
    const ROOM: usize = 7;
    let cluster = shared();
    let prefix = fresh_prefix("race");
    let mut clients: Vec<Arc<dyn Store>> = Vec::new();
    for i in 0..3 {
        // Each client talks to one member only.
        clients.push(Arc::new(store_at(&[cluster.endpoint(i)], &prefix).await));
    }
    // Room for ROOM partitions; every other one also gets the lowest free
    // address of a /28 (the address index alone must not be what keeps
    // capacity: those without an address collide on nothing but the count).
    let check = |addressed: bool| -> Admission {
        Arc::new(move |others, rec| {
            if others.len() >= ROOM {
                return Err(format!("full: {} held", others.len()));
            }
            if !addressed {
                return Ok(());
            }
            let used: Vec<_> = others.iter().filter_map(|r| r.net.clone()).collect();
            let ip = (2..15)
                .map(|h| format!("10.78.0.{h}/28"))
                .find(|ip| !used.iter().any(|n| &n.ip == ip))
                .ok_or("no free address")?;
            rec.net = Some(NetRecord {
                ip,
                mac: "52:54:00:00:00:00".into(),
            });
            Ok(())
        })
    };
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let (s, check) = (clients[i % 3].clone(), check(i % 2 == 0));
            tokio::spawn(async move {
                s.admit(&conformance::record(&format!("r{i:02}")), "admitted", check)
                    .await
            })
        })
        .collect();
    let (mut admitted, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(StoreError::Refused { reason, .. }) => {
                assert!(reason.starts_with("full"), "{reason}");
                refused += 1
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((admitted, refused), (ROOM, 24 - ROOM));
    let all = clients[1].list(Scope::All).await.unwrap();
    assert_eq!(all.len(), ROOM, "every client sees the same records");
    let mut ips: Vec<_> = all
        .iter()
        .filter_map(|r| r.net.clone())
        .map(|n| n.ip)
        .collect();
    let given = ips.len();
    assert!(given > 0, "no admitted record got an address: {all:?}");
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), given, "an address was given twice: {all:?}");
    // The address index holds them too: a plain insert cannot take one.
    let mut thief = conformance::record("thief");
    thief.net = Some(NetRecord {
        ip: ips[0].clone(),
        mac: "52:54:00:00:00:09".into(),
    });
    let e = clients[2].insert(&thief, "").await.unwrap_err();
    assert!(matches!(e, StoreError::AddressInUse(_)), "{e:?}");
}

/// Names are escaped in keys: `a/b` is its own partition, with its own
/// history, not part of `a`'s range.
#[tokio::test]
async fn names_with_slashes_keep_their_own_keys() {
    let s = store_at(&shared().endpoints(), &fresh_prefix("names")).await;
    let a = s.insert(&conformance::record("a"), "a made").await.unwrap();
    s.insert(&conformance::record("a/b"), "a/b made")
        .await
        .unwrap();
    let msgs = |v: Vec<bulkhead_store::Event>| v.into_iter().map(|e| e.message).collect::<Vec<_>>();
    assert_eq!(msgs(s.events("a", 10).await.unwrap()), ["a made"]);
    s.delete("a", a.revision).await.unwrap();
    assert_eq!(msgs(s.events("a/b", 10).await.unwrap()), ["a/b made"]);
    assert!(s.get("a/b").await.unwrap().is_some());
}

/// A check completes a record; it cannot move it under another name's key
/// or leave it without an owner.
#[tokio::test]
async fn a_check_cannot_rename_or_disown() {
    let s = store_at(&shared().endpoints(), &fresh_prefix("rename")).await;
    let rename: Admission = Arc::new(|_, rec| {
        rec.name = "other".into();
        Ok(())
    });
    let disown: Admission = Arc::new(|_, rec| {
        rec.host.clear();
        Ok(())
    });
    for check in [rename, disown] {
        let e = s
            .admit(&conformance::record("mine"), "", check)
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Invalid { .. }), "{e:?}");
    }
    assert!(s.list(Scope::All).await.unwrap().is_empty());
}

#[tokio::test]
async fn history_is_bounded() {
    let s = store_at(&shared().endpoints(), &fresh_prefix("history")).await;
    let mut r = s.insert(&conformance::record("h"), "made").await.unwrap();
    for i in 0..300 {
        r = s.update(&r, &format!("step {i}")).await.unwrap();
    }
    let ev = s.events("h", 1000).await.unwrap();
    assert_eq!(ev.len(), 256, "history past its bound was kept");
    assert_eq!(ev.last().unwrap().message, "step 299");
    assert_eq!(ev.first().unwrap().message, "step 44");
}

/// A value that is not a record (written by something else) is reported as
/// corrupt, by name, not a panic; the other records still read.
#[tokio::test]
async fn a_foreign_value_is_corrupt_not_a_crash() {
    let endpoints = shared().endpoints();
    let prefix = fresh_prefix("corrupt");
    let s = store_at(&endpoints, &prefix).await;
    s.insert(&conformance::record("good"), "").await.unwrap();
    let mut raw = etcd_client::Client::connect(&endpoints, None)
        .await
        .unwrap();
    raw.put(format!("{prefix}/partitions/bad"), "{not json", None)
        .await
        .unwrap();
    raw.put(
        format!("{prefix}/partitions/liar"),
        serde_json::to_string(&conformance::record("good")).unwrap(),
        None,
    )
    .await
    .unwrap();
    let e = s.get("bad").await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Corrupt { name, .. } if name.ends_with("/bad")),
        "{e:?}"
    );
    let e = s.get("liar").await.unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
    assert!(matches!(
        s.list(Scope::All).await,
        Err(StoreError::Corrupt { .. })
    ));
    assert!(s.get("good").await.unwrap().is_some());
}

#[tokio::test]
async fn nothing_listening_is_unavailable_in_bounded_time() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t0 = Instant::now();
    let e = connect_with(
        &[format!("http://127.0.0.1:{port}")],
        "/x",
        opts(Duration::from_secs(2)),
    )
    .await
    .err()
    .expect("nobody listens");
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

/// Retries `f` while the store is unavailable, up to `deadline`.
async fn eventually<T, F, Fut>(deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let end = Instant::now() + deadline;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(StoreError::Unavailable { .. }) if Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("store failed: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_down_keeps_working() {
    let mut cluster = EtcdCluster::start(3);
    let endpoints = cluster.endpoints();
    let s = connect_with(&endpoints, "/bulkhead/v1", opts(Duration::from_secs(5)))
        .await
        .unwrap();
    let mut r = s.insert(&conformance::record("p"), "made").await.unwrap();
    // The harshest member to lose: the leader.
    let leader = cluster.leader().expect("a leader");
    cluster.kill(leader);
    // A new leader is elected within a few election timeouts (a read needs
    // the quorum too; a write retried here could land twice); then every
    // write goes through.
    eventually(Duration::from_secs(20), || s.get("p")).await;
    for i in 0..20 {
        r = s
            .update(&r, &format!("write {i}"))
            .await
            .expect("write with one member down");
    }
    let got = s.get("p").await.unwrap().unwrap();
    assert_eq!(got, r, "reads are current");
    assert_eq!(s.list(Scope::All).await.unwrap(), vec![r.clone()]);
    // The member comes back, catches up, and answers current reads itself.
    cluster.restart(leader);
    cluster.wait_for_leader();
    let alone = connect_with(
        &[cluster.endpoint(leader)],
        "/bulkhead/v1",
        opts(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let seen = eventually(Duration::from_secs(20), || alone.get("p")).await;
    assert_eq!(seen, Some(r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_lost_is_unavailable_in_bounded_time() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    // The bound the caller sees: the timeout (twice for connect: the
    // handshake, then the probe), with room for a loaded host.
    const BOUND: Duration = Duration::from_secs(8);
    let mut cluster = EtcdCluster::start(3);
    let endpoints = cluster.endpoints();
    let s = connect_with(&endpoints, "/bulkhead/v1", opts(TIMEOUT))
        .await
        .unwrap();
    let r = s.insert(&conformance::record("q"), "made").await.unwrap();
    cluster.kill(1);
    cluster.kill(2);
    let yes: Admission = Arc::new(|_, _| Ok(()));
    let attempts = [
        ("update", timed(s.update(&r, "no quorum")).await),
        ("get", timed(s.get("q")).await),
        ("list", timed(s.list(Scope::All)).await),
        (
            "admit",
            timed(s.admit(&conformance::record("q2"), "", yes)).await,
        ),
    ];
    for (what, (took, res)) in &attempts {
        assert!(
            matches!(res, Err(StoreError::Unavailable { .. })),
            "{what} without quorum: {res:?}"
        );
        assert!(took < &BOUND, "{what} took {took:?}");
    }
    let t0 = Instant::now();
    let e = connect_with(&endpoints, "/bulkhead/v1", opts(TIMEOUT))
        .await
        .err()
        .expect("connect without quorum");
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
    assert!(t0.elapsed() < BOUND, "connect took {:?}", t0.elapsed());
    // Quorum back: the record is as it was (the failed update wrote
    // nothing, or it is there whole), and writes go through again.
    cluster.restart(1);
    cluster.wait_for_leader();
    let now = eventually(Duration::from_secs(20), || s.get("q"))
        .await
        .unwrap();
    assert!(now.revision == r.revision || now.revision == r.revision + 1);
    let back = conformance::record("q3");
    eventually(Duration::from_secs(20), || s.insert(&back, "quorum back")).await;
}

/// How long `fut` took, and whether it failed (its value dropped).
async fn timed<T>(
    fut: impl std::future::Future<Output = Result<T, StoreError>>,
) -> (Duration, Result<(), StoreError>) {
    let t0 = Instant::now();
    let res = fut.await.map(drop);
    (t0.elapsed(), res)
}
