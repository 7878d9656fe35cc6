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

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use clap::{Parser, Subcommand};
use halo_cli::lifecycle::{ShutdownSignals, StopSignal};
use halo_cli::settings;
use halo_duchy::RunningDuchy;
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
    /// Generate a development PKI: a root CA and a leaf certificate per principal, plus a
    /// trust bundle (`trust-bundle.toml`) naming every principal's root.
    Pki {
        #[arg(long, env = "HALO_PKI_OUT")]
        out: PathBuf,
        /// Duchy ids (any names: ASCII letters, digits, '-', '_', '.').
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "aggregator,worker1,worker2"
        )]
        duchies: Vec<String>,
        #[arg(long, value_delimiter = ',', default_value = "edp1,edp2,edp3")]
        data_providers: Vec<String>,
        #[arg(
            long,
            alias = "measurement-consumer",
            value_delimiter = ',',
            default_value = "mc1"
        )]
        measurement_consumers: Vec<String>,
    },
    /// Run the Kingdom (system API + admin API). Configuration: `--config FILE` (TOML), each
    /// key overridable by its environment variable and flag.
    Kingdom {
        #[command(flatten)]
        file: ConfigArgs,
        #[command(flatten)]
        settings: settings::KingdomSettings,
    },
    /// Run a duchy. Configuration: `--config FILE` (TOML), each key overridable by its
    /// environment variable and flag.
    Duchy {
        #[command(flatten)]
        file: ConfigArgs,
        #[command(flatten)]
        settings: settings::DuchySettings,
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

/// The configuration file and what to do with it.
#[derive(clap::Args, Clone)]
pub struct ConfigArgs {
    /// TOML configuration file (see deploy/examples/); environment and flags override it.
    #[arg(long, env = "HALO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (defaults, file, environment, flags) as TOML and
    /// exit.
    #[arg(long)]
    pub print_config: bool,
}

/// An invalid configuration or usage (exit code 64).
#[derive(Debug)]
struct UsageError(anyhow::Error);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage<T>(r: Result<T>) -> Result<T> {
    r.map_err(|e| anyhow::Error::new(UsageError(e)))
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
    let result = rt.block_on(run(cli));
    // A plugin call abandoned after the shutdown grace period runs on a blocking thread until
    // its own deadline; do not let it hold the exit (its lease is already released).
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.downcast_ref::<halo_cli::lifecycle::Interrupted>()
                .is_some() =>
        {
            let code = e
                .downcast_ref::<halo_cli::lifecycle::Interrupted>()
                .map_or(1, |i| i.0.exit_code());
            ExitCode::from(code)
        }
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            eprintln!("error: {e:#}");
            ExitCode::from(EX_USAGE)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Start-up ended by a stop signal: nothing was claimed, nothing needs releasing.
fn stopped_during_start_up(what: &str, signal: StopSignal) -> Result<()> {
    tracing::info!("{signal} received during start-up: {what} stops before serving");
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Pki {
            out,
            duchies,
            data_providers,
            measurement_consumers,
        } => {
            let mut principals = vec![Principal::Kingdom];
            let groups = [
                (
                    "duchy",
                    &duchies,
                    Principal::Duchy as fn(String) -> Principal,
                ),
                ("data provider", &data_providers, Principal::DataProvider),
                (
                    "measurement consumer",
                    &measurement_consumers,
                    Principal::MeasurementConsumer,
                ),
            ];
            for (what, ids, make) in groups {
                for id in ids {
                    if !halo_protocol::names::valid_id_segment(id) {
                        return usage(Err(anyhow!(
                            "invalid {what} id {id:?} (ASCII letters, digits, '-', '_', '.')"
                        )));
                    }
                    principals.push(make(id.clone()));
                }
            }
            let pki = usage(DevPki::generate(&principals).map_err(anyhow::Error::from))?;
            pki.write(&out)?;
            println!(
                "wrote a development PKI for {} principals to {} (trust bundle: {})",
                pki.principals().len(),
                out.display(),
                out.join(halo_identity::TRUST_BUNDLE_FILE).display()
            );
            Ok(())
        }
        Command::Kingdom { file, settings } => {
            let settings = usage(settings::effective(file.config.as_deref(), settings))?;
            if file.print_config {
                print!("{}", settings::to_toml(&settings)?);
                return Ok(());
            }
            init_tracing("info");
            // First, so that a stop signal during start-up is an orderly exit.
            let mut signals = ShutdownSignals::install()?;
            halo_identity::init_crypto();
            let plan = usage(settings.plan())?;
            let start = halo_kingdom::RunningKingdom::start(plan.config);
            let mut k = match signals.unless_signalled(start).await {
                Ok(k) => k?,
                Err(s) => return stopped_during_start_up("the Kingdom", s),
            };
            tracing::info!(addr = %k.addr, "kingdom listening");
            if let Some(addr) = plan.metrics_listen {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding metrics listener {addr}"))?;
                tracing::info!(%addr, "/healthz, /readyz");
                k.serve_ops(listener, None);
            }
            signals
                .serve_until_stopped(k.shutdown_graceful(plan.shutdown_grace))
                .await
        }
        Command::Plugin(cmd) => {
            init_tracing("warn");
            plugin::run(cmd)
        }
        Command::Duchy { file, settings } => {
            let settings = usage(settings::effective(file.config.as_deref(), settings))?;
            if file.print_config {
                print!("{}", settings::to_toml(&settings)?);
                return Ok(());
            }
            init_tracing("info");
            // First, so that a stop signal during start-up (compiling plugins can take a
            // while) is an orderly exit: nothing is claimed before the duchy has started.
            let mut signals = ShutdownSignals::install()?;
            halo_identity::init_crypto();
            // Loading the identity and the plugin registry (compiling components) blocks. If a
            // signal comes first, the blocking load is left behind (bounded by the runtime's
            // shutdown timeout in `main`).
            let plan = tokio::task::spawn_blocking(move || settings.plan());
            let plan = match signals.unless_signalled(plan).await {
                Ok(plan) => plan.context("loading the duchy configuration")?,
                Err(s) => return stopped_during_start_up("the duchy", s),
            };
            let plan = usage(plan)?;
            let config = plan.config;
            let metrics_listen = plan.metrics_listen;
            let _watch = plan.watch;
            let registry_for_metrics = plan.registry.clone();
            let mut d = match signals.unless_signalled(RunningDuchy::start(config)).await {
                Ok(d) => d?,
                Err(s) => return stopped_during_start_up("the duchy", s),
            };
            tracing::info!(addr = %d.addr, "duchy listening");
            if let Some(addr) = metrics_listen {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding metrics listener {addr}"))?;
                tracing::info!(%addr, "/metrics, /healthz, /readyz");
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
                d.serve_ops(listener, refresh);
            }
            signals
                .serve_until_stopped(d.shutdown_graceful(plan.shutdown_grace))
                .await
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
