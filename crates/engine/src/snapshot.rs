//! Save and restore: a partition's whole state (RAM and devices) migrated by
//! QEMU into a file through a descriptor the engine opened, next to a
//! manifest that rebuilds the same machine; a restore starts a new QEMU from
//! the manifest with `-incoming defer` and loads the file through a
//! descriptor again (a sandboxed, confined QEMU can neither spawn `exec:`
//! helpers nor see the host's paths; QEMU 7.2 has no `file:` URI). Clones:
//! a template whose RAM is a shared file is saved without its RAM
//! (`x-ignore-shared`), and each clone maps that file copy-on-write.
//! See docs/engine.md, "Save and restore".

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Digest;
use tokio::sync::watch;

use crate::partition::{tail_lines, ExitInfo, ExitReason, HotplugRecord, LaunchOptions, Partition};
use crate::spec::{AdapterSpec, PartitionSpec};
use crate::{cmdline, EngineError};

/// The migration stream, in the image directory.
pub const STATE_FILE: &str = "state.bin";
/// Written last: an image is whole exactly when its manifest exists and
/// matches the state file.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Version of the manifest layout; a restore refuses others.
pub const MANIFEST_FORMAT: u32 = 1;
/// What a file being written is called until it is complete.
pub(crate) const PARTIAL: &str = ".partial";
const SAVE_FD: &str = "bulkhead-save";
const RESTORE_FD: &str = "bulkhead-restore";
/// How often migration progress is read.
const POLL: Duration = Duration::from_millis(20);

/// What a restore needs to rebuild the saved machine and check its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The machine: type, CPU model, memory, vCPUs, adapters in order, the
    /// boot image, the memory file.
    pub spec: PartitionSpec,
    /// Devices hot-plugged after boot, in slot order; re-plugged in this
    /// order before the state is loaded.
    pub hotplugged: Vec<HotplugRecord>,
    pub state: StateInfo,
    /// The state leaves RAM out (`x-ignore-shared`): RAM is the spec's
    /// memory file, which must be as it was at the save.
    pub ram_in_memory_file: Option<FileStamp>,
    /// The QEMU that saved it; an older QEMU cannot read its stream.
    pub qemu: QemuInfo,
    pub saved_at_unix_ms: u64,
    /// A checkpoint's disk point: the internal snapshot of this name taken
    /// in each writable qcow2 disk at the instant the memory was (the disks
    /// are reverted to it before a restore; `crate::checkpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_point: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateInfo {
    pub len: u64,
    /// Hex SHA-256 of the state file.
    pub sha256: String,
}

/// Size and modification time of a file that must not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub len: u64,
    pub mtime_ns: i128,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuInfo {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
    pub package: String,
}

#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// Migration bandwidth cap, bytes/s (QEMU's default, 128 MiB/s, would
    /// double the time of a save).
    pub max_bandwidth: u64,
    /// Bound on the whole save.
    pub timeout: Duration,
    /// Receives bytes transferred of the total as the save runs.
    pub progress: Option<watch::Sender<SaveProgress>>,
}

impl Default for SaveOptions {
    fn default() -> SaveOptions {
        SaveOptions {
            max_bandwidth: 10 << 30,
            timeout: Duration::from_secs(600),
            progress: None,
        }
    }
}

/// Progress of a save: `transferred` bytes of guest RAM (`total`) so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaveProgress {
    pub transferred: u64,
    pub total: u64,
}

/// How a clone differs from its template.
#[derive(Debug, Clone, Default)]
pub struct CloneIdentity {
    /// The clone's partition name (its hostname, TAP and MAC derive from it).
    pub name: String,
    /// New guest addresses (CIDR) by net adapter id; others keep the template's.
    pub ips: Vec<(String, String)>,
}

pub(crate) fn err(m: impl Into<String>) -> EngineError {
    EngineError::Snapshot(m.into())
}

pub(crate) fn io_err(p: &Path, e: std::io::Error) -> EngineError {
    EngineError::Host(format!("{}: {e}", p.display()))
}

