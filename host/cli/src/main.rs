//! `halo`: one binary for every part of a Halo deployment.
//!
//! * `halo pki` — generate a development PKI (one root CA per principal).
//! * `halo kingdom` — serve the system API and the admin API.
//! * `halo duchy` — run a duchy (herald, mills, ComputationControl, RequisitionFulfillment).
//! * `halo edp` — a data-provider simulator (HMSS) against running servers.
//! * `halo mc` — a measurement-consumer simulator (HMSS) against running servers.
//! * `halo demo` — everything on loopback in one process, one measurement, result vs truth.
//! * `halo plugin` — keygen / sign / verify / inspect / list protocol components.

mod demo;
mod plugin;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use clap::{Parser, Subcommand};
use halo_cli::parse_peer;
use halo_duchy::{DuchyConfig, HeraldConfig, MillConfig, PeerDirectory, RoleConfig, RunningDuchy};
use halo_identity::{DevPki, Principal};

/// Exit code for invalid configuration or usage (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "halo",
    version,
    about = "Halo cross-media measurement: Kingdom, duchies and simulators"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up; boxing the large server variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Generate a development PKI: a root CA and a leaf certificate per principal.
    Pki {
        #[arg(long, env = "HALO_PKI_OUT")]
        out: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "edp1,edp2,edp3")]
        data_providers: Vec<String>,
        #[arg(long, default_value = "mc1")]
        measurement_consumer: String,
    },
    /// Run the Kingdom (system API + admin API) for the principals of a PKI directory.
    Kingdom {
        #[arg(long, env = "HALO_PKI")]
        pki: PathBuf,
        #[arg(long, env = "HALO_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long, env = "HALO_LISTEN", default_value = "127.0.0.1:7000")]
        listen: SocketAddr,
        #[command(flatten)]
        server_limits: ServerLimitArgs,
        /// Concurrent StreamActiveComputations calls one duchy may have open.
        #[arg(long, env = "HALO_MAX_ACTIVE_STREAMS_PER_DUCHY", default_value_t = 4)]
        max_active_streams_per_duchy: usize,
        /// Largest page_size of ListRequisitions (larger is clamped).
        #[arg(long, env = "HALO_MAX_PAGE_SIZE", default_value_t = 1000)]
        max_page_size: usize,
    },
    /// Run a duchy.
    Duchy {
        #[arg(long, env = "HALO_DUCHY_ID")]
        id: String,
        #[arg(long, env = "HALO_PKI")]
        pki: PathBuf,
        #[arg(long, env = "HALO_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long, env = "HALO_LISTEN")]
        listen: SocketAddr,
        /// Kingdom URL, e.g. https://127.0.0.1:7000
        #[arg(long, env = "HALO_KINGDOM")]
        kingdom: String,
        /// Peer duchies' ComputationControl addresses: ID=URL (repeatable).
        #[arg(long = "peer", value_parser = parse_peer)]
        peers: Vec<(String, String)>,
        /// Mill workers.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// How long a mill worker's claim on a stage holds without renewal (renewed every
        /// third of it while the stage runs; a restarted duchy frees its own at once).
        #[arg(long, env = "HALO_LEASE_SECS", default_value_t = 60)]
        lease_secs: u64,
        /// Real failures (plugin transient errors, crashes) of one stage before the
        /// computation fails. Waiting for a peer or the Kingdom does not count.
        #[arg(long, env = "HALO_MAX_ATTEMPTS", default_value_t = 10)]
        max_attempts: u32,
        /// Longest pause between two retries of a stage, in seconds.
        #[arg(long, env = "HALO_RETRY_MAX_SECS", default_value_t = 60)]
        retry_max_secs: u64,
        /// A computation not finished this long after it was created here fails (the bound
        /// on waiting for peers and the Kingdom).
        #[arg(long, env = "HALO_COMPUTATION_DEADLINE_SECS", default_value_t = 12 * 3600)]
        computation_deadline_secs: u64,
        /// AdvanceComputation body chunk size in bytes (1 KiB – 4 MiB).
        #[arg(long, env = "HALO_CHUNK_BYTES", default_value_t = 1 << 20)]
        chunk_bytes: usize,
        /// Most bytes one plugin stage may send (payloads to peers plus the result); more
        /// fails the computation naming the plugin.
        #[arg(long, env = "HALO_MAX_PLUGIN_OUTPUT_BYTES", default_value_t = halo_duchy::DEFAULT_MAX_PLUGIN_OUTPUT_BYTES)]
        max_plugin_output_bytes: u64,
        /// Most bytes of opaque state a plugin may carry between stages.
        #[arg(long, env = "HALO_MAX_PLUGIN_STATE_BYTES", default_value_t = halo_duchy::DEFAULT_MAX_PLUGIN_STATE_BYTES)]
        max_plugin_state_bytes: u64,
        #[command(flatten)]
        plugins: PluginArgs,
        /// Serve OpenMetrics text at http://ADDR/metrics (loaded plugin versions, stage
        /// executions and times by plugin, version, stage and outcome).
        #[arg(long, env = "HALO_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        #[command(flatten)]
        server_limits: ServerLimitArgs,
        /// Ceiling of one AdvanceComputation or fulfilment payload, in bytes (the bound
        /// applied is derived from the computation's protocol config, at most this).
        #[arg(long, env = "HALO_MAX_PAYLOAD_BYTES", default_value_t = halo_duchy::DEFAULT_MAX_PAYLOAD_BYTES)]
        max_payload_bytes: u64,
        /// Largest frequency vector (HMSS register_count) a payload may carry.
        #[arg(long, env = "HALO_MAX_REGISTER_COUNT", default_value_t = 1 << 26)]
        max_register_count: u64,
        /// Concurrent AdvanceComputation streams one peer duchy may have open here.
        #[arg(long, env = "HALO_MAX_ADVANCE_STREAMS_PER_PEER", default_value_t = 8)]
        max_advance_streams_per_peer: usize,
        /// Concurrent FulfillRequisition streams one data provider may have open here.
        #[arg(
            long,
            env = "HALO_MAX_FULFILLMENT_STREAMS_PER_PROVIDER",
            default_value_t = 8
        )]
        max_fulfillment_streams_per_provider: usize,
    },
    /// Inspect, sign, verify and list protocol plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Run a whole measurement on this machine and print it beside the ground truth.
    Demo(demo::DemoArgs),
    /// Data-provider simulator: fulfil this provider's HMSS requisitions with a frequency
    /// vector from the synthetic population.
    Edp(halo_cli::edp::EdpArgs),
    /// Measurement-consumer simulator: create an HMSS measurement, wait and print the result.
    Mc(halo_cli::mc::McArgs),
}

