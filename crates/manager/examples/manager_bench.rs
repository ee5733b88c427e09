//! Partition manager benchmarks, each next to its peer in the same run:
//! 1. start-to-ready of one partition: bulkheadd (`start --wait` over the API)
//!    vs libvirt (`virsh create`, ready line on the serial log) vs plain QEMU
//!    (same machine and kernel command line, ready line on stdout);
//! 2. N partitions started at once: bulkheadd vs libvirt;
//! 3. list/show latency: `bulkhead partition list|show` vs `virsh list|dominfo`
//!    (each a process, as a user runs them), plus the raw API round trip;
//! 4. the daemons' own memory with N partitions running;
//! 5. `partition list` over the TCP API (TLS, a new connection and handshake
//!    per call, as the CLI makes): in-process and as a CLI process.
//!
//! `cargo run --release -p bulkhead-manager --example manager_bench -- [BOOTS] [CONCURRENT]`
//! (bench/manager/run prepares libvirt and runs this), or `-- api [REPS] [N]`
//! for measure 5 alone (`ONLY=api bench/manager/run`).

use bulkhead_engine::{cmdline, host, PartitionSpec};
use bulkhead_manager::client::Client;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const READY: Duration = Duration::from_secs(300);
const URI: &str = "qemu:///system";
const MEM: u64 = 256;

use bulkhead_testbed::image_dir as image;

#[path = "common/daemon.rs"]
mod daemon;
use daemon::{bin, Daemon, TOKEN};

fn spec(name: &str) -> PartitionSpec {
    let img = image();
    let mut s = PartitionSpec::new(name, img.join("vmlinux"), img.join("initramfs.cpio.gz"));
    s.memory_mib = MEM;
    s
}

/// The kernel command line the engine gives a partition of this name.
fn append(name: &str) -> String {
    cmdline::kernel_cmdline(&spec(name), false, host::probe().tsc_khz)
}

async fn bulkhead_start(c: &Client, name: &str) -> Duration {
    let t0 = Instant::now();
    c.post(
        &format!("/v1/partitions/{name}/start"),
        &json!({ "wait": true }),
    )
    .await
    .unwrap_or_else(|e| panic!("start {name}: {e}"));
    t0.elapsed()
}

async fn bulkhead_stop(c: &Client, name: &str) {
    c.post(
        &format!("/v1/partitions/{name}/stop"),
        &json!({ "force": true }),
    )
    .await
    .unwrap();
}

fn domain_xml(name: &str, log: &Path) -> String {
    let img = image();
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>{MEM}</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='microvm'>hvm</type><kernel>{}</kernel><initrd>{}</initrd>\
         <cmdline>{}</cmdline></os><cpu mode='maximum' migratable='off'/><on_poweroff>destroy</on_poweroff>\
         <devices><serial type='file'><source path='{}'/><target port='0'/></serial>\
         <controller type='usb' model='none'/><memballoon model='none'/></devices></domain>",
        img.join("vmlinux").display(),
        img.join("initramfs.cpio.gz").display(),
        append(name),
        log.display()
    )
}

fn virsh(args: &[&str]) -> std::process::Output {
    Command::new("virsh")
        .arg("-q")
        .arg("-c")
        .arg(URI)
        .args(args)
        .output()
        .unwrap()
}

