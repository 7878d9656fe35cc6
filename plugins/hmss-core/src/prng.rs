//! The HMSS PRNG and its derived samplers (spec §6.3, AS `open_ssl_uniform_random_generator.cc`).

use crate::error::{HmssError, invalid};
use crate::keystream::Keystream;

/// The reference `OpenSslUniformRandomGenerator` over an injected [`Keystream`] (spec §6.3).
///
/// Every method consumes exactly the bytes the reference consumes, so two parties with the
/// same seed stay in lock-step (§6.4 "PRNG consumption order").
pub struct Prng<K: Keystream> {
    ks: K,
}

/// `⌈log2 q⌉` for `q ≥ 2` (spec §6.3 `bl`).
fn bit_length(q: u32) -> u32 {
    32 - (q - 1).leading_zeros()
}

impl<K: Keystream> Prng<K> {
    /// The largest keystream read one sampler call makes at a time (64 KiB: stays in cache,
    /// and bounds the guest memory a sampler needs).
    pub const BLOCK: usize = 64 << 10;

    /// Wraps a keystream (spec §6.3 `PRNG(key, iv)`).
    pub fn new(ks: K) -> Self {
        Prng { ks }
    }

    /// Returns the underlying keystream.
    pub fn into_inner(self) -> K {
        self.ks
    }

