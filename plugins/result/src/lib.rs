//! The measurement result every protocol plugin returns (halo-system §8.3): a JSON object
//! `{"reach":n,"frequency":{"1":p1,...}[,"frequency_vector_size":m]}`, the message of a
//! `SignedMessage` signed by the aggregator, sealed with HPKE (X25519, HKDF-SHA256,
//! AES-256-GCM, base mode) to the measurement consumer's raw X25519 key with `info`
//! [`RESULT_INFO`]. Also the HPKE helpers HMSS uses for its seeds.

use std::collections::BTreeMap;

use halo_plugin_sdk::identity::{self, IdentityError};
use halo_plugin_sdk::proto::halo::v1::SignedMessage;
use halo_plugin_sdk::{prelude::*, random};
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use rand_core::SeedableRng;

/// HPKE `info` for the result.
pub const RESULT_INFO: &[u8] = b"halo-hmss-result";

/// The KEM.
pub type Kem = X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::AesGcm256;
const ENC_LEN: usize = 32;

/// There is no OS randomness in a component: every draw goes through the host's `random`
/// import. getrandom (a transitive dependency of hpke) is given a backend that always fails.
#[cfg(target_arch = "wasm32")]
fn no_getrandom(_: &mut [u8]) -> Result<(), getrandom::Error> {
    Err(getrandom::Error::UNSUPPORTED)
}

#[cfg(target_arch = "wasm32")]
getrandom::register_custom_getrandom!(no_getrandom);

/// The raw X25519 public key for a 32-byte secret.
pub fn public_key(secret: &[u8]) -> Result<Vec<u8>, StageError> {
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(secret)
        .map_err(|e| StageError::permanent(format!("secret key: {e:?}")))?;
    Ok(Kem::sk_to_pk(&sk).to_bytes().to_vec())
}

/// HPKE base-mode seal to a raw X25519 public key: `enc ‖ ciphertext`. The ephemeral key
/// comes from a ChaCha20 RNG seeded with `rng_seed`.
pub fn seal(
    recipient: &[u8],
    info: &[u8],
    plaintext: &[u8],
    rng_seed: [u8; 32],
) -> Result<Vec<u8>, StageError> {
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(recipient)
        .map_err(|e| StageError::invalid_input(format!("public key: {e:?}")))?;
    let mut rng = rand_chacha::ChaCha20Rng::from_seed(rng_seed);
    let (enc, ct) = hpke::single_shot_seal::<Aead, Kdf, Kem, _>(
        &OpModeS::Base,
        &pk,
        info,
        plaintext,
        &[],
        &mut rng,
    )
    .map_err(|e| StageError::permanent(format!("hpke seal: {e:?}")))?;
    let mut out = enc.to_bytes().to_vec();
    out.extend(ct);
    Ok(out)
}

/// Opens `enc ‖ ciphertext` with a raw X25519 secret key.
pub fn open(
    sk: &<Kem as hpke::Kem>::PrivateKey,
    info: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, StageError> {
    if sealed.len() < ENC_LEN {
        return Err(StageError::invalid_input("sealed message too short"));
    }
    let (enc, ct) = sealed.split_at(ENC_LEN);
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc)
        .map_err(|e| StageError::invalid_input(format!("hpke enc: {e:?}")))?;
    hpke::single_shot_open::<Aead, Kdf, Kem>(&OpModeR::Base, sk, &enc, info, ct, &[])
        .map_err(|e| StageError::invalid_input(format!("hpke open: {e:?}")))
}

/// The result: `{"reach":n,"frequency":{"1":p1,...},"frequency_vector_size":m}`, the message
/// of a `SignedMessage` signed by the aggregator and sealed to the measurement consumer.
pub fn result_json(
    reach: i64,
    distribution: &BTreeMap<u32, f64>,
    register_count: Option<i64>,
) -> String {
    let freq = distribution
        .iter()
        .map(|(k, v)| format!("\"{k}\":{v:?}"))
        .collect::<Vec<_>>()
        .join(",");
    match register_count {
        Some(m) => {
            format!("{{\"reach\":{reach},\"frequency\":{{{freq}}},\"frequency_vector_size\":{m}}}")
        }
        None => format!("{{\"reach\":{reach},\"frequency\":{{{freq}}}}}"),
    }
}

/// An identity failure as a stage error: a bad signature fails the computation, an
/// unavailable check is retried.
pub fn identity_err(what: String) -> impl FnOnce(IdentityError) -> StageError {
    move |e| match e {
        IdentityError::Invalid(m) => StageError::InvalidInput(format!("{what}: {m}")),
        IdentityError::Unavailable(m) => StageError::Transient(format!("{what}: {m}")),
    }
}

/// The result for the Kingdom: `json` signed with the aggregator's key, then sealed to the
/// consumer's `measurement_public_key` (halo-system §8.3).
pub fn sealed_result(
    json: String,
    measurement_public_key: &[u8],
) -> Result<ComputationResult, StageError> {
    let signature =
        identity::sign(json.as_bytes()).map_err(identity_err("signing the result".to_string()))?;
    let signed = SignedMessage {
        message: json.into_bytes(),
        signature: signature.signature,
        signature_algorithm_oid: signature.algorithm_oid,
        certificate: signature.certificate,
    };
    let encrypted = seal(
        measurement_public_key,
        RESULT_INFO,
        &signed.encode_to_vec(),
        random::random_array::<32>(),
    )?;
    Ok(ComputationResult {
        encrypted_result: encrypted,
        result_public_key: measurement_public_key.to_vec(),
    })
}
