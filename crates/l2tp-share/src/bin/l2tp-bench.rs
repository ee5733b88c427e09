//! Benchmarks Bulkhead's L2TP against xl2tpd on loopback, side by side (bench/l2tp/run).
//!
//! `setup`: tunnel + incoming call set-up, 50 rounds each, alternating. The same xl2tpd
//! LNS answers both LACs (xl2tpd's and Bulkhead's); a round is timed from the LAC's
//! start to the LNS logging "Call established", then the tunnel is cleared.
//!
//! `throughput`: PPP frames through an established call, end to end: for xl2tpd, pppd
//! stand-in → pty → xl2tpd LAC → UDP → xl2tpd LNS → pty → sink; for Bulkhead, call
//! stream → client (LNS) → UDP → resource server (LAC) → modem model pty → TCP → sink.
//! Goodput = bytes at the sink / (last byte − first byte).
//!
//! `redial`: consecutive outgoing calls on one modem (the modem model dialling a TCP echo
//! service): from the client's hang-up of one call to the next call connected (OCCN),
//! median over the calls. xl2tpd drives no modem, so it has no figure here.
//!
//! `source`/`sink` are the pppd stand-ins xl2tpd runs (through a stub script).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bulkhead_l2tp::hdlc;
use bulkhead_l2tp::tunnel::FRAMING_ASYNC;
use bulkhead_l2tp::{result, CallMode, Event, ResultCode};
use bulkhead_l2tp_share::driver::{self, SessionMsg};

const FRAME: usize = 1400;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("setup") => setup(args.get(1).map_or(Ok(50), |n| n.parse())?),
        Some("throughput") => throughput(args.get(1).map_or(Ok(20), |n| n.parse())?),
        Some("redial") => redial(args.get(1).map_or(Ok(50), |n| n.parse())?),
        Some("source") => source(Path::new(&args[1]), args[2].parse()?),
        Some("sink") => sink(Path::new(&args[1])),
        _ => {
            bail!("usage: l2tp-bench setup [ROUNDS] | throughput [MB] | redial [CALLS] | source FILE MB | sink FILE")
        }
    }
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An xl2tpd in a private mount namespace with `stub` over /usr/sbin/pppd; its log
/// lines arrive on `lines` with the time they were read.
struct Xl2tpd {
    child: Child,
    ctl: PathBuf,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl Xl2tpd {
    fn start(dir: &Path, name: &str, conf: &str, stub: &Path) -> anyhow::Result<Xl2tpd> {
        let conf_path = dir.join(format!("{name}.conf"));
        std::fs::write(&conf_path, conf)?;
        let ctl = dir.join(format!("{name}.ctl"));
        let script = format!(
            "mount --bind {} /usr/sbin/pppd && exec xl2tpd -D -c {} -p {} -C {}",
            stub.display(),
            conf_path.display(),
            dir.join(format!("{name}.pid")).display(),
            ctl.display()
        );
        let mut child = Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting xl2tpd (needs root and scripts/bootstrap)")?;
        let (tx, lines) = mpsc::channel();
        let err = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), l)).is_err() {
                    break;
                }
            }
        });
        let x = Xl2tpd { child, ctl, lines };
        x.wait_for("Listening on IP address", Duration::from_secs(30))?;
        Ok(x)
    }

    fn wait_for(&self, needle: &str, wait: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + wait;
        let mut seen = std::collections::VecDeque::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((t, l)) if l.contains(needle) => return Ok(t),
                Ok((_, l)) => {
                    seen.push_back(l);
                    if seen.len() > 400 {
                        seen.pop_front();
                    }
                }
                Err(_) => bail!("xl2tpd never logged {needle:?}; last lines: {seen:?}"),
            }
        }
    }

    /// Runs `xl2tpd-control CMD test`, which waits for xl2tpd's answer.
    fn xl2tpd_control(&self, cmd: &str) -> anyhow::Result<()> {
        // xl2tpd-control reads xl2tpd's answer from a file there.
        std::fs::create_dir_all("/var/run/xl2tpd")?;
        let ok = Command::new("xl2tpd-control")
            .arg("-c")
            .arg(&self.ctl)
            .args([cmd, "test"])
            .stdout(Stdio::null())
            .status()?
            .success();
        if !ok {
            bail!("xl2tpd-control {cmd} failed");
        }
        Ok(())
    }

    /// Forgets log lines read so far.
    fn drain(&self) {
        while self.lines.try_recv().is_ok() {}
    }
}

