//! The data-provider and measurement-consumer side of Honest Majority Share Shuffle (HMSS).
//!
//! * A data provider secret-shares its frequency vector `v` mod `q` (spec `mpc-crypto.md`
//!   §6.2, `halo-system.md` §8.2): it draws a 48-byte seed `key (32) ‖ iv (16)`, expands
//!   `s1 = PRNG(seed).UniformRange(len, q)` with `hmss-core`, sends `s2 = (v − s1) mod q` as the
//!   body (a serialized `FrequencyVector`) to the fulfilling duchy, and seals the seed to the
//!   *peer* non-aggregator's X25519 key; the header carries the sealed seed ([`Fulfilment`]).
//! * A measurement consumer owns an X25519 key pair ([`measurement_keypair`]); the aggregator
//!   signs the result (UTF-8 JSON, [`HmssResult`]) and seals it to its public key;
//!   [`open_result`] opens it and [`verify_result`] checks the aggregator's signature.
//!
//! Encryption (halo-host's fixed format, in place of the reference's Tink messages): RFC 9180
//! HPKE base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, single shot, empty
//! AAD; wire bytes = `enc (32 bytes) ‖ ciphertext`. Keys are raw 32-byte X25519 keys.
//! Signatures: the plaintext of both sealed messages is a `halo.v1.SignedMessage` signed
//! (ECDSA P-256, SHA-256) with the signer's key; its message is a `RandomSeed{key ‖ iv}` for
//! the seed ([`SEED_INFO`]) and the JSON document for the result ([`RESULT_INFO`]).
//!
//! [`population`] and [`truth`] make deterministic synthetic inputs and their exact answer.

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow, bail, ensure};
use halo_identity::{Identity, Principal, TrustStore};
use halo_proto::api::v2alpha as api;
use halo_proto::halo::v1 as admin;
use halo_proto::system::v1alpha::Computation;
use halo_proto::system::v1alpha::computation::mpc_protocol_config::Protocol as MpcProtocol;
use halo_proto::system::v1alpha::computation_participant::requisition_params::Protocol as ParamsProtocol;
use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use prost::Message;
use rand::CryptoRng;
use serde::{Deserialize, Serialize};

pub use hmss_core::{SEED_LEN, Seed};

type Kem = X25519HkdfSha256;

/// HPKE `info` for the data provider's share seed sealed to the peer non-aggregator.
pub const SEED_INFO: &[u8] = b"halo-hmss-seed";
/// HPKE `info` for the aggregator's result sealed to the measurement consumer.
pub const RESULT_INFO: &[u8] = b"halo-hmss-result";
/// `EncryptedMessage.type_url` of the sealed seed (a signed `RandomSeed`).
pub const SEED_TYPE_URL: &str = "type.googleapis.com/halo.v1.SignedMessage";
/// Length of an X25519 key (public or secret) and of the HPKE `enc`.
pub const KEY_LEN: usize = 32;
/// AES-256-GCM tag length: the ciphertext is this much longer than the plaintext.
pub const TAG_LEN: usize = 16;

/// A fresh X25519 key pair `(secret, public)`, raw 32-byte keys. The measurement consumer puts
/// `public` into `MeasurementSpec.measurement_public_key`; a duchy publishes its `public` as
/// `tink_public_key`.
pub fn measurement_keypair<R: CryptoRng>(rng: &mut R) -> ([u8; KEY_LEN], [u8; KEY_LEN]) {
    let (sk, pk) = Kem::gen_keypair(rng);
    (to_array(&sk.to_bytes()), to_array(&pk.to_bytes()))
}

fn to_array(b: &[u8]) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(&b[..KEY_LEN]);
    out
}

/// The X25519 public key of a raw 32-byte secret key.
pub fn public_key_of(secret: &[u8; KEY_LEN]) -> Result<[u8; KEY_LEN]> {
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(secret)
        .map_err(|e| anyhow!("bad X25519 secret key: {e}"))?;
    Ok(to_array(&Kem::sk_to_pk(&sk).to_bytes()))
}

