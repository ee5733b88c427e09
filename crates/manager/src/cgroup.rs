//! Partition cgroups, v1 and v2: one cgroup per partition holding its QEMU,
//! with the CPU entitlement as a CFS quota and the memory limit.
//!
//! v1 (this host: cpu, cpuacct and memory as separate hierarchies) uses
//! `cpu.cfs_quota_us`/`cpu.cfs_period_us`, `cpuacct.usage`,
//! `memory.limit_in_bytes`; v2 uses `cpu.max`, `cpu.stat` and `memory.max`.
//! Both cap the number of tasks with `pids.max` where the pids controller is
//! there (v1's own hierarchy, or enabled in the unified tree).

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// CFS period; the quota is the entitlement's share of it.
pub const PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    V1 {
        cpu: PathBuf,
        cpuacct: PathBuf,
        memory: PathBuf,
        pids: Option<PathBuf>,
    },
    V2 {
        root: PathBuf,
        /// The unified tree offers the pids controller.
        pids: bool,
    },
}

impl Layout {
    /// Finds the hierarchies from /proc/self/mountinfo. Prefers v2 when the
    /// unified tree has both cpu and memory controllers.
    pub fn detect() -> anyhow::Result<Self> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        Self::from_mountinfo(&info, |p| std::fs::read_to_string(p).ok())
    }

    /// From the text of a mountinfo file; `read` reads a file (the v2
    /// controllers list). Public for the tests' own cgroup helpers.
    pub fn from_mountinfo(
        info: &str,
        read: impl Fn(&Path) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let (mut cpu, mut cpuacct, mut memory, mut pids) = (None, None, None, None);
        for line in info.lines() {
            // "id parent maj:min root mountpoint opts [optional...] - fstype source superopts"
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mountpoint = left.split(' ').nth(4).unwrap_or("");
            let mut r = right.split(' ');
            let fstype = r.next().unwrap_or("");
            let superopts = r.nth(1).unwrap_or("");
            match fstype {
                "cgroup2" => {
                    let root = PathBuf::from(mountpoint);
                    let ctl = read(&root.join("cgroup.controllers")).unwrap_or_default();
                    let ctl: Vec<&str> = ctl.split_whitespace().collect();
                    if ctl.contains(&"cpu") && ctl.contains(&"memory") {
                        let pids = ctl.contains(&"pids");
                        return Ok(Self::V2 { root, pids });
                    }
                }
                "cgroup" => {
                    for opt in superopts.split(',') {
                        match opt {
                            "cpu" => cpu = Some(PathBuf::from(mountpoint)),
                            "cpuacct" => cpuacct = Some(PathBuf::from(mountpoint)),
                            "memory" => memory = Some(PathBuf::from(mountpoint)),
                            "pids" => pids = Some(PathBuf::from(mountpoint)),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        match (cpu, cpuacct, memory) {
            (Some(cpu), Some(cpuacct), Some(memory)) => Ok(Self::V1 {
                cpu,
                cpuacct,
                memory,
                pids,
            }),
            _ => bail!("no usable cgroup hierarchy: need cgroup v2 with cpu+memory, or v1 cpu, cpuacct and memory"),
        }
    }

    pub fn version(&self) -> u8 {
        match self {
            Self::V1 { .. } => 1,
            Self::V2 { .. } => 2,
        }
    }
}

/// The cgroups of one daemon: `<parent>/<instance>/<partition>`.
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Layout,
    base: PathBuf,
}

/// One partition's cgroup (a directory per hierarchy on v1).
#[derive(Debug, Clone)]
pub struct PartitionCgroup {
    layout: Layout,
    rel: PathBuf,
}

impl Cgroups {
    pub fn new(layout: Layout, parent: &str, instance: &str) -> Self {
        Self {
            layout,
            base: Path::new(parent).join(instance),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn open(&self, name: &str) -> PartitionCgroup {
        PartitionCgroup {
            layout: self.layout.clone(),
            rel: self.base.join(name),
        }
    }

    /// Creates the partition's cgroup with its limits. On failure nothing is
    /// left behind.
    pub fn create(
        &self,
        name: &str,
        cpu_percent: u32,
        memory_bytes: u64,
        pids_max: u32,
    ) -> anyhow::Result<PartitionCgroup> {
        let cg = self.open(name);
        let r = cg.create_inner(cpu_percent, memory_bytes, pids_max);
        if r.is_err() {
            let _ = cg.remove();
        }
        r.map(|_| cg)
    }

    /// Names of the partition cgroups that exist (for reconciliation).
    pub fn list(&self) -> Vec<String> {
        let dir = match &self.layout {
            Layout::V1 { cpu, .. } => cpu.join(&self.base),
            Layout::V2 { root, .. } => root.join(&self.base),
        };
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

impl PartitionCgroup {
    /// One directory per hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V1 {
                cpu,
                cpuacct,
                memory,
                pids,
            } => {
                let mut v = vec![cpu.join(&self.rel)];
                // cpu and cpuacct are often co-mounted ("cpu,cpuacct").
                for h in [Some(cpuacct), Some(memory), pids.as_ref()]
                    .into_iter()
                    .flatten()
                {
                    let d = h.join(&self.rel);
                    if !v.contains(&d) {
                        v.push(d);
                    }
                }
                v
            }
            Layout::V2 { root, .. } => vec![root.join(&self.rel)],
        }
    }

    fn cpu_dir(&self) -> PathBuf {
        match &self.layout {
            Layout::V1 { cpu, .. } => cpu.join(&self.rel),
            Layout::V2 { root, .. } => root.join(&self.rel),
        }
    }

    fn memory_dir(&self) -> PathBuf {
        match &self.layout {
            Layout::V1 { memory, .. } => memory.join(&self.rel),
            Layout::V2 { root, .. } => root.join(&self.rel),
        }
    }

    fn cpuacct_dir(&self) -> PathBuf {
        match &self.layout {
            Layout::V1 { cpuacct, .. } => cpuacct.join(&self.rel),
            Layout::V2 { root, .. } => root.join(&self.rel),
        }
    }

    /// The `cgroup.procs` files QEMU joins before it execs.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    pub fn exists(&self) -> bool {
        self.cpu_dir().is_dir()
    }

    /// The pids.max file, where a pids controller is available.
    pub fn pids_max_file(&self) -> Option<PathBuf> {
        match &self.layout {
            Layout::V1 { pids, .. } => pids.as_ref().map(|p| p.join(&self.rel).join("pids.max")),
            Layout::V2 { root, pids: true } => Some(root.join(&self.rel).join("pids.max")),
            Layout::V2 { .. } => None,
        }
    }

    fn create_inner(
        &self,
        cpu_percent: u32,
        memory_bytes: u64,
        pids_max: u32,
    ) -> anyhow::Result<()> {
        let quota = PERIOD_US * cpu_percent as u64 / 100;
        match &self.layout {
            Layout::V1 { .. } => {
                for d in self.dirs() {
                    std::fs::create_dir_all(&d)
                        .with_context(|| format!("creating cgroup {}", d.display()))?;
                }
                let cpu = self.cpu_dir();
                write(&cpu.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
                write(
                    &self.memory_dir().join("memory.limit_in_bytes"),
                    &memory_bytes.to_string(),
                )?;
            }
            Layout::V2 { root, pids } => {
                // Every ancestor must delegate cpu and memory (and pids) to its children.
                let ctl = if *pids {
                    "+cpu +memory +pids"
                } else {
                    "+cpu +memory"
                };
                let mut dir = root.clone();
                for comp in self.rel.parent().into_iter().flat_map(|p| p.components()) {
                    write(&dir.join("cgroup.subtree_control"), ctl)?;
                    dir = dir.join(comp);
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("creating cgroup {}", dir.display()))?;
                }
                write(&dir.join("cgroup.subtree_control"), ctl)?;
                let d = root.join(&self.rel);
                std::fs::create_dir_all(&d)
                    .with_context(|| format!("creating cgroup {}", d.display()))?;
                write(&d.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?;
                write(&d.join("memory.max"), &memory_bytes.to_string())?;
            }
        }
        if let Some(f) = self.pids_max_file() {
            write(&f, &pids_max.to_string())?;
        }
        Ok(())
    }

    /// CPU time used by the cgroup's processes, nanoseconds.
    pub fn cpu_usage_ns(&self) -> anyhow::Result<u64> {
        match &self.layout {
            Layout::V1 { .. } => {
                let p = self.cpuacct_dir().join("cpuacct.usage");
                let s = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?;
                Ok(s.trim().parse()?)
            }
            Layout::V2 { .. } => {
                let p = self.cpu_dir().join("cpu.stat");
                let s = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?;
                parse_usage_usec(&s)
                    .map(|us| us * 1000)
                    .context("cpu.stat has no usage_usec")
            }
        }
    }

    /// Memory charged to the cgroup, bytes.
    pub fn memory_bytes(&self) -> anyhow::Result<u64> {
        let file = match self.layout {
            Layout::V1 { .. } => "memory.usage_in_bytes",
            Layout::V2 { .. } => "memory.current",
        };
        let p = self.memory_dir().join(file);
        Ok(std::fs::read_to_string(&p)
            .with_context(|| format!("reading {}", p.display()))?
            .trim()
            .parse()?)
    }

    /// The configured CPU quota, percent of one CPU (None when unlimited).
    pub fn cpu_limit_percent(&self) -> anyhow::Result<Option<u64>> {
        let (quota, period) = match &self.layout {
            Layout::V1 { .. } => {
                let q: i64 = std::fs::read_to_string(self.cpu_dir().join("cpu.cfs_quota_us"))?
                    .trim()
                    .parse()?;
                let p: u64 = std::fs::read_to_string(self.cpu_dir().join("cpu.cfs_period_us"))?
                    .trim()
                    .parse()?;
                (if q < 0 { None } else { Some(q as u64) }, p)
            }
            Layout::V2 { .. } => {
                let s = std::fs::read_to_string(self.cpu_dir().join("cpu.max"))?;
                let mut it = s.split_whitespace();
                let q = it.next().unwrap_or("max");
                let p: u64 = it.next().unwrap_or("100000").parse()?;
                (q.parse().ok(), p)
            }
        };
        Ok(quota.map(|q| q * 100 / period.max(1)))
    }

    /// Pids in the cgroup (any hierarchy).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for f in self.procs_files() {
            if let Ok(s) = std::fs::read_to_string(f) {
                pids.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// [`remove`](Self::remove) on the blocking pool, for async callers:
    /// it waits for killed tasks to leave.
    pub async fn remove_off_reactor(&self) -> anyhow::Result<()> {
        let cg = self.clone();
        bulkhead_hostnet::blocking(move || cg.remove()).await
    }

    /// [`remove`](Self::remove) without waiting for it, for a drop: on the
    /// blocking pool inside a runtime, here outside one.
    pub fn remove_detached(&self) {
        let cg = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(move || cg.remove());
            }
            Err(_) => {
                let _ = cg.remove();
            }
        }
    }

    /// Kills whatever is left in the cgroup and removes it. Idempotent.
    /// Blocking: it waits for killed tasks to leave.
    pub fn remove(&self) -> anyhow::Result<()> {
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: kill(2) with a pid read from our own cgroup; no memory is touched.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            // Killed tasks leave cgroup.procs once reaped; give the kernel a moment.
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut err = None;
        for d in self.dirs() {
            if d.exists() {
                if let Err(e) = std::fs::remove_dir(&d) {
                    err = Some(anyhow::anyhow!("removing cgroup {}: {e}", d.display()));
                }
            }
        }
        err.map_or(Ok(()), Err)
    }
}

fn parse_usage_usec(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "\
25 24 0:22 / /sys/fs/cgroup/cpu rw,relatime shared:5 - cgroup cgroup rw,cpu
26 24 0:23 / /sys/fs/cgroup/cpuacct rw,relatime shared:6 - cgroup cgroup rw,cpuacct
28 24 0:25 / /sys/fs/cgroup/memory rw,relatime shared:8 - cgroup cgroup rw,memory
29 24 0:26 / /sys/fs/cgroup/pids rw,relatime shared:9 - cgroup cgroup rw,pids
33 24 0:30 / /sys/fs/cgroup/unified rw,relatime shared:13 - cgroup2 cgroup2 rw
";

    #[test]
    fn detects_v1_when_unified_has_no_controllers() {
        let l = Layout::from_mountinfo(V1, |_| Some("hugetlb\n".into())).unwrap();
        assert_eq!(
            l,
            Layout::V1 {
                cpu: "/sys/fs/cgroup/cpu".into(),
                cpuacct: "/sys/fs/cgroup/cpuacct".into(),
                memory: "/sys/fs/cgroup/memory".into(),
                pids: Some("/sys/fs/cgroup/pids".into()),
            }
        );
    }

    #[test]
    fn detects_v2_and_comounted_v1() {
        let v2 = "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let l = Layout::from_mountinfo(v2, |_| Some("cpuset cpu io memory pids\n".into())).unwrap();
        assert_eq!(
            l,
            Layout::V2 {
                root: "/sys/fs/cgroup".into(),
                pids: true,
            }
        );
        let co = "1 1 0:1 / /c/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n1 1 0:2 / /c/memory rw - cgroup cgroup rw,memory\n";
        let l = Layout::from_mountinfo(co, |_| None).unwrap();
        let cg = Cgroups::new(l, "bh", "i").open("p");
        assert_eq!(
            cg.dirs().len(),
            2,
            "co-mounted cpu,cpuacct is one directory"
        );
        assert!(Layout::from_mountinfo("", |_| None).is_err());
    }

    #[test]
    fn v2_writes_limits_and_delegates_controllers() {
        // A directory tree standing in for /sys/fs/cgroup: the files v2 expects.
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        let cgs = Cgroups::new(
            Layout::V2 {
                root: root.clone(),
                pids: true,
            },
            "bulkhead",
            "inst",
        );
        let cg = cgs.create("web", 25, 300 << 20, 99).unwrap();
        let d = root.join("bulkhead/inst/web");
        assert_eq!(
            std::fs::read_to_string(d.join("cpu.max")).unwrap(),
            "25000 100000"
        );
        assert_eq!(
            std::fs::read_to_string(d.join("memory.max")).unwrap(),
            (300u64 << 20).to_string()
        );
        for p in ["", "bulkhead", "bulkhead/inst"] {
            let s = std::fs::read_to_string(root.join(p).join("cgroup.subtree_control")).unwrap();
            assert_eq!(s, "+cpu +memory +pids", "{p}");
        }
        assert_eq!(std::fs::read_to_string(d.join("pids.max")).unwrap(), "99");
        assert_eq!(cg.cpu_limit_percent().unwrap(), Some(25));
        assert_eq!(cg.procs_files(), vec![d.join("cgroup.procs")]);
        std::fs::write(d.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
        assert_eq!(cg.cpu_usage_ns().unwrap(), 1_500_000);
        assert_eq!(cgs.list(), vec!["web".to_string()]);
    }
}
