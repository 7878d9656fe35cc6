//! Points of P-256 (`y² = x³ − 3x + b`): affine points (never the identity), Jacobian points
//! (`Z = 0` is the identity), the group law, and SEC1 encodings.

use crate::field::{Fe, batch_invert};

/// `b` in canonical limbs.
const B: [u64; 4] = [
    0x3bce_3c3e_27d2_604b,
    0x651d_06b0_cc53_b0f6,
    0xb3eb_bd55_7698_86bc,
    0x5ac6_35d8_aa3a_93e7,
];
const GX: [u64; 4] = [
    0xf4a1_3945_d898_c296,
    0x7703_7d81_2deb_33a0,
    0xf8bc_e6e5_63a4_40f2,
    0x6b17_d1f2_e12c_4247,
];
const GY: [u64; 4] = [
    0xcbb6_4068_37bf_51f5,
    0x2bce_3357_6b31_5ece,
    0x8ee7_eb4a_7c0f_9e16,
    0x4fe3_42e2_fe1a_7f9b,
];

/// Length of a compressed point.
pub const POINT_LEN: usize = 33;
/// Length of an uncompressed point.
pub const UNCOMPRESSED_LEN: usize = 65;

/// A point other than the identity, `(x, y)` on the curve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Affine {
    pub(crate) x: Fe,
    pub(crate) y: Fe,
}

/// A point in Jacobian coordinates `(X/Z², Y/Z³)`; `Z = 0` is the identity.
#[derive(Clone, Copy, Debug)]
pub struct Jacobian {
    pub(crate) x: Fe,
    pub(crate) y: Fe,
    pub(crate) z: Fe,
}

/// `x³ − 3x + b`.
fn rhs(x: &Fe) -> Fe {
    let b = Fe::from_canonical(B);
    let x2 = x.square();
    let x3 = x2.mul(x);
    let three_x = x.double().add(x);
    x3.sub(&three_x).add(&b)
}

impl Affine {
    /// The generator `G`.
    pub fn generator() -> Affine {
        Affine {
            x: Fe::from_canonical(GX),
            y: Fe::from_canonical(GY),
        }
    }

