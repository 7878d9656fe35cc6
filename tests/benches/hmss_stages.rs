//! Throughput of the HMSS shuffle and aggregation stages alone, through the real `hmss`
//! component and the host runtime (fresh Store per call, inputs copied across the wasm
//! boundary, the host's native AES-CTR keystream import), in registers per second.
//!
//! ```sh
//! cargo bench -p halo-tests --bench hmss_stages
//! HALO_BENCH_REGISTERS=1000000 cargo bench -p halo-tests --bench hmss_stages   # 1 M only
//! HALO_WASM_PERF_MAP=1 perf record -g <bench binary> --bench --profile-time 10   # profile
//! ```
//!
//! Setting: 3 data providers (seeds signed, signatures checked by the plugin through the
//! host's identity service; certificates from a fixed set since there is no Kingdom here); worker1 (first non-aggregator) fulfils two requisitions
//! (their data shares are its inputs) and opens the third provider's seed that worker2
//! relayed; worker2 holds one data share and two seeds. The shuffle benchmarks time worker1's
//! and worker2's SHUFFLE_PHASE; the aggregation benchmark times the aggregator's
//! AGGREGATION_PHASE on the two real shuffle outputs. Noise: none, or discrete Gaussian with
//! ε = 1, δ = 1e-9 for reach and frequency. Anchor (issue 4): the reference C++ utility
//! shuffles ≈ 14 M registers/s (R&F, 10 M) and aggregates ≈ 40 M registers/s.

// A benchmark binary: failing fast on setup errors is the point.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use halo_duchy::identity::{CertificateSource, DuchyIdentity};
use halo_engine::{EngineConfig, Runtime};
use halo_identity::{DevPki, Principal};
use halo_proto::api::v2alpha::fulfill_requisition_request::Header;
use halo_proto::halo::v1 as admin;
use halo_proto::system::v1alpha::computation::MpcProtocolConfig;
use halo_proto::system::v1alpha::computation::mpc_protocol_config::{
    HonestMajorityShareShuffle, NoiseMechanism, Protocol as MpcProtocol,
};
use halo_proto::system::v1alpha::computation_participant::{RequisitionParams, requisition_params};
use halo_proto::system::v1alpha::{Computation, DifferentialPrivacyParams, Requisition};
use halo_protocol::{
    ComputationContext, InputOrigin, Participant, Protocol, Role, StageIdentity, StageInput,
    StageOutcome, SystemProtocol,
};
use prost::Message;
use rand::SeedableRng;

// Stage numbers and descriptions of the hmss plugin (halo-system §4.3).
const INITIALIZED: i32 = 1;
const SETUP_PHASE: i32 = 4;
const SHUFFLE_PHASE: i32 = 7;
const AGGREGATION_PHASE: i32 = 8;
const MAX_FREQUENCY: u32 = 5;

#[derive(Clone, Copy)]
struct Case {
    registers: usize,
    reach_only: bool,
    noise: bool,
}

impl Case {
    fn label(&self) -> String {
        format!(
            "{}/{}",
            if self.reach_only { "reach-only" } else { "r&f" },
            if self.noise { "dgauss" } else { "no-noise" }
        )
    }
}

/// Everything one case needs: the three stage calls' contexts and inputs.
struct Prepared {
    w1: ComputationContext,
    w2: ComputationContext,
    agg: ComputationContext,
    shuffle1: Vec<StageInput>,
    shuffle2: Vec<StageInput>,
    aggregation: Vec<StageInput>,
}

/// A PKI for the three duchies and three data providers, and each duchy's identity service
/// (certificates from a fixed set instead of the Kingdom: there is no Kingdom here).
struct Identities {
    pki: DevPki,
    services: HashMap<String, Arc<dyn StageIdentity>>,
}

fn identities() -> Identities {
    let duchies = ["aggregator", "worker1", "worker2"];
    let mut principals: Vec<Principal> = duchies
        .iter()
        .map(|d| Principal::Duchy(d.to_string()))
        .collect();
    principals.extend((0..3).map(|i| Principal::DataProvider(format!("edp{i}"))));
    let pki = DevPki::generate(&principals).expect("pki");
    let trust = pki.trust_store().expect("trust");
    let mut certificates = HashMap::new();
    for p in &principals {
        let id = pki.identity(p).expect("identity");
        certificates.insert(
            halo_sim::hmss::certificate_name(id).expect("name"),
            id.certificate_der().expect("der"),
        );
    }
    let services = duchies
        .iter()
        .map(|d| {
            let id = pki
                .identity(&Principal::Duchy(d.to_string()))
                .expect("identity");
            let service: Arc<dyn StageIdentity> = DuchyIdentity::new(
                Some((
                    id.clone(),
                    halo_sim::hmss::certificate_name(id).expect("name"),
                )),
                trust.clone(),
                CertificateSource::Fixed(certificates.clone()),
            );
            (d.to_string(), service)
        })
        .collect();
    Identities { pki, services }
}

