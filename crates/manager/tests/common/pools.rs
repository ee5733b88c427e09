//! Helpers of the pool tests: the echo program, the pool CLI, pool users,
//! and conversations through the gateway.

use super::Daemon;
use bulkhead_manager::pools::types::*;
use bulkhead_pool_proto::client::{Client as Gateway, ClientError as GwError};
use bulkhead_pool_proto::{Allocate, Decoder, Frame, RefuseReason, SessionId};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

pub const PORT: u16 = 7000;

/// The program: prints who it serves (from the session line) and echoes.
pub fn echo_app(program: &str) -> String {
    format!(
        "printf '%s\\n' 'read -r _ _ s p u' 'echo \"{program} $p $s $u\"' 'cat' > /tmp/echo.sh; \
         exec nc -ll -p {PORT} -e /bin/sh /tmp/echo.sh"
    )
}

pub fn bulkhead(d: &Daemon, args: &[&str]) -> (bool, String, String) {
    let out = d.cli(&[&["pool"], args].concat());
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn ok(d: &Daemon, args: &[&str]) -> String {
    let (success, out, err) = bulkhead(d, args);
    assert!(success, "bulkhead pool {args:?}: {out}{err}");
    out
}

/// Waits (bounded) until every partition of the pool is in `state`.
pub async fn wait_pool(d: &Daemon, pool: &str, n: usize, state: &str) -> PoolView {
    let deadline = tokio::time::Instant::now() + super::BOOT * 2;
    loop {
        let v = d.client().pool_show(pool).await.unwrap();
        if v.partitions.len() == n && v.partitions.iter().all(|p| p.state == state) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pool} never had {n} partitions {state}: {v:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Talks to the program of a partition as the gateway will: session line first.
pub fn converse(ip: &str, user: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect((ip, PORT)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(format!("BULKHEAD-SESSION 1 000000000000002a echo {user}\nping\n").as_bytes())
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let (mut first, mut second) = (String::new(), String::new());
    r.read_line(&mut first).unwrap();
    r.read_line(&mut second).unwrap();
    (first, second)
}

pub async fn ip_of(d: &Daemon, partition: &str) -> String {
    super::vlan_ip(&d.show(partition).await)
}

pub fn statement(name: &str, program: &str, size: u32) -> CreatePool {
    CreatePool {
        name: name.into(),
        program: program.into(),
        size,
        max: None,
        vcpus: 1,
        memory_mib: 128,
        cpu_percent: 20,
        image: None,
        app: echo_app(program),
        port: PORT,
        cleanup: Some("rm -f /tmp/scratch".into()),
        recycle_after: None,
        untrusted: false,
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Adds a user through the CLI and returns its token (the last line).
pub fn add_user(d: &Daemon, name: &str, programs: &str, max: u32) -> String {
    let out = ok(
        d,
        &[
            "user",
            "add",
            name,
            "--programs",
            programs,
            "--max-sessions",
            &max.to_string(),
        ],
    );
    out.lines().last().unwrap().to_string()
}

pub fn req(program: &str, user: &str, token: &str, wait_ms: u32) -> Allocate {
    Allocate {
        program: program.into(),
        user: user.into(),
        credential: token.into(),
        wait_ms,
    }
}

/// Reads from the session until `n` lines came (the program answers in pieces).
pub async fn lines<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Gateway<S>, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.iter().filter(|b| **b == b'\n').count() < n {
        let d = tokio::time::timeout(Duration::from_secs(30), c.recv())
            .await
            .unwrap()
            .unwrap();
        got.extend_from_slice(&d);
    }
    String::from_utf8(got)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn partition_of(v: &PoolView, session: SessionId) -> PoolPartitionView {
    v.partitions
        .iter()
        .find(|p| p.session == Some(session.0))
        .cloned()
        .unwrap_or_else(|| panic!("no partition holds {session}: {v:#?}"))
}

/// Sends raw bytes after a HELLO and returns the first frame after WELCOME.
pub fn raw_exchange(gw: &str, bytes: &[u8]) -> Frame {
    let mut s = std::net::TcpStream::connect(gw).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = Vec::new();
    Frame::Hello {
        min_version: 1,
        max_version: 1,
    }
    .encode(&mut hello)
    .unwrap();
    s.write_all(&hello).unwrap();
    s.write_all(bytes).unwrap();
    let mut dec = Decoder::new();
    let mut frames = Vec::new();
    let mut buf = [0u8; 4096];
    while frames.len() < 2 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {frames:?}");
        let mut input = &buf[..n];
        while let Some(f) = dec.decode(&mut input).unwrap() {
            frames.push(f);
        }
    }
    // The gateway closes a connection that broke the protocol.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    frames.remove(1)
}

pub fn refusal(e: GwError) -> RefuseReason {
    match e {
        GwError::Refused { reason, .. } => reason,
        e => panic!("not a refusal: {e}"),
    }
}

/// `bulkhead pool connect echo` as alice through `gw` with `extra` options:
/// `input` on its standard input; its standard output (it must succeed).
pub fn pool_connect(gw: &str, token: &str, extra: &[&str], input: &[u8]) -> String {
    let mut child = Command::new(bulkhead_testbed::bulkhead_bin())
        .args([
            "pool",
            "connect",
            "echo",
            "--user",
            "alice",
            "--gateway",
            gw,
        ])
        .args(extra)
        .env("BULKHEAD_POOL_TOKEN", token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}
