//! ed25519 detached signatures over plugin components (DESIGN.md §4, user ask 8).
//!
//! Everything on disk is text, so an operator can inspect it with `cat` and `openssl`:
//!
//! - a **secret key** file: PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), written with mode 0600;
//!   the same format `openssl genpkey -algorithm ed25519` produces;
//! - a **public key** file: SPKI PEM (`-----BEGIN PUBLIC KEY-----`), as
//!   `openssl pkey -pubout` produces;
//! - a **detached signature** `<component>.sig` beside the component, in TOML:
//!
//! ```toml
//! algorithm = "ed25519"
//! key_id = "3f2a9c0d11e4b87a"          # hex of the first 8 bytes of SHA-256(raw 32-byte public key)
//! digest = "sha256:9b74c9897bac770f…"   # SHA-256 of the component bytes
//! signature = "q1w2…=="                # base64 ed25519 signature over the UTF-8 bytes of `digest`
//! signed_at = "2026-01-02T03:04:05Z"   # optional, informational only (not signed)
//! ```
//!
//! The host checks a component with [`check`] / [`check_file`], which yields a
//! [`SignatureStatus`], then applies the duchy's [`SignaturePolicy`] with [`enforce`]:
//!
//! | status           | `Optional` | `Required` |
//! |------------------|------------|------------|
//! | `Unsigned`       | admitted   | refused    |
//! | `Valid`          | admitted   | admitted   |
//! | `UntrustedKey`   | admitted   | refused    |
//! | `Invalid`        | refused    | refused    |
//!
//! A signature that is present but wrong (tampered component, corrupted or malformed `.sig`,
//! bad signature) is always refused.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signer as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The only algorithm this crate produces and accepts in a `.sig` file.
pub const ALGORITHM: &str = "ed25519";
/// Prefix of the `digest` field.
pub const DIGEST_PREFIX: &str = "sha256:";
/// Extension appended to a component's file name to find its detached signature.
pub const SIGNATURE_EXTENSION: &str = "sig";

/// Errors from key and signature handling. Messages name the file involved.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// A file could not be read or written.
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A key file would have been overwritten.
    #[error("{} already exists; refusing to overwrite a key file", .path.display())]
    AlreadyExists { path: PathBuf },
    /// A secret or public key could not be decoded.
    #[error("invalid {kind}{}: {reason}", at(.path))]
    InvalidKey {
        kind: &'static str,
        path: Option<PathBuf>,
        reason: String,
    },
    /// A key or signature could not be encoded.
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    /// A `.sig` file is not a well-formed signature document.
    #[error("malformed signature file{}: {reason}", at(.path))]
    MalformedSignature {
        path: Option<PathBuf>,
        reason: String,
    },
    /// The signature policy refused a component; `message` is meant for humans.
    #[error("{message}")]
    Refused { path: PathBuf, message: String },
}

