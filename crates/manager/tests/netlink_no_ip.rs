//! The daemon's network set-up needs no `ip` command: the bridge is made over
//! netlink with PATH pointing at an empty directory. Its own test binary,
//! since it changes PATH for the whole process (nothing here runs `nft`).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use bulkhead_manager::net::{self, Subnet};
use serde_json::Value;

fn find_ip() -> PathBuf {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("iproute2 for the test's own checks")
}

fn run(ip: &Path, args: &[&str]) -> String {
    let out = Command::new(ip).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn bridge_set_up_works_without_the_ip_command() {
    let ip = find_ip();
    let ns = format!("bhnoip{}", std::process::id());
    run(&ip, &["netns", "add", &ns]);
    struct Del<'a>(&'a Path, &'a str);
    impl Drop for Del<'_> {
        fn drop(&mut self) {
            let _ = Command::new(self.0).args(["netns", "del", self.1]).status();
        }
    }
    let _del = Del(&ip, &ns);

    let empty = tempfile::tempdir().unwrap();
    std::env::set_var("PATH", empty.path());
    assert!(
        Command::new("ip").arg("-V").output().is_err(),
        "no ip on PATH"
    );

    // The daemon's calls act on the caller's namespace: run them from a
    // thread that joined the test's.
    let subnet = Subnet::parse("10.233.1.0/24").unwrap();
    let nsfile = std::fs::File::open(Path::new("/run/netns").join(&ns)).unwrap();
    std::thread::spawn(move || {
        // SAFETY: setns(2) with a descriptor open for the call; it moves only
        // this thread, which ends with the test's calls.
        let rc = unsafe { libc::setns(nsfile.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        // Twice: idempotent.
        net::ensure_bridge("bhnoip0", &subnet).unwrap();
        net::ensure_bridge("bhnoip0", &subnet).unwrap();
    })
    .join()
    .unwrap();

    let link: Value = serde_json::from_str(&run(
        &ip,
        &["-n", &ns, "-j", "-4", "addr", "show", "dev", "bhnoip0"],
    ))
    .unwrap();
    let flags = link[0]["flags"].as_array().unwrap();
    assert!(flags.iter().any(|f| f == "UP"), "{link}");
    let addrs = link[0]["addr_info"].as_array().unwrap();
    assert_eq!(addrs.len(), 1, "{link}");
    assert_eq!(addrs[0]["local"], subnet.gateway().to_string());
    assert_eq!(subnet.gateway(), Ipv4Addr::new(10, 233, 1, 1));
    assert_eq!(addrs[0]["prefixlen"], 24);
}
