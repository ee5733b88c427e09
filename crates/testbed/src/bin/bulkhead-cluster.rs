//! `bulkhead-cluster up [N] | down | env HOST | kill HOST | restart HOST | cut HOST | heal HOST`: the local cluster of
//! `scripts/cluster` (see `bulkhead_testbed::cluster`). The cluster's name
//! is `BULKHEAD_CLUSTER` (default `local`).

use bulkhead_testbed::cluster;
use std::path::PathBuf;

fn usage() -> ! {
    eprintln!(
        "usage: scripts/cluster up [N] | down | env HOST | kill HOST | restart HOST | cut HOST | heal HOST   (BULKHEAD_CLUSTER names the cluster)"
    );
    std::process::exit(2);
}

fn main() {
    let name = std::env::var("BULKHEAD_CLUSTER").unwrap_or_else(|_| "local".into());
    if name.is_empty() || name.len() > 12 || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
        eprintln!("BULKHEAD_CLUSTER {name:?} must be 1-12 letters and digits");
        std::process::exit(2);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_default();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["up", rest @ ..] => {
            let hosts = match rest {
                [] => 3,
                [n] => n
                    .parse()
                    .ok()
                    .filter(|n| (1..=26).contains(n))
                    .unwrap_or_else(|| usage()),
                _ => usage(),
            };
            let opts = cluster::Options {
                hosts,
                lease_ms: 5000,
                image_dir: bulkhead_testbed::image_dir(),
                bin_dir,
            };
            cluster::up(&name, &opts).map(|c| {
                for h in &c.hosts {
                    println!(
                        "host {} up: {} (export BULKHEAD_SOCKET={})",
                        h.name,
                        h.underlay,
                        h.socket.display()
                    );
                }
            })
        }
        ["down"] => {
            cluster::down(&name);
            Ok(())
        }
        ["env", host] => cluster::env_line(&name, host).map(|l| println!("{l}")),
        ["kill", host] => cluster::existing(&name)
            .and_then(|c| cluster::kill_host_all(&c, host))
            .map(|pids| println!("host {host}: killed bulkheadd and {} more", pids.len())),
        ["cut", host] => cluster::existing(&name)
            .and_then(|c| cluster::cut(&c, host))
            .map(|_| println!("host {host}: cut off from the other hosts and etcd")),
        ["restart", host] => cluster::existing(&name)
            .and_then(|c| cluster::restart_host(&c, host, &[]))
            .map(|_| println!("host {host}: bulkheadd started again")),
        ["heal", host] => cluster::existing(&name)
            .and_then(|c| cluster::heal(&c, host))
            .map(|_| println!("host {host}: reconnected")),
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
