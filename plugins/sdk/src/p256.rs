//! P-256 for the Liquid Legions protocols (`halo:mpc@1.2` `crypto` import; spec
//! mpc-crypto.md §2): the same operations two ways, behind the [`Crypto`] trait.
//!
//! * [`Host`]: the host's import — native, batched and spread over the host's cores, with
//!   fixed-base tables kept for the whole computation. Off wasm (native unit tests) it runs
//!   the pure implementation.
//! * [`Pure`]: the same arithmetic inside the guest (`halo-p256`), single-threaded; tables are
//!   built per instance. For tests, benchmarks and hosts without the 1.2 import.
//!
//! Both give the same bytes for the same inputs (the randomized operations aside). Layouts:
//! points 33 bytes (SEC1 compressed), scalars 32 bytes big-endian in `[1, n)`, ciphertexts
//! 66 bytes `u ‖ e`, all concatenated; see the WIT for every function's exact semantics.

pub use halo_p256::ops::{CIPHERTEXT_LEN, CryptoError, SCALAR_LEN};
pub use halo_p256::point::POINT_LEN;

/// A result of the P-256 operations.
pub type Result<T> = std::result::Result<T, CryptoError>;

/// The `crypto` interface's P-256 operations (WIT 1.2). `Self::FixedBase` is a point with a
/// precomputed multiplication table.
pub trait Crypto {
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
    fn ciphertext_add(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>>;
    fn ciphertext_sub(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>>;
    fn sort_blocks(&self, data: &[u8], block_size: u32) -> Result<Vec<u8>>;
}

/// The pure-guest implementation (`halo-p256` compiled into the plugin).
#[derive(Clone, Copy, Debug, Default)]
pub struct Pure;

/// Random bytes for the pure implementation: the host's `random` import, fetched in blocks.
struct BufferedRandom {
    buf: Vec<u8>,
    pos: usize,
}

impl BufferedRandom {
    fn new() -> Self {
        BufferedRandom {
            buf: Vec::new(),
            pos: 0,
        }
    }
}

impl halo_p256::ops::RandomSource for BufferedRandom {
    fn fill(&mut self, out: &mut [u8]) {
        for b in out.iter_mut() {
            if self.pos == self.buf.len() {
                self.buf = crate::random::random_bytes(4096);
                self.pos = 0;
            }
            *b = self.buf[self.pos];
            self.pos += 1;
        }
    }
}

type Table = std::sync::Arc<halo_p256::mul::FixedTable>;

fn generator_table() -> Table {
    static G: std::sync::OnceLock<Table> = std::sync::OnceLock::new();
    G.get_or_init(|| {
        std::sync::Arc::new(halo_p256::mul::FixedTable::new(
            &halo_p256::point::Affine::generator(),
        ))
    })
    .clone()
}

impl Pure {
    fn key<'a>(g: &'a Table, y: &'a Table) -> halo_p256::ops::ElGamalKey<'a> {
        halo_p256::ops::ElGamalKey {
            generator: g,
            key: y,
        }
    }
}

impl Crypto for Pure {
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
        let p = halo_p256::ops::point("point", point)?;
        if p == halo_p256::point::Affine::generator() {
            return Ok(generator_table());
        }
        let tables = TABLES.get_or_init(|| Mutex::new(HashMap::new()));
        let mut tables = tables.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tables.get(point) {
            return Ok(t.clone());
        }
        let t = Arc::new(halo_p256::mul::FixedTable::new(&p));
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
        halo_p256::ops::mul_fixed(base, scalars)
    }
    fn validate(&self, points: &[u8]) -> Result<()> {
        halo_p256::ops::validate_points(points)
    }
    fn compress(&self, point: &[u8]) -> Result<Vec<u8>> {
        halo_p256::ops::compress(point)
    }
    fn mul(&self, points: &[u8], scalar: &[u8]) -> Result<Vec<u8>> {
        halo_p256::ops::mul(points, scalar)
    }
    fn mul_each(&self, points: &[u8], scalars: &[u8]) -> Result<Vec<u8>> {
        halo_p256::ops::mul_each(points, scalars)
    }
    fn add(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
        halo_p256::ops::add(a, b)
    }
    fn sub(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
        halo_p256::ops::sub(a, b)
    }
    fn negate(&self, points: &[u8]) -> Result<Vec<u8>> {
        halo_p256::ops::negate(points)
    }
    fn multiples(&self, point: &[u8], count: u32) -> Result<Vec<u8>> {
        halo_p256::ops::multiples(point, count as usize)
    }
    fn hash_to_curve(&self, messages: &[Vec<u8>]) -> Result<(Vec<u8>, Vec<u32>)> {
        Ok(halo_p256::ops::hash_to_curve(messages))
    }
    fn random_scalars(&self, count: u32) -> Result<Vec<u8>> {
        Ok(halo_p256::ops::random_scalars(
            count as usize,
            &mut BufferedRandom::new(),
        ))
    }
    fn encrypt(&self, key: &Table, plaintexts: &[u8]) -> Result<Vec<u8>> {
        let g = generator_table();
        halo_p256::ops::encrypt(&Pure::key(&g, key), plaintexts, &mut BufferedRandom::new())
    }
    fn encrypt_zero(&self, key: &Table, count: u32) -> Result<Vec<u8>> {
        let g = generator_table();
        halo_p256::ops::encrypt_zero(
            &Pure::key(&g, key),
            count as usize,
            &mut BufferedRandom::new(),
        )
    }
    fn rerandomize(&self, key: &Table, ciphertexts: &[u8]) -> Result<Vec<u8>> {
        let g = generator_table();
        halo_p256::ops::rerandomize(&Pure::key(&g, key), ciphertexts, &mut BufferedRandom::new())
    }
    fn decrypt(&self, secret: &[u8], ciphertexts: &[u8]) -> Result<Vec<u8>> {
        halo_p256::ops::decrypt(secret, ciphertexts)
    }
    fn is_zero(&self, secret: &[u8], ciphertexts: &[u8]) -> Result<Vec<bool>> {
        halo_p256::ops::is_zero(secret, ciphertexts)
    }
    fn partial_decrypt(&self, secret: &[u8], ciphertexts: &[u8]) -> Result<Vec<u8>> {
        halo_p256::ops::partial_decrypt(secret, ciphertexts)
    }
    fn partial_decrypt_rerandomize(
        &self,
        secret: &[u8],
        key: &Table,
        ciphertexts: &[u8],
    ) -> Result<Vec<u8>> {
        let g = generator_table();
        halo_p256::ops::partial_decrypt_rerandomize(
            secret,
            &Pure::key(&g, key),
            ciphertexts,
            &mut BufferedRandom::new(),
        )
    }
    fn blind(&self, secret: &[u8], blinding_key: &[u8], ciphertexts: &[u8]) -> Result<Vec<u8>> {
        halo_p256::ops::blind(secret, blinding_key, ciphertexts)
    }
    fn scale(&self, ciphertexts: &[u8], scalar: &[u8]) -> Result<Vec<u8>> {
        halo_p256::ops::scale(ciphertexts, scalar)
    }
    fn scale_random(&self, ciphertexts: &[u8]) -> Result<Vec<u8>> {
        halo_p256::ops::scale_random(ciphertexts, &mut BufferedRandom::new())
    }
    fn ciphertext_add(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
        halo_p256::ops::ciphertext_add(a, b)
    }
    fn ciphertext_sub(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
        halo_p256::ops::ciphertext_sub(a, b)
    }
    fn sort_blocks(&self, data: &[u8], block_size: u32) -> Result<Vec<u8>> {
        halo_p256::ops::sort_blocks(data, block_size as usize)
    }
}

/// The host's import (natively: [`Pure`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Host;

#[cfg(not(target_arch = "wasm32"))]
mod host_impl {
    //! Off wasm, the host's import is the pure implementation.
    use super::*;

