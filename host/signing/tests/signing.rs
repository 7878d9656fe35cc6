//! Sign / verify / enforce for plugin components.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;

use halo_signing::{
    PublicKey, SignError, Signature, SignaturePolicy, SignatureStatus, SigningKey, TrustedKeys,
    check, check_file, enforce, sign, signature_path,
};

const COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0 pretend this is a component";

fn trusted(keys: &[&SigningKey]) -> TrustedKeys {
    TrustedKeys::new(keys.iter().map(|k| k.public()).collect())
}

fn invalid_reason(status: &SignatureStatus) -> &str {
    match status {
        SignatureStatus::Invalid { reason } => reason,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn sign_verify_round_trip() {
    let key = SigningKey::generate();
    let sig = sign(&key, COMPONENT);
    assert_eq!(sig.algorithm, "ed25519");
    assert_eq!(sig.key_id, key.public().key_id());
    assert_eq!(sig.key_id.len(), 16);
    assert!(sig.digest.starts_with("sha256:"));
    assert_eq!(sig.digest.len(), "sha256:".len() + 64);
    assert!(sig.signed_at.is_some());

    // Through TOML and back.
    let text = sig.to_toml().unwrap();
    assert!(text.contains("algorithm = \"ed25519\""), "{text}");
    let parsed = Signature::from_toml(&text).unwrap();
    assert_eq!(parsed, sig);

    let trusted = trusted(&[&key]);
    let status = check(COMPONENT, Some(&parsed), &trusted);
    assert_eq!(
        status,
        SignatureStatus::Valid {
            key_id: key.public().key_id()
        }
    );
    for policy in [SignaturePolicy::Optional, SignaturePolicy::Required] {
        enforce(Path::new("sum-1.0.0.wasm"), &status, policy, &trusted).unwrap();
    }
}

#[test]
fn signature_covers_the_digest_string() {
    // Independent check of the documented format with plain ed25519-dalek + sha2.
    use base64::Engine as _;
    use sha2::Digest as _;
    let key = SigningKey::generate();
    let sig = sign(&key, COMPONENT);
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(COMPONENT)));
    assert_eq!(sig.digest, digest);
    let raw = key.public().to_bytes();
    assert_eq!(
        sig.key_id,
        hex::encode(&sha2::Sha256::digest(raw)[..8]),
        "key id is the first 8 bytes of SHA-256(raw public key)"
    );
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&raw).unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&sig.signature)
        .unwrap();
    let s = ed25519_dalek::Signature::from_slice(&bytes).unwrap();
    vk.verify_strict(digest.as_bytes(), &s).unwrap();
}

