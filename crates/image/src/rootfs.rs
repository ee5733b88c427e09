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

/// Where apt keeps its sources; [`apt_mirror_in`] reads below it.
pub const APT_ETC: &str = "/etc/apt";

/// The first Debian (non-security) mirror in apt's own sources.
pub fn apt_mirror() -> Result<String, Error> {
    apt_mirror_in(Path::new(APT_ETC))
}

/// The first Debian (non-security) mirror in `etc_apt`'s `sources.list`, then
/// `sources.list.d/*.list` and deb822 `*.sources` in name order, as apt reads
/// them. No built-in fallback: a mirror we were not told about is not ours to
/// pick, so none configured is an error that says how to give one.
pub fn apt_mirror_in(etc_apt: &Path) -> Result<String, Error> {
    let list = etc_apt.join("sources.list");
    let dir = etc_apt.join("sources.list.d");
    let mut files = vec![(list.clone(), false)];
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            match p.extension().and_then(|x| x.to_str()) {
                Some("list") => files.push((p, false)),
                Some("sources") => files.push((p, true)),
                _ => {}
            }
        }
    }
    for (path, deb822) in files {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let found = if deb822 {
            mirror_from_deb822(&text)
        } else {
            mirror_from_list(&text)
        };
        if let Some(m) = found {
            return Ok(m);
        }
    }
    Err(Error::Invalid(format!(
        "no Debian mirror configured in apt's sources ({}, {}/*.list, {}/*.sources); \
         configure one for apt or pass --mirror URL",
        list.display(),
        dir.display(),
        dir.display()
    )))
}

fn looks_debian(uri: &str) -> bool {
    uri.contains("/debian") && !uri.contains("security")
}

/// One-line style: `deb [options] URI suite components`.
fn mirror_from_list(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("deb "))
        .filter_map(|rest| {
            let mut words = rest.split_whitespace();
            let mut w = words.next()?;
            // Options are `[a=b c=d]`, possibly spanning several words.
            if w.starts_with('[') {
                while !w.ends_with(']') {
                    w = words.next()?;
                }
                w = words.next()?;
            }
            Some(w)
        })
        .find(|u| looks_debian(u))
        .map(|u| u.trim_end_matches('/').to_string())
}

/// deb822 style: stanzas of `Field: value` lines separated by blank lines; a
/// stanza counts when its Types include `deb` and it is not `Enabled: no`.
fn mirror_from_deb822(text: &str) -> Option<String> {
    let mut stanzas = vec![Vec::new()];
    for line in text.lines() {
        if line.trim().is_empty() {
            stanzas.push(Vec::new());
        } else if !line.trim_start().starts_with('#') {
            stanzas.last_mut().expect("never empty").push(line);
        }
    }
    stanzas.iter().find_map(|st| {
        let field = |name: &str| {
            st.iter().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
        };
        let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let enabled = field("Enabled").is_none_or(|e| !e.eq_ignore_ascii_case("no"));
        if !(is_deb && enabled) {
            return None;
        }
        field("URIs")?
            .split_whitespace()
            .find(|u| looks_debian(u))
            .map(|u| u.trim_end_matches('/').to_string())
    })
}

/// Makes sure the debootstrap package set of `suite` is cached (downloading
/// it from `mirror` if not) and returns the tarball. `make image` calls this
/// (`bulkhead image rootfs --prefetch`) so that building LUs later, tests
/// included, needs no network.
pub fn prefetch(
    suite: &str,
    mirror: Option<&str>,
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
    let mirror = match mirror {
        Some(m) => m.to_string(),
        None => apt_mirror()?,
    };
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
        .arg(&mirror))?;
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
    // A cached package set needs no mirror; debootstrap then only writes the
    // LU's own sources.list from it, when one is known.
    let mirror = opts.mirror.clone().or_else(|| apt_mirror().ok());
    let tarball = prefetch(&opts.suite, mirror.as_deref(), &opts.cache, progress)?;
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
        .args(&mirror))?;

    progress("[3/5] installing bulkhead-agent at /usr/sbin/bulkhead-agent");
    let agent_dst = root.join("usr/sbin/bulkhead-agent");
    std::fs::copy(&opts.agent, &agent_dst).map_err(|e| Error::io(&agent_dst, e))?;
    let guest_cmd = root.join("usr/bin/bulkhead-guest");
    let _ = std::fs::remove_file(&guest_cmd);
    std::os::unix::fs::symlink("/usr/sbin/bulkhead-agent", &guest_cmd)
        .map_err(|e| Error::io(&guest_cmd, e))?;
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
    fn mirrors_come_only_from_apt_sources() {
        let etc = tempfile::tempdir().unwrap();
        let err = apt_mirror_in(etc.path()).unwrap_err().to_string();
        assert!(err.contains("no Debian mirror configured"), "{err}");
        assert!(err.contains("--mirror"), "{err}");

        let d = etc.path().join("sources.list.d");
        std::fs::create_dir(&d).unwrap();
        // Files apt does not read, a disabled stanza, a deb-src stanza and the
        // security archive are all skipped.
        std::fs::write(
            d.join("old.list.save"),
            "deb http://a.example.org/debian x main\n",
        )
        .unwrap();
        std::fs::write(
            d.join("a.sources"),
            "Types: deb\nURIs: http://b.example.org/debian\nEnabled: no\n\n\
             Types: deb-src\nURIs: http://c.example.org/debian\n\n\
             Types: deb\nURIs: http://d.example.org/debian-security\n",
        )
        .unwrap();
        assert!(apt_mirror_in(etc.path()).is_err());

        std::fs::write(
            d.join("b.sources"),
            "# comment\nTypes: deb deb-src\nURIs: http://e.example.org/debian/\nSuites: bookworm\n",
        )
        .unwrap();
        assert_eq!(
            apt_mirror_in(etc.path()).unwrap(),
            "http://e.example.org/debian"
        );

        // sources.list is read first.
        std::fs::write(
            etc.path().join("sources.list"),
            "deb https://apt.example.net/repo x main\n\
             deb [arch=amd64 signed-by=/k.gpg] http://f.example.org/debian/ bookworm main\n",
        )
        .unwrap();
        assert_eq!(
            apt_mirror_in(etc.path()).unwrap(),
            "http://f.example.org/debian"
        );
    }
}
