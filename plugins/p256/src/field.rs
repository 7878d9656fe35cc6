//! The base field of P-256, `p = 2^256 − 2^224 + 2^192 + 2^96 − 1`, in Montgomery form
//! (`R = 2^256`), four 64-bit limbs, always fully reduced.
//!
//! Multiplication uses the shape of `p` (`−p⁻¹ mod 2^64 = 1`, `p₀ = 2^64 − 1`, `p₂ = 0`), so a
//! reduction round is shifts and one multiplication. Nothing here branches on values.

/// `p`, little-endian limbs.
pub(crate) const P: [u64; 4] = [
    0xffff_ffff_ffff_ffff,
    0x0000_0000_ffff_ffff,
    0x0000_0000_0000_0000,
    0xffff_ffff_0000_0001,
];
/// `R² mod p`.
const R2: [u64; 4] = [
    0x0000_0000_0000_0003,
    0xffff_fffb_ffff_ffff,
    0xffff_ffff_ffff_fffe,
    0x0000_0004_ffff_fffd,
];

#[inline(always)]
pub(crate) const fn adc(a: u64, b: u64, carry: u64) -> (u64, u64) {
    let t = (a as u128) + (b as u128) + (carry as u128);
    (t as u64, (t >> 64) as u64)
}

/// `a − b − borrow` where `borrow` is 0 or all ones; returns the new borrow the same way.
#[inline(always)]
pub(crate) const fn sbb(a: u64, b: u64, borrow: u64) -> (u64, u64) {
    let t = (a as u128).wrapping_sub((b as u128) + ((borrow >> 63) as u128));
    (t as u64, (t >> 64) as u64)
}

#[inline(always)]
pub(crate) const fn mac(a: u64, b: u64, c: u64, carry: u64) -> (u64, u64) {
    let t = (a as u128) + (b as u128) * (c as u128) + (carry as u128);
    (t as u64, (t >> 64) as u64)
}

/// A field element in Montgomery form.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fe(pub(crate) [u64; 4]);

impl PartialEq for Fe {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other)
    }
}
impl Eq for Fe {}

/// Montgomery reduction of a 512-bit value `< p·2^256`.
#[inline(always)]
const fn reduce(r: [u64; 8]) -> Fe {
    let [r0, r1, r2, r3, r4, r5, r6, r7] = r;
    // Round i adds m·p·2^(64i) with m = r_i: m·p₀ + r_i = m·2^64 (carry m), and
    // m·p₁ + m = m·2^32, so the low two limbs take m << 32 and m >> 32.
    let (r1, c) = adc(r1, r0 << 32, 0);
    let (r2, c) = adc(r2, r0 >> 32, c);
    let (r3, c) = mac(r3, r0, P[3], c);
    let (r4, c2) = adc(r4, 0, c);

    let (r2, c) = adc(r2, r1 << 32, 0);
    let (r3, c) = adc(r3, r1 >> 32, c);
    let (r4, c) = mac(r4, r1, P[3], c);
    let (r5, c2) = adc(r5, c2, c);

    let (r3, c) = adc(r3, r2 << 32, 0);
    let (r4, c) = adc(r4, r2 >> 32, c);
    let (r5, c) = mac(r5, r2, P[3], c);
    let (r6, c2) = adc(r6, c2, c);

    let (r4, c) = adc(r4, r3 << 32, 0);
    let (r5, c) = adc(r5, r3 >> 32, c);
    let (r6, c) = mac(r6, r3, P[3], c);
    let (r7, r8) = adc(r7, c2, c);
    sub_p([r4, r5, r6, r7], r8)
}

