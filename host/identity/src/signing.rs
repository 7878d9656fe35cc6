//! Signatures by a principal's key (halo-system §8.2, §8.3): a data provider signs the share
//! seed it seals to a duchy, the aggregator signs the result it seals to the measurement
//! consumer. ECDSA P-256 with SHA-256 and ASN.1 DER signatures, made with the principal's leaf
//! key and checked against its leaf certificate, which must have been issued by the trusted
//! root of the principal that the signature is supposed to come from.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use crate::trust::{LeafUse, parse_cert};
use crate::{Identity, IdentityError, Principal, TrustStore};

/// Object identifier of `ecdsa-with-SHA256`, the only signature algorithm used.
pub const ECDSA_WITH_SHA256_OID: &str = "1.2.840.10045.4.3.2";

/// Every application signature is over this context string followed by the message, so the
/// key that also authenticates the principal in TLS can never be used (e.g. by a plugin
/// calling the identity import) to produce a TLS CertificateVerify or any other signature
/// outside this domain: TLS 1.3 signs 64 spaces first, TLS 1.2 a handshake transcript
/// starting with a ClientHello (0x01).
pub const SIGNATURE_CONTEXT: &[u8] = b"halo-host application signature v1\0";

fn in_context(message: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_CONTEXT.len() + message.len());
    m.extend_from_slice(SIGNATURE_CONTEXT);
    m.extend_from_slice(message);
    m
}

fn signature_error(context: impl Into<String>) -> impl FnOnce(String) -> IdentityError {
    let context = context.into();
    move |message| IdentityError::Signature { context, message }
}

impl Identity {
    /// Signs [`SIGNATURE_CONTEXT`] ‖ `message` with this identity's private key (ECDSA P-256,
    /// SHA-256, DER signature; [`ECDSA_WITH_SHA256_OID`]). The matching certificate is
    /// [`Identity::certificate_der`].
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, IdentityError> {
        use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
        let context = format!("signing as {}", self.principal);
        let key = PrivatePkcs8KeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(IdentityError::pem(&context))?;
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            key.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| IdentityError::Signature {
            context: context.clone(),
            message: format!("the private key is not an ECDSA P-256 PKCS#8 key: {e}"),
        })?;
        let signature =
            pair.sign(&rng, &in_context(message))
                .map_err(|e| IdentityError::Signature {
                    context,
                    message: format!("signing failed: {e}"),
                })?;
        Ok(signature.as_ref().to_vec())
    }
}

impl TrustStore {
    /// Checks that `signature` (with algorithm `algorithm_oid`) over [`SIGNATURE_CONTEXT`] ‖
    /// `message` was made with the
    /// key of `certificate_der`, and that this certificate is currently valid and was issued
    /// (AKID = root SKID, signature checked) by a trusted root of `signer`.
    pub fn verify_signature(
        &self,
        signer: &Principal,
        certificate_der: &[u8],
        message: &[u8],
        signature: &[u8],
        algorithm_oid: &str,
    ) -> Result<(), IdentityError> {
        let context = format!("signature of {signer}");
        let fail = |m: String| IdentityError::Signature {
            context: context.clone(),
            message: m,
        };
        if algorithm_oid != ECDSA_WITH_SHA256_OID {
            return Err(fail(format!(
                "unsupported signature algorithm {algorithm_oid:?} (expected ecdsa-with-SHA256, {ECDSA_WITH_SHA256_OID})"
            )));
        }
        let der = CertificateDer::from(certificate_der);
        let cert = parse_cert(&der).map_err(|m| fail(format!("certificate: {m}")))?;
        self.check_leaf(signer, &cert, LeafUse::Signing)
            .map_err(signature_error(context.clone()))?;
        let key = &cert.tbs_certificate.subject_pki.subject_public_key.data;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, key)
            .verify(&in_context(message), signature)
            .map_err(|_| fail("the signature does not match the message and certificate".into()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::DevPki;

    fn pki() -> DevPki {
        DevPki::generate(&[
            Principal::Duchy("aggregator".into()),
            Principal::DataProvider("edp1".into()),
            Principal::DataProvider("edp2".into()),
        ])
        .unwrap()
    }

    #[test]
    fn sign_and_verify_round_trip_and_failures() {
        let pki = pki();
        let trust = pki.trust_store().unwrap();
        let edp1 = Principal::DataProvider("edp1".into());
        let edp2 = Principal::DataProvider("edp2".into());
        let id = pki.identity(&edp1).unwrap();
        let cert = id.certificate_der().unwrap();
        let sig = id.sign(b"seed").unwrap();
        trust
            .verify_signature(&edp1, &cert, b"seed", &sig, ECDSA_WITH_SHA256_OID)
            .unwrap();
        // ECDSA signatures are randomised, both verify.
        let sig2 = id.sign(b"seed").unwrap();
        assert_ne!(sig, sig2);
        trust
            .verify_signature(&edp1, &cert, b"seed", &sig2, ECDSA_WITH_SHA256_OID)
            .unwrap();
        let err = |r: Result<(), IdentityError>| r.unwrap_err().to_string();
        let e = err(trust.verify_signature(&edp1, &cert, b"other", &sig, ECDSA_WITH_SHA256_OID));
        assert!(e.contains("does not match"), "{e}");
        // The right key but claimed to be another data provider's.
        let e = err(trust.verify_signature(&edp2, &cert, b"seed", &sig, ECDSA_WITH_SHA256_OID));
        assert!(e.contains("not of dataProviders/edp2"), "{e}");
        let e = err(trust.verify_signature(&edp1, &cert, b"seed", &sig, "1.2.3"));
        assert!(e.contains("unsupported signature algorithm"), "{e}");
        let e = err(trust.verify_signature(&edp1, b"junk", b"seed", &sig, ECDSA_WITH_SHA256_OID));
        assert!(e.contains("certificate"), "{e}");
        // A signature made with the same key but outside the application context (what a
        // TLS CertificateVerify or any raw use of the key would be) does not verify.
        {
            use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
            let key = PrivatePkcs8KeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap();
            let rng = ring::rand::SystemRandom::new();
            let pair = EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_ASN1_SIGNING,
                key.secret_pkcs8_der(),
                &rng,
            )
            .unwrap();
            let raw = pair.sign(&rng, b"seed").unwrap();
            let e = err(trust.verify_signature(
                &edp1,
                &cert,
                b"seed",
                raw.as_ref(),
                ECDSA_WITH_SHA256_OID,
            ));
            assert!(e.contains("does not match"), "{e}");
        }
        // A certificate from an impostor root with a copied AKID does not verify.
        let impostor = crate::impostor_identity(&edp1).unwrap();
        let e = err(trust.verify_signature(
            &edp1,
            &impostor.certificate_der().unwrap(),
            b"seed",
            &impostor.sign(b"seed").unwrap(),
            ECDSA_WITH_SHA256_OID,
        ));
        assert!(e.contains("root"), "{e}");
    }
}
