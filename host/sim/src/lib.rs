//! A whole Halo deployment in one process, for tests and the demo: a Kingdom and three
//! duchies (`aggregator`, `worker1`, `worker2`) on loopback with a freshly generated PKI and
//! embedded storage in a directory, plus simulated measurement consumers and data providers
//! that talk to them over real gRPC with mutual TLS.

pub mod edp;
pub mod hmss;
pub mod llv2;
pub mod mc;
pub mod remote;
pub mod retry;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use halo_duchy::protocol::ProtocolRegistry;
use halo_duchy::{DuchyConfig, HeraldConfig, MillConfig, PeerDirectory, RunningDuchy};
use halo_identity::{DevPki, Identity, Principal, TrustStore};
use halo_kingdom::{CertEntry, DuchyEntry, KingdomConfig, RunningKingdom};
use halo_protocol::roles::{ProtocolDuchies, RoleConfig};
use tonic::transport::Channel;

pub use remote::Remote;

/// Builds the protocol registry a duchy serves, by duchy id.
pub type RegistryFn = Arc<dyn Fn(&str) -> Arc<dyn ProtocolRegistry> + Send + Sync>;

pub const DUCHIES: [&str; 3] = ["aggregator", "worker1", "worker2"];

/// A Kingdom configuration serving every principal of `pki` (duchies `aggregator`,
/// `worker1`, `worker2` in the standard roles).
pub fn kingdom_config(
    pki: &DevPki,
    data_dir: &Path,
    listen: std::net::SocketAddr,
) -> Result<KingdomConfig> {
    let identity = |p: &Principal| {
        pki.identity(p)
            .ok_or_else(|| anyhow!("no identity for {}", p.resource_name()))
    };
    let mut duchies = Vec::new();
    let mut data_providers = Vec::new();
    let mut measurement_consumers = Vec::new();
    for p in pki.principals() {
        match &p {
            Principal::Duchy(d) => duchies.push(DuchyEntry {
                id: d.clone(),
                certificate_der: identity(&p)?.certificate_der()?,
            }),
            Principal::DataProvider(d) => data_providers.push(CertEntry {
                id: d.clone(),
                certificate_der: identity(&p)?.certificate_der()?,
            }),
            Principal::MeasurementConsumer(m) => measurement_consumers.push(m.clone()),
            Principal::Kingdom => {}
        }
    }
    Ok(KingdomConfig {
        data_dir: data_dir.to_path_buf(),
        listen,
        identity: identity(&Principal::Kingdom)?.clone(),
        trust: pki.trust_store()?,
        duchies,
        data_providers,
        measurement_consumers,
        roles: standard_roles(),
        stream_poll_interval: Duration::from_millis(200),
        stream_max_duration: Duration::from_secs(600),
        default_protocol_config: Default::default(),
        tls_limits: Default::default(),
        limits: Default::default(),
    })
}

/// The roles of the demo deployment: `aggregator` aggregates every protocol; `worker1` and
/// `worker2` are the HMSS first and second non-aggregators and the LLv2 ring.
pub fn standard_roles() -> RoleConfig {
    let duchies = ProtocolDuchies {
        aggregator: DUCHIES[0].to_owned(),
        non_aggregators: vec![DUCHIES[1].to_owned(), DUCHIES[2].to_owned()],
    };
    RoleConfig {
        liquid_legions_v2: Some(duchies.clone()),
        reach_only_liquid_legions_v2: None,
        honest_majority_share_shuffle: Some(duchies),
    }
}

/// The standard principals of a demo deployment.
pub fn standard_principals(
    data_providers: &[String],
    measurement_consumer: &str,
) -> Vec<Principal> {
    let mut v = vec![Principal::Kingdom];
    v.extend(DUCHIES.iter().map(|d| Principal::Duchy(d.to_string())));
    v.extend(
        data_providers
            .iter()
            .map(|d| Principal::DataProvider(d.clone())),
    );
    v.push(Principal::MeasurementConsumer(
        measurement_consumer.to_string(),
    ));
    v
}

/// What to start.
pub struct ClusterOptions {
    pub dir: PathBuf,
    pub data_providers: Vec<String>,
    pub measurement_consumer: String,
    /// The protocol implementations each duchy serves (by duchy id).
    pub protocols: RegistryFn,
    pub mill: MillConfig,
    pub stream_max_duration: Duration,
    /// Duchies that get an identity in the PKI (and so are configured at the Kingdom) but
    /// are not started; HMSS computations do not include them (tests use them as
    /// authenticated non-participants).
    pub extra_duchies: Vec<String>,
    /// TLS handshake limits of every server (Kingdom and duchies).
    pub tls_limits: halo_identity::TlsServerLimits,
    /// Limits of the duchies' servers.
    pub duchy_limits: halo_duchy::DuchyLimits,
    /// Limits of the Kingdom's server.
    pub kingdom_limits: halo_kingdom::KingdomLimits,
}

impl ClusterOptions {
    pub fn new(dir: &Path, protocols: RegistryFn) -> Self {
        ClusterOptions {
            dir: dir.to_path_buf(),
            data_providers: vec!["edp1".into(), "edp2".into(), "edp3".into()],
            measurement_consumer: "mc1".into(),
            protocols,
            mill: MillConfig {
                poll: Duration::from_millis(100),
                ..MillConfig::default()
            },
            stream_max_duration: Duration::from_secs(600),
            extra_duchies: Vec::new(),
            tls_limits: Default::default(),
            duchy_limits: Default::default(),
            kingdom_limits: Default::default(),
        }
    }
}

