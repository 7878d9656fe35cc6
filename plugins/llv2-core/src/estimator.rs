//! The Liquid Legions reach estimator with the reference's quirks (spec `mpc-crypto.md` §1.4,
//! §9 item 8, §10 traps 3–4) and the plaintext frequency distribution (§1.5).
//!
//! The estimate inverts the expected number of active registers `E[A](c)` (truncated to an
//! integer) with the reference's `InvertMonotonic` loop, then divides by the VID sampling width
//! taken as `f32`. With noise off, the MPC reproduces [`plaintext_reach`] of the union of the
//! providers' sketches exactly.

use std::collections::BTreeMap;

use crate::sketch::{DESTROYED, PlainRegister, SketchParams};

/// Euler–Mascheroni constant γ.
const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

/// Upper bound of the doubling phase of [`estimate_cardinality`] (`2^62`).
pub const MAX_CARDINALITY: u64 = 1 << 62;

/// Iteration cap of the continued fraction (§1.4: "≤ 1000 iters").
const MAX_CF_ITERATIONS: u32 = 1000;

/// The exponential integral `Ei(x)` as evaluated by the reference (§1.4, llvm `expint` header):
///
/// * `x < −1`: continued fraction for `E1(−x)` (Numerical Recipes 6.3.5, modified Lentz): two
///   interleaved recurrences `s ← 1 − x + 2i − i²/s` (one started at `+∞`, one at `1 − x`),
///   stopped when they are equal or after 1000 iterations; result `−h·e^x`;
/// * `−1 ≤ x < −ln(DBL_EPSILON)`: power series `γ + ln|x| + Σ x^k/(k·k!)` until the sum stops
///   changing (`Ei(0) = −∞`);
/// * larger `x`: asymptotic series `e^x/x · Σ k!/x^k` until the terms stop decreasing (not used by
///   the estimator, whose arguments are negative).
pub fn ei(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < -1.0 {
        continued_fraction(x)
    } else if x < -f64::EPSILON.ln() {
        power_series(x)
    } else {
        asymptotic(x)
    }
}

fn continued_fraction(x: f64) -> f64 {
    // E1(y), y = −x > 1: e^{−y} / (b0 − 1²/(b1 − 2²/(b2 − …))), b_i = y + 1 + 2i = 1 − x + 2i.
    let mut c = f64::INFINITY;
    let mut d = 1.0 - x;
    let mut h = 1.0 / d;
    for i in 1..=MAX_CF_ITERATIONS {
        let fi = f64::from(i);
        let b = 1.0 - x + 2.0 * fi;
        let a = fi * fi;
        c = b - a / c;
        d = b - a / d;
        h *= c / d;
        if c == d {
            break;
        }
    }
    -h * x.exp()
}

fn power_series(x: f64) -> f64 {
    let mut sum = 0.0f64;
    let mut term = 1.0f64; // x^k / k!
    let mut k = 1.0f64;
    loop {
        term *= x / k;
        let next = sum + term / k;
        if next == sum || !next.is_finite() {
            break;
        }
        sum = next;
        k += 1.0;
    }
    EULER_GAMMA + x.abs().ln() + sum
}

fn asymptotic(x: f64) -> f64 {
    let mut sum = 1.0f64;
    let mut term = 1.0f64; // k! / x^k
    let mut k = 1.0f64;
    loop {
        let next_term = term * k / x;
        if next_term >= term || sum + next_term == sum {
            break;
        }
        term = next_term;
        sum += term;
        k += 1.0;
    }
    x.exp() / x * sum
}

/// Expected number of active registers for `distinct = c` distinct items in a sketch with decay
/// `decay_rate = a` and `size = m` registers (§1.4), `t = c/m`:
/// `E[A](c) = m·(1 − (−Ei(−a t/(e^a − 1)) + Ei(−a e^a t/(e^a − 1)))/a)`, and `E[A](0) = 0`.
pub fn expected_active_registers(decay_rate: f64, size: f64, distinct: f64) -> f64 {
    if distinct == 0.0 {
        return 0.0;
    }
    let a = decay_rate;
    let ea = a.exp();
    let t = distinct / size;
    let negative_term = -ei(-a * t / (ea - 1.0));
    let positive_term = ei(-a * ea * t / (ea - 1.0));
    (1.0 - (negative_term + positive_term) / a) * size
}

