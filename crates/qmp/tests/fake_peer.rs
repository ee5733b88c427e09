//! The QMP client against a misbehaving peer: a fake QEMU on a socket pair
//! that sends an endless line, never answers, or stops reading.

use std::sync::Arc;
use std::time::Duration;

use bulkhead_qmp::{Limits, QmpClient, QmpError};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Notify};

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}"#;
/// Bound on each test: a client that hangs fails the test instead of the suite.
const BOUND: Duration = Duration::from_secs(30);

/// Serves the greeting, then hands each command line (parsed) to the test
/// with the write half, so the test decides what to answer. A line that is
/// not JSON (a torn command) is handed over as `Value::Null`.
fn fake_qemu(peer: UnixStream, gate: Option<Arc<Notify>>) -> mpsc::UnboundedReceiver<Value> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut lines, write) = greet(peer).await;
        let mut line = String::new();
        if let Some(gate) = gate {
            gate.notified().await;
        }
        let write = Arc::new(tokio::sync::Mutex::new(write));
        loop {
            line.clear();
            match lines.read_line(&mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let v = serde_json::from_str::<Value>(&line).unwrap_or(Value::Null);
            let answer = v.get("execute").and_then(Value::as_str) != Some("hang");
            if answer && !v.is_null() {
                reply(&mut *write.lock().await, &v["id"]).await;
            }
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    rx
}

/// Sends the greeting and answers qmp_capabilities.
async fn greet(peer: UnixStream) -> (BufReader<OwnedReadHalf>, OwnedWriteHalf) {
    let (read, mut write) = peer.into_split();
    write
        .write_all(format!("{GREETING}\n").as_bytes())
        .await
        .unwrap();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    lines.read_line(&mut line).await.unwrap();
    let id = serde_json::from_str::<Value>(&line).unwrap()["id"].clone();
    reply(&mut write, &id).await;
    (lines, write)
}

async fn reply(write: &mut OwnedWriteHalf, id: &Value) {
    let line = format!("{}\n", json!({ "return": {}, "id": id }));
    let _ = write.write_all(line.as_bytes()).await;
}

#[tokio::test]
async fn endless_line_is_cut_at_the_cap_and_closes_the_session() {
    let (ours, peer) = UnixStream::pair().unwrap();
    let max_line = 1 << 20;
    let limits = Limits {
        max_line,
        ..Limits::default()
    };
    let peer_task = tokio::spawn(async move {
        let (mut lines, mut write) = greet(peer).await;
        let mut line = String::new();
        // The next command's reply never ends. Count what the client takes
        // before it hangs up; stop on our own well past any sane bound.
        lines.read_line(&mut line).await.unwrap();
        write.write_all(br#"{"return": ""#).await.unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0usize;
        while sent < 64 << 20 {
            match write.write_all(&chunk).await {
                Ok(()) => sent += chunk.len(),
                Err(_) => return (sent, true),
            }
        }
        (sent, false)
    });
    tokio::time::timeout(BOUND, async {
        let client = QmpClient::handshake_with(ours, limits).await.unwrap();
        let err = client.query_status().await.unwrap_err();
        assert!(
            matches!(&err, QmpError::Protocol(m) if m.contains("longer than")),
            "{err}"
        );
        let (sent, refused) = peer_task.await.unwrap();
        assert!(refused, "the client kept reading: {sent} bytes taken");
        // What the client accepted is the cap plus what the socket buffers
        // held when it hung up, not the 64 MiB the peer would have sent.
        assert!(sent <= max_line + (4 << 20), "{sent} bytes taken");
        assert!(client.is_closed());
        assert!(client.failure().unwrap().contains("longer than"));
        assert_eq!(client.pending_commands(), 0);
        // Later commands fail at once with the reason.
        let err = client.query_status().await.unwrap_err();
        assert!(matches!(err, QmpError::Protocol(_)), "{err}");
    })
    .await
    .expect("client hung");
}

#[tokio::test]
async fn a_command_times_out_and_leaves_nothing_pending() {
    let (ours, peer) = UnixStream::pair().unwrap();
    let mut seen = fake_qemu(peer, None);
    let limits = Limits {
        command_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    tokio::time::timeout(BOUND, async {
        let client = QmpClient::handshake_with(ours, limits).await.unwrap();
        let err = client.execute_value("hang", None).await.unwrap_err();
        assert!(
            matches!(err, QmpError::Timeout(_, ref c) if c == "hang"),
            "{err}"
        );
        assert_eq!(client.pending_commands(), 0);
        assert_eq!(seen.recv().await.unwrap()["execute"], "hang");
        // The session is still good.
        client.execute_value("query-status", None).await.unwrap();
        assert_eq!(client.pending_commands(), 0);
    })
    .await
    .expect("client hung");
}

#[tokio::test]
async fn a_cancelled_command_leaves_no_entry_and_no_torn_line() {
    let (ours, peer) = UnixStream::pair().unwrap();
    // The peer reads nothing until the gate opens, so a big command cannot be
    // written whole before its caller gives up.
    let gate = Arc::new(Notify::new());
    let mut seen = fake_qemu(peer, Some(gate.clone()));
    tokio::time::timeout(BOUND, async {
        let client = QmpClient::handshake(ours).await.unwrap();
        let blob = "y".repeat(4 << 20);
        let cancelled = tokio::time::timeout(
            Duration::from_millis(200),
            client.execute_value("hang", Some(json!({ "blob": blob }))),
        )
        .await;
        assert!(cancelled.is_err(), "the command should still be waiting");
        assert_eq!(client.pending_commands(), 0);
        gate.notify_one();
        // The next command goes through, and every line the peer read is
        // whole JSON.
        client.execute_value("query-status", None).await.unwrap();
        assert_eq!(client.pending_commands(), 0);
        let first = seen.recv().await.unwrap();
        assert_eq!(first["execute"], "hang", "torn line: {first:.80}");
        assert_eq!(seen.recv().await.unwrap()["execute"], "query-status");
    })
    .await
    .expect("client hung");
}