/// `virsh create` to the ready line in the domain's serial log.
async fn libvirt_start(dir: &Path, name: &str) -> Duration {
    let log = dir.join(format!("{name}.log"));
    let _ = std::fs::remove_file(&log);
    let xml = dir.join(format!("{name}.xml"));
    std::fs::write(&xml, domain_xml(name, &log)).unwrap();
    let t0 = Instant::now();
    let out = tokio::process::Command::new("virsh")
        .args(["-q", "-c", URI, "create"])
        .arg(&xml)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "virsh create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No event for a line in a file: poll it finely (5 ms), bounded.
    while t0.elapsed() < READY {
        if std::fs::read_to_string(&log).is_ok_and(|s| s.contains(bulkhead_engine::READY_LINE)) {
            return t0.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("libvirt domain {name} never became ready");
}

fn libvirt_stop(name: &str) {
    let _ = virsh(&["destroy", name]);
}

/// Plain QEMU by hand: the engine's machine, CPU model and kernel command line.
async fn plain_start(name: &str) -> Duration {
    let line = bulkhead_engine::READY_LINE;
    let cpu = spec(name).cpu_model.qemu_cpu();
    let extra = ["-cpu", cpu.as_str()];
    bulkhead_testbed::plain_qemu_to_ready(&image(), MEM, &append(name), &extra, line, READY)
        .await
        .expect("plain QEMU never printed the ready line")
}

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn row(label: &str, v: &[Duration]) {
    println!(
        "  {label:<34} median {:>8.1} ms   p90 {:>8.1} ms   (n={})",
        ms(pct(v, 0.5)),
        ms(pct(v, 0.9)),
        v.len()
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn pid_of(name: &str) -> Option<u32> {
    let out = Command::new("pgrep")
        .args(["-o", "-x", name])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn time_cmd(cmd: &mut Command) -> Duration {
    let t0 = Instant::now();
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t0.elapsed()
}

/// `partition list` over TLS: the API in-process and the CLI as a process.
async fn tls_list(d: &Daemon, reps: usize) {
    let tls = d.tls_client();
    let fp = d.fingerprint();
    let cli = bin("bulkhead");
    let (mut tl, mut tcli) = (vec![], vec![]);
    for _ in 0..reps {
        let t0 = Instant::now();
        tls.get("/v1/partitions").await.unwrap();
        tl.push(t0.elapsed());
        tcli.push(time_cmd(Command::new(&cli).args([
            "partition",
            "list",
            "--api",
            &d.tcp,
            "--token",
            TOKEN,
            "--tls-fingerprint",
            &fp,
        ])));
    }
    println!("partition list over the TCP API (TLS, pinned certificate, a new connection each):");
    row("API GET /v1/partitions over TLS", &tl);
    row("bulkhead partition list --api (TLS)", &tcli);
    println!(
        "  target: API over TLS median <= 2 ms: {}",
        if ms(pct(&tl, 0.5)) <= 2.0 {
            "met"
        } else {
            "missed"
        }
    );
}

/// `api [REPS] [PARTITIONS]`: only the API latency, with partitions
/// defined (not booted); needs neither libvirt nor a boot.
async fn api_only(reps: usize, n: usize) {
    let d = Daemon::start();
    let c = d.client();
    for i in 0..n {
        c.post(
            "/v1/partitions",
            &json!({ "name": format!("c{i}"), "memory_mib": MEM, "cpu_percent": 10 }),
        )
        .await
        .unwrap();
    }
    let mut al = vec![];
    for _ in 0..reps {
        let t0 = Instant::now();
        c.get("/v1/partitions").await.unwrap();
        al.push(t0.elapsed());
    }
    println!("{n} partitions defined:");
    row("API GET /v1/partitions (unix socket)", &al);
    tls_list(&d, reps).await;
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("api") {
        let reps = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
        let n = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10);
        return api_only(reps, n).await;
    }
    let boots: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let conc: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let dir = tempfile::Builder::new()
        .prefix("bhbench-lv")
        .tempdir()
        .unwrap();
    let d = Daemon::start();
    let c = d.client();
    c.post(
        "/v1/partitions",
        &json!({ "name": "one", "memory_mib": MEM, "cpu_percent": 100 }),
    )
    .await
    .unwrap();

    // 1. One partition, alternating the three so load drift hits all alike.
    let (mut bh, mut lv, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..boots {
        bh.push(bulkhead_start(&c, "one").await);
        bulkhead_stop(&c, "one").await;
        let name = format!("bhbench-{i}");
        lv.push(libvirt_start(dir.path(), &name).await);
        libvirt_stop(&name);
        plain.push(plain_start("plain").await);
    }
    println!("start-to-ready, one partition (1 vCPU, {MEM} MiB, TCG, microvm):");
    row("bulkheadd (start --wait, API)", &bh);
    row("libvirt (virsh create)", &lv);
    row("plain QEMU by hand", &plain);
    println!(
        "  ratio bulkheadd/plain QEMU: median {:.3}   bulkheadd/libvirt: median {:.3}",
        ms(pct(&bh, 0.5)) / ms(pct(&plain, 0.5)),
        ms(pct(&bh, 0.5)) / ms(pct(&lv, 0.5))
    );

    // 2. N at once.
    for i in 0..conc {
        c.post(
            "/v1/partitions",
            &json!({ "name": format!("c{i}"), "memory_mib": MEM, "cpu_percent": 100 }),
        )
        .await
        .unwrap();
    }
    let t0 = Instant::now();
    let starts: Vec<_> = (0..conc)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { bulkhead_start(&c, &format!("c{i}")).await })
        })
        .collect();
    for s in starts {
        s.await.unwrap();
    }
    let bh_all = t0.elapsed();
    let t0 = Instant::now();
    let starts: Vec<_> = (0..conc)
        .map(|i| {
            let p = dir.path().to_path_buf();
            tokio::spawn(async move { libvirt_start(&p, &format!("bhbench-c{i}")).await })
        })
        .collect();
    for s in starts {
        s.await.unwrap();
    }
    let lv_all = t0.elapsed();
    println!("{conc} partitions started at once, until every one is ready:");
    println!(
        "  bulkheadd {:>8.0} ms   libvirt {:>8.0} ms   ratio {:.3}",
        ms(bh_all),
        ms(lv_all),
        ms(bh_all) / ms(lv_all)
    );

    // 3. Daemon memory with N partitions each.
    let bh_rss = rss_kib(d.child.id());
    let lvd = pid_of("libvirtd").map(rss_kib).unwrap_or(0);
    let vlog = pid_of("virtlogd").map(rss_kib).unwrap_or(0);
    println!("daemon memory (RSS) with {conc} partitions running:");
    println!(
        "  bulkheadd {:.1} MiB   libvirtd {:.1} MiB (+ virtlogd {:.1} MiB)   ratio bulkheadd/libvirtd {:.3}",
        bh_rss as f64 / 1024.0,
        lvd as f64 / 1024.0,
        vlog as f64 / 1024.0,
        bh_rss as f64 / lvd.max(1) as f64
    );

    // 4. list/show latency with N partitions defined and running.
    let sock = d.socket.to_string_lossy().into_owned();
    let cli = bin("bulkhead");
    let reps = 30;
    let (mut bl, mut bs, mut vl, mut vs, mut al, mut ashow) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..reps {
        bl.push(time_cmd(Command::new(&cli).args([
            "partition",
            "list",
            "--socket",
            &sock,
        ])));
        vl.push(time_cmd(
            Command::new("virsh").args(["-q", "-c", URI, "list"]),
        ));
        bs.push(time_cmd(Command::new(&cli).args([
            "partition",
            "show",
            "c0",
            "--socket",
            &sock,
        ])));
        vs.push(time_cmd(Command::new("virsh").args([
            "-q",
            "-c",
            URI,
            "dominfo",
            "bhbench-c0",
        ])));
        let t0 = Instant::now();
        c.get("/v1/partitions").await.unwrap();
        al.push(t0.elapsed());
        let t0 = Instant::now();
        c.get("/v1/partitions/c0").await.unwrap();
        ashow.push(t0.elapsed());
    }
    println!("list/show latency, {conc} partitions running (each command a new process):");
    row("bulkhead partition list", &bl);
    row("virsh list", &vl);
    row("bulkhead partition show", &bs);
    row("virsh dominfo", &vs);
    row("API GET /v1/partitions (in-process)", &al);
    row("API GET /v1/partitions/c0", &ashow);
    println!(
        "  ratio list bulkhead/virsh: {:.3}   show bulkhead/virsh: {:.3}",
        ms(pct(&bl, 0.5)) / ms(pct(&vl, 0.5)),
        ms(pct(&bs, 0.5)) / ms(pct(&vs, 0.5))
    );

    // 5. The TCP API over TLS, with the same N partitions.
    tls_list(&d, reps).await;

    for i in 0..conc {
        libvirt_stop(&format!("bhbench-c{i}"));
        let _ = c
            .call(
                hyper::Method::DELETE,
                &format!("/v1/partitions/c{i}?force=true"),
                None,
            )
            .await;
    }
    let _ = c
        .call(hyper::Method::DELETE, "/v1/partitions/one?force=true", None)
        .await;
}
