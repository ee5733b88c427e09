//! Numbers from clients are range-checked before anything acts on them: a
//! running partition asked to stop with an absurd timeout answers 400 and
//! stays exactly as it was (once, `timeout_secs` near 2^64 overflowed the
//! stop deadline, panicked the handler and left the partition `stopping`).

mod common;

use bulkhead_manager::client::ClientError;
use common::{Daemon, Opts, BOOT};
use serde_json::json;
use tokio::time::timeout;

#[tokio::test]
async fn absurd_durations_get_400_and_change_nothing() {
    let d = Daemon::start(Opts::default());
    d.create("ranged", 50, 128, json!({})).await;
    let before = d.start_wait("ranged").await;
    assert_eq!(before["state"], "running");
    let c = d.client();
    for (path, body) in [
        ("stop", json!({ "timeout_secs": u64::MAX })),
        ("stop", json!({ "timeout_secs": u64::MAX - 1 })),
        ("stop", json!({ "timeout_secs": 3601 })),
        (
            "exec",
            json!({ "argv": ["true"], "timeout_secs": u64::MAX }),
        ),
        ("exec", json!({ "argv": ["true"], "timeout_secs": 0 })),
    ] {
        let r = timeout(
            BOOT,
            c.post(&format!("/v1/partitions/ranged/{path}"), &body),
        )
        .await
        .expect("no answer");
        match r {
            Err(ClientError::Api {
                status, message, ..
            }) => {
                assert_eq!(status, 400, "{path} {body}: {message}");
                assert!(message.contains("timeout_secs"), "{message}");
            }
            other => panic!("{path} {body}: expected 400, got {other:?}"),
        }
        let now = d.show("ranged").await;
        assert_eq!(now["state"], "running", "{path} {body}: {now:#}");
        assert_eq!(now["pid"], before["pid"], "{path} {body}");
        assert_eq!(
            now["revision"], before["revision"],
            "{path} {body} changed the record"
        );
    }
    // Still a live partition, and a sane stop works.
    let out = d.exec("ranged", "echo alive").await;
    assert_eq!(out["stdout"], "alive\n");
    let v = c
        .post("/v1/partitions/ranged/stop", &json!({ "timeout_secs": 30 }))
        .await
        .unwrap();
    assert_eq!(v["state"], "stopped", "{v:#}");
}
