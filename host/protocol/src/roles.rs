//! Which duchy plays which role, per protocol: the operator's `roles.toml`, read by the
//! Kingdom (to choose a computation's participants and fulfilling duchies) and by every duchy
//! (to know its own role), so no duchy name or role is compiled in.
//!
//! ```toml
//! [honest_majority_share_shuffle]
//! aggregator = "agg"
//! non_aggregators = ["eu-west", "us-east.2"]   # first, second
//!
//! [liquid_legions_v2]
//! aggregator = "agg"
//! non_aggregators = ["eu-west", "us-east.2"]   # ring order, at least 2
//!
//! # [reach_only_liquid_legions_v2]: optional, defaults to [liquid_legions_v2]
//! ```
//!
//! A protocol without a table is not offered (CreateMeasurement answers FAILED_PRECONDITION).
//! A duchy named in no table takes part in nothing.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::names::valid_id_segment;
use crate::{Role, SystemProtocol};

/// The duchies of one protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtocolDuchies {
    /// The duchy that combines the others' work and reports the result.
    pub aggregator: String,
    /// The other participants, in protocol order (HMSS: first, second; LLv2: the ring).
    pub non_aggregators: Vec<String>,
}

impl ProtocolDuchies {
    /// Every participant in computation order: the non-aggregators, then the aggregator.
    pub fn participants(&self) -> Vec<String> {
        let mut v = self.non_aggregators.clone();
        v.push(self.aggregator.clone());
        v
    }
}

/// The roles file (or the `[roles]` table of a Kingdom or duchy config).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liquid_legions_v2: Option<ProtocolDuchies>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reach_only_liquid_legions_v2: Option<ProtocolDuchies>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub honest_majority_share_shuffle: Option<ProtocolDuchies>,
}

/// Why a role configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RoleConfigError {
    #[error("reading roles file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("roles file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("roles of {protocol}: {message}")]
    Invalid {
        protocol: SystemProtocol,
        message: String,
    },
}

