//! Redundant LUs (issue 12 item 5) through two real bulkheadd daemons (two
//! host ids on one store and one repository) and real partitions: every
//! guest write reaches the copy; a read-only attach from the other host
//! while the primary is written is served from the copy, for the LU's own
//! client only; promotion after a move makes the copy's data the LU's.
//! Hostile input: bad names, a copy onto another client's LU, a mirror of a
//! mirror, writing or deleting one side.

mod common;

use bulkhead_manager::api::ResumeOptions;
use bulkhead_manager::client::{Client, ClientError};
use bulkhead_manager::lu::mirror::{MirrorCommand, MirrorLu, PromoteLu};
use bulkhead_manager::lu::types::*;
use bulkhead_manager::remote_restart::api::StartRemoteRestart;
use bulkhead_store::{LockMode, LuMirror, MirrorState, PartitionState, SqliteStore, Store};
use common::Daemon;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;

use common::on_shared_store as daemon;

fn api(e: ClientError) -> (u16, String) {
    match e {
        ClientError::Api {
            status, message, ..
        } => (status, message),
        other => panic!("not an API error: {other}"),
    }
}

async fn mirror(c: &Client, lu: &str, copy: Option<&str>) -> Result<LuView, ClientError> {
    c.lu_mirror(&MirrorCommand::Mirror {
        lu: lu.into(),
        req: MirrorLu {
            copy: copy.map(str::to_string),
        },
    })
    .await
}

async fn promote(c: &Client, lu: &str) -> Result<LuView, ClientError> {
    c.lu_mirror(&MirrorCommand::Promote {
        lu: lu.into(),
        req: PromoteLu::default(),
    })
    .await
}

fn qemu(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How the test opens an LU file: without QEMU's image lock, since a
/// running mirror job keeps the copy's "consistent read" to itself.
fn unlocked(file: &Path) -> String {
    let driver = match file.extension().and_then(|e| e.to_str()) {
        Some("raw") => "raw",
        _ => "qcow2",
    };
    format!(
        "driver={driver},file.driver=file,file.locking=off,file.filename={}",
        file.display()
    )
}

/// `qemu-img compare` of two LU files' guest-visible data: true when equal.
fn same_data(a: &Path, b: &Path) -> bool {
    let out = Command::new("qemu-img")
        .args(["compare", "--image-opts", &unlocked(a), &unlocked(b)])
        .output()
        .unwrap();
    match out.status.code() {
        Some(0) => true,
        Some(1) => {
            eprintln!("qemu-img compare: {}", String::from_utf8_lossy(&out.stdout));
            false
        }
        _ => panic!("qemu-img compare: {out:?}"),
    }
}

/// md5 of the first `mib` MiB of an LU file's guest-visible data.
fn md5_of(file: &Path, mib: u64) -> String {
    let raw = file.with_extension("check");
    let _ = std::fs::remove_file(&raw);
    qemu(&[
        "qemu-img",
        "convert",
        "--image-opts",
        &unlocked(file),
        "-O",
        "raw",
        &raw.to_string_lossy(),
    ]);
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c {} {:?} | md5sum | cut -d' ' -f1",
            mib * MIB,
            raw
        ))
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&raw);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// md5 of the first 4 MiB of the guest's /dev/vda.
async fn guest_md5(d: &Daemon, p: &str) -> String {
    let r = d
        .exec(
            p,
            "dd if=/dev/vda bs=1M count=4 2>/dev/null | md5sum | cut -d' ' -f1",
        )
        .await;
    assert_eq!(r["code"], 0, "{r}");
    r["stdout"].as_str().unwrap().trim().to_string()
}

fn events(rec: &Value) -> String {
    rec["events"].to_string()
}

