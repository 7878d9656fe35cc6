//! Error type of this crate.

use std::path::PathBuf;

/// Errors produced while building, loading or using identities.
///
/// Every variant carries enough context (principal, file path, URL, ...) to be
/// reported directly to an operator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A principal resource name could not be parsed.
    #[error("invalid principal resource name {name:?}: {reason}")]
    InvalidResourceName {
        /// The offending name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Certificate or key generation with rcgen failed.
    #[error("certificate generation failed ({context}): {source}")]
    Generation {
        /// What was being generated.
        context: String,
        /// Underlying error.
        #[source]
        source: rcgen::Error,
    },
    /// PEM data could not be decoded.
    #[error("invalid PEM ({context}): {source}")]
    Pem {
        /// What was being decoded.
        context: String,
        /// Underlying error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A DER certificate could not be parsed as X.509.
    #[error("invalid X.509 certificate ({context}): {message}")]
    X509 {
        /// What was being parsed.
        context: String,
        /// Parser message.
        message: String,
    },
    /// A root certificate has no Subject Key Identifier extension.
    #[error("root certificate for {principal} has no subject key identifier (SKID) extension")]
    MissingSkid {
        /// Resource name of the principal the root was configured for.
        principal: String,
    },
    /// Two different principals were configured with roots sharing one SKID.
    #[error("root certificate SKID {skid} of {principal} is already used by {existing}")]
    DuplicateSkid {
        /// Hex-encoded SKID.
        skid: String,
        /// Principal being added.
        principal: String,
        /// Principal that already owns the SKID.
        existing: String,
    },
    /// The same principal was listed twice.
    #[error("principal {0} listed more than once")]
    DuplicatePrincipal(String),
    /// A principal is not part of the PKI.
    #[error("principal {0} is not part of this PKI")]
    UnknownPrincipal(String),
    /// The root private key of a principal is not available.
    #[error("root private key of {0} is not available")]
    MissingRootKey(String),
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `principals.toml` could not be parsed.
    #[error("invalid manifest {path}: {source}")]
    ManifestParse {
        /// Manifest path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: toml::de::Error,
    },
    /// `principals.toml` could not be serialized.
    #[error("cannot serialize manifest: {0}")]
    ManifestSerialize(#[from] toml::ser::Error),
    /// The manifest is inconsistent (e.g. stem does not match the principal).
    #[error("invalid manifest {path}: {reason}")]
    ManifestInvalid {
        /// Manifest path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Signing failed, or a signature or the certificate behind it did not verify.
    #[error("{context}: {message}")]
    Signature {
        /// What was being signed or verified.
        context: String,
        /// What went wrong.
        message: String,
    },
    /// Building a rustls configuration failed.
    #[error("{context}: {message}")]
    Tls {
        /// Which configuration.
        context: String,
        /// What went wrong.
        message: String,
    },
    /// A URL that is not `https://` (it would connect without TLS).
    #[error("{0:?} is not an https:// URL: every connection uses mutual TLS")]
    InsecureUrl(String),
    /// A principal has no trusted root to check a server against.
    #[error("no trusted root for {0}: cannot check that a server is this principal")]
    NoRootFor(String),
    /// Building a tonic endpoint failed (bad URL or TLS configuration).
    #[error("cannot configure channel to {url}: {source}")]
    Transport {
        /// Target URL.
        url: String,
        /// Underlying error.
        #[source]
        source: tonic::transport::Error,
    },
}

impl IdentityError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    pub(crate) fn generation(context: impl Into<String>) -> impl FnOnce(rcgen::Error) -> Self {
        let context = context.into();
        move |source| Self::Generation { context, source }
    }

    pub(crate) fn pem(
        context: impl Into<String>,
    ) -> impl FnOnce(rustls_pki_types::pem::Error) -> Self {
        let context = context.into();
        move |source| Self::Pem { context, source }
    }
}
