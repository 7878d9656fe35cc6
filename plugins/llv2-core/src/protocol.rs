//! The stage computations of Liquid Legions v2 (spec §3) and reach-only LLv2 (§4), written
//! once against [`Crypto`]: inside a plugin they run on the host's batched import, natively
//! (simulator, benchmarks, tests) on [`halo_p256::backend::Pure`].
//!
//! Every function works on whole stage blobs (concatenated fixed-size blocks) and makes a
//! handful of batched calls, each over all registers: every ciphertext is parsed once per
//! call and every result serialized once (batch normalisation on the host), instead of the
//! reference's string round trip per operation (§2.5).
//!
//! Random noise identifiers: the reference hashes `prefix + decimal(random scalar)` to the
//! curve (§3.1, §3.3). Here they are `r·G` for a random scalar `r` (one fixed-base
//! multiplication instead of a hash-to-curve): both are uniformly unpredictable points,
//! distinct with overwhelming probability, and nobody can tell them apart after encryption
//! and blinding. The constant identifiers (destroyed key, blinded-histogram key, publisher
//! and padding ids, `P1`) are hashed exactly as the reference does, because the protocol
//! depends on their equality across duchies.

use std::collections::BTreeMap;

use halo_p256::backend::{CIPHERTEXT_LEN, Crypto, CryptoError, POINT_LEN, SCALAR_LEN};
use hmss_core::keystream::Keystream;
use hmss_core::noise::NoiserOptions;
use hmss_core::prng::Prng;

use crate::estimator;
use crate::noise::{total_frequency_noise, total_reach_noise, total_ro_noise};

/// Bytes of one LLv2 register: index, key and count ciphertexts (§1.3).
pub const REGISTER_LEN: usize = 3 * CIPHERTEXT_LEN;
/// Bytes of one flag-count tuple `fa ‖ fb ‖ fc ‖ count` (§3.2 step 4).
pub const TUPLE_LEN: usize = 4 * CIPHERTEXT_LEN;
/// Bytes of one reach-only register (the index ciphertext, §4).
pub const RO_REGISTER_LEN: usize = CIPHERTEXT_LEN;

/// `P1`, the unit point counts are multiples of (§2.3).
pub const UNIT_POINT: &str = "unit_ec_point";
/// The key of destroyed registers and of reach-DP noise registers (§1.3, §3.1).
pub const DESTROYED_REGISTER_KEY: &str = "destroyed_register_key";
/// The key of blinded-histogram noise registers (§3.1).
pub const BLINDED_HISTOGRAM_KEY: &str = "blinded_histogram_noise_register_key";
/// The index of every noise-for-publisher-noise register (§3.1).
pub const PUBLISHER_NOISE_ID: &str = "publisher_noise_register_id";
/// The index of every padding register (§3.1).
pub const PADDING_NOISE_ID: &str = "padding_noise_register_id";

/// Most registers, tuples or matrix elements one stage accepts (the host refuses larger
/// crypto calls anyway; this gives a clear message first).
pub const MAX_ELEMENTS: usize = 1 << 24;

/// Most elements of the frequency (SKA) matrix (66 bytes each: 264 MiB).
pub const MAX_MATRIX_ELEMENTS: usize = 1 << 22;
/// Matrix elements built per batch of crypto calls.
const MATRIX_CHUNK: usize = 1 << 16;

/// A stage failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The inputs or parameters are invalid (malformed blobs, bad points, out-of-range
    /// parameters): the computation fails with this message.
    Invalid(String),
    /// Something the protocol rules out happened, or the crypto backend refused a call for a
    /// reason other than its inputs.
    Internal(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Invalid(m) => write!(f, "invalid input: {m}"),
            Error::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl std::error::Error for Error {}

fn invalid(m: impl Into<String>) -> Error {
    Error::Invalid(m.into())
}

/// Maps a crypto error on `what` to a stage error: bad points and lengths are bad input,
/// limits are internal.
fn crypto(what: &'static str) -> impl Fn(CryptoError) -> Error {
    move |e| match e {
        CryptoError::Limit(m) => Error::Internal(format!("{what}: {m}")),
        other => Error::Invalid(format!("{what}: {other:?}")),
    }
}

/// Where noise draws come from: a noiser's `μ + Z ∈ [0, 2μ]` (§5.1).
pub trait NoiseSource {
    /// One draw of `noiser`.
    fn draw(&mut self, noiser: &NoiserOptions) -> Result<u32, Error>;
}

impl<K: Keystream> NoiseSource for Prng<K> {
    fn draw(&mut self, noiser: &NoiserOptions) -> Result<u32, Error> {
        noiser
            .sample(self)
            .map_err(|e| Error::Internal(format!("noise sampler: {e}")))
    }
}

/// Every draw is exactly the offset `μ` (what ε = 40, δ = e^-80 gives with overwhelming
/// probability, §5.2): noise whose effect the baselines remove exactly. For tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct Offsets;

impl NoiseSource for Offsets {
    fn draw(&mut self, noiser: &NoiserOptions) -> Result<u32, Error> {
        Ok(noiser.mu())
    }
}

/// The reach noisers of one computation (§3.1, §4): blinded histogram, noise for publisher
/// noise and global reach DP.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReachNoise {
    /// `GetBlindHistogramNoiser(params, D)`.
    pub blind_histogram: NoiserOptions,
    /// `GetPublisherNoiser(params, S, D)`.
    pub publisher: NoiserOptions,
    /// `GetGlobalReachDpNoiser(params, D)`.
    pub global_reach: NoiserOptions,
}

impl ReachNoise {
    /// `T_reach` noise registers per duchy (§3.1).
    pub fn total(&self, sketches: u32) -> u64 {
        total_reach_noise(
            self.publisher.mu(),
            self.global_reach.mu(),
            self.blind_histogram.mu(),
            sketches,
        )
    }

