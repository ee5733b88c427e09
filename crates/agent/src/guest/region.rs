//! Shared-memory regions inside the guest: the host hot-plugs an
//! `ivshmem-plain` PCI device (1af4:1110) whose BAR2 is the region. The guest
//! kernel has no driver for it, so the agent works through sysfs: `enable`
//! turns on memory decoding, and `resource2` is the file programs mmap.
//!
//! The host names a region by the PCI address of the root port it plugged it
//! into (`0000:00:10.0`); the guest's own address of the device
//! (`0000:01:00.0`) works too.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// PCI ids of QEMU's ivshmem devices.
pub const IVSHMEM_VENDOR: &str = "0x1af4";
pub const IVSHMEM_DEVICE: &str = "0x1110";
/// Where the kernel lists PCI devices.
pub const PCI_DEVICES: &str = "/sys/bus/pci/devices";

pub use crate::proto::{RegionInfo as Region, RegionUnmapped as Unmapped};

#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("no shared-memory region {0:?} (see `bulkhead-guest region list`)")]
    NotFound(String),
    #[error("region {0} has no usable BAR2 (the guest could not assign its memory window)")]
    NoBar(String),
    #[error("region {0} is not mapped (run `bulkhead-guest region map {0}` first)")]
    NotMapped(String),
    #[error("range {offset}+{len} is outside region {addr} of {size} bytes")]
    OutOfRange {
        addr: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("{what} {}: {err}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        err: io::Error,
    },
}

impl RegionError {
    /// The wire error kind (`proto::WireError::kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            RegionError::NotFound(_) => "not_found",
            RegionError::NoBar(_) => "no_bar",
            RegionError::NotMapped(_) => "not_mapped",
            RegionError::OutOfRange { .. } => "bad_request",
            RegionError::Io { .. } => "io",
        }
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RegionError {
    let path = path.to_path_buf();
    move |err| RegionError::Io { what, path, err }
}

/// The BAR2 size from a sysfs `resource` file: one `start end flags` line
/// per BAR, in hex; an unassigned BAR reads as zeros.
pub fn bar_size(resource: &str, bar: usize) -> u64 {
    let Some(line) = resource.lines().nth(bar) else {
        return 0;
    };
    let mut f = line
        .split_whitespace()
        .map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16).ok());
    match (f.next().flatten(), f.next().flatten()) {
        (Some(start), Some(end)) if start != 0 && end > start => end - start + 1,
        _ => 0,
    }
}

/// Every ivshmem device under `devices` (normally [`PCI_DEVICES`]), by address.
pub fn list(devices: &Path) -> Result<Vec<Region>, RegionError> {
    let dir = std::fs::read_dir(devices).map_err(io_err("listing", devices))?;
    let mut out = Vec::new();
    for e in dir.flatten() {
        let d = e.path();
        let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
        if read("vendor").trim() != IVSHMEM_VENDOR || read("device").trim() != IVSHMEM_DEVICE {
            continue;
        }
        // The device's directory sits in its bridge's: .../0000:00:10.0/0000:01:00.0
        let port = std::fs::canonicalize(&d)
            .ok()
            .and_then(|real| real.parent().map(|p| p.to_path_buf()))
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .filter(|n| n.contains(':') && n.contains('.'));
        out.push(Region {
            addr: e.file_name().to_string_lossy().into_owned(),
            port,
            size: bar_size(&read("resource"), 2),
            enabled: read("enable").trim().parse::<u32>().unwrap_or(0) > 0,
            path: d.join("resource2"),
        });
    }
    out.sort_by(|a, b| a.addr.cmp(&b.addr));
    Ok(out)
}

/// The region named `name` (its own address or its port's).
pub fn find(devices: &Path, name: &str) -> Result<Region, RegionError> {
    list(devices)?
        .into_iter()
        .find(|r| r.addr == name || r.port.as_deref() == Some(name))
        .ok_or_else(|| RegionError::NotFound(name.to_string()))
}

fn enable_file(r: &Region) -> PathBuf {
    r.path.with_file_name("enable")
}

