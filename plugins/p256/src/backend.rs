//! The P-256 operations of the `halo:mpc@1.2`/`1.3` `crypto` import behind one trait, [`Crypto`],
//! with [`Pure`], this crate's implementation in the calling thread. The plugin SDK adds the
//! host's import (`halo_plugin_sdk::p256::Host`); protocol code written against [`Crypto`]
//! runs inside a plugin on the host's import and natively (the data-provider simulator,
//! benchmarks, tests) on [`Pure`].
//!
//! Layouts: points 33 bytes (SEC1 compressed), scalars 32 bytes big-endian in `[1, n)`,
//! ciphertexts 66 bytes `u ‖ e`, all concatenated; see the WIT for every function's exact
//! semantics.

use core::marker::PhantomData;

pub use crate::ops::{CIPHERTEXT_LEN, CryptoError, RandomSource, SCALAR_LEN};
pub use crate::point::POINT_LEN;

/// A result of the P-256 operations.
pub type Result<T> = core::result::Result<T, CryptoError>;

/// The `crypto` interface's P-256 operations (WIT 1.2, and 1.3's shifted destructor). `Self::FixedBase` is a point with a
/// precomputed multiplication table.
pub trait Crypto {
    /// A point with a precomputed multiplication table.
    type FixedBase;
    fn generator(&self) -> Self::FixedBase;
    fn register(&self, point: &[u8]) -> Result<Self::FixedBase>;
    fn fixed_point(&self, base: &Self::FixedBase) -> Vec<u8>;
    fn fixed_mul(&self, base: &Self::FixedBase, scalars: &[u8]) -> Result<Vec<u8>>;
    fn validate(&self, points: &[u8]) -> Result<()>;
    fn compress(&self, point: &[u8]) -> Result<Vec<u8>>;
    fn mul(&self, points: &[u8], scalar: &[u8]) -> Result<Vec<u8>>;
    fn mul_each(&self, points: &[u8], scalars: &[u8]) -> Result<Vec<u8>>;
    fn add(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>>;
    fn sub(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>>;
    fn negate(&self, points: &[u8]) -> Result<Vec<u8>>;
    fn multiples(&self, point: &[u8], count: u32) -> Result<Vec<u8>>;
    /// Points (33 bytes each) and `tries` of every message.
    fn hash_to_curve(&self, messages: &[Vec<u8>]) -> Result<(Vec<u8>, Vec<u32>)>;
    fn random_scalars(&self, count: u32) -> Result<Vec<u8>>;
    fn encrypt(&self, key: &Self::FixedBase, plaintexts: &[u8]) -> Result<Vec<u8>>;
    fn encrypt_zero(&self, key: &Self::FixedBase, count: u32) -> Result<Vec<u8>>;
    fn rerandomize(&self, key: &Self::FixedBase, ciphertexts: &[u8]) -> Result<Vec<u8>>;
    fn decrypt(&self, secret: &[u8], ciphertexts: &[u8]) -> Result<Vec<u8>>;
    fn is_zero(&self, secret: &[u8], ciphertexts: &[u8]) -> Result<Vec<bool>>;
    fn partial_decrypt(&self, secret: &[u8], ciphertexts: &[u8]) -> Result<Vec<u8>>;
    fn partial_decrypt_rerandomize(
        &self,
        secret: &[u8],
        key: &Self::FixedBase,
        ciphertexts: &[u8],
    ) -> Result<Vec<u8>>;
    fn blind(&self, secret: &[u8], blinding_key: &[u8], ciphertexts: &[u8]) -> Result<Vec<u8>>;
    fn scale(&self, ciphertexts: &[u8], scalar: &[u8]) -> Result<Vec<u8>>;
    fn scale_random(&self, ciphertexts: &[u8]) -> Result<Vec<u8>>;
    /// `rᵢⱼ·(Cᵢ + cⱼ·D)` for every ciphertext and multiplier, fresh `rᵢⱼ` each (WIT 1.3
    /// `elgamal-scale-random-shifted`; see [`crate::ops::scale_random_shifted`]).
    fn scale_random_shifted(
        &self,
        ciphertexts: &[u8],
        shift: &[u8],
        multipliers: &[u8],
    ) -> Result<Vec<u8>>;
    fn ciphertext_add(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>>;
    fn ciphertext_sub(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>>;
    fn sort_blocks(&self, data: &[u8], block_size: u32) -> Result<Vec<u8>>;
}

/// This crate's implementation, computed in the calling thread; `R::default()` is a fresh
/// source of random bytes for each randomized call.
pub struct Pure<R>(PhantomData<fn() -> R>);

impl<R> Pure<R> {
    /// The implementation (no state: tables are cached per process).
    pub const fn new() -> Self {
        Pure(PhantomData)
    }
}

impl<R> Default for Pure<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R> Clone for Pure<R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for Pure<R> {}

impl<R> core::fmt::Debug for Pure<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Pure")
    }
}

type Table = std::sync::Arc<crate::mul::FixedTable>;

fn generator_table() -> Table {
    static G: std::sync::OnceLock<Table> = std::sync::OnceLock::new();
    G.get_or_init(|| {
        std::sync::Arc::new(crate::mul::FixedTable::new(
            &crate::point::Affine::generator(),
        ))
    })
    .clone()
}

impl<R> Pure<R> {
    fn key<'a>(g: &'a Table, y: &'a Table) -> crate::ops::ElGamalKey<'a> {
        crate::ops::ElGamalKey {
            generator: g,
            key: y,
        }
    }
}

impl<R: RandomSource + Default> Crypto for Pure<R> {
    type FixedBase = Table;

    fn generator(&self) -> Table {
        generator_table()
    }
    fn register(&self, point: &[u8]) -> Result<Table> {
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex, OnceLock};
        // Tables registered by this instance (one stage call): registering the same point
        // again reuses its table. At most a few are kept.
        static TABLES: OnceLock<Mutex<HashMap<Vec<u8>, Table>>> = OnceLock::new();
        let p = crate::ops::point("point", point)?;
        if p == crate::point::Affine::generator() {
            return Ok(generator_table());
        }
        let tables = TABLES.get_or_init(|| Mutex::new(HashMap::new()));
        let mut tables = tables.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tables.get(point) {
            return Ok(t.clone());
        }
        let t = Arc::new(crate::mul::FixedTable::new(&p));
        if tables.len() >= 16 {
            tables.clear();
        }
        tables.insert(point.to_vec(), t.clone());
        Ok(t)
    }
    fn fixed_point(&self, base: &Table) -> Vec<u8> {
        base.base().encode().to_vec()
    }
    fn fixed_mul(&self, base: &Table, scalars: &[u8]) -> Result<Vec<u8>> {
        crate::ops::mul_fixed(base, scalars)
    }
    fn validate(&self, points: &[u8]) -> Result<()> {
        crate::ops::validate_points(points)
    }
    fn compress(&self, point: &[u8]) -> Result<Vec<u8>> {
        crate::ops::compress(point)
    }
    fn mul(&self, points: &[u8], scalar: &[u8]) -> Result<Vec<u8>> {
        crate::ops::mul(points, scalar)
    }
    fn mul_each(&self, points: &[u8], scalars: &[u8]) -> Result<Vec<u8>> {
        crate::ops::mul_each(points, scalars)
    }
    fn add(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
        crate::ops::add(a, b)
    }
    fn sub(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
        crate::ops::sub(a, b)
    }
    fn negate(&self, points: &[u8]) -> Result<Vec<u8>> {
        crate::ops::negate(points)
    }
    fn multiples(&self, point: &[u8], count: u32) -> Result<Vec<u8>> {
        crate::ops::multiples(point, count as usize)
    }
    fn hash_to_curve(&self, messages: &[Vec<u8>]) -> Result<(Vec<u8>, Vec<u32>)> {
        Ok(crate::ops::hash_to_curve(messages))
    }
    fn random_scalars(&self, count: u32) -> Result<Vec<u8>> {
        Ok(crate::ops::random_scalars(
            count as usize,
            &mut R::default(),
        ))
    }
    fn encrypt(&self, key: &Table, plaintexts: &[u8]) -> Result<Vec<u8>> {
        let g = generator_table();
        crate::ops::encrypt(&Self::key(&g, key), plaintexts, &mut R::default())
    }
    fn encrypt_zero(&self, key: &Table, count: u32) -> Result<Vec<u8>> {
        let g = generator_table();
        crate::ops::encrypt_zero(&Self::key(&g, key), count as usize, &mut R::default())
    }
    fn rerandomize(&self, key: &Table, ciphertexts: &[u8]) -> Result<Vec<u8>> {
        let g = generator_table();
        crate::ops::rerandomize(&Self::key(&g, key), ciphertexts, &mut R::default())
    }
    fn decrypt(&self, secret: &[u8], ciphertexts: &[u8]) -> Result<Vec<u8>> {
        crate::ops::decrypt(secret, ciphertexts)
    }
    fn is_zero(&self, secret: &[u8], ciphertexts: &[u8]) -> Result<Vec<bool>> {
        crate::ops::is_zero(secret, ciphertexts)
    }
    fn partial_decrypt(&self, secret: &[u8], ciphertexts: &[u8]) -> Result<Vec<u8>> {
        crate::ops::partial_decrypt(secret, ciphertexts)
    }
    fn partial_decrypt_rerandomize(
        &self,
        secret: &[u8],
        key: &Table,
        ciphertexts: &[u8],
    ) -> Result<Vec<u8>> {
        let g = generator_table();
        crate::ops::partial_decrypt_rerandomize(
            secret,
            &Self::key(&g, key),
            ciphertexts,
            &mut R::default(),
        )
    }
    fn blind(&self, secret: &[u8], blinding_key: &[u8], ciphertexts: &[u8]) -> Result<Vec<u8>> {
        crate::ops::blind(secret, blinding_key, ciphertexts)
    }
    fn scale(&self, ciphertexts: &[u8], scalar: &[u8]) -> Result<Vec<u8>> {
        crate::ops::scale(ciphertexts, scalar)
    }
    fn scale_random(&self, ciphertexts: &[u8]) -> Result<Vec<u8>> {
        crate::ops::scale_random(ciphertexts, &mut R::default())
    }
    fn scale_random_shifted(
        &self,
        ciphertexts: &[u8],
        shift: &[u8],
        multipliers: &[u8],
    ) -> Result<Vec<u8>> {
        crate::ops::scale_random_shifted(ciphertexts, shift, multipliers, &mut R::default())
    }
    fn ciphertext_add(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
        crate::ops::ciphertext_add(a, b)
    }
    fn ciphertext_sub(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
        crate::ops::ciphertext_sub(a, b)
    }
    fn sort_blocks(&self, data: &[u8], block_size: u32) -> Result<Vec<u8>> {
        crate::ops::sort_blocks(data, block_size as usize)
    }
}

/// [`Crypto::scale_random_shifted`] from the 1.2 functions (for a host without 1.3's
/// `elgamal-scale-random-shifted`): the same checks in the same order
/// ([`crate::ops::shifted_preflight`], then the lowest bad element), then `cⱼ·D` by `scale`,
/// the sums by `ciphertext_add` and `scale_random`: the same results in distribution.
pub fn scale_random_shifted_by_parts<C: Crypto + ?Sized>(
    c: &C,
    ciphertexts: &[u8],
    shift: &[u8],
    multipliers: &[u8],
) -> Result<Vec<u8>> {
    let (n, m) = crate::ops::shifted_preflight(ciphertexts, shift, multipliers)?;
    let check = |upto: usize| {
        c.validate(&ciphertexts[..upto * CIPHERTEXT_LEN])
            .map_err(|e| e.rename("ciphertexts", 2))
    };
    if let Err(bad) = crate::ops::decode_scalars("multipliers", multipliers) {
        let j = match &bad {
            CryptoError::InvalidScalar { index, .. } => *index as usize,
            _ => 0,
        };
        check(n.min(j.saturating_add(1)))?;
        return Err(bad);
    }
    check(n)?;
    if n == 0 || m == 0 {
        return Ok(Vec::new());
    }
    let mut bases = Vec::with_capacity(m * CIPHERTEXT_LEN);
    for k in multipliers.chunks(SCALAR_LEN) {
        bases.extend(c.scale(shift, k)?);
    }
    let mut lhs = Vec::with_capacity(n * m * CIPHERTEXT_LEN);
    for ct in ciphertexts.chunks(CIPHERTEXT_LEN) {
        for _ in 0..m {
            lhs.extend_from_slice(ct);
        }
    }
    let sums = c.ciphertext_add(&lhs, &bases.repeat(n))?;
    c.scale_random(&sums)
}
