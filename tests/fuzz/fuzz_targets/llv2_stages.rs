//! The LLv2 / RO-LLv2 stage computations (`llv2_core::protocol`, spec mpc-crypto §3–4) on the
//! pure P-256 backend with small valid duchy keys, fed two ways:
//!
//! * raw: one stage function on arbitrary bytes (requisition blobs, setup inputs, phase one /
//!   two / three blobs, reach-only blobs with their trailing noise ciphertext), arbitrary
//!   `MF ∈ 0..=30`, `S ∈ 0..=5`, noise on or off;
//! * pipeline: a real run (tiny sketches from arbitrary events, 1–3 duchies, noise draws from
//!   the input) in which the blobs given to chosen stage calls are mutated (bytes flipped,
//!   truncated, appended, replaced, ciphertexts copied over each other, point tags changed),
//!   so that most inputs get past the length checks and reach the point decoders and the
//!   protocol logic.
//!
//! Invariants: no panic; a blob whose length is not a whole number of blocks is
//! `Error::Invalid`; every refusal is `Error::Invalid` except the reach-only aggregator's
//! noise lookup (`Internal`, only on mutated input); successful outputs have the documented
//! sizes and are sorted; an unmutated pipeline succeeds (bar the documented refusals: empty
//! histogram, too many active registers) and, with noise off, gives exactly the plaintext
//! estimate and frequency distribution of the union of the sketches.
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use halo_p256::backend::{CIPHERTEXT_LEN, Crypto, Pure, RandomSource};
use hmss_core::noise::NoiserOptions;
use libfuzzer_sys::fuzz_target;
use llv2_core::edp::encrypt_sketch;
use llv2_core::estimator::{frequency_distribution, plaintext_reach};
use llv2_core::noise::total_frequency_noise;
use llv2_core::protocol::{
    self as p, Baselines, Error, FrequencyNoise, NoiseSource, REGISTER_LEN, RO_REGISTER_LEN,
    ReachNoise, RoAggregation, SetupParams, TUPLE_LEN,
};
use llv2_core::sketch::{PlainRegister, SketchParams, build_sketch, union};

thread_local! {
    static STATE: Cell<u64> = const { Cell::new(0) };
}

/// Deterministic random bytes (SplitMix64 over a thread-local state reset from every input),
/// so that a crash input reproduces.
#[derive(Default)]
struct FuzzRandom;

impl RandomSource for FuzzRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut z = STATE.with(|s| {
                let v = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
                s.set(v);
                v
            });
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

type C = Pure<FuzzRandom>;
type Base = <C as Crypto>::FixedBase;

/// Most duchies of a pipeline (the last one is the aggregator).
const MAX_DUCHIES: usize = 3;
/// The duchies' secret keys: small valid scalars.
const SECRETS: [u64; MAX_DUCHIES] = [2, 3, 5];

struct Keys {
    secrets: Vec<[u8; 32]>,
    /// `ys[d - 1]`: the combined key of the first `d` duchies.
    ys: Vec<Base>,
    /// `partials[d - 1][j]`: the key of duchies `j + 1..d` (phase two at non-aggregator `j`).
    partials: Vec<Vec<Base>>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let c = C::new();
        let secrets: Vec<[u8; 32]> = SECRETS.iter().map(|&s| p::scalar_of(s)).collect();
        let publics: Vec<Vec<u8>> = secrets
            .iter()
            .map(|s| c.fixed_mul(&c.generator(), s).expect("public key"))
            .collect();
        let sum = |points: &[Vec<u8>]| {
            let mut acc = points[0].clone();
            for q in &points[1..] {
                acc = c.add(&acc, q).expect("key sum");
            }
            c.register(&acc).expect("register key")
        };
        let ys = (1..=MAX_DUCHIES).map(|d| sum(&publics[..d])).collect();
        let partials = (1..=MAX_DUCHIES)
            .map(|d| {
                (0..d.saturating_sub(1))
                    .map(|j| sum(&publics[j + 1..d]))
                    .collect()
            })
            .collect();
        Keys {
            secrets,
            ys,
            partials,
        }
    })
}

