//! Builds real images from Debian's cloud kernel package (downloaded once
//! into ~/.cache/bulkhead/debs by apt-get, unpacked once per package hash).
//! busybox-static stands in for the agent: any static ELF will do here; the
//! agent itself is exercised by the engine's boot tests.

use std::path::{Path, PathBuf};

use bulkhead_image::build::{self, AddSpec, BuildOptions, Outcome};
use bulkhead_image::cpio;

fn options(out: &Path) -> BuildOptions {
    let mut o = BuildOptions::new(out);
    o.agent = PathBuf::from("/bin/busybox");
    o
}

fn unpack(out: &Path) -> Vec<(String, u32, Vec<u8>)> {
    let gz = std::fs::read(out.join("initramfs.cpio.gz")).unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
    cpio::read(&raw).unwrap()
}

fn quiet() -> impl FnMut(&str) {
    |line: &str| eprintln!("{line}")
}

#[test]
fn builds_image_then_hits_cache_then_rebuilds_on_change() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("img");
    let app = dir.path().join("app.sh");
    std::fs::write(&app, "#!/bin/sh\necho app\n").unwrap();
    std::fs::set_permissions(&app, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut opts = options(&out);
    opts.adds = vec![format!("{}:/usr/local/bin/app", app.display())
        .parse()
        .unwrap()];

    let mut lines = Vec::new();
    let first = build::build(&opts, &mut |l| lines.push(l.to_string())).unwrap();
    let Outcome::Built(m) = first else {
        panic!("first build must build")
    };
    assert_eq!(lines.len(), 6, "one progress line per step: {lines:?}");

    // vmlinux: the ELF extracted from the bzImage.
    let vmlinux = std::fs::read(out.join("vmlinux")).unwrap();
    assert_eq!(&vmlinux[..4], b"\x7fELF");
    assert_eq!(vmlinux.len() as u64, m.vmlinux_size);

    let entries = unpack(&out);
    let get = |p: &str| entries.iter().find(|e| e.0 == p);
    let init = get("init").expect("/init");
    assert_eq!(init.1 & 0o170777, 0o100755);
    assert!(init.2.starts_with(b"\x7fELF"));
    assert!(get("bin/busybox").is_some());
    let sh = get("bin/sh").expect("busybox applet links");
    assert_eq!(sh.1 & 0o170000, 0o120000);
    assert_eq!(sh.2, b"/bin/busybox");
    assert_eq!(get("dev/console").unwrap().1 & 0o170000, 0o020000);
    assert_eq!(
        get("usr/local/bin/app").unwrap().2,
        b"#!/bin/sh\necho app\n"
    );

    // load.list: every module it names is in the archive, in dependency order.
    let list = String::from_utf8(get("lib/modules/load.list").unwrap().2.clone()).unwrap();
    let mods: Vec<&str> = list.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        mods,
        m.modules.iter().map(String::as_str).collect::<Vec<_>>()
    );
    for m in &mods {
        assert!(get(m.trim_start_matches('/')).is_some(), "{m} missing");
    }
    let pos = |name: &str| {
        mods.iter()
            .position(|m| m.ends_with(&format!("/{name}.ko")))
            .unwrap_or_else(|| panic!("{name} not in load.list"))
    };
    assert!(pos("virtio_ring") < pos("virtio"));
    assert!(pos("virtio") < pos("virtio_pci"));
    assert!(pos("virtio_pci") < pos("virtio_blk"));
    assert!(pos("failover") < pos("net_failover"));
    assert!(pos("net_failover") < pos("virtio_net"));
    assert!(pos("virtio_mmio") > pos("virtio"));
    for needed in ["virtio_console", "button", "evdev"] {
        pos(needed);
    }

    // manifest.json names the inputs.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["kernel_release"], m.kernel_release.as_str());
    assert!(m.kernel_release.ends_with("-cloud-amd64"));

    // Same inputs: nothing to do.
    let before = std::fs::metadata(out.join("initramfs.cpio.gz"))
        .unwrap()
        .modified()
        .unwrap();
    let again = build::build(&opts, &mut quiet()).unwrap();
    assert!(matches!(again, Outcome::UpToDate(_)));
    let after = std::fs::metadata(out.join("initramfs.cpio.gz"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);

    // A changed added file is a new input: rebuilt, and the new content lands.
    std::fs::write(&app, "#!/bin/sh\necho v2\n").unwrap();
    let third = build::build(&opts, &mut quiet()).unwrap();
    assert!(matches!(third, Outcome::Built(_)));
    let entries = unpack(&out);
    let app_entry = entries.iter().find(|e| e.0 == "usr/local/bin/app").unwrap();
    assert_eq!(app_entry.2, b"#!/bin/sh\necho v2\n");
}

