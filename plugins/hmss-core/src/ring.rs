//! Ring `Z_q` arithmetic on register vectors (spec §6.6), in two representations:
//!
//! * `u8` registers, for `q ≤ 128` (production uses `q = 127`): every value is below 128, so a
//!   register is one byte in memory *and* one byte on the wire (a one-byte varint), the vectors
//!   are a quarter of the size, and the loops vectorise;
//! * `u32` registers, for any `q` up to `2^31`.
//!
//! [`Register`] abstracts over the two; [`Modulus`] holds `q` with what its operations need.

use core::fmt::Debug;

use crate::error::{HmssError, invalid};

/// The largest modulus the one-byte representation serves: every value `< q` is then a
/// one-byte varint.
pub const BYTE_REGISTER_MAX_Q: u32 = 128;

/// The largest modulus at all: values must fit the reference's `uint32` registers and sums
/// of two values must not overflow `u32`.
pub const MAX_Q: u32 = 1 << 31;

/// A register value of `Z_q` (spec §6.6). Implemented by `u8` (for `q ≤ 128`) and `u32`.
pub trait Register: Copy + Default + PartialEq + Eq + Ord + Send + Sync + Debug + 'static {
    /// Whether the representation can hold every value of `Z_q`.
    fn serves(q: u32) -> bool;
    /// The value `v`, which the caller guarantees is representable (`v < q` with [`Register::serves`]).
    fn from_u32(v: u32) -> Self;
    /// The value as `u32`.
    fn get(self) -> u32;
    /// Serialized size of one value as a protobuf varint when every value is below 128.
    const ONE_BYTE_VARINTS: bool;

    /// `acc[i] = (acc[i] + x[i]) mod q` for values already `< q` (lengths must match).
    fn add_assign_slice(acc: &mut [Self], x: &[Self], m: &Modulus) {
        for (a, &b) in acc.iter_mut().zip(x) {
            *a = Self::from_u32(m.add(a.get(), b.get()));
        }
    }

    /// `acc[i] = (acc[i] + x[i]) mod q` for byte values already `< q` (lengths must match).
    fn add_assign_bytes(acc: &mut [Self], x: &[u8], m: &Modulus) {
        for (a, &b) in acc.iter_mut().zip(x) {
            *a = Self::from_u32(m.add(a.get(), u32::from(b)));
        }
    }

    /// `acc[i] = (acc[i] · x[i]) mod q` for byte values already `< q` (lengths must match).
    fn mul_assign_bytes(acc: &mut [Self], x: &[u8], m: &Modulus) {
        for (a, &b) in acc.iter_mut().zip(x) {
            *a = Self::from_u32(m.mul(a.get(), u32::from(b)));
        }
    }

    /// The largest element (0 for an empty slice).
    fn max_of(v: &[Self]) -> u32 {
        v.iter().copied().max().map(Self::get).unwrap_or(0)
    }
}

impl Register for u8 {
    const ONE_BYTE_VARINTS: bool = true;

    fn serves(q: u32) -> bool {
        (2..=BYTE_REGISTER_MAX_Q).contains(&q)
    }

    #[inline(always)]
    fn from_u32(v: u32) -> Self {
        v as u8
    }

    #[inline(always)]
    fn get(self) -> u32 {
        u32::from(self)
    }

    fn add_assign_slice(acc: &mut [Self], x: &[Self], m: &Modulus) {
        // q ≤ 128: a + b ≤ 254 fits a byte; a branch-free select, so the loop vectorises.
        let q = m.q as u8;
        for (a, &b) in acc.iter_mut().zip(x) {
            let s = *a + b;
            *a = if s >= q { s - q } else { s };
        }
    }

    fn add_assign_bytes(acc: &mut [Self], x: &[u8], m: &Modulus) {
        Self::add_assign_slice(acc, x, m)
    }

    fn mul_assign_bytes(acc: &mut [Self], x: &[u8], m: &Modulus) {
        if m.q != 127 {
            for (a, &b) in acc.iter_mut().zip(x) {
                *a = m.mul(u32::from(*a), u32::from(b)) as u8;
            }
            return;
        }
        // The production modulus 127 = 2^7 − 1 (a Mersenne prime): 128 ≡ 1, so a product
        // p < 2^14 folds to (p >> 7) + (p & 127) ≤ 253, folds again to ≤ 127, and 127 ≡ 0.
        // Shifts and adds on u16 lanes: the loop vectorises.
        for (a, &b) in acc.iter_mut().zip(x) {
            let p = u16::from(*a) * u16::from(b);
            let s = (p >> 7) + (p & 127);
            let s = (s >> 7) + (s & 127);
            *a = (if s >= 127 { s - 127 } else { s }) as u8;
        }
    }

    fn max_of(v: &[Self]) -> u32 {
        u32::from(v.iter().fold(0u8, |acc, &x| acc.max(x)))
    }
}

impl Register for u32 {
    const ONE_BYTE_VARINTS: bool = false;

    fn serves(q: u32) -> bool {
        (2..=MAX_Q).contains(&q)
    }

    #[inline(always)]
    fn from_u32(v: u32) -> Self {
        v
    }

    #[inline(always)]
    fn get(self) -> u32 {
        self
    }
}

/// The ring modulus `q` (`2 ≤ q ≤ 2^31`) and a precomputed reciprocal for products of small
/// values (spec §6.6 mul-mod).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modulus {
    q: u32,
    /// `⌊(2^32 − 1)/q⌋ + 1`: Lemire's fastmod constant for numerators below `2^16`.
    m16: u32,
}

