//! The two HMSS computation phases: the non-aggregators' shuffle phase (spec §6.4) and the
//! aggregator's aggregation phase (spec §6.5).

use std::collections::BTreeMap;

use crate::error::{HmssError, invalid};
use crate::keystream::Keystream;
use crate::prng::Prng;
use crate::ring::{Modulus, Register};
use crate::share::sub_mod;
use crate::shuffle::shuffle_with;

/// The role of a non-aggregator, which fixes the noise-masking layout (spec §6.4 step 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonAggregatorRole {
    /// `FIRST_NON_AGGREGATOR`: appends `(Nv − R1) ‖ R2`.
    First,
    /// `SECOND_NON_AGGREGATOR`: appends `R1 ‖ (Nv − R2)`.
    Second,
}

/// `X = Σ_e share_e mod q` over the (already expanded) shares, each of length `register_count`
/// (spec §6.4 step 2). Seed shares can instead be added straight into a sum with
/// [`crate::share::add_share_from_keystream`].
pub fn sum_shares<R: Register>(
    shares: &[&[R]],
    register_count: usize,
    q: u32,
) -> Result<Vec<R>, HmssError> {
    let m = Modulus::new(q)?;
    let mut x = vec![R::default(); register_count];
    for (i, s) in shares.iter().enumerate() {
        if s.len() != register_count {
            return Err(invalid(format!(
                "share {i} has length {}, register_count is {register_count}",
                s.len()
            )));
        }
        m.check_below(s)?;
        R::add_assign_slice(&mut x, s, &m);
    }
    Ok(x)
}

/// Masks the local noise `Nv` with `R1 = prng.UniformRange(T, q)`, `R2 = prng.UniformRange(T, q)`
/// drawn from the common PRNG (in that order): FIRST returns `(Nv − R1) ‖ R2`, SECOND returns
/// `R1 ‖ (Nv − R2)` (mod q), so the aggregator's sum is `Nv_first ‖ Nv_second` (spec §6.4 step 4).
pub fn mask_noise<K: Keystream>(
    common: &mut Prng<K>,
    noise: &[u32],
    role: NonAggregatorRole,
    q: u32,
) -> Result<Vec<u32>, HmssError> {
    Modulus::new(q)?.check_below(noise)?;
    let t = noise.len();
    let r1 = common.uniform_range(t, q)?;
    let r2 = common.uniform_range(t, q)?;
    let masked = |r: &[u32]| -> Vec<u32> {
        noise
            .iter()
            .zip(r)
            .map(|(&n, &r)| sub_mod(n, r, q))
            .collect()
    };
    let mut out = Vec::with_capacity(2 * t);
    match role {
        NonAggregatorRole::First => {
            out.extend(masked(&r1));
            out.extend_from_slice(&r2);
        }
        NonAggregatorRole::Second => {
            out.extend_from_slice(&r1);
            out.extend(masked(&r2));
        }
    }
    Ok(out)
}

/// Steps 3–6 of the R&F shuffle phase (spec §6.4): given `X` (step 2) and the common PRNG
/// `PRNG(common_seed)`, appends the masked noise (if `noise` is `Some(Nv)`, e.g. from
/// [`crate::noise::rf_noise_registers`]), draws `seed' = prng.bytes(48)` and shuffles `X ‖ noise`
/// with `Shuffle(·, seed')`, the keystream for `seed'` coming from `shuffle_keystream`.
/// Output length `register_count + 2T`.
pub fn rf_shuffle_phase<R: Register, K: Keystream, S: Keystream>(
    x: Vec<R>,
    common: &mut Prng<K>,
    noise: Option<&[u32]>,
    role: NonAggregatorRole,
    q: u32,
    shuffle_keystream: impl FnOnce(&crate::Seed) -> S,
) -> Result<Vec<R>, HmssError> {
    let m = Modulus::new(q)?;
    if !R::serves(q) {
        return Err(invalid(format!(
            "modulus {q} does not fit the register type"
        )));
    }
    let mut out = x;
    m.check_below(&out)?;
    if let Some(nv) = noise {
        let masked = mask_noise(common, nv, role, q)?;
        out.extend(masked.into_iter().map(R::from_u32));
    }
    let seed = common.seed();
    shuffle_with(&mut out, &mut shuffle_keystream(&seed));
    Ok(out)
}

