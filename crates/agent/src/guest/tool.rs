//! `bulkhead-guest`: the in-guest command (the agent binary run under that
//! name). `region list|map|unmap|read|write|hold` work on the ivshmem devices
//! directly; the grant commands go through the agent to the manager
//! ([`super::grants`]), and `read`/`write` of a region or a grant map the
//! path the manager reports and move the bytes here, in the guest.
//!
//! Errors are one line on stderr (with `--json`, `{"error":{"kind","message"}}`)
//! and a non-zero exit: 1 refused, 2 usage, 3 manager unreachable or no answer.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use bulkhead_grant::request::{self, GuestRequest, Target, MAX_LIFETIME_MS};
use bulkhead_grant::{Cookie, GrantId, PartitionId, RegionSize, ResourceKind, ResourceName};

use super::grants::{self, ToolError};
use super::region::{self, Mapping};

const USAGE: &str = "usage: bulkhead-guest session
       bulkhead-guest region create NAME --size SIZE [--json]
       bulkhead-guest grant NAME --to PARTITION [--read-only] [--expires D] [--disk] [--json]
       bulkhead-guest grant --regrant GRANT_ID --to PARTITION [--read-only] [--expires D] [--json]
       bulkhead-guest accept COOKIE [--json]
       bulkhead-guest release GRANT_ID [--json]
       bulkhead-guest revoke GRANT_ID [--json]
       bulkhead-guest list [--json]
       bulkhead-guest read NAME_OR_GRANT_ID --offset O --len N [--json]
       bulkhead-guest write NAME_OR_GRANT_ID --offset O --data HEX [--json]
       bulkhead-guest copy-bench NAME_OR_GRANT_ID --size SIZE [--json]
       bulkhead-guest region list [--json]
       bulkhead-guest region map ADDR [--wait MS] [--json]
       bulkhead-guest region unmap ADDR [--json]
       bulkhead-guest region read ADDR --offset O --len N [--json]
       bulkhead-guest region write ADDR --offset O --data HEX [--json]
       bulkhead-guest region hold ADDR
SIZE: bytes, or with K, M or G (16M); D: with s, m, h or d (10m).
ADDR is the PCI address of a region device or of its port (region list).
`session` prints SESSION_ID PROGRAM ALTERNATE_ID of the pool session open here.
Exit: 0 done, 1 refused (session: none open), 2 usage, 3 manager unreachable or no answer.";

/// Longest `read`: its hex goes through exec output.
pub const MAX_READ: usize = 1 << 20;

/// Operations on the ivshmem devices themselves, by PCI address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
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

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Local(Local),
    /// Relayed to the manager; the reply is printed.
    Call(GuestRequest),
    /// Through the mapping of a region one owns or a grant one holds.
    Read {
        target: Target,
        offset: u64,
        len: usize,
    },
    Write {
        target: Target,
        offset: u64,
        data: Vec<u8>,
    },
    /// Copies `len` bytes out of the target's mapping, and the same within
    /// the guest's own RAM, and prints both times (the grants benchmark).
    CopyBench {
        target: Target,
        len: usize,
    },
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

