//! Host devices a partition owns (issue 15): serial lines given to one
//! partition at a time, and the L2TP resource server its agent starts on
//! them. The pure parts: checks, the claim decision the store makes inside
//! its write, and the server's profile. `manager::devices` applies them.

use std::collections::BTreeMap;
use std::path::Path;

use bulkhead_store::{L2tpServerRecord, PartitionDevices, PartitionRecord};
use serde::Serialize;

/// The L2TP server's UDP port when the record names none (RFC 2661).
pub const L2TP_PORT: u16 = 1701;

/// Where the image carries the resource server (see `make image`).
pub const L2TP_BINARY: &str = "/usr/sbin/bulkhead-l2tp";

/// What every refusal of a held line starts with (the API answers 409).
const HELD: &str = "serial device ";

/// `--serial-device` and `--l2tp-server FILE` of `partition create`.
pub fn cli_devices(
    serial: &[String],
    l2tp_profile: Option<&Path>,
) -> anyhow::Result<PartitionDevices> {
    use anyhow::Context;
    let l2tp_server = match l2tp_profile {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading L2TP server profile {}", p.display()))?;
            Some(
                toml::from_str(&text)
                    .with_context(|| format!("L2TP server profile {}", p.display()))?,
            )
        }
        None => None,
    };
    let serial = serial
        .iter()
        .map(|s| {
            std::path::absolute(s)
                .map(|p| p.to_string_lossy().into_owned())
                .with_context(|| format!("serial device {s:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(PartitionDevices {
        serial,
        l2tp_server,
    })
}

/// Checks a create's devices and returns them with each line's canonical
/// path (what claims compare). Touches only the named device nodes.
pub fn check(d: &PartitionDevices, net: bool) -> Result<PartitionDevices, String> {
    use bulkhead_engine::serial;
    if d.serial.len() > serial::MAX_SERIALS {
        return Err(format!(
            "at most {} serial devices, got {}",
            serial::MAX_SERIALS,
            d.serial.len()
        ));
    }
    let mut out = PartitionDevices::default();
    for s in &d.serial {
        if !s.starts_with('/') {
            return Err(format!("serial device {s:?} must be an absolute path"));
        }
        let canon = serial::check_device(Path::new(s))?
            .to_string_lossy()
            .into_owned();
        if out.serial.contains(&canon) {
            return Err(format!("serial device {canon} is named twice"));
        }
        out.serial.push(canon);
    }
    if let Some(l) = &d.l2tp_server {
        if d.serial.is_empty() {
            return Err("an L2TP server needs a serial device (--serial-device) to share".into());
        }
        if !net {
            return Err(
                "an L2TP server listens on the partition's VLAN address: create it with net".into(),
            );
        }
        check_l2tp(l)?;
        out.l2tp_server = Some(l.clone());
    }
    Ok(out)
}

fn check_l2tp(l: &L2tpServerRecord) -> Result<(), String> {
    if l.port == Some(0) {
        return Err("L2TP server port must be 1-65535".into());
    }
    if let Some(h) = &l.hostname {
        if h.is_empty() || h.len() > 64 || !h.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("L2TP host name {h:?}: 1-64 printable characters"));
        }
    }
    for s in l.secret.iter().chain(l.secrets.values()) {
        if s.is_empty() || s.len() > 256 {
            return Err("L2TP secrets must be 1-256 bytes".into());
        }
    }
    for (name, number) in &l.directory {
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !name_ok {
            return Err(format!(
                "directory name {name:?}: 1-64 characters of A-Z, a-z, 0-9, '_', '-', '.'"
            ));
        }
        // The number goes to the modem after ATDT: nothing that could end
        // the command line or start another.
        let number_ok = !number.is_empty()
            && number.len() <= 64
            && number
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+*#,-()!@.:_ ".contains(&b));
        if !number_ok {
            return Err(format!(
                "directory number {number:?} for {name}: 1-64 dial characters (digits, letters, + * # , - ( ) ! @ . : _ space)"
            ));
        }
    }
    Ok(())
}

/// The store's decision for a record holding `rec.devices.serial`: no other
/// partition of the same host holds one of them. Runs inside the write's
/// transaction, so two creates cannot both take a line.
pub fn check_claim(others: &[PartitionRecord], rec: &PartitionRecord) -> Result<(), String> {
    for d in &rec.devices.serial {
        if let Some(o) = others
            .iter()
            .find(|o| o.host == rec.host && o.name != rec.name && o.devices.serial.contains(d))
        {
            return Err(format!("{HELD}{d} is held by partition {:?}", o.name));
        }
    }
    Ok(())
}

