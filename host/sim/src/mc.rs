//! Measurement-consumer simulator: creates measurements and waits for their results.
//! [`create_hmss_measurement`] and [`HmssMeasurement::result`] are the whole HMSS consumer
//! (used by `halo mc`, `halo demo` and the tests).

use halo_protocol::SystemProtocol;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use halo_identity::TrustStore;
use halo_proto::halo::v1 as admin;
use halo_proto::system::v1alpha::DifferentialPrivacyParams;
use halo_proto::system::v1alpha::computation::MpcProtocolConfig;
use halo_proto::system::v1alpha::computation::State as ComputationState;
use halo_proto::system::v1alpha::computation::mpc_protocol_config::{
    HonestMajorityShareShuffle, NoiseMechanism, Protocol as MpcProtocol,
};
use prost::Message;
use rand::CryptoRng;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use crate::retry;

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
/// noise mechanism, ...), retrying transient failures for [`retry::DEFAULT_BUDGET`].
pub async fn create_measurement_with(
    kingdom: Channel,
    mc: &str,
    protocol: admin::Protocol,
    spec: admin::MeasurementSpec,
    data_providers: &[String],
    protocol_config: Option<halo_proto::system::v1alpha::computation::MpcProtocolConfig>,
) -> Result<CreatedMeasurement> {
    let new = new_measurement(mc, protocol, spec, data_providers, protocol_config);
    let measurement = send_create(
        kingdom,
        &new.request,
        Instant::now() + retry::DEFAULT_BUDGET,
    )
    .await?;
    Ok(CreatedMeasurement {
        measurement,
        nonces: new.nonces,
    })
}

/// A `CreateMeasurementRequest` with a fresh request id and fresh nonces, and those nonces.
pub struct NewMeasurement {
    pub request: admin::CreateMeasurementRequest,
    /// The nonce of each data provider's requisition.
    pub nonces: HashMap<String, u64>,
}

/// Builds the request creating a measurement over `data_providers` as consumer `mc`: a random
/// nonce per data provider (its hash in the spec and the entry) and a random request id, so
/// that sending the same request again returns the same measurement.
pub fn new_measurement(
    mc: &str,
    protocol: admin::Protocol,
    mut spec: admin::MeasurementSpec,
    data_providers: &[String],
    protocol_config: Option<MpcProtocolConfig>,
) -> NewMeasurement {
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
    NewMeasurement {
        request: admin::CreateMeasurementRequest {
            parent: format!("measurementConsumers/{mc}"),
            request_id: format!("{:032x}", rand::random::<u128>()),
            protocol: protocol as i32,
            measurement_spec: spec.encode_to_vec(),
            data_providers: entries,
            protocol_config,
        },
        nonces,
    }
}

/// Sends `request` (every attempt the same, so with the same request id) until the Kingdom
/// answers, retrying transient failures until `deadline`: a retry after a lost answer gets
/// the measurement the first attempt created.
pub async fn send_create(
    kingdom: Channel,
    request: &admin::CreateMeasurementRequest,
    deadline: Instant,
) -> Result<admin::Measurement> {
    let client = admin::measurements_client::MeasurementsClient::new(kingdom);
    let m = retry::retry("CreateMeasurement", deadline.into(), || {
        let mut client = client.clone();
        let request = request.clone();
        async move { client.create_measurement(request).await }
    })
    .await?
    .into_inner();
    Ok(m)
}

pub fn is_terminal(state: i32) -> bool {
    state == ComputationState::Succeeded as i32
        || state == ComputationState::Failed as i32
        || state == ComputationState::Cancelled as i32
}

