//! The byte-level operations of the `halo:mpc` `crypto` interface (WIT 1.2), one batch at a
//! time on the calling thread. The host splits large batches over its cores and calls these
//! per piece; the plugin SDK calls them directly as its pure-guest implementation. Both give
//! the same bytes.
//!
//! Layouts: points are SEC1 compressed (33 bytes, `02`/`03` ‖ x), scalars 32-byte big-endian
//! integers in `[1, n)`, ElGamal ciphertexts 66 bytes (`u ‖ e`), all concatenated. Errors
//! name the first offending element (lowest index; at equal index, the argument listed
//! first).

use crate::mul::{
    FixedTable, OddTables, SHARED_MIN_SCALARS, Scalars, SharedTables, add_batch, msm_batch,
};
use crate::point::{Affine, POINT_LEN};
use crate::scalar::Scalar;

/// Length of a scalar.
pub const SCALAR_LEN: usize = 32;
/// Length of an ElGamal ciphertext `u ‖ e`.
pub const CIPHERTEXT_LEN: usize = 66;

/// Why an operation refused its input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CryptoError {
    /// An argument's length is not a whole number of elements, or lengths disagree.
    BadLength(String),
    /// Element `index` of `argument` is not a point on P-256 in compressed form.
    InvalidPoint { argument: String, index: u32 },
    /// Element `index` of `argument` is not a scalar in `[1, n)`.
    InvalidScalar { argument: String, index: u32 },
    /// Result element `index` is the identity, which has no encoding.
    Identity { index: u32 },
    /// The request exceeds a limit.
    Limit(String),
}

impl CryptoError {
    /// An element error of a derived argument (`per` derived elements per original one)
    /// renamed to the original `argument` and index.
    pub fn rename(self, argument: &str, per: usize) -> CryptoError {
        let per = u32::try_from(per.max(1)).unwrap_or(u32::MAX);
        match self {
            CryptoError::InvalidPoint { index, .. } => CryptoError::InvalidPoint {
                argument: argument.into(),
                index: index / per,
            },
            CryptoError::InvalidScalar { index, .. } => CryptoError::InvalidScalar {
                argument: argument.into(),
                index: index / per,
            },
            e => e,
        }
    }

    /// The same error for an element `offset` places further on (a piece of a larger batch).
    pub fn shifted(self, offset: usize) -> CryptoError {
        let off = |i: u32| i.saturating_add(u32::try_from(offset).unwrap_or(u32::MAX));
        match self {
            CryptoError::InvalidPoint { argument, index } => CryptoError::InvalidPoint {
                argument,
                index: off(index),
            },
            CryptoError::InvalidScalar { argument, index } => CryptoError::InvalidScalar {
                argument,
                index: off(index),
            },
            CryptoError::Identity { index } => CryptoError::Identity { index: off(index) },
            e => e,
        }
    }
}

impl std::fmt::Display for CryptoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CryptoError::BadLength(m) | CryptoError::Limit(m) => f.write_str(m),
            CryptoError::InvalidPoint { argument, index } => {
                write!(f, "{argument}[{index}] is not a compressed P-256 point")
            }
            CryptoError::InvalidScalar { argument, index } => {
                write!(f, "{argument}[{index}] is not a scalar in [1, n)")
            }
            CryptoError::Identity { index } => {
                write!(f, "result[{index}] is the identity, which has no encoding")
            }
        }
    }
}

impl std::error::Error for CryptoError {}

type Result<T> = std::result::Result<T, CryptoError>;

/// Elements that share one set of per-point tables inside a kernel (about 1 KiB of table per
/// point, so at most about a megabyte of scratch whatever the batch size). Results do not
/// depend on it.
pub const KERNEL_PIECE: usize = 1024;

/// `f` over consecutive ranges of at most [`KERNEL_PIECE`] of `0..n`, outputs concatenated.
fn in_pieces<T>(n: usize, mut f: impl FnMut(std::ops::Range<usize>) -> Vec<T>) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let end = (start + KERNEL_PIECE).min(n);
        out.extend(f(start..end));
        start = end;
    }
    out
}

