//! `bulkhead image build`: vmlinux + initramfs.cpio.gz + manifest.json.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::cpio::{self, Archive, Entry};
use crate::{check_static_elf, kernel, sha256_file, Error};

/// Bumped whenever the image layout changes, so old caches are rebuilt.
pub const BUILDER_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "/layout-2");

/// Modules every partition may need, resolved with their dependencies:
/// virtio over MMIO (microvm) and PCI (q35), disks, NICs, the agent's
/// virtio-serial port, the ACPI power button and its evdev node, ext4 for
/// root LUs (built into the cloud kernel, a module elsewhere).
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "button",
    "evdev",
    "ext4",
];

/// Guest path of the L2TP commands (`--l2tp`), which the agent runs as the
/// partition's resource server (docs/l2tp.md, "Partitions").
pub const L2TP_GUEST_PATH: &str = "/usr/sbin/bulkhead-l2tp";

/// Guest path of the module load list the agent reads.
pub const LOAD_LIST: &str = "lib/modules/load.list";

/// `--add SRC:DEST`: a host file or directory placed at DEST in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddSpec {
    pub src: PathBuf,
    pub dest: String,
}

impl std::str::FromStr for AddSpec {
    type Err = Error;
    fn from_str(spec: &str) -> Result<AddSpec, Error> {
        let err = |reason: &str| Error::Add {
            spec: spec.into(),
            reason: reason.into(),
        };
        let (src, dest) = spec
            .rsplit_once(':')
            .ok_or_else(|| err("expected SRC:DEST (DEST an absolute path in the guest)"))?;
        if src.is_empty() {
            return Err(err("SRC is empty"));
        }
        if !dest.starts_with('/') {
            return Err(err(
                "DEST must be an absolute path in the guest, like /usr/bin/app",
            ));
        }
        cpio::normalize(dest).map_err(|e| err(&e))?;
        Ok(AddSpec {
            src: src.into(),
            dest: dest.into(),
        })
    }
}

/// What `build` needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub out: PathBuf,
    pub agent: PathBuf,
    /// The static `bulkhead-l2tp` binary, installed (stripped, as the
    /// agent) at [`L2TP_GUEST_PATH`].
    pub l2tp: Option<PathBuf>,
    pub adds: Vec<AddSpec>,
    /// A kernel .deb to use instead of resolving and downloading Debian's.
    pub kernel_deb: Option<PathBuf>,
    /// Extra modules (with dependencies) beyond [`DEFAULT_MODULES`].
    pub extra_modules: Vec<String>,
    pub busybox: PathBuf,
    /// Cache root (.deb files, unpacked kernels).
    pub cache: PathBuf,
}

impl BuildOptions {
    pub fn new(out: impl Into<PathBuf>) -> BuildOptions {
        BuildOptions {
            out: out.into(),
            agent: PathBuf::from(crate::DEFAULT_AGENT),
            l2tp: None,
            adds: Vec::new(),
            kernel_deb: None,
            extra_modules: Vec::new(),
            busybox: PathBuf::from("/bin/busybox"),
            cache: crate::cache_dir(),
        }
    }
}

/// An input file and its hash, as recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    pub path: PathBuf,
    pub sha256: String,
}

/// DIR/manifest.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub builder_version: String,
    /// Hash over every input below; equal hash = nothing to rebuild.
    pub inputs_hash: String,
    pub kernel_release: String,
    pub kernel_deb: Input,
    pub busybox: Input,
    pub agent: Input,
    /// (guest path, input) for each added file.
    pub added: Vec<(String, Input)>,
    /// Guest paths of the modules, in load order.
    pub modules: Vec<String>,
    pub vmlinux_size: u64,
    pub initramfs_size: u64,
    /// A kernel command line that works with this image under TCG.
    pub suggested_cmdline: String,
}

/// What happened.
#[derive(Debug)]
pub enum Outcome {
    Built(Manifest),
    /// The inputs matched the existing image; nothing was written.
    UpToDate(Manifest),
}

impl Outcome {
    pub fn manifest(&self) -> &Manifest {
        match self {
            Outcome::Built(m) | Outcome::UpToDate(m) => m,
        }
    }
}

