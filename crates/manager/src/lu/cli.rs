//! `bulkhead lu ...`: the LU commands, and the API client's LU calls.

use super::mirror::{MirrorCommand, MirrorLu, PromoteLu};
use super::types::*;
use crate::cli::{print_json, print_view, ApiArgs, ListArgs, NameArgs};
use crate::client::{encode_segment, Client, ClientError};
use anyhow::Context;
use hyper::Method;

/// `bulkhead lu`: LUs of the repository.
#[derive(Debug, clap::Subcommand)]
pub enum LuCommand {
    /// Make a thin LU (a qcow2 file in the client's area of the repository).
    Create(CreateArgs),
    /// Every LU with its size, allocation and holders.
    List(ListArgs),
    /// One LU: virtual size, bytes allocated, locks.
    Show(NameArgs),
    /// Grow an LU no partition has attached (LUs never shrink).
    Resize(ResizeArgs),
    /// Delete an LU no partition has attached.
    Delete(NameArgs),
    /// An LU of the client with at least --min: reused, grown or created.
    Request(RequestArgs),
    /// Keep a redundant copy of an LU (a new LU of its client, in step with
    /// every write while it is attached writable).
    Mirror(MirrorArgs),
    /// Stop mirroring an LU; the copy stays as an ordinary LU.
    Unmirror(NameArgs),
    /// Make an LU's copy its data (after a move or a host loss).
    Promote(PromoteArgs),
}

