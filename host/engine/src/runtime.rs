//! The process-wide wasmtime Engine, its epoch ticker, the Linker with our host imports and
//! the on-disk AOT cache.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use tracing::{debug, info, instrument, warn};
use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
    WasmBacktraceDetails,
};

use crate::config::EngineConfig;
use crate::error::LoadError;
use crate::host::HostState;
use crate::plugin::LoadedPlugin;
use crate::v1;

/// Core instances, tables and memories a component may use, per pooled component instance.
/// A `wit-component` component of a `wasm32-unknown-unknown` guest has a main module (one
/// memory, one table) plus shim modules (a table each).
const CORE_INSTANCES_PER_COMPONENT: u32 = 8;
const TABLES_PER_COMPONENT: u32 = 8;
const MEMORIES_PER_COMPONENT: u32 = 2;

/// One process-wide wasmtime Engine (component model, pooling allocator, epoch interruption
/// with a ticker thread off the async executor that holds only a weak reference to the engine
/// and stops when the engine is dropped), a Linker with our host imports, and the AOT cache.
/// Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<RuntimeInner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.inner.config)
            .field("compat", &self.inner.compat)
            .field("cache", &self.cache_stats())
            .finish_non_exhaustive()
    }
}

pub(crate) struct RuntimeInner {
    pub engine: Engine,
    pub linker: Linker<HostState>,
    pub config: EngineConfig,
    /// Hex digest of the engine's precompile compatibility hash: artifacts live under
    /// `<cache_dir>/<compat>/`.
    pub compat: String,
    /// The P-256 half of the `crypto` import (pool, tables).
    pub p256: Arc<crate::p256::P256Service>,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    hits: AtomicU64,
    misses: AtomicU64,
    compiles: AtomicU64,
    writes: AtomicU64,
}

/// Counters of the AOT cache since the runtime was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Loads served from a cached artifact.
    pub hits: u64,
    /// Loads that found no usable artifact.
    pub misses: u64,
    /// Components compiled (misses, and loads without a cache directory).
    pub compiles: u64,
    /// Artifacts written.
    pub writes: u64,
}