    /// `T_RO` noise registers per duchy (§4).
    pub fn total_reach_only(&self, sketches: u32) -> u64 {
        total_ro_noise(
            self.publisher.mu(),
            self.global_reach.mu(),
            self.blind_histogram.mu(),
            sketches,
        )
    }
}

/// Number of `len`-byte blocks in `data`, which must be a whole number of them.
pub fn blocks(data: &[u8], len: usize, what: &str) -> Result<usize, Error> {
    if len == 0 || !data.len().is_multiple_of(len) {
        return Err(invalid(format!(
            "{what}: {} bytes is not a whole number of {len}-byte blocks",
            data.len()
        )));
    }
    let n = data.len() / len;
    if n > MAX_ELEMENTS {
        return Err(invalid(format!(
            "{what}: {n} blocks is more than the {MAX_ELEMENTS} a stage accepts"
        )));
    }
    Ok(n)
}

/// Bytes `[offset, offset + len)` of every `block`-byte block, concatenated.
fn gather(data: &[u8], block: usize, offset: usize, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / block * len);
    for b in data.chunks_exact(block) {
        out.extend_from_slice(&b[offset..offset + len]);
    }
    out
}

/// Interleaves parts: block `i` of the output is `parts[0][i] ‖ parts[1][i] ‖ …`, where part
/// `j` has `sizes[j]`-byte elements. All parts have the same number of elements.
fn interleave(parts: &[(&[u8], usize)]) -> Result<Vec<u8>, Error> {
    let Some(&(first, size)) = parts.first() else {
        return Ok(Vec::new());
    };
    let n = first.len() / size.max(1);
    let block: usize = parts.iter().map(|p| p.1).sum();
    if parts.iter().any(|(d, s)| d.len() != n * s) {
        return Err(Error::Internal(
            "interleave: parts of different lengths".into(),
        ));
    }
    let mut out = Vec::with_capacity(n * block);
    for i in 0..n {
        for (d, s) in parts {
            out.extend_from_slice(&d[i * s..(i + 1) * s]);
        }
    }
    Ok(out)
}

/// `count` copies of `item`.
fn repeat(item: &[u8], count: usize) -> Vec<u8> {
    item.repeat(count)
}

fn count_u32(n: usize, what: &str) -> Result<u32, Error> {
    u32::try_from(n).map_err(|_| invalid(format!("{what}: {n} is too many")))
}

/// The points `H(s)` of the constant strings.
fn hashed<C: Crypto>(c: &C, strings: &[&str]) -> Result<Vec<u8>, Error> {
    let messages: Vec<Vec<u8>> = strings.iter().map(|s| s.as_bytes().to_vec()).collect();
    Ok(c.hash_to_curve(&messages)
        .map_err(crypto("hash to curve"))?
        .0)
}

/// `n` uniformly random points `r·G` (the random noise identifiers, see the module docs).
fn random_points<C: Crypto>(c: &C, n: usize) -> Result<Vec<u8>, Error> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let scalars = c
        .random_scalars(count_u32(n, "random points")?)
        .map_err(crypto("random scalars"))?;
    c.fixed_mul(&c.generator(), &scalars)
        .map_err(crypto("random points"))
}

/// The 32-byte big-endian scalar `v` (`v ≥ 1`).
pub fn scalar_of(v: u64) -> [u8; SCALAR_LEN] {
    let mut s = [0u8; SCALAR_LEN];
    s[SCALAR_LEN - 8..].copy_from_slice(&v.to_be_bytes());
    s
}

/// Sorts `block`-byte blocks in `memcmp` order (the shuffle, §2.6).
fn sorted<C: Crypto>(c: &C, data: Vec<u8>, block: usize) -> Result<Vec<u8>, Error> {
    if data.is_empty() {
        return Ok(data);
    }
    c.sort_blocks(&data, count_u32(block, "block")?)
        .map_err(crypto("sort"))
}

// ---- setup (§3.1) -------------------------------------------------------------------------

/// The plaintext points of one duchy's reach noise registers (§3.1 table), three per
/// register (index, key, count), `T_reach` registers in all.
fn reach_noise_points<C: Crypto>(
    c: &C,
    noise: &ReachNoise,
    sketches: u32,
    rng: &mut dyn NoiseSource,
) -> Result<Vec<u8>, Error> {
    let total = usize::try_from(noise.total(sketches))
        .ok()
        .filter(|&t| t <= MAX_ELEMENTS)
        .ok_or_else(|| invalid("reach noise: too many noise registers"))?;
    let constants = hashed(
        c,
        &[
            BLINDED_HISTOGRAM_KEY,
            PUBLISHER_NOISE_ID,
            DESTROYED_REGISTER_KEY,
            PADDING_NOISE_ID,
        ],
    )?;
    let [bh_key, publisher_id, destroyed, padding_id] =
        [0, 1, 2, 3].map(|i| constants[i * POINT_LEN..(i + 1) * POINT_LEN].to_vec());
    // Blinded histogram: for k = 1..S, N_k ids each repeated k times.
    let mut groups = Vec::with_capacity(sketches as usize);
    for k in 1..=sketches {
        groups.push((k, rng.draw(&noise.blind_histogram)? as usize));
    }
    let bh_ids: usize = groups.iter().map(|g| g.1).sum();
    let publisher = rng.draw(&noise.publisher)? as usize;
    let reach = rng.draw(&noise.global_reach)? as usize;
    let bh_registers: usize = groups.iter().map(|&(k, n)| k as usize * n).sum();
    let used = bh_registers + publisher + reach;
    let padding = total
        .checked_sub(used)
        .ok_or_else(|| Error::Internal(format!("{used} noise registers exceed T = {total}")))?;
    // Random points: one per BH id, one key per publisher / padding register, one id per
    // reach register.
    let random = random_points(c, bh_ids + publisher + padding + reach)?;
    let mut random = random.chunks_exact(POINT_LEN);
    let mut next = || {
        random
            .next()
            .ok_or_else(|| Error::Internal("random points ran out".into()))
    };
    let mut points = Vec::with_capacity(total * 3 * POINT_LEN);
    for (k, n) in groups {
        for _ in 0..n {
            let id = next()?;
            for _ in 0..k {
                points.extend_from_slice(id);
                points.extend_from_slice(&bh_key);
                points.extend_from_slice(&bh_key);
            }
        }
    }
    for _ in 0..publisher {
        let key = next()?;
        points.extend_from_slice(&publisher_id);
        points.extend_from_slice(key);
        points.extend_from_slice(key);
    }
    for _ in 0..reach {
        points.extend_from_slice(next()?);
        points.extend_from_slice(&destroyed);
        points.extend_from_slice(&destroyed);
    }
    for _ in 0..padding {
        let key = next()?;
        points.extend_from_slice(&padding_id);
        points.extend_from_slice(key);
        points.extend_from_slice(key);
    }
    Ok(points)
}

