//! Service pools through a real bulkheadd (issue 17): the pool statement
//! expanded into real partitions running a real program (busybox `nc -ll -e`
//! serving a shell script the app command writes), idle only once the
//! program answers on its port over the VLAN; `pool show/list/resize/destroy`;
//! re-adoption after a daemon restart; pool users with tokens the store only
//! hashes. Partitions boot in parallel.

mod common;

use bulkhead_manager::pools::types::*;
use bulkhead_pool_proto::client::{Client as Gateway, ClientError as GwError};
use bulkhead_pool_proto::{ErrorCode, Frame, RefuseReason};
use bulkhead_store::{PoolKind, SqliteStore, Store};
use common::pools::*;
use common::{Daemon, Opts};
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_of_partitions_running_the_program_survives_a_daemon_restart() {
    let gw = format!("127.0.0.1:{}", free_port());
    let mut d = Daemon::start(Opts {
        extra: format!("[pool]\ngateway = {gw:?}\n"),
        ..Default::default()
    });
    let c = d.client();

    // A partition that takes a name the pool would use: refused, nothing made.
    d.create("taken-1", 20, 128, serde_json::json!({})).await;
    let e = c
        .pool_create(&statement("taken", "echo", 1))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("taken-1"), "{e}");
    assert!(c.pool_list().await.unwrap().is_empty());
    // Bad statements: 400, nothing stored.
    for bad in [
        CreatePool {
            size: 0,
            ..statement("p", "echo", 1)
        },
        CreatePool {
            max: Some(1),
            ..statement("p", "echo", 2)
        },
        CreatePool {
            name: "Bad_Name".into(),
            ..statement("p", "echo", 1)
        },
        CreatePool {
            program: "no/slash".into(),
            ..statement("p", "echo", 1)
        },
        CreatePool {
            port: 0,
            ..statement("p", "echo", 1)
        },
        CreatePool {
            recycle_after: Some(0),
            ..statement("p", "echo", 1)
        },
    ] {
        let e = c.pool_create(&bad).await.unwrap_err();
        let m = e.to_string();
        assert!(m.contains("need") || m.contains("must"), "{m}");
    }
    assert!(c.pool_list().await.unwrap().is_empty());

    // The statement, through the CLI: two partitions, each running the program.
    let out = ok(
        &d,
        &[
            "create",
            "echo",
            "--program",
            "echo",
            "--size",
            "2",
            "--max",
            "3",
            "--memory",
            "128M",
            "--cpu",
            "20%",
            "--app",
            &echo_app("echo"),
            "--port",
            "7000",
            "--cleanup",
            "rm -f /tmp/scratch",
            "--wait",
            "--json",
        ],
    );
    let v: PoolView = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = v.partitions.iter().map(|p| p.primary_id.as_str()).collect();
    assert_eq!(ids, ["echo-1", "echo-2"]);
    assert!(v.partitions.iter().all(|p| p.state == "idle"), "{v:#?}");
    assert!(v.partitions.iter().all(|p| p.alternate_id.is_none()));

    // Idle means the program answers: it reads the session line and echoes.
    for id in ids {
        let ip = ip_of(&d, id).await;
        let (first, second) = converse(&ip, "alice");
        assert_eq!(first.trim(), "echo echo 000000000000002a alice", "{id}");
        assert_eq!(second.trim(), "ping");
        // The administrator reaches it by its primary id as any partition.
        let r = d
            .exec(
                id,
                "echo admin-here; test -s /tmp/echo.sh && echo script-there",
            )
            .await;
        assert_eq!(r["stdout"], "admin-here\nscript-there\n", "{r}");
    }
    // A second pool with the same name: refused, the first unchanged.
    let e = c
        .pool_create(&statement("echo", "other", 1))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
    let text = ok(&d, &["show", "echo"]);
    assert!(text.contains("echo-1") && text.contains("idle"), "{text}");
    let list = ok(&d, &["list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("echo ") && l.contains(" 2 ")),
        "{list}"
    );

    // Grow to three, back to two (the highest index goes).
    c.pool_resize(
        "echo",
        &ResizePool {
            size: 3,
            max: Some(3),
        },
    )
    .await
    .unwrap();
    wait_pool(&d, "echo", 3, "idle").await;
    let pid2 = d.show("echo-2").await["pid"].clone();
    c.pool_resize(
        "echo",
        &ResizePool {
            size: 2,
            max: Some(2),
        },
    )
    .await
    .unwrap();
    wait_pool(&d, "echo", 2, "idle").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while c.get("/v1/partitions/echo-3").await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "echo-3 never went");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A daemon crash with a session open: the session ends with the daemon
    // (its connection closes), the pool is re-adopted with the same QEMUs, not
    // rebooted, each cleaned first (the session left data in its partition).
    let dora = add_user(&d, "dora", "echo", 1);
    let mut g = Gateway::connect_tcp(gw.as_str()).await.unwrap();
    let s = g.allocate(req("echo", "dora", &dora, 5_000)).await.unwrap();
    let holder = partition_of(&c.pool_show("echo").await.unwrap(), s).primary_id;
    d.exec(&holder, "touch /tmp/scratch").await;
    d.exec("echo-2", "touch /tmp/scratch").await;
    d.kill9();
    d.spawn();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if g.recv().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the session outlived its daemon");
    let v = wait_pool(&d, "echo", 2, "idle").await;
    assert!(
        v.partitions
            .iter()
            .all(|p| p.session.is_none() && p.alternate_id.is_none()),
        "{v:#?}"
    );
    let r = d
        .exec(&holder, "test -e /tmp/scratch && echo left || echo gone")
        .await;
    assert_eq!(r["stdout"], "gone\n", "dora's data outlived her session");
    assert_eq!(v.statement.max, Some(2), "the resized statement was stored");
    assert_eq!(
        d.show("echo-2").await["pid"],
        pid2,
        "echo-2 adopted, not rebooted"
    );
    let r = d
        .exec("echo-2", "test -e /tmp/scratch && echo left || echo gone")
        .await;
    assert_eq!(
        r["stdout"], "gone\n",
        "the cleanup ran before echo-2 was idle again"
    );
    let (first, _) = converse(&ip_of(&d, "echo-1").await, "bob");
    assert_eq!(first.trim(), "echo echo 000000000000002a bob");

    // Destroy: the partitions go with it; the name is free again.
    let gone: PoolDestroyed =
        serde_json::from_str(&ok(&d, &["destroy", "echo", "--json"])).unwrap();
    assert_eq!(gone.partitions.len(), 2, "{gone:?}");
    for id in ["echo-1", "echo-2"] {
        assert!(
            d.client()
                .get(&format!("/v1/partitions/{id}"))
                .await
                .is_err(),
            "{id} remains"
        );
    }
    assert!(c.pool_list().await.unwrap().is_empty());
    let (success, _, err) = bulkhead(&d, &["show", "echo"]);
    assert!(!success && err.contains("not found"), "{err}");
    // A restart does not bring a destroyed pool back.
    d.kill9();
    d.spawn();
    assert!(d.client().pool_list().await.unwrap().is_empty());
}