impl Runtime {
    /// Builds the Engine and Linker and starts the epoch ticker.
    pub fn new(config: EngineConfig) -> anyhow::Result<Runtime> {
        config.validate()?;
        let engine = Engine::new(&wasmtime_config(&config)?)
            .map_err(anyhow::Error::from)
            .context("creating the wasmtime engine")?;
        let mut linker = Linker::new(&engine);
        v1::add_to_linker(&mut linker)
            .map_err(anyhow::Error::from)
            .context("adding halo:mpc@1 host imports")?;
        let compat = compat_hash(&engine);
        spawn_epoch_ticker(&engine, config.epoch_tick)?;
        info!(
            max_memory_bytes = config.max_memory_bytes,
            stage_deadline_s = config.stage_deadline.as_secs_f64(),
            max_instances = config.max_instances,
            cache_dir = ?config.cache_dir,
            compat = %compat,
            "plugin runtime ready"
        );
        let p256 = Arc::new(crate::p256::P256Service::new(config.p256_limits())?);
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                config,
                compat,
                p256,
                stats: Stats::default(),
            }),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Drops what the runtime keeps for a computation that ended (its fixed-base tables).
    pub fn forget_computation(&self, global_id: &str) {
        self.inner.p256.forget(global_id);
    }

    /// Fixed-base tables kept for a computation.
    pub fn cached_fixed_bases(&self, global_id: &str) -> usize {
        self.inner.p256.cached_tables(global_id)
    }

    /// The engine (for tools that precompile or inspect components).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn cache_stats(&self) -> CacheStats {
        let s = &self.inner.stats;
        CacheStats {
            hits: s.hits.load(Ordering::Relaxed),
            misses: s.misses.load(Ordering::Relaxed),
            compiles: s.compiles.load(Ordering::Relaxed),
            writes: s.writes.load(Ordering::Relaxed),
        }
    }

    /// Where the artifact of a component with this digest lives (with a cache directory).
    pub fn cache_path(&self, digest: &str) -> Option<PathBuf> {
        self.inner
            .config
            .cache_dir
            .as_ref()
            .map(|dir| dir.join(&self.inner.compat).join(format!("{digest}.cwasm")))
    }

    /// Compiles a component (or loads its cached AOT artifact, keyed by the component's
    /// SHA-256 and the engine's compatibility hash), checks which WIT major it targets,
    /// builds its `InstancePre`, calls `describe()` once in a fresh Store and validates the
    /// stage table.
    ///
    /// **Blocking**: compiling takes from tens of milliseconds to seconds of CPU, and
    /// `describe()` runs guest code. Never call it on an async worker thread: use
    /// `tokio::task::spawn_blocking` or a dedicated thread (`halo_registry` does both).
    #[instrument(skip_all, fields(bytes = bytes.len()))]
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<LoadedPlugin>, LoadError> {
        let digest = hex::encode(Sha256::digest(bytes));
        let started = Instant::now();
        let cached = self.cache_path(&digest);
        if let Some(path) = &cached
            && path.is_file()
        {
            match self.deserialize(path) {
                Ok(component) => {
                    self.inner.stats.hits.fetch_add(1, Ordering::Relaxed);
                    return self.finish(component, digest, true, started);
                }
                Err(e) => {
                    // Stale or damaged: recompile and overwrite.
                    warn!(path = %path.display(), "discarding unusable AOT artifact: {e:#}");
                    let _ = fs::remove_file(path);
                }
            }
        }
        if cached.is_some() {
            self.inner.stats.misses.fetch_add(1, Ordering::Relaxed);
        }
        if wasmtime::Engine::detect_precompiled(bytes).is_some() {
            return Err(LoadError::Invalid(
                "precompiled artifacts are only loaded from the cache directory; pass the \
                 .wasm component"
                    .into(),
            ));
        }
        let component = Component::from_binary(&self.inner.engine, bytes)
            .map_err(|e| LoadError::Invalid(format!("{:#}", anyhow::Error::from(e))))?;
        self.inner.stats.compiles.fetch_add(1, Ordering::Relaxed);
        debug!(digest = %digest, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "compiled component");
        let plugin = self.finish(component.clone(), digest, false, started)?;
        // Cache only what loaded: a broken component never leaves an artifact behind.
        if let Some(path) = &cached {
            match write_artifact(path, &component) {
                Ok(()) => {
                    self.inner.stats.writes.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => warn!(path = %path.display(), "cannot write AOT artifact: {e:#}"),
            }
        }
        Ok(plugin)
    }

    /// [`Runtime::load`] from a file. **Blocking**, like [`Runtime::load`].
    pub fn load_file(&self, path: &Path) -> Result<Arc<LoadedPlugin>, LoadError> {
        let bytes = fs::read(path).map_err(|source| LoadError::Io {
            path: path.to_owned(),
            source,
        })?;
        self.load(&bytes)
    }

    /// Loads a plugin from the AOT cache by digest alone (to resume computations pinned to a
    /// version whose `.wasm` was removed). `Ok(None)` when there is no cache directory or no
    /// artifact for this digest under the current engine.
    ///
    /// **Blocking**: maps and checks the artifact and calls `describe()`; keep it off async
    /// worker threads, like [`Runtime::load`].
    #[instrument(skip(self))]
    pub fn load_cached(&self, digest: &str) -> Result<Option<Arc<LoadedPlugin>>, LoadError> {
        if digest.len() != 64
            || !digest
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(LoadError::Invalid(format!(
                "digest {digest:?} is not a lowercase hex SHA-256"
            )));
        }
        let Some(path) = self.cache_path(digest) else {
            return Ok(None);
        };
        if !path.is_file() {
            return Ok(None);
        }
        let started = Instant::now();
        let component = self.deserialize(&path).map_err(|e| {
            LoadError::Invalid(format!("cached artifact {}: {e:#}", path.display()))
        })?;
        self.inner.stats.hits.fetch_add(1, Ordering::Relaxed);
        self.finish(component, digest.to_owned(), true, started)
            .map(Some)
    }

    /// Loads an artifact that this runtime wrote into its own cache directory.
    #[allow(unsafe_code)]
    fn deserialize(&self, path: &Path) -> anyhow::Result<Component> {
        // SAFETY: `Component::deserialize_file` trusts its input to be an artifact produced
        // by a compatible wasmtime (it maps the machine code and runs it). The only files we
        // pass are `<cache_dir>/<compat>/<sha256>.cwasm`, which this process (or an earlier
        // run of this host with the same engine compatibility hash) wrote with
        // `Component::serialize` after compiling and loading the component. The cache
        // directory is configured by the operator, like the binary itself, and must not be
        // writable by anyone who may not run code as the host. The file is mapped, not
        // copied, so it must never change in place while mapped: we only ever create
        // artifacts by writing a temporary file and renaming it over the old name, and we
        // discard a bad one by unlinking it (live mappings keep the old inode). Wasmtime still
        // checks the artifact header and the engine configuration it was built for, and a
        // file whose check fails is discarded and recompiled.
        let component = unsafe { Component::deserialize_file(&self.inner.engine, path) };
        component
            .map_err(anyhow::Error::from)
            .with_context(|| format!("deserializing {}", path.display()))
    }

    fn finish(
        &self,
        component: Component,
        digest: String,
        from_cache: bool,
        started: Instant,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        let plugin = LoadedPlugin::new(self.inner.clone(), component, digest, from_cache)?;
        let info = plugin.info();
        info!(
            plugin = %info.id,
            version = %info.version,
            digest = %info.digest,
            wit = %info.wit_package,
            from_cache,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "loaded plugin"
        );
        Ok(Arc::new(plugin))
    }
}

