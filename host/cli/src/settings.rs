//! Configuration of `halo kingdom` and `halo duchy`: a TOML file (`--config`), every key
//! overridable by environment and flag.
//!
//! Precedence, lowest first: built-in defaults, the file, the environment, flags. Every key
//! has a flag and an environment variable (`--workers` / `HALO_WORKERS` for `[mill] workers`;
//! see `halo duchy --help`), except the tables `[roles]`, `[peers]`, `[certificates]` and
//! `[protocols]`, which the file (or `--roles-file`, `--peer ID=URL`) gives. Unknown keys are
//! refused with an error naming them. Relative paths in the file are resolved against the
//! file's directory. `--print-config` prints the effective configuration as TOML; fed back
//! with `--config`, it gives the same configuration. Secrets are never values: the private
//! key is given by path (`[identity] key`).
//!
//! The same layering code serves both commands: a settings struct is at once the clap
//! argument group and the serde form of the file, with every field optional; the layers are
//! merged as TOML tables (a set key replaces, tables merge key by key), then read back.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use halo_identity::{DevPki, Identity, Principal, TrustStore};
use halo_protocol::roles::RoleConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::parse_peer;

// ---- the layering ----------------------------------------------------------------------

/// A settings struct: serde form of the config file, clap form of the flags.
pub trait Layered: Serialize + DeserializeOwned + Default {
    /// The built-in defaults (every key that has one set).
    fn defaults() -> Self;
    /// Resolves relative paths of a file layer against `base` (the file's directory).
    fn resolve_paths(&mut self, base: &Path);
    /// Folds flag-only forms (e.g. repeated `--peer ID=URL`) into their keys.
    fn fold_flags(&mut self) {}
}

/// Merges `top` into `base`: keys set in `top` replace, tables merge key by key.
fn merge(base: &mut toml::Table, top: toml::Table) {
    for (k, v) in top {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn table<T: Serialize>(t: &T) -> Result<toml::Table> {
    toml::Table::try_from(t).map_err(|e| {
        anyhow!(
            "configuration: {e} (integers are at most {}; see --help for each key's range)",
            i64::MAX
        )
    })
}

/// Keys that are alternatives to each other: a layer that sets a key of one alternative
/// clears the keys of the others from the layers below it (a flag `--certificate` replaces a
/// file's `pki_dir`; `--roles-file` replaces a file's `[roles]` table).
const ALTERNATIVES: &[&[&[&str]]] = &[
    &[
        &["identity", "pki_dir"],
        &["identity", "certificate"],
        &["identity", "key"],
        &["identity", "trust_bundle"],
    ],
    &[&["roles_file"], &["roles"]],
];

fn is_set(t: &toml::Table, path: &[&str]) -> bool {
    match path {
        [] => false,
        [last] => t.contains_key(*last),
        [first, rest @ ..] => t
            .get(*first)
            .and_then(|v| v.as_table())
            .is_some_and(|t| is_set(t, rest)),
    }
}

fn remove(t: &mut toml::Table, path: &[&str]) {
    match path {
        [] => {}
        [last] => {
            t.remove(*last);
        }
        [first, rest @ ..] => {
            if let Some(inner) = t.get_mut(*first).and_then(|v| v.as_table_mut()) {
                remove(inner, rest);
            }
        }
    }
}

/// Clears from `lower` every alternative `upper` replaces. In the identity group the three
/// files go together: setting any of them replaces `pki_dir`, and `pki_dir` replaces them.
fn clear_alternatives(lower: &mut toml::Table, upper: &toml::Table) {
    for group in ALTERNATIVES {
        let (first, others) = match group.split_first() {
            Some(x) => x,
            None => continue,
        };
        // The group is {first} vs {others...} (roles: roles_file vs roles).
        if is_set(upper, first) {
            for p in others.iter() {
                remove(lower, p);
            }
        }
        if others.iter().any(|p| is_set(upper, p)) {
            remove(lower, first);
        }
    }
}

/// Reads a config file layer: unknown keys are refused naming them (and where they are).
pub fn load_file<T: Layered>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading configuration {}", path.display()))?;
    let mut layer: T = toml::from_str(&text)
        .map_err(|e| anyhow!("configuration {}: {}", path.display(), e.to_string().trim()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let base = if base.as_os_str().is_empty() {
        Path::new(".")
    } else {
        base
    };
    let base = base
        .canonicalize()
        .with_context(|| format!("resolving {}", base.display()))?;
    layer.resolve_paths(&base);
    Ok(layer)
}

/// The effective settings: defaults, then `file` (if any), then `flags` (flags and
/// environment, as clap read them).
pub fn effective<T: Layered>(file: Option<&Path>, mut flags: T) -> Result<T> {
    let mut t = table(&T::defaults())?;
    if let Some(path) = file {
        let layer = table(&load_file::<T>(path)?)?;
        clear_alternatives(&mut t, &layer);
        merge(&mut t, layer);
    }
    flags.fold_flags();
    // Relative paths from flags and the environment are relative to the working directory;
    // made absolute here, so `--print-config` output means the same from anywhere.
    let cwd = std::env::current_dir().context("reading the working directory")?;
    flags.resolve_paths(&cwd);
    let layer = table(&flags)?;
    clear_alternatives(&mut t, &layer);
    merge(&mut t, layer);
    t.try_into()
        .map_err(|e: toml::de::Error| anyhow!("configuration: {}", e.to_string().trim()))
}

/// The settings as TOML text (`--print-config`).
pub fn to_toml<T: Serialize>(t: &T) -> Result<String> {
    toml::to_string_pretty(t).context("printing configuration")
}

fn rebase(p: &mut Option<PathBuf>, base: &Path) {
    if let Some(path) = p
        && path.is_relative()
    {
        *path = base.join(&*path);
    }
}

/// `v` (or `default`), refused outside `lo..=hi` naming the key.
fn within<T: PartialOrd + Copy + std::fmt::Display>(
    v: Option<T>,
    default: T,
    key: &str,
    lo: T,
    hi: T,
) -> Result<T> {
    let v = v.unwrap_or(default);
    if v < lo || v > hi {
        bail!("configuration key `{key}` = {v} is out of range ({lo} to {hi})");
    }
    Ok(v)
}

const DAY_SECS: u64 = 86_400;

fn need<'a, T>(v: &'a Option<T>, key: &str, flag: &str, env: &str) -> Result<&'a T> {
    v.as_ref().ok_or_else(|| {
        anyhow!(
            "missing configuration key `{key}` (set it in the --config file, with {flag} or {env})"
        )
    })
}

// ---- shared sections ---------------------------------------------------------------------

/// `[identity]`: this principal's TLS identity and the roots of every other principal.
/// Either the three files (`certificate`, `key`, `trust_bundle`) or a development PKI
/// directory (`pki_dir`, written by `halo pki`).
#[skip_serializing_none]
#[derive(Args, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IdentitySettings {
    /// Development PKI directory written by `halo pki` (instead of the three files).
    #[arg(long = "pki", env = "HALO_PKI")]
    pub pki_dir: Option<PathBuf>,
    /// This principal's certificate (PEM).
    #[arg(long, env = "HALO_CERTIFICATE")]
    pub certificate: Option<PathBuf>,
    /// This principal's private key (PEM, PKCS#8). A path only: never a value.
    #[arg(long, env = "HALO_KEY")]
    pub key: Option<PathBuf>,
    /// Trust bundle: a TOML file mapping principal resource names to root CA files.
    #[arg(long, env = "HALO_TRUST_BUNDLE")]
    pub trust_bundle: Option<PathBuf>,
}

