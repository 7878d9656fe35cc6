//! Differential-privacy noise for HMSS (spec §5 and §6.4 step 4): parameter derivation (§5.2),
//! the distributed geometric and distributed discrete Gaussian samplers (§5.1), and the
//! reach-and-frequency / reach-only noise registers (`GenerateReachAndFrequencyNoiseRegisters`).
//!
//! Noise draws are local and non-deterministic in the reference (OpenSSL `RAND_bytes`); only
//! the offsets `μ` must match exactly because they fix output sizes and baselines (§9 item 11).
//! Here every sampler is driven by a [`Prng`], so a plugin seeds it from host randomness and
//! tests seed it with fixed keys (deterministic statistical tests).

use crate::error::{HmssError, invalid};
use crate::keystream::Keystream;
use crate::prng::Prng;

/// The number of noise contributors in HMSS: the two non-aggregators (spec §5.2 table,
/// §6 `kWorkerCount = 2`).
pub const HMSS_CONTRIBUTORS: u32 = 2;

/// The geometric sensitivity `Δ` of `GetBlindHistogramNoiser`, which HMSS uses for both reach
/// and frequency noise (spec §5.2 table).
pub const BLIND_HISTOGRAM_SENSITIVITY: f64 = 2.0;

/// `(ε, δ)` differential-privacy parameters (`DifferentialPrivacyParams`, spec §5.2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpParams {
    /// ε.
    pub epsilon: f64,
    /// δ.
    pub delta: f64,
}

/// Which noise mechanism the computation uses (`noise_mechanism`, spec §6.4 step 1; §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseMechanism {
    /// No DP noise (no DP params may be given).
    None,
    /// Distributed geometric (Pólya) noise, §5.1.
    Geometric,
    /// Distributed discrete Gaussian noise, §5.1.
    DiscreteGaussian,
}

/// Options of one distributed noiser: every draw is `μ + Z`, `Z ∈ [−μ, μ]` (spec §5.1; `τ = shift = μ`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NoiserOptions {
    /// Distributed geometric: `contributors n`, `p = exp(−ε/Δ)`, `μ` (spec §5.2).
    Geometric {
        /// Number of contributors `n` (each draws Pólya(1/n, p)).
        contributors: u32,
        /// `p = exp(−ε/Δ)`.
        p: f64,
        /// Shift offset = truncation threshold `μ`.
        mu: u32,
    },
    /// Distributed discrete Gaussian: `contributors n`, per-contributor `σ_d`, `μ` (spec §5.2).
    DiscreteGaussian {
        /// Number of contributors `n`.
        contributors: u32,
        /// Per-contributor standard deviation `σ_d = σ/√n`.
        sigma_distributed: f64,
        /// Shift offset = truncation threshold `μ`.
        mu: u32,
    },
}

impl NoiserOptions {
    /// The shift offset `μ` (= truncation threshold `τ`); each draw lies in `[0, 2μ]` (spec §5.1).
    pub fn mu(&self) -> u32 {
        match *self {
            NoiserOptions::Geometric { mu, .. } | NoiserOptions::DiscreteGaussian { mu, .. } => mu,
        }
    }

    /// One noise draw `μ + Z ∈ [0, 2μ]` (spec §5.1), using `rng` as the randomness source.
    pub fn sample<K: Keystream>(&self, rng: &mut Prng<K>) -> Result<u32, HmssError> {
        match *self {
            NoiserOptions::Geometric {
                contributors,
                p,
                mu,
            } => sample_distributed_geometric(rng, contributors, p, mu),
            NoiserOptions::DiscreteGaussian {
                sigma_distributed,
                mu,
                ..
            } => sample_discrete_gaussian(rng, sigma_distributed, mu),
        }
    }
}

