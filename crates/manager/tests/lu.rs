//! LUs of the repository through real bulkheadd daemons: the commands,
//! thin provisioning seen from a real guest, ownership by client,
//! confinement of the file and its backing chain to the client's area, the
//! lock a second host (another daemon on the same store and repository)
//! cannot break, and `lu request`'s three outcomes. One partition boots.

mod common;

use bulkhead_manager::client::{Client, ClientError};
use bulkhead_manager::lu::types::*;
use bulkhead_store::{LockMode, LuLock, SqliteStore, Store};
use bulkhead_testbed::qcow2;
use common::{Daemon, Opts};
use serde_json::{json, Value};
use std::time::Duration;

const MIB: u64 = 1 << 20;

use common::on_shared_store as daemon;

async fn create_lu(c: &Client, name: &str, client: &str, bytes: u64) -> LuView {
    c.lu_create(&CreateLu {
        name: name.into(),
        client: client.into(),
        size_bytes: bytes,
        purpose: None,
    })
    .await
    .unwrap_or_else(|e| panic!("lu create {name}: {e}"))
}

async fn request(c: &Client, client: &str, min: u64) -> LuRequested {
    request_for(c, client, min, "paging").await
}

async fn request_for(c: &Client, client: &str, min: u64, purpose: &str) -> LuRequested {
    c.lu_request(&RequestLu {
        client: client.into(),
        min_bytes: min,
        purpose: Some(purpose.into()),
    })
    .await
    .unwrap()
}

/// The API error's (status, code, message).
fn api(e: ClientError) -> (u16, String, String) {
    match e {
        ClientError::Api {
            status,
            code,
            message,
            ..
        } => (status, code, message),
        other => panic!("not an API error: {other}"),
    }
}

fn with_lu(client: &str, lu: &str, ro: bool) -> Value {
    json!({ "client": client, "lus": [{ "name": lu, "readonly": ro }] })
}

