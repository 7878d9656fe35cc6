//! The Kingdom and the duchies read resource names with one grammar: whatever id the Kingdom
//! accepts and names a resource with, a duchy parses back to the same id (and an id one side
//! refuses, the other refuses too). A duchy named `eu.1` used to pass the Kingdom's check and
//! then never recognise itself in its own herald.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use halo_duchy::names as duchy;
use halo_identity::Principal;
use halo_kingdom::names as kingdom;
use proptest::prelude::*;

const OPERATOR_IDS: [&str; 5] = ["eu-west", "us-east.2", "agg", "eu.1", "worker1"];

fn assert_agree(duchy_id: &str, external_computation_id: i64, external_requisition_id: i64) {
    // Kingdom formats, the duchy parses.
    let participant = kingdom::participant_name(external_computation_id, duchy_id);
    let (c, d) = duchy::parse_participant(&participant)
        .unwrap_or_else(|| panic!("duchy cannot parse the Kingdom's {participant:?}"));
    assert_eq!(d, duchy_id);
    assert_eq!(c, kingdom::encode_api_id(external_computation_id));
    let computation = kingdom::computation_name(external_computation_id);
    assert_eq!(duchy::parse_computation(&computation), Some(c));
    let requisition = kingdom::requisition_name(external_computation_id, external_requisition_id);
    let (_, r) = duchy::parse_system_requisition(&requisition).unwrap();
    assert_eq!(kingdom::decode_api_id(r), Some(external_requisition_id));
    let public = kingdom::data_provider_requisition_name(duchy_id, external_requisition_id);
    assert_eq!(
        duchy::parse_public_requisition(&public).map(|(dp, _)| dp),
        Some(duchy_id)
    );
    let certificate = kingdom::duchy_certificate_name(duchy_id, "c1");
    assert_eq!(
        kingdom::CertificateKey::parse_duchy(&certificate).unwrap(),
        (duchy_id.to_owned(), "c1".to_owned())
    );
    let parsed = duchy::CertificateName::parse(&certificate).unwrap();
    assert_eq!(
        (parsed.kind, parsed.owner),
        (duchy::OwnerKind::Duchy, duchy_id)
    );
    // The duchy formats, the Kingdom parses.
    let stage_owner =
        kingdom::ParticipantKey::parse(&duchy::participant_name(c, duchy_id)).unwrap();
    assert_eq!(stage_owner.duchy_id, duchy_id);
    assert_eq!(stage_owner.external_computation_id, external_computation_id);
    // And the id is the one the principal of its certificate carries.
    assert_eq!(
        Principal::parse(&format!("duchies/{duchy_id}")).unwrap(),
        Principal::Duchy(duchy_id.to_owned())
    );
}

#[test]
fn operator_ids_round_trip_through_both_sides() {
    for id in OPERATOR_IDS {
        assert!(kingdom::valid_id_segment(id) && duchy::valid_id(id), "{id}");
        assert_agree(id, 7, 9);
    }
}

#[test]
fn both_sides_refuse_the_same_ids() {
    for id in ["", ".", "..", ".eu", "eu/1", "eu 1", "ü"] {
        assert!(!kingdom::valid_id_segment(id), "{id:?}");
        assert!(!duchy::valid_id(id), "{id:?}");
        let name = format!("computations/AAAAAAAAAAE/participants/{id}");
        assert!(kingdom::ParticipantKey::parse(&name).is_err(), "{name:?}");
        assert!(duchy::parse_participant(&name).is_none(), "{name:?}");
    }
}

proptest! {
    #[test]
    fn kingdom_format_duchy_parse_agree(
        id in "[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}",
        c in 1i64..=i64::MAX,
        r in 1i64..=i64::MAX,
    ) {
        prop_assert!(kingdom::valid_id_segment(&id));
        assert_agree(&id, c, r);
    }

    #[test]
    fn the_sides_agree_on_any_segment(id in "[A-Za-z0-9_./ -]{0,70}") {
        prop_assert_eq!(kingdom::valid_id_segment(&id), duchy::valid_id(&id));
        let name = format!("computations/AAAAAAAAAAE/participants/{id}");
        prop_assert_eq!(
            kingdom::ParticipantKey::parse(&name).ok().map(|k| k.duchy_id),
            duchy::parse_participant(&name).map(|(_, d)| d.to_owned())
        );
    }
}