/// `a + hi·2^256` reduced once by `p` (the input is below `2p`).
#[inline(always)]
const fn sub_p(a: [u64; 4], hi: u64) -> Fe {
    let (w0, b) = sbb(a[0], P[0], 0);
    let (w1, b) = sbb(a[1], P[1], b);
    let (w2, b) = sbb(a[2], P[2], b);
    let (w3, b) = sbb(a[3], P[3], b);
    let (_, b) = sbb(hi, 0, b);
    // b is all ones when a < p: keep a.
    Fe([
        (a[0] & b) | (w0 & !b),
        (a[1] & b) | (w1 & !b),
        (a[2] & b) | (w2 & !b),
        (a[3] & b) | (w3 & !b),
    ])
}

impl Fe {
    /// 0.
    pub const ZERO: Fe = Fe([0; 4]);
    /// 1 (that is, `R mod p`).
    pub const ONE: Fe = Fe([
        0x0000_0000_0000_0001,
        0xffff_ffff_0000_0000,
        0xffff_ffff_ffff_ffff,
        0x0000_0000_ffff_fffe,
    ]);

    /// The element with canonical little-endian limbs `w` (must be `< p`).
    pub(crate) const fn from_canonical(w: [u64; 4]) -> Fe {
        Fe(w).mul(&Fe(R2))
    }

    /// Canonical little-endian limbs.
    pub(crate) const fn to_canonical(self) -> [u64; 4] {
        let a = self.0;
        reduce([a[0], a[1], a[2], a[3], 0, 0, 0, 0]).0
    }

    /// Parses 32 big-endian bytes; `None` unless the value is below `p`.
    pub fn from_be_bytes(b: &[u8; 32]) -> Option<Fe> {
        let w = limbs_from_be(b);
        if lt(&w, &P) {
            Some(Fe::from_canonical(w))
        } else {
            None
        }
    }

    /// 32 big-endian bytes of the canonical value.
    pub fn to_be_bytes(self) -> [u8; 32] {
        be_from_limbs(&self.to_canonical())
    }

    /// A small integer.
    pub const fn from_u64(v: u64) -> Fe {
        Fe::from_canonical([v, 0, 0, 0])
    }

    #[inline(always)]
    pub const fn mul(&self, o: &Fe) -> Fe {
        let a = &self.0;
        let b = &o.0;
        let (w0, c) = mac(0, a[0], b[0], 0);
        let (w1, c) = mac(0, a[0], b[1], c);
        let (w2, c) = mac(0, a[0], b[2], c);
        let (w3, w4) = mac(0, a[0], b[3], c);
        let (w1, c) = mac(w1, a[1], b[0], 0);
        let (w2, c) = mac(w2, a[1], b[1], c);
        let (w3, c) = mac(w3, a[1], b[2], c);
        let (w4, w5) = mac(w4, a[1], b[3], c);
        let (w2, c) = mac(w2, a[2], b[0], 0);
        let (w3, c) = mac(w3, a[2], b[1], c);
        let (w4, c) = mac(w4, a[2], b[2], c);
        let (w5, w6) = mac(w5, a[2], b[3], c);
        let (w3, c) = mac(w3, a[3], b[0], 0);
        let (w4, c) = mac(w4, a[3], b[1], c);
        let (w5, c) = mac(w5, a[3], b[2], c);
        let (w6, w7) = mac(w6, a[3], b[3], c);
        reduce([w0, w1, w2, w3, w4, w5, w6, w7])
    }

    #[inline(always)]
    pub const fn square(&self) -> Fe {
        let a = &self.0;
        let (w1, c) = mac(0, a[0], a[1], 0);
        let (w2, c) = mac(0, a[0], a[2], c);
        let (w3, w4) = mac(0, a[0], a[3], c);
        let (w3, c) = mac(w3, a[1], a[2], 0);
        let (w4, w5) = mac(w4, a[1], a[3], c);
        let (w5, w6) = mac(w5, a[2], a[3], 0);
        let w7 = w6 >> 63;
        let w6 = (w6 << 1) | (w5 >> 63);
        let w5 = (w5 << 1) | (w4 >> 63);
        let w4 = (w4 << 1) | (w3 >> 63);
        let w3 = (w3 << 1) | (w2 >> 63);
        let w2 = (w2 << 1) | (w1 >> 63);
        let w1 = w1 << 1;
        let (w0, c) = mac(0, a[0], a[0], 0);
        let (w1, c) = adc(w1, 0, c);
        let (w2, c) = mac(w2, a[1], a[1], c);
        let (w3, c) = adc(w3, 0, c);
        let (w4, c) = mac(w4, a[2], a[2], c);
        let (w5, c) = adc(w5, 0, c);
        let (w6, c) = mac(w6, a[3], a[3], c);
        let (w7, _) = adc(w7, 0, c);
        reduce([w0, w1, w2, w3, w4, w5, w6, w7])
    }