/// HPKE-seals `plaintext` to the raw X25519 `public_key` with `info`; returns `enc ‖ ciphertext`.
pub fn seal<R: CryptoRng>(
    public_key: &[u8],
    info: &[u8],
    plaintext: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>> {
    ensure!(
        public_key.len() == KEY_LEN,
        "X25519 public key must be {KEY_LEN} bytes, got {}",
        public_key.len()
    );
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(public_key)
        .map_err(|e| anyhow!("bad X25519 public key: {e}"))?;
    let (enc, ct) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, Kem, R>(
        &OpModeS::Base,
        &pk,
        info,
        plaintext,
        &[],
        rng,
    )
    .map_err(|e| anyhow!("HPKE seal failed: {e}"))?;
    let mut out = enc.to_bytes().to_vec();
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens `enc ‖ ciphertext` (see [`seal`]) with the raw X25519 `secret_key` and `info`. A wrong
/// key, wrong `info` or tampered bytes give an error.
pub fn open(secret_key: &[u8; KEY_LEN], info: &[u8], wire: &[u8]) -> Result<Vec<u8>> {
    ensure!(
        wire.len() >= KEY_LEN + TAG_LEN,
        "HPKE message too short: {} bytes",
        wire.len()
    );
    let (enc, ct) = wire.split_at(KEY_LEN);
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(secret_key)
        .map_err(|e| anyhow!("bad X25519 secret key: {e}"))?;
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc)
        .map_err(|e| anyhow!("bad HPKE encapsulated key: {e}"))?;
    hpke::single_shot_open::<AesGcm256, HkdfSha256, Kem>(&OpModeR::Base, &sk, &enc, info, ct, &[])
        .map_err(|e| anyhow!("HPKE open failed (wrong key or corrupted message): {e}"))
}

/// The resource name of `identity`'s certificate as the Kingdom names it:
/// `{principal}/certificates/{first 8 bytes of SHA-256(DER), hex}`.
pub fn certificate_name(identity: &Identity) -> Result<String> {
    let der = identity.certificate_der()?;
    Ok(format!(
        "{}/certificates/{}",
        identity.principal.resource_name(),
        halo_kingdom::certificate_id(&der)
    ))
}

/// `message` signed by `signer` (ECDSA P-256 / SHA-256), naming the signer's certificate.
pub fn sign(signer: &Identity, message: Vec<u8>) -> Result<admin::SignedMessage> {
    Ok(admin::SignedMessage {
        signature: signer
            .sign(&message)
            .with_context(|| format!("signing as {}", signer.principal))?,
        message,
        signature_algorithm_oid: halo_identity::ECDSA_WITH_SHA256_OID.to_string(),
        certificate: certificate_name(signer)?,
    })
}

/// Checks that `signed` was signed with `certificate_der`, the certificate named
/// `certificate`, issued by the trusted root of the principal that name belongs to.
pub fn verify_signed(
    trust: &TrustStore,
    signed: &admin::SignedMessage,
    certificate: &str,
    certificate_der: &[u8],
) -> Result<()> {
    ensure!(
        signed.certificate == certificate,
        "signed with certificate {:?}, expected {certificate:?}",
        signed.certificate
    );
    let (owner, _) =
        halo_duchy::identity::certificate_owner(certificate).map_err(|e| anyhow!(e))?;
    trust
        .verify_signature(
            &owner,
            certificate_der,
            &signed.message,
            &signed.signature,
            &signed.signature_algorithm_oid,
        )
        .map_err(|e| anyhow!("{e}"))
}

/// Seals a 48-byte share seed to the peer non-aggregator: the plaintext is a `SignedMessage`
/// of `RandomSeed{data = key ‖ iv}` signed by the data provider `signer`.
pub fn seal_seed<R: CryptoRng>(
    peer_public_key: &[u8],
    seed: &Seed,
    signer: &Identity,
    rng: &mut R,
) -> Result<Vec<u8>> {
    let message = admin::RandomSeed {
        data: seed.to_vec(),
    }
    .encode_to_vec();
    seal(
        peer_public_key,
        SEED_INFO,
        &sign(signer, message)?.encode_to_vec(),
        rng,
    )
}

/// The peer non-aggregator's side: opens a sealed seed with its X25519 secret key; returns the
/// seed and the signed message (whose signature the caller checks, see [`verify_signed`]).
pub fn open_seed(
    peer_secret_key: &[u8; KEY_LEN],
    ciphertext: &[u8],
) -> Result<(Seed, admin::SignedMessage)> {
    let plain = open(peer_secret_key, SEED_INFO, ciphertext)?;
    let signed = admin::SignedMessage::decode(plain.as_slice())
        .context("the sealed seed is not a SignedMessage")?;
    let seed = admin::RandomSeed::decode(signed.message.as_slice()).context("RandomSeed")?;
    let seed: Seed = seed.data.as_slice().try_into().map_err(|_| {
        anyhow!(
            "share seed must be {SEED_LEN} bytes, got {}",
            seed.data.len()
        )
    })?;
    Ok((seed, signed))
}

/// What a data provider sends for one HMSS requisition: the header's protocol part and the body.
#[derive(Debug, Clone, PartialEq)]
pub struct Fulfilment {
    /// `HonestMajorityShareShuffle{secret_seed = EncryptedMessage{ciphertext = enc ‖ ct,
    /// type_url = SEED_TYPE_URL}, register_count, data_provider_certificate}`.
    pub header_protocol: api::fulfill_requisition_request::header::Protocol,
    /// Serialized `FrequencyVector{data = s2}` (packed varints).
    pub body: Vec<u8>,
}

/// Secret-shares the frequency vector `v` mod `q` and seals the seed, signed by the data
/// provider `signer`, to `peer_public_key` (spec §6.2): `s1 = PRNG(seed).UniformRange(len, q)`,
/// body = `FrequencyVector(s2)` with `s2 = (v − s1) mod q`. Every `v[i]` must be `< q`.
pub fn share_frequency_vector<R: CryptoRng>(
    v: &[u32],
    q: u32,
    peer_public_key: &[u8],
    signer: &Identity,
    rng: &mut R,
) -> Result<Fulfilment> {
    ensure!(q >= 2, "ring modulus must be at least 2, got {q}");
    ensure!(
        matches!(signer.principal, Principal::DataProvider(_)),
        "{} is not a data provider",
        signer.principal
    );
    let mut seed: Seed = [0u8; SEED_LEN];
    rng.fill_bytes(&mut seed);
    let ks = hmss_core::CtrKeystream::from_seed(&seed);
    let body = if q <= hmss_core::ring::BYTE_REGISTER_MAX_Q {
        let s2: Vec<u8> = hmss_core::share::split_from_keystream(v, ks, q)
            .map_err(|e| anyhow!("secret-sharing the frequency vector: {e}"))?;
        hmss_core::wire::encode_frequency_vector(&s2)
    } else {
        let s2: Vec<u32> = hmss_core::share::split_from_keystream(v, ks, q)
            .map_err(|e| anyhow!("secret-sharing the frequency vector: {e}"))?;
        hmss_core::wire::encode_frequency_vector(&s2)
    };
    let data_provider_certificate = certificate_name(signer)?;
    let ciphertext = seal_seed(peer_public_key, &seed, signer, rng)?;
    use api::fulfill_requisition_request::header::{HonestMajorityShareShuffle, Protocol};
    Ok(Fulfilment {
        header_protocol: Protocol::HonestMajorityShareShuffle(HonestMajorityShareShuffle {
            secret_seed: Some(api::EncryptedMessage {
                ciphertext,
                type_url: SEED_TYPE_URL.to_string(),
            }),
            register_count: i64::try_from(v.len()).context("register count overflows i64")?,
            data_provider_certificate,
        }),
        body,
    })
}

/// The duchy id of a participant name `computations/{c}/participants/{duchy}` (or a bare id).
fn participant_id(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// The X25519 key the seed must be sealed to: that of the participant other than
/// `r.fulfilling_duchy` whose requisition params carry HMSS with a non-empty `tink_public_key`.
pub fn peer_public_key(r: &admin::DataProviderRequisition) -> Result<Vec<u8>> {
    let c = r
        .computation
        .as_ref()
        .ok_or_else(|| anyhow!("requisition {} carries no computation", r.name))?;
    ensure!(
        !r.fulfilling_duchy.is_empty(),
        "requisition {} has no fulfilling duchy",
        r.name
    );
    let keys: Vec<(&str, &[u8])> = c
        .computation_participants
        .iter()
        .filter(|p| participant_id(&p.name) != r.fulfilling_duchy)
        .filter_map(
            |p| match p.requisition_params.as_ref()?.protocol.as_ref()? {
                ParamsProtocol::HonestMajorityShareShuffle(h) if !h.tink_public_key.is_empty() => {
                    Some((participant_id(&p.name), h.tink_public_key.as_slice()))
                }
                _ => None,
            },
        )
        .collect();
    match keys.as_slice() {
        [(_, key)] => {
            ensure!(
                key.len() == KEY_LEN,
                "peer HMSS key must be {KEY_LEN} bytes, got {}",
                key.len()
            );
            Ok(key.to_vec())
        }
        [] => bail!(
            "requisition {}: no participant other than {} publishes an HMSS public key",
            r.name,
            r.fulfilling_duchy
        ),
        more => bail!(
            "requisition {}: several participants publish an HMSS public key: {:?}",
            r.name,
            more.iter().map(|(id, _)| *id).collect::<Vec<_>>()
        ),
    }
}

/// The ring modulus `q` for the measurement: `reach_ring_modulus` (REACH) or
/// `reach_and_frequency_ring_modulus` (REACH_AND_FREQUENCY) of the computation's HMSS config.
pub fn ring_modulus(c: &Computation, spec: &admin::MeasurementSpec) -> Result<u32> {
    let Some(MpcProtocol::HonestMajorityShareShuffle(h)) = c
        .mpc_protocol_config
        .as_ref()
        .and_then(|m| m.protocol.as_ref())
    else {
        bail!("computation {} is not configured for HMSS", c.name);
    };
    use admin::measurement_spec::Type;
    let q = match spec.r#type() {
        Type::Reach => h.reach_ring_modulus,
        Type::ReachAndFrequency => h.reach_and_frequency_ring_modulus,
        Type::Unspecified => bail!("measurement type is unspecified"),
    };
    ensure!(q >= 2, "ring modulus must be at least 2, got {q}");
    u32::try_from(q).context("ring modulus out of range")
}

/// The decrypted HMSS result: UTF-8 JSON
/// `{"reach": n, "frequency": {"1": p1, ...}, "frequency_vector_size": m}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HmssResult {
    pub reach: i64,
    /// Relative frequency distribution, keyed by the decimal frequency `1..=MF`
    /// (empty for reach-only).
    #[serde(default)]
    pub frequency: BTreeMap<String, f64>,
    #[serde(default)]
    pub frequency_vector_size: i64,
}