fn context(
    case: Case,
    spec: &admin::MeasurementSpec,
    role: Role,
    duchy: &str,
    ids: &Identities,
) -> ComputationContext {
    let computation = Computation {
        name: "computations/bench".into(),
        measurement_spec: spec.encode_to_vec(),
        requisitions: vec![Requisition::default(); 3],
        mpc_protocol_config: Some(MpcProtocolConfig {
            protocol: Some(MpcProtocol::HonestMajorityShareShuffle(
                HonestMajorityShareShuffle {
                    reach_and_frequency_ring_modulus: 127,
                    reach_ring_modulus: 127,
                    noise_mechanism: if case.noise {
                        NoiseMechanism::DiscreteGaussian
                    } else {
                        NoiseMechanism::None
                    } as i32,
                },
            )),
        }),
        ..Default::default()
    };
    let p = |d: &str, r| Participant {
        duchy_id: d.into(),
        role: r,
        requisition_params: vec![],
    };
    ComputationContext {
        global_id: "bench".into(),
        duchy_id: duchy.into(),
        role,
        protocol: SystemProtocol::HonestMajorityShareShuffle,
        computation: computation.encode_to_vec(),
        participants: vec![
            p("aggregator", Role::Aggregator),
            p("worker1", Role::FirstNonAggregator),
            p("worker2", Role::SecondNonAggregator),
        ],
        state: vec![],
        attempt: 1,
        identity: ids.services.get(duchy).cloned(),
    }
}

fn started(plugin: &dyn Protocol, mut ctx: ComputationContext) -> ComputationContext {
    ctx.state = plugin.start(&ctx).expect("start").state;
    ctx
}

fn published_key(o: &StageOutcome) -> Vec<u8> {
    let rp = RequisitionParams::decode(o.requisition_params.as_deref().expect("params"))
        .expect("params decode");
    match rp.protocol {
        Some(requisition_params::Protocol::HonestMajorityShareShuffle(h)) => h.tink_public_key,
        other => panic!("unexpected params {other:?}"),
    }
}

fn peer_input(o: &StageOutcome, from: &str) -> StageInput {
    StageInput {
        origin: InputOrigin::Peer {
            duchy_id: from.into(),
            description: o.sends[0].description,
        },
        data: o.sends[0].payload.clone(),
    }
}

