//! `bulkhead-guest`'s grant commands: the request goes to the agent's socket
//! ([`super::relay`]), which relays it to the manager; the typed reply is
//! printed as one line (or the `GuestReply` object with `--json`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_grant::reply::{GrantView, GuestReply};
use bulkhead_grant::request::{GuestRequest, Target};
use bulkhead_grant::{PartitionId, ResourceKind};

use super::region::RegionError;
use super::relay::CALL_TIMEOUT;
use crate::proto::{call_kind, CallAnswer};

/// Largest answer read from the agent (a long `list`).
const MAX_ANSWER: u64 = 4 << 20;

/// A failed command: one line on stderr and an exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolError {
    pub kind: String,
    pub message: String,
    pub exit: i32,
}

impl ToolError {
    pub fn new(kind: &str, message: impl Into<String>) -> ToolError {
        ToolError {
            kind: kind.into(),
            message: message.into(),
            exit: exit_code(kind),
        }
    }

    pub fn usage(message: String) -> ToolError {
        ToolError {
            kind: "usage".into(),
            message,
            exit: 2,
        }
    }

    /// The line for stderr: `bulkhead-guest: KIND: MESSAGE`, or the JSON
    /// `{"error":{"kind","message"}}`.
    pub fn render(&self, json: bool) -> String {
        // One line whatever the message holds.
        let message = self.message.replace('\n', " ");
        if json {
            serde_json::json!({"error": {"kind": self.kind, "message": message}}).to_string()
        } else {
            format!("bulkhead-guest: {}: {message}", self.kind)
        }
    }
}

/// 3 when the manager could not be reached or did not answer, else 1.
pub fn exit_code(kind: &str) -> i32 {
    match kind {
        call_kind::UNAVAILABLE | call_kind::TIMEOUT | call_kind::BUSY => 3,
        "usage" => 2,
        _ => 1,
    }
}

impl From<RegionError> for ToolError {
    fn from(e: RegionError) -> ToolError {
        ToolError::new(e.kind(), e.to_string())
    }
}

/// Sends one request through the agent at `socket` and returns the reply.
pub fn call(socket: &Path, req: &GuestRequest) -> Result<GuestReply, ToolError> {
    let unreachable = |e: std::io::Error| {
        ToolError::new(
            call_kind::UNAVAILABLE,
            format!("cannot reach the agent at {}: {e}", socket.display()),
        )
    };
    let mut s = UnixStream::connect(socket).map_err(unreachable)?;
    // The agent times the call out itself; this only guards against an agent
    // that is wedged.
    s.set_read_timeout(Some(CALL_TIMEOUT + Duration::from_secs(10)))
        .map_err(unreachable)?;
    let mut line =
        serde_json::to_vec(req).map_err(|e| ToolError::new("internal", e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line).map_err(unreachable)?;
    let mut out = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut out).map_err(|e| {
        let kind = match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => call_kind::TIMEOUT,
            _ => call_kind::UNAVAILABLE,
        };
        ToolError::new(kind, format!("no answer from the agent: {e}"))
    })?;
    decode_answer(&out)
}

/// The agent's answer line: the manager's reply, or the error to report.
pub fn decode_answer(line: &[u8]) -> Result<GuestReply, ToolError> {
    let bad = |what: String| ToolError::new(call_kind::INTERNAL, what);
    let answer: CallAnswer = serde_json::from_slice(line.trim_ascii_end())
        .map_err(|e| bad(format!("unreadable answer from the agent: {e}")))?;
    match answer.into_result() {
        Ok(v) => serde_json::from_value(v)
            .map_err(|e| bad(format!("unexpected reply from the manager: {e}"))),
        Err(e) => Err(ToolError::new(&e.kind, e.message)),
    }
}

/// Who this partition is, for the ROLE column of `list`: the owner named in
/// the manager's reply when it lists something we own, else the partition
/// name the host put on the kernel command line.
pub fn me() -> Option<PartitionId> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    crate::cmdline::parse(&cmdline)
        .0
        .hostname
        .and_then(|h| h.parse().ok())
}

