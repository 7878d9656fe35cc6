//! Kingdom configuration: the programmatic [`KingdomConfig`] and its TOML file form
//! [`KingdomFileConfig`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::ensure;
use halo_identity::{Identity, TrustStore};
use halo_proto::system::v1alpha::DifferentialPrivacyParams;
use halo_proto::system::v1alpha::computation::MpcProtocolConfig;
use halo_proto::system::v1alpha::computation::mpc_protocol_config::{
    self as mpc, liquid_legions_v2 as llv2,
};
use halo_protocol::roles::RoleConfig;
use serde::{Deserialize, Serialize};

/// Default fallback poll interval of `StreamActiveComputations`.
pub const DEFAULT_STREAM_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Default lifetime of one `StreamActiveComputations` call (the reference's `streamingTimeout`).
pub const DEFAULT_STREAM_MAX_DURATION: Duration = Duration::from_secs(600);

/// Everything the Kingdom server needs.
#[derive(Clone, Debug)]
pub struct KingdomConfig {
    /// The SQLite database lives at `data_dir/kingdom.db` (created if missing).
    pub data_dir: PathBuf,
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// The server's TLS identity.
    pub identity: Identity,
    /// Roots every caller's client certificate must chain to (mTLS is required).
    pub trust: TrustStore,
    /// All duchies known to the Kingdom, in a fixed order (LLv2 participant order).
    pub duchies: Vec<DuchyEntry>,
    /// Data providers and their certificates.
    pub data_providers: Vec<CertEntry>,
    /// Measurement consumer ids allowed to create measurements.
    pub measurement_consumers: Vec<String>,
    /// Which duchies play which role, per protocol (the operator's roles file). A protocol
    /// without roles is not offered; a configured duchy named in no role takes part in
    /// nothing.
    pub roles: RoleConfig,
    /// Fallback poll interval of `StreamActiveComputations`; streams also wake on every commit
    /// that changes a computation.
    pub stream_poll_interval: Duration,
    /// A `StreamActiveComputations` call ends normally (OK) after this long.
    pub stream_max_duration: Duration,
    /// Protocol parameters used when `CreateMeasurement` carries none.
    pub default_protocol_config: DefaultProtocolConfigs,
    /// TLS handshake timeout and concurrent handshakes.
    pub tls_limits: halo_identity::TlsServerLimits,
    /// Connection, stream and page-size limits.
    pub limits: KingdomLimits,
}

/// Resource limits of the Kingdom's server (see README "Limits").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KingdomLimits {
    /// Message size, HTTP/2 streams per connection, idle timeout.
    pub server: halo_limits::ServerLimits,
    /// Concurrent `StreamActiveComputations` calls one duchy may have open.
    pub max_active_streams_per_duchy: usize,
    /// Largest `page_size` of a list call (larger is clamped to it).
    pub max_page_size: usize,
    /// `page_size` of a list call that sets none.
    pub default_page_size: usize,
}

impl Default for KingdomLimits {
    fn default() -> Self {
        KingdomLimits {
            server: halo_limits::ServerLimits {
                max_message_bytes: halo_limits::KINGDOM_MAX_MESSAGE_BYTES,
                ..halo_limits::ServerLimits::default()
            },
            max_active_streams_per_duchy: 4,
            max_page_size: 1000,
            default_page_size: 50,
        }
    }
}

/// A duchy and its (single) certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuchyEntry {
    pub id: String,
    pub certificate_der: Vec<u8>,
}

/// A principal id and its (single) certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertEntry {
    pub id: String,
    pub certificate_der: Vec<u8>,
}

/// Noise mechanism names as in the system `Computation.MpcProtocolConfig.NoiseMechanism`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NoiseMechanism {
    Geometric,
    DiscreteGaussian,
    ContinuousGaussian,
    None,
    DeterministicTruncatedLaplace,
}

impl NoiseMechanism {
    fn to_proto(self) -> mpc::NoiseMechanism {
        match self {
            NoiseMechanism::Geometric => mpc::NoiseMechanism::Geometric,
            NoiseMechanism::DiscreteGaussian => mpc::NoiseMechanism::DiscreteGaussian,
            NoiseMechanism::ContinuousGaussian => mpc::NoiseMechanism::ContinuousGaussian,
            NoiseMechanism::None => mpc::NoiseMechanism::None,
            NoiseMechanism::DeterministicTruncatedLaplace => {
                mpc::NoiseMechanism::DeterministicTruncatedLaplace
            }
        }
    }
}

/// `(epsilon, delta)` of a differentially private mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpParams {
    pub epsilon: f64,
    pub delta: f64,
}

impl DpParams {
    fn to_proto(self) -> DifferentialPrivacyParams {
        DifferentialPrivacyParams {
            epsilon: self.epsilon,
            delta: self.delta,
        }
    }
}

/// Liquid Legions v2 (and reach-only LLv2) parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiquidLegionsV2Defaults {
    pub decay_rate: f64,
    pub max_size: i64,
    /// OpenSSL NID of the curve (415 = prime256v1).
    pub elliptic_curve_id: i32,
    pub noise_mechanism: NoiseMechanism,
    pub blinded_histogram_noise: DpParams,
    pub publisher_noise: DpParams,
}

impl Default for LiquidLegionsV2Defaults {
    /// The reference's test configuration (`llv2_protocol_config_config.textproto`).
    fn default() -> Self {
        Self {
            decay_rate: 5.6,
            max_size: 1_000_000,
            elliptic_curve_id: 415,
            noise_mechanism: NoiseMechanism::DiscreteGaussian,
            blinded_histogram_noise: DpParams {
                epsilon: 1.0,
                delta: 1.0,
            },
            publisher_noise: DpParams {
                epsilon: 1.0,
                delta: 1.0,
            },
        }
    }
}

