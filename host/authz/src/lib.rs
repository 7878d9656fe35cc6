//! The authorization matrix of halo-host: which principal may call which RPC on which
//! resource, for every server (Kingdom system API, Kingdom admin API `halo.v1`, duchy
//! `ComputationControl`, duchy `RequisitionFulfillment`).
//!
//! [`MATRIX`] is the single source of truth: one [`Rule`] per RPC, naming the kind of caller
//! admitted, the resource the RPC acts on, and the [`Requirement`]s relating the caller to
//! that resource, each with the status code returned when it does not hold. The servers do
//! not decide codes themselves: they authenticate the caller, supply the [`Facts`] they know
//! about the resource, and call [`Rpc::admit`], [`Rpc::check_request`] (requirements decided
//! by the request alone, before anything is read) and [`Rpc::check_resource`] (requirements
//! that need the stored resource). A fact a requirement needs but the server did not supply
//! is an INTERNAL error, never a pass: the check fails closed.
//!
//! Codes follow halo-system §1.3 / §6.2: acting on another principal's resource is
//! PERMISSION_DENIED; a Kingdom computation the calling duchy does not take part in is
//! NOT_FOUND (its existence is not revealed); a caller of the wrong kind is PERMISSION_DENIED.

use halo_identity::Principal;
use tonic::{Code, Status};

/// Which server serves an RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Server {
    /// Kingdom, `wfa.measurement.system.v1alpha` (callers: duchies).
    KingdomSystem,
    /// Kingdom, halo-host's admin API `halo.v1`.
    KingdomAdmin,
    /// Duchy `ComputationControl` (callers: peer duchies).
    DuchyComputationControl,
    /// Duchy `RequisitionFulfillment` (callers: data providers).
    DuchyRequisitionFulfillment,
}

impl Server {
    pub fn as_str(self) -> &'static str {
        match self {
            Server::KingdomSystem => "Kingdom",
            Server::KingdomAdmin => "Kingdom (halo.v1)",
            Server::DuchyComputationControl | Server::DuchyRequisitionFulfillment => "duchy",
        }
    }
}

/// The kind of principal admitted to an RPC (every other kind, including the Kingdom's own
/// identity, is PERMISSION_DENIED).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Caller {
    Duchy,
    DataProvider,
    MeasurementConsumer,
    /// Any authenticated principal.
    Any,
}

impl Caller {
    pub fn as_str(self) -> &'static str {
        match self {
            Caller::Duchy => "duchy",
            Caller::DataProvider => "data provider",
            Caller::MeasurementConsumer => "consumer",
            Caller::Any => "anyone",
        }
    }

    fn admits(self, p: &Principal) -> bool {
        matches!(
            (self, p),
            (Caller::Any, _)
                | (Caller::Duchy, Principal::Duchy(_))
                | (Caller::DataProvider, Principal::DataProvider(_))
                | (
                    Caller::MeasurementConsumer,
                    Principal::MeasurementConsumer(_)
                )
        )
    }
}

/// How the caller must relate to the resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Requirement {
    /// The principal named in the resource name (`…/participants/{duchy}`,
    /// `dataProviders/{dp}/…`, `measurementConsumers/{mc}/…`) is the caller.
    NamesCaller,
    /// A certificate named in the request, if any, belongs to the caller.
    OwnsCertificate,
    /// The caller is a participant of the computation.
    Participant,
    /// The caller is the computation's aggregator.
    Aggregator,
    /// The caller is the duchy the requisition is assigned to (HMSS); unassigned
    /// requisitions (LLv2) may be fulfilled by any participant.
    AssignedFulfiller,
    /// The stage the computation waits in expects input from the caller.
    ExpectedSender,
    /// The requisition belongs (as stored) to the caller, not only to the data provider
    /// named in the request.
    RequisitionOwner,
}

impl Requirement {
    /// Decided by the request alone (checked before anything is read).
    pub fn from_request(self) -> bool {
        matches!(
            self,
            Requirement::NamesCaller | Requirement::OwnsCertificate
        )
    }