fn state(v: &LuView) -> MirrorState {
    v.record.mirror.as_ref().expect("mirrored").state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_writes_redirected_reads_and_promotion_on_a_move() {
    let t = tempfile::tempdir().unwrap();
    let (store, repo) = (t.path().join("state.db"), t.path().join("repo"));
    let a = daemon(&store, &repo, "mirror-host-a");
    let b = daemon(&store, &repo, "mirror-host-b");
    let (ca, cb) = (a.client(), b.client());
    let lu_file = |lu: &str, client: &str| repo.join(format!("clients/{client}/lu/{lu}.qcow2"));

    for (name, client) in [("data", "acme"), ("theirs", "other")] {
        ca.lu_create(&CreateLu {
            name: name.into(),
            client: client.into(),
            size_bytes: 32 * MIB,
            purpose: None,
        })
        .await
        .unwrap();
    }
    // Something in the primary before the copy is made offline.
    qemu(&[
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -P 0x5a 0 1M",
        &lu_file("data", "acme").to_string_lossy(),
    ]);

    // Hostile input: nothing changes.
    let (s, m) = api(mirror(&ca, "data", Some("Bad/Name")).await.unwrap_err());
    assert_eq!(s, 400, "{m}");
    let (s, m) = api(mirror(&ca, "data", Some("theirs")).await.unwrap_err());
    assert_eq!(s, 409, "{m}");
    assert!(m.contains("theirs") && m.contains("already exists"), "{m}");
    let theirs = ca.lu_show("theirs").await.unwrap();
    assert_eq!(
        (
            theirs.record.mirror_of.as_deref(),
            theirs.record.client.as_str()
        ),
        (None, "other")
    );
    assert!(ca.lu_show("data").await.unwrap().record.mirror.is_none());
    assert_eq!(api(mirror(&ca, "nope", None).await.unwrap_err()).0, 404);
    assert!(matches!(
        mirror(&ca, "../x", None).await,
        Err(ClientError::Request(_))
    ));
    // An LU larger than one file of the repository's file system may be
    // (ext4: 16 TiB) cannot have a raw copy: a 409 naming the limit, not a
    // server error, and nothing left behind.
    ca.lu_create(&CreateLu {
        name: "huge".into(),
        client: "acme".into(),
        size_bytes: 64 << 40,
        purpose: None,
    })
    .await
    .unwrap();
    let probe = std::fs::File::create(t.path().join("probe")).unwrap();
    let fits = probe.set_len(64 << 40).is_ok();
    drop(probe);
    let _ = std::fs::remove_file(t.path().join("probe"));
    match mirror(&ca, "huge", None).await {
        Err(e) if !fits => {
            let (s, m) = api(e);
            assert!(s == 409 && m.contains("file system"), "{s} {m}");
            assert!(ca.lu_show("huge").await.unwrap().record.mirror.is_none());
            assert_eq!(api(ca.lu_show("huge-mirror").await.unwrap_err()).0, 404);
            assert!(!repo.join("clients/acme/lu/huge-mirror.raw").exists());
        }
        r => {
            assert!(fits, "{r:?}");
            assert_eq!(state(&r.unwrap()), MirrorState::Synced);
            ca.lu_mirror(&MirrorCommand::Unmirror { lu: "huge".into() })
                .await
                .unwrap();
        }
    }
    ca.lu_delete("huge").await.unwrap();

    // Offline: the copy is made by qemu-img and equals the primary.
    let v = mirror(&ca, "data", None).await.unwrap();
    let m = v.record.mirror.clone().unwrap();
    assert_eq!(
        (m.copy.as_str(), m.state),
        ("data-mirror", MirrorState::Synced)
    );
    let copy_file = repo.join("clients/acme/lu/data-mirror.raw");
    assert!(same_data(&lu_file("data", "acme"), &copy_file));
    let copy = ca.lu_show("data-mirror").await.unwrap();
    assert_eq!(copy.record.mirror_of.as_deref(), Some("data"));
    assert_eq!(copy.virtual_bytes, 32 * MIB);
    // A mirror of a mirror, a second mirror, deleting either side: refused.
    let (s, m) = api(mirror(&ca, "data-mirror", None).await.unwrap_err());
    assert!(s == 409 && m.contains("redundant copy"), "{m}");
    assert_eq!(
        api(mirror(&ca, "data", Some("again")).await.unwrap_err()).0,
        409
    );
    assert!(ca.lu_show("again").await.is_err(), "no copy record left");
    for lu in ["data", "data-mirror"] {
        let (s, m) = api(ca.lu_delete(lu).await.unwrap_err());
        assert!(s == 409 && m.contains("unmirror"), "{lu}: {m}");
    }
    // The copy is never attached writable.
    b.create(
        "wcopy",
        10,
        128,
        json!({"client": "acme", "lus": [{"name": "data-mirror"}]}),
    )
    .await;
    let (s, m) = api(cb
        .post("/v1/partitions/wcopy/start", &json!({}))
        .await
        .unwrap_err());
    assert!(s == 409 && m.contains("redundant copy"), "{m}");
    assert!(cb.lu_show("data-mirror").await.unwrap().locks.is_empty());

    // Attached writable on host a: the start waits for the job to be in step.
    a.create(
        "w1",
        50,
        128,
        json!({"client": "acme", "lus": [{"name": "data"}]}),
    )
    .await;
    a.start_wait("w1").await;
    let v = ca.lu_show("data").await.unwrap();
    assert_eq!(state(&v), MirrorState::Synced, "{v:?}");
    assert_eq!(
        v.record.mirror.as_ref().unwrap().host.as_deref(),
        Some("mirror-host-a")
    );
    // Promotion is refused while a live host writes the LU.
    let (s, m) = api(promote(&ca, "data").await.unwrap_err());
    assert!(s == 409 && m.contains("w1"), "{m}");

    // Every guest write reaches both files before it completes.
    let r = a
        .exec(
            "w1",
            "dd if=/dev/urandom of=/tmp/p bs=1M count=4 2>/dev/null && \
             dd if=/tmp/p of=/dev/vda bs=1M oflag=direct conv=fsync 2>/dev/null && sync && \
             md5sum /tmp/p | cut -d' ' -f1",
        )
        .await;
    assert_eq!(r["code"], 0, "{r}");
    let written = r["stdout"].as_str().unwrap().trim().to_string();
    assert_eq!(
        md5_of(&copy_file, 4),
        written,
        "the copy holds the guest's writes"
    );
    assert!(same_data(&lu_file("data", "acme"), &copy_file));

    // Host b reads the LU while w1 writes it: served from the copy.
    b.create(
        "r2",
        50,
        128,
        json!({"client": "acme", "lus": [{"name": "data", "readonly": true}]}),
    )
    .await;
    b.start_wait("r2").await;
    assert_eq!(guest_md5(&b, "r2").await, written);
    let ev = events(&b.show("r2").await);
    assert!(ev.contains("redundant copy data-mirror"), "{ev}");
    let held = cb.lu_show("data-mirror").await.unwrap().locks;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (
            held[0].partition.as_str(),
            held[0].host.as_str(),
            held[0].mode
        ),
        ("r2", "mirror-host-b", LockMode::Ro)
    );
    // Another client is refused as for any LU of a client not its own.
    let (s, m) = api(cb
        .post(
            "/v1/partitions",
            &json!({"name": "intruder", "memory_mib": 128, "cpu_percent": 10, "client": "other",
                    "lus": [{"name": "data", "readonly": true}]}),
        )
        .await
        .unwrap_err());
    assert_eq!(s, 403, "{m}");
    assert!(m.contains("belongs to client \"acme\""), "{m}");
    assert!(cb.lu_show("data").await.unwrap().locks.len() == 1);

    // A move: both stop, the primary's file is lost (zeroed here), the copy
    // is promoted (a new file of its data) and the partition starts on host
    // b from it.
    for (d, c, p) in [(&b, &cb, "r2"), (&a, &ca, "w1")] {
        c.post(&format!("/v1/partitions/{p}/stop"), &json!({"force": true}))
            .await
            .unwrap();
        d.wait_state(p, &["stopped"], Duration::from_secs(60)).await;
    }
    assert_eq!(
        state(&ca.lu_show("data").await.unwrap()),
        MirrorState::Synced
    );
    qemu(&[
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -z 0 4M",
        &lu_file("data", "acme").to_string_lossy(),
    ]);
    let v = promote(&cb, "data").await.unwrap();
    assert!(
        v.record.path.starts_with("clients/acme/lu/data.promoted-"),
        "{v:?}"
    );
    assert_eq!(state(&v), MirrorState::Synced);
    assert!(
        !lu_file("data", "acme").exists(),
        "the lost file is dropped"
    );
    let promoted = repo.join(&v.record.path);
    assert_eq!(md5_of(&promoted, 4), written);
    b.create(
        "w3",
        50,
        128,
        json!({"client": "acme", "lus": [{"name": "data"}]}),
    )
    .await;
    b.start_wait("w3").await;
    assert_eq!(
        guest_md5(&b, "w3").await,
        written,
        "the promoted LU holds the data"
    );
    // w3's own mirror job keeps the copy in step with its writes.
    let v = cb.lu_show("data").await.unwrap();
    assert_eq!(state(&v), MirrorState::Synced, "{v:?}");
    let r = b
        .exec(
            "w3",
            "dd if=/dev/urandom of=/dev/vda bs=1M count=2 oflag=direct conv=fsync 2>/dev/null && sync",
        )
        .await;
    assert_eq!(r["code"], 0, "{r}");
    assert!(same_data(&promoted, &copy_file));

    // Unmirror on host b, whose QEMU runs the job: the copy goes.
    let v = cb
        .lu_mirror(&MirrorCommand::Unmirror { lu: "data".into() })
        .await
        .unwrap();
    assert!(v.record.mirror.is_none(), "{v:?}");
    assert_eq!(api(cb.lu_show("data-mirror").await.unwrap_err()).0, 404);
    assert!(!copy_file.exists());
    let r = b.exec("w3", "echo still-writing > /dev/vda && sync").await;
    assert_eq!(r["code"], 0, "{r}");
}

