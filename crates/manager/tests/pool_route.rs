//! A service pool behind the shared port (issue 15 item 3), through a real
//! bulkheadd and a real pool partition: plain HTTP clients on the shared
//! listener are served by the pool's program (busybox `nc -ll -e` running an
//! HTTP responder in sh that reads the session line first), one allocation
//! per connection under the route's user, the pool's cleanup after each;
//! an exhausted pool answers 503 after the route's wait; hostile calls
//! change nothing; `pool unexpose` takes the domain off (421).

mod common;

use bulkhead_manager::pools::types::*;
use common::{free_tcp_port, Daemon, Opts, BOOT};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PORT: u16 = 7000;

/// The program: the session line, a request head (a body of Content-Length
/// bytes read whole), then one response naming the program, the user and
/// the session, and the connection closes.
const APP: &str = r#"cat > /tmp/http.sh <<'X'
#!/bin/sh
cr=$(printf '\r')
read -r _ _ s p u || exit 0
n=0
while read -r l; do
  l=${l%"$cr"}
  [ -z "$l" ] && break
  case "$l" in Content-Length:*) n=${l#*: } ;; esac
done
[ "$n" -gt 0 ] && head -c "$n" > /dev/null
body="$p for $u session $s"
printf 'HTTP/1.1 200 OK\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' "${#body}" "$body"
X
exec nc -ll -p 7000 -e /bin/sh /tmp/http.sh"#;

fn pool(d: &Daemon, args: &[&str]) -> (bool, String) {
    let out = d.cli(&[&["pool"], args].concat());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Sends `req` on a new connection to the shared port; the whole answer.
async fn http(port: u16, req: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(BOOT, s.read_to_string(&mut out))
        .await
        .expect("an answer in time")
        .unwrap();
    out
}

fn get(host: &str) -> String {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

async fn pool_view(d: &Daemon) -> PoolView {
    d.client().pool_show("hw").await.unwrap()
}

/// Waits (bounded) until the pool's partition is idle with `served` sessions.
async fn idle_after(d: &Daemon, served: u64) -> PoolView {
    let deadline = tokio::time::Instant::now() + BOOT;
    loop {
        let v = pool_view(d).await;
        let p = &v.partitions[0];
        if p.state == "idle" && p.sessions_served == served {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many cleanups ran in the partition (each appends a line).
async fn cleanups(d: &Daemon) -> usize {
    let r = d.exec("hw-1", "cat /tmp/cleaned 2>/dev/null | wc -l").await;
    assert_eq!(r["code"], 0, "{r:#}");
    r["stdout"].as_str().unwrap().trim().parse().unwrap()
}

async fn routes(d: &Daemon) -> Value {
    d.client().get("/v1/routes").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_http_clients_are_served_by_pool_partitions_one_allocation_each() {
    let port = free_tcp_port();
    let d = Daemon::start(Opts {
        extra: format!("[portshare]\nlisteners = [\"127.0.0.1:{port}\"]\nrefresh_ms = 100\n"),
        ..Default::default()
    });
    let c = d.client();
    c.pool_user_add(&AddPoolUser {
        name: "web".into(),
        programs: vec!["hello".into()],
        max_sessions: Some(4),
    })
    .await
    .unwrap();
    c.pool_user_add(&AddPoolUser {
        name: "other".into(),
        programs: vec!["else".into()],
        max_sessions: None,
    })
    .await
    .unwrap();
    c.pool_create(&CreatePool {
        name: "hw".into(),
        program: "hello".into(),
        size: 1,
        max: None,
        vcpus: 1,
        memory_mib: 128,
        cpu_percent: 30,
        image: None,
        app: APP.into(),
        port: PORT,
        cleanup: Some("echo done >> /tmp/cleaned".into()),
        recycle_after: None,
        untrusted: false,
    })
    .await
    .unwrap();

    // Hostile or wrong calls: refused, nothing written.
    for (args, why) in [
        (
            vec![
                "expose",
                "hello",
                "--domain",
                "h.example.org",
                "--user",
                "nobody",
            ],
            "not found",
        ),
        (
            vec![
                "expose",
                "hello",
                "--domain",
                "h.example.org",
                "--user",
                "other",
            ],
            "may not run",
        ),
        (
            vec![
                "expose",
                "he/llo",
                "--domain",
                "h.example.org",
                "--user",
                "web",
            ],
            "program",
        ),
        (
            vec!["expose", "hello", "--domain", "h example", "--user", "web"],
            "not a host name",
        ),
        (
            vec![
                "expose",
                "hello",
                "--domain",
                "h.example.org",
                "--user",
                "web",
                "--wait-ms",
                "300001",
            ],
            "wait_ms",
        ),
    ] {
        let (ok, out) = pool(&d, &args);
        assert!(!ok && out.contains(why), "{args:?}: {out}");
    }
    assert_eq!(routes(&d).await, json!([]), "refused calls wrote nothing");

    let (ok, out) = pool(
        &d,
        &[
            "expose",
            "hello",
            "--domain",
            "hello.example.org",
            "--user",
            "web",
            "--wait-ms",
            "1500",
        ],
    );
    assert!(ok, "{out}");
    let r = routes(&d).await;
    assert_eq!(r[0]["partition"], "pool:hello", "{r:#}");
    assert_eq!(r[0]["state"], "pool", "{r:#}");
    assert_eq!(r[0]["pool"]["user"], "web", "{r:#}");

    idle_after(&d, 0).await;
    // Two connections: two allocations (two sessions) under the route's
    // user, each followed by the pool's cleanup.
    let mut sessions = Vec::new();
    for n in 1..=2u64 {
        let out = http(port, &get("hello.example.org")).await;
        assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
        let body = out.split("\r\n\r\n").nth(1).unwrap();
        let (head, session) = body.rsplit_once(' ').unwrap();
        assert_eq!(head, "hello for web session", "{out}");
        assert_eq!(session.len(), 16, "{out}");
        sessions.push(session.to_string());
        idle_after(&d, n).await;
    }
    assert_ne!(sessions[0], sessions[1]);
    assert_eq!(cleanups(&d).await, 2);

    // A connection holding the only partition (its body not yet sent):
    // another waits the route's 1.5 s for an idle one, then 503.
    let mut held = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    held.write_all(
        b"POST / HTTP/1.1\r\nHost: hello.example.org\r\nContent-Length: 5\r\nConnection: close\r\n\r\nab",
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + BOOT;
    while pool_view(&d).await.partitions[0].state != "in-session" {
        assert!(tokio::time::Instant::now() < deadline, "never allocated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = http(port, &get("hello.example.org")).await;
    assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
    assert!(out.contains("idle in time") && out.len() < 300, "{out}");
    // The held one completes; then the pool serves again.
    held.write_all(b"cde").await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(BOOT, held.read_to_string(&mut out))
        .await
        .expect("the held request is answered")
        .unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200 ") && out.contains("hello for web"),
        "{out}"
    );
    idle_after(&d, 3).await;
    assert!(http(port, &get("hello.example.org"))
        .await
        .starts_with("HTTP/1.1 200 "));
    idle_after(&d, 4).await;
    assert_eq!(cleanups(&d).await, 4);

    // Unexposed: the shared port no longer knows the domain.
    let (ok, out) = pool(&d, &["unexpose", "hello", "--domain", "hello.example.org"]);
    assert!(ok && out.contains("removed hello.example.org"), "{out}");
    let (ok, out) = pool(&d, &["unexpose", "hello"]);
    assert!(!ok && out.contains("no routes"), "{out}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = http(port, &get("hello.example.org")).await;
        if out.starts_with("HTTP/1.1 421 ") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pool_view(&d).await.partitions[0].sessions_served, 4);
}