/// `DestroyKeysAndCounts` (§3.1 step 1, `MF = 1`): every register's key becomes
/// `Enc(H("destroyed_register_key"))` and its count a random point's encryption.
fn destroy_keys_and_counts<C: Crypto>(
    c: &C,
    y: &C::FixedBase,
    registers: &[u8],
) -> Result<Vec<u8>, Error> {
    let n = blocks(registers, REGISTER_LEN, "requisition registers")?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let destroyed = hashed(c, &[DESTROYED_REGISTER_KEY])?;
    let counts = random_points(c, n)?;
    let plain = interleave(&[(&repeat(&destroyed, n), POINT_LEN), (&counts, POINT_LEN)])?;
    let kc = c.encrypt(y, &plain).map_err(crypto("destroy keys"))?;
    let index = gather(registers, REGISTER_LEN, 0, CIPHERTEXT_LEN);
    interleave(&[(&index, CIPHERTEXT_LEN), (&kc, 2 * CIPHERTEXT_LEN)])
}

/// What a setup phase needs to know about the computation.
#[derive(Debug, Clone, Copy)]
pub struct SetupParams<'a> {
    /// `S`, the number of sketches (requisitions) of the whole computation.
    pub sketches: u32,
    /// `MF` (1 for reach only through LLv2).
    pub maximum_frequency: u32,
    /// The reach noisers, if noise is on.
    pub noise: Option<&'a ReachNoise>,
}

/// LLv2 setup phase (§3.1), at any duchy: this duchy's requisition registers (keys and
/// counts destroyed if `MF = 1`) ‖ `others` (at the aggregator, the non-aggregators' setup
/// outputs) ‖ `T_reach` noise registers, sorted.
pub fn setup<C: Crypto>(
    c: &C,
    y: &C::FixedBase,
    requisitions: &[u8],
    others: &[u8],
    p: &SetupParams<'_>,
    rng: &mut dyn NoiseSource,
) -> Result<Vec<u8>, Error> {
    blocks(requisitions, REGISTER_LEN, "requisition registers")?;
    blocks(others, REGISTER_LEN, "setup inputs")?;
    c.validate(requisitions)
        .map_err(crypto("requisition registers"))?;
    let mut out = if p.maximum_frequency == 1 {
        destroy_keys_and_counts(c, y, requisitions)?
    } else {
        requisitions.to_vec()
    };
    out.extend_from_slice(others);
    if let Some(noise) = p.noise {
        let points = reach_noise_points(c, noise, p.sketches, rng)?;
        out.extend(c.encrypt(y, &points).map_err(crypto("noise registers"))?);
    }
    blocks(&out, REGISTER_LEN, "setup output")?;
    sorted(c, out, REGISTER_LEN)
}

// ---- execution phase one (§3.2) ----------------------------------------------------------

/// Execution phase one at a non-aggregator (§3.2): blinds every index with this duchy's key
/// and one fresh Pohlig–Hellman key, re-randomizes keys and counts under `Y`, sorts.
pub fn execution_one<C: Crypto>(
    c: &C,
    secret: &[u8],
    y: &C::FixedBase,
    crv: &[u8],
) -> Result<Vec<u8>, Error> {
    let n = blocks(crv, REGISTER_LEN, "execution phase one input")?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let k = c.random_scalars(1).map_err(crypto("blinding key"))?;
    let index = gather(crv, REGISTER_LEN, 0, CIPHERTEXT_LEN);
    let kc = gather(crv, REGISTER_LEN, CIPHERTEXT_LEN, 2 * CIPHERTEXT_LEN);
    let index = c.blind(secret, &k, &index).map_err(crypto("blind"))?;
    let kc = c.rerandomize(y, &kc).map_err(crypto("re-randomize"))?;
    let out = interleave(&[(&index, CIPHERTEXT_LEN), (&kc, 2 * CIPHERTEXT_LEN)])?;
    sorted(c, out, REGISTER_LEN)
}

/// Frequency noise (§3.3), for the tuples this duchy adds: when `MF > 1` and frequency
/// noise is on.
#[derive(Debug, Clone, Copy)]
pub struct FrequencyNoise<'a> {
    /// `GetFrequencyNoiser(params, D)`.
    pub noiser: &'a NoiserOptions,
}

/// Execution phase one at the aggregator (§3.2, errata E4): strips the last layer of every
/// index (deterministic blinded index), groups registers by it, drops groups larger than
/// `S`, runs same-key aggregation per group, appends frequency noise tuples and sorts.
#[allow(clippy::too_many_arguments)]
pub fn execution_one_at_aggregator<C: Crypto>(
    c: &C,
    secret: &[u8],
    y: &C::FixedBase,
    crv: &[u8],
    sketches: u32,
    maximum_frequency: u32,
    frequency_noise: Option<FrequencyNoise<'_>>,
    rng: &mut dyn NoiseSource,
) -> Result<Vec<u8>, Error> {
    let n = blocks(crv, REGISTER_LEN, "execution phase one input")?;
    let mut out = if n == 0 {
        Vec::new()
    } else {
        same_key_aggregation(c, secret, y, crv, n, sketches)?
    };
    if maximum_frequency > 1
        && let Some(f) = frequency_noise
    {
        out.extend(frequency_noise_tuples(
            c,
            y,
            y,
            maximum_frequency,
            f.noiser,
            rng,
        )?);
    }
    sorted(c, out, TUPLE_LEN)
}

