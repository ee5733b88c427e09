//! Shared port: one well-known port in front of many servers on virtual ports.
//! Each connection (TLS, by SNI) or request (plain HTTP/1.x, by Host) is mapped
//! through a [`table::Table`] to its target; responses that name the virtual
//! port are mapped back to the shared port.
//!
//! The byte-level parts are sans-I/O and fuzzed: [`sni`] (ClientHello),
//! [`http`] (strict request/response heads, chunked framing, and in
//! [`http::proxy`] the proxy's keep-alive, retry, upgrade and pool decisions),
//! [`proxy_protocol`] (PROXY v1/v2). [`server`] drives them with tokio.

pub mod access;
pub mod admin;
pub mod cli;
pub mod http;
pub mod metrics;
pub mod proxy_protocol;
pub mod server;
pub mod sni;
pub mod table;

pub use server::Server;
pub use table::{Config, ListenerConfig, RouteConfig, Table};