/// Estimated number of distinct items for `active` active registers (§1.4): the reference's
/// `InvertMonotonic` over `f(c) = ⌊E[A](c)⌋` (uint64 truncation), reproduced exactly, including
/// its quirks (biased up by 1–2 for small counts; `active = 0` gives **1**).
///
/// Unlike the reference (which would overflow and loop forever), the doubling phase stops at
/// [`MAX_CARDINALITY`] = `2^62`: if `f(2^62) < active` still (e.g. `active > size`, which
/// [`estimate_reach`] rejects), `2^62` is returned.
pub fn estimate_cardinality(decay_rate: f64, size: u64, active: u64) -> u64 {
    let m = size as f64;
    // `as u64` truncates toward zero and saturates (NaN → 0), like the reference's conversion
    // for the values that occur.
    let f = |c: u64| expected_active_registers(decay_rate, m, c as f64) as u64;
    let mut left = 0u64;
    let mut right = 1u64;
    while f(right) < active {
        if right >= MAX_CARDINALITY {
            return MAX_CARDINALITY;
        }
        left = right;
        right *= 2;
    }
    let mut mid = left + (right - left) / 2;
    while right > left {
        if f(mid) > active {
            right = mid.saturating_sub(1);
        } else {
            left = mid + 1;
        }
        mid = left + (right.saturating_sub(left)) / 2;
    }
    mid
}

/// Reach from the number of active registers (§1.4, LLV2 `EstimateReach`; §10 traps 3–4):
/// `active` is clamped at 0, then `decay_rate > 1` (and `e^a` finite) and `active < size` are
/// required (InvalidArgument in the reference), as is `0 < vid_sampling_width ≤ 1` (only
/// asserted there). Result: `(i64)(ĉ / f64::from(width))` with ĉ = [`estimate_cardinality`]; the
/// width is an `f32` widened to `f64` (0.1f32 → `c / 0.100000001490116`), and zero active
/// registers give `trunc(1/width)`, never 0. The final conversion saturates at `i64::MAX`.
pub fn estimate_reach(
    decay_rate: f64,
    size: u64,
    active: i64,
    vid_sampling_width: f32,
) -> Result<i64, String> {
    let active = active.max(0).unsigned_abs();
    if !(decay_rate > 1.0 && decay_rate.exp().is_finite()) {
        return Err(format!(
            "decay rate {decay_rate} must be > 1 (and e^{decay_rate} finite)"
        ));
    }
    if active >= size {
        return Err(format!(
            "active register count {active} must be below the sketch size {size}"
        ));
    }
    if !(vid_sampling_width > 0.0 && vid_sampling_width <= 1.0) {
        return Err(format!(
            "VID sampling width {vid_sampling_width} must be in (0, 1]"
        ));
    }
    let cardinality = estimate_cardinality(decay_rate, size, active);
    Ok((cardinality as f64 / f64::from(vid_sampling_width)) as i64)
}

/// Plaintext reach of a union of sketches (§1.4 applied to §1.2): [`estimate_reach`] with every
/// register of `registers` active (destroyed ones included), which is what the MPC computes
/// exactly with noise off. `params` must pass [`SketchParams::validate`].
pub fn plaintext_reach(
    registers: &[PlainRegister],
    params: &SketchParams,
    vid_sampling_width: f32,
) -> Result<i64, String> {
    params.validate()?;
    let active = i64::try_from(registers.len()).unwrap_or(i64::MAX);
    estimate_reach(params.decay_rate, params.size, active, vid_sampling_width)
}

