//! `StreamActiveComputations` continuation tokens as the Kingdom decodes them (any string a
//! duchy sends), and `ListRequisitions` page tokens (any string a data provider sends).
//! Invariants: a decoded position re-encodes to a token that decodes to it again; a page token
//! decodes only for the parent it was issued for; every refusal is INVALID_ARGUMENT.
#![no_main]

use halo_kingdom::{RequisitionPageToken, StreamPosition};
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
    const PARENT: &str = "dataProviders/edp1";
    match RequisitionPageToken::decode(token, PARENT) {
        Ok(page) => {
            assert_eq!(page.parent, PARENT);
            let again = page.encode();
            assert_eq!(
                RequisitionPageToken::decode(&again, PARENT).ok(),
                Some(page),
                "{again}"
            );
            let other = RequisitionPageToken::decode(&again, "dataProviders/edp2")
                .expect_err("a page token must not decode for another parent");
            assert_eq!(other.code(), tonic::Code::InvalidArgument);
        }
        Err(status) => assert_eq!(status.code(), tonic::Code::InvalidArgument),
    }
});
