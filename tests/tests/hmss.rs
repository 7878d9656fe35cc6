#![allow(clippy::unwrap_used, clippy::expect_used)]
//! HMSS end to end: three duchies run the real `hmss` plugin, data providers secret-share
//! their frequency vectors (seeds HPKE-sealed to the peer), the consumer opens the result.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use halo_duchy::protocol::ProtocolRegistry;
use halo_identity::Principal;
use halo_proto::halo::v1 as admin;
use halo_proto::system::v1alpha::computation::mpc_protocol_config::{
    HonestMajorityShareShuffle, NoiseMechanism, Protocol as MpcProtocol,
};
use halo_proto::system::v1alpha::computation::{MpcProtocolConfig, State};
use halo_sim::{edp, mc};
use halo_tests::*;

async fn run(reach_only: bool) {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("plugins");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::copy(halo_plugin_build::HMSS, pdir.join("hmss-1.0.0.wasm")).unwrap();
    let runtime = halo_engine::Runtime::new(halo_engine::EngineConfig {
        cache_dir: Some(dir.path().join("cache")),
        ..halo_engine::EngineConfig::default()
    })
    .unwrap();
    let reg =
        halo_registry::PluginRegistry::open(runtime, halo_registry::RegistryConfig::new(&pdir))
            .unwrap();
    assert!(reg.refused().is_empty(), "{:?}", reg.refused());
    let shared: Arc<dyn ProtocolRegistry> = reg.clone();
    let factory: halo_sim::RegistryFn = Arc::new(move |_| shared.clone());
    let cluster = halo_sim::Cluster::start(halo_sim::ClusterOptions::new(
        &dir.path().join("c"),
        factory,
    ))
    .await
    .unwrap();

    let mut rng = rand::rng();
    let (secret, public) = halo_sim::hmss::measurement_keypair(&mut rng);
    let mut s = spec(1.0);
    s.measurement_public_key = public.to_vec();
    s.maximum_frequency = if reach_only { 1 } else { 5 };
    s.reach_privacy_params = None;
    s.frequency_privacy_params = None;
    if reach_only {
        s.r#type = admin::measurement_spec::Type::Reach as i32;
    }
    let config = MpcProtocolConfig {
        protocol: Some(MpcProtocol::HonestMajorityShareShuffle(
            HonestMajorityShareShuffle {
                reach_and_frequency_ring_modulus: 127,
                reach_ring_modulus: 127,
                noise_mechanism: NoiseMechanism::None as i32,
            },
        )),
    };
    let mc_ch = cluster
        .kingdom_channel(&Principal::MeasurementConsumer("mc1".into()))
        .unwrap();
    let created = mc::create_measurement_with(
        mc_ch.clone(),
        "mc1",
        admin::Protocol::HonestMajorityShareShuffle,
        s.clone(),
        &cluster.options.data_providers,
        Some(config),
    )
    .await
    .unwrap();
    let vectors = halo_sim::hmss::population(7, 3, 20_000, 5, 0.3);
    for (i, dp) in cluster.options.data_providers.iter().enumerate() {
        let who = Principal::DataProvider(dp.clone());
        for r in edp::wait_for_requisitions(cluster.kingdom_channel(&who).unwrap(), dp, 1, TIMEOUT)
            .await
            .unwrap()
        {
            let q = halo_sim::hmss::ring_modulus(r.computation.as_ref().unwrap(), &s).unwrap();
            let peer = halo_sim::hmss::peer_public_key(&r).unwrap();
            let f = halo_sim::hmss::share_frequency_vector(
                &vectors[i],
                q,
                &peer,
                "dataProviders/x/certificates/y",
                &mut rng,
            )
            .unwrap();
            let duchy = cluster.duchy_channel(&who, &r.fulfilling_duchy).unwrap();
            edp::fulfill(duchy, &r, Some(f.header_protocol), &f.body, 1 << 20)
                .await
                .unwrap();
        }
    }
    let m = mc::wait_until_done(mc_ch, &created.measurement.name, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(m.state, State::Succeeded as i32, "{}", m.failure_message);
    let result = halo_sim::hmss::open_result(&secret, &m.encrypted_result).unwrap();
    let (reach, freq) = halo_sim::hmss::truth(&vectors, if reach_only { 1 } else { 5 });
    assert_eq!(result.reach, reach);
    if !reach_only {
        assert_eq!(result.frequency.len(), freq.len());
        for (k, v) in &freq {
            assert!(
                (result.frequency[k] - v).abs() < 1e-12,
                "bucket {k}: {} vs {v}",
                result.frequency[k]
            );
        }
    }
    let _ = PathBuf::new();
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hmss_reach_and_frequency_without_noise_is_exact() {
    run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hmss_reach_only_without_noise_is_exact() {
    run(true).await;
}