impl Partition {
    /// Saves the partition's whole state into `dir` (`state.bin` and
    /// `manifest.json`). The guest is paused first; on success QEMU is left
    /// in `postmigrate` (paused, its state given away) and the caller
    /// decides whether to quit it or resume it. On failure the guest runs
    /// again if it ran, and no new image is left in `dir` (a previous one
    /// there is kept only if this save failed before replacing it).
    pub async fn save(&self, dir: &Path, opts: SaveOptions) -> Result<Manifest, EngineError> {
        if let Some(e) = self.exit_info() {
            return Err(EngineError::NotRunning(e.reason.to_string()));
        }
        refuse_unmigratable(self).await?;
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let partial = dir.join(format!("{STATE_FILE}{PARTIAL}"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .map_err(|e| io_err(&partial, e))?;
        let was_running = self.qmp().query_status().await?.running;
        let follower = Follower::start(&partial)?;
        let saved = self.migrate_out(&file, &opts, &follower).await;
        let hashed = follower.finish().await;
        let done = match (saved, hashed) {
            (Ok(()), Ok(hashed)) => finish_image(self, dir, file, &partial, hashed, None).await,
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        if done.is_err() {
            let _ = std::fs::remove_file(&partial);
            if was_running && self.exit_info().is_none() {
                // Half-done is undone: the guest goes on as before.
                if let Err(e) = self.qmp().cont().await {
                    tracing::warn!(partition = %self.spec().name, error = %e, "resuming after a failed save");
                }
            }
        }
        done
    }

    async fn migrate_out(
        &self,
        file: &std::fs::File,
        opts: &SaveOptions,
        follower: &Follower,
    ) -> Result<(), EngineError> {
        let qmp = self.qmp();
        let shared = self.spec().memory_file.as_ref().is_some_and(|m| m.share);
        qmp.migrate_set_parameters(json!({ "max-bandwidth": opts.max_bandwidth }))
            .await?;
        // A checkpoint's switchover pause is off: nothing waits here.
        qmp.migrate_set_capabilities(&[
            ("x-ignore-shared", shared),
            ("pause-before-switchover", false),
        ])
        .await?;
        // Paused first: one pass over RAM, no dirty-page rounds.
        qmp.stop().await?;
        migrate_into(qmp, file).await?;
        let deadline = tokio::time::Instant::now() + opts.timeout;
        let done = poll(self, deadline, "during the save", || async {
            let info = qmp.query_migrate().await?;
            observe(&info, follower, &opts.progress)
        })
        .await;
        if done.is_err() && self.exit_info().is_none() {
            // A timeout leaves it running; nothing else to undo otherwise.
            let _ = qmp.migrate_cancel().await;
        }
        done
    }

    /// Restores the image saved in `dir` into a new QEMU: the machine is
    /// rebuilt from the manifest, the state file checked against it, the
    /// hot-plugged devices re-plugged, the state loaded, the guest resumed
    /// and its clock set from the host's. Returns once the agent answers.
    /// Anything refused or failed leaves nothing running.
    pub async fn restore(
        dir: &Path,
        opts: LaunchOptions,
        ready_timeout: Duration,
    ) -> Result<(Partition, Manifest), EngineError> {
        let m = read_manifest(dir)?;
        let spec = m.spec.clone();
        let p = restore_as(dir, &m, spec, opts, ready_timeout, true).await?;
        Ok((p, m))
    }

    /// Restores the image saved in `dir` onto `spec`: the same machine
    /// rebuilt by the caller with this host's names (its TAP on its bridge,
    /// its paths to the same disks and image). Anything the guest can tell
    /// apart (vCPUs, memory, CPU model, machine, adapters and their MACs,
    /// disk formats) must equal the manifest's, or it is refused before
    /// QEMU starts.
    pub async fn restore_onto(
        dir: &Path,
        spec: PartitionSpec,
        opts: LaunchOptions,
        ready_timeout: Duration,
    ) -> Result<(Partition, Manifest), EngineError> {
        let m = read_manifest(dir)?;
        same_machine(&m.spec, &spec).map_err(err)?;
        let p = restore_as(dir, &m, spec, opts, ready_timeout, true).await?;
        Ok((p, m))
    }

    /// Restores a clone of the template saved in `dir` (a partition whose
    /// RAM is a shared memory file, saved with it): the clone maps the
    /// template's memory file copy-on-write, gets its own name, TAP, MAC
    /// (set in the guest too), hostname, addresses as asked, and a fresh
    /// VM generation id when the template has the device.
    pub async fn restore_clone(
        dir: &Path,
        id: &CloneIdentity,
        opts: LaunchOptions,
        ready_timeout: Duration,
    ) -> Result<Partition, EngineError> {
        let m = read_manifest(dir)?;
        let mut spec = m.spec.clone();
        spec.name = id.name.clone();
        for a in spec.adapters.iter_mut() {
            let AdapterSpec::Net(n) = a else { continue };
            n.mac = None;
            n.tap = None;
            if let Some((_, ip)) = id.ips.iter().find(|(k, _)| *k == n.id) {
                n.ip = Some(ip.clone());
            }
        }
        Self::restore_clone_onto(dir, spec, opts, ready_timeout).await
    }

    /// Restores a clone of the template saved in `dir` onto `spec`: the
    /// caller's own machine for it (its name, TAP, MAC and addresses, as a
    /// manager names them). Everything else the guest can tell apart must
    /// equal the template's; the clone maps the template's memory file
    /// copy-on-write whatever `spec` says of it, and is re-identified as
    /// [`Partition::restore_clone`] does.
    pub async fn restore_clone_onto(
        dir: &Path,
        spec: PartitionSpec,
        opts: LaunchOptions,
        ready_timeout: Duration,
    ) -> Result<Partition, EngineError> {
        let mut m = read_manifest(dir)?;
        let Some(mem) = m
            .spec
            .memory_file
            .as_mut()
            .filter(|_| m.ram_in_memory_file.is_some())
        else {
            return Err(err(
                "not a template: its RAM is in the state, not in a shared memory file",
            ));
        };
        // The template may have moved since its save (built aside, then
        // renamed into place): its memory file is where `spec` says, and
        // is checked there against the stamp saved.
        let mut spec = spec;
        if let Some(f) = &spec.memory_file {
            mem.path = f.path.clone();
        }
        spec.memory_file = Some(crate::spec::MemoryFile {
            path: mem.path.clone(),
            share: false,
        });
        same_machine_but_identity(&m.spec, &spec).map_err(err)?;
        let mut renames = Vec::new();
        for a in &spec.adapters {
            let AdapterSpec::Net(n) = a else { continue };
            let Some(AdapterSpec::Net(old)) = m
                .spec
                .adapters
                .iter()
                .find(|o| matches!(o, AdapterSpec::Net(o) if o.id == n.id))
            else {
                continue; // same_machine_but_identity refused this already
            };
            let new_ip = (n.ip != old.ip).then(|| n.ip.clone()).flatten();
            renames.push((
                cmdline::mac_for(&m.spec.name, old),
                cmdline::mac_for(&spec.name, n),
                new_ip,
                n.gateway.clone(),
            ));
        }
        let p = restore_as(dir, &m, spec, opts, ready_timeout, false).await?;
        match reidentify(&p, &renames).await {
            Ok(()) => Ok(p),
            Err(e) => {
                let _ = p.kill().await;
                Err(e)
            }
        }
    }
}

/// What the guest sees of a machine, host-local names left out: a saved
/// state only loads into the same machine.
fn guest_view(s: &PartitionSpec) -> serde_json::Value {
    let mac = |n: &crate::spec::NetSpec| cmdline::mac_for(&s.name, n);
    let adapters: Vec<_> = s
        .adapters
        .iter()
        .map(|a| match a {
            AdapterSpec::Disk(d) => json!(["disk", d.id, d.format, d.readonly]),
            AdapterSpec::Net(n) => json!(["net", n.id, mac(n), n.ip]),
            AdapterSpec::Region(r) => json!(["region", r.id]),
        })
        .collect();
    json!({
        "name": s.name, "vcpus": s.vcpus, "memory_mib": s.memory_mib,
        "machine": s.machine, "hotplug_slots": s.hotplug_slots,
        "cpu_model": s.cpu_model, "memory_file": s.memory_file.is_some(),
        "vmgenid": s.vmgenid, "adapters": adapters,
    })
}

/// Refuses a spec whose guest-visible machine differs from the saved one.
fn same_machine(saved: &PartitionSpec, local: &PartitionSpec) -> Result<(), String> {
    let (a, b) = (guest_view(saved), guest_view(local));
    if a == b {
        return Ok(());
    }
    let keys = a.as_object().into_iter().flatten();
    let differ: Vec<&str> = keys
        .filter(|(k, v)| b.get(k.as_str()) != Some(v))
        .map(|(k, _)| k.as_str())
        .collect();
    Err(format!(
        "the image was saved from another machine ({} differ): it cannot be restored onto this one",
        differ.join(", ")
    ))
}

/// [`same_machine`] for a clone: its name and each adapter's MAC and
/// address are its own.
fn same_machine_but_identity(
    template: &PartitionSpec,
    clone: &PartitionSpec,
) -> Result<(), String> {
    let plain = |s: &PartitionSpec| {
        let mut s = s.clone();
        s.name = template.name.clone();
        for a in s.adapters.iter_mut() {
            if let AdapterSpec::Net(n) = a {
                n.mac = None;
                n.ip = None;
            }
        }
        s
    };
    same_machine(&plain(template), &plain(clone))
}

/// ivshmem (grants) blocks migration; say so before pausing anything.
pub(crate) async fn refuse_unmigratable(p: &Partition) -> Result<(), EngineError> {
    for path in ["/machine/peripheral", "/machine/peripheral-anon"] {
        for (name, ty) in p.qmp().qom_list(path).await? {
            if ty.contains("ivshmem") {
                return Err(err(format!(
                    "device {name:?} is shared memory (a grant; {ty}), which QEMU cannot save: unplug it first"
                )));
            }
        }
    }
    Ok(())
}

/// Starts QEMU's migration into `file` (a descriptor passed over QMP).
pub(crate) async fn migrate_into(
    qmp: &bulkhead_qmp::QmpClient,
    file: &std::fs::File,
) -> Result<(), EngineError> {
    let fd = file
        .try_clone()
        .map_err(|e| err(format!("dup of the state file: {e}")))?;
    qmp.get_fd(SAVE_FD, fd.into()).await?;
    if let Err(e) = qmp.migrate(&format!("fd:{SAVE_FD}")).await {
        let _ = qmp.close_fd(SAVE_FD).await;
        return Err(e.into());
    }
    Ok(())
}

/// One look at an outgoing migration: progress reported and the hash
/// caught up; `Some` once complete, an error once it failed.
pub(crate) fn observe(
    info: &bulkhead_qmp::MigrationInfo,
    follower: &Follower,
    progress: &Option<watch::Sender<SaveProgress>>,
) -> Result<Option<()>, EngineError> {
    follower.nudge();
    if let (Some(tx), Some(ram)) = (progress, &info.ram) {
        tx.send_replace(SaveProgress {
            transferred: ram.transferred,
            total: ram.total,
        });
    }
    match info.status.as_deref() {
        Some("completed") => Ok(Some(())),
        Some(s @ ("failed" | "cancelled")) => Err(err(format!(
            "QEMU's migration {s}: {}",
            info.error_desc.clone().unwrap_or_default()
        ))),
        _ => Ok(None),
    }
}

/// The state is complete: make it durable, then the manifest last.
pub(crate) async fn finish_image(
    p: &Partition,
    dir: &Path,
    file: std::fs::File,
    partial: &Path,
    (len, sha256): (u64, String),
    disk_point: Option<String>,
) -> Result<Manifest, EngineError> {
    file.sync_all().map_err(|e| io_err(partial, e))?;
    let written = file.metadata().map_err(|e| io_err(partial, e))?.len();
    if written != len {
        return Err(err(format!(
            "the state file holds {written} bytes, {len} were hashed: written to after the save"
        )));
    }
    drop(file);
    let spec = p.spec().clone();
    let ram_in_memory_file = match &spec.memory_file {
        Some(m) if m.share => Some(stamp(&m.path)?),
        _ => None,
    };
    let mut hotplugged = p.hotplugged();
    hotplugged.sort_by_key(|r| r.slot);
    for r in &mut hotplugged {
        r.fdsets.clear(); // Those of this QEMU: meaningless to another.
    }
    let v = p.qmp().greeting().version.clone();
    let m = Manifest {
        format: MANIFEST_FORMAT,
        spec,
        hotplugged,
        state: StateInfo { len, sha256 },
        ram_in_memory_file,
        qemu: QemuInfo {
            major: v.qemu.major,
            minor: v.qemu.minor,
            micro: v.qemu.micro,
            package: v.package,
        },
        saved_at_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64,
        disk_point,
    };
    // A previous image stops being whole before its state is replaced.
    let manifest = dir.join(MANIFEST_FILE);
    match std::fs::remove_file(&manifest) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&manifest, e)),
        _ => {}
    }
    let state = dir.join(STATE_FILE);
    std::fs::rename(partial, &state).map_err(|e| io_err(&state, e))?;
    let tmp = dir.join(format!("{MANIFEST_FILE}{PARTIAL}"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&m).expect("manifest serializes"))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &manifest)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| io_err(&manifest, e))?;
    Ok(m)
}

