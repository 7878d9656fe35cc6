//! The data provider's side (mpc-crypto §1.3, halo-system §8.1): a plaintext sketch encrypted
//! register by register under the combined duchy key, with destroyed registers flagged
//! (`FLAGGED_KEY`, the strategy data providers use).

use halo_p256::backend::{CIPHERTEXT_LEN, Crypto, POINT_LEN};

use crate::protocol::{DESTROYED_REGISTER_KEY, Error, MAX_ELEMENTS, UNIT_POINT};
use crate::sketch::PlainRegister;

fn crypto(what: &'static str) -> impl Fn(halo_p256::backend::CryptoError) -> Error {
    move |e| Error::Invalid(format!("{what}: {e:?}"))
}

/// Encrypts `registers` under `y` (mpc-crypto §1.3): for reach and frequency, 198 bytes per
/// register `Enc(H(index)) ‖ Enc(H(key)) ‖ Enc(min(count, MF + 1)·P1)`, keys hashed in their
/// +1-shifted proto form, destroyed registers as `Enc(H(index)) ‖ Enc(H("destroyed_register_key"))`
/// twice; for reach only (`reach_only`), 66 bytes per register `Enc(H(index))`.
pub fn encrypt_sketch<C: Crypto>(
    c: &C,
    y: &C::FixedBase,
    registers: &[PlainRegister],
    maximum_frequency: u32,
    reach_only: bool,
) -> Result<Vec<u8>, Error> {
    if registers.is_empty() {
        return Ok(Vec::new());
    }
    if registers.len() > MAX_ELEMENTS {
        return Err(Error::Invalid(format!(
            "{} registers is more than {MAX_ELEMENTS}",
            registers.len()
        )));
    }
    if maximum_frequency == 0 {
        return Err(Error::Invalid(
            "maximum frequency must be at least 1".into(),
        ));
    }
    let mut messages: Vec<Vec<u8>> = registers
        .iter()
        .map(|r| r.index.to_string().into_bytes())
        .collect();
    if !reach_only {
        messages.extend(
            registers
                .iter()
                .filter(|r| r.key > 0)
                .map(|r| r.key.to_string().into_bytes()),
        );
        messages.push(DESTROYED_REGISTER_KEY.as_bytes().to_vec());
        messages.push(UNIT_POINT.as_bytes().to_vec());
    }
    let (hashed, _) = c
        .hash_to_curve(&messages)
        .map_err(crypto("hash to curve"))?;
    let n = registers.len();
    let point = |i: usize| &hashed[i * POINT_LEN..(i + 1) * POINT_LEN];
    if reach_only {
        return c.encrypt(y, &hashed).map_err(crypto("encrypt"));
    }
    let keys = messages.len() - 2 - n;
    let destroyed = point(n + keys);
    let p1 = point(n + keys + 1);
    let cap = maximum_frequency.saturating_add(1);
    let counts = c.multiples(p1, cap).map_err(crypto("count points"))?;
    let mut plain = Vec::with_capacity(n * 3 * POINT_LEN);
    let mut next_key = n;
    for (i, r) in registers.iter().enumerate() {
        plain.extend_from_slice(point(i));
        if r.key > 0 {
            if r.count == 0 {
                return Err(Error::Invalid(format!("register {} has count 0", r.index)));
            }
            plain.extend_from_slice(point(next_key));
            next_key += 1;
            let c = r.count.min(u64::from(cap)) as usize;
            plain.extend_from_slice(&counts[(c - 1) * POINT_LEN..c * POINT_LEN]);
        } else {
            plain.extend_from_slice(destroyed);
            plain.extend_from_slice(destroyed);
        }
    }
    let out = c.encrypt(y, &plain).map_err(crypto("encrypt"))?;
    debug_assert_eq!(out.len(), n * 3 * CIPHERTEXT_LEN);
    Ok(out)
}
