//! Resource names and API ids (spec §1.1), as typed keys over the one grammar of
//! [`halo_protocol::names`] that the duchies use too.
//!
//! An external id is a positive `i64`; its API id is base64url without padding of the 8-byte
//! big-endian value (11 characters).

use halo_protocol::names as grammar;
use tonic::Status;

pub use halo_protocol::names::{
    decode_api_id, duchy_certificate_name, encode_api_id, valid_id_segment,
};

fn invalid(what: &str, name: &str) -> Status {
    Status::invalid_argument(format!("malformed {what} name {name:?}"))
}

fn api_id(what: &str, name: &str, segment: &str) -> Result<i64, Status> {
    decode_api_id(segment).ok_or_else(|| invalid(what, name))
}

/// `computations/{computation}`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ComputationKey {
    pub external_computation_id: i64,
}

impl ComputationKey {
    pub fn parse(name: &str) -> Result<Self, Status> {
        const WHAT: &str = "computation";
        let c = grammar::parse_computation(name).ok_or_else(|| invalid(WHAT, name))?;
        Ok(Self {
            external_computation_id: api_id(WHAT, name, c)?,
        })
    }

    pub fn name(&self) -> String {
        computation_name(self.external_computation_id)
    }
}

pub fn computation_name(external_computation_id: i64) -> String {
    grammar::computation_name(&encode_api_id(external_computation_id))
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
        let (c, d) = grammar::parse_participant(name).ok_or_else(|| invalid(WHAT, name))?;
        Ok(Self {
            external_computation_id: api_id(WHAT, name, c)?,
            duchy_id: d.to_owned(),
        })
    }
}

pub fn participant_name(external_computation_id: i64, duchy_id: &str) -> String {
    grammar::participant_name(&encode_api_id(external_computation_id), duchy_id)
}

pub fn log_entry_name(external_computation_id: i64, duchy_id: &str, log_entry_id: i64) -> String {
    grammar::log_entry_name(
        &encode_api_id(external_computation_id),
        duchy_id,
        &encode_api_id(log_entry_id),
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
        let (c, r) = grammar::parse_system_requisition(name).ok_or_else(|| invalid(WHAT, name))?;
        Ok(Self {
            external_computation_id: api_id(WHAT, name, c)?,
            external_requisition_id: api_id(WHAT, name, r)?,
        })
    }
}

pub fn requisition_name(external_computation_id: i64, external_requisition_id: i64) -> String {
    grammar::system_requisition_name(
        &encode_api_id(external_computation_id),
        &encode_api_id(external_requisition_id),
    )
}

pub fn data_provider_requisition_name(
    data_provider_id: &str,
    external_requisition_id: i64,
) -> String {
    grammar::public_requisition_name(data_provider_id, &encode_api_id(external_requisition_id))
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
        let c =
            grammar::CertificateName::parse(name).ok_or_else(|| invalid("certificate", name))?;
        let owner = match c.kind {
            grammar::OwnerKind::Duchy => CertificateOwner::Duchy(c.owner.to_owned()),
            grammar::OwnerKind::DataProvider => CertificateOwner::DataProvider(c.owner.to_owned()),
            // The Kingdom holds no measurement consumer certificates.
            grammar::OwnerKind::MeasurementConsumer => {
                return Err(invalid("certificate", name));
            }
        };
        Ok(Self {
            owner,
            certificate_id: c.certificate_id.to_owned(),
        })
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
        let (kind, owner) = match &self.owner {
            CertificateOwner::Duchy(d) => (grammar::OwnerKind::Duchy, d),
            CertificateOwner::DataProvider(d) => (grammar::OwnerKind::DataProvider, d),
        };
        grammar::certificate_name(kind, owner, &self.certificate_id)
    }
}

/// `measurementConsumers/{mc}`
pub fn parse_measurement_consumer(name: &str) -> Result<String, Status> {
    grammar::parse_measurement_consumer(name)
        .map(str::to_owned)
        .ok_or_else(|| invalid("measurement consumer", name))
}

/// `dataProviders/{dp}`
pub fn parse_data_provider(name: &str) -> Result<String, Status> {
    grammar::parse_data_provider(name)
        .map(str::to_owned)
        .ok_or_else(|| invalid("data provider", name))
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
        let (mc, m) = grammar::parse_measurement(name).ok_or_else(|| invalid(WHAT, name))?;
        Ok(Self {
            measurement_consumer_id: mc.to_owned(),
            external_measurement_id: api_id(WHAT, name, m)?,
        })
    }
}

pub fn measurement_name(measurement_consumer_id: &str, external_measurement_id: i64) -> String {
    grammar::measurement_name(
        measurement_consumer_id,
        &encode_api_id(external_measurement_id),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