fn stamp(path: &Path) -> Result<FileStamp, EngineError> {
    let md = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    Ok(FileStamp {
        len: md.len(),
        mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
    })
}

/// Hashes the state file as QEMU writes it and starts its write-back, so
/// that once QEMU is done only the tail is left: a second pass over the file
/// (and a cold fsync) would cost about as much as the save itself. Reads
/// through its own open file: a dup would move the offset QEMU writes at.
pub(crate) struct Follower {
    /// A message: more has been written, catch up. Dropped: QEMU is done.
    more: std::sync::mpsc::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<(u64, String)>>,
}

impl Follower {
    pub(crate) fn start(path: &Path) -> Result<Follower, EngineError> {
        let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
        let (more, rx) = std::sync::mpsc::channel::<()>();
        let task = tokio::task::spawn_blocking(move || {
            let mut h = sha2::Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut len = 0u64;
            loop {
                // Whether QEMU is done is read before the file: once it
                // is, this pass to the end of the file is the last.
                let last = rx.recv().is_err();
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    // SAFETY: sync_file_range on an fd we own; no memory
                    // is passed. Failure only means a slower fsync later.
                    unsafe {
                        libc::sync_file_range(
                            f.as_raw_fd(),
                            len as i64,
                            n as i64,
                            libc::SYNC_FILE_RANGE_WRITE,
                        );
                    }
                    len += n as u64;
                }
                if last {
                    return Ok((len, hex(&h.finalize())));
                }
            }
        });
        Ok(Follower { more, task })
    }

    /// QEMU has written more: catch up.
    pub(crate) fn nudge(&self) {
        let _ = self.more.send(());
    }

    /// Call once QEMU has written everything (or given up): the length and
    /// hash of all that is in the file.
    pub(crate) async fn finish(self) -> Result<(u64, String), EngineError> {
        drop(self.more);
        self.task
            .await
            .map_err(|e| err(format!("hashing task: {e}")))?
            .map_err(|e| err(format!("hashing the state file: {e}")))
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Length and hex SHA-256 of a file, off the async threads.
async fn hash_file(path: PathBuf) -> Result<(u64, String), EngineError> {
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&path).map_err(|e| io_err(&path, e))?;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(|e| io_err(&path, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            len += n as u64;
        }
        Ok((len, hex(&h.finalize())))
    })
    .await
    .map_err(|e| err(format!("hashing task: {e}")))?
}

