//! Host capacity: what the host has, what partitions hold, and whether one
//! more fits. Pure arithmetic over numbers the caller gathers, so it is tested
//! without a host.

use crate::config::CapacityConfig;
use serde::{Deserialize, Serialize};

/// What the host offers, after the configured reserve and overcommit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Capacity {
    pub host_cpus: u32,
    pub host_memory_mib: u64,
    /// Sum of entitlements allowed, percent of one CPU.
    pub cpu_percent: u64,
    /// Memory partitions may hold (guest + QEMU overhead), MiB.
    pub memory_mib: u64,
}

/// What a partition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Demand {
    pub cpu_percent: u64,
    pub memory_mib: u64,
}

impl std::ops::Add for Demand {
    type Output = Demand;
    fn add(self, o: Demand) -> Demand {
        Demand {
            cpu_percent: self.cpu_percent + o.cpu_percent,
            memory_mib: self.memory_mib + o.memory_mib,
        }
    }
}

impl std::iter::Sum for Demand {
    fn sum<I: Iterator<Item = Demand>>(it: I) -> Demand {
        it.fold(Demand::default(), |a, b| a + b)
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("over capacity: {what} needs {need}, only {free} free of {total} ({used} held by other partitions)")]
pub struct OverCapacity {
    pub what: &'static str,
    pub need: String,
    pub free: String,
    pub total: String,
    pub used: String,
}

impl Capacity {
    pub fn new(cfg: &CapacityConfig, host_cpus: u32, host_memory_mib: u64) -> Self {
        let cpus = cfg.cpus.unwrap_or(host_cpus);
        let mem = cfg.memory_mib.unwrap_or(host_memory_mib);
        Self {
            host_cpus: cpus,
            host_memory_mib: mem,
            cpu_percent: (cpus as f64 * 100.0 * cfg.cpu_overcommit).floor() as u64,
            memory_mib: mem.saturating_sub(cfg.memory_reserve_mib),
        }
    }

    /// Detects the host's CPUs and memory.
    pub fn detect(cfg: &CapacityConfig) -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        Self::new(cfg, cpus, host_memory_mib().unwrap_or(0))
    }

    /// Refuses `new` if it does not fit beside `held`.
    pub fn admit(&self, held: Demand, new: Demand) -> Result<(), OverCapacity> {
        if held.cpu_percent + new.cpu_percent > self.cpu_percent {
            return Err(OverCapacity {
                what: "CPU entitlement",
                need: format!("{}%", new.cpu_percent),
                free: format!("{}%", self.cpu_percent.saturating_sub(held.cpu_percent)),
                total: format!("{}%", self.cpu_percent),
                used: format!("{}%", held.cpu_percent),
            });
        }
        if held.memory_mib + new.memory_mib > self.memory_mib {
            return Err(OverCapacity {
                what: "memory (guest + QEMU overhead)",
                need: format!("{} MiB", new.memory_mib),
                free: format!("{} MiB", self.memory_mib.saturating_sub(held.memory_mib)),
                total: format!("{} MiB", self.memory_mib),
                used: format!("{} MiB", held.memory_mib),
            });
        }
        Ok(())
    }
}

/// MemTotal from /proc/meminfo, MiB.
pub fn host_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_total(&text)
}

fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CapacityConfig {
        CapacityConfig {
            cpus: None,
            memory_mib: None,
            cpu_overcommit: 1.5,
            memory_reserve_mib: 1000,
            qemu_overhead_mib: 100,
        }
    }

    #[test]
    fn admits_up_to_the_limit_and_says_what_is_free() {
        let c = Capacity::new(&cfg(), 2, 5000);
        assert_eq!(c.cpu_percent, 300);
        assert_eq!(c.memory_mib, 4000);
        let held = Demand {
            cpu_percent: 250,
            memory_mib: 1000,
        };
        c.admit(
            held,
            Demand {
                cpu_percent: 50,
                memory_mib: 3000,
            },
        )
        .unwrap();
        let e = c
            .admit(
                held,
                Demand {
                    cpu_percent: 51,
                    memory_mib: 10,
                },
            )
            .unwrap_err();
        assert_eq!(e.free, "50%");
        assert!(e.to_string().contains("only 50% free of 300%"), "{e}");
        let e = c
            .admit(
                held,
                Demand {
                    cpu_percent: 10,
                    memory_mib: 3001,
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("3000 MiB free"), "{e}");
    }

    #[test]
    fn config_overrides_detection_and_meminfo_parses() {
        let mut k = cfg();
        k.cpus = Some(8);
        k.memory_mib = Some(500);
        let c = Capacity::new(&k, 2, 99999);
        assert_eq!(c.cpu_percent, 1200);
        assert_eq!(c.memory_mib, 0);
        assert_eq!(
            parse_meminfo_total("MemTotal:       24684544 kB\nMemFree: 1 kB\n"),
            Some(24106)
        );
        assert_eq!(parse_meminfo_total("garbage"), None);
    }
}