/// Noise offsets `μ` of the four noisers (0..=3 each, so that the noise stays small).
#[derive(Arbitrary, Debug, Clone, Copy)]
struct NoiseConfig {
    blind_histogram: u8,
    publisher: u8,
    global_reach: u8,
    frequency: Option<u8>,
    gaussian: bool,
}

impl NoiseConfig {
    fn noiser(&self, mu: u8) -> NoiserOptions {
        let mu = u32::from(mu % 4);
        if self.gaussian {
            NoiserOptions::DiscreteGaussian {
                contributors: 3,
                sigma_distributed: 1.0,
                mu,
            }
        } else {
            NoiserOptions::Geometric {
                contributors: 3,
                p: 0.5,
                mu,
            }
        }
    }

    fn reach(&self) -> ReachNoise {
        ReachNoise {
            blind_histogram: self.noiser(self.blind_histogram),
            publisher: self.noiser(self.publisher),
            global_reach: self.noiser(self.global_reach),
        }
    }

    fn frequency(&self) -> Option<NoiserOptions> {
        self.frequency.map(|mu| self.noiser(mu))
    }
}

/// Noise draws taken from the input: each in `[0, 2μ]` (what a real noiser gives), `μ` once
/// the bytes run out.
struct Draws<'a> {
    bytes: &'a [u8],
}

impl NoiseSource for Draws<'_> {
    fn draw(&mut self, noiser: &NoiserOptions) -> Result<u32, Error> {
        let mu = noiser.mu();
        match self.bytes.split_first() {
            Some((&b, rest)) => {
                self.bytes = rest;
                Ok(u32::from(b) % (2 * mu + 1))
            }
            None => Ok(mu),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Mutation<'a> {
    Flip {
        at: u16,
        mask: u8,
    },
    Truncate {
        len: u16,
    },
    Append(&'a [u8]),
    Replace(&'a [u8]),
    /// Copies ciphertext `from` over ciphertext `to` (equal keys, equal indexes, identities).
    CopyCiphertext {
        from: u16,
        to: u16,
    },
    /// Sets the SEC1 tag of point `point` (0x02/0x03 swap the sign, anything else is invalid).
    Tag {
        point: u16,
        tag: u8,
    },
    /// Drops block `block` of `len` bytes.
    DropBlock {
        block: u16,
        len: u16,
    },
}

#[derive(Arbitrary, Debug)]
struct Edit<'a> {
    /// Which stage call (counted through the pipeline, modulo the number of calls).
    call: u8,
    /// Which blob argument of that call.
    arg: u8,
    mutation: Mutation<'a>,
}

fn apply(m: &Mutation<'_>, data: &mut Vec<u8>) {
    let len = data.len();
    match m {
        Mutation::Flip { at, mask } => {
            if len > 0 {
                data[usize::from(*at) % len] ^= *mask;
            }
        }
        Mutation::Truncate { len: l } => data.truncate(usize::from(*l) % (len + 1)),
        Mutation::Append(b) => data.extend_from_slice(b),
        Mutation::Replace(b) => *data = b.to_vec(),
        Mutation::CopyCiphertext { from, to } => {
            let n = len / CIPHERTEXT_LEN;
            if n > 0 {
                let (f, t) = (usize::from(*from) % n, usize::from(*to) % n);
                let ct = data[f * CIPHERTEXT_LEN..(f + 1) * CIPHERTEXT_LEN].to_vec();
                data[t * CIPHERTEXT_LEN..(t + 1) * CIPHERTEXT_LEN].copy_from_slice(&ct);
            }
        }
        Mutation::Tag { point, tag } => {
            let n = len / 33;
            if n > 0 {
                data[(usize::from(*point) % n) * 33] = *tag;
            }
        }
        Mutation::DropBlock { block, len: l } => {
            let l = usize::from(*l).max(1);
            let n = len / l;
            if n > 0 {
                let b = usize::from(*block) % n;
                data.drain(b * l..(b + 1) * l);
            }
        }
    }
}

/// The pipeline's stage calls: applies the edits aimed at each call and checks each result.
struct Runner<'a> {
    edits: Vec<&'a Edit<'a>>,
    calls: usize,
    call: usize,
    /// No edit changed any byte so far: every stage must succeed (bar `allowed` refusals).
    honest: bool,
}

impl Runner<'_> {
    /// The arguments of the next stage call, edited.
    fn next(&mut self, args: &mut [&mut Vec<u8>]) {
        let call = self.call;
        self.call += 1;
        for e in &self.edits {
            if usize::from(e.call) % self.calls.max(1) != call || args.is_empty() {
                continue;
            }
            let arg = &mut args[usize::from(e.arg) % args.len()];
            let before = arg.clone();
            apply(&e.mutation, arg);
            if **arg != before {
                self.honest = false;
            }
        }
    }

    /// Checks a stage result: wrong lengths are `Invalid`, honest inputs succeed unless the
    /// refusal is one of `allowed`, and only the reach-only noise lookup may be `Internal`.
    fn check<T>(
        &self,
        what: &str,
        r: Result<T, Error>,
        lengths_ok: bool,
        allowed: &[&str],
    ) -> Option<T> {
        if !lengths_ok {
            assert!(
                matches!(r, Err(Error::Invalid(_))),
                "{what}: a blob of the wrong length must be invalid input, got {:?}",
                r.as_ref().err()
            );
        }
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                let message = match &e {
                    Error::Invalid(m) => m,
                    Error::Internal(m) => {
                        assert!(
                            !self.honest && m.contains("not a multiple of P1"),
                            "{what}: internal error: {m}"
                        );
                        m
                    }
                };
                assert!(
                    !self.honest || allowed.iter().any(|a| message.contains(a)),
                    "{what}: an honest pipeline failed: {e}"
                );
                None
            }
        }
    }
}

