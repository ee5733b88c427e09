//! Carries out the allocator's `Action`s through the manager's typed API, as
//! an administrator would: a pool partition is an ordinary partition.
//!
//! Each action runs in its own task, serialised per primary id, and reports
//! its outcome back to the allocator (`partition_ready`, `partition_failed`,
//! `cleanup_done`), whose new actions are carried out in turn.

use super::template;
use super::types::CreatePool;
use crate::api::{ApiError, ApiReply, ApiRequest, CreatePartition, ExecRequest, StartOptions};
use crate::manager::Manager;
use bulkhead_pool::{Action, AllocError};
use bulkhead_pool_proto::SessionId;
use bulkhead_store::{PartitionState, TemplateLink};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// How long a started program may take to answer on its port.
const APP_READY: Duration = Duration::from_secs(90);
/// How long one connection attempt of the readiness probe may take.
const PROBE: Duration = Duration::from_secs(1);
/// Between two probes of a program not answering yet.
const PROBE_PAUSE: Duration = Duration::from_millis(200);
/// A pool's cleanup command, at most.
const CLEANUP_TIMEOUT_SECS: u64 = 120;

/// A boxed, `Send` step: the manager's `handle` reaches this module and this
/// module reaches `handle`, so the recursion goes through a named type.
type Step<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Carries out `actions` in the background.
pub(crate) fn carry_out(m: &Arc<Manager>, actions: Vec<Action>) {
    for a in actions {
        tokio::spawn(act(m.clone(), a));
    }
}

/// Carries out `actions`, waiting for them; returns the partitions destroyed.
pub(super) async fn carry_out_now(m: &Arc<Manager>, actions: Vec<Action>) -> Vec<String> {
    let tasks: Vec<_> = actions
        .into_iter()
        .map(|a| tokio::spawn(act(m.clone(), a)))
        .collect();
    let mut gone = Vec::new();
    for t in tasks {
        if let Ok(Some(p)) = t.await {
            gone.push(p);
        }
    }
    gone
}

/// One action; `Some(partition)` when it destroyed one.
fn act(m: Arc<Manager>, a: Action) -> Step<Option<String>> {
    Box::pin(async move {
        match a {
            Action::Boot { partition, .. } => {
                start(&m, &partition, false).await;
                None
            }
            Action::Recycle { partition, .. } => {
                start(&m, &partition, true).await;
                None
            }
            Action::Destroy { partition } => {
                let lock = m.pools.lock_of(&partition);
                let _g = lock.lock().await;
                match destroy(&m, &partition).await {
                    Ok(()) => Some(partition),
                    Err(e) => {
                        tracing::warn!(%partition, error = %e, "destroying pool partition");
                        None
                    }
                }
            }
            Action::Cleanup { partition, session } => {
                cleanup(&m, &partition, session).await;
                None
            }
            // The answers to users go to the gateway's connections.
            Action::Answer { request, result } => {
                m.pools.waiting.answer(request, result);
                None
            }
            Action::Confirmed { session } => {
                m.pools.waiting.end(session, None);
                None
            }
            Action::EndSession { session, code } => {
                m.pools.waiting.end(session, Some(code));
                None
            }
        }
    })
}

/// The statement of the pool partition `id` belongs to; `None` once the pool is gone.
fn statement_of(m: &Manager, id: &str) -> Option<CreatePool> {
    let pool = m.pools.alloc.lock().unwrap().partition(id)?.pool.clone();
    m.pools.statement(&pool)
}

/// Starts a partition of a pool (fresh: destroyed first) and reports whether
/// its program answers.
async fn start(m: &Arc<Manager>, id: &str, fresh: bool) {
    let lock = m.pools.lock_of(id);
    let _g = lock.lock().await;
    let Some(statement) = statement_of(m, id) else {
        return; // the pool went meanwhile
    };
    let outcome = prepare(m, &statement, id, fresh).await;
    let reported = {
        let mut alloc = m.pools.alloc.lock().unwrap();
        match &outcome {
            Ok(()) => alloc.partition_ready(id),
            Err(e) => {
                tracing::warn!(partition = %id, error = %e, "pool partition did not start");
                alloc.partition_failed(id)
            }
        }
    };
    match reported {
        Ok(actions) => carry_out(m, actions),
        // Removed from its pool while starting: nothing may keep it.
        Err(AllocError::UnknownPartition(_)) => {
            if let Err(e) = destroy(m, id).await {
                tracing::warn!(partition = %id, error = %e, "destroying orphaned pool partition");
            }
        }
        Err(e) => tracing::warn!(partition = %id, error = %e, "pool partition report"),
    }
}

