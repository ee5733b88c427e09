//! Remote restart (issue 12) on three bulkheadd hosts in network namespaces
//! over a 3-member etcd (`bulkhead_testbed::cluster`): a hibernated
//! partition with a VLAN address and an LU restarted on another host under a
//! token, ended with `stop --state succeeded` and `stop-collect`; one ended
//! `failed` (what it created removed, the partition restartable); one whose
//! target never got a stop (timed out: unlocked, nothing removed); one whose
//! target was killed mid-restore (failed, cleaned up, retried elsewhere);
//! and wrong tokens refused at every command with nothing changed.

mod cluster_common;

use bulkhead_manager::api::{CreatePartition, ResumeOptions, StartOptions};
use bulkhead_manager::client::{Client, ClientError};
use bulkhead_manager::lu::mirror::{MirrorCommand, MirrorLu};
use bulkhead_manager::lu::types::{CreateLu, LuAttach};
use bulkhead_manager::remote_restart::api::StartRemoteRestart;
use bulkhead_manager::remote_restart::{caps, OperationView, StopState};
use bulkhead_store::{HostState, MirrorState, PartitionState};
use bulkhead_testbed::cluster::{self, Cluster, Guard};
use cluster_common::{client, exec, host_id, wait_host};
use std::process::Command;
use std::time::{Duration, Instant};

const LEASE_MS: u64 = 3000;
const PART: &str = "rp";
const LU: &str = "rv";

/// A cluster of three hosts, taken down when the guard drops.
fn start_cluster(tag: &str) -> (Guard, Cluster) {
    cluster::up_for_test(tag, 3, LEASE_MS)
}

fn netns(c: &Cluster, host: &str) -> String {
    c.hosts
        .iter()
        .find(|h| h.name == host)
        .expect("host")
        .netns
        .clone()
}

/// `bulkhead remote-restart ARGS --socket <host's socket>`: its output.
fn bulkhead(c: &Cluster, host: &str, args: &[&str]) -> String {
    let h = c.hosts.iter().find(|h| h.name == host).expect("host");
    let out = Command::new(bulkhead_testbed::bulkhead_bin())
        .arg("remote-restart")
        .args(args)
        .arg("--socket")
        .arg(&h.socket)
        .env_remove("BULKHEAD_API")
        .output()
        .expect("bulkhead");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "bulkhead remote-restart {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn link_exists(c: &Cluster, host: &str, dev: &str) -> bool {
    Command::new("ip")
        .args(["-n", &netns(c, host), "link", "show", dev])
        .output()
        .expect("ip")
        .status
        .success()
}

