//! `halo demo`: a Kingdom, three duchies and simulated data providers and consumer on
//! loopback, one measurement, the result beside the ground truth.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use halo_duchy::protocol::ProtocolRegistry;
use halo_identity::Principal;
use halo_proto::api::v2alpha as api;
use halo_proto::halo::v1 as admin;
use halo_proto::system::v1alpha::DifferentialPrivacyParams;
use halo_proto::system::v1alpha::computation::MpcProtocolConfig;
use halo_proto::system::v1alpha::computation::State;
use halo_proto::system::v1alpha::computation::mpc_protocol_config::{
    HonestMajorityShareShuffle, NoiseMechanism, Protocol as MpcProtocol,
};
use halo_sim::{Cluster, ClusterOptions, edp, mc};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Protocol: `hmss` (Honest Majority Share Shuffle) or `test-sum` (a secret-free
    /// protocol that exercises the host). `llv2` and `ro-llv2` are not available yet.
    #[arg(long, default_value = "test-sum")]
    protocol: String,
    /// Plugin directory shared by the three duchies (default: the components built from
    /// plugins/, copied into <out>/plugins).
    #[arg(long)]
    plugins: Option<PathBuf>,
    /// Number of data providers.
    #[arg(long, default_value_t = 3)]
    providers: usize,
    /// Registers (population slots) per frequency vector.
    #[arg(long, default_value_t = 100_000)]
    registers: usize,
    /// Largest frequency reported (and largest per-provider frequency).
    #[arg(long, default_value_t = 3)]
    max_frequency: u32,
    /// Measure reach only (HMSS).
    #[arg(long)]
    reach_only: bool,
    /// Noise: none, geometric or discrete-gaussian (HMSS).
    #[arg(long, default_value = "none")]
    noise: String,
    #[arg(long, default_value_t = 1.0)]
    epsilon: f64,
    #[arg(long, default_value_t = 1e-9)]
    delta: f64,
    /// Seed of the synthetic populations.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep data and PKI here (default: a temporary directory, removed afterwards).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Leave the servers running after the measurement (Ctrl-C stops them).
    #[arg(long)]
    keep_running: bool,
}

/// What a run produced, in the same form for the result and the truth.
struct Outcome {
    name: String,
    computation: String,
    reach: i64,
    expected_reach: i64,
    frequency: serde_json::Value,
    expected_frequency: serde_json::Value,
}

fn plugin_file(protocol: &str) -> Result<&'static str> {
    Ok(match protocol {
        "test-sum" => "test-sum-1.0.0.wasm",
        "hmss" => "hmss-1.0.0.wasm",
        other => bail!("protocol {other:?} is not available; use --protocol hmss or test-sum"),
    })
}