fn wasmtime_config(config: &EngineConfig) -> anyhow::Result<Config> {
    let mut c = Config::new();
    c.wasm_component_model(true)
        .epoch_interruption(true)
        .parallel_compilation(true)
        .cranelift_opt_level(OptLevel::Speed)
        // Fixed, so the compatibility hash (and the cache) does not depend on the
        // WASMTIME_BACKTRACE_DETAILS environment variable.
        .wasm_backtrace_details(WasmBacktraceDetails::Disable);
    let n = config.max_instances;
    let max_memory = usize::try_from(config.max_memory_bytes)
        .context("max_memory_bytes does not fit in usize")?
        .next_multiple_of(1 << 16);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .total_tables(n.saturating_mul(TABLES_PER_COMPONENT))
        .total_memories(n.saturating_mul(MEMORIES_PER_COMPONENT))
        // The Store's limiter reports the limit first (with a clear error); the pool's
        // slot size is the hard backstop.
        .max_memory_size(max_memory);
    c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    if config.perf_map {
        c.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    Ok(c)
}

/// Feeds a `Hash` into SHA-256, to turn the engine's compatibility hash into a stable
/// directory name.
struct Sha256Hasher(Sha256);

impl std::hash::Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let d = self.0.clone().finalize();
        u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn compat_hash(engine: &Engine) -> String {
    use std::hash::Hash;
    let mut h = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    hex::encode(&h.0.finalize()[..16])
}

/// Writes an artifact atomically (temp file + rename), so a reader never sees half a file.
fn write_artifact(path: &Path, component: &Component) -> anyhow::Result<()> {
    let dir = path.parent().context("artifact path has no parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = component
        .serialize()
        .map_err(anyhow::Error::from)
        .context("serializing")?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("artifact"),
        std::process::id(),
        rand::random::<u64>()
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Starts the epoch ticker: a plain thread (never an async executor's), holding only a weak
/// reference, that ends once the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine, tick: std::time::Duration) -> anyhow::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("halo-epoch-ticker".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
            debug!("engine dropped; epoch ticker stopped");
        })
        .context("spawning the epoch ticker")?;
    Ok(())
}
