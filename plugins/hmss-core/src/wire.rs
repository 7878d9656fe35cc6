//! Hand-written protobuf codecs for `FrequencyVector { repeated uint32 data = 1; }` (spec §6.2:
//! the EDP's `s2` as packed varints, sent in 32 KiB chunks) and `AggregationPhaseInput`
//! (halo-system §4.3). Hand-written because they carry millions of registers: with `q ≤ 128`
//! every value is a one-byte varint, so encoding and decoding are plain byte copies.
//!
//! Field number 1 is assumed (the only field of the message; the spec names no number).

use crate::error::HmssError;
use crate::ring::Register;

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

/// Appends a packed `repeated uint32` field (tag, length, payload); nothing for no values
/// (proto3 default).
fn put_packed_field<R: Register>(out: &mut Vec<u8>, field: u32, values: &[R]) {
    if values.is_empty() {
        return;
    }
    put_varint(out, u64::from(field << 3 | 2));
    if R::ONE_BYTE_VARINTS && R::max_of(values) < 0x80 {
        // Every value is a one-byte varint: the payload is the values themselves.
        put_varint(out, values.len() as u64);
        out.extend(values.iter().map(|v| v.get() as u8));
    } else {
        let len: usize = values.iter().map(|v| varint_len(u64::from(v.get()))).sum();
        put_varint(out, len as u64);
        for v in values {
            put_varint(out, u64::from(v.get()));
        }
    }
}

/// Decodes the payload of a packed varint field into `out`. A value the register type cannot
/// hold is a decode error (a `FrequencyVector` entry must be below `q` anyway).
fn get_packed<R: Register>(payload: &[u8], out: &mut Vec<R>) -> Result<(), HmssError> {
    if payload.iter().fold(0u8, |m, &b| m | b) < 0x80 {
        // All one-byte varints (the production case, q = 127): a widening copy.
        out.extend(payload.iter().map(|&b| R::from_u32(u32::from(b))));
        return Ok(());
    }
    let mut pos = 0;
    while pos < payload.len() {
        out.push(value_as::<R>(get_varint(payload, &mut pos)?)?);
    }
    Ok(())
}

fn value_as<R: Register>(v: u64) -> Result<R, HmssError> {
    // Protobuf truncates an over-long uint32 varint to 32 bits.
    let v = v as u32;
    if R::ONE_BYTE_VARINTS && v > 0xff {
        return Err(HmssError::Decode(format!(
            "register value {v} does not fit the modulus"
        )));
    }
    Ok(R::from_u32(v))
}

/// Serializes `FrequencyVector{data}` with `data` packed (spec §6.2). An empty vector encodes
/// to no bytes (proto3 default).
pub fn encode_frequency_vector<R: Register>(data: &[R]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 11);
    put_packed_field(&mut out, FREQUENCY_VECTOR_DATA_FIELD, data);
    out
}

/// Parses a serialized `FrequencyVector` (spec §6.2). Accepts packed and unpacked encodings of
/// `data` (possibly several runs, concatenated as protobuf requires), skips unknown fields, and
/// truncates values to `uint32` as protobuf parsers do.
pub fn decode_frequency_vector(buf: &[u8]) -> Result<Vec<u32>, HmssError> {
    decode_frequency_vector_as(buf)
}