impl IdentitySettings {
    fn resolve_paths(&mut self, base: &Path) {
        rebase(&mut self.pki_dir, base);
        rebase(&mut self.certificate, base);
        rebase(&mut self.key, base);
        rebase(&mut self.trust_bundle, base);
    }

    /// `principal`'s identity and the trust store, from the files or the PKI directory.
    pub fn load(&self, principal: &Principal) -> Result<(Identity, TrustStore, Option<DevPki>)> {
        let files = [&self.certificate, &self.key, &self.trust_bundle];
        if files.iter().any(|f| f.is_some()) {
            if self.pki_dir.is_some() {
                bail!(
                    "[identity]: set either pki_dir or certificate, key and trust_bundle, not both"
                );
            }
            let (Some(cert), Some(key), Some(bundle)) =
                (&self.certificate, &self.key, &self.trust_bundle)
            else {
                bail!("[identity]: certificate, key and trust_bundle must all be set");
            };
            let trust = TrustStore::load_bundle(bundle)
                .with_context(|| format!("loading trust bundle {}", bundle.display()))?;
            let identity = Identity::from_files(principal.clone(), cert, key, &trust)
                .with_context(|| format!("loading the identity of {principal}"))?;
            return Ok((identity, trust, None));
        }
        let Some(dir) = &self.pki_dir else {
            bail!(
                "missing [identity]: set certificate, key and trust_bundle (--certificate, --key, \
                 --trust-bundle), or a development pki_dir (--pki)"
            );
        };
        let pki =
            DevPki::load(dir).with_context(|| format!("loading PKI from {}", dir.display()))?;
        let identity = pki
            .identity(principal)
            .ok_or_else(|| anyhow!("the PKI {} has no identity for {principal}", dir.display()))?
            .clone();
        let trust = pki.trust_store()?;
        Ok((identity, trust, Some(pki)))
    }
}

/// `[server]`: connection limits of a gRPC server (Kingdom or duchy).
#[skip_serializing_none]
#[derive(Args, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Largest gRPC message (decoded or encoded), in bytes [default: Kingdom 1 MiB, duchy 8 MiB].
    #[arg(long, env = "HALO_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// HTTP/2 concurrent streams per connection.
    #[arg(long, env = "HALO_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// A connection whose TLS handshake is not done after this many seconds is closed.
    #[arg(long, env = "HALO_HANDSHAKE_TIMEOUT_SECS")]
    pub handshake_timeout_secs: Option<u64>,
    /// TLS handshakes in progress at once.
    #[arg(long, env = "HALO_MAX_PENDING_HANDSHAKES")]
    pub max_pending_handshakes: Option<usize>,
    /// A connection without a call in flight for this many seconds is closed.
    #[arg(long, env = "HALO_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// A connection that sends no byte (no ClientHello) for this many seconds is closed.
    #[arg(long, env = "HALO_CLIENT_HELLO_TIMEOUT_SECS")]
    pub client_hello_timeout_secs: Option<u64>,
    /// Established connections at once (more wait in the accept queue).
    #[arg(long, env = "HALO_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Connections whose certificate identifies no principal, at once.
    #[arg(long, env = "HALO_MAX_UNAUTHENTICATED")]
    pub max_unauthenticated: Option<usize>,
    /// How long a connection whose certificate identifies no principal is served.
    #[arg(long, env = "HALO_UNAUTHENTICATED_LIFETIME_SECS")]
    pub unauthenticated_lifetime_secs: Option<u64>,
}