/// Polls until the measurement is terminal, riding out Kingdom restarts (transient failures
/// are retried until `timeout` has passed).
pub async fn wait_until_done(
    kingdom: Channel,
    name: &str,
    timeout: Duration,
) -> Result<admin::Measurement> {
    let client = admin::measurements_client::MeasurementsClient::new(kingdom);
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        let m = retry::retry("GetMeasurement", deadline.into(), || {
            let mut client = client.clone();
            let request = admin::GetMeasurementRequest {
                name: name.to_string(),
            };
            async move { client.get_measurement(request).await }
        })
        .await?
        .into_inner();
        if is_terminal(m.state) {
            return Ok(m);
        }
        if start.elapsed() > timeout {
            bail!(
                "measurement {name} still {} after {timeout:?}",
                state_name(m.state)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fetches certificate `name` (DER) from the Kingdom's Certificates service and checks that
/// it is the one the name's id (a digest of the DER) stands for. Transient failures are
/// retried for [`retry::DEFAULT_BUDGET`].
pub async fn fetch_certificate(kingdom: Channel, name: &str) -> Result<Vec<u8>> {
    fetch_certificate_until(kingdom, name, Instant::now() + retry::DEFAULT_BUDGET).await
}

/// [`fetch_certificate`], retrying transient failures until `deadline`.
pub async fn fetch_certificate_until(
    kingdom: Channel,
    name: &str,
    deadline: Instant,
) -> Result<Vec<u8>> {
    let client = admin::certificates_client::CertificatesClient::new(kingdom);
    let der = retry::retry("GetCertificate", deadline.into(), || {
        let mut client = client.clone();
        let request = admin::GetCertificateRequest {
            name: name.to_string(),
        };
        async move { client.get_certificate(request).await }
    })
    .await
    .with_context(|| format!("fetching certificate {name:?} from the Kingdom"))?
    .into_inner()
    .x509_der;
    let id = name.rsplit('/').next().unwrap_or_default();
    if halo_kingdom::certificate_id(&der) != id {
        bail!("the Kingdom served a certificate for {name} whose digest does not match its id");
    }
    Ok(der)
}

/// Extracts the nonce from a simulated requisition spec.
pub fn nonce_of(spec: &[u8]) -> Result<u64> {
    let b: [u8; 8] = spec
        .get(..8)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| anyhow!("requisition spec too short"))?;
    Ok(u64::from_be_bytes(b))
}

/// The name of a `Computation.State` value (`SUCCEEDED`, `FAILED`, ...).
pub fn state_name(state: i32) -> String {
    ComputationState::try_from(state)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_else(|_| format!("state {state}"))
}

/// What an HMSS measurement asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct HmssRequest {
    /// REACH instead of REACH_AND_FREQUENCY.
    pub reach_only: bool,
    /// Largest frequency bucket (R&F; values above are counted in it).
    pub max_frequency: u32,
    /// `NONE` measures exactly; otherwise `epsilon`/`delta` are the reach (and frequency)
    /// DP parameters.
    pub noise: NoiseMechanism,
    pub epsilon: f64,
    pub delta: f64,
    /// Ring modulus of both the reach and the R&F configuration.
    pub ring_modulus: i32,
    /// VID sampling interval: the data providers send the registers in
    /// `[start, start + width)` of the population and the reach is scaled by `1/width`.
    pub vid_sampling_start: f32,
    pub vid_sampling_width: f32,
}

impl Default for HmssRequest {
    fn default() -> Self {
        HmssRequest {
            reach_only: false,
            max_frequency: 3,
            noise: NoiseMechanism::None,
            epsilon: 1.0,
            delta: 1e-9,
            ring_modulus: 127,
            vid_sampling_start: 0.0,
            vid_sampling_width: 1.0,
        }
    }
}

impl HmssRequest {
    /// The maximum frequency the measurement reports (1 for reach-only).
    pub fn effective_max_frequency(&self) -> u32 {
        if self.reach_only {
            1
        } else {
            self.max_frequency
        }
    }

    /// The measurement spec, with the consumer's X25519 `public_key`.
    pub fn spec(&self, public_key: &[u8]) -> Result<admin::MeasurementSpec> {
        use admin::measurement_spec::Type;
        let dp = (self.noise != NoiseMechanism::None).then_some(DifferentialPrivacyParams {
            epsilon: self.epsilon,
            delta: self.delta,
        });
        Ok(admin::MeasurementSpec {
            measurement_public_key: public_key.to_vec(),
            r#type: if self.reach_only {
                Type::Reach as i32
            } else {
                Type::ReachAndFrequency as i32
            },
            maximum_frequency: i32::try_from(self.effective_max_frequency())
                .context("maximum frequency out of range")?,
            reach_privacy_params: dp,
            frequency_privacy_params: if self.reach_only { None } else { dp },
            vid_sampling_interval_start: self.vid_sampling_start,
            vid_sampling_interval_width: self.vid_sampling_width,
            nonce_hashes: vec![],
            simulation: Default::default(),
        })
    }

    /// The HMSS protocol configuration (ring moduli, noise mechanism).
    pub fn protocol_config(&self) -> MpcProtocolConfig {
        MpcProtocolConfig {
            protocol: Some(MpcProtocol::HonestMajorityShareShuffle(
                HonestMajorityShareShuffle {
                    reach_and_frequency_ring_modulus: self.ring_modulus,
                    reach_ring_modulus: self.ring_modulus,
                    noise_mechanism: self.noise as i32,
                },
            )),
        }
    }
}

/// An HMSS measurement created by a consumer that holds the key its result is sealed to.
pub struct HmssMeasurement {
    pub created: CreatedMeasurement,
    pub spec: admin::MeasurementSpec,
    secret_key: [u8; crate::hmss::KEY_LEN],
}

