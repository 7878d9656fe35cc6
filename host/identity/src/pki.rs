//! A development PKI: one self-signed root CA per principal plus one leaf per principal.

use std::collections::HashSet;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

use crate::{Identity, IdentityError, Principal, TrustStore};

/// File name of a principal's root certificate inside `{dir}/{stem}/`.
pub const ROOT_FILE: &str = "root.pem";
/// File name of a principal's root private key inside `{dir}/{stem}/` (development only).
pub const ROOT_KEY_FILE: &str = "root-key.pem";
/// File name of a principal's leaf certificate inside `{dir}/{stem}/`.
pub const CERT_FILE: &str = "cert.pem";
/// File name of a principal's leaf private key inside `{dir}/{stem}/`.
pub const KEY_FILE: &str = "key.pem";
/// File name of the bundle of all roots inside `{dir}`.
pub const TRUST_FILE: &str = "trust.pem";
/// File name of the list of principals inside `{dir}`.
pub const MANIFEST_FILE: &str = "principals.toml";

/// `principals.toml`: `[[principals]] name = "duchies/worker1" stem = "duchy-worker1"`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Manifest {
    principals: Vec<ManifestEntry>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ManifestEntry {
    /// Principal resource name.
    name: String,
    /// Sub-directory holding the principal's files.
    stem: String,
}

#[derive(Clone)]
struct Entry {
    identity: Identity,
    /// PEM of the root's private key; needed only to issue more leaves.
    root_key_pem: Option<String>,
}

/// A development PKI generated with rcgen: one root CA (with SKID) per principal + one leaf
/// (with AKID = root SKID). All keys are ECDSA P-256.
#[derive(Clone)]
pub struct DevPki {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for DevPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevPki")
            .field("principals", &self.principals())
            .finish_non_exhaustive()
    }
}

impl DevPki {
    /// Generates a root CA and a leaf for every principal (duplicates are an error).
    pub fn generate(principals: &[Principal]) -> Result<DevPki, IdentityError> {
        let mut seen = HashSet::new();
        let mut entries = Vec::with_capacity(principals.len());
        for principal in principals {
            if !seen.insert(principal) {
                return Err(IdentityError::DuplicatePrincipal(principal.resource_name()));
            }
            let root = Root::generate(principal)?;
            let (cert_pem, key_pem) = issue_leaf(principal, &root.issuer, true)?;
            entries.push(Entry {
                identity: Identity {
                    principal: principal.clone(),
                    cert_pem,
                    key_pem,
                    root_pem: root.cert_pem,
                },
                root_key_pem: Some(root.issuer.key().serialize_pem()),
            });
        }
        Ok(DevPki { entries })
    }

    /// The identity (leaf + key + root) of `p`.
    pub fn identity(&self, p: &Principal) -> Option<&Identity> {
        self.entry(p).map(|e| &e.identity)
    }

    /// All principals, in generation order.
    pub fn principals(&self) -> Vec<Principal> {
        self.entries
            .iter()
            .map(|e| e.identity.principal.clone())
            .collect()
    }

    /// A trust store with the roots of all principals.
    pub fn trust_store(&self) -> Result<TrustStore, IdentityError> {
        let mut store = TrustStore::new();
        for e in &self.entries {
            store.add_root(e.identity.principal.clone(), &e.identity.root_pem)?;
        }
        Ok(store)
    }

