//! The host's `crypto` import: bulk cryptography run natively (AES-NI) by the host.

/// The reference PRNG keystream (AES-256-CTR over zero blocks, 128-bit big-endian counter
/// initialised to `iv`), bytes `[offset, offset + len)`, computed by the host. Errors on bad
/// key or iv lengths, or a `len` above the host's limit (split long streams by `offset`).
///
/// Off wasm this runs [`crate::pure::aes256_ctr_keystream`], which gives the same bytes.
pub fn aes256_ctr_keystream(
    key: &[u8],
    iv: &[u8],
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, String> {
    #[cfg(target_arch = "wasm32")]
    {
        crate::bindings::halo::mpc::crypto::aes256_ctr_keystream(key, iv, offset, len)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::pure::aes256_ctr_keystream(key, iv, offset, len)
    }
}
