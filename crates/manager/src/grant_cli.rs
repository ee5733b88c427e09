//! `bulkhead grant ...` and `bulkhead region ...`: the administrator's view
//! of the grant table, and `bulkhead grant as PARTITION ...` to act as a
//! partition (the same requests its `bulkhead-guest` makes).

use crate::cli::{print_json, table, ApiArgs};
// Sizes, lifetimes and replies are spelled as `bulkhead-guest` spells them.
use crate::grants::{GrantInfo, GrantLogEntry, RegionView};
use bulkhead_agent::guest::tool::{parse_duration, parse_size};
use bulkhead_grant::reply::GuestReply;
use bulkhead_grant::request::GuestRequest;
use bulkhead_grant::{Cookie, GrantId, PartitionId, RegionSize, ResourceKind, ResourceName};

#[derive(Debug, clap::Subcommand)]
pub enum GrantCommand {
    /// Every grant (ended ones too, until pruned).
    List {
        /// Only grants this partition gave, holds, or owns the resource of.
        #[arg(long)]
        partition: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One grant.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke a grant and everything derived from it (holders are unmapped,
    /// forced if they do not let go).
    Revoke {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Issues, accepts, re-grants, releases, revokes and device changes.
    Log {
        /// Entries after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Act as PARTITION: what its `bulkhead-guest` would ask.
    As {
        partition: String,
        #[command(subcommand)]
        request: AsRequest,
        #[arg(long, global = true)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// A request made as a partition.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AsRequest {
    /// `region create NAME --size 16M`: a region it owns, mapped in it.
    #[command(subcommand)]
    Region(AsRegion),
    /// Grant a resource it owns (`--disk` for a disk, `diskN`; read-only).
    Grant {
        resource: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        read_only: bool,
        #[arg(long)]
        disk: bool,
        /// The grant's lifetime, e.g. 10m, 30s, 2h.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Grant on what it holds through GRANT_ID.
    Regrant {
        grant: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        read_only: bool,
        #[arg(long)]
        expires: Option<String>,
    },
    /// Accept a cookie: the resource is mapped in it.
    Accept { cookie: String },
    /// Let go of a grant it holds.
    Release { grant: String },
    /// Revoke a grant it gave (or one downstream of it).
    Revoke { grant: String },
    /// What it owns and the live grants it gave or holds.
    List,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum AsRegion {
    Create {
        name: String,
        /// A power of two from 1M to 1G.
        #[arg(long)]
        size: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum RegionCommand {
    /// Resources partitions own, with size and holders.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

fn parsed<T: std::str::FromStr>(what: &str, s: &str) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>()
        .map_err(|e| anyhow::anyhow!("{what} {s:?}: {e}"))
}

/// The typed request for `bulkhead grant as P ...`.
pub fn guest_request(r: &AsRequest) -> anyhow::Result<GuestRequest> {
    let expires = |e: &Option<String>| {
        e.as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(anyhow::Error::msg)
    };
    Ok(match r {
        AsRequest::Region(AsRegion::Create { name, size }) => GuestRequest::RegionCreate {
            name: parsed::<ResourceName>("region name", name)?,
            size: RegionSize::try_from(parse_size(size).map_err(anyhow::Error::msg)?)?,
        },
        AsRequest::Grant {
            resource,
            to,
            read_only,
            disk,
            expires: e,
        } => GuestRequest::Grant {
            resource: parsed("resource", resource)?,
            kind: if *disk {
                ResourceKind::Disk
            } else {
                ResourceKind::Region
            },
            to: parsed::<PartitionId>("partition", to)?,
            read_only: *read_only || *disk,
            expires_ms: expires(e)?,
        },
        AsRequest::Regrant {
            grant,
            to,
            read_only,
            expires: e,
        } => GuestRequest::Regrant {
            grant: parsed::<GrantId>("grant", grant)?,
            to: parsed("partition", to)?,
            read_only: *read_only,
            expires_ms: expires(e)?,
        },
        AsRequest::Accept { cookie } => GuestRequest::Accept {
            cookie: Cookie::parse(cookie).map_err(|e| anyhow::anyhow!("cookie: {e}"))?,
        },
        AsRequest::Release { grant } => GuestRequest::Release {
            grant: parsed("grant", grant)?,
        },
        AsRequest::Revoke { grant } => GuestRequest::Revoke {
            grant: parsed("grant", grant)?,
        },
        AsRequest::List => GuestRequest::List {},
    })
}

/// The reply as `bulkhead-guest` prints it (its own formatter); `None`
/// when it does not answer the request.
pub fn reply_text(
    req: &GuestRequest,
    r: &GuestReply,
    me: Option<PartitionId>,
) -> anyhow::Result<String> {
    bulkhead_agent::guest::grants::format_reply(req, r, false, &me)
        .map_err(|e| anyhow::anyhow!("{}", e.render(false).trim_end()))
}

pub fn grants_table(v: &[GrantInfo]) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|g| {
            vec![
                g.id.clone(),
                g.resource.clone(),
                g.granter.clone(),
                g.grantee.clone(),
                g.access.to_string(),
                format!("{:?}", g.state).to_lowercase(),
                g.depth.to_string(),
                g.device.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "ID", "RESOURCE", "GRANTER", "GRANTEE", "ACCESS", "STATE", "DEPTH", "DEVICE",
        ],
        &rows,
    )
}

fn log_text(v: &[GrantLogEntry]) -> String {
    v.iter()
        .map(|e| format!("{:>6} {} {:<7} {}\n", e.seq, e.at_ms, e.via, e.event))
        .collect()
}

fn regions_table(v: &[RegionView]) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|r| {
            vec![
                r.resource.clone(),
                r.size.map(|s| s.to_string()).unwrap_or_default(),
                r.holders.join(","),
                r.path.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&["RESOURCE", "BYTES", "HOLDERS", "OWNER PATH"], &rows)
}

fn out<T: serde::Serialize>(
    json: bool,
    v: &T,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        print_json(v)
    } else {
        print!("{}", text(v));
        Ok(())
    }
}

/// Runs one grant command. Failures print one line and exit non-zero.
pub async fn run(cmd: GrantCommand) -> anyhow::Result<()> {
    crate::cli::exit_on_error(run_inner(cmd).await)
}

async fn run_inner(cmd: GrantCommand) -> anyhow::Result<()> {
    match cmd {
        GrantCommand::List {
            partition,
            json,
            api,
        } => {
            let v = api.client()?.grant_list(partition.as_deref()).await?;
            out(json, &v, |v| grants_table(v))
        }
        GrantCommand::Show { id, json, api } => {
            let g = api.client()?.grant_show(&id).await?;
            out(json, &g, |g| grants_table(std::slice::from_ref(g)))
        }
        GrantCommand::Revoke { id, json, api } => {
            let r = api.client()?.grant_revoke(&id).await?;
            let req = GuestRequest::Revoke {
                grant: parsed("grant", &id)?,
            };
            let text = reply_text(&req, &r, None)?;
            out(json, &r, |_| format!("{text}\n"))
        }
        GrantCommand::Log {
            after,
            limit,
            json,
            api,
        } => {
            let v = api.client()?.grant_log(after, limit).await?;
            out(json, &v, |v| log_text(v))
        }
        GrantCommand::As {
            partition,
            request,
            json,
            api,
        } => {
            let req = guest_request(&request)?;
            let r = api.client()?.grant_request(&partition, &req).await?;
            let text = reply_text(&req, &r, partition.parse().ok())?;
            out(json, &r, |_| format!("{}\n", text.trim_end()))
        }
    }
}

pub async fn run_region(cmd: RegionCommand) -> anyhow::Result<()> {
    let RegionCommand::List { json, api } = cmd;
    let r = async {
        let v = api.client()?.region_list().await?;
        out(json, &v, |v| regions_table(v))
    }
    .await;
    crate::cli::exit_on_error(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        cmd: GrantCommand,
    }

    fn req(args: &str) -> anyhow::Result<GuestRequest> {
        let t = T::try_parse_from(format!("t {args}").split_whitespace())?;
        match t.cmd {
            GrantCommand::As { request, .. } => guest_request(&request),
            _ => panic!("not an as"),
        }
    }

    #[test]
    fn as_requests_are_the_guests() {
        assert_eq!(
            req("as a region create buf --size 16M").unwrap(),
            GuestRequest::RegionCreate {
                name: "buf".parse().unwrap(),
                size: RegionSize::try_from(16u64 << 20).unwrap()
            }
        );
        let g = req("as a grant buf --to b --read-only --expires 10m").unwrap();
        assert_eq!(
            g,
            GuestRequest::Grant {
                resource: "buf".parse().unwrap(),
                kind: ResourceKind::Region,
                to: "b".parse().unwrap(),
                read_only: true,
                expires_ms: Some(600_000)
            }
        );
        let d = req("as a grant disk0 --to b --disk").unwrap();
        assert!(matches!(
            d,
            GuestRequest::Grant {
                kind: ResourceKind::Disk,
                read_only: true,
                ..
            }
        ));
        assert_eq!(req("as a list --json").unwrap(), GuestRequest::List {});
        for bad in [
            "as a region create buf --size 3M",
            "as a region create buf --size 16X",
            "as a grant buf --to B",
            "as a grant buf --to b --expires 10",
            "as a region create buf --size 16MB",
            "as a accept bhc1_nope",
            "as a release gr-1",
        ] {
            assert!(req(bad).is_err(), "{bad}");
        }
    }
}
