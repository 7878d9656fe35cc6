//! The four LLv2 noisers and the fixed noise sizes (spec `mpc-crypto.md` §5.2, used by §3.1
//! setup, §3.3 frequency tuples and §4 RO-LLv2 setup).
//!
//! Parameter derivation and sampling are shared with HMSS ([`hmss_core::noise`]); this module
//! only fixes the geometric sensitivities of the NPC noisers (`GetBlindHistogramNoiser` Δ = 2,
//! `GetPublisherNoiser` Δ = S, `GetGlobalReachDpNoiser` Δ = 1, `GetFrequencyNoiser` Δ = 2; the
//! discrete Gaussian ignores Δ) and the data-independent noise counts whose offsets `μ` must
//! match the reference exactly (§9 item 11).

use hmss_core::noise::{
    DpParams, NoiseMechanism, NoiserOptions, gaussian_options, geometric_options,
};

/// Smallest ε the reference heralds accept for LLv2 reach, LLv2 frequency and RO-LLv2
/// (errata §10 E3: `1e-5`, not `1e-6`). The noisers here do not enforce it; callers validate.
pub const MIN_EPSILON: f64 = 1e-5;

/// [`MIN_EPSILON`] as a function (errata §10 E3).
pub const fn min_epsilon() -> f64 {
    MIN_EPSILON
}

/// Noiser options for `mechanism` with geometric sensitivity `sensitivity` (§5.2);
/// [`NoiseMechanism::None`] → `None`.
fn noiser(
    dp: &DpParams,
    sensitivity: f64,
    contributors: u32,
    mechanism: NoiseMechanism,
) -> Result<Option<NoiserOptions>, String> {
    let options = match mechanism {
        NoiseMechanism::None => return Ok(None),
        NoiseMechanism::Geometric => geometric_options(dp, sensitivity, contributors),
        NoiseMechanism::DiscreteGaussian => gaussian_options(dp, contributors),
    };
    options.map(Some).map_err(|e| e.to_string())
}

/// `GetBlindHistogramNoiser(dp, n)` (§5.2): geometric Δ = 2 or discrete Gaussian, `n =
/// contributors` (= D in LLv2). Used for the blinded-histogram noise registers (§3.1, §4).
pub fn blind_histogram_noiser(
    dp: &DpParams,
    contributors: u32,
    mechanism: NoiseMechanism,
) -> Result<Option<NoiserOptions>, String> {
    noiser(dp, 2.0, contributors, mechanism)
}

/// `GetPublisherNoiser(dp, S, n)` (§5.2): geometric Δ = `publishers` (= S, the number of
/// sketches) or discrete Gaussian. Used for the noise-for-publisher-noise registers (§3.1, §4).
/// `publishers = 0` is rejected.
pub fn publisher_noiser(
    dp: &DpParams,
    publishers: u32,
    contributors: u32,
    mechanism: NoiseMechanism,
) -> Result<Option<NoiserOptions>, String> {
    if publishers == 0 && mechanism != NoiseMechanism::None {
        return Err("publisher noiser needs at least one publisher".into());
    }
    noiser(dp, f64::from(publishers), contributors, mechanism)
}

/// `GetGlobalReachDpNoiser(dp, n)` (§5.2): geometric Δ = 1 or discrete Gaussian. Used for the
/// reach DP registers and the aggregator's `D·μ_reach` baseline (§3.1, §3.4, §4).
pub fn global_reach_noiser(
    dp: &DpParams,
    contributors: u32,
    mechanism: NoiseMechanism,
) -> Result<Option<NoiserOptions>, String> {
    noiser(dp, 1.0, contributors, mechanism)
}

/// `GetFrequencyNoiser(dp, n)` (§5.2): geometric Δ = 2 or discrete Gaussian. Used for the
/// frequency noise tuples and baselines (§3.3, §3.4, §3.5).
pub fn frequency_noiser(
    dp: &DpParams,
    contributors: u32,
    mechanism: NoiseMechanism,
) -> Result<Option<NoiserOptions>, String> {
    noiser(dp, 2.0, contributors, mechanism)
}

/// Fixed number of setup noise registers per duchy in LLv2 (§3.1):
/// `T_reach = 2·μ_pub + 2·μ_reach + μ_bh·S·(S+1)` (saturating). Pass 0 for absent noisers.
pub fn total_reach_noise(mu_pub: u32, mu_reach: u32, mu_bh: u32, sketches: u32) -> u64 {
    let s = u64::from(sketches);
    (2 * u64::from(mu_pub))
        .saturating_add(2 * u64::from(mu_reach))
        .saturating_add(u64::from(mu_bh).saturating_mul(s).saturating_mul(s + 1))
}

/// Fixed number of setup noise registers per duchy in RO-LLv2 (§4):
/// `T_RO = T_reach + 2` (padding ≥ 1 and the publisher group ≥ 1 guaranteed).
pub fn total_ro_noise(mu_pub: u32, mu_reach: u32, mu_bh: u32, sketches: u32) -> u64 {
    total_reach_noise(mu_pub, mu_reach, mu_bh, sketches).saturating_add(2)
}

/// Fixed number of frequency noise tuples per contributing duchy (§3.3):
/// `T_freq = 2·μ_f·(MF + 1)` (saturating).
pub fn total_frequency_noise(mu_f: u32, maximum_frequency: u32) -> u64 {
    (2 * u64::from(mu_f)).saturating_mul(u64::from(maximum_frequency) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DP: DpParams = DpParams {
        epsilon: 1.0,
        delta: 1e-9,
    };

    #[test]
    fn none_mechanism_and_errors() {
        let none = NoiseMechanism::None;
        assert_eq!(blind_histogram_noiser(&DP, 3, none), Ok(None));
        assert_eq!(publisher_noiser(&DP, 0, 3, none), Ok(None));
        assert_eq!(global_reach_noiser(&DP, 3, none), Ok(None));
        assert_eq!(frequency_noiser(&DP, 3, none), Ok(None));
        for m in [NoiseMechanism::Geometric, NoiseMechanism::DiscreteGaussian] {
            assert!(publisher_noiser(&DP, 0, 3, m).is_err());
            assert!(frequency_noiser(&DP, 0, m).is_err());
            let bad = DpParams {
                epsilon: 0.0,
                delta: 1e-9,
            };
            assert!(global_reach_noiser(&bad, 3, m).is_err());
        }
        assert_eq!(min_epsilon(), 1e-5);
    }

    #[test]
    fn totals() {
        assert_eq!(total_reach_noise(0, 0, 0, 5), 0);
        assert_eq!(total_reach_noise(1, 2, 3, 1), 2 + 4 + 6);
        assert_eq!(total_ro_noise(1, 2, 3, 1), 14);
        assert_eq!(total_frequency_noise(3, 1), 12);
        assert_eq!(total_frequency_noise(u32::MAX, u32::MAX), u64::MAX);
        assert_eq!(
            total_reach_noise(u32::MAX, u32::MAX, u32::MAX, u32::MAX),
            u64::MAX
        );
    }
}
