//! A loaded plugin: one `InstancePre` per component version, a fresh Store per call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use halo_protocol::{
    ComputationContext, PluginPin, Protocol, StageError, StageIdentity, StageInfo, StageInput,
    StageKind, StageOutcome, StartOutcome, SystemProtocol,
};
use tracing::{debug, instrument, warn};
use wasmtime::component::Component;
use wasmtime::{PoolConcurrencyLimitError, Store, Trap, WasmBacktrace};

use crate::error::LoadError;
use crate::host::{Attribution, HostState};
use crate::probe::{self, Major};
use crate::runtime::RuntimeInner;
use crate::v1;

/// The budget of the one `describe()` call at load time (capped by the stage deadline).
pub const DESCRIBE_DEADLINE: Duration = Duration::from_secs(10);

/// What the host knows about a loaded plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginInfo {
    /// Protocol id from `describe()`, e.g. `test-sum`.
    pub id: String,
    /// Semantic version from `describe()`, e.g. `1.1.0`.
    pub version: String,
    /// The WIT package version the component's protocol export targets, e.g.
    /// `halo:mpc@1.0.0`.
    pub wit_package: String,
    pub system_protocol: SystemProtocol,
    /// Hex SHA-256 of the component bytes.
    pub digest: String,
    pub stages: Vec<StageInfo>,
    /// The component's import names, e.g. `halo:mpc/log@1.0.0`.
    pub imports: Vec<String>,
    /// The component's export names, e.g. `halo:mpc/protocol@1.0.0`.
    pub exports: Vec<String>,
    /// Whether the compiled code came from the AOT cache rather than a compile.
    pub loaded_from_cache: bool,
}

/// The pre-instantiated component, one variant per WIT major (STYLE 8).
enum Bindings {
    V1(v1::PluginPre<HostState>),
}

/// An instance in a Store, one variant per WIT major.
enum Instance {
    V1(v1::Plugin),
}

/// A compiled, validated plugin version. Each call runs in a fresh Store (memory limit, epoch
/// deadline) instantiated from the one `InstancePre`; the Store is dropped after the call,
/// whatever happened in it.
pub struct LoadedPlugin {
    info: PluginInfo,
    runtime: Arc<RuntimeInner>,
    bindings: Bindings,
    who: Attribution,
    /// `id@version`, the prefix of every error.
    label: String,
    /// Wall-clock budget of one call, and the same in epoch ticks.
    deadline: Duration,
    deadline_ticks: u64,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    pub(crate) fn new(
        runtime: Arc<RuntimeInner>,
        component: Component,
        digest: String,
        loaded_from_cache: bool,
    ) -> Result<Self, LoadError> {
        let engine = &runtime.engine;
        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_owned()).collect();
        let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
        let probe = probe::probe(&imports, &exports)?;

        let pre = runtime.linker.instantiate_pre(&component).map_err(|e| {
            let e = anyhow::Error::from(e);
            if probe.newer.is_empty() {
                LoadError::Invalid(format!("linking: {e:#}"))
            } else {
                // A newer 1.x minor that uses a function this host lacks.
                LoadError::UnsupportedWit {
                    found: probe.newer.clone(),
                    supported: crate::SUPPORTED_WIT.to_owned(),
                }
            }
        })?;
        let bindings = match probe.major {
            Major::V1 => Bindings::V1(
                v1::PluginPre::new(pre)
                    .map_err(|e| LoadError::Invalid(format!("{:#}", anyhow::Error::from(e))))?,
            ),
        };

        let short = digest.get(..12).unwrap_or(&digest);
        let mut plugin = LoadedPlugin {
            info: PluginInfo {
                id: String::new(),
                version: String::new(),
                wit_package: probe.wit_package,
                system_protocol: SystemProtocol::LiquidLegionsV2,
                digest: digest.clone(),
                stages: Vec::new(),
                imports,
                exports,
                loaded_from_cache,
            },
            who: Attribution {
                plugin: format!("sha256:{short}").into(),
                version: "?".into(),
            },
            label: format!("component sha256:{short}"),
            // `describe()` must be quick: a plugin stuck in it must not hold up loading for
            // a whole stage budget.
            deadline: DESCRIBE_DEADLINE.min(runtime.config.stage_deadline),
            deadline_ticks: runtime
                .config
                .ticks_for(DESCRIBE_DEADLINE.min(runtime.config.stage_deadline)),
            runtime,
            bindings,
        };