fn check_params(params: &DpParams) -> Result<(), HmssError> {
    if !(params.epsilon > 0.0 && params.epsilon.is_finite()) {
        return Err(invalid(format!("epsilon {} must be > 0", params.epsilon)));
    }
    if !(params.delta > 0.0 && params.delta.is_finite()) {
        return Err(invalid(format!("delta {} must be > 0", params.delta)));
    }
    Ok(())
}

/// `⌈x⌉` truncated to `int` as in the reference (`static_cast<int>(ceil(x))`), clamped at 0 (spec §5.2).
fn ceil_to_u32(x: f64) -> u32 {
    x.ceil().max(0.0) as u32
}

/// Geometric options (spec §5.2): `p = exp(−ε/Δ)`,
/// `μ = ⌈ln(2·n·Δ·(1 + e^ε)/δ) / (ε/Δ)⌉` (all `f64`).
pub fn geometric_options(
    params: &DpParams,
    sensitivity: f64,
    contributors: u32,
) -> Result<NoiserOptions, HmssError> {
    check_params(params)?;
    if contributors == 0 || sensitivity.is_nan() || sensitivity <= 0.0 {
        return Err(invalid("contributors and sensitivity must be positive"));
    }
    let DpParams { epsilon, delta } = *params;
    let n = f64::from(contributors);
    let p = (-epsilon / sensitivity).exp();
    let mu = ceil_to_u32(
        (2.0 * n * sensitivity * (1.0 + epsilon.exp()) / delta).ln() / (epsilon / sensitivity),
    );
    Ok(NoiserOptions::Geometric {
        contributors,
        p,
        mu,
    })
}

/// Discrete Gaussian options (spec §5.2; `Δ` ignored): `δ1 = δ2 = δ/2`,
/// `σ = √(2 ln(1.25/δ1))/ε`, `σ_d = σ/√n`, `μ = ⌈σ_d·√(2 ln(n·(1 + e^ε)/δ2))⌉`.
pub fn gaussian_options(params: &DpParams, contributors: u32) -> Result<NoiserOptions, HmssError> {
    check_params(params)?;
    if contributors == 0 {
        return Err(invalid("contributors must be positive"));
    }
    let DpParams { epsilon, delta } = *params;
    let n = f64::from(contributors);
    let (delta1, delta2) = (delta / 2.0, delta / 2.0);
    let sigma = (2.0 * (1.25 / delta1).ln()).sqrt() / epsilon;
    let sigma_distributed = sigma / n.sqrt();
    let mu =
        ceil_to_u32(sigma_distributed * (2.0 * (n * (1.0 + epsilon.exp()) / delta2).ln()).sqrt());
    Ok(NoiserOptions::DiscreteGaussian {
        contributors,
        sigma_distributed,
        mu,
    })
}

/// `GetBlindHistogramNoiser(params, n)` (spec §5.2): geometric with `Δ = 2`, or discrete
/// Gaussian. HMSS uses it with `n = 2` for both reach and frequency noise (§6.4 step 4).
/// Returns `None` for [`NoiseMechanism::None`].
pub fn blind_histogram_noiser(
    params: &DpParams,
    contributors: u32,
    mechanism: NoiseMechanism,
) -> Result<Option<NoiserOptions>, HmssError> {
    match mechanism {
        NoiseMechanism::None => Ok(None),
        NoiseMechanism::Geometric => {
            geometric_options(params, BLIND_HISTOGRAM_SENSITIVITY, contributors).map(Some)
        }
        NoiseMechanism::DiscreteGaussian => gaussian_options(params, contributors).map(Some),
    }
}

/// Failures-before-success geometric with success probability `1 − e^{−1/t}`:
/// `⌊−t·ln U⌋`, `U ∈ (0, 1]` (spec §5.1 `Geom(q)`, `q = 1 − e^{−1/t}`).
fn geometric_failures<K: Keystream>(rng: &mut Prng<K>, t: f64) -> u64 {
    let u = 1.0 - rng.uniform_f64();
    (-t * u.ln()).floor() as u64
}