fn whole(data: &[u8], block: usize) -> bool {
    data.len().is_multiple_of(block)
}

fn assert_sorted(what: &str, data: &[u8], block: usize) {
    assert!(whole(data, block), "{what}: output of {} bytes", data.len());
    let blocks: Vec<&[u8]> = data.chunks(block).collect();
    assert!(
        blocks.windows(2).all(|w| w[0] <= w[1]),
        "{what}: output not sorted"
    );
}

#[derive(Arbitrary, Debug)]
struct Pipeline<'a> {
    /// One edit about half of the time (first, so that short inputs have it too), and up to two
    /// more.
    edit: Option<Edit<'a>>,
    reach_only: bool,
    duchies: u8,
    maximum_frequency: u8,
    sketches_override: Option<u8>,
    size: u8,
    width: u8,
    noise: Option<NoiseConfig>,
    baselines_override: Option<(u16, u16, u16)>,
    providers: Vec<Vec<(u8, u8)>>,
    draws: &'a [u8],
    edits: Vec<Edit<'a>>,
}

const SIZES: [u64; 4] = [8, 32, 64, 4096];
const WIDTHS: [f32; 3] = [1.0, 0.5, 0.1];

fn pipeline(pl: &Pipeline<'_>) {
    let k = keys();
    let c = C::new();
    let d = usize::from(pl.duchies) % MAX_DUCHIES + 1;
    let agg = d - 1;
    let y = &k.ys[d - 1];
    let mf = u32::from(pl.maximum_frequency % 31);
    let params = SketchParams {
        decay_rate: 12.0,
        size: SIZES[usize::from(pl.size) % SIZES.len()],
        sampling_indicator_size: 10_000_000,
    };
    let width = WIDTHS[usize::from(pl.width) % WIDTHS.len()];
    // Without providers in the input, two fixed ones (so that the blobs are not empty).
    let default_providers = [vec![(1, 1), (2, 3), (3, 1), (7, 2)], vec![(2, 1), (5, 30)]];
    let providers = if pl.providers.is_empty() {
        &default_providers[..]
    } else {
        &pl.providers[..]
    };
    let sketches: Vec<Vec<PlainRegister>> = providers
        .iter()
        .take(5)
        .map(|events| {
            build_sketch(
                events
                    .iter()
                    .take(8)
                    .map(|&(vid, f)| (i64::from(vid), u64::from(f % 40))),
                &params,
            )
        })
        .collect();
    let s = match pl.sketches_override {
        Some(s) => u32::from(s % 6),
        None => sketches.len() as u32,
    };
    let reach_noise = pl.noise.map(|n| n.reach());
    let frequency_noiser = pl.noise.and_then(|n| n.frequency());
    let mut draws = Draws { bytes: pl.draws };
    let calls = if pl.reach_only { 2 * d } else { 4 * d };
    let mut r = Runner {
        edits: pl.edit.iter().chain(pl.edits.iter().take(2)).collect(),
        calls,
        call: 0,
        honest: true,
    };

    // The data providers' encrypted sketches, fulfilled round robin.
    let mut requisitions = vec![Vec::new(); d];
    for (i, sk) in sketches.iter().enumerate() {
        let blob = encrypt_sketch(&c, y, sk, mf.max(1), pl.reach_only).expect("encrypt sketch");
        let per = if pl.reach_only {
            RO_REGISTER_LEN
        } else {
            REGISTER_LEN
        };
        assert_eq!(blob.len(), sk.len() * per);
        requisitions[i % d].extend(blob);
    }
    let refs: Vec<&[PlainRegister]> = sketches.iter().map(|s| s.as_slice()).collect();
    let all = union(&refs);
    // Exact comparison with the plaintext estimator: noise off, S and baselines as given.
    let exact = pl.noise.is_none() && pl.sketches_override.is_none();
    let too_many = "active register count";

    if pl.reach_only {
        let t_ro = reach_noise.map_or(0, |n| n.total_reach_only(s)) as usize;
        let (mut others, mut received) = (Vec::new(), Vec::new());
        let mut blob = Vec::new();
        for (j, requisition) in requisitions.iter().enumerate() {
            let (mut req, mut oth, mut rec) = if j == agg {
                (requisition.clone(), others.clone(), received.clone())
            } else {
                (requisition.clone(), Vec::new(), Vec::new())
            };
            r.next(&mut [&mut req, &mut oth, &mut rec]);
            let ok = whole(&req, RO_REGISTER_LEN)
                && whole(&oth, RO_REGISTER_LEN)
                && whole(&rec, CIPHERTEXT_LEN);
            let res = p::ro_setup(&c, y, &req, &oth, &rec, s, reach_noise.as_ref(), &mut draws);
            let Some(out) = r.check("ro_setup", res, ok, &[]) else {
                return;
            };
            assert_eq!(
                out.len(),
                req.len() + oth.len() + t_ro * RO_REGISTER_LEN + CIPHERTEXT_LEN
            );
            let (crv, noise) = p::ro_split(&out).expect("split a setup output");
            assert_sorted("ro_setup", crv, RO_REGISTER_LEN);
            if j == agg {
                blob = out;
            } else {
                others.extend_from_slice(crv);
                received.extend_from_slice(noise);
            }
        }
        for secret in &k.secrets[..agg] {
            r.next(&mut [&mut blob]);
            let ok = whole(&blob, CIPHERTEXT_LEN) && !blob.is_empty();
            let res = p::ro_execution(&c, secret, &blob);
            let Some(out) = r.check("ro_execution", res, ok, &[]) else {
                return;
            };
            assert_eq!(out.len(), blob.len());
            assert_sorted(
                "ro_execution",
                p::ro_split(&out).expect("split").0,
                RO_REGISTER_LEN,
            );
            blob = out;
        }
        r.next(&mut [&mut blob]);
        let ok = whole(&blob, CIPHERTEXT_LEN) && !blob.is_empty();
        let agg_params = RoAggregation {
            duchies: d as u32,
            sketches: s,
            noise: reach_noise.as_ref(),
        };
        let res = p::ro_execution_at_aggregator(&c, &k.secrets[agg], &blob, &agg_params);
        let Some(active) = r.check("ro_execution_at_aggregator", res, ok, &[]) else {
            return;
        };
        assert!(active >= 0);
        let reach = r.check(
            "reach",
            p::reach(params.decay_rate, params.size, active, width),
            true,
            &[too_many],
        );
        if r.honest && exact {
            assert_eq!(
                reach.ok_or(()),
                plaintext_reach(&all, &params, width).map_err(|_| ())
            );
        }
        return;
    }

    // LLv2: setup.
    let sp = SetupParams {
        sketches: s,
        maximum_frequency: mf,
        noise: reach_noise.as_ref(),
    };
    let t_reach = reach_noise.map_or(0, |n| n.total(s)) as usize;
    let mut others = Vec::new();
    let mut blob = Vec::new();
    for (j, requisition) in requisitions.iter().enumerate() {
        let mut req = requisition.clone();
        let mut oth = if j == agg { others.clone() } else { Vec::new() };
        r.next(&mut [&mut req, &mut oth]);
        let ok = whole(&req, REGISTER_LEN) && whole(&oth, REGISTER_LEN);
        let res = p::setup(&c, y, &req, &oth, &sp, &mut draws);
        let Some(out) = r.check("setup", res, ok, &[]) else {
            return;
        };
        assert_eq!(out.len(), req.len() + oth.len() + t_reach * REGISTER_LEN);
        assert_sorted("setup", &out, REGISTER_LEN);
        if j == agg {
            blob = out;
        } else {
            others.extend(out);
        }
    }
    // Phase one.
    for secret in &k.secrets[..agg] {
        r.next(&mut [&mut blob]);
        let ok = whole(&blob, REGISTER_LEN);
        let res = p::execution_one(&c, secret, y, &blob);
        let Some(out) = r.check("execution_one", res, ok, &[]) else {
            return;
        };
        assert_eq!(out.len(), blob.len());
        assert_sorted("execution_one", &out, REGISTER_LEN);
        blob = out;
    }
    let fnoise = frequency_noiser
        .as_ref()
        .map(|noiser| FrequencyNoise { noiser });
    let t_freq = match frequency_noiser {
        Some(f) if mf > 1 => total_frequency_noise(f.mu(), mf) as usize,
        _ => 0,
    };
    r.next(&mut [&mut blob]);
    let ok = whole(&blob, REGISTER_LEN);
    let res =
        p::execution_one_at_aggregator(&c, &k.secrets[agg], y, &blob, s, mf, fnoise, &mut draws);
    let Some(out) = r.check("execution_one_at_aggregator", res, ok, &[]) else {
        return;
    };
    assert_sorted("execution_one_at_aggregator", &out, TUPLE_LEN);
    assert!(out.len() / TUPLE_LEN <= blob.len() / REGISTER_LEN + t_freq);
    blob = out;
    // Phase two.
    for (j, secret) in k.secrets[..agg].iter().enumerate() {
        r.next(&mut [&mut blob]);
        let ok = whole(&blob, TUPLE_LEN);
        let partial = &k.partials[d - 1][j];
        let res = p::execution_two(&c, secret, partial, y, &blob, mf, fnoise, &mut draws);
        let Some(out) = r.check("execution_two", res, ok, &[]) else {
            return;
        };
        assert_eq!(out.len(), blob.len() + t_freq * TUPLE_LEN);
        assert_sorted("execution_two", &out, TUPLE_LEN);
        blob = out;
    }
    let dd = d as u64;
    let baselines = match pl.baselines_override {
        Some((a, b, f)) => Baselines {
            reach: Some(u64::from(a)),
            frequency_tuples: Some(u64::from(b)),
            frequency_bucket: Some(u64::from(f)),
        },
        None => Baselines {
            reach: reach_noise.map(|n| dd * u64::from(n.global_reach.mu())),
            frequency_tuples: (t_freq > 0).then_some(dd * t_freq as u64),
            frequency_bucket: frequency_noiser.map(|f| dd * u64::from(f.mu())),
        },
    };
    r.next(&mut [&mut blob]);
    let ok = whole(&blob, TUPLE_LEN);
    let res = p::execution_two_at_aggregator(&c, &k.secrets[agg], y, &blob, mf, &baselines);
    let Some(two) = r.check("execution_two_at_aggregator", res, ok, &[]) else {
        return;
    };
    assert!(two.active >= 0);
    assert_eq!(two.tuples, (blob.len() / TUPLE_LEN) as u64);
    assert!(two.valid <= two.tuples);
    let rows = u64::from(mf.saturating_sub(1));
    assert_eq!(
        two.matrix.len() as u64,
        two.valid * rows * CIPHERTEXT_LEN as u64
    );
    let reach = r.check(
        "reach",
        p::reach(params.decay_rate, params.size, two.active, width),
        true,
        &[too_many],
    );
    let exact = exact && pl.baselines_override.is_none() && r.honest;
    if exact {
        assert_eq!(
            reach.ok_or(()),
            plaintext_reach(&all, &params, width).map_err(|_| ())
        );
    }
    if mf < 2 {
        return;
    }
    // Phase three.
    let mut matrix = two.matrix;
    for secret in &k.secrets[..agg] {
        r.next(&mut [&mut matrix]);
        let ok = whole(&matrix, CIPHERTEXT_LEN);
        let res = p::execution_three(&c, secret, &matrix);
        let Some(out) = r.check("execution_three", res, ok, &[]) else {
            return;
        };
        assert_eq!(out.len(), matrix.len());
        matrix = out;
    }
    r.next(&mut [&mut matrix]);
    let ok = whole(&matrix, CIPHERTEXT_LEN);
    let res = p::execution_three_at_aggregator(
        &c,
        &k.secrets[agg],
        &matrix,
        mf,
        baselines.frequency_bucket,
    );
    let distribution = r.check(
        "execution_three_at_aggregator",
        res,
        ok,
        &["histogram is empty"],
    );
    if let Some(dist) = &distribution {
        check_distribution(dist, mf);
    }
    if exact && r.honest {
        let want = frequency_distribution(&all, mf);
        match distribution {
            None => assert!(
                want.is_empty(),
                "MPC found no frequencies, plaintext {want:?}"
            ),
            Some(got) => {
                assert_eq!(
                    got.keys().collect::<Vec<_>>(),
                    want.keys().collect::<Vec<_>>()
                );
                for (b, v) in &want {
                    assert!((got[b] - v).abs() < 1e-9, "bucket {b}: {} vs {v}", got[b]);
                }
            }
        }
    }
}

