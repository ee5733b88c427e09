//! The mapping table: (shared listener, domain) → target, loaded from TOML and
//! swapped atomically at run time. Lookups are by exact name, then the longest
//! matching wildcard (`*.dom1.com`), then the listener's default row (`*`).

use crate::metrics::{RowStats, Stats};
use crate::proxy_protocol;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("parsing {0}: {1}")]
    Parse(PathBuf, String),
    #[error("route {domain} on {listen}: no [[listener]] with that address")]
    NoListener { listen: SocketAddr, domain: String },
    #[error("listener {0} is defined twice")]
    DuplicateListener(SocketAddr),
    #[error("route {domain} on {listen} is defined twice")]
    DuplicateRoute { listen: SocketAddr, domain: String },
    #[error("invalid domain {0:?}: use a host name, *.suffix, or * for the default row")]
    BadDomain(String),
    #[error("invalid target {0:?}: use host:port")]
    BadTarget(String),
    #[error("invalid duration {0:?}: use e.g. 500ms, 10s, 2m")]
    BadDuration(String),
    #[error("invalid trusted address {0:?}: use an IP or IP/prefix")]
    BadCidr(String),
    #[error("no route {domain} on {listen}")]
    NoSuchRoute { listen: SocketAddr, domain: String },
}

/// A duration written as `500ms`, `10s` or `2m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Dur(pub Duration);

impl TryFrom<String> for Dur {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadDuration(s.clone());
        let t = s.trim();
        let (num, mul) = if let Some(n) = t.strip_suffix("ms") {
            (n, 1)
        } else if let Some(n) = t.strip_suffix('s') {
            (n, 1000)
        } else if let Some(n) = t.strip_suffix('m') {
            (n, 60_000)
        } else {
            return Err(bad());
        };
        let n: u64 = num.trim().parse().map_err(|_| bad())?;
        Ok(Dur(Duration::from_millis(
            n.checked_mul(mul).ok_or_else(bad)?,
        )))
    }
}

impl From<Dur> for String {
    fn from(d: Dur) -> String {
        format!("{}ms", d.0.as_millis())
    }
}

fn ms(n: u64) -> Dur {
    Dur(Duration::from_millis(n))
}

/// What a listener expects as first bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TLS if the first byte is a handshake record, HTTP/1.x otherwise.
    #[default]
    Auto,
    Tls,
    Http,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub listen: SocketAddr,
    #[serde(default)]
    pub protocol: Protocol,
    /// Peers allowed (and required) to send a PROXY header first: IPs or CIDRs.
    #[serde(default)]
    pub accept_proxy_from: Vec<String>,
    /// Time allowed for a whole request head or ClientHello (slowloris bound).
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Dur,
    /// Idle time after which a connection (keep-alive wait or spliced) is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Largest request head or ClientHello accepted.
    #[serde(default = "default_max_header")]
    pub max_header_bytes: usize,
}

fn default_header_timeout() -> Dur {
    ms(10_000)
}
fn default_idle_timeout() -> Dur {
    ms(60_000)
}
fn default_connect_timeout() -> Dur {
    ms(5_000)
}
fn default_max_header() -> usize {
    16 * 1024
}

impl ListenerConfig {
    pub fn new(listen: SocketAddr) -> Self {
        ListenerConfig {
            listen,
            protocol: Protocol::Auto,
            accept_proxy_from: Vec::new(),
            header_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
            connect_timeout: default_connect_timeout(),
            max_header_bytes: default_max_header(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub listen: SocketAddr,
    /// `a.test`, `*.dom1.com`, or `*` for the listener's default row.
    pub domain: String,
    /// `host:port` of the server's virtual port.
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<proxy_protocol::Version>,
    /// Most streams (TLS connections, HTTP requests, upgraded tunnels) at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Unix socket for `bulkhead portshare routes ...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_socket: Option<PathBuf>,
    /// Address serving Prometheus metrics at /metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
    /// JSON-lines access log file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<PathBuf>,
    /// Tokio worker threads (1 = a single-threaded runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// On SIGTERM, how long open connections get to finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_timeout: Option<Dur>,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        let cfg: Config =
            toml::from_str(&text).map_err(|e| ConfigError::Parse(path.into(), e.to_string()))?;
        Ok(cfg)
    }
}

/// One row, resolved.
#[derive(Debug)]
pub struct Route {
    pub cfg: RouteConfig,
    /// Pre-parsed when the target is an IP literal; resolved per connect otherwise.
    pub addr: Option<SocketAddr>,
    /// Host part and port of the target, for mapping back.
    pub target_host: String,
    pub target_port: u16,
    pub stats: Arc<RowStats>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    ip: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(s: &str) -> Result<Cidr, ConfigError> {
        let bad = || ConfigError::BadCidr(s.to_string());
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (
                ip.parse::<IpAddr>().map_err(|_| bad())?,
                Some(p.parse::<u8>().map_err(|_| bad())?),
            ),
            None => (s.parse::<IpAddr>().map_err(|_| bad())?, None),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { ip, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.ip, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let m = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(a) & m == u32::from(b) & m
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let m = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(a) & m == u128::from(b) & m
            }
            _ => false,
        }
    }
}

/// One listener's rows.
#[derive(Debug)]
pub struct ListenerTable {
    pub cfg: ListenerConfig,
    trusted: Vec<Cidr>,
    exact: HashMap<String, Arc<Route>>,
    /// Keyed by suffix with its leading dot: `*.dom1.com` → `.dom1.com`.
    wild: HashMap<String, Arc<Route>>,
    default: Option<Arc<Route>>,
    /// Counts connections and errors that matched no row.
    pub unmatched: Arc<RowStats>,
}

impl ListenerTable {
    /// Exact name, then the longest wildcard suffix, then the default row.
    pub fn lookup(&self, host: Option<&str>) -> Option<&Arc<Route>> {
        if let Some(h) = host {
            if let Some(r) = self.exact.get(h) {
                return Some(r);
            }
            let mut rest = h;
            while let Some(i) = rest.find('.') {
                let suffix = &rest[i..];
                if let Some(r) = self.wild.get(suffix) {
                    return Some(r);
                }
                rest = &rest[i + 1..];
            }
        }
        self.default.as_ref()
    }

