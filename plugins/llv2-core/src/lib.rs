//! `llv2-core`: the math of Liquid Legions v2 (reach and frequency) and its reach-only variant,
//! as specified in `/work/shared/spec/mpc-crypto.md` §1–5 and §10, shared by the `llv2` and
//! `ro-llv2` plugins and by the data-provider simulator.
//!
//! Modules:
//! * [`edp`] — the data provider's encrypted sketch (§1.3);
//! * [`sketch`] — FarmHash fingerprints, the register-index distribution, VID sampling and the
//!   plaintext sketch a data provider builds (§1.1–1.2);
//! * [`estimator`] — the reach estimator with the reference's quirks (§1.4) and the plaintext
//!   frequency distribution (§1.5);
//! * [`noise`] — the four LLv2 noisers and their offsets (§5.2);
//! * [`ring`] — the ring order of the participants (§2.2, errata E1);
//! * [`protocol`] — the stage computations over any [`Crypto`](protocol::Crypto) backend (§3, §4).

#![deny(missing_docs)]

pub mod edp;
pub mod estimator;
pub mod noise;
pub mod protocol;
pub mod ring;
pub mod sketch;

pub use protocol::Error;