/// `k·Pᵢ` (one scalar) or `kᵢ·Pᵢ`, in kernel pieces.
fn mul_points(ps: &[Affine], ks: Scalars<'_>) -> Vec<Option<Affine>> {
    in_pieces(ps.len(), |r| {
        let t = OddTables::new(&ps[r.clone()]);
        match ks {
            Scalars::One(k) => msm_batch(&[(&t, Scalars::One(k))]),
            Scalars::Each(v) => msm_batch(&[(&t, Scalars::Each(&v[r]))]),
        }
    })
}

/// Number of `unit`-byte elements in `data`, or a length error naming `argument`.
pub fn count(argument: &str, data: &[u8], unit: usize) -> Result<usize> {
    if !data.len().is_multiple_of(unit) {
        return Err(CryptoError::BadLength(format!(
            "{argument}: {} bytes is not a multiple of {unit}",
            data.len()
        )));
    }
    Ok(data.len() / unit)
}

fn same_count(a: (&str, usize), b: (&str, usize)) -> Result<()> {
    if a.1 != b.1 {
        return Err(CryptoError::BadLength(format!(
            "{} has {} elements but {} has {}",
            a.0, a.1, b.0, b.1
        )));
    }
    Ok(())
}

fn point_at(argument: &str, data: &[u8], i: usize) -> Result<Affine> {
    Affine::decode(&data[i * POINT_LEN..(i + 1) * POINT_LEN]).ok_or_else(|| {
        CryptoError::InvalidPoint {
            argument: argument.into(),
            index: i as u32,
        }
    })
}

fn scalar_at(argument: &str, data: &[u8], i: usize) -> Result<Scalar> {
    let bytes: &[u8; 32] = data[i * SCALAR_LEN..(i + 1) * SCALAR_LEN]
        .try_into()
        .map_err(|_| CryptoError::BadLength(format!("{argument}: short scalar")))?;
    match Scalar::from_be_bytes(bytes) {
        Some(k) if !k.is_zero() => Ok(k),
        _ => Err(CryptoError::InvalidScalar {
            argument: argument.into(),
            index: i as u32,
        }),
    }
}

/// Parses one scalar argument (exactly 32 bytes, in `[1, n)`).
pub fn scalar(argument: &str, data: &[u8]) -> Result<Scalar> {
    if data.len() != SCALAR_LEN {
        return Err(CryptoError::BadLength(format!(
            "{argument}: a scalar is {SCALAR_LEN} bytes, got {}",
            data.len()
        )));
    }
    scalar_at(argument, data, 0)
}

/// Parses one point argument (33 bytes compressed).
pub fn point(argument: &str, data: &[u8]) -> Result<Affine> {
    if data.len() != POINT_LEN {
        return Err(CryptoError::BadLength(format!(
            "{argument}: a point is {POINT_LEN} bytes, got {}",
            data.len()
        )));
    }
    point_at(argument, data, 0)
}

/// Decodes a concatenation of points.
pub fn decode_points(argument: &str, data: &[u8]) -> Result<Vec<Affine>> {
    let n = count(argument, data, POINT_LEN)?;
    (0..n).map(|i| point_at(argument, data, i)).collect()
}

/// Decodes ciphertexts into their `u` and `e` points.
pub fn decode_ciphertexts(argument: &str, data: &[u8]) -> Result<(Vec<Affine>, Vec<Affine>)> {
    let n = count(argument, data, CIPHERTEXT_LEN)?;
    let mut us = Vec::with_capacity(n);
    let mut es = Vec::with_capacity(n);
    for i in 0..n {
        let c = &data[i * CIPHERTEXT_LEN..(i + 1) * CIPHERTEXT_LEN];
        let bad = || CryptoError::InvalidPoint {
            argument: argument.into(),
            index: i as u32,
        };
        us.push(Affine::decode(&c[..POINT_LEN]).ok_or_else(bad)?);
        es.push(Affine::decode(&c[POINT_LEN..]).ok_or_else(bad)?);
    }
    Ok((us, es))
}

/// Decodes a concatenation of scalars.
pub fn decode_scalars(argument: &str, data: &[u8]) -> Result<Vec<Scalar>> {
    let n = count(argument, data, SCALAR_LEN)?;
    (0..n).map(|i| scalar_at(argument, data, i)).collect()
}

