//! Shared-memory regions (ivshmem-plain) plugged into real running
//! partitions: one confined (own mount namespace, unprivileged QEMU), one not,
//! so both ways the backing file reaches QEMU are exercised.

mod common;

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use bulkhead_engine::{EngineError, Partition, RegionPlug, RegionSpec};
use common::*;

const UNPLUG: Duration = Duration::from_secs(60);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

async fn guest(p: &Partition, cmd: &str) -> (i32, String, String) {
    let out = p
        .agent()
        .exec(&sh(cmd), None, CMD)
        .await
        .expect("agent exec");
    (out.code, text(&out.stdout), text(&out.stderr))
}

async fn guest_ok(p: &Partition, cmd: &str) -> String {
    let (code, out, err) = guest(p, cmd).await;
    assert_eq!(code, 0, "{cmd}: stdout {out} stderr {err}");
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Maps the region in the guest with the shell command (which waits,
/// bounded, for the hot-plug to land); returns the path to mmap.
async fn map_in_guest(p: &Partition, plug: &RegionPlug) -> String {
    guest_ok(
        p,
        &format!("bulkhead-guest region map {} --wait 60000", plug.port),
    )
    .await
}

async fn guest_read(p: &Partition, port: &str, offset: u64, len: usize) -> String {
    guest_ok(
        p,
        &format!("bulkhead-guest region read {port} --offset {offset} --len {len}"),
    )
    .await
}

async fn guest_write(p: &Partition, port: &str, offset: u64, data: &[u8]) {
    guest_ok(
        p,
        &format!(
            "bulkhead-guest region write {port} --offset {offset} --data {}",
            hex(data)
        ),
    )
    .await;
}

/// Whether QEMU still has a device with this id (query-pci, behind bridges too).
async fn in_query_pci(p: &Partition, id: &str) -> bool {
    let v = p
        .qmp()
        .execute_value("query-pci", None)
        .await
        .expect("query-pci");
    v.to_string().contains(&format!("\"qdev_id\":\"{id}\""))
}

/// The options of the mount at `path` in this (the host's) namespace.
fn mount_options(path: &std::path::Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_str().unwrap();
    info.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(4) == Some(&p)).then(|| f[5].to_string())
    })
}

fn read_file(f: &std::fs::File, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, offset).unwrap();
    b
}

