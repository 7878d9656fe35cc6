//! What the HMSS plugin (`plugins/hmss`) decodes from a peer duchy: the `ShufflePhaseInput`
//! message and, inside it, HPKE-sealed secret seeds opened with the plugin's `open`.
//! Invariants: a decoded input re-encodes to a message that decodes to it again; a sealed
//! seed that opens was sealed to this key (the fuzzer cannot forge one), and what the
//! plugin's own `seal` produces opens to the plaintext.
#![no_main]

use std::sync::OnceLock;

use hpke::Deserializable;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

type Kem = hpke::kem::X25519HkdfSha256;
type SecretKey = <Kem as hpke::Kem>::PrivateKey;

const SECRET: [u8; 32] = [7u8; 32];

fn keys() -> &'static (SecretKey, Vec<u8>) {
    static KEYS: OnceLock<(SecretKey, Vec<u8>)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let sk = match SecretKey::from_bytes(&SECRET) {
            Ok(k) => k,
            Err(e) => panic!("secret key: {e:?}"),
        };
        let pk = match hmss::public_key(&SECRET) {
            Ok(pk) => pk,
            Err(e) => panic!("public key: {e:?}"),
        };
        (sk, pk)
    })
}

fuzz_target!(|data: &[u8]| {
    let (sk, pk) = keys();
    let (mode, rest) = data.split_first().unwrap_or((&0, &[]));
    match mode % 3 {
        0 => {
            if let Ok(input) = hmss::ShufflePhaseInput::decode(rest) {
                let again = hmss::ShufflePhaseInput::decode(input.encode_to_vec().as_slice());
                assert_eq!(again.as_ref(), Ok(&input));
                for s in &input.secret_seeds {
                    assert!(hmss::open(sk, hmss::SEED_INFO, &s.secret_seed_ciphertext).is_err());
                }
            }
        }
        1 => assert!(hmss::open(sk, hmss::SEED_INFO, rest).is_err()),
        _ => {
            let mut rng_seed = [0u8; 32];
            let n = rest.len().min(32);
            rng_seed[..n].copy_from_slice(&rest[..n]);
            let plaintext = &rest[n..];
            let sealed = match hmss::seal(pk, hmss::SEED_INFO, plaintext, rng_seed) {
                Ok(s) => s,
                Err(e) => panic!("seal: {e:?}"),
            };
            let opened = hmss::open(sk, hmss::SEED_INFO, &sealed).ok();
            assert_eq!(opened.as_deref(), Some(plaintext));
            assert!(hmss::open(sk, hmss::RESULT_INFO, &sealed).is_err());
        }
    }
});