    /// A short label (README table).
    pub fn label(self) -> &'static str {
        match self {
            Requirement::NamesCaller => "named owner",
            Requirement::OwnsCertificate => "own certificate",
            Requirement::Participant => "participant",
            Requirement::Aggregator => "aggregator",
            Requirement::AssignedFulfiller => "assigned duchy",
            Requirement::ExpectedSender => "expected sender",
            Requirement::RequisitionOwner => "requisition's provider",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Requirement::NamesCaller => "the resource name names the caller",
            Requirement::OwnsCertificate => "a certificate named in the request is the caller's",
            Requirement::Participant => "the caller participates in the computation",
            Requirement::Aggregator => "the caller is the computation's aggregator",
            Requirement::AssignedFulfiller => {
                "the caller is the requisition's assigned fulfilling duchy (HMSS)"
            }
            Requirement::ExpectedSender => {
                "the caller is a sender the waiting stage expects (participant)"
            }
            Requirement::RequisitionOwner => "the requisition's stored data provider is the caller",
        }
    }
}

/// One requirement and the code returned when it does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Check {
    pub requirement: Requirement,
    pub denied: Code,
}

const fn check(requirement: Requirement, denied: Code) -> Check {
    Check {
        requirement,
        denied,
    }
}

/// Every RPC under access control.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rpc {
    GetComputation,
    StreamActiveComputations,
    SetComputationResult,
    GetComputationParticipant,
    SetParticipantRequisitionParams,
    ConfirmComputationParticipant,
    FailComputationParticipant,
    CreateComputationLogEntry,
    /// System `Requisitions.FulfillRequisition` (duchy → Kingdom).
    SystemFulfillRequisition,
    CreateMeasurement,
    GetMeasurement,
    CancelMeasurement,
    ListRequisitions,
    GetCertificate,
    AdvanceComputation,
    GetComputationStage,
    /// Public `RequisitionFulfillment.FulfillRequisition` (data provider → duchy).
    FulfillRequisition,
}

/// One row of the matrix.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub rpc: Rpc,
    pub server: Server,
    /// `Service.Method`.
    pub method: &'static str,
    pub caller: Caller,
    /// The resource the RPC acts on.
    pub resource: &'static str,
    /// Requirements, in the order they are checked.
    pub checks: &'static [Check],
}

use Code::{NotFound, PermissionDenied};
use Requirement::*;

