//! Native implementations behind the `crypto` host import.

use aes::Aes256;
use ctr::Ctr128BE;
use ctr::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};

/// The largest keystream one call hands out (the host allocates it before copying it into the
/// guest, whose own memory limit may be lower still).
pub const MAX_KEYSTREAM_LEN: u64 = 1 << 30;

/// The reference PRNG keystream: AES-256-CTR over zero blocks with a 128-bit big-endian
/// counter initialised to `iv`, bytes `[offset, offset + len)`. Uses AES-NI where the CPU has
/// it (RustCrypto `aes` detects it at run time).
pub fn aes256_ctr_keystream(
    key: &[u8],
    iv: &[u8],
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, String> {
    aes256_ctr_keystream_limited(key, iv, offset, len, MAX_KEYSTREAM_LEN)
}

pub(crate) fn aes256_ctr_keystream_limited(
    key: &[u8],
    iv: &[u8],
    offset: u64,
    len: u64,
    limit: u64,
) -> Result<Vec<u8>, String> {
    let key: &[u8; 32] = key
        .try_into()
        .map_err(|_| format!("aes256-ctr key must be 32 bytes, got {}", key.len()))?;
    let iv: &[u8; 16] = iv
        .try_into()
        .map_err(|_| format!("aes256-ctr iv must be 16 bytes, got {}", iv.len()))?;
    if len > limit {
        return Err(format!(
            "aes256-ctr keystream of {len} bytes exceeds the limit of {limit} bytes"
        ));
    }
    let len = usize::try_from(len).map_err(|_| format!("length {len} does not fit in memory"))?;
    // On the calling thread. Splitting long requests over a thread pool was measured slower
    // (HMSS shuffle at 10 M registers: 33–40 M/s with 128 KiB pieces on rayon vs. 37–46 M/s
    // here, same session): the guest waits for the call either way, the pieces are too short
    // to wake a second worker in time, and idle workers spin against the caller on 2 cores.
    let mut out = vec![0u8; len];
    fill_keystream(key, iv, offset, &mut out)?;
    Ok(out)
}

fn fill_keystream(
    key: &[u8; 32],
    iv: &[u8; 16],
    offset: u64,
    out: &mut [u8],
) -> Result<(), String> {
    let mut cipher = Ctr128BE::<Aes256>::new(key.into(), iv.into());
    cipher
        .try_seek(offset)
        .map_err(|e| format!("aes256-ctr cannot seek to offset {offset}: {e}"))?;
    cipher.try_apply_keystream(out).map_err(|e| {
        format!(
            "aes256-ctr keystream of {} bytes at {offset}: {e}",
            out.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // NIST SP 800-38A, F.5.5 CTR-AES256.Encrypt: the keystream is the output blocks
    // (plaintext XOR ciphertext).
    const KEY: &str = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";
    const IV: &str = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";
    const KEYSTREAM: &str = concat!(
        "0bdf7df1591716335e9a8b15c860c502",
        "5a6e699d536119065433863c8f657b94",
        "1bc12c9c01610d5d0d8bd6a3378eca62",
        "2956e1c8693536b1bee99c73a31576b6",
    );

    fn kat() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        (
            hex::decode(KEY).unwrap(),
            hex::decode(IV).unwrap(),
            hex::decode(KEYSTREAM).unwrap(),
        )
    }

    #[test]
    fn nist_sp800_38a_f55_keystream() {
        let (key, iv, want) = kat();
        let got = aes256_ctr_keystream(&key, &iv, 0, 64).unwrap();
        assert_eq!(hex::encode(got), KEYSTREAM);
        assert_eq!(want.len(), 64);
    }

    #[test]
    fn nist_keystream_at_unaligned_offsets() {
        let (key, iv, want) = kat();
        for (offset, len) in [
            (1u64, 7u64),
            (13, 19),
            (16, 16),
            (17, 40),
            (31, 33),
            (63, 1),
        ] {
            let got = aes256_ctr_keystream(&key, &iv, offset, len).unwrap();
            let (o, l) = (offset as usize, len as usize);
            assert_eq!(got, want[o..o + l], "offset {offset} len {len}");
        }
    }

    #[test]
    fn continuing_a_stream_across_calls_is_seamless() {
        let (key, iv, _) = kat();
        let whole = aes256_ctr_keystream(&key, &iv, 5, 1000).unwrap();
        let a = aes256_ctr_keystream(&key, &iv, 5, 333).unwrap();
        let b = aes256_ctr_keystream(&key, &iv, 338, 667).unwrap();
        assert_eq!([a, b].concat(), whole);
    }

    #[test]
    fn long_requests_equal_short_ones_concatenated() {
        let (key, iv, _) = kat();
        let len = 3 << 20;
        let whole = aes256_ctr_keystream(&key, &iv, 7, len as u64).unwrap();
        let pieces: Vec<u8> = (0..3u64)
            .flat_map(|i| aes256_ctr_keystream(&key, &iv, 7 + (i << 20), 1 << 20).unwrap())
            .collect();
        assert_eq!(whole, pieces);
    }

    #[test]
    fn counter_wraps_as_128_bit_big_endian() {
        // iv = 2^128 - 1: the second block uses counter 0.
        let key = [7u8; 32];
        let ff = [0xffu8; 16];
        let zero = [0u8; 16];
        let s = aes256_ctr_keystream(&key, &ff, 0, 32).unwrap();
        let z = aes256_ctr_keystream(&key, &zero, 0, 16).unwrap();
        assert_eq!(s[16..], z[..]);
    }

    #[test]
    fn rejects_bad_lengths() {
        let (key, iv, _) = kat();
        let e = aes256_ctr_keystream(&key[..31], &iv, 0, 1).unwrap_err();
        assert!(e.contains("key must be 32 bytes"), "{e}");
        let e = aes256_ctr_keystream(&key, &iv[..15], 0, 1).unwrap_err();
        assert!(e.contains("iv must be 16 bytes"), "{e}");
        let e = aes256_ctr_keystream(&key, &iv, 0, MAX_KEYSTREAM_LEN + 1).unwrap_err();
        assert!(e.contains("exceeds the limit"), "{e}");
        assert!(aes256_ctr_keystream(&key, &iv, 0, 0).unwrap().is_empty());
    }
}
