//! The seeded shuffle of the HMSS shuffle phase (spec §6.3 `Shuffle`, AS `src/main/cc/crypto/shuffle.cc`).

use crate::keystream::Keystream;

/// Fisher–Yates shuffle driven by a keystream (spec §6.3): draws `16·len` bytes; `R_i` is bytes
/// `[16i, 16i+16)` read as a little-endian `u128`; for `i = 0 … len−2`,
/// `j = i + (R_i mod (len − i))` and `vec[i] ↔ vec[j]` (modulo bias kept, as in the reference).
/// `len ≤ 1` is a no-op that consumes nothing.
pub fn shuffle_with<T, K: Keystream>(vec: &mut [T], ks: &mut K) {
    let len = vec.len();
    if len <= 1 {
        return;
    }
    let mut draws = vec![0u8; 16 * len];
    ks.fill(&mut draws);
    for (i, r) in draws.chunks_exact(16).take(len - 1).enumerate() {
        let mut b = [0u8; 16];
        b.copy_from_slice(r);
        let r = u128::from_le_bytes(b);
        let j = i + (r % (len - i) as u128) as usize;
        vec.swap(i, j);
    }
}

/// `Shuffle(vec, seed48)` with a fresh AES-256-CTR PRNG `PRNG(seed[0:32], seed[32:48])`
/// (spec §6.3, §6.4 step 5).
#[cfg(feature = "ctr-keystream")]
pub fn shuffle<T>(vec: &mut [T], seed: &crate::Seed) {
    let mut ks = crate::keystream::CtrKeystream::from_seed(seed);
    shuffle_with(vec, &mut ks);
}

#[cfg(all(test, feature = "ctr-keystream"))]
mod tests {
    use super::*;
    use crate::test_vectors::nist_seed;

    /// §6.3 KAT `Shuffle([0..9], key‖iv) = [3,9,5,6,1,4,7,8,0,2]`.
    #[test]
    fn kat_shuffle_0_to_9() {
        let mut v: Vec<u32> = (0..10).collect();
        shuffle(&mut v, &nist_seed());
        assert_eq!(v, vec![3, 9, 5, 6, 1, 4, 7, 8, 0, 2]);
    }

    #[test]
    fn same_seed_same_permutation_and_is_permutation() {
        let seed = [7u8; 48];
        let mut a: Vec<u32> = (0..1000).collect();
        let mut b: Vec<u32> = (0..1000).collect();
        shuffle(&mut a, &seed);
        shuffle(&mut b, &seed);
        assert_eq!(a, b);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(a, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn trivial_lengths() {
        let mut e: Vec<u32> = vec![];
        shuffle(&mut e, &[0; 48]);
        let mut one = vec![5u32];
        shuffle(&mut one, &[0; 48]);
        assert_eq!(one, vec![5]);
    }
}
