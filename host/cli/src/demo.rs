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
use halo_proto::system::v1alpha::computation::State;
use halo_sim::{Cluster, ClusterOptions, edp, mc};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Protocol to run. Until the MPC plugins land, only the `test-sum` plugin (secret-free,
    /// for exercising the host) is available.
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
    /// Largest per-provider frequency.
    #[arg(long, default_value_t = 3)]
    max_frequency: u32,
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

pub async fn run(args: DemoArgs) -> Result<()> {
    if args.protocol != "test-sum" {
        bail!(
            "protocol {:?} is not available yet; use --protocol test-sum",
            args.protocol
        );
    }
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
            let src = PathBuf::from(halo_plugin_build::TEST_SUM_V1_0);
            let name = src.file_name().ok_or_else(|| anyhow!("bad plugin path"))?;
            std::fs::copy(&src, d.join(name)).with_context(|| {
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
    let vectors: Vec<Vec<u32>> = (0..args.providers)
        .map(|i| population(args.seed, i, args.registers, args.max_frequency))
        .collect();

    let mc_id = cluster.options.measurement_consumer.clone();
    let mc_ch = cluster.kingdom_channel(&Principal::MeasurementConsumer(mc_id.clone()))?;
    let spec = admin::MeasurementSpec {
        measurement_public_key: b"demo".to_vec(),
        r#type: admin::measurement_spec::Type::ReachAndFrequency as i32,
        maximum_frequency: (args.max_frequency as usize * args.providers) as i32,
        reach_privacy_params: Some(DifferentialPrivacyParams {
            epsilon: 1.0,
            delta: 1e-9,
        }),
        frequency_privacy_params: Some(DifferentialPrivacyParams {
            epsilon: 1.0,
            delta: 1e-9,
        }),
        vid_sampling_interval_start: 0.0,
        vid_sampling_interval_width: 1.0,
        nonce_hashes: vec![],
        simulation: Default::default(),
    };
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
    let wall = started.elapsed().as_secs_f64();
    if m.state != State::Succeeded as i32 {
        bail!(
            "measurement ended in state {}: {}",
            m.state,
            m.failure_message
        );
    }
    let result: serde_json::Value =
        serde_json::from_slice(&m.encrypted_result).context("decoding the result")?;
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut expected_reach = 0u64;
    for r in 0..args.registers {
        let f: u32 = vectors.iter().map(|v| v[r]).sum();
        if f > 0 {
            expected_reach += 1;
            *expected.entry(f.to_string()).or_default() += 1;
        }
    }
    let reach = result["reach"]
        .as_u64()
        .ok_or_else(|| anyhow!("result has no reach"))?;
    let frequency = result["frequency"].clone();
    if args.json {
        let out = serde_json::json!({
            "protocol": args.protocol,
            "reach": reach,
            "expected_reach": expected_reach,
            "frequency": frequency,
            "expected_frequency": expected,
            "wall_seconds": wall,
            "registers": args.registers,
            "providers": args.providers,
        });
        println!("{out}");
    } else {
        println!(
            "measurement {} ({}): SUCCEEDED in {wall:.2}s",
            m.name, args.protocol
        );
        println!("reach: {reach} (ground truth {expected_reach})");
        println!("frequency  result  truth");
        for (k, v) in &expected {
            println!("{k:>9}  {:>6}  {v:>5}", frequency[k].as_u64().unwrap_or(0));
        }
    }
    if args.keep_running {
        eprintln!(
            "servers keep running (PKI in {}); Ctrl-C stops them",
            dir.join("pki").display()
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    cluster.shutdown().await
}
