//! Interop with the real xl2tpd (Debian), with tcpdump captures decoded by tshark:
//! - xl2tpd as the dialing client sends OCRQ for PRIMARY_ISP to Bulkhead's server,
//!   which dials through the modem model; PPP frames go round trip through the call;
//! - Bulkhead's server places an incoming call (ICRQ/ICRP/ICCN) to xl2tpd as LNS.
//!
//! xl2tpd starts pppd for each call; pppd cannot run here (no /dev/ppp), so each xl2tpd
//! runs in a private mount namespace with a stub bind-mounted over /usr/sbin/pppd that
//! sends one PPP frame and records what comes back. Needs root (unshare -m, tcpdump)
//! and the packages scripts/bootstrap installs.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_l2tp::hdlc;
use bulkhead_l2tp_share::server;
use bulkhead_modem::emulator::Line;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "s3cret";

fn need(cmd: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "{cmd} is missing: run scripts/bootstrap");
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An LCP Configure-Request with the given identifier, async-HDLC framed.
fn lcp_frame(id: u8) -> Vec<u8> {
    let mut out = Vec::new();
    hdlc::encode(
        &[0xff, 0x03, 0xc0, 0x21, 0x01, id, 0x00, 0x04],
        0xffff_ffff,
        &mut out,
    );
    out
}

/// Waits for a line matching `pred` on a child's output, keeping all output in `log`.
fn follow(
    out: impl std::io::Read + Send + 'static,
    log: Arc<Mutex<String>>,
    pred: impl Fn(&str) -> bool + Send + 'static,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.is_some() && pred(&line) {
                let _ = tx.take().unwrap().send(());
            }
            log.lock().unwrap().push_str(&line);
            log.lock().unwrap().push('\n');
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("child never became ready");
}

struct Xl2tpd {
    child: Child,
    ctl: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Xl2tpd {
    fn start(dir: &Path, name: &str, conf: &str, stub: &Path) -> Xl2tpd {
        let conf_path = dir.join(format!("{name}.conf"));
        std::fs::write(&conf_path, conf).unwrap();
        let ctl = dir.join(format!("{name}.ctl"));
        let pid = dir.join(format!("{name}.pid"));
        let script = format!(
            "mount --bind {} /usr/sbin/pppd && exec xl2tpd -D -c {} -p {} -C {}",
            stub.display(),
            conf_path.display(),
            pid.display(),
            ctl.display()
        );
        let mut child = Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn xl2tpd");
        let log = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().unwrap();
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                l2.lock().unwrap().push_str(&line);
            }
        });
        follow(child.stderr.take().unwrap(), log.clone(), |l| {
            l.contains("Listening on IP address")
        });
        Xl2tpd { child, ctl, log }
    }

    fn control(&self, cmd: &str) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.ctl)
            .unwrap();
        writeln!(f, "{cmd}").unwrap();
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Xl2tpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Capture {
    child: Child,
    file: PathBuf,
    ports: Vec<u16>,
}

