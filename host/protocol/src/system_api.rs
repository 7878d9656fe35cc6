//! The one mapping between [`SystemProtocol`] and the system and admin APIs: the
//! `MpcProtocolConfig`, `RequisitionParams`, `AdvanceComputation` header, `ComputationStage` and
//! `FulfillRequisition` header oneofs, the admin API's `Protocol` enum and the config names;
//! and the protocol-dependent decisions of the Kingdom, so that Kingdom and duchy code stay
//! generic. (The WIT enum is mapped in the engine's bindings, through one table.)

use halo_proto::api::v2alpha::fulfill_requisition_request::header::Protocol as FulfillHeaderProtocol;
use halo_proto::halo::v1::Protocol as AdminProtocol;
use halo_proto::system::v1alpha as sys;
use sys::advance_computation_request::header::Protocol as AdvanceProtocol;
use sys::computation::State as ComputationState;
use sys::computation::mpc_protocol_config::Protocol as MpcProtocol;
use sys::computation_participant::State as ParticipantState;
use sys::computation_participant::requisition_params::Protocol as ParamsProtocol;
use sys::computation_stage::Stage;

use crate::SystemProtocol;

/// A protocol of the system API this host does not run (e.g. TrusTEE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("protocol {0} is not supported")]
pub struct UnsupportedProtocol(pub &'static str);

impl SystemProtocol {
    /// Every protocol, in API number order.
    pub const ALL: [SystemProtocol; 3] = [
        SystemProtocol::LiquidLegionsV2,
        SystemProtocol::ReachOnlyLiquidLegionsV2,
        SystemProtocol::HonestMajorityShareShuffle,
    ];

    /// The protocol of a config name (`honest_majority_share_shuffle`, ...).
    pub fn from_config_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.config_name() == name)
    }

    /// A human-readable name (`Honest Majority Share Shuffle`).
    pub fn display_name(self) -> &'static str {
        match self {
            SystemProtocol::LiquidLegionsV2 => "Liquid Legions v2",
            SystemProtocol::ReachOnlyLiquidLegionsV2 => "reach-only Liquid Legions v2",
            SystemProtocol::HonestMajorityShareShuffle => "Honest Majority Share Shuffle",
        }
    }

    // ---- admin API (`halo.v1.Protocol`) ----------------------------------------------------

    pub fn admin(self) -> AdminProtocol {
        match self {
            SystemProtocol::LiquidLegionsV2 => AdminProtocol::LiquidLegionsV2,
            SystemProtocol::ReachOnlyLiquidLegionsV2 => AdminProtocol::ReachOnlyLiquidLegionsV2,
            SystemProtocol::HonestMajorityShareShuffle => AdminProtocol::HonestMajorityShareShuffle,
        }
    }

    /// `None` for `PROTOCOL_UNSPECIFIED`.
    pub fn from_admin(p: AdminProtocol) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.admin() == p)
    }

    // ---- `Computation.MpcProtocolConfig` ---------------------------------------------------

    pub fn of_mpc_config(p: &MpcProtocol) -> Result<Self, UnsupportedProtocol> {
        match p {
            MpcProtocol::LiquidLegionsV2(_) => Ok(SystemProtocol::LiquidLegionsV2),
            MpcProtocol::ReachOnlyLiquidLegionsV2(_) => {
                Ok(SystemProtocol::ReachOnlyLiquidLegionsV2)
            }
            MpcProtocol::HonestMajorityShareShuffle(_) => {
                Ok(SystemProtocol::HonestMajorityShareShuffle)
            }
            MpcProtocol::TrusTee(_) => Err(UnsupportedProtocol("trus_tee")),
        }
    }

    /// The protocol a Kingdom computation runs (`None`: none set, or one this host does not
    /// run).
    pub fn of_computation(c: &sys::Computation) -> Option<Self> {
        let p = c.mpc_protocol_config.as_ref()?.protocol.as_ref()?;
        Self::of_mpc_config(p).ok()
    }

    // ---- `ComputationParticipant.RequisitionParams` ----------------------------------------

    pub fn of_requisition_params(p: &ParamsProtocol) -> Result<Self, UnsupportedProtocol> {
        match p {
            ParamsProtocol::LiquidLegionsV2(_) => Ok(SystemProtocol::LiquidLegionsV2),
            ParamsProtocol::ReachOnlyLiquidLegionsV2(_) => {
                Ok(SystemProtocol::ReachOnlyLiquidLegionsV2)
            }
            ParamsProtocol::HonestMajorityShareShuffle(_) => {
                Ok(SystemProtocol::HonestMajorityShareShuffle)
            }
            ParamsProtocol::TrusTee(_) => Err(UnsupportedProtocol("trus_tee")),
        }
    }

    /// The config name of the protocol a `RequisitionParams` oneof names (for messages).
    pub fn requisition_params_name(p: Option<&ParamsProtocol>) -> &'static str {
        match p.map(Self::of_requisition_params) {
            None => "none",
            Some(Ok(s)) => s.config_name(),
            Some(Err(UnsupportedProtocol(name))) => name,
        }
    }

    // ---- `AdvanceComputationRequest.Header` and `ComputationStage` -------------------------

    pub fn advance_header(self, description: i32) -> AdvanceProtocol {
        match self {
            SystemProtocol::LiquidLegionsV2 => {
                AdvanceProtocol::LiquidLegionsV2(sys::LiquidLegionsV2 { description })
            }
            SystemProtocol::ReachOnlyLiquidLegionsV2 => {
                AdvanceProtocol::ReachOnlyLiquidLegionsV2(sys::ReachOnlyLiquidLegionsV2 {
                    description,
                })
            }
            SystemProtocol::HonestMajorityShareShuffle => {
                AdvanceProtocol::HonestMajorityShareShuffle(sys::HonestMajorityShareShuffle {
                    description,
                })
            }
        }
    }

    /// (protocol, description) of an `AdvanceComputation` header.
    pub fn of_advance_header(p: &AdvanceProtocol) -> (Self, i32) {
        match p {
            AdvanceProtocol::LiquidLegionsV2(p) => (SystemProtocol::LiquidLegionsV2, p.description),
            AdvanceProtocol::ReachOnlyLiquidLegionsV2(p) => {
                (SystemProtocol::ReachOnlyLiquidLegionsV2, p.description)
            }
            AdvanceProtocol::HonestMajorityShareShuffle(p) => {
                (SystemProtocol::HonestMajorityShareShuffle, p.description)
            }
        }
    }

    pub fn computation_stage(self, stage: i32) -> Stage {
        match self {
            SystemProtocol::LiquidLegionsV2 => {
                Stage::LiquidLegionsV2Stage(sys::LiquidLegionsV2Stage { stage })
            }
            SystemProtocol::ReachOnlyLiquidLegionsV2 => {
                Stage::ReachOnlyLiquidLegionsStage(sys::ReachOnlyLiquidLegionsV2Stage { stage })
            }
            SystemProtocol::HonestMajorityShareShuffle => {
                Stage::HonestMajorityShareShuffleStage(sys::HonestMajorityShareShuffleStage {
                    stage,
                })
            }
        }
    }

    /// (protocol, stage number) of a `ComputationStage`.
    pub fn of_computation_stage(s: &Stage) -> (Self, i32) {
        match s {
            Stage::LiquidLegionsV2Stage(x) => (SystemProtocol::LiquidLegionsV2, x.stage),
            Stage::ReachOnlyLiquidLegionsStage(x) => {
                (SystemProtocol::ReachOnlyLiquidLegionsV2, x.stage)
            }
            Stage::HonestMajorityShareShuffleStage(x) => {
                (SystemProtocol::HonestMajorityShareShuffle, x.stage)
            }
        }
    }

    // ---- `FulfillRequisitionRequest.Header` (public API) -----------------------------------

    pub fn of_fulfillment_header(p: &FulfillHeaderProtocol) -> Self {
        match p {
            FulfillHeaderProtocol::HonestMajorityShareShuffle(_) => {
                SystemProtocol::HonestMajorityShareShuffle
            }
        }
    }

    /// The register count a fulfilment header declares (0 or absent: none).
    pub fn declared_register_count(p: &FulfillHeaderProtocol) -> i64 {
        match p {
            FulfillHeaderProtocol::HonestMajorityShareShuffle(h) => h.register_count,
        }
    }

    /// The certificate a fulfilment header names to vouch for what the data provider sent
    /// (HMSS: the one its share seed is signed with), if any. The host checks that the caller
    /// owns it (whoever names a certificate must be its owner); the protocol checks the
    /// signature, and that the certificate is the requisition's data provider's.
    pub fn vouching_certificate(p: &FulfillHeaderProtocol) -> Option<&str> {
        match p {
            FulfillHeaderProtocol::HonestMajorityShareShuffle(h) => {
                Some(h.data_provider_certificate.as_str()).filter(|c| !c.is_empty())
            }
        }
    }

    // ---- the Kingdom's protocol-dependent decisions -----------------------------------------

    /// Whether the Kingdom assigns each requisition to one fulfilling duchy when the
    /// computation is created (HMSS: one of the non-aggregators), rather than letting the
    /// data provider fulfil it at any participant (LLv2).
    pub fn assigns_fulfilling_duchy(self) -> bool {
        matches!(self, SystemProtocol::HonestMajorityShareShuffle)
    }

    /// A participant's state once it has set its requisition params: HMSS participants need
    /// no confirmation (READY); LLv2 ones are confirmed later (REQUISITION_PARAMS_SET).
    pub fn participant_state_after_params(self) -> ParticipantState {
        match self {
            SystemProtocol::HonestMajorityShareShuffle => ParticipantState::Ready,
            SystemProtocol::LiquidLegionsV2 | SystemProtocol::ReachOnlyLiquidLegionsV2 => {
                ParticipantState::RequisitionParamsSet
            }
        }
    }

    /// The computation's state once every requisition is fulfilled: HMSS computes at once;
    /// LLv2 waits for the participants' confirmation.
    pub fn state_after_fulfillment(self) -> ComputationState {
        match self {
            SystemProtocol::HonestMajorityShareShuffle => ComputationState::PendingComputation,
            SystemProtocol::LiquidLegionsV2 | SystemProtocol::ReachOnlyLiquidLegionsV2 => {
                ComputationState::PendingParticipantConfirmation
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use sys::computation_participant::requisition_params as rp;

    #[test]
    fn every_mapping_round_trips() {
        for p in SystemProtocol::ALL {
            assert_eq!(SystemProtocol::from_i64(p.as_i64()), Some(p));
            assert_eq!(SystemProtocol::from_config_name(p.config_name()), Some(p));
            assert_eq!(SystemProtocol::from_admin(p.admin()), Some(p));
            // The admin enum and the stored number agree.
            assert_eq!(p.admin() as i64, p.as_i64());
            assert_eq!(
                SystemProtocol::of_advance_header(&p.advance_header(7)),
                (p, 7)
            );
            assert_eq!(
                SystemProtocol::of_computation_stage(&p.computation_stage(5)),
                (p, 5)
            );
        }
        assert_eq!(SystemProtocol::from_admin(AdminProtocol::Unspecified), None);
        assert_eq!(SystemProtocol::from_config_name("trus_tee"), None);
    }

    #[test]
    fn oneofs_name_their_protocol() {
        let c = |p| sys::Computation {
            mpc_protocol_config: Some(sys::computation::MpcProtocolConfig { protocol: Some(p) }),
            ..Default::default()
        };
        assert_eq!(
            SystemProtocol::of_computation(&c(MpcProtocol::ReachOnlyLiquidLegionsV2(
                Default::default()
            ))),
            Some(SystemProtocol::ReachOnlyLiquidLegionsV2)
        );
        assert_eq!(
            SystemProtocol::of_computation(&c(MpcProtocol::TrusTee(Default::default()))),
            None
        );
        assert_eq!(
            SystemProtocol::of_computation(&sys::Computation::default()),
            None
        );
        let hmss =
            ParamsProtocol::HonestMajorityShareShuffle(rp::HonestMajorityShareShuffle::default());
        assert_eq!(
            SystemProtocol::of_requisition_params(&hmss),
            Ok(SystemProtocol::HonestMajorityShareShuffle)
        );
        assert_eq!(
            SystemProtocol::requisition_params_name(Some(&ParamsProtocol::TrusTee(
                Default::default()
            ))),
            "trus_tee"
        );
        assert_eq!(SystemProtocol::requisition_params_name(None), "none");
        use halo_proto::api::v2alpha::fulfill_requisition_request::header as h;
        let header = |c: &str| {
            FulfillHeaderProtocol::HonestMajorityShareShuffle(h::HonestMajorityShareShuffle {
                data_provider_certificate: c.into(),
                register_count: 12,
                ..Default::default()
            })
        };
        let named = header("dataProviders/e/certificates/1");
        assert_eq!(
            SystemProtocol::vouching_certificate(&named),
            Some("dataProviders/e/certificates/1")
        );
        assert_eq!(SystemProtocol::vouching_certificate(&header("")), None);
        assert_eq!(SystemProtocol::declared_register_count(&named), 12);
        assert_eq!(
            SystemProtocol::of_fulfillment_header(&named),
            SystemProtocol::HonestMajorityShareShuffle
        );
    }

    #[test]
    fn kingdom_decisions() {
        use SystemProtocol::*;
        assert!(HonestMajorityShareShuffle.assigns_fulfilling_duchy());
        assert!(!LiquidLegionsV2.assigns_fulfilling_duchy());
        assert_eq!(
            HonestMajorityShareShuffle.participant_state_after_params(),
            ParticipantState::Ready
        );
        assert_eq!(
            ReachOnlyLiquidLegionsV2.state_after_fulfillment(),
            ComputationState::PendingParticipantConfirmation
        );
    }
}