/// Boots A (confined, unprivileged QEMU) and B (unconfined), plugs one
/// region file into both, and checks that it is one memory shared with the
/// host; then a read-only plug, the refusals, a forced unplug of a mapped
/// region and the guest-side unmap.
#[tokio::test(flavor = "multi_thread")]
async fn one_region_is_one_memory_across_host_and_two_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let mut sa = spec(&unique("rega"));
    sa.hotplug_slots = 2;
    let mut oa = opts(&dir, "a");
    oa.confine = true;
    oa.run_as = Some("bulkhead-qemu".into());
    let mut sb = spec(&unique("regb"));
    sb.hotplug_slots = 2;
    let ob = opts(&dir, "b");
    let (a, b) = tokio::join!(
        Partition::start(sa, oa, READY),
        Partition::start(sb, ob, READY)
    );
    let (a, b) = (a.expect("boot A (confined)"), b.expect("boot B"));

    // The host holds the memory: a file on a memory filesystem.
    let size: u64 = 16 << 20;
    let file = tempfile::Builder::new()
        .prefix("bh-region-")
        .tempfile_in("/dev/shm")
        .unwrap();
    file.as_file().set_len(size).unwrap();
    let host = file.as_file();
    let pattern = format!("HOST-PATTERN-{}", std::process::id()).into_bytes();
    host.write_all_at(&pattern, 4096).unwrap();

    let region = |id: &str, readonly: bool| RegionSpec {
        id: id.into(),
        path: file.path().to_path_buf(),
        readonly,
    };
    let rw = |id: &str| region(id, false);
    let pa = a.plug_region(rw("shm0")).await.expect("plug into A");
    assert_eq!(pa.size, size);
    assert!(in_query_pci(&a, "shm0").await);
    // The confined QEMU opened the file through its share directory, which
    // the engine mounted for it on the host.
    let mem_path = a
        .qmp()
        .execute_value(
            "qom-get",
            Some(serde_json::json!({"path": "/objects/mem-shm0", "property": "mem-path"})),
        )
        .await
        .unwrap();
    assert_eq!(mem_path, "/run/partition/shm/shm0");
    let a_share = a.options().run_dir.join("shm");
    assert!(mount_options(&a_share.join("shm0")).is_some());
    // A maps through the agent's typed request, B through the shell command.
    let info = a
        .agent()
        .region_map(&pa.port, Duration::from_secs(60))
        .await
        .expect("map in A");
    assert!(info.enabled && info.size == size, "{info:?}");
    assert_eq!(info.port.as_deref(), Some(pa.port.as_str()));
    assert!(info.path.ends_with("resource2"), "{info:?}");
    // Host -> guest.
    assert_eq!(
        guest_read(&a, &pa.port, 4096, pattern.len()).await,
        hex(&pattern)
    );
    // Guest -> host.
    let from_a = b"WRITTEN-BY-A";
    guest_write(&a, &pa.port, 8192, from_a).await;
    assert_eq!(read_file(host, 8192, from_a.len()), from_a);

    // The same file in B is the same memory: each reads what the other wrote.
    let pb = b.plug_region(rw("shm0")).await.expect("plug into B");
    map_in_guest(&b, &pb).await;
    assert_eq!(
        guest_read(&b, &pb.port, 8192, from_a.len()).await,
        hex(from_a)
    );
    let from_b = b"WRITTEN-BY-B";
    guest_write(&b, &pb.port, 12288, from_b).await;
    assert_eq!(
        guest_read(&a, &pa.port, 12288, from_b.len()).await,
        hex(from_b)
    );

    // Read-only into B's second slot: B reads the memory, its writes do not
    // reach the host's bytes.
    let ro = b
        .plug_region(region("shm1", true))
        .await
        .expect("read-only plug");
    assert_ne!(ro.port, pb.port);
    map_in_guest(&b, &ro).await;
    assert_eq!(
        guest_read(&b, &ro.port, 4096, pattern.len()).await,
        hex(&pattern)
    );
    let before = read_file(host, 4096, pattern.len());
    let (code, _, err) = guest(
        &b,
        &format!(
            "bulkhead-guest region write {} --offset 4096 --data {}",
            ro.port,
            hex(b"GUEST-WRITE-RO")
        ),
    )
    .await;
    // Measured under TCG: the store is discarded silently (QEMU treats the
    // read-only backend as ROM); the guest program is not signalled.
    assert_eq!(code, 0, "write through a read-only region: {err}");
    assert_eq!(read_file(host, 4096, pattern.len()), before);
    assert_eq!(
        guest_read(&b, &ro.port, 4096, pattern.len()).await,
        hex(&pattern),
        "the guest reads back the region, not its own discarded write"
    );
    // A later host write is seen through the read-only plug: still shared.
    host.write_all_at(b"HOST-AGAIN", 20480).unwrap();
    assert_eq!(
        guest_read(&b, &ro.port, 20480, 10).await,
        hex(b"HOST-AGAIN")
    );

    // Read-only into the confined A: its mount is read-only on the host, so
    // QEMU could not open the file for writing even if it asked.
    let ro_a = a
        .plug_region(region("shm1", true))
        .await
        .expect("read-only plug into A");
    let opts = mount_options(&a_share.join("shm1")).expect("mounted");
    assert!(opts.split(',').any(|o| o == "ro"), "{opts}");
    // A QEMU that asks for write access to it anyway is refused by the host.
    let e = a
        .qmp()
        .execute_value(
            "object-add",
            Some(serde_json::json!({
                "qom-type": "memory-backend-file", "id": "mem-evil",
                "mem-path": "/run/partition/shm/shm1", "size": size, "share": true,
            })),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Read-only file system"), "{e}");
    map_in_guest(&a, &ro_a).await;
    guest_write(&a, &ro_a.port, 4096, b"GUEST-WRITE-RO").await;
    assert_eq!(read_file(host, 4096, pattern.len()), before);
    assert_eq!(
        guest_read(&a, &ro_a.port, 20480, 10).await,
        hex(b"HOST-AGAIN")
    );
    a.unplug("shm1", UNPLUG)
        .await
        .expect("unplug read-only from A");
    assert!(mount_options(&a_share.join("shm1")).is_none());

    // The largest region (1 GiB, sparse on the host) fits the port's window.
    let big = tempfile::Builder::new()
        .prefix("bh-region-big-")
        .tempfile_in("/dev/shm")
        .unwrap();
    big.as_file().set_len(bulkhead_engine::REGION_MAX).unwrap();
    let pbig = a
        .plug_region(RegionSpec {
            id: "big".into(),
            path: big.path().to_path_buf(),
            readonly: false,
        })
        .await
        .expect("plug 1 GiB");
    assert_eq!(pbig.size, 1 << 30);
    a.agent()
        .region_map(&pbig.port, Duration::from_secs(60))
        .await
        .expect("map 1 GiB");
    guest_write(&a, &pbig.port, (1 << 30) - 8, b"LASTBYTE").await;
    assert_eq!(read_file(big.as_file(), (1 << 30) - 8, 8), b"LASTBYTE");
    a.unplug("big", UNPLUG).await.expect("unplug 1 GiB");

    // Refusals change nothing: no free slot, bad size, missing file, id in use.
    let mut odd = tempfile::Builder::new()
        .prefix("bh-region-odd-")
        .tempfile_in("/dev/shm")
        .unwrap();
    odd.as_file_mut().set_len(3 << 20).unwrap();
    let e = b.plug_region(rw("shm2")).await.unwrap_err();
    assert!(e.to_string().contains("no free hot-plug slot"), "{e}");
    b.unplug("shm1", UNPLUG).await.expect("unplug read-only");
    assert!(!in_query_pci(&b, "shm1").await);
    let gone = guest_ok(
        &b,
        &format!(
            "for i in $(seq 300); do bulkhead-guest region list | grep -q ' {} ' || break; sleep 0.1; done; bulkhead-guest region list",
            ro.port
        ),
    )
    .await;
    assert!(!gone.contains(&ro.port), "{gone}");
    let e = b
        .plug_region(RegionSpec {
            id: "shm2".into(),
            path: odd.path().to_path_buf(),
            readonly: false,
        })
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::InvalidSpec(_)), "{e}");
    assert!(e.to_string().contains("power of two"), "{e}");
    let e = b
        .plug_region(RegionSpec {
            id: "shm2".into(),
            path: dir.path().join("no-such-region"),
            readonly: false,
        })
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::MissingFile { .. }), "{e}");
    let e = b.plug_region(rw("shm0")).await.unwrap_err();
    assert!(e.to_string().contains("already in use"), "{e}");
    assert_eq!(b.hotplugged().len(), 1);
    assert!(!in_query_pci(&b, "shm2").await);

    // Forced removal: B unplugs while a guest process still maps the BAR.
    let held = guest_ok(
        &b,
        &format!(
            "bulkhead-guest region hold {} > /tmp/hold 2>&1 & \
             for i in $(seq 300); do grep -q holding /tmp/hold && break; sleep 0.1; done; cat /tmp/hold",
            pb.port
        ),
    )
    .await;
    assert!(held.starts_with("holding"), "{held}");
    let holder = held.split_whitespace().last().unwrap().to_string();
    let t = Instant::now();
    b.unplug("shm0", UNPLUG).await.expect("unplug while mapped");
    eprintln!("forced unplug of a mapped region: {:?}", t.elapsed());
    assert!(!in_query_pci(&b, "shm0").await);
    assert!(b.hotplugged().is_empty());
    // QEMU removed the device under the mapping; the guest process lives on.
    guest_ok(&b, &format!("kill -0 {holder}")).await;
    // B's stale mapping no longer reaches the memory A and the host share.
    host.write_all_at(b"AFTER-UNPLUG", 24576).unwrap();
    let (code, out, _) = guest(
        &b,
        &format!(
            "bulkhead-guest region read {} --offset 24576 --len 12",
            pb.port
        ),
    )
    .await;
    assert_ne!((code, out.as_str()), (0, hex(b"AFTER-UNPLUG").as_str()));
    assert_eq!(
        guest_read(&a, &pa.port, 24576, 12).await,
        hex(b"AFTER-UNPLUG")
    );

    // A guest that does not eject (here: paused) keeps the device; the
    // unplug says so and releases nothing; once the guest lets go, unplugging
    // again finishes the job.
    let pb = b.plug_region(rw("shm0")).await.expect("plug into B again");
    map_in_guest(&b, &pb).await;
    b.pause().await.unwrap();
    let e = b.unplug("shm0", Duration::from_secs(3)).await.unwrap_err();
    assert!(e.to_string().contains("did not release"), "{e}");
    assert!(in_query_pci(&b, "shm0").await);
    assert_eq!(b.hotplugged().len(), 1);
    // Resumed, the guest acts on the pending eject by itself.
    let mut events = b.qmp().events();
    b.resume().await.unwrap();
    tokio::time::timeout(UNPLUG, async {
        loop {
            let ev = events.recv().await.expect("QMP events");
            if ev.name == "DEVICE_DELETED" && ev.data["device"] == "shm0" {
                break;
            }
        }
    })
    .await
    .expect("DEVICE_DELETED after resume");
    b.unplug("shm0", UNPLUG).await.expect("unplug after resume");
    assert!(!in_query_pci(&b, "shm0").await);
    assert!(b.hotplugged().is_empty());
    let e = b
        .qmp()
        .execute_value(
            "qom-get",
            Some(serde_json::json!({"path": "/objects/mem-shm0", "property": "size"})),
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.class(),
        Some("DeviceNotFound"),
        "backend left behind: {e}"
    );

    // Guest-side unmap in A: reports the process still mapping it; after it
    // no access in the guest reaches the region.
    guest_ok(
        &a,
        &format!(
            "bulkhead-guest region hold {} > /tmp/hold 2>&1 & \
             for i in $(seq 300); do grep -q holding /tmp/hold && break; sleep 0.1; done",
            pa.port
        ),
    )
    .await;
    let un = a.agent().region_unmap(&pa.port, CMD).await.expect("unmap");
    assert_eq!(un.holders.len(), 1, "{un:?}");
    let listed = a.agent().region_list().await.unwrap();
    assert!(
        listed.iter().any(|r| r.addr == un.addr && !r.enabled),
        "{listed:?}"
    );
    let (code, _, err) = guest(
        &a,
        &format!("bulkhead-guest region read {} --offset 0 --len 1", pa.port),
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("not mapped"), "{err}");
    a.unplug("shm0", UNPLUG).await.expect("unplug from A");
    assert!(!in_query_pci(&a, "shm0").await);
    // The confined QEMU saw the file through a mount; it is gone with the plug.
    assert!(!a.options().run_dir.join("shm/shm0").exists());
    assert_eq!(
        read_file(host, 12288, from_b.len()),
        from_b,
        "the memory outlives its plugs"
    );
    a.kill().await.unwrap();
    b.kill().await.unwrap();
}