/// Plaintext relative frequency distribution (§1.5, §3.5): over the non-destroyed registers
/// (proto key > 0) with `count ≥ 1`, the histogram of `min(count, MF)` over buckets `1..=MF`
/// (bucket `MF` means "MF+"), divided by its total. Only nonzero buckets appear; the map is
/// empty if no register qualifies (or `maximum_frequency = 0`).
pub fn frequency_distribution(
    registers: &[PlainRegister],
    maximum_frequency: u32,
) -> BTreeMap<u32, f64> {
    if maximum_frequency == 0 {
        return BTreeMap::new();
    }
    let mut histogram: BTreeMap<u32, u64> = BTreeMap::new();
    for register in registers {
        if register.key <= DESTROYED || register.count == 0 {
            continue;
        }
        let bucket = u32::try_from(register.count)
            .unwrap_or(u32::MAX)
            .min(maximum_frequency);
        *histogram.entry(bucket).or_default() += 1;
    }
    let total: u64 = histogram.values().sum();
    histogram
        .into_iter()
        .map(|(bucket, h)| (bucket, h as f64 / total as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn ei_reference_values() {
        // Ei at a few points (Abramowitz & Stegun / mpmath values).
        assert!(close(ei(1.0), 1.895_117_816_355_936_8, 1e-14));
        assert!(close(ei(-1.0), -0.219_383_934_395_520_3, 1e-14));
        assert!(close(ei(-2.0), -0.048_900_510_708_061_12, 1e-13));
        assert!(close(ei(-0.5), -0.559_773_594_776_160_8, 1e-14));
        assert!(close(ei(-10.0), -4.156_968_929_685_324e-6, 1e-13));
        assert!(close(ei(-1e-6), -13.238_295_893_062_49, 1e-12));
        assert!(close(ei(50.0), 1.058_563_689_713_169e20, 1e-12));
        assert!(ei(0.0) == f64::NEG_INFINITY);
        assert!(ei(-800.0) == 0.0);
        assert!(ei(f64::NAN).is_nan());
        // Continuity across the branch points.
        assert!(close(ei(-1.0 - 1e-12), ei(-1.0), 1e-9));
        let t = -f64::EPSILON.ln();
        assert!(close(ei(t - 1e-9), ei(t + 1e-9), 1e-8));
    }

    #[test]
    fn small_counts_and_quirks() {
        assert_eq!(expected_active_registers(12.0, 1e5, 0.0), 0.0);
        assert_eq!(estimate_cardinality(10.0, 100_000, 0), 1);
        assert_eq!(estimate_cardinality(10.0, 100_000, 1), 2);
        // E[A] reaches m in f64 for huge c; counts above m never loop forever.
        assert_eq!(estimate_cardinality(10.0, 100_000, 100_000), 1 << 33);
        assert_eq!(
            estimate_cardinality(10.0, 100_000, 100_001),
            MAX_CARDINALITY
        );
    }

    #[test]
    fn reach_preconditions() {
        assert!(estimate_reach(10.0, 100, 100, 1.0).is_err());
        assert!(estimate_reach(10.0, 100, 99, 1.0).is_ok());
        assert_eq!(estimate_reach(10.0, 100, -5, 1.0), Ok(1));
        assert!(estimate_reach(1.0, 100, 5, 1.0).is_err());
        assert!(estimate_reach(f64::NAN, 100, 5, 1.0).is_err());
        assert!(estimate_reach(f64::INFINITY, 100, 5, 1.0).is_err());
        for w in [0.0, -0.5, 1.5, f32::NAN, f32::INFINITY] {
            assert!(estimate_reach(10.0, 100, 5, w).is_err(), "{w}");
        }
        let e = estimate_reach(10.0, 100, 100, 1.0)
            .err()
            .unwrap_or_default();
        assert!(e.contains("100"), "{e}");
    }

    fn r(index: u64, key: i64, count: u64) -> PlainRegister {
        PlainRegister { index, key, count }
    }

    #[test]
    fn frequency_histogram() {
        let regs = [
            r(0, 3, 1),
            r(1, 4, 1),
            r(2, 5, 2),
            r(3, 0, 7), // destroyed
            r(4, 6, 9),
            r(5, 7, 3),
            r(6, 8, 0), // no count
            r(7, -1, 1),
        ];
        let d = frequency_distribution(&regs, 3);
        assert_eq!(
            d.into_iter().collect::<Vec<_>>(),
            vec![(1, 0.4), (2, 0.2), (3, 0.4)]
        );
        let d = frequency_distribution(&regs, 1);
        assert_eq!(d.into_iter().collect::<Vec<_>>(), vec![(1, 1.0)]);
        assert!(frequency_distribution(&regs, 0).is_empty());
        assert!(frequency_distribution(&[r(0, 0, 5)], 5).is_empty());
        assert!(frequency_distribution(&[], 5).is_empty());
    }

    #[test]
    fn plaintext_reach_counts_destroyed() {
        let params = SketchParams {
            decay_rate: 12.0,
            size: 100_000,
            sampling_indicator_size: 1000,
        };
        let regs: Vec<_> = (0..30).map(|i| r(i, i as i64 % 2, 1)).collect();
        // 30 active registers (half destroyed), width 0.5 → 64 (§1.4 KAT).
        assert_eq!(plaintext_reach(&regs, &params, 0.5), Ok(64));
        assert!(plaintext_reach(&regs, &SketchParams { size: 0, ..params }, 0.5).is_err());
    }
}