/// Signs a result as `signer` and seals it to the measurement consumer's public key, as the
/// aggregator does (for tests and simulations).
pub fn seal_result<R: CryptoRng>(
    measurement_public_key: &[u8],
    result: &HmssResult,
    signer: &Identity,
    rng: &mut R,
) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(result).context("encoding the result")?;
    seal(
        measurement_public_key,
        RESULT_INFO,
        &sign(signer, json)?.encode_to_vec(),
        rng,
    )
}

/// Opens `encrypted_result` with the measurement consumer's secret key and parses the JSON.
/// The signature is NOT checked here: see [`verify_result`].
pub fn open_result(
    measurement_secret: &[u8; KEY_LEN],
    encrypted_result: &[u8],
) -> Result<(HmssResult, admin::SignedMessage)> {
    let plain = open(measurement_secret, RESULT_INFO, encrypted_result)?;
    let signed = admin::SignedMessage::decode(plain.as_slice())
        .context("the result is not a SignedMessage")?;
    let text = std::str::from_utf8(&signed.message).context("result is not UTF-8")?;
    let result = serde_json::from_str(text).context("result is not the expected JSON")?;
    Ok((result, signed))
}

/// Checks the aggregator's signature on an opened result: `aggregator_certificate` is the
/// certificate name the Kingdom reports for the measurement, `der` that certificate.
pub fn verify_result(
    trust: &TrustStore,
    signed: &admin::SignedMessage,
    aggregator_certificate: &str,
    der: &[u8],
) -> Result<()> {
    ensure!(
        aggregator_certificate.starts_with("duchies/"),
        "the result's certificate {aggregator_certificate:?} is not a duchy's"
    );
    verify_signed(trust, signed, aggregator_certificate, der)
        .context("the aggregator's signature on the result")
}

