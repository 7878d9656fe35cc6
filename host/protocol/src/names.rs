//! The one resource-name and id grammar of the system API, used by the Kingdom and every duchy
//! alike (so an id one side accepts, the other recognises).
//!
//! * An **id segment** (a duchy, data provider, measurement consumer or certificate id, and
//!   any id a duchy stores or uses as a file name) is 1..=[`MAX_ID_LEN`] ASCII letters, digits,
//!   `-`, `_` or `.`, not starting with `.` (the rule of `halo_identity::Principal::parse`, so
//!   `eu-west`, `us-east.2`, `agg`, `eu.1` are ids; `.`, `..`, `a/b` are not). Every valid id is
//!   a single safe path component.
//! * An **API id** (a computation, requisition, measurement or log entry id the Kingdom makes)
//!   is base64url without padding of a positive `i64`, big-endian (11 characters); it is an id
//!   segment too, so a duchy can treat it as opaque.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The longest id segment.
pub const MAX_ID_LEN: usize = 64;

/// `true` if `id` is a valid id segment (see the module documentation).
pub fn valid_id_segment(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Encodes a positive external id as an API id.
pub fn encode_api_id(external_id: i64) -> String {
    URL_SAFE_NO_PAD.encode(external_id.to_be_bytes())
}

/// Decodes an API id; `None` unless it is exactly the encoding of a positive `i64`.
pub fn decode_api_id(api_id: &str) -> Option<i64> {
    if api_id.len() != 11 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(api_id).ok()?;
    let bytes: [u8; 8] = bytes.try_into().ok()?;
    let id = i64::from_be_bytes(bytes);
    // Reject non-canonical encodings (trailing bits) by re-encoding.
    (id > 0 && encode_api_id(id) == api_id).then_some(id)
}

/// Matches `name` against `pattern`, where `"*"` stands for one id segment; returns the ids.
fn ids<'a, const N: usize>(name: &'a str, pattern: &[&str]) -> Option<[&'a str; N]> {
    let mut out = [""; N];
    let mut found = 0;
    let mut parts = name.split('/');
    for want in pattern {
        let part = parts.next()?;
        if *want == "*" {
            if !valid_id_segment(part) {
                return None;
            }
            *out.get_mut(found)? = part;
            found += 1;
        } else if part != *want {
            return None;
        }
    }
    (parts.next().is_none() && found == N).then_some(out)
}

const COMPUTATION: &[&str] = &["computations", "*"];
const PARTICIPANT: &[&str] = &["computations", "*", "participants", "*"];
const COMPUTATION_STAGE: &[&str] = &["computations", "*", "participants", "*", "computationStage"];
const LOG_ENTRY: &[&str] = &["computations", "*", "participants", "*", "logEntries", "*"];
const SYSTEM_REQUISITION: &[&str] = &["computations", "*", "requisitions", "*"];
const PUBLIC_REQUISITION: &[&str] = &["dataProviders", "*", "requisitions", "*"];
const DUCHY: &[&str] = &["duchies", "*"];
const DATA_PROVIDER: &[&str] = &["dataProviders", "*"];
const MEASUREMENT_CONSUMER: &[&str] = &["measurementConsumers", "*"];
const MEASUREMENT: &[&str] = &["measurementConsumers", "*", "measurements", "*"];

/// `computations/{c}` → c
pub fn parse_computation(name: &str) -> Option<&str> {
    ids::<1>(name, COMPUTATION).map(|[c]| c)
}

/// `computations/{c}/participants/{d}` → (c, d)
pub fn parse_participant(name: &str) -> Option<(&str, &str)> {
    ids::<2>(name, PARTICIPANT).map(|[c, d]| (c, d))
}

/// `computations/{c}/participants/{d}/computationStage` → (c, d)
pub fn parse_computation_stage(name: &str) -> Option<(&str, &str)> {
    ids::<2>(name, COMPUTATION_STAGE).map(|[c, d]| (c, d))
}

/// `computations/{c}/participants/{d}/logEntries/{l}` → (c, d, l)
pub fn parse_log_entry(name: &str) -> Option<(&str, &str, &str)> {
    ids::<3>(name, LOG_ENTRY).map(|[c, d, l]| (c, d, l))
}

/// `computations/{c}/requisitions/{r}` → (c, r)
pub fn parse_system_requisition(name: &str) -> Option<(&str, &str)> {
    ids::<2>(name, SYSTEM_REQUISITION).map(|[c, r]| (c, r))
}

/// `dataProviders/{dp}/requisitions/{r}` → (dp, r)
pub fn parse_public_requisition(name: &str) -> Option<(&str, &str)> {
    ids::<2>(name, PUBLIC_REQUISITION).map(|[dp, r]| (dp, r))
}

/// `duchies/{d}` → d
pub fn parse_duchy(name: &str) -> Option<&str> {
    ids::<1>(name, DUCHY).map(|[d]| d)
}

