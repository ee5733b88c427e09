//! One connection of a pool route on the shared port (docs/portshare.md):
//! an allocation of the route's program under the route's user, the
//! connection's bytes relayed to the allocated partition's program after the
//! session line, as the gateway does, and a deallocation with cleanup when
//! either side closes. No partition idle within the route's wait: 503.

use super::driver::carry_out;
use super::gateway;
use crate::expose::http_error;
use crate::manager::Manager;
use bulkhead_pool::{Allocation, Request};
use bulkhead_pool_proto::RefuseReason;
use bulkhead_portshare::proxy_protocol;
use bulkhead_store::PoolTarget;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

/// The proxy writes its PROXY header at once; a peer that does not is no
/// proxy of ours.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest PROXY header (v2 with every TLV the proxy could add).
const MAX_HEADER: usize = 16 + 65535;

/// Serves one connection the shared port routed to a pool route.
pub(crate) async fn serve(m: Arc<Manager>, mut client: TcpStream, t: PoolTarget) {
    let _ = client.set_nodelay(true);
    let Some((peer, early)) = proxy_header(&mut client).await else {
        return;
    };
    let asked = Instant::now();
    let alloc = match allocate(&m, &t).await {
        Ok(a) => a,
        Err(why) => {
            info!(program = %t.program, user = %t.user, ?peer, why, "pool route: 503");
            return http_error(&mut client, 503, why).await;
        }
    };
    let session = alloc.session;
    let ended = m.pools.waiting.listen(session);
    let mut prog = match gateway::program(&m, &alloc).await {
        Ok((pool, p)) => {
            m.pools.metrics.allocated(&pool, &alloc.program, asked);
            p
        }
        Err(e) => {
            warn!(partition = %alloc.partition, error = %e, "pool route cannot reach the program");
            let actions = m
                .pools
                .alloc
                .lock()
                .unwrap()
                .partition_failed(&alloc.partition);
            carry_out(&m, actions.unwrap_or_default());
            return http_error(&mut client, 502, "the program could not be reached").await;
        }
    };
    debug!(program = %t.program, partition = %alloc.partition, session = session.0, ?peer, "pool route session");
    let relayed = async {
        prog.write_all(&early).await?;
        tokio::io::copy_bidirectional(&mut client, &mut prog).await
    };
    tokio::select! {
        _ = relayed => {}
        // The allocator ended it (pool destroyed, partition died): nothing to undo.
        _ = ended => return,
    }
    // The connection is over (either side closed, as HTTP does after a
    // response): the session ends and the pool's cleanup runs.
    let actions = m.pools.alloc.lock().unwrap().deallocate(session, true);
    carry_out(&m, actions.unwrap_or_default());
}

/// Reads the proxy's PROXY header: the client's address, and the bytes
/// read past the header (the client's first bytes).
async fn proxy_header(s: &mut TcpStream) -> Option<(Option<std::net::SocketAddr>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(256);
    let read = async {
        loop {
            match proxy_protocol::decode(&buf) {
                Ok(Some((h, n))) => return Some((h.addrs.map(|(src, _)| src), buf[n..].to_vec())),
                Ok(None) if buf.len() < MAX_HEADER => {}
                _ => return None,
            }
            let mut chunk = [0u8; 1024];
            match s.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    };
    let got = tokio::time::timeout(HEADER_TIMEOUT, read)
        .await
        .ok()
        .flatten();
    if got.is_none() {
        debug!("pool route: a connection without the proxy's PROXY header; closed");
    }
    got
}

/// An idle partition of a pool serving `t.program`, waited for at most
/// `t.wait_ms`, or why not (the 503's body).
async fn allocate(m: &Arc<Manager>, t: &PoolTarget) -> Result<Allocation, &'static str> {
    let users = m.pool_user_table(&t.user).await.map_err(|e| {
        warn!(error = %e, "pool route reading pool users");
        "the pool users cannot be read"
    })?;
    let user = users
        .get(&t.user)
        .filter(|u| u.programs.contains(&t.program))
        .ok_or("the route's user may no longer run its program")?;
    let wait = Duration::from_millis(t.wait_ms.into());
    let (_, mut rx) = gateway::enqueue(
        m,
        Request {
            program: t.program.clone(),
            user: user.name.clone(),
            max_sessions: user.max_sessions,
            wait,
        },
    );
    let mut deadline = tokio::time::Instant::now() + wait;
    let answer = loop {
        tokio::select! {
            r = &mut rx => break r,
            _ = tokio::time::sleep_until(deadline) => deadline = gateway::tick(m),
        }
    };
    match answer {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(RefuseReason::PoolExhausted)) => Err("no partition of the pool became idle in time"),
        Ok(Err(RefuseReason::UserLimit)) => Err("the route's sessions are at their limit"),
        Ok(Err(RefuseReason::UnknownProgram)) => Err("no pool serves the program"),
        Ok(Err(r)) => Err(r.as_str()),
        Err(_) => Err("the gateway failed"),
    }
}
