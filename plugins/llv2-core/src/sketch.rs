//! The Liquid Legions sketch a data provider builds (spec `mpc-crypto.md` §1.1–1.2): FarmHash
//! fingerprints, the truncated-exponential register index, VID sampling (§1.2.1) and the
//! plaintext registers (index, UNIQUE key, SUM count) with their merge rules.
//!
//! Everything here follows the production Java path of the reference (ASJ `AnySketch`,
//! `SketchProtos`, CMM `SketchGenerator.kt`): items are decimal VID strings, fingerprints are
//! Guava `farmHashFingerprint64` of salted UTF-8 strings, and keys are kept in their proto
//! encoding (shifted by +1, destroyed = 0; §1.2 step 5), which is also what the sketch
//! encrypter hashes (§1.3, §9 item 1).

use std::collections::BTreeMap;

/// Name of the index distribution (§1.2 sketch config table).
pub const INDEX_DISTRIBUTION: &str = "Index";

/// Name of the UNIQUE key distribution (§1.2 sketch config table).
pub const SAMPLING_INDICATOR_DISTRIBUTION: &str = "SamplingIndicator";

/// Proto value of a destroyed register's UNIQUE key (§1.2 step 5: destroyed `−1` is written
/// shifted by +1, i.e. `0`). Any proto value `≤ 0` counts as destroyed (§1.3).
pub const DESTROYED: i64 = 0;

/// Largest sketch size accepted by [`SketchParams::validate`] (`2^31`).
pub const MAX_SKETCH_SIZE: u64 = 1 << 31;

/// Salt of the VID sampler (§1.2.1): the sampler hashes `le64(vid + 1414214)`.
const VID_SAMPLER_SALT: i64 = 1_414_214;

/// FarmHash Fingerprint64 (farmhash "na" `Hash64`, = Guava `farmHashFingerprint64`; §1.2 step 2
/// and errata §10: **not** `farmhash::hash64`). `fingerprint64(b"") = 0x9ae16a3b2f90404f`.
pub fn fingerprint64(bytes: &[u8]) -> u64 {
    farmhash::fingerprint64(bytes)
}

/// Fingerprint of `item` for the distribution named `distribution` without an explicit salt
/// (§1.2 step 2, ASJ `SaltedFingerprinter`): `fingerprint64(UTF-8("AnySketchFingerprint:" +
/// item + ":" + distribution))`.
pub fn item_fingerprint(item: &str, distribution: &str) -> u64 {
    let salted = format!("AnySketchFingerprint:{item}:{distribution}");
    fingerprint64(salted.as_bytes())
}

/// Register index of `fingerprint` under the truncated exponential distribution with decay
/// `decay_rate = a` and `size = m` registers (§1.1): `u = f / (2^64 − 1)` (as `f64`, i.e. the
/// double `2^64`), `x = 1 − ln(e^a + u·(1 − e^a))/a`, index `⌊x·m⌋`.
///
/// The conversion truncates toward zero like the Java reference (`(long)`; identical to
/// `floor` for `x ≥ 0`, and maps a rounding-induced `x = −0.0…` to 0). Returns `None` if the
/// result is not finite or `≥ size` (the C++ reference rejects `u = 1`, probability `2^−64`).
pub fn register_index(fingerprint: u64, decay_rate: f64, size: u64) -> Option<u64> {
    let u = fingerprint as f64 / u64::MAX as f64;
    let ea = decay_rate.exp();
    let x = 1.0 - (ea + u * (1.0 - ea)).ln() / decay_rate;
    let scaled = (x * size as f64).trunc();
    if !scaled.is_finite() || scaled <= -1.0 {
        return None;
    }
    // `scaled` is finite and > −1, so after truncation it is ≥ 0 (or −0.0).
    let index = scaled as u64;
    (index < size).then_some(index)
}

