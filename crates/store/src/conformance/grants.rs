//! The grant tables' cases (issue 11, item 8): one host's table and log, in
//! one transaction per commit, on every backend.

use super::{neutral, HOST, OTHER_HOST};
use crate::{GrantLogEntry, Store, StoreError};
use std::future::Future;
use std::sync::Arc;

/// Runs every grant case, each on a fresh store from `make`.
pub async fn run_all<F, Fut>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    grant_table_round_trip(&*make().await).await;
    stale_grant_commit_writes_nothing(&*make().await).await;
    grant_log_seqs_and_paging(&*make().await).await;
    grant_hosts_are_independent(&*make().await).await;
    large_grant_table(&*make().await).await;
    prune_keeps_the_newest(&*make().await).await;
    concurrent_grant_commits_one_wins(make().await).await;
}

fn lines(events: &[&str]) -> Vec<(u64, String)> {
    (0..)
        .zip(events)
        .map(|(i, e)| (1_000 + i, format!("{{\"event\":{e:?}}}")))
        .collect()
}

async fn seqs(s: &dyn Store, host: &str) -> Vec<u64> {
    let log = s.grant_log(host, 0, usize::MAX).await.expect("grant_log");
    log.into_iter().map(|l| l.seq).collect()
}

fn conflict(e: &StoreError, host: &str, want_expected: u64, want_found: u64) {
    neutral(e);
    match e {
        StoreError::Conflict {
            name,
            expected,
            found,
        } => assert_eq!(
            (name.as_str(), *expected, *found),
            (format!("grants/{host}").as_str(), want_expected, want_found),
            "{e:?}"
        ),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

pub async fn grant_table_round_trip(s: &dyn Store) {
    assert_eq!(s.grant_table(HOST).await.unwrap(), None);
    assert!(s.grant_log(HOST, 0, 10).await.unwrap().is_empty());
    let r1 = s
        .commit_grant_table(HOST, 0, b"{\"v\":1}", &lines(&["issued", "accepted"]))
        .await
        .unwrap();
    assert_ne!(r1, 0, "a stored table has a revision");
    let got = s.grant_table(HOST).await.unwrap().expect("committed");
    assert_eq!((got.body.as_slice(), got.revision), (&b"{\"v\":1}"[..], r1));
    // A commit with no log line replaces the table all the same.
    let r2 = s.commit_grant_table(HOST, r1, b"", &[]).await.unwrap();
    assert_ne!(r2, r1);
    let got = s.grant_table(HOST).await.unwrap().unwrap();
    assert_eq!((got.body, got.revision), (Vec::new(), r2));
    let log = s.grant_log(HOST, 0, 10).await.unwrap();
    assert_eq!(
        log,
        [
            GrantLogEntry {
                seq: 1,
                at_ms: 1_000,
                event: "{\"event\":\"issued\"}".into()
            },
            GrantLogEntry {
                seq: 2,
                at_ms: 1_001,
                event: "{\"event\":\"accepted\"}".into()
            }
        ]
    );
    // A table belongs to a host: none is refused, and nothing is written.
    let e = s.commit_grant_table("", 0, b"x", &lines(&["x"])).await;
    assert!(matches!(e, Err(StoreError::Invalid { .. })), "{e:?}");
    assert_eq!(s.grant_table("").await.unwrap(), None);
}

pub async fn stale_grant_commit_writes_nothing(s: &dyn Store) {
    let r1 = s
        .commit_grant_table(HOST, 0, b"one", &lines(&["a"]))
        .await
        .unwrap();
    let r2 = s
        .commit_grant_table(HOST, r1, b"two", &lines(&["b"]))
        .await
        .unwrap();
    let before = s.grant_log(HOST, 0, 100).await.unwrap();
    // A writer still holding r1, and one that thinks there is no table yet.
    for stale in [r1, 0] {
        let e = s
            .commit_grant_table(HOST, stale, b"lost", &lines(&["lost"]))
            .await
            .unwrap_err();
        conflict(&e, HOST, stale, r2);
    }
    let now = s.grant_table(HOST).await.unwrap().unwrap();
    assert_eq!((now.body.as_slice(), now.revision), (&b"two"[..], r2));
    assert_eq!(s.grant_log(HOST, 0, 100).await.unwrap(), before);
    // A revision for a table never written is a conflict with "none" (0).
    let e = s
        .commit_grant_table(OTHER_HOST, 7, b"ghost", &lines(&["ghost"]))
        .await
        .unwrap_err();
    conflict(&e, OTHER_HOST, 7, 0);
    assert_eq!(s.grant_table(OTHER_HOST).await.unwrap(), None);
    assert!(s.grant_log(OTHER_HOST, 0, 100).await.unwrap().is_empty());
}

pub async fn grant_log_seqs_and_paging(s: &dyn Store) {
    let mut rev = 0;
    for batch in [&["a"][..], &["b", "c", "d"], &[], &["e", "f"]] {
        rev = s
            .commit_grant_table(HOST, rev, b"t", &lines(batch))
            .await
            .unwrap();
    }
    assert_eq!(
        seqs(s, HOST).await,
        [1, 2, 3, 4, 5, 6],
        "contiguous, per line"
    );
    let events: Vec<_> = s
        .grant_log(HOST, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.event)
        .collect();
    assert_eq!(
        events,
        lines(&["a", "b", "c", "d", "e", "f"])
            .into_iter()
            .map(|l| l.1)
            .collect::<Vec<_>>()
    );
    // Paging: `after` is exclusive, `limit` bounds, oldest first.
    let page = |after, limit| async move {
        s.grant_log(HOST, after, limit)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.seq)
            .collect::<Vec<_>>()
    };
    assert_eq!(page(0, 2).await, [1, 2]);
    assert_eq!(page(2, 2).await, [3, 4]);
    assert_eq!(page(4, 10).await, [5, 6]);
    assert_eq!(page(6, 10).await, Vec::<u64>::new());
    assert_eq!(page(0, 0).await, Vec::<u64>::new(), "a limit of 0 is none");
    assert_eq!(page(u64::MAX, 10).await, Vec::<u64>::new());
    // The time given with each line is kept as given.
    let log = s.grant_log(HOST, 0, 100).await.unwrap();
    let at: Vec<_> = log.iter().map(|l| l.at_ms).collect();
    assert_eq!(at, [1_000, 1_000, 1_001, 1_002, 1_000, 1_001]);
}

pub async fn grant_hosts_are_independent(s: &dyn Store) {
    // `a/log` must not fall into `a`'s log, nor `a` into its table.
    let hosts = [HOST, OTHER_HOST, "a", "a/log", "a/table"];
    for (i, host) in hosts.iter().enumerate() {
        let mut rev = 0;
        for j in 0..=i {
            let body = format!("{host} {j}");
            let events: Vec<String> = (0..=j).map(|k| format!("{host} {j}.{k}")).collect();
            let events: Vec<&str> = events.iter().map(String::as_str).collect();
            rev = s
                .commit_grant_table(host, rev, body.as_bytes(), &lines(&events))
                .await
                .unwrap();
        }
    }
    for (i, host) in hosts.iter().enumerate() {
        let t = s.grant_table(host).await.unwrap().unwrap();
        assert_eq!(t.body, format!("{host} {i}").into_bytes(), "{host}");
        let n = (i + 1) * (i + 2) / 2;
        assert_eq!(
            seqs(s, host).await,
            (1..=n as u64).collect::<Vec<_>>(),
            "{host}"
        );
        let log = s.grant_log(host, 0, 1000).await.unwrap();
        assert!(
            log.iter().all(|l| l.event.contains(&format!("\"{host} "))),
            "{host}: {log:?}"
        );
    }
    // A prune of one host leaves the others alone.
    assert_eq!(s.prune_grant_log("a", u64::MAX, 0).await.unwrap(), 6);
    assert!(s.grant_log("a", 0, 100).await.unwrap().is_empty());
    assert_eq!(seqs(s, "a/log").await.len(), 10);
    assert_eq!(seqs(s, HOST).await, [1]);
}

pub async fn large_grant_table(s: &dyn Store) {
    // 1 MiB of every byte value: the body is bytes, not text.
    let body: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 256) as u8).collect();
    let r = s
        .commit_grant_table(HOST, 0, &body, &lines(&["big"]))
        .await
        .unwrap();
    let got = s.grant_table(HOST).await.unwrap().unwrap();
    assert_eq!(got.revision, r);
    assert!(got.body == body, "the 1 MiB body came back changed");
}

