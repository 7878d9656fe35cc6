//! `halo mc`: an HMSS measurement consumer against running servers. It generates an X25519
//! result key pair, creates a measurement, waits for it, opens the result with HPKE and
//! prints reach and the frequency distribution (beside the ground truth with
//! `--truth-seed`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use halo_identity::Principal;
use halo_proto::system::v1alpha::computation::mpc_protocol_config::NoiseMechanism;
use halo_sim::hmss::HmssResult;
use halo_sim::mc::HmssRequest;

use crate::edp::PopulationArgs;
use crate::report;

/// Noise the non-aggregators add.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Noise {
    None,
    Geometric,
    DiscreteGaussian,
}

impl Noise {
    pub fn mechanism(self) -> NoiseMechanism {
        match self {
            Noise::None => NoiseMechanism::None,
            Noise::Geometric => NoiseMechanism::Geometric,
            Noise::DiscreteGaussian => NoiseMechanism::DiscreteGaussian,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Noise::None => "none",
            Noise::Geometric => "geometric",
            Noise::DiscreteGaussian => "discrete-gaussian",
        }
    }
}

/// Measurement-consumer simulator (HMSS): creates one measurement and prints its result.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "halo mc")]
pub struct McArgs {
    /// PKI directory (`halo pki --out DIR`, or DIR/pki of `halo demo --out DIR`).
    #[arg(long, env = "HALO_PKI")]
    pub pki: PathBuf,
    /// Measurement consumer id (a principal of the PKI).
    #[arg(long, env = "HALO_MC_ID", default_value = "mc1")]
    pub id: String,
    /// Kingdom URL.
    #[arg(long, env = "HALO_KINGDOM", default_value = "https://127.0.0.1:7000")]
    pub kingdom: String,
    /// Data providers to measure over (comma-separated).
    #[arg(
        long,
        env = "HALO_DATA_PROVIDERS",
        value_delimiter = ',',
        default_value = "edp1,edp2,edp3"
    )]
    pub data_providers: Vec<String>,
    /// Measure reach only.
    #[arg(long, env = "HALO_REACH_ONLY")]
    pub reach_only: bool,
    /// Largest frequency bucket (people seen more often count in it).
    #[arg(long, env = "HALO_MAX_FREQUENCY", default_value_t = 3)]
    pub max_frequency: u32,
    /// Noise the duchies add.
    #[arg(long, env = "HALO_NOISE", value_enum, default_value_t = Noise::None)]
    pub noise: Noise,
    /// DP epsilon (with noise).
    #[arg(long, env = "HALO_EPSILON", default_value_t = 1.0)]
    pub epsilon: f64,
    /// DP delta (with noise).
    #[arg(long, env = "HALO_DELTA", default_value_t = 1e-9)]
    pub delta: f64,
    /// Protocol: hmss, llv2 or ro-llv2.
    #[arg(long, env = "HALO_PROTOCOL", value_enum, default_value_t = McProtocol::Hmss)]
    pub protocol: McProtocol,
    /// Liquid Legions sketch decay rate (llv2, ro-llv2).
    #[arg(long, env = "HALO_DECAY_RATE", default_value_t = 12.0)]
    pub decay_rate: f64,
    /// Liquid Legions sketch size in registers (llv2, ro-llv2).
    #[arg(long, env = "HALO_SKETCH_SIZE", default_value_t = 100_000)]
    pub sketch_size: i64,
    /// Ring modulus of the secret shares (must exceed 1 + max frequency × providers).
    #[arg(long, env = "HALO_RING_MODULUS", default_value_t = 127)]
    pub ring_modulus: i32,
    /// VID sampling interval start: the data providers send only the population's registers
    /// in [start, start + width), and the reach is scaled by 1/width.
    #[arg(long, env = "HALO_VID_SAMPLING_START", default_value_t = 0.0)]
    pub vid_sampling_start: f32,
    /// VID sampling interval width, in (0, 1].
    #[arg(long, env = "HALO_VID_SAMPLING_WIDTH", default_value_t = 1.0)]
    pub vid_sampling_width: f32,
    /// How long to wait for the result, in seconds. Bounds everything, including retries
    /// (with backoff) while the Kingdom is unreachable or restarting.
    #[arg(long, env = "HALO_TIMEOUT_SECS", default_value_t = 600)]
    pub timeout_secs: u64,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long, env = "HALO_JSON")]
    pub json: bool,
    /// Print the ground truth of the synthetic population with this seed beside the result
    /// (the data providers must run `halo edp` with the same population flags).
    #[arg(long, env = "HALO_TRUTH_SEED")]
    pub truth_seed: Option<u64>,
    /// Providers in the population model (`halo edp --providers`).
    #[arg(long, env = "HALO_TRUTH_PROVIDERS", default_value_t = 3)]
    pub truth_providers: usize,
    /// Registers of the population (`halo edp --registers`).
    #[arg(long, env = "HALO_TRUTH_REGISTERS", default_value_t = 100_000)]
    pub truth_registers: usize,
    /// Largest per-provider frequency of the population (`halo edp --max-frequency`;
    /// default: --max-frequency).
    #[arg(long, env = "HALO_TRUTH_MAX_FREQUENCY")]
    pub truth_max_frequency: Option<u32>,
    /// Overlap of the population (`halo edp --overlap`).
    #[arg(long, env = "HALO_TRUTH_OVERLAP", default_value_t = 0.3)]
    pub truth_overlap: f64,
}

