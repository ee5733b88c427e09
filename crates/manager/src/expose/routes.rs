//! The expose API: typed bodies and replies, the checks a hostile caller
//! meets before anything is written, and the three handlers.

use super::{ExposeCommand, ExposeReply};
use crate::api::{check_name, ApiError};
use crate::manager::Manager;
use bulkhead_store::{ExposedRoute, PartitionRecord, PartitionState, Scope};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use utoipa::ToSchema;

/// Most domains one call may expose.
pub const MAX_DOMAINS: usize = 64;

/// Body of `POST /v1/partitions/{name}/routes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExposeRequest {
    /// Host names (`app.example.org`), `*.example.org` wildcards, or `*`
    /// (the listener's default row).
    #[schema(min_items = 1, max_items = 64)]
    pub domains: Vec<String>,
    /// The partition's virtual port (where its server listens).
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    /// One of the daemon's `[portshare] listeners` (`ADDR:PORT`); the
    /// first configured when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    /// Send a PROXY v2 header to the partition's server first.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// Body of `POST /v1/programs/{program}/routes`: a service pool's program
/// behind the shared port, one allocation per connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExposePoolRequest {
    /// As for a partition's routes.
    #[schema(min_items = 1, max_items = 64)]
    pub domains: Vec<String>,
    /// The pool user every connection is allocated under (its alternate
    /// id); it must exist and may run the program.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")]
    pub user: String,
    /// How long a connection waits for an idle partition before a 503.
    #[serde(default = "default_wait_ms")]
    #[schema(minimum = 0, maximum = 300000, default = 5000)]
    pub wait_ms: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
}

/// A pool route's wait for an idle partition when not given.
pub const DEFAULT_POOL_WAIT_MS: u32 = 5_000;
/// The pool protocol's bound on `wait_ms` (docs/pool-protocol.md).
pub const MAX_POOL_WAIT_MS: u32 = 300_000;

fn default_wait_ms() -> u32 {
    DEFAULT_POOL_WAIT_MS
}

/// The holder name of a pool route (no partition name holds a `:`).
pub fn pool_holder(program: &str) -> String {
    format!("pool:{program}")
}

/// Reply of `POST /v1/partitions/{name}/routes`: the rows written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Exposed {
    pub routes: Vec<ExposedRoute>,
}

/// Reply of `DELETE /v1/partitions/{name}/routes`: the rows removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Unexposed {
    pub removed: Vec<ExposedRoute>,
}

/// What a route's domain answers now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RouteState {
    /// The partition runs: its server is reached at `target`.
    Serving,
    /// Hibernated: a connection resumes it (held until its server answers).
    Waking,
    /// Not running: 502.
    Stopped,
    /// A pool's program: each connection is one allocation.
    Pool,
}

/// One row of `GET /v1/routes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RouteView {
    #[serde(flatten)]
    pub route: ExposedRoute,
    pub state: RouteState,
    /// The partition's VLAN address and port, when it has one.
    #[serde(default)]
    pub target: Option<String>,
}

/// A domain as the table stores it (lower case, no trailing dot), or 400.
pub fn normalize_domain(d: &str) -> Result<String, ApiError> {
    use bulkhead_portshare::sni::normalize_host;
    let bad = || ApiError::BadRequest(format!("domain {d:?} is not a host name, *.suffix or *"));
    if d == "*" {
        return Ok(d.to_string());
    }
    match d.strip_prefix("*.") {
        Some(s) => normalize_host(s.as_bytes()).map(|s| format!("*.{s}")),
        None => normalize_host(d.as_bytes()),
    }
    .ok_or_else(bad)
}