        let d = plugin
            .call(
                CallFor::default(),
                "describe",
                |instance, store| match instance {
                    Instance::V1(p) => v1::describe(p, store).map(Ok),
                },
            )
            .map_err(|e| LoadError::Describe(error_message(&e)))?;
        if d.id.trim().is_empty() {
            return Err(LoadError::Describe("empty protocol id".into()));
        }
        if semver::Version::parse(&d.version).is_err() {
            return Err(LoadError::Describe(format!(
                "{}: version {:?} is not a semantic version",
                d.id, d.version
            )));
        }
        validate_stages(&d.stages)
            .map_err(|e| LoadError::InvalidStageTable(format!("{}@{}: {e}", d.id, d.version)))?;

        plugin.deadline = plugin.runtime.config.stage_deadline;
        plugin.deadline_ticks = plugin.runtime.config.deadline_ticks();
        plugin.label = format!("{}@{}", d.id, d.version);
        plugin.who = Attribution {
            plugin: d.id.as_str().into(),
            version: d.version.as_str().into(),
        };
        plugin.info.id = d.id;
        plugin.info.version = d.version;
        plugin.info.system_protocol = d.serves;
        plugin.info.stages = d.stages;
        Ok(plugin)
    }

    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Store + instantiate only, then drop the Store (benchmarks).
    #[doc(hidden)]
    pub fn instantiate_only(&self) -> anyhow::Result<()> {
        let mut store = self.store("");
        self.instantiate(&mut store).map_err(anyhow::Error::from)?;
        Ok(())
    }

    fn store(&self, computation: &str) -> Store<HostState> {
        let config = &self.runtime.config;
        let mut store = Store::new(
            &self.runtime.engine,
            HostState::new(
                self.who.clone(),
                computation,
                config.max_memory_bytes,
                self.runtime.p256.clone(),
                Instant::now() + self.deadline,
            ),
        );
        store.limiter(|state| &mut state.limits);
        // What one import call may copy out of the guest: as much as the guest can hold
        // (wasmtime's default, 128 MiB, would trap on large batches the import accepts).
        store.set_hostcall_fuel(usize::try_from(config.max_memory_bytes).unwrap_or(usize::MAX));
        store.set_epoch_deadline(self.deadline_ticks);
        store
    }

    fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Instance> {
        match &self.bindings {
            Bindings::V1(pre) => pre.instantiate(store).map(Instance::V1),
        }
    }

    /// One call in a fresh Store: guest errors (data) get the plugin's name; traps and host
    /// errors become stage errors by [`LoadedPlugin::classify`].
    #[instrument(skip_all, fields(plugin = %self.label, op = op, computation = ctx.computation))]
    fn call<R>(
        &self,
        ctx: CallFor<'_>,
        op: &'static str,
        f: impl FnOnce(&Instance, &mut Store<HostState>) -> wasmtime::Result<Result<R, StageError>>,
    ) -> Result<R, StageError> {
        let started = Instant::now();
        let mut store = self.store(ctx.computation);
        store.data_mut().identity = ctx.identity.cloned();
        let result = self
            .instantiate(&mut store)
            .and_then(|instance| f(&instance, &mut store));
        let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        match result {
            Ok(Ok(r)) => {
                debug!(elapsed_ms, "plugin call ok");
                Ok(r)
            }
            Ok(Err(e)) => {
                debug!(elapsed_ms, error = %e, "plugin call returned an error");
                Err(self.prefixed(e))
            }
            Err(e) => {
                let e = self.classify(&store, op, e);
                warn!(elapsed_ms, error = %e, "plugin call failed");
                Err(e)
            }
        }
    }

    fn prefixed(&self, e: StageError) -> StageError {
        let label = &self.label;
        match e {
            StageError::Transient(m) => StageError::Transient(format!("{label}: {m}")),
            StageError::Permanent(m) => StageError::Permanent(format!("{label}: {m}")),
            StageError::InvalidInput(m) => StageError::InvalidInput(format!("{label}: {m}")),
        }
    }

    /// Maps a trap or host error to a stage error: an epoch deadline is transient (the
    /// attempt policy retries and eventually fails), so is a full instance pool; the memory
    /// limit and every other trap are permanent.
    fn classify(&self, store: &Store<HostState>, op: &str, err: wasmtime::Error) -> StageError {
        let label = &self.label;
        let limits = &store.data().limits;
        if limits.memory_exceeded {
            return StageError::Permanent(format!(
                "{label}: {op} exceeded the memory limit of {} ({})",
                bytes(limits.memory_limit as u64),
                err.root_cause()
            ));
        }
        if let Some(Trap::Interrupt) = err.downcast_ref::<Trap>() {
            return StageError::Transient(format!(
                "{label}: stage deadline of {}s exceeded",
                self.deadline.as_secs_f64()
            ));
        }
        if err
            .downcast_ref::<crate::p256::HostDeadlineExceeded>()
            .is_some()
        {
            return StageError::Transient(format!(
                "{label}: stage deadline of {}s exceeded (inside the crypto import)",
                self.deadline.as_secs_f64()
            ));
        }
        if err.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
            return StageError::Transient(format!(
                "{label}: no free plugin instance slot: {}",
                err.root_cause()
            ));
        }
        let said = match &store.data().last_error_log {
            Some(m) => format!("; last plugin error log: {m}"),
            None => String::new(),
        };
        StageError::Permanent(format!(
            "{label} trapped: {} (in {op}){said}",
            trap_summary(&err)
        ))
    }
}

