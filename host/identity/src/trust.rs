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
    /// Rules: no peer certificates -> UNAUTHENTICATED "no client certificate";
    /// more than one certificate in the chain -> UNAUTHENTICATED; leaf has no AKID -> UNAUTHENTICATED
    /// "No authority key identifier (AKID) found in client certificate"; AKID unknown ->
    /// UNAUTHENTICATED "No identity found for client certificate"; unparsable cert -> UNAUTHENTICATED.
    ///
    /// This does not verify signatures: it relies on the TLS layer having verified the chain
    /// against [`TrustStore::roots_pem`] (see [`crate::Identity::server_tls`]).
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
        self.principal_for_akid(&akid)
            .cloned()
            .ok_or_else(|| Status::unauthenticated(NO_IDENTITY))
    }

    /// Identifies the caller of a tonic request served over TLS, using
    /// [`tonic::Request::peer_certs`] and [`TrustStore::identify`].
    pub fn authenticate<T>(&self, req: &tonic::Request<T>) -> Result<Principal, Status> {
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