impl Drop for Xl2tpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stub(dir: &Path, name: &str, body: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\nstty raw -echo\n{body}\n"))?;
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(p)
}

fn lns_conf(port: u16) -> String {
    format!(
        "[global]\nlisten-addr = 127.0.0.1\nport = {port}\nforce userspace = yes\ndebug tunnel = yes\ndebug state = yes\ndebug avp = yes\n\
         [lns default]\nip range = 10.99.0.10-10.99.0.20\nlocal ip = 10.99.0.1\nrequire authentication = no\nchallenge = no\nhostname = lns\n"
    )
}

fn lac_conf(port: u16, lns: u16) -> String {
    format!(
        "[global]\nlisten-addr = 127.0.0.1\nport = {port}\nforce userspace = yes\n\
         [lac test]\nlns = 127.0.0.1:{lns}\nchallenge = no\nhostname = lac\nrequire authentication = no\nautodial = no\nredial = no\n"
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn setup(rounds: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hold = stub(dir.path(), "hold.sh", "exec cat > /dev/null")?;
    let lns_port = free_port();
    let lns = Xl2tpd::start(dir.path(), "lns", &lns_conf(lns_port), &hold)?;
    // Multi-threaded so the blocking log waits (block_in_place) leave the tunnel running.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let lns_addr: SocketAddr = format!("127.0.0.1:{lns_port}").parse()?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let wait = Duration::from_secs(30);
    // Both LACs are timed on the LNS's log: SCCRQ received .. call established.
    let timed = |lns: &Xl2tpd| -> anyhow::Result<f64> {
        let t0 = lns.wait_for("allocating new tunnel", wait)?;
        let t1 = lns.wait_for("Call established", wait)?;
        Ok((t1 - t0).as_secs_f64() * 1e3)
    };
    for _ in 0..rounds {
        // A fresh xl2tpd LAC each round: one that just cleared a tunnel keeps
        // retransmitting its StopCCN (xl2tpd's LNS never acks it) and reuses that tunnel.
        let lac = Xl2tpd::start(dir.path(), "lac", &lac_conf(free_port(), lns_port), &hold)?;
        lns.drain();
        lac.xl2tpd_control("connect-lac")?;
        theirs.push(timed(&lns)?);
        lac.xl2tpd_control("disconnect-lac")?;
        lns.wait_for("closed to", wait)
            .context("xl2tpd LAC teardown")?;
        drop(lac);

        lns.drain();
        rt.block_on(async {
            let cfg = bulkhead_l2tp::Config {
                host_name: "bulkhead-lac".into(),
                bearer_caps: 2,
                ..Default::default()
            };
            let (h, _events, _) = driver::connect(cfg, lns_addr, wait).await?;
            let (session, rx) = h.place_incoming(None, None, None).await?;
            let mut rx = rx.expect("new session");
            loop {
                match rx.recv().await {
                    Some(SessionMsg::Event(Event::CallReplied { .. })) => break,
                    Some(SessionMsg::Event(Event::CallDisconnected { result, .. })) => {
                        bail!("call refused: {result}")
                    }
                    Some(_) => {}
                    None => bail!("tunnel closed"),
                }
            }
            h.connected(session, 33600, FRAMING_ASYNC).await?;
            ours.push(tokio::task::block_in_place(|| timed(&lns))?);
            h.close(ResultCode::new(result::STOP_GENERAL_CLEAR, 0, "bench"));
            tokio::task::block_in_place(|| lns.wait_for("closed to", wait))
                .context("Bulkhead LAC teardown")?;
            Ok(())
        })?;
    }
    let (b, x) = (median(&mut ours), median(&mut theirs));
    println!(
        "tunnel + incoming call set-up, median of {rounds} (same xl2tpd LNS answers both LACs;"
    );
    println!("timed on the LNS from SCCRQ received to call established):");
    println!(
        "  {:<28} {:>10} {:>10} {:>8}",
        "", "Bulkhead", "xl2tpd", "ratio"
    );
    println!(
        "  {:<28} {:>8.3}ms {:>8.3}ms {:>8.2}",
        "SCCRQ .. call established",
        b,
        x,
        b / x
    );
    Ok(())
}

/// Async-HDLC PPP frames (IPv4 protocol, pseudo-random payload) totalling about `mb` MB.
fn payload(mb: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(mb << 20);
    let mut x = 0x1234_5678u32;
    let mut frame = vec![0xff, 0x03, 0x00, 0x21];
    while out.len() < mb << 20 {
        frame.truncate(4);
        for _ in 0..FRAME - 4 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            frame.push(x as u8);
        }
        hdlc::encode(&frame, 0, &mut out);
    }
    out
}

/// pppd stand-in that writes `mb` MB of frames, then holds the line.
fn source(_file: &Path, mb: usize) -> anyhow::Result<()> {
    let data = payload(mb);
    let mut out = std::io::stdout().lock();
    out.write_all(&data)?;
    out.flush()?;
    std::thread::sleep(Duration::from_secs(600));
    Ok(())
}

/// pppd stand-in that counts bytes; after 2 s of silence writes "bytes seconds" to `file`.
fn sink(file: &Path) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<usize>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let mut input = std::io::stdin().lock();
        while let Ok(n) = input.read(&mut buf) {
            if n == 0 || tx.send(n).is_err() {
                break;
            }
        }
    });
    let n = rx.recv()?;
    let (first, mut last, mut total) = (Instant::now(), Instant::now(), n);
    while let Ok(n) = rx.recv_timeout(Duration::from_secs(2)) {
        total += n;
        last = Instant::now();
    }
    std::fs::write(file, format!("{total} {}", (last - first).as_secs_f64()))?;
    Ok(())
}