/// Reads and checks an image's manifest (not yet its state file).
pub fn read_manifest(dir: &Path) -> Result<Manifest, EngineError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).map_err(|e| {
        err(format!(
            "no complete image in {}: {}: {e}",
            dir.display(),
            MANIFEST_FILE
        ))
    })?;
    Manifest::parse(&bytes).map_err(|e| err(format!("{}: {e}", path.display())))
}

impl Manifest {
    /// Decodes a manifest (bytes from a shared repository: any bytes at
    /// all). Errors are short: they name the problem, not the input.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("not a manifest: {e}"))?;
        if m.format != MANIFEST_FORMAT {
            return Err(format!(
                "manifest format {} is not {MANIFEST_FORMAT}",
                m.format
            ));
        }
        Ok(m)
    }
}

/// Checks what is cheap to check before starting QEMU: the state file's
/// size (a truncated file) and a template's memory file.
fn check_files(dir: &Path, m: &Manifest) -> Result<PathBuf, EngineError> {
    let state = dir.join(STATE_FILE);
    let len = std::fs::metadata(&state)
        .map_err(|e| err(format!("state file {}: {e}", state.display())))?
        .len();
    if len != m.state.len {
        return Err(err(format!(
            "state file {} holds {len} bytes, the manifest says {}: truncated or not this image's",
            state.display(),
            m.state.len
        )));
    }
    if let (Some(want), Some(mem)) = (&m.ram_in_memory_file, &m.spec.memory_file) {
        let got = stamp(&mem.path).map_err(|e| err(format!("the template's memory file: {e}")))?;
        if got != *want {
            return Err(err(format!(
                "memory file {} changed since the save (size or time): the saved devices no longer match it",
                mem.path.display()
            )));
        }
    }
    Ok(state)
}

