//! The seeded shuffle of the HMSS shuffle phase (spec §6.3 `Shuffle`, AS `src/main/cc/crypto/shuffle.cc`).

use crate::keystream::Keystream;

/// How many draws the shuffle takes from the keystream at a time (256 KiB of keystream: a
/// host keystream request of that size runs on two cores).
const BATCH: usize = 16384;

/// `R mod n` for `R = hi·2^64 + lo` (spec §6.3 `R_i mod (len − i)`). For `n < 2^32` — always
/// the case in a wasm32 guest — three 64-bit divisions by limbs instead of a 128-bit division.
#[inline(always)]
fn mod_u128(lo: u64, hi: u64, n: u64) -> u64 {
    if n <= u64::from(u32::MAX) {
        let t = hi % n;
        let t = ((t << 32) | (lo >> 32)) % n;
        ((t << 32) | (lo & 0xffff_ffff)) % n
    } else {
        ((u128::from(hi) << 64 | u128::from(lo)) % u128::from(n)) as u64
    }
}

fn compute_targets(targets: &mut [usize], draws: &[u8], i: usize, len: usize) {
    for (k, (t, r)) in targets.iter_mut().zip(draws.chunks_exact(16)).enumerate() {
        let (lo, hi) = r.split_at(8);
        let lo = u64::from_le_bytes(lo.try_into().unwrap_or_default());
        let hi = u64::from_le_bytes(hi.try_into().unwrap_or_default());
        let at = i + k;
        *t = at + mod_u128(lo, hi, (len - at) as u64) as usize;
    }
}

fn swap_all<T>(vec: &mut [T], targets: &[usize], i: usize) {
    for (k, &t) in targets.iter().enumerate() {
        vec.swap(i + k, t);
    }
}

/// Fisher–Yates shuffle driven by a keystream (spec §6.3): draws `16·len` bytes; `R_i` is bytes
/// `[16i, 16i+16)` read as a little-endian `u128`; for `i = 0 … len−2`,
/// `j = i + (R_i mod (len − i))` and `vec[i] ↔ vec[j]` (modulo bias kept, as in the reference).
/// `len ≤ 1` is a no-op that consumes nothing.
///
/// The keystream is drawn in batches of 16384 draws; for each batch all targets `j` are computed
/// first (they depend only on the keystream), then the swaps run in order, so the divisions
/// and the random memory accesses each run in a tight loop of their own.
pub fn shuffle_with<T, K: Keystream>(vec: &mut [T], ks: &mut K) {
    let len = vec.len();
    if len <= 1 {
        return;
    }
    let cap = BATCH.min(len);
    let mut targets = vec![0usize; cap];
    let mut i = 0;
    while i < len {
        let n = cap.min(len - i);
        let draws = ks.take(16 * n);
        // The last draw (for i = len − 1) is consumed but unused.
        let used = n.min(len - 1 - i);
        compute_targets(&mut targets[..used], &draws, i, len);
        swap_all(vec, &targets[..used], i);
        i += n;
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

    /// The batched shuffle equals the textbook loop over one `16·len`-byte draw, across batch
    /// boundaries, and consumes exactly `16·len` bytes.
    #[test]
    fn batched_equals_textbook_and_consumption() {
        use crate::keystream::CtrKeystream;
        for len in [2usize, 3, 4095, 4096, 4097, 9000] {
            let seed = [len as u8; 48];
            let mut a: Vec<u32> = (0..len as u32).collect();
            let mut ks = CtrKeystream::from_seed(&seed);
            shuffle_with(&mut a, &mut ks);
            let mut after = [0u8; 8];
            ks.fill(&mut after);

            let mut all = vec![0u8; 16 * len + 8];
            CtrKeystream::from_seed(&seed).fill(&mut all);
            let mut b: Vec<u32> = (0..len as u32).collect();
            for i in 0..len - 1 {
                let r = u128::from_le_bytes(all[16 * i..16 * i + 16].try_into().unwrap());
                let j = i + (r % (len - i) as u128) as usize;
                b.swap(i, j);
            }
            assert_eq!(a, b, "len {len}");
            assert_eq!(after[..], all[16 * len..], "len {len}");
        }
    }

    #[test]
    fn mod_u128_matches_u128_remainder() {
        let samples = [
            (0u64, 0u64),
            (u64::MAX, u64::MAX),
            (0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210),
            (1, u64::MAX),
            (u64::MAX, 0),
        ];
        for (lo, hi) in samples {
            for n in [
                1u64,
                2,
                3,
                127,
                4096,
                10_000_000,
                u64::from(u32::MAX),
                1 << 40,
            ] {
                let r = (u128::from(hi) << 64) | u128::from(lo);
                assert_eq!(
                    u128::from(mod_u128(lo, hi, n)),
                    r % u128::from(n),
                    "{r} mod {n}"
                );
            }
        }
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
