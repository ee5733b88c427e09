//! What shapes a managed partition's machine: hot-plug ports (disks added and
//! removed while it runs) and its named CPU model.

mod common;

use bulkhead_engine::CpuModel;
use common::{Daemon, Opts};
use hyper::Method;
use serde_json::json;

/// QEMU's command line, from /proc: what actually runs, not what was asked.
fn qemu_args(pid: u64) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn arg_after(args: &[String], flag: &str) -> String {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    args[i + 1].clone()
}

/// The block devices the guest sees, e.g. ["vda"].
async fn guest_disks(d: &Daemon, name: &str) -> Vec<String> {
    let r = d.exec(name, "ls /sys/block").await;
    assert_eq!(r["code"], 0, "{r:#}");
    r["stdout"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .filter(|b| b.starts_with("vd"))
        .map(str::to_string)
        .collect()
}

/// Waits in the guest (bounded) until `/sys/block/<dev>` is present or absent.
async fn wait_guest_disk(d: &Daemon, name: &str, dev: &str, present: bool) {
    let test = if present { "-e" } else { "! -e" };
    let r = d
        .exec(
            name,
            &format!(
                "for i in $(seq 300); do [ {test} /sys/block/{dev} ] && exit 0; sleep 0.1; done; exit 1"
            ),
        )
        .await;
    assert_eq!(r["code"], 0, "{dev} never became present={present}: {r:#}");
}

fn marker_disk(d: &Daemon, file: &str, marker: &str) -> String {
    // Disks come from the storage roots; the default root is under the data dir.
    let path = d.storage_root().join(file);
    let mut data = marker.as_bytes().to_vec();
    data.resize(1 << 20, 0);
    std::fs::write(&path, data).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test]
async fn hotplug_partition_takes_a_disk_and_gives_it_back() {
    let d = Daemon::start(Opts::default());
    let c = d.client();
    let v = d.create("hp", 50, 192, json!({ "hotplug_slots": 2 })).await;
    assert_eq!(v["hotplug_slots"], 2);
    // A partition made without ports refuses hot-plug, clearly.
    d.create("fixed", 10, 128, json!({})).await;
    let one = marker_disk(&d, "one.raw", "HOTPLUG-ONE");
    let e = c
        .post("/v1/partitions/fixed/disks", &json!({ "path": one }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("conflict"), "{e}");
    assert!(e.to_string().contains("--hotplug"), "{e}");

    let v = d.start_wait("hp").await;
    let args = qemu_args(v["pid"].as_u64().unwrap());
    assert!(arg_after(&args, "-machine").starts_with("q35"), "{args:?}");
    let ports = args
        .iter()
        .filter(|a| a.starts_with("pcie-root-port,"))
        .count();
    assert_eq!(ports, 2, "{args:?}");
    assert!(guest_disks(&d, "hp").await.is_empty());

    // Attach: the guest sees the disk and reads what the host wrote in it.
    let a = c
        .post(
            "/v1/partitions/hp/disks",
            &json!({ "path": one, "readonly": true }),
        )
        .await
        .unwrap();
    assert_eq!(
        (&a["id"], &a["slot"], &a["format"], &a["readonly"]),
        (&json!("hot0"), &json!(0), &json!("raw"), &json!(true)),
        "{a:#}"
    );
    wait_guest_disk(&d, "hp", "vda", true).await;
    let r = d
        .exec("hp", "dd if=/dev/vda bs=11 count=1 2>/dev/null")
        .await;
    assert_eq!(r["stdout"], "HOTPLUG-ONE", "{r:#}");

    // The second port takes a second disk; a third finds none free.
    let two = marker_disk(&d, "two.raw", "HOTPLUG-TWO");
    let b = c
        .post(
            "/v1/partitions/hp/disks",
            &json!({ "path": two, "id": "scratch" }),
        )
        .await
        .unwrap();
    assert_eq!((&b["id"], &b["slot"]), (&json!("scratch"), &json!(1)));
    let e = c
        .post("/v1/partitions/hp/disks", &json!({ "path": two }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("conflict"), "{e}");
    wait_guest_disk(&d, "hp", "vdb", true).await;
    let shown = d.show("hp").await["hotplugged_disks"].clone();
    assert_eq!(shown, json!([a, b]), "show lists what is plugged, by port");

    // Bad requests change nothing.
    for (body, code) in [
        (json!({ "path": "relative.raw" }), "invalid_argument"),
        (json!({ "path": "/no/such/disk.raw" }), "invalid_argument"),
        (json!({ "path": one, "format": "vmdk" }), "invalid_argument"),
        (
            json!({ "path": one, "id": "Not An Id" }),
            "invalid_argument",
        ),
    ] {
        let e = c.post("/v1/partitions/hp/disks", &body).await.unwrap_err();
        assert_eq!(e.code(), Some(code), "{body}: {e}");
    }
    let e = c
        .call(Method::DELETE, "/v1/partitions/hp/disks/nope", None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_found"), "{e}");

    // Remove: answered once the guest let go (DEVICE_DELETED); the disk is gone.
    let r = c
        .call(Method::DELETE, "/v1/partitions/hp/disks/hot0", None)
        .await
        .unwrap();
    assert_eq!(r, json!({ "id": "hot0" }));
    wait_guest_disk(&d, "hp", "vda", false).await;
    assert_eq!(guest_disks(&d, "hp").await, vec!["vdb"]);
    // Its port is free again; an id in use is still refused.
    let e = c
        .post(
            "/v1/partitions/hp/disks",
            &json!({ "path": one, "id": "scratch" }),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already has a device"), "{e}");
    let again = c
        .post("/v1/partitions/hp/disks", &json!({ "path": one }))
        .await
        .unwrap();
    assert_eq!((&again["id"], &again["slot"]), (&json!("hot0"), &json!(0)));
    let v = d.show("hp").await;
    let events: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("disk hot0 hot-plugged"))
            && events.contains(&"disk hot0 removed"),
        "{events:?}"
    );
    let v = c
        .post("/v1/partitions/hp/stop", &json!({ "force": true }))
        .await
        .unwrap();
    assert_eq!(v["state"], "stopped");
    assert!(d.show("hp").await["hotplugged_disks"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(d.cgroups().is_empty(), "{:?}", d.cgroups());
}

#[tokio::test]
async fn the_recorded_cpu_model_is_the_one_qemu_runs() {
    let d = Daemon::start(Opts::default());
    // The default is recorded by name at create.
    let v = d.create("dflt", 10, 128, json!({})).await;
    assert_eq!(v["cpu_model"], CpuModel::default().name());
    assert_eq!(v["cpu_model"], "x86-64-v2");
    let e = d
        .client()
        .post(
            "/v1/partitions",
            &json!({ "name": "h", "memory_mib": 128, "cpu_percent": 10, "cpu_model": "host" }),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("invalid_argument"), "{e}");

    // A partition with the other model: QEMU and the guest both show it.
    let v = d
        .create("old", 50, 192, json!({ "cpu_model": "x86-64-v1" }))
        .await;
    assert_eq!(v["cpu_model"], "x86-64-v1");
    assert_eq!(d.show("old").await["cpu_model"], "x86-64-v1");
    let v = d.start_wait("old").await;
    let args = qemu_args(v["pid"].as_u64().unwrap());
    assert_eq!(
        arg_after(&args, "-cpu"),
        CpuModel::X86_64V1.qemu_cpu(),
        "{args:?}"
    );
    let r = d
        .exec(
            "old",
            "grep -m1 '^model name' /proc/cpuinfo; grep -m1 '^flags' /proc/cpuinfo",
        )
        .await;
    let out = r["stdout"].as_str().unwrap();
    assert!(out.contains(": Bulkhead x86-64-v1\n"), "{out}");
    let flags: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .skip(2)
        .collect();
    // The baseline has SSE2 and nothing of v2 (which `max` or the host would add).
    assert!(flags.contains(&"sse2"), "{flags:?}");
    for f in ["ssse3", "sse4_2", "popcnt", "rdrand", "avx"] {
        assert!(!flags.contains(&f), "{f} in a x86-64-v1 guest: {flags:?}");
    }
    // Without RDRAND the guest kernel seeds its RNG from CPU jitter: a read
    // that blocks until it is seeded still returns.
    let t0 = std::time::Instant::now();
    let r = d.exec("old", "head -c 16 /dev/random | wc -c").await;
    assert_eq!(r["stdout"].as_str().unwrap().trim(), "16", "{r:#}");
    eprintln!("/dev/random answered after {:?}", t0.elapsed());
}
