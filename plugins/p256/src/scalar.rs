//! Scalars modulo the group order `n`, canonical little-endian limbs.

use crate::field::{adc, be_from_limbs, limbs_from_be, lt, mac, sbb};

/// The group order `n`, little-endian limbs.
pub(crate) const N: [u64; 4] = [
    0xf3b9_cac2_fc63_2551,
    0xbce6_faad_a717_9e84,
    0xffff_ffff_ffff_ffff,
    0xffff_ffff_0000_0000,
];
/// `−n⁻¹ mod 2^64`.
const N0: u64 = 0xccd1_c8aa_ee00_bc4f;
/// `2^512 mod n`.
const RR: [u64; 4] = [
    0x8324_4c95_be79_eea2,
    0x4699_799c_49bd_6fa6,
    0x2845_b239_2b6b_ec59,
    0x66e1_2d94_f3d9_5620,
];

/// A scalar in `[0, n)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scalar(pub(crate) [u64; 4]);

impl Scalar {
    /// 0.
    pub const ZERO: Scalar = Scalar([0; 4]);
    /// 1.
    pub const ONE: Scalar = Scalar([1, 0, 0, 0]);

    /// Parses 32 big-endian bytes; `None` unless the value is below `n`.
    pub fn from_be_bytes(b: &[u8; 32]) -> Option<Scalar> {
        let w = limbs_from_be(b);
        if lt(&w, &N) { Some(Scalar(w)) } else { None }
    }

    /// Parses a big-endian integer of any length (`BN_bin2bn`: leading zeros allowed, at most
    /// 32 significant bytes), `None` unless the value is below `n`.
    pub fn from_be_slice(b: &[u8]) -> Option<Scalar> {
        let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
        let b = &b[start..];
        if b.len() > 32 {
            return None;
        }
        let mut full = [0u8; 32];
        full[32 - b.len()..].copy_from_slice(b);
        Scalar::from_be_bytes(&full)
    }

    /// 32 big-endian bytes.
    pub fn to_be_bytes(&self) -> [u8; 32] {
        be_from_limbs(&self.0)
    }

    /// A small integer.
    pub const fn from_u64(v: u64) -> Scalar {
        Scalar([v, 0, 0, 0])
    }

    pub fn is_zero(&self) -> bool {
        (self.0[0] | self.0[1] | self.0[2] | self.0[3]) == 0
    }