/// Standard normal by Box–Muller (used by the Gamma sampler).
fn standard_normal<K: Keystream>(rng: &mut Prng<K>) -> f64 {
    let u1 = 1.0 - rng.uniform_f64();
    let u2 = rng.uniform_f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * core::f64::consts::PI * u2).cos()
}

/// Gamma(shape, 1) by Marsaglia–Tsang (with the `U^{1/shape}` boost for `shape < 1`).
fn gamma<K: Keystream>(rng: &mut Prng<K>, shape: f64) -> f64 {
    if shape < 1.0 {
        let u = 1.0 - rng.uniform_f64();
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = standard_normal(rng);
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let u = 1.0 - rng.uniform_f64();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// Poisson(λ) by Knuth multiplication over pieces of `λ ≤ 30`; returns `None` as soon as the
/// count exceeds `cap` (the caller only needs to know that the draw will be rejected).
fn poisson_capped<K: Keystream>(rng: &mut Prng<K>, lambda: f64, cap: u64) -> Option<u64> {
    let mut remaining = lambda;
    let mut k = 0u64;
    while remaining > 0.0 {
        let piece = remaining.min(30.0);
        remaining -= piece;
        let limit = (-piece).exp();
        let mut prod = 1.0 - rng.uniform_f64();
        while prod > limit {
            k += 1;
            if k > cap {
                return None;
            }
            prod *= 1.0 - rng.uniform_f64();
        }
    }
    Some(k)
}

/// Pólya(r, p) = Poisson(Gamma(shape r, scale p/(1−p))), resampled up to 20 times until `≤ τ`
/// (spec §5.1), else `Internal`.
fn truncated_polya<K: Keystream>(
    rng: &mut Prng<K>,
    r: f64,
    p: f64,
    tau: u32,
) -> Result<u64, HmssError> {
    for _ in 0..20 {
        let lambda = gamma(rng, r) * p / (1.0 - p);
        if let Some(x) = poisson_capped(rng, lambda, u64::from(tau)) {
            return Ok(x);
        }
    }
    Err(HmssError::Internal(
        "Pólya draw exceeded the truncation threshold 20 times".into(),
    ))
}

/// One contributor's distributed geometric draw `μ + X_a − X_b`, `X ~ Pólya(1/n, p)` truncated
/// at `τ = μ` (spec §5.1). Summed over `n` contributors it is two-sided geometric `∝ p^{|z|}`.
pub fn sample_distributed_geometric<K: Keystream>(
    rng: &mut Prng<K>,
    contributors: u32,
    p: f64,
    mu: u32,
) -> Result<u32, HmssError> {
    if contributors == 0 || !(0.0..1.0).contains(&p) {
        return Err(invalid("geometric noiser needs n ≥ 1 and 0 ≤ p < 1"));
    }
    if p == 0.0 {
        return Ok(mu);
    }
    let r = 1.0 / f64::from(contributors);
    let a = truncated_polya(rng, r, p, mu)?;
    let b = truncated_polya(rng, r, p, mu)?;
    Ok((i64::from(mu) + a as i64 - b as i64) as u32)
}

/// One contributor's discrete Gaussian draw (spec §5.1, Canonne–Kamath–Steinke Alg. 3):
/// `t = ⌊σ⌋ + 1`; repeat `Y = Geom(1 − e^{−1/t}) − Geom(1 − e^{−1/t})`, accept with probability
/// `exp(−(|Y| − σ²/t)²/(2σ²))` and `|Y| ≤ τ = μ`; returns `μ + Y ∈ [0, 2μ]`.
pub fn sample_discrete_gaussian<K: Keystream>(
    rng: &mut Prng<K>,
    sigma: f64,
    mu: u32,
) -> Result<u32, HmssError> {
    if !(sigma > 0.0 && sigma.is_finite()) {
        return Err(invalid("discrete Gaussian needs σ > 0"));
    }
    let t = sigma.floor() + 1.0;
    for _ in 0..1_000_000 {
        let y = geometric_failures(rng, t) as i64 - geometric_failures(rng, t) as i64;
        let ya = y.unsigned_abs() as f64;
        let accept = (-(ya - sigma * sigma / t).powi(2) / (2.0 * sigma * sigma)).exp();
        if rng.uniform_f64() < accept && y.unsigned_abs() <= u64::from(mu) {
            return Ok((i64::from(mu) + y) as u32);
        }
    }
    Err(HmssError::Internal(
        "discrete Gaussian sampler did not accept".into(),
    ))
}

/// Length `T = 2·μ_r + 2·μ_f·max_combined_frequency` of one non-aggregator's R&F noise block
/// (spec §6.4 step 4); `μ_f` is ignored when `max_combined_frequency = 0`.
pub fn rf_noise_len(mu_reach: u32, mu_freq: u32, max_combined_frequency: u32) -> usize {
    2 * mu_reach as usize + 2 * mu_freq as usize * max_combined_frequency as usize
}

/// R&F noise registers `Nv` of one non-aggregator (spec §6.4 step 4,
/// `GenerateReachAndFrequencyNoiseRegisters`): length [`rf_noise_len`], filled with the
/// sentinel `q − 1`; the first `N_r` entries are `0` (one draw of `reach`), followed, for
/// `k = 1..=max_combined_frequency`, by `N_k` entries `k` (one draw of `freq` each).
/// Needs `q > max_combined_frequency + 1` so the sentinel is free (§6.1).
pub fn rf_noise_registers<K: Keystream>(
    rng: &mut Prng<K>,
    reach: &NoiserOptions,
    freq: &NoiserOptions,
    max_combined_frequency: u32,
    q: u32,
) -> Result<Vec<u32>, HmssError> {
    if u64::from(q) <= u64::from(max_combined_frequency) + 1 {
        return Err(invalid("q must exceed max_combined_frequency + 1"));
    }
    let t = rf_noise_len(reach.mu(), freq.mu(), max_combined_frequency);
    let mut nv = vec![q - 1; t];
    let mut pos = 0usize;
    let n_r = reach.sample(rng)? as usize;
    nv[pos..pos + n_r].fill(0);
    pos += n_r;
    for k in 1..=max_combined_frequency {
        let n_k = freq.sample(rng)? as usize;
        nv[pos..pos + n_k].fill(k);
        pos += n_k;
    }
    Ok(nv)
}

/// Reach-only noise registers (spec §6.4 reach-only (c)): `N_r` values from `NonZeroRange` of a
/// (fresh, locally random) PRNG, padded with zeros to `T = 2·μ_r`. `rng` draws `N_r`,
/// `nonzero` supplies the non-zero values. Needs a prime `q`.
pub fn ro_noise_registers<K: Keystream, L: Keystream>(
    rng: &mut Prng<K>,
    nonzero: &mut Prng<L>,
    reach: &NoiserOptions,
    q: u32,
) -> Result<Vec<u32>, HmssError> {
    let t = 2 * reach.mu() as usize;
    let n_r = reach.sample(rng)? as usize;
    let mut nv = nonzero.non_zero_range(n_r, q)?;
    nv.resize(t, 0);
    Ok(nv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    fn geo(eps: f64, delta: f64, sens: f64, n: u32) -> (f64, u32) {
        match geometric_options(
            &DpParams {
                epsilon: eps,
                delta,
            },
            sens,
            n,
        ) {
            Ok(NoiserOptions::Geometric { p, mu, .. }) => (p, mu),
            other => panic!("{other:?}"),
        }
    }

    fn gauss(eps: f64, delta: f64, n: u32) -> (f64, u32) {
        match gaussian_options(
            &DpParams {
                epsilon: eps,
                delta,
            },
            n,
        ) {
            Ok(NoiserOptions::DiscreteGaussian {
                sigma_distributed,
                mu,
                ..
            }) => (sigma_distributed, mu),
            other => panic!("{other:?}"),
        }
    }

    /// §5.2 KATs with ε = ln3/10, δ = 2·10⁻⁶.
    #[test]
    fn kat_parameters_ln3_over_10() {
        let eps = 3f64.ln() / 10.0;
        let d = 2e-6;
        let (p, mu) = geo(eps, d, 2.0, 2); // blind histogram, n = 2
        assert_eq!(mu, 291);
        assert!(close(p, 0.94655, 5e-6), "{p}");
        let (s, mu) = gauss(eps, d, 2);
        assert_eq!(mu, 189);
        assert!(close(s, 34.105, 1e-3), "{s}");
        let (p, mu) = geo(eps, d, 3.0, 2); // publisher, S = 3
        assert_eq!(mu, 447);
        assert!(close(p, 0.96404, 5e-6), "{p}");
        assert_eq!(gauss(eps, d, 4).1, 137);
        let (p, mu) = geo(eps, d, 3.0, 1); // EDP publisher, S = 3, n = 1
        assert_eq!(mu, 428);
        assert!(close(p, 0.964, 5e-4), "{p}");
        let (s, mu) = gauss(eps, d, 1);
        assert_eq!(mu, 261);
        assert!(close(s, 48.231, 1e-3), "{s}");
        let (s, mu) = gauss(eps, d, 4);
        assert_eq!(mu, 137);
        assert!(close(s, 24.115, 1e-3), "{s}");
    }

    /// §5.2 KATs with ε = 0.35·ln3, δ = 2·10⁻⁶, and the "deterministic" / HMSS test settings.
    #[test]
    fn kat_parameters_other_settings() {
        let eps = 0.35 * 3f64.ln();
        let d = 2e-6;
        assert_eq!(geo(eps, d, 1.0, 2).1, 41); // reach, Δ = 1
        assert_eq!(gauss(eps, d, 2).1, 55);
        assert_eq!(geo(eps, d, 2.0, 2).1, 84); // frequency, Δ = 2
        assert_eq!(gauss(eps, d, 3).1, 45);
        let det = (-80f64).exp();
        assert_eq!(geo(40.0, det, 2.0, 3).1, 7);
        assert_eq!(geo(40.0, det, 1.0, 3).1, 4);
        assert!(geo(40.0, det, 2.0, 3).0 < 3e-9);
        // HMSS utility test: Gaussian, n = 2, δ = 1: ε = 1 → μ 3, ε = 10 → μ 1.
        assert_eq!(gauss(1.0, 1.0, 2).1, 3);
        assert_eq!(gauss(10.0, 1.0, 2).1, 1);
    }

    #[test]
    fn blind_histogram_noiser_dispatch() {
        let params = DpParams {
            epsilon: 3f64.ln() / 10.0,
            delta: 2e-6,
        };
        assert_eq!(
            blind_histogram_noiser(&params, 2, NoiseMechanism::None),
            Ok(None)
        );
        let g = blind_histogram_noiser(&params, 2, NoiseMechanism::Geometric);
        assert_eq!(g.ok().flatten().map(|o| o.mu()), Some(291));
        let g = blind_histogram_noiser(&params, 2, NoiseMechanism::DiscreteGaussian);
        assert_eq!(g.ok().flatten().map(|o| o.mu()), Some(189));
        assert!(
            gaussian_options(
                &DpParams {
                    epsilon: 0.0,
                    delta: 1.0
                },
                2
            )
            .is_err()
        );
        assert!(geometric_options(&params, 2.0, 0).is_err());
    }

    #[cfg(feature = "ctr-keystream")]
    mod statistical {
        use super::super::*;
        use crate::keystream::CtrKeystream;

        fn rng(tag: u8) -> Prng<CtrKeystream> {
            Prng::new(CtrKeystream::from_seed(&[tag; 48]))
        }

        /// §5.1 / §7 (AS `distributed_discrete_gaussian_noiser_test.cc`): single draws follow the
        /// truncated pmf `∝ exp(−(x−μ)²/(2σ²))` on `[0, 2μ]` within ±0.01 (fixed seed, 50 000 draws).
        #[test]
        fn discrete_gaussian_pmf() {
            let sigma = 3.0;
            let mu = 8u32;
            let mut r = rng(1);
            let trials = 50_000;
            let mut counts = vec![0u32; 2 * mu as usize + 1];
            for _ in 0..trials {
                let x = sample_discrete_gaussian(&mut r, sigma, mu).unwrap_or(u32::MAX);
                assert!(x <= 2 * mu, "{x}");
                counts[x as usize] += 1;
            }
            let w: Vec<f64> = (0..=2 * mu)
                .map(|x| (-(f64::from(x) - f64::from(mu)).powi(2) / (2.0 * sigma * sigma)).exp())
                .collect();
            let z: f64 = w.iter().sum();
            for (x, c) in counts.iter().enumerate() {
                let emp = f64::from(*c) / f64::from(trials);
                assert!(
                    (emp - w[x] / z).abs() < 0.01,
                    "x={x} emp={emp} exp={}",
                    w[x] / z
                );
            }
        }

        /// The production setting of the end-to-end tolerance test (ε = 1, δ = 1e-9, n = 2):
        /// `σ_d` = 4.652, μ = 32; single draws have mean μ and standard deviation `σ_d`, so a
        /// sum of the two workers' draws has standard deviation `σ = σ_d·√2` (fixed seed,
        /// 100 000 draws, within 2 %).
        #[test]
        fn discrete_gaussian_moments_at_production_parameters() {
            let o = gaussian_options(
                &DpParams {
                    epsilon: 1.0,
                    delta: 1e-9,
                },
                2,
            )
            .unwrap_or(NoiserOptions::Geometric {
                contributors: 0,
                p: 0.0,
                mu: 0,
            });
            let NoiserOptions::DiscreteGaussian {
                sigma_distributed,
                mu,
                ..
            } = o
            else {
                panic!("{o:?}");
            };
            assert_eq!(mu, 32);
            assert!(
                (sigma_distributed - 4.652).abs() < 1e-3,
                "{sigma_distributed}"
            );
            let mut r = rng(7);
            let n = 100_000;
            let draws: Vec<f64> = (0..n)
                .map(|_| f64::from(o.sample(&mut r).unwrap_or(u32::MAX)))
                .collect();
            let mean = draws.iter().sum::<f64>() / f64::from(n);
            let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / f64::from(n - 1);
            assert!((mean - 32.0).abs() < 0.05, "mean {mean}");
            assert!(
                (var.sqrt() / sigma_distributed - 1.0).abs() < 0.02,
                "sd {} vs σ_d {sigma_distributed}",
                var.sqrt()
            );
        }

        /// §5.1 / §7 (AS `distributed_geometric_noiser_test.cc`): the sum of `n = 2` contributor
        /// draws is two-sided geometric `(1−p)/(1+p)·p^{|x−2μ|}` within ±0.01; each draw lies in
        /// `[0, 2μ]`; the mean is `μ` ± 0.05·μ (fixed seed, 40 000 sums).
        #[test]
        fn distributed_geometric_sum_pmf() {
            let opts = geometric_options(
                &DpParams {
                    epsilon: 1.0,
                    delta: 1e-5,
                },
                2.0,
                2,
            );
            let Ok(NoiserOptions::Geometric { p, mu, .. }) = opts else {
                panic!("{opts:?}");
            };
            let mut r = rng(2);
            let trials = 40_000;
            let mut hist = std::collections::BTreeMap::<i64, u32>::new();
            let mut total = 0f64;
            for _ in 0..trials {
                let a = sample_distributed_geometric(&mut r, 2, p, mu).unwrap_or(u32::MAX);
                let b = sample_distributed_geometric(&mut r, 2, p, mu).unwrap_or(u32::MAX);
                assert!(a <= 2 * mu && b <= 2 * mu);
                total += f64::from(a) + f64::from(b);
                *hist
                    .entry(i64::from(a) + i64::from(b) - 2 * i64::from(mu))
                    .or_default() += 1;
            }
            let mean = total / (2.0 * f64::from(trials));
            assert!(
                (mean - f64::from(mu)).abs() < 0.05 * f64::from(mu),
                "{mean}"
            );
            for z in -6i64..=6 {
                let emp = f64::from(hist.get(&z).copied().unwrap_or(0)) / f64::from(trials);
                let exp = (1.0 - p) / (1.0 + p) * p.powi(z.abs() as i32);
                assert!((emp - exp).abs() < 0.01, "z={z} emp={emp} exp={exp}");
            }
        }

        /// §5.2 "deterministic" setting (ε = 40, δ = e⁻⁸⁰): geometric draws equal μ.
        #[test]
        fn deterministic_geometric_draws_equal_mu() {
            let o = geometric_options(
                &DpParams {
                    epsilon: 40.0,
                    delta: (-80f64).exp(),
                },
                2.0,
                2,
            );
            let Ok(o) = o else { panic!("{o:?}") };
            let mut r = rng(3);
            for _ in 0..1000 {
                assert_eq!(o.sample(&mut r), Ok(o.mu()));
            }
        }

        /// §6.4 step 4 layout: length `T`, zeros first, then runs of `k`, sentinel `q−1` after;
        /// each run length within `[0, 2μ]`.
        #[test]
        fn rf_noise_layout() {
            let dp = |e| DpParams {
                epsilon: e,
                delta: 1e-5,
            };
            let reach = gaussian_options(&dp(1.0), 2).unwrap_or(NoiserOptions::Geometric {
                contributors: 2,
                p: 0.0,
                mu: 0,
            });
            let freq = gaussian_options(&dp(2.0), 2).unwrap_or(reach);
            let (mr, mf, mcf, q) = (reach.mu(), freq.mu(), 4u32, 127u32);
            let mut r = rng(4);
            for _ in 0..50 {
                let nv = rf_noise_registers(&mut r, &reach, &freq, mcf, q).unwrap_or_default();
                assert_eq!(nv.len(), rf_noise_len(mr, mf, mcf));
                // Runs are in non-decreasing order 0, 1, …, mcf, then the sentinel.
                assert!(nv.windows(2).all(|w| w[0] <= w[1]));
                let count = |v: u32| nv.iter().filter(|&&x| x == v).count() as u32;
                assert!(count(0) <= 2 * mr);
                for k in 1..=mcf {
                    assert!(count(k) <= 2 * mf);
                }
                assert!(nv.iter().all(|&x| x <= mcf || x == q - 1));
            }
            assert!(rf_noise_registers(&mut r, &reach, &freq, 126, 127).is_err());
            // Deterministic noiser: exactly μ of each.
            let det = NoiserOptions::Geometric {
                contributors: 2,
                p: 0.0,
                mu: 3,
            };
            let nv = rf_noise_registers(&mut r, &det, &det, 2, 127).unwrap_or_default();
            assert_eq!(
                nv,
                vec![
                    0, 0, 0, 1, 1, 1, 2, 2, 2, 126, 126, 126, 126, 126, 126, 126, 126, 126
                ]
            );
        }

        #[test]
        fn ro_noise_layout() {
            let det = NoiserOptions::Geometric {
                contributors: 2,
                p: 0.0,
                mu: 3,
            };
            let nv = ro_noise_registers(&mut rng(5), &mut rng(6), &det, 127).unwrap_or_default();
            assert_eq!(nv.len(), 6);
            assert!(nv[..3].iter().all(|&x| x != 0 && x < 127));
            assert_eq!(&nv[3..], &[0, 0, 0]);
        }
    }
}
