//! Checkpoints with a real partition (TCG) and a writable qcow2 disk: the
//! guest runs on across a checkpoint and writes after it reach the disk;
//! a restore after reverting the disk to the checkpoint's point has the
//! memory and the disk as of the checkpoint.

mod common;

use bulkhead_engine::checkpoint::{revert_disks, CheckpointOptions};
use bulkhead_engine::{AdapterSpec, DiskFormat, DiskSpec, Partition};
use common::*;

async fn block(p: &Partition, n: u32) -> String {
    exec_ok(
        p,
        &format!("sync; echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=512 skip={n} count=1 2>/dev/null | tr -d '\\000 '"),
    )
    .await
}

async fn write(p: &Partition, n: u32, text: &str) {
    exec_ok(
        p,
        &format!("printf '%-511s' {text} | dd of=/dev/vda bs=512 seek={n} count=1 conv=notrunc,fsync 2>/dev/null"),
    )
    .await;
}

fn on_file(path: &std::path::Path, n: u32) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "qemu-img convert -U -O raw {0} {0}.raw && dd if={0}.raw bs=512 skip={n} count=1 2>/dev/null | tr -d '\\000 '",
            path.display()
        ))
        .output()
        .unwrap();
    text(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoint_runs_on_and_restores_memory_and_disk_as_of_its_point() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("d.qcow2");
    run(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        disk.to_str().unwrap(),
        "16M",
    ]);
    let d = DiskSpec {
        id: "d0".into(),
        path: disk.clone(),
        format: DiskFormat::Qcow2,
        readonly: false,
        backing: None,
        shared_read: false,
    };
    let mut s = spec(&unique("ckpt"));
    s.adapters.push(AdapterSpec::Disk(d.clone()));
    let p = Partition::start(s.clone(), opts(&dir, "a"), READY)
        .await
        .expect("boot");
    write(&p, 0, "before").await;
    exec_ok(&p, "echo kept > /tmp/mem").await;
    assert_eq!(on_file(&disk, 0), "before");
    let img = dir.path().join("img");
    let (m, stats) = p
        .checkpoint(&img, "bulkhead-ckpt-1", CheckpointOptions::default())
        .await
        .expect("checkpoint");
    assert!(stats.bytes > 0 && stats.paused < stats.elapsed, "{stats:?}");
    assert_eq!(m.disk_point.as_deref(), Some("bulkhead-ckpt-1"));
    assert!(p.qmp().query_status().await.unwrap().running);
    write(&p, 1, "after").await;
    exec_ok(&p, "echo lost > /tmp/mem2").await;
    assert_eq!(block(&p, 1).await, "after");
    assert_eq!(on_file(&disk, 1), "after", "written after the checkpoint");
    p.kill().await.unwrap();

    let disks = [d];
    tokio::task::spawn_blocking(move || revert_disks(&disks, "bulkhead-ckpt-1"))
        .await
        .unwrap()
        .expect("revert");
    assert_eq!(on_file(&disk, 1), "", "reverted");
    let (q, _) = Partition::restore_onto(&img, s, opts(&dir, "b"), READY)
        .await
        .expect("restore");
    assert_eq!(exec_ok(&q, "cat /tmp/mem").await, "kept");
    assert_eq!(
        exec_ok(&q, "cat /tmp/mem2 2>/dev/null || echo none").await,
        "none"
    );
    assert_eq!(block(&q, 0).await, "before");
    assert_eq!(block(&q, 1).await, "");
    q.kill().await.unwrap();
}