/// Encodes results; the first identity is an error.
fn encode_points(points: &[Option<Affine>]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(points.len() * POINT_LEN);
    for (i, p) in points.iter().enumerate() {
        match p {
            Some(p) => out.extend_from_slice(&p.encode()),
            None => return Err(CryptoError::Identity { index: i as u32 }),
        }
    }
    Ok(out)
}

/// Encodes `(u, e)` pairs; the first identity (in either component) is an error.
fn encode_ciphertexts(us: &[Option<Affine>], es: &[Option<Affine>]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(us.len() * CIPHERTEXT_LEN);
    for (i, (u, e)) in us.iter().zip(es).enumerate() {
        match (u, e) {
            (Some(u), Some(e)) => {
                out.extend_from_slice(&u.encode());
                out.extend_from_slice(&e.encode());
            }
            _ => return Err(CryptoError::Identity { index: i as u32 }),
        }
    }
    Ok(out)
}

/// A source of uniformly random bytes (the host's CSPRNG).
pub trait RandomSource {
    fn fill(&mut self, buf: &mut [u8]);
}

impl<F: FnMut(&mut [u8])> RandomSource for F {
    fn fill(&mut self, buf: &mut [u8]) {
        self(buf)
    }
}

/// A uniformly random scalar in `[1, n)` (rejection sampling on 32 random bytes).
pub fn random_scalar(rng: &mut dyn RandomSource) -> Scalar {
    let mut b = [0u8; 32];
    loop {
        rng.fill(&mut b);
        if let Some(k) = Scalar::from_be_bytes(&b)
            && !k.is_zero()
        {
            return k;
        }
    }
}

fn random_scalars_vec(n: usize, rng: &mut dyn RandomSource) -> Vec<Scalar> {
    (0..n).map(|_| random_scalar(rng)).collect()
}

/// `count` random scalars in `[1, n)`, concatenated.
pub fn random_scalars(count: usize, rng: &mut dyn RandomSource) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * SCALAR_LEN);
    for _ in 0..count {
        out.extend_from_slice(&random_scalar(rng).to_be_bytes());
    }
    out
}

/// Checks that every element is a valid compressed point.
pub fn validate_points(points: &[u8]) -> Result<()> {
    let n = count("points", points, POINT_LEN)?;
    for i in 0..n {
        point_at("points", points, i)?;
    }
    Ok(())
}

/// A 33-byte compressed or 65-byte uncompressed point, compressed.
pub fn compress(point: &[u8]) -> Result<Vec<u8>> {
    match point.len() {
        33 | 65 => Affine::decode(point)
            .map(|p| p.encode().to_vec())
            .ok_or_else(|| CryptoError::InvalidPoint {
                argument: "point".into(),
                index: 0,
            }),
        n => Err(CryptoError::BadLength(format!(
            "point: a point is 33 (compressed) or 65 (uncompressed) bytes, got {n}"
        ))),
    }
}

/// `k·Pᵢ` for every point.
pub fn mul(points: &[u8], scalar_bytes: &[u8]) -> Result<Vec<u8>> {
    let k = scalar("scalar", scalar_bytes)?;
    let ps = decode_points("points", points)?;
    encode_points(&mul_points(&ps, Scalars::One(&k)))
}

/// `kᵢ·Pᵢ` for every pair.
pub fn mul_each(points: &[u8], scalars: &[u8]) -> Result<Vec<u8>> {
    let n = count("points", points, POINT_LEN)?;
    let m = count("scalars", scalars, SCALAR_LEN)?;
    same_count(("points", n), ("scalars", m))?;
    let mut ps = Vec::with_capacity(n);
    let mut ks = Vec::with_capacity(n);
    for i in 0..n {
        ps.push(point_at("points", points, i)?);
        ks.push(scalar_at("scalars", scalars, i)?);
    }
    encode_points(&mul_points(&ps, Scalars::Each(&ks)))
}

/// `kᵢ·B` for every scalar, `B` the table's point.
pub fn mul_fixed(table: &FixedTable, scalars: &[u8]) -> Result<Vec<u8>> {
    let ks = decode_scalars("scalars", scalars)?;
    encode_points(&table.mul_batch(&ks))
}

