//! The etcd store against the SQLite store on the same records: insert,
//! get, update and list latency (median and p90), etcd on a 3-member cluster
//! on loopback, SQLite on a file. Run by bench/store/run:
//! `store_bench [PARTITIONS] [REPS]` (default 100 partitions, 200 reps).

use bulkhead_store::{conformance::record, PartitionRecord, Scope, SqliteStore, Store};
use bulkhead_testbed::EtcdCluster;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// (median, p90) of `samples`.
fn quantiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9))
}

/// Per operation, the latencies of one store.
async fn measure(
    s: &dyn Store,
    partitions: usize,
    reps: usize,
) -> Vec<(&'static str, Vec<Duration>)> {
    let mut insert = Vec::new();
    for i in 0..partitions {
        let t = Instant::now();
        s.insert(&record(&format!("p{i:04}")), "created")
            .await
            .expect("insert");
        insert.push(t.elapsed());
    }
    let (mut get, mut update, mut list) = (Vec::new(), Vec::new(), Vec::new());
    let mut r: PartitionRecord = s.get("p0000").await.unwrap().unwrap();
    for i in 0..reps {
        let name = format!("p{:04}", i % partitions);
        let t = Instant::now();
        s.get(&name).await.expect("get");
        get.push(t.elapsed());
        let t = Instant::now();
        r = s.update(&r, "bench").await.expect("update");
        update.push(t.elapsed());
        let t = Instant::now();
        let all = s.list(Scope::All).await.expect("list");
        list.push(t.elapsed());
        assert_eq!(all.len(), partitions);
    }
    vec![
        ("insert", insert),
        ("get", get),
        ("update", update),
        ("list", list),
    ]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a count"));
    let partitions = args.next().unwrap_or(100).max(1);
    let reps = args.next().unwrap_or(200).max(1);

    let cluster = EtcdCluster::start(3);
    let etcd: Arc<dyn Store> = Arc::new(
        bulkhead_store_etcd::connect(&cluster.endpoints(), "/bench")
            .await
            .expect("etcd"),
    );
    let db = std::env::temp_dir().join(format!("bulkhead-store-bench-{}.db", std::process::id()));
    let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(&db, "bench-host").expect("sqlite"));

    let e = measure(&*etcd, partitions, reps).await;
    let s = measure(&*sqlite, partitions, reps).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }

    println!("store latency, {partitions} partitions, {reps} reps (ms; etcd: 3 members on loopback; sqlite: a WAL file)");
    println!(
        "{:<8} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "op", "etcd p50", "etcd p90", "sqlite p50", "sqlite p90", "ratio"
    );
    for ((op, es), (_, ss)) in e.into_iter().zip(s) {
        let ((e50, e90), (s50, s90)) = (quantiles(es), quantiles(ss));
        let ratio = e50.as_secs_f64() / s50.as_secs_f64().max(1e-9);
        println!(
            "{op:<8} {:>12} {:>12} {:>12} {:>12} {ratio:>7.1}x",
            ms(e50),
            ms(e90),
            ms(s50),
            ms(s90)
        );
    }
}
