//! `bulkhead image rootfs`: a Debian root file system LU (qcow2).
//!
//! debootstrap minbase (its package set cached as a tarball, so later builds
//! need no network), the agent at /usr/sbin/bulkhead-agent, then an ext4
//! image populated with `mkfs.ext4 -d` (no loop device or mount needed) and
//! converted to qcow2. Boot it with the image's kernel and initramfs and
//! `bulkhead.root=/dev/vda`: the initramfs agent switches into it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{check_static_elf, run, Error};

#[derive(Debug, Clone)]
pub struct RootfsOptions {
    pub out: PathBuf,
    pub size_bytes: u64,
    pub agent: PathBuf,
    pub suite: String,
    /// Debian mirror; by default the one apt uses.
    pub mirror: Option<String>,
    pub cache: PathBuf,
    pub hostname: String,
}

impl RootfsOptions {
    pub fn new(out: impl Into<PathBuf>) -> RootfsOptions {
        RootfsOptions {
            out: out.into(),
            size_bytes: 1 << 30,
            agent: PathBuf::from(crate::DEFAULT_AGENT),
            suite: "bookworm".into(),
            mirror: None,
            cache: crate::cache_dir(),
            hostname: "bulkhead".into(),
        }
    }
}

/// Parses sizes like `1G`, `512M`, `2048K`, `1073741824`.
pub fn parse_size(s: &str) -> Result<u64, Error> {
    let bad = || {
        Error::Invalid(format!(
            "bad size {s:?}: expected a number with optional K, M, G or T"
        ))
    };
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(bad()),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(mult).filter(|v| *v > 0).ok_or_else(bad)
}

/// The first Debian (non-security) mirror in apt's sources, else deb.debian.org.
pub fn apt_mirror() -> String {
    let mut texts = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            if let Ok(t) = std::fs::read_to_string(&p) {
                texts.push(t);
            }
        }
    }
    mirror_from_sources(&texts.join("\n")).unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

fn mirror_from_sources(text: &str) -> Option<String> {
    let looks_debian = |u: &str| u.contains("/debian") && !u.contains("security");
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("URIs:") {
            if let Some(u) = rest.split_whitespace().find(|u| looks_debian(u)) {
                return Some(u.trim_end_matches('/').into());
            }
        } else if let Some(rest) = line.strip_prefix("deb ") {
            let u = rest.split_whitespace().find(|w| !w.starts_with('['));
            if let Some(u) = u.filter(|u| looks_debian(u)) {
                return Some(u.trim_end_matches('/').into());
            }
        }
    }
    None
}

/// Makes sure the debootstrap package set of `suite` is cached (downloading
/// it from `mirror` if not) and returns the tarball. `make image` calls this
/// (`bulkhead image rootfs --prefetch`) so that building LUs later, tests
/// included, needs no network.
pub fn prefetch(
    suite: &str,
    mirror: &str,
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, Error> {
    let cache = cache.join("debootstrap");
    std::fs::create_dir_all(&cache).map_err(|e| Error::io(&cache, e))?;
    let tarball = cache.join(format!("{suite}-minbase-amd64.tgz"));
    if tarball.is_file() {
        progress(&format!(
            "[1/5] debootstrap packages cached: {}",
            tarball.display()
        ));
        return Ok(tarball);
    }
    progress(&format!(
        "[1/5] downloading {suite} minbase packages from {mirror} (cached as {})",
        tarball.display()
    ));
    let work = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(&cache)
        .map_err(|e| Error::io(&cache, e))?;
    let tmp = work.path().join("minbase.tgz");
    run(Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--make-tarball={}", tmp.display()))
        .arg(suite)
        .arg(work.path().join("dl"))
        .arg(mirror))?;
    std::fs::rename(&tmp, &tarball).map_err(|e| Error::io(&tarball, e))?;
    Ok(tarball)
}

/// Builds the root LU. `progress` gets one line per step.
pub fn rootfs(opts: &RootfsOptions, progress: &mut dyn FnMut(&str)) -> Result<(), Error> {
    check_static_elf(&opts.agent)?;
    if opts.size_bytes < 256 << 20 {
        return Err(Error::Invalid(format!(
            "--size {} is too small for a Debian minbase root (at least 256M)",
            opts.size_bytes
        )));
    }
    crate::cli::check_hostname(&opts.hostname)?;
    let out_dir = opts
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let mirror = opts.mirror.clone().unwrap_or_else(apt_mirror);
    let tarball = prefetch(&opts.suite, &mirror, &opts.cache, progress)?;
    let cache = opts.cache.join("debootstrap");
    let work = tempfile::Builder::new()
        .prefix(".rootfs-")
        .tempdir_in(&cache)
        .map_err(|e| Error::io(&cache, e))?;

    let root = work.path().join("root");
    progress(&format!(
        "[2/5] debootstrap {} minbase into a scratch tree",
        opts.suite
    ));
    run(Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--unpack-tarball={}", tarball.display()))
        .arg(&opts.suite)
        .arg(&root)
        .arg(&mirror))?;

    progress("[3/5] installing bulkhead-agent at /usr/sbin/bulkhead-agent");
    let agent_dst = root.join("usr/sbin/bulkhead-agent");
    std::fs::copy(&opts.agent, &agent_dst).map_err(|e| Error::io(&agent_dst, e))?;
    let w = |rel: &str, text: &str| {
        let p = root.join(rel);
        std::fs::write(&p, text).map_err(|e| Error::io(&p, e))
    };
    w("etc/hostname", &format!("{}\n", opts.hostname))?;
    w("etc/fstab", "/dev/vda / ext4 defaults 0 1\n")?;
    // The downloaded .debs are not needed in the LU.
    if let Ok(dir) = std::fs::read_dir(root.join("var/cache/apt/archives")) {
        for e in dir.flatten() {
            if e.path().extension().is_some_and(|x| x == "deb") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    progress(&format!(
        "[4/5] ext4 file system, {} MiB",
        opts.size_bytes >> 20
    ));
    let raw = work.path().join("root.raw");
    {
        let f = std::fs::File::create(&raw).map_err(|e| Error::io(&raw, e))?;
        f.set_len(opts.size_bytes).map_err(|e| Error::io(&raw, e))?;
    }
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "bulkhead-root", "-d"])
        .arg(&root)
        .arg(&raw))?;

    let tmp_out = opts
        .out
        .with_extension(format!("qcow2.{}.tmp", std::process::id()));
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&tmp_out))?;
    std::fs::rename(&tmp_out, &opts.out).map_err(|e| Error::io(&opts.out, e))?;
    progress(&format!(
        "[5/5] wrote {} (boot with bulkhead.root=/dev/vda)",
        opts.out.display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in ["", "G", "1X", "-1G", "0", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mirrors() {
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\
                      Types: deb\nURIs: http://deb.debian.org/debian-security\n";
        assert_eq!(
            mirror_from_sources(deb822).unwrap(),
            "http://deb.debian.org/debian"
        );
        let classic = "deb https://packages.cloud.google.com/apt x main\n\
                       deb [arch=amd64] http://ftp.de.debian.org/debian/ bookworm main\n";
        assert_eq!(
            mirror_from_sources(classic).unwrap(),
            "http://ftp.de.debian.org/debian"
        );
        assert_eq!(
            mirror_from_sources("deb http://security.debian.org/debian-security x\n"),
            None
        );
    }
}