/// Turns on memory decoding so `resource2` reaches the region; idempotent
/// (the kernel counts enables, so it is written only when off). A region
/// that is not there (yet) is waited for up to `wait`: after a hot-plug the
/// device appears, then gets its BAR, then its `resource2` file.
pub fn map(devices: &Path, name: &str, wait: Duration) -> Result<Region, RegionError> {
    let deadline = Instant::now() + wait;
    let mut r = loop {
        let err = match find(devices, name) {
            Ok(r) if r.size > 0 && r.path.exists() => break r,
            Ok(r) => RegionError::NoBar(r.addr),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(err);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !r.enabled {
        let f = enable_file(&r);
        std::fs::write(&f, "1").map_err(io_err("enabling", &f))?;
        r.enabled = true;
    }
    Ok(r)
}

/// Turns memory decoding off, so no mapping in the guest reaches the region
/// any more, and reports which processes still mapped it.
pub fn unmap(devices: &Path, name: &str) -> Result<Unmapped, RegionError> {
    let r = find(devices, name)?;
    // maps name the file by its real path, not the /sys/bus link.
    let real = std::fs::canonicalize(&r.path).unwrap_or_else(|_| r.path.clone());
    let holders = holders(Path::new("/proc"), &real);
    let f = enable_file(&r);
    // One write undoes one enable; bounded in case something keeps enabling.
    for _ in 0..64 {
        let n: u32 = std::fs::read_to_string(&f)
            .map_err(io_err("reading", &f))?
            .trim()
            .parse()
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        std::fs::write(&f, "0").map_err(io_err("disabling", &f))?;
    }
    Ok(Unmapped {
        addr: r.addr,
        holders,
    })
}

/// Pids whose `maps` name `file` (under `proc`, normally /proc).
pub fn holders(proc: &Path, file: &Path) -> Vec<u32> {
    let want = file.to_string_lossy();
    let mut pids: Vec<u32> = std::fs::read_dir(proc)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(proc.join(pid.to_string()).join("maps"))
                .map(|m| m.lines().any(|l| l.ends_with(want.as_ref())))
                .unwrap_or(false)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// A live `MAP_SHARED` mapping of a region's BAR, unmapped on drop.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// Maps the whole of a mapped (enabled) region, read-write: a read-only
    /// region is enforced by the host, not here.
    pub fn open(r: &Region) -> Result<Mapping, RegionError> {
        if !r.enabled {
            return Err(RegionError::NotMapped(r.addr.clone()));
        }
        Self::map_file(&r.path, r.size, &r.addr)
    }

    /// Maps the file at `path` whole (a region's `resource2`, as the manager
    /// reports it for a region or a grant): its size is the BAR's, and a BAR
    /// whose device is not enabled is refused (it would read all ones).
    pub fn open_path(path: &Path) -> Result<Mapping, RegionError> {
        let name = path.display().to_string();
        let enable = path.with_file_name("enable");
        if enable.exists() {
            let n = std::fs::read_to_string(&enable).map_err(io_err("reading", &enable))?;
            if n.trim().parse::<u32>().unwrap_or(0) == 0 {
                return Err(RegionError::NotMapped(name));
            }
        }
        let size = std::fs::metadata(path)
            .map_err(io_err("opening", path))?
            .len();
        if size == 0 {
            return Err(RegionError::NoBar(name));
        }
        Self::map_file(path, size, &name)
    }

    fn map_file(path: &Path, size: u64, name: &str) -> Result<Mapping, RegionError> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err("opening", path))?;
        let len = usize::try_from(size).map_err(|_| RegionError::NoBar(name.to_string()))?;
        // SAFETY: a fresh shared mapping of an open file, at an address the
        // kernel picks; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io_err("mapping", path)(io::Error::last_os_error()));
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    fn check(&self, offset: u64, len: usize, addr: &str) -> Result<usize, RegionError> {
        let end = offset.checked_add(len as u64);
        match end {
            Some(e) if e <= self.len as u64 => Ok(offset as usize),
            _ => Err(RegionError::OutOfRange {
                addr: addr.to_string(),
                offset,
                len: len as u64,
                size: self.len as u64,
            }),
        }
    }

    /// Copies `len` bytes from `offset`, byte by byte with volatile reads:
    /// another partition may write the memory at any time.
    pub fn read(&self, addr: &str, offset: u64, len: usize) -> Result<Vec<u8>, RegionError> {
        let o = self.check(offset, len, addr)?;
        // SAFETY: o..o+len is inside the mapping (checked above), which lives
        // as long as self.
        Ok((0..len)
            .map(|i| unsafe { self.ptr.add(o + i).read_volatile() })
            .collect())
    }

    pub fn write(&self, addr: &str, offset: u64, data: &[u8]) -> Result<(), RegionError> {
        let o = self.check(offset, data.len(), addr)?;
        for (i, b) in data.iter().enumerate() {
            // SAFETY: as in `read`; the mapping is writable.
            unsafe { self.ptr.add(o + i).write_volatile(*b) };
        }
        Ok(())
    }
}

/// Best of three timed copies of `len` bytes each way (the grants benchmark).
pub struct CopyTimes {
    /// From the region's mapping into the guest's RAM.
    pub mapped_ns: u64,
    /// From the guest's RAM into the guest's RAM.
    pub ram_ns: u64,
}

/// Copies `len` bytes out of the mapping, and as many within RAM, each three
/// times after one warm-up, and keeps the fastest of each: the mapped
/// bandwidth against the in-guest copy it should match.
pub fn copy_bench(m: &Mapping, addr: &str, len: usize) -> Result<CopyTimes, RegionError> {
    m.check(0, len, addr)?;
    let src = vec![0x5au8; len];
    let mut dst = vec![0u8; len];
    let best = |f: &mut dyn FnMut()| {
        f();
        (0..3)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed().as_nanos() as u64
            })
            .min()
            .unwrap_or(0)
    };
    // SAFETY: 0..len is inside the mapping (checked above), dst has len bytes
    // and is not part of the mapping.
    let mapped_ns =
        best(&mut || unsafe { std::ptr::copy_nonoverlapping(m.ptr, dst.as_mut_ptr(), len) });
    let ram_ns = best(&mut || dst.copy_from_slice(&src));
    std::hint::black_box(&dst);
    Ok(CopyTimes { mapped_ns, ram_ns })
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; no reference into
        // the mapping outlives self.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_sizes_from_resource_lines() {
        let res = "0x00000000fe800000 0x00000000fe8000ff 0x0000000000040200\n\
                   0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
                   0x0000000380000000 0x00000003803fffff 0x000000000014220c\n";
        assert_eq!(bar_size(res, 0), 256);
        assert_eq!(bar_size(res, 1), 0);
        assert_eq!(bar_size(res, 2), 4 << 20);
        assert_eq!(bar_size(res, 5), 0);
        assert_eq!(bar_size("garbage", 0), 0);
    }

    /// A fake sysfs: one ivshmem behind a bridge, one other device.
    #[test]
    fn finds_ivshmem_by_its_address_or_its_port() {
        let t = tempfile::tempdir().unwrap();
        let real = t
            .path()
            .join("devices/pci0000:00/0000:00:10.0/0000:01:00.0");
        let other = t.path().join("devices/pci0000:00/0000:00:02.0");
        for (d, vendor, device) in [(&real, "0x1af4", "0x1110"), (&other, "0x1af4", "0x1042")] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(d.join("device"), format!("{device}\n")).unwrap();
            std::fs::write(d.join("enable"), "0\n").unwrap();
            std::fs::write(
                d.join("resource"),
                "0x1000 0x10ff 0x0\n0x0 0x0 0x0\n0x380000000 0x3800fffff 0x0\n",
            )
            .unwrap();
        }
        let bus = t.path().join("bus");
        std::fs::create_dir_all(&bus).unwrap();
        std::os::unix::fs::symlink(&real, bus.join("0000:01:00.0")).unwrap();
        std::os::unix::fs::symlink(&other, bus.join("0000:00:02.0")).unwrap();

        let all = list(&bus).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].addr, "0000:01:00.0");
        assert_eq!(all[0].port.as_deref(), Some("0000:00:10.0"));
        assert_eq!(all[0].size, 1 << 20);
        assert!(!all[0].enabled);
        assert_eq!(find(&bus, "0000:00:10.0").unwrap(), all[0]);
        assert!(matches!(
            find(&bus, "0000:00:02.0"),
            Err(RegionError::NotFound(_))
        ));

        // Wanted but absent: waited for, then refused.
        assert!(matches!(
            map(&bus, "0000:00:11.0", Duration::from_millis(50)),
            Err(RegionError::NotFound(_))
        ));
        std::fs::write(real.join("resource2"), "").unwrap();
        let m = map(&bus, "0000:00:10.0", Duration::ZERO).unwrap();
        assert!(m.enabled);
        assert_eq!(std::fs::read_to_string(real.join("enable")).unwrap(), "1");
        // Mapped already: not enabled a second time.
        std::fs::write(real.join("enable"), "1\n").unwrap();
        map(&bus, "0000:01:00.0", Duration::ZERO).unwrap();
        assert_eq!(std::fs::read_to_string(real.join("enable")).unwrap(), "1\n");
        let u = unmap(&bus, "0000:01:00.0").unwrap();
        assert_eq!(u.addr, "0000:01:00.0");
        assert_eq!(std::fs::read_to_string(real.join("enable")).unwrap(), "0");
    }

    #[test]
    fn a_path_maps_only_when_its_device_is_enabled() {
        let t = tempfile::tempdir().unwrap();
        let res = t.path().join("resource2");
        std::fs::write(&res, vec![7u8; 8192]).unwrap();
        let m = Mapping::open_path(&res).unwrap();
        assert_eq!(m.read("r", 8190, 2).unwrap(), [7, 7]);
        m.write("r", 0, b"hi").unwrap();
        assert!(m.read("r", 8191, 2).is_err());
        drop(m);
        assert_eq!(&std::fs::read(&res).unwrap()[..2], b"hi");
        std::fs::write(t.path().join("enable"), "0\n").unwrap();
        assert!(matches!(
            Mapping::open_path(&res),
            Err(RegionError::NotMapped(_))
        ));
        std::fs::write(t.path().join("enable"), "1\n").unwrap();
        Mapping::open_path(&res).unwrap();
        let empty = t.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            Mapping::open_path(&empty),
            Err(RegionError::NoBar(_))
        ));
    }

    #[test]
    fn copy_bench_stays_inside_the_mapping() {
        let t = tempfile::tempdir().unwrap();
        let res = t.path().join("resource2");
        std::fs::write(&res, vec![1u8; 1 << 20]).unwrap();
        let m = Mapping::open_path(&res).unwrap();
        let times = copy_bench(&m, "r", 1 << 20).unwrap();
        assert!(times.mapped_ns > 0 && times.ram_ns > 0);
        assert!(matches!(
            copy_bench(&m, "r", (1 << 20) + 1),
            Err(RegionError::OutOfRange { .. })
        ));
    }

    #[test]
    fn holders_are_found_in_maps() {
        let t = tempfile::tempdir().unwrap();
        for (pid, maps) in [
            (
                "12",
                "7f00-7f10 rw-s 00000000 00:14 9 /sys/devices/x/0000:01:00.0/resource2\n",
            ),
            ("13", "7f00-7f10 r--p 00000000 00:14 9 /usr/bin/sh\n"),
        ] {
            std::fs::create_dir_all(t.path().join(pid)).unwrap();
            std::fs::write(t.path().join(pid).join("maps"), maps).unwrap();
        }
        std::fs::create_dir_all(t.path().join("self")).unwrap();
        assert_eq!(
            holders(t.path(), Path::new("/sys/devices/x/0000:01:00.0/resource2")),
            vec![12]
        );
    }
}
