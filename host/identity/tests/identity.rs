//! Tests of the public API: principals, PKI generation/persistence and AKID identification.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used)]

use halo_identity::{
    DevPki, INVALID_CLIENT_CERTIFICATE, Identity, IdentityError, MULTIPLE_CLIENT_CERTIFICATES,
    NO_AKID, NO_CLIENT_CERTIFICATE, NO_IDENTITY, Principal, TrustStore, ca_as_leaf_identity,
    certificate_akid, certificate_skid, expired_identity, forged_akid_identity,
    identity_with_two_cert_chain, identity_without_akid, impostor_identity,
};
use rustls_pki_types::CertificateDer;
use std::sync::OnceLock;
use tonic::Code;

fn principals() -> Vec<Principal> {
    vec![
        Principal::Kingdom,
        Principal::Duchy("aggregator".into()),
        Principal::Duchy("worker1".into()),
        Principal::Duchy("worker2".into()),
        Principal::DataProvider("edp1".into()),
        Principal::MeasurementConsumer("mc1".into()),
    ]
}

/// One PKI shared by all tests of this binary (generation is the expensive part).
fn pki() -> &'static DevPki {
    static PKI: OnceLock<DevPki> = OnceLock::new();
    PKI.get_or_init(|| DevPki::generate(&principals()).unwrap())
}

fn leaf(id: &Identity) -> Vec<CertificateDer<'static>> {
    vec![CertificateDer::from(id.certificate_der().unwrap())]
}

fn assert_unauthenticated(result: Result<Principal, tonic::Status>, message: &str) {
    let status = result.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().starts_with(message),
        "unexpected message {:?}, expected {message:?}",
        status.message()
    );
}

#[test]
fn principal_names_round_trip() {
    let expected = [
        ("kingdom", "kingdom"),
        ("duchies/aggregator", "duchy-aggregator"),
        ("duchies/worker1", "duchy-worker1"),
        ("duchies/worker2", "duchy-worker2"),
        ("dataProviders/edp1", "edp-edp1"),
        ("measurementConsumers/mc1", "mc-mc1"),
    ];
    for (p, (name, stem)) in principals().iter().zip(expected) {
        assert_eq!(p.resource_name(), name);
        assert_eq!(p.file_stem(), stem);
        assert_eq!(p.to_string(), name);
        assert_eq!(&Principal::parse(name).unwrap(), p);
        assert_eq!(&name.parse::<Principal>().unwrap(), p);
    }
    for bad in [
        "",
        "kingdoms",
        "duchies",
        "duchies/",
        "duchies/a/b",
        "foo/bar",
        "duchies/../x",
        "duchies/a b",
        "Kingdom",
    ] {
        assert!(
            matches!(
                Principal::parse(bad),
                Err(IdentityError::InvalidResourceName { .. })
            ),
            "{bad:?} should not parse"
        );
    }
    assert_eq!(Principal::Duchy("w".into()).duchy_id(), Some("w"));
    assert_eq!(Principal::Kingdom.duchy_id(), None);
}

#[test]
fn generate_rejects_duplicates() {
    let dup = [Principal::Kingdom, Principal::Kingdom];
    assert!(matches!(
        DevPki::generate(&dup),
        Err(IdentityError::DuplicatePrincipal(_))
    ));
}

#[test]
fn leaves_are_issued_by_their_own_root() {
    let pki = pki();
    assert_eq!(pki.principals(), principals());
    let mut skids = std::collections::HashSet::new();
    for p in principals() {
        let id = pki.identity(&p).unwrap();
        assert_eq!(id.principal, p);
        let skid = certificate_skid(&id.root_pem).unwrap().unwrap();
        let akid = certificate_akid(&id.cert_pem).unwrap().unwrap();
        assert_eq!(skid, akid, "{p}");
        assert!(skids.insert(skid), "roots must be distinct");
        assert_eq!(id.chain_der().unwrap().len(), 1);
        assert!(
            !format!("{id:?}").contains("PRIVATE KEY"),
            "Debug must redact the key"
        );
    }
    assert!(pki.identity(&Principal::Duchy("nobody".into())).is_none());
}