#[test]
fn tampered_component_is_invalid_and_refused() {
    let key = SigningKey::generate();
    let sig = sign(&key, COMPONENT);
    let trusted = trusted(&[&key]);
    let mut tampered = COMPONENT.to_vec();
    tampered[10] ^= 0x01;
    let status = check(&tampered, Some(&sig), &trusted);
    assert!(invalid_reason(&status).contains("tampered"), "{status:?}");
    for policy in [SignaturePolicy::Optional, SignaturePolicy::Required] {
        let err = enforce(
            Path::new("plugins/sum-1.0.0.wasm"),
            &status,
            policy,
            &trusted,
        )
        .unwrap_err();
        assert!(matches!(err, SignError::Refused { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains(
                "plugins/sum-1.0.0.wasm does not match its signature: tampered or corrupted"
            ),
            "{msg}"
        );
    }
    // Tampering is detected even when the signer is not trusted.
    let status = check(&tampered, Some(&sig), &TrustedKeys::default());
    assert!(invalid_reason(&status).contains("tampered"));
}

#[test]
fn forged_signature_with_trusted_key_id_is_invalid() {
    let trusted_key = SigningKey::generate();
    let attacker = SigningKey::generate();
    let mut sig = sign(&attacker, COMPONENT);
    sig.key_id = trusted_key.public().key_id();
    let status = check(COMPONENT, Some(&sig), &trusted(&[&trusted_key]));
    let reason = invalid_reason(&status);
    assert!(reason.contains("does not verify"), "{reason}");
    enforce(
        Path::new("x.wasm"),
        &status,
        SignaturePolicy::Optional,
        &TrustedKeys::default(),
    )
    .unwrap_err();
}

#[test]
fn untrusted_key() {
    let signer = SigningKey::generate();
    let other = SigningKey::generate();
    let trusted = trusted(&[&other]);
    let sig = sign(&signer, COMPONENT);
    let status = check(COMPONENT, Some(&sig), &trusted);
    assert_eq!(
        status,
        SignatureStatus::UntrustedKey {
            key_id: signer.public().key_id()
        }
    );
    let err = enforce(
        Path::new("sum.wasm"),
        &status,
        SignaturePolicy::Required,
        &trusted,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(&signer.public().key_id()), "{err}");
    assert!(err.contains("not trusted"), "{err}");
    assert!(err.contains(&other.public().key_id()), "{err}");
    // Optional admits it: only a present-but-wrong signature is always refused.
    enforce(
        Path::new("sum.wasm"),
        &status,
        SignaturePolicy::Optional,
        &trusted,
    )
    .unwrap();
}

#[test]
fn unsigned_under_required_is_refused_listing_trusted_ids() {
    let a = SigningKey::generate();
    let b = SigningKey::generate();
    let trusted = trusted(&[&a, &b]);
    let status = check(COMPONENT, None, &trusted);
    assert_eq!(status, SignatureStatus::Unsigned);
    let err = enforce(
        Path::new("plugins/sum-1.0.0.wasm"),
        &status,
        SignaturePolicy::Required,
        &trusted,
    )
    .unwrap_err();
    let msg = err.to_string();
    let mut ids = [a.public().key_id(), b.public().key_id()];
    ids.sort();
    assert_eq!(
        msg,
        format!(
            "plugins/sum-1.0.0.wasm is not signed; this duchy requires signatures from keys [{}]",
            ids.join(", ")
        )
    );

    let msg = enforce(
        Path::new("a.wasm"),
        &status,
        SignaturePolicy::Required,
        &TrustedKeys::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("trusts no keys"), "{msg}");
}

#[test]
fn optional_admits_unsigned() {
    let status = check(COMPONENT, None, &TrustedKeys::default());
    enforce(
        Path::new("a.wasm"),
        &status,
        SignaturePolicy::Optional,
        &TrustedKeys::default(),
    )
    .unwrap();
}

#[test]
fn malformed_signatures_are_invalid_never_panic() {
    let key = SigningKey::generate();
    let trusted = trusted(&[&key]);
    let good = sign(&key, COMPONENT);
    let dir = tempfile::tempdir().unwrap();
    let component = dir.path().join("sum-1.0.0.wasm");
    fs::write(&component, COMPONENT).unwrap();
    let sig_path = signature_path(&component);
    assert_eq!(sig_path, dir.path().join("sum-1.0.0.wasm.sig"));

    let good_toml = good.to_toml().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad toml", b"algorithm = \"ed25519\"\nkey_id = ".to_vec(), "malformed"),
        ("not utf-8", vec![0xff, 0xfe, 0x00], "UTF-8"),
        ("empty", Vec::new(), "malformed"),
        (
            "unknown field",
            format!("{good_toml}comment = \"hi\"\n").into_bytes(),
            "comment",
        ),
        (
            "missing field",
            good_toml
                .lines()
                .filter(|l| !l.starts_with("digest"))
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes(),
            "digest",
        ),
        (
            "bad base64",
            good_toml
                .replace(&good.signature, "!!not base64!!")
                .into_bytes(),
            "base64",
        ),
        (
            "short signature",
            good_toml.replace(&good.signature, "AAAA").into_bytes(),
            "64",
        ),
        (
            "wrong algorithm",
            good_toml
                .replace("\"ed25519\"", "\"ecdsa-p256\"")
                .into_bytes(),
            "algorithm",
        ),
        (
            "bad digest",
            good_toml.replace("sha256:", "sha512:").into_bytes(),
            "digest",
        ),
        (
            "bad key id",
            good_toml.replace(&good.key_id, "zz").into_bytes(),
            "key_id",
        ),
        (
            "bad signed_at",
            format!(
                "algorithm = \"ed25519\"\nkey_id = \"{}\"\ndigest = \"{}\"\nsignature = \"{}\"\nsigned_at = \"yesterday\"\n",
                good.key_id, good.digest, good.signature
            )
            .into_bytes(),
            "RFC 3339",
        ),
        (
            "wrong type",
            b"algorithm = 7\nkey_id = \"\"\ndigest = \"\"\nsignature = \"\"\n".to_vec(),
            "malformed",
        ),
    ];
    for (name, bytes, needle) in cases {
        fs::write(&sig_path, &bytes).unwrap();
        let status = check_file(&component, &trusted).unwrap();
        let reason = invalid_reason(&status);
        assert!(reason.contains(needle), "{name}: {reason}");
        let err = enforce(&component, &status, SignaturePolicy::Optional, &trusted)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not match its signature"),
            "{name}: {err}"
        );
    }

    // The file-level round trip works once the .sig is good again.
    good.write(&sig_path).unwrap();
    assert_eq!(Signature::read(&sig_path).unwrap(), good);
    assert_eq!(
        check_file(&component, &trusted).unwrap(),
        SignatureStatus::Valid {
            key_id: key.public().key_id()
        }
    );
    // No .sig at all → Unsigned.
    fs::remove_file(&sig_path).unwrap();
    assert_eq!(
        check_file(&component, &trusted).unwrap(),
        SignatureStatus::Unsigned
    );
    // Missing component → an I/O error naming it.
    let missing = dir.path().join("nope.wasm");
    let err = check_file(&missing, &trusted).unwrap_err().to_string();
    assert!(err.contains("nope.wasm"), "{err}");
}