fn unexpected(reply: &GuestReply) -> ToolError {
    ToolError::new(
        call_kind::INTERNAL,
        format!(
            "the manager sent a reply of the wrong kind: {}",
            serde_json::to_string(reply).unwrap_or_default()
        ),
    )
}

/// The output of a relayed command: one line (a table for `list`), or the
/// reply object with `--json`.
pub fn format_reply(
    req: &GuestRequest,
    reply: &GuestReply,
    json: bool,
    me: &Option<PartitionId>,
) -> Result<String, ToolError> {
    let fits = matches!(
        (req, reply),
        (GuestRequest::RegionCreate { .. }, GuestReply::Region { .. })
            | (
                GuestRequest::Grant { .. } | GuestRequest::Regrant { .. },
                GuestReply::Issued { .. }
            )
            | (GuestRequest::Accept { .. }, GuestReply::Mapped { .. })
            | (
                GuestRequest::Release { .. } | GuestRequest::Revoke { .. },
                GuestReply::Ended { .. }
            )
            | (GuestRequest::List {}, GuestReply::List { .. })
    );
    if !fits {
        return Err(unexpected(reply));
    }
    if json {
        return serde_json::to_string(reply).map_err(|e| ToolError::new("internal", e.to_string()));
    }
    Ok(match reply {
        GuestReply::Region { path, .. } => path.clone(),
        GuestReply::Issued { grant, cookie, .. } => format!("{grant} {cookie}"),
        GuestReply::Mapped { grant, path, .. } => format!("{grant} {path}"),
        GuestReply::Ended { ended, .. } => ended
            .iter()
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        GuestReply::List { owned, grants } => {
            let me = owned
                .first()
                .map(|o| o.resource.owner.clone())
                .or_else(|| me.clone());
            list_table(owned, grants, me.as_ref())
        }
    })
}

