//! mTLS identities for halo-host (spec §6.1).
//!
//! Every principal (the Kingdom, each duchy, data provider and measurement consumer) has its
//! own self-signed root CA and a single leaf certificate issued by it. Servers require client
//! certificates chaining to one of the trusted roots ([`Identity::server_tls`]) and then identify
//! the caller by the Authority Key Identifier (AKID) of its single leaf certificate, which must
//! equal the Subject Key Identifier (SKID) of a configured root ([`TrustStore::authenticate`]),
//! as the reference implementation's `AuthorityKeyServerInterceptor` +
//! `DuchyTlsIdentityInterceptor` / `AkidPrincipalLookup` do.
//!
//! [`DevPki`] generates and persists such a PKI for development and tests.
//!
//! Call [`init_crypto`] once at start-up (before building any TLS configuration).

mod error;
mod files;
mod identity;
mod pki;
mod principal;
mod signing;
mod tls;
mod trust;

pub use error::IdentityError;
pub use files::TRUST_BUNDLE_FILE;
pub use identity::{Identity, TLS_DOMAIN};
pub use pki::{
    CERT_FILE, DevPki, KEY_FILE, MANIFEST_FILE, ROOT_FILE, ROOT_KEY_FILE, TRUST_FILE,
    ca_as_leaf_identity, critical_extension_identity, expired_identity, forged_akid_identity,
    identity_with_two_cert_chain, identity_without_akid, impostor_identity,
};
pub use principal::Principal;
pub use signing::{ECDSA_WITH_SHA256_OID, SIGNATURE_CONTEXT};
pub use tls::{Authenticate, AuthenticateLayer, PeerInfo, TlsConn, TlsServerLimits, tls_incoming};
pub use trust::{
    INVALID_CLIENT_CERTIFICATE, MULTIPLE_CLIENT_CERTIFICATES, NO_AKID, NO_CLIENT_CERTIFICATE,
    NO_IDENTITY, TrustStore, certificate_akid, certificate_skid,
};

/// Installs the ring rustls `CryptoProvider` as the process default, once per process.
///
/// Idempotent: if a provider is already installed (by this or another crate) it is kept.
pub fn init_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first; that is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
