//! `hmss-core`: the pure, deterministic math of the Honest Majority Share Shuffle (HMSS)
//! protocol, as specified in `/work/shared/spec/mpc-crypto.md` §5 (noise) and §6 (HMSS).
//!
//! Nothing here touches the host: randomness comes in through the [`Keystream`] trait (§6.3),
//! so a plugin can drive the PRNG with the host's `crypto` import while native tests use
//! [`CtrKeystream`] (feature `ctr-keystream`, on by default).
//!
//! Modules:
//! * [`keystream`] / [`prng`] — AES-256-CTR keystream and `UniformRange` / `NonZeroRange` (§6.3);
//! * [`shuffle`] — the seeded Fisher–Yates shuffle (§6.3);
//! * [`share`] — EDP secret sharing and share expansion/combination (§6.2, §6.4 step 2, §6.5);
//! * [`noise`] — DP parameter derivation, samplers and HMSS noise registers (§5, §6.4);
//! * [`phase`] — the shuffle-phase noise masking and the aggregation phase (§6.4, §6.5);
//! * [`ring`] — `Z_q` arithmetic on `u8` (q ≤ 128) or `u32` registers (§6.6);
//! * [`wire`] — `FrequencyVector` and `AggregationPhaseInput` packed-varint codecs (§6.2).

#![deny(missing_docs)]

pub mod error;
pub mod keystream;
pub mod noise;
pub mod phase;
pub mod prng;
pub mod ring;
pub mod share;
pub mod shuffle;
pub mod wire;

pub use error::HmssError;
#[cfg(feature = "ctr-keystream")]
pub use keystream::CtrKeystream;
pub use keystream::{Keystream, OffsetKeystream};
pub use prng::Prng;
pub use ring::{Modulus, Register};

/// Length of a PRNG seed `key ‖ iv` (32-byte AES-256 key, 16-byte IV), §6.2.
pub const SEED_LEN: usize = 48;

/// A PRNG seed `key (32 B) ‖ iv (16 B)` as carried in `RandomSeed.data` (§6.2).
pub type Seed = [u8; SEED_LEN];

#[cfg(all(test, feature = "ctr-keystream"))]
pub(crate) mod test_vectors {
    /// NIST SP800-38A F.5.5 key (spec §6.3).
    pub const NIST_KEY: &str = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";
    /// NIST SP800-38A F.5.5 initial counter block (spec §6.3).
    pub const NIST_IV: &str = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

    pub fn nist_seed() -> crate::Seed {
        let mut seed = [0u8; 48];
        let key = hex::decode(NIST_KEY).unwrap_or_default();
        let iv = hex::decode(NIST_IV).unwrap_or_default();
        seed[..32].copy_from_slice(&key);
        seed[32..].copy_from_slice(&iv);
        seed
    }
}