    pub fn is_odd(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// `n − self` (0 stays 0).
    pub fn neg(&self) -> Scalar {
        let a = self.0;
        let (w0, b) = sbb(N[0], a[0], 0);
        let (w1, b) = sbb(N[1], a[1], b);
        let (w2, b) = sbb(N[2], a[2], b);
        let (w3, _) = sbb(N[3], a[3], b);
        let nz = 0u64.wrapping_sub(!self.is_zero() as u64);
        Scalar([w0 & nz, w1 & nz, w2 & nz, w3 & nz])
    }

    /// `self + o mod n`.
    pub fn add(&self, o: &Scalar) -> Scalar {
        let (a, b) = (self.0, o.0);
        let (w0, c) = adc(a[0], b[0], 0);
        let (w1, c) = adc(a[1], b[1], c);
        let (w2, c) = adc(a[2], b[2], c);
        let (w3, c) = adc(a[3], b[3], c);
        let (s0, bw) = sbb(w0, N[0], 0);
        let (s1, bw) = sbb(w1, N[1], bw);
        let (s2, bw) = sbb(w2, N[2], bw);
        let (s3, bw) = sbb(w3, N[3], bw);
        let (_, bw) = sbb(c, 0, bw);
        Scalar([
            (w0 & bw) | (s0 & !bw),
            (w1 & bw) | (s1 & !bw),
            (w2 & bw) | (s2 & !bw),
            (w3 & bw) | (s3 & !bw),
        ])
    }

    /// `self · o mod n`.
    pub fn mul(&self, o: &Scalar) -> Scalar {
        Scalar(mont_mul(&mont_mul(&self.0, &o.0), &RR))
    }

    /// `self` if `mask` is 0, `o` if all ones.
    pub(crate) fn select(&self, o: &Scalar, mask: u64) -> Scalar {
        let (a, b) = (self.0, o.0);
        Scalar([
            (a[0] & !mask) | (b[0] & mask),
            (a[1] & !mask) | (b[1] & mask),
            (a[2] & !mask) | (b[2] & mask),
            (a[3] & !mask) | (b[3] & mask),
        ])
    }

    /// Decimal digits (`BN_bn2dec`), used for the reference's random hash-to-curve inputs.
    pub fn to_decimal(&self) -> String {
        let mut w = self.0;
        if w == [0; 4] {
            return "0".into();
        }
        let mut digits = Vec::new();
        while w != [0; 4] {
            // Divide by 10^19 and emit 19 digits per round.
            let mut rem = 0u128;
            for limb in w.iter_mut().rev() {
                let cur = (rem << 64) | (*limb as u128);
                *limb = (cur / 10_000_000_000_000_000_000u128) as u64;
                rem = cur % 10_000_000_000_000_000_000u128;
            }
            let mut r = rem as u64;
            for _ in 0..19 {
                digits.push(b'0' + (r % 10) as u8);
                r /= 10;
            }
        }
        while digits.len() > 1 && digits.last() == Some(&b'0') {
            digits.pop();
        }
        digits.reverse();
        String::from_utf8(digits).unwrap_or_default()
    }
}

/// Montgomery multiplication modulo `n`: `a·b·2^−256 mod n` (inputs below `n`).
fn mont_mul(a: &[u64; 4], b: &[u64; 4]) -> [u64; 4] {
    let mut t = [0u64; 6];
    for &ai in a.iter() {
        // t += ai · b
        let mut c = 0;
        for j in 0..4 {
            let (v, nc) = mac(t[j], ai, b[j], c);
            t[j] = v;
            c = nc;
        }
        let (v, c2) = adc(t[4], c, 0);
        t[4] = v;
        t[5] = c2;
        // t += m · n, then shift one limb.
        let m = t[0].wrapping_mul(N0);
        let (_, mut c) = mac(t[0], m, N[0], 0);
        for j in 1..4 {
            let (v, nc) = mac(t[j], m, N[j], c);
            t[j - 1] = v;
            c = nc;
        }
        let (v, c2) = adc(t[4], c, 0);
        t[3] = v;
        t[4] = t[5] + c2;
    }
    let r = [t[0], t[1], t[2], t[3]];
    let (s0, bw) = sbb(r[0], N[0], 0);
    let (s1, bw) = sbb(r[1], N[1], bw);
    let (s2, bw) = sbb(r[2], N[2], bw);
    let (s3, bw) = sbb(r[3], N[3], bw);
    let (_, bw) = sbb(t[4], 0, bw);
    [
        (r[0] & bw) | (s0 & !bw),
        (r[1] & bw) | (s1 & !bw),
        (r[2] & bw) | (s2 & !bw),
        (r[3] & bw) | (s3 & !bw),
    ]
}

/// Signed odd digits of the regular recoding of an odd `k` in windows of `w` bits:
/// `k = Σ dᵢ·2^(w·i)`, every `dᵢ` odd with `|dᵢ| < 2^w`, `len` digits (the last positive).
pub(crate) fn recode_odd(k: &[u64; 4], w: u32, len: usize, out: &mut Vec<i32>) {
    out.clear();
    let mut v = [k[0], k[1], k[2], k[3], 0u64];
    let mask = (1u64 << (w + 1)) - 1;
    let half = 1i64 << w;
    for _ in 0..len - 1 {
        let d = (v[0] & mask) as i64 - half;
        out.push(d as i32);
        // v − d = (v with its low w+1 bits cleared) + 2^w: no carries, no branches.
        let s0 = (v[0] & !mask) | (1u64 << w);
        v = [
            (s0 >> w) | (v[1] << (64 - w)),
            (v[1] >> w) | (v[2] << (64 - w)),
            (v[2] >> w) | (v[3] << (64 - w)),
            (v[3] >> w) | (v[4] << (64 - w)),
            v[4] >> w,
        ];
    }
    out.push(v[0] as i32);
}