/// Connection limits of a server (Kingdom or duchy).
#[derive(clap::Args, Clone)]
pub struct ServerLimitArgs {
    /// Largest gRPC message (decoded or encoded), in bytes [default: Kingdom 1 MiB, duchy
    /// 8 MiB].
    #[arg(long, env = "HALO_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// HTTP/2 concurrent streams per connection.
    #[arg(long, env = "HALO_MAX_CONCURRENT_STREAMS", default_value_t = halo_limits::DEFAULT_MAX_CONCURRENT_STREAMS)]
    pub max_concurrent_streams: u32,
    /// A connection whose TLS handshake is not done after this many seconds is closed.
    #[arg(long, env = "HALO_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10)]
    pub handshake_timeout_secs: u64,
    /// TLS handshakes in progress at once.
    #[arg(long, env = "HALO_MAX_PENDING_HANDSHAKES", default_value_t = 256)]
    pub max_pending_handshakes: usize,
    /// A connection without a call in flight for this many seconds is closed.
    #[arg(long, env = "HALO_IDLE_TIMEOUT_SECS", default_value_t = 300)]
    pub idle_timeout_secs: u64,
    /// A connection that sends no byte (no ClientHello) for this many seconds is closed.
    #[arg(long, env = "HALO_CLIENT_HELLO_TIMEOUT_SECS", default_value_t = 3)]
    pub client_hello_timeout_secs: u64,
    /// Established connections at once (more wait in the accept queue).
    #[arg(long, env = "HALO_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Connections whose certificate identifies no principal, at once (each is closed after
    /// --unauthenticated-lifetime-secs; more are closed at once).
    #[arg(long, env = "HALO_MAX_UNAUTHENTICATED", default_value_t = 64)]
    pub max_unauthenticated: usize,
    /// How long a connection whose certificate identifies no principal is served (enough to
    /// answer UNAUTHENTICATED).
    #[arg(long, env = "HALO_UNAUTHENTICATED_LIFETIME_SECS", default_value_t = 5)]
    pub unauthenticated_lifetime_secs: u64,
}

