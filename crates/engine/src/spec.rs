//! What a partition is, as data. A spec is the partition's full adapter
//! configuration: restoring a saved partition elsewhere rebuilds the same QEMU
//! from it, so everything that shapes the machine lives here.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::EngineError;

/// Smallest memory a Debian cloud kernel with our initramfs boots in.
pub const MIN_MEMORY_MIB: u64 = 96;
/// QEMU's x86 limit for one guest.
pub const MAX_VCPUS: u32 = 255;
/// Hot-plug root ports take PCI slots 0x10-0x1f of q35's root bus.
pub const MAX_HOTPLUG_SLOTS: u32 = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSpec {
    /// Unique on the host: `[a-z0-9][a-z0-9-]*`, at most 48 characters.
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub boot: BootSource,
    /// In order: the order is part of the machine (restore needs the same).
    #[serde(default)]
    pub adapters: Vec<AdapterSpec>,
    #[serde(default)]
    pub machine: MachineKind,
    /// Extra `-machine` properties, e.g. `pit=off`.
    #[serde(default)]
    pub machine_options: Vec<String>,
    #[serde(default)]
    pub accel: Accel,
    /// Free PCIe root ports reserved for devices hot-plugged later (disks,
    /// shared memory for grants). Any slot makes the machine q35.
    #[serde(default)]
    pub hotplug_slots: u32,
    /// The guest CPU, by name: the same on every host that can give it, so a
    /// saved state restores elsewhere (never the host's own CPU).
    #[serde(default)]
    pub cpu_model: CpuModel,
    /// Guest RAM in a host file instead of anonymous memory: shared (a
    /// template, whose saved state then leaves RAM out) or private
    /// copy-on-write (a clone of that template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_file: Option<MemoryFile>,
    /// A VM generation id device; every launch gives it a fresh GUID, so a
    /// restored copy is told it is a new generation.
    #[serde(default)]
    pub vmgenid: bool,
    /// Host serial lines the partition owns (issue 15), the guest's
    /// /dev/ttyS1 onwards: see [`crate::serial`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serials: Vec<crate::serial::SerialSpec>,
}

/// A file holding guest RAM (`memory-backend-file`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryFile {
    pub path: PathBuf,
    /// `true`: guest writes reach the file (a template). `false`: the file
    /// is mapped copy-on-write and never written (a clone).
    pub share: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    /// Appended to the kernel command line the engine builds.
    #[serde(default)]
    pub cmdline: String,
    /// Adapter id of a disk holding a root filesystem to switch into.
    #[serde(default)]
    pub root_disk: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AdapterSpec {
    Disk(DiskSpec),
    Net(NetSpec),
    /// Shared memory; hot-plugged only (`Partition::plug_region`).
    Region(RegionSpec),
}

impl AdapterSpec {
    pub fn id(&self) -> &str {
        match self {
            AdapterSpec::Disk(d) => &d.id,
            AdapterSpec::Net(n) => &n.id,
            AdapterSpec::Region(r) => &r.id,
        }
    }
}

/// A shared-memory region: a file on a memory filesystem that the host holds,
/// shown to the guest as the BAR2 of an `ivshmem-plain` device. The same file
/// plugged into several partitions is one memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionSpec {
    pub id: String,
    /// The backing file; its length is the region's size, a power of two
    /// from [`REGION_MIN`] to [`REGION_MAX`].
    pub path: PathBuf,
    /// The host enforces it: QEMU gets a read-only mount of the file and a
    /// read-only backend; guest writes do not reach the file.
    #[serde(default)]
    pub readonly: bool,
}

/// Smallest region.
pub const REGION_MIN: u64 = 1 << 20;
/// Largest region: the prefetchable window each hot-plug root port reserves
/// at boot (`pref64-reserve`); a bigger BAR would get no address in the guest.
pub const REGION_MAX: u64 = (crate::cmdline::HOTPLUG_WINDOW_MIB as u64) << 20;

