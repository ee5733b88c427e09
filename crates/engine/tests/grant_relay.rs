//! `bulkhead-guest`'s grant commands on a real partition, relayed by its agent
//! to the host: the test takes the partition's calls and plays the manager
//! with scripted replies. Checks what arrives (typed requests, the guest's
//! own bytes), what the guest prints and exits with, the refusals, the
//! unavailable and timeout paths, that read/write go through the guest's own
//! mapping of the path the manager reports, and the ignore-unmap test knob.

mod common;

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use bulkhead_agent::{AgentError, GuestCall, WireError};
use bulkhead_engine::{Partition, RegionSpec};
use bulkhead_grant::reply::{GrantView, GuestReply, OwnedView};
use bulkhead_grant::request::{parse_request, GuestRequest};
use bulkhead_grant::{Access, Cookie, GrantId, GrantState, PartitionId, ResourceId, ResourceKind};
use common::*;
use tokio::sync::mpsc::Receiver;

/// The agent gives up on a call after 60 s; exec must outlast that.
const LONG: Duration = Duration::from_secs(150);

async fn guest(p: &Partition, cmd: &str, timeout: Duration) -> (i32, String, String) {
    let out = p
        .agent()
        .exec(&sh(cmd), None, timeout)
        .await
        .expect("agent exec");
    (out.code, text(&out.stdout), text(&out.stderr))
}

/// Runs `cmd` in the guest while answering the one call it makes with
/// `answer`; returns the request as the manager parsed it and the outcome.
async fn relayed(
    p: &Partition,
    calls: &mut Receiver<GuestCall>,
    cmd: &str,
    answer: impl FnOnce(&GuestRequest) -> Result<serde_json::Value, WireError>,
) -> (GuestRequest, (i32, String, String)) {
    let manager = async {
        let call = tokio::time::timeout(CMD, calls.recv())
            .await
            .unwrap_or_else(|_| panic!("{cmd}: no call arrived"))
            .expect("calls channel open");
        let req = parse_request(&call.request).expect("the guest sends a valid request");
        call.reply(answer(&req));
        req
    };
    let (out, req) = tokio::join!(guest(p, cmd, CMD), manager);
    (req, out)
}

fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap()
}

fn error_kind(stderr: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(stderr)
        .unwrap_or_else(|e| panic!("stderr is not one JSON object ({e}): {stderr}"));
    v["error"]["kind"].as_str().expect("error.kind").to_string()
}

