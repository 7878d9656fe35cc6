//! Hand-written protobuf codec for `FrequencyVector { repeated uint32 data = 1; }` (spec §6.2:
//! the EDP's `s2` as packed varints, sent in 32 KiB chunks; the SDK has no such prost message).
//!
//! Field number 1 is assumed (the only field of the message; the spec names no number).

use crate::error::HmssError;

/// Field number of `FrequencyVector.data` (spec §6.2; assumed 1).
pub const FREQUENCY_VECTOR_DATA_FIELD: u32 = 1;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Result<u64, HmssError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&b) = buf.get(*pos) else {
            return Err(HmssError::Decode("truncated varint".into()));
        };
        *pos += 1;
        if shift == 63 && b > 1 {
            return Err(HmssError::Decode("varint overflows 64 bits".into()));
        }
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(HmssError::Decode("varint longer than 10 bytes".into()))
}

/// Serializes `FrequencyVector{data}` with `data` packed (spec §6.2). An empty vector encodes
/// to no bytes (proto3 default).
pub fn encode_frequency_vector(data: &[u32]) -> Vec<u8> {
    if data.is_empty() {
        return Vec::new();
    }
    let payload: usize = data.iter().map(|&v| varint_len(u64::from(v))).sum();
    let mut out = Vec::with_capacity(payload + 11);
    put_varint(&mut out, u64::from(FREQUENCY_VECTOR_DATA_FIELD << 3 | 2));
    put_varint(&mut out, payload as u64);
    for &v in data {
        put_varint(&mut out, u64::from(v));
    }
    out
}

/// Parses a serialized `FrequencyVector` (spec §6.2). Accepts packed and unpacked encodings of
/// `data` (possibly several runs, concatenated as protobuf requires), skips unknown fields, and
/// truncates values to `uint32` as protobuf parsers do.
pub fn decode_frequency_vector(buf: &[u8]) -> Result<Vec<u32>, HmssError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < buf.len() {
        let key = get_varint(buf, &mut pos)?;
        let (field, wire) = (key >> 3, key & 7);
        if field == 0 {
            return Err(HmssError::Decode("field number 0".into()));
        }
        match (field == u64::from(FREQUENCY_VECTOR_DATA_FIELD), wire) {
            (true, 0) => out.push(get_varint(buf, &mut pos)? as u32),
            (true, 2) => {
                let end = length_delimited_end(buf, &mut pos)?;
                while pos < end {
                    out.push(get_varint(buf, &mut pos)? as u32);
                }
                if pos != end {
                    return Err(HmssError::Decode("packed varint crosses its length".into()));
                }
            }
            (_, 0) => {
                get_varint(buf, &mut pos)?;
            }
            (_, 1) => pos = skip(buf, pos, 8)?,
            (_, 2) => pos = length_delimited_end(buf, &mut pos)?,
            (_, 5) => pos = skip(buf, pos, 4)?,
            _ => return Err(HmssError::Decode(format!("unsupported wire type {wire}"))),
        }
    }
    Ok(out)
}

fn length_delimited_end(buf: &[u8], pos: &mut usize) -> Result<usize, HmssError> {
    let len = get_varint(buf, pos)?;
    skip(buf, *pos, len)
}

fn skip(buf: &[u8], pos: usize, n: u64) -> Result<usize, HmssError> {
    usize::try_from(n)
        .ok()
        .and_then(|n| pos.checked_add(n))
        .filter(|&end| end <= buf.len())
        .ok_or_else(|| HmssError::Decode("field runs past the end".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_bytes() {
        // Field 1, wire type 2 → 0x0a; length 6; varints 0, 1, 127, 128 (0x80 0x01), 300 (0xac 0x02).
        let v = [0u32, 1, 127, 128, 300];
        let enc = encode_frequency_vector(&v);
        assert_eq!(
            enc,
            vec![0x0a, 0x07, 0x00, 0x01, 0x7f, 0x80, 0x01, 0xac, 0x02]
        );
        assert_eq!(decode_frequency_vector(&enc), Ok(v.to_vec()));
        assert_eq!(encode_frequency_vector(&[]), Vec::<u8>::new());
        assert_eq!(decode_frequency_vector(&[]), Ok(vec![]));
    }

    #[test]
    fn roundtrip_large_and_extreme() {
        let v: Vec<u32> = (0..10_000u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .chain([u32::MAX])
            .collect();
        let enc = encode_frequency_vector(&v);
        assert_eq!(decode_frequency_vector(&enc), Ok(v));
    }

    #[test]
    fn unpacked_split_runs_and_unknown_fields() {
        // unpacked 5, unknown field 2 (varint 1), packed [6, 7], unknown fixed32 field 3, unpacked 8.
        let buf = [
            0x08, 0x05, 0x10, 0x01, 0x0a, 0x02, 0x06, 0x07, 0x1d, 1, 2, 3, 4, 0x08, 0x08,
        ];
        assert_eq!(decode_frequency_vector(&buf), Ok(vec![5, 6, 7, 8]));
    }

    #[test]
    fn malformed() {
        assert!(decode_frequency_vector(&[0x0a, 0x05, 0x01]).is_err()); // length past end
        assert!(decode_frequency_vector(&[0x0a, 0x01, 0x80]).is_err()); // varint crosses length
        assert!(decode_frequency_vector(&[0x08]).is_err()); // missing value
        assert!(decode_frequency_vector(&[0x0b]).is_err()); // wire type 3
        assert!(decode_frequency_vector(&[0x00, 0x00]).is_err()); // field 0
        assert!(
            decode_frequency_vector(&[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f
            ])
            .is_err()
        );
    }
}
