//! The `bulkhead partition` commands against a real bulkheadd: `--json`
//! prints the daemon's typed replies (they read back as the API types and
//! equal what the typed client gets), and the text views are made from the
//! same types. No partition boots here.

mod common;

use bulkhead_manager::api::{ConsoleLines, PartitionView, Stats};
use bulkhead_store::{PartitionRecord, PartitionState};
use common::{Daemon, Opts};
use std::process::Command;

fn bulkhead(d: &Daemon, args: &[&str]) -> String {
    let out = d.cli(&[&["partition"], args].concat());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "bulkhead {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn json_output_is_the_typed_reply_and_text_is_made_from_it() {
    let d = Daemon::start(Opts::default());
    let c = d.client();

    let created: PartitionRecord = serde_json::from_str(&bulkhead(
        &d,
        &[
            "create", "web", "--memory", "128M", "--cpu", "10%", "--net", "--json",
        ],
    ))
    .unwrap();
    assert_eq!(
        (created.name.as_str(), created.state),
        ("web", PartitionState::Defined)
    );
    let ip = created.net.as_ref().expect("an address").ip.clone();
    assert!(ip.starts_with(&d.subnet_prefix), "{ip}");

    let listed: Vec<PartitionRecord> =
        serde_json::from_str(&bulkhead(&d, &["list", "--json"])).unwrap();
    assert_eq!(listed, c.list().await.unwrap());
    assert_eq!(listed, vec![created.clone()]);
    let table = bulkhead(&d, &["list"]);
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("web") && l.contains("defined") && l.contains(&ip)),
        "{table}"
    );

    let shown: PartitionView =
        serde_json::from_str(&bulkhead(&d, &["show", "web", "--json"])).unwrap();
    let typed = c.show("web").await.unwrap();
    assert_eq!(shown.record, typed.record);
    assert_eq!(
        (shown.memory_limit_mib, &shown.tap, &shown.events),
        (typed.memory_limit_mib, &typed.tap, &typed.events)
    );
    assert!(shown.memory_limit_mib > 128);
    let text = bulkhead(&d, &["show", "web"]);
    for want in [
        format!("address:         {ip}"),
        format!("tap:             {}", shown.tap.clone().unwrap()),
        "pid:             -".to_string(),
        format!("cgroup limit {} MiB", shown.memory_limit_mib),
    ] {
        assert!(text.contains(&want), "{want:?} not in\n{text}");
    }

    let stats: Stats = serde_json::from_str(&bulkhead(&d, &["stats", "web", "--json"])).unwrap();
    assert_eq!(
        (stats.state, stats.pid, stats.cpu_entitlement_percent),
        (PartitionState::Defined, None, 10)
    );
    let log: ConsoleLines =
        serde_json::from_str(&bulkhead(&d, &["console", "web", "--log", "--json"])).unwrap();
    assert!(log.lines.is_empty(), "{:?}", log.lines);

    assert_eq!(bulkhead(&d, &["destroy", "web"]), "destroyed web\n");
    assert!(c.list().await.unwrap().is_empty());
}

/// `bulkhead grant ...` and `bulkhead region list` against a daemon with no
/// partitions running: `--json` is the typed reply, refusals print one line
/// and exit non-zero, `grant as` is refused for an unknown partition.
#[tokio::test]
async fn grant_commands_print_the_typed_replies() {
    let d = Daemon::start(Opts::default());
    let run = |args: &[&str]| {
        Command::new(bulkhead_testbed::bulkhead_bin())
            .args(args)
            .arg("--socket")
            .arg(&d.socket)
            .env_remove("BULKHEAD_API")
            .output()
            .unwrap()
    };
    let out = run(&["grant", "list", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: Vec<bulkhead_manager::grants::GrantInfo> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, d.client().grant_list(None).await.unwrap());
    let out = run(&["region", "list", "--json"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let out = run(&["grant", "log", "--after", "0", "--json"]);
    assert!(out.status.success(), "{out:?}");
    // An unknown grant: 404 with the table's own reason, one line on stderr.
    let out = run(&["grant", "show", "gr-00000000000000aa"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("gr-00000000000000aa"), "{err}");
    let e = d
        .client()
        .grant_show("gr-00000000000000aa")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, bulkhead_manager::client::ClientError::Api { status: 404, reason: Some(r), .. } if r == "unknown_grant"),
        "{e:?}"
    );
    // The connection flags of `as` come before its request.
    let as_nobody = |req: &[&str]| {
        Command::new(bulkhead_testbed::bulkhead_bin())
            .args(["grant", "as", "nobody", "--socket"])
            .arg(&d.socket)
            .args(req)
            .env_remove("BULKHEAD_API")
            .output()
            .unwrap()
    };
    let out = as_nobody(&["region", "create", "buf", "--size", "1M"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{out:?}"
    );
    // Checked before anything is sent: a size that is not a power of two.
    let out = as_nobody(&["region", "create", "buf", "--size", "3M"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("power of two"),
        "{out:?}"
    );
}