/// The authorization matrix, one row per [`Rpc`] in declaration order.
pub const MATRIX: &[Rule] = &[
    Rule {
        rpc: Rpc::GetComputation,
        server: Server::KingdomSystem,
        method: "Computations.GetComputation",
        caller: Caller::Duchy,
        resource: "computations/{c}",
        checks: &[check(Participant, NotFound)],
    },
    Rule {
        rpc: Rpc::StreamActiveComputations,
        server: Server::KingdomSystem,
        method: "Computations.StreamActiveComputations",
        caller: Caller::Duchy,
        resource: "computations/{c} (stream filter)",
        checks: &[check(Participant, NotFound)],
    },
    Rule {
        rpc: Rpc::SetComputationResult,
        server: Server::KingdomSystem,
        method: "Computations.SetComputationResult",
        caller: Caller::Duchy,
        resource: "computations/{c}, aggregator_certificate",
        checks: &[
            check(OwnsCertificate, PermissionDenied),
            check(Participant, NotFound),
            check(Aggregator, PermissionDenied),
        ],
    },
    Rule {
        rpc: Rpc::GetComputationParticipant,
        server: Server::KingdomSystem,
        method: "ComputationParticipants.GetComputationParticipant",
        caller: Caller::Duchy,
        resource: "computations/{c}/participants/{d}",
        checks: &[check(NamesCaller, PermissionDenied)],
    },
    Rule {
        rpc: Rpc::SetParticipantRequisitionParams,
        server: Server::KingdomSystem,
        method: "ComputationParticipants.SetParticipantRequisitionParams",
        caller: Caller::Duchy,
        resource: "computations/{c}/participants/{d}",
        checks: &[check(NamesCaller, PermissionDenied)],
    },
    Rule {
        rpc: Rpc::ConfirmComputationParticipant,
        server: Server::KingdomSystem,
        method: "ComputationParticipants.ConfirmComputationParticipant",
        caller: Caller::Duchy,
        resource: "computations/{c}/participants/{d}",
        checks: &[check(NamesCaller, PermissionDenied)],
    },
    Rule {
        rpc: Rpc::FailComputationParticipant,
        server: Server::KingdomSystem,
        method: "ComputationParticipants.FailComputationParticipant",
        caller: Caller::Duchy,
        resource: "computations/{c}/participants/{d}",
        checks: &[check(NamesCaller, PermissionDenied)],
    },
    Rule {
        rpc: Rpc::CreateComputationLogEntry,
        server: Server::KingdomSystem,
        method: "ComputationLogEntries.CreateComputationLogEntry",
        caller: Caller::Duchy,
        resource: "computations/{c}/participants/{d}",
        checks: &[check(NamesCaller, PermissionDenied)],
    },
    Rule {
        rpc: Rpc::SystemFulfillRequisition,
        server: Server::KingdomSystem,
        method: "Requisitions.FulfillRequisition",
        caller: Caller::Duchy,
        resource: "computations/{c}/requisitions/{r}",
        checks: &[
            check(Participant, PermissionDenied),
            check(AssignedFulfiller, PermissionDenied),
        ],
    },
    Rule {
        rpc: Rpc::CreateMeasurement,
        server: Server::KingdomAdmin,
        method: "Measurements.CreateMeasurement",
        caller: Caller::MeasurementConsumer,
        resource: "measurementConsumers/{mc}",
        checks: &[check(NamesCaller, PermissionDenied)],
    },
    Rule {
        rpc: Rpc::GetMeasurement,
        server: Server::KingdomAdmin,
        method: "Measurements.GetMeasurement",
        caller: Caller::MeasurementConsumer,
        resource: "measurementConsumers/{mc}/measurements/{m}",
        checks: &[check(NamesCaller, PermissionDenied)],
    },
    Rule {
        rpc: Rpc::CancelMeasurement,
        server: Server::KingdomAdmin,
        method: "Measurements.CancelMeasurement",
        caller: Caller::MeasurementConsumer,
        resource: "measurementConsumers/{mc}/measurements/{m}",
        checks: &[check(NamesCaller, PermissionDenied)],
    },
    Rule {
        rpc: Rpc::ListRequisitions,
        server: Server::KingdomAdmin,
        method: "DataProviderRequisitions.ListRequisitions",
        caller: Caller::DataProvider,
        resource: "dataProviders/{dp}",
        checks: &[check(NamesCaller, PermissionDenied)],
    },
    Rule {
        rpc: Rpc::GetCertificate,
        server: Server::KingdomAdmin,
        method: "Certificates.GetCertificate",
        caller: Caller::Any,
        resource: "{owner}/certificates/{x}",
        checks: &[],
    },
    Rule {
        rpc: Rpc::AdvanceComputation,
        server: Server::DuchyComputationControl,
        method: "ComputationControl.AdvanceComputation",
        caller: Caller::Duchy,
        resource: "computations/{c} (header)",
        checks: &[
            check(Participant, PermissionDenied),
            check(ExpectedSender, PermissionDenied),
        ],
    },
    Rule {
        rpc: Rpc::GetComputationStage,
        server: Server::DuchyComputationControl,
        method: "ComputationControl.GetComputationStage",
        caller: Caller::Duchy,
        resource: "computations/{c}/participants/{self}/computationStage",
        checks: &[check(Participant, PermissionDenied)],
    },
    Rule {
        rpc: Rpc::FulfillRequisition,
        server: Server::DuchyRequisitionFulfillment,
        method: "RequisitionFulfillment.FulfillRequisition",
        caller: Caller::DataProvider,
        resource: "dataProviders/{dp}/requisitions/{r}, data_provider_certificate",
        checks: &[
            check(NamesCaller, PermissionDenied),
            check(OwnsCertificate, PermissionDenied),
            check(RequisitionOwner, PermissionDenied),
        ],
    },
];

/// What a server knows about the resource of one call. Ids are bare principal ids
/// (`worker1`, `edp1`, `mc1`). Leave a field `None` when the RPC's rule does not need it;
/// a needed field left `None` fails the check (INTERNAL).
#[derive(Clone, Copy, Debug, Default)]
pub struct Facts<'a> {
    /// The principal named in the resource name.
    pub named: Option<&'a str>,
    /// The owner of the certificate named in the request; `Some(None)`: no certificate named.
    pub certificate_owner: Option<Option<&'a str>>,
    /// The computation's participants.
    pub participants: Option<&'a [String]>,
    /// The computation's aggregator.
    pub aggregator: Option<&'a str>,
    /// The requisition's assigned fulfilling duchy; `Some(None)`: not assigned.
    pub assigned_fulfiller: Option<Option<&'a str>>,
    /// The senders the waiting stage expects; `Some(None)`: any participant.
    pub expected_senders: Option<Option<&'a [String]>>,
    /// The requisition's stored data provider.
    pub requisition_owner: Option<&'a str>,
}