    impl Crypto for Host {
        type FixedBase = <Pure as Crypto>::FixedBase;
        fn generator(&self) -> Self::FixedBase {
            Pure.generator()
        }
        fn register(&self, point: &[u8]) -> Result<Self::FixedBase> {
            Pure.register(point)
        }
        fn fixed_point(&self, base: &Self::FixedBase) -> Vec<u8> {
            Pure.fixed_point(base)
        }
        fn fixed_mul(&self, base: &Self::FixedBase, scalars: &[u8]) -> Result<Vec<u8>> {
            Pure.fixed_mul(base, scalars)
        }
        fn validate(&self, points: &[u8]) -> Result<()> {
            Pure.validate(points)
        }
        fn compress(&self, point: &[u8]) -> Result<Vec<u8>> {
            Pure.compress(point)
        }
        fn mul(&self, points: &[u8], scalar: &[u8]) -> Result<Vec<u8>> {
            Pure.mul(points, scalar)
        }
        fn mul_each(&self, points: &[u8], scalars: &[u8]) -> Result<Vec<u8>> {
            Pure.mul_each(points, scalars)
        }
        fn add(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
            Pure.add(a, b)
        }
        fn sub(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
            Pure.sub(a, b)
        }
        fn negate(&self, points: &[u8]) -> Result<Vec<u8>> {
            Pure.negate(points)
        }
        fn multiples(&self, point: &[u8], count: u32) -> Result<Vec<u8>> {
            Pure.multiples(point, count)
        }
        fn hash_to_curve(&self, messages: &[Vec<u8>]) -> Result<(Vec<u8>, Vec<u32>)> {
            Pure.hash_to_curve(messages)
        }
        fn random_scalars(&self, count: u32) -> Result<Vec<u8>> {
            Pure.random_scalars(count)
        }
        fn encrypt(&self, key: &Self::FixedBase, plaintexts: &[u8]) -> Result<Vec<u8>> {
            Pure.encrypt(key, plaintexts)
        }
        fn encrypt_zero(&self, key: &Self::FixedBase, count: u32) -> Result<Vec<u8>> {
            Pure.encrypt_zero(key, count)
        }
        fn rerandomize(&self, key: &Self::FixedBase, ciphertexts: &[u8]) -> Result<Vec<u8>> {
            Pure.rerandomize(key, ciphertexts)
        }
        fn decrypt(&self, secret: &[u8], ciphertexts: &[u8]) -> Result<Vec<u8>> {
            Pure.decrypt(secret, ciphertexts)
        }
        fn is_zero(&self, secret: &[u8], ciphertexts: &[u8]) -> Result<Vec<bool>> {
            Pure.is_zero(secret, ciphertexts)
        }
        fn partial_decrypt(&self, secret: &[u8], ciphertexts: &[u8]) -> Result<Vec<u8>> {
            Pure.partial_decrypt(secret, ciphertexts)
        }
        fn partial_decrypt_rerandomize(
            &self,
            secret: &[u8],
            key: &Self::FixedBase,
            ciphertexts: &[u8],
        ) -> Result<Vec<u8>> {
            Pure.partial_decrypt_rerandomize(secret, key, ciphertexts)
        }
        fn blind(&self, secret: &[u8], k: &[u8], ciphertexts: &[u8]) -> Result<Vec<u8>> {
            Pure.blind(secret, k, ciphertexts)
        }
        fn scale(&self, ciphertexts: &[u8], scalar: &[u8]) -> Result<Vec<u8>> {
            Pure.scale(ciphertexts, scalar)
        }
        fn scale_random(&self, ciphertexts: &[u8]) -> Result<Vec<u8>> {
            Pure.scale_random(ciphertexts)
        }
        fn ciphertext_add(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
            Pure.ciphertext_add(a, b)
        }
        fn ciphertext_sub(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
            Pure.ciphertext_sub(a, b)
        }
        fn sort_blocks(&self, data: &[u8], block_size: u32) -> Result<Vec<u8>> {
            Pure.sort_blocks(data, block_size)
        }
    }
}

#[cfg(target_arch = "wasm32")]
mod host_impl {
    //! On wasm, the host's `halo:mpc/crypto@1.2` import.
    use super::*;
    use crate::bindings::halo::mpc::crypto as wit;