#[test]
fn identify_maps_each_leaf_to_its_principal() {
    let pki = pki();
    let trust = pki.trust_store().unwrap();
    assert_eq!(trust.len(), principals().len());
    for p in principals() {
        let id = pki.identity(&p).unwrap();
        assert_eq!(trust.identify(Some(&leaf(id))).unwrap(), p);
        let akid = certificate_akid(&id.cert_pem).unwrap().unwrap();
        assert_eq!(trust.principal_for_akid(&akid), Some(&p));
    }
    // A store with only some roots does not know the others.
    let mut partial = TrustStore::new();
    let kingdom = pki.identity(&Principal::Kingdom).unwrap();
    partial
        .add_root(Principal::Kingdom, &kingdom.root_pem)
        .unwrap();
    assert_eq!(
        partial.identify(Some(&leaf(kingdom))).unwrap(),
        Principal::Kingdom
    );
    let worker = pki.identity(&Principal::Duchy("worker1".into())).unwrap();
    assert_unauthenticated(partial.identify(Some(&leaf(worker))), NO_IDENTITY);
}

#[test]
fn identify_rejects_missing_and_unparsable_certificates() {
    let trust = pki().trust_store().unwrap();
    assert_unauthenticated(trust.identify(None), NO_CLIENT_CERTIFICATE);
    assert_unauthenticated(trust.identify(Some(&[])), NO_CLIENT_CERTIFICATE);
    let garbage = vec![CertificateDer::from(vec![0x30, 0x03, 0x01, 0x02, 0x03])];
    let status = trust.identify(Some(&garbage)).unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[test]
fn identify_rejects_leaf_without_akid() {
    let pki = pki();
    let trust = pki.trust_store().unwrap();
    let worker = Principal::Duchy("worker1".into());
    let id = identity_without_akid(pki, &worker).unwrap();
    assert_eq!(certificate_akid(&id.cert_pem).unwrap(), None);
    assert_eq!(id.root_pem, pki.identity(&worker).unwrap().root_pem);
    assert_unauthenticated(trust.identify(Some(&leaf(&id))), NO_AKID);
}

#[test]
fn identify_rejects_impostor() {
    let trust = pki().trust_store().unwrap();
    let id = impostor_identity(&Principal::Duchy("aggregator".into())).unwrap();
    assert!(certificate_akid(&id.cert_pem).unwrap().is_some());
    assert_unauthenticated(trust.identify(Some(&leaf(&id))), NO_IDENTITY);
}

/// The hole this check closes: a data provider's root signs a leaf whose AKID is a duchy root's
/// SKID (public in trust.pem). The AKID alone would name the duchy.
#[test]
fn identify_rejects_forged_akid() {
    let pki = pki();
    let trust = pki.trust_store().unwrap();
    let edp = Principal::DataProvider("edp1".into());
    for victim in [
        Principal::Duchy("aggregator".into()),
        Principal::Kingdom,
        Principal::MeasurementConsumer("mc1".into()),
    ] {
        for victim_issuer_name in [false, true] {
            let forged = forged_akid_identity(pki, &edp, &victim, victim_issuer_name).unwrap();
            let victim_skid = certificate_skid(&pki.identity(&victim).unwrap().root_pem).unwrap();
            assert_eq!(certificate_akid(&forged.cert_pem).unwrap(), victim_skid);
            assert_unauthenticated(
                trust.identify(Some(&leaf(&forged))),
                INVALID_CLIENT_CERTIFICATE,
            );
            // Nor does it pass as the victim's signing certificate.
            let err = trust
                .verify_signature(
                    &victim,
                    &forged.certificate_der().unwrap(),
                    b"m",
                    &forged.sign(b"m").unwrap(),
                    halo_identity::ECDSA_WITH_SHA256_OID,
                )
                .unwrap_err()
                .to_string();
            assert!(err.contains("root of"), "{err}");
        }
    }
}

#[test]
fn identify_rejects_expired_and_ca_leaves() {
    let pki = pki();
    let trust = pki.trust_store().unwrap();
    let worker = Principal::Duchy("worker1".into());
    let expired = expired_identity(pki, &worker).unwrap();
    let status = trust.identify(Some(&leaf(&expired))).unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("expired"), "{status:?}");
    // A critical extension nobody understands.
    let critical = halo_identity::critical_extension_identity(pki, &worker).unwrap();
    let status = trust.identify(Some(&leaf(&critical))).unwrap_err();
    assert!(
        status.message().contains("unknown critical extension"),
        "{status:?}"
    );
    // A CA certificate issued by the right root.
    let root = ca_as_leaf_identity(pki, &worker).unwrap();
    let status = trust.identify(Some(&leaf(&root))).unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("CA certificate"), "{status:?}");
}

