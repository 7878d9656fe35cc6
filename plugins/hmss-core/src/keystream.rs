//! The PRNG's byte source (spec §6.3): AES-256-CTR over zero blocks with a 128-bit big-endian
//! counter initialised to the IV, continuous across calls.

/// A continuous stream of pseudo-random bytes (spec §6.3). Successive calls return successive
/// bytes of one stream; partial blocks carry over between calls.
///
/// The plugin implements this over the host's `crypto.aes256-ctr-keystream` import (by
/// tracking the stream offset); native code and tests use [`CtrKeystream`].
pub trait Keystream {
    /// Fills `out` with the next `out.len()` bytes of the stream (spec §6.3).
    fn fill(&mut self, out: &mut [u8]);

    /// The next `n` bytes as an owned buffer. A source that produces owned buffers (a host
    /// call returns one) hands them over without copying.
    fn take(&mut self, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        self.fill(&mut out);
        out
    }

    /// Consumes the next `n` bytes without looking at them (the reference discards the unused
    /// rest of a `UniformRange` chunk, §6.3). Seekable streams skip without computing them.
    fn skip(&mut self, n: u64) {
        let mut scratch = [0u8; 4096];
        let mut left = n;
        while left > 0 {
            let k = left.min(scratch.len() as u64) as usize;
            self.fill(&mut scratch[..k]);
            left -= k as u64;
        }
    }
}

impl<K: Keystream + ?Sized> Keystream for &mut K {
    fn fill(&mut self, out: &mut [u8]) {
        (**self).fill(out)
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        (**self).take(n)
    }

    fn skip(&mut self, n: u64) {
        (**self).skip(n)
    }
}

/// AES-256-CTR keystream (`ctr::Ctr128BE<aes::Aes256>` applied to zeros), the reference
/// `OpenSslUniformRandomGenerator` byte stream of spec §6.3.
#[cfg(feature = "ctr-keystream")]
pub struct CtrKeystream {
    cipher: ctr::Ctr128BE<aes::Aes256>,
}

#[cfg(feature = "ctr-keystream")]
impl CtrKeystream {
    /// A keystream for `key` (32 B) and initial counter block `iv` (16 B), spec §6.3.
    pub fn new(key: &[u8; 32], iv: &[u8; 16]) -> Self {
        use aes::cipher::KeyIvInit;
        CtrKeystream {
            cipher: ctr::Ctr128BE::<aes::Aes256>::new(key.into(), iv.into()),
        }
    }

    /// A keystream for a 48-byte seed split as `key = seed[0..32]`, `iv = seed[32..48]`
    /// (`GetPrngSeedFromString`, spec §6.2).
    pub fn from_seed(seed: &crate::Seed) -> Self {
        let (key, iv) = split_seed(seed);
        Self::new(&key, &iv)
    }
}

#[cfg(feature = "ctr-keystream")]
impl Keystream for CtrKeystream {
    fn fill(&mut self, out: &mut [u8]) {
        use aes::cipher::StreamCipher;
        out.fill(0);
        self.cipher.apply_keystream(out);
    }

    fn skip(&mut self, n: u64) {
        use aes::cipher::StreamCipherSeek;
        let pos: u64 = self.cipher.current_pos();
        self.cipher.seek(pos + n);
    }
}

/// Splits a 48-byte seed into `(key, iv)` = `(seed[0..32], seed[32..48])` (spec §6.2).
pub fn split_seed(seed: &crate::Seed) -> ([u8; 32], [u8; 16]) {
    let mut key = [0u8; 32];
    let mut iv = [0u8; 16];
    key.copy_from_slice(&seed[..32]);
    iv.copy_from_slice(&seed[32..]);
    (key, iv)
}

/// A [`Keystream`] over a random-access source `source(offset, len)` that returns keystream
/// bytes `[offset, offset + len)` — e.g. the host import
/// `crypto::aes256_ctr_keystream(key, iv, offset, len)` (spec §6.3, §8: host AES-NI). Bytes are
/// fetched in blocks of `block` bytes to bound the number of host calls.
///
/// [`Keystream::fill`] cannot fail, so the first source error is stored and the stream is
/// poisoned (it yields zeros from then on); callers must check [`OffsetKeystream::take_error`]
/// before using any result derived from the stream.
pub struct OffsetKeystream<F, E> {
    source: F,
    block: usize,
    buf: Vec<u8>,
    buf_pos: usize,
    next_offset: u64,
    error: Option<E>,
}

