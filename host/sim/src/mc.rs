//! Measurement-consumer simulator: creates measurements and waits for their results.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use halo_proto::halo::v1 as admin;
use halo_proto::system::v1alpha::computation::State as ComputationState;
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

/// What a requisition spec carries in the simulation: the nonce the data provider must
/// echo. (The reference encrypts this to the data provider; the simulators will.)
pub fn requisition_spec(nonce: u64) -> Vec<u8> {
    nonce.to_be_bytes().to_vec()
}

pub struct CreatedMeasurement {
    pub measurement: admin::Measurement,
    pub nonces: HashMap<String, u64>,
}

/// Creates a measurement over `data_providers` as consumer `mc` with the Kingdom's default
/// protocol configuration.
pub async fn create_measurement(
    kingdom: Channel,
    mc: &str,
    protocol: admin::Protocol,
    spec: admin::MeasurementSpec,
    data_providers: &[String],
) -> Result<CreatedMeasurement> {
    create_measurement_with(kingdom, mc, protocol, spec, data_providers, None).await
}

/// Creates a measurement, optionally overriding the protocol configuration (ring moduli,
/// noise mechanism, ...).
pub async fn create_measurement_with(
    kingdom: Channel,
    mc: &str,
    protocol: admin::Protocol,
    mut spec: admin::MeasurementSpec,
    data_providers: &[String],
    protocol_config: Option<halo_proto::system::v1alpha::computation::MpcProtocolConfig>,
) -> Result<CreatedMeasurement> {
    let mut nonces = HashMap::new();
    let mut entries = Vec::new();
    spec.nonce_hashes.clear();
    for dp in data_providers {
        let nonce = loop {
            let n: u64 = rand::random();
            if n != 0 {
                break n;
            }
        };
        let hash = Sha256::digest(nonce.to_be_bytes()).to_vec();
        spec.nonce_hashes.push(hash.clone());
        entries.push(admin::create_measurement_request::DataProviderEntry {
            data_provider: format!("dataProviders/{dp}"),
            encrypted_requisition_spec: requisition_spec(nonce),
            nonce_hash: hash,
        });
        nonces.insert(dp.clone(), nonce);
    }
    let m = admin::measurements_client::MeasurementsClient::new(kingdom)
        .create_measurement(admin::CreateMeasurementRequest {
            parent: format!("measurementConsumers/{mc}"),
            request_id: format!("{:016x}", rand::random::<u64>()),
            protocol: protocol as i32,
            measurement_spec: spec.encode_to_vec(),
            data_providers: entries,
            protocol_config,
        })
        .await?
        .into_inner();
    Ok(CreatedMeasurement {
        measurement: m,
        nonces,
    })
}

pub fn is_terminal(state: i32) -> bool {
    state == ComputationState::Succeeded as i32
        || state == ComputationState::Failed as i32
        || state == ComputationState::Cancelled as i32
}

/// Polls until the measurement is terminal.
pub async fn wait_until_done(
    kingdom: Channel,
    name: &str,
    timeout: Duration,
) -> Result<admin::Measurement> {
    let mut client = admin::measurements_client::MeasurementsClient::new(kingdom);
    let start = Instant::now();
    loop {
        let m = client
            .get_measurement(admin::GetMeasurementRequest {
                name: name.to_string(),
            })
            .await?
            .into_inner();
        if is_terminal(m.state) {
            return Ok(m);
        }
        if start.elapsed() > timeout {
            bail!(
                "measurement {name} still in state {} after {timeout:?}",
                m.state
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Extracts the nonce from a simulated requisition spec.
pub fn nonce_of(spec: &[u8]) -> Result<u64> {
    let b: [u8; 8] = spec
        .get(..8)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| anyhow!("requisition spec too short"))?;
    Ok(u64::from_be_bytes(b))
}