impl RoleConfig {
    /// Parses TOML text (unknown keys are refused).
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, RoleConfigError> {
        toml::from_str(text).map_err(|e| RoleConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a roles file.
    pub fn load(path: &Path) -> Result<Self, RoleConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| RoleConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// The duchies of `protocol`, if it is configured (reach-only LLv2 falls back to LLv2's).
    pub fn duchies(&self, protocol: SystemProtocol) -> Option<&ProtocolDuchies> {
        match protocol {
            SystemProtocol::LiquidLegionsV2 => self.liquid_legions_v2.as_ref(),
            SystemProtocol::ReachOnlyLiquidLegionsV2 => self
                .reach_only_liquid_legions_v2
                .as_ref()
                .or(self.liquid_legions_v2.as_ref()),
            SystemProtocol::HonestMajorityShareShuffle => {
                self.honest_majority_share_shuffle.as_ref()
            }
        }
    }

    /// The protocols with a configured table.
    pub fn protocols(&self) -> Vec<SystemProtocol> {
        SystemProtocol::ALL
            .into_iter()
            .filter(|p| self.duchies(*p).is_some())
            .collect()
    }

    /// `duchy`'s role in `protocol`; `None` if it takes no part (or the protocol is not
    /// configured).
    pub fn role_of(&self, protocol: SystemProtocol, duchy: &str) -> Option<Role> {
        let d = self.duchies(protocol)?;
        if d.aggregator == duchy {
            return Some(Role::Aggregator);
        }
        let index = d.non_aggregators.iter().position(|n| n == duchy)?;
        protocol.non_aggregator_role(index)
    }

    /// Checks that the participants a Kingdom lists for a computation of `protocol` (duchy ids,
    /// in the Kingdom's order) are the ones this roles file gives, in the same order: a duchy
    /// whose roles file disagrees with the Kingdom's would otherwise play a role the others
    /// do not expect.
    pub fn check_participants(
        &self,
        protocol: SystemProtocol,
        kingdom: &[&str],
    ) -> Result<(), String> {
        let Some(d) = self.duchies(protocol) else {
            return Err(format!("the roles file has no table for {protocol}"));
        };
        let ours = d.participants();
        if ours.iter().map(String::as_str).eq(kingdom.iter().copied()) {
            Ok(())
        } else {
            Err(format!(
                "the roles file disagrees with the Kingdom about {protocol}: the Kingdom lists \
                 participants {kingdom:?}, the roles file gives {ours:?} (non-aggregators in \
                 order, then the aggregator)"
            ))
        }
    }

    /// Every duchy named anywhere, sorted.
    pub fn all_duchies(&self) -> Vec<String> {
        let mut v: Vec<String> = SystemProtocol::ALL
            .into_iter()
            .filter_map(|p| self.duchies(p))
            .flat_map(ProtocolDuchies::participants)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Checks every table: valid ids, no duchy twice, the number of non-aggregators the
    /// protocol allows, and (when `known` is given) only duchies the deployment knows.
    pub fn validate(&self, known: Option<&[String]>) -> Result<(), RoleConfigError> {
        for protocol in SystemProtocol::ALL {
            let Some(d) = self.duchies(protocol) else {
                continue;
            };
            let invalid = |message: String| RoleConfigError::Invalid { protocol, message };
            let (min, max) = protocol.non_aggregator_count();
            let n = d.non_aggregators.len();
            if n < min || n > max {
                let wanted = if min == max {
                    format!("exactly {min}")
                } else {
                    format!("at least {min}")
                };
                return Err(invalid(format!(
                    "{n} non-aggregators configured, the protocol needs {wanted}"
                )));
            }
            let mut seen = HashSet::new();
            for id in d.participants() {
                if !valid_id_segment(&id) {
                    return Err(invalid(format!(
                        "invalid duchy id {id:?} (ASCII letters, digits, '-', '_', '.')"
                    )));
                }
                if !seen.insert(id.clone()) {
                    return Err(invalid(format!("duchy {id:?} is named twice")));
                }
                if let Some(known) = known
                    && !known.contains(&id)
                {
                    return Err(invalid(format!("{id:?} is not a configured duchy")));
                }
            }
        }
        Ok(())
    }

    /// The roles every duchy plays, for display (`--print-config`, logs).
    pub fn summary(&self) -> BTreeMap<String, Vec<String>> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for protocol in SystemProtocol::ALL {
            if let Some(d) = self.duchies(protocol) {
                for id in d.participants() {
                    if let Some(role) = self.role_of(protocol, &id) {
                        m.entry(id)
                            .or_default()
                            .push(format!("{protocol}: {role:?}"));
                    }
                }
            }
        }
        m
    }
}

impl SystemProtocol {
    /// How many non-aggregators a computation of this protocol has: `(min, max)`. HMSS has
    /// exactly two (first and second); the LLv2 ring has at least two (three duchies in all).
    pub fn non_aggregator_count(self) -> (usize, usize) {
        match self {
            SystemProtocol::HonestMajorityShareShuffle => (2, 2),
            SystemProtocol::LiquidLegionsV2 | SystemProtocol::ReachOnlyLiquidLegionsV2 => {
                (2, usize::MAX)
            }
        }
    }

    /// The role of the `index`-th non-aggregator.
    pub fn non_aggregator_role(self, index: usize) -> Option<Role> {
        match (self, index) {
            (SystemProtocol::HonestMajorityShareShuffle, 0) => Some(Role::FirstNonAggregator),
            (SystemProtocol::HonestMajorityShareShuffle, 1) => Some(Role::SecondNonAggregator),
            (SystemProtocol::HonestMajorityShareShuffle, _) => None,
            (SystemProtocol::LiquidLegionsV2 | SystemProtocol::ReachOnlyLiquidLegionsV2, _) => {
                Some(Role::NonAggregator)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const FOUR: &str = r#"
[honest_majority_share_shuffle]
aggregator = "agg"
non_aggregators = ["eu-west", "us-east.2"]

[liquid_legions_v2]
aggregator = "agg"
non_aggregators = ["eu-west", "us-east.2", "ap-south_1"]
"#;

    #[test]
    fn roles_follow_the_file() {
        let r = RoleConfig::from_toml(FOUR, "test").unwrap();
        r.validate(None).unwrap();
        use SystemProtocol::*;
        assert_eq!(
            r.role_of(HonestMajorityShareShuffle, "agg"),
            Some(Role::Aggregator)
        );
        assert_eq!(
            r.role_of(HonestMajorityShareShuffle, "eu-west"),
            Some(Role::FirstNonAggregator)
        );
        assert_eq!(
            r.role_of(HonestMajorityShareShuffle, "us-east.2"),
            Some(Role::SecondNonAggregator)
        );
        assert_eq!(r.role_of(HonestMajorityShareShuffle, "ap-south_1"), None);
        assert_eq!(
            r.role_of(LiquidLegionsV2, "ap-south_1"),
            Some(Role::NonAggregator)
        );
        // Reach-only falls back to the LLv2 ring.
        assert_eq!(
            r.role_of(ReachOnlyLiquidLegionsV2, "us-east.2"),
            Some(Role::NonAggregator)
        );
        assert_eq!(r.role_of(LiquidLegionsV2, "idle"), None);
        assert_eq!(
            r.duchies(LiquidLegionsV2).unwrap().participants(),
            ["eu-west", "us-east.2", "ap-south_1", "agg"]
        );
        assert_eq!(
            r.all_duchies(),
            ["agg", "ap-south_1", "eu-west", "us-east.2"]
        );
    }

    #[test]
    fn bad_tables_are_refused_with_a_reason() {
        let unknown = RoleConfig::from_toml("[hmss]\naggregator = \"a\"\n", "x").unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `hmss`"),
            "{unknown}"
        );
        let typo = RoleConfig::from_toml(
            "[liquid_legions_v2]\naggregator = \"a\"\nnon_aggregator = [\"b\"]\n",
            "x",
        )
        .unwrap_err();
        assert!(typo.to_string().contains("non_aggregator"), "{typo}");

        let check = |text: &str, known: Option<&[String]>| {
            RoleConfig::from_toml(text, "x")
                .unwrap()
                .validate(known)
                .unwrap_err()
                .to_string()
        };
        let three = "[honest_majority_share_shuffle]\naggregator = \"a\"\nnon_aggregators = [\"b\", \"c\", \"d\"]\n";
        assert!(
            check(three, None).contains("exactly 2"),
            "{}",
            check(three, None)
        );
        let ring = "[liquid_legions_v2]\naggregator = \"a\"\nnon_aggregators = [\"b\"]\n";
        assert!(check(ring, None).contains("at least 2"));
        let twice = "[liquid_legions_v2]\naggregator = \"a\"\nnon_aggregators = [\"b\", \"a\"]\n";
        assert!(check(twice, None).contains("named twice"));
        let bad = "[liquid_legions_v2]\naggregator = \"a/b\"\nnon_aggregators = [\"b\", \"c\"]\n";
        assert!(check(bad, None).contains("invalid duchy id"));
        let known = vec!["a".to_string(), "b".to_string()];
        let ok = "[liquid_legions_v2]\naggregator = \"a\"\nnon_aggregators = [\"b\", \"c\"]\n";
        assert!(check(ok, Some(&known)).contains("\"c\" is not a configured duchy"));
    }
}
