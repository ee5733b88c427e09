//! Parsers for the /proc files the agent reads, sans I/O.

/// (MemTotal, MemFree, MemAvailable) in KiB from /proc/meminfo.
pub fn meminfo(text: &str) -> (u64, u64, u64) {
    let mut v = (0, 0, 0);
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(key), Some(num)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(num) = num.parse::<u64>() else {
            continue;
        };
        match key {
            "MemTotal:" => v.0 = num,
            "MemFree:" => v.1 = num,
            "MemAvailable:" => v.2 = num,
            _ => {}
        }
    }
    v
}

/// Uptime in ms from /proc/uptime.
pub fn uptime_ms(text: &str) -> u64 {
    text.split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .map(|s| (s * 1000.0) as u64)
        .unwrap_or(0)
}

/// The three load averages from /proc/loadavg.
pub fn loadavg(text: &str) -> [f64; 3] {
    let mut out = [0.0; 3];
    for (o, w) in out.iter_mut().zip(text.split_whitespace()) {
        *o = w.parse().unwrap_or(0.0);
    }
    out
}

/// One line of /proc/mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub target: String,
    pub fstype: String,
}

/// Mounts in /proc/mounts order (octal escapes like `\040` decoded).
pub fn mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split(' ');
            Some(Mount {
                source: unescape(it.next()?),
                target: unescape(it.next()?),
                fstype: it.next()?.to_string(),
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// File systems that hold no user data: a clean shutdown leaves them alone.
pub fn is_virtual_fs(fstype: &str) -> bool {
    matches!(
        fstype,
        "proc"
            | "sysfs"
            | "devtmpfs"
            | "devpts"
            | "tmpfs"
            | "ramfs"
            | "rootfs"
            | "cgroup"
            | "cgroup2"
            | "securityfs"
            | "debugfs"
            | "tracefs"
            | "pstore"
            | "bpf"
            | "mqueue"
            | "hugetlbfs"
            | "configfs"
            | "fusectl"
            | "binfmt_misc"
            | "autofs"
            | "efivarfs"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo() {
        let t = "MemTotal:         230000 kB\nMemFree:          200000 kB\nMemAvailable:     210000 kB\nBuffers: 1 kB\nbad\n";
        assert_eq!(meminfo(t), (230000, 200000, 210000));
        assert_eq!(meminfo(""), (0, 0, 0));
    }

    #[test]
    fn parses_uptime_and_load() {
        assert_eq!(uptime_ms("12.34 20.00\n"), 12340);
        assert_eq!(uptime_ms("x"), 0);
        assert_eq!(loadavg("0.50 0.25 1.00 1/50 99\n"), [0.5, 0.25, 1.0]);
        assert_eq!(loadavg(""), [0.0; 3]);
    }

    #[test]
    fn parses_mounts() {
        let m = mounts("/dev/vda / ext4 rw 0 0\nproc /proc proc rw 0 0\n/dev/vdb /mnt/a\\040b ext4 rw 0 0\nshort\n");
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].target, "/");
        assert_eq!(m[2].target, "/mnt/a b");
        assert!(is_virtual_fs(&m[1].fstype));
        assert!(!is_virtual_fs(&m[2].fstype));
        assert_eq!(unescape("a\\04"), "a\\04");
    }
}
