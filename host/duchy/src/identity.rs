//! The identity services a duchy offers its protocol stages ([`StageIdentity`], the plugins'
//! `identity` import): signatures with the duchy's key, and checks of other principals'
//! signatures against certificates fetched from the Kingdom's Certificates service (cached)
//! and checked against the duchy's trust store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use halo_identity::{ECDSA_WITH_SHA256_OID, Identity, Principal, TrustStore};
use halo_proto::halo::v1::GetCertificateRequest;
use halo_proto::halo::v1::certificates_client::CertificatesClient;
use tonic::transport::Channel;

use crate::core::certificate_id;
use crate::protocol::{IdentityFailure, StageIdentity, StageSignature};

/// How long one certificate fetch from the Kingdom may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where certificates come from.
#[derive(Clone)]
pub enum CertificateSource {
    /// The Kingdom's Certificates service (over the duchy's mTLS channel), driven on `runtime`.
    Kingdom {
        channel: Channel,
        runtime: tokio::runtime::Handle,
    },
    /// A fixed set, by resource name (offline tools, benchmarks).
    Fixed(HashMap<String, Vec<u8>>),
}

/// A duchy's [`StageIdentity`].
pub struct DuchyIdentity {
    identity: Option<(Identity, String)>,
    trust: TrustStore,
    source: CertificateSource,
    cache: Mutex<HashMap<String, Vec<u8>>>,
}

impl std::fmt::Debug for DuchyIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DuchyIdentity")
            .field("certificate", &self.identity.as_ref().map(|(_, c)| c))
            .finish_non_exhaustive()
    }
}