fn at(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!(" {}", p.display()),
        None => String::new(),
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SignError {
    let path = path.to_path_buf();
    move |source| SignError::Io {
        action,
        path,
        source,
    }
}

/// Attaches `path` to a decoding error that was produced from text alone.
fn with_path(err: SignError, path: &Path) -> SignError {
    match err {
        SignError::InvalidKey {
            kind,
            path: None,
            reason,
        } => SignError::InvalidKey {
            kind,
            path: Some(path.to_path_buf()),
            reason,
        },
        SignError::MalformedSignature { path: None, reason } => SignError::MalformedSignature {
            path: Some(path.to_path_buf()),
            reason,
        },
        other => other,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `sha256:<hex>` of `component`, the form used in the `digest` field.
pub fn component_digest(component: &[u8]) -> String {
    format!("{DIGEST_PREFIX}{}", sha256_hex(component))
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/// An ed25519 secret key. `Debug` shows only the key id; the secret is zeroized on drop.
#[derive(Clone)]
pub struct SigningKey {
    inner: ed25519_dalek::SigningKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.public().key_id())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        Self {
            inner: ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    /// PKCS#8 v1 PEM (`-----BEGIN PRIVATE KEY-----`), as `openssl genpkey -algorithm ed25519`.
    pub fn to_pkcs8_pem(&self) -> Result<String, SignError> {
        let bytes = KeypairBytes {
            secret_key: self.inner.to_bytes(),
            public_key: None,
        };
        let pem = bytes
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| SignError::Encode {
                what: "secret key",
                reason: e.to_string(),
            })?;
        Ok(pem.as_str().to_owned())
    }

    /// Decodes a PKCS#8 PEM ed25519 secret key (v1, or v2 with an embedded public key that must
    /// match).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, SignError> {
        let invalid = |reason: String| SignError::InvalidKey {
            kind: "secret key",
            path: None,
            reason,
        };
        let pem = pem.trim();
        if pem.contains("-----BEGIN PUBLIC KEY-----") {
            return Err(invalid(
                "this is a public key (SPKI PEM); a PKCS#8 secret key was expected".into(),
            ));
        }
        ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map(|inner| Self { inner })
            .map_err(|e| invalid(format!("not an ed25519 PKCS#8 PEM private key ({e})")))
    }

    /// Writes the secret key (PKCS#8 PEM, mode 0600 on Unix) and its public key (SPKI PEM).
    /// Refuses to overwrite either file if it already exists.
    pub fn write(&self, secret_path: &Path, public_path: &Path) -> Result<(), SignError> {
        for path in [secret_path, public_path] {
            if path.exists() {
                return Err(SignError::AlreadyExists {
                    path: path.to_path_buf(),
                });
            }
        }
        let secret_pem = self.to_pkcs8_pem()?;
        let public_pem = self.public().to_pem()?;

        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(secret_path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                SignError::AlreadyExists {
                    path: secret_path.to_path_buf(),
                }
            } else {
                io_err("create secret key file", secret_path)(e)
            }
        })?;
        file.write_all(secret_pem.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_err("write secret key file", secret_path))?;
        drop(file);

        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        let mut file = options.open(public_path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                SignError::AlreadyExists {
                    path: public_path.to_path_buf(),
                }
            } else {
                io_err("create public key file", public_path)(e)
            }
        })?;
        file.write_all(public_pem.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_err("write public key file", public_path))?;
        Ok(())
    }

    /// Reads a PKCS#8 PEM secret key file.
    pub fn read(path: &Path) -> Result<Self, SignError> {
        let text = fs::read_to_string(path).map_err(io_err("read secret key file", path))?;
        Self::from_pkcs8_pem(&text).map_err(|e| with_path(e, path))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            inner: self.inner.verifying_key(),
        }
    }
}

/// An ed25519 public key, identified by [`PublicKey::key_id`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    inner: VerifyingKey,
}

impl PublicKey {
    /// Hex of the first 8 bytes of SHA-256 of the raw 32-byte public key (16 hex digits).
    pub fn key_id(&self) -> String {
        let digest = Sha256::digest(self.inner.as_bytes());
        hex::encode(&digest[..8])
    }

    /// The raw 32-byte public key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.inner.to_bytes()
    }

    /// SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn to_pem(&self) -> Result<String, SignError> {
        self.inner
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| SignError::Encode {
                what: "public key",
                reason: e.to_string(),
            })
    }

    /// Decodes an SPKI PEM ed25519 public key. Weak (small-order) keys are rejected.
    pub fn from_pem(pem: &str) -> Result<Self, SignError> {
        let invalid = |reason: String| SignError::InvalidKey {
            kind: "public key",
            path: None,
            reason,
        };
        let pem = pem.trim();
        if pem.contains("PRIVATE KEY-----") {
            return Err(invalid(
                "this is a PRIVATE key; only public keys (SPKI PEM) belong here".into(),
            ));
        }
        let inner = VerifyingKey::from_public_key_pem(pem)
            .map_err(|e| invalid(format!("not an ed25519 SPKI PEM public key ({e})")))?;
        if inner.is_weak() {
            return Err(invalid("weak (small-order) ed25519 public key".into()));
        }
        Ok(Self { inner })
    }

    /// Reads an SPKI PEM public key file.
    pub fn read(path: &Path) -> Result<Self, SignError> {
        let text = fs::read_to_string(path).map_err(io_err("read public key file", path))?;
        Self::from_pem(&text).map_err(|e| with_path(e, path))
    }
}

