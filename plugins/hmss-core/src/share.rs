//! Additive secret sharing over `Z_q` (spec §6.2 EDP `GenerateSecretShares`, §6.4 step 2
//! `GenerateShareFromSeed`, §6.5 `CombineFrequencyVectorShares`).

use crate::error::{HmssError, invalid};
use crate::keystream::Keystream;
use crate::prng::Prng;
use crate::ring::{Modulus, Register};

/// Expands a seed share over any keystream: `PRNG(seed).UniformRange(len, q)` (spec §6.2, §6.4 step 2).
pub fn share_from_keystream<K: Keystream>(
    ks: K,
    len: usize,
    q: u32,
) -> Result<Vec<u32>, HmssError> {
    Prng::new(ks).uniform_range(len, q)
}

/// `x[i] = (x[i] + s[i]) mod q` with `s = PRNG(ks).UniformRange(|x|, q)` drawn on the fly
/// (spec §6.4 step 2 with `GenerateShareFromSeed`): a seed share is added into the sum
/// without being materialised. Every `x[i]` must already be `< q`.
pub fn add_share_from_keystream<R: Register, K: Keystream>(
    x: &mut [R],
    ks: K,
    q: u32,
) -> Result<(), HmssError> {
    let m = Modulus::new(q)?;
    let mut i = 0usize;
    if q <= 256 {
        return Prng::new(ks).uniform_range_bytes(x.len(), q, |batch| {
            let end = (i + batch.len()).min(x.len());
            R::add_assign_bytes(&mut x[i..end], batch, &m);
            i = end;
        });
    }
    Prng::new(ks).uniform_range_each(x.len(), q, |v| {
        if let Some(a) = x.get_mut(i) {
            *a = R::from_u32(m.add(a.get(), v));
        }
        i += 1;
    })
}

/// `s1 = PRNG(key ‖ iv).UniformRange(len, q)`, the seed-held share (spec §6.2; `GenerateShareFromSeed`, §6.4 step 2).
#[cfg(feature = "ctr-keystream")]
pub fn share_from_seed(seed: &crate::Seed, len: usize, q: u32) -> Result<Vec<u32>, HmssError> {
    share_from_keystream(crate::keystream::CtrKeystream::from_seed(seed), len, q)
}

/// `s2[i] = (v[i] − s1[i]) mod q` given the seed-derived `s1` (spec §6.2). Every `v[i]` must be `< q`.
pub fn split_with_share(v: &[u32], s1: &[u32], q: u32) -> Result<Vec<u32>, HmssError> {
    if v.len() != s1.len() {
        return Err(invalid("frequency vector and share lengths differ"));
    }
    v.iter()
        .zip(s1)
        .map(|(&x, &r)| {
            if x >= q {
                Err(invalid(format!("value {x} is not below q = {q}")))
            } else {
                Ok(sub_mod(x, r, q))
            }
        })
        .collect()
}

/// The EDP's data share `s2 = (v − PRNG(seed).UniformRange(len, q)) mod q` (spec §6.2).
#[cfg(feature = "ctr-keystream")]
pub fn split(v: &[u32], seed: &crate::Seed, q: u32) -> Result<Vec<u32>, HmssError> {
    let s1 = share_from_seed(seed, v.len(), q)?;
    split_with_share(v, &s1, q)
}

/// `(a + b) mod q` for `a, b < q` (spec §6.6 add-mod).
pub fn add_mod(a: u32, b: u32, q: u32) -> u32 {
    ((u64::from(a) + u64::from(b)) % u64::from(q)) as u32
}

/// `(a − b) mod q` for `a, b < q` (spec §6.6 sub-mod).
pub fn sub_mod(a: u32, b: u32, q: u32) -> u32 {
    ((u64::from(a) + u64::from(q) - u64::from(b) % u64::from(q)) % u64::from(q)) as u32
}

/// `acc[i] = (acc[i] + share[i]) mod q` (spec §6.4 step 2 `VectorAddMod`). Lengths must match
/// and every element of both vectors must be `< q` (as the reference helpers check).
pub fn add_assign_mod(acc: &mut [u32], share: &[u32], q: u32) -> Result<(), HmssError> {
    if acc.len() != share.len() {
        return Err(invalid(format!(
            "share length {} differs from {}",
            share.len(),
            acc.len()
        )));
    }
    check_below(acc, q)?;
    check_below(share, q)?;
    for (a, &s) in acc.iter_mut().zip(share) {
        *a = add_mod(*a, s, q);
    }
    Ok(())
}