/// `dataProviders/{dp}` → dp
pub fn parse_data_provider(name: &str) -> Option<&str> {
    ids::<1>(name, DATA_PROVIDER).map(|[dp]| dp)
}

/// `measurementConsumers/{mc}` → mc
pub fn parse_measurement_consumer(name: &str) -> Option<&str> {
    ids::<1>(name, MEASUREMENT_CONSUMER).map(|[mc]| mc)
}

/// `measurementConsumers/{mc}/measurements/{m}` → (mc, m)
pub fn parse_measurement(name: &str) -> Option<(&str, &str)> {
    ids::<2>(name, MEASUREMENT).map(|[mc, m]| (mc, m))
}

/// The principal a certificate belongs to (the collection of its name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OwnerKind {
    Duchy,
    DataProvider,
    MeasurementConsumer,
}

impl OwnerKind {
    /// The collection segment of the owner's resource name.
    pub fn collection(self) -> &'static str {
        match self {
            OwnerKind::Duchy => "duchies",
            OwnerKind::DataProvider => "dataProviders",
            OwnerKind::MeasurementConsumer => "measurementConsumers",
        }
    }

    fn of_collection(collection: &str) -> Option<Self> {
        [
            OwnerKind::Duchy,
            OwnerKind::DataProvider,
            OwnerKind::MeasurementConsumer,
        ]
        .into_iter()
        .find(|k| k.collection() == collection)
    }
}

/// A parsed certificate name: `{collection}/{owner}/certificates/{certificate}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CertificateName<'a> {
    pub kind: OwnerKind,
    pub owner: &'a str,
    pub certificate_id: &'a str,
}

impl<'a> CertificateName<'a> {
    pub fn parse(name: &'a str) -> Option<Self> {
        let (collection, rest) = name.split_once('/')?;
        let kind = OwnerKind::of_collection(collection)?;
        let [owner, certificate_id] = ids::<2>(rest, &["*", "certificates", "*"])?;
        Some(CertificateName {
            kind,
            owner,
            certificate_id,
        })
    }
}

impl std::fmt::Display for CertificateName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        certificate_name(self.kind, self.owner, self.certificate_id).fmt(f)
    }
}

/// `{collection}/{owner}/certificates/{certificate}`
pub fn certificate_name(kind: OwnerKind, owner: &str, certificate_id: &str) -> String {
    format!(
        "{}/{owner}/certificates/{certificate_id}",
        kind.collection()
    )
}

pub fn duchy_certificate_name(duchy_id: &str, certificate_id: &str) -> String {
    certificate_name(OwnerKind::Duchy, duchy_id, certificate_id)
}

pub fn duchy_name(duchy_id: &str) -> String {
    format!("duchies/{duchy_id}")
}

pub fn data_provider_name(data_provider_id: &str) -> String {
    format!("dataProviders/{data_provider_id}")
}

pub fn measurement_consumer_name(measurement_consumer_id: &str) -> String {
    format!("measurementConsumers/{measurement_consumer_id}")
}

pub fn computation_name(computation_id: &str) -> String {
    format!("computations/{computation_id}")
}

pub fn participant_name(computation_id: &str, duchy_id: &str) -> String {
    format!("computations/{computation_id}/participants/{duchy_id}")
}

pub fn computation_stage_name(computation_id: &str, duchy_id: &str) -> String {
    format!(
        "{}/computationStage",
        participant_name(computation_id, duchy_id)
    )
}

pub fn log_entry_name(computation_id: &str, duchy_id: &str, log_entry_id: &str) -> String {
    format!(
        "{}/logEntries/{log_entry_id}",
        participant_name(computation_id, duchy_id)
    )
}

pub fn system_requisition_name(computation_id: &str, requisition_id: &str) -> String {
    format!("computations/{computation_id}/requisitions/{requisition_id}")
}

pub fn public_requisition_name(data_provider_id: &str, requisition_id: &str) -> String {
    format!("dataProviders/{data_provider_id}/requisitions/{requisition_id}")
}