/// What a call serves: the computation (for log attribution) and its identity services.
#[derive(Default)]
struct CallFor<'a> {
    computation: &'a str,
    identity: Option<&'a Arc<dyn StageIdentity>>,
}

impl<'a> From<&'a ComputationContext> for CallFor<'a> {
    fn from(ctx: &'a ComputationContext) -> Self {
        CallFor {
            computation: &ctx.global_id,
            identity: ctx.identity.as_ref(),
        }
    }
}

impl Protocol for LoadedPlugin {
    fn pin(&self) -> PluginPin {
        PluginPin {
            name: self.info.id.clone(),
            version: self.info.version.clone(),
            digest: self.info.digest.clone(),
        }
    }

    fn computation_ended(&self, global_id: &str) {
        self.runtime.p256.forget(global_id);
    }

    fn system_protocol(&self) -> SystemProtocol {
        self.info.system_protocol
    }

    fn stages(&self) -> Vec<StageInfo> {
        self.info.stages.clone()
    }

    fn start(&self, ctx: &ComputationContext) -> Result<StartOutcome, StageError> {
        self.call(ctx.into(), "start", |instance, store| match instance {
            Instance::V1(p) => v1::start(p, store, ctx),
        })
    }

    fn execute(
        &self,
        ctx: &ComputationContext,
        stage: i32,
        inputs: Vec<StageInput>,
    ) -> Result<StageOutcome, StageError> {
        self.call(ctx.into(), "execute", |instance, store| match instance {
            Instance::V1(p) => v1::execute(p, store, ctx, stage, inputs),
        })
    }
}

fn error_message(e: &StageError) -> String {
    match e {
        StageError::Transient(m) | StageError::Permanent(m) | StageError::InvalidInput(m) => {
            m.clone()
        }
    }
}

fn bytes(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

/// How many wasm frames a trap message names.
const TRAP_FRAMES: usize = 6;

/// The trap (or root cause) and the innermost wasm frames, demangled.
fn trap_summary(err: &wasmtime::Error) -> String {
    let mut s = match err.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => err.root_cause().to_string(),
    };
    if let Some(bt) = err.downcast_ref::<WasmBacktrace>() {
        let all: Vec<String> = bt
            .frames()
            .iter()
            .map(|f| match f.func_name() {
                Some(name) => format!("{:#}", rustc_demangle::demangle(name)),
                None => format!("<wasm function {}>", f.func_index()),
            })
            .collect();
        // Start at the first frame that is not the panic or abort machinery.
        let skip = all
            .iter()
            .take_while(|f| RUNTIME_FRAMES.iter().any(|p| f.starts_with(p)))
            .count();
        let frames = if skip < all.len() {
            &all[skip..]
        } else {
            &all[..]
        };
        if !frames.is_empty() {
            s.push_str(" at ");
            s.push_str(&frames[..frames.len().min(TRAP_FRAMES)].join(" <- "));
            if frames.len() > TRAP_FRAMES {
                s.push_str(" <- ...");
            }
        }
    }
    s
}