#[test]
fn signature_path_appends_sig() {
    assert_eq!(
        signature_path(Path::new("/p/sum-1.2.0.wasm")),
        Path::new("/p/sum-1.2.0.wasm.sig")
    );
    assert_eq!(signature_path(Path::new("x")), Path::new("x.sig"));
}

#[test]
fn signed_at_is_optional() {
    let key = SigningKey::generate();
    let mut sig = sign(&key, COMPONENT);
    sig.signed_at = None;
    let text = sig.to_toml().unwrap();
    assert!(!text.contains("signed_at"));
    let parsed = Signature::from_toml(&text).unwrap();
    assert_eq!(
        check(COMPONENT, Some(&parsed), &trusted(&[&key])),
        SignatureStatus::Valid {
            key_id: key.public().key_id()
        }
    );
}

#[test]
fn key_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("signer.key");
    let public = dir.path().join("signer.pub");
    let key = SigningKey::generate();
    key.write(&secret, &public).unwrap();

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "secret key mode {mode:o}");
    }
    let secret_text = fs::read_to_string(&secret).unwrap();
    assert!(secret_text.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    let public_text = fs::read_to_string(&public).unwrap();
    assert!(public_text.starts_with("-----BEGIN PUBLIC KEY-----\n"));

    let back = SigningKey::read(&secret).unwrap();
    assert_eq!(back.public(), key.public());
    assert_eq!(PublicKey::read(&public).unwrap(), key.public());
    assert_eq!(
        SigningKey::from_pkcs8_pem(&key.to_pkcs8_pem().unwrap())
            .unwrap()
            .public(),
        key.public()
    );
    assert_eq!(
        PublicKey::from_pem(&key.public().to_pem().unwrap()).unwrap(),
        key.public()
    );
    // Debug never shows the secret.
    let debug = format!("{key:?}");
    assert!(debug.contains(&key.public().key_id()), "{debug}");

    // A signature by the reread key verifies under the written public key.
    let sig = sign(&back, COMPONENT);
    let trusted = TrustedKeys::new(vec![PublicKey::read(&public).unwrap()]);
    assert!(matches!(
        check(COMPONENT, Some(&sig), &trusted),
        SignatureStatus::Valid { .. }
    ));

    // Never overwrite key files.
    let err = SigningKey::generate()
        .write(&secret, &dir.path().join("other.pub"))
        .unwrap_err();
    assert!(matches!(err, SignError::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains("signer.key"), "{err}");
    assert!(!dir.path().join("other.pub").exists());
    assert_eq!(SigningKey::read(&secret).unwrap().public(), key.public());
}

#[test]
fn bad_key_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate();
    let secret = dir.path().join("k.key");
    let public = dir.path().join("k.pub");
    key.write(&secret, &public).unwrap();

    // Swapped: a public key where a secret key is expected and vice versa.
    let err = SigningKey::read(&public).unwrap_err().to_string();
    assert!(err.contains("k.pub") && err.contains("public key"), "{err}");
    let err = PublicKey::read(&secret).unwrap_err().to_string();
    assert!(err.contains("k.key") && err.contains("PRIVATE"), "{err}");

    let junk = dir.path().join("junk.pem");
    fs::write(
        &junk,
        "-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let err = PublicKey::read(&junk).unwrap_err().to_string();
    assert!(err.contains("junk.pem"), "{err}");
    fs::write(&junk, [0xffu8, 0x00, 0x12]).unwrap();
    let err = PublicKey::read(&junk).unwrap_err().to_string();
    assert!(err.contains("junk.pem"), "{err}");
    let err = SigningKey::read(&dir.path().join("missing.key"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.key"), "{err}");
    assert!(SigningKey::from_pkcs8_pem("").is_err());
    assert!(PublicKey::from_pem("").is_err());
}

#[test]
fn trusted_keys_load_dir() {
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("trusted");
    fs::create_dir(&keys_dir).unwrap();
    let secrets = dir.path().join("secrets");
    fs::create_dir(&secrets).unwrap();

    let a = SigningKey::generate();
    let b = SigningKey::generate();
    a.write(&secrets.join("a.key"), &keys_dir.join("alice.pub"))
        .unwrap();
    b.write(&secrets.join("b.key"), &keys_dir.join("bob.pem"))
        .unwrap();
    // Ignored: other extensions and subdirectories.
    fs::write(keys_dir.join("README.txt"), "not a key").unwrap();
    fs::create_dir(keys_dir.join("nested.pem")).unwrap();

    let trusted = TrustedKeys::load_dir(&keys_dir).unwrap();
    assert!(!trusted.is_empty());
    assert_eq!(trusted.len(), 2);
    let mut expect = vec![a.public().key_id(), b.public().key_id()];
    expect.sort();
    assert_eq!(trusted.key_ids(), expect);
    assert_eq!(trusted.get(&a.public().key_id()), Some(&a.public()));

    let sig = sign(&b, COMPONENT);
    assert_eq!(
        check(COMPONENT, Some(&sig), &trusted),
        SignatureStatus::Valid {
            key_id: b.public().key_id()
        }
    );

    // An empty directory is an empty trust set.
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    assert!(TrustedKeys::load_dir(&empty).unwrap().is_empty());
    // A missing directory is an error naming it.
    let err = TrustedKeys::load_dir(&dir.path().join("absent"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent"), "{err}");
    // A secret key dropped into the trust directory is an error naming the file.
    fs::copy(secrets.join("a.key"), keys_dir.join("oops.pem")).unwrap();
    let err = TrustedKeys::load_dir(&keys_dir).unwrap_err().to_string();
    assert!(err.contains("oops.pem") && err.contains("PRIVATE"), "{err}");
}

/// A throwaway key from `openssl genpkey -algorithm ed25519`, and what OpenSSL 3 made of it:
/// `openssl pkey -pubout`, the key id recomputed with `openssl pkey -outform DER | tail -c 32 |
/// sha256sum`, and `openssl pkeyutl -sign -rawin` over the digest string of b"interop".
/// Ed25519 is deterministic, so our signature must be byte-identical.
#[test]
fn openssl_interop_known_answer() {
    const SECRET: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIBZRg2sSzLhfuXqUMFAY24c1T+wMXIWadXtPw6MAE3vd
-----END PRIVATE KEY-----
";
    const PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAHNjQgTzYVzJpMrz4gmCLF58BkHwUeSbj4k+vNHyrPJs=
-----END PUBLIC KEY-----
";
    let key = SigningKey::from_pkcs8_pem(SECRET).unwrap();
    assert_eq!(key.to_pkcs8_pem().unwrap(), SECRET);
    let public = PublicKey::from_pem(PUBLIC).unwrap();
    assert_eq!(key.public(), public);
    assert_eq!(public.to_pem().unwrap(), PUBLIC);
    assert_eq!(public.key_id(), "a8373abd3ba5f41f");

    let sig = sign(&key, b"interop");
    assert_eq!(
        sig.digest,
        "sha256:7b84a5a2f48de6c6234dca6c3bb43314ba1e141d4e0f34263a807f547d9a4e1b"
    );
    assert_eq!(
        sig.signature,
        "DPOjh7jXUwm0fks0/utPbNdpOkBtPAgvAuttTQBF+rfvpXLkeRHkfCWDLZxnM0RKF+KPvROO/ON83bu7n6VQBg=="
    );
    assert_eq!(
        check(b"interop", Some(&sig), &TrustedKeys::new(vec![public])),
        SignatureStatus::Valid {
            key_id: "a8373abd3ba5f41f".into()
        }
    );
}
