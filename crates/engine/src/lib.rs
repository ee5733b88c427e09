//! The partition engine: a [`PartitionSpec`] becomes one QEMU process driven
//! over QMP, with its agent. See the crate README.

pub mod checkpoint;
pub mod cli;
pub mod cmdline;
pub mod host;
pub mod jail;
mod partition;
mod pdeath;
pub mod serial;
pub mod snapshot;
pub mod spec;

use std::path::PathBuf;
use std::time::Duration;

pub use host::default_image_dir;
pub use partition::{
    tail_lines, ExitInfo, ExitReason, HotplugRecord, LaunchOptions, MirrorJob, Partition,
    RegionPlug, RunState,
};
pub use snapshot::{CloneIdentity, Manifest, SaveOptions, SaveProgress};
pub use spec::{
    Accel, AdapterSpec, BackingFile, BootSource, CpuModel, DiskFormat, DiskSpec, MachineKind,
    MemoryFile, NetSpec, PartitionSpec, RegionSpec, REGION_MAX, REGION_MIN,
};

pub use bulkhead_agent::{
    AgentClient, ExecOutput, GuestInfo, PowerAction, ReadyInfo, RegionInfo, RegionUnmapped,
    READY_LINE,
};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid partition: {0}")]
    InvalidSpec(String),
    #[error("{what} {} does not exist", .path.display())]
    MissingFile { what: &'static str, path: PathBuf },
    #[error("QEMU failed to start: {0}")]
    QemuStart(String),
    #[error(transparent)]
    Qmp(#[from] bulkhead_qmp::QmpError),
    #[error("agent: {0}")]
    Agent(String),
    #[error("guest not ready after {timeout:?} ({detail}); last console lines:\n{console}")]
    NotReady {
        timeout: Duration,
        detail: String,
        console: String,
    },
    #[error("partition failed: {reason}; last console lines:\n{console}")]
    GuestFailed { reason: String, console: String },
    #[error("partition is not running: {0}")]
    NotRunning(String),
    #[error("host: {0}")]
    Host(String),
    /// A save or restore refused or failed (the reason says which and why).
    #[error("save/restore: {0}")]
    Snapshot(String),
}

impl From<bulkhead_hostnet::HostnetError> for EngineError {
    fn from(e: bulkhead_hostnet::HostnetError) -> Self {
        use bulkhead_hostnet::HostnetError as H;
        match e {
            // A bridge or name the spec gave: the caller's to fix.
            H::NoSuchLink { what: "bridge", .. } | H::InvalidName(_) => {
                EngineError::InvalidSpec(e.to_string())
            }
            _ => EngineError::Host(e.to_string()),
        }
    }
}

/// Removes what a partition left on the host after its QEMU died while
/// nobody watched (TAPs, sockets). Safe to call when nothing is left.
/// Blocking (netlink): async callers use `bulkhead_hostnet::blocking`.
pub fn cleanup_leftovers(spec: &PartitionSpec, opts: &LaunchOptions) {
    for n in spec.nets() {
        let t = cmdline::tap_for(&spec.name, n);
        let _ = bulkhead_hostnet::tap::remove(&t, opts.netns.as_deref());
    }
    partition::release_share_dir(&opts.run_dir);
    for s in [
        opts.qmp_socket(),
        opts.agent_socket(),
        opts.console_socket(),
        opts.pidfile(),
    ] {
        let _ = std::fs::remove_file(s);
    }
}