impl Capture {
    fn start(dir: &Path, ports: &[u16]) -> Capture {
        let file = dir.join("l2tp.pcap");
        let filter = ports
            .iter()
            .map(|p| format!("udp port {p}"))
            .collect::<Vec<_>>()
            .join(" or ");
        let mut child = Command::new("tcpdump")
            .args(["-i", "lo", "-U", "--immediate-mode", "-w"])
            .arg(&file)
            .arg(&filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpdump");
        follow(
            child.stderr.take().unwrap(),
            Arc::new(Mutex::new(String::new())),
            |l| l.contains("listening on"),
        );
        Capture {
            child,
            file,
            ports: ports.to_vec(),
        }
    }

    /// Stops the capture and returns tshark's answer to a display filter.
    fn finish(mut self) -> impl Fn(&str, &[&str]) -> String {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let file = self.file.clone();
        let ports = self.ports.clone();
        move |filter: &str, fields: &[&str]| {
            let mut c = Command::new("tshark");
            c.arg("-r").arg(&file);
            for p in &ports {
                c.args(["-d", &format!("udp.port=={p},l2tp")]);
            }
            c.args(["-Y", filter]);
            if !fields.is_empty() {
                c.args(["-T", "fields", "-E", "separator=|"]);
                for f in fields {
                    c.args(["-e", f]);
                }
            }
            let out = c.output().expect("run tshark");
            if !out.status.success() {
                panic!(
                    "tshark failed on {}: {}",
                    file.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    }
}

fn stub_pppd(dir: &Path, send: &[u8]) -> (PathBuf, PathBuf) {
    let frame = dir.join("stub-frame.bin");
    std::fs::write(&frame, send).unwrap();
    let received = dir.join("stub-received.bin");
    let stub = dir.join("fakepppd.sh");
    std::fs::write(
        &stub,
        format!(
            "#!/bin/sh\n# Stands in for pppd: raw tty, send one frame, record the rest.\nstty raw -echo\ncat {}\nexec cat > {}\n",
            frame.display(),
            received.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (stub, received)
}

/// Waits (bounded) until `file` contains `needle`.
async fn file_gets(file: &Path, needle: &[u8], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(b) = std::fs::read(file) {
            if b.windows(needle.len()).any(|w| w == needle) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{what}: never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn secrets(dir: &Path) -> PathBuf {
    let p = dir.join("l2tp-secrets");
    std::fs::write(&p, format!("* * {SECRET}\n")).unwrap();
    p
}

fn assert_clean_capture(q: &impl Fn(&str, &[&str]) -> String, ours: u16, theirs: u16) {
    let bad = q("_ws.malformed || _ws.expert.severity >= error", &[]);
    assert!(
        bad.trim().is_empty(),
        "tshark found malformed or erroneous packets:\n{bad}"
    );
    let sent = q(&format!("l2tp && udp.srcport=={ours}"), &["l2tp.type"]);
    assert!(
        sent.lines().count() >= 4,
        "too few Bulkhead messages decoded: {sent}; all: {}",
        q("frame", &[])
    );
    let stops = q(
        &format!("l2tp.avp.message_type==4 && udp.srcport=={theirs}"),
        &["frame.number"],
    );
    assert!(
        stops.trim().is_empty(),
        "xl2tpd cleared the tunnel (StopCCN) in frames {stops}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xl2tpd_dials_primary_isp_through_bulkhead() {
    for c in ["xl2tpd", "tcpdump", "tshark", "unshare"] {
        need(c);
    }
    let dir = tempfile::tempdir().unwrap();
    let (echo, accepted) = echo_server().await;
    let (tty, _) = modem(
        dir.path(),
        "ttyX",
        vec![("5551234", Line::Tcp(echo.to_string()))],
    )
    .await;
    let profile = server_profile(
        "127.0.0.1:0".parse().unwrap(),
        vec![device("modem0", tty, true, false)],
        &[("PRIMARY_ISP", "5551234")],
    );
    let srv = server::start(profile).await.unwrap();
    let ours = srv.addrs[0].port();
    let theirs = free_udp_port();
    let cap = Capture::start(dir.path(), &[ours, theirs]);

    let frame = lcp_frame(1);
    let (stub, received) = stub_pppd(dir.path(), &frame);
    let conf = format!(
        "[global]\nlisten-addr = 127.0.0.1\nport = {theirs}\nforce userspace = yes\nauth file = {}\ndebug avp = yes\ndebug state = yes\n\
         [lac test]\nlns = 127.0.0.1:{ours}\nchallenge = yes\nhostname = xl2tpd-client\nrequire authentication = no\nautodial = no\n",
        secrets(dir.path()).display()
    );
    let x = Xl2tpd::start(dir.path(), "dialer", &conf, &stub);
    x.control("o test PRIMARY_ISP");
    // The stub's PPP frame went xl2tpd → Bulkhead → modem → echo service and all the way back.
    file_gets(&received, &frame, "the echoed PPP frame").await;
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "dialed exactly once"
    );
    let log = x.log();
    assert!(log.contains("Outgoing-Call-Connected"), "{log}");
    for bad in ["Unimplemented", "cannot be handled", "StopCCN"] {
        assert!(!log.contains(bad), "xl2tpd logged {bad:?}:\n{log}");
    }
    let q = cap.finish();
    assert_clean_capture(&q, ours, theirs);
    let types = q(
        &format!("udp.srcport=={theirs} && l2tp.avp.message_type"),
        &["l2tp.avp.message_type"],
    );
    assert!(
        types.lines().any(|l| l.split(',').next() == Some("7")),
        "xl2tpd sent no OCRQ: {types}"
    );
    drop(x);
    srv.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulkhead_places_an_incoming_call_to_xl2tpd() {
    for c in ["xl2tpd", "tcpdump", "tshark", "unshare"] {
        need(c);
    }
    let dir = tempfile::tempdir().unwrap();
    let theirs = free_udp_port();
    let from_stub = lcp_frame(1);
    let (stub, received) = stub_pppd(dir.path(), &from_stub);
    let conf = format!(
        "[global]\nlisten-addr = 127.0.0.1\nport = {theirs}\nforce userspace = yes\nauth file = {}\ndebug avp = yes\ndebug state = yes\n\
         [lns default]\nip range = 10.99.0.10-10.99.0.20\nlocal ip = 10.99.0.1\nrequire authentication = no\nchallenge = yes\nhostname = xl2tpd-lns\n",
        secrets(dir.path()).display()
    );
    let x = Xl2tpd::start(dir.path(), "lns", &conf, &stub);

    let (tty, ring) = modem(dir.path(), "ttyF", vec![]).await;
    let mut dev = device("fwd0", tty, false, true);
    let lns: SocketAddr = format!("127.0.0.1:{theirs}").parse().unwrap();
    dev.forward_incoming = Some(lns);
    let profile = server_profile("127.0.0.1:0".parse().unwrap(), vec![dev], &[]);
    let srv = server::start(profile).await.unwrap();
    // The server's tunnel to xl2tpd comes from an ephemeral port: capture by xl2tpd's.
    let cap = Capture::start(dir.path(), &[theirs]);

    // An outside caller rings the modem; the server answers and routes the call to xl2tpd.
    let mut outside = tokio::net::TcpStream::connect(ring).await.unwrap();
    let mut got = vec![0u8; from_stub.len()];
    tokio::time::timeout(Duration::from_secs(60), outside.read_exact(&mut got))
        .await
        .expect("stub frame in time")
        .unwrap();
    assert_eq!(
        got, from_stub,
        "PPP frame from xl2tpd's side reached the caller"
    );
    let to_stub = lcp_frame(2);
    outside.write_all(&to_stub).await.unwrap();
    file_gets(&received, &to_stub, "the caller's PPP frame").await;
    let log = x.log();
    assert!(log.contains("Call established"), "{log}");
    for bad in ["Unimplemented", "cannot be handled"] {
        assert!(!log.contains(bad), "xl2tpd logged {bad:?}:\n{log}");
    }
    let q = cap.finish();
    let bad = q("_ws.malformed || _ws.expert.severity >= error", &[]);
    assert!(
        bad.trim().is_empty(),
        "tshark found malformed packets:\n{bad}"
    );
    let ours = q(
        &format!("udp.dstport=={theirs} && l2tp.avp.message_type"),
        &["l2tp.avp.message_type"],
    );
    let firsts: Vec<&str> = ours
        .lines()
        .map(|l| l.split(',').next().unwrap_or(""))
        .collect();
    for t in ["1", "3", "10", "12"] {
        assert!(
            firsts.contains(&t),
            "Bulkhead's message type {t} missing: {firsts:?}"
        );
    }
    let stops = q(
        &format!("l2tp.avp.message_type==4 && udp.srcport=={theirs}"),
        &["frame.number"],
    );
    assert!(
        stops.trim().is_empty(),
        "xl2tpd cleared the tunnel: {stops}"
    );
    drop(x);
    srv.abort();
}