/// The VID sampler's unit value of `vid` (§1.2.1, ASJ `VidSampler`): `h = fingerprint64(le64(vid
/// + 1414214))` (Java `long` arithmetic, wrapping), low 32 bits masked with `0x7FFFFF`, times
/// `1.0f32 / 8388607.0f32` in `f32`. Lies in `[0, 1]`.
pub fn vid_sampler_value(vid: i64) -> f32 {
    let salted = vid.wrapping_add(VID_SAMPLER_SALT);
    let h = fingerprint64(&salted.to_le_bytes());
    let masked = (h as u32) & 0x7F_FFFF;
    // `masked < 2^23` is exactly representable in f32.
    masked as f32 * (1.0f32 / 8_388_607.0f32)
}

/// Whether `vid` is in the sampling interval `[start, start + width)` (§1.2.1), with the
/// reference's wrap-around: kept iff `start ≤ h < start + width` or `h < start + width − 1`,
/// all in `f32`, where `h` = [`vid_sampler_value`].
pub fn vid_sampled(vid: i64, start: f32, width: f32) -> bool {
    let h = vid_sampler_value(vid);
    let end = start + width;
    (start <= h && h < end) || h < end - 1.0
}

/// Parameters of an LLv2 sketch (§1.1–1.2; production: `a = 5.6`, `m = 10^6`,
/// `sampling_indicator_size = 10^7`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SketchParams {
    /// Decay rate `a` of the exponential index distribution.
    pub decay_rate: f64,
    /// Number of registers `m`.
    pub size: u64,
    /// Number of values of the uniform UNIQUE key (`sampling_indicator_size`).
    pub sampling_indicator_size: u64,
}

impl SketchParams {
    /// Checks `decay_rate > 1` with `e^decay_rate` finite (the estimator's precondition, §1.4),
    /// `1 ≤ size ≤ 2^31`, and `1 ≤ sampling_indicator_size < 2^63` (so the proto key `k + 1`
    /// fits an `i64`).
    pub fn validate(&self) -> Result<(), String> {
        if !(self.decay_rate > 1.0 && self.decay_rate.exp().is_finite()) {
            return Err(format!(
                "decay rate {} must be > 1 and finite (e^a must not overflow)",
                self.decay_rate
            ));
        }
        if !(1..=MAX_SKETCH_SIZE).contains(&self.size) {
            return Err(format!(
                "sketch size {} must be in 1..={MAX_SKETCH_SIZE}",
                self.size
            ));
        }
        if !(1..i64::MAX as u64).contains(&self.sampling_indicator_size) {
            return Err(format!(
                "sampling indicator size {} must be in 1..{}",
                self.sampling_indicator_size,
                i64::MAX
            ));
        }
        Ok(())
    }
}

/// One plaintext register (§1.2): `key` is the **proto-encoded** UNIQUE value (real key `k` →
/// `k + 1`, destroyed → [`DESTROYED`] = 0; §1.2 step 5) and `count` the SUM of the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlainRegister {
    /// Register index in `[0, size)`.
    pub index: u64,
    /// Proto-encoded UNIQUE key (`k + 1`; `0` = destroyed).
    pub key: i64,
    /// SUM of the counts (number of events).
    pub count: u64,
}

/// UNIQUE merge on proto values (§1.2 step 4, ASJ `UniqueAggregator`): equal non-destroyed keys
/// are kept, anything else (different keys, or either side `≤ 0`) is destroyed.
fn merge_unique(a: i64, b: i64) -> i64 {
    if a > DESTROYED && a == b {
        a
    } else {
        DESTROYED
    }
}

/// Proto encoding of a raw key (`k + 1`), saturating (unreachable for validated params).
fn proto_key(raw: u64) -> i64 {
    i64::try_from(raw).map_or(i64::MAX, |k| k.saturating_add(1))
}

