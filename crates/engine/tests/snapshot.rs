//! Save and restore with real partitions (TCG): a partition saved while a
//! process counts in its memory comes back in a new QEMU and counts on; bad
//! images are refused with nothing left running; an interrupted save leaves
//! no image; clones of one template are separate machines.

mod common;

use std::path::Path;

use bulkhead_engine::snapshot::{self, MANIFEST_FILE, STATE_FILE};
use bulkhead_engine::{
    AdapterSpec, CloneIdentity, DiskFormat, DiskSpec, EngineError, ExitReason, MemoryFile, NetSpec,
    Partition, SaveOptions, SaveProgress,
};
use common::*;
use serde_json::json;

/// Whether a QEMU of the partition `name` runs (any process, any handle).
fn qemu_running(name: &str) -> bool {
    let needle = format!("guest={name},");
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(&needle))
            .unwrap_or(false)
    })
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits in the guest (bounded) until /tmp/count exceeds `n`; returns it.
async fn count_above(p: &Partition, n: u64) -> u64 {
    exec_ok(
        p,
        &format!("for i in $(seq 600); do [ $(cat /tmp/count) -gt {n} ] && break; sleep 0.05; done; cat /tmp/count"),
    )
    .await
    .parse()
    .unwrap()
}

/// One boot: save with progress; truncated, corrupted and mismatched images
/// refused with nothing running; a confined restore with memory intact and
/// the counter going on from where it stood; then a save killed midway
/// leaves no image.
#[tokio::test(flavor = "multi_thread")]
async fn save_restore_counter_refusals_and_interrupted_save() {
    let dir = tempfile::tempdir().unwrap();
    let name = unique("save");
    let p = Partition::start(spec(&name), opts(&dir, "a"), READY)
        .await
        .expect("boot");
    let secret = format!("only-in-memory-{}", std::process::id());
    exec_ok(&p, &format!("echo {secret} > /tmp/secret")).await;
    // An hour slow: the restore must set the clock from the host's.
    exec_ok(&p, "date -u -s @$(( $(date +%s) - 3600 )) >/dev/null").await;
    // The counter's value lives in a shell variable; the file only shows it.
    exec_ok(
        &p,
        "(i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done) >/dev/null 2>&1 </dev/null & echo $! > /tmp/counter.pid",
    )
    .await;
    let pid = exec_ok(&p, "cat /tmp/counter.pid").await;
    let before = count_above(&p, 20).await;

    let img = dir.path().join("img");
    let (tx, rx) = tokio::sync::watch::channel(SaveProgress::default());
    let m = p
        .save(
            &img,
            SaveOptions {
                progress: Some(tx),
                ..SaveOptions::default()
            },
        )
        .await
        .expect("save");
    let last = *rx.borrow();
    assert!(last.total >= 256 << 20, "guest RAM and ROMs: {last:?}");
    assert!(last.transferred > 0, "{last:?}");
    assert_eq!(p.qmp().query_status().await.unwrap().status, "postmigrate");
    assert_eq!(files_in(&img), vec![MANIFEST_FILE, STATE_FILE]);
    let state_len = std::fs::metadata(img.join(STATE_FILE)).unwrap().len();
    assert_eq!(m.state.len, state_len);
    assert_eq!((m.qemu.major, m.spec.memory_mib), (7, 256));
    assert_eq!(snapshot::read_manifest(&img).unwrap(), m);
    p.kill().await.unwrap();
    drop(p);
    assert!(!qemu_running(&name));

    let refused = |e: EngineError, what: &str| {
        let s = e.to_string();
        assert!(matches!(e, EngineError::Snapshot(_)), "{s}");
        assert!(s.contains(what), "{what}: {s}");
        assert!(!qemu_running(&name), "a refused restore left QEMU running");
    };
    // Truncated: the manifest with the first MiB of the state.
    let short = dir.path().join("short");
    std::fs::create_dir(&short).unwrap();
    std::fs::hard_link(img.join(MANIFEST_FILE), short.join(MANIFEST_FILE)).unwrap();
    let head = std::fs::read(img.join(STATE_FILE)).unwrap()[..1 << 20].to_vec();
    std::fs::write(short.join(STATE_FILE), head).unwrap();
    let e = Partition::restore(&short, opts(&dir, "r1"), READY)
        .await
        .unwrap_err();
    refused(e, "truncated");
    // Corrupted: one byte in the middle flipped, then flipped back.
    let flip = |at: u64| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(img.join(STATE_FILE))
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x5a], at).unwrap();
    };
    flip(state_len / 2);
    let e = Partition::restore(&img, opts(&dir, "r2"), READY)
        .await
        .unwrap_err();
    refused(e, "corrupted");
    flip(state_len / 2);
    // A manifest that does not describe the saved machine: QEMU itself
    // refuses the state, in its own words.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::hard_link(img.join(STATE_FILE), other.join(STATE_FILE)).unwrap();
    let mut bad = m.clone();
    bad.spec.memory_mib = 512;
    std::fs::write(other.join(MANIFEST_FILE), serde_json::to_vec(&bad).unwrap()).unwrap();
    let e = Partition::restore(&other, opts(&dir, "r3"), READY)
        .await
        .unwrap_err();
    refused(e, "mismatch");
    std::fs::remove_dir_all(&other).unwrap();
    std::fs::remove_dir_all(&short).unwrap();

    // The real restore, confined: the state reaches QEMU as a descriptor.
    let mut o = opts(&dir, "restored");
    o.confine = true;
    o.run_as = Some("bulkhead-qemu".into());
    let (q, _) = Partition::restore(&img, o, READY).await.expect("restore");
    assert_eq!(exec_ok(&q, "cat /tmp/secret").await, secret);
    let after = exec_ok(&q, "cat /tmp/count").await.parse::<u64>().unwrap();
    assert!(after >= before, "counter restarted: {after} < {before}");
    assert_eq!(exec_ok(&q, "cat /tmp/counter.pid").await, pid);
    assert!(exec_ok(&q, &format!("kill -0 {pid} && echo alive")).await == "alive");
    count_above(&q, after).await;
    // The guest clock was set from the host's after the restore.
    let guest: i64 = exec_ok(&q, "date +%s").await.parse().unwrap();
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((guest - host).abs() <= 5, "guest {guest} host {host}");
    std::fs::remove_dir_all(&img).unwrap();

    // Killed mid-save (a slow save, so it is surely midway): no image.
    let img2 = dir.path().join("img2");
    let (tx, mut rx) = tokio::sync::watch::channel(SaveProgress::default());
    let save = q.save(
        &img2,
        SaveOptions {
            max_bandwidth: 4 << 20,
            progress: Some(tx),
            ..SaveOptions::default()
        },
    );
    let kill = async {
        rx.wait_for(|p| p.transferred > 0).await.unwrap();
        q.kill().await.unwrap()
    };
    let (saved, _) = tokio::join!(save, kill);
    let e = saved.unwrap_err().to_string();
    assert!(e.contains("QEMU ended"), "{e}");
    assert!(files_in(&img2).is_empty(), "{:?}", files_in(&img2));
}