fn pairwise(a: &[u8], b: &[u8], sub: bool) -> Result<Vec<u8>> {
    let n = count("a", a, POINT_LEN)?;
    let m = count("b", b, POINT_LEN)?;
    same_count(("a", n), ("b", m))?;
    let mut xs = Vec::with_capacity(n);
    let mut ys = Vec::with_capacity(n);
    for i in 0..n {
        xs.push(point_at("a", a, i)?);
        let q = point_at("b", b, i)?;
        ys.push(if sub { q.neg() } else { q });
    }
    encode_points(&add_batch(&xs, &ys))
}

/// `aᵢ + bᵢ`.
pub fn add(a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
    pairwise(a, b, false)
}

/// `aᵢ − bᵢ`.
pub fn sub(a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
    pairwise(a, b, true)
}

/// `−Pᵢ`.
pub fn negate(points: &[u8]) -> Result<Vec<u8>> {
    let ps = decode_points("points", points)?;
    let mut out = Vec::with_capacity(points.len());
    for p in ps {
        out.extend_from_slice(&p.neg().encode());
    }
    Ok(out)
}

/// `[1·P, 2·P, …, count·P]`.
pub fn multiples(point_bytes: &[u8], count: usize) -> Result<Vec<u8>> {
    multiples_from(point_bytes, 1, count)
}

/// `[first·P, (first+1)·P, …]`, `count` points (`first ≥ 1`; a piece of [`multiples`]).
pub fn multiples_from(point_bytes: &[u8], first: u64, count: usize) -> Result<Vec<u8>> {
    let p = point("point", point_bytes)?;
    let mut jac = Vec::with_capacity(count);
    let mut acc = crate::mul::mul_var(&p, &Scalar::from_u64(first));
    for i in 0..count {
        if i > 0 {
            acc = acc.add_affine(&p);
        }
        jac.push(acc);
    }
    encode_points(&crate::point::normalize_batch(&jac))
}

/// `(H(mᵢ), triesᵢ)` for every message (spec §2.3).
pub fn hash_to_curve(messages: &[impl AsRef<[u8]>]) -> (Vec<u8>, Vec<u32>) {
    let mut points = Vec::with_capacity(messages.len() * POINT_LEN);
    let mut tries = Vec::with_capacity(messages.len());
    for m in messages {
        let (p, t) = crate::h2c::hash_to_curve(m.as_ref());
        points.extend_from_slice(&p.encode());
        tries.push(t);
    }
    (points, tries)
}

/// The ElGamal public key `Y` (and the generator's table `G`) used by encryptions.
pub struct ElGamalKey<'a> {
    pub generator: &'a FixedTable,
    pub key: &'a FixedTable,
}

impl ElGamalKey<'_> {
    /// `(rᵢ·G, rᵢ·Y)` for fresh `rᵢ`.
    fn zeros(
        &self,
        n: usize,
        rng: &mut dyn RandomSource,
    ) -> (Vec<Option<Affine>>, Vec<Option<Affine>>) {
        let rs = random_scalars_vec(n, rng);
        (self.generator.mul_batch(&rs), self.key.mul_batch(&rs))
    }
}

fn unwrap_all(v: Vec<Option<Affine>>) -> Result<Vec<Affine>> {
    v.into_iter()
        .enumerate()
        .map(|(i, p)| p.ok_or(CryptoError::Identity { index: i as u32 }))
        .collect()
}

/// `Enc_Y(Mᵢ) = (r·G, Mᵢ + r·Y)` for every plaintext point.
pub fn encrypt(
    key: &ElGamalKey<'_>,
    plaintexts: &[u8],
    rng: &mut dyn RandomSource,
) -> Result<Vec<u8>> {
    let ms = decode_points("plaintexts", plaintexts)?;
    let (rg, ry) = key.zeros(ms.len(), rng);
    let ry = unwrap_all(ry)?;
    encode_ciphertexts(&rg, &add_batch(&ms, &ry))
}

/// `count` encryptions of the identity, `(r·G, r·Y)`.
pub fn encrypt_zero(
    key: &ElGamalKey<'_>,
    count: usize,
    rng: &mut dyn RandomSource,
) -> Result<Vec<u8>> {
    let (rg, ry) = key.zeros(count, rng);
    encode_ciphertexts(&rg, &ry)
}

