//! `halo demo`: a Kingdom, three duchies and simulated data providers and consumer on
//! loopback, one measurement, the result beside the ground truth.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use halo_cli::mc::Noise;
use halo_cli::report;
use halo_duchy::protocol::{ProtocolRegistry, StageInfo, SystemProtocol, find_stage};
use halo_duchy::store::Store;
use halo_identity::Principal;
use halo_proto::api::v2alpha as api;
use halo_proto::halo::v1 as admin;
use halo_proto::system::v1alpha::DifferentialPrivacyParams;
use halo_proto::system::v1alpha::computation::State;
use halo_sim::mc::HmssRequest;
use halo_sim::{Cluster, ClusterOptions, edp, mc};

/// How long a data provider waits for its requisition.
const REQUISITION_WAIT: Duration = Duration::from_secs(60);
/// How long the consumer waits for the result.
const RESULT_WAIT: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoProtocol {
    /// Honest Majority Share Shuffle.
    Hmss,
    /// A secret-free protocol that exercises the host (plaintext vectors, summed).
    TestSum,
    /// Liquid Legions v2 (reach and frequency).
    Llv2,
    /// Reach-only Liquid Legions v2.
    RoLlv2,
}

impl DemoProtocol {
    fn as_str(self) -> &'static str {
        match self {
            DemoProtocol::Hmss => "hmss",
            DemoProtocol::TestSum => "test-sum",
            DemoProtocol::Llv2 => "llv2",
            DemoProtocol::RoLlv2 => "ro-llv2",
        }
    }

    /// The protocol id of the component the duchies load, or why the protocol cannot run.
    fn plugin_id(self) -> Result<&'static str> {
        match self {
            DemoProtocol::Hmss => Ok("hmss"),
            DemoProtocol::TestSum => Ok("test-sum"),
            DemoProtocol::Llv2 => Ok("llv2"),
            DemoProtocol::RoLlv2 => Ok("ro-llv2"),
        }
    }
}

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Protocol: `hmss` (Honest Majority Share Shuffle), `llv2` (Liquid Legions v2),
    /// `ro-llv2` (reach-only Liquid Legions v2) or `test-sum` (a secret-free protocol that
    /// exercises the host).
    #[arg(long, value_enum, default_value_t = DemoProtocol::Hmss)]
    protocol: DemoProtocol,
    /// Plugin directory shared by the three duchies, used as it is (the protocol's plugin id
    /// is preferred when several components serve one system protocol). Default: the newest
    /// component of the protocol from <dir of halo>/plugins, else <dir of
    /// halo>/../lib/halo/plugins (an installed layout such as the container image's
    /// /usr/local/bin/halo + /usr/local/lib/halo/plugins), else the components built from the
    /// source tree this binary was built in, copied into <out>/plugins.
    #[arg(long, env = "HALO_PLUGINS")]
    plugins: Option<PathBuf>,
    /// Number of data providers.
    #[arg(long, default_value_t = 3)]
    providers: usize,
    /// Population slots (VIDs) per data provider. Default: 100,000 for HMSS and test-sum,
    /// 20,000 for the Liquid Legions protocols (about 10,000 people reached and a sketch of
    /// 20,000 registers: every register costs tens of elliptic-curve multiplications).
    #[arg(long)]
    registers: Option<usize>,
    /// Largest frequency reported (and largest per-provider frequency).
    #[arg(long, default_value_t = 3)]
    max_frequency: u32,
    /// Measure reach only (HMSS, LLv2; ro-llv2 always does).
    #[arg(long)]
    reach_only: bool,
    /// Liquid Legions sketch size (registers). Default: the population size `--registers`
    /// (about twice the audience), at most 2^24.
    #[arg(long)]
    sketch_size: Option<i64>,
    /// Liquid Legions sketch decay rate.
    #[arg(long, default_value_t = 12.0)]
    decay_rate: f64,
    /// VID sampling interval width (LLv2, ro-llv2, HMSS): the reach is scaled by 1/width.
    #[arg(long, default_value_t = 1.0)]
    vid_sampling_width: f32,
    /// Noise the duchies add.
    #[arg(long, value_enum, default_value_t = Noise::None)]
    noise: Noise,
    /// DP epsilon (with noise).
    #[arg(long, default_value_t = 1.0)]
    epsilon: f64,
    /// DP delta (with noise).
    #[arg(long, default_value_t = 1e-9)]
    delta: f64,
    /// Seed of the synthetic populations.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep data and PKI here (default: a temporary directory, removed afterwards).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print one JSON object on stdout instead of the table (and no progress on stderr).
    #[arg(long)]
    json: bool,
    /// Leave the servers running after the measurement (Ctrl-C stops them).
    #[arg(long)]
    keep_running: bool,
}

impl DemoArgs {
    /// `--registers`, or the protocol's default.
    fn registers(&self) -> usize {
        self.registers.unwrap_or(match self.protocol {
            DemoProtocol::Llv2 | DemoProtocol::RoLlv2 => 20_000,
            DemoProtocol::Hmss | DemoProtocol::TestSum => 100_000,
        })
    }
}

/// Overlap of the demo's synthetic population (see `halo_sim::hmss::population`).
const OVERLAP: f64 = 0.3;

