//! Trusted roots and AKID-based client identification.

use std::collections::HashMap;
use std::path::Path;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tonic::Status;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{IdentityError, Principal};

/// Message of the status returned when the client presented no certificate.
pub const NO_CLIENT_CERTIFICATE: &str = "no client certificate";
/// Message of the status returned when the client presented a chain with more than one certificate.
pub const MULTIPLE_CLIENT_CERTIFICATES: &str =
    "expected exactly one client certificate, got a chain of several";
/// Message of the status returned when the client certificate cannot be parsed.
pub const INVALID_CLIENT_CERTIFICATE: &str = "invalid client certificate";
/// Message of the status returned when the client certificate has no AKID.
pub const NO_AKID: &str = "No authority key identifier (AKID) found in client certificate";
/// Message of the status returned when the AKID matches no configured root.
pub const NO_IDENTITY: &str = "No identity found for client certificate";

#[derive(Clone, Debug)]
struct Root {
    principal: Principal,
    skid: Vec<u8>,
    pem: String,
    der: Vec<u8>,
}

/// Trusted roots: each principal has its OWN self-signed root CA; a client is identified by the
/// Authority Key Identifier of its single leaf certificate, matched against the Subject Key
/// Identifier of the configured roots (as the reference does).
#[derive(Clone, Debug, Default)]
pub struct TrustStore {
    roots: Vec<Root>,
    by_skid: HashMap<Vec<u8>, Principal>,
}

impl TrustStore {
    /// An empty trust store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `root_cert_pem` (a single PEM certificate) as the root CA of `principal`.
    ///
    /// The root's Subject Key Identifier is what client leaf AKIDs are matched against;
    /// a root without SKID is rejected. A principal may have several roots (rotation), but
    /// one SKID cannot belong to two different principals. Re-adding an identical root is a no-op.
    pub fn add_root(
        &mut self,
        principal: Principal,
        root_cert_pem: &str,
    ) -> Result<(), IdentityError> {
        let context = format!("root certificate of {principal}");
        let der = CertificateDer::from_pem_slice(root_cert_pem.as_bytes())
            .map_err(IdentityError::pem(&context))?;
        let cert = parse_cert(&der).map_err(|message| IdentityError::X509 {
            context: context.clone(),
            message,
        })?;
        if !cert.is_ca() {
            return Err(IdentityError::X509 {
                context,
                message: "a root must be a CA certificate (basic constraints cA=true)".into(),
            });
        }
        if let Ok(Some(ku)) = cert.key_usage()
            && !ku.value.key_cert_sign()
        {
            return Err(IdentityError::X509 {
                context,
                message: "a root's key usage must allow certificate signing".into(),
            });
        }
        let skid = subject_key_identifier(&cert).ok_or_else(|| IdentityError::MissingSkid {
            principal: principal.resource_name(),
        })?;
        if let Some(existing) = self.by_skid.get(&skid) {
            if *existing == principal {
                return Ok(());
            }
            return Err(IdentityError::DuplicateSkid {
                skid: hex::encode(&skid),
                principal: principal.resource_name(),
                existing: existing.resource_name(),
            });
        }
        // Normalise to exactly the one certificate we parsed.
        let pem = der_to_pem(&der);
        self.by_skid.insert(skid.clone(), principal.clone());
        self.roots.push(Root {
            principal,
            skid,
            pem,
            der: der.to_vec(),
        });
        Ok(())
    }

    /// Concatenated PEM bundle of all roots, in insertion order.
    pub fn roots_pem(&self) -> String {
        self.roots.iter().map(|r| r.pem.as_str()).collect()
    }

    /// PEM bundle of the roots of `principal` only (what a client trusts when it means to reach
    /// that principal).
    pub fn roots_pem_of(&self, principal: &Principal) -> String {
        self.roots
            .iter()
            .filter(|r| r.principal == *principal)
            .map(|r| r.pem.as_str())
            .collect()
    }

    /// DER of every root, in insertion order.
    pub(crate) fn roots_der(&self) -> impl Iterator<Item = &[u8]> {
        self.roots.iter().map(|r| r.der.as_slice())
    }

    /// Number of configured roots.
    pub fn len(&self) -> usize {
        self.roots.len()
    }

    /// Whether no root is configured.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// `(principal, root SKID)` of every configured root, in insertion order.
    pub fn roots(&self) -> impl Iterator<Item = (&Principal, &[u8])> {
        self.roots.iter().map(|r| (&r.principal, r.skid.as_slice()))
    }

    /// DER of the roots of `principal` whose SKID is `skid`.
    pub(crate) fn root_der(&self, principal: &Principal, skid: &[u8]) -> Option<&[u8]> {
        self.roots
            .iter()
            .find(|r| r.principal == *principal && r.skid == skid)
            .map(|r| r.der.as_slice())
    }

    /// The principal whose root has Subject Key Identifier `akid`.
    pub fn principal_for_akid(&self, akid: &[u8]) -> Option<&Principal> {
        self.by_skid.get(akid)
    }

