//! `halo edp`: a data provider against running servers. It takes its audience from the
//! synthetic population model (`halo_sim::hmss::population`), waits for its requisitions at
//! the Kingdom and fulfils every one at the duchy the Kingdom names: an HMSS frequency vector
//! secret-shared, or a Liquid Legions v2 sketch encrypted under the duchies' combined key
//! (after checking each duchy's signature on its key).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use halo_identity::Principal;
use halo_protocol::SystemProtocol;

use crate::parse_peer;

/// The synthetic population a data provider takes its frequency vector from. Every provider
/// (and `halo mc --truth-seed`) must use the same values to get a consistent population.
#[derive(clap::Args, Debug, Clone)]
pub struct PopulationArgs {
    /// Seed of the synthetic population.
    #[arg(long, env = "HALO_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Number of data providers in the population model.
    #[arg(long, env = "HALO_PROVIDERS", default_value_t = 3)]
    pub providers: usize,
    /// Registers (population slots) of the frequency vector.
    #[arg(long, env = "HALO_REGISTERS", default_value_t = 100_000)]
    pub registers: usize,
    /// Largest per-provider frequency in the population.
    #[arg(long, env = "HALO_MAX_FREQUENCY", default_value_t = 3)]
    pub max_frequency: u32,
    /// Share of the reached registers every provider reaches (the rest belong to one).
    #[arg(long, env = "HALO_OVERLAP", default_value_t = 0.3)]
    pub overlap: f64,
}

