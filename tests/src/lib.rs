//! Shared helpers for the end-to-end tests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use halo_proto::api::v2alpha as api;
use halo_proto::halo::v1 as admin;
use halo_proto::system::v1alpha::DifferentialPrivacyParams;
use halo_protocol::{ProtocolRegistry, StaticRegistry};
use halo_sim::{Cluster, ClusterOptions, edp, mc};
use halo_testkit::TestSumProtocol;

pub const TIMEOUT: Duration = Duration::from_secs(60);

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Builds the protocol registry of each duchy.
pub use halo_sim::RegistryFn;

/// Every duchy runs the in-crate test protocol.
pub fn test_sum_registry() -> RegistryFn {
    Arc::new(|_| {
        Arc::new(StaticRegistry::new(vec![Arc::new(TestSumProtocol::new(
            "1.0.0",
        ))])) as Arc<dyn ProtocolRegistry>
    })
}

pub async fn start_cluster(dir: &std::path::Path) -> Result<Cluster> {
    init_logging();
    Cluster::start(ClusterOptions::new(dir, test_sum_registry())).await
}

pub fn spec(epsilon: f64) -> admin::MeasurementSpec {
    admin::MeasurementSpec {
        measurement_public_key: b"test-key".to_vec(),
        r#type: admin::measurement_spec::Type::ReachAndFrequency as i32,
        maximum_frequency: 10,
        reach_privacy_params: Some(DifferentialPrivacyParams {
            epsilon,
            delta: 1e-9,
        }),
        frequency_privacy_params: Some(DifferentialPrivacyParams {
            epsilon,
            delta: 1e-9,
        }),
        vid_sampling_interval_start: 0.0,
        vid_sampling_interval_width: 1.0,
        nonce_hashes: vec![],
        simulation: Default::default(),
    }
}

/// Deterministic frequency vector for a data provider.
pub fn vector(seed: u64, len: usize) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(3) {
                (x % 4) as u32
            } else {
                0
            }
        })
        .collect()
}

