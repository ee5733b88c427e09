//! `bulkhead partition expose|unexpose` and `bulkhead expose list`: the
//! shared port's routes, and the API client's calls for them.

use crate::cli::{ApiArgs, ListArgs};
use crate::client::{partition_path, Client, ClientError};
use crate::expose::{ExposePoolRequest, ExposeRequest, Exposed, RouteView, Unexposed};
use hyper::Method;

#[derive(Debug, clap::Args)]
pub struct ExposeArgs {
    pub name: String,
    /// A host name, *.suffix or *; repeatable.
    #[arg(long = "domain", required = true)]
    pub domains: Vec<String>,
    /// The partition's virtual port (where its server listens).
    #[arg(long)]
    pub port: u16,
    /// One of bulkheadd's [portshare] listeners (the first when absent).
    #[arg(long)]
    pub listener: Option<String>,
    /// Send a PROXY v2 header to the partition's server first.
    #[arg(long)]
    pub proxy_protocol: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct UnexposeArgs {
    pub name: String,
    /// Remove only this domain's routes (all of the partition's when absent).
    #[arg(long)]
    pub domain: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct PoolExposeArgs {
    pub program: String,
    /// A host name, *.suffix or *; repeatable.
    #[arg(long = "domain", required = true)]
    pub domains: Vec<String>,
    /// The pool user each connection is allocated under (its alternate id).
    #[arg(long)]
    pub user: String,
    /// How long a connection waits for an idle partition, then 503.
    #[arg(long, default_value_t = crate::expose::DEFAULT_POOL_WAIT_MS)]
    pub wait_ms: u32,
    /// One of bulkheadd's [portshare] listeners (the first when absent).
    #[arg(long)]
    pub listener: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct PoolUnexposeArgs {
    pub program: String,
    /// Remove only this domain's routes (all of the program's when absent).
    #[arg(long)]
    pub domain: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `bulkhead expose`.
#[derive(Debug, clap::Subcommand)]
pub enum ExposeCommand {
    /// Every route of the shared port and what it answers now.
    List(ListArgs),
}

fn routes_path(name: &str) -> Result<String, ClientError> {
    Ok(format!("{}/routes", partition_path(name)?))
}

fn program_routes_path(program: &str) -> Result<String, ClientError> {
    // Only a program's characters reach the path (the daemon checks them too).
    if program.is_empty()
        || !program
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._@-".contains(&c))
    {
        return Err(ClientError::Request(format!(
            "program {program:?} must be of A-Z a-z 0-9 . _ @ -"
        )));
    }
    Ok(format!("/v1/programs/{program}/routes"))
}

/// `?domain=D` for a removal of one domain's routes.
fn with_domain(path: String, domain: Option<&str>) -> Result<String, ClientError> {
    let Some(d) = domain else { return Ok(path) };
    // The daemon checks it; only characters a domain may hold pass.
    let d = crate::expose::normalize_domain(d).map_err(|e| ClientError::Request(e.to_string()))?;
    Ok(format!("{path}?domain={d}"))
}

impl Client {
    pub async fn expose(&self, name: &str, req: &ExposeRequest) -> Result<Exposed, ClientError> {
        self.send(Method::POST, &routes_path(name)?, Some(req))
            .await
    }
    pub async fn unexpose(
        &self,
        name: &str,
        domain: Option<&str>,
    ) -> Result<Unexposed, ClientError> {
        let path = with_domain(routes_path(name)?, domain)?;
        self.send::<(), _>(Method::DELETE, &path, None).await
    }
    pub async fn expose_pool(
        &self,
        program: &str,
        req: &ExposePoolRequest,
    ) -> Result<Exposed, ClientError> {
        self.send(Method::POST, &program_routes_path(program)?, Some(req))
            .await
    }
    pub async fn unexpose_pool(
        &self,
        program: &str,
        domain: Option<&str>,
    ) -> Result<Unexposed, ClientError> {
        let path = with_domain(program_routes_path(program)?, domain)?;
        self.send::<(), _>(Method::DELETE, &path, None).await
    }
    pub async fn routes(&self) -> Result<Vec<RouteView>, ClientError> {
        self.send::<(), _>(Method::GET, "/v1/routes", None).await
    }
}

/// `expose list` as a table.
pub fn list_table(routes: &[RouteView]) -> String {
    let mut out = format!(
        "{:<22} {:<32} {:<20} {:<8} {:<22}\n",
        "LISTENER", "DOMAIN", "PARTITION", "STATE", "TARGET"
    );
    for v in routes {
        let state = serde_json::to_value(v.state).unwrap_or_default();
        out.push_str(&format!(
            "{:<22} {:<32} {:<20} {:<8} {:<22}\n",
            v.route.listener,
            v.route.domain,
            v.route.partition,
            state.as_str().unwrap_or("?"),
            v.target.as_deref().unwrap_or("-")
        ));
    }
    out
}

pub async fn expose(a: ExposeArgs) -> anyhow::Result<()> {
    let req = ExposeRequest {
        domains: a.domains,
        port: a.port,
        listener: a.listener,
        proxy_protocol: a.proxy_protocol,
    };
    let r = a.api.client()?.expose(&a.name, &req).await?;
    print_exposed(&r, a.json)
}

fn print_exposed(r: &Exposed, json: bool) -> anyhow::Result<()> {
    if json {
        return crate::cli::print_json(r);
    }
    for x in &r.routes {
        match &x.pool {
            Some(p) => println!(
                "{} on {} -> program {} as {}",
                x.domain, x.listener, p.program, p.user
            ),
            None => println!(
                "{} on {} -> {}:{}",
                x.domain, x.listener, x.partition, x.port
            ),
        }
    }
    Ok(())
}

fn print_unexposed(r: &Unexposed, json: bool) -> anyhow::Result<()> {
    if json {
        return crate::cli::print_json(r);
    }
    for x in &r.removed {
        println!("removed {} on {}", x.domain, x.listener);
    }
    Ok(())
}

pub async fn pool_expose(a: PoolExposeArgs) -> anyhow::Result<()> {
    let req = ExposePoolRequest {
        domains: a.domains,
        user: a.user,
        wait_ms: a.wait_ms,
        listener: a.listener,
    };
    let r = a.api.client()?.expose_pool(&a.program, &req).await?;
    print_exposed(&r, a.json)
}

pub async fn pool_unexpose(a: PoolUnexposeArgs) -> anyhow::Result<()> {
    let r = a
        .api
        .client()?
        .unexpose_pool(&a.program, a.domain.as_deref())
        .await?;
    print_unexposed(&r, a.json)
}

pub async fn unexpose(a: UnexposeArgs) -> anyhow::Result<()> {
    let r = a
        .api
        .client()?
        .unexpose(&a.name, a.domain.as_deref())
        .await?;
    print_unexposed(&r, a.json)
}

/// Runs `bulkhead expose ...`; a failure prints one line and exits non-zero.
pub async fn run(cmd: ExposeCommand) -> anyhow::Result<()> {
    let ExposeCommand::List(a) = cmd;
    let r = async {
        let v = a.api.client()?.routes().await?;
        crate::cli::print_view(v.as_slice(), a.json, list_table)
    }
    .await;
    crate::cli::exit_on_error(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::PartitionCommand;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct T {
        #[command(subcommand)]
        c: PartitionCommand,
    }

    fn parse(args: &[&str]) -> Result<PartitionCommand, clap::Error> {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|t| t.c)
    }

    #[test]
    fn expose_command_lines() {
        let c = parse(&[
            "expose",
            "web",
            "--domain",
            "a.example.org",
            "--domain",
            "*.b.example.org",
            "--port",
            "8080",
            "--listener",
            "0.0.0.0:443",
            "--proxy-protocol",
        ])
        .unwrap();
        let PartitionCommand::Expose(a) = c else {
            panic!("not expose")
        };
        assert_eq!(a.domains, ["a.example.org", "*.b.example.org"]);
        assert_eq!(
            (a.port, a.listener.as_deref(), a.proxy_protocol),
            (8080, Some("0.0.0.0:443"), true)
        );
        // A domain is required; a port must fit 16 bits.
        assert!(parse(&["expose", "web", "--port", "80"]).is_err());
        assert!(parse(&["expose", "web", "--domain", "a.b", "--port", "70000"]).is_err());
        let PartitionCommand::Unexpose(u) = parse(&["unexpose", "web", "--domain", "a.b"]).unwrap()
        else {
            panic!("not unexpose")
        };
        assert_eq!(u.domain.as_deref(), Some("a.b"));
    }

    #[test]
    fn list_table_shows_state_and_target() {
        let v = RouteView {
            route: bulkhead_store::ExposedRoute {
                listener: "0.0.0.0:80".into(),
                domain: "a.example.org".into(),
                partition: "web".into(),
                port: 8080,
                proxy_protocol: false,
                pool: None,
            },
            state: crate::expose::RouteState::Stopped,
            target: None,
        };
        let t = list_table(&[v]);
        let row = t.lines().nth(1).unwrap();
        assert!(
            row.contains("a.example.org")
                && row.contains("stopped")
                && row.trim_end().ends_with('-'),
            "{t}"
        );
    }
}
