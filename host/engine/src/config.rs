//! Engine configuration.

use std::path::PathBuf;
use std::time::Duration;

/// The largest linear memory a 32-bit wasm guest can address.
pub const MAX_WASM32_MEMORY: u64 = 4 << 30;

/// Limits and caching for the plugin runtime. One per process (one [`crate::Runtime`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Memory cap of one Store (one stage call), in bytes. At most 4 GiB.
    pub max_memory_bytes: u64,
    /// Wall-clock budget of one call into a plugin.
    pub stage_deadline: Duration,
    /// Period of the epoch ticker (the deadline's resolution).
    pub epoch_tick: Duration,
    /// Directory of compiled (AOT) artifacts; `None` compiles every load.
    pub cache_dir: Option<PathBuf>,
    /// Pooling allocator capacity: how many plugin instances may exist at once.
    pub max_instances: u32,
    /// Write `/tmp/perf-<pid>.map` so that `perf record` / `perf report` name the functions
    /// of compiled plugins (for profiling a plugin; components loaded from the AOT cache are
    /// registered too).
    pub perf_map: bool,
    /// Threads of the P-256 pool of the `crypto` import; 0 means one per CPU.
    pub crypto_threads: usize,
    /// Fixed bases (tables of 151.5 KiB each) one computation may register.
    pub max_fixed_bases_per_computation: usize,
    /// Computations whose fixed-base tables are kept between stages.
    pub max_cached_computations: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_memory_bytes: 1 << 30,
            stage_deadline: Duration::from_secs(600),
            epoch_tick: Duration::from_millis(10),
            cache_dir: None,
            max_instances: 64,
            perf_map: false,
            crypto_threads: 0,
            max_fixed_bases_per_computation: 16,
            max_cached_computations: 64,
        }
    }
}

impl EngineConfig {
    /// Checks the values are usable.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1 << 16..=MAX_WASM32_MEMORY).contains(&self.max_memory_bytes),
            "max_memory_bytes must be between 64 KiB and 4 GiB, got {}",
            self.max_memory_bytes
        );
        anyhow::ensure!(!self.epoch_tick.is_zero(), "epoch_tick must be positive");
        anyhow::ensure!(
            self.stage_deadline >= self.epoch_tick,
            "stage_deadline ({:?}) must be at least one epoch_tick ({:?})",
            self.stage_deadline,
            self.epoch_tick
        );
        anyhow::ensure!(self.max_instances > 0, "max_instances must be positive");
        anyhow::ensure!(
            self.crypto_threads <= 256,
            "crypto_threads must be at most 256, got {}",
            self.crypto_threads
        );
        anyhow::ensure!(
            (1..=1024).contains(&self.max_fixed_bases_per_computation),
            "max_fixed_bases_per_computation must be between 1 and 1024"
        );
        anyhow::ensure!(
            (1..=65536).contains(&self.max_cached_computations),
            "max_cached_computations must be between 1 and 65536"
        );
        Ok(())
    }

    /// The P-256 service's limits (0 threads = one per CPU).
    pub fn p256_limits(&self) -> crate::p256::P256Limits {
        let threads = match self.crypto_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        crate::p256::P256Limits {
            threads,
            max_fixed_bases_per_computation: self.max_fixed_bases_per_computation,
            max_cached_computations: self.max_cached_computations,
        }
    }

    /// The epoch deadline of one call, in ticks: enough whole ticks to cover
    /// `stage_deadline`, plus one because the first tick may come at once.
    pub fn deadline_ticks(&self) -> u64 {
        self.ticks_for(self.stage_deadline)
    }

    /// The epoch deadline for a budget of `budget`, in ticks (see
    /// [`EngineConfig::deadline_ticks`]).
    pub fn ticks_for(&self, budget: Duration) -> u64 {
        let tick = self.epoch_tick.as_nanos().max(1);
        let ticks = budget.as_nanos().div_ceil(tick);
        u64::try_from(ticks)
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = EngineConfig::default();
        c.validate().unwrap();
        assert_eq!(c.deadline_ticks(), 60_001);
    }

    #[test]
    fn rejects_bad_values() {
        let bad = [
            EngineConfig {
                max_memory_bytes: 5 << 30,
                ..Default::default()
            },
            EngineConfig {
                epoch_tick: Duration::ZERO,
                ..Default::default()
            },
            EngineConfig {
                stage_deadline: Duration::from_millis(1),
                ..Default::default()
            },
            EngineConfig {
                max_instances: 0,
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }

    #[test]
    fn deadline_ticks_round_up() {
        let c = EngineConfig {
            stage_deadline: Duration::from_millis(305),
            epoch_tick: Duration::from_millis(10),
            ..Default::default()
        };
        assert_eq!(c.deadline_ticks(), 32);
    }
}