/// Builds a data provider's plaintext sketch (§1.2): every `(vid, frequency)` inserts the item
/// `vid.to_string()` `frequency` times with count 1 each (`SketchGenerator.populate`). The
/// index comes from `item_fingerprint(item, "Index")` (§1.1), the key is
/// `item_fingerprint(item, "SamplingIndicator") mod sampling_indicator_size` (unsigned), and
/// registers merge by index: UNIQUE keys (equal → kept, different → destroyed) and SUM counts
/// (saturating). Events with frequency 0 and items without an index are skipped.
///
/// The result is sorted by index, with keys proto-encoded (+1, destroyed → 0). `params` should
/// have passed [`SketchParams::validate`]; a zero `sampling_indicator_size` is treated as 1.
pub fn build_sketch(
    events: impl IntoIterator<Item = (i64, u64)>,
    params: &SketchParams,
) -> Vec<PlainRegister> {
    let modulus = params.sampling_indicator_size.max(1);
    let mut registers: BTreeMap<u64, (i64, u64)> = BTreeMap::new();
    for (vid, frequency) in events {
        if frequency == 0 {
            continue;
        }
        let item = vid.to_string();
        let Some(index) = register_index(
            item_fingerprint(&item, INDEX_DISTRIBUTION),
            params.decay_rate,
            params.size,
        ) else {
            continue;
        };
        let key = proto_key(item_fingerprint(&item, SAMPLING_INDICATOR_DISTRIBUTION) % modulus);
        registers
            .entry(index)
            .and_modify(|(k, c)| {
                *k = merge_unique(*k, key);
                *c = c.saturating_add(frequency);
            })
            .or_insert((key, frequency));
    }
    into_registers(registers)
}

/// Union of several providers' sketches (the combination the MPC computes, §3.2 step 4): all
/// registers are merged by index with the same rules on proto values — keys kept if all are
/// non-destroyed and equal, otherwise [`DESTROYED`]; counts add (saturating). Proto keys `≤ 0`
/// count as destroyed (§1.3) and come out as 0. Sorted by index.
pub fn union(sketches: &[&[PlainRegister]]) -> Vec<PlainRegister> {
    let mut registers: BTreeMap<u64, (i64, u64)> = BTreeMap::new();
    for register in sketches.iter().flat_map(|s| s.iter()) {
        let key = register.key.max(DESTROYED);
        registers
            .entry(register.index)
            .and_modify(|(k, c)| {
                *k = merge_unique(*k, key);
                *c = c.saturating_add(register.count);
            })
            .or_insert((key, register.count));
    }
    into_registers(registers)
}