    /// The row an exact or wildcard name gives `host`, never the default row.
    pub fn lookup_named(&self, host: &str) -> Option<&Arc<Route>> {
        match self.lookup(Some(host)) {
            Some(r) if self.default.as_ref().is_none_or(|d| !Arc::ptr_eq(d, r)) => Some(r),
            _ => None,
        }
    }

    pub fn trusts_proxy_from(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }
}

/// The whole table: immutable; changes build a new one and swap it in.
#[derive(Debug)]
pub struct Table {
    pub config: Config,
    pub listeners: HashMap<SocketAddr, ListenerTable>,
}

enum DomainKind {
    Exact(String),
    Wild(String),
    Default,
}

fn domain_kind(d: &str) -> Result<DomainKind, ConfigError> {
    let bad = || ConfigError::BadDomain(d.to_string());
    if d == "*" {
        return Ok(DomainKind::Default);
    }
    if let Some(suffix) = d.strip_prefix("*.") {
        let s = crate::sni::normalize_host(suffix.as_bytes()).ok_or_else(bad)?;
        return Ok(DomainKind::Wild(format!(".{s}")));
    }
    if d.starts_with('[') {
        // IPv6 literal as sent in a Host header.
        let inner = d
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .ok_or_else(bad)?;
        let ip: std::net::Ipv6Addr = inner.parse().map_err(|_| bad())?;
        return Ok(DomainKind::Exact(format!("[{ip}]")));
    }
    Ok(DomainKind::Exact(
        crate::sni::normalize_host(d.as_bytes()).ok_or_else(bad)?,
    ))
}

fn split_target(t: &str) -> Result<(String, u16), ConfigError> {
    let bad = || ConfigError::BadTarget(t.to_string());
    let i = t.rfind(':').ok_or_else(bad)?;
    let (h, p) = (&t[..i], &t[i + 1..]);
    let port: u16 = p.parse().map_err(|_| bad())?;
    let h = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    if h.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((h.to_string(), port))
}

impl Table {
    /// Validates `config` and builds the lookup structures. Row statistics are
    /// taken from `stats`, so they survive reloads of the same row.
    pub fn build(config: Config, stats: &Stats) -> Result<Table, ConfigError> {
        let mut listeners = HashMap::new();
        for l in &config.listeners {
            let trusted = l
                .accept_proxy_from
                .iter()
                .map(|s| Cidr::parse(s))
                .collect::<Result<Vec<_>, _>>()?;
            let t = ListenerTable {
                cfg: l.clone(),
                trusted,
                exact: HashMap::new(),
                wild: HashMap::new(),
                default: None,
                unmatched: stats.row(l.listen, "-"),
            };
            if listeners.insert(l.listen, t).is_some() {
                return Err(ConfigError::DuplicateListener(l.listen));
            }
        }
        let mut seen = HashSet::new();
        for r in &config.routes {
            let lt = listeners
                .get_mut(&r.listen)
                .ok_or_else(|| ConfigError::NoListener {
                    listen: r.listen,
                    domain: r.domain.clone(),
                })?;
            let kind = domain_kind(&r.domain)?;
            let (target_host, target_port) = split_target(&r.target)?;
            let key = match &kind {
                DomainKind::Exact(s) => s.clone(),
                DomainKind::Wild(s) => format!("*{s}"),
                DomainKind::Default => "*".into(),
            };
            if !seen.insert((r.listen, key.clone())) {
                return Err(ConfigError::DuplicateRoute {
                    listen: r.listen,
                    domain: r.domain.clone(),
                });
            }
            let route = Arc::new(Route {
                cfg: r.clone(),
                addr: target_host
                    .parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, target_port)),
                target_host,
                target_port,
                stats: stats.row(r.listen, &key),
            });
            match kind {
                DomainKind::Exact(s) => {
                    lt.exact.insert(s, route);
                }
                DomainKind::Wild(s) => {
                    lt.wild.insert(s, route);
                }
                DomainKind::Default => lt.default = Some(route),
            }
        }
        Ok(Table { config, listeners })
    }

    /// A copy of the config with `route` added (replacing the same row).
    pub fn with_route(&self, route: RouteConfig) -> Config {
        let mut c = self.config.clone();
        let key = domain_key(&route.domain);
        c.routes
            .retain(|r| !(r.listen == route.listen && domain_key(&r.domain) == key));
        c.routes.push(route);
        c
    }

    /// A copy of the config without the row `(listen, domain)`.
    pub fn without_route(&self, listen: SocketAddr, domain: &str) -> Result<Config, ConfigError> {
        let mut c = self.config.clone();
        let key = domain_key(domain);
        let before = c.routes.len();
        c.routes
            .retain(|r| !(r.listen == listen && domain_key(&r.domain) == key));
        if c.routes.len() == before {
            return Err(ConfigError::NoSuchRoute {
                listen,
                domain: domain.into(),
            });
        }
        Ok(c)
    }
}