impl ServerLimitArgs {
    fn server(&self, default_message_bytes: usize) -> halo_limits::ServerLimits {
        halo_limits::ServerLimits {
            max_message_bytes: self.max_message_bytes.unwrap_or(default_message_bytes),
            max_concurrent_streams: self.max_concurrent_streams,
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout_secs),
        }
    }

    fn tls(&self) -> halo_identity::TlsServerLimits {
        halo_identity::TlsServerLimits {
            handshake_timeout: std::time::Duration::from_secs(self.handshake_timeout_secs),
            client_hello_timeout: std::time::Duration::from_secs(self.client_hello_timeout_secs),
            max_pending_handshakes: self.max_pending_handshakes,
            max_connections: self.max_connections,
            unauthenticated_lifetime: std::time::Duration::from_secs(
                self.unauthenticated_lifetime_secs,
            ),
            max_unauthenticated: self.max_unauthenticated,
        }
    }
}

/// Where a duchy finds its protocol plugins and how it runs them.
#[derive(clap::Args, Clone)]
pub struct PluginArgs {
    /// Plugin directory (components named <protocol>-<version>.wasm); watched for changes.
    #[arg(long = "plugins", env = "HALO_PLUGINS")]
    pub dir: PathBuf,
    /// Refuse components without a valid signature from a trusted key.
    #[arg(long, env = "HALO_REQUIRE_SIGNATURES")]
    pub require_signatures: bool,
    /// Directory of trusted ed25519 public keys (*.pem / *.pub).
    #[arg(long, env = "HALO_TRUSTED_KEYS")]
    pub trusted_keys: Option<PathBuf>,
    /// Wall-clock budget of one stage execution, in seconds.
    #[arg(long, env = "HALO_STAGE_DEADLINE_SECS", default_value_t = 600)]
    pub stage_deadline_secs: u64,
    /// Memory limit of one plugin instance, in MiB.
    #[arg(long, env = "HALO_PLUGIN_MEMORY_MIB", default_value_t = 4096)]
    pub max_memory_mib: u64,
    /// AOT compilation cache (default: <data-dir>/plugin-cache).
    #[arg(long, env = "HALO_PLUGIN_CACHE")]
    pub cache_dir: Option<PathBuf>,
}