    /// Writes `{dir}/{stem}/root.pem`, `{dir}/{stem}/cert.pem`, `{dir}/{stem}/key.pem` (key file
    /// mode 0600) and `{dir}/trust.pem` (bundle) and `{dir}/principals.toml` (list of
    /// {principal resource name, stem}).
    ///
    /// Additionally writes `{dir}/{stem}/root-key.pem` (mode 0600) when the root key is known, so
    /// that [`identity_without_akid`] keeps working after [`DevPki::load`].
    /// Directories are created as needed; existing files are overwritten.
    pub fn write(&self, dir: &Path) -> Result<(), IdentityError> {
        std::fs::create_dir_all(dir).map_err(IdentityError::io(dir))?;
        let mut manifest = Manifest {
            principals: Vec::with_capacity(self.entries.len()),
        };
        for e in &self.entries {
            let id = &e.identity;
            let stem = id.principal.file_stem();
            let sub = dir.join(&stem);
            std::fs::create_dir_all(&sub).map_err(IdentityError::io(&sub))?;
            write_file(&sub.join(ROOT_FILE), &id.root_pem, false)?;
            write_file(&sub.join(CERT_FILE), &id.cert_pem, false)?;
            write_file(&sub.join(KEY_FILE), &id.key_pem, true)?;
            if let Some(root_key) = &e.root_key_pem {
                write_file(&sub.join(ROOT_KEY_FILE), root_key, true)?;
            }
            manifest.principals.push(ManifestEntry {
                name: id.principal.resource_name(),
                stem,
            });
        }
        write_file(
            &dir.join(TRUST_FILE),
            &self.trust_store()?.roots_pem(),
            false,
        )?;
        self.trust_store()?
            .write_bundle(dir, crate::files::TRUST_BUNDLE_FILE)?;
        write_file(
            &dir.join(MANIFEST_FILE),
            &toml::to_string(&manifest)?,
            false,
        )?;
        Ok(())
    }

    /// Loads a PKI written by [`DevPki::write`]. `root-key.pem` files are optional.
    pub fn load(dir: &Path) -> Result<DevPki, IdentityError> {
        let mut entries = Vec::new();
        for principal in read_manifest(dir)? {
            let root_key_path = dir.join(principal.file_stem()).join(ROOT_KEY_FILE);
            let root_key_pem = match std::fs::read_to_string(&root_key_path) {
                Ok(pem) => Some(pem),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(IdentityError::io(&root_key_path)(e)),
            };
            entries.push(Entry {
                identity: Identity::load(dir, principal)?,
                root_key_pem,
            });
        }
        Ok(DevPki { entries })
    }

    fn entry(&self, p: &Principal) -> Option<&Entry> {
        self.entries.iter().find(|e| e.identity.principal == *p)
    }

    /// The issuer (root certificate + root key) of `p`.
    fn issuer(&self, p: &Principal) -> Result<(Issuer<'static, KeyPair>, &Entry), IdentityError> {
        let entry = self
            .entry(p)
            .ok_or_else(|| IdentityError::UnknownPrincipal(p.resource_name()))?;
        let key_pem = entry
            .root_key_pem
            .as_deref()
            .ok_or_else(|| IdentityError::MissingRootKey(p.resource_name()))?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(IdentityError::generation(format!("root key of {p}")))?;
        let issuer = Issuer::from_ca_cert_pem(&entry.identity.root_pem, key).map_err(
            IdentityError::generation(format!("root certificate of {p}")),
        )?;
        Ok((issuer, entry))
    }
}

/// Reads `{dir}/principals.toml` and checks that every stem matches its principal.
pub(crate) fn read_manifest(dir: &Path) -> Result<Vec<Principal>, IdentityError> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(IdentityError::io(&path))?;
    let manifest: Manifest =
        toml::from_str(&text).map_err(|source| IdentityError::ManifestParse {
            path: path.clone(),
            source,
        })?;
    let mut seen = HashSet::new();
    let mut principals = Vec::with_capacity(manifest.principals.len());
    for entry in manifest.principals {
        let principal = Principal::parse(&entry.name)?;
        if principal.file_stem() != entry.stem {
            return Err(IdentityError::ManifestInvalid {
                path,
                reason: format!(
                    "stem {:?} of {} should be {:?}",
                    entry.stem,
                    entry.name,
                    principal.file_stem()
                ),
            });
        }
        if !seen.insert(principal.clone()) {
            return Err(IdentityError::ManifestInvalid {
                path,
                reason: format!("{} listed more than once", entry.name),
            });
        }
        principals.push(principal);
    }
    Ok(principals)
}