/// The configured listener `l` names (the first when absent), or 400/409.
pub fn pick_listener(configured: &[SocketAddr], l: Option<&str>) -> Result<SocketAddr, ApiError> {
    let Some(first) = configured.first() else {
        return Err(ApiError::Conflict(
            "the shared port is off on this daemon: no [portshare] listeners configured".into(),
        ));
    };
    let Some(l) = l else { return Ok(*first) };
    let addr: SocketAddr = l
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("listener {l:?} is not ADDR:PORT")))?;
    if !configured.contains(&addr) {
        let list: Vec<String> = configured.iter().map(|a| a.to_string()).collect();
        return Err(ApiError::BadRequest(format!(
            "listener {addr} is not configured (configured: {})",
            list.join(", ")
        )));
    }
    Ok(addr)
}

/// The rows `req` asks for, every field checked; nothing is written here.
pub fn requested_routes(
    configured: &[SocketAddr],
    name: &str,
    req: &ExposeRequest,
) -> Result<Vec<ExposedRoute>, ApiError> {
    check_name(name)?;
    if req.port == 0 {
        return Err(ApiError::BadRequest("port must be 1-65535".into()));
    }
    rows(
        configured,
        &req.domains,
        req.listener.as_deref(),
        |listener, domain| ExposedRoute {
            listener,
            domain,
            partition: name.to_string(),
            port: req.port,
            proxy_protocol: req.proxy_protocol,
            pool: None,
        },
    )
}

/// A pool program's or user's name (docs/pool-protocol.md), or 400.
fn check_pool_name(what: &str, n: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&n.len())
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._@-".contains(&c));
    ok.then_some(()).ok_or_else(|| {
        ApiError::BadRequest(format!("{what} {n:?} must be 1-64 of A-Z a-z 0-9 . _ @ -"))
    })
}

/// The rows of a pool route, every field checked; nothing is written here.
pub fn requested_pool_routes(
    configured: &[SocketAddr],
    program: &str,
    req: &ExposePoolRequest,
) -> Result<Vec<ExposedRoute>, ApiError> {
    check_pool_name("program", program)?;
    check_pool_name("user", &req.user)?;
    if req.wait_ms > MAX_POOL_WAIT_MS {
        return Err(ApiError::BadRequest(format!(
            "wait_ms must be at most {MAX_POOL_WAIT_MS}"
        )));
    }
    let target = bulkhead_store::PoolTarget {
        program: program.to_string(),
        user: req.user.clone(),
        wait_ms: req.wait_ms,
    };
    rows(
        configured,
        &req.domains,
        req.listener.as_deref(),
        |listener, domain| ExposedRoute {
            listener,
            domain,
            partition: pool_holder(program),
            port: 0,
            proxy_protocol: false,
            pool: Some(target.clone()),
        },
    )
}

/// One row per domain on the listener asked for, each domain checked.
fn rows(
    configured: &[SocketAddr],
    domains: &[String],
    listener: Option<&str>,
    row: impl Fn(String, String) -> ExposedRoute,
) -> Result<Vec<ExposedRoute>, ApiError> {
    if domains.is_empty() || domains.len() > MAX_DOMAINS {
        return Err(ApiError::BadRequest(format!(
            "give 1 to {MAX_DOMAINS} domains, got {}",
            domains.len()
        )));
    }
    let listener = pick_listener(configured, listener)?.to_string();
    let mut out: Vec<ExposedRoute> = Vec::new();
    for d in domains {
        let domain = normalize_domain(d)?;
        if out.iter().any(|r| r.domain == domain) {
            return Err(ApiError::BadRequest(format!(
                "domain {domain} is given twice"
            )));
        }
        out.push(row(listener.clone(), domain));
    }
    Ok(out)
}

/// What `rec`'s routes answer now, and the address they reach.
pub fn route_state(rec: &PartitionRecord) -> (RouteState, Option<std::net::IpAddr>) {
    let ip = rec
        .net
        .as_ref()
        .and_then(|n| n.ip.split('/').next()?.parse().ok());
    let state = match rec.state {
        PartitionState::Running if ip.is_some() => RouteState::Serving,
        PartitionState::Hibernated | PartitionState::Hibernating | PartitionState::Resuming
            if ip.is_some() =>
        {
            RouteState::Waking
        }
        _ => RouteState::Stopped,
    };
    (state, ip)
}