/// Files of one `--add`, walked: (guest path, host path, mode).
/// Symbolic links inside an added directory are kept as links (guest path,
/// target), never followed: a link to a parent would otherwise recurse.
type Links = Vec<(String, String)>;
/// Regular files of an add: (guest path, host path, mode).
type Files = Vec<(String, PathBuf, u32)>;

fn walk_add(add: &AddSpec) -> Result<(Files, Links), Error> {
    let err = |reason: String| Error::Add {
        spec: format!("{}:{}", add.src.display(), add.dest),
        reason,
    };
    let meta =
        std::fs::metadata(&add.src).map_err(|e| err(format!("{}: {e}", add.src.display())))?;
    let mut out = Vec::new();
    let mut links = Vec::new();
    if meta.is_file() {
        out.push((
            add.dest.clone(),
            add.src.clone(),
            meta.permissions().mode() & 0o7777,
        ));
    } else if meta.is_dir() {
        let mut stack = vec![(add.src.clone(), add.dest.clone())];
        while let Some((dir, dest)) = stack.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&dir)
                .map_err(|e| err(format!("{}: {e}", dir.display())))?
                .flatten()
                .collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let p = e.path();
                let d = format!(
                    "{}/{}",
                    dest.trim_end_matches('/'),
                    e.file_name().to_string_lossy()
                );
                let m = std::fs::symlink_metadata(&p)
                    .map_err(|e| err(format!("{}: {e}", p.display())))?;
                if m.file_type().is_symlink() {
                    let target =
                        std::fs::read_link(&p).map_err(|e| err(format!("{}: {e}", p.display())))?;
                    links.push((d, target.to_string_lossy().into_owned()));
                } else if m.is_dir() {
                    stack.push((p, d));
                } else if m.is_file() {
                    out.push((d, p, m.permissions().mode() & 0o7777));
                }
            }
        }
    } else {
        return Err(err(format!(
            "{} is neither a file nor a directory",
            add.src.display()
        )));
    }
    Ok((out, links))
}