/// [`decode_frequency_vector`] into registers of type `R`; for `u8`, a value above 255 is a
/// decode error.
pub fn decode_frequency_vector_as<R: Register>(buf: &[u8]) -> Result<Vec<R>, HmssError> {
    let mut out = Vec::new();
    for_each_field(buf, |field, value| {
        match (field == FREQUENCY_VECTOR_DATA_FIELD, value) {
            (true, Field::Varint(v)) => out.push(value_as(v)?),
            (true, Field::Bytes(payload)) => {
                if out.is_empty() {
                    out.reserve(payload.len());
                }
                get_packed(payload, &mut out)?
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(out)
}

/// Field numbers of `AggregationPhaseInput { repeated uint32 combined_frequency_vectors = 1;
/// int64 register_count = 2; }` (halo-system §4.3).
pub const AGGREGATION_INPUT_VECTOR_FIELD: u32 = 1;
/// See [`AGGREGATION_INPUT_VECTOR_FIELD`].
pub const AGGREGATION_INPUT_REGISTER_COUNT_FIELD: u32 = 2;

/// Serializes `AggregationPhaseInput{combined_frequency_vectors, register_count}` (halo-system
/// §4.3), the vector packed.
pub fn encode_aggregation_input<R: Register>(combined: &[R], register_count: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(combined.len() + 24);
    put_packed_field(&mut out, AGGREGATION_INPUT_VECTOR_FIELD, combined);
    if register_count != 0 {
        put_varint(
            &mut out,
            u64::from(AGGREGATION_INPUT_REGISTER_COUNT_FIELD << 3),
        );
        put_varint(&mut out, register_count as u64);
    }
    out
}

/// Parses a serialized `AggregationPhaseInput` into `(combined_frequency_vectors,
/// register_count)` (halo-system §4.3), with the same leniency as [`decode_frequency_vector`].
pub fn decode_aggregation_input<R: Register>(buf: &[u8]) -> Result<(Vec<R>, i64), HmssError> {
    let mut out = Vec::new();
    let mut register_count = 0i64;
    for_each_field(buf, |field, value| {
        match (field, value) {
            (AGGREGATION_INPUT_VECTOR_FIELD, Field::Varint(v)) => out.push(value_as(v)?),
            (AGGREGATION_INPUT_VECTOR_FIELD, Field::Bytes(payload)) => {
                if out.is_empty() {
                    out.reserve(payload.len());
                }
                get_packed(payload, &mut out)?
            }
            (AGGREGATION_INPUT_REGISTER_COUNT_FIELD, Field::Varint(v)) => register_count = v as i64,
            _ => {}
        }
        Ok(())
    })?;
    Ok((out, register_count))
}

/// One field's value as the wire format carries it.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Walks the fields of a message: `f(field_number, value)` for each, in order.
fn for_each_field<'a>(
    buf: &'a [u8],
    mut f: impl FnMut(u32, Field<'a>) -> Result<(), HmssError>,
) -> Result<(), HmssError> {
    let mut pos = 0usize;
    while pos < buf.len() {
        let key = get_varint(buf, &mut pos)?;
        let (field, wire) = (key >> 3, key & 7);
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(HmssError::Decode(format!("invalid field number {field}")));
        }
        let value = match wire {
            0 => Field::Varint(get_varint(buf, &mut pos)?),
            2 => {
                let end = length_delimited_end(buf, &mut pos)?;
                let payload = &buf[pos..end];
                pos = end;
                Field::Bytes(payload)
            }
            1 => {
                pos = skip(buf, pos, 8)?;
                Field::Fixed
            }
            5 => {
                pos = skip(buf, pos, 4)?;
                Field::Fixed
            }
            _ => return Err(HmssError::Decode(format!("unsupported wire type {wire}"))),
        };
        f(field as u32, value)?;
    }
    Ok(())
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
        assert_eq!(encode_frequency_vector::<u32>(&[]), Vec::<u8>::new());
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
    fn byte_registers_encode_as_raw_bytes() {
        let v: Vec<u8> = (0..300u32).map(|i| (i % 127) as u8).collect();
        let enc = encode_frequency_vector(&v);
        // tag, two-byte length 300, then the values themselves.
        assert_eq!(enc[..3], [0x0a, 0xac, 0x02]);
        assert_eq!(enc[3..], v[..]);
        let wide: Vec<u32> = v.iter().map(|&x| u32::from(x)).collect();
        assert_eq!(encode_frequency_vector(&wide), enc);
        assert_eq!(decode_frequency_vector_as::<u8>(&enc), Ok(v));
        assert_eq!(decode_frequency_vector(&enc), Ok(wide));
        // A byte register above 127 needs a two-byte varint, and is still encoded correctly.
        let enc = encode_frequency_vector(&[200u8, 1]);
        assert_eq!(decode_frequency_vector(&enc), Ok(vec![200, 1]));
        // A value above 255 does not fit byte registers.
        let enc = encode_frequency_vector(&[300u32]);
        assert!(decode_frequency_vector_as::<u8>(&enc).is_err());
    }

    #[test]
    fn aggregation_input_round_trip_and_layout() {
        let v: Vec<u8> = vec![0, 5, 126, 3];
        let enc = encode_aggregation_input(&v, 3);
        assert_eq!(enc, vec![0x0a, 4, 0, 5, 126, 3, 0x10, 3]);
        assert_eq!(decode_aggregation_input::<u8>(&enc), Ok((v.clone(), 3)));
        let wide: Vec<u32> = vec![1000, 0, 70_000];
        let enc = encode_aggregation_input(&wide, 1 << 40);
        assert_eq!(decode_aggregation_input::<u32>(&enc), Ok((wide, 1 << 40)));
        assert_eq!(encode_aggregation_input::<u8>(&[], 0), Vec::<u8>::new());
        assert_eq!(decode_aggregation_input::<u8>(&[]), Ok((vec![], 0)));
        // Unpacked values and unknown fields are accepted, as protobuf parsers do.
        let buf = [0x08, 0x07, 0x18, 0x01, 0x10, 0x02, 0x08, 0x09];
        assert_eq!(decode_aggregation_input::<u8>(&buf), Ok((vec![7, 9], 2)));
        assert!(decode_aggregation_input::<u8>(&[0x0a, 0x02, 0x01]).is_err());
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
