//! Commands for a partition another host owns are carried out by that host:
//! the typed request is sent again over HTTP to the endpoint in its member
//! record (TLS, pinned to the certificate it registered, with the cluster's
//! API token) and its answer returned unchanged; a console attach is
//! upgraded on that host and spliced here.

use crate::api::*;
use crate::client::{encode_segment, partition_path, Client, ClientError, ConsoleStream, Endpoint};
use crate::manager::Manager;
use crate::tls::Trust;
use bulkhead_store::{HostState, HostStatus};
use hyper::Method;

/// Which host a request must be carried out by, when not this one.
pub(crate) enum Owner {
    Id(String),
    Name(String),
}

/// The host a request names (`--host`), when it is not this one.
fn named(m: &Manager, host: &Option<String>) -> Option<Owner> {
    host.clone()
        .filter(|h| *h != super::host_name(m))
        .map(Owner::Name)
}

/// The host that must carry out `req`, if another: a partition's owner,
/// or the host `create --host` names. `None`: answer here.
async fn owner(m: &Manager, req: &ApiRequest) -> Result<Option<Owner>, ApiError> {
    use ApiRequest as R;
    let name = match req {
        R::Create(c) => return Ok(named(m, &c.host)),
        R::Show { name }
        | R::Start { name, .. }
        | R::Stop { name, .. }
        | R::Restart { name, .. }
        | R::Destroy { name, .. }
        | R::Exec { name, .. }
        | R::Stats { name }
        | R::Console { name }
        | R::ConsoleLog { name, .. }
        | R::AttachDisk { name, .. }
        | R::DetachDisk { name, .. }
        | R::AttachLu { name, .. }
        | R::Hibernate { name }
        | R::HibernateProgress { name } => name,
        R::Checkpoint(c) => c.name(),
        // Resume is carried out by the host it names, else by the host that
        // got it: that host claims the image.
        R::Resume { opts, .. } => return Ok(named(m, &opts.host)),
        R::RemoteRestart(c) => return crate::remote_restart::api::carried_out_by(m, c).await,
        R::LuMirror(c) => return crate::lu::mirror::carried_out_by(m, c).await,
        _ => return Ok(None),
    };
    // An unknown partition is answered here (404).
    let Some(rec) = m.store().get(name).await? else {
        return Ok(None);
    };
    Ok((rec.host != m.host_id()).then_some(Owner::Id(rec.host)))
}

/// The member record of `owner`.
async fn member(m: &Manager, owner: &Owner) -> Result<HostStatus, ApiError> {
    let members = m.store().hosts().await?;
    match owner {
        Owner::Id(id) => members.into_iter().find(|h| h.record.id == *id).ok_or_else(|| {
            ApiError::Unavailable(format!(
                "the partition's host {id} is not a member of the cluster (never registered); it cannot be reached"
            ))
        }),
        Owner::Name(n) => {
            let names: Vec<_> = members.iter().map(|h| h.record.name.clone()).collect();
            members.into_iter().find(|h| h.record.name == *n).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "no host named {n:?} in the cluster (hosts: {})",
                    names.join(", ")
                ))
            })
        }
    }
}

/// Carries `req` out on the host that owns it; `None` when that is this one.
pub async fn elsewhere(m: &Manager, req: &ApiRequest) -> Result<Option<ApiReply>, ApiError> {
    let Some(owner) = owner(m, req).await? else {
        return Ok(None);
    };
    let host = member(m, &owner).await?;
    // `show` reads the record here when its host cannot add what only it knows.
    if matches!(req, ApiRequest::Show { .. })
        && (host.state == HostState::Lost || host.record.endpoints.is_empty())
    {
        return Ok(None);
    }
    if let ApiRequest::Console { name } = req {
        // The HTTP layer attaches remote consoles itself (`console_elsewhere`);
        // this is a partition that moved between that check and this one.
        return Err(ApiError::Conflict(format!(
            "partition {name:?} moved to host {} while its console was being attached; try again",
            host.record.name
        )));
    }
    match send(m, &host, req).await {
        // An owner that does not answer (cut off, its lease not yet run
        // out) still leaves its record to show.
        Err(ApiError::Unavailable(why)) if matches!(req, ApiRequest::Show { .. }) => {
            tracing::debug!(host = %host.record.name, %why, "show answered from the record");
            Ok(None)
        }
        r => r.map(Some),
    }
}