/// Checks a region's size.
pub fn check_region_size(size: u64) -> Result<(), String> {
    if !size.is_power_of_two() || !(REGION_MIN..=REGION_MAX).contains(&size) {
        return Err(format!(
            "region size {size} must be a power of two from {REGION_MIN} to {REGION_MAX} bytes"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    pub id: String,
    pub path: PathBuf,
    #[serde(default)]
    pub format: DiskFormat,
    #[serde(default)]
    pub readonly: bool,
    /// The qcow2 backing chain QEMU is held to, nearest first, as the
    /// caller validated it: `Some(vec![])` pins "no backing file", whatever
    /// the image header says. `None` lets QEMU follow the header.
    #[serde(default)]
    pub backing: Option<Vec<BackingFile>>,
    /// Read-only, without the image lock: another QEMU writes the file (a
    /// mirror job into a redundant copy), so this reader cannot take QEMU's
    /// shared lock and sees the data the writer completed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_read: bool,
}

/// One file of a qcow2 backing chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackingFile {
    pub path: PathBuf,
    pub format: DiskFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskFormat {
    #[default]
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
    /// From a file name: `.qcow2` is qcow2, anything else raw.
    pub fn guess(path: &std::path::Path) -> DiskFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some("qcow2") => DiskFormat::Qcow2,
            _ => DiskFormat::Raw,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSpec {
    pub id: String,
    /// The host bridge (internal VLAN) the TAP joins.
    pub bridge: String,
    /// Derived from the partition name and adapter id when absent.
    #[serde(default)]
    pub mac: Option<String>,
    /// TAP name; derived when absent (at most 15 characters).
    #[serde(default)]
    pub tap: Option<String>,
    /// Guest address in CIDR form, configured by the agent at boot.
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineKind {
    /// The fastest-booting machine that supports the spec: microvm, or q35
    /// when hot-plug slots are asked for.
    #[default]
    Auto,
    Microvm,
    Q35,
}

/// A named guest CPU model. Each is a fixed CPUID (QEMU's `qemu64` plus the
/// features of an x86-64 micro-architecture level) that QEMU 7.2 TCG gives
/// and that KVM gives on every x86-64 host of that level, checked with
/// `enforce`: a host that cannot give the whole model refuses to start it
/// rather than start a different CPU. Never `host` or `max`, whose CPUID is the
/// host's and whose saved state restores only on the same kind of host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CpuModel {
    /// The x86-64 baseline (SSE2): any x86-64 host.
    #[serde(rename = "x86-64-v1")]
    X86_64V1,
    /// Baseline + SSSE3, SSE4.1, SSE4.2, POPCNT, CMPXCHG16B, LAHF: every
    /// x86-64 server since 2009 (Nehalem, Bulldozer) and TCG. The default.
    #[default]
    #[serde(rename = "x86-64-v2")]
    X86_64V2,
}

impl CpuModel {
    pub const ALL: [CpuModel; 2] = [CpuModel::X86_64V1, CpuModel::X86_64V2];

    pub fn name(self) -> &'static str {
        match self {
            CpuModel::X86_64V1 => "x86-64-v1",
            CpuModel::X86_64V2 => "x86-64-v2",
        }
    }

    /// The guest's `/proc/cpuinfo` model name: the model, visibly.
    pub fn model_id(self) -> String {
        format!("Bulkhead {}", self.name())
    }

    /// QEMU's `-cpu` value. `qemu64` carries `svm`, which Intel hosts cannot
    /// give under KVM, so it is taken out: the model is the same on both vendors.
    pub fn qemu_cpu(self) -> String {
        let flags = match self {
            CpuModel::X86_64V1 => "",
            CpuModel::X86_64V2 => ",+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16,+lahf-lm",
        };
        format!("qemu64,-svm{flags},model-id={},enforce", self.model_id())
    }
}

impl std::fmt::Display for CpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for CpuModel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        CpuModel::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = CpuModel::ALL.iter().map(|m| m.name()).collect();
                format!(
                    "unknown CPU model {s:?} (known: {}; host and max are not portable)",
                    names.join(", ")
                )
            })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    /// KVM where kvm_intel or kvm_amd is loaded, TCG elsewhere.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl PartitionSpec {
    /// A minimal spec booting `kernel` + `initramfs`.
    pub fn new(name: &str, kernel: PathBuf, initramfs: PathBuf) -> PartitionSpec {
        PartitionSpec {
            name: name.to_string(),
            vcpus: 1,
            memory_mib: 256,
            boot: BootSource {
                kernel,
                initramfs: Some(initramfs),
                cmdline: String::new(),
                root_disk: None,
            },
            adapters: Vec::new(),
            machine: MachineKind::Auto,
            machine_options: Vec::new(),
            accel: Accel::Auto,
            hotplug_slots: 0,
            cpu_model: CpuModel::default(),
            memory_file: None,
            vmgenid: false,
            serials: Vec::new(),
        }
    }

    /// Checks everything that can be checked without starting QEMU.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::InvalidSpec(m));
        if !valid_name(&self.name) {
            return bad(format!(
                "partition name {:?} must be 1-48 characters of a-z, 0-9 and '-', starting with a letter or digit",
                self.name
            ));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return bad(format!("vcpus must be 1..={MAX_VCPUS}, got {}", self.vcpus));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return bad(format!(
                "memory {} MiB is too small: a partition needs at least {MIN_MEMORY_MIB} MiB",
                self.memory_mib
            ));
        }
        if self.memory_mib > 1 << 22 {
            return bad(format!(
                "memory {} MiB is absurd (limit 4 TiB)",
                self.memory_mib
            ));
        }
        if !self.boot.kernel.is_file() {
            return Err(EngineError::MissingFile {
                what: "kernel",
                path: self.boot.kernel.clone(),
            });
        }
        if let Some(i) = &self.boot.initramfs {
            if !i.is_file() {
                return Err(EngineError::MissingFile {
                    what: "initramfs",
                    path: i.clone(),
                });
            }
        }
        let mut ids = std::collections::HashSet::new();
        for a in &self.adapters {
            if !valid_name(a.id()) || a.id().len() > 16 {
                return bad(format!(
                    "adapter id {:?} must be 1-16 characters of a-z, 0-9, '-'",
                    a.id()
                ));
            }
            if !ids.insert(a.id()) {
                return bad(format!("adapter id {:?} is used twice", a.id()));
            }
            match a {
                AdapterSpec::Disk(d) => {
                    if !d.path.is_file() && !d.path.exists() {
                        return Err(EngineError::MissingFile {
                            what: "disk",
                            path: d.path.clone(),
                        });
                    }
                }
                AdapterSpec::Region(_) => {
                    return bad(format!(
                        "region {:?}: regions are hot-plugged into a running partition, not defined at boot",
                        a.id()
                    ));
                }
                AdapterSpec::Net(n) => {
                    use bulkhead_hostnet::names::check_ifname;
                    if let Some(t) = &n.tap {
                        if check_ifname(t).is_err() {
                            return bad(format!(
                                "TAP name {t:?} must be 1-15 characters, no '/', ':' or space"
                            ));
                        }
                    }
                    if check_ifname(&n.bridge).is_err() {
                        return bad(format!(
                            "bridge name {:?} must be 1-15 characters, no '/', ':' or space",
                            n.bridge
                        ));
                    }
                }
            }
        }
        if let Some(root) = &self.boot.root_disk {
            if !self
                .adapters
                .iter()
                .any(|a| matches!(a, AdapterSpec::Disk(d) if &d.id == root))
            {
                return bad(format!(
                    "root disk {root:?} is not one of the partition's disks"
                ));
            }
        }
        check_cmdline(&self.boot.cmdline).map_err(EngineError::InvalidSpec)?;
        if self.hotplug_slots > MAX_HOTPLUG_SLOTS {
            return bad(format!(
                "hot-plug slots must be 0-{MAX_HOTPLUG_SLOTS}, got {}",
                self.hotplug_slots
            ));
        }
        if self.hotplug_slots > 0 && self.machine == MachineKind::Microvm {
            return bad("hot-plug slots need q35 (microvm has no hot-plug ports)".into());
        }
        if let Some(m) = &self.memory_file {
            check_memory_file(m, self.memory_mib)?;
        }
        if self.serials.len() > crate::serial::MAX_SERIALS {
            return bad(format!(
                "at most {} serial devices, got {}",
                crate::serial::MAX_SERIALS,
                self.serials.len()
            ));
        }
        for o in &self.machine_options {
            if o.contains(',') || !o.contains('=') {
                return bad(format!("machine option {o:?} must be one key=value"));
            }
        }
        Ok(())
    }

    pub fn disks(&self) -> impl Iterator<Item = &DiskSpec> {
        self.adapters.iter().filter_map(|a| match a {
            AdapterSpec::Disk(d) => Some(d),
            _ => None,
        })
    }

    pub fn nets(&self) -> impl Iterator<Item = &NetSpec> {
        self.adapters.iter().filter_map(|a| match a {
            AdapterSpec::Net(n) => Some(n),
            _ => None,
        })
    }
}