/// Answers one expose command.
pub async fn handle(m: &Arc<Manager>, cmd: ExposeCommand) -> Result<ExposeReply, ApiError> {
    let ex = &m.expose;
    Ok(match cmd {
        ExposeCommand::Expose { name, req } => {
            let rows = requested_routes(&ex.config().listeners, &name, &req)?;
            let rec = m.get(&name).await?;
            if rec.net.is_none() {
                return Err(ApiError::Conflict(format!(
                    "partition {name:?} has no VLAN address to route to (create it with --net)"
                )));
            }
            write_all(m, &rows).await?;
            ex.kick();
            ExposeReply::Exposed(Exposed { routes: rows })
        }
        ExposeCommand::ExposePool { program, req } => {
            let rows = requested_pool_routes(&ex.config().listeners, &program, &req)?;
            let users = m.pool_user_table(&req.user).await?;
            match users.get(&req.user) {
                None => {
                    return Err(ApiError::NotFound(format!(
                        "pool user {:?} not found",
                        req.user
                    )))
                }
                Some(u) if !u.programs.contains(&program) => {
                    return Err(ApiError::Conflict(format!(
                        "pool user {:?} may not run {program:?}",
                        req.user
                    )))
                }
                Some(_) => {}
            }
            write_all(m, &rows).await?;
            ex.kick();
            ExposeReply::Exposed(Exposed { routes: rows })
        }
        ExposeCommand::Unexpose { name, domain } => {
            check_name(&name)?;
            let removed = unexpose(m, &name, domain.as_deref()).await?;
            if removed.is_empty() {
                // Which 404: the partition, or its domain.
                m.get(&name).await?;
                return Err(no_route(&format!("partition {name:?}"), domain));
            }
            ExposeReply::Unexposed(Unexposed { removed })
        }
        ExposeCommand::UnexposePool { program, domain } => {
            check_pool_name("program", &program)?;
            let removed = unexpose(m, &pool_holder(&program), domain.as_deref()).await?;
            if removed.is_empty() {
                return Err(no_route(&format!("program {program:?}"), domain));
            }
            ExposeReply::Unexposed(Unexposed { removed })
        }
        ExposeCommand::List => {
            let recs = m.store().list(Scope::All).await?;
            let views = m
                .store()
                .routes()
                .await?
                .into_iter()
                .map(|route| {
                    let rec = recs.iter().find(|r| r.name == route.partition);
                    let (state, ip) = match rec {
                        _ if route.pool.is_some() => (RouteState::Pool, None),
                        Some(rec) => route_state(rec),
                        None => (RouteState::Stopped, None),
                    };
                    let target = ip.map(|ip| SocketAddr::new(ip, route.port).to_string());
                    RouteView {
                        route,
                        state,
                        target,
                    }
                })
                .collect();
            ExposeReply::Routes(views)
        }
    })
}

/// Removes `holder`'s rows (of `domain` only, when given).
async fn unexpose(
    m: &Manager,
    holder: &str,
    domain: Option<&str>,
) -> Result<Vec<ExposedRoute>, ApiError> {
    let domain = domain.map(normalize_domain).transpose()?;
    let removed = m.store().route_remove(holder, domain.as_deref()).await?;
    if !removed.is_empty() {
        m.expose.kick();
    }
    Ok(removed)
}

fn no_route(holder: &str, domain: Option<String>) -> ApiError {
    ApiError::NotFound(match domain {
        Some(d) => format!("{holder} has no route for {d}"),
        None => format!("{holder} has no routes"),
    })
}