    #[inline(always)]
    pub const fn add(&self, o: &Fe) -> Fe {
        let a = &self.0;
        let b = &o.0;
        let (w0, c) = adc(a[0], b[0], 0);
        let (w1, c) = adc(a[1], b[1], c);
        let (w2, c) = adc(a[2], b[2], c);
        let (w3, c) = adc(a[3], b[3], c);
        sub_p([w0, w1, w2, w3], c)
    }

    #[inline(always)]
    pub const fn sub(&self, o: &Fe) -> Fe {
        let a = &self.0;
        let b = &o.0;
        let (w0, bw) = sbb(a[0], b[0], 0);
        let (w1, bw) = sbb(a[1], b[1], bw);
        let (w2, bw) = sbb(a[2], b[2], bw);
        let (w3, bw) = sbb(a[3], b[3], bw);
        let (w0, c) = adc(w0, P[0] & bw, 0);
        let (w1, c) = adc(w1, P[1] & bw, c);
        let (w2, c) = adc(w2, P[2] & bw, c);
        let (w3, _) = adc(w3, P[3] & bw, c);
        Fe([w0, w1, w2, w3])
    }

    #[inline(always)]
    pub const fn double(&self) -> Fe {
        self.add(self)
    }

    #[inline(always)]
    pub const fn neg(&self) -> Fe {
        Fe::ZERO.sub(self)
    }

    /// `self^(2^k)`.
    #[inline(always)]
    fn sqn(&self, k: u32) -> Fe {
        let mut t = *self;
        for _ in 0..k {
            t = t.square();
        }
        t
    }

    /// `(x2, x32)` = `self^(2^2 − 1)`, `self^(2^32 − 1)` and `x30`, shared by
    /// [`Fe::invert`] and [`Fe::sqrt`].
    fn pow_chain_base(&self) -> (Fe, Fe, Fe) {
        let x1 = *self;
        let x2 = x1.square().mul(&x1);
        let x3 = x2.square().mul(&x1);
        let x6 = x3.sqn(3).mul(&x3);
        let x12 = x6.sqn(6).mul(&x6);
        let x15 = x12.sqn(3).mul(&x3);
        let x30 = x15.sqn(15).mul(&x15);
        let x32 = x30.sqn(2).mul(&x2);
        (x2, x30, x32)
    }

    /// `self⁻¹` (Fermat: `self^(p−2)`); 0 maps to 0.
    pub fn invert(&self) -> Fe {
        // p − 2 = ffffffff 00000001 00000000 00000000 00000000 ffffffff ffffffff fffffffd
        let (_, x30, x32) = self.pow_chain_base();
        let mut t = x32.sqn(32).mul(self);
        t = t.sqn(128).mul(&x32);
        t = t.sqn(32).mul(&x32);
        t = t.sqn(30).mul(&x30);
        t.sqn(2).mul(self)
    }

    /// A square root (`self^((p+1)/4)`, valid as p ≡ 3 mod 4) if `self` is a square.
    pub fn sqrt(&self) -> Option<Fe> {
        // (p + 1)/4 = 2^254 − 2^222 + 2^190 + 2^94: 32 ones, 31 zeros, 1, 95 zeros, 1, 94 zeros.
        let (_, _, x32) = self.pow_chain_base();
        let mut t = x32.sqn(32).mul(self);
        t = t.sqn(96).mul(self);
        t = t.sqn(94);
        if t.square() == *self { Some(t) } else { None }
    }