/// The protocol `halo mc` measures with.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum McProtocol {
    /// Honest Majority Share Shuffle.
    Hmss,
    /// Liquid Legions v2 (reach and frequency).
    Llv2,
    /// Reach-only Liquid Legions v2.
    RoLlv2,
}

/// What `halo mc` measured.
#[derive(Debug, Clone)]
pub struct McReport {
    pub measurement: String,
    pub computation: String,
    pub result: HmssResult,
    /// Ground truth (reach, distribution), with `--truth-seed`.
    pub truth: Option<(i64, BTreeMap<String, f64>)>,
    /// Frequency buckets reported (0 for reach-only).
    pub buckets: u32,
    pub wall_seconds: f64,
}

impl McArgs {
    /// The Liquid Legions v2 request (for `--protocol llv2 | ro-llv2`).
    pub fn llv2_request(&self) -> halo_sim::llv2::Llv2Request {
        halo_sim::llv2::Llv2Request {
            reach_only_protocol: self.protocol == McProtocol::RoLlv2,
            reach_only: self.reach_only,
            max_frequency: self.max_frequency,
            noise: self.noise.mechanism(),
            epsilon: self.epsilon,
            delta: self.delta,
            decay_rate: self.decay_rate,
            sketch_size: self.sketch_size,
            vid_sampling_start: self.vid_sampling_start,
            vid_sampling_width: self.vid_sampling_width,
        }
    }

    /// Frequency buckets the measurement reports (0 for reach).
    pub fn buckets(&self) -> u32 {
        if self.reach_only || self.protocol == McProtocol::RoLlv2 {
            0
        } else {
            self.max_frequency
        }
    }

    pub fn request(&self) -> HmssRequest {
        HmssRequest {
            reach_only: self.reach_only,
            max_frequency: self.max_frequency,
            noise: self.noise.mechanism(),
            epsilon: self.epsilon,
            delta: self.delta,
            ring_modulus: self.ring_modulus,
            vid_sampling_start: self.vid_sampling_start,
            vid_sampling_width: self.vid_sampling_width,
        }
    }