impl ServerSettings {
    fn defaults(max_message_bytes: usize) -> Self {
        let tls = halo_identity::TlsServerLimits::default();
        let server = halo_limits::ServerLimits::default();
        ServerSettings {
            max_message_bytes: Some(max_message_bytes),
            max_concurrent_streams: Some(server.max_concurrent_streams),
            handshake_timeout_secs: Some(tls.handshake_timeout.as_secs()),
            max_pending_handshakes: Some(tls.max_pending_handshakes),
            idle_timeout_secs: Some(server.idle_timeout.as_secs()),
            client_hello_timeout_secs: Some(tls.client_hello_timeout.as_secs()),
            max_connections: Some(tls.max_connections),
            max_unauthenticated: Some(tls.max_unauthenticated),
            unauthenticated_lifetime_secs: Some(tls.unauthenticated_lifetime.as_secs()),
        }
    }

    fn server(&self) -> halo_limits::ServerLimits {
        let d = halo_limits::ServerLimits::default();
        halo_limits::ServerLimits {
            max_message_bytes: self.max_message_bytes.unwrap_or(d.max_message_bytes),
            max_concurrent_streams: self
                .max_concurrent_streams
                .unwrap_or(d.max_concurrent_streams),
            idle_timeout: self
                .idle_timeout_secs
                .map_or(d.idle_timeout, Duration::from_secs),
        }
    }

    fn tls(&self) -> halo_identity::TlsServerLimits {
        let d = halo_identity::TlsServerLimits::default();
        let secs = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_secs);
        halo_identity::TlsServerLimits {
            handshake_timeout: secs(self.handshake_timeout_secs, d.handshake_timeout),
            client_hello_timeout: secs(self.client_hello_timeout_secs, d.client_hello_timeout),
            max_pending_handshakes: self
                .max_pending_handshakes
                .unwrap_or(d.max_pending_handshakes),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            unauthenticated_lifetime: secs(
                self.unauthenticated_lifetime_secs,
                d.unauthenticated_lifetime,
            ),
            max_unauthenticated: self.max_unauthenticated.unwrap_or(d.max_unauthenticated),
        }
    }
}

/// Reads the `[roles]` table or `roles_file`: exactly one of them.
fn roles(inline: &Option<RoleConfig>, file: &Option<PathBuf>) -> Result<RoleConfig> {
    match (inline, file) {
        (Some(_), Some(_)) => bail!("set either [roles] or roles_file, not both"),
        (Some(r), None) => Ok(r.clone()),
        (None, Some(path)) => Ok(RoleConfig::load(path)?),
        (None, None) => bail!(
            "missing roles: set roles_file (--roles-file, HALO_ROLES_FILE) or a [roles] table"
        ),
    }
}

// ---- halo duchy --------------------------------------------------------------------------

/// `halo duchy` settings (see the module documentation and `deploy/examples/duchy.toml`).
#[skip_serializing_none]
#[derive(Args, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DuchySettings {
    /// This duchy's id (its certificate must be that of `duchies/{id}`).
    #[arg(long, env = "HALO_DUCHY_ID")]
    pub id: Option<String>,
    /// Data directory (SQLite database, blobs, plugin cache).
    #[arg(long, env = "HALO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address (ComputationControl, RequisitionFulfillment, health).
    #[arg(long, env = "HALO_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Kingdom URL, e.g. https://kingdom.example:7000
    #[arg(long, env = "HALO_KINGDOM")]
    pub kingdom: Option<String>,
    /// HTTP address of /metrics, /healthz and /readyz.
    #[arg(long, env = "HALO_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// How long a stopping duchy (SIGTERM, SIGINT) lets running stages finish before it
    /// releases their leases.
    #[arg(long, env = "HALO_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// The roles file shared with the Kingdom (or a `[roles]` table in this file).
    #[arg(long, env = "HALO_ROLES_FILE")]
    pub roles_file: Option<PathBuf>,
    #[arg(skip)]
    pub roles: Option<RoleConfig>,
    /// Peer duchies' ComputationControl URLs: `[peers] ID = "URL"` (flag: ID=URL, repeatable).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub peers: BTreeMap<String, String>,
    #[arg(long = "peer", value_parser = parse_peer, env = "HALO_PEERS", value_delimiter = ',')]
    #[serde(skip)]
    pub peer_flags: Vec<(String, String)>,
    #[command(flatten)]
    #[serde(default)]
    pub identity: IdentitySettings,
    #[command(flatten)]
    #[serde(default)]
    pub mill: MillSettings,
    #[command(flatten)]
    #[serde(default)]
    pub plugins: PluginSettings,
    #[command(flatten)]
    #[serde(default)]
    pub server: ServerSettings,
    #[command(flatten)]
    #[serde(default)]
    pub limits: DuchyLimitSettings,
}