/// A q35 partition with a hot-plugged disk: a shared-memory device blocks
/// the save (refused, nothing written, the guest runs on); a save cancelled
/// midway is undone; once the device is unplugged the save works and the
/// restore re-plugs the disk.
#[tokio::test(flavor = "multi_thread")]
async fn hotplugged_disk_comes_back_and_shared_memory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(&unique("hpsave"));
    s.hotplug_slots = 2;
    let p = Partition::start(s, opts(&dir, "a"), READY)
        .await
        .expect("boot q35");
    let disk = dir.path().join("hot.raw");
    let mut data = b"SAVED-HOTPLUG-MARKER".to_vec();
    data.resize(1 << 20, 0);
    std::fs::write(&disk, &data).unwrap();
    p.hotplug_disk(DiskSpec {
        id: "hot0".into(),
        path: disk,
        format: DiskFormat::Raw,
        readonly: true,
        backing: None,
        shared_read: false,
    })
    .await
    .unwrap();
    exec_ok(
        &p,
        "for i in $(seq 300); do [ -b /dev/vda ] && break; sleep 0.1; done; [ -b /dev/vda ]",
    )
    .await;

    // A grant's ivshmem, plugged by hand as the grant code does.
    let shm = dir.path().join("shm");
    std::fs::File::create(&shm)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    p.qmp()
        .execute_value(
            "object-add",
            Some(json!({"qom-type": "memory-backend-file", "id": "shm0",
                "mem-path": shm, "size": 4 << 20, "share": true})),
        )
        .await
        .unwrap();
    p.qmp()
        .device_add(
            json!({"driver": "ivshmem-plain", "memdev": "shm0", "bus": "hp1", "id": "ivs0"}),
        )
        .await
        .unwrap();
    let img = dir.path().join("img");
    let e = p.save(&img, SaveOptions::default()).await.unwrap_err();
    assert!(e.to_string().contains("shared memory"), "{e}");
    assert!(files_in(&img).is_empty(), "{:?}", files_in(&img));
    assert_eq!(exec_ok(&p, "echo running").await, "running");
    let mut ev = p.qmp().events();
    p.qmp().device_del("ivs0").await.unwrap();
    bulkhead_qmp::wait_event(&mut ev, CMD, "ivshmem unplugged", |e| {
        e.name == "DEVICE_DELETED" && e.data["device"] == "ivs0"
    })
    .await
    .unwrap();
    p.qmp()
        .execute_value("object-del", Some(json!({"id": "shm0"})))
        .await
        .unwrap();

    // A save that fails midway (cancelled here) is undone: no image, and
    // the guest runs on.
    let (tx, mut rx) = tokio::sync::watch::channel(SaveProgress::default());
    let slow = SaveOptions {
        max_bandwidth: 4 << 20,
        progress: Some(tx),
        ..SaveOptions::default()
    };
    let cancel = async {
        rx.wait_for(|p| p.transferred > 0).await.unwrap();
        p.qmp().migrate_cancel().await.unwrap();
    };
    let (saved, ()) = tokio::join!(p.save(&img, slow), cancel);
    let e = saved.unwrap_err().to_string();
    assert!(e.contains("cancelled"), "{e}");
    assert!(files_in(&img).is_empty(), "{:?}", files_in(&img));
    assert_eq!(p.qmp().query_status().await.unwrap().status, "running");
    assert_eq!(exec_ok(&p, "echo still-running").await, "still-running");

    let m = p.save(&img, SaveOptions::default()).await.expect("save");
    assert_eq!(m.hotplugged.len(), 1);
    assert_eq!(m.hotplugged[0].adapter.id(), "hot0");
    p.kill().await.unwrap();
    drop(p);
    let (q, _) = Partition::restore(&img, opts(&dir, "b"), READY)
        .await
        .expect("restore");
    assert_eq!(q.hotplugged().len(), 1);
    assert_eq!(
        exec_ok(&q, "head -c 20 /dev/vda").await,
        "SAVED-HOTPLUG-MARKER"
    );
    // A restored partition is a partition like any other: it stops cleanly.
    let e = q.stop(CMD).await.unwrap();
    assert_eq!(e.reason, ExitReason::Poweroff, "{e:?}");
}