/// The state file's hash against the manifest's (any corruption).
async fn check_hash(state: PathBuf, want: String) -> Result<(), EngineError> {
    let (_, sha) = hash_file(state.clone()).await?;
    if sha != want {
        return Err(err(format!(
            "state file {} does not match its manifest's checksum: corrupted",
            state.display()
        )));
    }
    Ok(())
}

/// Rebuilds `spec` with `-incoming defer`, loads the state, resumes.
async fn restore_as(
    dir: &Path,
    m: &Manifest,
    spec: PartitionSpec,
    opts: LaunchOptions,
    ready_timeout: Duration,
    // Set the guest clock (a clone gets it with its identity instead).
    clock: bool,
) -> Result<Partition, EngineError> {
    let state = check_files(dir, m)?;
    // Hashed while QEMU starts and loads it, off the restore's path; the
    // guest never runs before the hash matched.
    let hashing = tokio::spawn(check_hash(state.clone(), m.state.sha256.clone()));
    let p = Partition::launch_with(spec, opts, Some("defer".into())).await?;
    let loaded = load(&p, m, &state, ready_timeout).await;
    let hashed = match hashing.await {
        Ok(r) => r,
        Err(e) => Err(err(format!("hashing task: {e}"))),
    };
    let corrupt = hashed.is_err();
    let done = match (hashed, loaded) {
        // Corruption first: it may be why QEMU could not load the state.
        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(())) => resume(&p, ready_timeout, clock).await,
    };
    match done {
        Ok(()) => Ok(p),
        Err(e) => match p.kill().await {
            // QEMU exited by itself: it refused the state, in its own words.
            Ok(ExitInfo {
                reason: ExitReason::QemuError { .. },
                ..
            }) if !corrupt => Err(err(format!(
                "QEMU refused the saved state (does the manifest describe this machine?): {}",
                tail_lines(&p.options().qemu_log(), 4).join(" / ")
            ))),
            _ => Err(e),
        },
    }
}

