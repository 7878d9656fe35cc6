//! Identity from files an operator already has: this principal's certificate and private
//! key, and a trust bundle naming the root CA(s) of every other principal.
//!
//! The trust bundle is a TOML file mapping principal resource names to PEM files (paths
//! relative to the bundle); a file may hold several roots of one principal (rotation):
//!
//! ```toml
//! [roots]
//! "kingdom" = "roots/kingdom.pem"
//! "duchies/eu-west" = "roots/eu-west.pem"
//! "dataProviders/edp1" = "roots/edp1.pem"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::trust::der_to_pem;
use crate::{Identity, IdentityError, Principal, TrustStore};

/// File name of the trust bundle [`crate::DevPki::write`] writes beside the PKI.
pub const TRUST_BUNDLE_FILE: &str = "trust-bundle.toml";

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Bundle {
    roots: BTreeMap<String, PathBuf>,
}

impl TrustStore {
    /// Loads a trust bundle file (see the module documentation). Unknown keys, unparsable
    /// principal names, missing files, non-CA roots and one root claimed by two principals
    /// are errors naming the entry.
    pub fn load_bundle(path: &Path) -> Result<TrustStore, IdentityError> {
        let text = std::fs::read_to_string(path).map_err(IdentityError::io(path))?;
        let bundle: Bundle =
            toml::from_str(&text).map_err(|source| IdentityError::ManifestParse {
                path: path.to_path_buf(),
                source,
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut store = TrustStore::new();
        for (name, file) in bundle.roots {
            let principal = Principal::parse(&name)?;
            let file = base.join(file);
            let pem = std::fs::read_to_string(&file).map_err(IdentityError::io(&file))?;
            let mut any = false;
            for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let der = der.map_err(IdentityError::pem(format!(
                    "root of {principal} in {}",
                    file.display()
                )))?;
                store.add_root(principal.clone(), &der_to_pem(&der))?;
                any = true;
            }
            if !any {
                return Err(IdentityError::ManifestInvalid {
                    path: path.to_path_buf(),
                    reason: format!(
                        "{} (root of {principal}) holds no certificate",
                        file.display()
                    ),
                });
            }
        }
        Ok(store)
    }

    /// Writes a trust bundle for the roots of this store into `dir` (`roots/{stem}.pem` plus
    /// the bundle file `name`).
    pub fn write_bundle(&self, dir: &Path, name: &str) -> Result<(), IdentityError> {
        let roots_dir = dir.join("roots");
        std::fs::create_dir_all(&roots_dir).map_err(IdentityError::io(&roots_dir))?;
        let mut bundle = Bundle {
            roots: BTreeMap::new(),
        };
        let mut principals: Vec<Principal> = self.roots().map(|(p, _)| p.clone()).collect();
        principals.dedup();
        for p in principals {
            let rel = PathBuf::from("roots").join(format!("{}.pem", p.file_stem()));
            let file = dir.join(&rel);
            std::fs::write(&file, self.roots_pem_of(&p)).map_err(IdentityError::io(&file))?;
            bundle.roots.insert(p.resource_name(), rel);
        }
        let path = dir.join(name);
        std::fs::write(&path, toml::to_string(&bundle)?).map_err(IdentityError::io(&path))?;
        Ok(())
    }
}

impl Identity {
    /// `principal`'s identity from its certificate and key files. The certificate must chain
    /// to one of `principal`'s roots in `trust` (checked here, so a certificate of another
    /// principal or from an unknown CA is refused at start-up rather than by every peer).
    pub fn from_files(
        principal: Principal,
        certificate: &Path,
        key: &Path,
        trust: &TrustStore,
    ) -> Result<Identity, IdentityError> {
        let cert_pem =
            std::fs::read_to_string(certificate).map_err(IdentityError::io(certificate))?;
        let key_pem = std::fs::read_to_string(key).map_err(IdentityError::io(key))?;
        let root_pem = trust.roots_pem_of(&principal);
        if root_pem.is_empty() {
            return Err(IdentityError::NoRootFor(principal.resource_name()));
        }
        let identity = Identity {
            principal: principal.clone(),
            cert_pem,
            key_pem,
            root_pem,
        };
        let chain = identity.chain_der()?;
        let owner = trust
            .identify(Some(&chain))
            .map_err(|s| IdentityError::X509 {
                context: format!("certificate {}", certificate.display()),
                message: s.message().to_owned(),
            })?;
        if owner != principal {
            return Err(IdentityError::X509 {
                context: format!("certificate {}", certificate.display()),
                message: format!("it identifies {owner}, not {principal}"),
            });
        }
        let key_der = rustls_pki_types::PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
            .map_err(IdentityError::pem(format!("private key {}", key.display())))?;
        // The key must be the certificate's: a mismatch would otherwise surface only at the
        // first handshake, as an opaque TLS error.
        let provider = rustls::crypto::ring::default_provider();
        rustls::sign::CertifiedKey::from_der(chain, key_der, &provider).map_err(|e| {
            IdentityError::X509 {
                context: format!("private key {}", key.display()),
                message: format!(
                    "it does not belong to certificate {}: {e}",
                    certificate.display()
                ),
            }
        })?;
        Ok(identity)
    }
}