fn same_key_aggregation<C: Crypto>(
    c: &C,
    secret: &[u8],
    y: &C::FixedBase,
    crv: &[u8],
    n: usize,
    sketches: u32,
) -> Result<Vec<u8>, Error> {
    let index = gather(crv, REGISTER_LEN, 0, CIPHERTEXT_LEN);
    let blinded = c
        .decrypt(secret, &index)
        .map_err(crypto("decrypt blinded indexes"))?;
    drop(index);
    let key_of = |i: usize| &blinded[i * POINT_LEN..(i + 1) * POINT_LEN];
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_unstable_by(|&a, &b| key_of(a).cmp(key_of(b)));
    let mut groups: Vec<&[usize]> = Vec::new();
    let mut start = 0;
    while start < n {
        let mut end = start + 1;
        while end < n && key_of(order[end]) == key_of(order[start]) {
            end += 1;
        }
        // Groups larger than S (publisher noise, padding) are dropped (errata E2).
        if end - start <= sketches as usize {
            groups.push(&order[start..end]);
        }
        start = end;
    }
    // Largest groups first: the members of round t below are then a prefix.
    groups.sort_by_key(|m| std::cmp::Reverse(m.len()));
    let g = groups.len();
    if g == 0 {
        return Ok(Vec::new());
    }
    let key =
        |i: usize| &crv[i * REGISTER_LEN + CIPHERTEXT_LEN..i * REGISTER_LEN + 2 * CIPHERTEXT_LEN];
    let count = |i: usize| &crv[i * REGISTER_LEN + 2 * CIPHERTEXT_LEN..(i + 1) * REGISTER_LEN];
    let k0: Vec<u8> = groups.iter().flat_map(|m| key(m[0]).to_vec()).collect();
    let mut fa = c
        .encrypt_zero(y, count_u32(g, "groups")?)
        .map_err(crypto("encrypt zero"))?;
    let mut cnt: Vec<u8> = groups.iter().flat_map(|m| count(m[0]).to_vec()).collect();
    // Members beyond the first, one round per position: fa += r_i·(K_i − K_0), cnt += C_i.
    let largest = groups.iter().map(|m| m.len()).max().unwrap_or(1);
    for t in 1..largest {
        let members: Vec<usize> = (0..g).take_while(|&j| groups[j].len() > t).collect();
        let ki: Vec<u8> = members
            .iter()
            .flat_map(|&j| key(groups[j][t]).to_vec())
            .collect();
        let k0s: Vec<u8> = members
            .iter()
            .flat_map(|&j| k0[j * CIPHERTEXT_LEN..(j + 1) * CIPHERTEXT_LEN].to_vec())
            .collect();
        let diff = c
            .ciphertext_sub(&ki, &k0s)
            .map_err(crypto("key difference"))?;
        let diff = c.scale_random(&diff).map_err(crypto("destructor"))?;
        let ci: Vec<u8> = members
            .iter()
            .flat_map(|&j| count(groups[j][t]).to_vec())
            .collect();
        let fa_m: Vec<u8> = members
            .iter()
            .flat_map(|&j| fa[j * CIPHERTEXT_LEN..(j + 1) * CIPHERTEXT_LEN].to_vec())
            .collect();
        let cnt_m: Vec<u8> = members
            .iter()
            .flat_map(|&j| cnt[j * CIPHERTEXT_LEN..(j + 1) * CIPHERTEXT_LEN].to_vec())
            .collect();
        let sums = c
            .ciphertext_add(&[fa_m, cnt_m].concat(), &[diff, ci].concat())
            .map_err(crypto("sum"))?;
        let (fa_new, cnt_new) = sums.split_at(members.len() * CIPHERTEXT_LEN);
        for (m, &j) in members.iter().enumerate() {
            let r = m * CIPHERTEXT_LEN..(m + 1) * CIPHERTEXT_LEN;
            let w = j * CIPHERTEXT_LEN..(j + 1) * CIPHERTEXT_LEN;
            fa[w.clone()].copy_from_slice(&fa_new[r.clone()]);
            cnt[w].copy_from_slice(&cnt_new[r]);
        }
    }
    // The two constant encryptions, once per call.
    let constants = c
        .encrypt(
            y,
            &hashed(c, &[DESTROYED_REGISTER_KEY, BLINDED_HISTOGRAM_KEY])?,
        )
        .map_err(crypto("encrypt constants"))?;
    let (e_destroyed, e_bh) = constants.split_at(CIPHERTEXT_LEN);
    let fa_minus_k0 = c.ciphertext_sub(&fa, &k0).map_err(crypto("fa − K0"))?;
    let consts = [repeat(e_destroyed, g), repeat(e_bh, g)].concat();
    let shifted = c
        .ciphertext_add(&consts, &fa_minus_k0.repeat(2))
        .map_err(crypto("flags"))?;
    // cnt += r·fa. For a single-register group fa is a fresh encryption of zero, so r·fa is
    // just another one: re-randomizing the count (two fixed-base multiplications) gives the
    // same distribution as the reference's destructor (two variable-base ones).
    let multi: Vec<usize> = (0..g).filter(|&j| groups[j].len() > 1).collect();
    let fa_multi: Vec<u8> = multi
        .iter()
        .flat_map(|&j| fa[j * CIPHERTEXT_LEN..(j + 1) * CIPHERTEXT_LEN].to_vec())
        .collect();
    // One destructor call for r·fa (larger groups), fb and fc.
    let scaled = c
        .scale_random(&[fa_multi.as_slice(), &shifted].concat())
        .map_err(crypto("destructor"))?;
    let (r_fa, flags_bc) = scaled.split_at(multi.len() * CIPHERTEXT_LEN);
    let (fb, fc) = flags_bc.split_at(g * CIPHERTEXT_LEN);
    let mut cnt = c.rerandomize(y, &cnt).map_err(crypto("count"))?;
    if !multi.is_empty() {
        let cnt_multi: Vec<u8> = multi
            .iter()
            .flat_map(|&j| cnt[j * CIPHERTEXT_LEN..(j + 1) * CIPHERTEXT_LEN].to_vec())
            .collect();
        let sums = c
            .ciphertext_add(&cnt_multi, r_fa)
            .map_err(crypto("count"))?;
        for (m, &j) in multi.iter().enumerate() {
            cnt[j * CIPHERTEXT_LEN..(j + 1) * CIPHERTEXT_LEN]
                .copy_from_slice(&sums[m * CIPHERTEXT_LEN..(m + 1) * CIPHERTEXT_LEN]);
        }
    }
    interleave(&[
        (&fa, CIPHERTEXT_LEN),
        (fb, CIPHERTEXT_LEN),
        (fc, CIPHERTEXT_LEN),
        (&cnt, CIPHERTEXT_LEN),
    ])
}