pub fn measurement_name(measurement_consumer_id: &str, measurement_id: &str) -> String {
    format!("measurementConsumers/{measurement_consumer_id}/measurements/{measurement_id}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_of_operators_are_valid() {
        for id in ["eu-west", "us-east.2", "agg", "eu.1", "AAAAAAAAAAE", "a_b"] {
            assert!(valid_id_segment(id), "{id}");
        }
        let long = "a".repeat(MAX_ID_LEN + 1);
        for id in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "é",
            "a\\b",
            long.as_str(),
        ] {
            assert!(!valid_id_segment(id), "{id:?}");
        }
    }

    #[test]
    fn parses_names() {
        assert_eq!(
            parse_computation("computations/AAAAAAAAAAE"),
            Some("AAAAAAAAAAE")
        );
        assert_eq!(parse_computation("computations/"), None);
        assert_eq!(parse_computation("computations/a/b"), None);
        assert_eq!(parse_computation("computations/a b"), None);
        assert_eq!(parse_computation("computations"), None);
        assert_eq!(
            parse_participant("computations/x/participants/eu.1"),
            Some(("x", "eu.1"))
        );
        assert_eq!(
            parse_computation_stage("computations/x/participants/w/computationStage"),
            Some(("x", "w"))
        );
        assert_eq!(
            parse_public_requisition("dataProviders/e/requisitions/r"),
            Some(("e", "r"))
        );
        assert_eq!(
            parse_public_requisition("dataProviders/e/requisition/r"),
            None
        );
        assert_eq!(
            CertificateName::parse("dataProviders/edp.1/certificates/c1"),
            Some(CertificateName {
                kind: OwnerKind::DataProvider,
                owner: "edp.1",
                certificate_id: "c1"
            })
        );
        assert_eq!(CertificateName::parse("duchies//certificates/abc"), None);
        assert_eq!(CertificateName::parse("kingdoms/k/certificates/abc"), None);
        assert_eq!(CertificateName::parse("duchies/a/certificates/b/c"), None);
    }

    #[test]
    fn api_id_round_trip_and_rejects() {
        for id in [1i64, 42, 0x0102_0304_0506_0708, i64::MAX] {
            let api = encode_api_id(id);
            assert_eq!(api.len(), 11);
            assert!(valid_id_segment(&api));
            assert_eq!(decode_api_id(&api), Some(id));
        }
        assert_eq!(encode_api_id(1), "AAAAAAAAAAE");
        for bad in [
            "",
            "AAAAAAAAAAA",
            "_____________",
            "__________8",
            "AAAAAAAAAAF",
        ] {
            assert_eq!(decode_api_id(bad), None, "{bad}");
        }
    }

    fn id() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}"
    }

    proptest! {
        #[test]
        fn every_valid_id_round_trips(c in id(), d in id(), r in id(), kind in 0usize..3) {
            prop_assert!(valid_id_segment(&c));
            let (c, d, r) = (c.as_str(), d.as_str(), r.as_str());
            let n = computation_name(c);
            prop_assert_eq!(parse_computation(&n), Some(c));
            let n = duchy_name(d);
            prop_assert_eq!(parse_duchy(&n), Some(d));
            let n = participant_name(c, d);
            prop_assert_eq!(parse_participant(&n), Some((c, d)));
            let n = computation_stage_name(c, d);
            prop_assert_eq!(parse_computation_stage(&n), Some((c, d)));
            let n = log_entry_name(c, d, r);
            prop_assert_eq!(parse_log_entry(&n), Some((c, d, r)));
            let n = system_requisition_name(c, r);
            prop_assert_eq!(parse_system_requisition(&n), Some((c, r)));
            let n = public_requisition_name(d, r);
            prop_assert_eq!(parse_public_requisition(&n), Some((d, r)));
            let n = data_provider_name(d);
            prop_assert_eq!(parse_data_provider(&n), Some(d));
            let n = measurement_consumer_name(d);
            prop_assert_eq!(parse_measurement_consumer(&n), Some(d));
            let n = measurement_name(d, c);
            prop_assert_eq!(parse_measurement(&n), Some((d, c)));
            let kind = [OwnerKind::Duchy, OwnerKind::DataProvider, OwnerKind::MeasurementConsumer][kind];
            let cert = certificate_name(kind, d, r);
            let parsed = CertificateName::parse(&cert).unwrap();
            prop_assert_eq!(parsed, CertificateName { kind, owner: d, certificate_id: r });
            prop_assert_eq!(parsed.to_string(), cert);
        }

        #[test]
        fn whatever_parses_is_a_safe_component_and_reformats(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("computations".to_owned()),
                    Just("participants".to_owned()),
                    Just("duchies".to_owned()),
                    Just("certificates".to_owned()),
                    "[A-Za-z0-9_./ -]{0,70}",
                ],
                1..6,
            )
        ) {
            let name = parts.join("/");
            let safe = |s: &str| valid_id_segment(s) && s != "." && s != ".." && !s.contains(['/', '\\', '\0']);
            if let Some(c) = parse_computation(&name) {
                prop_assert!(safe(c));
                prop_assert_eq!(computation_name(c), name.clone());
            }
            if let Some((c, d)) = parse_participant(&name) {
                prop_assert!(safe(c) && safe(d));
                prop_assert_eq!(participant_name(c, d), name.clone());
            }
            if let Some(cert) = CertificateName::parse(&name) {
                prop_assert!(safe(cert.owner) && safe(cert.certificate_id));
                prop_assert_eq!(cert.to_string(), name.clone());
            }
        }
    }
}
