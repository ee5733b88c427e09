//! L2TP across partitions on different hosts of a cluster (issue 15): the
//! modem model's PTY is partition M's serial line on host a, whose agent
//! runs the resource server on M's VLAN address; a client in partition C on
//! host b dials PRIMARY_ISP through M across the cluster's VLAN (VXLAN
//! between the hosts' network namespaces) and exchanges bytes with a TCP
//! echo far end.

mod common;

use bulkhead_manager::client::Client;
use bulkhead_testbed::cluster::{self, Guard, Options};
use common::l2tp::{echo, Modem};
use common::BOOT;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "m0dem-s3cret";
const NUMBER: &str = "5551234";
const CONTROL: &str = "/run/l2tp-client.sock";

async fn must(c: &Client, p: &str, cmd: &str) -> String {
    let r = c
        .post(
            &format!("/v1/partitions/{p}/exec"),
            &json!({ "argv": ["sh", "-c", cmd], "timeout_secs": 60 }),
        )
        .await
        .unwrap();
    assert_eq!(r["code"], 0, "{p}: {cmd}: {r:#}");
    r["stdout"].as_str().unwrap().to_string()
}

async fn start(c: &Client, p: &str) -> Value {
    let r = tokio::time::timeout(
        BOOT,
        c.post(
            &format!("/v1/partitions/{p}/start"),
            &json!({ "wait": true }),
        ),
    )
    .await
    .expect("started in time")
    .unwrap();
    assert_eq!(r["state"], "running", "{r:#}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_partition_on_another_host_dials_through_the_modem_partition() {
    let name = format!("l2{}", std::process::id() % 100_000);
    let bin_dir = bulkhead_testbed::bulkhead_bin()
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let opts = Options {
        hosts: 2,
        lease_ms: 3000,
        image_dir: bulkhead_testbed::image_dir(),
        bin_dir,
    };
    let _guard = Guard(name.clone());
    let cl = cluster::up(&name, &opts).unwrap_or_else(|e| panic!("cluster up: {e}"));
    let host = |h: &str| Client::unix(&cl.hosts.iter().find(|x| x.name == h).expect("host").socket);
    let (a, b) = (host("a"), host("b"));

    let far_end = echo().await;
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyM0");
    let _modem = Modem(
        Command::new(bulkhead_testbed::bulkhead_bin())
            .args(["modem", "emulate", "--link"])
            .arg(&link)
            .args(["--phonebook", &format!("{NUMBER}={far_end}")])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !link.exists() {
        assert!(Instant::now() < deadline, "the modem model's PTY");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // M on host a owns the line; C on host b.
    a.post(
        "/v1/partitions",
        &json!({ "name": "m", "memory_mib": 160, "cpu_percent": 30, "net": true, "host": "a",
                 "devices": { "serial": [link],
                     "l2tp_server": { "secret": SECRET, "directory": { "PRIMARY_ISP": NUMBER } } } }),
    )
    .await
    .unwrap();
    b.post(
        "/v1/partitions",
        &json!({ "name": "c", "memory_mib": 160, "cpu_percent": 30, "net": true, "host": "b" }),
    )
    .await
    .unwrap();
    let (m, c) = tokio::join!(start(&a, "m"), start(&b, "c"));
    // On the hosts asked for (records name hosts by id).
    let hosts = a.cluster_hosts().await.unwrap();
    let id = |n: &str| json!(hosts.iter().find(|h| h.name == n).unwrap().id);
    assert_eq!(
        (&m["host"], &c["host"]),
        (&id("a"), &id("b")),
        "{m:#}\n{c:#}"
    );
    let m_ip = m["net"]["ip"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();

    // The client daemon in C, to M's server across hosts.
    let profile = format!(
        "outgoing = \"{m_ip}:1701\"\nincoming = \"{m_ip}:1701\"\nsecret = \"{SECRET}\"\ncontrol = \"{CONTROL}\"\n"
    );
    must(
        &b,
        "c",
        &format!(
            "printf '{profile}' > /tmp/client.toml && \
             (bulkhead-l2tp client --profile /tmp/client.toml > /tmp/client.log 2>&1 &) && \
             i=0; until [ -S {CONTROL} ]; do i=$((i+1)); [ $i -gt 450 ] && exit 1; sleep 0.1; done"
        ),
    )
    .await;
    let out = must(
        &b,
        "c",
        &format!("printf 'ping-across-hosts\\n' | bulkhead-l2tp dial PRIMARY_ISP --control {CONTROL} --stdio"),
    )
    .await;
    assert!(out.contains("ping-across-hosts"), "{out}");
    for (client, p) in [(&a, "m"), (&b, "c")] {
        client
            .call(
                hyper::Method::DELETE,
                &format!("/v1/partitions/{p}?force=true"),
                None,
            )
            .await
            .unwrap();
    }
}
