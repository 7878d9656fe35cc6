//! A principal's TLS identity and the tonic TLS configurations built from it.

use std::fmt;
use std::path::Path;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TonicIdentity,
};

use crate::pki::{CERT_FILE, KEY_FILE, ROOT_FILE};
use crate::{IdentityError, Principal, TrustStore};

/// TLS server name that every leaf certificate is valid for (see [`Identity::client_tls`]).
pub const TLS_DOMAIN: &str = "localhost";

/// A principal's TLS identity: its leaf certificate (usable as TLS server AND client: EKU serverAuth+clientAuth,
/// SANs "localhost" and IP 127.0.0.1 and ::1), private key, and the root that issued it.
///
/// `Debug` redacts the private key.
#[derive(Clone)]
pub struct Identity {
    /// The principal this identity belongs to.
    pub principal: Principal,
    /// PEM of the leaf certificate (normally exactly one certificate; it is sent as the TLS chain).
    pub cert_pem: String,
    /// PEM (PKCS#8) of the leaf's private key.
    pub key_pem: String,
    /// PEM of the root CA that issued the leaf.
    pub root_pem: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("principal", &self.principal)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .field("root_pem", &self.root_pem)
            .finish()
    }
}

impl Identity {
    /// DER of the leaf certificate (the first certificate of `cert_pem`).
    pub fn certificate_der(&self) -> Result<Vec<u8>, IdentityError> {
        let der = CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(
            IdentityError::pem(format!("certificate of {}", self.principal)),
        )?;
        Ok(der.to_vec())
    }

    /// All certificates of `cert_pem` (the chain presented in TLS), as DER.
    pub fn chain_der(&self) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(IdentityError::pem(format!(
                "certificate chain of {}",
                self.principal
            )))
    }

    /// The identity in tonic's form.
    pub fn tonic_identity(&self) -> TonicIdentity {
        TonicIdentity::from_pem(&self.cert_pem, &self.key_pem)
    }

    /// `tonic::transport::ClientTlsConfig` presenting this identity as client certificate and
    /// trusting ONLY the roots of `server`: the server must prove it is that principal (its
    /// certificate chains to one of `server`'s roots and is valid for the host name of the URL
    /// it is reached at), not merely any holder of a certificate from a trusted root. The
    /// development PKI's leaves are valid for [`TLS_DOMAIN`], `127.0.0.1` and `::1`; an
    /// operator's own certificates name their real hosts.
    pub fn client_tls(
        &self,
        trust: &TrustStore,
        server: &Principal,
    ) -> Result<ClientTlsConfig, IdentityError> {
        let roots = trust.roots_pem_of(server);
        if roots.is_empty() {
            return Err(IdentityError::NoRootFor(server.resource_name()));
        }
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(roots))
            .identity(self.tonic_identity())
            .timeout(std::time::Duration::from_secs(10)))
    }

    /// How often a client connection ([`Identity::channel`]) pings its server.
    pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(20);
    /// How long a client connection waits for the answer to a ping before closing.
    pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

    /// A lazily connecting [`Channel`] to `url` (e.g. `"https://127.0.0.1:4000"`), which must be
    /// served by `server` (see [`Identity::client_tls`]; a server presenting another principal's
    /// certificate fails the connection). No I/O happens here, but it must be called from
    /// within a Tokio runtime (tonic spawns the channel's worker task).
    ///
    /// The connection sends an HTTP/2 PING every [`Identity::KEEPALIVE_INTERVAL`], also while
    /// idle, and is closed when one is not answered within [`Identity::KEEPALIVE_TIMEOUT`]: a
    /// server that vanished silently (a dead host, a dropped NAT mapping) ends a long-lived
    /// stream with an error within half a minute instead of leaving it hanging (the herald's
    /// Kingdom stream, and the duchy's readiness that follows it). Not unit-tested: tonic's
    /// `Endpoint` does not expose these settings, and observing them takes a stalled
    /// connection and that long.
    pub fn channel(
        &self,
        trust: &TrustStore,
        server: &Principal,
        url: &str,
    ) -> Result<Channel, IdentityError> {
        let transport = |source| IdentityError::Transport {
            url: url.to_owned(),
            source,
        };
        // tonic applies TLS only to https URLs: anything else would silently skip both mutual
        // TLS and the server check.
        if !url
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
        {
            return Err(IdentityError::InsecureUrl(url.to_owned()));
        }
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(transport)?
            .connect_timeout(std::time::Duration::from_secs(10))
            .http2_keep_alive_interval(Self::KEEPALIVE_INTERVAL)
            .keep_alive_timeout(Self::KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tls_config(self.client_tls(trust, server)?)
            .map_err(transport)?;
        Ok(endpoint.connect_lazy())
    }

    /// Loads `principal`'s identity from a directory written by [`crate::DevPki::write`]
    /// (`{dir}/{stem}/cert.pem`, `key.pem`, `root.pem`).
    pub fn load(dir: &Path, principal: Principal) -> Result<Identity, IdentityError> {
        let sub = dir.join(principal.file_stem());
        let read = |name: &str| {
            let path = sub.join(name);
            std::fs::read_to_string(&path).map_err(IdentityError::io(&path))
        };
        Ok(Identity {
            cert_pem: read(CERT_FILE)?,
            key_pem: read(KEY_FILE)?,
            root_pem: read(ROOT_FILE)?,
            principal,
        })
    }
}