/// Whether a store refusal is a held line (409) rather than capacity.
pub fn is_held(reason: &str) -> bool {
    reason.starts_with(HELD)
}

/// The resource server's profile (`bulkhead l2tp server --profile`, its
/// TOML as docs/l2tp.md describes) for a partition at VLAN address `ip`:
/// it listens there only, and drives each serial line as a modem.
pub fn server_profile(
    partition: &str,
    ip: std::net::IpAddr,
    serial_count: usize,
    l: &L2tpServerRecord,
) -> String {
    #[derive(Serialize)]
    struct Device {
        name: String,
        tty: String,
    }
    #[derive(Serialize)]
    struct Profile<'a> {
        hostname: &'a str,
        listen: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        secret: Option<&'a str>,
        secrets: &'a BTreeMap<String, String>,
        directory: &'a BTreeMap<String, String>,
        device: Vec<Device>,
    }
    let p = Profile {
        hostname: l.hostname.as_deref().unwrap_or(partition),
        listen: vec![std::net::SocketAddr::new(ip, l.port.unwrap_or(L2TP_PORT)).to_string()],
        secret: l.secret.as_deref(),
        secrets: &l.secrets,
        directory: &l.directory,
        device: (0..serial_count)
            .map(|i| Device {
                name: format!("modem{i}"),
                tty: bulkhead_engine::serial::guest_tty(i),
            })
            .collect(),
    };
    toml::to_string(&p).expect("profile serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, host: &str, serial: &[&str]) -> PartitionRecord {
        let mut r: PartitionRecord = serde_json::from_value(serde_json::json!({
            "name": name, "host": host, "vcpus": 1, "memory_mib": 128, "cpu_percent": 10,
            "state": "defined", "created_at": 1, "state_since": 1,
        }))
        .unwrap();
        r.devices.serial = serial.iter().map(|s| s.to_string()).collect();
        r
    }

    #[test]
    fn a_line_is_held_by_one_partition_of_its_host() {
        let m = rec("m", "h1", &["/dev/pts/7"]);
        let other_host = rec("x", "h2", &["/dev/pts/7"]);
        let e =
            check_claim(std::slice::from_ref(&m), &rec("c", "h1", &["/dev/pts/7"])).unwrap_err();
        assert_eq!(e, "serial device /dev/pts/7 is held by partition \"m\"");
        assert!(is_held(&e));
        // Another host's /dev/pts/7 is another line.
        check_claim(&[other_host], &rec("c", "h1", &["/dev/pts/7"])).unwrap();
        check_claim(std::slice::from_ref(&m), &rec("c", "h1", &["/dev/pts/8"])).unwrap();
        // A record re-admitted (an update) does not hold against itself.
        check_claim(std::slice::from_ref(&m), &m).unwrap();
    }

    #[test]
    fn l2tp_needs_a_line_and_the_vlan_and_a_clean_directory() {
        let l = L2tpServerRecord {
            directory: [("PRIMARY_ISP".to_string(), "5551234".to_string())].into(),
            ..Default::default()
        };
        let d = PartitionDevices {
            serial: vec![],
            l2tp_server: Some(Box::new(l.clone())),
        };
        assert!(check(&d, true)
            .unwrap_err()
            .contains("needs a serial device"));
        let mut bad = l.clone();
        bad.directory.insert("EVIL".into(), "123\rATH0".into());
        assert!(check_l2tp(&bad).unwrap_err().contains("dial characters"));
        check_l2tp(&l).unwrap();
        let d = PartitionDevices {
            serial: vec!["relative/tty".into()],
            l2tp_server: None,
        };
        assert!(check(&d, true).unwrap_err().contains("absolute"));
    }

    #[test]
    fn the_profile_listens_on_the_vlan_address_only() {
        let l = L2tpServerRecord {
            secret: Some("s3cret".into()),
            directory: [("PRIMARY_ISP".to_string(), "5551234".to_string())].into(),
            ..Default::default()
        };
        let text = server_profile("m", "10.0.0.5".parse().unwrap(), 1, &l);
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(v["listen"].as_array().unwrap().len(), 1);
        assert_eq!(v["listen"][0].as_str(), Some("10.0.0.5:1701"));
        assert_eq!(v["hostname"].as_str(), Some("m"));
        assert_eq!(v["device"][0]["tty"].as_str(), Some("/dev/ttyS1"));
        assert_eq!(v["directory"]["PRIMARY_ISP"].as_str(), Some("5551234"));
        // What the server itself reads.
        let p: bulkhead_l2tp_share::profile::ServerProfile = toml::from_str(&text).unwrap();
        p.validate().unwrap();
        assert_eq!(p.secret_for("anyone"), Some("s3cret"));
    }
}