fn gid(n: u64) -> GrantId {
    format!("gr-{n:016x}").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_grant_commands_reach_the_host_and_print_its_replies() {
    let dir = tempfile::tempdir().unwrap();
    let name = unique("grl");
    let mut s = spec(&name);
    s.hotplug_slots = 1;
    let a = Partition::start(s, opts(&dir, "a"), READY)
        .await
        .expect("boot");
    let me: PartitionId = name.parse().unwrap();

    // The socket is root's alone.
    assert_eq!(
        exec_ok(&a, "stat -c '%a %u' /run/bulkhead /run/bulkhead/agent.sock").await,
        "700 0\n600 0"
    );

    // Nobody took the calls yet: unavailable, exit 3, one line.
    let (code, out, err) = guest(&a, "bulkhead-guest list", CMD).await;
    assert_eq!((code, out.as_str()), (3, ""), "stderr {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("unavailable"), "{err}");
    let (code, _, err) = guest(&a, "bulkhead-guest list --json", CMD).await;
    assert_eq!((code, error_kind(&err).as_str()), (3, "unavailable"));

    let mut calls = a.agent().take_calls().expect("first take");
    assert!(a.agent().take_calls().is_none());

    // grant: the typed request arrives; the reply's id and cookie are printed.
    let cookie = Cookie::parse(&format!("bhc1_{:016x}{}", 0xa1, "5e".repeat(32))).unwrap();
    let issued = GuestReply::Issued {
        grant: gid(0xa1),
        cookie: cookie.clone(),
        expires_at: None,
    };
    let (req, (code, out, err)) = relayed(
        &a,
        &mut calls,
        "bulkhead-guest grant foo --to b --read-only --expires 10m",
        |_| Ok(json(&issued)),
    )
    .await;
    assert_eq!(
        req,
        GuestRequest::Grant {
            resource: "foo".parse().unwrap(),
            kind: ResourceKind::Region,
            to: "b".parse().unwrap(),
            read_only: true,
            expires_ms: Some(600_000),
        }
    );
    assert_eq!(code, 0, "stderr {err}");
    assert_eq!(out, format!("{} {cookie}", gid(0xa1)));

    // accept: GRANT_ID PATH.
    let path = "/sys/bus/pci/devices/0000:01:00.0/resource2";
    let resource = ResourceId {
        kind: ResourceKind::Region,
        owner: "b".parse().unwrap(),
        name: "foo".parse().unwrap(),
    };
    let mapped = GuestReply::Mapped {
        grant: gid(0xa1),
        resource: resource.clone(),
        access: Access::ReadOnly,
        path: path.into(),
    };
    let (req, (code, out, _)) = relayed(
        &a,
        &mut calls,
        &format!("bulkhead-guest accept {cookie}"),
        |_| Ok(json(&mapped)),
    )
    .await;
    assert_eq!(
        req,
        GuestRequest::Accept {
            cookie: cookie.clone()
        }
    );
    assert_eq!((code, out), (0, format!("{} {path}", gid(0xa1))));

    // A refusal: one line on stderr, exit 1, the kind in --json.
    let refuse = |_: &GuestRequest| Err(WireError::new("cookie_used", "this cookie was used"));
    let cmd = format!("bulkhead-guest accept {cookie}");
    let (_, (code, out, err)) = relayed(&a, &mut calls, &cmd, refuse).await;
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cookie_used") && err.contains("this cookie was used"),
        "{err}"
    );
    let cmd = format!("bulkhead-guest accept {cookie} --json");
    let (_, (code, _, err)) = relayed(&a, &mut calls, &cmd, refuse).await;
    assert_eq!((code, error_kind(&err).as_str()), (1, "cookie_used"));

    // revoke prints the ended ids; --json the reply object.
    let ended = GuestReply::Ended {
        grant: gid(0xa1),
        ended: vec![gid(0xc3), gid(0xa1)],
    };
    let cmd = format!("bulkhead-guest revoke {} --json", gid(0xa1));
    let (req, (code, out, _)) = relayed(&a, &mut calls, &cmd, |_| Ok(json(&ended))).await;
    assert_eq!(req, GuestRequest::Revoke { grant: gid(0xa1) });
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<GuestReply>(&out).unwrap(), ended);

    // A usage error never reaches the host: exit 2.
    let (code, _, err) = guest(&a, "bulkhead-guest grant foo", CMD).await;
    assert_eq!(code, 2, "{err}");
    assert!(calls.try_recv().is_err());

    // read/write go to the guest's own mapping of the path `list` reports.
    let size: u64 = 1 << 20;
    let file = tempfile::Builder::new()
        .prefix("bh-relay-")
        .tempfile_in("/dev/shm")
        .unwrap();
    file.as_file().set_len(size).unwrap();
    let host = file.as_file();
    let plug = a
        .plug_region(RegionSpec {
            id: "shm0".into(),
            path: file.path().to_path_buf(),
            readonly: false,
        })
        .await
        .expect("plug");
    let info = a
        .agent()
        .region_map(&plug.port, Duration::from_secs(60))
        .await
        .expect("map");
    let mapped_path = info.path.to_str().unwrap().to_string();
    let listing = |mapped: bool| GuestReply::List {
        owned: vec![OwnedView {
            resource: ResourceId {
                kind: ResourceKind::Region,
                owner: me.clone(),
                name: "foo".parse().unwrap(),
            },
            size: Some(size),
            path: mapped.then(|| mapped_path.clone()),
        }],
        grants: vec![GrantView {
            grant: gid(0xb2),
            resource: resource.clone(),
            granter: "b".parse().unwrap(),
            grantee: me.clone(),
            access: Access::ReadWrite,
            parent: None,
            depth: 1,
            state: GrantState::Accepted,
            expires_at: None,
            path: mapped.then(|| mapped_path.clone()),
        }],
    };
    let data = format!("GUEST-WROTE-{}", std::process::id()).into_bytes();
    let cmd = format!(
        "bulkhead-guest write foo --offset 8192 --data {}",
        hex::encode(&data)
    );
    let (req, (code, _, err)) = relayed(&a, &mut calls, &cmd, |_| Ok(json(&listing(true)))).await;
    assert_eq!(req, GuestRequest::List {});
    assert_eq!(code, 0, "{err}");
    let mut back = vec![0u8; data.len()];
    host.read_exact_at(&mut back, 8192).unwrap();
    assert_eq!(back, data, "the guest's write reached the host's file");
    let pattern = format!("HOST-WROTE-{}", std::process::id()).into_bytes();
    host.write_all_at(&pattern, 4096).unwrap();
    let cmd = format!(
        "bulkhead-guest read {} --offset 4096 --len {}",
        gid(0xb2),
        pattern.len()
    );
    let (_, (code, out, err)) = relayed(&a, &mut calls, &cmd, |_| Ok(json(&listing(true)))).await;
    assert_eq!((code, out), (0, hex::encode(&pattern)), "{err}");
    // The list shows it with the roles.
    let (_, (code, out, _)) = relayed(&a, &mut calls, "bulkhead-guest list", |_| {
        Ok(json(&listing(true)))
    })
    .await;
    assert_eq!(code, 0);
    assert!(out.contains(&mapped_path), "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with(&gid(0xb2).to_string()))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.split_whitespace().any(|w| w == "holder"), "{row}");
    // Not mapped: refused, nothing read.
    let cmd = "bulkhead-guest read foo --offset 0 --len 4 --json";
    let (_, (code, out, err)) = relayed(&a, &mut calls, cmd, |_| Ok(json(&listing(false)))).await;
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(error_kind(&err), "not_mapped");

    // The manager keeps the call and never answers: the guest gets timeout
    // (exit 3) from the agent, in bounded time.
    let t0 = Instant::now();
    let hold = async {
        let call = tokio::time::timeout(CMD, calls.recv())
            .await
            .expect("call")
            .unwrap();
        call
    };
    let ((code, _, err), held) = tokio::join!(guest(&a, "bulkhead-guest list --json", LONG), hold);
    assert_eq!((code, error_kind(&err).as_str()), (3, "timeout"), "{err}");
    assert!(t0.elapsed() < LONG);
    drop(held);

    // Dropped receiver: unavailable again.
    drop(calls);
    let (code, _, err) = guest(&a, "bulkhead-guest list --json", CMD).await;
    assert_eq!((code, error_kind(&err).as_str()), (3, "unavailable"));

    // The hostile-agent knob: with the file present, region_unmap gets no
    // answer at all; without it, it works.
    exec_ok(&a, "touch /run/bulkhead/ignore-unmap").await;
    let e = a
        .agent()
        .region_unmap(&plug.port, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(e, AgentError::Timeout { .. }), "{e}");
    exec_ok(&a, "rm /run/bulkhead/ignore-unmap").await;
    let u = a
        .agent()
        .region_unmap(&plug.port, CMD)
        .await
        .expect("unmap without the knob");
    assert_eq!(u.addr, info.addr);
}