impl PluginArgs {
    /// Opens the registry over the plugin directory and starts watching it.
    pub fn open(
        &self,
        data_dir: &std::path::Path,
    ) -> Result<(
        Arc<halo_registry::PluginRegistry>,
        halo_registry::WatchHandle,
    )> {
        let engine = halo_engine::EngineConfig {
            max_memory_bytes: self.max_memory_mib << 20,
            stage_deadline: std::time::Duration::from_secs(self.stage_deadline_secs),
            cache_dir: Some(
                self.cache_dir
                    .clone()
                    .unwrap_or_else(|| data_dir.join("plugin-cache")),
            ),
            ..halo_engine::EngineConfig::default()
        };
        let runtime = halo_engine::Runtime::new(engine)?;
        let mut config = halo_registry::RegistryConfig::new(&self.dir);
        if let Some(keys) = &self.trusted_keys {
            config.trusted = halo_signing::TrustedKeys::load_dir(keys)
                .with_context(|| format!("loading trusted keys from {}", keys.display()))?;
        }
        if self.require_signatures {
            if config.trusted.is_empty() {
                return Err(anyhow!(
                    "--require-signatures needs --trusted-keys with at least one key"
                ));
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

fn init_tracing(default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Pki {
            out,
            data_providers,
            measurement_consumer,
        } => {
            let pki = DevPki::generate(&halo_sim::standard_principals(
                &data_providers,
                &measurement_consumer,
            ))?;
            pki.write(&out)?;
            println!(
                "wrote a development PKI for {} principals to {}",
                pki.principals().len(),
                out.display()
            );
            Ok(())
        }
        Command::Kingdom {
            pki,
            data_dir,
            listen,
            server_limits,
            max_active_streams_per_duchy,
            max_page_size,
        } => {
            init_tracing("info");
            halo_identity::init_crypto();
            let pki = DevPki::load(&pki)
                .with_context(|| format!("loading PKI from {}", pki.display()))?;
            let mut config = halo_sim::kingdom_config(&pki, &data_dir, listen)?;
            config.tls_limits = server_limits.tls();
            config.limits = halo_kingdom::KingdomLimits {
                server: server_limits.server(halo_limits::KINGDOM_MAX_MESSAGE_BYTES),
                max_active_streams_per_duchy,
                max_page_size,
                ..halo_kingdom::KingdomLimits::default()
            };
            let k = halo_kingdom::RunningKingdom::start(config).await?;
            tracing::info!(addr = %k.addr, "kingdom listening");
            shutdown_signal().await;
            k.shutdown().await
        }
        Command::Plugin(cmd) => {
            init_tracing("warn");
            plugin::run(cmd)
        }
        Command::Duchy {
            id,
            pki,
            data_dir,
            listen,
            kingdom,
            peers,
            workers,
            lease_secs,
            max_attempts,
            retry_max_secs,
            computation_deadline_secs,
            chunk_bytes,
            max_plugin_output_bytes,
            max_plugin_state_bytes,
            plugins,
            metrics_listen,
            server_limits,
            max_payload_bytes,
            max_register_count,
            max_advance_streams_per_peer,
            max_fulfillment_streams_per_provider,
        } => {
            init_tracing("info");
            halo_identity::init_crypto();
            let pki = DevPki::load(&pki)
                .with_context(|| format!("loading PKI from {}", pki.display()))?;
            let identity = pki
                .identity(&Principal::Duchy(id.clone()))
                .ok_or_else(|| anyhow!("the PKI has no identity for duchy {id}"))?
                .clone();
            let (registry, _watch) = plugins.open(&data_dir)?;
            let registry_for_metrics = registry.clone();
            let directory = PeerDirectory::default();
            let peers: HashMap<String, String> = peers.into_iter().collect();
            for (d, url) in &peers {
                directory.set(d, url);
            }
            let config = DuchyConfig {
                id,
                data_dir,
                listen,
                identity,
                trust: pki.trust_store()?,
                kingdom_url: kingdom,
                peers: directory,
                roles: RoleConfig::default(),
                mill: MillConfig {
                    workers,
                    lease: std::time::Duration::from_secs(lease_secs.max(1)),
                    max_attempts,
                    retry_max: std::time::Duration::from_secs(retry_max_secs.max(1)),
                    computation_deadline: std::time::Duration::from_secs(computation_deadline_secs),
                    chunk_size: chunk_bytes,
                    max_plugin_output_bytes,
                    max_plugin_state_bytes,
                    ..MillConfig::default()
                },
                herald: HeraldConfig::default(),
                protocols: registry,
                max_payload_bytes,
                tls_limits: server_limits.tls(),
                limits: halo_duchy::DuchyLimits {
                    server: server_limits.server(halo_limits::DEFAULT_MAX_MESSAGE_BYTES),
                    max_register_count,
                    max_advance_streams_per_peer,
                    max_fulfillment_streams_per_provider,
                },
            };
            let d = RunningDuchy::start(config).await?;
            tracing::info!(addr = %d.addr, "duchy listening");
            let (stop_metrics, stop_rx) = tokio::sync::watch::channel(false);
            if let Some(addr) = metrics_listen {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding metrics listener {addr}"))?;
                tracing::info!(%addr, "metrics at /metrics");
                let reg = registry_for_metrics.clone();
                let refresh: Arc<dyn Fn(&halo_duchy::metrics::Metrics) + Send + Sync> =
                    Arc::new(move |m| {
                        let list: Vec<_> = reg
                            .list()
                            .into_iter()
                            .map(|p| (p.id, p.version, p.wit_package, p.offered))
                            .collect();
                        m.set_plugins(&list);
                    });
                tokio::spawn(halo_duchy::metrics::serve(
                    listener,
                    d.core.metrics.clone(),
                    refresh,
                    stop_rx,
                ));
            }
            shutdown_signal().await;
            let _ = stop_metrics.send(true);
            d.shutdown().await
        }
        Command::Demo(args) => demo::run(args).await,
        Command::Edp(args) => {
            init_tracing("warn");
            halo_cli::edp::run(args).await.map(|_| ())
        }
        Command::Mc(args) => {
            init_tracing("warn");
            halo_cli::mc::run(args).await.map(|_| ())
        }
    }
}
