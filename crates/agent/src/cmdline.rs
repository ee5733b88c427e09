//! The `bulkhead.*` kernel command-line keys, sans I/O.
//!
//! | key | meaning |
//! |---|---|
//! | `bulkhead.ip=ADDR/PREFIX` | IPv4 address of `eth0` (brought up with it) |
//! | `bulkhead.gw=ADDR` | IPv4 default gateway |
//! | `bulkhead.hostname=NAME` | host name (default `bulkhead`) |
//! | `bulkhead.root=/dev/vdX` | mount this root LU and switch into it |
//! | `bulkhead.rootfstype=TYPE` | its file system (default `ext4`) |
//! | `bulkhead.iface=NAME` | interface `bulkhead.ip` applies to (default `eth0`) |
//! | `bulkhead.debug` | log each boot step with the guest's uptime |
//!
//! A malformed value is reported as a warning and ignored; boot goes on.

use std::net::Ipv4Addr;

/// What the agent takes from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootConfig {
    pub ip: Option<(Ipv4Addr, u8)>,
    pub gw: Option<Ipv4Addr>,
    pub hostname: Option<String>,
    pub root: Option<String>,
    pub rootfstype: Option<String>,
    pub iface: Option<String>,
    pub debug: bool,
}

impl BootConfig {
    pub fn iface(&self) -> &str {
        self.iface.as_deref().unwrap_or("eth0")
    }
    pub fn rootfstype(&self) -> &str {
        self.rootfstype.as_deref().unwrap_or("ext4")
    }
}

/// Splits a command line into words, honouring double quotes as the kernel does.
fn words(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// Parses `/proc/cmdline`. Returns the config and one warning per bad key.
pub fn parse(cmdline: &str) -> (BootConfig, Vec<String>) {
    let mut cfg = BootConfig::default();
    let mut warnings = Vec::new();
    for word in words(cmdline) {
        let Some(rest) = word.strip_prefix("bulkhead.") else {
            continue;
        };
        let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
        let res: Result<(), String> = match key {
            "ip" => parse_cidr(value).map(|v| cfg.ip = Some(v)),
            "gw" => value
                .parse::<Ipv4Addr>()
                .map(|v| cfg.gw = Some(v))
                .map_err(|_| format!("not an IPv4 address: {value:?}")),
            "hostname" => validate_hostname(value).map(|_| cfg.hostname = Some(value.into())),
            "root" => {
                if value.starts_with("/dev/") && value.len() > 5 && !value.contains("..") {
                    cfg.root = Some(value.into());
                    Ok(())
                } else {
                    Err(format!("expected /dev/NAME, got {value:?}"))
                }
            }
            "rootfstype" if !value.is_empty() => {
                cfg.rootfstype = Some(value.into());
                Ok(())
            }
            "debug" if value.is_empty() || value == "1" => {
                cfg.debug = true;
                Ok(())
            }
            "iface" if !value.is_empty() && !value.contains('/') && value.len() < 16 => {
                cfg.iface = Some(value.into());
                Ok(())
            }
            _ => Err("unknown key or empty value".into()),
        };
        if let Err(e) = res {
            warnings.push(format!("bulkhead.{key}: {e}"));
        }
    }
    (cfg, warnings)
}

/// `ADDR/PREFIX`, IPv4.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("expected ADDR/PREFIX, got {s:?}"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("not an IPv4 address: {addr:?}"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("prefix must be 0..=32, got {prefix:?}"))?;
    Ok((addr, prefix))
}

/// Netmask for a prefix length.
pub fn netmask(prefix: u8) -> Ipv4Addr {
    let bits = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    };
    Ipv4Addr::from(bits)
}

/// A host name the kernel and resolvers accept: 1..=64 of `[A-Za-z0-9._-]`,
/// not starting with `-` or `.`.
pub fn validate_hostname(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid host name {name:?} (1-64 of A-Z a-z 0-9 . _ -, not starting with - or .)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_keys() {
        let (c, w) = parse(
            "console=ttyS0 bulkhead.ip=10.0.0.2/24 bulkhead.gw=10.0.0.1 \
             bulkhead.hostname=p-1 bulkhead.root=/dev/vda quiet bulkhead.rootfstype=xfs \
             bulkhead.iface=eth1 bulkhead.debug\n",
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.ip, Some(("10.0.0.2".parse().unwrap(), 24)));
        assert_eq!(c.gw, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(c.hostname.as_deref(), Some("p-1"));
        assert_eq!(c.root.as_deref(), Some("/dev/vda"));
        assert_eq!(c.rootfstype(), "xfs");
        assert_eq!(c.iface(), "eth1");
        assert!(c.debug);
    }

    #[test]
    fn defaults_and_quotes() {
        let (c, w) = parse("a=\"x y\" bulkhead.hostname=\"h\"");
        assert!(w.is_empty());
        assert_eq!(c.hostname.as_deref(), Some("h"));
        assert_eq!(c.iface(), "eth0");
        assert_eq!(c.rootfstype(), "ext4");
        assert_eq!(words("a=\"x y\"  b"), vec!["a=x y", "b"]);
    }

    #[test]
    fn bad_values_warn_and_are_ignored() {
        let (c, w) = parse(
            "bulkhead.ip=10.0.0.2 bulkhead.ip=10.0.0.300/8 bulkhead.ip=1.2.3.4/33 \
             bulkhead.gw=x bulkhead.hostname=-bad bulkhead.root=vda bulkhead.root=/dev/../x \
             bulkhead.bogus=1 bulkhead.hostname",
        );
        assert_eq!(c, BootConfig::default());
        assert_eq!(w.len(), 9, "{w:?}");
        assert!(w[0].starts_with("bulkhead.ip: expected ADDR/PREFIX"));
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(31), Ipv4Addr::new(255, 255, 255, 254));
        assert_eq!(netmask(32), Ipv4Addr::new(255, 255, 255, 255));
    }

    #[test]
    fn hostnames() {
        assert!(validate_hostname("a.b-c9").is_ok());
        assert!(validate_hostname("pool_7").is_ok());
        assert!(validate_hostname("").is_err());
        assert!(validate_hostname(&"a".repeat(65)).is_err());
        assert!(validate_hostname("a b").is_err());
        assert!(validate_hostname("a/b").is_err());
    }
}