fn domain_key(d: &str) -> String {
    d.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, &str)]) -> Table {
        let l: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let cfg = Config {
            listeners: vec![ListenerConfig::new(l)],
            routes: routes
                .iter()
                .map(|(d, t)| RouteConfig {
                    listen: l,
                    domain: d.to_string(),
                    target: t.to_string(),
                    proxy_protocol: None,
                    max_connections: None,
                })
                .collect(),
            ..Default::default()
        };
        Table::build(cfg, &Stats::default()).unwrap()
    }

    #[test]
    fn exact_wildcard_default() {
        let t = table(&[
            ("a.test", "127.0.0.1:1"),
            ("*.dom1.com", "127.0.0.1:2"),
            ("*.x.dom1.com", "127.0.0.1:3"),
            ("*", "127.0.0.1:4"),
        ]);
        let lt = t.listeners.values().next().unwrap();
        let port = |h: Option<&str>| lt.lookup(h).map(|r| r.target_port);
        assert_eq!(port(Some("a.test")), Some(1));
        assert_eq!(port(Some("w.dom1.com")), Some(2));
        assert_eq!(port(Some("deep.w.dom1.com")), Some(2));
        assert_eq!(port(Some("y.x.dom1.com")), Some(3));
        assert_eq!(port(Some("dom1.com")), Some(4));
        assert_eq!(port(Some("other")), Some(4));
        assert_eq!(port(None), Some(4));
        let t = table(&[("a.test", "127.0.0.1:1")]);
        assert!(t
            .listeners
            .values()
            .next()
            .unwrap()
            .lookup(Some("b.test"))
            .is_none());
    }

    #[test]
    fn rejects_bad_config() {
        let bad = |s: &str| {
            toml::from_str::<Config>(s)
                .map_err(|e| e.to_string())
                .and_then(|c| Table::build(c, &Stats::default()).map_err(|e| e.to_string()))
        };
        assert!(
            bad("[[route]]\nlisten='127.0.0.1:1'\ndomain='a'\ntarget='127.0.0.1:2'")
                .unwrap_err()
                .contains("no [[listener]]")
        );
        assert!(bad("[[listener]]\nlisten='127.0.0.1:1'\n[[route]]\nlisten='127.0.0.1:1'\ndomain='a b'\ntarget='127.0.0.1:2'").unwrap_err().contains("invalid domain"));
        assert!(bad("[[listener]]\nlisten='127.0.0.1:1'\n[[route]]\nlisten='127.0.0.1:1'\ndomain='a'\ntarget='nope'").unwrap_err().contains("invalid target"));
        assert!(
            bad("[[listener]]\nlisten='127.0.0.1:1'\nidle_timeout='5 parsecs'")
                .unwrap_err()
                .contains("duration")
        );
        assert!(bad("[[listener]]\nlisten='127.0.0.1:1'\nbogus=1").is_err());
        assert!(bad("[[listener]]\nlisten='127.0.0.1:1'\n[[route]]\nlisten='127.0.0.1:1'\ndomain='A'\ntarget='h:2'\n[[route]]\nlisten='127.0.0.1:1'\ndomain='a'\ntarget='h:3'").unwrap_err().contains("twice"));
    }

    #[test]
    fn cidr() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert!(Cidr::parse("1.2.3.4/33").is_err());
    }
}
