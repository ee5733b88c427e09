//! `bulkhead remote-restart ...`, and the API client's remote-restart calls.

use super::api::{StartRemoteRestart, StopRemoteRestart};
use super::{parse_capabilities, OperationView, StopState};
use crate::cli::{print_view, table, ApiArgs, ListArgs};
use crate::client::{encode_segment, Client, ClientError};
use hyper::Method;

/// `bulkhead remote-restart`: restart a hibernated partition on another host
/// under an operation token. `--token` is the operation's here, so the TCP
/// API's bearer token is `--api-token` (or `BULKHEAD_TOKEN`).
#[derive(Debug, clap::Subcommand)]
pub enum RemoteRestartCommand {
    /// Lock, gather, create the target's adapters and restore there
    /// (carried out by the target). Prints the token when none is given.
    #[command(mut_arg("token", api_token))]
    Start(StartArgs),
    /// End an operation on its target: unlock; `failed` also removes what it created.
    #[command(mut_arg("token", api_token))]
    Stop(StopArgs),
    /// On the source: release its locks and stale adapters.
    #[command(mut_arg("token", api_token))]
    StopCollect(TokenArgs),
    #[command(mut_arg("token", api_token))]
    Show(TokenArgs),
    List(ListArgs),
}

/// `ApiArgs`' bearer token, renamed where `--token` is the operation's.
fn api_token(a: clap::Arg) -> clap::Arg {
    a.long("api-token")
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    #[arg(long)]
    pub partition: String,
    /// The host (by name) to restart it on.
    #[arg(long)]
    pub target: String,
    /// The operation token; a random one is made (and printed) when absent.
    #[arg(long = "token", id = "op_token", value_name = "TOKEN")]
    pub op_token: Option<String>,
    /// Detail level of the operation's view: 0-2.
    #[arg(long, default_value_t = 0)]
    pub detail: u8,
    /// Capability bits the target must have (decimal or 0x-hex).
    #[arg(long, value_parser = parse_capabilities, default_value = "0")]
    pub capabilities: u64,
    /// Seconds the target waits for a stop (its configured default when absent).
    #[arg(long)]
    pub timeout_secs: Option<u64>,
    /// Migration by promotion: in the operation, before the restore, make
    /// the redundant copy of each mirrored LU the partition writes its
    /// primary (`lu promote`); refused, with nothing changed, when a copy is
    /// not in step. A promotion stays if the operation then fails.
    #[arg(long)]
    pub promote_mirror: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct StopArgs {
    #[arg(long = "token", id = "op_token", value_name = "TOKEN")]
    pub op_token: String,
    #[arg(long, value_enum)]
    pub state: StopState,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[arg(long = "token", id = "op_token", value_name = "TOKEN")]
    pub op_token: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

impl Client {
    pub async fn remote_restart_start(
        &self,
        req: &StartRemoteRestart,
    ) -> Result<OperationView, ClientError> {
        self.send(Method::POST, "/v1/remote-restarts", Some(req))
            .await
    }
    pub async fn remote_restart_stop(
        &self,
        token: &str,
        state: StopState,
    ) -> Result<OperationView, ClientError> {
        let path = format!("{}/stop", path(token)?);
        self.send(Method::POST, &path, Some(&StopRemoteRestart { state }))
            .await
    }
    pub async fn remote_restart_collect(&self, token: &str) -> Result<OperationView, ClientError> {
        let path = format!("{}/stop-collect", path(token)?);
        self.send::<(), _>(Method::POST, &path, None).await
    }
    pub async fn remote_restart_show(&self, token: &str) -> Result<OperationView, ClientError> {
        self.send::<(), _>(Method::GET, &path(token)?, None).await
    }
    pub async fn remote_restart_list(&self) -> Result<Vec<OperationView>, ClientError> {
        self.send::<(), _>(Method::GET, "/v1/remote-restarts", None)
            .await
    }
}

/// The daemon checks the token; here it is only made one path segment.
fn path(token: &str) -> Result<String, ClientError> {
    Ok(format!("/v1/remote-restarts/{}", encode_segment(token)))
}

pub async fn run(cmd: RemoteRestartCommand) -> anyhow::Result<()> {
    crate::cli::exit_on_error(run_inner(cmd).await)
}

async fn run_inner(cmd: RemoteRestartCommand) -> anyhow::Result<()> {
    use RemoteRestartCommand as C;
    match cmd {
        C::Start(a) => {
            let given = a.op_token.is_some();
            let req = StartRemoteRestart {
                partition: a.partition,
                target: a.target,
                token: a.op_token,
                detail: a.detail,
                capabilities: a.capabilities,
                timeout_secs: a.timeout_secs,
                promote_mirror: a.promote_mirror,
            };
            let v = a.api.client()?.remote_restart_start(&req).await?;
            if a.json {
                return crate::cli::print_json(&v);
            }
            print!("{}", show_text(&v));
            if !given {
                // Alone on the last line, for scripts.
                println!("{}", v.token);
            }
        }
        C::Stop(a) => {
            let v = a
                .api
                .client()?
                .remote_restart_stop(&a.op_token, a.state)
                .await?;
            print_view(&v, a.json, show_text)?;
        }
        C::StopCollect(a) => {
            let v = a.api.client()?.remote_restart_collect(&a.op_token).await?;
            print_view(&v, a.json, show_text)?;
        }
        C::Show(a) => {
            let v = a.api.client()?.remote_restart_show(&a.op_token).await?;
            print_view(&v, a.json, show_text)?;
        }
        C::List(a) => {
            let v = a.api.client()?.remote_restart_list().await?;
            print_view(&v, a.json, |v: &Vec<OperationView>| list_text(v))?;
        }
    }
    Ok(())
}

pub fn show_text(v: &OperationView) -> String {
    let mut s = format!(
        "token:        {}\npartition:    {}\nsource:       {}\ntarget:       {}\nstate:        {}\ncollected:    {}\n",
        v.token, v.partition, v.source, v.target, v.state, v.collected
    );
    if let Some(m) = &v.message {
        s += &format!("message:      {m}\n");
    }
    for (what, lines) in [("lock", &v.locks), ("created", &v.created)] {
        for l in lines.iter().flatten() {
            s += &format!("{what:<12}  {l}\n");
        }
    }
    s
}

pub fn list_text(v: &[OperationView]) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|o| {
            vec![
                o.token.clone(),
                o.partition.clone(),
                o.source.clone(),
                o.target.clone(),
                o.state.clone(),
                o.collected.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "TOKEN",
            "PARTITION",
            "SOURCE",
            "TARGET",
            "STATE",
            "COLLECTED",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        c: RemoteRestartCommand,
    }

    /// `--token` is the operation's; the API's bearer token is `--api-token`.
    #[test]
    fn operation_and_api_tokens_are_apart() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "rr",
            "start",
            "--partition",
            "p",
            "--target",
            "b",
            "--token",
            "op-1",
            "--api-token",
            "secret",
            "--capabilities",
            "0x7",
        ])
        .unwrap();
        let RemoteRestartCommand::Start(a) = cli.c else {
            panic!("not start")
        };
        assert_eq!(a.op_token.as_deref(), Some("op-1"));
        assert_eq!(a.api.token.as_deref(), Some("secret"));
        assert_eq!(a.capabilities, 7);
        let cli = Cli::try_parse_from(["rr", "stop", "--token", "t", "--state", "failed"]).unwrap();
        assert!(matches!(
            cli.c,
            RemoteRestartCommand::Stop(StopArgs {
                state: StopState::Failed,
                ..
            })
        ));
    }
}