pub struct Cluster {
    pub pki: DevPki,
    pub trust: TrustStore,
    pub kingdom: Option<RunningKingdom>,
    kingdom_listen: std::net::SocketAddr,
    pub duchies: HashMap<String, RunningDuchy>,
    pub peers: PeerDirectory,
    pub options: ClusterOptions,
}

fn all_principals(opts: &ClusterOptions) -> Vec<Principal> {
    let mut all = standard_principals(&opts.data_providers, &opts.measurement_consumer);
    all.extend(
        opts.extra_duchies
            .iter()
            .map(|d| Principal::Duchy(d.clone())),
    );
    all
}

impl Cluster {
    pub fn identity(&self, p: &Principal) -> Result<&Identity> {
        self.pki
            .identity(p)
            .ok_or_else(|| anyhow!("no identity for {}", p.resource_name()))
    }

    fn kingdom_config(&self) -> Result<KingdomConfig> {
        let mut cfg = kingdom_config(
            &self.pki,
            &self.options.dir.join("kingdom"),
            self.kingdom_listen,
        )?;
        cfg.stream_max_duration = self.options.stream_max_duration;
        cfg.tls_limits = self.options.tls_limits;
        cfg.limits = self.options.kingdom_limits;
        Ok(cfg)
    }

    /// Generates a PKI, starts the Kingdom and the three duchies.
    pub async fn start(options: ClusterOptions) -> Result<Cluster> {
        halo_identity::init_crypto();
        std::fs::create_dir_all(&options.dir)
            .with_context(|| format!("creating {}", options.dir.display()))?;
        let pki = DevPki::generate(&all_principals(&options))?;
        pki.write(&options.dir.join("pki"))?;
        let trust = pki.trust_store()?;
        let mut cluster = Cluster {
            pki,
            trust,
            kingdom: None,
            kingdom_listen: "127.0.0.1:0".parse()?,
            duchies: HashMap::new(),
            peers: PeerDirectory::default(),
            options,
        };
        let kingdom = RunningKingdom::start(cluster.kingdom_config()?).await?;
        cluster.kingdom_listen = kingdom.addr;
        cluster.kingdom = Some(kingdom);
        for d in DUCHIES {
            cluster.start_duchy(d).await?;
        }
        Ok(cluster)
    }

    pub fn kingdom_url(&self) -> String {
        format!("https://{}", self.kingdom_listen)
    }

    pub fn duchy_url(&self, id: &str) -> Option<String> {
        self.peers.get(id)
    }

    pub async fn start_duchy(&mut self, id: &str) -> Result<()> {
        let config = DuchyConfig {
            id: id.to_string(),
            data_dir: self.options.dir.join(format!("duchy-{id}")),
            listen: match self.peers.get(id) {
                Some(url) => url.trim_start_matches("https://").parse()?,
                None => "127.0.0.1:0".parse()?,
            },
            identity: self.identity(&Principal::Duchy(id.into()))?.clone(),
            trust: self.trust.clone(),
            kingdom_url: self.kingdom_url(),
            peers: self.peers.clone(),
            roles: standard_roles(),
            mill: self.options.mill.clone(),
            herald: HeraldConfig::default(),
            protocols: (self.options.protocols)(id),
            max_payload_bytes: halo_duchy::DEFAULT_MAX_PAYLOAD_BYTES,
            tls_limits: self.options.tls_limits,
            limits: self.options.duchy_limits,
        };
        let running = RunningDuchy::start(config).await?;
        self.peers.set(id, &format!("https://{}", running.addr));
        self.duchies.insert(id.to_string(), running);
        Ok(())
    }

    pub async fn stop_duchy(&mut self, id: &str) -> Result<()> {
        if let Some(d) = self.duchies.remove(id) {
            d.shutdown().await?;
        }
        Ok(())
    }

    pub async fn restart_kingdom(&mut self) -> Result<()> {
        if let Some(k) = self.kingdom.take() {
            k.shutdown().await?;
        }
        let k = RunningKingdom::start(self.kingdom_config()?).await?;
        self.kingdom = Some(k);
        Ok(())
    }

    /// A channel to the Kingdom authenticated as `who`.
    pub fn kingdom_channel(&self, who: &Principal) -> Result<Channel> {
        Ok(self
            .identity(who)?
            .channel(&self.trust, &Principal::Kingdom, &self.kingdom_url())?)
    }

    /// A channel to a duchy authenticated as `who`.
    pub fn duchy_channel(&self, who: &Principal, duchy: &str) -> Result<Channel> {
        let url = self
            .duchy_url(duchy)
            .ok_or_else(|| anyhow!("duchy {duchy} is not running"))?;
        Ok(self
            .identity(who)?
            .channel(&self.trust, &Principal::Duchy(duchy.to_owned()), &url)?)
    }

    pub async fn shutdown(mut self) -> Result<()> {
        for (_, d) in self.duchies.drain() {
            d.shutdown().await?;
        }
        if let Some(k) = self.kingdom.take() {
            k.shutdown().await?;
        }
        Ok(())
    }
}
