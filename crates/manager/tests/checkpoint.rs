//! Checkpoints (issue 12 item 3) through a real bulkheadd and one real TCG
//! partition with a writable LU: periodic checkpoints while the guest runs
//! on (same QEMU, its processes counting on), the record running with
//! checkpoint data; a checkpoint into a read-only repository failing and
//! changing nothing; the guest's QEMU killed and `restore-checkpoint`
//! bringing back memory and LU as of the checkpoint, nothing written after.

mod common;

use common::{events, Daemon, Opts, BOOT};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const NAME: &str = "ckp";

fn out(v: &Value) -> String {
    assert_eq!(v["code"], 0, "{v:#}");
    v["stdout"].as_str().unwrap().trim().to_string()
}

/// The directory holding the partition's hibernation data and checkpoints.
fn hibernation_parent(d: &Daemon) -> PathBuf {
    d.dir
        .path()
        .join("data/repository/clients")
        .join(NAME)
        .join("hibernation")
}

fn checkpoint_dirs(d: &Daemon) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(hibernation_parent(d))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{NAME}.ckpt-")))
        .collect();
    v.sort();
    v
}

/// The guest's counter (started by `plant`) as "<secret> <n>", once above `n`.
async fn count_above(d: &Daemon, n: u64) -> u64 {
    let line = out(&d
        .exec(
            NAME,
            &format!(
                "for i in $(seq 600); do [ $(cut -d' ' -f2 /tmp/count) -gt {n} ] && break; sleep 0.05; done; cat /tmp/count"
            ),
        )
        .await);
    line.split_once(' ').unwrap().1.parse().unwrap()
}

/// Writes `text` into 512-byte block `block` of the LU, through to the
/// device (fsync: the guest's `sync` leaves a block device's pages dirty).
async fn write_block(d: &Daemon, block: u32, text: &str) {
    out(&d
        .exec(
            NAME,
            &format!("printf '%-511s' {text} | dd of=/dev/vda bs=512 seek={block} count=1 conv=notrunc,fsync 2>/dev/null && echo ok"),
        )
        .await);
}

/// Block `block` of the LU as the device holds it (the guest's cache dropped).
async fn read_block(d: &Daemon, block: u32) -> String {
    out(&d
        .exec(
            NAME,
            &format!("sync; echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=512 skip={block} count=1 2>/dev/null | tr -d '\\000' | tr -d ' '"),
        )
        .await)
}

/// Waits (bounded) until the record names a checkpoint saved after `after`
/// ms and `n` checkpoint events were recorded; returns the view.
async fn wait_checkpoints(d: &Daemon, after: u64, n: usize) -> Value {
    d.wait_show(NAME, BOOT, |v| {
        let saved = v["hibernation"]["saved_at"].as_u64().unwrap_or(0);
        let seen = events(v)
            .iter()
            .filter(|e| e.starts_with("checkpoint ") && e.contains(": paused "))
            .count();
        saved > after && seen >= n
    })
    .await
}

async fn post(
    d: &Daemon,
    action: &str,
    body: Value,
) -> Result<Value, bulkhead_manager::client::ClientError> {
    let path = format!("/v1/partitions/{NAME}/{action}");
    tokio::time::timeout(BOOT, d.client().post(&path, &body))
        .await
        .unwrap_or_else(|_| panic!("{action} timed out"))
}