fn into_registers(registers: BTreeMap<u64, (i64, u64)>) -> Vec<PlainRegister> {
    registers
        .into_iter()
        .map(|(index, (key, count))| PlainRegister { index, key, count })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROD: SketchParams = SketchParams {
        decay_rate: 5.6,
        size: 1_000_000,
        sampling_indicator_size: 10_000_000,
    };

    fn reg(index: u64, key: i64, count: u64) -> PlainRegister {
        PlainRegister { index, key, count }
    }

    #[test]
    fn register_index_edges() {
        // f = 0 → x = 0 (or −0.0 after rounding) → index 0; f = 2^64 − 1 → u = 1 → m → None.
        assert_eq!(register_index(0, 5.6, 1000), Some(0));
        assert_eq!(register_index(u64::MAX, 5.6, 1000), None);
        assert_eq!(register_index(u64::MAX / 2, 5.6, 0), None);
        assert_eq!(register_index(12345, f64::NAN, 1000), None);
        // Monotonic in the fingerprint.
        let mut last = 0;
        for f in (0..1000u64).map(|i| i * (u64::MAX / 1000)) {
            let i = register_index(f, 12.0, 100_000).unwrap_or(u64::MAX);
            assert!(i >= last && i < 100_000, "{f} → {i}");
            last = i;
        }
    }

    #[test]
    fn params_validation() {
        assert_eq!(PROD.validate(), Ok(()));
        let bad = |f: fn(&mut SketchParams)| {
            let mut p = PROD;
            f(&mut p);
            p.validate().is_err()
        };
        assert!(bad(|p| p.decay_rate = 1.0));
        assert!(bad(|p| p.decay_rate = f64::NAN));
        assert!(bad(|p| p.decay_rate = 1000.0));
        assert!(bad(|p| p.size = 0));
        assert!(bad(|p| p.size = MAX_SKETCH_SIZE + 1));
        assert!(bad(|p| p.sampling_indicator_size = 0));
        assert!(bad(|p| p.sampling_indicator_size = u64::MAX));
    }

    #[test]
    fn build_sketch_single_items() {
        let s = build_sketch([(1, 3), (2, 1), (12345, 0)], &PROD);
        assert_eq!(
            s,
            vec![reg(43264, 1_311_851, 3), reg(130_354, 1_528_385, 1)]
        );
        // Repeated events of one VID add up.
        assert_eq!(
            build_sketch([(1, 1), (1, 2)], &PROD),
            vec![reg(43264, 1_311_851, 3)]
        );
        assert!(build_sketch([], &PROD).is_empty());
    }

    #[test]
    fn build_sketch_collisions_destroy() {
        // A tiny sketch forces index collisions; with a large key space colliding items destroy.
        let params = SketchParams {
            decay_rate: 2.0,
            size: 4,
            sampling_indicator_size: 1 << 40,
        };
        let s = build_sketch((0..100).map(|v| (v, 2)), &params);
        assert!(s.windows(2).all(|w| w[0].index < w[1].index));
        assert!(s.len() <= 4);
        assert_eq!(s.iter().map(|r| r.count).sum::<u64>(), 200);
        assert!(s.iter().all(|r| r.key == DESTROYED));
        // A key space of 1 never destroys (every key is 0, proto 1).
        let params = SketchParams {
            sampling_indicator_size: 1,
            ..params
        };
        let s = build_sketch((0..100).map(|v| (v, 1)), &params);
        assert!(s.iter().all(|r| r.key == 1));
    }

    #[test]
    fn union_merge_rules() {
        let a = [reg(1, 5, 1), reg(2, 7, 2), reg(3, 0, 1), reg(9, 4, 1)];
        let b = [
            reg(1, 5, 3),
            reg(2, 8, 1),
            reg(3, 0, 1),
            reg(4, 2, u64::MAX),
        ];
        let c = [reg(4, 2, 1), reg(9, -3, 1)];
        assert_eq!(
            union(&[&a, &b, &c]),
            vec![
                reg(1, 5, 4),        // equal keys kept, counts add
                reg(2, 0, 3),        // different keys destroy
                reg(3, 0, 2),        // destroyed stays destroyed
                reg(4, 2, u64::MAX), // saturating count
                reg(9, 0, 2),        // negative proto value = destroyed
            ]
        );
        assert_eq!(union(&[&a]), a.to_vec());
        assert!(union(&[]).is_empty());
        // Union of separately built sketches equals the sketch of all events.
        let e1 = [(1, 1), (2, 2), (3, 1)];
        let e2 = [(2, 1), (4, 5)];
        let s1 = build_sketch(e1, &PROD);
        let s2 = build_sketch(e2, &PROD);
        assert_eq!(
            union(&[&s1, &s2]),
            build_sketch(e1.into_iter().chain(e2), &PROD)
        );
    }

    #[test]
    fn vid_sampling_interval() {
        for vid in [1i64, 2, 12345, -7, i64::MAX] {
            let h = vid_sampler_value(vid);
            assert!((0.0..=1.0).contains(&h));
            assert!(vid_sampled(vid, 0.0, 1.0));
            assert!(vid_sampled(vid, h, 0.01));
            assert!(!vid_sampled(vid, h + 0.01, 0.01));
        }
        // Wrap-around: vid 1 has h ≈ 0.6846; [0.9, 1.8) wraps to cover [0, 0.8).
        assert!(vid_sampled(1, 0.9, 0.9));
        assert!(!vid_sampled(1, 0.9, 0.7));
        assert!(!vid_sampled(1, 0.0, 0.5));
        assert!(vid_sampled(1, 0.5, 0.5));
    }
}