/// Loads the state into the paused, waiting QEMU.
async fn load(
    p: &Partition,
    m: &Manifest,
    state: &Path,
    ready_timeout: Duration,
) -> Result<(), EngineError> {
    let qmp = p.qmp();
    let v = qmp.greeting().version.qemu;
    if (v.major, v.minor) < (m.qemu.major, m.qemu.minor) {
        return Err(err(format!(
            "saved by QEMU {}.{}.{}, this host has {}.{}.{}: an older QEMU cannot load it",
            m.qemu.major, m.qemu.minor, m.qemu.micro, v.major, v.minor, v.micro
        )));
    }
    qmp.migrate_set_capabilities(&[("x-ignore-shared", m.ram_in_memory_file.is_some())])
        .await?;
    for rec in &m.hotplugged {
        p.plug(rec).await?;
    }
    let f = std::fs::File::open(state).map_err(|e| io_err(state, e))?;
    qmp.get_fd(RESTORE_FD, f.into()).await?;
    qmp.migrate_incoming(&format!("fd:{RESTORE_FD}")).await?;
    // QEMU leaves `inmigrate` for `paused` once the state is in, or exits
    // with the reason when it cannot load it.
    let deadline = tokio::time::Instant::now() + ready_timeout;
    poll(p, deadline, "while loading the state", || async {
        match qmp.query_status().await?.status.as_str() {
            "inmigrate" => Ok(None),
            "paused" => Ok(Some(())),
            other => Err(err(format!("after loading, QEMU is {other}, not paused"))),
        }
    })
    .await?;
    let done = qmp.query_migrate().await?;
    if done.status.as_deref() != Some("completed") {
        return Err(err(format!(
            "incoming migration {:?}: {}",
            done.status,
            done.error_desc.unwrap_or_default()
        )));
    }
    Ok(())
}

/// Runs the loaded guest, waits for its agent, sets its clock.
async fn resume(p: &Partition, ready_timeout: Duration, clock: bool) -> Result<(), EngineError> {
    p.qmp().cont().await?;
    p.agent()
        .wait_ready(ready_timeout)
        .await
        .map_err(|e| EngineError::Agent(format!("after restore: {e}")))?;
    if clock {
        set_guest_clock(p).await?;
    }
    Ok(())
}