/// A read-only bind mount of `dir` onto itself, undone when dropped.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn mount(dir: &Path) -> ReadOnly {
        let run = |args: &[&str]| {
            let ok = std::process::Command::new("mount")
                .args(args)
                .arg(dir)
                .arg(dir)
                .status()
                .unwrap();
            assert!(ok.success(), "mount {args:?}");
        };
        run(&["--bind"]);
        let g = ReadOnly(dir.into());
        run(&["-o", "remount,ro,bind"]);
        g
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_run_on_fail_cleanly_and_restore_memory_and_lu_as_of_the_checkpoint() {
    let d = Daemon::start(Opts::default());
    let c = d.client();

    // A writable raw disk has no point in time: refused, nothing created.
    let raw = d.storage_root().join("raw.img");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let e = c
        .post(
            "/v1/partitions",
            &json!({"name": "rawp", "memory_mib": 128, "cpu_percent": 10,
                    "disks": [{"path": raw, "format": "raw"}], "checkpoint_every_ms": 5000}),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("qcow2"), "{e}");
    assert!(c.get("/v1/partitions/rawp").await.is_err());
    let e = c
        .post(
            "/v1/partitions",
            &json!({"name": "fast", "memory_mib": 128, "cpu_percent": 10, "checkpoint_every_ms": 1000}),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("checkpoint_every_ms"), "{e}");

    c.post(
        "/v1/lus",
        &json!({"name": "vol", "client": NAME, "size_bytes": 16u64 << 20}),
    )
    .await
    .unwrap();
    d.create(
        NAME,
        50,
        256,
        json!({"client": NAME, "lus": [{"name": "vol"}], "checkpoint_every_ms": 5000}),
    )
    .await;
    let started = d.start_wait(NAME).await;
    let qemu_pid = started["pid"].as_u64().unwrap();

    // Before the checkpoint: a secret in memory only, a counting process,
    // a block on the LU.
    let before = format!("kept-{}", std::process::id());
    out(&d.exec(NAME, &format!("echo {before} > /tmp/secret1")).await);
    out(&d
        .exec(
            NAME,
            "(i=0; while :; do i=$((i+1)); echo \"c $i\" > /tmp/count; sleep 0.1; done) \
             >/dev/null 2>&1 </dev/null & echo $! > /tmp/counter.pid",
        )
        .await);
    write_block(&d, 0, "disk-before").await;
    let uptime = |v: String| v.split('.').next().unwrap().parse::<u64>().unwrap();
    let up0 = uptime(out(&d.exec(NAME, "cut -d' ' -f1 /proc/uptime").await));
    let written = bulkhead_store::now_ms();

    // Periodic checkpoints: two after the writes; the guest ran on.
    let v = wait_checkpoints(&d, written, 2).await;
    assert_eq!(v["state"], "running", "{v:#}");
    assert_eq!(v["pid"].as_u64(), Some(qemu_pid), "the same QEMU runs on");
    assert_eq!(v["hibernation"]["reason"], "checkpoint", "{v:#}");
    let ev = events(&v);
    let line = ev.iter().find(|e| e.starts_with("checkpoint ")).unwrap();
    assert!(line.contains("ms,") && line.ends_with("MiB"), "{line}");
    let n = count_above(&d, 0).await;
    assert!(count_above(&d, n).await > n, "the counter counts on");
    let up1 = uptime(out(&d.exec(NAME, "cut -d' ' -f1 /proc/uptime").await));
    assert!(up1 >= up0, "uptime went back: {up1} < {up0}");
    // Only the checkpoint the record names is kept.
    let loc = v["hibernation"]["location"].as_str().unwrap().to_string();
    assert_eq!(
        checkpoint_dirs(&d),
        [loc.rsplit('/').next().unwrap().to_string()]
    );

    // Off (through the CLI), then one more on request: the checkpoint.
    let o = d.cli(&["partition", "checkpoint", NAME, "--every", "0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(d.show(NAME).await["checkpoint_every_ms"].is_null());
    let ckpt = post(&d, "checkpoint", json!(null)).await.unwrap();
    assert_eq!(ckpt["state"], "running");
    let h = ckpt["hibernation"].clone();
    assert_eq!(h["reason"], "checkpoint");

    // A checkpoint into a read-only repository fails: the guest runs on,
    // the record and the previous checkpoint are as they were.
    {
        let _ro = ReadOnly::mount(&hibernation_parent(&d));
        let e = post(&d, "checkpoint", json!(null)).await.unwrap_err();
        assert!(e.to_string().contains("checkpoint failed"), "{e}");
    }
    let v = d.show(NAME).await;
    assert_eq!(v["state"], "running");
    assert_eq!(v["pid"].as_u64(), Some(qemu_pid));
    assert_eq!(
        v["hibernation"], h,
        "the record still names the last checkpoint"
    );
    assert!(events(&v)
        .iter()
        .any(|e| e.starts_with("checkpoint failed")));
    let dir = d
        .dir
        .path()
        .join("data/repository")
        .join(h["location"].as_str().unwrap());
    assert!(dir.join("manifest.json").is_file() && dir.join("state.bin").is_file());
    assert_eq!(checkpoint_dirs(&d).len(), 1, "no half image left");
    let n = count_above(&d, 0).await;
    assert!(count_above(&d, n).await > n, "the counter counts on");

    // After the checkpoint: another secret, another block.
    out(&d.exec(NAME, "echo lost > /tmp/secret2").await);
    write_block(&d, 1, "disk-after").await;
    assert_eq!(read_block(&d, 1).await, "disk-after");

    // QEMU dies; the partition is restored from its last checkpoint.
    // SAFETY: kill(2) of the partition's QEMU, a process of this test's daemon.
    unsafe { libc::kill(qemu_pid as i32, libc::SIGKILL) };
    d.wait_state(NAME, &["failed", "stopped"], BOOT).await;
    let r = post(&d, "restore-checkpoint", json!(null)).await.unwrap();
    assert_eq!(r["state"], "running", "{r:#}");
    assert_ne!(r["pid"].as_u64(), Some(qemu_pid));
    assert!(r["hibernation"].is_null(), "the checkpoint was used: {r:#}");

    assert_eq!(out(&d.exec(NAME, "cat /tmp/secret1").await), before);
    let after = d.exec(NAME, "cat /tmp/secret2").await;
    assert_ne!(after["code"], 0, "written after the checkpoint: {after:#}");
    assert_eq!(
        out(&d
            .exec(NAME, "kill -0 $(cat /tmp/counter.pid) && echo same")
            .await),
        "same"
    );
    let n = count_above(&d, 0).await;
    assert!(count_above(&d, n).await > n, "the counter counts on");
    assert_eq!(read_block(&d, 0).await, "disk-before");
    assert_eq!(
        read_block(&d, 1).await,
        "",
        "the LU is as of the checkpoint"
    );

    // Nothing to restore twice.
    c.post(&format!("/v1/partitions/{NAME}/stop"), &json!({}))
        .await
        .unwrap();
    let e = post(&d, "restore-checkpoint", json!(null))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("conflict"), "{e}");
    assert!(checkpoint_dirs(&d).is_empty(), "{:?}", checkpoint_dirs(&d));
}

/// bulkheadd killed while the guest is stopped in a checkpoint's pause: the
/// next daemon lets the guest run on, leaves the record as it was, removes
/// the half image, and checkpoints again; destroy removes the checkpoint.
#[tokio::test(flavor = "multi_thread")]
async fn daemon_killed_in_a_checkpoint_pause_leaves_the_guest_running() {
    let mut d = Daemon::start(Opts {
        env: vec![("BULKHEAD_FAILPOINT".into(), "checkpoint-in-pause".into())],
        ..Default::default()
    });
    let name = "ckk";
    d.create(name, 30, 160, json!({})).await;
    let started = d.start_wait(name).await;
    let path = format!("/v1/partitions/{name}/checkpoint");
    let e = d.client().post(&path, &json!(null)).await;
    assert!(e.is_err(), "the daemon died in the pause: {e:?}");
    d.env.clear();
    d.spawn();
    let v = d.show(name).await;
    assert_eq!(v["state"], "running", "{v:#}");
    assert_eq!(v["pid"], started["pid"], "the same QEMU");
    assert!(v["hibernation"].is_null(), "nothing recorded: {v:#}");
    assert_eq!(out(&d.exec(name, "echo runs").await), "runs");
    let parent = d
        .dir
        .path()
        .join("data/repository/clients")
        .join(name)
        .join("hibernation");
    let left: Vec<_> = std::fs::read_dir(&parent)
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    assert!(left.is_empty(), "half image left: {left:?}");
    let v = d.client().post(&path, &json!(null)).await.unwrap();
    assert_eq!(v["hibernation"]["reason"], "checkpoint", "{v:#}");
    assert_eq!(out(&d.exec(name, "echo still").await), "still");
    let dirs = |p: &std::path::Path| std::fs::read_dir(p).into_iter().flatten().count();
    assert_eq!(dirs(&parent), 1, "the checkpoint");

    // Destroy removes the checkpoint data.
    d.client().destroy(name, true).await.unwrap();
    assert_eq!(dirs(&parent), 0, "checkpoint data left after destroy");
}
