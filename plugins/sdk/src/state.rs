//! Plugin state: opaque bytes the host stores with the computation and hands back in
//! `ComputationContext::state`. Encode it as a prost message (derive `prost::Message` on a
//! struct of your own; add `prost` to your plugin's dependencies for the derive) or as
//! fixed-width fields.

use crate::types::StageError;

/// Encodes a state message.
pub fn encode<M: prost::Message>(state: &M) -> Vec<u8> {
    state.encode_to_vec()
}

/// Decodes a state message; corrupt state is a permanent error (retrying cannot help).
pub fn decode<M: prost::Message + Default>(bytes: &[u8]) -> Result<M, StageError> {
    M::decode(bytes).map_err(|e| StageError::Permanent(format!("corrupt plugin state: {e}")))
}

/// The little-endian `u64` at `bytes[at..at + 8]`, or a permanent error naming `what`.
pub fn u64_le(bytes: &[u8], at: usize, what: &str) -> Result<u64, StageError> {
    at.checked_add(8)
        .and_then(|end| bytes.get(at..end))
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| StageError::Permanent(format!("missing {what}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::halo::v1::MeasurementSpec;

    #[test]
    fn round_trip() {
        let m = MeasurementSpec {
            maximum_frequency: 7,
            ..Default::default()
        };
        let back: MeasurementSpec = decode(&encode(&m)).unwrap();
        assert_eq!(back, m);
        assert!(matches!(
            decode::<MeasurementSpec>(&[0xff, 0xff]),
            Err(StageError::Permanent(_))
        ));
        assert_eq!(u64_le(&[1, 0, 0, 0, 0, 0, 0, 0, 9], 0, "x").unwrap(), 1);
        assert!(
            u64_le(&[1, 2, 3], 0, "seed")
                .unwrap_err()
                .to_string()
                .contains("seed")
        );
    }
}
