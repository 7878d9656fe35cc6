//! Resource names and API ids (spec §1.1).
//!
//! An external id is a positive `i64`; its API id is base64url without padding of the 8-byte
//! big-endian value (11 characters).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tonic::Status;

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

/// `true` if `id` is a valid principal / duchy id segment: non-empty, ASCII letters, digits,
/// `-`, `_` or `.`, not starting with `.` (the same rule as `halo_identity::Principal::parse`).
pub fn valid_id_segment(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn invalid(what: &str, name: &str) -> Status {
    Status::invalid_argument(format!("malformed {what} name {name:?}"))
}

fn segments(name: &str) -> Vec<&str> {
    name.split('/').collect()
}

fn api_id(what: &str, name: &str, segment: &str) -> Result<i64, Status> {
    decode_api_id(segment).ok_or_else(|| invalid(what, name))
}

fn id_segment(what: &str, name: &str, segment: &str) -> Result<String, Status> {
    if valid_id_segment(segment) {
        Ok(segment.to_owned())
    } else {
        Err(invalid(what, name))
    }
}

/// `computations/{computation}`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ComputationKey {
    pub external_computation_id: i64,
}

impl ComputationKey {
    pub fn parse(name: &str) -> Result<Self, Status> {
        const WHAT: &str = "computation";
        match segments(name).as_slice() {
            ["computations", c] => Ok(Self {
                external_computation_id: api_id(WHAT, name, c)?,
            }),
            _ => Err(invalid(WHAT, name)),
        }
    }

    pub fn name(&self) -> String {
        computation_name(self.external_computation_id)
    }
}

pub fn computation_name(external_computation_id: i64) -> String {
    format!("computations/{}", encode_api_id(external_computation_id))
}

/// `computations/{computation}/participants/{duchy}`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParticipantKey {
    pub external_computation_id: i64,
    pub duchy_id: String,
}

impl ParticipantKey {
    pub fn parse(name: &str) -> Result<Self, Status> {
        const WHAT: &str = "computation participant";
        match segments(name).as_slice() {
            ["computations", c, "participants", d] => Ok(Self {
                external_computation_id: api_id(WHAT, name, c)?,
                duchy_id: id_segment(WHAT, name, d)?,
            }),
            _ => Err(invalid(WHAT, name)),
        }
    }
}

pub fn participant_name(external_computation_id: i64, duchy_id: &str) -> String {
    format!(
        "computations/{}/participants/{duchy_id}",
        encode_api_id(external_computation_id)
    )
}

pub fn log_entry_name(external_computation_id: i64, duchy_id: &str, log_entry_id: i64) -> String {
    format!(
        "{}/logEntries/{}",
        participant_name(external_computation_id, duchy_id),
        encode_api_id(log_entry_id)
    )
}

/// `computations/{computation}/requisitions/{requisition}`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequisitionKey {
    pub external_computation_id: i64,
    pub external_requisition_id: i64,
}

impl RequisitionKey {
    pub fn parse(name: &str) -> Result<Self, Status> {
        const WHAT: &str = "requisition";
        match segments(name).as_slice() {
            ["computations", c, "requisitions", r] => Ok(Self {
                external_computation_id: api_id(WHAT, name, c)?,
                external_requisition_id: api_id(WHAT, name, r)?,
            }),
            _ => Err(invalid(WHAT, name)),
        }
    }
}

pub fn requisition_name(external_computation_id: i64, external_requisition_id: i64) -> String {
    format!(
        "computations/{}/requisitions/{}",
        encode_api_id(external_computation_id),
        encode_api_id(external_requisition_id)
    )
}

pub fn data_provider_requisition_name(
    data_provider_id: &str,
    external_requisition_id: i64,
) -> String {
    format!(
        "dataProviders/{data_provider_id}/requisitions/{}",
        encode_api_id(external_requisition_id)
    )
}

/// Owner of a certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CertificateOwner {
    Duchy(String),
    DataProvider(String),
}

/// `duchies/{duchy}/certificates/{certificate}` or
/// `dataProviders/{data_provider}/certificates/{certificate}`
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CertificateKey {
    pub owner: CertificateOwner,
    pub certificate_id: String,
}

impl CertificateKey {
    pub fn parse(name: &str) -> Result<Self, Status> {
        const WHAT: &str = "certificate";
        match segments(name).as_slice() {
            ["duchies", d, "certificates", c] => Ok(Self {
                owner: CertificateOwner::Duchy(id_segment(WHAT, name, d)?),
                certificate_id: id_segment(WHAT, name, c)?,
            }),
            ["dataProviders", d, "certificates", c] => Ok(Self {
                owner: CertificateOwner::DataProvider(id_segment(WHAT, name, d)?),
                certificate_id: id_segment(WHAT, name, c)?,
            }),
            _ => Err(invalid(WHAT, name)),
        }
    }

