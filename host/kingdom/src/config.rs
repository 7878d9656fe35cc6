//! Kingdom configuration: the programmatic [`KingdomConfig`] and its TOML file form
//! [`KingdomFileConfig`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use halo_identity::{DevPki, Identity, Principal, TrustStore};
use halo_proto::system::v1alpha::DifferentialPrivacyParams;
use halo_proto::system::v1alpha::computation::MpcProtocolConfig;
use halo_proto::system::v1alpha::computation::mpc_protocol_config::{
    self as mpc, liquid_legions_v2 as llv2,
};
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
    /// Honest Majority Share Shuffle roles.
    pub hmss: HmssRoles,
    /// The aggregator of LLv2 and reach-only LLv2 computations (all configured duchies
    /// participate in those).
    pub llv2_aggregator: String,
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

/// Which duchies play which Honest Majority Share Shuffle role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmssRoles {
    pub first_non_aggregator: String,
    pub second_non_aggregator: String,
    pub aggregator: String,
}

impl HmssRoles {
    /// The non-aggregators in requisition-assignment order.
    pub fn non_aggregators(&self) -> [&str; 2] {
        [&self.first_non_aggregator, &self.second_non_aggregator]
    }
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
        let roles = [
            ("hmss.first_non_aggregator", &self.hmss.first_non_aggregator),
            (
                "hmss.second_non_aggregator",
                &self.hmss.second_non_aggregator,
            ),
            ("hmss.aggregator", &self.hmss.aggregator),
            ("llv2_aggregator", &self.llv2_aggregator),
        ];
        for (role, id) in roles {
            ensure!(
                duchies.contains(id.as_str()),
                "{role} = {id:?} is not a configured duchy"
            );
        }
        ensure!(
            self.hmss.first_non_aggregator != self.hmss.second_non_aggregator
                && self.hmss.first_non_aggregator != self.hmss.aggregator
                && self.hmss.second_non_aggregator != self.hmss.aggregator,
            "the three HMSS roles must be played by three different duchies"
        );
        ensure!(
            !self.stream_poll_interval.is_zero(),
            "stream_poll_interval must be positive"
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

/// The TOML form of the Kingdom configuration (`halo kingdom --config FILE`).
///
/// ```toml
/// data_dir = "/var/lib/halo/kingdom"
/// listen = "127.0.0.1:7000"
/// pki_dir = "/var/lib/halo/pki"          # written by `DevPki::write`
/// duchies = ["aggregator", "worker1", "worker2"]
/// data_providers = ["edp1", "edp2"]
/// measurement_consumers = ["mc1"]
/// llv2_aggregator = "aggregator"
/// stream_poll_interval_ms = 200            # optional
/// stream_max_duration_secs = 600           # optional
///
/// [hmss]                                   # optional: default aggregator = llv2_aggregator,
/// first_non_aggregator = "worker1"         # non-aggregators = the first two other duchies
/// second_non_aggregator = "worker2"
/// aggregator = "aggregator"
///
/// [protocols.honest_majority_share_shuffle]  # optional overrides of the defaults
/// reach_ring_modulus = 127
/// ```
///
/// Relative paths are resolved against the directory of the file when loaded with
/// [`KingdomFileConfig::load`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KingdomFileConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub pki_dir: PathBuf,
    pub duchies: Vec<String>,
    #[serde(default)]
    pub data_providers: Vec<String>,
    #[serde(default)]
    pub measurement_consumers: Vec<String>,
    pub llv2_aggregator: String,
    #[serde(default)]
    pub hmss: Option<HmssRoles>,
    #[serde(default)]
    pub stream_poll_interval_ms: Option<u64>,
    #[serde(default)]
    pub stream_max_duration_secs: Option<u64>,
    #[serde(default)]
    pub protocols: DefaultProtocolConfigs,
}

impl KingdomFileConfig {
    /// Parses TOML text (no path resolution).
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text).context("invalid kingdom configuration")
    }

    /// Reads and parses a file; relative `data_dir` / `pki_dir` are resolved against the
    /// file's directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading kingdom configuration {}", path.display()))?;
        let mut config = Self::from_toml(&text)
            .with_context(|| format!("in kingdom configuration {}", path.display()))?;
        if let Some(base) = path.parent() {
            config.data_dir = base.join(&config.data_dir);
            config.pki_dir = base.join(&config.pki_dir);
        }
        Ok(config)
    }

    /// Loads the PKI directory and builds the [`KingdomConfig`].
    pub fn into_config(self) -> anyhow::Result<KingdomConfig> {
        let pki = DevPki::load(&self.pki_dir)
            .with_context(|| format!("loading PKI from {}", self.pki_dir.display()))?;
        let identity = pki
            .identity(&Principal::Kingdom)
            .ok_or_else(|| anyhow!("PKI {} has no kingdom identity", self.pki_dir.display()))?
            .clone();
        let trust = pki.trust_store().context("building the trust store")?;
        let der_of = |p: Principal| -> anyhow::Result<Vec<u8>> {
            let id = pki
                .identity(&p)
                .ok_or_else(|| anyhow!("PKI {} has no identity for {p}", self.pki_dir.display()))?;
            id.certificate_der()
                .with_context(|| format!("reading the certificate of {p}"))
        };
        let duchies = self
            .duchies
            .iter()
            .map(|id| {
                Ok(DuchyEntry {
                    id: id.clone(),
                    certificate_der: der_of(Principal::Duchy(id.clone()))?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let data_providers = self
            .data_providers
            .iter()
            .map(|id| {
                Ok(CertEntry {
                    id: id.clone(),
                    certificate_der: der_of(Principal::DataProvider(id.clone()))?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let hmss = match self.hmss {
            Some(h) => h,
            None => {
                let others: Vec<&String> = self
                    .duchies
                    .iter()
                    .filter(|d| **d != self.llv2_aggregator)
                    .collect();
                let [first, second, ..] = others.as_slice() else {
                    bail!("HMSS needs two non-aggregator duchies; configure [hmss] explicitly");
                };
                HmssRoles {
                    first_non_aggregator: (*first).clone(),
                    second_non_aggregator: (*second).clone(),
                    aggregator: self.llv2_aggregator.clone(),
                }
            }
        };
        let config = KingdomConfig {
            data_dir: self.data_dir,
            listen: self.listen,
            identity,
            trust,
            duchies,
            data_providers,
            measurement_consumers: self.measurement_consumers,
            hmss,
            llv2_aggregator: self.llv2_aggregator,
            stream_poll_interval: self
                .stream_poll_interval_ms
                .map_or(DEFAULT_STREAM_POLL_INTERVAL, Duration::from_millis),
            stream_max_duration: self
                .stream_max_duration_secs
                .map_or(DEFAULT_STREAM_MAX_DURATION, Duration::from_secs),
            default_protocol_config: self.protocols,
            tls_limits: Default::default(),
            limits: KingdomLimits::default(),
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki_dir() -> (tempfile::TempDir, DevPki) {
        let principals = [
            Principal::Kingdom,
            Principal::Duchy("aggregator".into()),
            Principal::Duchy("worker1".into()),
            Principal::Duchy("worker2".into()),
            Principal::DataProvider("edp1".into()),
            Principal::MeasurementConsumer("mc1".into()),
        ];
        let pki = DevPki::generate(&principals).unwrap();
        let dir = tempfile::tempdir().unwrap();
        pki.write(&dir.path().join("pki")).unwrap();
        (dir, pki)
    }

    #[test]
    fn file_config_loads_pki_and_derives_hmss_roles() {
        let (dir, pki) = pki_dir();
        let path = dir.path().join("kingdom.toml");
        std::fs::write(
            &path,
            r#"
data_dir = "data"
listen = "127.0.0.1:0"
pki_dir = "pki"
duchies = ["aggregator", "worker1", "worker2"]
data_providers = ["edp1"]
measurement_consumers = ["mc1"]
llv2_aggregator = "aggregator"
stream_poll_interval_ms = 50

[protocols.honest_majority_share_shuffle]
reach_ring_modulus = 31
noise_mechanism = "NONE"
"#,
        )
        .unwrap();
        let config = KingdomFileConfig::load(&path)
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(config.data_dir, dir.path().join("data"));
        assert_eq!(config.stream_poll_interval, Duration::from_millis(50));
        assert_eq!(config.stream_max_duration, DEFAULT_STREAM_MAX_DURATION);
        assert_eq!(
            config.hmss,
            HmssRoles {
                first_non_aggregator: "worker1".into(),
                second_non_aggregator: "worker2".into(),
                aggregator: "aggregator".into(),
            }
        );
        assert_eq!(config.identity.principal, Principal::Kingdom);
        let worker1 = pki
            .identity(&Principal::Duchy("worker1".into()))
            .unwrap()
            .certificate_der()
            .unwrap();
        assert_eq!(config.duchies[1].certificate_der, worker1);
        assert_eq!(config.data_providers[0].id, "edp1");
        let h = &config.default_protocol_config.honest_majority_share_shuffle;
        assert_eq!(h.reach_ring_modulus, 31);
        assert_eq!(h.reach_and_frequency_ring_modulus, 127);
        assert_eq!(h.noise_mechanism, NoiseMechanism::None);
    }

    #[test]
    fn file_config_rejects_unknown_fields_and_bad_roles() {
        let base = r#"
data_dir = "data"
listen = "127.0.0.1:0"
pki_dir = "pki"
duchies = ["aggregator", "worker1", "worker2"]
llv2_aggregator = "aggregator"
"#;
        assert!(KingdomFileConfig::from_toml(base).is_ok());
        assert!(KingdomFileConfig::from_toml(&format!("{base}\ncolour = 1\n")).is_err());
        assert!(
            KingdomFileConfig::from_toml(&format!(
                "{base}\n[protocols.liquid_legions_v2]\nsize = 3\n"
            ))
            .is_err()
        );

        let (dir, _pki) = pki_dir();
        let mut config = KingdomFileConfig::from_toml(base).unwrap();
        config.pki_dir = dir.path().join("pki");
        config.llv2_aggregator = "nobody".into();
        config.hmss = Some(HmssRoles {
            first_non_aggregator: "worker1".into(),
            second_non_aggregator: "worker2".into(),
            aggregator: "aggregator".into(),
        });
        let err = config.into_config().unwrap_err();
        assert!(format!("{err:#}").contains("llv2_aggregator"), "{err:#}");

        let mut config = KingdomFileConfig::from_toml(base).unwrap();
        config.pki_dir = dir.path().join("pki");
        config.duchies.push("worker9".into());
        let err = config.into_config().unwrap_err();
        assert!(format!("{err:#}").contains("worker9"), "{err:#}");
    }
}
