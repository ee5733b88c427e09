//! Per-row counters and the Prometheus text exposition.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

type Counter = (&'static str, &'static str, fn(&RowStats) -> u64);

#[derive(Debug, Default)]
pub struct RowStats {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub errors: AtomicU64,
    /// Streams open now (the per-row limit counts these).
    pub active: AtomicUsize,
    buckets: [AtomicU64; BUCKETS.len()],
    latency_sum_us: AtomicU64,
    latency_count: AtomicU64,
}

impl RowStats {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| s <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_sum_us.fetch_add(d.as_micros() as u64, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
    }

    pub fn add_bytes(&self, client_to_target: u64, target_to_client: u64) {
        self.bytes_in.fetch_add(client_to_target, Relaxed);
        self.bytes_out.fetch_add(target_to_client, Relaxed);
    }

    /// Takes a stream slot if fewer than `limit` are open; released on drop.
    pub fn acquire(self: &Arc<Self>, limit: Option<usize>) -> Option<ActiveGuard> {
        let prev = self.active.fetch_add(1, Relaxed);
        if limit.is_some_and(|l| prev >= l) {
            self.active.fetch_sub(1, Relaxed);
            return None;
        }
        Some(ActiveGuard(self.clone()))
    }
}

pub struct ActiveGuard(Arc<RowStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// Every row's counters, keyed by (listener, domain); rows that survive a
/// reload keep counting.
#[derive(Debug, Default)]
pub struct Stats {
    rows: Mutex<BTreeMap<(SocketAddr, String), Arc<RowStats>>>,
}

impl Stats {
    pub fn row(&self, listen: SocketAddr, domain: &str) -> Arc<RowStats> {
        self.rows
            .lock()
            .unwrap()
            .entry((listen, domain.to_string()))
            .or_default()
            .clone()
    }

    /// Prometheus text format, version 0.0.4.
    pub fn render(&self) -> String {
        let rows = self.rows.lock().unwrap();
        let mut out = String::new();
        let counters: [Counter; 5] = [
            (
                "connections_total",
                "Client connections routed to the row.",
                |r| r.connections.load(Relaxed),
            ),
            (
                "requests_total",
                "HTTP requests (or TLS connections) routed to the row.",
                |r| r.requests.load(Relaxed),
            ),
            ("bytes_in_total", "Bytes from clients to the target.", |r| {
                r.bytes_in.load(Relaxed)
            }),
            (
                "bytes_out_total",
                "Bytes from the target to clients.",
                |r| r.bytes_out.load(Relaxed),
            ),
            (
                "errors_total",
                "Refusals, unreachable targets, limits and malformed input.",
                |r| r.errors.load(Relaxed),
            ),
        ];
        for (name, help, get) in counters {
            let _ = writeln!(
                out,
                "# HELP portshare_{name} {help}\n# TYPE portshare_{name} counter"
            );
            for ((l, d), r) in rows.iter() {
                let _ = writeln!(
                    out,
                    "portshare_{name}{{listener=\"{l}\",domain=\"{d}\"}} {}",
                    get(r)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP portshare_active Streams open now.\n# TYPE portshare_active gauge"
        );
        for ((l, d), r) in rows.iter() {
            let _ = writeln!(
                out,
                "portshare_active{{listener=\"{l}\",domain=\"{d}\"}} {}",
                r.active.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP portshare_latency_seconds Request time (HTTP) or connection time (TLS).\n# TYPE portshare_latency_seconds histogram"
        );
        for ((l, d), r) in rows.iter() {
            let mut cum = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cum += r.buckets[i].load(Relaxed);
                let _ = writeln!(out, "portshare_latency_seconds_bucket{{listener=\"{l}\",domain=\"{d}\",le=\"{b}\"}} {cum}");
            }
            let count = r.latency_count.load(Relaxed);
            let _ = writeln!(out, "portshare_latency_seconds_bucket{{listener=\"{l}\",domain=\"{d}\",le=\"+Inf\"}} {count}");
            let sum = r.latency_sum_us.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "portshare_latency_seconds_sum{{listener=\"{l}\",domain=\"{d}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "portshare_latency_seconds_count{{listener=\"{l}\",domain=\"{d}\"}} {count}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_limits() {
        let s = Stats::default();
        let l: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let r = s.row(l, "a.test");
        r.requests.fetch_add(3, Relaxed);
        r.observe(Duration::from_millis(2));
        let g = r.acquire(Some(1)).unwrap();
        assert!(r.acquire(Some(1)).is_none());
        drop(g);
        assert!(r.acquire(Some(1)).is_some());
        let text = s.render();
        assert!(
            text.contains(
                "portshare_requests_total{listener=\"127.0.0.1:80\",domain=\"a.test\"} 3"
            ),
            "{text}"
        );
        assert!(text.contains("le=\"0.0025\"} 1"), "{text}");
        assert!(text.contains("le=\"0.001\"} 0"), "{text}");
    }
}
