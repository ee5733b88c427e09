//! Debian's kernel package: find it, unpack it once per package hash, extract
//! the ELF `vmlinux` from its bzImage, and resolve module load order.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{run, sha256_file, Error};

/// The meta package that always depends on the current cloud kernel.
pub const KERNEL_META: &str = "linux-image-cloud-amd64";

/// Resolves the meta package to the versioned kernel package
/// (`linux-image-6.1.0-56-cloud-amd64`).
pub fn resolve_package(meta: &str) -> Result<String, Error> {
    let out = run(Command::new("apt-cache").args(["depends", meta]))?;
    parse_depends(&out).ok_or_else(|| {
        Error::Kernel(format!(
            "apt-cache depends {meta} names no linux-image-* package (is the Debian archive configured?)"
        ))
    })
}

fn parse_depends(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(|d| d.trim().trim_matches(|c| c == '<' || c == '>').to_string())
        .find(|d| d.starts_with("linux-image-"))
}

/// The kernel .deb in `debs`, downloaded with `apt-get download` if absent.
pub fn fetch_deb(debs: &Path, progress: &mut dyn FnMut(&str)) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(debs).map_err(|e| Error::io(debs, e))?;
    let pkg = match resolve_package(KERNEL_META) {
        Ok(pkg) => pkg,
        // No usable apt lists (offline host): a kernel already cached will do.
        Err(e) => match find_cached(debs, "linux-image-")? {
            Some(found) => {
                progress(&format!(
                    "apt-cache failed ({e}); using the cached {}",
                    found.display()
                ));
                return Ok(found);
            }
            None => return Err(e),
        },
    };
    let prefix = format!("{pkg}_");
    if let Some(found) = find_cached(debs, &prefix)? {
        return Ok(found);
    }
    progress(&format!(
        "downloading {pkg} with apt-get into {}",
        debs.display()
    ));
    run(Command::new("apt-get")
        .args(["download", "-q", &pkg])
        .current_dir(debs))?;
    find_cached(debs, &prefix)?.ok_or_else(|| {
        Error::Kernel(format!(
            "apt-get download {pkg} left no {pkg}_*.deb in {}",
            debs.display()
        ))
    })
}

/// The most recently downloaded `<prefix>*.deb` in `debs`.
fn find_cached(debs: &Path, prefix: &str) -> Result<Option<PathBuf>, Error> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(debs)
        .map_err(|e| Error::io(debs, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".deb"))
        })
        .collect();
    found.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    Ok(found.pop())
}

/// An unpacked kernel package in the cache.
#[derive(Debug, Clone)]
pub struct Unpacked {
    /// Root of the unpacked tree (holds lib/modules/<release>).
    pub root: PathBuf,
    pub release: String,
    pub vmlinux: PathBuf,
}

/// Unpacks `deb` into `cache/<hash>` (once), writes the vmlinux ELF there
/// and runs depmod. Returns the cached result on later calls.
pub fn unpack(deb: &Path, deb_sha: &str, cache: &Path) -> Result<Unpacked, Error> {
    let dir = cache.join(&deb_sha[..16]);
    let done = dir.join("complete");
    if !done.exists() {
        std::fs::create_dir_all(cache).map_err(|e| Error::io(cache, e))?;
        // Unpack beside the final place and rename: a crash or a concurrent
        // build never leaves a half-unpacked kernel under the final name.
        let tmp = tempfile::Builder::new()
            .prefix(".unpack-")
            .tempdir_in(cache)
            .map_err(|e| Error::io(cache, e))?;
        let t = tmp.path();
        extract_deb(deb, t)?;
        let release = release_of(t)?;
        let bz = t.join("boot").join(format!("vmlinuz-{release}"));
        let data = std::fs::read(&bz).map_err(|e| Error::io(&bz, e))?;
        let elf = vmlinux_from_bzimage(&data)?;
        let out = t.join("vmlinux");
        std::fs::write(&out, elf).map_err(|e| Error::io(&out, e))?;
        run(Command::new("depmod").arg("-b").arg(t).arg(&release))?;
        std::fs::write(t.join("complete"), &release).map_err(|e| Error::io(t, e))?;
        if !done.exists() {
            let _ = std::fs::remove_dir_all(&dir);
            let kept = tmp.keep();
            if let Err(e) = std::fs::rename(&kept, &dir) {
                let _ = std::fs::remove_dir_all(&kept);
                // Lost a race with a concurrent build of the same package: fine.
                if !done.exists() {
                    return Err(Error::io(&dir, e));
                }
            }
        }
    }
    let release = release_of(&dir)?;
    Ok(Unpacked {
        vmlinux: dir.join("vmlinux"),
        root: dir,
        release,
    })
}