#[tokio::test]
async fn users_get_a_token_once_and_the_store_keeps_its_hash() {
    let d = Daemon::start(Opts::default());
    let out = ok(
        &d,
        &[
            "user",
            "add",
            "alice",
            "--programs",
            "echo,db",
            "--max-sessions",
            "2",
        ],
    );
    let token = out.lines().last().unwrap().to_string();
    assert!(token.starts_with("bhp_") && !token.contains(' '), "{out}");
    // Another user gets another token.
    let bob = ok(&d, &["user", "add", "bob", "--programs", "echo"]);
    assert_ne!(bob.lines().last().unwrap(), token);

    let listed = ok(&d, &["user", "list", "--json"]);
    assert!(!listed.contains(&token), "a listing never shows a token");
    let users: Vec<PoolUserView> = serde_json::from_str(&listed).unwrap();
    assert_eq!(users.len(), 2);
    assert_eq!(users[0].name, "alice");
    assert_eq!(users[0].programs, ["db", "echo"]);
    assert_eq!((users[0].max_sessions, users[1].max_sessions), (2, 1));

    // The store holds the hash, which the pool crate's check accepts.
    let store = SqliteStore::open(&d.dir.path().join("data").join("state.db"), "h").unwrap();
    let docs = store.pool_doc_list(PoolKind::User).await.unwrap();
    assert_eq!(docs.len(), 2);
    assert!(docs.iter().all(|doc| !doc.body.contains(&token)));
    let alice: bulkhead_pool::User = serde_json::from_str(&docs[0].body).unwrap();
    assert!(alice.token_hash.matches(&token));
    assert!(!alice.token_hash.matches("bhp_wrong"));

    // Refusals change nothing.
    for (args, why) in [
        (vec!["user", "add", "alice", "--programs", "echo"], "exists"),
        (
            vec!["user", "add", "a b", "--programs", "echo"],
            "valid name",
        ),
        (
            vec!["user", "add", "carol", "--programs", "x/y"],
            "valid name",
        ),
        (
            vec![
                "user",
                "add",
                "carol",
                "--programs",
                "echo",
                "--max-sessions",
                "0",
            ],
            "at least 1",
        ),
    ] {
        let (success, _, err) = bulkhead(&d, &args);
        assert!(!success && err.contains(why), "{args:?}: {err}");
    }
    let after = store.pool_doc_list(PoolKind::User).await.unwrap();
    assert_eq!(after, docs);

    ok(&d, &["user", "remove", "bob"]);
    let (success, _, err) = bulkhead(&d, &["user", "remove", "bob"]);
    assert!(!success && err.contains("not found"), "{err}");
    assert_eq!(store.pool_doc_list(PoolKind::User).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_allocates_under_the_users_identity_and_confirms_after_cleanup() {
    let gw = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start(Opts {
        extra: format!("[pool]\ngateway = {gw:?}\n"),
        ..Default::default()
    });
    let c = d.client();
    let alice = add_user(&d, "alice", "echo,nope,fresh", 6);
    let bob = add_user(&d, "bob", "db", 1);
    // Two pools, two programs; the partitions of both boot in parallel.
    c.pool_create(&statement("echo", "echo", 2)).await.unwrap();
    c.pool_create(&statement("db", "db", 1)).await.unwrap();
    // Untrusted users: a fresh partition for every session.
    let fresh = CreatePool {
        untrusted: true,
        ..statement("fresh", "fresh", 1)
    };
    c.pool_create(&fresh).await.unwrap();
    let idle = wait_pool(&d, "echo", 2, "idle").await;
    wait_pool(&d, "db", 1, "idle").await;
    wait_pool(&d, "fresh", 1, "idle").await;

    // The two partitions of `echo` are clones of one saved template, each
    // its own machine: hostname, MAC and address its record's, and RNGs
    // that differ (the fresh generation id reseeds each guest's).
    let mut seen = Vec::new();
    for id in ["echo-1", "echo-2"] {
        let shown = d.show(id).await;
        assert_eq!(
            shown["template"],
            serde_json::json!({"clone": "echo"}),
            "{shown:#}"
        );
        let guest = d
            .exec(
                id,
                "hostname; cat /sys/class/net/eth0/address; ip -4 -o addr show eth0 | \
                 awk '{print $4}'; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'",
            )
            .await;
        let out = guest["stdout"].as_str().unwrap().to_string();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], id, "{out}");
        assert_eq!(lines[1], shown["net"]["mac"], "{out}");
        assert_eq!(lines[2], shown["net"]["ip"], "{out}");
        seen.push(lines.iter().map(|l| l.to_string()).collect::<Vec<_>>());
    }
    for i in 1..4 {
        assert_ne!(
            seen[0][i], seen[1][i],
            "two clones share line {i}: {seen:?}"
        );
    }
    // The template's source partition was only needed to save it.
    assert!(
        c.show("echo-tpl").await.is_err(),
        "the template source is left"
    );

    // Refusals, each with its own reason, nothing changed.
    let mut g = Gateway::connect_tcp(gw.as_str()).await.unwrap();
    for (r, want) in [
        (req("echo", "mallory", &alice, 0), RefuseReason::UnknownUser),
        (
            req("echo", "alice", "bhp_wrong", 0),
            RefuseReason::BadCredential,
        ),
        (req("db", "alice", &alice, 0), RefuseReason::NotPermitted),
        (
            req("nope", "alice", &alice, 0),
            RefuseReason::UnknownProgram,
        ),
    ] {
        assert_eq!(refusal(g.allocate(r).await.unwrap_err()), want);
    }
    assert_eq!(
        c.pool_show("echo").await.unwrap(),
        idle,
        "refusals changed the pool"
    );
    // A frame out of place and one over the size limit: refused, connection closed.
    let mut dealloc = Vec::new();
    Frame::Deallocate { confirm: true }
        .encode(&mut dealloc)
        .unwrap();
    match raw_exchange(&gw, &dealloc) {
        Frame::Refused { reason, .. } => assert_eq!(reason, RefuseReason::Malformed),
        f => panic!("{f:?}"),
    }
    match raw_exchange(&gw, &[0x00, 0x10, 0x00, 0x00, 0x20]) {
        Frame::Refused { reason, .. } => assert_eq!(reason, RefuseReason::TooLarge),
        f => panic!("{f:?}"),
    }
    assert_eq!(c.pool_show("echo").await.unwrap(), idle);

    // alice's session: the program sees her alternate id first, then her bytes.
    let s = g
        .allocate(req("echo", "alice", &alice, 5_000))
        .await
        .unwrap();
    g.send(b"ping\n").await.unwrap();
    let got = lines(&mut g, 2).await;
    assert_eq!(got, [format!("echo echo {s} alice"), "ping".to_string()]);
    let v = c.pool_show("echo").await.unwrap();
    let p = partition_of(&v, s);
    assert_eq!(
        (p.state.as_str(), p.alternate_id.as_deref()),
        ("in-session", Some("alice"))
    );
    // The administrator reaches it by primary id meanwhile; the file is the
    // session's, for the cleanup to remove.
    let r = d
        .exec(&p.primary_id, "touch /tmp/scratch && echo made")
        .await;
    assert_eq!(r["stdout"], "made\n");
    // Its agent knows the session: `bulkhead-guest session` in the partition.
    let r = d.exec(&p.primary_id, "bulkhead-guest session").await;
    assert_eq!(r["stdout"], format!("{s} echo alice\n"), "{r}");
    // bob lands on the other program's pool.
    let mut gb = Gateway::connect_tcp(gw.as_str()).await.unwrap();
    let sb = gb.allocate(req("db", "bob", &bob, 5_000)).await.unwrap();
    assert_eq!(lines(&mut gb, 1).await, [format!("db db {sb} bob")]);
    assert_eq!(
        partition_of(&c.pool_show("db").await.unwrap(), sb).primary_id,
        "db-1"
    );
    // bob's limit is one session.
    let mut gb2 = Gateway::connect_tcp(gw.as_str()).await.unwrap();
    assert_eq!(
        refusal(gb2.allocate(req("db", "bob", &bob, 0)).await.unwrap_err()),
        RefuseReason::UserLimit
    );

    // DEALLOCATE with confirm: CONFIRMED once the cleanup ran.
    g.deallocate().await.unwrap();
    let after = c.pool_show("echo").await.unwrap();
    let q = after
        .partitions
        .iter()
        .find(|x| x.primary_id == p.primary_id)
        .unwrap();
    assert_eq!(
        (
            q.state.as_str(),
            q.alternate_id.as_deref(),
            q.sessions_served
        ),
        ("idle", None, 1)
    );
    let r = d
        .exec(
            &p.primary_id,
            "test -e /tmp/scratch && echo left || echo gone",
        )
        .await;
    assert_eq!(r["stdout"], "gone\n", "the cleanup ran before CONFIRMED");
    // ...and the agent forgot the session.
    let r = d
        .exec(&p.primary_id, "bulkhead-guest session; echo exit=$?")
        .await;
    assert_eq!(r["stdout"], "exit=1\n", "{r}");
    assert!(
        r["stderr"].as_str().unwrap().contains("no pool session"),
        "{r}"
    );
    gb.deallocate().await.unwrap();

    // The connection holds another session; both partitions busy, then six
    // concurrent requests on the pool of two are all served, none twice.
    let s2 = g
        .allocate(req("echo", "alice", &alice, 5_000))
        .await
        .unwrap();
    let mut g3 = Gateway::connect_tcp(gw.as_str()).await.unwrap();
    let s3 = g3
        .allocate(req("echo", "alice", &alice, 5_000))
        .await
        .unwrap();
    assert_ne!(
        partition_of(&c.pool_show("echo").await.unwrap(), s2).primary_id,
        partition_of(&c.pool_show("echo").await.unwrap(), s3).primary_id
    );
    let mut g4 = Gateway::connect_tcp(gw.as_str()).await.unwrap();
    assert_eq!(
        refusal(
            g4.allocate(req("echo", "alice", &alice, 300))
                .await
                .unwrap_err()
        ),
        RefuseReason::PoolExhausted
    );
    g.deallocate().await.unwrap();
    g3.deallocate().await.unwrap();
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let (gw, alice) = (gw.clone(), alice.clone());
            tokio::spawn(async move {
                let mut g = Gateway::connect_tcp(gw.as_str()).await.unwrap();
                let s = g
                    .allocate(req("echo", "alice", &alice, 120_000))
                    .await
                    .unwrap();
                g.send(format!("n{i}\n").as_bytes()).await.unwrap();
                let got = lines(&mut g, 2).await;
                assert_eq!(got[1], format!("n{i}"));
                g.deallocate().await.unwrap();
                s
            })
        })
        .collect();
    let mut served = Vec::new();
    for t in tasks {
        served.push(t.await.unwrap());
    }
    served.sort();
    served.dedup();
    assert_eq!(served.len(), 6, "each request got its own session");
    let v = c.pool_show("echo").await.unwrap();
    let total: u64 = v.partitions.iter().map(|p| p.sessions_served).sum();
    assert_eq!(total, 1 + 2 + 6);

    // A client that vanishes: its session ends, the partition is cleaned and idle.
    let mut gv = Gateway::connect_tcp(gw.as_str()).await.unwrap();
    let sv = gv
        .allocate(req("echo", "alice", &alice, 5_000))
        .await
        .unwrap();
    let vanished = partition_of(&c.pool_show("echo").await.unwrap(), sv).primary_id;
    drop(gv);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = c.pool_show("echo").await.unwrap();
        let p = v
            .partitions
            .iter()
            .find(|p| p.primary_id == vanished)
            .unwrap();
        if p.state == "idle" {
            assert_eq!(p.alternate_id, None);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // `bulkhead pool connect` over standard input and output.
    let text = pool_connect(&gw, &alice, &[], b"hello from stdin\n");
    let l: Vec<&str> = text.lines().collect();
    assert!(
        l.len() == 2 && l[0].starts_with("echo echo ") && l[0].ends_with(" alice"),
        "{text}"
    );
    assert_eq!(l[1], "hello from stdin");

    // One user's data never reaches the next: with --untrusted the partition
    // alice used is replaced before bob's session.
    let mut ga = Gateway::connect_tcp(gw.as_str()).await.unwrap();
    let sa = ga
        .allocate(req("fresh", "alice", &alice, 5_000))
        .await
        .unwrap();
    assert_eq!(lines(&mut ga, 1).await, [format!("fresh fresh {sa} alice")]);
    let first_pid = d.show("fresh-1").await["pid"].clone();
    d.exec("fresh-1", "echo secret > /tmp/alice-data").await;
    ga.deallocate().await.unwrap();
    let v = wait_pool(&d, "fresh", 1, "idle").await;
    assert_eq!(v.partitions[0].alternate_id, None);
    let carol = add_user(&d, "carol", "fresh", 1);
    let mut gc = Gateway::connect_tcp(gw.as_str()).await.unwrap();
    let sc = gc
        .allocate(req("fresh", "carol", &carol, 60_000))
        .await
        .unwrap();
    assert_eq!(lines(&mut gc, 1).await, [format!("fresh fresh {sc} carol")]);
    let shown = d.show("fresh-1").await;
    assert_ne!(shown["pid"], first_pid, "a fresh partition");
    // Restored from the pool's template, not booted: its record says so,
    // and the guest's uptime runs on from the template's boot, longer than
    // this partition has existed (a booted guest's is always shorter).
    assert!(
        shown["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"]
                .as_str()
                .is_some_and(|m| m.contains("restored from the template of pool fresh"))),
        "{shown:#}"
    );
    let up = d.exec("fresh-1", "cut -d' ' -f1 /proc/uptime").await;
    let up_ms = (up["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .parse::<f64>()
        .unwrap()
        * 1000.0) as u64;
    let started = shown["started_at"].as_u64().unwrap();
    let lived_ms = bulkhead_store::now_ms() - started;
    assert!(
        up_ms > lived_ms,
        "uptime {up_ms} ms, started {lived_ms} ms ago: booted, not restored"
    );
    let r = d
        .exec("fresh-1", "cat /tmp/alice-data 2>/dev/null || echo none")
        .await;
    assert_eq!(r["stdout"], "none\n");
    gc.deallocate().await.unwrap();

    // The program dies mid-session: ERROR program-died, the partition is
    // replaced by a fresh one (another QEMU) under the same primary id.
    let mut gd = Gateway::connect_tcp(gw.as_str()).await.unwrap();
    let sd = gd
        .allocate(req("echo", "alice", &alice, 5_000))
        .await
        .unwrap();
    assert_eq!(lines(&mut gd, 1).await.len(), 1);
    let victim = partition_of(&c.pool_show("echo").await.unwrap(), sd).primary_id;
    let old_pid = d.show(&victim).await["pid"].clone();
    // The exec may not get its answer: the partition is replaced at once.
    // The program's `cat` may not have started when its first line came:
    // killed once it is there (bounded).
    let kill = "i=0; until killall cat 2>/dev/null; do i=$((i+1)); [ $i -gt 400 ] && exit 1; sleep 0.05; done";
    let _ = c
        .post(
            &format!("/v1/partitions/{victim}/exec"),
            &serde_json::json!({ "argv": ["/bin/sh", "-c", kill] }),
        )
        .await;
    match tokio::time::timeout(Duration::from_secs(30), gd.recv())
        .await
        .unwrap()
    {
        Err(GwError::SessionEnded { code, .. }) => assert_eq!(code, ErrorCode::ProgramDied),
        other => panic!("{other:?}"),
    }
    wait_pool(&d, "echo", 2, "idle").await;
    let new_pid = d.show(&victim).await["pid"].clone();
    assert_ne!(new_pid, old_pid, "{victim} was replaced");
    assert_eq!(
        converse(&ip_of(&d, &victim).await, "carol").0.trim(),
        "echo echo 000000000000002a carol"
    );
}