/// Naive primality test for the reach-only modulus check (spec §6.4 reach-only (a)).
pub fn is_prime(q: u32) -> bool {
    if q < 2 {
        return false;
    }
    let q = u64::from(q);
    (2..).take_while(|d| d * d <= q).all(|d| q % d != 0)
}

/// The reach-only shuffle phase after step 2 (spec §6.4 reach-only): `q` must be prime;
/// `r = prng.NonZeroRange(|X|, q)`, `X[j] ← X[j]·r[j] mod q`; then the masked noise (if
/// `noise` is `Some(Nv)`, from [`crate::noise::ro_noise_registers`]), `seed' = prng.bytes(48)`
/// and the shuffle. PRNG order: `r, [R1, R2]?, 48 B`.
pub fn ro_shuffle_phase<R: Register, K: Keystream, S: Keystream>(
    x: Vec<R>,
    common: &mut Prng<K>,
    noise: Option<&[u32]>,
    role: NonAggregatorRole,
    q: u32,
    shuffle_keystream: impl FnOnce(&crate::Seed) -> S,
) -> Result<Vec<R>, HmssError> {
    if !is_prime(q) {
        return Err(invalid(format!("reach-only modulus {q} must be prime")));
    }
    let m = Modulus::new(q)?;
    m.check_below(&x)?;
    let mut x = x;
    let mut j = 0usize;
    if q <= 256 {
        common.non_zero_range_bytes(x.len(), q, |r| {
            let end = (j + r.len()).min(x.len());
            R::mul_assign_bytes(&mut x[j..end], r, &m);
            j = end;
        })?;
    } else {
        common.non_zero_range_each(x.len(), q, |r| {
            if let Some(v) = x.get_mut(j) {
                *v = R::from_u32(m.mul(v.get(), r));
            }
            j += 1;
        })?;
    }
    rf_shuffle_phase(x, common, noise, role, q, shuffle_keystream)
}

/// The noise offsets the aggregator removes: `μ_r` and `μ_f` of the blind-histogram noisers
/// (spec §5.3, §6.5 step 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoiseBaseline {
    /// `μ_reach`.
    pub mu_reach: u32,
    /// `μ_freq` (ignored by reach-only).
    pub mu_freq: u32,
}

/// Parameters of the aggregation phase (spec §6.5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AggregationParams {
    /// `M` = `register_count`, excluding noise registers.
    pub register_count: u64,
    /// `max_combined_frequency` (values above it must be the sentinel `q − 1`).
    pub max_combined_frequency: u32,
    /// The requested maximum frequency `MF ≥ 1` (R&F only).
    pub maximum_frequency: u32,
    /// The ring modulus `q`.
    pub q: u32,
    /// VID sampling interval width, `0 < width ≤ 1` (float32 in the proto).
    pub vid_sampling_width: f32,
    /// `Some` iff DP noise was added (baseline removal, §5.3).
    pub noise: Option<NoiseBaseline>,
}

/// The aggregator's result: reach and (R&F only) the frequency distribution (spec §6.5).
#[derive(Debug, Clone, PartialEq)]
pub struct AggregationResult {
    /// `reach = (i64)(NE / width)`.
    pub reach: i64,
    /// `distribution[i] = f[i]/tot` for `1 ≤ i ≤ MF` with `f[i] ≠ 0` (empty for reach-only).
    pub distribution: BTreeMap<u32, f64>,
}

