//! Host loss and fencing on a real etcd (issue 12): a claim only once the
//! lost host's lease is gone; the claim's revision is a fencing token that
//! refuses every record write and LU lock of a stale holder; one holder of
//! a role at a time, taken over once the holder stops renewing.

use bulkhead_store::{conformance, LockMode, Store, StoreError};
use std::time::{Duration, Instant};

mod common;
use common::{fresh_prefix, shared, store_at};

const A: &str = "3f2c0a7e-0000-4000-8000-0000000000a1";
const B: &str = "3f2c0a7e-0000-4000-8000-0000000000b2";

async fn eventually(what: &str, deadline: Duration, mut f: impl AsyncFnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !f().await {
        assert!(Instant::now() < end, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_token_is_refused() {
    let prefix = fresh_prefix("fence");
    let (sa, sb) = (
        store_at(&shared().endpoints(), &prefix).await,
        store_at(&shared().endpoints(), &prefix).await,
    );
    sa.register_host(&conformance::host(A, "a"), Duration::from_secs(1))
        .await
        .unwrap();
    sb.register_host(&conformance::host(B, "b"), Duration::from_secs(30))
        .await
        .unwrap();
    sa.lu_insert(&conformance::lu("vol", "p")).await.unwrap();
    let mut rec = conformance::record("p");
    rec.host = A.into();
    let rec = sa.insert(&rec, "made").await.unwrap();
    let lock = |host: &str| conformance::lu_lock_of("vol", host, "p", LockMode::Rw);
    sa.lu_lock_fenced(&lock(A), "p", None).await.unwrap();

    // While A holds its lease, nobody claims its partition.
    let e = sb.claim("p", A, B, rec.revision, None).await.unwrap_err();
    assert!(matches!(e, StoreError::NotClaimed { .. }), "{e}");

    // A stops renewing: its lease lapses, then the claim succeeds once.
    eventually("a lost", Duration::from_secs(10), async || {
        sb.hosts()
            .await
            .unwrap()
            .iter()
            .any(|h| h.record.id == A && h.state == bulkhead_store::HostState::Lost)
    })
    .await;
    let token = sb.claim("p", A, B, rec.revision, None).await.unwrap();
    assert!(token > 0);
    let again = sb.claim("p", A, B, rec.revision, None).await.unwrap_err();
    assert!(matches!(again, StoreError::NotClaimed { .. }), "{again}");

    // The stale holder (no token, or the record it read before): refused,
    // for a record write and for an LU lock, naming the claim.
    let mut stale = rec.clone();
    stale.state = bulkhead_store::PartitionState::Failed;
    match sa.update(&stale, "stale write").await {
        Err(StoreError::Fenced {
            held,
            current,
            holder,
            ..
        }) => assert_eq!((held, current, holder.as_str()), (0, token, B)),
        other => panic!("a stale write went through: {other:?}"),
    }
    let e = sa.lu_lock_fenced(&lock(A), "p", None).await.unwrap_err();
    assert!(matches!(e, StoreError::Fenced { .. }), "{e}");
    assert_eq!(sa.get("p").await.unwrap().unwrap().revision, rec.revision);

    // The claimer writes with its token, and attaches with it.
    let mut moved = rec.clone();
    moved.host = B.into();
    moved.fence = Some(token);
    let moved = sb.update(&moved, "claimed").await.unwrap();
    sb.lu_lock_fenced(&lock(B), "p", Some(token)).await.unwrap();
    let locks = sb.lu_locks(Some("vol")).await.unwrap();
    assert_eq!(
        locks.iter().map(|l| l.host.as_str()).collect::<Vec<_>>(),
        [B]
    );

    // An older token than the current one is refused too.
    let token2 = sb
        .claim("p", A, B, moved.revision, Some(token))
        .await
        .unwrap();
    let e = sb.update(&moved, "old token").await.unwrap_err();
    assert!(
        matches!(e, StoreError::Fenced { held, current, .. } if held == token && current == token2),
        "{e}"
    );
    // A delete removes the claim: a new partition of that name is unclaimed.
    let cur = sb.get("p").await.unwrap().unwrap();
    sb.delete("p", cur.revision).await.unwrap();
    sb.lu_unlock("p", None).await.unwrap();
    sb.insert(&conformance::record("p"), "made again")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_of_a_role_and_a_takeover_after_its_lease() {
    let prefix = fresh_prefix("role");
    let (sa, sb) = (
        store_at(&shared().endpoints(), &prefix).await,
        store_at(&shared().endpoints(), &prefix).await,
    );
    let ttl = Duration::from_secs(1);
    assert!(sa.campaign("orchestrator", A, ttl).await.unwrap());
    assert!(!sb.campaign("orchestrator", B, ttl).await.unwrap());
    // Renewals keep it.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(sa.campaign("orchestrator", A, ttl).await.unwrap());
        assert!(!sb.campaign("orchestrator", B, ttl).await.unwrap());
    }
    // A stops: B takes over within about one lease.
    let t0 = Instant::now();
    eventually("b takes over", Duration::from_secs(5), async || {
        sb.campaign("orchestrator", B, ttl).await.unwrap()
    })
    .await;
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    assert!(!sa.campaign("orchestrator", A, ttl).await.unwrap());
}
