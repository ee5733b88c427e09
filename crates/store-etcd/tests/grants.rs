//! What only the etcd backend has for grant tables, against a real
//! 3-member cluster: commits racing from clients on different members, etcd's
//! limits on one Txn, pruning a log longer than one page and one Txn, and
//! foreign values under the grant keys. The shared behaviour is in the
//! conformance suite (`tests/etcd.rs`).

use bulkhead_store::{Store, StoreError};
use bulkhead_store_etcd::EtcdStore;
use std::sync::Arc;

mod common;
use common::{fresh_prefix, shared, store_at};

const HOST: &str = "3f2c0a7e-0000-4000-8000-0000000000c1";

fn lines(n: usize, at_ms: impl Fn(usize) -> u64) -> Vec<(u64, String)> {
    (0..n)
        .map(|i| (at_ms(i), format!("{{\"n\":{i}}}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_racing_from_every_member_one_wins() {
    let cluster = shared();
    let prefix = fresh_prefix("race");
    let mut clients: Vec<Arc<EtcdStore>> = Vec::new();
    for i in 0..3 {
        // Each client talks to one member only.
        clients.push(Arc::new(store_at(&[cluster.endpoint(i)], &prefix).await));
    }
    let mut expected = 0;
    for round in 0..4 {
        let tasks: Vec<_> = (0..9)
            .map(|i| {
                let s = clients[i % 3].clone();
                tokio::spawn(async move {
                    let body = format!("round {round} writer {i}");
                    let r = s
                        .commit_grant_table(HOST, expected, body.as_bytes(), &lines(3, |_| 1))
                        .await;
                    (body, r)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                (body, Ok(rev)) => winners.push((body, rev)),
                (_, Err(StoreError::Conflict { name, .. })) => {
                    assert_eq!(name, format!("grants/{HOST}"))
                }
                (_, Err(e)) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let (body, rev) = winners.pop().unwrap();
        // Every member agrees on the winner's table and on one log.
        for c in &clients {
            let t = c.grant_table(HOST).await.unwrap().unwrap();
            assert_eq!((t.body, t.revision), (body.clone().into_bytes(), rev));
            let seqs: Vec<_> = c
                .grant_log(HOST, 0, 1000)
                .await
                .unwrap()
                .into_iter()
                .map(|l| l.seq)
                .collect();
            assert_eq!(seqs, (1..=3 * (round + 1)).collect::<Vec<u64>>());
        }
        expected = rev;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_past_etcds_txn_limit_is_invalid_and_writes_nothing() {
    let s = store_at(&shared().endpoints(), &fresh_prefix("limit")).await;
    // etcd's default --max-txn-ops is 128: the table, the counter and 126 lines.
    let e = s
        .commit_grant_table(HOST, 0, b"t", &lines(127, |_| 1))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::Invalid { reason, .. } if reason.contains("126")),
        "{e:?}"
    );
    assert_eq!(s.grant_table(HOST).await.unwrap(), None);
    assert!(s.grant_log(HOST, 0, 10).await.unwrap().is_empty());
    let r = s
        .commit_grant_table(HOST, 0, b"t", &lines(126, |_| 1))
        .await
        .unwrap();
    assert_eq!(s.grant_log(HOST, 0, 1000).await.unwrap().len(), 126);
    // A body past etcd's request size is refused by etcd, in words, and
    // the table stays as it was.
    let huge = vec![0u8; 3 << 20];
    let e = s.commit_grant_table(HOST, r, &huge, &[]).await.unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Backend { .. } | StoreError::Unavailable { .. }
        ),
        "{e:?}"
    );
    assert!(!format!("{e:?}").contains("tonic"), "{e:?}");
    assert_eq!(s.grant_table(HOST).await.unwrap().unwrap().revision, r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_of_a_long_interleaved_log() {
    let s = store_at(&shared().endpoints(), &fresh_prefix("prune")).await;
    // 756 lines (more than one read page), old and new alternating, so the
    // old ones make 378 separate runs (more than one Txn of deletes).
    let mut rev = 0;
    for _ in 0..6 {
        rev = s
            .commit_grant_table(
                HOST,
                rev,
                b"t",
                &lines(126, |i| if i % 2 == 0 { 10 } else { 5_000 }),
            )
            .await
            .unwrap();
    }
    let gone = s.prune_grant_log(HOST, 1_000, 11).await.unwrap();
    let left = s.grant_log(HOST, 0, 10_000).await.unwrap();
    // Of the 745 lines outside the newest 11, the old half went.
    assert_eq!(gone, 745 / 2 + 1);
    assert_eq!(left.len(), 756 - gone as usize);
    let (older, newest) = left.split_at(left.len() - 11);
    assert!(older.iter().all(|l| l.at_ms == 5_000), "an old line stayed");
    assert_eq!(
        newest.iter().map(|l| l.seq).collect::<Vec<_>>(),
        (746..=756).collect::<Vec<u64>>()
    );
    assert_eq!(s.prune_grant_log(HOST, 1_000, 11).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_values_under_grant_keys_are_corrupt() {
    let endpoints = shared().endpoints();
    let prefix = fresh_prefix("corrupt");
    let s = store_at(&endpoints, &prefix).await;
    let r = s
        .commit_grant_table(HOST, 0, b"t", &lines(2, |_| 1))
        .await
        .unwrap();
    let mut raw = etcd_client::Client::connect(&endpoints, None)
        .await
        .unwrap();
    let dir = format!("{prefix}/grants/{HOST}");
    // A line under another seq's key, and one that is not JSON.
    raw.put(
        format!("{dir}/log/00000000000000000009"),
        "{\"seq\":2,\"at_ms\":1,\"event\":\"{}\"}",
        None,
    )
    .await
    .unwrap();
    let e = s.grant_log(HOST, 2, 10).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Corrupt { name, .. } if name == &format!("grants/{HOST}")),
        "{e:?}"
    );
    raw.put(format!("{dir}/log/00000000000000000009"), "{not json", None)
        .await
        .unwrap();
    assert!(matches!(
        s.grant_log(HOST, 0, 10).await,
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        s.prune_grant_log(HOST, u64::MAX, 0).await,
        Err(StoreError::Corrupt { .. })
    ));
    // The lines before it still read.
    assert_eq!(s.grant_log(HOST, 0, 2).await.unwrap().len(), 2);
    // A counter that is not a number stops a commit before it writes.
    raw.put(format!("{dir}/seq"), "two", None).await.unwrap();
    let e = s
        .commit_grant_table(HOST, r, b"new", &lines(1, |_| 1))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
    let t = s.grant_table(HOST).await.unwrap().unwrap();
    assert_eq!((t.body.as_slice(), t.revision), (&b"t"[..], r));
}
