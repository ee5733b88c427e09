//! bulkhead-agent: the program that runs as /init inside every partition,
//! and the host's client for it.
//!
//! - [`proto`]: the versioned wire protocol (newline-delimited JSON), sans I/O.
//! - [`host`]: the tokio client the engine uses ([`AgentClient`]).
//! - [`cmdline`]: the `bulkhead.*` kernel command-line keys.
//! - [`guest`]: the agent itself (PID 1 duties and serving the host).

pub mod cmdline;
pub mod guest;
pub mod host;
pub mod proto;

pub use host::{
    AgentClient, AgentError, ExecOutput, GuestCall, GuestInfo, PowerAction, ReadyInfo, RegionInfo,
    RegionUnmapped,
};
pub use proto::WireError;
pub use proto::{PORT_NAME, PROTOCOL_VERSION, READY_LINE};