/// The console of a partition another host runs: an upgraded connection to
/// that host's console route (TLS, pinned, with the token), which the HTTP
/// layer splices to its own client's. `None`: the partition is this host's,
/// or unknown here (answered here).
pub async fn console_elsewhere(m: &Manager, name: &str) -> Result<Option<ConsoleStream>, ApiError> {
    let req = ApiRequest::Console {
        name: name.to_string(),
    };
    let Some(owner) = owner(m, &req).await? else {
        return Ok(None);
    };
    let host = member(m, &owner).await?;
    let (client, addr) = client_for(m, &host)?;
    tracing::debug!(host = %host.record.name, partition = name, "forwarding a console attach");
    client.console(name).await.map(Some).map_err(|e| match e {
        ClientError::Api {
            status,
            code,
            message,
            ..
        } => ApiError::Forwarded {
            status,
            detail: ErrorDetail {
                code: serde_json::from_value(serde_json::Value::String(code))
                    .unwrap_or(ErrorCode::Internal),
                message,
                reason: None,
            },
        },
        e => ApiError::Unavailable(format!(
            "host {} ({addr}) did not answer: {e}",
            host.record.name
        )),
    })
}

/// The client towards a member's API.
fn client_for(m: &Manager, host: &HostStatus) -> Result<(Client, String), ApiError> {
    let who = &host.record.name;
    if host.state == HostState::Lost {
        return Err(ApiError::Unavailable(format!(
            "host {who} ({}) is lost: it has not renewed its membership; its partitions cannot be reached until it is back",
            host.record.id
        )));
    }
    let Some(addr) = host.record.endpoints.first().cloned() else {
        return Err(ApiError::Unavailable(format!(
            "host {who} serves no TCP API ([api] tcp), so commands cannot be forwarded to it"
        )));
    };
    let token = m
        .config()
        .token()
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| {
            ApiError::Unavailable(format!(
                "this host has no API token ([api] token): it cannot forward to host {who}"
            ))
        })?;
    let fp = host.record.tls_fingerprint.clone().ok_or_else(|| {
        ApiError::Unavailable(format!(
            "host {who} registered no TLS certificate fingerprint"
        ))
    })?;
    let tls = Trust::Fingerprint(fp)
        .client_config()
        .map_err(|e| ApiError::Internal(format!("TLS towards host {who}: {e}")))?;
    let endpoint = Endpoint::Tcp {
        addr: addr.clone(),
        token: Some(token),
        tls,
    };
    Ok((Client::new(endpoint), addr))
}

async fn send(m: &Manager, host: &HostStatus, req: &ApiRequest) -> Result<ApiReply, ApiError> {
    let (client, addr) = client_for(m, host)?;
    let (method, path, body) = http_of(req)?;
    tracing::debug!(host = %host.record.name, %method, %path, "forwarding");
    let (status, bytes) = client
        .call_raw(client.raw_request(method, &path, &body))
        .await
        .map_err(|e| {
            ApiError::Unavailable(format!(
                "host {} ({addr}) did not answer: {e}",
                host.record.name
            ))
        })?;
    let json = |b: &[u8]| -> Result<serde_json::Value, ApiError> {
        serde_json::from_slice(b).map_err(|e| {
            ApiError::Internal(format!("host {} answered no JSON: {e}", host.record.name))
        })
    };
    if status.is_success() {
        return Ok(ApiReply::Forwarded(Forwarded {
            status: status.as_u16(),
            body: json(&bytes)?,
        }));
    }
    let err: ErrorBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::Internal(format!(
            "host {} answered {status} without an error body: {e}",
            host.record.name
        ))
    })?;
    Err(ApiError::Forwarded {
        status: status.as_u16(),
        detail: err.error,
    })
}

/// The HTTP form of a typed request (what `server::route` parses back).
pub fn http_of(req: &ApiRequest) -> Result<(Method, String, Vec<u8>), ApiError> {
    use ApiRequest as R;
    let path = |n: &str| partition_path(n).map_err(|e| ApiError::BadRequest(e.to_string()));
    let json = |v: &dyn erased::Json| v.bytes();
    Ok(match req {
        R::Create(c) => (Method::POST, "/v1/partitions".into(), json(c)),
        R::Start { name, opts } => (Method::POST, format!("{}/start", path(name)?), json(opts)),
        R::Stop { name, opts } => (Method::POST, format!("{}/stop", path(name)?), json(opts)),
        R::Restart { name, opts } => (Method::POST, format!("{}/restart", path(name)?), json(opts)),
        R::Destroy { name, force } => (
            Method::DELETE,
            format!("{}?force={force}", path(name)?),
            Vec::new(),
        ),
        R::Exec { name, req } => (Method::POST, format!("{}/exec", path(name)?), json(req)),
        R::Stats { name } => (Method::GET, format!("{}/stats", path(name)?), Vec::new()),
        R::Show { name } => (Method::GET, path(name)?, Vec::new()),
        R::ConsoleLog { name, tail_lines } => (
            Method::GET,
            format!("{}/console?lines={tail_lines}", path(name)?),
            Vec::new(),
        ),
        R::AttachDisk { name, req } => (Method::POST, format!("{}/disks", path(name)?), json(req)),
        R::DetachDisk { name, id } => (
            Method::DELETE,
            format!("{}/disks/{}", path(name)?, encode_segment(id)),
            Vec::new(),
        ),
        R::AttachLu { name, req } => (Method::POST, format!("{}/lus", path(name)?), json(req)),
        R::Resume { name, opts } => (Method::POST, format!("{}/resume", path(name)?), json(opts)),
        R::Hibernate { name } => (
            Method::POST,
            format!("{}/hibernate", path(name)?),
            Vec::new(),
        ),
        R::HibernateProgress { name } => (
            Method::GET,
            format!("{}/hibernate", path(name)?),
            Vec::new(),
        ),
        R::RemoteRestart(c) => return crate::remote_restart::api::http_of(c),
        R::Checkpoint(c) => return c.http_of(),
        R::LuMirror(c) => return crate::lu::mirror::http_of(c),
        other => {
            return Err(ApiError::Internal(format!(
                "{other:?} is answered by every host, never forwarded"
            )))
        }
    })
}