fn extract_deb(deb: &Path, into: &Path) -> Result<(), Error> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Tool(format!("dpkg-deb: {e}")))?;
    let tar_in = dpkg.stdout.take().expect("piped stdout");
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(into)
        .args(["--wildcards", "./boot/vmlinuz-*", "./lib/modules/*"])
        .stdin(tar_in)
        .output()
        .map_err(|e| Error::Tool(format!("tar: {e}")))?;
    let dpkg = dpkg
        .wait_with_output()
        .map_err(|e| Error::Tool(format!("dpkg-deb: {e}")))?;
    if !dpkg.status.success() {
        return Err(Error::Kernel(format!(
            "{} is not a readable .deb: {}",
            deb.display(),
            String::from_utf8_lossy(&dpkg.stderr).trim()
        )));
    }
    if !tar.status.success() {
        return Err(Error::Kernel(format!(
            "{} holds no kernel (boot/vmlinuz-*, lib/modules): {}",
            deb.display(),
            String::from_utf8_lossy(&tar.stderr).trim()
        )));
    }
    Ok(())
}

fn release_of(root: &Path) -> Result<String, Error> {
    let mods = root.join("lib/modules");
    let mut rels: Vec<String> = std::fs::read_dir(&mods)
        .map_err(|e| Error::io(&mods, e))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if rels.len() != 1 {
        return Err(Error::Kernel(format!(
            "expected one kernel release in {}, found {rels:?}",
            mods.display()
        )));
    }
    Ok(rels.remove(0))
}

/// Extracts the ELF vmlinux from an x86 bzImage: the setup header says where
/// the compressed payload is (payload_offset/length at 0x248/0x24c, relative
/// to the end of the setup sectors); the kernel build appends the
/// uncompressed size as a 32-bit little-endian number to every payload.
pub fn vmlinux_from_bzimage(bz: &[u8]) -> Result<Vec<u8>, Error> {
    let bad = |m: &str| Error::Kernel(format!("not a usable bzImage: {m}"));
    let payload = bzimage_payload(bz)?;
    let body = &payload[..payload.len() - 4];
    let size = u32::from_le_bytes(payload[payload.len() - 4..].try_into().unwrap()) as usize;
    let elf = match payload {
        [0x02, 0x21, 0x4c, 0x18, ..] => pipe(&["lz4", "-dc"], body)?,
        [0x1f, 0x8b, ..] => {
            let mut out = Vec::new();
            // Bounded by the size the image claims, so a bad file cannot balloon.
            flate2::read::GzDecoder::new(payload)
                .take(size as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| bad(&format!("gzip: {e}")))?;
            out
        }
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => pipe(&["xz", "-dc", "--single-stream"], payload)?,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => pipe(&["zstd", "-dcq"], body)?,
        _ => {
            return Err(bad(&format!(
                "unknown compression, magic {:02x?}",
                &payload[..4]
            )))
        }
    };
    if !elf.starts_with(b"\x7fELF") {
        return Err(bad("payload does not decompress to an ELF"));
    }
    if elf.len() != size {
        return Err(bad(&format!(
            "decompressed {} bytes, header says {size}",
            elf.len()
        )));
    }
    Ok(elf)
}