impl DuchyIdentity {
    /// Signs as `identity` (whose certificate is `certificate_name`), verifies against `trust`
    /// with certificates from `source`. Without an identity, `sign` fails.
    pub fn new(
        identity: Option<(Identity, String)>,
        trust: TrustStore,
        source: CertificateSource,
    ) -> Arc<Self> {
        Arc::new(DuchyIdentity {
            identity,
            trust,
            source,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The DER of certificate `name`, from the cache or the source.
    fn certificate(&self, name: &str, id: &str) -> Result<Vec<u8>, IdentityFailure> {
        use IdentityFailure::{Invalid, Unavailable};
        if let Some(der) = self.cache.lock().ok().and_then(|c| c.get(name).cloned()) {
            return Ok(der);
        }
        let der = match &self.source {
            CertificateSource::Fixed(map) => map
                .get(name)
                .cloned()
                .ok_or_else(|| Invalid(format!("certificate {name} is not known")))?,
            CertificateSource::Kingdom { channel, runtime } => {
                let request = GetCertificateRequest {
                    name: name.to_string(),
                };
                let mut client = CertificatesClient::new(channel.clone());
                let fetch = async move {
                    tokio::time::timeout(FETCH_TIMEOUT, client.get_certificate(request)).await
                };
                // On a thread of its own: stage code runs on blocking threads, but blocking on
                // the runtime from an executor thread would panic, so never risk it.
                let fetched = std::thread::scope(|s| {
                    s.spawn(|| runtime.block_on(fetch))
                        .join()
                        .map_err(|_| Unavailable("the certificate fetch thread panicked".into()))
                })?;
                match fetched {
                    Ok(Ok(response)) => response.into_inner().x509_der,
                    Ok(Err(status)) => {
                        let message = format!(
                            "fetching certificate {name} from the Kingdom: {:?}: {}",
                            status.code(),
                            status.message()
                        );
                        return Err(if crate::kingdom::is_transient(status.code()) {
                            Unavailable(message)
                        } else {
                            Invalid(message)
                        });
                    }
                    Err(_) => {
                        return Err(Unavailable(format!(
                            "fetching certificate {name} from the Kingdom timed out after {FETCH_TIMEOUT:?}"
                        )));
                    }
                }
            }
        };
        // The Kingdom names certificates by their digest: a mismatch means a wrong answer.
        if certificate_id(&der) != id {
            return Err(Invalid(format!(
                "certificate {name}: the DER served does not have id {id}"
            )));
        }
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(name.to_string(), der.clone());
        }
        Ok(der)
    }
}

/// The owner and id of a certificate resource name: `dataProviders/{id}/certificates/{cid}`,
/// `duchies/{id}/certificates/{cid}` or `measurementConsumers/{id}/certificates/{cid}`.
pub fn certificate_owner(name: &str) -> Result<(Principal, &str), String> {
    let bad = || format!("{name:?} is not a certificate resource name");
    let (parent, id) = name.rsplit_once("/certificates/").ok_or_else(bad)?;
    if id.is_empty() || id.contains('/') {
        return Err(bad());
    }
    let principal = Principal::parse(parent).map_err(|e| format!("{}: {e}", bad()))?;
    if principal == Principal::Kingdom {
        return Err(bad());
    }
    Ok((principal, id))
}

impl StageIdentity for DuchyIdentity {
    fn sign(&self, message: &[u8]) -> Result<StageSignature, IdentityFailure> {
        let (identity, certificate) = self
            .identity
            .as_ref()
            .ok_or_else(|| IdentityFailure::Invalid("this host has no signing key".into()))?;
        Ok(StageSignature {
            certificate: certificate.clone(),
            signature: identity
                .sign(message)
                .map_err(|e| IdentityFailure::Invalid(e.to_string()))?,
            algorithm_oid: ECDSA_WITH_SHA256_OID.to_string(),
        })
    }

    fn verify(
        &self,
        certificate: &str,
        message: &[u8],
        signature: &[u8],
        algorithm_oid: &str,
    ) -> Result<(), IdentityFailure> {
        let (owner, id) = certificate_owner(certificate).map_err(IdentityFailure::Invalid)?;
        let der = self.certificate(certificate, id)?;
        self.trust
            .verify_signature(&owner, &der, message, signature, algorithm_oid)
            .map_err(|e| IdentityFailure::Invalid(format!("{certificate}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use halo_identity::DevPki;

    #[test]
    fn owner_of_certificate_names() {
        assert_eq!(
            certificate_owner("dataProviders/edp1/certificates/ab12").unwrap(),
            (Principal::DataProvider("edp1".into()), "ab12")
        );
        assert_eq!(
            certificate_owner("duchies/aggregator/certificates/00").unwrap(),
            (Principal::Duchy("aggregator".into()), "00")
        );
        for bad in [
            "",
            "dataProviders/edp1",
            "dataProviders/edp1/certificates/",
            "dataProviders/edp1/certificates/a/b",
            "nonsense/x/certificates/1",
        ] {
            assert!(certificate_owner(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fixed_source_signs_and_verifies() {
        let edp = Principal::DataProvider("edp1".into());
        let duchy = Principal::Duchy("worker1".into());
        let pki = DevPki::generate(&[edp.clone(), duchy.clone()]).unwrap();
        let trust = pki.trust_store().unwrap();
        let edp_id = pki.identity(&edp).unwrap();
        let der = edp_id.certificate_der().unwrap();
        let name = format!("dataProviders/edp1/certificates/{}", certificate_id(&der));
        let service = DuchyIdentity::new(
            Some((
                pki.identity(&duchy).unwrap().clone(),
                "duchies/worker1/certificates/x".into(),
            )),
            trust,
            CertificateSource::Fixed([(name.clone(), der)].into()),
        );
        let sig = edp_id.sign(b"seed").unwrap();
        service
            .verify(&name, b"seed", &sig, ECDSA_WITH_SHA256_OID)
            .unwrap();
        let e = service
            .verify(&name, b"other", &sig, ECDSA_WITH_SHA256_OID)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not match"), "{e}");
        // The same certificate claimed under another data provider's name.
        let e = service
            .verify(
                &name.replace("edp1", "edp2"),
                b"seed",
                &sig,
                ECDSA_WITH_SHA256_OID,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("not known"), "{e}");
        let e = service
            .verify(
                "dataProviders/edp1/certificates/0000",
                b"seed",
                &sig,
                ECDSA_WITH_SHA256_OID,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("not known"), "{e}");
        let signed = service.sign(b"result").unwrap();
        assert_eq!(signed.certificate, "duchies/worker1/certificates/x");
        assert_eq!(signed.algorithm_oid, ECDSA_WITH_SHA256_OID);
    }
}