pub fn le(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Ground truth of the test-sum protocol: reach and histogram of the summed vectors.
pub fn truth(vectors: &[Vec<u32>]) -> (u64, BTreeMap<String, u64>) {
    let len = vectors.first().map(|v| v.len()).unwrap_or(0);
    let mut hist = BTreeMap::new();
    let mut reach = 0;
    for i in 0..len {
        let f: u32 = vectors.iter().map(|v| v[i]).sum();
        if f > 0 {
            reach += 1;
            *hist.entry(f.to_string()).or_insert(0) += 1;
        }
    }
    (reach, hist)
}

/// Every data provider fulfils its requisition of computation `computation` (waiting until
/// it is listed).
pub async fn fulfil_for(cluster: &Cluster, computation: &str, vectors: &[Vec<u32>]) -> Result<()> {
    for (i, dp) in cluster.options.data_providers.iter().enumerate() {
        let who = halo_identity::Principal::DataProvider(dp.clone());
        let start = std::time::Instant::now();
        let reqs = loop {
            let reqs: Vec<_> = edp::list(cluster.kingdom_channel(&who)?, dp)
                .await?
                .into_iter()
                .filter(|r| {
                    r.computation
                        .as_ref()
                        .is_some_and(|c| c.name == computation)
                })
                .collect();
            if !reqs.is_empty() {
                break reqs;
            }
            if start.elapsed() > TIMEOUT {
                anyhow::bail!("{dp}: no requisition for {computation}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        for r in reqs {
            fulfil_one(cluster, dp, &r, &vectors[i]).await?;
        }
    }
    Ok(())
}

/// Waits until every data provider can see its requisition.
pub async fn wait_for_requisitions(cluster: &Cluster) -> Result<()> {
    for dp in &cluster.options.data_providers {
        let who = halo_identity::Principal::DataProvider(dp.clone());
        edp::wait_for_requisitions(cluster.kingdom_channel(&who)?, dp, 1, TIMEOUT).await?;
    }
    Ok(())
}

/// Waits until a duchy has finished its part of a computation; returns how it ended.
pub async fn wait_local_terminal(cluster: &Cluster, duchy: &str, gid: &str) -> Result<String> {
    let start = std::time::Instant::now();
    loop {
        if let Some(row) = cluster.duchies[duchy].core.store.get(gid).await?
            && let Some(t) = row.terminal
        {
            return Ok(t);
        }
        if start.elapsed() > TIMEOUT {
            anyhow::bail!("{duchy} did not finish {gid}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that a test-sum measurement SUCCEEDED with exactly the ground truth of `vectors`:
/// reach, register count and every frequency bucket.
pub fn assert_exact_test_sum(m: &admin::Measurement, vectors: &[Vec<u32>]) {
    assert_eq!(
        m.state,
        halo_proto::system::v1alpha::computation::State::Succeeded as i32,
        "failure: {}",
        m.failure_message
    );
    let result: serde_json::Value = match serde_json::from_slice(&m.encrypted_result) {
        Ok(v) => v,
        Err(e) => panic!("result is not test-sum JSON: {e}"),
    };
    let (reach, hist) = truth(vectors);
    assert_eq!(result["reach"].as_u64(), Some(reach), "{result}");
    assert_eq!(
        result["registers"].as_u64(),
        vectors.first().map(|v| v.len() as u64),
        "{result}"
    );
    let got: Option<BTreeMap<String, u64>> =
        serde_json::from_value(result["frequency"].clone()).ok();
    assert_eq!(got, Some(hist), "{result}");
}

/// Waits (as the measurement consumer) until the measurement is terminal.
pub async fn wait_for_result(
    cluster: &Cluster,
    created: &mc::CreatedMeasurement,
) -> Result<admin::Measurement> {
    let who =
        halo_identity::Principal::MeasurementConsumer(cluster.options.measurement_consumer.clone());
    mc::wait_until_done(
        cluster.kingdom_channel(&who)?,
        &created.measurement.name,
        TIMEOUT,
    )
    .await
}

/// Creates a test-sum (HMSS) measurement as mc1.
pub async fn create(
    cluster: &Cluster,
    spec: admin::MeasurementSpec,
) -> Result<mc::CreatedMeasurement> {
    let mc_id = cluster.options.measurement_consumer.clone();
    let ch = cluster.kingdom_channel(&halo_identity::Principal::MeasurementConsumer(
        mc_id.clone(),
    ))?;
    mc::create_measurement(
        ch,
        &mc_id,
        admin::Protocol::HonestMajorityShareShuffle,
        spec,
        &cluster.options.data_providers,
    )
    .await
}

/// Every data provider fulfils its requisition with its vector.
pub async fn fulfil_all(cluster: &Cluster, vectors: &[Vec<u32>]) -> Result<()> {
    wait_for_requisitions(cluster).await?;
    fulfil_where(cluster, vectors, |_| true).await
}

/// Data provider `dp` sends `vector` for requisition `r` to its fulfilling duchy.
async fn fulfil_one(
    cluster: &Cluster,
    dp: &str,
    r: &admin::DataProviderRequisition,
    vector: &[u32],
) -> Result<()> {
    let who = halo_identity::Principal::DataProvider(dp.to_string());
    let duchy = cluster.duchy_channel(&who, &r.fulfilling_duchy)?;
    let hmss = api::fulfill_requisition_request::header::Protocol::HonestMajorityShareShuffle(
        api::fulfill_requisition_request::header::HonestMajorityShareShuffle {
            secret_seed: None,
            register_count: vector.len() as i64,
            data_provider_certificate: format!("dataProviders/{dp}/certificates/x"),
        },
    );
    edp::fulfill(duchy, r, Some(hmss), &le(vector), 32 << 10).await
}

/// Every data provider fulfils its listed requisitions whose fulfilling duchy passes `pred`.
pub async fn fulfil_where(
    cluster: &Cluster,
    vectors: &[Vec<u32>],
    pred: impl Fn(&str) -> bool,
) -> Result<()> {
    for (i, dp) in cluster.options.data_providers.iter().enumerate() {
        let who = halo_identity::Principal::DataProvider(dp.clone());
        let reqs = edp::list(cluster.kingdom_channel(&who)?, dp).await?;
        for r in reqs.into_iter().filter(|r| pred(&r.fulfilling_duchy)) {
            fulfil_one(cluster, dp, &r, &vectors[i]).await?;
        }
    }
    Ok(())
}

/// Starts a cluster whose duchies run the real `hmss` plugin (built from plugins/hmss);
/// data and the plugin directory go under `dir`.
pub async fn start_hmss_cluster(dir: &std::path::Path) -> Result<Cluster> {
    init_logging();
    let pdir = dir.join("plugins");
    std::fs::create_dir_all(&pdir)?;
    std::fs::copy(halo_plugin_build::HMSS, pdir.join("hmss-1.0.0.wasm"))?;
    let runtime = halo_engine::Runtime::new(halo_engine::EngineConfig {
        cache_dir: Some(dir.join("cache")),
        ..halo_engine::EngineConfig::default()
    })?;
    let reg =
        halo_registry::PluginRegistry::open(runtime, halo_registry::RegistryConfig::new(&pdir))?;
    anyhow::ensure!(reg.refused().is_empty(), "refused: {:?}", reg.refused());
    let shared: Arc<dyn ProtocolRegistry> = reg;
    let factory: RegistryFn = Arc::new(move |_| shared.clone());
    Cluster::start(ClusterOptions::new(&dir.join("c"), factory)).await
}

/// A cluster whose duchies serve the given built components (copied into one plugin
/// directory), with `data_providers` data providers `edp1..`.
pub async fn start_plugin_cluster(
    dir: &std::path::Path,
    components: &[&str],
    data_providers: usize,
) -> Result<Cluster> {
    init_logging();
    let pdir = dir.join("plugins");
    std::fs::create_dir_all(&pdir)?;
    for c in components {
        let path = std::path::Path::new(c);
        let name = path
            .file_name()
            .ok_or_else(|| anyhow::anyhow!("{c} has no file name"))?;
        std::fs::copy(path, pdir.join(name))?;
    }
    let runtime = halo_engine::Runtime::new(halo_engine::EngineConfig {
        cache_dir: Some(dir.join("cache")),
        ..halo_engine::EngineConfig::default()
    })?;
    let reg =
        halo_registry::PluginRegistry::open(runtime, halo_registry::RegistryConfig::new(&pdir))?;
    anyhow::ensure!(reg.refused().is_empty(), "refused: {:?}", reg.refused());
    let shared: Arc<dyn ProtocolRegistry> = reg;
    let factory: RegistryFn = Arc::new(move |_| shared.clone());
    let mut options = ClusterOptions::new(&dir.join("c"), factory);
    options.data_providers = (1..=data_providers).map(|i| format!("edp{i}")).collect();
    Cluster::start(options).await
}

/// One AdvanceComputation body chunk.
pub fn advance_chunk(data: &[u8]) -> halo_proto::system::v1alpha::AdvanceComputationRequest {
    use halo_proto::system::v1alpha::advance_computation_request::{BodyChunk, Payload};
    halo_proto::system::v1alpha::AdvanceComputationRequest {
        payload: Some(Payload::BodyChunk(BodyChunk {
            partial_data: data.to_vec(),
        })),
    }
}

/// A whole AdvanceComputation stream: the HMSS header for `description` of computation
/// `gid`, then `data` in chunks of `chunk` bytes.
pub fn advance_stream(
    gid: &str,
    description: i32,
    data: &[u8],
    chunk: usize,
) -> Vec<halo_proto::system::v1alpha::AdvanceComputationRequest> {
    let mut v = vec![halo_duchy::mill::advance_header(
        halo_protocol::SystemProtocol::HonestMajorityShareShuffle,
        gid,
        description,
    )];
    v.extend(data.chunks(chunk.max(1)).map(advance_chunk));
    v
}

/// Creates a test-sum measurement (nobody fulfils it, so the workers never deliver) and waits
/// until the aggregator parks in WAIT_ON_AGGREGATION_INPUT; returns the computation's global id.
pub async fn computation_waiting_at_aggregator(cluster: &Cluster) -> Result<String> {
    let created = create(cluster, spec(1.0)).await?;
    let gid = created
        .measurement
        .computation
        .trim_start_matches("computations/")
        .to_string();
    wait_at_aggregator_input(cluster, &gid).await?;
    Ok(gid)
}

/// Waits until the aggregator is in WAIT_ON_AGGREGATION_INPUT for `gid`.
pub async fn wait_at_aggregator_input(cluster: &Cluster, gid: &str) -> Result<()> {
    let agg = &cluster.duchies["aggregator"].core;
    let start = std::time::Instant::now();
    loop {
        if let Some(row) = agg.store.get(gid).await?
            && row.stage == halo_testkit::WAIT_ON_AGGREGATION_INPUT
        {
            return Ok(());
        }
        if start.elapsed() > TIMEOUT {
            anyhow::bail!("{gid} never reached WAIT_ON_AGGREGATION_INPUT at the aggregator");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