#[tokio::test]
async fn a_silent_session_ends_after_the_idle_timeout_and_is_cleaned() {
    let gw = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start(Opts {
        extra: format!("[pool]\ngateway = {gw:?}\nidle_timeout_ms = 1500\n"),
        ..Default::default()
    });
    let alice = add_user(&d, "alice", "quiet", 1);
    d.client()
        .pool_create(&statement("quiet", "quiet", 1))
        .await
        .unwrap();
    wait_pool(&d, "quiet", 1, "idle").await;
    // Made before the session (a silent one may end any moment): only the
    // cleanup at its end removes it.
    d.exec("quiet-1", "touch /tmp/scratch").await;
    let mut g = Gateway::connect_tcp(gw.as_str()).await.unwrap();
    let s = g
        .allocate(req("quiet", "alice", &alice, 5_000))
        .await
        .unwrap();
    assert_eq!(lines(&mut g, 1).await, [format!("quiet quiet {s} alice")]);
    // Nothing more either way: the gateway ends the session.
    match tokio::time::timeout(Duration::from_secs(30), g.recv())
        .await
        .unwrap()
    {
        Err(GwError::SessionEnded { code, .. }) => assert_eq!(code, ErrorCode::IdleTimeout),
        other => panic!("{other:?}"),
    }
    let v = wait_pool(&d, "quiet", 1, "idle").await;
    assert_eq!(
        (
            v.partitions[0].alternate_id.as_deref(),
            v.partitions[0].sessions_served
        ),
        (None, 1)
    );
    let r = d
        .exec("quiet-1", "test -e /tmp/scratch && echo left || echo gone")
        .await;
    assert_eq!(r["stdout"], "gone\n", "the cleanup ran");
}

#[tokio::test]
async fn an_idle_pool_partition_that_dies_is_replaced() {
    let d = Daemon::start(Opts::default());
    d.client()
        .pool_create(&statement("solo", "solo", 1))
        .await
        .unwrap();
    wait_pool(&d, "solo", 1, "idle").await;
    let pid = d.show("solo-1").await["pid"].as_u64().expect("a pid");
    // The partition's QEMU is killed, as a crash would.
    let st = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = tokio::time::Instant::now() + common::BOOT;
    loop {
        let v = d.client().pool_show("solo").await.unwrap();
        let rec = d.show("solo-1").await;
        if v.partitions[0].state == "idle" && rec["pid"].as_u64().is_some_and(|p| p != pid) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v:#?} {rec}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (first, _) = converse(&ip_of(&d, "solo-1").await, "alice");
    assert_eq!(first.trim(), "solo echo 000000000000002a alice");
}