/// Creates (unless it exists), starts (unless it runs) and starts the
/// program in (unless it answers) partition `id`; Ok once it answers. A new
/// partition is restored from the pool's template when it has one (the
/// program already runs in it), booted cold otherwise.
fn prepare(m: &Arc<Manager>, c: &CreatePool, id: &str, fresh: bool) -> Step<Result<(), ApiError>> {
    let (m, c, id) = (m.clone(), c.clone(), id.to_string());
    Box::pin(async move {
        if fresh {
            destroy(&m, &id).await?;
        }
        let rec = match m.store().get(&id).await? {
            // Already there: a restarted daemon re-adopting its pool. A session
            // may have used it since its last cleanup, so nothing of it may reach
            // the next user: a pool of fresh partitions gets a new one, any
            // other runs its cleanup first (a failed cleanup: a new one).
            Some(r) if r.state == PartitionState::Running => {
                if super::spec_of(&c).recycle_after == Some(1) || !adopt_clean(&m, &c, &id).await {
                    return prepare(&m, &c, &id, true).await;
                }
                r
            }
            Some(r) => r,
            None => {
                let link = template::ensure(&m, &c)
                    .await
                    .then(|| TemplateLink::Clone(c.name.clone()));
                m.create_linked(partition_of(&c, &id), link).await?
            }
        };
        if rec.state != PartitionState::Running {
            let started = m
                .handle(ApiRequest::Start {
                    name: id.clone(),
                    opts: StartOptions { wait: true },
                })
                .await;
            match started {
                Ok(_) => {}
                // A template that no longer restores: built again for the
                // next partition; this one boots cold now.
                Err(ApiError::Engine(e)) if rec.template.is_some() => {
                    tracing::warn!(partition = %id, error = %e, "restoring from the pool's template failed; booting cold");
                    m.discard_template(&c.name);
                    destroy(&m, &id).await?;
                    m.create_linked(partition_of(&c, &id), None).await?;
                    m.handle(ApiRequest::Start {
                        name: id.clone(),
                        opts: StartOptions { wait: true },
                    })
                    .await?;
                }
                Err(e) => return Err(e),
            }
        }
        start_program(&m, &c, &id).await
    })
}

/// Starts the pool's program in running partition `id` unless it already
/// answers on its port; Ok once it answers.
pub(super) async fn start_program(
    m: &Arc<Manager>,
    c: &CreatePool,
    id: &str,
) -> Result<(), ApiError> {
    let rec = m
        .store()
        .get(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(id.to_string()))?;
    let ip = rec
        .net
        .as_ref()
        .and_then(|n| crate::net::addr_of(&n.ip))
        .ok_or_else(|| ApiError::Internal(format!("{id} has no VLAN address")))?;
    let addr = format!("{ip}:{}", c.port);
    if answers(&addr).await {
        return Ok(()); // adopted or restored: its program already serves
    }
    let run = format!(
        "setsid /bin/sh -c {} </dev/null >/tmp/bulkhead-pool-app.log 2>&1 &",
        shell_quote(&c.app)
    );
    exec(m, id, &run, 30).await.and_then(|(code, err)| {
        if code == 0 {
            Ok(())
        } else {
            Err(ApiError::Engine(format!(
                "starting the program exited {code}: {err}"
            )))
        }
    })?;
    let deadline = tokio::time::Instant::now() + APP_READY;
    while !answers(&addr).await {
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::Engine(format!(
                "the program of {id} did not answer on {addr} within {APP_READY:?}"
            )));
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
    Ok(())
}

/// Runs the pool's cleanup in an adopted partition; true when it exited 0
/// (or the pool has none).
async fn adopt_clean(m: &Arc<Manager>, c: &CreatePool, id: &str) -> bool {
    super::session::closed(m, id).await; // its session ended with the old daemon
    let Some(cmd) = &c.cleanup else { return true };
    match exec(m, id, cmd, CLEANUP_TIMEOUT_SECS).await {
        Ok((0, _)) => true,
        other => {
            tracing::warn!(partition = %id, outcome = ?other, "cleanup of an adopted pool partition failed; replacing it");
            false
        }
    }
}