/// The status and message of a refused call.
fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Api {
            status, message, ..
        }) => (status, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn start_req(target: &str, token: Option<&str>) -> StartRemoteRestart {
    StartRemoteRestart {
        partition: PART.into(),
        target: target.into(),
        token: token.map(str::to_string),
        detail: 2,
        capabilities: caps::HIBERNATION | caps::LU | caps::REMOTE_RESTART,
        timeout_secs: None,
        promote_mirror: false,
    }
}

/// The hosts holding locks on the LU.
async fn lu_holders(cl: &Client) -> Vec<String> {
    let v = cl.lu_show(LU).await.unwrap();
    v.locks.into_iter().map(|l| l.host).collect()
}

fn created_tap(op: &OperationView) -> String {
    op.created
        .as_ref()
        .expect("detail 1+ shows what was created")
        .iter()
        .find_map(|c| c.strip_prefix("tap:"))
        .expect("a TAP created")
        .to_string()
}

/// The secret held only in guest memory is there, on `host`.
async fn memory_intact(cl: &Client, secret: &str, host_id: &str) {
    let rec = cl.show(PART).await.unwrap().record;
    assert_eq!(
        (rec.state, rec.host.as_str()),
        (PartitionState::Running, host_id)
    );
    let (code, out) = exec(cl, PART, "cat /tmp/secret").await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.trim(), secret);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_restart_on_three_hosts() {
    let (_guard, c) = start_cluster("rr");
    let c = &c;
    let (a, b, cc) = (client(c, "a"), client(c, "b"), client(c, "c"));
    let (a_id, b_id, c_id) = (
        host_id(&a, "a").await,
        host_id(&a, "b").await,
        host_id(&a, "c").await,
    );

    a.lu_create(&CreateLu {
        name: LU.into(),
        client: "acme".into(),
        size_bytes: 16 << 20,
        purpose: None,
    })
    .await
    .unwrap();
    a.create(&CreatePartition {
        net: true,
        client: Some("acme".into()),
        lus: vec![LuAttach {
            name: LU.into(),
            readonly: false,
        }],
        ..CreatePartition::new(PART, 1, 128, 20)
    })
    .await
    .unwrap();
    a.start(PART, &StartOptions { wait: true }).await.unwrap();
    let secret = format!("rr-{}", std::process::id());
    let (code, out) = exec(&a, PART, &format!("echo {secret} > /tmp/secret")).await;
    assert_eq!(code, 0, "{out}");
    a.hibernate(PART).await.unwrap();

    // A capability the target lacks: refused, nothing recorded.
    let mut req = start_req("b", Some("op-mig"));
    req.capabilities |= caps::MIGRATION;
    let (status, msg) = refused(cc.remote_restart_start(&req).await);
    assert_eq!(status, 409, "{msg}");
    assert!(msg.contains("migration"), "{msg}");
    assert!(cc.remote_restart_list().await.unwrap().is_empty());

    // start (the CLI, asked on c, carried out by b) → stop succeeded →
    // stop-collect. Without --token the CLI prints the one made.
    let out = bulkhead(
        c,
        "c",
        &[
            "start",
            "--partition",
            PART,
            "--target",
            "b",
            "--detail",
            "2",
            "--capabilities",
            "0x7",
        ],
    );
    let token = out.lines().last().expect("the token").to_string();
    assert!(token.starts_with("rr-"), "a generated token: {out}");
    let op = cc.remote_restart_show(&token).await.unwrap();
    assert_eq!(
        (op.state.as_str(), op.source.as_str(), op.target.as_str()),
        ("restored", "a", "b")
    );
    assert!(
        op.source_config.is_some(),
        "detail 2 shows the gathered configuration"
    );
    memory_intact(&a, &secret, &b_id).await;
    assert_eq!(lu_holders(&a).await, vec![b_id.clone()]);
    let tap = created_tap(&op);
    assert!(link_exists(c, "b", &tap), "{tap} on b");

    // Held: the administrator's commands are refused, naming the operation.
    for (what, r) in [
        ("destroy", a.destroy(PART, true).await.map(|_| ())),
        ("hibernate", a.hibernate(PART).await.map(|_| ())),
        ("stop", cc.stop(PART, &Default::default()).await.map(|_| ())),
    ] {
        let (status, msg) = refused(r);
        assert_eq!(status, 409, "{what}: {msg}");
        assert!(msg.contains(&token), "{what}: {msg}");
    }
    // Wrong tokens at each command: refused, nothing changed.
    let (status, msg) = refused(a.remote_restart_stop("op-none", StopState::Failed).await);
    assert_eq!(status, 403, "{msg}");
    let (status, msg) = refused(a.remote_restart_collect("op-none").await);
    assert_eq!(status, 403, "{msg}");
    let (status, _) = refused(a.remote_restart_show("op-none").await);
    assert_eq!(status, 403);
    let (status, _) = refused(a.remote_restart_stop("../x", StopState::Failed).await);
    assert_eq!(status, 403);
    // Another operation's token (and a second operation on a held partition).
    let (status, msg) = refused(cc.remote_restart_start(&start_req("c", Some(&token))).await);
    assert_eq!(status, 409, "{msg}");
    let (status, msg) = refused(cc.remote_restart_start(&start_req("c", Some("op-2"))).await);
    assert_eq!(status, 409, "{msg}");
    assert!(msg.contains(&token), "{msg}");
    // stop-collect before the target stopped it.
    let (status, msg) = refused(b.remote_restart_collect(&token).await);
    assert_eq!(status, 409, "{msg}");
    assert_eq!(
        a.remote_restart_show(&token).await.unwrap().state,
        "restored"
    );
    memory_intact(&a, &secret, &b_id).await;

    let done = a
        .remote_restart_stop(&token, StopState::Succeeded)
        .await
        .unwrap();
    assert_eq!(done.state, "succeeded");
    assert!(a.show(PART).await.unwrap().record.hibernation.is_none());
    let (status, _) = refused(a.remote_restart_stop(&token, StopState::Failed).await);
    assert_eq!(status, 409, "an ended operation is not stopped again");
    let collected = cc.remote_restart_collect(&token).await.unwrap();
    assert!(collected.collected);
    let (status, _) = refused(cc.remote_restart_collect(&token).await);
    assert_eq!(status, 409, "collected once");
    assert!(link_exists(c, "b", &tap), "succeeded: b's TAP stays");
    memory_intact(&a, &secret, &b_id).await;

    stopped_failed(c, &secret, (&a_id, &b_id, &c_id)).await;
    timed_out(c, &secret, &b_id).await;
    target_killed_mid_restore(c, &secret, (&a_id, &b_id)).await;
    target_lost_after_restore(c, &secret, (&a_id, &b_id)).await;
}

/// Running on b with its LU mirrored: hibernated, restarted on c with
/// `--promote-mirror` (the copy becomes the LU's file inside the operation),
/// stopped `failed`: c's TAP and LU lock are gone, the partition is
/// hibernated on b with its data, the promotion stays, and a resume on a
/// brings it back with its memory and its copy in step.
async fn stopped_failed(c: &Cluster, secret: &str, ids: (&str, &str, &str)) {
    let (a_id, b_id, c_id) = ids;
    let (a, b) = (client(c, "a"), client(c, "b"));
    let mirrored = b
        .lu_mirror(&MirrorCommand::Mirror {
            lu: LU.into(),
            req: MirrorLu::default(),
        })
        .await
        .unwrap();
    let m = mirrored.record.mirror.expect("mirrored");
    assert_eq!(
        (m.state, m.host.as_deref()),
        (MirrorState::Synced, Some(b_id))
    );
    b.hibernate(PART).await.unwrap();
    let old_path = a.lu_show(LU).await.unwrap().record.path;
    bulkhead(
        c,
        "a",
        &[
            "start",
            "--partition",
            PART,
            "--target",
            "c",
            "--token",
            "op-fail",
            "--detail",
            "2",
            "--promote-mirror",
        ],
    );
    let op = a.remote_restart_show("op-fail").await.unwrap();
    assert_eq!((op.source.as_str(), op.target.as_str()), ("b", "c"));
    let promoted = a.lu_show(LU).await.unwrap();
    let path = promoted.record.path.clone();
    assert!(
        path != old_path && path.starts_with(&format!("clients/acme/lu/{LU}.promoted-")),
        "{promoted:?}"
    );
    let m = promoted.record.mirror.expect("still mirrored");
    assert_eq!(
        (m.state, m.host.as_deref()),
        (MirrorState::Synced, Some(c_id))
    );
    let events = format!("{:?}", a.show(PART).await.unwrap().events);
    assert!(
        events.contains(&format!(
            "disk0: LU {LU} promoted from its copy {LU}-mirror"
        )),
        "{events}"
    );
    let tap = created_tap(&op);
    assert!(link_exists(c, "c", &tap));
    assert_eq!(lu_holders(&a).await, [c_id.to_string()]);
    memory_intact(&a, secret, c_id).await;

    let done = a
        .remote_restart_stop("op-fail", StopState::Failed)
        .await
        .unwrap();
    assert_eq!(done.state, "failed");
    assert!(!link_exists(c, "c", &tap), "{tap} left on c");
    assert!(lu_holders(&a).await.is_empty());
    let rec = a.show(PART).await.unwrap().record;
    assert_eq!(
        (rec.state, rec.host.as_str()),
        (PartitionState::Hibernated, b_id)
    );
    assert!(rec.hibernation.is_some(), "its data kept");
    // The promotion is not undone (the data is the same).
    assert_eq!(a.lu_show(LU).await.unwrap().record.path, path);
    // Not held any more; a stop-collect on the source (b) ends it there.
    assert!(b.remote_restart_collect("op-fail").await.unwrap().collected);
    let woke = b
        .resume_with(
            PART,
            &ResumeOptions {
                host: Some("a".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(woke.host, a_id);
    assert_eq!(
        lu_holders(&a).await,
        vec![a_id.to_string()],
        "a resume locks its LU"
    );
    memory_intact(&b, secret, a_id).await;
    let v = a.lu_show(LU).await.unwrap();
    let m = v.record.mirror.expect("still mirrored");
    assert_eq!(
        (m.state, m.host.as_deref()),
        (MirrorState::Synced, Some(a_id))
    );
    assert_eq!(v.record.path, path, "resumed from the promoted file");
    // The rest runs unmirrored, as before.
    a.lu_mirror(&MirrorCommand::Unmirror { lu: LU.into() })
        .await
        .unwrap();
}

/// Running on a: restarted on b (`promote_mirror`, with nothing mirrored) with
/// a 3 s timeout and no stop: the target unlocks by itself and removes nothing (the partition runs on b, its TAP
/// and LU lock stay), and the administrator's commands work again.
async fn timed_out(c: &Cluster, secret: &str, b_id: &str) {
    let a = client(c, "a");
    a.hibernate(PART).await.unwrap();
    let mut req = start_req("b", Some("op-timeout"));
    req.timeout_secs = Some(3);
    // No LU of it is mirrored any more: the flag changes nothing but an event.
    req.promote_mirror = true;
    let op = a.remote_restart_start(&req).await.unwrap();
    let events = format!("{:?}", a.show(PART).await.unwrap().events);
    assert!(events.contains("nothing promoted"), "{events}");
    let tap = created_tap(&op);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = a.remote_restart_show("op-timeout").await.unwrap();
        if now.state == "timed-out" {
            break;
        }
        assert_eq!(now.state, "restored");
        assert!(Instant::now() < deadline, "no timeout: {now:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(link_exists(c, "b", &tap), "timed out: nothing removed");
    assert_eq!(lu_holders(&a).await, [b_id.to_string()]);
    memory_intact(&a, secret, b_id).await;
    let (status, _) = refused(a.remote_restart_stop("op-timeout", StopState::Failed).await);
    assert_eq!(status, 409);
    // Unlocked: a hibernate is no longer refused.
    a.hibernate(PART).await.unwrap();
}

/// Hibernated on b: restarted on c, whose daemon stops mid-restore (a
/// failpoint) and is killed with its QEMUs. A stop `failed` asked on a once
/// c is lost puts the partition back on b; a retry on a succeeds with the
/// memory intact; c, back, removes the TAP the dead restore left.
async fn target_killed_mid_restore(c: &Cluster, secret: &str, ids: (&str, &str)) {
    let (a_id, b_id) = ids;
    let a = client(c, "a");
    cluster::restart_host(
        c,
        "c",
        &[(
            "BULKHEAD_FAILPOINT",
            bulkhead_manager::manager::FAILPOINT_MID_RESTORE,
        )],
    )
    .unwrap();
    wait_host(&a, "c", HostState::Up).await;
    let ask = || {
        let a = a.clone();
        tokio::spawn(async move {
            a.remote_restart_start(&start_req("c", Some("op-kill")))
                .await
        })
    };
    let mut asked = ask();
    // Mid-restore: the operation restoring and the image claimed by c.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let op = a.remote_restart_show("op-kill").await;
        let rec = a.show(PART).await.unwrap().record;
        if op.as_ref().is_ok_and(|o| o.state == "restoring")
            && rec.state == PartitionState::Resuming
        {
            break;
        }
        if asked.is_finished() || Instant::now() > deadline {
            let r = if asked.is_finished() {
                Some((&mut asked).await.unwrap())
            } else {
                None
            };
            // c just restarted may not answer yet: a start refused before
            // anything was recorded is asked again.
            let unknown = op
                .as_ref()
                .is_err_and(|e| matches!(e, ClientError::Api { status: 403, .. }));
            if unknown && Instant::now() < deadline {
                eprintln!("start not taken ({r:?}); asking again");
                asked = ask();
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            let log = c.dir.join("c/bulkheadd.restarts.log");
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "never mid-restore: {op:?}\n{r:?}\n{rec:?}\nc's log (newest first):\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // QEMU is restored (its TAP made) before the failpoint holds it.
    let tap = {
        let op = a.remote_restart_show("op-kill").await.unwrap();
        created_tap(&op)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !link_exists(c, "c", &tap) {
        assert!(Instant::now() < deadline, "no TAP on c");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster::kill_host_all(c, "c").unwrap();
    assert!(
        asked.await.unwrap().is_err(),
        "the start cannot have succeeded"
    );
    wait_host(&a, "c", HostState::Lost).await;

    let done = a
        .remote_restart_stop("op-kill", StopState::Failed)
        .await
        .unwrap();
    assert_eq!(done.state, "failed");
    let rec = a.show(PART).await.unwrap().record;
    assert_eq!(
        (rec.state, rec.host.as_str()),
        (PartitionState::Hibernated, b_id)
    );
    assert!(lu_holders(&a).await.is_empty(), "c's LU lock released");

    let retry = a
        .remote_restart_start(&start_req("a", Some("op-retry")))
        .await
        .unwrap();
    assert_eq!(retry.state, "restored");
    memory_intact(&a, secret, a_id).await;
    a.remote_restart_stop("op-retry", StopState::Succeeded)
        .await
        .unwrap();
    assert!(
        a.remote_restart_collect("op-retry")
            .await
            .unwrap()
            .collected
    );

    // c back (no failpoint): the leftovers of its dead restore go; the
    // partition keeps running on a.
    cluster::restart_host(c, "c", &[]).unwrap();
    wait_host(&a, "c", HostState::Up).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while link_exists(c, "c", &tap) {
        assert!(
            Instant::now() < deadline,
            "{tap} left on c after its restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    memory_intact(&a, secret, a_id).await;
}

/// Running on a: hibernated, restarted on c, which is then lost with its
/// QEMUs after the restore. A stop `failed` is refused while c is lost (its
/// guest may run on; only fencing could say it does not) and changes
/// nothing; c, back, finds the partition gone and puts it back on a with its
/// data, from where it resumes on b intact.
async fn target_lost_after_restore(c: &Cluster, secret: &str, ids: (&str, &str)) {
    let (a_id, b_id) = ids;
    let a = client(c, "a");
    a.hibernate(PART).await.unwrap();
    let op = a
        .remote_restart_start(&start_req("c", Some("op-lost")))
        .await
        .unwrap();
    assert_eq!(op.state, "restored");
    cluster::kill_host_all(c, "c").unwrap();
    wait_host(&a, "c", HostState::Lost).await;
    let (status, msg) = refused(a.remote_restart_stop("op-lost", StopState::Failed).await);
    assert_eq!(status, 409, "{msg}");
    assert!(msg.contains("may still run"), "{msg}");
    assert_eq!(
        a.remote_restart_show("op-lost").await.unwrap().state,
        "restored"
    );

    cluster::restart_host(c, "c", &[]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let op = a.remote_restart_show("op-lost").await.unwrap();
        if op.state == "failed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not failed after c's restart: {op:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rec = a.show(PART).await.unwrap().record;
    assert_eq!(
        (rec.state, rec.host.as_str(), rec.hibernation.is_some()),
        (PartitionState::Hibernated, a_id, true)
    );
    assert!(lu_holders(&a).await.is_empty(), "c's LU lock released");
    a.resume_with(
        PART,
        &ResumeOptions {
            host: Some("b".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    memory_intact(&a, secret, b_id).await;
    let ops: Vec<OperationView> =
        serde_json::from_str(&bulkhead(c, "b", &["list", "--json"])).unwrap();
    assert_eq!(ops, a.remote_restart_list().await.unwrap());
    assert_eq!(ops.len(), 1, "one record per partition: {ops:?}");
    assert_eq!(ops[0].token, "op-lost");
}