pub async fn prune_keeps_the_newest(s: &dyn Store) {
    assert_eq!(s.prune_grant_log(HOST, u64::MAX, 0).await.unwrap(), 0);
    // Times are the caller's and need not rise: line 4 is old but among the newest.
    let at = [100, 200, 300, 50, 500, 600];
    let log: Vec<(u64, String)> = at.iter().map(|&t| (t, format!("{{\"at\":{t}}}"))).collect();
    let mut rev = s.commit_grant_table(HOST, 0, b"t", &log).await.unwrap();
    s.commit_grant_table(OTHER_HOST, 0, b"t", &log)
        .await
        .unwrap();
    assert_eq!(s.prune_grant_log(HOST, 250, 3).await.unwrap(), 2);
    assert_eq!(seqs(s, HOST).await, [3, 4, 5, 6]);
    assert_eq!(
        s.prune_grant_log(HOST, 250, 3).await.unwrap(),
        0,
        "line 4 is among the newest 3"
    );
    assert_eq!(s.prune_grant_log(HOST, 550, 1).await.unwrap(), 3);
    assert_eq!(seqs(s, HOST).await, [6]);
    assert_eq!(s.prune_grant_log(HOST, u64::MAX, 0).await.unwrap(), 1);
    assert!(s.grant_log(HOST, 0, 100).await.unwrap().is_empty());
    assert_eq!(
        seqs(s, OTHER_HOST).await,
        [1, 2, 3, 4, 5, 6],
        "another host's log is its own"
    );
    // A seq is never given twice, even once the log was emptied.
    rev = s
        .commit_grant_table(HOST, rev, b"t", &lines(&["after"]))
        .await
        .unwrap();
    assert_eq!(seqs(s, HOST).await, [7]);
    assert_eq!(s.grant_table(HOST).await.unwrap().unwrap().revision, rev);
}

