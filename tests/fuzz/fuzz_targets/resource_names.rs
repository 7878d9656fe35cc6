//! Resource names as the Kingdom (`halo_kingdom::names`), the duchies (`halo_duchy::names`) and
//! identities (`halo_identity::Principal::parse`) parse them. Invariant: whatever parses
//! re-formats to exactly the input (so no two spellings name one resource), and a principal's
//! file stem is a single safe path component.
#![no_main]

use halo_duchy::names as dn;
use halo_identity::Principal;
use halo_kingdom::names as kn;
use libfuzzer_sys::fuzz_target;

fn safe_path_component(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.contains(['/', '\\', '\0'])
        && s.bytes().all(|b| b.is_ascii_graphic())
}

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };

    // Kingdom.
    if let Some(id) = kn::decode_api_id(name) {
        assert!(id > 0);
        assert_eq!(kn::encode_api_id(id), name);
    }
    if let Ok(k) = kn::ComputationKey::parse(name) {
        assert_eq!(k.name(), name);
    }
    if let Ok(k) = kn::ParticipantKey::parse(name) {
        assert_eq!(
            kn::participant_name(k.external_computation_id, &k.duchy_id),
            name
        );
        assert!(kn::valid_id_segment(&k.duchy_id));
    }
    if let Ok(k) = kn::RequisitionKey::parse(name) {
        assert_eq!(
            kn::requisition_name(k.external_computation_id, k.external_requisition_id),
            name
        );
    }
    if let Ok(k) = kn::CertificateKey::parse(name) {
        assert_eq!(k.name(), name);
        if let Ok((d, c)) = kn::CertificateKey::parse_duchy(name) {
            assert_eq!(kn::duchy_certificate_name(&d, &c), name);
        }
    }
    if let Ok(mc) = kn::parse_measurement_consumer(name) {
        assert_eq!(format!("measurementConsumers/{mc}"), name);
        assert!(kn::valid_id_segment(&mc));
    }
    if let Ok(dp) = kn::parse_data_provider(name) {
        assert_eq!(format!("dataProviders/{dp}"), name);
    }
    if let Ok(m) = kn::MeasurementKey::parse(name) {
        assert_eq!(
            kn::measurement_name(&m.measurement_consumer_id, m.external_measurement_id),
            name
        );
    }

    // Duchy.
    if dn::valid_id(name) {
        assert!(safe_path_component(name));
    }
    if let Some(c) = dn::parse_computation(name) {
        assert!(dn::valid_id(c));
        assert_eq!(dn::computation_name(c), name);
    }
    if let Some((c, d)) = dn::parse_participant(name) {
        assert!(dn::valid_id(c) && dn::valid_id(d));
        assert_eq!(dn::participant_name(c, d), name);
    }
    if let Some((c, d)) = dn::parse_computation_stage(name) {
        assert_eq!(dn::computation_stage_name(c, d), name);
    }
    if let Some((c, r)) = dn::parse_system_requisition(name) {
        assert!(dn::valid_id(c) && dn::valid_id(r));
        assert_eq!(format!("computations/{c}/requisitions/{r}"), name);
    }
    if let Some((dp, r)) = dn::parse_public_requisition(name) {
        assert!(dn::valid_id(dp) && dn::valid_id(r));
        assert_eq!(format!("dataProviders/{dp}/requisitions/{r}"), name);
    }

    // Identity.
    if let Ok(p) = Principal::parse(name) {
        assert_eq!(p.resource_name(), name);
        assert_eq!(p.to_string(), name);
        assert!(safe_path_component(&p.file_stem()), "{:?}", p.file_stem());
        if let Some(d) = p.duchy_id() {
            assert!(kn::valid_id_segment(d));
        }
    }
});