/// Writes every row, or none: a domain another partition holds (checked
/// again by the store inside each write) undoes the rows this call wrote.
async fn write_all(m: &Manager, rows: &[ExposedRoute]) -> Result<(), ApiError> {
    let store = m.store();
    let before = store.routes().await?;
    if let Some(e) = rows.iter().find_map(|r| {
        before
            .iter()
            .find(|b| b.key() == r.key())
            .and_then(|b| r.taken_by(b))
    }) {
        return Err(e.into());
    }
    for (i, r) in rows.iter().enumerate() {
        if let Err(e) = store.route_put(r).await {
            for done in &rows[..i] {
                let _ = store
                    .route_remove(&done.partition, Some(&done.domain))
                    .await;
                for old in before
                    .iter()
                    .filter(|b| b.matches(&done.partition, Some(&done.domain)))
                {
                    let _ = store.route_put(old).await;
                }
            }
            return Err(e.into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(domains: &[&str], port: u16, listener: Option<&str>) -> ExposeRequest {
        ExposeRequest {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            port,
            listener: listener.map(str::to_string),
            proxy_protocol: false,
        }
    }

    #[test]
    fn hostile_input_is_refused_before_anything_is_written() {
        let l: Vec<SocketAddr> = vec!["127.0.0.1:8080".parse().unwrap()];
        let ok = requested_routes(
            &l,
            "web",
            &req(&["A.Example.org.", "*.x.example.org"], 8080, None),
        )
        .unwrap();
        assert_eq!(ok[0].domain, "a.example.org");
        assert_eq!(ok[1].domain, "*.x.example.org");
        assert_eq!(ok[0].listener, "127.0.0.1:8080");
        for (r, why) in [
            (req(&["a b"], 80, None), "not a host name"),
            (req(&["a..b"], 80, None), "not a host name"),
            (req(&["*.*.b"], 80, None), "not a host name"),
            (req(&["a/b"], 80, None), "not a host name"),
            (req(&[], 80, None), "1 to 64"),
            (req(&["a.b"], 0, None), "port"),
            (req(&["a.b", "A.B"], 80, None), "twice"),
            (req(&["a.b"], 80, Some("127.0.0.1:9")), "not configured"),
            (req(&["a.b"], 80, Some("nonsense")), "ADDR:PORT"),
        ] {
            let e = requested_routes(&l, "web", &r).unwrap_err();
            assert_eq!(e.status(), 400, "{r:?}");
            assert!(e.to_string().contains(why), "{e} / {why}");
        }
        let long = "a".repeat(254);
        assert!(requested_routes(&l, "web", &req(&[&long], 80, None)).is_err());
        assert!(requested_routes(&l, "Bad!", &req(&["a.b"], 80, None)).is_err());
        let off = requested_routes(&[], "web", &req(&["a.b"], 80, None)).unwrap_err();
        assert_eq!(off.status(), 409);
    }

    #[test]
    fn a_pool_route_is_checked_and_held_by_its_program() {
        let l: Vec<SocketAddr> = vec!["127.0.0.1:8080".parse().unwrap()];
        let req = |user: &str, wait_ms| ExposePoolRequest {
            domains: vec!["Hello.example.org".into()],
            user: user.into(),
            wait_ms,
            listener: None,
        };
        let rows = requested_pool_routes(&l, "hello", &req("web", 1000)).unwrap();
        assert_eq!(rows[0].partition, "pool:hello");
        assert_eq!(rows[0].domain, "hello.example.org");
        assert_eq!(
            rows[0]
                .pool
                .as_ref()
                .map(|p| (&p.program[..], &p.user[..], p.wait_ms)),
            Some(("hello", "web", 1000))
        );
        for (program, user, wait, why) in [
            ("he/llo", "web", 0, "program"),
            ("", "web", 0, "program"),
            ("-x", "web", 0, "program"),
            ("hello", "a b", 0, "user"),
            ("hello", &"u".repeat(65), 0, "user"),
            ("hello", "web", MAX_POOL_WAIT_MS + 1, "wait_ms"),
        ] {
            let e = requested_pool_routes(&l, program, &req(user, wait)).unwrap_err();
            assert_eq!(e.status(), 400, "{program} {user} {wait}");
            assert!(e.to_string().contains(why), "{e} / {why}");
        }
    }
}