/// `[mill]`: stage execution.
#[skip_serializing_none]
#[derive(Args, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MillSettings {
    /// Concurrent stage executions.
    #[arg(long, env = "HALO_WORKERS")]
    pub workers: Option<usize>,
    /// How long a claim on a stage holds without renewal (renewed every third of it).
    #[arg(long, env = "HALO_LEASE_SECS")]
    pub lease_secs: Option<u64>,
    /// Real failures of one stage before the computation fails (waiting does not count).
    #[arg(long, env = "HALO_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,
    /// Longest pause between two retries of a stage, in seconds.
    #[arg(long, env = "HALO_RETRY_MAX_SECS")]
    pub retry_max_secs: Option<u64>,
    /// A computation not finished this long after it was created here fails.
    #[arg(long, env = "HALO_COMPUTATION_DEADLINE_SECS")]
    pub computation_deadline_secs: Option<u64>,
    /// AdvanceComputation body chunk size in bytes (1 KiB – 4 MiB).
    #[arg(long, env = "HALO_CHUNK_BYTES")]
    pub chunk_bytes: Option<usize>,
    /// Most bytes one plugin stage may send (payloads to peers plus the result).
    #[arg(long, env = "HALO_MAX_PLUGIN_OUTPUT_BYTES")]
    pub max_plugin_output_bytes: Option<u64>,
    /// Most bytes of opaque state a plugin may carry between stages.
    #[arg(long, env = "HALO_MAX_PLUGIN_STATE_BYTES")]
    pub max_plugin_state_bytes: Option<u64>,
}

/// `[plugins]`: where the protocol components are and how they run.
#[skip_serializing_none]
#[derive(Args, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginSettings {
    /// Plugin directory (components named <protocol>-<version>.wasm); watched for changes.
    #[arg(long = "plugins", env = "HALO_PLUGINS")]
    pub dir: Option<PathBuf>,
    /// Refuse components without a valid signature from a trusted key.
    #[arg(long, env = "HALO_REQUIRE_SIGNATURES", num_args = 0..=1, default_missing_value = "true")]
    pub require_signatures: Option<bool>,
    /// Directory of trusted ed25519 public keys (*.pem / *.pub).
    #[arg(long, env = "HALO_TRUSTED_KEYS")]
    pub trusted_keys: Option<PathBuf>,
    /// Wall-clock budget of one stage execution, in seconds.
    #[arg(long, env = "HALO_STAGE_DEADLINE_SECS")]
    pub stage_deadline_secs: Option<u64>,
    /// Memory limit of one plugin instance, in MiB.
    #[arg(long, env = "HALO_PLUGIN_MEMORY_MIB")]
    pub max_memory_mib: Option<u64>,
    /// AOT compilation cache [default: <data_dir>/plugin-cache].
    #[arg(long, env = "HALO_PLUGIN_CACHE")]
    pub cache_dir: Option<PathBuf>,
    /// Threads of the P-256 crypto pool plugins call into; 0 = one per CPU.
    #[arg(long, env = "HALO_CRYPTO_THREADS")]
    pub crypto_threads: Option<usize>,
    /// Fixed-base tables (151.5 KiB each) one computation may register.
    #[arg(long, env = "HALO_MAX_FIXED_BASES_PER_COMPUTATION")]
    pub max_fixed_bases_per_computation: Option<usize>,
    /// Computations whose fixed-base tables are kept between stages (least recently used
    /// dropped first).
    #[arg(long, env = "HALO_MAX_CACHED_COMPUTATIONS")]
    pub max_cached_computations: Option<usize>,
}

/// `[limits]` of a duchy: payloads and streams.
#[skip_serializing_none]
#[derive(Args, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DuchyLimitSettings {
    /// Ceiling of one AdvanceComputation or fulfilment payload, in bytes.
    #[arg(long, env = "HALO_MAX_PAYLOAD_BYTES")]
    pub max_payload_bytes: Option<u64>,
    /// Largest frequency vector a payload may carry (registers).
    #[arg(long, env = "HALO_MAX_REGISTER_COUNT")]
    pub max_register_count: Option<u64>,
    /// Concurrent AdvanceComputation streams one peer duchy may have open here.
    #[arg(long, env = "HALO_MAX_ADVANCE_STREAMS_PER_PEER")]
    pub max_advance_streams_per_peer: Option<usize>,
    /// Concurrent FulfillRequisition streams one data provider may have open here.
    #[arg(long, env = "HALO_MAX_FULFILLMENT_STREAMS_PER_PROVIDER")]
    pub max_fulfillment_streams_per_provider: Option<usize>,
}

/// Default of `shutdown_grace_secs`.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;