/// One flag's plaintext in a noise tuple.
enum Flag<'a> {
    Zero,
    Point(&'a [u8]),
}

/// `T_freq = 2·μ_f·(MF + 1)` frequency noise tuples (§3.3), unsorted: flags under `partial`,
/// counts under `y`.
pub fn frequency_noise_tuples<C: Crypto>(
    c: &C,
    partial: &C::FixedBase,
    y: &C::FixedBase,
    maximum_frequency: u32,
    noiser: &NoiserOptions,
    rng: &mut dyn NoiseSource,
) -> Result<Vec<u8>, Error> {
    let total = usize::try_from(total_frequency_noise(noiser.mu(), maximum_frequency))
        .ok()
        .filter(|&t| t <= MAX_ELEMENTS)
        .ok_or_else(|| invalid("frequency noise: too many tuples"))?;
    if total == 0 {
        return Ok(Vec::new());
    }
    let mut per_frequency = Vec::with_capacity(maximum_frequency as usize);
    for _ in 0..maximum_frequency {
        per_frequency.push(rng.draw(noiser)? as usize);
    }
    let destroyed = rng.draw(noiser)? as usize;
    let used = per_frequency.iter().sum::<usize>() + destroyed;
    let padding = total
        .checked_sub(used)
        .ok_or_else(|| Error::Internal(format!("{used} noise tuples exceed T = {total}")))?;
    let p1 = hashed(c, &[UNIT_POINT])?;
    let multiples = c
        .multiples(&p1, maximum_frequency)
        .map_err(crypto("count points"))?;
    let random = random_points(c, 2 * used + 2 * destroyed + padding)?;
    let mut random = random.chunks_exact(POINT_LEN);
    let mut tuples: Vec<([Flag<'_>; 3], &[u8])> = Vec::with_capacity(total);
    let mut take = || {
        random
            .next()
            .ok_or_else(|| Error::Internal("random points ran out".into()))
    };
    for (f, &n) in per_frequency.iter().enumerate() {
        let count = &multiples[f * POINT_LEN..(f + 1) * POINT_LEN];
        for _ in 0..n {
            tuples.push((
                [Flag::Zero, Flag::Point(take()?), Flag::Point(take()?)],
                count,
            ));
        }
    }
    for _ in 0..destroyed {
        tuples.push((
            [
                Flag::Point(take()?),
                Flag::Point(take()?),
                Flag::Point(take()?),
            ],
            take()?,
        ));
    }
    for _ in 0..padding {
        let r = take()?;
        tuples.push(([Flag::Zero, Flag::Zero, Flag::Point(r)], r));
    }
    let zeros = tuples
        .iter()
        .flat_map(|t| t.0.iter())
        .filter(|f| matches!(f, Flag::Zero))
        .count();
    let flag_points: Vec<u8> = tuples
        .iter()
        .flat_map(|t| t.0.iter())
        .filter_map(|f| match f {
            Flag::Point(p) => Some(*p),
            Flag::Zero => None,
        })
        .flatten()
        .copied()
        .collect();
    let count_points: Vec<u8> = tuples.iter().flat_map(|t| t.1.to_vec()).collect();
    let enc_zero = c
        .encrypt_zero(partial, count_u32(zeros, "zero flags")?)
        .map_err(crypto("noise flags"))?;
    let enc_points = c
        .encrypt(partial, &flag_points)
        .map_err(crypto("noise flags"))?;
    let enc_counts = c
        .encrypt(y, &count_points)
        .map_err(crypto("noise counts"))?;
    let (mut z, mut p, mut k) = (
        enc_zero.chunks_exact(CIPHERTEXT_LEN),
        enc_points.chunks_exact(CIPHERTEXT_LEN),
        enc_counts.chunks_exact(CIPHERTEXT_LEN),
    );
    let missing = || Error::Internal("noise ciphertexts ran out".into());
    let mut out = Vec::with_capacity(total * TUPLE_LEN);
    for (flags, _) in &tuples {
        for f in flags {
            let ct = match f {
                Flag::Zero => z.next(),
                Flag::Point(_) => p.next(),
            }
            .ok_or_else(missing)?;
            out.extend_from_slice(ct);
        }
        out.extend_from_slice(k.next().ok_or_else(missing)?);
    }
    Ok(out)
}

// ---- execution phase two (§3.4) ----------------------------------------------------------

/// Execution phase two at a non-aggregator (§3.4): partially decrypts the three flags and
/// re-randomizes them under this duchy's partial key `Y_{>j}` (mandatory, §9 item 10),
/// re-randomizes counts under `Y`, appends this duchy's frequency noise tuples, sorts.
#[allow(clippy::too_many_arguments)]
pub fn execution_two<C: Crypto>(
    c: &C,
    secret: &[u8],
    partial: &C::FixedBase,
    y: &C::FixedBase,
    tuples: &[u8],
    maximum_frequency: u32,
    frequency_noise: Option<FrequencyNoise<'_>>,
    rng: &mut dyn NoiseSource,
) -> Result<Vec<u8>, Error> {
    let n = blocks(tuples, TUPLE_LEN, "execution phase two input")?;
    let mut out = if n == 0 {
        Vec::new()
    } else {
        let flags = gather(tuples, TUPLE_LEN, 0, 3 * CIPHERTEXT_LEN);
        let counts = gather(tuples, TUPLE_LEN, 3 * CIPHERTEXT_LEN, CIPHERTEXT_LEN);
        let flags = c
            .partial_decrypt_rerandomize(secret, partial, &flags)
            .map_err(crypto("partial decrypt flags"))?;
        let counts = c
            .rerandomize(y, &counts)
            .map_err(crypto("re-randomize counts"))?;
        interleave(&[(&flags, 3 * CIPHERTEXT_LEN), (&counts, CIPHERTEXT_LEN)])?
    };
    if maximum_frequency > 1
        && let Some(f) = frequency_noise
    {
        out.extend(frequency_noise_tuples(
            c,
            partial,
            y,
            maximum_frequency,
            f.noiser,
            rng,
        )?);
    }
    sorted(c, out, TUPLE_LEN)
}

/// The aggregator's noise baselines (§5.3), each present only if that noise is on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Baselines {
    /// `D·μ_reach` global reach DP registers.
    pub reach: Option<u64>,
    /// `D·2μ_f·(MF + 1)` frequency noise tuples (reach) — phase two.
    pub frequency_tuples: Option<u64>,
    /// `D·μ_f` per frequency bucket — phase three.
    pub frequency_bucket: Option<u64>,
}

/// What execution phase two at the aggregator found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseTwo {
    /// Active registers after removing the noise baselines, clamped at 0.
    pub active: i64,
    /// Tuples in the input.
    pub tuples: u64,
    /// Tuples whose flags say "one key, not destroyed, not noise" (SKA columns).
    pub valid: u64,
    /// The same-key-aggregator matrix (§3.4 step 5), column-major, `(MF − 1)` elements per
    /// valid tuple; empty when `MF = 1`.
    pub matrix: Vec<u8>,
}

