//! L2TP profiles (TOML) for the resource server and the client. docs/l2tp.md shows
//! complete examples.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use bulkhead_l2tp::ext::DEFAULT_VENDOR_ID;
use serde::Deserialize;

/// The resource server's profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerProfile {
    #[serde(default = "default_server_name")]
    pub hostname: String,
    /// Addresses that accept tunnels (the internal VLAN's, never a public one).
    pub listen: Vec<SocketAddr>,
    /// Secret for peers without an entry in `secrets`; none = no tunnel authentication.
    pub secret: Option<String>,
    /// Secrets by the peer's Host Name.
    #[serde(default)]
    pub secrets: HashMap<String, String>,
    #[serde(default = "default_vendor")]
    pub vendor_id: u16,
    #[serde(default = "default_hello")]
    pub hello_interval: u64,
    /// Hide every hideable AVP we send (RFC 2661 §4.3; needs a secret).
    #[serde(default)]
    pub hide_avps: bool,
    #[serde(default, rename = "device")]
    pub devices: Vec<Device>,
    /// Name → number.
    #[serde(default)]
    pub directory: HashMap<String, String>,
}

/// A shared device: a Hayes modem on a serial line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub name: String,
    pub tty: PathBuf,
    #[serde(default = "yes")]
    pub outgoing: bool,
    #[serde(default = "yes")]
    pub incoming: bool,
    /// Seconds to wait for CONNECT after dialing.
    #[serde(default = "default_dial_timeout")]
    pub dial_timeout: u64,
    /// Rings on this device while no client armed it go to this LNS as ICRQ.
    pub forward_incoming: Option<SocketAddr>,
}

/// The client's profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientProfile {
    #[serde(default = "default_client_name")]
    pub hostname: String,
    /// Resource server for outgoing calls.
    pub outgoing: Option<SocketAddr>,
    /// Resource server for incoming calls (may differ).
    pub incoming: Option<SocketAddr>,
    pub secret: Option<String>,
    #[serde(default = "default_vendor")]
    pub vendor_id: u16,
    #[serde(default = "default_hello")]
    pub hello_interval: u64,
    /// Hide every hideable AVP we send (RFC 2661 §4.3; needs a secret).
    #[serde(default)]
    pub hide_avps: bool,
    /// Control socket that `bulkhead l2tp dial|answer` talk to.
    #[serde(default = "default_control")]
    pub control: PathBuf,
    /// Local names; they add to (and override) the server's directory.
    #[serde(default)]
    pub directory: HashMap<String, String>,
}

fn default_server_name() -> String {
    "bulkhead-l2tp-server".into()
}
fn default_client_name() -> String {
    "bulkhead-l2tp-client".into()
}
fn default_vendor() -> u16 {
    DEFAULT_VENDOR_ID
}
fn default_hello() -> u64 {
    60
}
fn default_dial_timeout() -> u64 {
    60
}
fn yes() -> bool {
    true
}
pub fn default_control() -> PathBuf {
    PathBuf::from("/run/bulkhead/l2tp-client.sock")
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading profile {}", path.display()))
}

impl ServerProfile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let p: ServerProfile =
            toml::from_str(&read(path)?).with_context(|| format!("parsing {}", path.display()))?;
        p.validate()?;
        Ok(p)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.listen.is_empty() {
            bail!("the profile lists no listen address");
        }
        let mut names = std::collections::HashSet::new();
        for d in &self.devices {
            if !names.insert(&d.name) {
                bail!("device {:?} is listed twice", d.name);
            }
        }
        Ok(())
    }

    /// The secret for a peer by its Host Name.
    pub fn secret_for(&self, host: &str) -> Option<&str> {
        self.secrets
            .get(host)
            .or(self.secret.as_ref())
            .map(String::as_str)
    }
}

impl ClientProfile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let p: ClientProfile =
            toml::from_str(&read(path)?).with_context(|| format!("parsing {}", path.display()))?;
        if p.outgoing.is_none() && p.incoming.is_none() {
            bail!("the profile names no resource server (outgoing or incoming)");
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_profile_parses_and_checks() {
        let p: ServerProfile = toml::from_str(
            r#"
            listen = ["10.0.0.1:1701"]
            secret = "s"
            [secrets]
            special = "t"
            [[device]]
            name = "modem0"
            tty = "/dev/ttyS0"
            incoming = false
            [directory]
            PRIMARY_ISP = "5551234"
            "#,
        )
        .unwrap();
        p.validate().unwrap();
        assert_eq!(p.secret_for("special"), Some("t"));
        assert_eq!(p.secret_for("other"), Some("s"));
        assert!(p.devices[0].outgoing && !p.devices[0].incoming);
        assert_eq!(p.vendor_id, DEFAULT_VENDOR_ID);
        let bad = toml::from_str::<ServerProfile>("listen = []\nbogus = 1");
        assert!(bad.is_err());
    }
}