    /// Decodes a SEC1 point: 33 bytes compressed (`02`/`03` ‖ x) or 65 bytes uncompressed
    /// (`04` ‖ x ‖ y). `None` for any other length or prefix, a coordinate `≥ p`, or a point
    /// not on the curve. The identity has no encoding here (as in the reference).
    pub fn decode(bytes: &[u8]) -> Option<Affine> {
        match bytes.len() {
            POINT_LEN => {
                let prefix = bytes[0];
                if prefix != 2 && prefix != 3 {
                    return None;
                }
                let x = Fe::from_be_bytes(bytes[1..].try_into().ok()?)?;
                let y = rhs(&x).sqrt()?;
                let odd = prefix == 3;
                let y = if y.is_odd() == odd { y } else { y.neg() };
                Some(Affine { x, y })
            }
            UNCOMPRESSED_LEN => {
                if bytes[0] != 4 {
                    return None;
                }
                let x = Fe::from_be_bytes(bytes[1..33].try_into().ok()?)?;
                let y = Fe::from_be_bytes(bytes[33..].try_into().ok()?)?;
                if y.square() == rhs(&x) {
                    Some(Affine { x, y })
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// Compressed SEC1 encoding.
    pub fn encode(&self) -> [u8; POINT_LEN] {
        let mut out = [0u8; POINT_LEN];
        out[0] = if self.y.is_odd() { 3 } else { 2 };
        out[1..].copy_from_slice(&self.x.to_be_bytes());
        out
    }

    /// Uncompressed SEC1 encoding.
    pub fn encode_uncompressed(&self) -> [u8; UNCOMPRESSED_LEN] {
        let mut out = [0u8; UNCOMPRESSED_LEN];
        out[0] = 4;
        out[1..33].copy_from_slice(&self.x.to_be_bytes());
        out[33..].copy_from_slice(&self.y.to_be_bytes());
        out
    }

    /// The point with even `y` and this `x`, if `x` is on the curve (hash-to-curve).
    pub(crate) fn from_x_even(x: Fe) -> Option<Affine> {
        let t = rhs(&x);
        if t.is_zero() {
            // The reference treats t = 0 as a non-square.
            return None;
        }
        let y = t.sqrt()?;
        let y = if y.is_odd() { y.neg() } else { y };
        Some(Affine { x, y })
    }

    pub fn neg(&self) -> Affine {
        Affine {
            x: self.x,
            y: self.y.neg(),
        }
    }

    /// `self` with `y` negated when `mask` is all ones (no branch).
    #[inline(always)]
    pub(crate) fn cneg(&self, mask: u64) -> Affine {
        Affine {
            x: self.x,
            y: Fe::select(&self.y, &self.y.neg(), mask),
        }
    }

    pub fn to_jacobian(&self) -> Jacobian {
        Jacobian {
            x: self.x,
            y: self.y,
            z: Fe::ONE,
        }
    }
}

impl Jacobian {
    pub const IDENTITY: Jacobian = Jacobian {
        x: Fe::ONE,
        y: Fe::ONE,
        z: Fe::ZERO,
    };

    pub fn is_identity(&self) -> bool {
        self.z.is_zero()
    }

    /// The affine point, `None` for the identity (one inversion; see [`normalize_batch`]).
    pub fn to_affine(&self) -> Option<Affine> {
        if self.is_identity() {
            return None;
        }
        let zi = self.z.invert();
        let zi2 = zi.square();
        Some(Affine {
            x: self.x.mul(&zi2),
            y: self.y.mul(&zi2.mul(&zi)),
        })
    }

    /// The affine point of a Jacobian point whose `Z` is 1 or 0 (one built from an affine
    /// point by at most one step from the identity), without an inversion.
    pub(crate) fn affine_if_z_one(&self) -> Option<Affine> {
        if self.is_identity() {
            None
        } else if self.z == Fe::ONE {
            Some(Affine {
                x: self.x,
                y: self.y,
            })
        } else {
            self.to_affine()
        }
    }

    pub fn neg(&self) -> Jacobian {
        Jacobian {
            x: self.x,
            y: self.y.neg(),
            z: self.z,
        }
    }

    /// `2·self` (dbl-2001-b, a = −3); the identity stays the identity.
    #[inline(always)]
    pub fn double(&self) -> Jacobian {
        let delta = self.z.square();
        let gamma = self.y.square();
        let beta = self.x.mul(&gamma);
        let t = self.x.sub(&delta).mul(&self.x.add(&delta));
        let alpha = t.double().add(&t);
        let beta4 = beta.double().double();
        let x3 = alpha.square().sub(&beta4.double());
        let z3 = self.y.add(&self.z).square().sub(&gamma).sub(&delta);
        let g2 = gamma.square().double();
        let y3 = alpha.mul(&beta4.sub(&x3)).sub(&g2.double().double());
        Jacobian {
            x: x3,
            y: y3,
            z: z3,
        }
    }

    /// `self + o` (add-2007-bl), correct for every input including equal, opposite and
    /// identity points (those rare cases take a branch).
    pub fn add(&self, o: &Jacobian) -> Jacobian {
        if self.is_identity() {
            return *o;
        }
        if o.is_identity() {
            return *self;
        }
        let z1z1 = self.z.square();
        let z2z2 = o.z.square();
        let u1 = self.x.mul(&z2z2);
        let u2 = o.x.mul(&z1z1);
        let s1 = self.y.mul(&o.z).mul(&z2z2);
        let s2 = o.y.mul(&self.z).mul(&z1z1);
        let h = u2.sub(&u1);
        let r = s2.sub(&s1).double();
        if h.is_zero() {
            return if r.is_zero() {
                self.double()
            } else {
                Jacobian::IDENTITY
            };
        }
        let i = h.double().square();
        let j = h.mul(&i);
        let v = u1.mul(&i);
        let x3 = r.square().sub(&j).sub(&v.double());
        let y3 = r.mul(&v.sub(&x3)).sub(&s1.mul(&j).double());
        let z3 = self.z.add(&o.z).square().sub(&z1z1).sub(&z2z2).mul(&h);
        Jacobian {
            x: x3,
            y: y3,
            z: z3,
        }
    }

    /// `self + o` for an affine `o` (madd-2007-bl), correct for every input.
    #[inline(always)]
    pub fn add_affine(&self, o: &Affine) -> Jacobian {
        if self.is_identity() {
            return o.to_jacobian();
        }
        let z1z1 = self.z.square();
        let u2 = o.x.mul(&z1z1);
        let s2 = o.y.mul(&self.z).mul(&z1z1);
        let h = u2.sub(&self.x);
        let r = s2.sub(&self.y).double();
        if h.is_zero() {
            return if r.is_zero() {
                self.double()
            } else {
                Jacobian::IDENTITY
            };
        }
        let hh = h.square();
        let i = hh.double().double();
        let j = h.mul(&i);
        let v = self.x.mul(&i);
        let x3 = r.square().sub(&j).sub(&v.double());
        let y3 = r.mul(&v.sub(&x3)).sub(&self.y.mul(&j).double());
        let z3 = self.z.add(&h).square().sub(&z1z1).sub(&hh);
        Jacobian {
            x: x3,
            y: y3,
            z: z3,
        }
    }
}

/// Affine forms of `points` with one field inversion for the whole slice; the identity
/// gives `None`.
pub fn normalize_batch(points: &[Jacobian]) -> Vec<Option<Affine>> {
    let mut zs: Vec<Fe> = points.iter().map(|p| p.z).collect();
    let mut scratch = Vec::with_capacity(zs.len());
    batch_invert(&mut zs, &mut scratch);
    points
        .iter()
        .zip(zs.iter())
        .map(|(p, zi)| {
            if p.is_identity() {
                return None;
            }
            let zi2 = zi.square();
            Some(Affine {
                x: p.x.mul(&zi2),
                y: p.y.mul(&zi2.mul(zi)),
            })
        })
        .collect()
}