#[test]
fn bad_inputs_are_clear_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("img");

    let mut opts = options(&out);
    opts.adds = vec![AddSpec {
        src: dir.path().join("no-such-file"),
        dest: "/x".into(),
    }];
    let e = build::build(&opts, &mut quiet()).unwrap_err().to_string();
    assert!(e.starts_with("--add ") && e.contains("no-such-file"), "{e}");
    assert!(!out.exists());

    let mut opts = options(&out);
    opts.kernel_deb = Some(dir.path().join("missing.deb"));
    let e = build::build(&opts, &mut quiet()).unwrap_err().to_string();
    assert!(
        e.contains("--kernel-deb") && e.contains("missing.deb"),
        "{e}"
    );
    assert!(!out.exists());

    // Something that is not a .deb at all.
    let junk = dir.path().join("junk.deb");
    std::fs::write(&junk, "not a package").unwrap();
    let mut opts = options(&out);
    opts.kernel_deb = Some(junk);
    let e = build::build(&opts, &mut quiet()).unwrap_err().to_string();
    assert!(e.contains("junk.deb"), "{e}");
    assert!(!out.join("manifest.json").exists());

    let mut opts = options(&out);
    opts.agent = dir.path().join("no-agent");
    let e = build::build(&opts, &mut quiet()).unwrap_err().to_string();
    assert!(e.contains("no-agent") && e.contains("make agent"), "{e}");

    // A dynamically linked agent would not start in the guest.
    let mut opts = options(&out);
    opts.agent = PathBuf::from("/bin/ls");
    let e = build::build(&opts, &mut quiet()).unwrap_err().to_string();
    assert!(e.contains("dynamically linked"), "{e}");

    let mut opts = options(&out);
    opts.extra_modules = vec!["no_such_module_xyz".into()];
    let e = build::build(&opts, &mut quiet()).unwrap_err().to_string();
    assert!(e.contains("no_such_module_xyz"), "{e}");
    assert!(!out.join("manifest.json").exists());

    assert!("nocolon".parse::<AddSpec>().is_err());
}

/// `--l2tp`: the static L2TP binary lands at its guest path, and it is part
/// of the cache key (an image built without it is rebuilt with it, and the
/// other way round); a dynamic one is refused.
#[test]
fn the_l2tp_binary_is_installed_and_part_of_the_cache_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("img");
    let l2tp = dir.path().join("bulkhead-l2tp");
    // busybox-static stands in: any static ELF will do.
    std::fs::copy("/bin/busybox", &l2tp).unwrap();
    let mut opts = options(&out);
    let without = build::build(&opts, &mut quiet()).unwrap();
    assert!(matches!(without, Outcome::Built(_)));
    let guest = build::L2TP_GUEST_PATH.trim_start_matches('/');
    assert!(!unpack(&out).iter().any(|e| e.0 == guest));

    opts.l2tp = Some(l2tp.clone());
    let with = build::build(&opts, &mut quiet()).unwrap();
    assert!(matches!(with, Outcome::Built(_)), "a new input rebuilds");
    let entries = unpack(&out);
    let e = entries
        .iter()
        .find(|e| e.0 == guest)
        .expect("bulkhead-l2tp in the image");
    assert_eq!(e.1 & 0o170777, 0o100755);
    assert!(e.2.starts_with(b"\x7fELF"));
    assert!(matches!(
        build::build(&opts, &mut quiet()).unwrap(),
        Outcome::UpToDate(_)
    ));

    // A changed binary is a new input.
    let mut data = std::fs::read(&l2tp).unwrap();
    data.extend_from_slice(b"v2");
    std::fs::write(&l2tp, data).unwrap();
    assert!(matches!(
        build::build(&opts, &mut quiet()).unwrap(),
        Outcome::Built(_)
    ));

    opts.l2tp = Some(PathBuf::from("/bin/ls"));
    let e = build::build(&opts, &mut quiet()).unwrap_err().to_string();
    assert!(e.contains("dynamically linked"), "{e}");
}