#[test]
fn identify_rejects_two_certificate_chain() {
    let pki = pki();
    let trust = pki.trust_store().unwrap();
    let id = identity_with_two_cert_chain(pki, &Principal::DataProvider("edp1".into())).unwrap();
    let chain = id.chain_der().unwrap();
    assert_eq!(chain.len(), 2);
    // The leaf alone is fine; the chain is not.
    assert_eq!(
        trust.identify(Some(&chain[..1])).unwrap(),
        Principal::DataProvider("edp1".into())
    );
    assert_unauthenticated(trust.identify(Some(&chain)), MULTIPLE_CLIENT_CERTIFICATES);
}

#[test]
fn authenticate_without_tls_is_unauthenticated() {
    let trust = pki().trust_store().unwrap();
    let req = tonic::Request::new(());
    assert_unauthenticated(trust.authenticate(&req), NO_CLIENT_CERTIFICATE);
}

#[test]
fn add_root_requires_skid_and_unique_skids() {
    let pki = pki();
    let mut trust = TrustStore::new();
    let no_skid = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    // (rcgen's simple certificate is not a CA either; either refusal will do.)
    assert!(matches!(
        trust.add_root(Principal::Kingdom, &no_skid.cert.pem()),
        Err(IdentityError::MissingSkid { .. } | IdentityError::X509 { .. })
    ));
    // A leaf is not a root.
    let leaf_pem = &pki.identity(&Principal::Kingdom).unwrap().cert_pem;
    let e = trust.add_root(Principal::Kingdom, leaf_pem).unwrap_err();
    assert!(e.to_string().contains("must be a CA"), "{e}");
    assert!(matches!(
        trust.add_root(Principal::Kingdom, "not a pem"),
        Err(IdentityError::Pem { .. })
    ));
    let kingdom_root = &pki.identity(&Principal::Kingdom).unwrap().root_pem;
    trust.add_root(Principal::Kingdom, kingdom_root).unwrap();
    // Idempotent for the same principal, an error for another one.
    trust.add_root(Principal::Kingdom, kingdom_root).unwrap();
    assert_eq!(trust.len(), 1);
    assert!(matches!(
        trust.add_root(Principal::Duchy("worker1".into()), kingdom_root),
        Err(IdentityError::DuplicateSkid { .. })
    ));
    assert_eq!(trust.roots_pem().matches("BEGIN CERTIFICATE").count(), 1);
}