fn wait_file(p: &Path, wait: Duration) -> anyhow::Result<(f64, f64)> {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(s) = std::fs::read_to_string(p) {
            let mut w = s.split_whitespace();
            if let (Some(b), Some(t)) = (w.next(), w.next()) {
                return Ok((b.parse()?, t.parse()?));
            }
        }
        if Instant::now() > deadline {
            bail!("no result in {}", p.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn throughput(mb: usize) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for round in 0..3 {
        theirs.push(xl2tpd_throughput(&me, mb, round)?);
        ours.push(bulkhead_throughput(mb)?);
    }
    let total = (mb << 20) as f64;
    let fmt = |v: &[(f64, f64)]| {
        let mut rates: Vec<f64> = v.iter().map(|(b, t)| b / t / 1e6).collect();
        let delivered = v
            .iter()
            .map(|(b, _)| b / total * 100.0)
            .fold(f64::MAX, f64::min);
        (median(&mut rates), delivered)
    };
    let (b, bd) = fmt(&ours);
    let (x, xd) = fmt(&theirs);
    println!("PPP frames ({FRAME} B) through an established call, {mb} MB offered, median of 3:");
    println!(
        "  {:<28} {:>10} {:>10} {:>8}",
        "", "Bulkhead", "xl2tpd", "ratio"
    );
    println!(
        "  {:<28} {:>7.1}MB/s {:>7.1}MB/s {:>8.2}",
        "goodput",
        b,
        x,
        b / x
    );
    println!(
        "  {:<28} {:>9.1}% {:>9.1}%",
        "delivered (worst run)",
        bd.min(100.0),
        xd.min(100.0)
    );
    Ok(())
}

fn xl2tpd_throughput(me: &Path, mb: usize, round: usize) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let result = dir.path().join(format!("sink{round}"));
    let sink_stub = stub(
        dir.path(),
        "sink.sh",
        &format!("exec {} sink {}", me.display(), result.display()),
    )?;
    let src_stub = stub(
        dir.path(),
        "source.sh",
        &format!("exec {} source - {mb}", me.display()),
    )?;
    let (lns_port, lac_port) = (free_port(), free_port());
    let lns = Xl2tpd::start(dir.path(), "lns", &lns_conf(lns_port), &sink_stub)?;
    let lac = Xl2tpd::start(dir.path(), "lac", &lac_conf(lac_port, lns_port), &src_stub)?;
    lac.xl2tpd_control("connect-lac")?;
    lns.wait_for("Call established", Duration::from_secs(30))?;
    let r = wait_file(&result, Duration::from_secs(300));
    drop(lac);
    drop(lns);
    r
}

/// A modem model whose number "1" reaches `far` over TCP, a resource server sharing
/// it, and a client of that server.
async fn modem_bed(
    dir: &Path,
    far: SocketAddr,
) -> anyhow::Result<(
    bulkhead_l2tp_share::server::Running,
    std::sync::Arc<bulkhead_l2tp_share::client::Client>,
)> {
    use bulkhead_l2tp_share::client::Client;
    use bulkhead_l2tp_share::profile::{ClientProfile, Device, ServerProfile};
    use bulkhead_modem::emulator::{self, Emulator, Line};

    let link = dir.join("ttyB");
    let e = Emulator::bind(emulator::Config {
        link: link.clone(),
        phonebook: [("1".to_string(), Line::Tcp(far.to_string()))].into(),
        listen: None,
        speed: 33600,
        ring_interval: Duration::from_secs(2),
    })
    .await?;
    tokio::spawn(e.run());
    let profile = ServerProfile {
        hostname: "bench".into(),
        listen: vec!["127.0.0.1:0".parse()?],
        secret: None,
        secrets: Default::default(),
        vendor_id: bulkhead_l2tp::ext::DEFAULT_VENDOR_ID,
        hello_interval: 60,
        hide_avps: false,
        devices: vec![Device {
            name: "m".into(),
            tty: link,
            outgoing: true,
            incoming: false,
            dial_timeout: 30,
            forward_incoming: None,
        }],
        directory: Default::default(),
    };
    let srv = bulkhead_l2tp_share::server::start(profile).await?;
    let client = Client::new(ClientProfile {
        hostname: "bench-client".into(),
        outgoing: Some(srv.addrs[0]),
        incoming: None,
        secret: None,
        vendor_id: bulkhead_l2tp::ext::DEFAULT_VENDOR_ID,
        hello_interval: 60,
        hide_avps: false,
        control: PathBuf::from("/nonexistent"),
        directory: Default::default(),
    });
    Ok((srv, client))
}

fn bulkhead_throughput(mb: usize) -> anyhow::Result<(f64, f64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let dir = tempfile::tempdir()?;
        // The far end of the modem's line: counts bytes like the xl2tpd sink.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let sink_addr = l.local_addr()?;
        let counted = tokio::spawn(async move {
            let (mut s, _) = l.accept().await?;
            let mut buf = vec![0u8; 65536];
            let n = s.read(&mut buf).await?;
            let (first, mut last, mut total) = (Instant::now(), Instant::now(), n);
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await
            {
                if n == 0 {
                    break;
                }
                total += n;
                last = Instant::now();
            }
            anyhow::Ok((total as f64, (last - first).as_secs_f64()))
        });
        let (srv, client) = modem_bed(dir.path(), sink_addr).await?;
        let call = client
            .dial("1", Some(CallMode::Ppp), Duration::from_secs(30))
            .await?;
        let mut s = call.into_stream();
        s.write_all(&payload(mb)).await?;
        let r = counted.await??;
        srv.abort();
        Ok(r)
    })
}