/// Digits with an optional K, M or G (powers of 1024): `16M`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a size (digits, optionally K, M or G: 16M)");
    let (digits, shift) = match s.as_bytes().last() {
        Some(b'K') => (&s[..s.len() - 1], 10),
        Some(b'M') => (&s[..s.len() - 1], 20),
        Some(b'G') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// Digits with s, m, h or d: `10m`, in milliseconds; 1 s to 30 days.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a duration (digits then s, m, h or d: 10m)");
    let unit_ms: u64 = match s.as_bytes().last() {
        Some(b's') => 1000,
        Some(b'm') => 60_000,
        Some(b'h') => 3_600_000,
        Some(b'd') => 86_400_000,
        _ => return Err(bad()),
    };
    let digits = &s[..s.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let ms = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
        .ok_or_else(bad)?;
    if ms == 0 || ms > MAX_LIFETIME_MS {
        return Err(format!("{s:?}: a lifetime is from 1s to 30d"));
    }
    Ok(ms)
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

/// Options as given; each command says which it takes.
#[derive(Default)]
struct Opts {
    given: BTreeSet<&'static str>,
    offset: Option<u64>,
    len: Option<u64>,
    wait: Option<u64>,
    data: Option<Vec<u8>>,
    size: Option<u64>,
    to: Option<PartitionId>,
    expires_ms: Option<u64>,
    regrant: Option<GrantId>,
    read_only: bool,
    disk: bool,
}

impl Opts {
    /// Refuses options the command does not take.
    fn only(&self, allowed: &[&str]) -> Result<(), String> {
        match self.given.iter().find(|g| !allowed.contains(g)) {
            Some(g) => Err(format!("{g} does not apply to this command")),
            None => Ok(()),
        }
    }

    fn need<T: Clone>(v: &Option<T>, flag: &str) -> Result<T, String> {
        v.clone().ok_or_else(|| format!("{flag} is required"))
    }
}

const FLAGS: &[&str] = &[
    "--json",
    "--offset",
    "--len",
    "--wait",
    "--data",
    "--size",
    "--to",
    "--expires",
    "--regrant",
    "--read-only",
    "--disk",
];

fn parse_opts(args: &[String]) -> Result<(Opts, Vec<&str>, bool), String> {
    let mut o = Opts::default();
    let mut json = false;
    let mut pos = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if !a.starts_with("--") {
            pos.push(a.as_str());
            continue;
        }
        let flag = FLAGS
            .iter()
            .find(|f| **f == a)
            .ok_or_else(|| format!("unknown option {a}"))?;
        if !o.given.insert(flag) {
            return Err(format!("{flag} given twice"));
        }
        let mut val = || {
            it.next()
                .map(String::as_str)
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match *flag {
            "--json" => {
                json = true;
                o.given.remove("--json");
            }
            "--offset" => o.offset = Some(number(val()?)?),
            "--len" => o.len = Some(number(val()?)?),
            "--wait" => o.wait = Some(number(val()?)?),
            "--data" => o.data = Some(hex_decode(val()?)?),
            "--size" => o.size = Some(parse_size(val()?)?),
            "--to" => o.to = Some(val()?.parse().map_err(|e| format!("--to: {e}"))?),
            "--expires" => o.expires_ms = Some(parse_duration(val()?)?),
            "--regrant" => o.regrant = Some(val()?.parse().map_err(|e| format!("--regrant: {e}"))?),
            "--read-only" => o.read_only = true,
            _ => o.disk = true,
        }
    }
    Ok((o, pos, json))
}

fn read_len(len: Option<u64>) -> Result<usize, String> {
    let len = Opts::need(&len, "--len")?;
    if len == 0 || len > MAX_READ as u64 {
        return Err(format!("--len must be 1..={MAX_READ}"));
    }
    Ok(len as usize)
}

fn write_data(data: &Option<Vec<u8>>) -> Result<Vec<u8>, String> {
    data.clone()
        .filter(|d| !d.is_empty())
        .ok_or_else(|| "--data is required".into())
}

fn grant_id(s: &str) -> Result<GrantId, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Invocation, String> {
    let (o, pos, json) = parse_opts(args)?;
    let cmd = match pos.as_slice() {
        ["region", "create", name] => {
            o.only(&["--size"])?;
            let size = Opts::need(&o.size, "--size")?;
            Command::Call(GuestRequest::RegionCreate {
                name: name.parse().map_err(|e| format!("{e}"))?,
                size: RegionSize::try_from(size).map_err(|e| format!("--size: {e}"))?,
            })
        }
        ["region", rest @ ..] => Command::Local(parse_local(&o, rest)?),
        ["grant", rest @ ..] => {
            o.only(&["--to", "--read-only", "--expires", "--disk", "--regrant"])?;
            let to = Opts::need(&o.to, "--to")?;
            match (rest, o.regrant) {
                ([name], None) => Command::Call(GuestRequest::Grant {
                    resource: name.parse::<ResourceName>().map_err(|e| format!("{e}"))?,
                    kind: if o.disk {
                        ResourceKind::Disk
                    } else {
                        ResourceKind::Region
                    },
                    to,
                    // A disk is only ever granted read-only.
                    read_only: o.read_only || o.disk,
                    expires_ms: o.expires_ms,
                }),
                ([], Some(grant)) if !o.disk => Command::Call(GuestRequest::Regrant {
                    grant,
                    to,
                    read_only: o.read_only,
                    expires_ms: o.expires_ms,
                }),
                ([], Some(_)) => return Err("--disk does not apply to --regrant".into()),
                ([], None) => return Err("grant needs NAME or --regrant GRANT_ID".into()),
                (_, Some(_)) => return Err("grant takes NAME or --regrant, not both".into()),
                _ => return Err("grant takes one NAME".into()),
            }
        }
        ["accept", cookie] => {
            o.only(&[])?;
            Command::Call(GuestRequest::Accept {
                cookie: Cookie::parse(cookie).map_err(|e| format!("{e}"))?,
            })
        }
        ["release", id] => {
            o.only(&[])?;
            Command::Call(GuestRequest::Release {
                grant: grant_id(id)?,
            })
        }
        ["revoke", id] => {
            o.only(&[])?;
            Command::Call(GuestRequest::Revoke {
                grant: grant_id(id)?,
            })
        }
        ["list"] => {
            o.only(&[])?;
            Command::Call(GuestRequest::List {})
        }
        ["read", target] => {
            o.only(&["--offset", "--len"])?;
            Command::Read {
                target: Target::try_from(target.to_string()).map_err(|e| format!("{e}"))?,
                offset: Opts::need(&o.offset, "--offset")?,
                len: read_len(o.len)?,
            }
        }
        ["write", target] => {
            o.only(&["--offset", "--data"])?;
            Command::Write {
                target: Target::try_from(target.to_string()).map_err(|e| format!("{e}"))?,
                offset: Opts::need(&o.offset, "--offset")?,
                data: write_data(&o.data)?,
            }
        }
        ["copy-bench", target] => {
            o.only(&["--size"])?;
            let len = Opts::need(&o.size, "--size")?;
            Command::CopyBench {
                target: Target::try_from(target.to_string()).map_err(|e| format!("{e}"))?,
                len: usize::try_from(len).map_err(|_| "--size is too large".to_string())?,
            }
        }
        [] => return Err("missing command".into()),
        [c, ..] => return Err(format!("unknown command or wrong arguments: {c}")),
    };
    // The manager checks again; refusing here gives a usage error, not a round trip.
    if let Command::Call(req) = &cmd {
        let bytes = serde_json::to_vec(req).map_err(|e| e.to_string())?;
        request::parse_request(&bytes).map_err(|e| e.to_string())?;
    }
    Ok(Invocation { cmd, json })
}

fn parse_local(o: &Opts, rest: &[&str]) -> Result<Local, String> {
    let name = |n: &str| n.to_string();
    Ok(match rest {
        ["list"] => {
            o.only(&[])?;
            Local::List
        }
        ["map", n] => {
            o.only(&["--wait"])?;
            Local::Map {
                name: name(n),
                wait_ms: o.wait.unwrap_or(0),
            }
        }
        ["unmap", n] => {
            o.only(&[])?;
            Local::Unmap(name(n))
        }
        ["hold", n] => {
            o.only(&[])?;
            Local::Hold(name(n))
        }
        ["read", n] => {
            o.only(&["--offset", "--len"])?;
            Local::Read {
                name: name(n),
                offset: Opts::need(&o.offset, "--offset")?,
                len: read_len(o.len)?,
            }
        }
        ["write", n] => {
            o.only(&["--offset", "--data"])?;
            Local::Write {
                name: name(n),
                offset: Opts::need(&o.offset, "--offset")?,
                data: write_data(&o.data)?,
            }
        }
        _ => return Err("unknown region command or missing ADDR".into()),
    })
}

fn run_local(cmd: &Local, json: bool) -> Result<String, ToolError> {
    let dev = Path::new(region::PCI_DEVICES);
    let js = |v: serde_json::Value| v.to_string();
    Ok(match cmd {
        Local::List => {
            let all = region::list(dev)?;
            if json {
                js(serde_json::json!(all))
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
        Local::Map { name, wait_ms } => {
            let r = region::map(dev, name, Duration::from_millis(*wait_ms))?;
            if json {
                js(serde_json::json!(r))
            } else {
                r.path.display().to_string()
            }
        }
        Local::Unmap(n) => {
            let u = region::unmap(dev, n)?;
            if json {
                js(serde_json::json!(u))
            } else {
                let pids: Vec<String> = u.holders.iter().map(|p| p.to_string()).collect();
                format!("{} unmapped; holders: {}", u.addr, pids.join(" "))
            }
        }
        Local::Read { name, offset, len } => {
            let r = region::find(dev, name)?;
            let bytes = Mapping::open(&r)?.read(&r.addr, *offset, *len)?;
            grants::read_output(&r.addr, *offset, &bytes, json)
        }
        Local::Write { name, offset, data } => {
            let r = region::find(dev, name)?;
            Mapping::open(&r)?.write(&r.addr, *offset, data)?;
            grants::write_output(&r.addr, *offset, data.len(), json)
        }
        Local::Hold(n) => {
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

fn run(inv: &Invocation) -> Result<String, ToolError> {
    let socket = Path::new(super::relay::SOCKET);
    match &inv.cmd {
        Command::Local(l) => run_local(l, inv.json),
        Command::Call(req) => {
            let reply = grants::call(socket, req)?;
            grants::format_reply(req, &reply, inv.json, &grants::me())
        }
        Command::Read {
            target,
            offset,
            len,
        } => {
            let path = grants::target_path(socket, target)?;
            let bytes = Mapping::open_path(&path)?.read(&target.to_string(), *offset, *len)?;
            Ok(grants::read_output(
                &target.to_string(),
                *offset,
                &bytes,
                inv.json,
            ))
        }
        Command::Write {
            target,
            offset,
            data,
        } => {
            let path = grants::target_path(socket, target)?;
            Mapping::open_path(&path)?.write(&target.to_string(), *offset, data)?;
            Ok(grants::write_output(
                &target.to_string(),
                *offset,
                data.len(),
                inv.json,
            ))
        }
        Command::CopyBench { target, len } => {
            let path = grants::target_path(socket, target)?;
            let m = Mapping::open_path(&path)?;
            let t = region::copy_bench(&m, &target.to_string(), *len)?;
            Ok(if inv.json {
                serde_json::json!({"bytes": len, "mapped_ns": t.mapped_ns, "ram_ns": t.ram_ns})
                    .to_string()
            } else {
                format!("bytes={len} mapped_ns={} ram_ns={}", t.mapped_ns, t.ram_ns)
            })
        }
    }
}

/// Entry point of `bulkhead-guest`; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    if matches!(args.first().map(String::as_str), Some("--help" | "help")) {
        println!("{USAGE}");
        return 0;
    }
    if args == ["session"] {
        return super::session::main(Path::new(super::relay::SOCKET));
    }
    let json = args.iter().any(|a| a == "--json");
    let result = parse(args)
        .map_err(|m| ToolError::usage(format!("{m} (bulkhead-guest --help)")))
        .and_then(|inv| run(&inv));
    match result {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            0
        }
        Err(e) => {
            eprintln!("{}", e.render(json));
            e.exit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_grant::Access;

    fn p(s: &str) -> Result<Invocation, String> {
        parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    fn call(s: &str) -> GuestRequest {
        match p(s).unwrap().cmd {
            Command::Call(r) => r,
            other => panic!("{s}: {other:?}"),
        }
    }

    const GID: &str = "gr-00000000000000aa";

    #[test]
    fn parses_the_region_commands() {
        assert_eq!(
            p("region list --json").unwrap().cmd,
            Command::Local(Local::List)
        );
        assert!(p("region list --json").unwrap().json);
        assert_eq!(
            p("region read 0000:00:10.0 --offset 0x10 --len 4")
                .unwrap()
                .cmd,
            Command::Local(Local::Read {
                name: "0000:00:10.0".into(),
                offset: 16,
                len: 4
            })
        );
        assert_eq!(
            p("region write X --data 0xa0ff --offset 8").unwrap().cmd,
            Command::Local(Local::Write {
                name: "X".into(),
                offset: 8,
                data: vec![0xa0, 0xff]
            })
        );
        assert_eq!(
            p("region unmap X").unwrap().cmd,
            Command::Local(Local::Unmap("X".into()))
        );
        assert_eq!(
            p("region map X --wait 500").unwrap().cmd,
            Command::Local(Local::Map {
                name: "X".into(),
                wait_ms: 500
            })
        );
        assert_eq!(
            call("region create foo --size 16M"),
            GuestRequest::RegionCreate {
                name: "foo".parse().unwrap(),
                size: RegionSize::try_from(16 << 20).unwrap()
            }
        );
    }

    #[test]
    fn parses_the_grant_commands() {
        assert_eq!(
            call("grant foo --to b"),
            GuestRequest::Grant {
                resource: "foo".parse().unwrap(),
                kind: ResourceKind::Region,
                to: "b".parse().unwrap(),
                read_only: false,
                expires_ms: None
            }
        );
        assert_eq!(
            call("grant foo --to b --read-only --expires 10m --json"),
            GuestRequest::Grant {
                resource: "foo".parse().unwrap(),
                kind: ResourceKind::Region,
                to: "b".parse().unwrap(),
                read_only: true,
                expires_ms: Some(600_000)
            }
        );
        // A disk is granted read-only without saying so.
        assert!(matches!(
            call("grant vdb --disk --to c"),
            GuestRequest::Grant {
                kind: ResourceKind::Disk,
                read_only: true,
                ..
            }
        ));
        assert_eq!(
            call(&format!(
                "grant --regrant {GID} --to c --read-only --expires 2h"
            )),
            GuestRequest::Regrant {
                grant: GID.parse().unwrap(),
                to: "c".parse().unwrap(),
                read_only: true,
                expires_ms: Some(7_200_000)
            }
        );
        let cookie = format!("bhc1_{}{}", "00000000000000aa", "ab".repeat(32));
        assert_eq!(
            call(&format!("accept {cookie}")),
            GuestRequest::Accept {
                cookie: Cookie::parse(&cookie).unwrap()
            }
        );
        assert_eq!(
            call(&format!("release {GID}")),
            GuestRequest::Release {
                grant: GID.parse().unwrap()
            }
        );
        assert_eq!(
            call(&format!("revoke {GID} --json")),
            GuestRequest::Revoke {
                grant: GID.parse().unwrap()
            }
        );
        assert_eq!(call("list"), GuestRequest::List {});
        assert_eq!(
            p(&format!("read {GID} --offset 0 --len 8")).unwrap().cmd,
            Command::Read {
                target: Target::Grant(GID.parse().unwrap()),
                offset: 0,
                len: 8
            }
        );
        assert_eq!(
            p("write foo --offset 4096 --data 00ff").unwrap().cmd,
            Command::Write {
                target: Target::Region("foo".parse().unwrap()),
                offset: 4096,
                data: vec![0, 0xff]
            }
        );
        assert_eq!(
            p(&format!("copy-bench {GID} --size 64M")).unwrap().cmd,
            Command::CopyBench {
                target: Target::Grant(GID.parse().unwrap()),
                len: 64 << 20
            }
        );
        assert!(p("copy-bench foo").is_err(), "--size is required");
        assert!(p("copy-bench foo --size 1M --offset 0").is_err());
        assert_eq!(GuestRequest::access(true), Access::ReadOnly);
    }

    #[test]
    fn sizes_and_durations_are_strict() {
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4096K"), Ok(4 << 20));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        for bad in [
            "",
            "M",
            "16m",
            "16MB",
            "16 M",
            "-1M",
            "1.5M",
            "0x10M",
            "99999999999999999999G",
            "18014398509481984G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_duration("10m"), Ok(600_000));
        assert_eq!(parse_duration("45s"), Ok(45_000));
        assert_eq!(parse_duration("30d"), Ok(MAX_LIFETIME_MS));
        for bad in [
            "",
            "10",
            "m",
            "0s",
            "31d",
            "10M",
            "1h30m",
            "-5s",
            "5 s",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
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
            "region list --to b",
            "region create foo",
            "region create foo --size 3M",
            "region create foo --size 2G",
            "region create foo --size 16MB",
            "region create gr-x --size 16M",
            "region create Foo --size 16M",
            "grant foo",
            "grant foo --to",
            "grant foo --to B",
            "grant --to b",
            "grant foo bar --to b",
            "grant foo --to b --expires 10",
            "grant foo --to b --expires 0s",
            "grant foo --to b --expires 40d",
            "grant foo --to b --to c",
            "grant --regrant gr-1 --to b",
            "grant foo --regrant gr-00000000000000aa --to b",
            "grant --regrant gr-00000000000000aa --to b --disk",
            "grant foo --to b --size 16M",
            "accept",
            "accept bhc1_short",
            "release",
            "release foo",
            "revoke gr-00000000000000AA",
            "list extra",
            "list --read-only",
            "read foo --offset 0",
            "read foo --len 4",
            "read Foo --offset 0 --len 4",
            "write foo --offset 0",
            "write gr-bad --offset 0 --data 00",
            "fly",
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