fn read_manifest(dir: &Path) -> Option<Manifest> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn file_size(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

/// Builds the image into `opts.out`, or does nothing when its inputs are
/// unchanged. `progress` gets one line per step.
pub fn build(opts: &BuildOptions, progress: &mut dyn FnMut(&str)) -> Result<Outcome, Error> {
    // Validate cheap inputs first so a typo fails fast.
    check_static_elf(&opts.agent)?;
    if let Some(l) = &opts.l2tp {
        check_static_elf(l)?;
    }
    if !opts.busybox.is_file() {
        return Err(Error::Tool(format!(
            "{} not found (install busybox-static with scripts/bootstrap)",
            opts.busybox.display()
        )));
    }
    let mut user_added = Vec::new();
    let mut user_links = Vec::new();
    for add in &opts.adds {
        let (files, links) = walk_add(add)?;
        user_added.extend(files);
        user_links.extend(links);
    }
    // Dynamically linked programs bring their shared libraries and the ELF
    // interpreter (at their host paths); the user's own files win on conflict.
    let mut libs: Vec<PathBuf> = Vec::new();
    for (dest, src, _) in &user_added {
        for lib in shared_libs(src).map_err(|reason| Error::Add {
            spec: format!("{}:{dest}", src.display()),
            reason,
        })? {
            if !libs.contains(&lib) {
                libs.push(lib);
            }
        }
    }
    let mut added: Vec<(String, PathBuf, u32)> = libs
        .into_iter()
        .filter(|l| !user_added.iter().any(|(d, _, _)| Path::new(d) == l))
        .map(|l| (l.to_string_lossy().into_owned(), l, 0o755))
        .collect();
    added.extend(user_added);

    let deb = match &opts.kernel_deb {
        Some(d) => {
            if !d.is_file() {
                return Err(Error::Kernel(format!(
                    "--kernel-deb {}: no such file",
                    d.display()
                )));
            }
            d.clone()
        }
        None => kernel::fetch_deb(&opts.cache.join("debs"), progress)?,
    };
    progress(&format!("[1/6] kernel package {}", deb.display()));

    let deb_sha = kernel::deb_hash(&deb)?;
    let busybox_sha = sha256_file(&opts.busybox)?;
    let agent_sha = sha256_file(&opts.agent)?;
    let mut added_inputs = Vec::new();
    for (dest, src, mode) in &added {
        let sha = sha256_file(src)?;
        added_inputs.push((
            format!("{dest} {mode:o}"),
            Input {
                path: src.clone(),
                sha256: sha,
            },
        ));
    }
    for (dest, target) in &user_links {
        added_inputs.push((
            format!("{dest} -> {target}"),
            Input {
                path: PathBuf::from(target),
                sha256: String::new(),
            },
        ));
    }
    // Hashed as an added file: a changed binary rebuilds the image.
    if let Some(l) = &opts.l2tp {
        added_inputs.push((
            format!("{L2TP_GUEST_PATH} 755 static"),
            Input {
                path: l.clone(),
                sha256: sha256_file(l)?,
            },
        ));
    }
    let mut modules_wanted: Vec<&str> = DEFAULT_MODULES.to_vec();
    modules_wanted.extend(opts.extra_modules.iter().map(String::as_str));
    let inputs_hash = {
        let mut h = sha2::Sha256::new();
        for part in [BUILDER_VERSION, &deb_sha, &busybox_sha, &agent_sha] {
            h.update(part.as_bytes());
            h.update(b"\n");
        }
        for (d, i) in &added_inputs {
            h.update(format!("add {d} {}\n", i.sha256).as_bytes());
        }
        for m in &modules_wanted {
            h.update(format!("module {m}\n").as_bytes());
        }
        hex::encode(h.finalize())
    };
    let vmlinux_out = opts.out.join("vmlinux");
    let initramfs_out = opts.out.join("initramfs.cpio.gz");
    if let Some(m) = read_manifest(&opts.out) {
        if m.inputs_hash == inputs_hash
            && file_size(&vmlinux_out) == Some(m.vmlinux_size)
            && file_size(&initramfs_out) == Some(m.initramfs_size)
        {
            progress(&format!(
                "[2/6] inputs unchanged: {} is up to date, nothing to do",
                opts.out.display()
            ));
            return Ok(Outcome::UpToDate(m));
        }
    }
    progress(&format!(
        "[2/6] inputs hashed ({}), building",
        &inputs_hash[..12]
    ));

    let unpacked = kernel::unpack(&deb, &deb_sha, &opts.cache.join("kernels"))?;
    progress(&format!(
        "[3/6] kernel {}: vmlinux extracted from the bzImage, modules indexed",
        unpacked.release
    ));

    let modules = kernel::module_order(&unpacked.root, &unpacked.release, &modules_wanted)?;
    let names: Vec<&str> = modules
        .iter()
        .map(|m| m.rsplit('/').next().unwrap_or(m).trim_end_matches(".ko"))
        .collect();
    progress(&format!(
        "[4/6] {} modules in load order: {}",
        modules.len(),
        names.join(" ")
    ));

    let mut ar = Archive::new();
    let ins = |ar: &mut Archive, p: &str, e: Entry| ar.insert(p, e).map_err(Error::Invalid);
    for (d, mode) in [
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("etc", 0o755),
        ("mnt", 0o755),
        ("newroot", 0o755),
        ("var/tmp", 0o1777),
    ] {
        ins(&mut ar, d, Entry::Dir { mode })?;
    }
    // The kernel opens /dev/console for PID 1 before devtmpfs is mounted.
    ins(
        &mut ar,
        "dev/console",
        Entry::CharDev {
            mode: 0o600,
            major: 5,
            minor: 1,
        },
    )?;
    ins(
        &mut ar,
        "etc/passwd",
        Entry::File {
            mode: 0o644,
            data: b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        },
    )?;
    ins(
        &mut ar,
        "etc/group",
        Entry::File {
            mode: 0o644,
            data: b"root:x:0:\n".to_vec(),
        },
    )?;
    ins(
        &mut ar,
        "etc/hosts",
        Entry::File {
            mode: 0o644,
            data: b"127.0.0.1 localhost\n".to_vec(),
        },
    )?;

    let busybox = std::fs::read(&opts.busybox).map_err(|e| Error::io(&opts.busybox, e))?;
    ins(
        &mut ar,
        "bin/busybox",
        Entry::File {
            mode: 0o755,
            data: busybox,
        },
    )?;
    let applets = crate::run(Command::new(&opts.busybox).arg("--list-full"))?;
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        if ar.get(applet).is_none() && applet != "init" && applet != "linuxrc" {
            ins(
                &mut ar,
                applet,
                Entry::Symlink {
                    target: "/bin/busybox".into(),
                },
            )?;
        }
    }

    ins(
        &mut ar,
        "init",
        Entry::File {
            mode: 0o755,
            data: stripped(&opts.agent)?,
        },
    )?;
    // The in-guest command is the agent under another name (argv[0]).
    ins(
        &mut ar,
        "bin/bulkhead-guest",
        Entry::Symlink {
            target: "/init".into(),
        },
    )?;

    let mut list = String::from("# Loaded in order by bulkhead-agent at boot.\n");
    for m in &modules {
        let src = unpacked.root.join(m);
        let data = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
        ins(&mut ar, m, Entry::File { mode: 0o644, data })?;
        list.push('/');
        list.push_str(m);
        list.push('\n');
    }
    ins(
        &mut ar,
        LOAD_LIST,
        Entry::File {
            mode: 0o644,
            data: list.into_bytes(),
        },
    )?;

    for (dest, src, mode) in &added {
        let data = std::fs::read(src).map_err(|e| Error::io(src, e))?;
        ar.insert(dest, Entry::File { mode: *mode, data })
            .map_err(|reason| Error::Add {
                spec: format!("{}:{dest}", src.display()),
                reason,
            })?;
    }

    if let Some(l) = &opts.l2tp {
        let data = stripped(l)?;
        ar.insert(L2TP_GUEST_PATH, Entry::File { mode: 0o755, data })
            .map_err(|reason| Error::Agent(format!("{}: {reason}", l.display())))?;
    }

    for (dest, target) in &user_links {
        ar.insert(
            dest,
            Entry::Symlink {
                target: target.clone(),
            },
        )
        .map_err(|reason| Error::Add {
            spec: format!("{target}:{dest}"),
            reason,
        })?;
    }

    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    // No manifest while outputs change: an interrupted build is never "up to date".
    let _ = std::fs::remove_file(opts.out.join("manifest.json"));
    let tmp_initramfs = opts
        .out
        .join(format!(".initramfs.cpio.gz.{}.tmp", std::process::id()));
    {
        let f = std::fs::File::create(&tmp_initramfs).map_err(|e| Error::io(&tmp_initramfs, e))?;
        let mut gz = flate2::write::GzEncoder::new(
            std::io::BufWriter::new(f),
            flate2::Compression::default(),
        );
        ar.write_to(&mut gz)
            .map_err(|e| Error::io(&tmp_initramfs, e))?;
        let mut w = gz.finish().map_err(|e| Error::io(&tmp_initramfs, e))?;
        w.flush().map_err(|e| Error::io(&tmp_initramfs, e))?;
    }
    std::fs::rename(&tmp_initramfs, &initramfs_out).map_err(|e| Error::io(&initramfs_out, e))?;
    let initramfs_size = file_size(&initramfs_out).unwrap_or(0);
    progress(&format!(
        "[5/6] initramfs: {} entries, {:.1} MiB gzip",
        ar.len(),
        initramfs_size as f64 / 1048576.0
    ));

    let tmp_vmlinux = opts
        .out
        .join(format!(".vmlinux.{}.tmp", std::process::id()));
    std::fs::copy(&unpacked.vmlinux, &tmp_vmlinux).map_err(|e| Error::io(&tmp_vmlinux, e))?;
    std::fs::rename(&tmp_vmlinux, &vmlinux_out).map_err(|e| Error::io(&vmlinux_out, e))?;

    let manifest = Manifest {
        builder_version: BUILDER_VERSION.into(),
        inputs_hash,
        kernel_release: unpacked.release.clone(),
        kernel_deb: Input {
            path: deb,
            sha256: deb_sha,
        },
        busybox: Input {
            path: opts.busybox.clone(),
            sha256: busybox_sha,
        },
        agent: Input {
            path: opts.agent.clone(),
            sha256: agent_sha,
        },
        added: added_inputs,
        modules: modules.iter().map(|m| format!("/{m}")).collect(),
        vmlinux_size: file_size(&vmlinux_out).unwrap_or(0),
        initramfs_size,
        suggested_cmdline:
            "console=ttyS0 panic=-1 tsc_early_khz=<host TSC kHz> no_timer_check quiet".into(),
    };
    let mpath = opts.out.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest).expect("serializable manifest");
    std::fs::write(&mpath, text + "\n").map_err(|e| Error::io(&mpath, e))?;
    progress(&format!(
        "[6/6] wrote {} ({:.1} MiB), {}, {}",
        vmlinux_out.display(),
        manifest.vmlinux_size as f64 / 1048576.0,
        initramfs_out.display(),
        mpath.display()
    ));
    Ok(Outcome::Built(manifest))
}