// ---------------------------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------------------------

/// A detached signature, stored as TOML in `<component>.sig`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// Always `"ed25519"`.
    pub algorithm: String,
    /// [`PublicKey::key_id`] of the signing key.
    pub key_id: String,
    /// `sha256:<hex>` of the component bytes.
    pub digest: String,
    /// Base64 (standard, padded) of the 64-byte ed25519 signature over the UTF-8 bytes of
    /// `digest`.
    pub signature: String,
    /// When it was signed (RFC 3339). Informational only: it is not covered by the signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_at: Option<String>,
}

/// Signs `component`: the signature covers the string `sha256:<hex of SHA-256(component)>`.
pub fn sign(key: &SigningKey, component: &[u8]) -> Signature {
    let digest = component_digest(component);
    let sig = key.inner.sign(digest.as_bytes());
    Signature {
        algorithm: ALGORITHM.to_owned(),
        key_id: key.public().key_id(),
        digest,
        signature: BASE64.encode(sig.to_bytes()),
        signed_at: now_rfc3339(),
    }
}

fn now_rfc3339() -> Option<String> {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// `<component file name>.sig` in the same directory, e.g. `sum-1.2.0.wasm.sig`.
pub fn signature_path(component_path: &Path) -> PathBuf {
    let mut name: OsString = component_path.as_os_str().to_owned();
    name.push(".");
    name.push(SIGNATURE_EXTENSION);
    PathBuf::from(name)
}

/// Extension of a plugin component file.
pub const COMPONENT_EXTENSION: &str = "wasm";

/// The file name of a plugin component: `<protocol>-<version>.wasm`, e.g. `hmss-1.1.0.wasm`.
pub fn component_file_name(protocol: &str, version: &semver::Version) -> String {
    format!("{protocol}-{version}.{COMPONENT_EXTENSION}")
}

/// Parses a plugin component file name `<protocol>-<semver>.wasm` (no directory part) into the
/// protocol id and version; `None` if it is not of that form.
///
/// The version starts after the first `-` that is followed by a digit and leaves a valid semver
/// version, so pre-release and build parts may themselves contain `-<digit>`
/// (`sum-1.0.0-0.3.7.wasm`, `sum-1.0.0+build-5.wasm`) and protocol ids may contain `-` followed
/// by a letter (`ro-llv2-2.0.0.wasm`).
pub fn parse_component_file_name(file_name: &str) -> Option<(String, semver::Version)> {
    let stem = file_name
        .strip_suffix(COMPONENT_EXTENSION)?
        .strip_suffix('.')?;
    stem.char_indices()
        .filter(|(i, c)| *c == '-' && stem[i + 1..].starts_with(|d: char| d.is_ascii_digit()))
        .find_map(|(i, _)| {
            let version = semver::Version::parse(&stem[i + 1..]).ok()?;
            (i > 0).then(|| (stem[..i].to_string(), version))
        })
}

impl Signature {
    /// The TOML text of a `.sig` file.
    pub fn to_toml(&self) -> Result<String, SignError> {
        toml::to_string(self).map_err(|e| SignError::Encode {
            what: "signature",
            reason: e.to_string(),
        })
    }

    /// Parses a `.sig` document. Unknown fields and a malformed `signed_at` are rejected; the
    /// other fields are checked by [`check`].
    pub fn from_toml(s: &str) -> Result<Self, SignError> {
        let sig: Signature = toml::from_str(s).map_err(|e| SignError::MalformedSignature {
            path: None,
            reason: e.message().to_owned(),
        })?;
        if let Some(at) = &sig.signed_at {
            time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                .map_err(|e| SignError::MalformedSignature {
                    path: None,
                    reason: format!("signed_at {at:?} is not an RFC 3339 timestamp ({e})"),
                })?;
        }
        Ok(sig)
    }

    /// Reads and parses a `.sig` file.
    pub fn read(path: &Path) -> Result<Self, SignError> {
        let text = fs::read_to_string(path).map_err(io_err("read signature file", path))?;
        Self::from_toml(&text).map_err(|e| with_path(e, path))
    }

    /// Writes the `.sig` file (overwriting an existing one).
    pub fn write(&self, path: &Path) -> Result<(), SignError> {
        let text = self.to_toml()?;
        fs::write(path, text).map_err(io_err("write signature file", path))
    }
}

// ---------------------------------------------------------------------------------------------
// Trust and verification
// ---------------------------------------------------------------------------------------------

/// The public keys a duchy trusts, by key id.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<String, PublicKey>,
}