/// A shared memory file may be created by QEMU; a private one must exist
/// with the guest's RAM size (it is the template's memory).
fn check_memory_file(m: &MemoryFile, memory_mib: u64) -> Result<(), EngineError> {
    let bad = |s: String| Err(EngineError::InvalidSpec(s));
    if m.path.as_os_str().as_encoded_bytes().contains(&b',') {
        return bad(format!("memory file {} has a comma", m.path.display()));
    }
    match std::fs::metadata(&m.path) {
        Ok(md) if !md.is_file() => bad(format!("memory file {} is not a file", m.path.display())),
        Ok(md) if !m.share && md.len() != memory_mib << 20 => bad(format!(
            "memory file {} holds {} bytes, the partition has {memory_mib} MiB",
            m.path.display(),
            md.len()
        )),
        Ok(_) => Ok(()),
        Err(_) if m.share && m.path.parent().is_some_and(Path::is_dir) => Ok(()),
        Err(_) => Err(EngineError::MissingFile {
            what: "memory file",
            path: m.path.clone(),
        }),
    }
}

/// The extra kernel command line: one line, and balanced double quotes (an
/// open quote would swallow the words the engine appends after it).
pub fn check_cmdline(s: &str) -> Result<(), String> {
    if s.len() > 2048 || s.contains(['\n', '\0']) {
        return Err("cmdline must be one line of at most 2048 bytes".into());
    }
    if !s.matches('"').count().is_multiple_of(2) {
        return Err("cmdline has an unbalanced double quote".into());
    }
    Ok(())
}

