//! The wasm plugin runtime: one process-wide wasmtime [`wasmtime::Engine`] (component model,
//! pooling allocator, epoch interruption), an on-disk AOT cache, the host side of the
//! `halo:mpc` imports, and [`LoadedPlugin`], which implements the duchy's
//! [`halo_protocol::Protocol`] by running every call in a fresh Store.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use halo_engine::{EngineConfig, Runtime};
//! let runtime = Runtime::new(EngineConfig::default())?;
//! let plugin = runtime.load_file(std::path::Path::new("plugins/test-sum-1.0.0.wasm"))?;
//! println!("{} {}", plugin.info().id, plugin.info().version);
//! # Ok(())
//! # }
//! ```
//!
//! Guest failures are data: a plugin's `stage-error` becomes the same
//! [`halo_protocol::StageError`] variant, prefixed with `id@version`. Traps are host
//! errors: an epoch deadline becomes a transient error (retried by the mill's attempt
//! policy), the memory limit and every other trap a permanent one. The Store is dropped after
//! every call, so a trap never affects the next call.

mod config;
pub mod crypto;
mod error;
mod host;
mod p256;
mod plugin;
mod probe;
mod runtime;
mod v1;

pub use crate::config::{EngineConfig, MAX_WASM32_MEMORY};
pub use crate::error::LoadError;
pub use crate::host::{MAX_LOG_MESSAGE, MAX_RANDOM_FILL};
pub use crate::plugin::{DESCRIBE_DEADLINE, LoadedPlugin, PluginInfo};
pub use crate::runtime::{CacheStats, Runtime};

/// The WIT versions this host serves.
pub const SUPPORTED_WIT: &str = "halo:mpc@1.0.0..<2.0.0";