impl TrustedKeys {
    /// Trusts `keys` (duplicates collapse).
    pub fn new(keys: Vec<PublicKey>) -> Self {
        Self {
            keys: keys.into_iter().map(|k| (k.key_id(), k)).collect(),
        }
    }

    /// Loads every `*.pub` and `*.pem` file in `dir` (not recursively) as an SPKI PEM public key.
    /// Any such file that is not a valid public key (including a secret key put there by
    /// mistake) is an error naming that file. Other files and subdirectories are ignored.
    pub fn load_dir(dir: &Path) -> Result<Self, SignError> {
        let entries = fs::read_dir(dir).map_err(io_err("read trusted keys directory", dir))?;
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("read trusted keys directory", dir))?;
            let path = entry.path();
            let is_key = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("pub") || e.eq_ignore_ascii_case("pem"));
            if is_key && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        let keys = paths
            .iter()
            .map(|p| PublicKey::read(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(keys))
    }

    /// Adds one key.
    pub fn insert(&mut self, key: PublicKey) {
        self.keys.insert(key.key_id(), key);
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Trusted key ids, sorted.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }

    /// The trusted key with this id, if any.
    pub fn get(&self, key_id: &str) -> Option<&PublicKey> {
        self.keys.get(key_id)
    }
}

/// The outcome of checking a component against its (optional) detached signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignatureStatus {
    /// No `.sig` file.
    Unsigned,
    /// Signed by a trusted key and the signature verifies.
    Valid { key_id: String },
    /// Well formed and matching the component's digest, but signed by a key that is not trusted
    /// (so the signature itself could not be checked).
    UntrustedKey { key_id: String },
    /// A signature is present but wrong: digest mismatch (tampered or corrupted component),
    /// bad signature, or a malformed `.sig`.
    Invalid { reason: String },
}

impl fmt::Display for SignatureStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsigned => f.write_str("unsigned"),
            Self::Valid { key_id } => write!(f, "signed by trusted key {key_id}"),
            Self::UntrustedKey { key_id } => write!(f, "signed by untrusted key {key_id}"),
            Self::Invalid { reason } => write!(f, "invalid signature: {reason}"),
        }
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks `component` against its detached `signature` (if any) and the trusted keys.
///
/// Order: structure (algorithm, digest and key id format, base64 signature of 64 bytes), then
/// the digest against the bytes (a mismatch means tampering whoever signed), then trust, then
/// the ed25519 signature itself (strict verification).
pub fn check(
    component: &[u8],
    signature: Option<&Signature>,
    trusted: &TrustedKeys,
) -> SignatureStatus {
    let Some(sig) = signature else {
        return SignatureStatus::Unsigned;
    };
    let invalid = |reason: String| SignatureStatus::Invalid { reason };

    if sig.algorithm != ALGORITHM {
        return invalid(format!(
            "unsupported signature algorithm {:?} (expected {ALGORITHM:?})",
            sig.algorithm
        ));
    }
    let digest_ok = sig
        .digest
        .strip_prefix(DIGEST_PREFIX)
        .is_some_and(|h| is_lower_hex(h, 64));
    if !digest_ok {
        return invalid(format!(
            "malformed digest {:?} (expected \"sha256:\" and 64 lowercase hex digits)",
            sig.digest
        ));
    }
    if !is_lower_hex(&sig.key_id, 16) {
        return invalid(format!(
            "malformed key_id {:?} (expected 16 lowercase hex digits)",
            sig.key_id
        ));
    }
    let sig_bytes = match BASE64.decode(sig.signature.trim()) {
        Ok(b) => b,
        Err(e) => return invalid(format!("signature is not valid base64 ({e})")),
    };
    let ed_sig = match ed25519_dalek::Signature::from_slice(&sig_bytes) {
        Ok(s) => s,
        Err(_) => {
            return invalid(format!(
                "signature is {} bytes, expected 64",
                sig_bytes.len()
            ));
        }
    };

    let actual = component_digest(component);
    if actual != sig.digest {
        return invalid(format!(
            "tampered or corrupted (the component is {actual}, the signature covers {})",
            sig.digest
        ));
    }

    let Some(key) = trusted.get(&sig.key_id) else {
        return SignatureStatus::UntrustedKey {
            key_id: sig.key_id.clone(),
        };
    };
    match key.inner.verify_strict(sig.digest.as_bytes(), &ed_sig) {
        Ok(()) => SignatureStatus::Valid {
            key_id: sig.key_id.clone(),
        },
        Err(_) => invalid(format!(
            "tampered or corrupted (the signature does not verify with trusted key {})",
            sig.key_id
        )),
    }
}