    /// The ground truth over this measurement's data providers, with `--truth-seed`.
    pub fn truth(&self) -> Result<Option<(i64, BTreeMap<String, f64>)>> {
        let Some(seed) = self.truth_seed else {
            return Ok(None);
        };
        let population = PopulationArgs {
            seed,
            providers: self.truth_providers,
            registers: self.truth_registers,
            max_frequency: self.truth_max_frequency.unwrap_or(self.max_frequency),
            overlap: self.truth_overlap,
        };
        let mut vectors = population.vectors()?;
        let mut ours = Vec::with_capacity(self.data_providers.len());
        for dp in &self.data_providers {
            let i = halo_sim::hmss::provider_index(dp)
                .filter(|&i| i < population.providers)
                .ok_or_else(|| {
                    anyhow!(
                        "--truth-seed: data provider {dp} is not in the population of \
                         --truth-providers {} (edp1..edpN are providers 0..N-1)",
                        population.providers
                    )
                })?;
            ours.push(std::mem::take(&mut vectors[i]));
        }
        if self.protocol != McProtocol::Hmss {
            // What Liquid Legions reproduces exactly without noise: the estimator on the union
            // of the providers' sketches.
            return halo_sim::llv2::expected(&ours, &self.llv2_request()).map(Some);
        }
        Ok(Some(halo_sim::hmss::truth(
            &ours,
            self.request().effective_max_frequency(),
        )))
    }
}

/// Runs the consumer: creates the measurement, prints its name, waits, opens and prints the
/// result (an error unless it SUCCEEDED).
pub async fn run(args: McArgs) -> Result<McReport> {
    if args.data_providers.is_empty() {
        bail!("--data-providers must name at least one data provider");
    }
    if args.max_frequency == 0 {
        bail!("--max-frequency must be at least 1");
    }
    let truth = args.truth()?;
    let request = args.request();
    let remote = halo_sim::Remote::load(&args.pki, &args.kingdom, [])?;
    let kingdom = remote.kingdom_channel(&Principal::MeasurementConsumer(args.id.clone()))?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let mut rng = rand::rng();
    let m = match args.protocol {
        McProtocol::Hmss => {
            halo_sim::mc::create_hmss_measurement_until(
                kingdom.clone(),
                &args.id,
                &args.data_providers,
                &request,
                deadline,
                &mut rng,
            )
            .await?
        }
        McProtocol::Llv2 | McProtocol::RoLlv2 => {
            halo_sim::llv2::create_llv2_measurement_until(
                kingdom.clone(),
                &args.id,
                &args.data_providers,
                &args.llv2_request(),
                deadline,
                &mut rng,
            )
            .await?
        }
    };
    let created = format!(
        "measurement {} ({}) created over {}; waiting for the result",
        m.name(),
        m.computation(),
        args.data_providers.join(", ")
    );
    if args.json {
        eprintln!("{created}");
    } else {
        println!("{created}");
    }
    let result = m
        .result(
            kingdom,
            remote.trust(),
            deadline.saturating_duration_since(Instant::now()),
        )
        .await?;
    let report = McReport {
        measurement: m.name().to_string(),
        computation: m.computation().to_string(),
        result,
        truth,
        buckets: args.buckets(),
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    print(&report, &args);
    Ok(report)
}

fn print(r: &McReport, args: &McArgs) {
    let frequency = report::complete(&r.result.frequency, r.buckets);
    if args.json {
        let mut out = serde_json::json!({
            "measurement": r.measurement,
            "computation": r.computation,
            "state": "SUCCEEDED",
            "reach": r.result.reach,
            "frequency": report::json(&frequency),
            "frequency_vector_size": r.result.frequency_vector_size,
            "wall_seconds": r.wall_seconds,
            "noise": args.noise.as_str(),
        });
        if let Some((reach, dist)) = &r.truth {
            out["expected_reach"] = serde_json::json!(reach);
            out["expected_frequency"] = report::json(&report::complete(dist, r.buckets));
        }
        println!("{out}");
    } else {
        println!(
            "measurement {}: SUCCEEDED in {:.2}s (noise {})",
            r.measurement,
            r.wall_seconds,
            args.noise.as_str()
        );
        report::print_table(
            r.result.reach,
            &r.result.frequency,
            r.truth.as_ref().map(|(reach, d)| (*reach, d)),
            r.buckets,
        );
    }
}
