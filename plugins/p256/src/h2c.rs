//! Hash-to-curve as the reference defines it (spec mpc-crypto.md §2.3): PJC's
//! try-and-increment over SHA-256, not RFC 9380.

use sha2::{Digest, Sha256};

use crate::field::{Fe, P, limbs_from_be, lt, sbb};
use crate::point::Affine;

/// `2^256 mod p`, canonical limbs.
const TWO_256_MOD_P: [u64; 4] = [
    0x0000_0000_0000_0001,
    0xffff_ffff_0000_0000,
    0xffff_ffff_ffff_ffff,
    0x0000_0000_ffff_fffe,
];

/// A 256-bit big-endian value reduced once by `p` (it is below `2p`).
fn reduce_once(h: &[u8; 32]) -> Fe {
    let w = limbs_from_be(h);
    if lt(&w, &P) {
        return Fe::from_canonical(w);
    }
    let (w0, b) = sbb(w[0], P[0], 0);
    let (w1, b) = sbb(w[1], P[1], b);
    let (w2, b) = sbb(w[2], P[2], b);
    let (w3, _) = sbb(w[3], P[3], b);
    Fe::from_canonical([w0, w1, w2, w3])
}

/// `RandomOracleSha256(x, p)`: `SHA256(0x01 ‖ x) ‖ SHA256(0x02 ‖ x)` as a 512-bit big-endian
/// integer, modulo `p`.
fn random_oracle(x: &[u8]) -> Fe {
    let h1: [u8; 32] = Sha256::new()
        .chain_update([1u8])
        .chain_update(x)
        .finalize()
        .into();
    let h2: [u8; 32] = Sha256::new()
        .chain_update([2u8])
        .chain_update(x)
        .finalize()
        .into();
    reduce_once(&h1)
        .mul(&Fe::from_canonical(TWO_256_MOD_P))
        .add(&reduce_once(&h2))
}

/// Minimal big-endian bytes of `x` (`BN_bn2bin`: no leading zeros; 0 is empty).
fn minimal_be(x: &Fe) -> Vec<u8> {
    let b = x.to_be_bytes();
    let start = b.iter().position(|&v| v != 0).unwrap_or(32);
    b[start..].to_vec()
}

/// `H(message)` and the number of candidates examined (`tries`, ≥ 1). Every output has an
/// even `y`, so it encodes with prefix `02`.
pub fn hash_to_curve(message: &[u8]) -> (Affine, u32) {
    let mut x = random_oracle(message);
    let mut tries = 1u32;
    loop {
        if let Some(p) = Affine::from_x_even(x) {
            return (p, tries);
        }
        x = random_oracle(&minimal_be(&x));
        tries = tries.saturating_add(1);
    }
}
