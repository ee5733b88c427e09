//! Agent round trips against a floor made of the same transport: one guest
//! (microvm, TCG) with two virtio-serial ports, the agent's and a raw one
//! served by a busybox shell loop. Prints median and p90 side by side.
//!
//! usage: agent_bench [ROUNDS]   (needs the image from `make image`)

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bulkhead_agent::{AgentClient, PowerAction};
use bulkhead_testbed::{connect_unix, image_dir, GuestQemu};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        ms(v[v.len() / 2]),
        ms(v[(v.len() * 9 / 10).min(v.len() - 1)]),
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200);
    let dir = tempfile::tempdir()?;
    let mut q = GuestQemu::new(&image_dir(), dir.path());
    let echo_sock = dir.path().join("echo.sock");
    q.extra = vec![
        "-chardev".into(),
        format!(
            "socket,id=echo0,path={},server=on,wait=off",
            echo_sock.display()
        ),
        "-device".into(),
        "virtserialport,bus=vser0.0,chardev=echo0,name=org.bulkhead.echo.0".into(),
    ];
    let mut qemu = q.spawn().context("qemu-system-x86_64")?;
    let wait = Duration::from_secs(30);

    let agent = AgentClient::from_stream(connect_unix(&q.agent_socket, wait).await?);
    agent.wait_ready(Duration::from_secs(120)).await?;
    eprintln!("agent ready");

    // The peer: a busybox shell loop on the raw port. `spawn` lines run /bin/true first.
    let (rd, mut wr) = connect_unix(&echo_sock, wait).await?.into_split();
    let mut lines = BufReader::new(rd).lines();
    let script = "P=/dev/$(basename $(dirname $(grep -l org.bulkhead.echo.0 /sys/class/virtio-ports/*/name))); \
        (while read l; do case $l in spawn*) /bin/true;; esac; echo \"$l\"; done <>$P >&0) >/dev/null 2>&1 &";
    let out = agent
        .exec(
            &["sh".into(), "-c".into(), script.into()],
            None,
            Duration::from_secs(30),
        )
        .await?;
    if out.code != 0 {
        bail!(
            "starting the echo loop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Bytes sent before the loop opened the port are dropped: ping until one comes back.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        wr.write_all(b"sync\n").await?;
        match tokio::time::timeout(Duration::from_millis(200), lines.next_line()).await {
            Ok(Ok(Some(l))) if l == "sync" => break,
            _ if Instant::now() > deadline => bail!("echo loop never answered"),
            _ => {}
        }
    }
    eprintln!("echo loop up");
    // Drain late echoes of earlier syncs.
    while let Ok(Ok(Some(_))) =
        tokio::time::timeout(Duration::from_millis(300), lines.next_line()).await
    {}

    let mut echo_rtt = Vec::new();
    let mut echo_spawn = Vec::new();
    for (kind, n, sink) in [
        ("ping", rounds, &mut echo_rtt),
        ("spawn", rounds / 4, &mut echo_spawn),
    ] {
        for i in 0..n.max(10) {
            let msg = format!("{kind}{i}");
            let t = Instant::now();
            wr.write_all(format!("{msg}\n").as_bytes()).await?;
            let got = lines.next_line().await?.context("echo closed")?;
            sink.push(t.elapsed());
            if got != msg {
                bail!("echo mismatch: {got} != {msg}");
            }
        }
    }
    let mut info_rtt = Vec::new();
    for _ in 0..rounds.max(10) {
        let t = Instant::now();
        agent.info().await?;
        info_rtt.push(t.elapsed());
    }
    let mut hello_rtt = Vec::new();
    for _ in 0..rounds.max(10) {
        let t = Instant::now();
        agent.wait_ready(Duration::from_secs(10)).await?;
        hello_rtt.push(t.elapsed());
    }
    let mut exec_rtt = Vec::new();
    for _ in 0..(rounds / 4).max(10) {
        let t = Instant::now();
        let o = agent
            .exec(&["/bin/true".into()], None, Duration::from_secs(30))
            .await?;
        exec_rtt.push(t.elapsed());
        if o.code != 0 {
            bail!("/bin/true failed");
        }
    }
    agent.shutdown(PowerAction::Poweroff).await?;
    let _ = tokio::time::timeout(Duration::from_secs(30), qemu.wait()).await;

    let row = |name: &str, a: (f64, f64), p: (f64, f64)| {
        println!(
            "{name:<28} {:>7.3} / {:>7.3} ms   {:>7.3} / {:>7.3} ms   {:>5.2}x",
            a.0,
            a.1,
            p.0,
            p.1,
            a.0 / p.0
        )
    };
    println!("agent over virtio-serial, one microvm guest (TCG), median / p90");
    println!(
        "{:<28} {:>22}   {:>22}   {:>6}",
        "", "bulkhead-agent", "peer: busybox sh loop", "ratio"
    );
    let echo = stats(echo_rtt);
    row(
        &format!("round trip (hello | echo) n={}", hello_rtt.len()),
        stats(hello_rtt),
        echo,
    );
    row(
        &format!("round trip (info | echo) n={}", info_rtt.len()),
        stats(info_rtt),
        echo,
    );
    row(
        &format!("spawn /bin/true n={}", exec_rtt.len()),
        stats(exec_rtt),
        stats(echo_spawn),
    );
    Ok(())
}