#[derive(Debug, clap::Args)]
pub struct MirrorArgs {
    pub name: String,
    /// The copy's name (a new LU); NAME-mirror when absent.
    #[arg(long)]
    pub copy: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct PromoteArgs {
    pub name: String,
    /// Promote a copy that is stale or broken (its missing writes are lost).
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    pub name: String,
    /// Virtual size, e.g. 512M or 1G.
    #[arg(long)]
    pub size: String,
    #[arg(long)]
    pub client: String,
    /// data (default), paging or hibernation.
    #[arg(long)]
    pub purpose: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct ResizeArgs {
    pub name: String,
    /// The new virtual size, e.g. 2G.
    #[arg(long)]
    pub size: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    #[arg(long)]
    pub client: String,
    /// The capacity needed, e.g. 2G.
    #[arg(long)]
    pub min: String,
    /// paging or hibernation (data when absent).
    #[arg(long)]
    pub purpose: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `512M`, `1G`... in bytes (the partition commands' size syntax).
pub fn parse_bytes(s: &str) -> anyhow::Result<u64> {
    let mib = bulkhead_engine::spec::parse_mib(s).map_err(anyhow::Error::msg)?;
    mib.checked_mul(1 << 20)
        .with_context(|| format!("size {s:?} is too large"))
}

/// `NAME` or `NAME:ro`.
pub fn parse_lu_attach(s: &str) -> LuAttach {
    match s.strip_suffix(":ro") {
        Some(n) => LuAttach {
            name: n.to_string(),
            readonly: true,
        },
        None => LuAttach {
            name: s.to_string(),
            readonly: false,
        },
    }
}

fn lu_path(name: &str) -> Result<String, ClientError> {
    super::check_name("LU", name).map_err(ClientError::Request)?;
    Ok(format!("/v1/lus/{}", encode_segment(name)))
}

impl Client {
    pub async fn attach_lu(
        &self,
        partition: &str,
        req: &AttachLu,
    ) -> Result<crate::api::AttachedDisk, ClientError> {
        let path = format!("{}/lus", crate::client::partition_path(partition)?);
        self.send(Method::POST, &path, Some(req)).await
    }
    pub async fn lu_create(&self, req: &CreateLu) -> Result<LuView, ClientError> {
        self.send(Method::POST, "/v1/lus", Some(req)).await
    }
    pub async fn lu_list(&self) -> Result<Vec<LuView>, ClientError> {
        self.send::<(), _>(Method::GET, "/v1/lus", None).await
    }
    pub async fn lu_show(&self, name: &str) -> Result<LuView, ClientError> {
        self.send::<(), _>(Method::GET, &lu_path(name)?, None).await
    }
    pub async fn lu_resize(&self, name: &str, req: &ResizeLu) -> Result<LuView, ClientError> {
        let path = format!("{}/resize", lu_path(name)?);
        self.send(Method::POST, &path, Some(req)).await
    }
    pub async fn lu_delete(&self, name: &str) -> Result<LuDeleted, ClientError> {
        self.send::<(), _>(Method::DELETE, &lu_path(name)?, None)
            .await
    }
    pub async fn lu_request(&self, req: &RequestLu) -> Result<LuRequested, ClientError> {
        self.send(Method::POST, "/v1/lu-requests", Some(req)).await
    }
}

fn size(b: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)];
    for (u, n) in UNITS {
        if b >= n {
            let v = b as f64 / n as f64;
            return if b.is_multiple_of(n) {
                format!("{}{u}", b / n)
            } else {
                format!("{v:.1}{u}")
            };
        }
    }
    format!("{b}")
}

fn holders(v: &LuView) -> String {
    if v.locks.is_empty() {
        return "-".into();
    }
    v.locks
        .iter()
        .map(|l| format!("{}/{}({})", l.partition, l.adapter, l.mode.as_str()))
        .collect::<Vec<_>>()
        .join(",")
}

/// `lu list` as a table.
pub fn list_table(lus: &[LuView]) -> String {
    let mut out = format!(
        "{:<24} {:<16} {:<12} {:>8} {:>10}  {}\n",
        "NAME", "CLIENT", "PURPOSE", "SIZE", "ALLOCATED", "HELD BY"
    );
    for v in lus {
        out.push_str(&format!(
            "{:<24} {:<16} {:<12} {:>8} {:>10}  {}\n",
            v.record.name,
            v.record.client,
            v.record.purpose,
            size(v.virtual_bytes),
            size(v.allocated_bytes),
            holders(v)
        ));
    }
    out
}

/// The mirror row of `lu show`: the copy and its state, or the primary.
fn mirror_text(v: &LuView) -> String {
    if let Some(p) = &v.record.mirror_of {
        return format!("redundant copy of LU {p} (read-only)");
    }
    let Some(m) = &v.record.mirror else {
        return "-".into();
    };
    let mut s = format!("copy {} {}", m.copy, m.state.as_str());
    if let Some(r) = &m.reason {
        s.push_str(&format!(" ({r})"));
    }
    if let Some(h) = &m.host {
        s.push_str(&format!(" by host {h}"));
    }
    s
}

/// `lu show` as text.
pub fn show_text(v: &LuView) -> String {
    let mut out = String::new();
    let rows = [
        ("name", v.record.name.clone()),
        ("client", v.record.client.clone()),
        ("purpose", v.record.purpose.clone()),
        (
            "virtual size",
            format!("{} ({} bytes)", size(v.virtual_bytes), v.virtual_bytes),
        ),
        (
            "allocated",
            format!("{} ({} bytes)", size(v.allocated_bytes), v.allocated_bytes),
        ),
        ("file", v.file.clone()),
        ("problem", v.problem.clone().unwrap_or_else(|| "-".into())),
        ("mirror", mirror_text(v)),
    ];
    for (k, val) in rows {
        out.push_str(&format!("{k:<14} {val}\n"));
    }
    for l in &v.locks {
        out.push_str(&format!(
            "{:<14} {} {} {} on host {} (AdapterID {})\n",
            "locked by",
            l.partition,
            l.adapter,
            l.mode.as_str(),
            l.host,
            l.adapter_id
        ));
    }
    out
}

/// Sends a redundant-LU command and shows the primary as it is after it.
async fn mirror_command(api: &ApiArgs, json: bool, c: MirrorCommand) -> anyhow::Result<()> {
    let v = api.client()?.lu_mirror(&c).await?;
    print_view(&v, json, show_text)
}

/// Runs one LU command; a failure prints one line and exits non-zero.
pub async fn run(cmd: LuCommand) -> anyhow::Result<()> {
    crate::cli::exit_on_error(run_inner(cmd).await)
}

async fn run_inner(cmd: LuCommand) -> anyhow::Result<()> {
    match cmd {
        LuCommand::Create(a) => {
            let req = CreateLu {
                name: a.name,
                client: a.client,
                size_bytes: parse_bytes(&a.size)?,
                purpose: a.purpose,
            };
            let v = a.api.client()?.lu_create(&req).await?;
            print_view(&v, a.json, show_text)?;
        }
        LuCommand::List(a) => {
            let v = a.api.client()?.lu_list().await?;
            print_view(v.as_slice(), a.json, list_table)?;
        }
        LuCommand::Show(a) => {
            let v = a.api.client()?.lu_show(&a.name).await?;
            print_view(&v, a.json, show_text)?;
        }
        LuCommand::Resize(a) => {
            let req = ResizeLu {
                size_bytes: parse_bytes(&a.size)?,
            };
            let v = a.api.client()?.lu_resize(&a.name, &req).await?;
            print_view(&v, a.json, show_text)?;
        }
        LuCommand::Delete(a) => {
            let d = a.api.client()?.lu_delete(&a.name).await?;
            if a.json {
                return print_json(&d);
            }
            println!("deleted LU {}", d.deleted);
        }
        LuCommand::Mirror(a) => {
            let req = MirrorLu { copy: a.copy };
            let c = MirrorCommand::Mirror { lu: a.name, req };
            mirror_command(&a.api, a.json, c).await?;
        }
        LuCommand::Unmirror(a) => {
            let c = MirrorCommand::Unmirror { lu: a.name };
            mirror_command(&a.api, a.json, c).await?;
        }
        LuCommand::Promote(a) => {
            let req = PromoteLu { force: a.force };
            let c = MirrorCommand::Promote { lu: a.name, req };
            mirror_command(&a.api, a.json, c).await?;
        }
        LuCommand::Request(a) => {
            let req = RequestLu {
                client: a.client,
                min_bytes: parse_bytes(&a.min)?,
                purpose: a.purpose,
            };
            let r = a.api.client()?.lu_request(&req).await?;
            if a.json {
                return print_json(&r);
            }
            let what = match r.outcome {
                LuOutcome::Reused => "reused".to_string(),
                LuOutcome::Grown => format!("grew by {}", size(r.grown_by_bytes)),
                LuOutcome::Created => "created".to_string(),
            };
            println!(
                "{what} LU {} ({}, {} allocated)",
                r.lu.record.name,
                size(r.lu.virtual_bytes),
                size(r.lu.allocated_bytes)
            );
        }
    }
    Ok(())
}