/// The part of a population-wide frequency vector that a data provider sends for VID sampling
/// interval `[start, start + width)` (mpc-crypto §6.1, `FrequencyVectorBuilder`): with
/// `N = vector.len()`, `start_i = (int)(N·start)`, `end_i = (int)(N·(start + width)) − 1`; the
/// primary range `[start_i, min(end_i, N − 1)]` followed by the wrapped range `[0, end_i − N]`
/// when `end_i ≥ N`. The synthetic populations are already indexed by VID index, so the
/// reference's VID → index map (a FarmHash sort) is not needed. `width` must be in `(0, 1]`
/// and `start` in `[0, 1)`.
pub fn sampled(vector: &[u32], start: f32, width: f32) -> Result<Vec<u32>> {
    ensure!(
        width > 0.0 && width <= 1.0,
        "VID sampling width {width} must be in (0, 1]"
    );
    ensure!(
        (0.0..1.0).contains(&start),
        "VID sampling start {start} must be in [0, 1)"
    );
    let n = vector.len();
    let (start, width) = (f64::from(start), f64::from(width));
    let start_i = (n as f64 * start) as i64;
    let end_i = (n as f64 * (start + width)) as i64 - 1;
    let last = (n as i64 - 1).min(end_i);
    let mut out = Vec::with_capacity(((end_i - start_i + 1).max(0)) as usize);
    if start_i <= last {
        out.extend_from_slice(&vector[start_i as usize..=last as usize]);
    }
    if end_i >= n as i64 {
        let wrapped = ((end_i - n as i64) as usize).min(n.saturating_sub(1));
        out.extend_from_slice(&vector[..=wrapped]);
    }
    Ok(out)
}

