//! Channels to separately running servers (`halo kingdom`, `halo duchy`, or `halo demo
//! --keep-running`), authenticated with an identity from a PKI directory on disk.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use halo_identity::{DevPki, Principal, TrustStore};
use tonic::transport::Channel;

/// A PKI loaded from a directory plus the addresses of the Kingdom and the duchies.
pub struct Remote {
    pki: DevPki,
    trust: TrustStore,
    kingdom_url: String,
    duchies: HashMap<String, String>,
}

impl Remote {
    /// Loads the PKI written by `halo pki --out DIR` (or `halo demo --out DIR`, into
    /// `DIR/pki`). `duchies` maps duchy ids to their URLs (`https://host:port`).
    pub fn load(
        pki_dir: &Path,
        kingdom_url: &str,
        duchies: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Remote> {
        halo_identity::init_crypto();
        let pki = DevPki::load(pki_dir)
            .with_context(|| format!("loading the PKI from {}", pki_dir.display()))?;
        let trust = pki.trust_store()?;
        Ok(Remote {
            pki,
            trust,
            kingdom_url: kingdom_url.to_string(),
            duchies: duchies.into_iter().collect(),
        })
    }

    pub fn kingdom_url(&self) -> &str {
        &self.kingdom_url
    }

    /// The trusted roots of the PKI.
    pub fn trust(&self) -> &TrustStore {
        &self.trust
    }

    /// `who`'s identity from the PKI.
    pub fn identity(&self, who: &Principal) -> Result<&halo_identity::Identity> {
        self.pki.identity(who).ok_or_else(|| {
            anyhow!(
                "the PKI has no identity for {} (principals: {})",
                who.resource_name(),
                self.pki
                    .principals()
                    .iter()
                    .map(|p| p.resource_name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    /// A channel to the Kingdom authenticated as `who`.
    pub fn kingdom_channel(&self, who: &Principal) -> Result<Channel> {
        self.identity(who)?
            .channel(&self.trust, &Principal::Kingdom, &self.kingdom_url)
            .with_context(|| format!("Kingdom URL {:?}", self.kingdom_url))
    }

    /// A channel to duchy `duchy` authenticated as `who`.
    pub fn duchy_channel(&self, who: &Principal, duchy: &str) -> Result<Channel> {
        let url = self.duchies.get(duchy).ok_or_else(|| {
            let mut known: Vec<&str> = self.duchies.keys().map(String::as_str).collect();
            known.sort_unstable();
            anyhow!(
                "no address for duchy {duchy:?}: pass --duchy {duchy}=https://HOST:PORT \
                 (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })?;
        self.identity(who)?
            .channel(&self.trust, &Principal::Duchy(duchy.to_owned()), url)
            .with_context(|| format!("duchy {duchy} URL {url:?}"))
    }
}