/// Execution phase two at the aggregator (§3.4): zero tests of the flags, the active
/// register count without noise, and the SKA matrix when `MF > 1`.
pub fn execution_two_at_aggregator<C: Crypto>(
    c: &C,
    secret: &[u8],
    y: &C::FixedBase,
    tuples: &[u8],
    maximum_frequency: u32,
    baselines: &Baselines,
) -> Result<PhaseTwo, Error> {
    let n = blocks(tuples, TUPLE_LEN, "execution phase two input")?;
    let flags = gather(tuples, TUPLE_LEN, 0, 3 * CIPHERTEXT_LEN);
    let zero = if n == 0 {
        Vec::new()
    } else {
        c.is_zero(secret, &flags)
            .map_err(crypto("flag zero test"))?
    };
    if zero.len() != 3 * n {
        return Err(Error::Internal(
            "zero test returned the wrong length".into(),
        ));
    }
    let mut valid = Vec::new();
    let mut blinded_histogram = 0u64;
    for i in 0..n {
        let (za, zb, zc) = (zero[3 * i], zero[3 * i + 1], zero[3 * i + 2]);
        if za && !zb && !zc {
            valid.push(i);
        }
        if zc {
            blinded_histogram += 1;
        }
    }
    let active = (n as u64)
        .saturating_sub(blinded_histogram)
        .saturating_sub(baselines.reach.unwrap_or(0))
        .saturating_sub(baselines.frequency_tuples.unwrap_or(0));
    let active = i64::try_from(active).unwrap_or(i64::MAX);
    let mut matrix = Vec::new();
    if maximum_frequency > 1 && !valid.is_empty() {
        let rows = (maximum_frequency - 1) as usize;
        // Element i of a column is r·(cnt + cᵢ·Enc(P1)) with cᵢ = −(i+1): the reference's
        // Destructor(base_i, cnt), base_i = −(i+1)·Enc(P1) (§3.4), in one host call per chunk.
        let e1 = c
            .encrypt(y, &hashed(c, &[UNIT_POINT])?)
            .map_err(crypto("encrypt P1"))?;
        let mut multipliers = Vec::with_capacity(rows * 32);
        for i in 1..=rows as u64 {
            let k = halo_p256::scalar::Scalar::from_u64(i).neg();
            multipliers.extend_from_slice(&k.to_be_bytes());
        }
        let elements = valid.len().saturating_mul(rows);
        if elements > MAX_MATRIX_ELEMENTS {
            return Err(invalid(format!(
                "the frequency matrix would have {} valid tuples × {rows} = {elements} \
                 elements, more than the {MAX_MATRIX_ELEMENTS} a stage can hold",
                valid.len()
            )));
        }
        matrix.reserve_exact(elements * CIPHERTEXT_LEN);
        // Column chunks, so no single call's result is the whole matrix.
        let per_chunk = (MATRIX_CHUNK / rows).max(1);
        for chunk in valid.chunks(per_chunk) {
            let mut counts = Vec::with_capacity(chunk.len() * CIPHERTEXT_LEN);
            for &i in chunk {
                counts.extend_from_slice(
                    &tuples[i * TUPLE_LEN + 3 * CIPHERTEXT_LEN..(i + 1) * TUPLE_LEN],
                );
            }
            matrix.extend(
                c.scale_random_shifted(&counts, &e1, &multipliers)
                    .map_err(crypto("SKA matrix"))?,
            );
        }
    }
    Ok(PhaseTwo {
        active,
        tuples: n as u64,
        valid: valid.len() as u64,
        matrix,
    })
}