/// `(u + r·G, e + r·Y)` for every ciphertext.
pub fn rerandomize(
    key: &ElGamalKey<'_>,
    ciphertexts: &[u8],
    rng: &mut dyn RandomSource,
) -> Result<Vec<u8>> {
    let (us, es) = decode_ciphertexts("ciphertexts", ciphertexts)?;
    let (rg, ry) = key.zeros(us.len(), rng);
    let (rg, ry) = (unwrap_all(rg)?, unwrap_all(ry)?);
    encode_ciphertexts(&add_batch(&us, &rg), &add_batch(&es, &ry))
}

/// `eᵢ − x·uᵢ` for every ciphertext (affine; `None` = the identity).
fn strip_layer(secret: &Scalar, us: &[Affine], es: &[Affine]) -> Vec<Option<Affine>> {
    let neg_x = secret.neg();
    let xu = mul_points(us, Scalars::One(&neg_x));
    // x·u is never the identity for x in [1, n).
    let xu: Vec<Affine> = xu
        .into_iter()
        .map(|p| p.unwrap_or(Affine::generator()))
        .collect();
    add_batch(es, &xu)
}

/// `eᵢ − x·uᵢ` (the plaintext point under the last key layer); an identity is an error.
pub fn decrypt(secret: &[u8], ciphertexts: &[u8]) -> Result<Vec<u8>> {
    let x = scalar("secret", secret)?;
    let (us, es) = decode_ciphertexts("ciphertexts", ciphertexts)?;
    encode_points(&strip_layer(&x, &us, &es))
}

/// Whether `eᵢ − x·uᵢ` is the identity, for every ciphertext (nothing is encoded).
pub fn is_zero(secret: &[u8], ciphertexts: &[u8]) -> Result<Vec<bool>> {
    let x = scalar("secret", secret)?;
    let (us, es) = decode_ciphertexts("ciphertexts", ciphertexts)?;
    let t = OddTables::new(&us);
    let xu = msm_batch(&[(&t, Scalars::One(&x))]);
    Ok(xu
        .iter()
        .zip(&es)
        .map(|(p, e)| p.as_ref() == Some(e))
        .collect())
}

/// `(uᵢ, eᵢ − x·uᵢ)`: removes this duchy's layer and keeps `u`.
pub fn partial_decrypt(secret: &[u8], ciphertexts: &[u8]) -> Result<Vec<u8>> {
    let x = scalar("secret", secret)?;
    let (us, es) = decode_ciphertexts("ciphertexts", ciphertexts)?;
    let stripped = strip_layer(&x, &us, &es);
    let mut out = Vec::with_capacity(ciphertexts.len());
    for (i, (c, e)) in ciphertexts
        .chunks_exact(CIPHERTEXT_LEN)
        .zip(&stripped)
        .enumerate()
    {
        let e = e.ok_or(CryptoError::Identity { index: i as u32 })?;
        out.extend_from_slice(&c[..POINT_LEN]);
        out.extend_from_slice(&e.encode());
    }
    Ok(out)
}

/// `(uᵢ + r·G, eᵢ − x·uᵢ + r·Y)`: removes this duchy's layer keeping `u`, then re-randomizes
/// under `Y` (the partially combined key of the remaining duchies).
pub fn partial_decrypt_rerandomize(
    secret: &[u8],
    key: &ElGamalKey<'_>,
    ciphertexts: &[u8],
    rng: &mut dyn RandomSource,
) -> Result<Vec<u8>> {
    let x = scalar("secret", secret)?;
    let (us, es) = decode_ciphertexts("ciphertexts", ciphertexts)?;
    let stripped = strip_layer(&x, &us, &es);
    let (rg, ry) = key.zeros(us.len(), rng);
    let (rg, ry) = (unwrap_all(rg)?, unwrap_all(ry)?);
    // A layer that decrypts to the identity (an encryption of zero under the remaining keys)
    // is a valid input: its re-randomization is (u + r·G, r·Y).
    let base: Vec<Affine> = stripped
        .iter()
        .zip(&ry)
        .map(|(s, r)| s.unwrap_or(*r))
        .collect();
    let mut e = add_batch(&base, &ry);
    for ((out, s), r) in e.iter_mut().zip(&stripped).zip(&ry) {
        if s.is_none() {
            *out = Some(*r);
        }
    }
    encode_ciphertexts(&add_batch(&us, &rg), &e)
}