    /// The next `n` raw keystream bytes (spec §6.3; e.g. the 48-byte shuffle seed `seed'` of §6.4 step 5).
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        self.ks.fill(&mut out);
        out
    }

    /// The next 48 bytes as a shuffle seed `seed' = prng.bytes(48)` (spec §6.4 step 5).
    pub fn seed(&mut self) -> crate::Seed {
        let mut out = [0u8; crate::SEED_LEN];
        self.ks.fill(&mut out);
        out
    }

    /// `UniformRange(size, q)`: `size` values uniform in `[0, q)` by rejection sampling, with the
    /// reference's exact chunking (spec §6.3): `bl = ⌈log2 q⌉`, `bpv = ⌈bl/8⌉`,
    /// `fail = (2^bl − q)/2^bl`; per round `chunk = (u64)(cur + 1.0 + fail·cur/(1 − fail))` values
    /// (`f64` arithmetic) whose `chunk·bpv` bytes are all drawn; each big-endian `bpv`-byte group
    /// is masked to `bl` bits and accepted if `< q`; the rest of the chunk is discarded once
    /// `size` values are accepted.
    ///
    /// For `q > 256` the reference reads past its chunk (undefined behaviour, §6.3 ⚠); this
    /// implementation processes whole `bpv`-byte groups, which is the well-defined intent.
    /// Production uses `q = 127` (bit-compatible).
    pub fn uniform_range(&mut self, size: usize, q: u32) -> Result<Vec<u32>, HmssError> {
        let mut out = Vec::with_capacity(size);
        self.uniform_range_each(size, q, |v| out.push(v))?;
        Ok(out)
    }

    /// [`Prng::uniform_range`] handing each accepted value to `f` in order, without
    /// materialising the vector (share expansion adds them straight into a sum, §6.4 step 2).
    /// Consumes exactly the bytes `uniform_range` consumes.
    pub fn uniform_range_each(
        &mut self,
        size: usize,
        q: u32,
        mut f: impl FnMut(u32),
    ) -> Result<(), HmssError> {
        if q <= 256 {
            return self
                .uniform_range_bytes(size, q, |batch| batch.iter().for_each(|&v| f(u32::from(v))));
        }
        let bl = bit_length(q);
        let bpv = bl.div_ceil(8) as usize;
        let mask: u32 = ((1u64 << bl) - 1) as u32;
        self.rejection_chunks(size, q, bpv, |bytes, need| {
            let mut accepted = 0;
            for group in bytes.chunks_exact(bpv) {
                let v = group.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) & mask;
                if v < q {
                    f(v);
                    accepted += 1;
                    if accepted == need {
                        break;
                    }
                }
            }
            accepted
        })
    }

    /// The reference's rejection-sampling loop (spec §6.3): while fewer than `size` values are
    /// accepted, draw a chunk of `chunk = (u64)(cur + 1.0 + fail·cur/(1 − fail))` values of
    /// `bpv` bytes (`fail = (2^bl − q)/2^bl`), in keystream blocks of at most [`Prng::BLOCK`]
    /// bytes; `take(block, need)` accepts at most `need` values from a block and says how many
    /// it took. The rest of a chunk is skipped once `size` values are accepted.
    fn rejection_chunks(
        &mut self,
        size: usize,
        q: u32,
        bpv: usize,
        mut take: impl FnMut(&[u8], usize) -> usize,
    ) -> Result<(), HmssError> {
        if q < 2 {
            return Err(invalid(format!("modulus q = {q} must be at least 2")));
        }
        let range = (1u64 << bit_length(q)) as f64;
        let fail = (range - q as f64) / range;
        let block = (Self::BLOCK / bpv) * bpv;
        let mut have = 0usize;
        while have < size {
            let cur = (size - have) as f64;
            let chunk = (cur + 1.0 + fail * cur / (1.0 - fail)) as u64;
            let mut left = chunk.saturating_mul(bpv as u64);
            while left > 0 && have < size {
                let n = left.min(block as u64) as usize;
                let bytes = self.ks.take(n);
                left -= n as u64;
                have += take(&bytes, size - have);
            }
            if left > 0 {
                self.ks.skip(left);
            }
        }
        Ok(())
    }

    /// [`Prng::uniform_range`] for `q ≤ 256` (one byte per value), handing the accepted values
    /// to `f` in batches, in order (same consumption). Keystream blocks are scanned 16 bytes at
    /// a time: a group without a rejected byte (the usual case: for `q = 127` one byte in 128
    /// is rejected) is masked and appended whole, a loop that compiles to SIMD.
    pub fn uniform_range_bytes(
        &mut self,
        size: usize,
        q: u32,
        mut f: impl FnMut(&[u8]),
    ) -> Result<(), HmssError> {
        if !(2..=256).contains(&q) {
            return Err(invalid(format!(
                "byte sampler needs 2 ≤ q ≤ 256, got q = {q}"
            )));
        }
        let mask = ((1u32 << bit_length(q)) - 1) as u8;
        let last = (q - 1) as u8;
        let mut accepted: Vec<u8> = Vec::new();
        self.rejection_chunks(size, q, 1, |bytes, need| {
            accepted.clear();
            for group in bytes.chunks(16) {
                let rejected = group
                    .iter()
                    .fold(0u8, |r, &b| r | u8::from((b & mask) > last));
                if rejected == 0 {
                    accepted.extend(group.iter().map(|&b| b & mask));
                } else {
                    accepted.extend(group.iter().map(|&b| b & mask).filter(|&v| v <= last));
                }
                if accepted.len() >= need {
                    break;
                }
            }
            accepted.truncate(need);
            f(&accepted);
            accepted.len()
        })
    }

    /// [`Prng::non_zero_range`] for `q ≤ 256`, handing the values to `f` in batches, in order
    /// (same consumption).
    pub fn non_zero_range_bytes(
        &mut self,
        size: usize,
        q: u32,
        mut f: impl FnMut(&[u8]),
    ) -> Result<(), HmssError> {
        if !(2..=256).contains(&q) {
            return Err(invalid(format!(
                "byte sampler needs 2 ≤ q ≤ 256, got q = {q}"
            )));
        }
        let fail = 1.0 / q as f64;
        let mut have = 0usize;
        let mut kept: Vec<u8> = Vec::new();
        while have < size {
            let cur = (size - have) as f64;
            let chunk = (cur + 1.0 + fail * cur / (1.0 - fail)) as i64 as usize;
            // The nested UniformRange always runs to the end of its `chunk` values; values
            // after the `size`-th non-zero are dropped.
            self.uniform_range_bytes(chunk, q, |batch| {
                if have < size {
                    kept.clear();
                    kept.extend(batch.iter().copied().filter(|&v| v != 0));
                    kept.truncate(size - have);
                    have += kept.len();
                    f(&kept);
                }
            })?;
        }
        Ok(())
    }

    /// `NonZeroRange(size, q)`: `size` values uniform in `[1, q)` (spec §6.3): per round
    /// `chunk = (i64)(cur + 1.0 + fail·cur/(1 − fail))` with `fail = 1/q`, then a nested
    /// `UniformRange(chunk, q)` (which consumes its own chunks), keeping non-zero values in order.
    pub fn non_zero_range(&mut self, size: usize, q: u32) -> Result<Vec<u32>, HmssError> {
        let mut out = Vec::with_capacity(size);
        self.non_zero_range_each(size, q, |v| out.push(v))?;
        Ok(out)
    }

    /// [`Prng::non_zero_range`] handing each value to `f` in order (same consumption).
    pub fn non_zero_range_each(
        &mut self,
        size: usize,
        q: u32,
        mut f: impl FnMut(u32),
    ) -> Result<(), HmssError> {
        if q < 2 {
            return Err(invalid(format!("modulus q = {q} must be at least 2")));
        }
        let fail = 1.0 / q as f64;
        let mut have = 0usize;
        while have < size {
            let cur = (size - have) as f64;
            let chunk = (cur + 1.0 + fail * cur / (1.0 - fail)) as i64 as usize;
            // The nested UniformRange always runs to the end of its `chunk` values (the
            // reference materialises them); values after the `size`-th non-zero are dropped.
            self.uniform_range_each(chunk, q, |v| {
                if v != 0 && have < size {
                    f(v);
                    have += 1;
                }
            })?;
        }
        Ok(())
    }

    /// A uniform `f64` in `[0, 1)` from the next 8 keystream bytes (big-endian, top 53 bits).
    /// Used only by the local noise samplers of spec §5.1, whose randomness is not part of the
    /// wire contract (§9 item 11).
    pub fn uniform_f64(&mut self) -> f64 {
        let mut b = [0u8; 8];
        self.ks.fill(&mut b);
        (u64::from_be_bytes(b) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(all(test, feature = "ctr-keystream"))]
mod tests {
    use super::*;
    use crate::keystream::CtrKeystream;
    use crate::test_vectors::nist_seed;

    fn nist() -> Prng<CtrKeystream> {
        Prng::new(CtrKeystream::from_seed(&nist_seed()))
    }

    fn keystream(range: core::ops::Range<usize>) -> Vec<u8> {
        let mut ks = CtrKeystream::from_seed(&nist_seed());
        let mut all = vec![0u8; range.end];
        ks.fill(&mut all);
        all[range].to_vec()
    }

    const UR20_127: [u32; 20] = [
        11, 95, 125, 113, 89, 23, 22, 51, 94, 26, 11, 21, 72, 96, 69, 2, 90, 110, 105, 29,
    ];

    #[test]
    fn bit_length_is_ceil_log2() {
        assert_eq!(bit_length(2), 1);
        assert_eq!(bit_length(5), 3);
        assert_eq!(bit_length(127), 7);
        assert_eq!(bit_length(128), 7);
        assert_eq!(bit_length(129), 8);
        assert_eq!(bit_length(256), 8);
        assert_eq!(bit_length(257), 9);
    }

    /// §6.3 KAT `UniformRange(20, 127)`.
    #[test]
    fn kat_uniform_range_20_127() {
        assert_eq!(nist().uniform_range(20, 127), Ok(UR20_127.to_vec()));
    }

    /// §6.3 KAT `UniformRange(20, 5)`.
    #[test]
    fn kat_uniform_range_20_5() {
        assert_eq!(
            nist().uniform_range(20, 5),
            Ok(vec![
                3, 1, 1, 3, 2, 3, 0, 0, 2, 2, 1, 3, 1, 1, 4, 3, 4, 3, 4, 3
            ])
        );
    }

    /// §6.3 KAT `NonZeroRange(20, 127)` = `UniformRange(20, 127)`.
    #[test]
    fn kat_non_zero_range_20_127() {
        assert_eq!(nist().non_zero_range(20, 127), Ok(UR20_127.to_vec()));
    }

    /// §6.3 chunk-consumption KAT: two `UniformRange(6, 127)` then 48 seed bytes = keystream[14:62].
    #[test]
    fn kat_chunk_consumption() {
        let mut p = nist();
        assert_eq!(p.uniform_range(6, 127), Ok(vec![11, 95, 125, 113, 89, 23]));
        assert_eq!(p.uniform_range(6, 127), Ok(vec![51, 94, 26, 11, 21, 72]));
        let seed = p.seed();
        let h = hex::encode(seed);
        assert!(h.starts_with("c5025a6e"), "{h}");
        assert!(h.ends_with("e99c73a315"), "{h}");
        assert_eq!(seed.to_vec(), keystream(14..62));
    }

    /// §6.3 RO-order KAT: `NonZeroRange(10, 127)` consumes 12 bytes; seed = keystream[12:60].
    #[test]
    fn kat_non_zero_range_consumes_12_bytes() {
        let mut p = nist();
        assert_eq!(
            p.non_zero_range(10, 127),
            Ok(vec![11, 95, 125, 113, 89, 23, 22, 51, 94, 26])
        );
        let seed = p.seed();
        let h = hex::encode(seed);
        assert!(h.starts_with("c860c5025a6e"), "{h}");
        assert!(h.ends_with("9c73"), "{h}");
        assert_eq!(seed.to_vec(), keystream(12..60));
    }

    /// The batched byte samplers give the same values and consume the same bytes as the
    /// per-value ones, for every small modulus, across block and chunk boundaries.
    #[test]
    fn byte_samplers_equal_per_value_samplers() {
        for q in [2u32, 3, 5, 100, 127, 128, 129, 200, 255, 256] {
            for size in [0usize, 1, 15, 16, 17, 1000, 70_000, 200_000] {
                let mut a = nist();
                let mut b = nist();
                let want = a.uniform_range(size, q).unwrap_or_default();
                let mut got = Vec::new();
                b.uniform_range_bytes(size, q, |batch| {
                    got.extend(batch.iter().map(|&v| u32::from(v)))
                })
                .unwrap();
                assert_eq!(got, want, "uniform q {q} size {size}");
                assert_eq!(a.bytes(5), b.bytes(5), "consumption q {q} size {size}");

                let want = a.non_zero_range(size, q).unwrap_or_default();
                let mut got = Vec::new();
                b.non_zero_range_bytes(size, q, |batch| {
                    got.extend(batch.iter().map(|&v| u32::from(v)))
                })
                .unwrap();
                assert_eq!(got, want, "non-zero q {q} size {size}");
                assert_eq!(a.bytes(5), b.bytes(5), "consumption q {q} size {size}");
            }
        }
        assert!(nist().uniform_range_bytes(3, 257, |_| {}).is_err());
        assert!(nist().non_zero_range_bytes(3, 1, |_| {}).is_err());
    }

    #[test]
    fn zero_size_consumes_nothing_and_small_q_rejected() {
        let mut p = nist();
        assert_eq!(p.uniform_range(0, 127), Ok(vec![]));
        assert_eq!(p.non_zero_range(0, 127), Ok(vec![]));
        assert_eq!(p.bytes(4), keystream(0..4));
        assert!(p.uniform_range(3, 1).is_err());
        assert!(p.non_zero_range(3, 0).is_err());
    }

    #[test]
    fn values_stay_in_range_for_multibyte_q() {
        let mut p = nist();
        let v = p.uniform_range(1000, 1000).unwrap_or_default();
        assert_eq!(v.len(), 1000);
        assert!(v.iter().all(|&x| x < 1000));
        let nz = p.non_zero_range(1000, 2).unwrap_or_default();
        assert!(nz.iter().all(|&x| x == 1));
    }

    #[test]
    fn uniform_f64_in_unit_interval() {
        let mut p = nist();
        for _ in 0..1000 {
            let u = p.uniform_f64();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