/// What a run produced, in the same form for the result and the truth: distributions are
/// proportions with every bucket "1"..="N" (none for reach-only).
struct Outcome {
    name: String,
    computation: String,
    reach: i64,
    expected_reach: i64,
    frequency: BTreeMap<String, f64>,
    expected_frequency: BTreeMap<String, f64>,
    /// N: frequency buckets reported (0 for reach-only).
    buckets: u32,
    /// The population's ground truth (for LLv2 the expected values are the estimator on the
    /// union sketch, which the MPC reproduces exactly without noise; the truth differs by the
    /// estimator's error).
    true_reach: i64,
    true_frequency: BTreeMap<String, f64>,
}

/// Where `halo demo` takes its plugin from.
#[derive(Debug, PartialEq, Eq)]
enum PluginSource {
    /// A directory given by `--plugins` / `HALO_PLUGINS`, watched as it is.
    Dir(PathBuf),
    /// One component found next to the binary or in the source tree, copied (with its
    /// `.sig`, if any) into `<out>/plugins`.
    Copy(PathBuf),
}

/// Finds the plugin of protocol `id`: the `--plugins` directory if given (it must hold a
/// component of `id`), else the newest `<id>-<version>.wasm` in `<exe dir>/plugins`, then
/// `<exe dir>/../lib/halo/plugins`, then `source_tree` (the build directory of the binary's
/// own source tree). The error names every place looked at.
fn locate_plugins(
    flag: Option<&Path>,
    exe: Option<&Path>,
    source_tree: &Path,
    id: &str,
) -> Result<PluginSource> {
    if let Some(dir) = flag {
        return match newest_component(dir, id) {
            Some(_) => Ok(PluginSource::Dir(dir.to_path_buf())),
            None => bail!(
                "--plugins / HALO_PLUGINS {}: no {id}-<version>.wasm there",
                dir.display()
            ),
        };
    }
    let mut looked = Vec::new();
    if let Some(exe_dir) = exe.and_then(Path::parent) {
        looked.push(exe_dir.join("plugins"));
        looked.push(exe_dir.join("..").join("lib").join("halo").join("plugins"));
    }
    looked.push(source_tree.to_path_buf());
    for dir in &looked {
        if let Some(file) = newest_component(dir, id) {
            return Ok(PluginSource::Copy(file));
        }
    }
    bail!(
        "no {id} plugin ({id}-<version>.wasm) found; looked in {}. Pass --plugins DIR (or set \
         HALO_PLUGINS)",
        looked
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The newest `<id>-<version>.wasm` in `dir`, if any.
fn newest_component(dir: &Path, id: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (found, version) = halo_signing::parse_component_file_name(&name)?;
            (found == id && e.path().is_file()).then(|| (version, e.path()))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, path)| path)
}

/// The directory the duchies' registry watches: `--plugins` as it is, or `<out>/plugins`
/// with the located component (and its signature) copied in.
fn plugin_dir(source: &PluginSource, out: &Path) -> Result<PathBuf> {
    match source {
        PluginSource::Dir(d) => Ok(d.clone()),
        PluginSource::Copy(src) => {
            let d = out.join("plugins");
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            let name = src
                .file_name()
                .ok_or_else(|| anyhow!("{} has no file name", src.display()))?;
            std::fs::copy(src, d.join(name))
                .with_context(|| format!("copying {}", src.display()))?;
            let sig = halo_signing::signature_path(src);
            if sig.is_file() {
                let dest = halo_signing::signature_path(&d.join(name));
                std::fs::copy(&sig, &dest).with_context(|| format!("copying {}", sig.display()))?;
            }
            Ok(d)
        }
    }
}