async fn post_err(c: &Client, path: &str, body: Value) -> (u16, String, String) {
    api(c.post(path, &body).await.expect_err("refused"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lu_commands_ownership_confinement_and_requests() {
    let t = tempfile::tempdir().unwrap();
    let (store, repo) = (t.path().join("state.db"), t.path().join("repo"));
    let d = daemon(&store, &repo, "lu-host-1");
    let c = d.client();

    // Create, list, show: a thin file of the virtual size asked for.
    let v = create_lu(&c, "vol", "alice", 64 * MIB).await;
    assert_eq!(v.virtual_bytes, 64 * MIB);
    assert!(v.allocated_bytes < MIB, "thin: {v:?}");
    assert_eq!(v.record.path, "clients/alice/lu/vol.qcow2");
    assert!(repo.join("clients/alice/lu/vol.qcow2").is_file());
    let (s, code, _) = api(c
        .lu_create(&CreateLu {
            name: "vol".into(),
            client: "bob".into(),
            size_bytes: 8 * MIB,
            purpose: None,
        })
        .await
        .unwrap_err());
    assert_eq!((s, code.as_str()), (409, "conflict"));
    for (name, client) in [("../x", "alice"), ("ok", "A/B"), ("ok", "..")] {
        let e = c
            .lu_create(&CreateLu {
                name: name.into(),
                client: client.into(),
                size_bytes: 8 * MIB,
                purpose: None,
            })
            .await;
        // A bad name may already be refused by the client (path encoding).
        if let Err(ClientError::Api { status, .. }) = e {
            assert_eq!(status, 400, "{name} {client}");
        } else {
            assert!(
                matches!(e, Err(ClientError::Request(_))),
                "{name} {client}: {e:?}"
            );
        }
    }
    assert!(!repo.join("clients/A/B").exists());
    let names: Vec<_> = c
        .lu_list()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.record.name)
        .collect();
    assert_eq!(names, ["vol"]);

    // Resize grows only.
    let v = c
        .lu_resize(
            "vol",
            &ResizeLu {
                size_bytes: 128 * MIB,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (v.virtual_bytes, v.record.size_bytes),
        (128 * MIB, 128 * MIB)
    );
    let (s, _, m) = api(c
        .lu_resize(
            "vol",
            &ResizeLu {
                size_bytes: 32 * MIB,
            },
        )
        .await
        .unwrap_err());
    assert_eq!(s, 409, "{m}");
    assert!(m.contains("only grow"), "{m}");
    assert_eq!(c.lu_show("vol").await.unwrap().virtual_bytes, 128 * MIB);

    // Ownership: another client's partition may not name it.
    let (s, code, m) = post_err(
        &c,
        "/v1/partitions",
        json!({"name": "p-bob", "memory_mib": 128, "cpu_percent": 10, "client": "bob",
               "lus": [{"name": "vol"}]}),
    )
    .await;
    assert_eq!((s, code.as_str()), (403, "forbidden"), "{m}");
    assert!(m.contains("alice") && m.contains("bob"), "{m}");
    assert_eq!(api(c.get("/v1/partitions/p-bob").await.unwrap_err()).0, 404);
    let (s, _, _) = post_err(
        &c,
        "/v1/partitions",
        json!({"name": "p-x", "memory_mib": 128, "cpu_percent": 10, "lus": [{"name": "nope"}]}),
    )
    .await;
    assert_eq!(s, 404);

    // Its own client's partitions may; each gets a ClientID of its own and AdapterIDs.
    let a1 = d
        .create("p-a1", 10, 128, with_lu("alice", "vol", false))
        .await;
    let a2 = d.create("p-a2", 10, 128, json!({"net": true})).await;
    assert_eq!(a1["client"], "alice");
    assert_eq!(
        a2["client"], "p-a2",
        "by default a partition is its own client"
    );
    let (id1, id2) = (
        a1["client_id"].as_u64().unwrap(),
        a2["client_id"].as_u64().unwrap(),
    );
    assert!(id1 > 0 && id2 > 0 && id1 != id2, "{id1} {id2}");
    assert_eq!(a1["disks"][0]["lu"], "vol");
    let ids = a1["adapter_ids"].as_object().unwrap();
    assert!(
        ids.contains_key("agent") && ids.contains_key("disk0"),
        "{ids:?}"
    );
    assert_ne!(ids["agent"], ids["disk0"]);
    assert!(a2["adapter_ids"].as_object().unwrap().contains_key("net0"));
    let shown = d.show("p-a1").await;
    assert_eq!(shown["client_id"].as_u64(), Some(id1));

    // A symlink out of the client's area is refused at start, locking nothing.
    let outside = t.path().join("outside.qcow2");
    qcow2(&outside, "16M", None);
    create_lu(&c, "evil", "alice", 16 * MIB).await;
    let evil = repo.join("clients/alice/lu/evil.qcow2");
    std::fs::remove_file(&evil).unwrap();
    std::os::unix::fs::symlink(&outside, &evil).unwrap();
    d.create("p-sym", 10, 128, with_lu("alice", "evil", false))
        .await;
    let (s, _, m) = post_err(&c, "/v1/partitions/p-sym/start", json!({})).await;
    assert_eq!(s, 400, "{m}");
    assert!(m.contains("symlink") && m.contains("outside"), "{m}");
    assert_eq!(
        d.show("p-sym").await["state"],
        "defined",
        "a refused start changes nothing"
    );
    let v = c.lu_show("evil").await.unwrap();
    assert!(v.locks.is_empty());
    // Nor does `lu show` read the file the symlink leads to.
    assert!(
        v.problem.as_deref().unwrap_or("").contains("outside"),
        "{v:?}"
    );
    assert_eq!(v.allocated_bytes, 0);

    // So is a backing file in another client's area.
    create_lu(&c, "secret", "bob", 16 * MIB).await;
    create_lu(&c, "chain", "alice", 16 * MIB).await;
    let chain = repo.join("clients/alice/lu/chain.qcow2");
    std::fs::remove_file(&chain).unwrap();
    qcow2(
        &chain,
        "16M",
        Some(&repo.join("clients/bob/lu/secret.qcow2")),
    );
    d.create("p-chain", 10, 128, with_lu("alice", "chain", false))
        .await;
    let (s, _, m) = post_err(&c, "/v1/partitions/p-chain/start", json!({})).await;
    assert_eq!(s, 400, "{m}");
    assert!(m.contains("backing file") && m.contains("outside"), "{m}");
    assert!(c.lu_show("chain").await.unwrap().locks.is_empty());

    // Delete.
    create_lu(&c, "tmp", "alice", 8 * MIB).await;
    assert_eq!(c.lu_delete("tmp").await.unwrap().deleted, "tmp");
    assert!(!repo.join("clients/alice/lu/tmp.qcow2").exists());
    assert_eq!(api(c.lu_show("tmp").await.unwrap_err()).0, 404);

    // lu request: create, then reuse, then grow by the missing amount.
    let r = request(&c, "carol", 32 * MIB).await;
    assert_eq!(r.outcome, LuOutcome::Created);
    assert_eq!(r.lu.record.name, "carol-paging-1");
    assert_eq!(
        (r.lu.virtual_bytes, r.lu.record.purpose.as_str()),
        (32 * MIB, "paging")
    );
    assert!(r.lu.allocated_bytes < MIB, "thin: {:?}", r.lu);
    let r = request(&c, "carol", 16 * MIB).await;
    assert_eq!(
        (r.outcome, r.lu.record.name.as_str()),
        (LuOutcome::Reused, "carol-paging-1")
    );
    assert_eq!(r.lu.virtual_bytes, 32 * MIB, "reuse leaves the size");
    let r = request(&c, "carol", 48 * MIB).await;
    assert_eq!((r.outcome, r.grown_by_bytes), (LuOutcome::Grown, 16 * MIB));
    assert_eq!(r.lu.virtual_bytes, 48 * MIB);
    // Another client's LUs are never taken.
    let r = request(&c, "dave", 8 * MIB).await;
    assert_eq!(
        (r.outcome, r.lu.record.name.as_str()),
        (LuOutcome::Created, "dave-paging-1")
    );

    // An LU in use (locked by another host through the shared store) is
    // neither reused, grown, resized nor deleted.
    let other = SqliteStore::open(&store, "lu-host-2").unwrap();
    let lock = LuLock {
        lu: "carol-paging-1".into(),
        host: "lu-host-2".into(),
        partition: "far-away".into(),
        adapter: "disk0".into(),
        adapter_id: 2,
        mode: LockMode::Rw,
        since: 0,
    };
    other.lu_lock(&lock, "carol").await.unwrap();
    let r = request(&c, "carol", 16 * MIB).await;
    assert_eq!(
        (r.outcome, r.lu.record.name.as_str()),
        (LuOutcome::Created, "carol-paging-2")
    );
    assert_eq!(r.lu.virtual_bytes, 16 * MIB);
    let (s, _, m) = api(c
        .lu_resize(
            "carol-paging-1",
            &ResizeLu {
                size_bytes: 64 * MIB,
            },
        )
        .await
        .unwrap_err());
    assert_eq!(s, 409, "{m}");
    assert!(m.contains("far-away") && m.contains("lu-host-2"), "{m}");
    assert_eq!(
        c.lu_show("carol-paging-1").await.unwrap().virtual_bytes,
        48 * MIB
    );
    assert_eq!(api(c.lu_delete("carol-paging-1").await.unwrap_err()).0, 409);
    assert!(repo.join("clients/carol/lu/carol-paging-1.qcow2").is_file());

    // Locks of this host's partitions that are not running are released
    // when the daemon restarts; another host's are not touched.
    let mut stale = lock.clone();
    stale.lu = "vol".into();
    stale.host = "lu-host-1".into();
    stale.partition = "p-a1".into();
    other.lu_lock(&stale, "alice").await.unwrap();
    let mut d = d;
    d.kill9();
    d.spawn();
    assert!(
        c.lu_show("vol").await.unwrap().locks.is_empty(),
        "stale lock released"
    );
    assert_eq!(c.lu_show("carol-paging-1").await.unwrap().locks.len(), 1);
}

/// One partition boots with an LU: the guest's writes grow the file's
/// allocation; while it runs a second host's write (or read) attach is
/// refused naming the holder, and a resize or delete too; stopping releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_lu_is_thin_and_locked_against_a_second_host() {
    let t = tempfile::tempdir().unwrap();
    let (store, repo) = (t.path().join("state.db"), t.path().join("repo"));
    let a = daemon(&store, &repo, "lu-host-a");
    let b = daemon(&store, &repo, "lu-host-b");
    let (ca, cb) = (a.client(), b.client());

    let before = create_lu(&ca, "data", "acme", 256 * MIB).await;
    let mut spec = with_lu("acme", "data", false);
    spec["hotplug_slots"] = json!(1);
    a.create("w1", 50, 128, spec).await;
    a.start_wait("w1").await;
    let v = ca.lu_show("data").await.unwrap();
    assert_eq!(v.locks.len(), 1, "{v:?}");
    let l = &v.locks[0];
    assert_eq!(
        (
            l.host.as_str(),
            l.partition.as_str(),
            l.adapter.as_str(),
            l.mode
        ),
        ("lu-host-a", "w1", "disk0", LockMode::Rw)
    );
    let w1 = a.show("w1").await;
    assert_eq!(
        Some(l.adapter_id as u64),
        w1["adapter_ids"]["disk0"].as_u64()
    );

    // The guest writes 16 MiB: the file's allocation grows by about that.
    let r = a
        .exec(
            "w1",
            "dd if=/dev/urandom of=/dev/vda bs=1M count=16 2>&1 && sync",
        )
        .await;
    assert_eq!(r["code"], 0, "{r}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        let v = ca.lu_show("data").await.unwrap();
        if v.allocated_bytes >= before.allocated_bytes + 16 * MIB
            || tokio::time::Instant::now() > deadline
        {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        after.allocated_bytes >= before.allocated_bytes + 16 * MIB,
        "allocation {} -> {}",
        before.allocated_bytes,
        after.allocated_bytes
    );
    assert_eq!(
        after.virtual_bytes,
        256 * MIB,
        "thin: virtual size unchanged"
    );

    // The second host: a write attach and a read attach are both refused
    // while w1 writes, naming host and partition; nothing changes.
    b.create("w2", 50, 128, with_lu("acme", "data", false))
        .await;
    b.create("r2", 50, 128, with_lu("acme", "data", true)).await;
    for p in ["w2", "r2"] {
        let (s, _, m) = post_err(&cb, &format!("/v1/partitions/{p}/start"), json!({})).await;
        assert_eq!(s, 409, "{m}");
        assert!(m.contains("lu-host-a") && m.contains("\"w1\""), "{m}");
        assert_eq!(b.show(p).await["state"], "defined");
    }
    // Another client's partition is refused for ownership before any lock.
    b.client()
        .post(
            "/v1/partitions",
            &json!({"name": "intruder", "memory_mib": 128, "cpu_percent": 10,
                    "client": "other", "lus": [{"name": "data"}]}),
        )
        .await
        .expect_err("another client's LU");
    assert_eq!(
        api(cb
            .lu_resize(
                "data",
                &ResizeLu {
                    size_bytes: 512 * MIB
                }
            )
            .await
            .unwrap_err())
        .0,
        409
    );
    assert_eq!(api(cb.lu_delete("data").await.unwrap_err()).0, 409);
    assert_eq!(ca.lu_show("data").await.unwrap().locks.len(), 1);

    // Hot-plug: another client's LU is refused, the client's own is locked
    // for the adapter, and removing the disk releases that lock.
    create_lu(&ca, "theirs", "other", 16 * MIB).await;
    create_lu(&ca, "extra", "acme", 16 * MIB).await;
    let (s, code, m) = post_err(&ca, "/v1/partitions/w1/lus", json!({"lu": "theirs"})).await;
    assert_eq!((s, code.as_str()), (403, "forbidden"), "{m}");
    assert!(ca.lu_show("theirs").await.unwrap().locks.is_empty());
    let hot = ca
        .attach_lu(
            "w1",
            &AttachLu {
                lu: "extra".into(),
                readonly: false,
                id: None,
            },
        )
        .await
        .unwrap();
    let held = ca.lu_show("extra").await.unwrap().locks;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (held[0].partition.as_str(), held[0].adapter.as_str()),
        ("w1", hot.id.as_str())
    );
    let ids = a.show("w1").await["adapter_ids"].clone();
    assert_eq!(
        ids[&hot.id].as_u64(),
        Some(held[0].adapter_id as u64),
        "{ids}"
    );
    assert_ne!(ids[&hot.id], ids["disk0"]);
    let r = a
        .exec(
            "w1",
            "for i in $(seq 300); do [ -e /sys/block/vdb ] && exit 0; sleep 0.1; done; exit 1",
        )
        .await;
    assert_eq!(r["code"], 0, "the guest sees the LU: {r}");
    ca.call(
        hyper::Method::DELETE,
        &format!("/v1/partitions/w1/disks/{}", hot.id),
        None,
    )
    .await
    .unwrap();
    assert!(
        ca.lu_show("extra").await.unwrap().locks.is_empty(),
        "unplugging released it"
    );
    assert_eq!(
        ca.lu_show("data").await.unwrap().locks.len(),
        1,
        "the boot disk keeps its lock"
    );

    // Stopping releases the lock; then the LU grows.
    ca.post("/v1/partitions/w1/stop", &json!({"force": true}))
        .await
        .unwrap();
    a.wait_state("w1", &["stopped"], Duration::from_secs(60))
        .await;
    assert!(ca.lu_show("data").await.unwrap().locks.is_empty());
    let v = cb
        .lu_resize(
            "data",
            &ResizeLu {
                size_bytes: 512 * MIB,
            },
        )
        .await
        .unwrap();
    assert_eq!(v.virtual_bytes, 512 * MIB);
    assert!(v.allocated_bytes >= 16 * MIB, "the data stays");
}

/// The same rules with the cluster store on etcd: two daemons (two host
/// ids) on one etcd and one repository see the same LUs; an LU locked for
/// write by a partition of the other host is refused to this host's start,
/// naming the holder, and `lu request` does not take it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lus_and_locks_on_etcd_across_two_hosts() {
    let cluster = bulkhead_testbed::EtcdCluster::start(3);
    let prefix = format!("/bulkhead-test/{}/lu", std::process::id());
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    let on = |host: &str| {
        Daemon::start(Opts {
            extra: format!(
                "[store]\nhost_id = {host:?}\n[cluster]\netcd = {:?}\nprefix = {prefix:?}\nrepository = {repo:?}\n",
                cluster.endpoints()
            ),
            ..Default::default()
        })
    };
    let (a, b) = (on("etcd-lu-a"), on("etcd-lu-b"));
    let (ca, cb) = (a.client(), b.client());
    create_lu(&ca, "shared", "zeta", 32 * MIB).await;
    assert_eq!(cb.lu_show("shared").await.unwrap().virtual_bytes, 32 * MIB);
    let (s, _, _) = api(cb
        .lu_create(&CreateLu {
            name: "shared".into(),
            client: "zeta".into(),
            size_bytes: 8 * MIB,
            purpose: None,
        })
        .await
        .unwrap_err());
    assert_eq!(s, 409, "one name in the cluster");

    // Host a's partition holds it for write (its lock written as a's start
    // writes it); b's start is refused naming a, and changes nothing.
    let etcd = bulkhead_store_etcd::connect(&cluster.endpoints(), &prefix)
        .await
        .unwrap();
    let held = LuLock {
        lu: "shared".into(),
        host: "etcd-lu-a".into(),
        partition: "holder".into(),
        adapter: "disk0".into(),
        adapter_id: 2,
        mode: LockMode::Rw,
        since: 0,
    };
    etcd.lu_lock(&held, "zeta").await.unwrap();
    b.create("taker", 10, 128, with_lu("zeta", "shared", false))
        .await;
    let (s, _, m) = post_err(&cb, "/v1/partitions/taker/start", json!({})).await;
    assert_eq!(s, 409, "{m}");
    assert!(m.contains("etcd-lu-a") && m.contains("\"holder\""), "{m}");
    assert_eq!(b.show("taker").await["state"], "defined");
    let locks = cb.lu_show("shared").await.unwrap().locks;
    assert_eq!(locks.len(), 1, "{locks:?}");
    // Another client's partition is refused for ownership.
    let (s, code, _) = post_err(
        &cb,
        "/v1/partitions",
        json!({"name": "stranger", "memory_mib": 128, "cpu_percent": 10, "lus": [{"name": "shared"}]}),
    )
    .await;
    assert_eq!((s, code.as_str()), (403, "forbidden"));
    // lu request passes over the LU in use and makes another.
    let r = request_for(&cb, "zeta", 8 * MIB, "data").await;
    assert_eq!(
        (r.outcome, r.lu.record.name.as_str()),
        (LuOutcome::Created, "zeta-data-1")
    );
    let r = request_for(&ca, "zeta", 8 * MIB, "data").await;
    assert_eq!(
        (r.outcome, r.lu.record.name.as_str()),
        (LuOutcome::Reused, "zeta-data-1")
    );
    // ClientIDs are unique across the two hosts.
    let x = a.create("pa", 10, 128, json!({})).await;
    let y = b.create("pb", 10, 128, json!({})).await;
    assert_ne!(x["client_id"], y["client_id"]);
    assert!(x["client_id"].as_u64().unwrap() > 0);
}