/// Serialising the different body types through one closure.
pub(crate) mod erased {
    pub trait Json {
        fn bytes(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn bytes(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("API types serialise")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote_restart::api::RemoteRestartCommand as RR;
    use crate::server::route;

    /// Every forwarded request is parsed back by the router into itself.
    #[test]
    fn requests_survive_the_round_trip() {
        let reqs = [
            ApiRequest::Create(CreatePartition {
                name: "p".into(),
                vcpus: 2,
                memory_mib: 256,
                cpu_percent: 50,
                image: None,
                cmdline: Some("quiet".into()),
                disks: vec![],
                net: true,
                restart_policy: Default::default(),
                hotplug_slots: 1,
                cpu_model: None,
                host: Some("b".into()),
                hibernate_idle_secs: Some(600),
                checkpoint_every_ms: None,
                client: Some("tenant".into()),
                lus: vec![],
                devices: Default::default(),
                ha: bulkhead_store::HaPolicy::Reboot,
            }),
            ApiRequest::Start {
                name: "p".into(),
                opts: StartOptions { wait: true },
            },
            ApiRequest::Hibernate { name: "p".into() },
            ApiRequest::Resume {
                name: "p".into(),
                opts: ResumeOptions {
                    host: Some("b".into()),
                    promote_mirror: true,
                },
            },
            ApiRequest::HibernateProgress { name: "p".into() },
            ApiRequest::Stop {
                name: "p".into(),
                opts: StopOptions {
                    force: true,
                    timeout_secs: Some(7),
                },
            },
            ApiRequest::Restart {
                name: "p".into(),
                opts: StartOptions::default(),
            },
            ApiRequest::Destroy {
                name: "p".into(),
                force: true,
            },
            ApiRequest::Destroy {
                name: "p".into(),
                force: false,
            },
            ApiRequest::Exec {
                name: "p".into(),
                req: ExecRequest {
                    argv: vec!["echo".into(), "a b".into()],
                    timeout_secs: Some(9),
                },
            },
            ApiRequest::Stats { name: "p".into() },
            ApiRequest::Show { name: "p".into() },
            ApiRequest::ConsoleLog {
                name: "p".into(),
                tail_lines: 12,
            },
            ApiRequest::AttachDisk {
                name: "p".into(),
                req: AttachDisk {
                    path: "/d/x.raw".into(),
                    format: Some("raw".into()),
                    readonly: true,
                    id: Some("hot1".into()),
                },
            },
            ApiRequest::DetachDisk {
                name: "p".into(),
                id: "hot1".into(),
            },
            ApiRequest::RemoteRestart(RR::Start(crate::remote_restart::api::StartRemoteRestart {
                partition: "p".into(),
                target: "b".into(),
                token: Some("op-1".into()),
                detail: 2,
                capabilities: 5,
                timeout_secs: Some(30),
                promote_mirror: true,
            })),
            ApiRequest::RemoteRestart(RR::Stop {
                token: "op-1".into(),
                req: crate::remote_restart::api::StopRemoteRestart {
                    state: crate::remote_restart::StopState::Failed,
                },
            }),
            ApiRequest::RemoteRestart(RR::StopCollect {
                token: "op-1".into(),
            }),
            ApiRequest::RemoteRestart(RR::Show {
                token: "op-1".into(),
            }),
            ApiRequest::RemoteRestart(RR::List),
        ];
        for r in reqs {
            let (method, path_query, body) = http_of(&r).unwrap();
            let (path, query) = path_query.split_once('?').unwrap_or((&path_query, ""));
            assert_eq!(route(&method, path, query, &body).unwrap(), r);
        }
    }
}
