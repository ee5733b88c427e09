//! Service pools' documents (issue 17): revisions, conflicts, kinds apart.

use crate::{PoolKind, Store, StoreError};
use std::future::Future;
use std::sync::Arc;

pub async fn run_all<F, Fut>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    pool_docs_round_trip(&*make().await).await;
    stale_pool_writes_change_nothing(&*make().await).await;
    concurrent_pool_inserts_one_wins(make().await).await;
}

fn is_conflict(e: &StoreError, name: &str, found: u64) -> bool {
    matches!(e, StoreError::Conflict { name: n, found: f, .. } if n == name && *f == found)
}

pub async fn pool_docs_round_trip(s: &dyn Store) {
    assert!(s.pool_doc_list(PoolKind::Pool).await.unwrap().is_empty());
    assert_eq!(
        s.pool_doc_put(PoolKind::Pool, "web", 0, "{\"a\":1}")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.pool_doc_put(PoolKind::Pool, "a/b", 0, "x").await.unwrap(),
        1
    );
    // The same name in the other kind is another document.
    assert_eq!(
        s.pool_doc_put(PoolKind::User, "web", 0, "u").await.unwrap(),
        1
    );
    assert_eq!(
        s.pool_doc_put(PoolKind::Pool, "web", 1, "{\"a\":2}")
            .await
            .unwrap(),
        2
    );
    let d = s
        .pool_doc_get(PoolKind::Pool, "web")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (d.name.as_str(), d.revision, d.body.as_str()),
        ("web", 2, "{\"a\":2}")
    );
    let names: Vec<String> = s
        .pool_doc_list(PoolKind::Pool)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["a/b", "web"]);
    let users = s.pool_doc_list(PoolKind::User).await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].body, "u");
    s.pool_doc_delete(PoolKind::Pool, "web", 2).await.unwrap();
    assert!(s
        .pool_doc_get(PoolKind::Pool, "web")
        .await
        .unwrap()
        .is_none());
    assert!(s
        .pool_doc_get(PoolKind::User, "web")
        .await
        .unwrap()
        .is_some());
    // Deleted, it can be made again from revision 0.
    assert_eq!(
        s.pool_doc_put(PoolKind::Pool, "web", 0, "again")
            .await
            .unwrap(),
        1
    );
}

pub async fn stale_pool_writes_change_nothing(s: &dyn Store) {
    s.pool_doc_put(PoolKind::User, "alice", 0, "v1")
        .await
        .unwrap();
    let e = s
        .pool_doc_put(PoolKind::User, "alice", 0, "dup")
        .await
        .unwrap_err();
    assert!(is_conflict(&e, "pool-users/alice", 1), "{e:?}");
    let e = s
        .pool_doc_put(PoolKind::User, "alice", 7, "stale")
        .await
        .unwrap_err();
    assert!(is_conflict(&e, "pool-users/alice", 1), "{e:?}");
    let e = s
        .pool_doc_delete(PoolKind::User, "alice", 2)
        .await
        .unwrap_err();
    assert!(is_conflict(&e, "pool-users/alice", 1), "{e:?}");
    let e = s
        .pool_doc_delete(PoolKind::User, "bob", 1)
        .await
        .unwrap_err();
    assert!(is_conflict(&e, "pool-users/bob", 0), "{e:?}");
    let e = s
        .pool_doc_put(PoolKind::User, "", 0, "x")
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid { .. }), "{e:?}");
    let d = s
        .pool_doc_get(PoolKind::User, "alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((d.revision, d.body.as_str()), (1, "v1"));
    assert!(s
        .pool_doc_get(PoolKind::User, "bob")
        .await
        .unwrap()
        .is_none());
}

pub async fn concurrent_pool_inserts_one_wins(s: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.pool_doc_put(PoolKind::Pool, "race", 0, &format!("w{i}"))
                    .await
            })
        })
        .collect();
    let mut won = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        if t.await.unwrap().is_ok() {
            won.push(i);
        }
    }
    assert_eq!(won.len(), 1, "exactly one insert wins: {won:?}");
    let d = s
        .pool_doc_get(PoolKind::Pool, "race")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.body, format!("w{}", won[0]));
}