/// The compressed payload of a bzImage (its last 4 bytes are the
/// uncompressed size), located through the setup header. Sans I/O; fuzzed.
pub fn bzimage_payload(bz: &[u8]) -> Result<&[u8], Error> {
    let bad = |m: &str| Error::Kernel(format!("not a usable bzImage: {m}"));
    if bz.len() < 0x250 || &bz[0x202..0x206] != b"HdrS" {
        return Err(bad("no HdrS setup header"));
    }
    let version = u16::from_le_bytes([bz[0x206], bz[0x207]]);
    if version < 0x0208 {
        return Err(bad(&format!(
            "boot protocol {version:#x} has no payload fields"
        )));
    }
    let setup_sects = match bz[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let u32_at = |o: usize| u32::from_le_bytes([bz[o], bz[o + 1], bz[o + 2], bz[o + 3]]) as usize;
    let start = (setup_sects + 1) * 512 + u32_at(0x248);
    let end = start + u32_at(0x24c);
    if end > bz.len() || end < start + 8 {
        return Err(bad("payload outside the file"));
    }
    Ok(&bz[start..end])
}

fn pipe(argv: &[&str], input: &[u8]) -> Result<Vec<u8>, Error> {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::Tool(format!(
                "{}: {e} (install it with scripts/bootstrap)",
                argv[0]
            ))
        })?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Tool(format!("{}: {e}", argv[0])))?;
    let _ = writer.join();
    if !out.status.success() {
        return Err(Error::Tool(format!(
            "{} failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// Modules to load, in dependency order, as paths relative to `root`.
/// Built-in modules need nothing and are skipped.
pub fn module_order(root: &Path, release: &str, wanted: &[&str]) -> Result<Vec<String>, Error> {
    let mut order: Vec<String> = Vec::new();
    for m in wanted {
        let out = Command::new("modprobe")
            .arg("-d")
            .arg(root)
            .args(["-S", release, "--show-depends", m])
            .output()
            .map_err(|e| Error::Tool(format!("modprobe: {e} (install kmod)")))?;
        if !out.status.success() {
            return Err(Error::Kernel(format!(
                "module {m} not found in {release}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        for path in parse_show_depends(&String::from_utf8_lossy(&out.stdout), root) {
            if !order.contains(&path) {
                order.push(path);
            }
        }
    }
    Ok(order)
}

/// `insmod /root/lib/modules/..../x.ko` lines to `lib/modules/.../x.ko`.
fn parse_show_depends(text: &str, root: &Path) -> Vec<String> {
    let root = root.to_string_lossy();
    let root = root.trim_end_matches('/');
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("insmod "))
        .map(|p| {
            let p = p.split_whitespace().next().unwrap_or("");
            p.strip_prefix(root)
                .unwrap_or(p)
                .trim_start_matches('/')
                .to_string()
        })
        .collect()
}

/// Hash of the package file, the cache key of its unpacked form.
pub fn deb_hash(deb: &Path) -> Result<String, Error> {
    if !deb.is_file() {
        return Err(Error::Kernel(format!(
            "kernel package {} does not exist",
            deb.display()
        )));
    }
    sha256_file(deb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apt_cache_depends() {
        let t = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_depends(t).unwrap(),
            "linux-image-6.1.0-56-cloud-amd64"
        );
        assert_eq!(parse_depends("x\n  Depends: <foo>\n"), None);
    }

    #[test]
    fn parses_show_depends() {
        let t = "insmod /c/k/lib/modules/6.1/kernel/drivers/virtio/virtio.ko \n\
                 builtin ext4\n\
                 insmod /c/k/lib/modules/6.1/kernel/drivers/block/virtio_blk.ko opt=1\n";
        assert_eq!(
            parse_show_depends(t, Path::new("/c/k/")),
            [
                "lib/modules/6.1/kernel/drivers/virtio/virtio.ko",
                "lib/modules/6.1/kernel/drivers/block/virtio_blk.ko"
            ]
        );
    }

    fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let mut bz = vec![0u8; 5 * 512];
        bz[0x1f1] = 4;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        bz[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        bz.extend_from_slice(&[0u8; 16]);
        bz.extend_from_slice(payload);
        bz
    }

    #[test]
    fn extracts_gzip_payload() {
        let elf = b"\x7fELF and the rest of a kernel".to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&elf).unwrap();
        let mut payload = gz.finish().unwrap();
        // The gzip trailer already ends with the size, as the kernel's does.
        assert_eq!(
            &payload[payload.len() - 4..],
            &(elf.len() as u32).to_le_bytes()
        );
        assert_eq!(vmlinux_from_bzimage(&fake_bzimage(&payload)).unwrap(), elf);
        // A corrupted payload is an error, not garbage.
        let n = payload.len();
        payload[n - 1] ^= 0xff;
        assert!(vmlinux_from_bzimage(&fake_bzimage(&payload)).is_err());
    }

    #[test]
    fn rejects_non_bzimage() {
        assert!(vmlinux_from_bzimage(b"short").is_err());
        assert!(vmlinux_from_bzimage(&vec![0u8; 4096]).is_err());
        let e = vmlinux_from_bzimage(&fake_bzimage(b"????????rest")).unwrap_err();
        assert!(e.to_string().contains("unknown compression"), "{e}");
    }
}
