//! Property tests of the duchy's resource names: they round-trip, whatever parses re-formats
//! to itself, and every parsed id is a single safe path component (fuzzed too in tests/fuzz,
//! `resource_names`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use halo_duchy::names::{
    computation_name, computation_stage_name, parse_computation, parse_computation_stage,
    parse_participant, parse_public_requisition, parse_system_requisition, participant_name,
    valid_id,
};
use proptest::prelude::*;

fn id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,64}"
}

fn name_like() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("computations".to_owned()),
            Just("participants".to_owned()),
            Just("computationStage".to_owned()),
            Just("requisitions".to_owned()),
            Just("dataProviders".to_owned()),
            "[A-Za-z0-9_./ -]{0,70}",
        ],
        1..6,
    )
    .prop_map(|parts| parts.join("/"))
}

fn safe_component(s: &str) -> bool {
    valid_id(s) && s != "." && s != ".." && !s.contains(['/', '\\', '\0'])
}

proptest! {
    #[test]
    fn names_round_trip(c in id(), d in id(), r in id()) {
        let computation = computation_name(&c);
        prop_assert_eq!(parse_computation(&computation), Some(c.as_str()));
        let participant = participant_name(&c, &d);
        prop_assert_eq!(parse_participant(&participant), Some((c.as_str(), d.as_str())));
        let stage = computation_stage_name(&c, &d);
        prop_assert_eq!(parse_computation_stage(&stage), Some((c.as_str(), d.as_str())));
        let system = format!("computations/{c}/requisitions/{r}");
        prop_assert_eq!(parse_system_requisition(&system), Some((c.as_str(), r.as_str())));
        let public = format!("dataProviders/{d}/requisitions/{r}");
        prop_assert_eq!(parse_public_requisition(&public), Some((d.as_str(), r.as_str())));
    }

    #[test]
    fn parsed_names_reformat_and_ids_are_safe(name in name_like()) {
        if let Some(c) = parse_computation(&name) {
            prop_assert!(safe_component(c));
            prop_assert_eq!(computation_name(c), name.clone());
        }
        if let Some((c, d)) = parse_participant(&name) {
            prop_assert!(safe_component(c) && safe_component(d));
            prop_assert_eq!(participant_name(c, d), name.clone());
        }
        if let Some((c, d)) = parse_computation_stage(&name) {
            prop_assert_eq!(computation_stage_name(c, d), name.clone());
        }
        if let Some((c, r)) = parse_system_requisition(&name) {
            prop_assert!(safe_component(c) && safe_component(r));
        }
        if let Some((dp, r)) = parse_public_requisition(&name) {
            prop_assert!(safe_component(dp) && safe_component(r));
        }
    }

    #[test]
    fn ids_with_separators_are_refused(prefix in id(), bad in "[/\\\\\\x00 ]", suffix in id()) {
        let id = format!("{prefix}{bad}{suffix}");
        prop_assert!(!valid_id(&id));
        let name = format!("computations/{id}");
        prop_assert_eq!(parse_computation(&name), None);
    }

    /// Dots inside an id are fine (`us-east.2`, `eu.1`: the grammar the Kingdom and the
    /// identity layer use); a leading dot (so `.` and `..`) never is.
    #[test]
    fn inner_dots_are_ids_leading_dots_are_not(prefix in id(), suffix in id()) {
        let dotted = format!("{prefix}.{suffix}");
        prop_assert_eq!(valid_id(&dotted), dotted.len() <= 64);
        let leading = format!(".{suffix}");
        prop_assert!(!valid_id(&leading));
        let name = format!("computations/{leading}");
        prop_assert_eq!(parse_computation(&name), None);
    }
}