fn check_distribution(dist: &BTreeMap<u32, f64>, mf: u32) {
    assert!(!dist.is_empty());
    assert!(dist.keys().all(|&b| (1..=mf).contains(&b)), "{dist:?}");
    assert!(dist.values().all(|&v| v > 0.0 && v <= 1.0), "{dist:?}");
    let total: f64 = dist.values().sum();
    assert!((total - 1.0).abs() < 1e-9, "{dist:?}");
}

#[derive(Arbitrary, Debug)]
struct Raw<'a> {
    stage: u8,
    /// Round the blobs down to whole blocks (to get past the length checks).
    whole_blocks: bool,
    a: &'a [u8],
    b: &'a [u8],
    c: &'a [u8],
    maximum_frequency: u8,
    sketches: u8,
    duchies: u8,
    noise: Option<NoiseConfig>,
    draws: &'a [u8],
    baselines: (Option<u16>, Option<u16>, Option<u16>),
    registers: Vec<(u64, i64, u64)>,
}

fn cut(data: &[u8], block: usize, whole_blocks: bool) -> &[u8] {
    if whole_blocks {
        &data[..data.len() - data.len() % block]
    } else {
        data
    }
}

fn raw(inp: &Raw<'_>) {
    let k = keys();
    let c = C::new();
    let y = &k.ys[MAX_DUCHIES - 1];
    let secret = &k.secrets[0];
    let mf = u32::from(inp.maximum_frequency % 31);
    let s = u32::from(inp.sketches % 6);
    let reach_noise = inp.noise.map(|n| n.reach());
    let frequency_noiser = inp.noise.and_then(|n| n.frequency());
    let fnoise = frequency_noiser
        .as_ref()
        .map(|noiser| FrequencyNoise { noiser });
    let mut draws = Draws { bytes: inp.draws };
    let wb = inp.whole_blocks;
    // Raw bytes are never honest: only the length and error-kind rules apply.
    let r = Runner {
        edits: Vec::new(),
        calls: 0,
        call: 0,
        honest: false,
    };
    let invalid_only = |what: &str, e: Option<Error>| {
        if let Some(e) = e {
            assert!(matches!(e, Error::Invalid(_)), "{what}: {e:?}");
        }
    };
    match inp.stage % 13 {
        0 => {
            let (a, b) = (cut(inp.a, REGISTER_LEN, wb), cut(inp.b, REGISTER_LEN, wb));
            let sp = SetupParams {
                sketches: s,
                maximum_frequency: mf,
                noise: reach_noise.as_ref(),
            };
            let ok = whole(a, REGISTER_LEN) && whole(b, REGISTER_LEN);
            let res = p::setup(&c, y, a, b, &sp, &mut draws);
            if let Some(out) = r.check("setup", res, ok, &[]) {
                let t = reach_noise.map_or(0, |n| n.total(s)) as usize;
                assert_eq!(out.len(), a.len() + b.len() + t * REGISTER_LEN);
                assert_sorted("setup", &out, REGISTER_LEN);
            }
        }
        1 => {
            let a = cut(inp.a, REGISTER_LEN, wb);
            let res = p::execution_one(&c, secret, y, a);
            if let Some(out) = r.check("execution_one", res, whole(a, REGISTER_LEN), &[]) {
                assert_eq!(out.len(), a.len());
            }
        }
        2 => {
            let a = cut(inp.a, REGISTER_LEN, wb);
            let res = p::execution_one_at_aggregator(&c, secret, y, a, s, mf, fnoise, &mut draws);
            if let Some(out) = r.check(
                "execution_one_at_aggregator",
                res,
                whole(a, REGISTER_LEN),
                &[],
            ) {
                assert_sorted("execution_one_at_aggregator", &out, TUPLE_LEN);
            }
        }
        3 => {
            let a = cut(inp.a, TUPLE_LEN, wb);
            let partial = &k.partials[MAX_DUCHIES - 1][0];
            let res = p::execution_two(&c, secret, partial, y, a, mf, fnoise, &mut draws);
            if let Some(out) = r.check("execution_two", res, whole(a, TUPLE_LEN), &[]) {
                assert_sorted("execution_two", &out, TUPLE_LEN);
            }
        }
        4 => {
            let a = cut(inp.a, TUPLE_LEN, wb);
            let (x, z, f) = inp.baselines;
            let baselines = Baselines {
                reach: x.map(u64::from),
                frequency_tuples: z.map(u64::from),
                frequency_bucket: f.map(u64::from),
            };
            let res = p::execution_two_at_aggregator(&c, secret, y, a, mf, &baselines);
            if let Some(two) = r.check("execution_two_at_aggregator", res, whole(a, TUPLE_LEN), &[])
            {
                assert!(two.active >= 0 && two.valid <= two.tuples);
                let rows = u64::from(mf.saturating_sub(1));
                assert_eq!(
                    two.matrix.len() as u64,
                    two.valid * rows * CIPHERTEXT_LEN as u64
                );
            }
        }
        5 => {
            let a = cut(inp.a, CIPHERTEXT_LEN, wb);
            let res = p::execution_three(&c, secret, a);
            if let Some(out) = r.check("execution_three", res, whole(a, CIPHERTEXT_LEN), &[]) {
                assert_eq!(out.len(), a.len());
            }
        }
        6 => {
            let a = cut(inp.a, CIPHERTEXT_LEN, wb);
            let bucket = inp.baselines.2.map(u64::from);
            let res = p::execution_three_at_aggregator(&c, secret, a, mf, bucket);
            if let Some(dist) = r.check(
                "execution_three_at_aggregator",
                res,
                whole(a, CIPHERTEXT_LEN),
                &[],
            ) {
                check_distribution(&dist, mf);
            }
        }
        7 => {
            let (a, b, cc) = (
                cut(inp.a, RO_REGISTER_LEN, wb),
                cut(inp.b, RO_REGISTER_LEN, wb),
                cut(inp.c, CIPHERTEXT_LEN, wb),
            );
            let ok =
                whole(a, RO_REGISTER_LEN) && whole(b, RO_REGISTER_LEN) && whole(cc, CIPHERTEXT_LEN);
            let res = p::ro_setup(&c, y, a, b, cc, s, reach_noise.as_ref(), &mut draws);
            if let Some(out) = r.check("ro_setup", res, ok, &[]) {
                let t = reach_noise.map_or(0, |n| n.total_reach_only(s)) as usize;
                assert_eq!(out.len(), a.len() + b.len() + (t + 1) * CIPHERTEXT_LEN);
            }
        }
        8 => {
            let a = cut(inp.a, CIPHERTEXT_LEN, wb);
            let ok = whole(a, CIPHERTEXT_LEN) && !a.is_empty();
            let res = p::ro_execution(&c, secret, a);
            if let Some(out) = r.check("ro_execution", res, ok, &[]) {
                assert_eq!(out.len(), a.len());
            }
        }
        9 => {
            let a = cut(inp.a, CIPHERTEXT_LEN, wb);
            let ok = whole(a, CIPHERTEXT_LEN) && !a.is_empty();
            let agg = RoAggregation {
                duchies: u32::from(inp.duchies % 4),
                sketches: s,
                noise: reach_noise.as_ref(),
            };
            let res = p::ro_execution_at_aggregator(&c, secret, a, &agg);
            if let Some(active) = r.check("ro_execution_at_aggregator", res, ok, &[]) {
                assert!(active >= 0);
            }
        }
        10 => {
            // Block counting and the reach-only split.
            let len = usize::from(inp.maximum_frequency) + usize::from(inp.sketches);
            let n = p::blocks(inp.a, len, "x");
            match n {
                Ok(n) => assert!(len > 0 && n * len == inp.a.len()),
                Err(e) => {
                    assert!(len == 0 || !whole(inp.a, len));
                    invalid_only("blocks", Some(e));
                }
            }
            match p::ro_split(inp.a) {
                Ok((crv, noise)) => {
                    assert_eq!(noise.len(), CIPHERTEXT_LEN);
                    assert_eq!(crv.len() + CIPHERTEXT_LEN, inp.a.len());
                    assert!(whole(crv, RO_REGISTER_LEN));
                }
                Err(e) => {
                    assert!(inp.a.is_empty() || !whole(inp.a, CIPHERTEXT_LEN));
                    invalid_only("ro_split", Some(e));
                }
            }
        }
        11 => {
            // The data provider's encryption of arbitrary registers.
            let registers: Vec<PlainRegister> = inp
                .registers
                .iter()
                .take(8)
                .map(|&(index, key, count)| PlainRegister { index, key, count })
                .collect();
            let reach_only = inp.whole_blocks;
            let res = encrypt_sketch(&c, y, &registers, mf, reach_only);
            let refusable = !registers.is_empty()
                && (mf == 0
                    || (!reach_only && registers.iter().any(|r| r.key > 0 && r.count == 0)));
            match res {
                Ok(out) => {
                    assert!(!refusable);
                    let per = if reach_only {
                        RO_REGISTER_LEN
                    } else {
                        REGISTER_LEN
                    };
                    assert_eq!(out.len(), registers.len() * per);
                }
                Err(e) => {
                    assert!(refusable, "encrypt_sketch: {e:?}");
                    invalid_only("encrypt_sketch", Some(e));
                }
            }
        }
        _ => {
            // Frequency noise tuples alone.
            if let Some(noiser) = frequency_noiser {
                let partial = &k.partials[MAX_DUCHIES - 1][0];
                let res = p::frequency_noise_tuples(&c, partial, y, mf, &noiser, &mut draws);
                let out = res.expect("frequency noise tuples");
                let t = total_frequency_noise(noiser.mu(), mf) as usize;
                assert_eq!(out.len(), t * TUPLE_LEN);
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Mode<'a> {
    Raw(Raw<'a>),
    Pipeline(Pipeline<'a>),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    seed: u64,
    mode: Mode<'a>,
}

fuzz_target!(|inp: Input<'_>| {
    STATE.with(|s| s.set(inp.seed));
    match &inp.mode {
        Mode::Raw(r) => raw(r),
        Mode::Pipeline(pl) => pipeline(pl),
    }
});
