//! bulkheadd: the partition manager. See the crate README.

pub mod api;
pub mod capacity;
pub mod cgroup;
pub mod checkpoint;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod devices;
pub mod expose;
pub mod expose_cli;
pub mod grant_cli;
pub mod grants;
pub mod ha;
pub mod host_id;
pub mod idle;
pub mod listen;
pub mod lu;
pub mod manager;
pub mod metrics;
pub mod net;
pub mod openapi;
pub mod pools;
pub mod remote_restart;
pub mod server;
pub mod storage;
pub mod tls;

pub use manager::Manager;
