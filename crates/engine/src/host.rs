//! Facts about the host that shape the QEMU command line.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// Hardware KVM (kvm_intel or kvm_amd) is loaded and /dev/kvm exists. The
    /// paravirtual kvm-pvm of these development hosts does not count: it cannot
    /// boot a stock kernel.
    pub hardware_kvm: bool,
    /// The host TSC rate. Under TCG the guest TSC runs at it, and telling the
    /// guest (`tsc_early_khz=`) avoids a calibration hang on microvm.
    pub tsc_khz: Option<u64>,
    pub cpus: u32,
    pub memory_mib: u64,
}

/// The guest image directory when none is given: `$BULKHEAD_IMAGE_DIR`, else
/// `~/.cache/bulkhead/image`, where `make image` puts it. The daemon's config
/// and `bulkhead partition run` both default to it.
pub fn default_image_dir() -> PathBuf {
    image_dir_from(
        std::env::var_os("BULKHEAD_IMAGE_DIR"),
        std::env::var_os("HOME"),
    )
}

fn image_dir_from(env: Option<std::ffi::OsString>, home: Option<std::ffi::OsString>) -> PathBuf {
    match env.filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(home.unwrap_or_else(|| "/root".into())).join(".cache/bulkhead/image"),
    }
}

pub fn probe() -> HostInfo {
    let sys = Path::new("/sys/module");
    let hardware_kvm = Path::new("/dev/kvm").exists()
        && (sys.join("kvm_intel").exists() || sys.join("kvm_amd").exists());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    HostInfo {
        hardware_kvm,
        tsc_khz: tsc_khz_from_cpuinfo(&cpuinfo),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_mib: meminfo_total_mib(
            &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
        )
        .unwrap_or(0),
    }
}

/// `cpu MHz` of the first CPU, in kHz. With constant_tsc (every CPU these
/// hosts have) this is the TSC rate.
pub fn tsc_khz_from_cpuinfo(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

pub fn meminfo_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// The QEMU binary: `$BULKHEAD_QEMU` or qemu-system-x86_64 on PATH.
pub fn qemu_binary() -> PathBuf {
    std::env::var_os("BULKHEAD_QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"))
}

/// `name` as an absolute, symlink-free path: itself when it has a slash,
/// else the first match on PATH.
pub fn find_binary(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return std::fs::canonicalize(name).ok();
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_dir_is_the_env_else_the_cache() {
        assert_eq!(
            image_dir_from(Some("/img".into()), Some("/home/u".into())),
            PathBuf::from("/img")
        );
        for env in [None, Some("".into())] {
            assert_eq!(
                image_dir_from(env, Some("/home/u".into())),
                PathBuf::from("/home/u/.cache/bulkhead/image")
            );
        }
    }

    #[test]
    fn parses_cpuinfo_and_meminfo() {
        let ci = "processor\t: 0\nmodel name\t: Xeon\ncpu MHz\t\t: 2600.000\n";
        assert_eq!(tsc_khz_from_cpuinfo(ci), Some(2_600_000));
        assert_eq!(tsc_khz_from_cpuinfo("nothing"), None);
        assert_eq!(
            meminfo_total_mib("MemTotal:       24576000 kB\n"),
            Some(24000)
        );
    }

    #[test]
    fn probe_sees_this_host() {
        let h = probe();
        assert!(h.cpus >= 1);
        assert!(h.memory_mib > 0);
    }
}