    /// Identifies the peer of a TLS connection from its certificate chain.
    ///
    /// A caller is the principal whose root CA *verifiably signed* its single leaf: the root
    /// named by the leaf's Authority Key Identifier must verify the leaf's signature, the leaf
    /// must be valid now, must not be a CA, and (when it carries those extensions) its key usage
    /// must allow digital signatures and its extended key usage must allow TLS client
    /// authentication. The TLS layer only checks that the client holds the leaf's private key
    /// (see [`crate::Identity::server_config`]); everything else is checked here.
    ///
    /// Every failure is UNAUTHENTICATED: no peer certificates ("no client certificate"), more
    /// than one certificate in the chain, an unparsable leaf, no AKID ("No authority key
    /// identifier (AKID) found in client certificate"), an AKID naming no trusted root ("No
    /// identity found for client certificate"), or a leaf the named root did not sign, expired
    /// or not yet valid, a CA certificate, or a key not meant for client authentication
    /// ("invalid client certificate: ...").
    pub fn identify(
        &self,
        peer_certs: Option<&[CertificateDer<'static>]>,
    ) -> Result<Principal, Status> {
        let leaf = match peer_certs.unwrap_or_default() {
            [] => return Err(Status::unauthenticated(NO_CLIENT_CERTIFICATE)),
            [leaf] => leaf,
            _ => return Err(Status::unauthenticated(MULTIPLE_CLIENT_CERTIFICATES)),
        };
        let cert = parse_cert(leaf)
            .map_err(|e| Status::unauthenticated(format!("{INVALID_CLIENT_CERTIFICATE}: {e}")))?;
        let akid =
            authority_key_identifier(&cert).ok_or_else(|| Status::unauthenticated(NO_AKID))?;
        let principal = self
            .principal_for_akid(&akid)
            .cloned()
            .ok_or_else(|| Status::unauthenticated(NO_IDENTITY))?;
        self.check_leaf(&principal, &cert, LeafUse::TlsClient)
            .map_err(|e| Status::unauthenticated(format!("{INVALID_CLIENT_CERTIFICATE}: {e}")))?;
        Ok(principal)
    }

    /// [`TrustStore::identify`] for the certificates of a TLS session, with the leaf's notAfter
    /// (Unix seconds) so a long-lived connection can stop being trusted when it expires.
    pub(crate) fn identify_until(
        &self,
        peer_certs: Option<&[CertificateDer<'_>]>,
    ) -> Result<(Principal, i64), Status> {
        let owned: Option<Vec<CertificateDer<'static>>> =
            peer_certs.map(|c| c.iter().map(|d| d.clone().into_owned()).collect());
        let principal = self.identify(owned.as_deref())?;
        let not_after = owned
            .as_deref()
            .and_then(|c| c.first())
            .and_then(|leaf| {
                parse_cert(leaf)
                    .ok()
                    .map(|c| c.validity().not_after.timestamp())
            })
            .unwrap_or(i64::MIN);
        Ok((principal, not_after))
    }

    /// Checks that `cert` is a leaf that a trusted root of `owner` verifiably issued and that it
    /// may be used for `usage` now: the root named by its AKID belongs to `owner` and verifies
    /// its signature, it is within its validity period, it is not a CA, and its key usage /
    /// extended key usage (when present) allow `usage`.
    pub(crate) fn check_leaf(
        &self,
        owner: &Principal,
        cert: &X509Certificate<'_>,
        usage: LeafUse,
    ) -> Result<(), String> {
        let akid = authority_key_identifier(cert)
            .ok_or("the certificate has no authority key identifier")?;
        let root_der =
            self.root_der(owner, &akid)
                .ok_or_else(|| match self.principal_for_akid(&akid) {
                    Some(other) => {
                        format!("the certificate was issued by the root of {other}, not of {owner}")
                    }
                    None => "the certificate was not issued by any trusted root".to_string(),
                })?;
        let root_der = CertificateDer::from(root_der);
        let root = parse_cert(&root_der)?;
        if cert.issuer() != root.subject() {
            return Err(format!(
                "the certificate's issuer does not match the subject of the root of {owner}"
            ));
        }
        cert.verify_signature(Some(&root.tbs_certificate.subject_pki))
            .map_err(|e| {
                format!("the certificate's signature does not verify with the root of {owner}: {e}")
            })?;
        if !cert.validity().is_valid() {
            return Err("the certificate is expired or not yet valid".into());
        }
        check_end_entity(cert, usage)
    }

    /// Identifies the caller of a tonic request served over TLS, using
    /// [`tonic::Request::peer_certs`] and [`TrustStore::identify`].
    ///
    /// A principal already identified by [`crate::AuthenticateLayer`] for this request is taken
    /// as is.
    pub fn authenticate<T>(&self, req: &tonic::Request<T>) -> Result<Principal, Status> {
        if let Some(crate::tls::Authenticated(p)) = req.extensions().get() {
            return Ok(p.clone());
        }
        let certs = req.peer_certs();
        self.identify(certs.as_deref().map(Vec::as_slice))
    }

    /// Loads the roots of a directory written by [`crate::DevPki::write`] (reads only
    /// `principals.toml` and each `{stem}/root.pem`; no private key is needed).
    pub fn load(dir: &Path) -> Result<TrustStore, IdentityError> {
        let mut store = TrustStore::new();
        for principal in crate::pki::read_manifest(dir)? {
            let path = dir.join(principal.file_stem()).join(crate::pki::ROOT_FILE);
            let pem = std::fs::read_to_string(&path).map_err(IdentityError::io(&path))?;
            store.add_root(principal, &pem)?;
        }
        Ok(store)
    }
}

/// What a leaf certificate is checked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LeafUse {
    /// A TLS client certificate (extended key usage must allow clientAuth when present).
    TlsClient,
    /// A certificate whose key signs application messages (seeds, results).
    Signing,
}

/// Signature algorithms a leaf may be signed with: ecdsa-with-SHA256, ecdsa-with-SHA384,
/// Ed25519 (no SHA-1, no RSA).
const ACCEPTED_SIGNATURE_ALGORITHMS: [&str; 3] =
    ["1.2.840.10045.4.3.2", "1.2.840.10045.4.3.3", "1.3.101.112"];

/// A leaf must not be a CA, must allow digital signatures when it has a key usage extension,
/// and, as a TLS client, must allow clientAuth when it has an extended key usage extension.
fn check_end_entity(cert: &X509Certificate<'_>, usage: LeafUse) -> Result<(), String> {
    let algorithm = cert.signature_algorithm.algorithm.to_id_string();
    if !ACCEPTED_SIGNATURE_ALGORITHMS.contains(&algorithm.as_str()) {
        return Err(format!(
            "signature algorithm {algorithm} is not accepted (ECDSA with SHA-256/384 or Ed25519)"
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for ext in cert.extensions() {
        let oid = ext.oid.to_id_string();
        if !seen.insert(oid.clone()) {
            return Err(format!("duplicate extension {oid}"));
        }
        match ext.parsed_extension() {
            ParsedExtension::ParseError { .. } => {
                return Err(format!("extension {oid} is malformed"));
            }
            ParsedExtension::UnsupportedExtension { .. } if ext.critical => {
                return Err(format!("unknown critical extension {oid}"));
            }
            _ => {}
        }
    }
    if cert.is_ca() {
        return Err("a CA certificate cannot be used as a leaf".into());
    }
    if let Ok(Some(ku)) = cert.key_usage() {
        if !ku.value.digital_signature() {
            return Err("the certificate's key usage does not allow digital signatures".into());
        }
        if ku.value.key_cert_sign() {
            return Err("a certificate-signing key cannot be used as a leaf".into());
        }
    } else if cert.key_usage().is_err() {
        return Err("the certificate's key usage extension is malformed".into());
    }
    match cert.extended_key_usage() {
        Ok(Some(eku)) => {
            if usage == LeafUse::TlsClient && !(eku.value.any || eku.value.client_auth) {
                return Err(
                    "the certificate's extended key usage does not allow TLS client authentication"
                        .into(),
                );
            }
        }
        Ok(None) => {}
        Err(_) => return Err("the certificate's extended key usage extension is malformed".into()),
    }
    Ok(())
}

pub(crate) fn parse_cert<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, String> {
    match X509Certificate::from_der(der.as_ref()) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing data after certificate".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// The Subject Key Identifier of `cert`, if present.
fn subject_key_identifier(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(kid) => Some(kid.0.to_vec()),
            _ => None,
        })
}

/// The key identifier of the Authority Key Identifier extension of `cert`, if present.
pub(crate) fn authority_key_identifier(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(akid) => {
                akid.key_identifier.as_ref().map(|kid| kid.0.to_vec())
            }
            _ => None,
        })
}

/// Parses a PEM certificate and extracts a key identifier from it with `get`.
fn pem_key_id(
    cert_pem: &str,
    get: fn(&X509Certificate<'_>) -> Option<Vec<u8>>,
) -> Result<Option<Vec<u8>>, IdentityError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(IdentityError::pem("certificate"))?;
    let cert = parse_cert(&der).map_err(|message| IdentityError::X509 {
        context: "certificate".to_owned(),
        message,
    })?;
    Ok(get(&cert))
}

/// Reads the SKID of a PEM certificate (hex helpers for configuration files and logs).
pub fn certificate_skid(cert_pem: &str) -> Result<Option<Vec<u8>>, IdentityError> {
    pem_key_id(cert_pem, subject_key_identifier)
}

/// Reads the AKID key identifier of a PEM certificate.
pub fn certificate_akid(cert_pem: &str) -> Result<Option<Vec<u8>>, IdentityError> {
    pem_key_id(cert_pem, authority_key_identifier)
}

/// PEM-encodes one DER certificate (64-column base64, trailing newline).
pub(crate) fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        // base64 output is ASCII, so any byte index is a char boundary.
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}
