//! `bulkhead-guest`: the in-guest command (the agent binary run under that
//! name). For now it covers shared-memory regions for shell use; the grant
//! commands of issue 11 join it later.
//!
//! Errors are one line on stderr and a non-zero exit (2 for usage).

use std::path::Path;
use std::time::Duration;

use super::region::{self, Mapping, RegionError};

const USAGE: &str = "usage: bulkhead-guest region list [--json]
       bulkhead-guest region map NAME [--wait MS] [--json]
       bulkhead-guest region unmap NAME [--json]
       bulkhead-guest region read NAME --offset O --len N [--json]
       bulkhead-guest region write NAME --offset O --data HEX [--json]
       bulkhead-guest region hold NAME
NAME is the PCI address of the region's port or of its device (region list).";

/// Longest `read`: its hex goes through exec output.
pub const MAX_READ: usize = 1 << 20;

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    List,
    Map {
        name: String,
        wait_ms: u64,
    },
    Unmap(String),
    Read {
        name: String,
        offset: u64,
        len: usize,
    },
    Write {
        name: String,
        offset: u64,
        data: Vec<u8>,
    },
    /// Maps the region and keeps it mapped until killed (to test what the
    /// host's unplug does to a live mapping).
    Hold(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub cmd: Command,
    pub json: bool,
}

fn number(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("{s:?} is not a number"))
}

pub fn hex_decode(s: &str) -> Result<Vec<u8>, String> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if !s.len().is_multiple_of(2) {
        return Err("hex data has an odd number of digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| format!("{s:?} is not hex"))
        })
        .collect()
}

pub fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Invocation, String> {
    let mut json = false;
    let mut pos = Vec::new();
    let mut offset = None;
    let mut len = None;
    let mut data = None;
    let mut wait = 0;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match a.as_str() {
            "--json" => json = true,
            "--offset" => offset = Some(number(&val("--offset")?)?),
            "--len" => len = Some(number(&val("--len")?)?),
            "--wait" => wait = number(&val("--wait")?)?,
            "--data" => data = Some(hex_decode(&val("--data")?)?),
            f if f.starts_with("--") => return Err(format!("unknown option {f}")),
            _ => pos.push(a.as_str()),
        }
    }
    let name = |i: usize| -> Result<String, String> {
        pos.get(i)
            .map(|s| s.to_string())
            .ok_or_else(|| "missing NAME".to_string())
    };
    let need = |v: Option<u64>, f: &str| v.ok_or_else(|| format!("{f} is required"));
    let cmd = match pos.as_slice() {
        ["region", "list"] => Command::List,
        ["region", "map", _] => Command::Map {
            name: name(2)?,
            wait_ms: wait,
        },
        ["region", "unmap", _] => Command::Unmap(name(2)?),
        ["region", "hold", _] => Command::Hold(name(2)?),
        ["region", "read", _] => {
            let len = need(len, "--len")?;
            if len == 0 || len > MAX_READ as u64 {
                return Err(format!("--len must be 1..={MAX_READ}"));
            }
            Command::Read {
                name: name(2)?,
                offset: need(offset, "--offset")?,
                len: len as usize,
            }
        }
        ["region", "write", _] => Command::Write {
            name: name(2)?,
            offset: need(offset, "--offset")?,
            data: data.filter(|d| !d.is_empty()).ok_or("--data is required")?,
        },
        _ => return Err("unknown command".into()),
    };
    Ok(Invocation { cmd, json })
}

fn run(inv: &Invocation) -> Result<String, RegionError> {
    let dev = Path::new(region::PCI_DEVICES);
    let json = |v: serde_json::Value| v.to_string();
    Ok(match &inv.cmd {
        Command::List => {
            let all = region::list(dev)?;
            if inv.json {
                json(serde_json::json!(all))
            } else {
                all.iter()
                    .map(|r| {
                        format!(
                            "{} {} {} {} {}",
                            r.addr,
                            r.port.as_deref().unwrap_or("-"),
                            r.size,
                            if r.enabled { "mapped" } else { "unmapped" },
                            r.path.display()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
        Command::Map { name, wait_ms } => {
            let r = region::map(dev, name, Duration::from_millis(*wait_ms))?;
            if inv.json {
                json(serde_json::json!(r))
            } else {
                r.path.display().to_string()
            }
        }
        Command::Unmap(n) => {
            let u = region::unmap(dev, n)?;
            if inv.json {
                json(serde_json::json!(u))
            } else {
                let pids: Vec<String> = u.holders.iter().map(|p| p.to_string()).collect();
                format!("{} unmapped; holders: {}", u.addr, pids.join(" "))
            }
        }
        Command::Read { name, offset, len } => {
            let r = region::find(dev, name)?;
            let bytes = Mapping::open(&r)?.read(&r.addr, *offset, *len)?;
            if inv.json {
                json(
                    serde_json::json!({"addr": r.addr, "offset": offset, "data": hex_encode(&bytes)}),
                )
            } else {
                hex_encode(&bytes)
            }
        }
        Command::Write { name, offset, data } => {
            let r = region::find(dev, name)?;
            Mapping::open(&r)?.write(&r.addr, *offset, data)?;
            if inv.json {
                json(serde_json::json!({"addr": r.addr, "offset": offset, "len": data.len()}))
            } else {
                String::new()
            }
        }
        Command::Hold(n) => {
            let r = region::find(dev, n)?;
            let _m = Mapping::open(&r)?;
            println!("holding {} in pid {}", r.addr, std::process::id());
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            loop {
                // SAFETY: pause has no arguments; it returns on a signal.
                unsafe { libc::pause() };
            }
        }
    })
}

/// Entry point of `bulkhead-guest`; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let inv = match parse(args) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("bulkhead-guest: {e}\n{USAGE}");
            return 2;
        }
    };
    match run(&inv) {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            0
        }
        Err(e) => {
            eprintln!("bulkhead-guest: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Invocation, String> {
        parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn parses_each_command() {
        assert_eq!(p("region list --json").unwrap().cmd, Command::List);
        assert!(p("region list --json").unwrap().json);
        assert_eq!(
            p("region read 0000:00:10.0 --offset 0x10 --len 4")
                .unwrap()
                .cmd,
            Command::Read {
                name: "0000:00:10.0".into(),
                offset: 16,
                len: 4
            }
        );
        assert_eq!(
            p("region write X --data 0xa0ff --offset 8").unwrap().cmd,
            Command::Write {
                name: "X".into(),
                offset: 8,
                data: vec![0xa0, 0xff]
            }
        );
        assert_eq!(p("region unmap X").unwrap().cmd, Command::Unmap("X".into()));
        assert_eq!(
            p("region map X --wait 500").unwrap().cmd,
            Command::Map {
                name: "X".into(),
                wait_ms: 500
            }
        );
    }

    #[test]
    fn bad_lines_are_refused() {
        for bad in [
            "",
            "region",
            "region read X --offset 0",
            "region read X --offset 0 --len 0",
            "region read X --offset 0 --len 99999999",
            "region write X --offset 0 --data abc",
            "region write X --offset 0 --data zz",
            "region write X --offset 0",
            "region map",
            "region map X --bogus",
            "region read X --offset -1 --len 1",
            "region list extra",
        ] {
            assert!(p(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hex_round_trips() {
        let b = vec![0, 1, 0x7f, 0xff];
        assert_eq!(hex_decode(&hex_encode(&b)).unwrap(), b);
    }
}
