//! A partition spec becomes one QEMU command line. Pure: no I/O, so every
//! choice is unit-tested.

use std::path::PathBuf;

use serde_json::json;

use bulkhead_hostnet::names;

use crate::spec::{Accel, AdapterSpec, DiskFormat, DiskSpec, MachineKind, NetSpec, PartitionSpec};

/// Name of the agent's virtio-serial port, the one the guest agent looks for.
pub const AGENT_PORT: &str = "org.bulkhead.agent.0";
/// QEMU's id of that port, named in its VSERPORT_CHANGE events.
pub const AGENT_PORT_ID: &str = "agent-port";

/// Everything the command line needs beyond the spec, resolved by the caller.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub machine: ResolvedMachine,
    pub kvm: bool,
    pub tsc_khz: Option<u64>,
    /// Inherited listening sockets, by fd number.
    pub qmp_fd: i32,
    pub agent_fd: i32,
    pub console_fd: i32,
    /// Inherited descriptors of the spec's serial lines, in spec order.
    pub serial_fds: Vec<i32>,
    pub console_log: PathBuf,
    pub pidfile: PathBuf,
    /// TAP name per net adapter, in adapter order.
    pub taps: Vec<String>,
    pub macs: Vec<String>,
    pub sandbox: bool,
    pub run_as: Option<String>,
    /// `-incoming` argument, for restore.
    pub incoming: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedMachine {
    Microvm,
    Q35,
}

impl ResolvedMachine {
    pub fn for_spec(spec: &PartitionSpec) -> ResolvedMachine {
        match spec.machine {
            MachineKind::Microvm => ResolvedMachine::Microvm,
            MachineKind::Q35 => ResolvedMachine::Q35,
            MachineKind::Auto if spec.hotplug_slots > 0 => ResolvedMachine::Q35,
            MachineKind::Auto => ResolvedMachine::Microvm,
        }
    }
    /// Suffix of virtio device drivers on this machine's transport.
    fn virtio(self) -> &'static str {
        match self {
            ResolvedMachine::Microvm => "device",
            ResolvedMachine::Q35 => "pci",
        }
    }
}

pub fn use_kvm(accel: Accel, hardware_kvm: bool) -> bool {
    match accel {
        Accel::Kvm => true,
        Accel::Tcg => false,
        Accel::Auto => hardware_kvm,
    }
}

/// QEMU's option syntax doubles commas inside values.
fn esc(s: &str) -> String {
    s.replace(',', ",,")
}

/// First PCI slot of the adapters on q35; slot 2 holds the agent's serial.
const Q35_FIRST_ADAPTER_SLOT: u32 = 3;
/// Hot-plug root ports sit after the cold-plugged devices.
const Q35_FIRST_HOTPLUG_SLOT: u32 = 0x10;
/// Prefetchable memory each hot-plug root port reserves at boot: the largest
/// BAR (shared-memory region) a device plugged there later can have. It is
/// guest address space above 4 GiB only (16 ports: 16 GiB of a 40-bit
/// space), not memory; 1 GiB is the largest region grants allow.
pub const HOTPLUG_WINDOW_MIB: u32 = 1024;

/// The guest's PCI address of hot-plug root port `slot` (q35): how the guest
/// finds what was plugged there.
pub fn hotplug_port_address(slot: u32) -> String {
    format!("0000:00:{:02x}.0", Q35_FIRST_HOTPLUG_SLOT + slot)
}

/// The guest kernel command line. It depends on the host only through the
/// accelerator and, under TCG, the TSC rate.
pub fn kernel_cmdline(spec: &PartitionSpec, kvm: bool, tsc_khz: Option<u64>) -> String {
    let mut parts: Vec<String> = vec![
        "console=ttyS0".into(),
        "panic=-1".into(),
        "quiet".into(),
        // q35 under load can panic in the timer check (shared notes).
        "no_timer_check".into(),
    ];
    if !kvm {
        if let Some(khz) = tsc_khz {
            parts.push(format!("tsc_early_khz={khz}"));
        }
    }
    parts.push(format!("bulkhead.hostname={}", spec.name));
    if spec.boot.root_disk.is_some() {
        // The root disk is ordered first, so it is the first virtio disk.
        parts.push("bulkhead.root=/dev/vda".into());
    }
    if !spec.boot.cmdline.trim().is_empty() {
        parts.push(spec.boot.cmdline.trim().to_string());
    }
    // The addresses come after the user's words: the agent takes the last
    // of a key, so a partition cannot claim another's address this way
    // (spec validation refuses an unbalanced quote that would swallow them).
    if let Some(n) = spec.nets().next() {
        if let Some(ip) = &n.ip {
            parts.push(format!("bulkhead.ip={ip}"));
        }
        if let Some(gw) = &n.gateway {
            parts.push(format!("bulkhead.gw={gw}"));
        }
    }
    parts.join(" ")
}

