#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Identity from an operator's files: what `TrustStore::load_bundle` and
//! `Identity::from_files` refuse, each with the file or principal named.

use std::path::{Path, PathBuf};

use halo_identity::{DevPki, Identity, Principal, TRUST_BUNDLE_FILE, TrustStore};

fn duchy(id: &str) -> Principal {
    Principal::Duchy(id.into())
}

fn setup() -> (tempfile::TempDir, DevPki) {
    halo_identity::init_crypto();
    let pki = DevPki::generate(&[
        Principal::Kingdom,
        duchy("eu-west"),
        duchy("agg"),
        Principal::DataProvider("edp1".into()),
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    pki.write(&dir.path().join("pki")).unwrap();
    (dir, pki)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn files_of(dir: &Path, id: &Identity, name: &str) -> (PathBuf, PathBuf) {
    (
        write(dir, &format!("{name}.crt"), &id.cert_pem),
        write(dir, &format!("{name}.key"), &id.key_pem),
    )
}

#[test]
fn the_bundle_halo_pki_writes_loads_and_identifies_every_principal() {
    let (dir, pki) = setup();
    let trust = TrustStore::load_bundle(&dir.path().join("pki").join(TRUST_BUNDLE_FILE)).unwrap();
    assert_eq!(trust.len(), 4);
    let me = pki.identity(&duchy("eu-west")).unwrap();
    let (cert, key) = files_of(dir.path(), me, "eu-west");
    let id = Identity::from_files(duchy("eu-west"), &cert, &key, &trust).unwrap();
    assert_eq!(id.certificate_der().unwrap(), me.certificate_der().unwrap());
    assert_eq!(id.root_pem, trust.roots_pem_of(&duchy("eu-west")));
}

#[test]
fn another_principals_certificate_or_a_foreign_key_is_refused() {
    let (dir, pki) = setup();
    let trust = TrustStore::load_bundle(&dir.path().join("pki").join(TRUST_BUNDLE_FILE)).unwrap();
    let agg = pki.identity(&duchy("agg")).unwrap();
    let me = pki.identity(&duchy("eu-west")).unwrap();
    // agg's certificate and key, claimed as eu-west.
    let (cert, key) = files_of(dir.path(), agg, "agg");
    let err = Identity::from_files(duchy("eu-west"), &cert, &key, &trust).unwrap_err();
    assert!(
        err.to_string().contains("duchies/agg, not duchies/eu-west"),
        "{err}"
    );
    // eu-west's certificate with agg's key.
    let (cert, _) = files_of(dir.path(), me, "eu-west");
    let err = Identity::from_files(duchy("eu-west"), &cert, &key, &trust).unwrap_err();
    assert!(
        err.to_string().contains("does not belong to certificate"),
        "{err}"
    );
    // A principal the bundle has no root for.
    let err = Identity::from_files(duchy("nobody"), &cert, &key, &trust).unwrap_err();
    assert!(err.to_string().contains("duchies/nobody"), "{err}");
}

#[test]
fn expired_and_ca_certificates_are_refused_as_own_identity() {
    let (dir, pki) = setup();
    let trust = TrustStore::load_bundle(&dir.path().join("pki").join(TRUST_BUNDLE_FILE)).unwrap();
    let expired = halo_identity::expired_identity(&pki, &duchy("eu-west")).unwrap();
    let (cert, key) = files_of(dir.path(), &expired, "expired");
    let err = Identity::from_files(duchy("eu-west"), &cert, &key, &trust).unwrap_err();
    assert!(err.to_string().contains("expired.crt"), "{err}");
    let ca = halo_identity::ca_as_leaf_identity(&pki, &duchy("eu-west")).unwrap();
    let (cert, key) = files_of(dir.path(), &ca, "ca");
    let err = Identity::from_files(duchy("eu-west"), &cert, &key, &trust).unwrap_err();
    assert!(err.to_string().contains("ca.crt"), "{err}");
}

#[test]
fn malformed_bundles_are_refused_naming_the_entry() {
    let (dir, pki) = setup();
    let d = dir.path();
    let root = |p: &Principal| pki.identity(p).unwrap().root_pem.clone();
    write(d, "agg-root.pem", &root(&duchy("agg")));
    write(d, "eu-root.pem", &root(&duchy("eu-west")));
    let leaf = pki.identity(&duchy("agg")).unwrap().cert_pem.clone();
    write(d, "leaf.pem", &leaf);
    write(d, "empty.pem", "");
    let load = |text: &str| {
        let p = write(d, "bundle.toml", text);
        TrustStore::load_bundle(&p).unwrap_err().to_string()
    };
    // One root claimed by two principals.
    let err = load(
        "[roots]\n\"duchies/agg\" = \"agg-root.pem\"\n\"duchies/eu-west\" = \"agg-root.pem\"\n",
    );
    assert!(err.contains("already used"), "{err}");
    // A leaf given as a root.
    let err = load("[roots]\n\"duchies/agg\" = \"leaf.pem\"\n");
    assert!(err.contains("CA"), "{err}");
    // An empty root file.
    let err = load("[roots]\n\"duchies/agg\" = \"empty.pem\"\n");
    assert!(
        err.contains("empty.pem") && err.contains("no certificate"),
        "{err}"
    );
    // A missing file, a bad principal name, an unknown key.
    let err = load("[roots]\n\"duchies/agg\" = \"nope.pem\"\n");
    assert!(err.contains("nope.pem"), "{err}");
    let err = load("[roots]\n\"duchies/../agg\" = \"agg-root.pem\"\n");
    assert!(err.contains("duchies/../agg"), "{err}");
    let err = load("[roots]\n\"duchies/agg\" = \"agg-root.pem\"\n[extra]\nx = 1\n");
    assert!(err.contains("extra"), "{err}");
    // Two roots of one principal in one file (rotation) load.
    write(
        d,
        "two.pem",
        &format!("{}{}", root(&duchy("agg")), root(&duchy("eu-west"))),
    );
    let p = write(d, "bundle.toml", "[roots]\n\"duchies/agg\" = \"two.pem\"\n");
    assert_eq!(TrustStore::load_bundle(&p).unwrap().len(), 2);
}
