//! L2TP resource sharing: the resource server ([`server`], LAC role) that owns modems
//! and places calls for its clients, the client ([`client`], LNS role) that dials and
//! answers through it, the tokio driver around the sans-I/O tunnel ([`driver`]) with
//! its bounded per-session queues ([`session`]), call framing ([`call`]), the client
//! daemon's control socket ([`control`]) and profiles ([`profile`]). Knows nothing of
//! partitions.

pub mod call;
pub mod cli;
pub mod client;
pub mod control;
pub mod driver;
mod pool;
pub mod profile;
pub mod server;
pub mod session;