/// A template with its RAM in a shared file, saved without its RAM; two
/// clones map that file copy-on-write: both answer with the template's
/// memory, have their own hostname, MAC, address and generation id, reach
/// each other, and what one writes the other does not see.
#[tokio::test(flavor = "multi_thread")]
async fn clones_from_one_template_are_separate_machines() {
    let ns = NetNs::new("clone");
    let dir = tempfile::tempdir().unwrap();
    // RAM files on /dev/shm, as the measurements did: no disk writeback.
    let mem = Path::new("/dev/shm").join(format!("bh-template-{}", std::process::id()));
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _rm = Rm(mem.clone());
    let name = unique("tpl");
    let mut s = spec(&name);
    s.vmgenid = true;
    s.memory_file = Some(MemoryFile {
        path: mem.clone(),
        share: true,
    });
    s.adapters.push(AdapterSpec::Net(NetSpec {
        id: "n0".into(),
        bridge: ns.bridge.clone(),
        mac: None,
        tap: None,
        ip: Some("10.201.0.2/24".into()),
        gateway: None,
    }));
    let mut o = opts(&dir, "tpl");
    o.netns = Some(ns.name.clone());
    let t = Partition::start(s, o, READY).await.expect("template boot");
    exec_ok(&t, "echo from-the-template > /tmp/origin").await;
    let tpl_guid = guid(&t).await;
    let img = dir.path().join("tpl-img");
    let m = t.save(&img, SaveOptions::default()).await.expect("save");
    assert!(m.ram_in_memory_file.is_some());
    // Device state only: far below the guest's RAM in use.
    assert!(m.state.len < 4 << 20, "state {} bytes", m.state.len);
    t.kill().await.unwrap();
    drop(t);

    let clone = |n: &str, ip: &str| {
        let mut o = opts(&dir, n);
        o.netns = Some(ns.name.clone());
        let id = CloneIdentity {
            name: unique(n),
            ips: vec![("n0".into(), ip.into())],
        };
        (id, o)
    };
    let (ia, mut oa) = clone("c1", "10.201.0.11/24");
    // One clone confined: the memory file must be visible in its jail.
    oa.confine = true;
    oa.run_as = Some("bulkhead-qemu".into());
    let (ib, ob) = clone("c2", "10.201.0.12/24");
    let (a, b) = tokio::join!(
        Partition::restore_clone(&img, &ia, oa, READY),
        Partition::restore_clone(&img, &ib, ob, READY)
    );
    let (a, b) = (a.expect("clone 1"), b.expect("clone 2"));
    let status = std::fs::read_to_string(format!("/proc/{}/status", a.pid())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(!uid.split_whitespace().skip(1).any(|u| u == "0"), "{uid}");
    for (p, id) in [(&a, &ia), (&b, &ib)] {
        assert_eq!(exec_ok(p, "cat /tmp/origin").await, "from-the-template");
        assert_eq!(exec_ok(p, "hostname").await, id.name);
        assert_eq!(
            exec_ok(p, "cat /sys/class/net/eth0/address").await,
            // The clone's own address gives its MAC (one naming scheme).
            bulkhead_hostnet::names::mac_for_addr(
                id.ips[0].1.split('/').next().unwrap().parse().unwrap()
            )
        );
    }
    let (ga, gb) = (guid(&a).await, guid(&b).await);
    assert!(
        ga != gb && ga != tpl_guid && gb != tpl_guid,
        "{tpl_guid} {ga} {gb}"
    );
    // Each clone is on the VLAN under its own MAC and address.
    exec_ok(&a, "ping -c 1 -W 10 10.201.0.12 >/dev/null").await;
    // A write in one clone's memory stays there.
    exec_ok(&a, "echo mine > /tmp/origin").await;
    assert_eq!(exec_ok(&b, "cat /tmp/origin").await, "from-the-template");
    assert_eq!(exec_ok(&a, "cat /tmp/origin").await, "mine");
    // And a template saved with its RAM is no template.
    let e = Partition::restore_clone(&dir.path().join("none"), &ia, opts(&dir, "x"), READY)
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::Snapshot(_)), "{e}");
    a.kill().await.unwrap();
    b.kill().await.unwrap();
}

async fn guid(p: &Partition) -> String {
    p.qmp()
        .execute_value("query-vm-generation-id", None)
        .await
        .unwrap()["guid"]
        .as_str()
        .unwrap()
        .to_string()
}
