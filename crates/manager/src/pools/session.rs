//! The partition's agent knows the pool session it serves (issue 17):
//! told when a session is allocated, before the program gets the session
//! line, and cleared once the session's cleanup has run. Only the manager,
//! over the agent's port, sets it; `bulkhead-guest session` reads it.

use crate::manager::Manager;
use bulkhead_agent::proto::PoolSession;
use bulkhead_pool::Allocation;

/// Tells `partition`'s agent about `session` (None: none is open).
async fn set(m: &Manager, partition: &str, session: Option<PoolSession>) {
    let Some(p) = m.running(partition) else {
        return; // stopped or replaced: a fresh agent knows no session
    };
    let open = session.is_some();
    if let Err(e) = p.agent().set_session(session).await {
        tracing::warn!(%partition, open, error = %e, "telling the agent the pool session");
    }
}

/// The session was allocated on `a.partition`.
pub(super) async fn opened(m: &Manager, a: &Allocation) {
    let s = PoolSession {
        session: a.session.to_string(),
        program: a.program.clone(),
        alternate_id: a.alternate_id.clone(),
    };
    set(m, &a.partition, Some(s)).await;
}

/// The session on `partition` is over and its cleanup ran (or a restarted
/// daemon adopts the partition): the agent forgets it.
pub(super) async fn closed(m: &Manager, partition: &str) {
    set(m, partition, None).await;
}