/// Consecutive calls on one modem: hang-up to the next call connected, median of `calls`.
fn redial(calls: usize) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut gaps = rt.block_on(async {
        let dir = tempfile::tempdir()?;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let echo = l.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let (srv, client) = modem_bed(dir.path(), echo).await?;
        let wait = Duration::from_secs(30);
        let mut gaps = Vec::with_capacity(calls);
        let mut hung_up: Option<Instant> = None;
        for _ in 0..=calls {
            let call = client.dial("1", Some(CallMode::Raw), wait).await?;
            if let Some(t) = hung_up {
                gaps.push(t.elapsed().as_secs_f64() * 1e3);
            }
            // A short call: one byte there and back, then hang up.
            let mut s = call.into_stream();
            s.write_all(b"x").await?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await?;
            hung_up = Some(Instant::now());
            drop(s);
        }
        srv.abort();
        anyhow::Ok(gaps)
    })?;
    println!("consecutive calls on one modem (modem model), median of {calls}:");
    println!(
        "  {:<28} {:>10} {:>10} {:>8}",
        "", "Bulkhead", "xl2tpd", "ratio"
    );
    println!(
        "  {:<28} {:>8.3}ms {:>10} {:>8}",
        "hang-up .. next connected",
        median(&mut gaps),
        "n/a",
        "-"
    );
    println!("  (xl2tpd drives no modem: it has no hang-up to wait for)");
    Ok(())
}
