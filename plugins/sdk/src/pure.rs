//! Pure-guest implementations of the host's `crypto` import, bit-identical to what the host
//! returns. Use them in tests (to check the host) and where a host lacks the import.

use aes::Aes256;
use ctr::Ctr128BE;
use ctr::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};

/// The reference PRNG keystream: AES-256-CTR over zero blocks with a 128-bit big-endian
/// counter initialised to `iv`. `key` is 32 bytes, `iv` 16 bytes. Returns keystream bytes
/// `[offset, offset + len)`, so a caller can continue a stream across calls.
pub fn aes256_ctr_keystream(
    key: &[u8],
    iv: &[u8],
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, String> {
    if key.len() != 32 {
        return Err(format!(
            "aes256-ctr: key must be 32 bytes, got {}",
            key.len()
        ));
    }
    if iv.len() != 16 {
        return Err(format!("aes256-ctr: iv must be 16 bytes, got {}", iv.len()));
    }
    let len = usize::try_from(len).map_err(|_| format!("aes256-ctr: len {len} is too large"))?;
    let mut cipher =
        Ctr128BE::<Aes256>::new_from_slices(key, iv).map_err(|e| format!("aes256-ctr: {e}"))?;
    cipher
        .try_seek(offset)
        .map_err(|e| format!("aes256-ctr: offset {offset}: {e}"))?;
    // The keystream is the encryption of zeros.
    let mut out = vec![0u8; len];
    cipher
        .try_apply_keystream(&mut out)
        .map_err(|e| format!("aes256-ctr: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";
    const IV: &str = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// NIST SP 800-38A F.5.5 (CTR-AES256.Encrypt): the output blocks for counters
    /// f0f1..feff and f0f1..ff00 are the keystream.
    #[test]
    fn nist_sp800_38a_f55() {
        let ks = aes256_ctr_keystream(&h(KEY), &h(IV), 0, 32).unwrap();
        assert_eq!(
            hex::encode(ks),
            "0bdf7df1591716335e9a8b15c860c5025a6e699d536119065433863c8f657b94"
        );
        // And the ciphertext of the vector's first two plaintext blocks.
        let pt = h("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51");
        let ks = aes256_ctr_keystream(&h(KEY), &h(IV), 0, 32).unwrap();
        let ct: Vec<u8> = pt.iter().zip(&ks).map(|(p, k)| p ^ k).collect();
        assert_eq!(
            hex::encode(ct),
            "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5"
        );
    }

    #[test]
    fn offsets_continue_the_stream() {
        let full = aes256_ctr_keystream(&h(KEY), &h(IV), 0, 100).unwrap();
        for (offset, len) in [(0u64, 0u64), (5, 20), (16, 16), (31, 40), (99, 1)] {
            let part = aes256_ctr_keystream(&h(KEY), &h(IV), offset, len).unwrap();
            assert_eq!(part, full[offset as usize..(offset + len) as usize]);
        }
    }

    #[test]
    fn bad_lengths_are_errors() {
        assert!(
            aes256_ctr_keystream(&[0; 31], &h(IV), 0, 1)
                .unwrap_err()
                .contains("key")
        );
        assert!(
            aes256_ctr_keystream(&h(KEY), &[0; 8], 0, 1)
                .unwrap_err()
                .contains("iv")
        );
    }
}