impl<F, E> OffsetKeystream<F, E>
where
    F: FnMut(u64, usize) -> Result<Vec<u8>, E>,
    E: From<String>,
{
    /// A stream starting at keystream offset 0, fetching `block` bytes (at least 1) per source call.
    pub fn new(source: F, block: usize) -> Self {
        OffsetKeystream {
            source,
            block: block.max(1),
            buf: Vec::new(),
            buf_pos: 0,
            next_offset: 0,
            error: None,
        }
    }

    /// The first error the source returned, if any (the stream is unusable after one).
    pub fn take_error(&mut self) -> Option<E> {
        self.error.take()
    }

    /// Whether the source has failed (see [`OffsetKeystream::take_error`]).
    pub fn is_poisoned(&self) -> bool {
        self.error.is_some()
    }

    /// Total number of keystream bytes handed out so far.
    pub fn position(&self) -> u64 {
        self.next_offset - (self.buf.len() - self.buf_pos) as u64
    }

    /// `n` bytes at the current source offset, or `None` (the stream is then poisoned).
    fn fetch(&mut self, n: usize) -> Option<Vec<u8>> {
        match (self.source)(self.next_offset, n) {
            Ok(bytes) if bytes.len() == n => {
                self.next_offset += n as u64;
                Some(bytes)
            }
            Ok(bytes) => {
                self.error = Some(E::from(format!(
                    "the keystream source returned {} bytes instead of {n}",
                    bytes.len()
                )));
                None
            }
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }
}

impl<F, E> Keystream for OffsetKeystream<F, E>
where
    F: FnMut(u64, usize) -> Result<Vec<u8>, E>,
    E: From<String>,
{
    fn fill(&mut self, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() {
            if self.error.is_some() {
                out[done..].fill(0);
                return;
            }
            if self.buf_pos == self.buf.len() {
                let want = out.len() - done;
                if want >= self.block {
                    if let Some(bytes) = self.fetch(want) {
                        out[done..].copy_from_slice(&bytes);
                        return;
                    }
                    continue;
                }
                self.buf_pos = 0;
                self.buf = self.fetch(self.block).unwrap_or_default();
                continue;
            }
            let n = (self.buf.len() - self.buf_pos).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.buf[self.buf_pos..self.buf_pos + n]);
            self.buf_pos += n;
            done += n;
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        if self.buf_pos == self.buf.len()
            && n >= self.block
            && self.error.is_none()
            && let Some(bytes) = self.fetch(n)
        {
            return bytes;
        }
        let mut out = vec![0u8; n];
        self.fill(&mut out);
        out
    }

    fn skip(&mut self, n: u64) {
        let buffered = (self.buf.len() - self.buf_pos) as u64;
        if n <= buffered {
            self.buf_pos += n as usize;
        } else {
            self.buf_pos = self.buf.len();
            self.next_offset += n - buffered;
        }
    }
}

#[cfg(all(test, feature = "ctr-keystream"))]
mod tests {
    use super::*;
    use crate::test_vectors::nist_seed;

    /// NIST SP800-38A F.5.5 keystream (spec §6.3), drawn in uneven pieces to check continuity.
    #[test]
    fn nist_keystream_is_continuous() {
        let mut ks = CtrKeystream::from_seed(&nist_seed());
        let mut a = [0u8; 5];
        let mut b = [0u8; 27];
        ks.fill(&mut a);
        ks.fill(&mut b);
        let mut all = a.to_vec();
        all.extend_from_slice(&b);
        assert_eq!(
            hex::encode(all),
            "0bdf7df1591716335e9a8b15c860c5025a6e699d536119065433863c8f657b94"
        );
    }

    /// `OffsetKeystream` over a seekable AES-CTR source gives the same bytes as `CtrKeystream`.
    #[test]
    fn offset_keystream_matches_ctr() {
        use aes::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
        let (key, iv) = split_seed(&nist_seed());
        let source = |offset: u64, len: usize| -> Result<Vec<u8>, String> {
            let mut c = ctr::Ctr128BE::<aes::Aes256>::new(&key.into(), &iv.into());
            c.seek(offset);
            let mut out = vec![0u8; len];
            c.apply_keystream(&mut out);
            Ok(out)
        };
        for block in [1usize, 7, 16, 1000] {
            let mut a = OffsetKeystream::new(source, block);
            let mut b = CtrKeystream::from_seed(&nist_seed());
            for (i, len) in [0usize, 3, 17, 64, 5, 300].into_iter().enumerate() {
                let mut y = vec![0u8; len];
                b.fill(&mut y);
                // Alternate between copying reads and owned reads.
                let x = if i % 2 == 0 {
                    let mut x = vec![0u8; len];
                    a.fill(&mut x);
                    x
                } else {
                    a.take(len)
                };
                assert_eq!(x, y, "block {block} len {len}");
            }
            assert_eq!(a.position(), 389);
            assert!(a.take_error().is_none());
        }
        // The §6.3 KATs through the offset adapter.
        let mut p = crate::Prng::new(OffsetKeystream::new(source, 5));
        assert_eq!(
            p.uniform_range(20, 5),
            Ok(vec![
                3, 1, 1, 3, 2, 3, 0, 0, 2, 2, 1, 3, 1, 1, 4, 3, 4, 3, 4, 3
            ])
        );
    }

    #[test]
    fn offset_keystream_poisons_on_error() {
        let mut ks = OffsetKeystream::new(
            |offset: u64, len: usize| {
                if offset >= 8 {
                    return Err("limit".to_string());
                }
                Ok(vec![0xab; len])
            },
            8,
        );
        let mut x = [0u8; 8];
        ks.fill(&mut x);
        assert_eq!(x, [0xab; 8]);
        assert!(!ks.is_poisoned());
        let mut y = [1u8; 4];
        ks.fill(&mut y);
        assert_eq!(y, [0; 4]);
        assert!(ks.is_poisoned());
        assert_eq!(ks.take_error(), Some("limit".to_string()));
        // A source that returns the wrong length poisons the stream too.
        let mut short = OffsetKeystream::new(|_, len: usize| Ok::<_, String>(vec![1; len / 2]), 4);
        assert_eq!(short.take(16), vec![0; 16]);
        assert!(
            short
                .take_error()
                .is_some_and(|e| e.contains("8 bytes instead of 16"))
        );
    }
}