/// The partition a pool's statement makes under `id`: on the internal VLAN.
pub(super) fn partition_of(c: &CreatePool, id: &str) -> CreatePartition {
    CreatePartition {
        image: c.image.clone(),
        net: true,
        ..CreatePartition::new(id, c.vcpus, c.memory_mib, c.cpu_percent)
    }
}

/// Whether something accepts a TCP connection at `addr` (the program answers).
async fn answers(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(PROBE, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Runs `script` with `/bin/sh -c` through the agent: (exit code, stderr).
fn exec(
    m: &Arc<Manager>,
    id: &str,
    script: &str,
    timeout_secs: u64,
) -> Step<Result<(i32, String), ApiError>> {
    let (m, req) = (
        m.clone(),
        ApiRequest::Exec {
            name: id.to_string(),
            req: ExecRequest {
                argv: vec!["/bin/sh".into(), "-c".into(), script.to_string()],
                timeout_secs: Some(timeout_secs),
            },
        },
    );
    Box::pin(async move {
        match m.handle(req).await? {
            ApiReply::Exec(r) => Ok((r.code, r.stderr)),
            other => Err(ApiError::Internal(format!("exec answered {other:?}"))),
        }
    })
}

/// Destroys partition `id`; one that does not exist is already gone.
pub(super) fn destroy(m: &Arc<Manager>, id: &str) -> Step<Result<(), ApiError>> {
    let (m, id) = (m.clone(), id.to_string());
    Box::pin(async move {
        match m
            .handle(ApiRequest::Destroy {
                name: id,
                force: true,
            })
            .await
        {
            Ok(_) | Err(ApiError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    })
}

/// Runs the pool's cleanup after a session and reports its outcome.
async fn cleanup(m: &Arc<Manager>, id: &str, session: SessionId) {
    let lock = m.pools.lock_of(id);
    let _g = lock.lock().await;
    let command = statement_of(m, id).and_then(|c| c.cleanup);
    let ok = match command {
        None => true,
        Some(cmd) => match exec(m, id, &cmd, CLEANUP_TIMEOUT_SECS).await {
            Ok((0, _)) => true,
            Ok((code, err)) => {
                tracing::warn!(partition = %id, code, %err, "pool cleanup failed");
                false
            }
            Err(e) => {
                tracing::warn!(partition = %id, error = %e, "pool cleanup failed");
                false
            }
        },
    };
    super::session::closed(m, id).await;
    let done = m.pools.alloc.lock().unwrap().cleanup_done(session, ok);
    match done {
        Ok(actions) => carry_out(m, actions),
        Err(e) => tracing::warn!(partition = %id, error = %e, "pool cleanup report"),
    }
}

/// How often idle pool partitions are checked for having died.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Replaces idle pool partitions that stopped running (QEMU died, or an
/// administrator stopped one): a session or busy partition notices by itself
/// (its program's connection ends), an idle one only here.
pub(super) fn watch(m: &Arc<Manager>) {
    let weak = Arc::downgrade(m);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(WATCH_EVERY);
        loop {
            tick.tick().await;
            let Some(m) = weak.upgrade() else { return };
            let idle: Vec<String> = {
                let alloc = m.pools.alloc.lock().unwrap();
                let pools: Vec<String> = alloc.pools().map(|p| p.name.clone()).collect();
                pools
                    .iter()
                    .flat_map(|p| alloc.partitions_of(p))
                    .filter(|p| p.state == bulkhead_pool::PartitionState::Idle)
                    .map(|p| p.primary_id.clone())
                    .collect()
            };
            for id in idle {
                // Store errors say nothing about the partition: only a record
                // read as not running (or gone) counts.
                match m.store().get(&id).await {
                    Ok(Some(r)) if r.state == PartitionState::Running => continue,
                    Err(_) => continue,
                    _ => {}
                }
                let still_idle = m
                    .pools
                    .alloc
                    .lock()
                    .unwrap()
                    .partition(&id)
                    .map(|p| p.state)
                    == Some(bulkhead_pool::PartitionState::Idle);
                if still_idle {
                    tracing::warn!(partition = %id, "idle pool partition is not running; replacing it");
                    let actions = m.pools.alloc.lock().unwrap().partition_failed(&id);
                    carry_out(&m, actions.unwrap_or_default());
                }
            }
        }
    });
}

/// `s` as one single-quoted shell word.
pub(super) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quoted_words_survive_the_shell() {
        for s in ["plain", "it's", "a 'b' \"c\" $HOME `x` \\n", ""] {
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(s)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
        }
    }
}