#[test]
fn write_load_round_trip() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    pki.write(dir.path()).unwrap();

    for p in principals() {
        let sub = dir.path().join(p.file_stem());
        for file in ["root.pem", "cert.pem", "key.pem", "root-key.pem"] {
            assert!(sub.join(file).is_file(), "{}", sub.join(file).display());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for file in ["key.pem", "root-key.pem"] {
                let mode = std::fs::metadata(sub.join(file))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{file} of {p}");
            }
        }
    }
    let trust_pem = std::fs::read_to_string(dir.path().join("trust.pem")).unwrap();
    assert_eq!(trust_pem, pki.trust_store().unwrap().roots_pem());
    let manifest = std::fs::read_to_string(dir.path().join("principals.toml")).unwrap();
    assert!(manifest.contains("duchies/worker1"), "{manifest}");
    assert!(manifest.contains("duchy-worker1"), "{manifest}");

    let loaded = DevPki::load(dir.path()).unwrap();
    assert_eq!(loaded.principals(), pki.principals());
    for p in principals() {
        let (a, b) = (pki.identity(&p).unwrap(), loaded.identity(&p).unwrap());
        assert_eq!(a.principal, b.principal);
        assert_eq!(a.cert_pem, b.cert_pem);
        assert_eq!(a.key_pem, b.key_pem);
        assert_eq!(a.root_pem, b.root_pem);
        let single = Identity::load(dir.path(), p.clone()).unwrap();
        assert_eq!(single.cert_pem, a.cert_pem);
    }
    let trust = TrustStore::load(dir.path()).unwrap();
    assert_eq!(trust.roots_pem(), trust_pem);

    // Root keys survive the round trip: test leaves can still be issued.
    let worker2 = Principal::Duchy("worker2".into());
    let no_akid = identity_without_akid(&loaded, &worker2).unwrap();
    assert_unauthenticated(trust.identify(Some(&leaf(&no_akid))), NO_AKID);
    let again = identity_with_two_cert_chain(&loaded, &worker2).unwrap();
    assert_eq!(
        trust
            .identify(Some(&again.chain_der().unwrap()[..1]))
            .unwrap(),
        worker2
    );

    // Without root keys the PKI still loads, but cannot issue.
    std::fs::remove_file(dir.path().join(worker2.file_stem()).join("root-key.pem")).unwrap();
    let loaded = DevPki::load(dir.path()).unwrap();
    assert!(matches!(
        identity_without_akid(&loaded, &worker2),
        Err(IdentityError::MissingRootKey(_))
    ));
}

#[test]
fn load_reports_paths() {
    let dir = tempfile::tempdir().unwrap();
    let err = DevPki::load(dir.path()).unwrap_err();
    assert!(matches!(err, IdentityError::Io { .. }));
    assert!(err.to_string().contains("principals.toml"), "{err}");

    std::fs::write(
        dir.path().join("principals.toml"),
        "[[principals]]\nname = \"duchies/worker1\"\nstem = \"wrong\"\n",
    )
    .unwrap();
    assert!(matches!(
        DevPki::load(dir.path()),
        Err(IdentityError::ManifestInvalid { .. })
    ));
}

#[tokio::test]
async fn tls_configs_and_lazy_channel_build() {
    halo_identity::init_crypto();
    halo_identity::init_crypto();
    let pki = pki();
    let trust = pki.trust_store().unwrap();
    let id = pki.identity(&Principal::Duchy("worker1".into())).unwrap();
    let _server = id.server_config(&trust).unwrap();
    let _client = id.client_tls(&trust, &Principal::Kingdom).unwrap();
    id.channel(&trust, &Principal::Kingdom, "https://127.0.0.1:1")
        .unwrap();
    assert!(matches!(
        id.channel(&trust, &Principal::Kingdom, "https://not a url"),
        Err(IdentityError::Transport { .. })
    ));
    for insecure in [
        "not a url",
        "http://127.0.0.1:1",
        "127.0.0.1:1",
        "HTTP://x",
        "",
    ] {
        assert!(
            matches!(
                id.channel(&trust, &Principal::Kingdom, insecure),
                Err(IdentityError::InsecureUrl(_))
            ),
            "{insecure}"
        );
    }
    assert!(
        id.channel(&trust, &Principal::Kingdom, "HTTPS://127.0.0.1:1")
            .is_ok()
    );
}