/// `reach = (i64)(NE / width)`, `width` widened to `f64` (`EstimateReach(int64, double)`, spec §6.5 step 6).
pub fn estimate_reach(non_empty: i64, width: f32) -> Result<i64, HmssError> {
    if non_empty < 0 {
        return Err(invalid("non-empty register count must not be negative"));
    }
    check_width(width)?;
    Ok((non_empty as f64 / f64::from(width)) as i64)
}

fn check_width(width: f32) -> Result<(), HmssError> {
    if width > 0.0 && width <= 1.0 {
        Ok(())
    } else {
        Err(invalid(format!(
            "VID sampling width {width} must be in (0, 1]"
        )))
    }
}

/// How often each value occurs in a combined vector `Z` (spec §6.5 step 2), for the values the
/// aggregation looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueCounts {
    /// `counts[v] = #{z == v}` for `v < counts.len()`.
    pub counts: Vec<u64>,
    /// `#{z == q − 1}` (the noise sentinel) when `q − 1 ≥ counts.len()`.
    pub sentinel: u64,
    /// The smallest value that is neither counted nor the sentinel, if any occurred.
    pub other: Option<u32>,
    /// `|Z|`.
    pub len: u64,
}

impl ValueCounts {
    fn empty(tracked: usize) -> Self {
        ValueCounts {
            counts: vec![0; tracked],
            sentinel: 0,
            other: None,
            len: 0,
        }
    }

    fn note(&mut self, z: u32, sentinel: u32, count: u64) {
        if count == 0 {
            return;
        }
        match self.counts.get_mut(z as usize) {
            Some(c) => *c += count,
            None if z == sentinel => self.sentinel += count,
            None => self.other = Some(self.other.map_or(z, |o| o.min(z))),
        }
    }
}

/// Counts the values of `z` (spec §6.5 step 2), tracking `0..tracked` individually.
pub fn count_values<R: Register>(z: &[R], q: u32, tracked: usize) -> ValueCounts {
    let mut c = ValueCounts::empty(tracked);
    let sentinel = q.wrapping_sub(1);
    for &v in z {
        c.note(v.get(), sentinel, 1);
    }
    c.len = z.len() as u64;
    c
}

/// `Z = (share_1 + share_2) mod q` (spec §6.5 `CombineFrequencyVectorShares`), counted on the
/// fly: the combined vector itself is never materialised. Both shares must have the same
/// length and every value must be `< q`.
pub fn combine_and_count<R: Register>(
    a: &[R],
    b: &[R],
    q: u32,
    tracked: usize,
) -> Result<ValueCounts, HmssError> {
    let m = Modulus::new(q)?;
    if a.len() != b.len() {
        return Err(invalid(format!(
            "the two shares have lengths {} and {}",
            a.len(),
            b.len()
        )));
    }
    m.check_below(a)?;
    m.check_below(b)?;
    let sentinel = q - 1;
    let mut c = ValueCounts::empty(tracked);
    if R::serves(q) && q <= 256 && core::mem::size_of::<R>() == 1 {
        // One histogram of all 256 byte values, in four interleaved copies so that runs of
        // equal values do not serialise on one counter.
        let mut h = [[0u64; 256]; 4];
        let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for k in 0..4 {
                h[k][(m.add(x[k].get(), y[k].get()) as u8) as usize] += 1;
            }
        }
        for (x, y) in ra.iter().zip(rb) {
            h[0][(m.add(x.get(), y.get()) as u8) as usize] += 1;
        }
        let [h0, h1, h2, h3] = &h;
        for (v, (((a, b), c2), d)) in h0.iter().zip(h1).zip(h2).zip(h3).enumerate() {
            c.note(v as u32, sentinel, a + b + c2 + d);
        }
    } else {
        for (x, y) in a.iter().zip(b) {
            c.note(m.add(x.get(), y.get()), sentinel, 1);
        }
    }
    c.len = a.len() as u64;
    Ok(c)
}