// ---- execution phase three (§3.5) ---------------------------------------------------------

/// Execution phase three at a non-aggregator (§3.5): partial decryption, order kept.
pub fn execution_three<C: Crypto>(c: &C, secret: &[u8], matrix: &[u8]) -> Result<Vec<u8>, Error> {
    let n = blocks(matrix, CIPHERTEXT_LEN, "execution phase three input")?;
    if n == 0 {
        return Ok(Vec::new());
    }
    c.partial_decrypt(secret, matrix)
        .map_err(crypto("partial decrypt"))
}

/// Execution phase three at the aggregator (§3.5): the frequency distribution (keys
/// `1..=MF`, `MF` meaning "MF or more"), with the per-bucket baseline removed.
pub fn execution_three_at_aggregator<C: Crypto>(
    c: &C,
    secret: &[u8],
    matrix: &[u8],
    maximum_frequency: u32,
    bucket_baseline: Option<u64>,
) -> Result<BTreeMap<u32, f64>, Error> {
    if maximum_frequency < 2 {
        return Err(invalid("execution phase three needs maximum frequency > 1"));
    }
    let rows = (maximum_frequency - 1) as usize;
    let n = blocks(matrix, CIPHERTEXT_LEN, "execution phase three input")?;
    if !n.is_multiple_of(rows) {
        return Err(invalid(format!(
            "execution phase three input: {n} elements is not a whole number of columns of {rows}"
        )));
    }
    let columns = n / rows;
    let mut hist = vec![0u64; maximum_frequency as usize];
    hist[rows] = columns as u64;
    // Row by row over the columns still open: a column stops at its first zero, as the
    // reference's scan does, so a count c < MF costs c zero tests.
    let mut open: Vec<usize> = (0..columns).collect();
    for row in 0..rows {
        if open.is_empty() {
            break;
        }
        let elements: Vec<u8> = open
            .iter()
            .flat_map(|&col| {
                let at = (col * rows + row) * CIPHERTEXT_LEN;
                matrix[at..at + CIPHERTEXT_LEN].to_vec()
            })
            .collect();
        let zero = c.is_zero(secret, &elements).map_err(crypto("zero test"))?;
        let mut still = Vec::with_capacity(open.len());
        for (&col, z) in open.iter().zip(zero) {
            if z {
                hist[row] += 1;
                hist[rows] -= 1;
            } else {
                still.push(col);
            }
        }
        open = still;
    }
    if let Some(b) = bucket_baseline {
        for h in hist.iter_mut() {
            *h = h.saturating_sub(b);
        }
    }
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return Err(invalid(
            "the frequency histogram is empty after removing the noise baseline",
        ));
    }
    Ok(hist
        .iter()
        .enumerate()
        .filter(|(_, h)| **h > 0)
        .map(|(i, &h)| (i as u32 + 1, h as f64 / total as f64))
        .collect())
}

// ---- reach-only (§4) ------------------------------------------------------------------------

/// Reach-only setup (§4, errata E3), at any duchy: this duchy's requisition registers ‖
/// `others` ‖ `T_RO` noise registers, sorted, followed by one 66-byte "excessive noise"
/// ciphertext: `Enc(E·P1)` for this duchy's `E` blinded-histogram ids (an encryption of the
/// identity when there are none or noise is off), plus, at the aggregator, the received
/// ones (`received`: concatenated 66-byte ciphertexts).
#[allow(clippy::too_many_arguments)]
pub fn ro_setup<C: Crypto>(
    c: &C,
    y: &C::FixedBase,
    requisitions: &[u8],
    others: &[u8],
    received: &[u8],
    sketches: u32,
    noise: Option<&ReachNoise>,
    rng: &mut dyn NoiseSource,
) -> Result<Vec<u8>, Error> {
    blocks(requisitions, RO_REGISTER_LEN, "requisition registers")?;
    blocks(others, RO_REGISTER_LEN, "setup inputs")?;
    blocks(received, CIPHERTEXT_LEN, "noise ciphertexts")?;
    c.validate(requisitions)
        .map_err(crypto("requisition registers"))?;
    let mut out = requisitions.to_vec();
    out.extend_from_slice(others);
    let mut excessive = 0u64;
    if let Some(noise) = noise {
        let total = usize::try_from(noise.total_reach_only(sketches))
            .ok()
            .filter(|&t| t <= MAX_ELEMENTS)
            .ok_or_else(|| invalid("reach noise: too many noise registers"))?;
        let constants = hashed(c, &[PUBLISHER_NOISE_ID, PADDING_NOISE_ID])?;
        let (publisher_id, padding_id) = constants.split_at(POINT_LEN);
        let mut groups = Vec::with_capacity(sketches as usize);
        for k in 1..=sketches {
            groups.push((k as usize, rng.draw(&noise.blind_histogram)? as usize));
        }
        let bh_ids: usize = groups.iter().map(|g| g.1).sum();
        excessive = bh_ids as u64;
        let publisher = rng.draw(&noise.publisher)? as usize + 1;
        let reach = rng.draw(&noise.global_reach)? as usize;
        let used = groups.iter().map(|&(k, n)| k * n).sum::<usize>() + publisher + reach;
        let padding = total
            .checked_sub(used)
            .filter(|&p| p >= 1)
            .ok_or_else(|| Error::Internal(format!("{used} noise registers exceed T = {total}")))?;
        let random = random_points(c, bh_ids + reach)?;
        let mut random = random.chunks_exact(POINT_LEN);
        let mut points = Vec::with_capacity(total * POINT_LEN);
        for (k, n) in groups {
            for _ in 0..n {
                let id = random
                    .next()
                    .ok_or_else(|| Error::Internal("random points ran out".into()))?;
                for _ in 0..k {
                    points.extend_from_slice(id);
                }
            }
        }
        points.extend(publisher_id.repeat(publisher));
        for id in random {
            points.extend_from_slice(id);
        }
        points.extend(padding_id.repeat(padding));
        out.extend(c.encrypt(y, &points).map_err(crypto("noise registers"))?);
    }
    let mut noise_ct = if excessive > 0 {
        let p1 = hashed(c, &[UNIT_POINT])?;
        let point = c
            .mul(&p1, &scalar_of(excessive))
            .map_err(crypto("excessive noise"))?;
        c.encrypt(y, &point).map_err(crypto("excessive noise"))?
    } else {
        c.encrypt_zero(y, 1).map_err(crypto("excessive noise"))?
    };
    for other in received.chunks_exact(CIPHERTEXT_LEN) {
        noise_ct = c
            .ciphertext_add(&noise_ct, other)
            .map_err(crypto("received noise ciphertext"))?;
    }
    let mut out = sorted(c, out, RO_REGISTER_LEN)?;
    out.extend(noise_ct);
    Ok(out)
}