/// The exact answer a measurement with VID sampling interval `[start, start + width)` gives
/// without noise: `truth` of the sampled vectors with the reach scaled by `1/width` as the
/// aggregator does (`(i64)(NE / width)`, mpc-crypto §6.5).
pub fn sampled_truth(
    vectors: &[Vec<u32>],
    max_frequency: u32,
    start: f32,
    width: f32,
) -> Result<(i64, BTreeMap<String, f64>)> {
    let sampled = vectors
        .iter()
        .map(|v| sampled(v, start, width))
        .collect::<Result<Vec<_>>>()?;
    let (reach, freq) = truth(&sampled, max_frequency);
    Ok(((reach as f64 / f64::from(width)) as i64, freq))
}

/// SplitMix64: a tiny, portable generator so that [`population`] is stable across crate versions.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` (53 bits).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, n)`, `n ≥ 1` (multiply-shift; bias ≤ n / 2^64).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Fraction of registers that any provider reaches in [`population`].
pub const POPULATION_REACHED_FRACTION: f64 = 0.5;

/// Deterministic synthetic frequency vectors, one per provider, each of length `registers`.
///
/// Model (SplitMix64 seeded with `seed`, registers visited in order): a register is reached at
/// all with probability [`POPULATION_REACHED_FRACTION`]; a reached register is *shared* with
/// probability `overlap` (clamped to `[0, 1]`, NaN = 0) — then every provider reaches it — and
/// otherwise belongs to one provider drawn uniformly. Each provider that reaches a register
/// sees it with a frequency uniform in `1..=max_frequency` (entries are capped at the maximum
/// frequency, as EDPs do, spec §6.1; `max_frequency` 0 is treated as 1). So `overlap = 0`
/// gives disjoint audiences and `overlap = 1` identical ones.
pub fn population(
    seed: u64,
    providers: usize,
    registers: usize,
    max_frequency: u32,
    overlap: f64,
) -> Vec<Vec<u32>> {
    let overlap = if overlap.is_nan() {
        0.0
    } else {
        overlap.clamp(0.0, 1.0)
    };
    let mf = u64::from(max_frequency.max(1));
    let mut rng = SplitMix64(seed);
    let mut out = vec![vec![0u32; registers]; providers];
    if providers == 0 {
        return out;
    }
    for r in 0..registers {
        if rng.unit() >= POPULATION_REACHED_FRACTION {
            continue;
        }
        let draw = |rng: &mut SplitMix64| (1 + rng.below(mf)) as u32;
        if rng.unit() < overlap {
            for v in out.iter_mut() {
                v[r] = draw(&mut rng);
            }
        } else {
            let p = rng.below(providers as u64) as usize;
            out[p][r] = draw(&mut rng);
        }
    }
    out
}

/// The [`population`] index of a data provider id that ends in a number `n ≥ 1` (`edp2` → 1).
pub fn provider_index(id: &str) -> Option<usize> {
    let digits = id.len() - id.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let n: usize = id.get(id.len() - digits..)?.parse().ok()?;
    n.checked_sub(1)
}

