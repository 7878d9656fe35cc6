//! `.sig` files (detached plugin signatures) as the duchy's plugin registry reads them:
//! `Signature::from_toml` then `check` against a component and a trusted key. Invariants: a
//! parsed signature writes back to TOML that parses to the same signature; a fuzzed signature
//! is never `Valid` (it would be a forgery) unless it is the trusted key's own signature of
//! the component.
#![no_main]

use std::sync::OnceLock;

use halo_signing::{Signature, SignatureStatus, SigningKey, TrustedKeys, check, sign};
use libfuzzer_sys::fuzz_target;

const COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0 fuzzed component";

fn key() -> &'static (SigningKey, TrustedKeys, Signature) {
    static KEY: OnceLock<(SigningKey, TrustedKeys, Signature)> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = SigningKey::generate();
        let trusted = TrustedKeys::new(vec![key.public()]);
        let genuine = sign(&key, COMPONENT);
        (key, trusted, genuine)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(sig) = Signature::from_toml(text) else {
        return;
    };
    let toml = match sig.to_toml() {
        Ok(t) => t,
        Err(e) => panic!("a parsed signature does not serialize: {e}"),
    };
    assert_eq!(
        Signature::from_toml(&toml).ok().as_ref(),
        Some(&sig),
        "{toml}"
    );

    let (key, trusted, genuine) = key();
    for component in [COMPONENT, data] {
        if let SignatureStatus::Valid { key_id } = check(component, Some(&sig), trusted) {
            assert_eq!(key_id, key.public().key_id());
            assert_eq!(component, COMPONENT);
            assert_eq!(
                sig.signature.trim(),
                genuine.signature,
                "forged signature accepted"
            );
        }
    }
});