pub async fn run(args: DemoArgs) -> Result<()> {
    let file = plugin_file(&args.protocol)?;
    if args.providers == 0 || args.registers == 0 {
        bail!("--providers and --registers must be positive");
    }
    let temp;
    let dir = match &args.out {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir().context("creating a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let plugin_dir = match &args.plugins {
        Some(d) => d.clone(),
        None => {
            let d = dir.join("plugins");
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            let src = PathBuf::from(halo_plugin_build::PLUGIN_DIR).join(file);
            std::fs::copy(&src, d.join(file)).with_context(|| {
                format!(
                    "copying {} (built by the halo-plugin-build crate)",
                    src.display()
                )
            })?;
            d
        }
    };
    let runtime = halo_engine::Runtime::new(halo_engine::EngineConfig {
        cache_dir: Some(dir.join("plugin-cache")),
        ..halo_engine::EngineConfig::default()
    })?;
    let plugins = halo_registry::PluginRegistry::open(
        runtime,
        halo_registry::RegistryConfig::new(&plugin_dir),
    )?;
    for (path, why) in plugins.refused() {
        eprintln!("plugin refused: {}: {why}", path.display());
    }
    let _watch = plugins.watch()?;
    let shared: Arc<dyn ProtocolRegistry> = plugins.clone();
    let registry: halo_sim::RegistryFn = Arc::new(move |_| shared.clone());
    let mut options = ClusterOptions::new(&dir, registry);
    options.data_providers = (1..=args.providers).map(|i| format!("edp{i}")).collect();
    let started = Instant::now();
    let cluster = Cluster::start(options).await?;
    if !args.json {
        eprintln!(
            "kingdom at {}, duchies at {:?}",
            cluster.kingdom_url(),
            halo_sim::DUCHIES
                .iter()
                .map(|d| (d.to_string(), cluster.duchy_url(d).unwrap_or_default()))
                .collect::<Vec<_>>()
        );
    }
    let outcome = match args.protocol.as_str() {
        "hmss" => run_hmss(&cluster, &args).await?,
        _ => run_test_sum(&cluster, &args).await?,
    };
    let wall = started.elapsed().as_secs_f64();
    let gid = outcome
        .computation
        .trim_start_matches("computations/")
        .to_string();
    let stages = stage_times(&cluster, &gid).await?;
    if args.json {
        let out = serde_json::json!({
            "protocol": args.protocol,
            "reach": outcome.reach,
            "expected_reach": outcome.expected_reach,
            "frequency": outcome.frequency,
            "expected_frequency": outcome.expected_frequency,
            "wall_seconds": wall,
            "stages": stages,
            "registers": args.registers,
            "providers": args.providers,
            "noise": args.noise,
        });
        println!("{out}");
    } else {
        println!(
            "measurement {} ({}): SUCCEEDED in {wall:.2}s",
            outcome.name, args.protocol
        );
        println!(
            "reach: {} (ground truth {})",
            outcome.reach, outcome.expected_reach
        );
        println!("frequency  result      truth");
        if let Some(expected) = outcome.expected_frequency.as_object() {
            for (k, v) in expected {
                println!("{k:>9}  {:<10}  {v}", outcome.frequency[k]);
            }
        }
        println!("stage seconds per duchy: {stages}");
    }
    if args.keep_running {
        eprintln!(
            "servers keep running: kingdom {}, PKI in {}; Ctrl-C stops them",
            cluster.kingdom_url(),
            dir.join("pki").display()
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    cluster.shutdown().await
}

/// Seconds per executed stage and duchy, from the duchies' audit logs.
async fn stage_times(cluster: &Cluster, gid: &str) -> Result<serde_json::Value> {
    let mut out = serde_json::Map::new();
    for d in halo_sim::DUCHIES {
        let mut per = serde_json::Map::new();
        if let Some(running) = cluster.duchies.get(d) {
            for (_, event, detail) in running.core.store.audit_log(gid).await? {
                if event != "executed" {
                    continue;
                }
                // "<STAGE> in <secs>s"
                if let Some((stage, secs)) = detail.split_once(" in ")
                    && let Ok(s) = secs.trim_end_matches('s').parse::<f64>()
                {
                    per.insert(stage.to_string(), serde_json::json!(s));
                }
            }
        }
        out.insert(d.to_string(), serde_json::Value::Object(per));
    }
    Ok(serde_json::Value::Object(out))
}

fn base_spec(args: &DemoArgs, reach_only: bool, noised: bool) -> admin::MeasurementSpec {
    let dp = noised.then_some(DifferentialPrivacyParams {
        epsilon: args.epsilon,
        delta: args.delta,
    });
    admin::MeasurementSpec {
        measurement_public_key: Vec::new(),
        r#type: if reach_only {
            admin::measurement_spec::Type::Reach as i32
        } else {
            admin::measurement_spec::Type::ReachAndFrequency as i32
        },
        maximum_frequency: if reach_only {
            1
        } else {
            args.max_frequency as i32
        },
        reach_privacy_params: dp,
        frequency_privacy_params: if reach_only { None } else { dp },
        vid_sampling_interval_start: 0.0,
        vid_sampling_interval_width: 1.0,
        nonce_hashes: vec![],
        simulation: Default::default(),
    }
}

async fn run_hmss(cluster: &Cluster, args: &DemoArgs) -> Result<Outcome> {
    let mechanism = match args.noise.as_str() {
        "none" => NoiseMechanism::None,
        "geometric" => NoiseMechanism::Geometric,
        "discrete-gaussian" => NoiseMechanism::DiscreteGaussian,
        other => bail!("--noise {other:?}: use none, geometric or discrete-gaussian"),
    };
    let mut rng = rand::rng();
    let (secret, public) = halo_sim::hmss::measurement_keypair(&mut rng);
    let mut spec = base_spec(args, args.reach_only, mechanism != NoiseMechanism::None);
    spec.measurement_public_key = public.to_vec();
    let config = MpcProtocolConfig {
        protocol: Some(MpcProtocol::HonestMajorityShareShuffle(
            HonestMajorityShareShuffle {
                reach_and_frequency_ring_modulus: 127,
                reach_ring_modulus: 127,
                noise_mechanism: mechanism as i32,
            },
        )),
    };
    let mc_id = cluster.options.measurement_consumer.clone();
    let mc_ch = cluster.kingdom_channel(&Principal::MeasurementConsumer(mc_id.clone()))?;
    let created = mc::create_measurement_with(
        mc_ch.clone(),
        &mc_id,
        admin::Protocol::HonestMajorityShareShuffle,
        spec.clone(),
        &cluster.options.data_providers,
        Some(config),
    )
    .await?;
    let vectors = halo_sim::hmss::population(
        args.seed,
        args.providers,
        args.registers,
        args.max_frequency,
        0.3,
    );
    for (i, dp) in cluster.options.data_providers.iter().enumerate() {
        let who = Principal::DataProvider(dp.clone());
        let reqs = edp::wait_for_requisitions(
            cluster.kingdom_channel(&who)?,
            dp,
            1,
            Duration::from_secs(60),
        )
        .await?;
        for r in reqs {
            let computation = r
                .computation
                .as_ref()
                .ok_or_else(|| anyhow!("requisition without computation"))?;
            let q = halo_sim::hmss::ring_modulus(computation, &spec)?;
            let peer = halo_sim::hmss::peer_public_key(&r)?;
            let f = halo_sim::hmss::share_frequency_vector(
                &vectors[i],
                q,
                &peer,
                &format!("dataProviders/{dp}/certificates/sim"),
                &mut rng,
            )?;
            let duchy = cluster.duchy_channel(&who, &r.fulfilling_duchy)?;
            edp::fulfill(duchy, &r, Some(f.header_protocol), &f.body, 1 << 20).await?;
        }
    }
    let m = mc::wait_until_done(mc_ch, &created.measurement.name, Duration::from_secs(600)).await?;
    if m.state != State::Succeeded as i32 {
        bail!(
            "measurement ended in state {}: {}",
            m.state,
            m.failure_message
        );
    }
    let result = halo_sim::hmss::open_result(&secret, &m.encrypted_result)?;
    let mf = if args.reach_only {
        1
    } else {
        args.max_frequency
    };
    let (expected_reach, expected) = halo_sim::hmss::truth(&vectors, mf);
    Ok(Outcome {
        name: m.name,
        computation: created.measurement.computation,
        reach: result.reach,
        expected_reach,
        frequency: serde_json::to_value(&result.frequency)?,
        expected_frequency: if args.reach_only {
            serde_json::json!({})
        } else {
            serde_json::to_value(&expected)?
        },
    })
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

async fn run_test_sum(cluster: &Cluster, args: &DemoArgs) -> Result<Outcome> {
    let vectors: Vec<Vec<u32>> = (0..args.providers)
        .map(|i| population(args.seed, i, args.registers, args.max_frequency))
        .collect();
    let mc_id = cluster.options.measurement_consumer.clone();
    let mc_ch = cluster.kingdom_channel(&Principal::MeasurementConsumer(mc_id.clone()))?;
    let mut spec = base_spec(args, false, true);
    spec.maximum_frequency = (args.max_frequency as usize * args.providers) as i32;
    let created = mc::create_measurement(
        mc_ch.clone(),
        &mc_id,
        admin::Protocol::HonestMajorityShareShuffle,
        spec,
        &cluster.options.data_providers,
    )
    .await?;
    for (i, dp) in cluster.options.data_providers.iter().enumerate() {
        let who = Principal::DataProvider(dp.clone());
        let reqs = edp::wait_for_requisitions(
            cluster.kingdom_channel(&who)?,
            dp,
            1,
            Duration::from_secs(60),
        )
        .await?;
        for r in reqs {
            let duchy = cluster.duchy_channel(&who, &r.fulfilling_duchy)?;
            let data: Vec<u8> = vectors[i].iter().flat_map(|x| x.to_le_bytes()).collect();
            let hmss =
                api::fulfill_requisition_request::header::Protocol::HonestMajorityShareShuffle(
                    api::fulfill_requisition_request::header::HonestMajorityShareShuffle {
                        secret_seed: None,
                        register_count: args.registers as i64,
                        data_provider_certificate: String::new(),
                    },
                );
            edp::fulfill(duchy, &r, Some(hmss), &data, 1 << 20).await?;
        }
    }
    let m = mc::wait_until_done(mc_ch, &created.measurement.name, Duration::from_secs(600)).await?;
    if m.state != State::Succeeded as i32 {
        bail!(
            "measurement ended in state {}: {}",
            m.state,
            m.failure_message
        );
    }
    // test-sum reports counts, unencrypted.
    let result: serde_json::Value =
        serde_json::from_slice(&m.encrypted_result).context("decoding the result")?;
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut expected_reach = 0i64;
    for r in 0..args.registers {
        let f: u32 = vectors.iter().map(|v| v[r]).sum();
        if f > 0 {
            expected_reach += 1;
            *expected.entry(f.to_string()).or_default() += 1;
        }
    }
    Ok(Outcome {
        name: m.name,
        computation: created.measurement.computation,
        reach: result["reach"]
            .as_i64()
            .ok_or_else(|| anyhow!("result has no reach"))?,
        expected_reach,
        frequency: result["frequency"].clone(),
        expected_frequency: serde_json::to_value(&expected)?,
    })
}
