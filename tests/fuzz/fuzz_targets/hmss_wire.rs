//! The HMSS plugin's hand-written wire codecs (`hmss_core::wire`) on bytes from a data
//! provider (`FrequencyVector`) or a peer duchy (`AggregationPhaseInput`), as `u32` and as
//! the plugin's one-byte registers. Invariants: whatever decodes re-encodes canonically and
//! decodes to the same values; the byte-register decoder agrees with the `u32` one (it fails
//! exactly when a value exceeds 255).
#![no_main]

use hmss_core::wire::{
    decode_aggregation_input, decode_frequency_vector, decode_frequency_vector_as,
    encode_aggregation_input, encode_frequency_vector,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let wide = decode_frequency_vector(data);
    let narrow = decode_frequency_vector_as::<u8>(data);
    match &wide {
        Ok(v) => {
            assert_eq!(
                decode_frequency_vector(&encode_frequency_vector(v)).as_ref(),
                Ok(v)
            );
            if v.iter().all(|&x| x <= 0xff) {
                let bytes: Vec<u8> = v.iter().map(|&x| x as u8).collect();
                assert_eq!(narrow.as_ref(), Ok(&bytes));
                assert_eq!(
                    encode_frequency_vector(&bytes),
                    encode_frequency_vector(v),
                    "u8 and u32 encodings differ"
                );
            } else {
                assert!(narrow.is_err());
            }
        }
        Err(_) => assert!(narrow.is_err()),
    }

    let agg_wide = decode_aggregation_input::<u32>(data);
    let agg_narrow = decode_aggregation_input::<u8>(data);
    match &agg_wide {
        Ok((v, count)) => {
            assert_eq!(
                decode_aggregation_input::<u32>(&encode_aggregation_input(v, *count)).as_ref(),
                Ok(&(v.clone(), *count))
            );
            if v.iter().all(|&x| x <= 0xff) {
                let bytes: Vec<u8> = v.iter().map(|&x| x as u8).collect();
                assert_eq!(agg_narrow, Ok((bytes, *count)));
            } else {
                assert!(agg_narrow.is_err());
            }
        }
        Err(_) => assert!(agg_narrow.is_err()),
    }
});
