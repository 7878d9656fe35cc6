//! Randomness from the host's CSPRNG (the `random` import); a plugin has no other source.

/// `n` random bytes from the host.
///
/// Off wasm (native unit tests) the bytes come from std's randomly seeded hasher: fine for
/// tests, not cryptographic.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let want = u32::try_from(n - out.len()).unwrap_or(u32::MAX);
        let got = fill(want);
        assert!(
            got.len() == want as usize,
            "host random import returned {} bytes, asked for {want}",
            got.len()
        );
        out.extend_from_slice(&got);
    }
    out
}

/// `N` random bytes from the host, as an array (keys, nonces, seeds).
pub fn random_array<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&random_bytes(N));
    out
}

/// A random `u64` from the host.
pub fn random_u64() -> u64 {
    u64::from_le_bytes(random_array())
}

#[cfg(target_arch = "wasm32")]
fn fill(len: u32) -> Vec<u8> {
    crate::bindings::halo::mpc::random::fill(len)
}

#[cfg(not(target_arch = "wasm32"))]
fn fill(len: u32) -> Vec<u8> {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut out = Vec::with_capacity(len as usize);
    while out.len() < len as usize {
        let x = RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed));
        let take = (len as usize - out.len()).min(8);
        out.extend_from_slice(&x.to_le_bytes()[..take]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_variety() {
        assert_eq!(random_bytes(0).len(), 0);
        assert_eq!(random_bytes(13).len(), 13);
        let a: [u8; 32] = random_array();
        let b: [u8; 32] = random_array();
        assert_ne!(a, b);
        assert_ne!(random_u64(), random_u64());
    }
}