pub async fn run(args: DemoArgs) -> Result<()> {
    let id = args.protocol.plugin_id()?;
    // Parameters that cannot fit the population are refused before anything starts.
    match args.protocol {
        DemoProtocol::Llv2 | DemoProtocol::RoLlv2 => {
            llv2_request(&args)?;
        }
        DemoProtocol::Hmss => {
            hmss_ring_modulus(&args)?;
        }
        DemoProtocol::TestSum => {}
    }
    if args.providers == 0 || args.registers() == 0 {
        bail!("--providers and --registers must be positive");
    }
    if args.max_frequency == 0 {
        bail!("--max-frequency must be at least 1");
    }
    let temp;
    let dir = match &args.out {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir().context("creating a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let exe = std::env::current_exe().ok();
    let source = locate_plugins(
        args.plugins.as_deref(),
        exe.as_deref(),
        Path::new(halo_plugin_build::PLUGIN_DIR),
        id,
    )?;
    let plugin_from = match &source {
        PluginSource::Dir(d) | PluginSource::Copy(d) => d.clone(),
    };
    if !args.json {
        eprintln!("plugin: {}", plugin_from.display());
    }
    let plugin_dir = plugin_dir(&source, &dir)?;
    let runtime = halo_engine::Runtime::new(halo_engine::EngineConfig {
        cache_dir: Some(dir.join("plugin-cache")),
        ..halo_engine::EngineConfig::default()
    })?;
    let mut registry_config = halo_registry::RegistryConfig::new(&plugin_dir);
    for p in [
        SystemProtocol::HonestMajorityShareShuffle,
        SystemProtocol::LiquidLegionsV2,
        SystemProtocol::ReachOnlyLiquidLegionsV2,
    ] {
        registry_config.serve.insert(p, id.to_string());
    }
    let plugins = halo_registry::PluginRegistry::open_async(runtime, registry_config).await?;
    for (path, why) in plugins.refused() {
        eprintln!("plugin refused: {}: {why}", path.display());
    }
    let _watch = plugins.watch()?;
    let shared: Arc<dyn ProtocolRegistry> = plugins.clone();
    let stage_names = shared.clone();
    let registry: halo_sim::RegistryFn = Arc::new(move |_| shared.clone());
    let mut options = ClusterOptions::new(&dir, registry);
    options.data_providers = (1..=args.providers).map(|i| format!("edp{i}")).collect();
    let started = Instant::now();
    let cluster = Cluster::start(options).await?;
    if !args.json {
        eprintln!(
            "kingdom at {}, duchies {}",
            cluster.kingdom_url(),
            halo_sim::DUCHIES
                .iter()
                .map(|d| format!("{d} at {}", cluster.duchy_url(d).unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let outcome = match args.protocol {
        DemoProtocol::TestSum => run_test_sum(&cluster, &stage_names, &args).await?,
        DemoProtocol::Llv2 | DemoProtocol::RoLlv2 => {
            run_llv2(&cluster, &stage_names, &args).await?
        }
        DemoProtocol::Hmss => run_hmss(&cluster, &stage_names, &args).await?,
    };
    let wall = started.elapsed().as_secs_f64();
    let gid = outcome
        .computation
        .trim_start_matches("computations/")
        .to_string();
    let stages = stage_times(&cluster, &gid).await?;
    if args.json {
        let out = serde_json::json!({
            "protocol": args.protocol.as_str(),
            "measurement": outcome.name,
            "reach": outcome.reach,
            "expected_reach": outcome.expected_reach,
            "frequency": report::json(&outcome.frequency),
            "expected_frequency": report::json(&outcome.expected_frequency),
            "true_reach": outcome.true_reach,
            "true_frequency": report::json(&outcome.true_frequency),
            "wall_seconds": wall,
            "plugin": plugin_from.display().to_string(),
            "stages": stage_times_json(&stages),
            "registers": args.registers(),
            "providers": args.providers,
            "noise": args.noise.as_str(),
        });
        println!("{out}");
    } else {
        println!(
            "measurement {} ({}, noise {}): SUCCEEDED in {wall:.2}s",
            outcome.name,
            args.protocol.as_str(),
            args.noise.as_str()
        );
        report::print_table(
            outcome.reach,
            &outcome.frequency,
            Some((outcome.expected_reach, &outcome.expected_frequency)),
            outcome.buckets,
        );
        if matches!(args.protocol, DemoProtocol::Llv2 | DemoProtocol::RoLlv2) {
            println!(
                "(\"truth\" above is the sketch estimate the protocol computes exactly without \
                 noise; the population's ground truth is reach {}{})",
                outcome.true_reach,
                if outcome.buckets > 0 {
                    format!(
                        ", frequency {}",
                        outcome
                            .true_frequency
                            .iter()
                            .map(|(k, v)| format!("{k}: {v:.4}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                } else {
                    String::new()
                }
            );
        }
        println!("stage seconds per duchy:");
        for (d, per) in &stages {
            let line = per
                .iter()
                .map(|(stage, s)| format!("{stage} {s:.3}"))
                .collect::<Vec<_>>()
                .join(", ");
            println!("  {d:<10}  {line}");
        }
    }
    if args.keep_running {
        print_keep_running(&cluster, &args, &dir);
        let _ = tokio::signal::ctrl_c().await;
    }
    cluster.shutdown().await
}

/// Where the servers are and how to run another measurement against them.
fn print_keep_running(cluster: &Cluster, args: &DemoArgs, dir: &Path) {
    let pki = dir.join("pki");
    let kingdom = cluster.kingdom_url();
    eprintln!("\nservers keep running (Ctrl-C stops them):");
    eprintln!("  {:<10}  {kingdom}", "kingdom");
    let mut duchies = Vec::new();
    for d in halo_sim::DUCHIES {
        let url = cluster.duchy_url(d).unwrap_or_default();
        eprintln!("  {d:<10}  {url}");
        duchies.push(format!("--duchy {d}={url}"));
    }
    eprintln!("  {:<10}  {}", "PKI", pki.display());
    if args.out.is_none() {
        eprintln!(
            "  (a temporary directory: it is deleted when the demo exits; use --out DIR to keep it)"
        );
    }
    if args.protocol == DemoProtocol::TestSum {
        eprintln!(
            "`halo edp` and `halo mc` do not run test-sum; these duchies load only its plugin"
        );
        return;
    }
    let halo = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "halo".to_string());
    let providers: Vec<String> = (1..=args.providers).map(|i| format!("edp{i}")).collect();
    let mut mc = format!(
        "{halo} mc --pki {} --kingdom {kingdom} --data-providers {} --max-frequency {} \
         --truth-seed {} --truth-providers {} --truth-registers {}",
        pki.display(),
        providers.join(","),
        args.max_frequency,
        args.seed,
        args.providers,
        args.registers()
    );
    if args.reach_only {
        mc.push_str(" --reach-only");
    }
    if args.protocol != DemoProtocol::Hmss {
        let sketch = llv2_request(args).map(|r| r.sketch_size).unwrap_or(100_000);
        mc.push_str(&format!(
            " --protocol {} --sketch-size {sketch} --decay-rate {}",
            args.protocol.as_str(),
            args.decay_rate
        ));
    }
    if args.noise != Noise::None {
        mc.push_str(&format!(
            " --noise {} --epsilon {} --delta {}",
            args.noise.as_str(),
            args.epsilon,
            args.delta
        ));
    }
    eprintln!("another measurement against them: the consumer, in one terminal,");
    eprintln!("  {mc}");
    eprintln!("then each data provider, in another:");
    for p in &providers {
        eprintln!(
            "  {halo} edp --pki {} --kingdom {kingdom} {} --seed {} --providers {} --registers {} \
             --max-frequency {} --id {p}",
            pki.display(),
            duchies.join(" "),
            args.seed,
            args.providers,
            args.registers(),
            args.max_frequency
        );
    }
}

/// Seconds per executed stage, per duchy in execution order, from the duchies' recorded
/// stage runs (a stage that ran more than once counts with its last execution).
type StageTimes = Vec<(String, Vec<(String, f64)>)>;

async fn stage_times(cluster: &Cluster, gid: &str) -> Result<StageTimes> {
    let mut out = Vec::new();
    for d in halo_sim::DUCHIES {
        let mut per: Vec<(String, f64)> = Vec::new();
        if let Some(running) = cluster.duchies.get(d) {
            for run in running.core.store.stage_runs(gid).await? {
                per.retain(|(name, _)| *name != run.stage_name);
                per.push((run.stage_name, run.seconds));
            }
        }
        out.push((d.to_string(), per));
    }
    Ok(out)
}

fn stage_times_json(times: &StageTimes) -> serde_json::Value {
    serde_json::Value::Object(
        times
            .iter()
            .map(|(d, per)| {
                let per = per
                    .iter()
                    .map(|(stage, s)| (stage.clone(), serde_json::json!(s)))
                    .collect();
                (d.clone(), serde_json::Value::Object(per))
            })
            .collect(),
    )
}

/// Prints a line to stderr whenever a duchy's local stage of one computation changes,
/// polling the duchies' stores until stopped. Stage names come from the stage table of the
/// plugin version the computation pinned.
struct Progress {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(
        cluster: &Cluster,
        registry: &Arc<dyn ProtocolRegistry>,
        computation: &str,
        since: Instant,
    ) -> Progress {
        let stores: Vec<(String, Store)> = halo_sim::DUCHIES
            .iter()
            .filter_map(|d| {
                cluster
                    .duchies
                    .get(*d)
                    .map(|r| (d.to_string(), r.core.store.clone()))
            })
            .collect();
        let gid = computation.trim_start_matches("computations/").to_string();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(watch_stages(stores, registry.clone(), gid, since, rx));
        Progress { stop, task }
    }

    /// Prints what changed since the last poll, then stops.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// How often the progress display reads the duchies' stores.
const POLL: Duration = Duration::from_millis(100);
/// How long it waits for every duchy to finish locally after the measurement ended.
const FINISH_WAIT: Duration = Duration::from_secs(2);

async fn watch_stages(
    stores: Vec<(String, Store)>,
    registry: Arc<dyn ProtocolRegistry>,
    gid: String,
    since: Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last: HashMap<String, (i32, Option<String>)> = HashMap::new();
    let mut tables: HashMap<String, Vec<StageInfo>> = HashMap::new();
    let mut stopped_at: Option<Instant> = None;
    loop {
        let stopping = *stop.borrow_and_update();
        for (d, store) in &stores {
            let Ok(Some(row)) = store.get(&gid).await else {
                continue;
            };
            let key = (row.stage, row.terminal.clone());
            if last.get(d) == Some(&key) {
                continue;
            }
            if tables.get(d).is_none_or(|t| t.is_empty()) {
                let table = registry
                    .pinned(&row.pin)
                    .map(|p| p.stages())
                    .unwrap_or_default();
                tables.insert(d.clone(), table);
            }
            let stage = tables
                .get(d)
                .and_then(|t| find_stage(t, row.stage))
                .map(|s| s.name.clone());
            let (name, end) = match (stage, row.terminal.as_deref()) {
                (Some(s), Some(t)) if s != t => (s, format!(" ({t})")),
                (Some(s), _) => (s, String::new()),
                // A computation the plugin rejected at start has no stage.
                (None, Some(t)) => (t.to_string(), String::new()),
                (None, None) => (format!("stage {}", row.stage), String::new()),
            };
            eprintln!(
                "{:>7.2}s  {d:<10}  {name}{end}",
                since.elapsed().as_secs_f64()
            );
            last.insert(d.clone(), key);
        }
        // Once the measurement is over, give the duchies a moment to finish locally.
        if stopping {
            let all_done = stores
                .iter()
                .all(|(d, _)| last.get(d).is_some_and(|(_, terminal)| terminal.is_some()));
            if all_done || stopped_at.get_or_insert_with(Instant::now).elapsed() > FINISH_WAIT {
                return;
            }
            tokio::time::sleep(POLL).await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            changed = stop.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

async fn run_hmss(
    cluster: &Cluster,
    registry: &Arc<dyn ProtocolRegistry>,
    args: &DemoArgs,
) -> Result<Outcome> {
    let request = HmssRequest {
        reach_only: args.reach_only,
        max_frequency: args.max_frequency,
        noise: args.noise.mechanism(),
        epsilon: args.epsilon,
        delta: args.delta,
        ring_modulus: hmss_ring_modulus(args)?,
        ..HmssRequest::default()
    };
    let mut rng = rand::rng();
    let mc_id = cluster.options.measurement_consumer.clone();
    let mc_ch = cluster.kingdom_channel(&Principal::MeasurementConsumer(mc_id.clone()))?;
    let m = mc::create_hmss_measurement(
        mc_ch.clone(),
        &mc_id,
        &cluster.options.data_providers,
        &request,
        &mut rng,
    )
    .await?;
    let created = Instant::now();
    if !args.json {
        eprintln!("measurement {} created ({})", m.name(), m.computation());
    }
    let progress =
        (!args.json).then(|| Progress::start(cluster, registry, m.computation(), created));
    let vectors = halo_sim::hmss::population(
        args.seed,
        args.providers,
        args.registers(),
        args.max_frequency,
        OVERLAP,
    );
    let providers = async {
        for (dp, vector) in cluster.options.data_providers.iter().zip(&vectors) {
            let who = Principal::DataProvider(dp.clone());
            let done = edp::fulfill_hmss_requisitions(
                cluster.kingdom_channel(&who)?,
                cluster.identity(&who)?,
                |duchy: &str| cluster.duchy_channel(&who, duchy),
                vector,
                Some(REQUISITION_WAIT),
                &mut rng,
            )
            .await?;
            if !args.json {
                for f in done {
                    eprintln!(
                        "{:>7.2}s  {dp:<10}  fulfilled {} at {} ({} registers, {} bytes)",
                        created.elapsed().as_secs_f64(),
                        f.requisition,
                        f.duchy,
                        f.registers,
                        f.bytes
                    );
                }
            }
        }
        anyhow::Ok(())
    };
    let finished = until_done(providers, m.wait(mc_ch.clone(), RESULT_WAIT)).await;
    if let Some(p) = progress {
        p.stop().await;
    }
    let result = m.open(mc_ch, &cluster.trust, &finished?).await?;
    let buckets = if args.reach_only {
        0
    } else {
        args.max_frequency
    };
    let (expected_reach, expected) =
        halo_sim::hmss::truth(&vectors, request.effective_max_frequency());
    let expected_frequency = report::complete(&expected, buckets);
    Ok(Outcome {
        name: m.name().to_string(),
        computation: m.computation().to_string(),
        reach: result.reach,
        expected_reach,
        frequency: report::complete(&result.frequency, buckets),
        expected_frequency: expected_frequency.clone(),
        buckets,
        true_reach: expected_reach,
        true_frequency: expected_frequency,
    })
}

/// Largest ring modulus the demo picks for HMSS.
const MAX_RING_MODULUS: u32 = 65_521;

/// The HMSS ring modulus for the demo's population: the smallest prime `q ≥ 127` with
/// `q > 1 + maximum frequency × providers` (every combined register and the sentinel must fit,
/// mpc-crypto §6.1), or an error naming the limit.
fn hmss_ring_modulus(args: &DemoArgs) -> Result<i32> {
    let mf = if args.reach_only {
        1
    } else {
        args.max_frequency
    };
    let need = u64::from(mf) * args.providers as u64 + 2;
    let is_prime = |n: u64| {
        n >= 2
            && (2..)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
    };
    let q = (need.max(127)..)
        .find(|&n| is_prime(n))
        .filter(|&q| q <= u64::from(MAX_RING_MODULUS))
        .ok_or_else(|| {
            anyhow!(
                "--max-frequency {mf} × --providers {} needs a ring modulus above {}, more \
                 than the demo's limit of {MAX_RING_MODULUS}",
                args.providers,
                need - 1
            )
        })?;
    Ok(q as i32)
}

/// Largest sketch the Liquid Legions plugins accept.
const MAX_SKETCH_SIZE: i64 = 1 << 24;

/// The Liquid Legions v2 request the demo makes for `args`: the sketch sized to the
/// population, or an error naming the limit.
fn llv2_request(args: &DemoArgs) -> Result<halo_sim::llv2::Llv2Request> {
    let sketch_size = match args.sketch_size {
        Some(m) => m,
        None => i64::try_from(args.registers())
            .unwrap_or(i64::MAX)
            .max(1000),
    };
    if !(1..=MAX_SKETCH_SIZE).contains(&sketch_size) {
        bail!(
            "sketch size {sketch_size} is out of range: the Liquid Legions plugins accept 1 to \
             {MAX_SKETCH_SIZE} registers (pass --sketch-size, or fewer --registers)"
        );
    }
    if !(args.decay_rate > 1.0 && args.decay_rate <= 1000.0) {
        bail!("--decay-rate {} must be in (1, 1000]", args.decay_rate);
    }
    if !(args.vid_sampling_width > 0.0 && args.vid_sampling_width <= 1.0) {
        bail!(
            "--vid-sampling-width {} must be in (0, 1]",
            args.vid_sampling_width
        );
    }
    if args.max_frequency > 1000 {
        bail!(
            "--max-frequency {} is above the plugins' limit of 1000",
            args.max_frequency
        );
    }
    Ok(halo_sim::llv2::Llv2Request {
        reach_only_protocol: args.protocol == DemoProtocol::RoLlv2,
        reach_only: args.reach_only,
        max_frequency: args.max_frequency,
        noise: args.noise.mechanism(),
        epsilon: args.epsilon,
        delta: args.delta,
        decay_rate: args.decay_rate,
        sketch_size,
        vid_sampling_start: 0.0,
        vid_sampling_width: args.vid_sampling_width,
    })
}

async fn run_llv2(
    cluster: &Cluster,
    registry: &Arc<dyn ProtocolRegistry>,
    args: &DemoArgs,
) -> Result<Outcome> {
    let request = llv2_request(args)?;
    let mut rng = rand::rng();
    let mc_id = cluster.options.measurement_consumer.clone();
    let mc_ch = cluster.kingdom_channel(&Principal::MeasurementConsumer(mc_id.clone()))?;
    let m = halo_sim::llv2::create_llv2_measurement(
        mc_ch.clone(),
        &mc_id,
        &cluster.options.data_providers,
        &request,
        &mut rng,
    )
    .await?;
    let created = Instant::now();
    if !args.json {
        eprintln!(
            "measurement {} created ({}; sketch size {}, decay rate {})",
            m.name(),
            m.computation(),
            request.sketch_size,
            request.decay_rate
        );
    }
    let progress =
        (!args.json).then(|| Progress::start(cluster, registry, m.computation(), created));
    let vectors = halo_sim::hmss::population(
        args.seed,
        args.providers,
        args.registers(),
        args.max_frequency,
        OVERLAP,
    );
    let providers = async {
        for (dp, vector) in cluster.options.data_providers.iter().zip(&vectors) {
            let who = Principal::DataProvider(dp.clone());
            let done = halo_sim::llv2::fulfill_llv2_requisitions_until(
                cluster.kingdom_channel(&who)?,
                cluster.identity(&who)?,
                &cluster.trust,
                |duchy: &str| cluster.duchy_channel(&who, duchy),
                vector,
                true,
                Instant::now() + REQUISITION_WAIT,
            )
            .await?;
            if !args.json {
                for f in done {
                    eprintln!(
                        "{:>7.2}s  {dp:<10}  fulfilled {} at {} ({} registers, {} bytes)",
                        created.elapsed().as_secs_f64(),
                        f.requisition,
                        f.duchy,
                        f.registers,
                        f.bytes
                    );
                }
            }
        }
        anyhow::Ok(())
    };
    let finished = until_done(providers, m.wait(mc_ch.clone(), RESULT_WAIT)).await;
    if let Some(p) = progress {
        p.stop().await;
    }
    let result = m.open(mc_ch, &cluster.trust, &finished?).await?;
    let mf = request.effective_max_frequency();
    let buckets = if mf > 1 { mf } else { 0 };
    let (expected_reach, expected) = halo_sim::llv2::expected(&vectors, &request)?;
    let (true_reach, truth) = halo_sim::hmss::truth(&vectors, mf);
    Ok(Outcome {
        name: m.name().to_string(),
        computation: m.computation().to_string(),
        reach: result.reach,
        expected_reach,
        frequency: report::complete(&result.frequency, buckets),
        expected_frequency: report::complete(&expected, buckets),
        buckets,
        true_reach,
        true_frequency: report::complete(&truth, buckets),
    })
}

/// Runs the data providers and waits for the measurement; a measurement that ends before
/// every provider got its requisition (it failed) ends the wait at once.
async fn until_done(
    providers: impl std::future::Future<Output = Result<()>>,
    measurement: impl std::future::Future<Output = Result<admin::Measurement>>,
) -> Result<admin::Measurement> {
    tokio::pin!(measurement);
    tokio::select! {
        m = &mut measurement => m,
        p = providers => {
            p?;
            measurement.await
        }
    }
}

fn base_spec(args: &DemoArgs) -> admin::MeasurementSpec {
    let dp = Some(DifferentialPrivacyParams {
        epsilon: args.epsilon,
        delta: args.delta,
    });
    admin::MeasurementSpec {
        measurement_public_key: Vec::new(),
        r#type: admin::measurement_spec::Type::ReachAndFrequency as i32,
        maximum_frequency: (args.max_frequency as usize * args.providers) as i32,
        reach_privacy_params: dp,
        frequency_privacy_params: dp,
        vid_sampling_interval_start: 0.0,
        vid_sampling_interval_width: 1.0,
        nonce_hashes: vec![],
        simulation: Default::default(),
    }
}

fn population(seed: u64, index: usize, registers: usize, max_frequency: u32) -> Vec<u32> {
    let mut x = (seed ^ ((index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))) | 1;
    (0..registers)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(3) {
                1 + (x >> 8) as u32 % max_frequency.max(1)
            } else {
                0
            }
        })
        .collect()
}

async fn run_test_sum(
    cluster: &Cluster,
    registry: &Arc<dyn ProtocolRegistry>,
    args: &DemoArgs,
) -> Result<Outcome> {
    let vectors: Vec<Vec<u32>> = (0..args.providers)
        .map(|i| population(args.seed, i, args.registers(), args.max_frequency))
        .collect();
    let mc_id = cluster.options.measurement_consumer.clone();
    let mc_ch = cluster.kingdom_channel(&Principal::MeasurementConsumer(mc_id.clone()))?;
    let spec = base_spec(args);
    let buckets = u32::try_from(spec.maximum_frequency).context("maximum frequency")?;
    let created = mc::create_measurement(
        mc_ch.clone(),
        &mc_id,
        admin::Protocol::HonestMajorityShareShuffle,
        spec,
        &cluster.options.data_providers,
    )
    .await?;
    let since = Instant::now();
    let progress = (!args.json)
        .then(|| Progress::start(cluster, registry, &created.measurement.computation, since));
    let providers = async {
        for (i, dp) in cluster.options.data_providers.iter().enumerate() {
            let who = Principal::DataProvider(dp.clone());
            let reqs =
                edp::wait_for_requisitions(cluster.kingdom_channel(&who)?, dp, 1, REQUISITION_WAIT)
                    .await?;
            for r in reqs {
                let duchy = cluster.duchy_channel(&who, &r.fulfilling_duchy)?;
                let data: Vec<u8> = vectors[i].iter().flat_map(|x| x.to_le_bytes()).collect();
                let hmss =
                    api::fulfill_requisition_request::header::Protocol::HonestMajorityShareShuffle(
                        api::fulfill_requisition_request::header::HonestMajorityShareShuffle {
                            secret_seed: None,
                            register_count: args.registers() as i64,
                            data_provider_certificate: String::new(),
                        },
                    );
                edp::fulfill(duchy, &r, Some(hmss), &data, 1 << 20).await?;
            }
        }
        anyhow::Ok(())
    };
    let finished = until_done(
        providers,
        mc::wait_until_done(mc_ch, &created.measurement.name, RESULT_WAIT),
    )
    .await;
    if let Some(p) = progress {
        p.stop().await;
    }
    let m = finished?;
    if m.state != State::Succeeded as i32 {
        bail!(
            "measurement {} ended {}: {}",
            m.name,
            mc::state_name(m.state),
            m.failure_message
        );
    }
    // test-sum reports counts, unencrypted.
    let result: serde_json::Value =
        serde_json::from_slice(&m.encrypted_result).context("decoding the result")?;
    let reach = result["reach"]
        .as_i64()
        .ok_or_else(|| anyhow!("result has no reach"))?;
    let counts: BTreeMap<String, f64> = result["frequency"]
        .as_object()
        .ok_or_else(|| anyhow!("result has no frequency histogram"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0)))
        .collect();
    let mut expected: BTreeMap<String, f64> = BTreeMap::new();
    let mut expected_reach = 0i64;
    for r in 0..args.registers() {
        let f: u32 = vectors.iter().map(|v| v[r]).sum();
        if f > 0 {
            expected_reach += 1;
            *expected.entry(f.to_string()).or_default() += 1.0;
        }
    }
    Ok(Outcome {
        name: m.name,
        computation: created.measurement.computation,
        reach,
        expected_reach,
        frequency: report::proportions(&counts, reach, buckets),
        expected_frequency: report::proportions(&expected, expected_reach, buckets),
        buckets,
        true_reach: expected_reach,
        true_frequency: report::proportions(&expected, expected_reach, buckets),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Demo {
        #[command(flatten)]
        args: DemoArgs,
    }

    #[test]
    fn hmss_is_the_default_protocol() {
        let d = Demo::try_parse_from(["demo"]).unwrap();
        assert_eq!(d.args.protocol, DemoProtocol::Hmss);
        assert_eq!(d.args.noise, Noise::None);
        let d = Demo::try_parse_from(["demo", "--protocol", "test-sum"]).unwrap();
        assert_eq!(d.args.protocol, DemoProtocol::TestSum);
        assert!(Demo::try_parse_from(["demo", "--protocol", "llv3"]).is_err());
    }

    #[tokio::test]
    async fn parameters_that_cannot_fit_fail_at_once_without_side_effects() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&[&str], &str); 4] = [
            (
                &["--protocol", "llv2", "--sketch-size", "0"],
                "sketch size 0 is out of range",
            ),
            (
                &["--protocol", "ro-llv2", "--registers", "20000000"],
                "sketch size 20000000 is out of range",
            ),
            (
                &["--protocol", "llv2", "--decay-rate", "1"],
                "--decay-rate 1 must be",
            ),
            (
                &["--providers", "400", "--max-frequency", "200"],
                "needs a ring modulus above 80001",
            ),
        ];
        for (i, (flags, expected)) in cases.iter().enumerate() {
            let out = dir.path().join(i.to_string());
            let mut argv = vec!["demo", "--out", out.to_str().unwrap()];
            argv.extend_from_slice(flags);
            let d = Demo::try_parse_from(argv).unwrap();
            let e = run(d.args).await.unwrap_err().to_string();
            assert!(e.contains(expected), "{flags:?}: {e}");
            assert!(!out.exists(), "{flags:?} created {}", out.display());
        }
    }

    #[test]
    fn hmss_ring_modulus_fits_the_population() {
        let q = |providers: &str, mf: &str| {
            let d = Demo::try_parse_from(["demo", "--providers", providers, "--max-frequency", mf])
                .unwrap();
            hmss_ring_modulus(&d.args).unwrap()
        };
        assert_eq!(q("3", "3"), 127);
        // 12 × 15 + 2 = 182 → the next prime is 191 (q must exceed 1 + 180).
        assert_eq!(q("12", "15"), 191);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod plugin_lookup_tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"component").unwrap();
    }

    /// An installed layout: <root>/bin/halo, maybe <root>/bin/plugins, <root>/lib/halo/plugins.
    struct Layout {
        root: tempfile::TempDir,
    }

    impl Layout {
        fn new() -> Layout {
            let root = tempfile::tempdir().unwrap();
            touch(&root.path().join("bin/halo"));
            Layout { root }
        }
        fn exe(&self) -> PathBuf {
            self.root.path().join("bin/halo")
        }
        fn p(&self, rel: &str) -> PathBuf {
            self.root.path().join(rel)
        }
        fn locate(&self, flag: Option<&Path>, id: &str) -> Result<PluginSource> {
            locate_plugins(flag, Some(&self.exe()), &self.p("src/target/plugins"), id)
        }
    }

    #[test]
    fn next_to_the_binary_then_lib_halo_then_the_source_tree() {
        let l = Layout::new();
        touch(&l.p("src/target/plugins/hmss-1.0.0.wasm"));
        assert_eq!(
            l.locate(None, "hmss").unwrap(),
            PluginSource::Copy(l.p("src/target/plugins/hmss-1.0.0.wasm"))
        );
        touch(&l.p("lib/halo/plugins/hmss-1.0.0.wasm"));
        assert_eq!(
            l.locate(None, "hmss").unwrap(),
            PluginSource::Copy(l.p("bin/../lib/halo/plugins/hmss-1.0.0.wasm"))
        );
        touch(&l.p("bin/plugins/hmss-1.0.0.wasm"));
        assert_eq!(
            l.locate(None, "hmss").unwrap(),
            PluginSource::Copy(l.p("bin/plugins/hmss-1.0.0.wasm"))
        );
    }

    #[test]
    fn the_newest_version_of_the_protocol_is_taken_and_other_protocols_ignored() {
        let l = Layout::new();
        for f in [
            "hmss-1.0.0.wasm",
            "hmss-1.10.0.wasm",
            "hmss-1.9.0.wasm",
            "hmss-x.wasm",
            "test-sum-9.0.0.wasm",
        ] {
            touch(&l.p(&format!("bin/plugins/{f}")));
        }
        // A directory with the right name is not a component.
        std::fs::create_dir_all(l.p("bin/plugins/hmss-2.0.0.wasm")).unwrap();
        assert_eq!(
            l.locate(None, "hmss").unwrap(),
            PluginSource::Copy(l.p("bin/plugins/hmss-1.10.0.wasm"))
        );
        assert_eq!(
            l.locate(None, "test-sum").unwrap(),
            PluginSource::Copy(l.p("bin/plugins/test-sum-9.0.0.wasm"))
        );
    }

    #[test]
    fn the_flag_wins_and_must_hold_the_protocol() {
        let l = Layout::new();
        touch(&l.p("bin/plugins/hmss-1.0.0.wasm"));
        touch(&l.p("mine/hmss-1.1.0.wasm"));
        let mine = l.p("mine");
        assert_eq!(
            l.locate(Some(&mine), "hmss").unwrap(),
            PluginSource::Dir(mine.clone())
        );
        // No fall-back past an explicit directory that lacks the protocol.
        let err = format!("{:#}", l.locate(Some(&mine), "test-sum").unwrap_err());
        assert!(err.contains(&mine.display().to_string()), "{err}");
        assert!(err.contains("test-sum"), "{err}");
    }

    #[test]
    fn nothing_found_names_every_place_looked() {
        let l = Layout::new();
        // Other protocols' components do not count.
        touch(&l.p("bin/plugins/test-sum-1.0.0.wasm"));
        let err = format!("{:#}", l.locate(None, "hmss").unwrap_err());
        for place in [
            l.p("bin/plugins"),
            l.p("bin/../lib/halo/plugins"),
            l.p("src/target/plugins"),
        ] {
            assert!(err.contains(&place.display().to_string()), "{err}");
        }
        assert!(err.contains("--plugins"), "{err}");
    }

    #[test]
    fn a_copied_component_brings_its_signature() {
        let l = Layout::new();
        let src = l.p("bin/plugins/hmss-1.0.0.wasm");
        touch(&src);
        std::fs::write(halo_signing::signature_path(&src), b"sig").unwrap();
        let out = l.p("out");
        let dir = plugin_dir(&PluginSource::Copy(src), &out).unwrap();
        assert_eq!(dir, out.join("plugins"));
        assert!(dir.join("hmss-1.0.0.wasm").is_file());
        assert_eq!(
            std::fs::read(dir.join("hmss-1.0.0.wasm.sig")).unwrap(),
            b"sig"
        );
    }
}
