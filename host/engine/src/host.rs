//! The per-Store host state and the version-independent implementations of the host imports.
//! The bindings modules (`v1`, ...) adapt their generated traits to these.

use std::sync::Arc;

use halo_protocol::{IdentityFailure, StageIdentity, StageSignature};

use rand::TryRngCore;
use std::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

use crate::crypto;

/// The largest `random.fill` one call hands out.
pub const MAX_RANDOM_FILL: u32 = 64 << 20;
/// Log messages longer than this are cut (a plugin cannot flood the host's log lines).
pub const MAX_LOG_MESSAGE: usize = 16 << 10;
/// How much of the plugin's last error log line a trap message quotes.
const MAX_TRAP_CONTEXT: usize = 512;

/// Who a Store runs for: attributes log lines and names the plugin in errors.
#[derive(Clone, Debug)]
pub(crate) struct Attribution {
    pub plugin: Arc<str>,
    pub version: Arc<str>,
}

/// The data of one Store (one stage call).
pub(crate) struct HostState {
    pub who: Attribution,
    /// Global id of the computation this call serves ("" for `describe`).
    pub computation: String,
    pub limits: Limits,
    /// The last error-level line the plugin logged (the SDK's panic hook logs the panic
    /// message there before the guest traps), for trap messages.
    pub last_error_log: Option<String>,
    /// The duchy's identity services for this call (`identity` import).
    pub identity: Option<Arc<dyn StageIdentity>>,
    /// The P-256 service (`crypto` import, WIT 1.2).
    pub p256: Arc<crate::p256::P256Service>,
    /// This call's `fixed-base` handles.
    pub resources: ResourceTable,
    /// Handles created by this call (capped).
    pub handles: usize,
    /// When this call's budget ends (host imports check it too).
    pub deadline: Instant,
}

impl HostState {
    pub fn new(
        who: Attribution,
        computation: &str,
        max_memory_bytes: u64,
        p256: Arc<crate::p256::P256Service>,
        deadline: Instant,
    ) -> Self {
        HostState {
            who,
            computation: computation.to_owned(),
            limits: Limits::new(max_memory_bytes),
            last_error_log: None,
            identity: None,
            p256,
            resources: ResourceTable::new(),
            handles: 0,
            deadline,
        }
    }

    /// `identity.sign`.
    pub fn sign(&mut self, message: &[u8]) -> Result<StageSignature, IdentityFailure> {
        match &self.identity {
            Some(id) => id.sign(message),
            None => Err(no_identity()),
        }
    }

    /// `identity.verify`.
    pub fn verify(
        &mut self,
        certificate: &str,
        message: &[u8],
        signature: &[u8],
        algorithm_oid: &str,
    ) -> Result<(), IdentityFailure> {
        match &self.identity {
            Some(id) => id.verify(certificate, message, signature, algorithm_oid),
            None => Err(no_identity()),
        }
    }

    pub fn log(&mut self, level: LogLevel, message: &str) {
        let message = truncate(message, MAX_LOG_MESSAGE);
        if let LogLevel::Error = level {
            self.last_error_log =
                Some(truncate(message, MAX_TRAP_CONTEXT).replace(['\n', '\r'], " "));
        }
        let (plugin, version, computation) = (
            &*self.who.plugin,
            &*self.who.version,
            self.computation.as_str(),
        );
        match level {
            LogLevel::Trace => {
                tracing::trace!(target: "halo_plugin", plugin, version, computation, "{message}")
            }
            LogLevel::Debug => {
                tracing::debug!(target: "halo_plugin", plugin, version, computation, "{message}")
            }
            LogLevel::Info => {
                tracing::info!(target: "halo_plugin", plugin, version, computation, "{message}")
            }
            LogLevel::Warn => {
                tracing::warn!(target: "halo_plugin", plugin, version, computation, "{message}")
            }
            LogLevel::Error => {
                tracing::error!(target: "halo_plugin", plugin, version, computation, "{message}")
            }
        }
    }

    /// `random.fill`: bytes from the OS CSPRNG. More than the cap (or more than the guest
    /// may hold) is a plugin bug and traps.
    pub fn random_fill(&mut self, len: u32) -> wasmtime::Result<Vec<u8>> {
        // Reached from inside a running stage: the harness's "killed mid-execution" point.
        halo_crashpoint::point("plugin.random");
        let cap = (MAX_RANDOM_FILL as usize).min(self.limits.memory_limit);
        if len as usize > cap {
            wasmtime::bail!("random.fill of {len} bytes exceeds the host's limit of {cap} bytes");
        }
        let mut buf = vec![0u8; len as usize];
        rand::rngs::OsRng
            .try_fill_bytes(&mut buf)
            .map_err(|e| wasmtime::format_err!("random.fill: OS random source failed: {e}"))?;
        Ok(buf)
    }

    /// `crypto.aes256-ctr-keystream`, capped at 1 GiB and at the guest's memory limit.
    pub fn aes256_ctr_keystream(
        &mut self,
        key: &[u8],
        iv: &[u8],
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, String> {
        let limit = crypto::MAX_KEYSTREAM_LEN.min(self.limits.memory_limit as u64);
        crypto::aes256_ctr_keystream_limited(key, iv, offset, len, limit)
    }
}

fn no_identity() -> IdentityFailure {
    IdentityFailure::Invalid("this host offers no identity service to this call".into())
}

/// Version-independent log level (each WIT major has its own generated enum).
#[derive(Clone, Copy, Debug)]
pub(crate) enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `StoreLimits` (memory cap, trap on failed growth) that also remembers whether the memory
/// cap was what stopped the guest, so the failure is reported as such rather than by
/// matching error text.
pub(crate) struct Limits {
    inner: StoreLimits,
    pub memory_limit: usize,
    pub memory_exceeded: bool,
}

impl Limits {
    fn new(max_memory_bytes: u64) -> Self {
        let memory_limit = usize::try_from(max_memory_bytes).unwrap_or(usize::MAX);
        Limits {
            inner: StoreLimitsBuilder::new()
                .memory_size(memory_limit)
                .trap_on_grow_failure(true)
                .build(),
            memory_limit,
            memory_exceeded: false,
        }
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_exceeded = true;
        }
        self.inner.memory_growing(current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn state(max: u64) -> HostState {
        HostState::new(
            Attribution {
                plugin: "p".into(),
                version: "1.0.0".into(),
            },
            "c",
            max,
            Arc::new(
                crate::p256::P256Service::new(crate::p256::P256Limits {
                    threads: 2,
                    max_fixed_bases_per_computation: 4,
                    max_cached_computations: 2,
                })
                .unwrap(),
            ),
            Instant::now() + std::time::Duration::from_secs(600),
        )
    }

    #[test]
    fn random_fill_is_random_and_capped() {
        let mut s = state(1 << 30);
        let a = s.random_fill(32).unwrap();
        let b = s.random_fill(32).unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(s.random_fill(MAX_RANDOM_FILL + 1).is_err());
        let mut small = state(1 << 20);
        let e = small.random_fill(2 << 20).unwrap_err();
        assert!(e.to_string().contains("exceeds"), "{e}");
    }

    #[test]
    fn keystream_is_capped_by_guest_memory() {
        let mut s = state(1 << 20);
        let e = s
            .aes256_ctr_keystream(&[0; 32], &[0; 16], 0, 2 << 20)
            .unwrap_err();
        assert!(e.contains("exceeds the limit"), "{e}");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
