//! Redundant LUs on a two-host test cluster (network namespaces, etcd,
//! one repository): a partition on host a writes a mirrored LU; a read-only
//! partition on host b is served from the copy and reads a's writes; mirror
//! commands sent to b are carried out by a, whose QEMU runs the job.

mod cluster_common;

use bulkhead_manager::api::{CreatePartition, StartOptions};
use bulkhead_manager::client::Client;
use bulkhead_manager::lu::mirror::{MirrorCommand, MirrorLu};
use bulkhead_manager::lu::types::{CreateLu, LuAttach, LuView};
use bulkhead_store::{LockMode, MirrorState};
use bulkhead_testbed::cluster;
use cluster_common::{client, exec};

const LEASE_MS: u64 = 3000;

async fn boot(c: &Client, name: &str, readonly: bool) {
    c.create(&CreatePartition {
        client: Some("acme".into()),
        lus: vec![LuAttach {
            name: "cdata".into(),
            readonly,
        }],
        ..CreatePartition::new(name, 1, 128, 50)
    })
    .await
    .unwrap();
    c.start(name, &StartOptions { wait: true })
        .await
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
}

async fn mirror_cmd(c: &Client, cmd: MirrorCommand) -> LuView {
    c.lu_mirror(&cmd)
        .await
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

async fn md5(c: &Client, p: &str) -> String {
    let (code, out) = exec(
        c,
        p,
        "dd if=/dev/vda bs=1M count=2 2>/dev/null | md5sum | cut -d' ' -f1",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    out.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_on_another_host_is_served_by_the_copy() {
    let (_guard, c) = cluster::up_for_test("mir", 2, LEASE_MS);
    let (a, b) = (client(&c, "a"), client(&c, "b"));
    a.lu_create(&CreateLu {
        name: "cdata".into(),
        client: "acme".into(),
        size_bytes: 16 << 20,
        purpose: None,
    })
    .await
    .unwrap();
    let v = mirror_cmd(
        &b,
        MirrorCommand::Mirror {
            lu: "cdata".into(),
            req: MirrorLu::default(),
        },
    )
    .await;
    assert_eq!(v.record.mirror.unwrap().state, MirrorState::Synced);

    boot(&a, "cw", false).await;
    let (code, out) = exec(
        &a,
        "cw",
        "dd if=/dev/urandom of=/dev/vda bs=1M count=2 oflag=direct conv=fsync 2>/dev/null && \
         dd if=/dev/vda bs=1M count=2 2>/dev/null | md5sum | cut -d' ' -f1",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let written = out.trim().to_string();
    let writer = a.lu_show("cdata").await.unwrap().locks;
    let a_host = writer[0].host.clone();

    // Host b's read-only partition: refused on the primary, served by the copy.
    boot(&b, "cr", true).await;
    assert_eq!(md5(&b, "cr").await, written);
    let held = b.lu_show("cdata-mirror").await.unwrap().locks;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (held[0].partition.as_str(), held[0].mode),
        ("cr", LockMode::Ro)
    );
    assert_ne!(held[0].host, a_host, "read from the other host");
    b.stop(
        "cr",
        &bulkhead_manager::api::StopOptions {
            force: true,
            timeout_secs: None,
        },
    )
    .await
    .unwrap();

    // Sent to b, carried out by a (its QEMU runs the job): unmirror, then a
    // new copy made by a's mirror job while cw writes.
    let v = mirror_cmd(&b, MirrorCommand::Unmirror { lu: "cdata".into() }).await;
    assert!(v.record.mirror.is_none());
    let v = mirror_cmd(
        &b,
        MirrorCommand::Mirror {
            lu: "cdata".into(),
            req: MirrorLu {
                copy: Some("cdata-b".into()),
            },
        },
    )
    .await;
    let m = v.record.mirror.unwrap();
    assert_eq!((m.copy.as_str(), m.state), ("cdata-b", MirrorState::Synced));
    assert_eq!(
        m.host.as_deref(),
        Some(a_host.as_str()),
        "the job runs on a"
    );
}