/// Adapters in machine order: the root disk first, then the spec's order.
pub fn ordered_adapters(spec: &PartitionSpec) -> Vec<&AdapterSpec> {
    let mut v: Vec<&AdapterSpec> = spec.adapters.iter().collect();
    if let Some(root) = &spec.boot.root_disk {
        v.sort_by_key(|a| !matches!(a, AdapterSpec::Disk(d) if &d.id == root));
    }
    v
}

pub fn qemu_args(spec: &PartitionSpec, r: &Resolved) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    let m = r.machine;
    let mut machine = match m {
        ResolvedMachine::Microvm => "microvm".to_string(),
        ResolvedMachine::Q35 => {
            "q35,sata=off,smbus=off,usb=off,graphics=off,vmport=off".to_string()
        }
    };
    for o in &spec.machine_options {
        machine.push(',');
        machine.push_str(&esc(o));
    }
    if spec.memory_file.is_some() {
        machine.push_str(",memory-backend=mem0");
    }
    push(&[
        "-name",
        &format!("guest={},debug-threads=on", esc(&spec.name)),
    ]);
    push(&["-machine", &machine]);
    // The same named CPU under both accelerators: a partition saved on a
    // KVM host restores under TCG and the other way round.
    let accel = if r.kvm { "kvm" } else { "tcg,thread=multi" };
    push(&["-accel", accel, "-cpu", &spec.cpu_model.qemu_cpu()]);
    push(&["-m", &spec.memory_mib.to_string()]);
    if let Some(f) = &spec.memory_file {
        // The RAM block is then named after the backend, on the template
        // and its clones alike, so their states match.
        push(&[
            "-object",
            &format!(
                "memory-backend-file,id=mem0,mem-path={},size={}M,share={}",
                esc(&f.path.to_string_lossy()),
                spec.memory_mib,
                if f.share { "on" } else { "off" }
            ),
        ]);
    }
    push(&["-smp", &spec.vcpus.to_string()]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    push(&["-kernel", &spec.boot.kernel.to_string_lossy()]);
    if let Some(i) = &spec.boot.initramfs {
        push(&["-initrd", &i.to_string_lossy()]);
    }
    push(&["-append", &kernel_cmdline(spec, r.kvm, r.tsc_khz)]);

    push(&[
        "-chardev",
        &format!("socket,id=qmp0,fd={},server=on,wait=off", r.qmp_fd),
        "-mon",
        "chardev=qmp0,mode=control",
    ]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=con0,fd={},server=on,wait=off,logfile={},logappend=on",
            r.console_fd,
            esc(&r.console_log.to_string_lossy())
        ),
        "-serial",
        "chardev:con0",
    ]);

    a.extend(crate::serial::qemu_args(&r.serial_fds));
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));

    let v = m.virtio();
    let slot = |n: u32| format!(",addr={n:#x}");
    let q35 = m == ResolvedMachine::Q35;
    push(&[
        "-chardev",
        &format!("socket,id=agent0,fd={},server=on,wait=off", r.agent_fd),
        "-device",
        &format!(
            "virtio-serial-{v},id=vser0{}",
            if q35 { slot(2) } else { String::new() }
        ),
        "-device",
        &format!("virtserialport,bus=vser0.0,chardev=agent0,id={AGENT_PORT_ID},name={AGENT_PORT}"),
    ]);

    let mut net_i = 0;
    for (i, ad) in ordered_adapters(spec).into_iter().enumerate() {
        let addr = if q35 {
            slot(Q35_FIRST_ADAPTER_SLOT + i as u32)
        } else {
            String::new()
        };
        match ad {
            AdapterSpec::Disk(d) => {
                push(&["-blockdev", &blockdev(d).to_string()]);
                push(&[
                    "-device",
                    &format!("virtio-blk-{v},drive=drive-{id},id={id}{addr}", id = d.id),
                ]);
            }
            // Refused by validation: regions are only hot-plugged.
            AdapterSpec::Region(_) => {}
            AdapterSpec::Net(n) => {
                let tap = &r.taps[net_i];
                let mac = &r.macs[net_i];
                net_i += 1;
                push(&[
                    "-netdev",
                    &format!("tap,id=net-{},ifname={tap},script=no,downscript=no", n.id),
                    "-device",
                    &format!(
                        "virtio-net-{v},netdev=net-{id},mac={mac},id={id}{addr}",
                        id = n.id
                    ),
                ]);
            }
        }
    }
    if q35 {
        for h in 0..spec.hotplug_slots {
            // The window must be reserved at boot or the guest cannot map a
            // hot-plugged BAR (ivshmem for grants).
            push(&[
                "-device",
                &format!(
                    "pcie-root-port,id=hp{h},bus=pcie.0,chassis={c},slot={c},addr={a:#x},pref64-reserve={HOTPLUG_WINDOW_MIB}M",
                    c = h + 1,
                    a = Q35_FIRST_HOTPLUG_SLOT + h
                ),
            ]);
        }
    }
    if spec.vmgenid {
        // `auto`: a fresh GUID at every start, restores included.
        push(&["-device", "vmgenid,id=vmgenid0,guid=auto"]);
    }
    push(&["-pidfile", &r.pidfile.to_string_lossy()]);
    if r.sandbox {
        // QEMU applies seccomp before -runas drops to the user, so the uid
        // change itself must stay allowed; once QEMU is unprivileged there is
        // nothing to elevate to (spawn=deny stops setuid programs).
        let elevate = if r.run_as.is_some() { "allow" } else { "deny" };
        push(&[
            "-sandbox",
            &format!(
                "on,obsolete=deny,elevateprivileges={elevate},spawn=deny,resourcecontrol=deny"
            ),
        ]);
    }
    if let Some(u) = &r.run_as {
        push(&["-runas", u]);
    }
    if let Some(inc) = &r.incoming {
        push(&["-S", "-incoming", inc]);
    }
    a
}