/// The exact answer for `vectors` (registers aligned across providers): `reach` = number of
/// registers with a non-zero sum, and the relative frequency distribution as the protocol
/// reports it — key `k` (decimal, `1..=max_frequency`) = #registers with
/// `min(sum, max_frequency) == k` divided by reach, present only when non-zero (so empty when
/// reach is 0). `max_frequency` 0 is treated as 1. Shorter vectors count as zero-padded.
pub fn truth(vectors: &[Vec<u32>], max_frequency: u32) -> (i64, BTreeMap<String, f64>) {
    let mf = u64::from(max_frequency.max(1));
    let len = vectors.iter().map(Vec::len).max().unwrap_or(0);
    let mut counts: BTreeMap<u64, i64> = BTreeMap::new();
    let mut reach = 0i64;
    for r in 0..len {
        let sum: u64 = vectors
            .iter()
            .map(|v| u64::from(v.get(r).copied().unwrap_or(0)))
            .sum();
        if sum > 0 {
            reach += 1;
            *counts.entry(sum.min(mf)).or_default() += 1;
        }
    }
    let freq = counts
        .into_iter()
        .map(|(k, c)| (k.to_string(), c as f64 / reach as f64))
        .collect();
    (reach, freq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn seed_of(f: &Fulfilment) -> (Vec<u8>, String, i64, String) {
        let api::fulfill_requisition_request::header::Protocol::HonestMajorityShareShuffle(h) =
            &f.header_protocol;
        let m = h.secret_seed.clone().unwrap_or_default();
        (
            m.ciphertext,
            m.type_url,
            h.register_count,
            h.data_provider_certificate.clone(),
        )
    }

    fn pki() -> halo_identity::DevPki {
        halo_identity::DevPki::generate(&[
            Principal::DataProvider("edp1".into()),
            Principal::Duchy("aggregator".into()),
        ])
        .unwrap()
    }

    fn id(pki: &halo_identity::DevPki, p: Principal) -> Identity {
        pki.identity(&p).unwrap().clone()
    }

    #[test]
    fn seed_round_trip_reconstructs_vector_and_verifies() {
        let mut rng = rng();
        let pki = pki();
        let edp = id(&pki, Principal::DataProvider("edp1".into()));
        let (peer_sk, peer_pk) = measurement_keypair(&mut rng);
        assert_eq!(public_key_of(&peer_sk).unwrap(), peer_pk);
        for q in [127u32, 1000] {
            let v: Vec<u32> = (0..1000u32).map(|i| (i * 7) % 11).collect();
            let f = share_frequency_vector(&v, q, &peer_pk, &edp, &mut rng).unwrap();
            let (ct, type_url, count, cert) = seed_of(&f);
            assert_eq!(type_url, SEED_TYPE_URL);
            assert_eq!(count, 1000);
            assert_eq!(cert, certificate_name(&edp).unwrap());
            assert!(
                cert.starts_with("dataProviders/edp1/certificates/"),
                "{cert}"
            );
            let (seed, signed) = open_seed(&peer_sk, &ct).unwrap();
            let der = edp.certificate_der().unwrap();
            verify_signed(&pki.trust_store().unwrap(), &signed, &cert, &der).unwrap();
            let s1 = hmss_core::share::share_from_seed(&seed, v.len(), q).unwrap();
            let s2 = hmss_core::wire::decode_frequency_vector(&f.body).unwrap();
            assert_eq!(s2.len(), v.len());
            assert_ne!(s2, v);
            assert_eq!(hmss_core::share::combine(&[&s1, &s2], q).unwrap(), v);
        }
    }

    #[test]
    fn share_rejects_bad_input() {
        let mut rng = rng();
        let pki = pki();
        let edp = id(&pki, Principal::DataProvider("edp1".into()));
        let agg = id(&pki, Principal::Duchy("aggregator".into()));
        let (_, pk) = measurement_keypair(&mut rng);
        assert!(share_frequency_vector(&[0, 5], 5, &pk, &edp, &mut rng).is_err());
        assert!(share_frequency_vector(&[0, 1], 1, &pk, &edp, &mut rng).is_err());
        assert!(share_frequency_vector(&[0, 1], 5, &pk[..31], &edp, &mut rng).is_err());
        // Only a data provider signs seeds.
        assert!(share_frequency_vector(&[0, 1], 5, &pk, &agg, &mut rng).is_err());
    }

    #[test]
    fn result_round_trip_and_signature() {
        let mut rng = rng();
        let pki = pki();
        let trust = pki.trust_store().unwrap();
        let agg = id(&pki, Principal::Duchy("aggregator".into()));
        let edp = id(&pki, Principal::DataProvider("edp1".into()));
        let (sk, pk) = measurement_keypair(&mut rng);
        let result = HmssResult {
            reach: 1234,
            frequency: [("1".to_string(), 0.75), ("2".to_string(), 0.25)].into(),
            frequency_vector_size: 4096,
        };
        let ct = seal_result(&pk, &result, &agg, &mut rng).unwrap();
        let (opened, signed) = open_result(&sk, &ct).unwrap();
        assert_eq!(opened, result);
        let name = certificate_name(&agg).unwrap();
        let der = agg.certificate_der().unwrap();
        verify_result(&trust, &signed, &name, &der).unwrap();
        // Tampered message, another certificate, or a non-duchy signer are refused.
        let mut bad = signed.clone();
        bad.message = br#"{"reach": 99999}"#.to_vec();
        assert!(verify_result(&trust, &bad, &name, &der).is_err());
        assert!(verify_result(&trust, &signed, "duchies/aggregator/certificates/0", &der).is_err());
        let by_edp = seal_result(&pk, &result, &edp, &mut rng).unwrap();
        let (_, signed) = open_result(&sk, &by_edp).unwrap();
        let e = verify_result(
            &trust,
            &signed,
            &certificate_name(&edp).unwrap(),
            &edp.certificate_der().unwrap(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("not a duchy"), "{e:#}");
        // Reach-only results may omit the distribution.
        let json = br#"{"reach": 9}"#.to_vec();
        let ct = seal(
            &pk,
            RESULT_INFO,
            &sign(&agg, json).unwrap().encode_to_vec(),
            &mut rng,
        )
        .unwrap();
        assert!(open_result(&sk, &ct).unwrap().0.frequency.is_empty());
    }

    #[test]
    fn wrong_key_info_or_bytes_fail_cleanly() {
        let mut rng = rng();
        let pki = pki();
        let agg = id(&pki, Principal::Duchy("aggregator".into()));
        let edp = id(&pki, Principal::DataProvider("edp1".into()));
        let (_, pk) = measurement_keypair(&mut rng);
        let (sk, _) = measurement_keypair(&mut rng);
        let ct = seal_result(
            &pk,
            &HmssResult {
                reach: 1,
                frequency: BTreeMap::new(),
                frequency_vector_size: 1,
            },
            &agg,
            &mut rng,
        )
        .unwrap();
        assert!(open_result(&sk, &ct).is_err());
        assert!(open_result(&sk, &ct[..10]).is_err());
        assert!(open_result(&sk, &[]).is_err());
        // A sealed seed is not a result (different info) and vice versa.
        let (seed_sk, seed_pk) = measurement_keypair(&mut rng);
        let sealed = seal_seed(&seed_pk, &[3u8; SEED_LEN], &edp, &mut rng).unwrap();
        assert!(open(&seed_sk, RESULT_INFO, &sealed).is_err());
        let mut tampered = sealed.clone();
        if let Some(b) = tampered.last_mut() {
            *b ^= 1;
        }
        assert!(open_seed(&seed_sk, &tampered).is_err());
        assert_eq!(open_seed(&seed_sk, &sealed).unwrap().0, [3u8; SEED_LEN]);
        // An unsigned (raw JSON) plaintext is not accepted.
        let ct = seal(&seed_pk, RESULT_INFO, br#"{"reach": 5}"#, &mut rng).unwrap();
        assert!(open_result(&seed_sk, &ct).is_err());
    }

    #[test]
    fn vid_sampling_intervals() {
        let v: Vec<u32> = (0..10).collect();
        assert_eq!(sampled(&v, 0.0, 1.0).unwrap(), v);
        assert_eq!(sampled(&v, 0.2, 0.5).unwrap(), vec![2, 3, 4, 5, 6]);
        // Wraps around: [8, 9] then [0, 1, 2].
        assert_eq!(sampled(&v, 0.8, 0.5).unwrap(), vec![8, 9, 0, 1, 2]);
        assert!(sampled(&v, 0.0, 0.0).is_err());
        assert!(sampled(&v, 1.0, 0.5).is_err());
        assert!(sampled(&v, 0.0, 1.5).is_err());
        let (reach, freq) =
            sampled_truth(&[vec![0, 1, 0, 2, 1, 0, 0, 3], vec![1; 8]], 3, 0.25, 0.5).unwrap();
        // Registers 2..=5: sums 1, 3, 2, 1 → 4 reached, scaled by 1/0.5.
        assert_eq!(reach, 8);
        assert_eq!(freq["1"], 0.5);
    }

    #[test]
    fn truth_small_example() {
        // registers: sums 0, 1, 2, 3, 5, 1  → reach 5; capped at MF = 3: {1: 2, 2: 1, 3: 2}.
        let a = vec![0, 1, 1, 3, 2, 0];
        let b = vec![0, 0, 1, 0, 3, 1];
        let (reach, freq) = truth(&[a.clone(), b.clone()], 3);
        assert_eq!(reach, 5);
        let expected: BTreeMap<String, f64> = [
            ("1".to_string(), 0.4),
            ("2".to_string(), 0.2),
            ("3".to_string(), 0.4),
        ]
        .into();
        assert_eq!(freq, expected);
        // MF = 1: everything reached has frequency 1.
        let (reach, freq) = truth(&[a, b], 1);
        assert_eq!(reach, 5);
        assert_eq!(freq, [("1".to_string(), 1.0)].into());
        assert_eq!(truth(&[vec![0, 0]], 3), (0, BTreeMap::new()));
    }

    #[test]
    fn population_is_deterministic_and_follows_the_model() {
        let a = population(42, 3, 2000, 4, 0.3);
        assert_eq!(a, population(42, 3, 2000, 4, 0.3));
        assert_ne!(a, population(43, 3, 2000, 4, 0.3));
        assert_eq!(a.len(), 3);
        assert!(
            a.iter()
                .all(|v| v.len() == 2000 && v.iter().all(|&x| x <= 4))
        );
        let (reach, freq) = truth(&a, 4);
        assert!((800..1200).contains(&reach), "reach {reach}");
        let total: f64 = freq.values().sum();
        assert!((total - 1.0).abs() < 1e-9);
        // overlap 0: disjoint audiences; overlap 1: identical audiences.
        let d = population(1, 3, 1000, 2, 0.0);
        assert!((0..1000).all(|r| d.iter().filter(|v| v[r] > 0).count() <= 1));
        let s = population(1, 3, 1000, 2, 1.0);
        assert!((0..1000).all(|r| {
            let n = s.iter().filter(|v| v[r] > 0).count();
            n == 0 || n == 3
        }));
        assert!(population(1, 0, 10, 2, 0.5).is_empty());
    }

    #[test]
    fn provider_index_from_trailing_number() {
        assert_eq!(provider_index("edp1"), Some(0));
        assert_eq!(provider_index("edp2"), Some(1));
        assert_eq!(provider_index("provider-12"), Some(11));
        assert_eq!(provider_index("edp0"), None);
        assert_eq!(provider_index("edp"), None);
        assert_eq!(provider_index(""), None);
        assert_eq!(provider_index("7"), Some(6));
    }

    fn requisition(
        participants: &[(&str, Option<Vec<u8>>)],
        fulfilling: &str,
    ) -> admin::DataProviderRequisition {
        use halo_proto::system::v1alpha::ComputationParticipant;
        use halo_proto::system::v1alpha::computation_participant::RequisitionParams;
        use halo_proto::system::v1alpha::computation_participant::requisition_params::HonestMajorityShareShuffle;
        admin::DataProviderRequisition {
            name: "dataProviders/edp1/requisitions/r1".into(),
            computation: Some(Computation {
                name: "computations/c1".into(),
                computation_participants: participants
                    .iter()
                    .map(|(id, key)| ComputationParticipant {
                        name: format!("computations/c1/participants/{id}"),
                        requisition_params: Some(RequisitionParams {
                            protocol: Some(ParamsProtocol::HonestMajorityShareShuffle(
                                HonestMajorityShareShuffle {
                                    tink_public_key: key.clone().unwrap_or_default(),
                                    ..Default::default()
                                },
                            )),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            fulfilling_duchy: fulfilling.into(),
            ..Default::default()
        }
    }

    #[test]
    fn peer_key_is_the_other_non_aggregator() {
        let k1 = vec![1u8; 32];
        let k2 = vec![2u8; 32];
        let r = requisition(
            &[
                ("aggregator", None),
                ("worker1", None),
                ("worker2", Some(k2.clone())),
            ],
            "worker1",
        );
        assert_eq!(peer_public_key(&r).unwrap(), k2);
        // Both workers publish keys: the fulfilling one's is skipped.
        let r = requisition(
            &[
                ("aggregator", None),
                ("worker1", Some(k1.clone())),
                ("worker2", Some(k2.clone())),
            ],
            "worker2",
        );
        assert_eq!(peer_public_key(&r).unwrap(), k1);
        // Only the fulfilling duchy has a key: no peer.
        let r = requisition(&[("worker1", Some(k1)), ("worker2", None)], "worker1");
        assert!(peer_public_key(&r).is_err());
        let r = requisition(
            &[("worker1", None), ("worker2", Some(vec![1, 2]))],
            "worker1",
        );
        assert!(peer_public_key(&r).is_err());
        assert!(peer_public_key(&admin::DataProviderRequisition::default()).is_err());
    }

    #[test]
    fn ring_modulus_by_type() {
        use halo_proto::system::v1alpha::computation::MpcProtocolConfig;
        use halo_proto::system::v1alpha::computation::mpc_protocol_config::HonestMajorityShareShuffle;
        let c = Computation {
            mpc_protocol_config: Some(MpcProtocolConfig {
                protocol: Some(MpcProtocol::HonestMajorityShareShuffle(
                    HonestMajorityShareShuffle {
                        reach_and_frequency_ring_modulus: 127,
                        reach_ring_modulus: 131,
                        ..Default::default()
                    },
                )),
            }),
            ..Default::default()
        };
        let mut spec = admin::MeasurementSpec::default();
        assert!(ring_modulus(&c, &spec).is_err());
        spec.set_type(admin::measurement_spec::Type::Reach);
        assert_eq!(ring_modulus(&c, &spec).unwrap(), 131);
        spec.set_type(admin::measurement_spec::Type::ReachAndFrequency);
        assert_eq!(ring_modulus(&c, &spec).unwrap(), 127);
        assert!(ring_modulus(&Computation::default(), &spec).is_err());
    }
}