/// Leading backtrace frames that say nothing about where a guest failed.
const RUNTIME_FRAMES: &[&str] = &[
    "__rustc::",
    "__rust_",
    "rust_panic",
    "std::panicking::",
    "std::sys::",
    "std::rt::",
    "std::alloc::",
    "std::process::abort",
    "core::panicking::",
    "core::option::",
    "core::result::",
    "alloc::alloc::",
    "alloc::raw_vec::",
    "abort",
];

/// Checks a stage table: stage numbers and names unique, every `next` of a waiting stage in
/// the table and later than the waiting stage, at least one terminal stage.
pub(crate) fn validate_stages(stages: &[StageInfo]) -> Result<(), String> {
    if stages.is_empty() {
        return Err("no stages".into());
    }
    let mut by_number: HashMap<i32, &str> = HashMap::new();
    let mut names: HashMap<&str, i32> = HashMap::new();
    for s in stages {
        if s.name.is_empty() {
            return Err(format!("stage {} has no name", s.number));
        }
        if let Some(other) = by_number.insert(s.number, &s.name) {
            return Err(format!(
                "stage number {} is used by both {other} and {}",
                s.number, s.name
            ));
        }
        if let Some(other) = names.insert(&s.name, s.number) {
            return Err(format!(
                "stage name {} is used by both {other} and {}",
                s.name, s.number
            ));
        }
    }
    for s in stages {
        let next = match &s.kind {
            StageKind::WaitInputs { next, .. } | StageKind::WaitKingdom { next, .. } => *next,
            StageKind::Queued { .. } | StageKind::Terminal => continue,
        };
        if !by_number.contains_key(&next) {
            return Err(format!(
                "{} ({}) continues to stage {next}, which is not in the table",
                s.name, s.number
            ));
        }
        if next <= s.number {
            return Err(format!(
                "{} ({}) continues to stage {next}; stage numbers must increase",
                s.name, s.number
            ));
        }
    }
    if !stages.iter().any(|s| s.kind == StageKind::Terminal) {
        return Err("no terminal stage".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use halo_protocol::Protocol as _;
    use halo_testkit::TestSumProtocol;

    use super::*;

    #[test]
    fn test_sum_table_is_valid() {
        validate_stages(&TestSumProtocol::new("1.0.0").stages()).unwrap();
    }

    #[test]
    fn invalid_tables_are_named() {
        let good = TestSumProtocol::new("1.0.0").stages();
        let cases: Vec<(Vec<StageInfo>, &str)> = vec![
            (vec![], "no stages"),
            (
                {
                    let mut t = good.clone();
                    t[1].number = t[0].number;
                    t
                },
                "stage number 1 is used by both",
            ),
            (
                {
                    let mut t = good.clone();
                    t[1].name = t[0].name.clone();
                    t
                },
                "stage name INITIALIZED is used by both",
            ),
            (
                {
                    let mut t = good.clone();
                    t.retain(|s| s.number != 4);
                    t
                },
                "continues to stage 4, which is not in the table",
            ),
            (
                good.iter()
                    .filter(|s| s.kind != StageKind::Terminal)
                    .cloned()
                    .collect(),
                "no terminal stage",
            ),
            (
                {
                    let mut t = good.clone();
                    if let StageKind::WaitKingdom { next, .. } = &mut t[1].kind {
                        *next = 1;
                    }
                    t
                },
                "stage numbers must increase",
            ),
        ];
        for (table, want) in cases {
            let e = validate_stages(&table).unwrap_err();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes(1000), "1000 bytes");
    }
}