/// Calls `step` every [`POLL`] until it gives a value, fails, QEMU ends or
/// `deadline` passes; `what` says when, in errors.
pub(crate) async fn poll<T, F, Fut>(
    p: &Partition,
    deadline: tokio::time::Instant,
    what: &str,
    mut step: F,
) -> Result<T, EngineError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, EngineError>>,
{
    let ended = |e: ExitInfo| err(format!("QEMU ended {what}: {}", e.reason));
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            e = p.wait_exit() => return Err(ended(e)),
        }
        match step().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) if tokio::time::Instant::now() >= deadline => {
                return Err(err(format!("not done {what} by the deadline")))
            }
            Ok(None) => {}
            // QMP closed under us: QEMU is going; say why it went.
            Err(_) if p.qmp().is_closed() => {
                return match tokio::time::timeout(Duration::from_secs(30), p.wait_exit()).await {
                    Ok(e) => Err(ended(e)),
                    Err(_) => Err(err(format!("QMP closed {what}"))),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs a program in the guest through the agent; it must exit 0. `what`
/// names it in errors.
async fn guest_run(p: &Partition, what: &str, argv: &[String]) -> Result<(), EngineError> {
    let out = p
        .agent()
        .exec(argv, None, Duration::from_secs(60))
        .await
        .map_err(|e| EngineError::Agent(format!("{what}: {e}")))?;
    if out.code != 0 {
        return Err(EngineError::Agent(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The guest's clock stood still while it was saved; set it from the host's
/// (busybox `date`, run directly: a shell around it would double the cost
/// of a process start under TCG; the agent has no clock request).
async fn set_guest_clock(p: &Partition) -> Result<(), EngineError> {
    // To the nearest second: within half a second of the host's.
    let now = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        + 500)
        / 1000;
    let argv = ["/bin/date", "-u", "-s"].map(String::from);
    let argv = [argv.as_slice(), &[format!("@{now}")]].concat();
    guest_run(p, "setting the guest clock", &argv).await
}

/// Gives a clone its own hostname, MACs and addresses inside the guest, and
/// the host's clock: one agent request. `renames`: (template MAC, clone MAC,
/// new address, gateway) per NIC.
async fn reidentify(
    p: &Partition,
    renames: &[(String, String, Option<String>, Option<String>)],
) -> Result<(), EngineError> {
    let r = bulkhead_agent::proto::Reidentity {
        hostname: p.spec().name.clone(),
        clock_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64,
        nics: renames
            .iter()
            .map(|(old, new, ip, gw)| bulkhead_agent::proto::NicIdentity {
                old_mac: old.clone(),
                new_mac: new.clone(),
                ip: ip.clone(),
                gateway: ip.as_ref().and(gw.clone()),
            })
            .collect(),
    };
    match p.agent().reidentify(r).await {
        Ok(()) => Ok(()),
        // An image's agent older than the request: processes do it.
        Err(bulkhead_agent::AgentError::Guest { kind, message })
            if kind == "bad_request" && message.contains("reidentify") =>
        {
            reidentify_by_processes(p, renames).await
        }
        Err(e) => Err(EngineError::Agent(format!("re-identifying: {e}"))),
    }
}

/// [`reidentify`] for agents without the request: `date`, then a shell.
async fn reidentify_by_processes(
    p: &Partition,
    renames: &[(String, String, Option<String>, Option<String>)],
) -> Result<(), EngineError> {
    set_guest_clock(p).await?;
    let agent_err =
        |e: bulkhead_agent::AgentError| EngineError::Agent(format!("re-identifying: {e}"));
    p.agent()
        .set_hostname(&p.spec().name)
        .await
        .map_err(agent_err)?;
    let mut script = String::from("set -e\n");
    for (old, new, ip, gw) in renames {
        // The NIC is found by the template's MAC: names follow probe order.
        script.push_str(&format!(
            "for d in /sys/class/net/*; do [ \"$(cat $d/address)\" = {old} ] || continue; n=${{d##*/}}\n\
             ip link set dev $n address {new}\n"
        ));
        if let Some(ip) = ip {
            script.push_str(&format!("ip addr flush dev $n\nip addr add {ip} dev $n\n"));
            if let Some(gw) = gw {
                script.push_str(&format!("ip route replace default via {gw}\n"));
            }
        }
        script.push_str("done\n");
    }
    let argv = ["/bin/sh".to_string(), "-c".into(), script];
    guest_run(p, "re-identifying", &argv).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(dir: &Path, state: &[u8]) -> Manifest {
        std::fs::write(dir.join(STATE_FILE), state).unwrap();
        let sha = hex(&sha2::Sha256::digest(state));
        let m = Manifest {
            format: MANIFEST_FORMAT,
            spec: PartitionSpec::new("p", "/k".into(), "/i".into()),
            hotplugged: vec![],
            state: StateInfo {
                len: state.len() as u64,
                sha256: sha,
            },
            ram_in_memory_file: None,
            qemu: QemuInfo {
                major: 7,
                minor: 2,
                micro: 22,
                package: String::new(),
            },
            saved_at_unix_ms: 0,
            disk_point: None,
        };
        std::fs::write(dir.join(MANIFEST_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
        m
    }

    #[test]
    fn a_clone_differs_from_its_template_only_in_identity() {
        let net = |ip: &str, mac: Option<&str>| {
            AdapterSpec::Net(crate::spec::NetSpec {
                id: "net0".into(),
                bridge: "br0".into(),
                mac: mac.map(str::to_string),
                tap: Some("tap-x".into()),
                ip: Some(ip.into()),
                gateway: None,
            })
        };
        let mut tpl = PartitionSpec::new("web-tpl", "/k".into(), "/i".into());
        tpl.adapters.push(net("10.0.0.2/24", None));
        let mut clone = PartitionSpec::new("web-3", "/k".into(), "/i".into());
        clone
            .adapters
            .push(net("10.0.0.9/24", Some("52:54:00:00:00:09")));
        assert_eq!(same_machine_but_identity(&tpl, &clone), Ok(()));
        // What the guest could tell apart is refused, with what differs.
        let mut bigger = clone.clone();
        bigger.memory_mib *= 2;
        let e = same_machine_but_identity(&tpl, &bigger).unwrap_err();
        assert!(e.contains("memory_mib"), "{e}");
        let mut no_net = clone.clone();
        no_net.adapters.clear();
        assert!(same_machine_but_identity(&tpl, &no_net).is_err());
        // And a plain restore still refuses another identity.
        assert!(same_machine(&tpl, &clone).is_err());
    }

    #[tokio::test]
    async fn state_is_checked_against_the_manifest() {
        let d = tempfile::tempdir().unwrap();
        let m = manifest(d.path(), b"QEVM-stream-bytes");
        assert_eq!(read_manifest(d.path()).unwrap(), m);
        let state = check_files(d.path(), &m).unwrap();
        check_hash(state.clone(), m.state.sha256.clone())
            .await
            .unwrap();
        // Truncated.
        std::fs::write(&state, b"QEVM").unwrap();
        let e = check_files(d.path(), &m).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        // Same length, other bytes.
        std::fs::write(&state, b"QEVM-stream-bytez").unwrap();
        check_files(d.path(), &m).unwrap();
        let e = check_hash(state, m.state.sha256.clone())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("corrupted"), "{e}");
    }

    #[test]
    fn the_fuzz_seeds_are_manifests() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/manifest");
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("seed-") {
                let m = Manifest::parse(&std::fs::read(e.path()).unwrap());
                assert!(m.is_ok(), "{}: {m:?}", e.path().display());
            }
        }
    }

    #[test]
    fn only_the_same_machine_is_restored_onto() {
        let mut saved = PartitionSpec::new("p", "/k".into(), "/i".into());
        saved.adapters.push(AdapterSpec::Net(crate::spec::NetSpec {
            id: "net0".into(),
            bridge: "br-a".into(),
            mac: Some("52:54:00:00:00:07".into()),
            tap: Some("tap-a".into()),
            ip: Some("10.0.0.7/24".into()),
            gateway: None,
        }));
        // Another host's names for the same machine.
        let mut local = saved.clone();
        local.boot.kernel = "/elsewhere/vmlinux".into();
        if let AdapterSpec::Net(n) = &mut local.adapters[0] {
            n.bridge = "br-b".into();
            n.tap = Some("tap-b".into());
        }
        same_machine(&saved, &local).unwrap();
        let mut bigger = local.clone();
        bigger.memory_mib += 64;
        let e = same_machine(&saved, &bigger).unwrap_err();
        assert!(e.contains("memory_mib"), "{e}");
        let mut other_mac = local;
        if let AdapterSpec::Net(n) = &mut other_mac.adapters[0] {
            n.mac = Some("52:54:00:00:00:08".into());
        }
        let e = same_machine(&saved, &other_mac).unwrap_err();
        assert!(e.contains("adapters"), "{e}");
    }

    #[test]
    fn a_missing_or_foreign_manifest_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = read_manifest(d.path()).unwrap_err().to_string();
        assert!(e.contains("no complete image"), "{e}");
        let mut m = manifest(d.path(), b"x");
        m.format = 99;
        std::fs::write(
            d.path().join(MANIFEST_FILE),
            serde_json::to_vec(&m).unwrap(),
        )
        .unwrap();
        let e = read_manifest(d.path()).unwrap_err().to_string();
        assert!(e.contains("format 99"), "{e}");
        std::fs::write(d.path().join(MANIFEST_FILE), b"{").unwrap();
        assert!(read_manifest(d.path()).is_err());
    }
}