/// R&F aggregation (spec §6.5, `CompleteReachAndFrequencyAggregationPhase`) on the combined
/// vector `z` (see [`crate::share::combine`]); see [`rf_aggregate_counts`].
pub fn rf_aggregate(z: &[u32], params: &AggregationParams) -> Result<AggregationResult, HmssError> {
    let tracked = params.max_combined_frequency as usize + 1;
    rf_aggregate_counts(&count_values(z, params.q, tracked), params)
}

/// R&F aggregation (spec §6.5, `CompleteReachAndFrequencyAggregationPhase`) from the value
/// counts of `Z` (tracking at least `0..=max_combined_frequency`, see [`combine_and_count`]):
/// 1. every `z ≤ max_combined_frequency` or `z == q − 1`, else `Internal`;
/// 2. `f[v] = #{z == v}` for `v < MF` (present keys only);
/// 3. `NE = M − f[0]` before baseline removal;
/// 4. with DP: `f[0] ← max(0, f[0] − 2μ_r)`, `f[i] ← max(0, f[i] − 2μ_f)` for present `i ≥ 1`,
///    `NE ← clamp(NE + 2μ_r, 0, M)`;
/// 5. `acc = Σ f[v]`; `acc > M` → `f[MF] = 0`, `tot = acc − f[0]`; else `f[MF] = M − acc`,
///    `tot = M − f[0]`; `tot == 0` → `InvalidArgument`;
/// 6. `reach = (i64)(NE / width)`, `distribution[i] = f[i]/tot` for non-zero `f[i]`, `1 ≤ i ≤ MF`.
pub fn rf_aggregate_counts(
    counts: &ValueCounts,
    params: &AggregationParams,
) -> Result<AggregationResult, HmssError> {
    let AggregationParams {
        register_count: m,
        max_combined_frequency: mcf,
        maximum_frequency: mf,
        q,
        vid_sampling_width: width,
        noise,
    } = *params;
    if mf < 1 {
        return Err(invalid("maximum_frequency must be at least 1"));
    }
    if q < 2 {
        return Err(invalid("q must be at least 2"));
    }
    check_width(width)?;
    let over = counts
        .counts
        .iter()
        .enumerate()
        .skip(mcf as usize + 1)
        .find(|(v, c)| **c > 0 && *v as u64 != u64::from(q) - 1)
        .map(|(v, _)| v as u32);
    if let Some(v) = over.or(counts.other) {
        return Err(HmssError::Internal(format!(
            "a combined register is {v}, above max_combined_frequency {mcf} and not the sentinel"
        )));
    }
    let m = m as i64;
    let mut f: BTreeMap<u32, i64> = (0..mf)
        .filter_map(|v| {
            let c = counts.counts.get(v as usize).copied().unwrap_or(0);
            (c > 0).then_some((v, c as i64))
        })
        .collect();
    let f0 = f.get(&0).copied().unwrap_or(0);
    let mut non_empty = m - f0;
    if let Some(NoiseBaseline { mu_reach, mu_freq }) = noise {
        let (two_r, two_f) = (2 * i64::from(mu_reach), 2 * i64::from(mu_freq));
        for (&k, c) in f.iter_mut() {
            *c = (*c - if k == 0 { two_r } else { two_f }).max(0);
        }
        non_empty = (non_empty + two_r).clamp(0, m);
    }
    let f0 = f.get(&0).copied().unwrap_or(0);
    let acc: i64 = f.values().sum();
    let tot = if acc > m {
        f.insert(mf, 0);
        acc - f0
    } else {
        f.insert(mf, m - acc);
        m - f0
    };
    if tot == 0 {
        return Err(invalid(
            "there is neither actual data nor effective noise in the request",
        ));
    }
    let reach = estimate_reach(non_empty, width)?;
    let distribution = (1..=mf)
        .filter_map(|i| match f.get(&i) {
            Some(&c) if c != 0 => Some((i, c as f64 / tot as f64)),
            _ => None,
        })
        .collect();
    Ok(AggregationResult {
        reach,
        distribution,
    })
}