    /// Parses a duchy certificate name only.
    pub fn parse_duchy(name: &str) -> Result<(String, String), Status> {
        match Self::parse(name)? {
            CertificateKey {
                owner: CertificateOwner::Duchy(d),
                certificate_id,
            } => Ok((d, certificate_id)),
            _ => Err(invalid("duchy certificate", name)),
        }
    }

    pub fn name(&self) -> String {
        match &self.owner {
            CertificateOwner::Duchy(d) => duchy_certificate_name(d, &self.certificate_id),
            CertificateOwner::DataProvider(d) => {
                format!("dataProviders/{d}/certificates/{}", self.certificate_id)
            }
        }
    }
}

pub fn duchy_certificate_name(duchy_id: &str, certificate_id: &str) -> String {
    format!("duchies/{duchy_id}/certificates/{certificate_id}")
}

/// `measurementConsumers/{mc}`
pub fn parse_measurement_consumer(name: &str) -> Result<String, Status> {
    const WHAT: &str = "measurement consumer";
    match segments(name).as_slice() {
        ["measurementConsumers", mc] => id_segment(WHAT, name, mc),
        _ => Err(invalid(WHAT, name)),
    }
}

/// `dataProviders/{dp}`
pub fn parse_data_provider(name: &str) -> Result<String, Status> {
    const WHAT: &str = "data provider";
    match segments(name).as_slice() {
        ["dataProviders", dp] => id_segment(WHAT, name, dp),
        _ => Err(invalid(WHAT, name)),
    }
}

/// `measurementConsumers/{mc}/measurements/{measurement}`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeasurementKey {
    pub measurement_consumer_id: String,
    pub external_measurement_id: i64,
}

impl MeasurementKey {
    pub fn parse(name: &str) -> Result<Self, Status> {
        const WHAT: &str = "measurement";
        match segments(name).as_slice() {
            ["measurementConsumers", mc, "measurements", m] => Ok(Self {
                measurement_consumer_id: id_segment(WHAT, name, mc)?,
                external_measurement_id: api_id(WHAT, name, m)?,
            }),
            _ => Err(invalid(WHAT, name)),
        }
    }
}

pub fn measurement_name(measurement_consumer_id: &str, external_measurement_id: i64) -> String {
    format!(
        "measurementConsumers/{measurement_consumer_id}/measurements/{}",
        encode_api_id(external_measurement_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_id_round_trip() {
        for id in [1i64, 42, 0x0102_0304_0506_0708, i64::MAX] {
            let api = encode_api_id(id);
            assert_eq!(api.len(), 11);
            assert_eq!(decode_api_id(&api), Some(id));
        }
        assert_eq!(encode_api_id(1), "AAAAAAAAAAE");
    }

    #[test]
    fn api_id_rejects_bad_input() {
        assert_eq!(decode_api_id(""), None);
        assert_eq!(decode_api_id("AAAAAAAAAAA"), None); // zero
        assert_eq!(decode_api_id("_____________"), None);
        assert_eq!(decode_api_id("__________8"), None); // negative
        assert_eq!(decode_api_id("AAAAAAAAAAF"), None); // non-canonical trailing bits
        assert_eq!(decode_api_id("AAAAAAAAA!E"), None);
    }

    #[test]
    fn parses_names() {
        let c = encode_api_id(7);
        let r = encode_api_id(9);
        assert_eq!(
            ComputationKey::parse(&format!("computations/{c}"))
                .unwrap()
                .external_computation_id,
            7
        );
        let p = ParticipantKey::parse(&format!("computations/{c}/participants/worker1")).unwrap();
        assert_eq!(p.duchy_id, "worker1");
        let rk = RequisitionKey::parse(&format!("computations/{c}/requisitions/{r}")).unwrap();
        assert_eq!(rk.external_requisition_id, 9);
        assert!(ComputationKey::parse("computations/").is_err());
        assert!(ComputationKey::parse(&format!("computations/{c}/x")).is_err());
        assert!(ParticipantKey::parse(&format!("computations/{c}/participants/")).is_err());
        assert!(ParticipantKey::parse(&format!("computations/{c}/participants/a/b")).is_err());
        assert_eq!(
            CertificateKey::parse_duchy("duchies/worker1/certificates/abc").unwrap(),
            ("worker1".to_owned(), "abc".to_owned())
        );
        assert!(CertificateKey::parse_duchy("dataProviders/e/certificates/abc").is_err());
        assert!(CertificateKey::parse("duchies//certificates/abc").is_err());
        assert_eq!(
            parse_measurement_consumer("measurementConsumers/mc1").unwrap(),
            "mc1"
        );
        assert!(parse_data_provider("dataProviders/").is_err());
        let m = MeasurementKey::parse(&measurement_name("mc1", 5)).unwrap();
        assert_eq!(m.external_measurement_id, 5);
    }
}
