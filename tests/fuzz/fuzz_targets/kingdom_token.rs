//! `StreamActiveComputations` continuation tokens as the Kingdom decodes them (any string a
//! duchy sends). Invariant: a decoded position re-encodes to a token that decodes to it again.
#![no_main]

use halo_kingdom::StreamPosition;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    match StreamPosition::from_token(token) {
        Ok(pos) if token.is_empty() => assert_eq!(pos, StreamPosition::START),
        Ok(pos) => {
            assert!(pos.external_computation_id >= 0, "{pos:?}");
            let again = pos.to_token();
            assert_eq!(
                StreamPosition::from_token(&again).ok(),
                Some(pos),
                "{again}"
            );
        }
        Err(status) => assert_eq!(status.code(), tonic::Code::InvalidArgument),
    }
});