/// Reach-only aggregation (spec §6.5 RO, `CompleteReachOnlyAggregationPhase`): `NE = #{z ≠ 0}`
/// over all entries including noise; with DP `NE ← clamp(NE − 2μ_r, 0, M)`; `reach = (i64)(NE / width)`.
pub fn ro_aggregate(
    z: &[u32],
    register_count: u64,
    vid_sampling_width: f32,
    noise: Option<NoiseBaseline>,
) -> Result<i64, HmssError> {
    let counts = count_values(z, u32::MAX, 1);
    ro_aggregate_counts(&counts, register_count, vid_sampling_width, noise)
}

/// [`ro_aggregate`] from the value counts of `Z` (tracking at least the value 0).
pub fn ro_aggregate_counts(
    counts: &ValueCounts,
    register_count: u64,
    vid_sampling_width: f32,
    noise: Option<NoiseBaseline>,
) -> Result<i64, HmssError> {
    let m = register_count as i64;
    let zeros = counts.counts.first().copied().unwrap_or(0);
    let mut non_empty = (counts.len - zeros) as i64;
    if let Some(b) = noise {
        non_empty = (non_empty - 2 * i64::from(b.mu_reach)).clamp(0, m);
    }
    estimate_reach(non_empty, vid_sampling_width)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::share::combine;

    fn params(
        m: u64,
        mcf: u32,
        mf: u32,
        q: u32,
        w: f32,
        noise: Option<NoiseBaseline>,
    ) -> AggregationParams {
        AggregationParams {
            register_count: m,
            max_combined_frequency: mcf,
            maximum_frequency: mf,
            q,
            vid_sampling_width: w,
            noise,
        }
    }

    fn dist(pairs: &[(u32, f64)]) -> BTreeMap<u32, f64> {
        pairs.iter().copied().collect()
    }

    /// §6.5 KAT (reference utility test): shares mod 8, max_comb 4, MF 2, width 0.5, no noise
    /// → reach 8, {1: 0.25, 2: 0.75}.
    #[test]
    fn kat_rf_no_noise() {
        let z =
            combine(&[&[3, 4, 3, 6, 1, 7, 2, 0], &[5, 4, 5, 2, 0, 3, 1, 4]], 8).unwrap_or_default();
        let r = rf_aggregate(&z, &params(8, 4, 2, 8, 0.5, None));
        assert_eq!(
            r,
            Ok(AggregationResult {
                reach: 8,
                distribution: dist(&[(1, 0.25), (2, 0.75)])
            })
        );
    }

    /// §6.5 KAT with noise (μ_r = 3, μ_f = 1) → reach 16, {1: 0.125, 2: 0.875}. The reference
    /// test's 10 noise entries are not listed in the spec; this noise block
    /// (two 0s, two 1s, six 3s) is one that the expected output implies (derivation in the report).
    #[test]
    fn kat_rf_with_noise_constructed() {
        let mut z =
            combine(&[&[3, 4, 3, 6, 1, 7, 2, 0], &[5, 4, 5, 2, 0, 3, 1, 4]], 8).unwrap_or_default();
        z.extend([0, 0, 1, 1, 3, 3, 3, 3, 3, 3]);
        let noise = Some(NoiseBaseline {
            mu_reach: 3,
            mu_freq: 1,
        });
        let r = rf_aggregate(&z, &params(8, 4, 2, 8, 0.5, noise));
        assert_eq!(
            r,
            Ok(AggregationResult {
                reach: 16,
                distribution: dist(&[(1, 0.125), (2, 0.875)])
            })
        );
    }

    /// §6.5 Kotlin JNI KATs, q = 127, MF 3.
    #[test]
    fn kat_jni() {
        let z = combine(&[&[1, 0, 2, 1, 0, 3], &[0, 0, 0, 1, 0, 0]], 127).unwrap_or_default();
        let r = rf_aggregate(&z, &params(6, 6, 3, 127, 1.0, None));
        assert_eq!(
            r,
            Ok(AggregationResult {
                reach: 4,
                distribution: dist(&[(1, 0.25), (2, 0.5), (3, 0.25)])
            })
        );
        assert_eq!(ro_aggregate(&z, 6, 1.0, None), Ok(4));
        assert_eq!(ro_aggregate(&z, 6, 0.5, None), Ok(8));
        let z = combine(&[&[1, 2, 1, 2], &[0, 1, 0, 0]], 127).unwrap_or_default();
        let r = rf_aggregate(&z, &params(4, 6, 3, 127, 1.0, None));
        assert_eq!(
            r,
            Ok(AggregationResult {
                reach: 4,
                distribution: dist(&[(1, 0.5), (2, 0.25), (3, 0.25)])
            })
        );
    }

    #[test]
    fn rf_aggregate_validation() {
        // 5 is above max_combined_frequency 4 and not the sentinel 7.
        assert!(matches!(
            rf_aggregate(&[5], &params(1, 4, 2, 8, 1.0, None)),
            Err(HmssError::Internal(_))
        ));
        // The sentinel is fine (absorbed into f[MF]).
        assert!(rf_aggregate(&[7, 1], &params(2, 4, 2, 8, 1.0, None)).is_ok());
        // All zeros: tot == 0.
        assert!(rf_aggregate(&[0, 0], &params(2, 4, 2, 8, 1.0, None)).is_err());
        assert!(rf_aggregate(&[1], &params(1, 4, 2, 8, 0.0, None)).is_err());
        assert!(rf_aggregate(&[1], &params(1, 4, 2, 8, 1.5, None)).is_err());
        assert!(rf_aggregate(&[1], &params(1, 4, 0, 8, 1.0, None)).is_err());
    }

    #[test]
    fn acc_above_m_branch() {
        // M = 2 but noise keeps 3 ones after baseline removal: acc > M → f[MF] = 0, tot = acc − f0;
        // NE = M − f[0] = 1 (μ_r = 0).
        let z = [1, 1, 1, 1, 1, 0];
        let noise = Some(NoiseBaseline {
            mu_reach: 0,
            mu_freq: 1,
        });
        let r = rf_aggregate(&z, &params(2, 4, 2, 8, 1.0, noise));
        assert_eq!(
            r,
            Ok(AggregationResult {
                reach: 1,
                distribution: dist(&[(1, 1.0)])
            })
        );
    }

    #[test]
    fn ro_aggregate_baseline() {
        let noise = Some(NoiseBaseline {
            mu_reach: 2,
            mu_freq: 0,
        });
        assert_eq!(ro_aggregate(&[1, 0, 3, 4, 5, 6, 0], 3, 1.0, noise), Ok(1));
        assert_eq!(ro_aggregate(&[0, 0, 0], 3, 1.0, noise), Ok(0));
        assert_eq!(ro_aggregate(&[1; 20], 3, 0.5, noise), Ok(6));
    }

    #[test]
    fn primes() {
        assert!(is_prime(127) && is_prime(2) && is_prime(65_521));
        assert!(!is_prime(1) && !is_prime(128) && !is_prime(4));
    }

    #[cfg(feature = "ctr-keystream")]
    mod end_to_end {
        use super::super::*;
        use crate::keystream::CtrKeystream;
        use crate::noise::{NoiserOptions, rf_noise_registers};
        use crate::share::{combine, share_from_seed, split};

        const Q: u32 = 127;

        fn ks(seed: &crate::Seed) -> CtrKeystream {
            CtrKeystream::from_seed(seed)
        }

        /// Two EDPs, both workers, aggregator: the §6.4 masking makes the aggregator see
        /// a permutation of `v_sum ‖ Nv_first ‖ Nv_second`, and deterministic noise
        /// (`μ_r = 3, μ_f = 1` exactly) is removed exactly by the §6.5 baselines.
        #[test]
        fn rf_two_workers_deterministic_noise() {
            let v1 = [0u32, 1, 2, 0, 3, 1, 0, 0, 2, 2];
            let v2 = [1u32, 0, 1, 0, 0, 1, 0, 2, 0, 1];
            let (seed1, seed2) = ([1u8; 48], [2u8; 48]);
            // EDP 1 sends its seed to worker 1, data to worker 2; EDP 2 the other way round.
            let d1 = split(&v1, &seed1, Q).unwrap_or_default();
            let d2 = split(&v2, &seed2, Q).unwrap_or_default();
            let m = v1.len();
            let x_first = sum_shares(
                &[&share_from_seed(&seed1, m, Q).unwrap_or_default(), &d2],
                m,
                Q,
            )
            .unwrap_or_default();
            let x_second = sum_shares(
                &[&d1, &share_from_seed(&seed2, m, Q).unwrap_or_default()],
                m,
                Q,
            )
            .unwrap_or_default();
            let common = [9u8; 48];
            let det = |mu| NoiserOptions::Geometric {
                contributors: 2,
                p: 0.0,
                mu,
            };
            let (reach, freq, mcf) = (det(3), det(1), 3);
            let mut local = Prng::new(ks(&[5u8; 48]));
            let nv1 = rf_noise_registers(&mut local, &reach, &freq, mcf, Q).unwrap_or_default();
            let nv2 = rf_noise_registers(&mut local, &reach, &freq, mcf, Q).unwrap_or_default();
            let out1 = rf_shuffle_phase(
                x_first,
                &mut Prng::new(ks(&common)),
                Some(&nv1),
                NonAggregatorRole::First,
                Q,
                ks,
            )
            .unwrap_or_default();
            let out2 = rf_shuffle_phase(
                x_second,
                &mut Prng::new(ks(&common)),
                Some(&nv2),
                NonAggregatorRole::Second,
                Q,
                ks,
            )
            .unwrap_or_default();
            assert_eq!(out1.len(), m + 2 * nv1.len());
            let z = combine(&[&out1, &out2], Q).unwrap_or_default();
            let v: Vec<u32> = v1.iter().zip(&v2).map(|(a, b)| a + b).collect();
            let mut expected: Vec<u32> = v.iter().chain(&nv1).chain(&nv2).copied().collect();
            let mut got = z.clone();
            expected.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, expected);
            assert_ne!(z[..m], v[..], "the output is shuffled");

            let p = AggregationParams {
                register_count: m as u64,
                max_combined_frequency: mcf,
                maximum_frequency: 3,
                q: Q,
                vid_sampling_width: 0.5,
                noise: Some(NoiseBaseline {
                    mu_reach: 3,
                    mu_freq: 1,
                }),
            };
            // v = [1,1,3,0,3,2,0,2,2,3]: 8 non-empty; f1 = 2, f2 = 3, f3+ = 3.
            let r = rf_aggregate(&z, &p);
            assert_eq!(
                r,
                Ok(AggregationResult {
                    reach: 16,
                    distribution: [(1, 0.25), (2, 0.375), (3, 0.375)].into_iter().collect()
                })
            );
        }

        /// Byte registers and `u32` registers give identical shuffle outputs (R&F and
        /// reach-only, with noise), and the fused combine-and-count equals counting `Z`.
        #[test]
        fn byte_and_word_registers_agree() {
            let m = 5000;
            let v: Vec<u32> = (0..m as u32).map(|i| (i * 7919) % 5).collect();
            let nv: Vec<u32> = vec![0, 0, 3, 3, 126, 126, 1];
            for role in [NonAggregatorRole::First, NonAggregatorRole::Second] {
                let wide = rf_shuffle_phase(
                    v.clone(),
                    &mut Prng::new(ks(&[1; 48])),
                    Some(&nv),
                    role,
                    Q,
                    ks,
                )
                .unwrap_or_default();
                let narrow: Vec<u8> = rf_shuffle_phase(
                    v.iter().map(|&x| x as u8).collect(),
                    &mut Prng::new(ks(&[1; 48])),
                    Some(&nv),
                    role,
                    Q,
                    ks,
                )
                .unwrap_or_default();
                assert_eq!(crate::ring::to_u32(&narrow), wide);
                assert_eq!(wide.len(), m + 2 * nv.len());
                let wide = ro_shuffle_phase(
                    v.clone(),
                    &mut Prng::new(ks(&[2; 48])),
                    Some(&nv),
                    role,
                    Q,
                    ks,
                )
                .unwrap_or_default();
                let narrow: Vec<u8> = ro_shuffle_phase(
                    v.iter().map(|&x| x as u8).collect(),
                    &mut Prng::new(ks(&[2; 48])),
                    Some(&nv),
                    role,
                    Q,
                    ks,
                )
                .unwrap_or_default();
                assert_eq!(crate::ring::to_u32(&narrow), wide);
            }
            let a: Vec<u32> = (0..m as u32).map(|i| (i * 31) % Q).collect();
            let b: Vec<u32> = (0..m as u32).map(|i| (i * 17 + 3) % Q).collect();
            let z = combine(&[&a, &b], Q).unwrap_or_default();
            let want = count_values(&z, Q, 10);
            assert_eq!(combine_and_count(&a, &b, Q, 10), Ok(want.clone()));
            let a8: Vec<u8> = a.iter().map(|&x| x as u8).collect();
            let b8: Vec<u8> = b.iter().map(|&x| x as u8).collect();
            assert_eq!(combine_and_count(&a8, &b8, Q, 10), Ok(want.clone()));
            assert_eq!(want.len, 5000);
            assert!(combine_and_count(&a8, &b8[1..], Q, 10).is_err());
            assert!(combine_and_count(&[127u8], &[0u8], Q, 10).is_err());
        }

        /// Reach-only: `r`-blinding keeps zero/non-zero, and the aggregate removes `2μ_r`.
        #[test]
        fn ro_two_workers() {
            let v = [0u32, 1, 2, 0, 3, 1, 0, 0, 5, 2];
            let seed = [3u8; 48];
            let s2 = split(&v, &seed, Q).unwrap_or_default();
            let s1 = share_from_seed(&seed, v.len(), Q).unwrap_or_default();
            let common = [4u8; 48];
            let nv1 = vec![5, 9, 0, 0];
            let nv2 = vec![1, 0, 0, 0];
            let out1 = ro_shuffle_phase(
                s1,
                &mut Prng::new(ks(&common)),
                Some(&nv1),
                NonAggregatorRole::First,
                Q,
                ks,
            )
            .unwrap_or_default();
            let out2 = ro_shuffle_phase(
                s2,
                &mut Prng::new(ks(&common)),
                Some(&nv2),
                NonAggregatorRole::Second,
                Q,
                ks,
            )
            .unwrap_or_default();
            let z = combine(&[&out1, &out2], Q).unwrap_or_default();
            assert_eq!(z.len(), 18);
            assert_eq!(z.iter().filter(|&&x| x != 0).count(), 6 + 3);
            let noise = Some(NoiseBaseline {
                mu_reach: 2,
                mu_freq: 0,
            });
            assert_eq!(ro_aggregate(&z, 10, 1.0, noise), Ok(6 + 3 - 4));
            assert!(
                ro_shuffle_phase(
                    vec![1u32],
                    &mut Prng::new(ks(&common)),
                    None,
                    NonAggregatorRole::First,
                    128,
                    ks
                )
                .is_err()
            );
        }
    }
}
