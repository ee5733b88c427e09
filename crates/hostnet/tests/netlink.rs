//! Bridges and TAPs made through hostnet in a fresh network namespace (root,
//! real kernel), checked with iproute2 and sysfs, which the tests may use.

use std::net::Ipv4Addr;
use std::process::Command;

use bulkhead_hostnet::{self as hostnet, tap, HostnetError};
use serde_json::Value;

/// A network namespace with a unique name, deleted on drop.
struct NetNs(String);

impl NetNs {
    fn new() -> NetNs {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        // The counter tells apart tests of this process that read the same
        // clock value (parallel tests collided once in CI).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("bhnl{}-{n}-{nanos:x}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        NetNs(name)
    }
    fn ns(&self) -> Option<&str> {
        Some(&self.0)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `ip -j -d link show` of one link in the namespace, or None.
fn ip_link(ns: &NetNs, dev: &str) -> Option<Value> {
    let out = Command::new("ip")
        .args(["-n", &ns.0, "-j", "-d", "link", "show", "dev", dev])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    Some(v[0].clone())
}

fn sysfs(ns: &NetNs, dev: &str, file: &str) -> String {
    let p = format!("/sys/class/net/{dev}/{file}");
    run(&["ip", "netns", "exec", &ns.0, "cat", &p])
        .trim()
        .to_string()
}

fn flags(link: &Value) -> Vec<String> {
    link["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}

const NOBODY: tap::Owner = tap::Owner {
    uid: 65534,
    gid: 65534,
};

#[test]
fn bridge_and_tap_in_a_fresh_namespace() {
    let ns = NetNs::new();
    let gw = (Ipv4Addr::new(10, 231, 7, 1), 24);
    // Twice: the second call finds everything in place and changes nothing.
    for _ in 0..2 {
        hostnet::ensure_bridge("br0", Some(gw), ns.ns()).unwrap();
    }
    let br = ip_link(&ns, "br0").expect("bridge made");
    assert_eq!(br["linkinfo"]["info_kind"], "bridge");
    assert!(flags(&br).contains(&"UP".to_string()), "{br}");
    let addrs = run(&["ip", "-n", &ns.0, "-j", "-4", "addr", "show", "dev", "br0"]);
    let addrs: Value = serde_json::from_str(&addrs).unwrap();
    let info = addrs[0]["addr_info"].as_array().unwrap();
    assert_eq!(info.len(), 1, "one address, not two: {addrs}");
    assert_eq!(info[0]["local"], "10.231.7.1");
    assert_eq!(info[0]["prefixlen"], 24);

    let name = hostnet::names::tap_name("test", "p1", "net0");
    tap::create(&name, "br0", Some(NOBODY), ns.ns()).unwrap();
    let t = ip_link(&ns, &name).expect("TAP made");
    assert_eq!(t["master"], "br0", "{t}");
    assert!(flags(&t).contains(&"UP".to_string()), "{t}");
    let data = &t["linkinfo"]["info_data"];
    assert_eq!(data["type"], "tap", "{t}");
    assert_eq!(data["persist"], true, "{t}");
    assert_eq!(data["pi"], false, "{t}");
    assert_eq!(sysfs(&ns, &name, "owner"), "65534");
    assert_eq!(sysfs(&ns, &name, "group"), "65534");
    // IFF_TAP | IFF_NO_PI | IFF_PERSIST.
    assert_eq!(sysfs(&ns, &name, "tun_flags"), "0x1802");
    // Not in the host's namespace.
    assert!(hostnet::link(&name, None).unwrap().is_none());
    assert_eq!(
        hostnet::bridge_ports("br0", ns.ns()).unwrap(),
        vec![name.clone()]
    );
    let old_index = t["ifindex"].as_u64().unwrap();

    // A TAP left by a crash (here: one not on the bridge) is replaced.
    run(&["ip", "-n", &ns.0, "link", "set", "dev", &name, "nomaster"]);
    tap::create(&name, "br0", Some(NOBODY), ns.ns()).unwrap();
    let t = ip_link(&ns, &name).unwrap();
    assert_eq!(t["master"], "br0");
    assert_ne!(t["ifindex"].as_u64().unwrap(), old_index, "a new device");

    tap::remove(&name, ns.ns()).unwrap();
    assert!(ip_link(&ns, &name).is_none(), "TAP removed");
    assert!(hostnet::bridge_ports("br0", ns.ns()).unwrap().is_empty());
    tap::remove(&name, ns.ns()).expect("removing twice is fine");
    hostnet::delete_link("br0", ns.ns()).unwrap();
    assert!(ip_link(&ns, "br0").is_none());
    assert!(hostnet::bridge_ports("br0", ns.ns()).unwrap().is_empty());
}

#[test]
fn bad_requests_change_nothing() {
    let ns = NetNs::new();
    let links_before = run(&["ip", "-n", &ns.0, "-o", "link"]);
    // No such bridge: an error, and no TAP left behind.
    let e = tap::create("bhtap0", "nobr0", Some(NOBODY), ns.ns()).unwrap_err();
    assert!(
        matches!(e, HostnetError::NoSuchLink { ref name, .. } if name == "nobr0"),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!("bridge nobr0 does not exist in network namespace {}", ns.0)
    );
    // Names the kernel would refuse, or that would escape /run/netns.
    for bad in ["", "sixteen-chars-xx", "a/b", "../x", "a b"] {
        assert!(matches!(
            tap::create(bad, "br0", None, ns.ns()),
            Err(HostnetError::InvalidName(_))
        ));
        assert!(hostnet::ensure_bridge(bad, None, ns.ns()).is_err());
    }
    for bad_ns in ["", "..", "a/../../etc"] {
        assert!(matches!(
            hostnet::ensure_bridge("br0", None, Some(bad_ns)),
            Err(HostnetError::InvalidName(_))
        ));
    }
    let missing = format!("{}-missing", ns.0);
    let e = hostnet::ensure_bridge("br0", None, Some(&missing)).unwrap_err();
    assert!(e.to_string().contains(&missing), "{e}");
    assert_eq!(run(&["ip", "-n", &ns.0, "-o", "link"]), links_before);
    assert!(!std::path::Path::new("/run/netns").join(&missing).exists());
}

/// A VXLAN port on a bridge, and its flood entries, as iproute2 sees them;
/// both calls are idempotent.
#[test]
fn vxlan_port_and_flood_entries() {
    use hostnet::vxlan::{self, Vxlan};
    let ns = NetNs::new();
    run(&[
        "ip", "-n", &ns.0, "link", "add", "ul0", "type", "veth", "peer", "name", "ul1",
    ]);
    run(&[
        "ip",
        "-n",
        &ns.0,
        "addr",
        "add",
        "192.0.2.1/24",
        "dev",
        "ul0",
    ]);
    run(&["ip", "-n", &ns.0, "link", "set", "ul0", "up"]);
    hostnet::ensure_bridge("br0", None, ns.ns()).unwrap();
    let v = Vxlan {
        vni: 4242,
        local: Ipv4Addr::new(192, 0, 2, 1),
        port: 4789,
        mtu: 1500,
    };
    for _ in 0..2 {
        vxlan::ensure("vx0", v, "br0", ns.ns()).unwrap();
    }
    let link = ip_link(&ns, "vx0").expect("vx0 made");
    let info = &link["linkinfo"]["info_data"];
    assert_eq!(info["id"], 4242);
    assert_eq!(info["local"], "192.0.2.1");
    assert_eq!(info["port"], 4789);
    assert_eq!(link["mtu"], 1500);
    assert_eq!(link["master"], "br0");
    assert!(flags(&link).contains(&"UP".to_string()));

    assert!(vxlan::remotes("vx0", ns.ns()).unwrap().is_empty());
    let (b, c) = (Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 3));
    for ip in [c, b, c] {
        vxlan::add_remote("vx0", ip, ns.ns()).unwrap();
    }
    assert_eq!(vxlan::remotes("vx0", ns.ns()).unwrap(), [b, c]);
    let fdb = run(&["bridge", "-n", &ns.0, "fdb", "show", "dev", "vx0"]);
    let zero: Vec<_> = fdb
        .lines()
        .filter(|l| l.starts_with("00:00:00:00:00:00"))
        .collect();
    assert_eq!(zero.len(), 2, "{fdb}");
    assert!(zero.iter().all(|l| l.contains("permanent")), "{fdb}");
    assert!(matches!(
        vxlan::add_remote("nope0", b, ns.ns()),
        Err(HostnetError::NoSuchLink { .. })
    ));
    assert!(matches!(
        vxlan::ensure("vx1", v, "nobridge", ns.ns()),
        Err(HostnetError::NoSuchLink { .. })
    ));
}
