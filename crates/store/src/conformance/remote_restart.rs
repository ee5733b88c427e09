//! Remote-restart operations (issue 12): one record per partition, taken and
//! moved on with a compare-and-swap; of racing operations on one partition
//! exactly one holds it.

use crate::{now_ms, OperationRecord, OperationState, Store, StoreError};
use std::future::Future;
use std::sync::Arc;

pub async fn run_all<F, Fut>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    operations_round_trip(&*make().await).await;
    concurrent_operations_one_holds(make().await).await;
}

/// A new operation on `partition` under `token`.
pub fn operation(partition: &str, token: &str) -> OperationRecord {
    let now = now_ms();
    OperationRecord {
        token: token.to_string(),
        partition: partition.to_string(),
        source: "host-a".into(),
        target: "host-b".into(),
        state: OperationState::Starting,
        locks: vec!["hibernation:clients/x/hibernation/p".into()],
        created: vec![],
        detail: 1,
        capabilities: 0b11,
        started_at: now,
        deadline: now + 60_000,
        updated_at: now,
        collected: false,
        message: None,
        revision: 0,
    }
}

fn is_conflict(e: &StoreError, name: &str, found: u64) -> bool {
    matches!(e, StoreError::Conflict { name: n, found: f, .. } if n == name && *f == found)
}

pub async fn operations_round_trip(s: &dyn Store) {
    assert!(s.operation_list().await.unwrap().is_empty());
    assert!(s.operation_get("p").await.unwrap().is_none());
    let op = s.operation_put(&operation("p", "tok-1")).await.unwrap();
    assert_eq!(op.revision, 1);
    s.operation_put(&operation("a/b", "tok-2")).await.unwrap();
    // A second operation on p from revision 0 loses and changes nothing.
    let e = s.operation_put(&operation("p", "tok-3")).await.unwrap_err();
    assert!(is_conflict(&e, "operations/p", 1), "{e:?}");
    let mut next = op.clone();
    next.state = OperationState::Restored;
    next.created = vec!["tap:bh-p".into()];
    let next = s.operation_put(&next).await.unwrap();
    assert_eq!(next.revision, 2);
    // A stale writer (revision 1) is refused.
    let e = s.operation_put(&op).await.unwrap_err();
    assert!(is_conflict(&e, "operations/p", 2), "{e:?}");
    let got = s.operation_get("p").await.unwrap().unwrap();
    assert_eq!(got, next);
    assert_eq!(got.token, "tok-1");
    let all: Vec<String> = s
        .operation_list()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.partition)
        .collect();
    assert_eq!(all, ["a/b", "p"]);
    // An ended operation is replaced by the next one, against its revision.
    let mut ended = got;
    ended.state = OperationState::Failed;
    let ended = s.operation_put(&ended).await.unwrap();
    let mut again = operation("p", "tok-4");
    again.revision = ended.revision;
    let again = s.operation_put(&again).await.unwrap();
    assert_eq!((again.revision, again.token.as_str()), (4, "tok-4"));
}

pub async fn concurrent_operations_one_holds(s: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.operation_put(&operation("race", &format!("t{i}"))).await })
        })
        .collect();
    let mut won = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        if t.await.unwrap().is_ok() {
            won.push(i);
        }
    }
    assert_eq!(won.len(), 1, "exactly one operation holds it: {won:?}");
    let op = s.operation_get("race").await.unwrap().unwrap();
    assert_eq!(op.token, format!("t{}", won[0]));
}