/// Reads the component and its `<component>.sig` (if present) and [`check`]s them. A `.sig`
/// that cannot be parsed yields [`SignatureStatus::Invalid`]; only I/O failures are errors.
pub fn check_file(
    component_path: &Path,
    trusted: &TrustedKeys,
) -> Result<SignatureStatus, SignError> {
    let component = fs::read(component_path).map_err(io_err("read component", component_path))?;
    let sig_path = signature_path(component_path);
    let text = match fs::read(&sig_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(check(&component, None, trusted));
        }
        Err(e) => return Err(io_err("read signature file", &sig_path)(e)),
    };
    let parsed = String::from_utf8(text)
        .map_err(|_| SignError::MalformedSignature {
            path: Some(sig_path.clone()),
            reason: "not UTF-8 text".into(),
        })
        .and_then(|t| Signature::from_toml(&t).map_err(|e| with_path(e, &sig_path)));
    match parsed {
        Ok(sig) => Ok(check(&component, Some(&sig), trusted)),
        Err(e) => Ok(SignatureStatus::Invalid {
            reason: e.to_string(),
        }),
    }
}

/// Whether unsigned components are admitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SignaturePolicy {
    /// Unsigned components and components signed by untrusted keys load; a present but wrong
    /// signature is still refused.
    #[default]
    Optional,
    /// Only components with a valid signature by a trusted key load.
    Required,
}

fn trusted_list(trusted: &TrustedKeys) -> String {
    if trusted.is_empty() {
        "this duchy requires signatures but trusts no keys (configure trusted public keys)".into()
    } else {
        format!(
            "this duchy requires signatures from keys [{}]",
            trusted.key_ids().join(", ")
        )
    }
}

/// Applies `policy` to `status`: `Ok(())` when the component may load, otherwise
/// [`SignError::Refused`] with a message naming `path_for_messages`.
pub fn enforce(
    path_for_messages: &Path,
    status: &SignatureStatus,
    policy: SignaturePolicy,
    trusted: &TrustedKeys,
) -> Result<(), SignError> {
    let file = path_for_messages.display();
    let message = match (status, policy) {
        (SignatureStatus::Valid { .. }, _)
        | (
            SignatureStatus::Unsigned | SignatureStatus::UntrustedKey { .. },
            SignaturePolicy::Optional,
        ) => {
            return Ok(());
        }
        (SignatureStatus::Invalid { reason }, _) => {
            format!("{file} does not match its signature: {reason}")
        }
        (SignatureStatus::Unsigned, SignaturePolicy::Required) => {
            format!("{file} is not signed; {}", trusted_list(trusted))
        }
        (SignatureStatus::UntrustedKey { key_id }, SignaturePolicy::Required) => format!(
            "{file} is signed by key {key_id}, which is not trusted; {}",
            trusted_list(trusted)
        ),
    };
    Err(SignError::Refused {
        path: path_for_messages.to_path_buf(),
        message,
    })
}