fn missing(rule: &Rule, r: Requirement) -> Status {
    Status::internal(format!(
        "authorization of {} needs a fact for \"{}\" the server did not supply",
        rule.method,
        r.as_str()
    ))
}

impl Rpc {
    /// This RPC's row of [`MATRIX`].
    pub fn rule(self) -> &'static Rule {
        // MATRIX is in declaration order (checked by a test); the search is a fallback.
        MATRIX
            .get(self as usize)
            .filter(|r| r.rpc == self)
            .or_else(|| MATRIX.iter().find(|r| r.rpc == self))
            .unwrap_or(&MATRIX[0])
    }

    /// Admits the caller if its kind may call this RPC and returns its id (empty for the
    /// Kingdom under [`Caller::Any`]); PERMISSION_DENIED otherwise.
    pub fn admit(self, caller: &Principal) -> Result<&str, Status> {
        let rule = self.rule();
        if !rule.caller.admits(caller) {
            return Err(Status::permission_denied(format!(
                "{} may not call {} (only a {} may)",
                caller.resource_name(),
                rule.method,
                rule.caller.as_str()
            )));
        }
        Ok(match caller {
            Principal::Kingdom => "",
            Principal::Duchy(id)
            | Principal::DataProvider(id)
            | Principal::MeasurementConsumer(id) => id.as_str(),
        })
    }

    /// Admits the caller and checks the requirements decided by the request alone.
    pub fn check_request(
        self,
        caller: &Principal,
        resource: &str,
        facts: &Facts<'_>,
    ) -> Result<(), Status> {
        self.check_phase(caller, resource, facts, true)
    }

    /// Admits the caller and checks the requirements that need the stored resource.
    pub fn check_resource(
        self,
        caller: &Principal,
        resource: &str,
        facts: &Facts<'_>,
    ) -> Result<(), Status> {
        self.check_phase(caller, resource, facts, false)
    }

    fn check_phase(
        self,
        caller: &Principal,
        resource: &str,
        facts: &Facts<'_>,
        from_request: bool,
    ) -> Result<(), Status> {
        let rule = self.rule();
        let id = self.admit(caller)?;
        for c in rule
            .checks
            .iter()
            .filter(|c| c.requirement.from_request() == from_request)
        {
            let r = c.requirement;
            let holds = match r {
                NamesCaller => facts.named.ok_or_else(|| missing(rule, r))? == id,
                OwnsCertificate => match facts.certificate_owner.ok_or_else(|| missing(rule, r))? {
                    None => true,
                    Some(owner) => owner == id,
                },
                Participant => facts
                    .participants
                    .ok_or_else(|| missing(rule, r))?
                    .iter()
                    .any(|p| p == id),
                Aggregator => facts.aggregator.ok_or_else(|| missing(rule, r))? == id,
                AssignedFulfiller => {
                    match facts.assigned_fulfiller.ok_or_else(|| missing(rule, r))? {
                        None => true,
                        Some(d) => d == id,
                    }
                }
                ExpectedSender => match facts.expected_senders.ok_or_else(|| missing(rule, r))? {
                    None => true,
                    Some(list) => list.iter().any(|d| d == id),
                },
                RequisitionOwner => facts.requisition_owner.ok_or_else(|| missing(rule, r))? == id,
            };
            if !holds {
                return Err(deny(rule, c, caller, resource));
            }
        }
        Ok(())
    }
}

fn deny(rule: &Rule, c: &Check, caller: &Principal, resource: &str) -> Status {
    if c.denied == NotFound {
        // Does not reveal whether the resource exists.
        return Status::not_found(format!("{resource} not found"));
    }
    Status::new(
        c.denied,
        format!(
            "{} may not call {} on {resource}: requires that {}",
            caller.resource_name(),
            rule.method,
            c.requirement.as_str()
        ),
    )
}