/// A freshly generated self-signed root CA.
struct Root {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Root {
    fn generate(principal: &Principal) -> Result<Root, IdentityError> {
        let context = format!("root CA of {principal}");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(IdentityError::generation(&context))?;
        let params = root_params(principal);
        let cert = params
            .self_signed(&key)
            .map_err(IdentityError::generation(&context))?;
        Ok(Root {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }
}

/// Parameters of `principal`'s development root CA.
fn root_params(principal: &Principal) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Halo development PKI");
    params.distinguished_name.push(
        DnType::CommonName,
        format!("{} root CA", principal.resource_name()),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.key_identifier_method = KeyIdMethod::Sha256;
    params
}

/// Issues a serverAuth+clientAuth leaf for `principal` (SANs localhost, 127.0.0.1, ::1),
/// with or without an Authority Key Identifier. Returns `(cert_pem, key_pem)`.
fn issue_leaf(
    principal: &Principal,
    issuer: &Issuer<'_, KeyPair>,
    with_akid: bool,
) -> Result<(String, String), IdentityError> {
    issue_leaf_with(principal, issuer, |params| {
        params.use_authority_key_identifier_extension = with_akid;
    })
}

/// [`issue_leaf`] with the parameters adjusted by `customize` before signing.
fn issue_leaf_with(
    principal: &Principal,
    issuer: &Issuer<'_, KeyPair>,
    customize: impl FnOnce(&mut CertificateParams),
) -> Result<(String, String), IdentityError> {
    let context = format!("leaf certificate of {principal}");
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(IdentityError::generation(&context))?;
    let mut params = CertificateParams::new(vec![
        crate::TLS_DOMAIN.to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])
    .map_err(IdentityError::generation(&context))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Halo development PKI");
    params
        .distinguished_name
        .push(DnType::CommonName, principal.resource_name());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    customize(&mut params);
    let cert = params
        .signed_by(&key, issuer)
        .map_err(IdentityError::generation(&context))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// For tests: a leaf for `principal` issued by a NEW throwaway root that is not in any
/// TrustStore (an impostor). Its AKID is the throwaway root's SKID; `root_pem` is that root.
pub fn impostor_identity(principal: &Principal) -> Result<Identity, IdentityError> {
    let root = Root::generate(principal)?;
    let (cert_pem, key_pem) = issue_leaf(principal, &root.issuer, true)?;
    Ok(Identity {
        principal: principal.clone(),
        cert_pem,
        key_pem,
        root_pem: root.cert_pem,
    })
}

/// For tests: a new leaf of `principal` from its real root, its parameters adjusted by
/// `customize` before signing.
fn reissued(
    pki: &DevPki,
    principal: &Principal,
    customize: impl FnOnce(&mut CertificateParams),
) -> Result<Identity, IdentityError> {
    let (root, entry) = pki.issuer(principal)?;
    let (cert_pem, key_pem) = issue_leaf_with(principal, &root, customize)?;
    Ok(Identity {
        principal: principal.clone(),
        cert_pem,
        key_pem,
        root_pem: entry.identity.root_pem.clone(),
    })
}

/// For tests: a leaf for `issuer` issued by `issuer`'s real root (so it passes TLS chain
/// verification) but WITHOUT an Authority Key Identifier extension.
///
/// Needs the root key, i.e. a generated PKI or one loaded from a directory with `root-key.pem`.
pub fn identity_without_akid(pki: &DevPki, issuer: &Principal) -> Result<Identity, IdentityError> {
    reissued(pki, issuer, |params| {
        params.use_authority_key_identifier_extension = false;
    })
}

/// For tests: an identity of `principal` whose `cert_pem` is a chain of 2 certificates: a fresh
/// leaf (with AKID) issued by `principal`'s real root, followed by that root.
pub fn identity_with_two_cert_chain(
    pki: &DevPki,
    principal: &Principal,
) -> Result<Identity, IdentityError> {
    let (root, entry) = pki.issuer(principal)?;
    let (leaf_pem, key_pem) = issue_leaf(principal, &root, true)?;
    let root_pem = entry.identity.root_pem.clone();
    let mut cert_pem = leaf_pem;
    if !cert_pem.ends_with('\n') {
        cert_pem.push('\n');
    }
    cert_pem.push_str(&root_pem);
    Ok(Identity {
        principal: principal.clone(),
        cert_pem,
        key_pem,
        root_pem,
    })
}

/// For tests (an attacker's certificate): a leaf naming `victim` whose Authority Key Identifier
/// is `victim`'s root SKID, but which `signer`'s root signed (its Issuer is `signer`'s root
/// name, so it chains to `signer`'s trusted root by name; with `victim_issuer_name` its Issuer
/// is `victim`'s root name instead). A server that took the AKID as the identity without
/// checking the signature would take it for `victim`.
pub fn forged_akid_identity(
    pki: &DevPki,
    signer: &Principal,
    victim: &Principal,
    victim_issuer_name: bool,
) -> Result<Identity, IdentityError> {
    let (_, signer_entry) = pki.issuer(signer)?;
    let victim_entry = pki
        .entry(victim)
        .ok_or_else(|| IdentityError::UnknownPrincipal(victim.resource_name()))?;
    let victim_skid =
        crate::certificate_skid(&victim_entry.identity.root_pem)?.ok_or_else(|| {
            IdentityError::MissingSkid {
                principal: victim.resource_name(),
            }
        })?;
    let key_pem = signer_entry
        .root_key_pem
        .as_deref()
        .ok_or_else(|| IdentityError::MissingRootKey(signer.resource_name()))?;
    let key = KeyPair::from_pem(key_pem)
        .map_err(IdentityError::generation(format!("root key of {signer}")))?;
    // The signer's root as an issuer (same subject name as `Root::generate` gives it), with the
    // victim's key identifier written into the leaf's AKID.
    let mut params = root_params(if victim_issuer_name { victim } else { signer });
    params.key_identifier_method = KeyIdMethod::PreSpecified(victim_skid);
    let forger = Issuer::new(params, key);
    let (cert_pem, key_pem) = issue_leaf(victim, &forger, true)?;
    Ok(Identity {
        principal: victim.clone(),
        cert_pem,
        key_pem,
        root_pem: victim_entry.identity.root_pem.clone(),
    })
}

/// For tests: a leaf of `principal` from its real root that expired a day ago.
pub fn expired_identity(pki: &DevPki, principal: &Principal) -> Result<Identity, IdentityError> {
    let now = time::OffsetDateTime::now_utc();
    reissued(pki, principal, |params| {
        params.not_before = now - time::Duration::days(30);
        params.not_after = now - time::Duration::days(1);
    })
}

/// For tests: a leaf of `principal` from its real root carrying a critical extension nobody
/// understands (OID 1.3.6.1.4.1.55555.1), which a verifier must refuse.
pub fn critical_extension_identity(
    pki: &DevPki,
    principal: &Principal,
) -> Result<Identity, IdentityError> {
    reissued(pki, principal, |params| {
        let mut ext =
            rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 55555, 1], vec![5, 0]);
        ext.set_criticality(true);
        params.custom_extensions.push(ext);
    })
}

/// For tests: a CA certificate (basic constraints cA=true, keyCertSign) that `principal`'s real
/// root issued, with an AKID, presented as a leaf.
pub fn ca_as_leaf_identity(pki: &DevPki, principal: &Principal) -> Result<Identity, IdentityError> {
    reissued(pki, principal, |params| {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
    })
}

/// Writes `contents` to `path`; private files get mode 0600 on Unix.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), IdentityError> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(IdentityError::io(path))?;
    #[cfg(unix)]
    if private {
        // `mode` only applies on creation; tighten pre-existing files too.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(IdentityError::io(path))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    file.write_all(contents.as_bytes())
        .map_err(IdentityError::io(path))?;
    Ok(())
}