/// A copy that cannot be made refuses the writable attach, with the reason
/// in the error and in the mirror's state; nothing stays locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_whose_copy_cannot_be_made_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (store, repo) = (t.path().join("state.db"), t.path().join("repo"));
    let a = daemon(&store, &repo, "mirror-host-c");
    let ca = a.client();
    ca.lu_create(&CreateLu {
        name: "vol".into(),
        client: "acme".into(),
        size_bytes: 16 * MIB,
        purpose: None,
    })
    .await
    .unwrap();
    mirror(&ca, "vol", Some("vol-copy")).await.unwrap();
    // The copy's file replaced by a symlink out of the client's area.
    let copy = repo.join("clients/acme/lu/vol-copy.raw");
    let outside = t.path().join("outside.raw");
    std::fs::write(&outside, vec![0u8; 16 << 20]).unwrap();
    std::fs::remove_file(&copy).unwrap();
    std::os::unix::fs::symlink(&outside, &copy).unwrap();
    a.create(
        "w",
        50,
        128,
        json!({"client": "acme", "lus": [{"name": "vol"}]}),
    )
    .await;
    let e = ca
        .post("/v1/partitions/w/start", &json!({"wait": true}))
        .await
        .unwrap_err();
    let (s, m) = api(e);
    assert!(
        s >= 400 && m.contains("vol-copy") && m.contains("refused"),
        "{s} {m}"
    );
    let v = ca.lu_show("vol").await.unwrap();
    assert_eq!(state(&v), MirrorState::Broken, "{v:?}");
    assert!(v.locks.is_empty(), "{v:?}");
    a.wait_state("w", &["failed"], Duration::from_secs(30))
        .await;
}