/// The matrix as a Markdown table (the README's "Authorization" section carries exactly this,
/// checked by a test). Requirements are listed in checking order with the code returned when
/// one does not hold (PD = PERMISSION_DENIED, NF = NOT_FOUND).
pub fn markdown() -> String {
    let mut out = String::from(
        "| server | RPC | caller | resource | requirements (code if not met) |\n|---|---|---|---|---|\n",
    );
    for r in MATRIX {
        let checks = if r.checks.is_empty() {
            "— (public)".to_owned()
        } else {
            r.checks
                .iter()
                .map(|c| {
                    let code = match c.denied {
                        PermissionDenied => "PD",
                        NotFound => "NF",
                        _ => "other",
                    };
                    format!("{} ({code})", c.requirement.label())
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "| {} | {} | {} | `{}` | {} |\n",
            r.server.as_str(),
            r.method,
            r.caller.as_str(),
            r.resource,
            checks
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn matrix_is_in_rpc_order_with_one_row_per_rpc() {
        for (i, r) in MATRIX.iter().enumerate() {
            assert_eq!(r.rpc as usize, i, "{:?}", r.rpc);
            assert_eq!(r.rpc.rule().method, r.method);
        }
        assert_eq!(MATRIX.len(), Rpc::FulfillRequisition as usize + 1);
    }

    #[test]
    fn wrong_kind_is_permission_denied() {
        let e = Rpc::GetComputation
            .admit(&Principal::DataProvider("edp1".into()))
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        let e = Rpc::GetComputation.admit(&Principal::Kingdom).unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert_eq!(Rpc::GetCertificate.admit(&Principal::Kingdom).unwrap(), "");
    }

    #[test]
    fn missing_fact_fails_closed() {
        let e = Rpc::GetComputation
            .check_resource(
                &Principal::Duchy("w".into()),
                "computations/1",
                &Facts::default(),
            )
            .unwrap_err();
        assert_eq!(e.code(), Code::Internal);
        let e = Rpc::FulfillRequisition
            .check_request(&Principal::DataProvider("e".into()), "x", &Facts::default())
            .unwrap_err();
        assert_eq!(e.code(), Code::Internal);
    }

    #[test]
    fn requirements_are_evaluated_with_their_codes() {
        let w1 = Principal::Duchy("worker1".into());
        let parts = ["worker1".to_owned(), "aggregator".to_owned()];
        let ok = Facts {
            participants: Some(&parts),
            aggregator: Some("aggregator"),
            certificate_owner: Some(Some("worker1")),
            ..Facts::default()
        };
        Rpc::SetComputationResult
            .check_request(&w1, "c", &ok)
            .unwrap();
        assert_eq!(
            Rpc::SetComputationResult
                .check_resource(&w1, "c", &ok)
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
        let stranger = Principal::Duchy("worker9".into());
        let e = Rpc::GetComputation
            .check_resource(&stranger, "computations/1", &ok)
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(!e.message().contains("worker"), "{}", e.message());
        // Unassigned requisitions and unnamed certificates impose nothing.
        let open = Facts {
            participants: Some(&parts),
            assigned_fulfiller: Some(None),
            ..Facts::default()
        };
        Rpc::SystemFulfillRequisition
            .check_resource(&w1, "r", &open)
            .unwrap();
        let assigned = Facts {
            assigned_fulfiller: Some(Some("aggregator")),
            ..open
        };
        assert_eq!(
            Rpc::SystemFulfillRequisition
                .check_resource(&w1, "r", &assigned)
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
    }

    #[test]
    fn markdown_has_a_line_per_row() {
        let md = markdown();
        assert_eq!(md.lines().count(), MATRIX.len() + 2);
        for r in MATRIX {
            assert!(md.contains(r.method));
        }
    }
}

#[cfg(test)]
mod readme {
    /// The README's "Authorization" table is exactly [`super::markdown`]'s output, so the
    /// documentation cannot drift from the code.
    #[test]
    fn readme_carries_the_matrix() {
        let readme = include_str!("../../../README.md");
        let table = super::markdown();
        assert!(
            readme.contains(&table),
            "README.md's Authorization table differs from halo_authz::markdown():\n{table}"
        );
    }
}