/// What `ldd` says a dynamically linked ELF program needs (libraries and the
/// interpreter); nothing for static programs, scripts and data files.
fn shared_libs(prog: &Path) -> Result<Vec<PathBuf>, String> {
    let mut head = [0u8; 4];
    let is_elf = std::fs::File::open(prog)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok()
        && head == *b"\x7fELF";
    if !is_elf || crate::check_static_elf(prog).is_ok() {
        return Ok(Vec::new());
    }
    let out = Command::new("ldd")
        .arg(prog)
        .output()
        .map_err(|e| format!("ldd: {e}"))?;
    parse_ldd(&String::from_utf8_lossy(&out.stdout))
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(format!(
                        "needs {} which the host does not have",
                        name.trim()
                    ));
                }
                rest
            }
            None => line,
        };
        let path = target.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// A static program without debug sections (smaller initramfs, faster boot), when
/// binutils' `strip` is available; else as is.
fn stripped(agent: &Path) -> Result<Vec<u8>, Error> {
    let tmp = tempfile::NamedTempFile::new().map_err(|e| Error::io(Path::new("/tmp"), e))?;
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(tmp.path())
        .arg(agent)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let src = if ok { tmp.path() } else { agent };
    std::fs::read(src).map_err(|e| Error::io(src, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_add_specs() {
        let a: AddSpec = "bin/app:/usr/bin/app".parse().unwrap();
        assert_eq!(a.src, PathBuf::from("bin/app"));
        assert_eq!(a.dest, "/usr/bin/app");
        // The last colon splits, so SRC may contain colons.
        let a: AddSpec = "a:b:/x".parse().unwrap();
        assert_eq!(a.src, PathBuf::from("a:b"));
        for bad in ["noseparator", ":/x", "a:relative", "a:/", "a:/x/../y"] {
            let e = bad.parse::<AddSpec>().unwrap_err();
            assert!(e.to_string().starts_with("--add "), "{bad}: {e}");
        }
    }

    #[test]
    fn parses_ldd_output() {
        let t = "\tlinux-vdso.so.1 (0x00007f)\n\tliblzma.so.5 => /lib/x86_64-linux-gnu/liblzma.so.5 (0x7f)\n\
                 \t/lib64/ld-linux-x86-64.so.2 (0x7f)\n";
        assert_eq!(
            parse_ldd(t).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/liblzma.so.5"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        let e = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(e.contains("libfoo.so.1"), "{e}");
        assert!(parse_ldd("\tnot a dynamic executable\n")
            .unwrap()
            .is_empty());
        // A static ELF needs nothing.
        assert!(shared_libs(Path::new("/bin/busybox")).unwrap().is_empty());
        let libs = shared_libs(Path::new("/bin/ls")).unwrap();
        assert!(libs.iter().any(|l| l.ends_with("libc.so.6")), "{libs:?}");
    }

    #[test]
    fn walks_dirs_and_rejects_missing() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("t/sub")).unwrap();
        std::fs::write(d.path().join("t/a"), "a").unwrap();
        std::fs::write(d.path().join("t/sub/b"), "b").unwrap();
        let add = AddSpec {
            src: d.path().join("t"),
            dest: "/opt/t".into(),
        };
        // A link to a parent directory is kept as a link, not followed.
        std::os::unix::fs::symlink("..", d.path().join("t/sub/up")).unwrap();
        let (files, links) = walk_add(&add).unwrap();
        let mut got: Vec<String> = files.into_iter().map(|x| x.0).collect();
        got.sort();
        assert_eq!(got, ["/opt/t/a", "/opt/t/sub/b"]);
        assert_eq!(links, [("/opt/t/sub/up".to_string(), "..".to_string())]);
        let add = AddSpec {
            src: d.path().join("missing"),
            dest: "/x".into(),
        };
        let e = walk_add(&add).unwrap_err().to_string();
        assert!(e.contains("missing") && e.contains("No such file"), "{e}");
    }
}