/// Splits a reach-only blob into its registers and the trailing noise ciphertext.
pub fn ro_split(blob: &[u8]) -> Result<(&[u8], &[u8]), Error> {
    if blob.len() < CIPHERTEXT_LEN {
        return Err(invalid(format!(
            "a reach-only blob of {} bytes has no trailing noise ciphertext",
            blob.len()
        )));
    }
    let (crv, noise) = blob.split_at(blob.len() - CIPHERTEXT_LEN);
    blocks(crv, RO_REGISTER_LEN, "reach-only registers")?;
    Ok((crv, noise))
}

/// Reach-only execution at a non-aggregator (§4, errata E3): blinds every register (fresh
/// Pohlig–Hellman key, no re-randomization), partially decrypts the noise ciphertext
/// (keeping `u`), sorts, re-appends it.
pub fn ro_execution<C: Crypto>(c: &C, secret: &[u8], blob: &[u8]) -> Result<Vec<u8>, Error> {
    let (crv, noise) = ro_split(blob)?;
    let noise = c
        .partial_decrypt(secret, noise)
        .map_err(crypto("noise ciphertext"))?;
    let mut out = if crv.is_empty() {
        Vec::new()
    } else {
        let k = c.random_scalars(1).map_err(crypto("blinding key"))?;
        let blinded = c.blind(secret, &k, crv).map_err(crypto("blind"))?;
        sorted(c, blinded, RO_REGISTER_LEN)?
    };
    out.extend(noise);
    Ok(out)
}

/// The reach-only aggregator's parameters (§4).
#[derive(Debug, Clone, Copy)]
pub struct RoAggregation<'a> {
    /// `D`, the number of duchies.
    pub duchies: u32,
    /// `S`, the number of sketches.
    pub sketches: u32,
    /// The reach noisers, if noise is on.
    pub noise: Option<&'a ReachNoise>,
}

/// Reach-only execution at the aggregator (§4): the active register count
/// `U − 2 − E − D·μ_reach` (the last three only with noise), clamped at 0.
pub fn ro_execution_at_aggregator<C: Crypto>(
    c: &C,
    secret: &[u8],
    blob: &[u8],
    p: &RoAggregation<'_>,
) -> Result<i64, Error> {
    let (crv, noise) = ro_split(blob)?;
    let excessive = if c
        .is_zero(secret, noise)
        .map_err(crypto("noise ciphertext"))?
        .first()
        .copied()
        .unwrap_or(true)
    {
        0
    } else {
        let point = c
            .decrypt(secret, noise)
            .map_err(crypto("noise ciphertext"))?;
        let bound = match p.noise {
            Some(n) => 2u64
                .saturating_mul(u64::from(n.blind_histogram.mu()))
                .saturating_mul(u64::from(p.sketches))
                .saturating_mul(u64::from(p.duchies)),
            None => 0,
        };
        let bound = u32::try_from(bound)
            .ok()
            .filter(|&b| (b as usize) <= MAX_ELEMENTS)
            .ok_or_else(|| invalid("excessive noise bound is too large"))?;
        let table = if bound == 0 {
            Vec::new()
        } else {
            c.multiples(&hashed(c, &[UNIT_POINT])?, bound)
                .map_err(crypto("noise table"))?
        };
        let found = table
            .chunks_exact(POINT_LEN)
            .position(|t| t == point.as_slice())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "the excessive noise is not a multiple of P1 up to {bound}"
                ))
            })?;
        found as i64 + 1
    };
    let n = blocks(crv, RO_REGISTER_LEN, "reach-only registers")?;
    let distinct = if n == 0 {
        0
    } else {
        let mut points: Vec<[u8; POINT_LEN]> = c
            .decrypt(secret, crv)
            .map_err(crypto("decrypt registers"))?
            .chunks_exact(POINT_LEN)
            .map(|p| {
                let mut a = [0u8; POINT_LEN];
                a.copy_from_slice(p);
                a
            })
            .collect();
        points.sort_unstable();
        points.dedup();
        points.len() as i64
    };
    let mut active = distinct;
    if let Some(noise) = p.noise {
        active = active
            .saturating_sub(2)
            .saturating_sub(excessive)
            .saturating_sub(i64::from(p.duchies) * i64::from(noise.global_reach.mu()));
    }
    Ok(active.max(0))
}

/// The reach estimate from an active register count (§1.4), as a stage error on bad
/// parameters.
pub fn reach(decay_rate: f64, size: u64, active: i64, width: f32) -> Result<i64, Error> {
    estimator::estimate_reach(decay_rate, size, active, width).map_err(Error::Invalid)
}