impl Modulus {
    /// Validates `q`.
    pub fn new(q: u32) -> Result<Self, HmssError> {
        if !(2..=MAX_Q).contains(&q) {
            return Err(invalid(format!(
                "modulus q = {q} must be between 2 and 2^31"
            )));
        }
        Ok(Modulus {
            q,
            m16: (u32::MAX / q).wrapping_add(1),
        })
    }

    /// `q`.
    pub fn q(&self) -> u32 {
        self.q
    }

    /// `(a + b) mod q` for `a, b < q`.
    #[inline(always)]
    pub fn add(&self, a: u32, b: u32) -> u32 {
        let s = a + b;
        if s >= self.q { s - self.q } else { s }
    }

    /// `(a − b) mod q` for `a, b < q`.
    #[inline(always)]
    pub fn sub(&self, a: u32, b: u32) -> u32 {
        if a >= b { a - b } else { a + self.q - b }
    }

    /// `(a · b) mod q` for `a, b < q`.
    #[inline(always)]
    pub fn mul(&self, a: u32, b: u32) -> u32 {
        if self.q <= 1 << 8 {
            // a·b < 2^16: Lemire–Kaser–Kurz fastmod with a 32-bit constant.
            let low = self.m16.wrapping_mul(a * b);
            ((u64::from(low) * u64::from(self.q)) >> 32) as u32
        } else {
            ((u64::from(a) * u64::from(b)) % u64::from(self.q)) as u32
        }
    }

    /// Checks that every element is `< q` (spec §6.2 "inputs must be `< q`"), naming the first
    /// one that is not.
    pub fn check_below<R: Register>(&self, v: &[R]) -> Result<(), HmssError> {
        if v.is_empty() || R::max_of(v) < self.q {
            return Ok(());
        }
        let i = v.iter().position(|x| x.get() >= self.q).unwrap_or(0);
        Err(invalid(format!(
            "element {i} is {}, not below the modulus {}",
            v.get(i).map(|x| x.get()).unwrap_or(0),
            self.q
        )))
    }
}

/// Converts a vector of `u32` values (each `< q`, checked) into registers.
pub fn to_registers<R: Register>(v: &[u32], m: &Modulus) -> Result<Vec<R>, HmssError> {
    if !R::serves(m.q()) {
        return Err(invalid(format!(
            "modulus {} does not fit this register type",
            m.q()
        )));
    }
    m.check_below(v)?;
    Ok(v.iter().map(|&x| R::from_u32(x)).collect())
}

/// Widens registers to `u32`.
pub fn to_u32<R: Register>(v: &[R]) -> Vec<u32> {
    v.iter().map(|x| x.get()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modulus_ops_match_naive() {
        for q in [2u32, 3, 5, 127, 128, 129, 251, 256, 257, 65_521, 1 << 31] {
            let m = Modulus::new(q).unwrap();
            let vals = [0, 1, q / 3, q / 2, q - 2, q - 1];
            for &a in &vals {
                for &b in &vals {
                    let (a64, b64, q64) = (u64::from(a), u64::from(b), u64::from(q));
                    assert_eq!(u64::from(m.add(a, b)), (a64 + b64) % q64, "add {a} {b} {q}");
                    assert_eq!(
                        u64::from(m.sub(a, b)),
                        (a64 + q64 - b64) % q64,
                        "sub {a} {b} {q}"
                    );
                    assert_eq!(u64::from(m.mul(a, b)), (a64 * b64) % q64, "mul {a} {b} {q}");
                }
            }
        }
        assert!(Modulus::new(1).is_err());
        assert!(Modulus::new((1 << 31) + 1).is_err());
    }

    #[test]
    fn small_modulus_mul_is_exact_for_every_pair() {
        for q in [2u32, 7, 127, 128, 256] {
            let m = Modulus::new(q).unwrap();
            for a in 0..q {
                for b in 0..q {
                    assert_eq!(m.mul(a, b), a * b % q, "{a}·{b} mod {q}");
                }
            }
        }
    }

    #[test]
    fn byte_mul_matches_modulus_mul_for_every_pair() {
        for q in [127u32, 128, 101, 2] {
            let m = Modulus::new(q).unwrap();
            let a: Vec<u8> = (0..q)
                .flat_map(|x| std::iter::repeat_n(x as u8, q as usize))
                .collect();
            let b: Vec<u8> = (0..q).flat_map(|_| 0..q as u8).collect();
            let mut got = a.clone();
            u8::mul_assign_bytes(&mut got, &b, &m);
            for ((&x, &y), &z) in a.iter().zip(&b).zip(&got) {
                assert_eq!(
                    u32::from(z),
                    u32::from(x) * u32::from(y) % q,
                    "{x}·{y} mod {q}"
                );
            }
        }
    }

    #[test]
    fn byte_and_word_slices_agree() {
        let m = Modulus::new(127).unwrap();
        let a: Vec<u32> = (0..1000u32).map(|i| (i * 37) % 127).collect();
        let b: Vec<u32> = (0..1000u32).map(|i| (i * 91 + 5) % 127).collect();
        let mut x8: Vec<u8> = to_registers(&a, &m).unwrap();
        let y8: Vec<u8> = to_registers(&b, &m).unwrap();
        let mut x32 = a.clone();
        u8::add_assign_slice(&mut x8, &y8, &m);
        u32::add_assign_slice(&mut x32, &b, &m);
        assert_eq!(to_u32(&x8), x32);
        assert_eq!(u8::max_of(&y8), 126);
        assert!(m.check_below(&x8).is_ok());
        assert!(m.check_below(&[1u8, 127]).is_err());
        assert!(to_registers::<u8>(&[1], &Modulus::new(129).unwrap()).is_err());
    }
}