impl PopulationArgs {
    /// Checks the values and generates every provider's frequency vector.
    pub fn vectors(&self) -> Result<Vec<Vec<u32>>> {
        if self.providers == 0 || self.registers == 0 {
            bail!("--providers and --registers must be positive");
        }
        if self.max_frequency == 0 {
            bail!("--max-frequency must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.overlap) {
            bail!("--overlap {} must be between 0 and 1", self.overlap);
        }
        Ok(halo_sim::hmss::population(
            self.seed,
            self.providers,
            self.registers,
            self.max_frequency,
            self.overlap,
        ))
    }

    /// Which provider of the population `id` is: `index`, or the id's trailing number − 1.
    pub fn index_of(&self, id: &str, index: Option<usize>) -> Result<usize> {
        let i = match index.or_else(|| halo_sim::hmss::provider_index(id)) {
            Some(i) => i,
            None => bail!(
                "cannot tell which provider of the population {id:?} is: the id does not end \
                 in a number ≥ 1 (edp1 → 0, edp2 → 1, ...); pass --index (0-based)"
            ),
        };
        if i >= self.providers {
            bail!(
                "{id} is provider {i} (0-based) but the population has only {} (--providers)",
                self.providers
            );
        }
        Ok(i)
    }
}

/// Data-provider simulator (HMSS, LLv2, RO-LLv2): fulfils this provider's requisitions.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "halo edp")]
pub struct EdpArgs {
    /// PKI directory (`halo pki --out DIR`, or DIR/pki of `halo demo --out DIR`).
    #[arg(long, env = "HALO_PKI")]
    pub pki: PathBuf,
    /// Data provider id (a principal of the PKI).
    #[arg(long, env = "HALO_EDP_ID", default_value = "edp1")]
    pub id: String,
    /// Kingdom URL.
    #[arg(long, env = "HALO_KINGDOM", default_value = "https://127.0.0.1:7000")]
    pub kingdom: String,
    /// Duchy RequisitionFulfillment addresses: ID=URL (repeatable, or comma-separated).
    #[arg(long = "duchy", env = "HALO_DUCHIES", value_delimiter = ',', value_parser = parse_peer)]
    pub duchies: Vec<(String, String)>,
    #[command(flatten)]
    pub population: PopulationArgs,
    /// Which provider of the population this is, 0-based (default: the id's trailing
    /// number − 1, e.g. edp2 → 1).
    #[arg(long, env = "HALO_EDP_INDEX")]
    pub index: Option<usize>,
    /// How long to poll the Kingdom for requisitions before giving up, in seconds. Also
    /// bounds retries (with backoff) while the Kingdom or a duchy is unreachable or
    /// restarting, with or without --once.
    #[arg(long, env = "HALO_WAIT_SECS", default_value_t = 60)]
    pub wait_secs: u64,
    /// List the requisitions once, fulfil those listed (maybe none) and exit.
    #[arg(long, env = "HALO_ONCE")]
    pub once: bool,
}

/// One fulfilled requisition.
#[derive(Debug, Clone)]
pub struct Fulfilled {
    /// `dataProviders/{dp}/requisitions/{r}`.
    pub requisition: String,
    /// `computations/{c}`.
    pub computation: String,
    /// The duchy the data went to.
    pub duchy: String,
    /// Registers sent (HMSS frequency-vector entries; LLv2 sketch registers).
    pub registers: usize,
    /// Bytes of the body.
    pub bytes: usize,
}

/// Runs the data provider: HMSS or Liquid Legions v2 (reach-only or not), whichever its
/// requisitions are for; prints one line per fulfilled requisition and returns them.
pub async fn run(args: EdpArgs) -> Result<Vec<Fulfilled>> {
    let index = args.population.index_of(&args.id, args.index)?;
    let mut vectors = args.population.vectors()?;
    let vector = vectors.swap_remove(index);
    let remote = halo_sim::Remote::load(&args.pki, &args.kingdom, args.duchies.clone())?;
    let who = Principal::DataProvider(args.id.clone());
    let wait = (!args.once).then(|| Duration::from_secs(args.wait_secs));
    let deadline = Instant::now() + Duration::from_secs(args.wait_secs);
    let reached = vector.iter().filter(|&&x| x > 0).count();
    eprintln!(
        "{}: provider {index} of {}, {} registers ({reached} reached); {}",
        args.id,
        args.population.providers,
        vector.len(),
        match wait {
            Some(t) => format!("waiting up to {}s for requisitions", t.as_secs()),
            None => "listing requisitions once".to_string(),
        }
    );
    let kingdom = remote.kingdom_channel(&who)?;
    // Which protocol: the first listed requisition's (polling until one is listed).
    let listed = loop {
        let reqs = halo_sim::edp::list_until(kingdom.clone(), &args.id, deadline).await?;
        if !reqs.is_empty() || args.once || Instant::now() >= deadline {
            break reqs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let liquid_legions = listed.first().is_some_and(|r| {
        r.computation
            .as_ref()
            .and_then(|c| c.mpc_protocol_config.as_ref())
            .and_then(|m| m.protocol.as_ref())
            .and_then(|p| SystemProtocol::of_mpc_config(p).ok())
            .is_some_and(|p| p != SystemProtocol::HonestMajorityShareShuffle)
    });
    let done: Vec<Fulfilled> = if liquid_legions {
        halo_sim::llv2::fulfill_llv2_requisitions_until(
            kingdom,
            remote.identity(&who)?,
            remote.trust(),
            |duchy: &str| remote.duchy_channel(&who, duchy),
            &vector,
            !args.once,
            deadline,
        )
        .await?
        .into_iter()
        .map(|f| Fulfilled {
            requisition: f.requisition,
            computation: f.computation,
            duchy: f.duchy,
            registers: f.registers,
            bytes: f.bytes,
        })
        .collect()
    } else {
        let mut rng = rand::rng();
        halo_sim::edp::fulfill_hmss_requisitions_until(
            kingdom,
            remote.identity(&who)?,
            |duchy: &str| remote.duchy_channel(&who, duchy),
            &vector,
            !args.once,
            deadline,
            &mut rng,
        )
        .await?
        .into_iter()
        .map(|f| Fulfilled {
            requisition: f.requisition,
            computation: f.computation,
            duchy: f.duchy,
            registers: f.registers,
            bytes: f.bytes,
        })
        .collect()
    };
    if done.is_empty() {
        println!("{}: no requisition to fulfil", args.id);
    }
    for f in &done {
        println!(
            "{}: fulfilled {} at {}: {} registers, {} bytes",
            args.id, f.requisition, f.duchy, f.registers, f.bytes
        );
    }
    Ok(done)
}
