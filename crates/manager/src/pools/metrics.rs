//! The pools' Prometheus metrics (docs/pools.md, "Metrics"): counters the
//! gateway moves as it answers, and gauges read from the allocator at each
//! scrape (so they can never drift from `pool show`).

use bulkhead_pool::{Allocator, PartitionState};
use bulkhead_pool_proto::RefuseReason;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolState {
    pool: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolProgram {
    pool: String,
    program: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
    code: u8,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Program {
    program: String,
}

/// 1 ms to about 65 s: a warm pool answers in milliseconds, a queued
/// request waits up to its timeout (at most 5 minutes on the wire).
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The pools' metrics; clones share the same values.
#[derive(Clone)]
pub(crate) struct PoolMetrics {
    partitions: Family<PoolState, Gauge>,
    allocations: Family<PoolProgram, Counter>,
    refusals: Family<Reason, Counter>,
    queue: Family<Program, Gauge>,
    latency: Family<Program, Histogram, fn() -> Histogram>,
}

impl Default for PoolMetrics {
    fn default() -> Self {
        Self {
            partitions: Family::default(),
            allocations: Family::default(),
            refusals: Family::default(),
            queue: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl PoolMetrics {
    /// Registers the metrics under `r` (the daemon's `bulkhead_` registry).
    pub(crate) fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("pool");
        r.register(
            "partitions",
            "Pool partitions by pool and state",
            self.partitions.clone(),
        );
        r.register(
            "allocations",
            "Sessions handed out (ALLOCATED sent), by pool and program",
            self.allocations.clone(),
        );
        r.register(
            "refusals",
            "ALLOCATE requests and connections refused, by reason",
            self.refusals.clone(),
        );
        r.register(
            "queue_length",
            "ALLOCATE requests waiting for an idle partition, by program",
            self.queue.clone(),
        );
        r.register(
            "allocate_seconds",
            "From ALLOCATE received to ALLOCATED sent, by program",
            self.latency.clone(),
        );
    }

    pub(crate) fn refused(&self, reason: RefuseReason) {
        self.refusals
            .get_or_create(&Reason {
                reason: reason.as_str(),
                code: reason.code(),
            })
            .inc();
    }

    /// A session was handed out for a request received at `since`.
    pub(crate) fn allocated(&self, pool: &str, program: &str, since: Instant) {
        self.allocations
            .get_or_create(&PoolProgram {
                pool: pool.to_string(),
                program: program.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&Program {
                program: program.to_string(),
            })
            .observe(since.elapsed().as_secs_f64());
    }

    /// Sets the gauges from the allocator: every state of every pool (zero
    /// included), the queue of every program a pool serves or a request
    /// waits for. Series of pools gone since the last scrape disappear.
    pub(crate) fn refresh(&self, alloc: &Allocator) {
        let mut states = BTreeMap::new();
        let mut queued: BTreeMap<String, i64> = BTreeMap::new();
        for spec in alloc.pools() {
            for state in PartitionState::NAMES {
                states.insert((spec.name.clone(), state), 0i64);
            }
            queued.insert(spec.program.clone(), 0);
            for p in alloc.partitions_of(&spec.name) {
                *states
                    .entry((spec.name.clone(), p.state.as_str()))
                    .or_default() += 1;
            }
        }
        for program in alloc.queued_programs() {
            *queued.entry(program.to_string()).or_default() += 1;
        }
        self.partitions.clear();
        for ((pool, state), n) in states {
            self.partitions
                .get_or_create(&PoolState { pool, state })
                .set(n);
        }
        self.queue.clear();
        for (program, n) in queued {
            self.queue.get_or_create(&Program { program }).set(n);
        }
    }
}
