//! P-256 for the Liquid Legions protocols (`halo:mpc@1.2`/`1.3` `crypto` import; spec
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

pub use halo_p256::backend::{CIPHERTEXT_LEN, Crypto, CryptoError, POINT_LEN, Result, SCALAR_LEN};

/// The pure-guest implementation (`halo-p256` compiled into the plugin), drawing randomness
/// from the host's `random` import.
pub type Pure = halo_p256::backend::Pure<BufferedRandom>;

/// Random bytes for the pure implementation: the host's `random` import, fetched in blocks.
#[doc(hidden)]
#[derive(Default)]
pub struct BufferedRandom {
    buf: Vec<u8>,
    pos: usize,
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
            Pure::new().generator()
        }
        fn register(&self, point: &[u8]) -> Result<Self::FixedBase> {
            Pure::new().register(point)
        }
        fn fixed_point(&self, base: &Self::FixedBase) -> Vec<u8> {
            Pure::new().fixed_point(base)
        }
        fn fixed_mul(&self, base: &Self::FixedBase, scalars: &[u8]) -> Result<Vec<u8>> {
            Pure::new().fixed_mul(base, scalars)
        }
        fn validate(&self, points: &[u8]) -> Result<()> {
            Pure::new().validate(points)
        }
        fn compress(&self, point: &[u8]) -> Result<Vec<u8>> {
            Pure::new().compress(point)
        }
        fn mul(&self, points: &[u8], scalar: &[u8]) -> Result<Vec<u8>> {
            Pure::new().mul(points, scalar)
        }
        fn mul_each(&self, points: &[u8], scalars: &[u8]) -> Result<Vec<u8>> {
            Pure::new().mul_each(points, scalars)
        }
        fn add(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
            Pure::new().add(a, b)
        }
        fn sub(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
            Pure::new().sub(a, b)
        }
        fn negate(&self, points: &[u8]) -> Result<Vec<u8>> {
            Pure::new().negate(points)
        }
        fn multiples(&self, point: &[u8], count: u32) -> Result<Vec<u8>> {
            Pure::new().multiples(point, count)
        }
        fn hash_to_curve(&self, messages: &[Vec<u8>]) -> Result<(Vec<u8>, Vec<u32>)> {
            Pure::new().hash_to_curve(messages)
        }
        fn random_scalars(&self, count: u32) -> Result<Vec<u8>> {
            Pure::new().random_scalars(count)
        }
        fn encrypt(&self, key: &Self::FixedBase, plaintexts: &[u8]) -> Result<Vec<u8>> {
            Pure::new().encrypt(key, plaintexts)
        }
        fn encrypt_zero(&self, key: &Self::FixedBase, count: u32) -> Result<Vec<u8>> {
            Pure::new().encrypt_zero(key, count)
        }
        fn rerandomize(&self, key: &Self::FixedBase, ciphertexts: &[u8]) -> Result<Vec<u8>> {
            Pure::new().rerandomize(key, ciphertexts)
        }
        fn decrypt(&self, secret: &[u8], ciphertexts: &[u8]) -> Result<Vec<u8>> {
            Pure::new().decrypt(secret, ciphertexts)
        }
        fn is_zero(&self, secret: &[u8], ciphertexts: &[u8]) -> Result<Vec<bool>> {
            Pure::new().is_zero(secret, ciphertexts)
        }
        fn partial_decrypt(&self, secret: &[u8], ciphertexts: &[u8]) -> Result<Vec<u8>> {
            Pure::new().partial_decrypt(secret, ciphertexts)
        }
        fn partial_decrypt_rerandomize(
            &self,
            secret: &[u8],
            key: &Self::FixedBase,
            ciphertexts: &[u8],
        ) -> Result<Vec<u8>> {
            Pure::new().partial_decrypt_rerandomize(secret, key, ciphertexts)
        }
        fn blind(&self, secret: &[u8], k: &[u8], ciphertexts: &[u8]) -> Result<Vec<u8>> {
            Pure::new().blind(secret, k, ciphertexts)
        }
        fn scale(&self, ciphertexts: &[u8], scalar: &[u8]) -> Result<Vec<u8>> {
            Pure::new().scale(ciphertexts, scalar)
        }
        fn scale_random(&self, ciphertexts: &[u8]) -> Result<Vec<u8>> {
            Pure::new().scale_random(ciphertexts)
        }
        fn scale_random_shifted(&self, cts: &[u8], shift: &[u8], mult: &[u8]) -> Result<Vec<u8>> {
            Pure::new().scale_random_shifted(cts, shift, mult)
        }
        fn ciphertext_add(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
            Pure::new().ciphertext_add(a, b)
        }
        fn ciphertext_sub(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
            Pure::new().ciphertext_sub(a, b)
        }
        fn sort_blocks(&self, data: &[u8], block_size: u32) -> Result<Vec<u8>> {
            Pure::new().sort_blocks(data, block_size)
        }
    }
}

#[cfg(target_arch = "wasm32")]
mod host_impl {
    //! On wasm, the host's `halo:mpc/crypto@1.3` import (`@1.2` with the `wit-1-2` feature).
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
        #[cfg(not(feature = "wit-1-2"))]
        fn scale_random_shifted(&self, cts: &[u8], shift: &[u8], mult: &[u8]) -> Result<Vec<u8>> {
            wit::elgamal_scale_random_shifted(cts, shift, mult).map_err(err)
        }
        #[cfg(feature = "wit-1-2")]
        fn scale_random_shifted(&self, cts: &[u8], shift: &[u8], mult: &[u8]) -> Result<Vec<u8>> {
            // A 1.2 host has no such function: the same results from 1.2's.
            halo_p256::backend::scale_random_shifted_by_parts(self, cts, shift, mult)
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
