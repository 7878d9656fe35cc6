//! Crash recovery at the Kingdom (issue 9): a participant failure is recorded where the
//! consumer and the operator can see which duchy failed, at which stage and attempt, and why;
//! retries of state-changing calls whose answer was lost (here: across a Kingdom restart)
//! are idempotent.

use std::str::FromStr as _;

use halo_kingdom::names::ComputationKey;
use halo_proto::halo::v1::{GetMeasurementRequest, Protocol};
use halo_proto::system::v1alpha::computation::State as C;
use halo_proto::system::v1alpha::computation_log_entry::error_details::Type as ErrorType;
use halo_proto::system::v1alpha::computation_participant::{Failure, State as P};
use halo_proto::system::v1alpha::requisition::State as R;
use halo_proto::system::v1alpha::{
    ComputationLogEntry, FailComputationParticipantRequest, GetComputationParticipantRequest,
    StageAttempt,
};
use prost::Message as _;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection as _, SqliteConnection};
use tonic::Code;

use crate::common::*;

/// The log entries stored for a computation, read from the database file (the Kingdom must
/// be stopped): (duchy id, entry).
async fn stored_log_entries(
    k: &TestKingdom,
    computation: &str,
) -> Vec<(String, ComputationLogEntry)> {
    let id = ComputationKey::parse(computation)
        .unwrap()
        .external_computation_id;
    let options = SqliteConnectOptions::from_str("sqlite:")
        .unwrap()
        .filename(k.config.data_dir.join(halo_kingdom::DB_FILE))
        .read_only(true);
    let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT duchy_id, entry FROM computation_log_entries \
         WHERE external_computation_id = ?1 ORDER BY create_time",
    )
    .bind(id)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    rows.into_iter()
        .map(|(duchy, entry)| {
            (
                duchy,
                ComputationLogEntry::decode(entry.as_slice()).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn participant_failure_names_duchy_stage_attempt_and_cause() {
    let mut k = TestKingdom::start().await;
    let m = k.create(Protocol::HonestMajorityShareShuffle, "").await;
    let name = m.computation.clone();
    let attempt = StageAttempt {
        stage: 2,
        stage_name: "SHUFFLE_PHASE".to_owned(),
        stage_start_time: None,
        attempt_number: 3,
    };
    let failure = Failure {
        participant_child_reference_id: "worker2-mill".to_owned(),
        error_message: "plugin trapped: out of fuel".to_owned(),
        error_time: None,
        stage_attempt: Some(attempt.clone()),
    };
    k.participants(W2)
        .fail_computation_participant(FailComputationParticipantRequest {
            name: format!("{name}/participants/{W2}"),
            failure: Some(failure.clone()),
            etag: String::new(),
        })
        .await
        .unwrap();

    // What the consumer sees.
    let expected = "Computation Participant failed. Duchy worker2, stage SHUFFLE_PHASE (2), \
                    attempt 3: plugin trapped: out of fuel";
    let seen = k
        .measurements(MC1)
        .get_measurement(GetMeasurementRequest {
            name: m.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.state, C::Failed as i32);
    assert_eq!(seen.failure_message, expected);

    // What the failed duchy reads back.
    let p = k
        .participants(W2)
        .get_computation_participant(GetComputationParticipantRequest {
            name: format!("{name}/participants/{W2}"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.state, P::Failed as i32);
    assert_eq!(p.failure.as_ref(), Some(&failure));

    // Survives a restart.
    k.restart().await;
    let seen = k
        .measurements(MC1)
        .get_measurement(GetMeasurementRequest {
            name: m.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.failure_message, expected);

    // The permanent log entry, under the failed participant.
    if let Some(kingdom) = k.kingdom.take() {
        kingdom.shutdown().await.unwrap();
    }
    let entries = stored_log_entries(&k, &name).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let (duchy, entry) = &entries[0];
    assert_eq!(duchy, W2);
    assert_eq!(entry.log_message, "plugin trapped: out of fuel");
    assert_eq!(entry.stage_attempt.as_ref(), Some(&attempt));
    assert_eq!(entry.participant_child_reference_id, "worker2-mill");
    assert_eq!(
        entry.error_details.as_ref().map(|d| d.r#type),
        Some(ErrorType::Permanent as i32)
    );
}

#[tokio::test]
async fn failure_without_stage_attempt_still_names_the_duchy() {
    let k = TestKingdom::start().await;
    let m = k.create(Protocol::HonestMajorityShareShuffle, "").await;
    k.participants(AGG)
        .fail_computation_participant(FailComputationParticipantRequest {
            name: format!("{}/participants/{AGG}", m.computation),
            failure: Some(Failure {
                error_message: String::new(),
                ..Default::default()
            }),
            etag: String::new(),
        })
        .await
        .unwrap();
    let seen = k
        .measurements(MC1)
        .get_measurement(GetMeasurementRequest { name: m.name })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        seen.failure_message,
        "Computation Participant failed. Duchy aggregator: (no error message)"
    );
    k.shutdown().await;
}

/// A duchy whose FulfillRequisition answer was lost when the Kingdom went down repeats it
/// against the restarted Kingdom: it succeeds and the requisition is fulfilled once, with the
/// first call's nonce. Another nonce, or another duchy, is still refused.
#[tokio::test]
async fn fulfilment_repeated_after_a_restart_is_idempotent() {
    let mut k = TestKingdom::start().await;
    let m = k.create(Protocol::LiquidLegionsV2, "").await;
    let c = k.computation(AGG, &m.computation).await;
    k.set_all_params(&c, Protocol::LiquidLegionsV2).await;
    let r = k
        .list(EDP1)
        .await
        .into_iter()
        .find(|r| r.computation.as_ref().unwrap().name == m.computation)
        .unwrap();
    let req = r.requisition.as_ref().unwrap().name.clone();
    let first = k
        .try_fulfill(W1, &req, nonce_for(EDP1), &r.etag)
        .await
        .unwrap();
    assert_eq!(first.state, R::Fulfilled as i32);

    k.restart().await;
    // The retry carries the etag it was first sent with (now stale).
    let again = k
        .try_fulfill(W1, &req, nonce_for(EDP1), &r.etag)
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_code(
        k.try_fulfill(W1, &req, nonce_for(EDP1) + 1, "").await,
        Code::FailedPrecondition,
    );
    // LLv2: any participant may fulfil, but not one already fulfilled by another.
    assert_code(
        k.try_fulfill(W2, &req, nonce_for(EDP1), "").await,
        Code::FailedPrecondition,
    );
    let c = k.computation(AGG, &m.computation).await;
    let stored = c.requisitions.iter().find(|x| x.name == req).unwrap();
    assert_eq!(stored.nonce, nonce_for(EDP1));
    assert!(stored.fulfilling_computation_participant.ends_with(W1));
    // The other requisition is still open: the computation waits for it.
    assert_eq!(c.state, C::PendingRequisitionFulfillment as i32);
    k.shutdown().await;
}

/// A consumer whose CreateMeasurement answer was lost repeats it (same request id) against
/// the restarted Kingdom and gets the same measurement.
#[tokio::test]
async fn create_measurement_repeated_after_a_restart_returns_the_same_measurement() {
    let mut k = TestKingdom::start().await;
    let a = k
        .create(Protocol::HonestMajorityShareShuffle, "mc-retry-1")
        .await;
    k.restart().await;
    let b = k
        .create(Protocol::HonestMajorityShareShuffle, "mc-retry-1")
        .await;
    assert_eq!(a, b);
    k.shutdown().await;
}
