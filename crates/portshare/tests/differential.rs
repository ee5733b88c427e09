//! Differential test: the same corpus of malformed and ambiguous request
//! streams through Bulkhead, real nginx and real HAProxy, each in front of
//! its own pair of raw-echo backends (a.test, b.test) that record the exact
//! bytes they receive. For every case Bulkhead either refuses or forwards
//! bytes that a strict parser reads as exactly the client's requests, each at
//! the backend of the domain it names; it fails if any request reaches
//! another domain's backend, or if Bulkhead delivers, unchanged, a request
//! that the stricter of the two peers did not deliver.

#[path = "differential/cases.rs"]
mod cases;
mod common;
#[path = "differential/peers.rs"]
mod peers;
#[path = "differential/strict.rs"]
mod strict;

use cases::Case;
use peers::Echo;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;
use strict::Req;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one proxy did with one case.
#[derive(Debug, Default)]
struct Outcome {
    /// Status codes the client received.
    statuses: Vec<u16>,
    /// Requests the backends read, with the domain of the backend.
    delivered: Vec<(&'static str, Req)>,
    /// What a strict parser found after the last whole request, per connection.
    errors: Vec<String>,
    tunnel: Vec<u8>,
    hung: bool,
}

impl Outcome {
    fn set(&self) -> BTreeSet<(&'static str, String)> {
        self.delivered
            .iter()
            .map(|(d, r)| (*d, r.target_path()))
            .collect()
    }

    fn summary(&self) -> String {
        let s: Vec<String> = self.statuses.iter().map(|s| s.to_string()).collect();
        let d: Vec<String> = self
            .delivered
            .iter()
            .map(|(dom, r)| format!("{}{}", &dom[..1], r.target_path()))
            .collect();
        format!(
            "[{}] -> {{{}}}{}{}",
            s.join(","),
            d.join(" "),
            if self.errors.is_empty() {
                ""
            } else {
                " UNREADABLE"
            },
            if self.hung { " hung" } else { "" }
        )
    }
}

trait Path {
    fn target_path(&self) -> String;
}

impl Path for Req {
    /// The path of an origin- or absolute-form target.
    fn target_path(&self) -> String {
        let t = &self.target;
        match t.to_ascii_lowercase().find("://") {
            Some(i) => {
                let rest = &t[i + 3..];
                rest.find('/').map_or("/".into(), |j| rest[j..].to_string())
            }
            None => t.clone(),
        }
    }
}

/// Status codes at the start of each response in `buf` (bodies here never
/// hold `HTTP/1.`).
fn statuses(buf: &[u8]) -> Vec<u16> {
    buf.windows(12)
        .filter(|w| w.starts_with(b"HTTP/1.") && w[8] == b' ')
        .filter_map(|w| std::str::from_utf8(&w[9..12]).ok()?.parse().ok())
        .collect()
}

async fn run(case: &Case, proxy: SocketAddr, backends: &[Echo; 2]) -> Outcome {
    let marks: Vec<Vec<usize>> = backends.iter().map(|b| b.marks()).collect();
    let mut out = Outcome::default();
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let _ = s.write_all(&case.bytes).await;
    // Every proxy here closes an idle client within 2 s: read to EOF.
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    out.hung = read.is_err();
    out.statuses = statuses(&got);
    for (b, m) in backends.iter().zip(&marks) {
        for bytes in b.since(m) {
            let (reqs, tail, tunnel) = strict::parse_all(&bytes);
            out.delivered.extend(reqs.into_iter().map(|r| (b.dom, r)));
            if let Err(e) = tail {
                out.errors.push(format!(
                    "{}: {e}: {:?}",
                    b.dom,
                    String::from_utf8_lossy(&bytes)
                ));
            }
            out.tunnel.extend_from_slice(&tunnel);
        }
    }
    out
}

/// Bulkhead's failures on `case`, judged against both peers.
fn judge(case: &Case, bh: &Outcome, peers: [(&str, &Outcome); 2]) -> Vec<String> {
    let mut f = Vec::new();
    let allowed: BTreeSet<(&str, String)> = case
        .allowed
        .iter()
        .map(|(d, p)| (*d, p.to_string()))
        .collect();
    let mut seen = BTreeSet::new();
    for (dom, r) in &bh.delivered {
        if r.host.as_deref() != Some(*dom) {
            f.push(format!(
                "{} reached the {dom} backend with Host {:?}",
                r.target, r.host
            ));
        }
        let key = (*dom, r.target_path());
        if !allowed.contains(&key) {
            f.push(format!("{key:?} is none of the client's requests"));
        }
        if !seen.insert(key.clone()) {
            f.push(format!("{key:?} delivered twice"));
        }
    }
    for e in &bh.errors {
        f.push(format!("forwarded bytes a strict parser cannot read: {e}"));
    }
    if case.must && (bh.set() != allowed || bh.statuses.iter().any(|&s| s >= 400)) {
        f.push(format!(
            "canonical stream not served whole: {}",
            bh.summary()
        ));
    }
    if let Some(t) = case.tunnel {
        if bh.tunnel != t {
            f.push(format!(
                "tunnel got {:?}, want {:?}",
                String::from_utf8_lossy(&bh.tunnel),
                String::from_utf8_lossy(t)
            ));
        }
    }
    // The stricter peer: the one that delivered fewer requests.
    let (pname, strict) = if peers[0].1.delivered.len() <= peers[1].1.delivered.len() {
        peers[0]
    } else {
        peers[1]
    };
    let theirs = strict.set();
    for (dom, r) in &bh.delivered {
        let unchanged = case.bytes.windows(r.raw.len()).any(|w| w == r.raw);
        if !theirs.contains(&(*dom, r.target_path())) && unchanged {
            f.push(format!(
                "looser than {pname}: delivered {} unchanged, {pname} did not",
                r.target
            ));
        }
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulkhead_is_never_looser_than_nginx_and_haproxy() {
    for tool in ["nginx", "haproxy"] {
        assert!(common::tool(tool), "{tool} missing: run scripts/bootstrap");
    }
    let pair = || async { [Echo::start("a.test").await, Echo::start("b.test").await] };
    let (bb, nb, hb) = (pair().await, pair().await, pair().await);
    let mut cfg = common::config(vec![
        common::route("a.test", bb[0].addr),
        common::route("b.test", bb[1].addr),
    ]);
    cfg.listeners[0].idle_timeout = common::ms(2000);
    cfg.listeners[0].header_timeout = common::ms(2000);
    let (_server, bp) = common::start(cfg).await;
    let nginx = peers::nginx(nb[0].addr, nb[1].addr);
    let haproxy = peers::haproxy(hb[0].addr, hb[1].addr);

    let mut report = String::new();
    let mut failures = Vec::new();
    for case in cases::all() {
        let (b, n, h) = tokio::join!(
            run(&case, bp, &bb),
            run(&case, nginx.addr, &nb),
            run(&case, haproxy.addr, &hb)
        );
        report += &format!(
            "{:<28} bulkhead {:<34} nginx {:<34} haproxy {}\n",
            case.name,
            b.summary(),
            n.summary(),
            h.summary()
        );
        for e in judge(&case, &b, [(nginx.name, &n), (haproxy.name, &h)]) {
            failures.push(format!("{}: {e}", case.name));
        }
    }
    eprintln!("{report}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