    /// Whether the canonical value is odd.
    pub fn is_odd(&self) -> bool {
        self.to_canonical()[0] & 1 == 1
    }

    /// Whether this is 0 (no early exit).
    pub fn is_zero(&self) -> bool {
        let a = self.0;
        (a[0] | a[1] | a[2] | a[3]) == 0
    }

    /// Equality without an early exit.
    pub fn ct_eq(&self, o: &Fe) -> bool {
        let (a, b) = (self.0, o.0);
        ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])) == 0
    }

    /// `a` if `mask` is 0, `b` if `mask` is all ones.
    #[inline(always)]
    pub(crate) fn select(a: &Fe, b: &Fe, mask: u64) -> Fe {
        Fe([
            (a.0[0] & !mask) | (b.0[0] & mask),
            (a.0[1] & !mask) | (b.0[1] & mask),
            (a.0[2] & !mask) | (b.0[2] & mask),
            (a.0[3] & !mask) | (b.0[3] & mask),
        ])
    }
}

/// Big-endian bytes to little-endian limbs.
pub(crate) fn limbs_from_be(b: &[u8; 32]) -> [u64; 4] {
    let mut w = [0u64; 4];
    for (i, limb) in w.iter_mut().enumerate() {
        let mut chunk = [0u8; 8];
        chunk.copy_from_slice(&b[32 - 8 * (i + 1)..32 - 8 * i]);
        *limb = u64::from_be_bytes(chunk);
    }
    w
}

/// Little-endian limbs to big-endian bytes.
pub(crate) fn be_from_limbs(w: &[u64; 4]) -> [u8; 32] {
    let mut b = [0u8; 32];
    for (i, limb) in w.iter().enumerate() {
        b[32 - 8 * (i + 1)..32 - 8 * i].copy_from_slice(&limb.to_be_bytes());
    }
    b
}

/// `a < b` on little-endian limbs.
pub(crate) fn lt(a: &[u64; 4], b: &[u64; 4]) -> bool {
    let (_, b0) = sbb(a[0], b[0], 0);
    let (_, b1) = sbb(a[1], b[1], b0);
    let (_, b2) = sbb(a[2], b[2], b1);
    let (_, b3) = sbb(a[3], b[3], b2);
    b3 != 0
}

/// Inverts every element of `v` in place with one field inversion (Montgomery's trick).
/// Zero elements stay zero and do not disturb the others.
pub fn batch_invert(v: &mut [Fe], scratch: &mut Vec<Fe>) {
    scratch.clear();
    let mut acc = Fe::ONE;
    for x in v.iter() {
        scratch.push(acc);
        // Skip zeros by multiplying with 1 instead.
        let z = x.is_zero();
        let f = Fe::select(x, &Fe::ONE, 0u64.wrapping_sub(z as u64));
        acc = acc.mul(&f);
    }
    let mut inv = acc.invert();
    for (x, before) in v.iter_mut().zip(scratch.iter()).rev() {
        let z = x.is_zero();
        let f = Fe::select(x, &Fe::ONE, 0u64.wrapping_sub(z as u64));
        let xi = inv.mul(before);
        inv = inv.mul(&f);
        *x = Fe::select(&xi, &Fe::ZERO, 0u64.wrapping_sub(z as u64));
    }
}

/// [`batch_invert`] for slices known to hold no zero (3 multiplications per element).
pub(crate) fn batch_invert_nonzero(v: &mut [Fe], scratch: &mut Vec<Fe>) {
    scratch.clear();
    let mut acc = Fe::ONE;
    for x in v.iter() {
        scratch.push(acc);
        acc = acc.mul(x);
    }
    let mut inv = acc.invert();
    for (x, before) in v.iter_mut().zip(scratch.iter()).rev() {
        let xi = inv.mul(before);
        inv = inv.mul(x);
        *x = xi;
    }
}