/// Creates an HMSS measurement over `data_providers` as consumer `mc` (`kingdom` is a
/// channel authenticated as `mc`), with a fresh X25519 result key pair, retrying transient
/// failures for [`retry::DEFAULT_BUDGET`].
pub async fn create_hmss_measurement<R: CryptoRng>(
    kingdom: Channel,
    mc: &str,
    data_providers: &[String],
    request: &HmssRequest,
    rng: &mut R,
) -> Result<HmssMeasurement> {
    let deadline = Instant::now() + retry::DEFAULT_BUDGET;
    create_hmss_measurement_until(kingdom, mc, data_providers, request, deadline, rng).await
}

/// [`create_hmss_measurement`], retrying transient failures until `deadline`.
pub async fn create_hmss_measurement_until<R: CryptoRng>(
    kingdom: Channel,
    mc: &str,
    data_providers: &[String],
    request: &HmssRequest,
    deadline: Instant,
    rng: &mut R,
) -> Result<HmssMeasurement> {
    if data_providers.is_empty() {
        bail!("at least one data provider is required");
    }
    let (secret_key, public_key) = crate::hmss::measurement_keypair(rng);
    let spec = request.spec(&public_key)?;
    let new = new_measurement(
        mc,
        SystemProtocol::HonestMajorityShareShuffle.admin(),
        spec.clone(),
        data_providers,
        Some(request.protocol_config()),
    );
    let measurement = send_create(kingdom, &new.request, deadline)
        .await
        .with_context(|| format!("{mc}: creating the measurement at the Kingdom"))?;
    Ok(HmssMeasurement {
        created: CreatedMeasurement {
            measurement,
            nonces: new.nonces,
        },
        spec,
        secret_key,
    })
}

impl HmssMeasurement {
    /// A measurement created with `secret_key` (its result is sealed to the matching public
    /// key); Liquid Legions v2 results are sealed the same way.
    pub fn new(
        created: CreatedMeasurement,
        spec: admin::MeasurementSpec,
        secret_key: [u8; crate::hmss::KEY_LEN],
    ) -> Self {
        HmssMeasurement {
            created,
            spec,
            secret_key,
        }
    }

    /// `measurementConsumers/{mc}/measurements/{m}`.
    pub fn name(&self) -> &str {
        &self.created.measurement.name
    }

    /// `computations/{c}`.
    pub fn computation(&self) -> &str {
        &self.created.measurement.computation
    }

    /// Waits until the measurement is terminal (in any state).
    pub async fn wait(&self, kingdom: Channel, timeout: Duration) -> Result<admin::Measurement> {
        wait_until_done(kingdom, self.name(), timeout)
            .await
            .with_context(|| format!("waiting for {}", self.name()))
    }

    /// Opens the result of a terminal measurement and checks the aggregator's signature on it
    /// (its certificate fetched from the Kingdom, checked against `trust`); an error names the
    /// state and the failure message unless it SUCCEEDED.
    pub async fn open(
        &self,
        kingdom: Channel,
        trust: &TrustStore,
        m: &admin::Measurement,
    ) -> Result<crate::hmss::HmssResult> {
        self.open_until(kingdom, trust, m, Instant::now() + retry::DEFAULT_BUDGET)
            .await
    }

    /// [`HmssMeasurement::open`], retrying transient failures until `deadline`.
    pub async fn open_until(
        &self,
        kingdom: Channel,
        trust: &TrustStore,
        m: &admin::Measurement,
        deadline: Instant,
    ) -> Result<crate::hmss::HmssResult> {
        if m.state != ComputationState::Succeeded as i32 {
            bail!(
                "measurement {} ended {}: {}",
                m.name,
                state_name(m.state),
                m.failure_message
            );
        }
        let (result, signed) = crate::hmss::open_result(&self.secret_key, &m.encrypted_result)
            .with_context(|| format!("opening the result of {}", m.name))?;
        let der = fetch_certificate_until(kingdom, &m.aggregator_certificate, deadline).await?;
        crate::hmss::verify_result(trust, &signed, &m.aggregator_certificate, &der)
            .with_context(|| format!("the result of {}", m.name))?;
        Ok(result)
    }

    /// Waits, then opens and verifies the result; Kingdom restarts are ridden out until
    /// `timeout` has passed.
    pub async fn result(
        &self,
        kingdom: Channel,
        trust: &TrustStore,
        timeout: Duration,
    ) -> Result<crate::hmss::HmssResult> {
        let deadline = Instant::now() + timeout;
        let m = self.wait(kingdom.clone(), timeout).await?;
        self.open_until(kingdom, trust, &m, deadline).await
    }
}