/// Migration by promotion (`partition resume --promote-mirror` on another
/// host): a copy not in step refuses it with nothing changed; in step, the
/// copy's data becomes the LU's new file before the restore, the guest sees
/// its writes, and the target's mirror job keeps the copy in step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_elsewhere_promotes_the_copy() {
    let t = tempfile::tempdir().unwrap();
    let (store, repo) = (t.path().join("state.db"), t.path().join("repo"));
    let a = daemon(&store, &repo, "mirror-host-d");
    let b = daemon(&store, &repo, "mirror-host-e");
    let (ca, cb) = (a.client(), b.client());
    ca.lu_create(&CreateLu {
        name: "mv".into(),
        client: "acme".into(),
        size_bytes: 16 * MIB,
        purpose: None,
    })
    .await
    .unwrap();
    mirror(&ca, "mv", Some("mv-copy")).await.unwrap();
    let copy_file = repo.join("clients/acme/lu/mv-copy.raw");
    a.create(
        "wm",
        50,
        128,
        json!({"client": "acme", "lus": [{"name": "mv"}]}),
    )
    .await;
    a.start_wait("wm").await;
    let r = a
        .exec(
            "wm",
            "dd if=/dev/urandom of=/dev/vda bs=1M count=4 oflag=direct conv=fsync 2>/dev/null && sync && \
             dd if=/dev/vda bs=1M count=4 2>/dev/null | md5sum | cut -d' ' -f1",
        )
        .await;
    assert_eq!(r["code"], 0, "{r}");
    let written = r["stdout"].as_str().unwrap().trim().to_string();
    ca.hibernate("wm").await.unwrap();
    let before = ca.lu_show("mv").await.unwrap();
    assert_eq!(state(&before), MirrorState::Synced, "{before:?}");
    let resume = |promote_mirror| ResumeOptions {
        promote_mirror,
        ..Default::default()
    };

    // A copy left behind: the record of a mirror job that ended before it
    // was in step (as a daemon killed mid-sync leaves it).
    let side = SqliteStore::open(&store, "mirror-test").unwrap();
    let mut rec = side.lu_get("mv").await.unwrap().unwrap();
    let in_step = rec.mirror.clone().unwrap();
    rec.mirror = Some(LuMirror {
        state: MirrorState::Syncing,
        host: Some("mirror-host-d".into()),
        ..in_step.clone()
    });
    side.lu_update(&rec).await.unwrap();
    let (s, m) = api(cb.resume_with("wm", &resume(true)).await.unwrap_err());
    assert_eq!(s, 409, "{m}");
    assert!(m.contains("mv-copy") && m.contains("stale"), "{m}");
    let p = cb.show("wm").await.unwrap();
    assert_eq!(p.record.state, PartitionState::Hibernated, "{p:?}");
    assert_eq!(p.record.host, "mirror-host-d", "not moved");
    let ev = events(&b.show("wm").await);
    assert!(!ev.contains("mirror-host-e"), "not even claimed: {ev}");
    // The same as a remote restart (carried out by b): no operation recorded.
    let rr = StartRemoteRestart {
        partition: "wm".into(),
        target: "mirror-host-e".into(),
        token: Some("op-promote".into()),
        detail: 0,
        capabilities: 0,
        timeout_secs: None,
        promote_mirror: true,
    };
    let (s, m) = api(cb.remote_restart_start(&rr).await.unwrap_err());
    assert!(s == 409 && m.contains("stale"), "{s} {m}");
    assert!(cb.remote_restart_list().await.unwrap().is_empty());
    let after = ca.lu_show("mv").await.unwrap();
    assert_eq!(after.record.path, before.record.path, "nothing promoted");
    assert!(after.locks.is_empty(), "{after:?}");
    // The copy in step again (as recorded before): the same resume goes on.
    let mut rec = side.lu_get("mv").await.unwrap().unwrap();
    rec.mirror = Some(in_step);
    side.lu_update(&rec).await.unwrap();

    let p = cb.resume_with("wm", &resume(true)).await.unwrap();
    assert_eq!(p.host, "mirror-host-e");
    let v = cb.lu_show("mv").await.unwrap();
    assert!(
        v.record.path.starts_with("clients/acme/lu/mv.promoted-"),
        "{v:?}"
    );
    assert!(!repo.join(&before.record.path).exists(), "old file dropped");
    assert_eq!(
        p.disks[0].path,
        repo.join(&v.record.path).to_string_lossy(),
        "the partition names the promoted file"
    );
    let ev = events(&b.show("wm").await);
    assert!(
        ev.contains("disk0: LU mv promoted from its copy mv-copy"),
        "{ev}"
    );
    assert_eq!(guest_md5(&b, "wm").await, written);
    // The target's mirror job: in step, and new writes reach the copy.
    let m = v.record.mirror.clone().unwrap();
    assert_eq!(
        (m.state, m.host.as_deref()),
        (MirrorState::Synced, Some("mirror-host-e")),
        "{v:?}"
    );
    let r = b
        .exec(
            "wm",
            "dd if=/dev/urandom of=/dev/vda bs=1M count=2 oflag=direct conv=fsync 2>/dev/null && sync",
        )
        .await;
    assert_eq!(r["code"], 0, "{r}");
    assert!(same_data(&repo.join(&v.record.path), &copy_file));
}
