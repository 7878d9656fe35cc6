//! Property tests: continuation tokens and resource names round-trip, and whatever parses
//! re-formats to itself. The same decoders are fuzzed in tests/fuzz (`kingdom_token`,
//! `resource_names`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use halo_identity::Principal;
use halo_kingdom::StreamPosition;
use halo_kingdom::names::{
    CertificateKey, CertificateOwner, ComputationKey, MeasurementKey, ParticipantKey,
    RequisitionKey, computation_name, decode_api_id, encode_api_id, measurement_name,
    parse_data_provider, parse_measurement_consumer, participant_name, requisition_name,
};
use proptest::prelude::*;

/// Principal / duchy id segments: ASCII letters, digits, `-`, `_`, `.`, not starting with `.`.
fn id_segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-][A-Za-z0-9_.-]{0,20}"
}

fn external_id() -> impl Strategy<Value = i64> {
    prop_oneof![1i64..=1000, 1i64..=i64::MAX, Just(i64::MAX)]
}

/// Name-shaped strings: mostly the segments and separators of real names, so parsers get past
/// their first checks.
fn name_like() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("computations".to_owned()),
            Just("participants".to_owned()),
            Just("requisitions".to_owned()),
            Just("duchies".to_owned()),
            Just("dataProviders".to_owned()),
            Just("certificates".to_owned()),
            Just("measurementConsumers".to_owned()),
            Just("measurements".to_owned()),
            Just("kingdom".to_owned()),
            Just("AAAAAAAAAAE".to_owned()),
            external_id().prop_map(encode_api_id),
            "[A-Za-z0-9_.=/ -]{0,12}",
        ],
        1..6,
    )
    .prop_map(|parts| parts.join("/"))
}

proptest! {
    #[test]
    fn continuation_token_round_trips(
        // Down to the lowest whole second an i64 of microseconds holds.
        update_time_micros in -9_223_372_036_854_000_000i64..=i64::MAX,
        external_computation_id in 0i64..=i64::MAX,
    ) {
        let pos = StreamPosition { update_time_micros, external_computation_id };
        let token = pos.to_token();
        prop_assert!(!token.is_empty());
        prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        prop_assert_eq!(StreamPosition::from_token(&token).unwrap(), pos);
    }

    /// Positions order like the stream: a token never resumes before the position it encodes.
    #[test]
    fn continuation_tokens_preserve_order(
        a in (0i64..=i64::MAX, 0i64..=i64::MAX),
        b in (0i64..=i64::MAX, 0i64..=i64::MAX),
    ) {
        let pa = StreamPosition { update_time_micros: a.0, external_computation_id: a.1 };
        let pb = StreamPosition { update_time_micros: b.0, external_computation_id: b.1 };
        let da = StreamPosition::from_token(&pa.to_token()).unwrap();
        let db = StreamPosition::from_token(&pb.to_token()).unwrap();
        prop_assert_eq!(pa.cmp(&pb), da.cmp(&db));
    }

    #[test]
    fn garbage_tokens_are_invalid_argument(token in "\\PC{1,40}") {
        if let Err(status) = StreamPosition::from_token(&token) {
            prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
        }
    }

    #[test]
    fn api_ids_round_trip(id in external_id(), bad in i64::MIN..=0) {
        let api = encode_api_id(id);
        prop_assert_eq!(api.len(), 11);
        prop_assert_eq!(decode_api_id(&api), Some(id));
        prop_assert_eq!(decode_api_id(&encode_api_id(bad)), None);
    }

    #[test]
    fn resource_names_round_trip(
        c in external_id(),
        r in external_id(),
        duchy in id_segment(),
        owner in id_segment(),
        certificate in id_segment(),
    ) {
        let name = computation_name(c);
        prop_assert_eq!(ComputationKey::parse(&name).unwrap().name(), name);
        let name = participant_name(c, &duchy);
        let k = ParticipantKey::parse(&name).unwrap();
        prop_assert_eq!((k.external_computation_id, k.duchy_id.as_str()), (c, duchy.as_str()));
        let name = requisition_name(c, r);
        let k = RequisitionKey::parse(&name).unwrap();
        prop_assert_eq!((k.external_computation_id, k.external_requisition_id), (c, r));
        for owner in [CertificateOwner::Duchy(owner.clone()), CertificateOwner::DataProvider(owner.clone())] {
            let key = CertificateKey { owner, certificate_id: certificate.clone() };
            prop_assert_eq!(CertificateKey::parse(&key.name()).unwrap(), key);
        }
        let name = measurement_name(&owner, r);
        let k = MeasurementKey::parse(&name).unwrap();
        prop_assert_eq!((k.measurement_consumer_id.as_str(), k.external_measurement_id), (owner.as_str(), r));
        prop_assert_eq!(parse_measurement_consumer(&format!("measurementConsumers/{owner}")).unwrap(), owner.clone());
        prop_assert_eq!(parse_data_provider(&format!("dataProviders/{owner}")).unwrap(), owner);
    }

    /// Whatever parses re-formats to exactly the input: no two spellings name one resource.
    #[test]
    fn parsed_names_reformat_to_themselves(name in name_like()) {
        if let Ok(k) = ComputationKey::parse(&name) {
            prop_assert_eq!(k.name(), name.clone());
        }
        if let Ok(k) = ParticipantKey::parse(&name) {
            prop_assert_eq!(participant_name(k.external_computation_id, &k.duchy_id), name.clone());
        }
        if let Ok(k) = RequisitionKey::parse(&name) {
            prop_assert_eq!(requisition_name(k.external_computation_id, k.external_requisition_id), name.clone());
        }
        if let Ok(k) = CertificateKey::parse(&name) {
            prop_assert_eq!(k.name(), name.clone());
        }
        if let Ok(k) = MeasurementKey::parse(&name) {
            prop_assert_eq!(measurement_name(&k.measurement_consumer_id, k.external_measurement_id), name.clone());
        }
        if let Ok(p) = Principal::parse(&name) {
            prop_assert_eq!(p.resource_name(), name);
        }
    }

    #[test]
    fn principals_round_trip(kind in 0u8..4, id in id_segment()) {
        let p = match kind {
            0 => Principal::Kingdom,
            1 => Principal::Duchy(id),
            2 => Principal::DataProvider(id),
            _ => Principal::MeasurementConsumer(id),
        };
        prop_assert_eq!(Principal::parse(&p.resource_name()).unwrap(), p.clone());
        let stem = p.file_stem();
        prop_assert!(!stem.contains('/') && !stem.starts_with('.') && stem != "..");
    }
}