/// Pohlig–Hellman blinding `(k·uᵢ, k·(eᵢ − x·uᵢ))`: removes this duchy's layer and raises
/// both components to `k`. Computed as `k·u` and `k·e + (−k·x)·u` with shared doublings.
pub fn blind(secret: &[u8], key: &[u8], ciphertexts: &[u8]) -> Result<Vec<u8>> {
    let x = scalar("secret", secret)?;
    let k = scalar("blinding-key", key)?;
    let (us, es) = decode_ciphertexts("ciphertexts", ciphertexts)?;
    let c = k.mul(&x).neg();
    let mut ku = Vec::with_capacity(us.len());
    let ke = in_pieces(us.len(), |r| {
        let tu = OddTables::new(&us[r.clone()]);
        let te = OddTables::new(&es[r]);
        ku.extend(msm_batch(&[(&tu, Scalars::One(&k))]));
        msm_batch(&[(&te, Scalars::One(&k)), (&tu, Scalars::One(&c))])
    });
    encode_ciphertexts(&ku, &ke)
}

fn scale_with(ciphertexts: &[u8], ks: Scalars<'_>) -> Result<Vec<u8>> {
    let (us, es) = decode_ciphertexts("ciphertexts", ciphertexts)?;
    encode_ciphertexts(&mul_points(&us, ks), &mul_points(&es, ks))
}

/// `(k·uᵢ, k·eᵢ)` for one scalar `k`.
pub fn scale(ciphertexts: &[u8], scalar_bytes: &[u8]) -> Result<Vec<u8>> {
    let k = scalar("scalar", scalar_bytes)?;
    scale_with(ciphertexts, Scalars::One(&k))
}

/// `(rᵢ·uᵢ, rᵢ·eᵢ)` for a fresh random `rᵢ` per ciphertext (the reference's "destructor").
pub fn scale_random(ciphertexts: &[u8], rng: &mut dyn RandomSource) -> Result<Vec<u8>> {
    let n = count("ciphertexts", ciphertexts, CIPHERTEXT_LEN)?;
    let rs = random_scalars_vec(n, rng);
    scale_with(ciphertexts, Scalars::Each(&rs))
}

/// Most multipliers one [`scale_random_shifted`] call takes (Liquid Legions needs
/// `MF − 1 ≤ 999`); more is a `limit` error, so one ciphertext's results stay a bounded batch.
pub const MAX_SHIFT_MULTIPLIERS: usize = 4096;
/// Results [`scale_random_shifted`] computes in one batch (whole ciphertexts, at least one, at
/// most 128): the scratch is about 1.3 KiB a result plus 65 KiB of tables a ciphertext.
const SHIFTED_BATCH: usize = 1024;

/// The checks of [`scale_random_shifted`] before any element: the shift (length, then
/// points), the lengths of `ciphertexts` and `multipliers`, the multiplier cap. Returns
/// `(n, m)`. The host runs the same checks before splitting a call.
pub fn shifted_preflight(
    ciphertexts: &[u8],
    shift: &[u8],
    multipliers: &[u8],
) -> Result<(usize, usize)> {
    if shift.len() != CIPHERTEXT_LEN {
        return Err(CryptoError::BadLength(format!(
            "shift: a ciphertext is {CIPHERTEXT_LEN} bytes, got {}",
            shift.len()
        )));
    }
    decode_ciphertexts("shift", shift)?;
    let n = count("ciphertexts", ciphertexts, CIPHERTEXT_LEN)?;
    let m = count("multipliers", multipliers, SCALAR_LEN)?;
    if m > MAX_SHIFT_MULTIPLIERS {
        return Err(CryptoError::Limit(format!(
            "{m} multipliers in one call; at most {MAX_SHIFT_MULTIPLIERS}"
        )));
    }
    Ok((n, m))
}