    fn err(e: wit::CryptoError) -> CryptoError {
        match e {
            wit::CryptoError::BadLength(m) => CryptoError::BadLength(m),
            wit::CryptoError::InvalidPoint(e) => CryptoError::InvalidPoint {
                argument: e.argument,
                index: e.index,
            },
            wit::CryptoError::InvalidScalar(e) => CryptoError::InvalidScalar {
                argument: e.argument,
                index: e.index,
            },
            wit::CryptoError::Identity(index) => CryptoError::Identity { index },
            wit::CryptoError::Limit(m) => CryptoError::Limit(m),
        }
    }

    impl Crypto for Host {
        type FixedBase = wit::FixedBase;
        fn generator(&self) -> wit::FixedBase {
            wit::FixedBase::generator()
        }
        fn register(&self, point: &[u8]) -> Result<wit::FixedBase> {
            wit::FixedBase::register(point).map_err(err)
        }
        fn fixed_point(&self, base: &wit::FixedBase) -> Vec<u8> {
            base.point()
        }
        fn fixed_mul(&self, base: &wit::FixedBase, scalars: &[u8]) -> Result<Vec<u8>> {
            base.mul(scalars).map_err(err)
        }
        fn validate(&self, points: &[u8]) -> Result<()> {
            wit::p256_validate(points).map_err(err)
        }
        fn compress(&self, point: &[u8]) -> Result<Vec<u8>> {
            wit::p256_compress(point).map_err(err)
        }
        fn mul(&self, points: &[u8], scalar: &[u8]) -> Result<Vec<u8>> {
            wit::p256_mul(points, scalar).map_err(err)
        }
        fn mul_each(&self, points: &[u8], scalars: &[u8]) -> Result<Vec<u8>> {
            wit::p256_mul_each(points, scalars).map_err(err)
        }
        fn add(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
            wit::p256_add(a, b).map_err(err)
        }
        fn sub(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
            wit::p256_sub(a, b).map_err(err)
        }
        fn negate(&self, points: &[u8]) -> Result<Vec<u8>> {
            wit::p256_negate(points).map_err(err)
        }
        fn multiples(&self, point: &[u8], count: u32) -> Result<Vec<u8>> {
            wit::p256_multiples(point, count).map_err(err)
        }
        fn hash_to_curve(&self, messages: &[Vec<u8>]) -> Result<(Vec<u8>, Vec<u32>)> {
            wit::p256_hash_to_curve(messages)
                .map(|h| (h.points, h.tries))
                .map_err(err)
        }
        fn random_scalars(&self, count: u32) -> Result<Vec<u8>> {
            wit::p256_random_scalars(count).map_err(err)
        }
        fn encrypt(&self, key: &wit::FixedBase, plaintexts: &[u8]) -> Result<Vec<u8>> {
            wit::elgamal_encrypt(key, plaintexts).map_err(err)
        }
        fn encrypt_zero(&self, key: &wit::FixedBase, count: u32) -> Result<Vec<u8>> {
            wit::elgamal_encrypt_zero(key, count).map_err(err)
        }
        fn rerandomize(&self, key: &wit::FixedBase, ciphertexts: &[u8]) -> Result<Vec<u8>> {
            wit::elgamal_rerandomize(key, ciphertexts).map_err(err)
        }
        fn decrypt(&self, secret: &[u8], ciphertexts: &[u8]) -> Result<Vec<u8>> {
            wit::elgamal_decrypt(secret, ciphertexts).map_err(err)
        }
        fn is_zero(&self, secret: &[u8], ciphertexts: &[u8]) -> Result<Vec<bool>> {
            wit::elgamal_is_zero(secret, ciphertexts).map_err(err)
        }
        fn partial_decrypt(&self, secret: &[u8], ciphertexts: &[u8]) -> Result<Vec<u8>> {
            wit::elgamal_partial_decrypt(secret, ciphertexts).map_err(err)
        }
        fn partial_decrypt_rerandomize(
            &self,
            secret: &[u8],
            key: &wit::FixedBase,
            ciphertexts: &[u8],
        ) -> Result<Vec<u8>> {
            wit::elgamal_partial_decrypt_rerandomize(secret, key, ciphertexts).map_err(err)
        }
        fn blind(&self, secret: &[u8], k: &[u8], ciphertexts: &[u8]) -> Result<Vec<u8>> {
            wit::elgamal_blind(secret, k, ciphertexts).map_err(err)
        }
        fn scale(&self, ciphertexts: &[u8], scalar: &[u8]) -> Result<Vec<u8>> {
            wit::elgamal_scale(ciphertexts, scalar).map_err(err)
        }
        fn scale_random(&self, ciphertexts: &[u8]) -> Result<Vec<u8>> {
            wit::elgamal_scale_random(ciphertexts).map_err(err)
        }
        fn ciphertext_add(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
            wit::elgamal_add(a, b).map_err(err)
        }
        fn ciphertext_sub(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
            wit::elgamal_sub(a, b).map_err(err)
        }
        fn sort_blocks(&self, data: &[u8], block_size: u32) -> Result<Vec<u8>> {
            wit::sort_blocks(data, block_size).map_err(err)
        }
    }
}