impl Layered for DuchySettings {
    fn defaults() -> Self {
        let mill = halo_duchy::MillConfig::default();
        DuchySettings {
            shutdown_grace_secs: Some(DEFAULT_SHUTDOWN_GRACE_SECS),
            mill: MillSettings {
                workers: Some(mill.workers),
                lease_secs: Some(mill.lease.as_secs()),
                max_attempts: Some(mill.max_attempts),
                retry_max_secs: Some(mill.retry_max.as_secs()),
                computation_deadline_secs: Some(mill.computation_deadline.as_secs()),
                chunk_bytes: Some(mill.chunk_size),
                max_plugin_output_bytes: Some(mill.max_plugin_output_bytes),
                max_plugin_state_bytes: Some(mill.max_plugin_state_bytes),
            },
            plugins: PluginSettings {
                require_signatures: Some(false),
                stage_deadline_secs: Some(600),
                max_memory_mib: Some(4096),
                crypto_threads: Some(0),
                max_fixed_bases_per_computation: Some(16),
                max_cached_computations: Some(64),
                ..Default::default()
            },
            server: ServerSettings::defaults(halo_limits::DEFAULT_MAX_MESSAGE_BYTES),
            limits: DuchyLimitSettings {
                max_payload_bytes: Some(halo_duchy::DEFAULT_MAX_PAYLOAD_BYTES),
                max_register_count: Some(1 << 26),
                max_advance_streams_per_peer: Some(8),
                max_fulfillment_streams_per_provider: Some(8),
            },
            ..Default::default()
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        rebase(&mut self.data_dir, base);
        rebase(&mut self.roles_file, base);
        self.identity.resolve_paths(base);
        rebase(&mut self.plugins.dir, base);
        rebase(&mut self.plugins.trusted_keys, base);
        rebase(&mut self.plugins.cache_dir, base);
    }

    fn fold_flags(&mut self) {
        for (id, url) in self.peer_flags.drain(..) {
            self.peers.insert(id, url);
        }
    }
}

/// What `halo duchy` starts from its settings.
pub struct DuchyPlan {
    pub config: halo_duchy::DuchyConfig,
    pub registry: Arc<halo_registry::PluginRegistry>,
    pub watch: halo_registry::WatchHandle,
    pub metrics_listen: Option<SocketAddr>,
    pub shutdown_grace: Duration,
}

impl DuchySettings {
    /// Checks the settings and builds everything `halo duchy` runs (loads the identity,
    /// the roles and the plugin registry).
    pub fn plan(&self) -> Result<DuchyPlan> {
        let id = need(&self.id, "id", "--id", "HALO_DUCHY_ID")?.clone();
        if !halo_protocol::names::valid_id_segment(&id) {
            bail!("invalid duchy id {id:?} (ASCII letters, digits, '-', '_', '.')");
        }
        let data_dir = need(&self.data_dir, "data_dir", "--data-dir", "HALO_DATA_DIR")?.clone();
        let listen = *need(&self.listen, "listen", "--listen", "HALO_LISTEN")?;
        let kingdom = need(&self.kingdom, "kingdom", "--kingdom", "HALO_KINGDOM")?.clone();
        let roles = roles(&self.roles, &self.roles_file)?;
        roles.validate(None)?;
        if roles
            .protocols()
            .iter()
            .all(|p| roles.role_of(*p, &id).is_none())
        {
            tracing::warn!(duchy = %id, "this duchy has no role in any configured protocol: it will take part in nothing");
        }
        let (identity, trust, _) = self.identity.load(&Principal::Duchy(id.clone()))?;
        let peers = halo_duchy::PeerDirectory::default();
        for (peer, url) in &self.peers {
            if !halo_protocol::names::valid_id_segment(peer) {
                bail!("[peers]: invalid duchy id {peer:?}");
            }
            if *peer == id {
                bail!("[peers]: {peer:?} is this duchy");
            }
            check_https_url(url).with_context(|| format!("[peers] {peer:?}"))?;
            peers.set(peer, url);
        }
        check_https_url(&kingdom).context("kingdom")?;
        for protocol in roles.protocols() {
            let Some(duchies) = roles.duchies(protocol) else {
                continue;
            };
            let participants = duchies.participants();
            if !participants.contains(&id) {
                continue;
            }
            for other in participants.iter().filter(|d| **d != id) {
                if !self.peers.contains_key(other) {
                    tracing::warn!(duchy = %id, peer = %other, %protocol, "no [peers] URL for a duchy this one computes with: sends to it will wait until one is configured");
                }
            }
        }
        let m = &self.mill;
        let d = halo_duchy::MillConfig::default();
        let secs = |v: Option<u64>, d: Duration, key: &str, lo: u64, hi: u64| {
            within(v, d.as_secs(), key, lo, hi).map(Duration::from_secs)
        };
        let mill = halo_duchy::MillConfig {
            workers: within(m.workers, d.workers, "mill.workers", 1, 1024)?,
            lease: secs(m.lease_secs, d.lease, "mill.lease_secs", 1, DAY_SECS)?,
            max_attempts: within(
                m.max_attempts,
                d.max_attempts,
                "mill.max_attempts",
                1,
                10_000,
            )?,
            retry_max: secs(
                m.retry_max_secs,
                d.retry_max,
                "mill.retry_max_secs",
                1,
                DAY_SECS,
            )?,
            computation_deadline: secs(
                m.computation_deadline_secs,
                d.computation_deadline,
                "mill.computation_deadline_secs",
                1,
                3650 * DAY_SECS,
            )?,
            chunk_size: within(
                m.chunk_bytes,
                d.chunk_size,
                "mill.chunk_bytes",
                1 << 10,
                4 << 20,
            )?,
            max_plugin_output_bytes: m
                .max_plugin_output_bytes
                .unwrap_or(d.max_plugin_output_bytes),
            max_plugin_state_bytes: m.max_plugin_state_bytes.unwrap_or(d.max_plugin_state_bytes),
            ..d
        };
        let shutdown_grace = Duration::from_secs(within(
            self.shutdown_grace_secs,
            DEFAULT_SHUTDOWN_GRACE_SECS,
            "shutdown_grace_secs",
            0,
            DAY_SECS,
        )?);
        // Last: compiling the plugins is the slow part, after every cheap check.
        let (registry, watch) = self.plugins.open(&data_dir)?;
        let l = &self.limits;
        let config = halo_duchy::DuchyConfig {
            id,
            data_dir,
            listen,
            identity,
            trust,
            kingdom_url: kingdom,
            peers,
            roles,
            mill,
            herald: halo_duchy::HeraldConfig::default(),
            protocols: registry.clone(),
            max_payload_bytes: l
                .max_payload_bytes
                .unwrap_or(halo_duchy::DEFAULT_MAX_PAYLOAD_BYTES),
            tls_limits: self.server.tls(),
            limits: halo_duchy::DuchyLimits {
                server: halo_limits::ServerLimits {
                    max_message_bytes: self
                        .server
                        .max_message_bytes
                        .unwrap_or(halo_limits::DEFAULT_MAX_MESSAGE_BYTES),
                    ..self.server.server()
                },
                max_register_count: l.max_register_count.unwrap_or(1 << 26),
                max_advance_streams_per_peer: l.max_advance_streams_per_peer.unwrap_or(8),
                max_fulfillment_streams_per_provider: l
                    .max_fulfillment_streams_per_provider
                    .unwrap_or(8),
            },
        };
        Ok(DuchyPlan {
            config,
            registry,
            watch,
            metrics_listen: self.metrics_listen,
            shutdown_grace,
        })
    }
}

impl PluginSettings {
    /// Opens the registry over the plugin directory and starts watching it.
    pub fn open(
        &self,
        data_dir: &Path,
    ) -> Result<(
        Arc<halo_registry::PluginRegistry>,
        halo_registry::WatchHandle,
    )> {
        let dir = need(&self.dir, "plugins.dir", "--plugins", "HALO_PLUGINS")?;
        let engine = halo_engine::EngineConfig {
            max_memory_bytes: within(
                self.max_memory_mib,
                4096,
                "plugins.max_memory_mib",
                16,
                1 << 20,
            )? << 20,
            stage_deadline: Duration::from_secs(within(
                self.stage_deadline_secs,
                600,
                "plugins.stage_deadline_secs",
                1,
                DAY_SECS,
            )?),
            cache_dir: Some(
                self.cache_dir
                    .clone()
                    .unwrap_or_else(|| data_dir.join("plugin-cache")),
            ),
            crypto_threads: within(
                self.crypto_threads.map(|v| v as u64),
                0,
                "plugins.crypto_threads",
                0,
                256,
            )? as usize,
            max_fixed_bases_per_computation: within(
                self.max_fixed_bases_per_computation.map(|v| v as u64),
                16,
                "plugins.max_fixed_bases_per_computation",
                1,
                1024,
            )? as usize,
            max_cached_computations: within(
                self.max_cached_computations.map(|v| v as u64),
                64,
                "plugins.max_cached_computations",
                1,
                65536,
            )? as usize,
            ..halo_engine::EngineConfig::default()
        };
        let runtime = halo_engine::Runtime::new(engine)?;
        let mut config = halo_registry::RegistryConfig::new(dir);
        if let Some(keys) = &self.trusted_keys {
            config.trusted = halo_signing::TrustedKeys::load_dir(keys)
                .with_context(|| format!("loading trusted keys from {}", keys.display()))?;
        }
        if self.require_signatures == Some(true) {
            if config.trusted.is_empty() {
                bail!(
                    "plugins.require_signatures needs plugins.trusted_keys with at least one key"
                );
            }
            config.policy = halo_signing::SignaturePolicy::Required;
        }
        let registry = halo_registry::PluginRegistry::open(runtime, config)?;
        for p in registry.list() {
            tracing::info!(plugin = %p.id, version = %p.version, digest = %p.digest, wit = %p.wit_package, "plugin available");
        }
        for (path, why) in registry.refused() {
            tracing::error!(file = %path.display(), "plugin refused: {why}");
        }
        let watch = registry.watch()?;
        Ok((registry, watch))
    }
}

/// An `https://host[:port]` URL (every connection is mutual TLS; anything else would be
/// refused at the first call, long after start-up).
fn check_https_url(url: &str) -> Result<()> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| anyhow!("{url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none_or(str::is_empty) {
        bail!("{url:?} is not an https://host[:port] URL (every connection uses mutual TLS)");
    }
    Ok(())
}