/// Checks that every element is `< q` (spec §6.2 "inputs must be `< q`").
pub fn check_below(v: &[u32], q: u32) -> Result<(), HmssError> {
    match v.iter().position(|&x| x >= q) {
        Some(i) => Err(invalid(format!(
            "element {i} is {}, not below the modulus {q}",
            v[i]
        ))),
        None => Ok(()),
    }
}

/// Secret-shares `v` with a share of `R` registers: `s2 = (v − s1) mod q` with
/// `s1 = PRNG(ks).UniformRange(|v|, q)` (spec §6.2), computed in one pass. Every `v[i]` must be
/// `< q` and `R` must serve `q`.
pub fn split_from_keystream<R: Register, K: Keystream>(
    v: &[u32],
    ks: K,
    q: u32,
) -> Result<Vec<R>, HmssError> {
    let m = Modulus::new(q)?;
    if !R::serves(q) {
        return Err(invalid(format!(
            "modulus {q} does not fit the register type"
        )));
    }
    m.check_below(v)?;
    let mut out = Vec::with_capacity(v.len());
    if q <= 256 {
        Prng::new(ks).uniform_range_bytes(v.len(), q, |batch| {
            let at = out.len();
            out.extend(
                v[at..at + batch.len()]
                    .iter()
                    .zip(batch)
                    .map(|(&x, &s1)| R::from_u32(m.sub(x, u32::from(s1)))),
            );
        })?;
        return Ok(out);
    }
    Prng::new(ks).uniform_range_each(v.len(), q, |s1| {
        let i = out.len();
        out.push(R::from_u32(m.sub(v.get(i).copied().unwrap_or(0), s1)));
    })?;
    Ok(out)
}

/// `Z = (share_1 + share_2) mod q`, exactly two equal-length shares (spec §6.5 `CombineFrequencyVectorShares`).
pub fn combine(shares: &[&[u32]], q: u32) -> Result<Vec<u32>, HmssError> {
    if q < 2 {
        return Err(invalid("q must be at least 2"));
    }
    let [a, b] = shares else {
        return Err(invalid(format!(
            "exactly 2 shares are required, got {}",
            shares.len()
        )));
    };
    let mut z = a.to_vec();
    add_assign_mod(&mut z, b, q)?;
    Ok(z)
}

#[cfg(all(test, feature = "ctr-keystream"))]
mod tests {
    use super::*;
    use crate::test_vectors::nist_seed;

    /// §6.3 KAT: EDP share with seed key‖iv, v = [0,1,2,0,3,1,0,0,5,2], q = 127.
    #[test]
    fn kat_edp_share() {
        let v = [0, 1, 2, 0, 3, 1, 0, 0, 5, 2];
        let s1 = share_from_seed(&nist_seed(), 10, 127);
        assert_eq!(s1, Ok(vec![11, 95, 125, 113, 89, 23, 22, 51, 94, 26]));
        let s2 = split(&v, &nist_seed(), 127);
        assert_eq!(s2, Ok(vec![116, 33, 4, 14, 41, 105, 105, 76, 38, 103]));
        let s1 = s1.unwrap_or_default();
        let s2 = s2.unwrap_or_default();
        assert_eq!(combine(&[&s1, &s2], 127), Ok(v.to_vec()));
    }

    #[test]
    fn split_rejects_values_at_or_above_q() {
        assert!(split(&[127], &nist_seed(), 127).is_err());
        assert!(split_with_share(&[1, 2], &[1], 127).is_err());
    }

    #[test]
    fn combine_requires_two_equal_shares() {
        assert!(combine(&[&[1, 2]], 8).is_err());
        assert!(combine(&[&[1, 2], &[1]], 8).is_err());
        assert!(combine(&[&[1, 8], &[1, 0]], 8).is_err());
        assert_eq!(
            combine(&[&[3, 4, 3, 6, 1, 7, 2, 0], &[5, 4, 5, 2, 0, 3, 1, 4]], 8),
            Ok(vec![0, 0, 0, 0, 1, 2, 3, 4])
        );
    }

    #[test]
    fn mod_ops() {
        assert_eq!(sub_mod(0, 11, 127), 116);
        assert_eq!(add_mod(126, 126, 127), 125);
        assert_eq!(sub_mod(5, 5, 127), 0);
        assert_eq!(add_mod(u32::MAX - 1, u32::MAX - 1, u32::MAX), u32::MAX - 2);
    }
}