impl LiquidLegionsV2Defaults {
    fn to_proto(&self) -> mpc::LiquidLegionsV2 {
        mpc::LiquidLegionsV2 {
            sketch_params: Some(llv2::LiquidLegionsSketchParams {
                decay_rate: self.decay_rate,
                max_size: self.max_size,
            }),
            mpc_noise: Some(llv2::MpcNoise {
                blinded_histogram_noise: Some(self.blinded_histogram_noise.to_proto()),
                publisher_noise: Some(self.publisher_noise.to_proto()),
            }),
            elliptic_curve_id: self.elliptic_curve_id,
            noise_mechanism: self.noise_mechanism.to_proto() as i32,
            ..Default::default()
        }
    }
}

/// Honest Majority Share Shuffle parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HmssDefaults {
    pub reach_and_frequency_ring_modulus: i32,
    pub reach_ring_modulus: i32,
    pub noise_mechanism: NoiseMechanism,
}

impl Default for HmssDefaults {
    /// The reference's test configuration (`hmss_protocol_config_config.textproto`).
    fn default() -> Self {
        Self {
            reach_and_frequency_ring_modulus: 127,
            reach_ring_modulus: 127,
            noise_mechanism: NoiseMechanism::DiscreteGaussian,
        }
    }
}

/// Protocol parameters used when `CreateMeasurement` carries no `protocol_config`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultProtocolConfigs {
    pub liquid_legions_v2: LiquidLegionsV2Defaults,
    pub reach_only_liquid_legions_v2: LiquidLegionsV2Defaults,
    pub honest_majority_share_shuffle: HmssDefaults,
}

impl DefaultProtocolConfigs {
    /// The system `MpcProtocolConfig` of `protocol`.
    pub fn for_protocol(&self, protocol: halo_protocol::SystemProtocol) -> MpcProtocolConfig {
        use halo_protocol::SystemProtocol as P;
        match protocol {
            P::LiquidLegionsV2 => self.liquid_legions_v2(),
            P::ReachOnlyLiquidLegionsV2 => self.reach_only_liquid_legions_v2(),
            P::HonestMajorityShareShuffle => self.honest_majority_share_shuffle(),
        }
    }

    /// The system `MpcProtocolConfig` of each protocol.
    pub fn liquid_legions_v2(&self) -> MpcProtocolConfig {
        MpcProtocolConfig {
            protocol: Some(mpc::Protocol::LiquidLegionsV2(
                self.liquid_legions_v2.to_proto(),
            )),
        }
    }

    pub fn reach_only_liquid_legions_v2(&self) -> MpcProtocolConfig {
        MpcProtocolConfig {
            protocol: Some(mpc::Protocol::ReachOnlyLiquidLegionsV2(
                self.reach_only_liquid_legions_v2.to_proto(),
            )),
        }
    }

    pub fn honest_majority_share_shuffle(&self) -> MpcProtocolConfig {
        let h = &self.honest_majority_share_shuffle;
        MpcProtocolConfig {
            protocol: Some(mpc::Protocol::HonestMajorityShareShuffle(
                mpc::HonestMajorityShareShuffle {
                    reach_and_frequency_ring_modulus: h.reach_and_frequency_ring_modulus,
                    reach_ring_modulus: h.reach_ring_modulus,
                    noise_mechanism: h.noise_mechanism.to_proto() as i32,
                },
            )),
        }
    }
}

impl KingdomConfig {
    /// Checks internal consistency: unique valid ids, roles naming configured duchies.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(!self.duchies.is_empty(), "no duchies configured");
        let duchies = unique_ids("duchy", self.duchies.iter().map(|d| d.id.as_str()))?;
        unique_ids(
            "data provider",
            self.data_providers.iter().map(|d| d.id.as_str()),
        )?;
        unique_ids(
            "measurement consumer",
            self.measurement_consumers.iter().map(String::as_str),
        )?;
        for d in &self.duchies {
            ensure!(
                !d.certificate_der.is_empty(),
                "duchy {} has an empty certificate",
                d.id
            );
        }
        for d in &self.data_providers {
            ensure!(
                !d.certificate_der.is_empty(),
                "data provider {} has an empty certificate",
                d.id
            );
        }
        let known: Vec<String> = duchies.iter().map(|d| (*d).to_owned()).collect();
        self.roles.validate(Some(&known))?;
        ensure!(
            !self.roles.protocols().is_empty(),
            "no protocol has roles: configure at least one table of the roles file"
        );
        ensure!(
            !self.stream_poll_interval.is_zero()
                && self.stream_poll_interval <= Duration::from_secs(60),
            "stream_poll_interval must be between 1 ms and 60 s"
        );
        // A zero lifetime would end every stream before its first item (heralds would learn of
        // nothing); an enormous one overflows the stream's deadline.
        ensure!(
            self.stream_max_duration >= Duration::from_millis(100)
                && self.stream_max_duration <= Duration::from_secs(86_400),
            "stream_max_duration must be between 100 ms and 1 day"
        );
        ensure!(
            self.limits.max_page_size >= 1 && self.limits.default_page_size >= 1,
            "max_page_size and default_page_size must be at least 1"
        );
        Ok(())
    }
}

fn unique_ids<'a>(
    what: &str,
    ids: impl Iterator<Item = &'a str>,
) -> anyhow::Result<HashSet<&'a str>> {
    let mut seen = HashSet::new();
    for id in ids {
        ensure!(
            crate::names::valid_id_segment(id),
            "invalid {what} id {id:?} (ASCII letters, digits, '-', '_', '.')"
        );
        ensure!(seen.insert(id), "duplicate {what} id {id:?}");
    }
    Ok(seen)
}
