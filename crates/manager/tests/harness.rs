//! The test harness itself: its cgroup helpers find the hierarchies from
//! mountinfo and fail when they cannot, so the other tests' "no cgroup
//! leaked" assertions can only pass by looking where cgroups really are.

mod common;

use common::CgroupMounts;
use std::path::Path;

fn v1_mountinfo(root: &Path) -> String {
    let r = root.display();
    format!(
        "25 24 0:22 / {r}/cpu rw - cgroup cgroup rw,cpu\n\
         26 24 0:23 / {r}/cpuacct rw - cgroup cgroup rw,cpuacct\n\
         28 24 0:25 / {r}/memory rw - cgroup cgroup rw,memory\n"
    )
}

#[test]
fn finds_this_hosts_cgroup_mounts() {
    let m = CgroupMounts::detect();
    for c in ["cpu", "cpuacct", "memory"] {
        assert!(
            m.mount(c).join("cgroup.procs").is_file(),
            "{c}: {}",
            m.mount(c).display()
        );
    }
    // A subtree nobody made has no cgroups, and the mounts are live.
    assert!(m
        .children(Path::new("bulkhead/harness-never-made"))
        .is_empty());
}

#[test]
fn fails_without_cgroup_mounts() {
    let no_cgroups = "22 1 0:21 / /proc rw - proc proc rw\n\
                      23 1 0:5 / /dev rw - devtmpfs udev rw\n";
    let e = CgroupMounts::from_mountinfo(no_cgroups, |_| None).unwrap_err();
    assert!(e.to_string().contains("cgroup"), "{e}");
    // A unified mount without the cpu and memory controllers is no use either.
    let bare_v2 = "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
    assert!(CgroupMounts::from_mountinfo(bare_v2, |_| Some("pids\n".into())).is_err());
}

#[test]
#[should_panic(expected = "is not a mounted cgroup hierarchy")]
fn a_listed_mount_that_is_not_a_cgroup_fs_fails_instead_of_reading_empty() {
    // mountinfo names hierarchies whose directories hold no cgroup: the old
    // helpers read "no cgroups" there and every leak check passed.
    let t = tempfile::tempdir().unwrap();
    let m = CgroupMounts::from_mountinfo(&v1_mountinfo(t.path()), |_| None).unwrap();
    m.children(Path::new("bulkhead/x"));
}

#[test]
fn a_cgroup_left_in_one_hierarchy_only_is_seen() {
    let t = tempfile::tempdir().unwrap();
    for h in ["cpu", "cpuacct", "memory"] {
        std::fs::create_dir_all(t.path().join(h).join("bulkhead/i")).unwrap();
        std::fs::write(t.path().join(h).join("cgroup.procs"), "").unwrap();
    }
    std::fs::create_dir(t.path().join("memory/bulkhead/i/leaked")).unwrap();
    let m = CgroupMounts::from_mountinfo(&v1_mountinfo(t.path()), |_| None).unwrap();
    assert_eq!(m.mount("memory"), t.path().join("memory"));
    assert_eq!(m.children(Path::new("bulkhead/i")), vec!["leaked"]);
}