// ---- halo kingdom ------------------------------------------------------------------------

/// `halo kingdom` settings (see the module documentation and `deploy/examples/kingdom.toml`).
#[skip_serializing_none]
#[derive(Args, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KingdomSettings {
    /// Data directory (the SQLite database).
    #[arg(long, env = "HALO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address (system API, admin API, health).
    #[arg(long, env = "HALO_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// HTTP address of /metrics, /healthz and /readyz.
    #[arg(long, env = "HALO_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// How long a stopping Kingdom lets calls in flight finish.
    #[arg(long, env = "HALO_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// The roles file shared with the duchies (or a `[roles]` table in this file).
    #[arg(long, env = "HALO_ROLES_FILE")]
    pub roles_file: Option<PathBuf>,
    #[arg(skip)]
    pub roles: Option<RoleConfig>,
    /// Every duchy of the deployment, including any that take part in nothing
    /// [default: the duchies of the roles; with a pki_dir, its duchies].
    #[arg(long, env = "HALO_DUCHY_IDS", value_delimiter = ',')]
    pub duchies: Option<Vec<String>>,
    /// Data providers allowed to fulfil requisitions [default with a pki_dir: its data providers].
    #[arg(long, env = "HALO_DATA_PROVIDERS", value_delimiter = ',')]
    pub data_providers: Option<Vec<String>>,
    /// Measurement consumers allowed to create measurements [default with a pki_dir: its
    /// measurement consumers].
    #[arg(long, env = "HALO_MEASUREMENT_CONSUMERS", value_delimiter = ',')]
    pub measurement_consumers: Option<Vec<String>>,
    /// Fallback poll interval of StreamActiveComputations, in milliseconds.
    #[arg(long, env = "HALO_STREAM_POLL_INTERVAL_MS")]
    pub stream_poll_interval_ms: Option<u64>,
    /// A StreamActiveComputations call ends normally after this many seconds.
    #[arg(long, env = "HALO_STREAM_MAX_DURATION_SECS")]
    pub stream_max_duration_secs: Option<u64>,
    #[command(flatten)]
    #[serde(default)]
    pub identity: IdentitySettings,
    /// The leaf certificate of every duchy and data provider (principal resource name →
    /// PEM file); with a pki_dir, taken from it.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub certificates: BTreeMap<String, PathBuf>,
    #[command(flatten)]
    #[serde(default)]
    pub server: ServerSettings,
    #[command(flatten)]
    #[serde(default)]
    pub limits: KingdomLimitSettings,
    /// Protocol parameters of measurements that carry none.
    #[arg(skip)]
    pub protocols: Option<halo_kingdom::DefaultProtocolConfigs>,
}

