//! Idleness of a partition (issue 14, hibernation on idleness), sans I/O:
//! the manager feeds samples of QEMU's CPU time (its cgroup's usage) and of
//! the bytes through its TAP, and [`IdleTracker`] says for how long both
//! have stayed below the thresholds. Reading the counters and acting on the
//! answer are `manager/hibernate.rs`'s.

use std::time::{Duration, Instant};

/// How often the manager samples a partition that may hibernate when idle.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// CPU use at or below this, in percent of one host CPU (QEMU's every
/// thread, the guest's vCPUs included), counts as idle. An idle guest under
/// TCG costs QEMU about 1-3% (timer ticks, the agent); a guest running
/// anything at all, even a shell loop with a sleep, is above it.
pub const IDLE_CPU_PERCENT: f64 = 5.0;

/// Traffic at or below this, in bytes per second through the partition's
/// TAP (both directions), counts as idle: stray ARP and neighbour discovery
/// stay under it; one ping a second (98 bytes each way) is above it.
pub const IDLE_NET_BYTES_PER_SEC: u64 = 128;

/// One reading of a partition's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at: Instant,
    /// Cumulative CPU time, ns.
    pub cpu_ns: u64,
    /// Cumulative bytes received and sent on its adapters.
    pub net_bytes: u64,
}

/// How long a partition has been idle, from its samples.
#[derive(Debug, Clone, Default)]
pub struct IdleTracker {
    last: Option<Sample>,
    /// Start of the current idle stretch.
    idle_since: Option<Instant>,
}

impl IdleTracker {
    /// Takes a sample; returns how long the partition has been idle as of
    /// it (zero while busy, and for the first sample: nothing is known yet).
    pub fn observe(&mut self, s: Sample) -> Duration {
        let prev = self.last.replace(s);
        let Some(prev) = prev else {
            return Duration::ZERO;
        };
        let dt = s.at.saturating_duration_since(prev.at);
        if dt.is_zero() {
            return self.idle_for(s.at);
        }
        // Counters that went backwards (a new QEMU) say nothing: busy.
        let busy = match (
            s.cpu_ns.checked_sub(prev.cpu_ns),
            s.net_bytes.checked_sub(prev.net_bytes),
        ) {
            (Some(cpu), Some(net)) => {
                let secs = dt.as_secs_f64();
                let cpu_percent = cpu as f64 / 1e7 / secs;
                cpu_percent > IDLE_CPU_PERCENT || net as f64 / secs > IDLE_NET_BYTES_PER_SEC as f64
            }
            _ => true,
        };
        if busy {
            self.idle_since = None;
        } else if self.idle_since.is_none() {
            // Idle since the previous sample: the whole window was.
            self.idle_since = Some(prev.at);
        }
        self.idle_for(s.at)
    }

    fn idle_for(&self, now: Instant) -> Duration {
        self.idle_since
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, secs: u64, cpu_ms: u64, net: u64) -> Sample {
        Sample {
            at: t0 + Duration::from_secs(secs),
            cpu_ns: cpu_ms * 1_000_000,
            net_bytes: net,
        }
    }

    #[test]
    fn idleness_accumulates_and_resets() {
        let t0 = Instant::now();
        let mut t = IdleTracker::default();
        assert_eq!(t.observe(at(t0, 0, 0, 0)), Duration::ZERO);
        // 2% of a CPU, 100 B/s: idle since the first sample.
        assert_eq!(t.observe(at(t0, 2, 40, 200)), Duration::from_secs(2));
        assert_eq!(t.observe(at(t0, 4, 80, 400)), Duration::from_secs(4));
        // 50% of a CPU for two seconds: busy, the count starts again.
        assert_eq!(t.observe(at(t0, 6, 1080, 400)), Duration::ZERO);
        assert_eq!(t.observe(at(t0, 8, 1100, 400)), Duration::from_secs(2));
        // Traffic alone keeps it awake: 10 kB in two seconds.
        assert_eq!(t.observe(at(t0, 10, 1120, 10_400)), Duration::ZERO);
        // A counter going backwards (a new QEMU) is not idleness.
        assert_eq!(t.observe(at(t0, 12, 0, 0)), Duration::ZERO);
        assert_eq!(t.observe(at(t0, 14, 10, 0)), Duration::from_secs(2));
    }

    #[test]
    fn thresholds_are_inclusive_of_idle() {
        let t0 = Instant::now();
        let mut t = IdleTracker::default();
        t.observe(at(t0, 0, 0, 0));
        // Exactly 5% and 128 B/s over 2 s: still idle.
        assert_eq!(t.observe(at(t0, 2, 100, 256)), Duration::from_secs(2));
        // Just over 5%.
        assert_eq!(t.observe(at(t0, 4, 201, 256)), Duration::ZERO);
    }
}