/// The longest name of a partition, adapter or LU.
pub const NAME_MAX: usize = 48;

pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= NAME_MAX
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
}

/// Parses sizes such as `256M`, `1G`, `512` (MiB) into MiB.
pub fn parse_mib(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 1u64),
        Some((i, _)) => {
            let unit = s[i..].to_ascii_lowercase();
            let mult = match unit.as_str() {
                "m" | "mb" | "mib" => 1,
                "g" | "gb" | "gib" => 1024,
                "t" | "tb" | "tib" => 1024 * 1024,
                _ => return Err(format!("size {s:?}: unknown unit (use M or G)")),
            };
            (&s[..i], mult)
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?} is not a number"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_mib("256M").unwrap(), 256);
        assert_eq!(parse_mib("2G").unwrap(), 2048);
        assert_eq!(parse_mib("300").unwrap(), 300);
        assert!(parse_mib("12X").is_err());
        assert!(parse_mib("M").is_err());
        assert!(parse_mib("99999999999999999999G").is_err());
    }

    #[test]
    fn names() {
        assert!(valid_name("web-1"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("Web"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"a".repeat(49)));
    }

    #[test]
    fn spec_round_trips_as_json() {
        let mut s = PartitionSpec::new("p1", "/k".into(), "/i".into());
        s.adapters.push(AdapterSpec::Disk(DiskSpec {
            id: "d0".into(),
            path: "/x.qcow2".into(),
            format: DiskFormat::Qcow2,
            readonly: false,
            backing: None,
            shared_read: false,
        }));
        s.adapters.push(AdapterSpec::Net(NetSpec {
            id: "n0".into(),
            bridge: "br0".into(),
            mac: None,
            tap: None,
            ip: Some("10.0.0.2/24".into()),
            gateway: None,
        }));
        let j = serde_json::to_string(&s).unwrap();
        let back: PartitionSpec = serde_json::from_str(&j).unwrap();
        assert_eq!(s, back);
    }

    #[test]
    fn cpu_models_round_trip_by_name() {
        for m in CpuModel::ALL {
            assert_eq!(m.name().parse::<CpuModel>().unwrap(), m);
            assert_eq!(
                serde_json::to_value(m).unwrap(),
                serde_json::json!(m.name())
            );
        }
        assert_eq!(CpuModel::default(), CpuModel::X86_64V2);
        let e = "host".parse::<CpuModel>().unwrap_err();
        assert!(e.contains("x86-64-v2") && e.contains("not portable"), "{e}");
        // A spec saved before the field existed gets the default model.
        let mut j =
            serde_json::to_value(PartitionSpec::new("p", "/k".into(), "/i".into())).unwrap();
        j.as_object_mut().unwrap().remove("cpu_model");
        let back: PartitionSpec = serde_json::from_value(j).unwrap();
        assert_eq!(back.cpu_model, CpuModel::X86_64V2);
    }

    #[test]
    fn region_sizes_are_powers_of_two_within_the_port_window() {
        for ok in [REGION_MIN, 4 << 20, REGION_MAX] {
            assert!(check_region_size(ok).is_ok(), "{ok}");
        }
        for bad in [0, 4096, REGION_MIN - 1, 3 << 20, REGION_MAX * 2, u64::MAX] {
            assert!(check_region_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn regions_are_not_boot_adapters() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        std::fs::write(&k, b"x").unwrap();
        let mut s = PartitionSpec::new("p", k.clone(), k);
        s.adapters.push(AdapterSpec::Region(RegionSpec {
            id: "r0".into(),
            path: "/dev/shm/r0".into(),
            readonly: true,
        }));
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("hot-plugged"), "{e}");
    }

    #[test]
    fn validation_errors_are_specific() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        let i = dir.path().join("i");
        std::fs::write(&k, b"x").unwrap();
        std::fs::write(&i, b"x").unwrap();
        let ok = PartitionSpec::new("p", k.clone(), i.clone());
        ok.validate().unwrap();

        let mut s = ok.clone();
        s.memory_mib = 16;
        assert!(s.validate().unwrap_err().to_string().contains("too small"));
        let mut s = ok.clone();
        s.vcpus = 0;
        assert!(s.validate().unwrap_err().to_string().contains("vcpus"));
        let mut s = ok.clone();
        s.boot.kernel = dir.path().join("nope");
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("kernel") && e.contains("nope"), "{e}");
        let mut s = ok.clone();
        s.boot.root_disk = Some("d9".into());
        assert!(s.validate().unwrap_err().to_string().contains("root disk"));
        let mut s = ok.clone();
        s.hotplug_slots = MAX_HOTPLUG_SLOTS + 1;
        assert!(s.validate().unwrap_err().to_string().contains("hot-plug"));
        s.hotplug_slots = 1;
        s.machine = MachineKind::Microvm;
        assert!(s.validate().unwrap_err().to_string().contains("q35"));
        let mut s = ok;
        s.machine_options.push("bad".into());
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("machine option"));
    }
}