pub async fn concurrent_grant_commits_one_wins(s: Arc<dyn Store>) {
    let r1 = s
        .commit_grant_table(HOST, 0, b"base", &lines(&["base"]))
        .await
        .unwrap();
    for round in 0..3u64 {
        let expected = s.grant_table(HOST).await.unwrap().unwrap().revision;
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let body = format!("round {round} writer {i}");
                    let log = lines(&[&body, &body]);
                    let r = s
                        .commit_grant_table(HOST, expected, body.as_bytes(), &log)
                        .await;
                    (body, r)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.expect("task") {
                (body, Ok(rev)) => winners.push((body, rev)),
                (_, Err(e)) => {
                    neutral(&e);
                    assert!(
                        matches!(e, StoreError::Conflict { expected: x, .. } if x == expected),
                        "{e:?}"
                    );
                }
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let (body, rev) = &winners[0];
        let t = s.grant_table(HOST).await.unwrap().unwrap();
        assert_eq!((&t.body, t.revision), (&body.clone().into_bytes(), *rev));
        // Only the winner's lines were written, under the next seqs.
        let new = s.grant_log(HOST, 1 + 2 * round, 100).await.unwrap();
        let new: Vec<_> = new.iter().map(|l| (l.seq, l.event.as_str())).collect();
        let line = format!("{{\"event\":{body:?}}}");
        assert_eq!(
            new,
            [
                (2 + 2 * round, line.as_str()),
                (3 + 2 * round, line.as_str())
            ]
        );
    }
    assert_ne!(s.grant_table(HOST).await.unwrap().unwrap().revision, r1);
}