fn prepare(plugin: &dyn Protocol, case: Case, ids: &Identities) -> Prepared {
    let mut rng = rand::rngs::StdRng::seed_from_u64(case.registers as u64);
    let (_, mc_public) = halo_sim::hmss::measurement_keypair(&mut rng);
    let dp = case.noise.then_some(DifferentialPrivacyParams {
        epsilon: 1.0,
        delta: 1e-9,
    });
    let spec = admin::MeasurementSpec {
        measurement_public_key: mc_public.to_vec(),
        r#type: if case.reach_only {
            admin::measurement_spec::Type::Reach
        } else {
            admin::measurement_spec::Type::ReachAndFrequency
        } as i32,
        maximum_frequency: if case.reach_only {
            1
        } else {
            MAX_FREQUENCY as i32
        },
        reach_privacy_params: dp,
        frequency_privacy_params: if case.reach_only { None } else { dp },
        vid_sampling_interval_width: 1.0,
        ..Default::default()
    };
    let w1 = started(
        plugin,
        context(case, &spec, Role::FirstNonAggregator, "worker1", ids),
    );
    let w2 = started(
        plugin,
        context(case, &spec, Role::SecondNonAggregator, "worker2", ids),
    );
    let agg = started(
        plugin,
        context(case, &spec, Role::Aggregator, "aggregator", ids),
    );
    let pk1 = published_key(&plugin.execute(&w1, INITIALIZED, vec![]).expect("init w1"));
    let pk2 = published_key(&plugin.execute(&w2, INITIALIZED, vec![]).expect("init w2"));

    let mf = if case.reach_only { 1 } else { MAX_FREQUENCY };
    let vectors = halo_sim::hmss::population(11, 3, case.registers, mf, 0.3);
    let mut fulfil = |i: usize, peer: &[u8]| -> StageInput {
        let signer = ids
            .pki
            .identity(&Principal::DataProvider(format!("edp{i}")))
            .expect("edp identity");
        let f = halo_sim::hmss::share_frequency_vector(&vectors[i], 127, peer, signer, &mut rng)
            .expect("share");
        let header = Header {
            name: format!("dataProviders/edp{i}/requisitions/r{i}"),
            protocol: Some(f.header_protocol),
            ..Default::default()
        };
        StageInput {
            origin: InputOrigin::Requisition {
                requisition_id: format!("r{i}"),
                header: header.encode_to_vec(),
            },
            data: f.body,
        }
    };
    // Providers 0 and 1 fulfil at worker1 (seeds sealed to worker2), provider 2 at worker2.
    let at_w1 = vec![fulfil(0, &pk2), fulfil(1, &pk2)];
    let at_w2 = vec![fulfil(2, &pk1)];
    let s1 = plugin
        .execute(&w1, SETUP_PHASE, at_w1.clone())
        .expect("setup w1");
    let s2 = plugin
        .execute(&w2, SETUP_PHASE, at_w2.clone())
        .expect("setup w2");
    let mut shuffle1 = vec![peer_input(&s2, "worker2")];
    shuffle1.extend(at_w1);
    let mut shuffle2 = vec![peer_input(&s1, "worker1")];
    shuffle2.extend(at_w2);
    let a1 = plugin
        .execute(&w1, SHUFFLE_PHASE, shuffle1.clone())
        .expect("shuffle w1");
    let a2 = plugin
        .execute(&w2, SHUFFLE_PHASE, shuffle2.clone())
        .expect("shuffle w2");
    let aggregation = vec![peer_input(&a1, "worker1"), peer_input(&a2, "worker2")];
    // One aggregation up front: the case is valid end to end.
    let out = plugin
        .execute(&agg, AGGREGATION_PHASE, aggregation.clone())
        .expect("aggregation");
    assert!(out.result.is_some());
    Prepared {
        w1,
        w2,
        agg,
        shuffle1,
        shuffle2,
        aggregation,
    }
}

fn sizes() -> Vec<usize> {
    std::env::var("HALO_BENCH_REGISTERS")
        .ok()
        .map(|s| {
            s.split(',')
                .map(|n| n.trim().parse().expect("HALO_BENCH_REGISTERS: numbers"))
                .collect()
        })
        .unwrap_or_else(|| vec![1_000_000, 10_000_000])
}

fn bench(c: &mut Criterion) {
    let runtime = Runtime::new(EngineConfig {
        max_memory_bytes: 4 << 30,
        // HALO_WASM_PERF_MAP=1: name the plugin's functions for `perf record`.
        perf_map: std::env::var("HALO_WASM_PERF_MAP").is_ok_and(|v| v == "1"),
        ..EngineConfig::default()
    })
    .expect("runtime");
    let plugin = runtime
        .load_file(std::path::Path::new(halo_plugin_build::HMSS))
        .expect("hmss component");
    let plugin: &dyn Protocol = &*plugin;
    let ids = identities();
    for registers in sizes() {
        for reach_only in [false, true] {
            for noise in [false, true] {
                let case = Case {
                    registers,
                    reach_only,
                    noise,
                };
                let p = prepare(plugin, case, &ids);
                let mut g = c.benchmark_group(format!("hmss/{registers}"));
                g.throughput(Throughput::Elements(registers as u64))
                    .sample_size(10)
                    .warm_up_time(Duration::from_millis(500))
                    .measurement_time(Duration::from_secs(if registers > 2_000_000 {
                        10
                    } else {
                        3
                    }));
                for (name, ctx, stage, inputs) in [
                    ("shuffle worker1", &p.w1, SHUFFLE_PHASE, &p.shuffle1),
                    ("shuffle worker2", &p.w2, SHUFFLE_PHASE, &p.shuffle2),
                    ("aggregation", &p.agg, AGGREGATION_PHASE, &p.aggregation),
                ] {
                    g.bench_function(BenchmarkId::new(name, case.label()), |b| {
                        b.iter_batched(
                            || inputs.clone(),
                            |inputs| black_box(plugin.execute(ctx, stage, inputs).expect("stage")),
                            BatchSize::PerIteration,
                        )
                    });
                }
                g.finish();
            }
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