/// The decoded ciphertexts (`u`s, `e`s) and multipliers of [`scale_random_shifted`].
type ShiftedElements = ((Vec<Affine>, Vec<Affine>), Vec<Scalar>);

/// The lowest bad element of `ciphertexts` and `multipliers` (at equal index, the
/// ciphertext), checking ciphertexts only up to the first bad multiplier.
fn shifted_elements(ciphertexts: &[u8], multipliers: &[u8]) -> Result<ShiftedElements> {
    match decode_scalars("multipliers", multipliers) {
        Ok(cs) => Ok((decode_ciphertexts("ciphertexts", ciphertexts)?, cs)),
        Err(bad) => {
            let j = match &bad {
                CryptoError::InvalidScalar { index, .. } => *index as usize,
                _ => 0,
            };
            let upto = (ciphertexts.len() / CIPHERTEXT_LEN).min(j.saturating_add(1));
            decode_ciphertexts("ciphertexts", &ciphertexts[..upto * CIPHERTEXT_LEN])?;
            Err(bad)
        }
    }
}

/// `a + b` for paired results, `None` where either is missing or the sum is the identity.
fn add_options(a: &[Option<Affine>], b: &[Option<Affine>]) -> Vec<Option<Affine>> {
    if a.iter().chain(b).all(Option::is_some) {
        let a: Vec<Affine> = a.iter().flatten().copied().collect();
        let b: Vec<Affine> = b.iter().flatten().copied().collect();
        return add_batch(&a, &b);
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| match (x, y) {
            (Some(x), Some(y)) => x.to_jacobian().add_affine(y).to_affine(),
            (Some(p), None) | (None, Some(p)) => Some(*p),
            (None, None) => None,
        })
        .collect()
}

/// For every ciphertext `Cᵢ` and every multiplier `cⱼ`: `rᵢⱼ·(Cᵢ + cⱼ·D)` with a fresh random
/// `rᵢⱼ` (`D` = `shift`), `m` results per ciphertext in multiplier order, ciphertext after
/// ciphertext. With `D = Enc(P1)` and `cⱼ = −(j+1)` this is the reference's same-key
/// aggregator matrix (spec §3.4: `Destructor(base_j, cnt)`, `base_j = −(j+1)·Enc(P1)`), computed
/// as `rᵢⱼ·Cᵢ + (rᵢⱼ·cⱼ)·D`: each `Cᵢ`'s points get one table for all their `m`
/// multiplications and `D`'s points one fixed-base table for the call. Errors, in this order:
/// `shift` (length, then points), the lengths of `ciphertexts` and `multipliers`, more than
/// [`MAX_SHIFT_MULTIPLIERS`] multipliers (`limit`), then the lowest bad element of
/// `ciphertexts` and `multipliers` (at equal index, `ciphertexts`); an `identity` error names
/// the result element `i·m + j`.
pub fn scale_random_shifted(
    ciphertexts: &[u8],
    shift: &[u8],
    multipliers: &[u8],
    rng: &mut dyn RandomSource,
) -> Result<Vec<u8>> {
    shifted_preflight(ciphertexts, shift, multipliers)?;
    let (du, de) = decode_ciphertexts("shift", shift)?;
    let ((us, es), cs) = shifted_elements(ciphertexts, multipliers)?;
    let (n, m) = (us.len(), cs.len());
    if n == 0 || m == 0 {
        return Ok(Vec::new());
    }
    let (tu, te) = (FixedTable::new(&du[0]), FixedTable::new(&de[0]));
    let mut out = Vec::with_capacity(n * m * CIPHERTEXT_LEN);
    let columns = (SHIFTED_BATCH / m).clamp(1, 128);
    let mut start = 0;
    while start < n {
        let end = (start + columns).min(n);
        let len = end - start;
        // Element e = i·m + j of this piece: r and t = r·cⱼ.
        let rs = random_scalars_vec(len * m, rng);
        let ts: Vec<Scalar> = rs
            .iter()
            .enumerate()
            .map(|(e, r)| r.mul(&cs[e % m]))
            .collect();
        let (ru, re) = if m >= SHARED_MIN_SCALARS {
            let mut points = Vec::with_capacity(2 * len);
            points.extend_from_slice(&us[start..end]);
            points.extend_from_slice(&es[start..end]);
            let tables = SharedTables::new(&points);
            let mut ks = Vec::with_capacity(2 * len * m);
            ks.extend_from_slice(&rs);
            ks.extend_from_slice(&rs);
            let mut all = tables.mul_rows(m, &ks);
            let re = all.split_off(len * m);
            (all, re)
        } else {
            let rep = |ps: &[Affine]| -> Vec<Affine> {
                ps.iter().flat_map(|p| std::iter::repeat_n(*p, m)).collect()
            };
            (
                mul_points(&rep(&us[start..end]), Scalars::Each(&rs)),
                mul_points(&rep(&es[start..end]), Scalars::Each(&rs)),
            )
        };
        let su = add_options(&ru, &tu.mul_batch(&ts));
        let se = add_options(&re, &te.mul_batch(&ts));
        out.extend(encode_ciphertexts(&su, &se).map_err(|e| e.shifted(start * m))?);
        start = end;
    }
    Ok(out)
}