/// A disk's `-blockdev` node. A validated backing chain is spelled out node
/// by node and ends in `"backing": null`, so QEMU opens exactly those files
/// and never what a (crafted) image header names.
pub fn blockdev(d: &DiskSpec) -> serde_json::Value {
    blockdev_with(d, &|p| json!(p))
}

/// [`blockdev`] with each file named by `filename` (a path, or the
/// `/dev/fdset/N` of a descriptor passed to QEMU at hot-plug).
pub fn blockdev_with(
    d: &DiskSpec,
    filename: &dyn Fn(&std::path::Path) -> serde_json::Value,
) -> serde_json::Value {
    let file = |p: &std::path::Path, ro: bool| json!({"driver": "file", "filename": filename(p), "read-only": ro});
    let ro = d.readonly || d.shared_read;
    let mut top = file(&d.path, ro);
    if d.shared_read {
        top["locking"] = json!("off");
    }
    let mut node = json!({
        "driver": d.format.as_str(),
        "node-name": format!("drive-{}", d.id),
        "read-only": ro,
        "file": top,
    });
    if let (DiskFormat::Qcow2, Some(chain)) = (d.format, &d.backing) {
        let mut backing = serde_json::Value::Null;
        for b in chain.iter().rev() {
            let mut n = json!({"driver": b.format.as_str(), "read-only": true, "file": file(&b.path, true)});
            if b.format == DiskFormat::Qcow2 {
                n["backing"] = backing;
            }
            backing = n;
        }
        node["backing"] = backing;
    }
    node
}

/// Whose names the engine derives for a spec that gives none (a daemon gives
/// its own, under its instance id): see `bulkhead_hostnet::names`.
pub const NAME_SCOPE: &str = "engine";

/// The adapter's TAP: the one the spec names, else derived.
pub fn tap_for(partition: &str, n: &NetSpec) -> String {
    n.tap
        .clone()
        .unwrap_or_else(|| names::tap_name(NAME_SCOPE, partition, &n.id))
}