/// `list`: what we own, then the grants we gave or hold.
fn list_table(
    owned: &[bulkhead_grant::reply::OwnedView],
    grants: &[GrantView],
    me: Option<&PartitionId>,
) -> String {
    let mut rows = vec![vec!["RESOURCE".to_string(), "SIZE".into(), "PATH".into()]];
    for o in owned {
        rows.push(vec![
            o.resource.to_string(),
            o.size.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            o.path.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut out = table(&rows);
    let mut rows = vec![[
        "GRANT", "ROLE", "RESOURCE", "FROM", "TO", "ACCESS", "STATE", "PATH",
    ]
    .map(String::from)
    .to_vec()];
    for g in grants {
        let role = if Some(&g.grantee) == me {
            "holder"
        } else if Some(&g.granter) == me {
            "granter"
        } else {
            "upstream"
        };
        let state = serde_json::to_value(g.state)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        rows.push(vec![
            g.grant.to_string(),
            role.into(),
            g.resource.to_string(),
            g.granter.to_string(),
            g.grantee.to_string(),
            g.access.to_string(),
            state,
            g.path.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push('\n');
    out.push_str(&table(&rows));
    out
}

/// Left-aligned columns two spaces apart, no trailing blanks.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(c, v)| format!("{v:<w$}", w = width[c]))
                .collect();
            line.join("  ").trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where `target` is mapped in this guest, from the manager's `list`.
pub fn target_path(socket: &Path, target: &Target) -> Result<PathBuf, ToolError> {
    let reply = call(socket, &GuestRequest::List {})?;
    find_target(&reply, target)
}

pub fn find_target(reply: &GuestReply, target: &Target) -> Result<PathBuf, ToolError> {
    let GuestReply::List { owned, grants } = reply else {
        return Err(unexpected(reply));
    };
    let path = match target {
        Target::Region(name) => owned
            .iter()
            .find(|o| o.resource.kind == ResourceKind::Region && &o.resource.name == name)
            .map(|o| o.path.clone()),
        Target::Grant(id) => grants
            .iter()
            .find(|g| &g.grant == id)
            .map(|g| g.path.clone()),
    };
    match path {
        Some(Some(p)) => Ok(PathBuf::from(p)),
        Some(None) => Err(ToolError::new(
            "not_mapped",
            format!("{target} is not mapped in this partition"),
        )),
        None => Err(ToolError::new(
            "not_found",
            format!("{target} is neither a region this partition owns nor a grant it holds"),
        )),
    }
}

pub fn read_output(target: &str, offset: u64, bytes: &[u8], json: bool) -> String {
    let data = super::tool::hex_encode(bytes);
    if json {
        serde_json::json!({"target": target, "offset": offset, "data": data}).to_string()
    } else {
        data
    }
}

pub fn write_output(target: &str, offset: u64, len: usize, json: bool) -> String {
    if json {
        serde_json::json!({"target": target, "offset": offset, "len": len}).to_string()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_grant::reply::OwnedView;
    use bulkhead_grant::{Access, Cookie, GrantId, GrantState, ResourceId};

    fn gid(n: u8) -> GrantId {
        format!("gr-{:016x}", n).parse().unwrap()
    }

    fn rid(owner: &str, name: &str) -> ResourceId {
        ResourceId {
            kind: ResourceKind::Region,
            owner: owner.parse().unwrap(),
            name: name.parse().unwrap(),
        }
    }

    fn view(n: u8, from: &str, to: &str, path: Option<&str>) -> GrantView {
        GrantView {
            grant: gid(n),
            resource: rid("a", "foo"),
            granter: from.parse().unwrap(),
            grantee: to.parse().unwrap(),
            access: Access::ReadOnly,
            parent: None,
            depth: 1,
            state: GrantState::Accepted,
            expires_at: None,
            path: path.map(String::from),
        }
    }

    #[test]
    fn one_line_outputs() {
        let cookie = Cookie::parse(&format!("bhc1_{:016x}{}", 1, "cd".repeat(32))).unwrap();
        let f = |req: GuestRequest, reply: GuestReply| {
            format_reply(&req, &reply, false, &None).unwrap()
        };
        let issued = GuestReply::Issued {
            grant: gid(1),
            cookie: cookie.clone(),
            expires_at: None,
        };
        let grant = GuestRequest::List {};
        assert!(format_reply(&grant, &issued, false, &None).is_err());
        let regrant = GuestRequest::Regrant {
            grant: gid(1),
            to: "c".parse().unwrap(),
            read_only: false,
            expires_ms: None,
        };
        assert_eq!(
            f(regrant.clone(), issued.clone()),
            format!("gr-0000000000000001 {cookie}")
        );
        let mapped = GuestReply::Mapped {
            grant: gid(2),
            resource: rid("a", "foo"),
            access: Access::ReadOnly,
            path: "/sys/bus/pci/devices/0000:01:00.0/resource2".into(),
        };
        assert_eq!(
            f(GuestRequest::Accept { cookie }, mapped),
            "gr-0000000000000002 /sys/bus/pci/devices/0000:01:00.0/resource2"
        );
        let ended = GuestReply::Ended {
            grant: gid(3),
            ended: vec![gid(4), gid(3)],
        };
        assert_eq!(
            f(GuestRequest::Revoke { grant: gid(3) }, ended),
            "gr-0000000000000004 gr-0000000000000003"
        );
        // --json prints the reply object itself.
        let j = format_reply(&regrant, &issued, true, &None).unwrap();
        assert_eq!(serde_json::from_str::<GuestReply>(&j).unwrap(), issued);
    }

    #[test]
    fn list_is_a_table_with_roles() {
        let reply = GuestReply::List {
            owned: vec![OwnedView {
                resource: rid("b", "mine"),
                size: Some(1 << 20),
                path: Some("/sys/x/resource2".into()),
            }],
            grants: vec![
                view(1, "a", "b", Some("/sys/y/resource2")),
                view(2, "b", "c", None),
            ],
        };
        let out = format_reply(&GuestRequest::List {}, &reply, false, &None).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "RESOURCE       SIZE     PATH");
        assert_eq!(lines[1], "region:b/mine  1048576  /sys/x/resource2");
        assert!(lines[2].starts_with("GRANT  "), "{out}");
        let cols = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(
            cols(lines[3]),
            [
                "gr-0000000000000001",
                "holder",
                "region:a/foo",
                "a",
                "b",
                "read-only",
                "accepted",
                "/sys/y/resource2"
            ]
        );
        assert_eq!(cols(lines[4])[1], "granter");
        assert_eq!(cols(lines[4])[7], "-");
        // Nothing owned: who we are comes from the caller.
        let reply = GuestReply::List {
            owned: vec![],
            grants: vec![view(1, "a", "b", None)],
        };
        let me = Some("a".parse().unwrap());
        let out = format_reply(&GuestRequest::List {}, &reply, false, &me).unwrap();
        assert_eq!(cols(out.lines().nth(2).unwrap())[1], "granter");
    }

    #[test]
    fn targets_resolve_to_their_mapping() {
        let reply = GuestReply::List {
            owned: vec![
                OwnedView {
                    resource: rid("b", "mine"),
                    size: Some(1 << 20),
                    path: Some("/p/own".into()),
                },
                OwnedView {
                    resource: rid("b", "cold"),
                    size: Some(1 << 20),
                    path: None,
                },
            ],
            grants: vec![view(1, "a", "b", Some("/p/held")), view(2, "b", "c", None)],
        };
        let t = |s: &str| Target::try_from(s.to_string()).unwrap();
        assert_eq!(
            find_target(&reply, &t("mine")).unwrap(),
            Path::new("/p/own")
        );
        assert_eq!(
            find_target(&reply, &t("gr-0000000000000001")).unwrap(),
            Path::new("/p/held")
        );
        let e = find_target(&reply, &t("cold")).unwrap_err();
        assert_eq!((e.kind.as_str(), e.exit), ("not_mapped", 1));
        assert_eq!(
            find_target(&reply, &t("gr-0000000000000002"))
                .unwrap_err()
                .kind,
            "not_mapped"
        );
        assert_eq!(
            find_target(&reply, &t("nope")).unwrap_err().kind,
            "not_found"
        );
    }

    #[test]
    fn answers_and_errors() {
        let ok = br#"{"call":0,"ok":{"reply":"ended","grant":"gr-0000000000000001","ended":[]}}"#;
        assert!(matches!(decode_answer(ok), Ok(GuestReply::Ended { .. })));
        let refused = br#"{"call":0,"err":{"kind":"cookie_used","message":"used"}}"#;
        let e = decode_answer(refused).unwrap_err();
        assert_eq!((e.kind.as_str(), e.exit), ("cookie_used", 1));
        assert_eq!(
            e.render(true),
            r#"{"error":{"kind":"cookie_used","message":"used"}}"#
        );
        assert_eq!(e.render(false), "bulkhead-guest: cookie_used: used");
        for (kind, exit) in [
            ("unavailable", 3),
            ("timeout", 3),
            ("busy", 3),
            ("revoked", 1),
        ] {
            assert_eq!(ToolError::new(kind, "m\nsecond line").exit, exit);
        }
        assert!(!ToolError::new("x", "a\nb").render(false).contains('\n'));
        assert_eq!(decode_answer(b"garbage").unwrap_err().kind, "internal");
        let wrong = br#"{"call":0,"ok":{"reply":"nonsense"}}"#;
        assert_eq!(decode_answer(wrong).unwrap_err().kind, "internal");
        // No agent listening: unavailable, exit 3.
        let e = call(Path::new("/nonexistent/agent.sock"), &GuestRequest::List {}).unwrap_err();
        assert_eq!((e.kind.as_str(), e.exit), ("unavailable", 3));
    }
}