fn ct_pairwise(a: &[u8], b: &[u8], sub: bool) -> Result<Vec<u8>> {
    let n = count("a", a, CIPHERTEXT_LEN)?;
    let m = count("b", b, CIPHERTEXT_LEN)?;
    same_count(("a", n), ("b", m))?;
    let mut au = Vec::with_capacity(n);
    let mut ae = Vec::with_capacity(n);
    let mut bu = Vec::with_capacity(n);
    let mut be = Vec::with_capacity(n);
    for i in 0..n {
        let ca = &a[i * CIPHERTEXT_LEN..(i + 1) * CIPHERTEXT_LEN];
        let cb = &b[i * CIPHERTEXT_LEN..(i + 1) * CIPHERTEXT_LEN];
        let bad = |arg: &str| CryptoError::InvalidPoint {
            argument: arg.into(),
            index: i as u32,
        };
        au.push(Affine::decode(&ca[..POINT_LEN]).ok_or_else(|| bad("a"))?);
        ae.push(Affine::decode(&ca[POINT_LEN..]).ok_or_else(|| bad("a"))?);
        let (u, e) = (
            Affine::decode(&cb[..POINT_LEN]).ok_or_else(|| bad("b"))?,
            Affine::decode(&cb[POINT_LEN..]).ok_or_else(|| bad("b"))?,
        );
        bu.push(if sub { u.neg() } else { u });
        be.push(if sub { e.neg() } else { e });
    }
    encode_ciphertexts(&add_batch(&au, &bu), &add_batch(&ae, &be))
}

/// `aᵢ + bᵢ` component-wise (the encryption of the sum of the plaintexts).
pub fn ciphertext_add(a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
    ct_pairwise(a, b, false)
}

/// `aᵢ − bᵢ` component-wise.
pub fn ciphertext_sub(a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
    ct_pairwise(a, b, true)
}

/// Sorts fixed-size records by `memcmp` order (spec §2.6).
pub fn sort_blocks(data: &[u8], block: usize) -> Result<Vec<u8>> {
    if block == 0 {
        return Err(CryptoError::BadLength(
            "block size must be at least 1".into(),
        ));
    }
    let n = count("data", data, block)?;
    let mut order = block_order(n)?;
    order.sort_unstable_by(|&a, &b| block_at(data, block, a).cmp(block_at(data, block, b)));
    Ok(gather_blocks(data, block, &order))
}

/// `0..n` as `u32` indices (4 bytes per record of scratch), refusing more than `u32::MAX`.
pub fn block_order(n: usize) -> Result<Vec<u32>> {
    let n = u32::try_from(n)
        .map_err(|_| CryptoError::Limit(format!("{n} records is more than one call takes")))?;
    Ok((0..n).collect())
}

/// Record `i` of `data`.
pub fn block_at(data: &[u8], block: usize, i: u32) -> &[u8] {
    let i = i as usize;
    &data[i * block..(i + 1) * block]
}

/// The records of `data` in `order`.
pub fn gather_blocks(data: &[u8], block: usize, order: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    for &i in order {
        out.extend_from_slice(block_at(data, block, i));
    }
    out
}