/// The adapter's MAC: the one the spec gives, else from the guest address,
/// else derived from the names.
pub fn mac_for(partition: &str, n: &NetSpec) -> String {
    if let Some(m) = &n.mac {
        return m.clone();
    }
    let ip =
        n.ip.as_deref()
            .and_then(|c| c.split('/').next()?.parse().ok());
    match ip {
        Some(ip) => names::mac_for_addr(ip),
        None => names::derived_mac(NAME_SCOPE, partition, &n.id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{DiskFormat, DiskSpec};

    fn resolved(machine: ResolvedMachine, kvm: bool) -> Resolved {
        Resolved {
            machine,
            kvm,
            tsc_khz: Some(2_600_000),
            qmp_fd: 3,
            agent_fd: 4,
            console_fd: 5,
            serial_fds: Vec::new(),
            console_log: "/run/p/console.log".into(),
            pidfile: "/run/p/qemu.pid".into(),
            taps: vec!["tap0".into()],
            macs: vec!["52:54:00:00:00:01".into()],
            sandbox: true,
            run_as: None,
            incoming: None,
        }
    }

    fn spec() -> PartitionSpec {
        let mut s = PartitionSpec::new(
            "web",
            "/img/vmlinux".into(),
            "/img/initramfs.cpio.gz".into(),
        );
        s.adapters.push(AdapterSpec::Net(NetSpec {
            id: "n0".into(),
            bridge: "br0".into(),
            mac: None,
            tap: None,
            ip: Some("10.0.0.2/24".into()),
            gateway: Some("10.0.0.1".into()),
        }));
        s.adapters.push(AdapterSpec::Disk(DiskSpec {
            id: "root".into(),
            path: "/lu/a,b.qcow2".into(),
            format: DiskFormat::Qcow2,
            readonly: false,
            backing: None,
            shared_read: false,
        }));
        s
    }

    #[test]
    fn machine_choice() {
        let mut s = spec();
        assert_eq!(ResolvedMachine::for_spec(&s), ResolvedMachine::Microvm);
        s.hotplug_slots = 1;
        assert_eq!(ResolvedMachine::for_spec(&s), ResolvedMachine::Q35);
        s.machine = MachineKind::Microvm;
        assert_eq!(ResolvedMachine::for_spec(&s), ResolvedMachine::Microvm);
        assert!(use_kvm(Accel::Auto, true));
        assert!(!use_kvm(Accel::Auto, false));
        assert!(!use_kvm(Accel::Tcg, true));
    }

    #[test]
    fn tcg_microvm_line() {
        let a = qemu_args(&spec(), &resolved(ResolvedMachine::Microvm, false));
        let line = a.join(" ");
        assert!(line.contains("-machine microvm "), "{line}");
        assert!(line.contains(
            "-accel tcg,thread=multi -cpu qemu64,-svm,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16,+lahf-lm,model-id=Bulkhead x86-64-v2,enforce"
        ), "{line}");
        assert!(line.contains("-nodefaults"));
        assert!(line.contains("tsc_early_khz=2600000"));
        assert!(line.contains("bulkhead.ip=10.0.0.2/24 bulkhead.gw=10.0.0.1"));
        assert!(line.contains("virtio-blk-device,drive=drive-root,id=root"));
        assert!(line.contains("virtio-net-device,netdev=net-n0,mac=52:54:00:00:00:01"));
        assert!(line.contains("name=org.bulkhead.agent.0"));
        assert!(line.contains(
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        ));
        // The JSON blockdev carries the path untouched, commas included.
        assert!(line.contains(r#""filename":"/lu/a,b.qcow2""#), "{line}");
        assert!(!line.contains("-monitor"));
    }

    #[test]
    fn kvm_q35_line_pins_slots_and_reserves_hotplug_ports() {
        let mut s = spec();
        s.hotplug_slots = 2;
        s.boot.root_disk = Some("root".into());
        let a = qemu_args(&s, &resolved(ResolvedMachine::Q35, true));
        let line = a.join(" ");
        // KVM runs the same named model, never the host's CPU.
        assert!(line.contains("-accel kvm -cpu qemu64,-svm,"), "{line}");
        assert!(!line.contains("-cpu host") && !line.contains("-cpu max"));
        assert!(!line.contains("tsc_early_khz"));
        assert!(line.contains("virtio-serial-pci,id=vser0,addr=0x2"));
        // The root disk moves first, to slot 3, and is /dev/vda in the guest.
        assert!(
            line.contains("virtio-blk-pci,drive=drive-root,id=root,addr=0x3"),
            "{line}"
        );
        assert!(line.contains("virtio-net-pci,netdev=net-n0,mac=52:54:00:00:00:01,id=n0,addr=0x4"));
        assert!(line.contains("bulkhead.root=/dev/vda"));
        assert!(line.contains(
            "pcie-root-port,id=hp1,bus=pcie.0,chassis=2,slot=2,addr=0x11,pref64-reserve=1024M"
        ));
    }

    #[test]
    fn unprivileged_user_keeps_the_sandbox() {
        let mut r = resolved(ResolvedMachine::Microvm, false);
        r.run_as = Some("nobody".into());
        let line = qemu_args(&spec(), &r).join(" ");
        assert!(line.contains("-runas nobody"));
        assert!(line.contains(
            "-sandbox on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"
        ));
    }

    #[test]
    fn the_engines_address_comes_after_the_users_words() {
        let mut s = spec();
        s.boot.cmdline = "loglevel=7 bulkhead.ip=10.0.0.9/24".into();
        let line = kernel_cmdline(&s, false, None);
        let mine = line.rfind("bulkhead.ip=10.0.0.2/24").unwrap();
        assert!(
            line.find("bulkhead.ip=10.0.0.9/24").unwrap() < mine,
            "{line}"
        );
        assert!(crate::spec::check_cmdline("a=\"b c\"").is_ok());
        assert!(crate::spec::check_cmdline("a=\"b").is_err());
    }

    #[test]
    fn a_shared_read_is_read_only_without_the_image_lock() {
        let mut d = DiskSpec {
            id: "d0".into(),
            path: "/lu/copy.raw".into(),
            format: DiskFormat::Raw,
            readonly: true,
            backing: None,
            shared_read: false,
        };
        assert!(blockdev(&d)["file"].get("locking").is_none());
        d.shared_read = true;
        d.readonly = false;
        let b = blockdev(&d);
        assert_eq!(b["file"]["locking"], "off");
        assert_eq!(
            (b["read-only"].clone(), b["file"]["read-only"].clone()),
            (true.into(), true.into())
        );
    }

    #[test]
    fn backing_chains_are_pinned_in_the_blockdev() {
        use crate::spec::BackingFile;
        let mut d = DiskSpec {
            id: "d0".into(),
            path: "/lu/top.qcow2".into(),
            format: DiskFormat::Qcow2,
            readonly: false,
            backing: None,
            shared_read: false,
        };
        assert!(
            blockdev(&d).get("backing").is_none(),
            "unchecked: QEMU follows the header"
        );
        d.backing = Some(vec![]);
        assert_eq!(blockdev(&d)["backing"], serde_json::Value::Null);
        d.backing = Some(vec![
            BackingFile {
                path: "/lu/mid.qcow2".into(),
                format: DiskFormat::Qcow2,
            },
            BackingFile {
                path: "/lu/base.img".into(),
                format: DiskFormat::Raw,
            },
        ]);
        let b = blockdev(&d);
        assert_eq!(b["backing"]["file"]["filename"], "/lu/mid.qcow2");
        assert_eq!(b["backing"]["read-only"], true);
        assert_eq!(b["backing"]["backing"]["file"]["filename"], "/lu/base.img");
        assert_eq!(b["backing"]["backing"]["driver"], "raw");
        assert!(b["backing"]["backing"].get("backing").is_none());
    }

    #[test]
    fn file_backed_memory_and_generation_id() {
        let mut s = spec();
        s.memory_file = Some(crate::spec::MemoryFile {
            path: "/t/mem".into(),
            share: false,
        });
        s.vmgenid = true;
        let mut r = resolved(ResolvedMachine::Microvm, false);
        r.incoming = Some("defer".into());
        let line = qemu_args(&s, &r).join(" ");
        assert!(
            line.contains("-machine microvm,memory-backend=mem0 "),
            "{line}"
        );
        assert!(line
            .contains("-object memory-backend-file,id=mem0,mem-path=/t/mem,size=256M,share=off"));
        assert!(line.contains("-device vmgenid,id=vmgenid0,guid=auto"));
        assert!(line.ends_with("-S -incoming defer"), "{line}");
        s.memory_file.as_mut().unwrap().share = true;
        assert!(qemu_args(&s, &r).join(" ").contains("share=on"));
        let plain = qemu_args(&spec(), &resolved(ResolvedMachine::Microvm, false)).join(" ");
        assert!(!plain.contains("memory-backend") && !plain.contains("vmgenid"));
    }

    #[test]
    fn console_log_path_commas_are_escaped() {
        let mut r = resolved(ResolvedMachine::Microvm, false);
        r.console_log = "/run/a,b/console.log".into();
        let line = qemu_args(&spec(), &r).join(" ");
        assert!(line.contains("logfile=/run/a,,b/console.log"));
    }

    #[test]
    fn names_come_from_the_spec_else_the_one_scheme() {
        let mut n = NetSpec {
            id: "n0".into(),
            bridge: "br0".into(),
            mac: None,
            tap: None,
            ip: Some("10.77.0.2/24".into()),
            gateway: None,
        };
        assert_eq!(tap_for("p", &n), names::tap_name(NAME_SCOPE, "p", "n0"));
        assert_eq!(mac_for("p", &n), "52:54:0a:4d:00:02");
        n.ip = None;
        assert_eq!(mac_for("p", &n), names::derived_mac(NAME_SCOPE, "p", "n0"));
        n.tap = Some("mytap".into());
        n.mac = Some("52:54:00:00:00:01".into());
        assert_eq!(tap_for("p", &n), "mytap");
        assert_eq!(mac_for("p", &n), "52:54:00:00:00:01");
    }
}
