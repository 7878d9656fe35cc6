//! Principals: the parties identified by mTLS client certificates.

use std::fmt;

use crate::IdentityError;

/// Who is on the other end of an mTLS connection.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Principal {
    /// The Kingdom.
    Kingdom,
    /// A duchy, by duchy id (e.g. `worker1`).
    Duchy(String),
    /// A data provider (EDP), by external id.
    DataProvider(String),
    /// A measurement consumer, by external id.
    MeasurementConsumer(String),
}

const DUCHIES: &str = "duchies";
const DATA_PROVIDERS: &str = "dataProviders";
const MEASUREMENT_CONSUMERS: &str = "measurementConsumers";
const KINGDOM: &str = "kingdom";

impl Principal {
    /// The resource name: `kingdom`, `duchies/{id}`, `dataProviders/{id}` or
    /// `measurementConsumers/{id}`.
    pub fn resource_name(&self) -> String {
        match self {
            Principal::Kingdom => KINGDOM.to_owned(),
            Principal::Duchy(id) => format!("{DUCHIES}/{id}"),
            Principal::DataProvider(id) => format!("{DATA_PROVIDERS}/{id}"),
            Principal::MeasurementConsumer(id) => format!("{MEASUREMENT_CONSUMERS}/{id}"),
        }
    }

    /// Parses a resource name produced by [`Principal::resource_name`].
    ///
    /// Ids follow `halo_protocol::names::valid_id_segment` (1–64 ASCII letters, digits, `-`,
    /// `_` or `.`, not starting with `.`; so they are also safe in file names, see
    /// [`Principal::file_stem`]).
    pub fn parse(name: &str) -> Result<Principal, IdentityError> {
        let invalid = |reason| IdentityError::InvalidResourceName {
            name: name.to_owned(),
            reason,
        };
        if name == KINGDOM {
            return Ok(Principal::Kingdom);
        }
        let (collection, id) = name
            .split_once('/')
            .ok_or_else(|| invalid("expected \"kingdom\" or \"{collection}/{id}\""))?;
        if id.is_empty() {
            return Err(invalid("empty id"));
        }
        // The one id grammar of the Kingdom and the duchies.
        if !halo_protocol::names::valid_id_segment(id) {
            return Err(invalid(
                "id must be 1-64 ASCII letters, digits, '-', '_' or '.' and not start with '.'",
            ));
        }
        let id = id.to_owned();
        match collection {
            DUCHIES => Ok(Principal::Duchy(id)),
            DATA_PROVIDERS => Ok(Principal::DataProvider(id)),
            MEASUREMENT_CONSUMERS => Ok(Principal::MeasurementConsumer(id)),
            _ => Err(invalid(
                "unknown collection (expected duchies, dataProviders or measurementConsumers)",
            )),
        }
    }

    /// A short name usable as a file or directory name: `kingdom`, `duchy-{id}`,
    /// `edp-{id}` or `mc-{id}`.
    pub fn file_stem(&self) -> String {
        match self {
            Principal::Kingdom => KINGDOM.to_owned(),
            Principal::Duchy(id) => format!("duchy-{id}"),
            Principal::DataProvider(id) => format!("edp-{id}"),
            Principal::MeasurementConsumer(id) => format!("mc-{id}"),
        }
    }

    /// The duchy id if this is a duchy.
    pub fn duchy_id(&self) -> Option<&str> {
        match self {
            Principal::Duchy(id) => Some(id),
            _ => None,
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.resource_name())
    }
}

impl std::str::FromStr for Principal {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Principal::parse(s)
    }
}