/// `[limits]` of the Kingdom.
#[skip_serializing_none]
#[derive(Args, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KingdomLimitSettings {
    /// Concurrent StreamActiveComputations calls one duchy may have open.
    #[arg(long, env = "HALO_MAX_ACTIVE_STREAMS_PER_DUCHY")]
    pub max_active_streams_per_duchy: Option<usize>,
    /// Largest page_size of ListRequisitions (larger is clamped).
    #[arg(long, env = "HALO_MAX_PAGE_SIZE")]
    pub max_page_size: Option<usize>,
    /// page_size of a list call that sets none.
    #[arg(long, env = "HALO_DEFAULT_PAGE_SIZE")]
    pub default_page_size: Option<usize>,
}

impl Layered for KingdomSettings {
    fn defaults() -> Self {
        let l = halo_kingdom::KingdomLimits::default();
        KingdomSettings {
            shutdown_grace_secs: Some(DEFAULT_SHUTDOWN_GRACE_SECS),
            stream_poll_interval_ms: Some(
                halo_kingdom::DEFAULT_STREAM_POLL_INTERVAL.as_millis() as u64
            ),
            stream_max_duration_secs: Some(halo_kingdom::DEFAULT_STREAM_MAX_DURATION.as_secs()),
            server: ServerSettings::defaults(halo_limits::KINGDOM_MAX_MESSAGE_BYTES),
            limits: KingdomLimitSettings {
                max_active_streams_per_duchy: Some(l.max_active_streams_per_duchy),
                max_page_size: Some(l.max_page_size),
                default_page_size: Some(l.default_page_size),
            },
            protocols: Some(halo_kingdom::DefaultProtocolConfigs::default()),
            ..Default::default()
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        rebase(&mut self.data_dir, base);
        rebase(&mut self.roles_file, base);
        self.identity.resolve_paths(base);
        for path in self.certificates.values_mut() {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }
}

/// What `halo kingdom` starts from its settings.
pub struct KingdomPlan {
    pub config: halo_kingdom::KingdomConfig,
    pub metrics_listen: Option<SocketAddr>,
    pub shutdown_grace: Duration,
}

impl KingdomSettings {
    /// Checks the settings and builds the Kingdom configuration (loads identity, roles and
    /// the certificates of duchies and data providers).
    pub fn plan(&self) -> Result<KingdomPlan> {
        let data_dir = need(&self.data_dir, "data_dir", "--data-dir", "HALO_DATA_DIR")?.clone();
        let listen = *need(&self.listen, "listen", "--listen", "HALO_LISTEN")?;
        let roles = roles(&self.roles, &self.roles_file)?;
        let (identity, trust, pki) = self.identity.load(&Principal::Kingdom)?;
        let of_pki = |pick: fn(&Principal) -> Option<&str>| -> Vec<String> {
            pki.iter()
                .flat_map(|p| p.principals())
                .filter_map(|p| pick(&p).map(str::to_owned))
                .collect()
        };
        let duchies = match &self.duchies {
            Some(d) => d.clone(),
            None if pki.is_some() => of_pki(|p| match p {
                Principal::Duchy(d) => Some(d),
                _ => None,
            }),
            None => roles.all_duchies(),
        };
        let data_providers = match &self.data_providers {
            Some(d) => d.clone(),
            None => of_pki(|p| match p {
                Principal::DataProvider(d) => Some(d),
                _ => None,
            }),
        };
        let measurement_consumers = match &self.measurement_consumers {
            Some(d) => d.clone(),
            None => of_pki(|p| match p {
                Principal::MeasurementConsumer(d) => Some(d),
                _ => None,
            }),
        };
        for key in self.certificates.keys() {
            let known = match Principal::parse(key) {
                Ok(Principal::Duchy(d)) => duchies.contains(&d),
                Ok(Principal::DataProvider(d)) => data_providers.contains(&d),
                _ => false,
            };
            if !known {
                bail!(
                    "[certificates]: {key:?} is not a configured duchy or data provider \
                     (keys are \"duchies/ID\" or \"dataProviders/ID\")"
                );
            }
        }
        let certificate_der = |p: Principal| -> Result<Vec<u8>> {
            if let Some(path) = self.certificates.get(&p.resource_name()) {
                let pem = std::fs::read_to_string(path).with_context(|| {
                    format!("reading the certificate of {p} ({})", path.display())
                })?;
                let id = Identity {
                    principal: p.clone(),
                    cert_pem: pem,
                    key_pem: String::new(),
                    root_pem: String::new(),
                };
                // It must be that principal's leaf: issued by its own root, valid, not a CA.
                let chain = id.chain_der()?;
                let owner = trust.identify(Some(&chain)).map_err(|s| {
                    anyhow!("[certificates] {p} ({}): {}", path.display(), s.message())
                })?;
                if owner != p {
                    bail!(
                        "[certificates] {p} ({}): the certificate identifies {owner}",
                        path.display()
                    );
                }
                return Ok(id.certificate_der()?);
            }
            let pki = pki.as_ref().ok_or_else(|| {
                anyhow!(
                    "[certificates]: no certificate for {} (add \"{}\" = \"path/to/cert.pem\")",
                    p,
                    p.resource_name()
                )
            })?;
            let id = pki
                .identity(&p)
                .ok_or_else(|| anyhow!("the PKI has no identity for {p}"))?;
            Ok(id.certificate_der()?)
        };
        let duchies = duchies
            .iter()
            .map(|id| {
                Ok(halo_kingdom::DuchyEntry {
                    id: id.clone(),
                    certificate_der: certificate_der(Principal::Duchy(id.clone()))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let data_providers = data_providers
            .iter()
            .map(|id| {
                Ok(halo_kingdom::CertEntry {
                    id: id.clone(),
                    certificate_der: certificate_der(Principal::DataProvider(id.clone()))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let l = &self.limits;
        let dl = halo_kingdom::KingdomLimits::default();
        let config = halo_kingdom::KingdomConfig {
            data_dir,
            listen,
            identity,
            trust,
            duchies,
            data_providers,
            measurement_consumers,
            roles,
            stream_poll_interval: self.stream_poll_interval_ms.map_or(
                halo_kingdom::DEFAULT_STREAM_POLL_INTERVAL,
                Duration::from_millis,
            ),
            stream_max_duration: self.stream_max_duration_secs.map_or(
                halo_kingdom::DEFAULT_STREAM_MAX_DURATION,
                Duration::from_secs,
            ),
            default_protocol_config: self.protocols.clone().unwrap_or_default(),
            tls_limits: self.server.tls(),
            limits: halo_kingdom::KingdomLimits {
                server: halo_limits::ServerLimits {
                    max_message_bytes: self
                        .server
                        .max_message_bytes
                        .unwrap_or(halo_limits::KINGDOM_MAX_MESSAGE_BYTES),
                    ..self.server.server()
                },
                max_active_streams_per_duchy: l
                    .max_active_streams_per_duchy
                    .unwrap_or(dl.max_active_streams_per_duchy),
                max_page_size: l.max_page_size.unwrap_or(dl.max_page_size),
                default_page_size: l.default_page_size.unwrap_or(dl.default_page_size),
            },
        };
        config.validate()?;
        Ok(KingdomPlan {
            config,
            metrics_listen: self.metrics_listen,
            shutdown_grace: Duration::from_secs(within(
                self.shutdown_grace_secs,
                DEFAULT_SHUTDOWN_GRACE_SECS,
                "shutdown_grace_secs",
                0,
                DAY_SECS,
            )?),
        })
    }
}
