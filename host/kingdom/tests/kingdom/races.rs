//! Duplicate and concurrent SetComputationResult / ConfirmComputationParticipant /
//! FailComputationParticipant calls end in one consistent state: every write is one
//! serialized transaction, so exactly one of conflicting calls wins (the others get
//! FAILED_PRECONDITION, spec §6.2) and identical SetComputationResult retries are idempotent.

use halo_proto::halo::v1::Protocol;
use halo_proto::system::v1alpha::computation::State;
use halo_proto::system::v1alpha::computation_participant::{Failure, State as PState};
use halo_proto::system::v1alpha::{
    Computation, ConfirmComputationParticipantRequest, FailComputationParticipantRequest,
    SetComputationResultRequest,
};
use tonic::{Code, Status};

use crate::common::*;

/// A new HMSS computation in PENDING_COMPUTATION.
async fn pending_computation(k: &TestKingdom) -> String {
    let m = k.create(Protocol::HonestMajorityShareShuffle, "").await;
    let c = k.computation(AGG, &m.computation).await;
    k.set_all_params(&c, Protocol::HonestMajorityShareShuffle)
        .await;
    k.fulfill_all(&m.computation).await;
    let c = k.computation(AGG, &m.computation).await;
    assert_eq!(c.state, State::PendingComputation as i32);
    m.computation
}

fn result(k: &TestKingdom, name: &str, body: &str) -> SetComputationResultRequest {
    SetComputationResultRequest {
        name: name.to_owned(),
        aggregator_certificate: k.duchy_cert_name(AGG),
        result_public_key: b"pk".to_vec(),
        encrypted_result: body.as_bytes().to_vec(),
        public_api_version: "v2alpha".to_owned(),
    }
}

fn fail(name: &str, d: &str, why: &str) -> FailComputationParticipantRequest {
    FailComputationParticipantRequest {
        name: format!("{name}/participants/{d}"),
        failure: Some(Failure {
            error_message: why.to_owned(),
            ..Default::default()
        }),
        etag: String::new(),
    }
}

/// Splits results into (ok count, error codes); panics on an unexpected code.
fn tally<T>(results: Vec<Result<T, Status>>, allowed: Code) -> usize {
    let mut ok = 0;
    for r in results {
        match r {
            Ok(_) => ok += 1,
            Err(s) => assert_eq!(s.code(), allowed, "{s:?}"),
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_set_computation_result_one_winner_and_idempotent_retries() {
    let k = TestKingdom::start().await;
    for i in 0..10 {
        let name = pending_computation(&k).await;
        // Eight different results at once: exactly one is recorded.
        let calls = (0..8).map(|j| {
            let mut c = k.computations(AGG);
            let req = result(&k, &name, &format!("result {i}/{j}"));
            async move { c.set_computation_result(req).await }
        });
        let results = futures::future::join_all(calls).await;
        let winners: Vec<Computation> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|r| r.get_ref().clone()))
            .collect();
        assert_eq!(tally(results, Code::FailedPrecondition), 1);
        let stored = k.computation(AGG, &name).await;
        assert_eq!(stored.state, State::Succeeded as i32);
        assert_eq!(stored.encrypted_result, winners[0].encrypted_result);

        // Eight identical retries of the winning call at once: all succeed, nothing changes.
        let body = String::from_utf8(stored.encrypted_result.clone()).unwrap();
        let calls = (0..8).map(|_| {
            let mut c = k.computations(AGG);
            let req = result(&k, &name, &body);
            async move { c.set_computation_result(req).await }
        });
        let results = futures::future::join_all(calls).await;
        assert_eq!(tally(results, Code::FailedPrecondition), 8);
        assert_eq!(k.computation(AGG, &name).await, stored);
    }
    k.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicate_confirmations_confirm_once() {
    let k = TestKingdom::start().await;
    for _ in 0..5 {
        let m = k.create(Protocol::LiquidLegionsV2, "").await;
        let name = m.computation;
        let c = k.computation(W1, &name).await;
        k.set_all_params(&c, Protocol::LiquidLegionsV2).await;
        k.fulfill_all(&name).await;
        // Every participant confirms four times, all at once.
        let calls = [AGG, W1, W2].into_iter().flat_map(|d| {
            let name = name.clone();
            (0..4).map(move |_| (d, name.clone()))
        });
        let calls = calls.map(|(d, name)| {
            let mut c = k.participants(d);
            async move {
                let r = c
                    .confirm_computation_participant(ConfirmComputationParticipantRequest {
                        name: format!("{name}/participants/{d}"),
                        etag: String::new(),
                    })
                    .await
                    .map(tonic::Response::into_inner);
                (d, r)
            }
        });
        let results = futures::future::join_all(calls).await;
        for d in [AGG, W1, W2] {
            let mine: Vec<_> = results
                .iter()
                .filter(|(x, _)| *x == d)
                .map(|(_, r)| r.clone())
                .collect();
            assert_eq!(tally(mine, Code::FailedPrecondition), 1, "{d}");
        }
        let c = k.computation(AGG, &name).await;
        assert_eq!(c.state, State::PendingComputation as i32);
        for p in &c.computation_participants {
            assert_eq!(p.state, PState::Ready as i32, "{}", p.name);
        }
    }
    k.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_failures_fail_once() {
    let k = TestKingdom::start().await;
    for i in 0..5 {
        let name = pending_computation(&k).await;
        let calls = [AGG, W1, W2, W1, W2, AGG].into_iter().map(|d| {
            let mut c = k.participants(d);
            let req = fail(&name, d, &format!("{d} gives up ({i})"));
            async move { (d, c.fail_computation_participant(req).await) }
        });
        let results = futures::future::join_all(calls).await;
        let winners: Vec<&str> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(d, _)| *d)
            .collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        assert_eq!(
            tally(
                results.into_iter().map(|(_, r)| r).collect(),
                Code::FailedPrecondition
            ),
            1
        );
        let c = k.computation(AGG, &name).await;
        assert_eq!(c.state, State::Failed as i32);
        let failed: Vec<_> = c
            .computation_participants
            .iter()
            .filter(|p| p.state == PState::Failed as i32)
            .collect();
        assert_eq!(failed.len(), 1);
        assert!(failed[0].name.ends_with(winners[0]));
        assert!(
            failed[0]
                .failure
                .as_ref()
                .unwrap()
                .error_message
                .starts_with(winners[0])
        );
    }
    k.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn result_racing_failure_ends_in_exactly_one_terminal_state() {
    let k = TestKingdom::start().await;
    let (mut succeeded, mut failed) = (0, 0);
    for i in 0..20 {
        let name = pending_computation(&k).await;
        let mut agg = k.computations(AGG);
        let mut w1 = k.participants(W1);
        let set = result(&k, &name, &format!("result {i}"));
        let fail_req = fail(&name, W1, "worker1 gives up");
        let (r, f) = tokio::join!(
            agg.set_computation_result(set),
            w1.fail_computation_participant(fail_req)
        );
        let c = k.computation(AGG, &name).await;
        let w1_state = participant(&c, W1).state;
        match (r, f) {
            (Ok(_), Err(e)) => {
                assert_eq!(e.code(), Code::FailedPrecondition);
                assert_eq!(c.state, State::Succeeded as i32);
                assert_eq!(c.encrypted_result, format!("result {i}").into_bytes());
                assert_ne!(w1_state, PState::Failed as i32);
                succeeded += 1;
            }
            (Err(e), Ok(_)) => {
                assert_eq!(e.code(), Code::FailedPrecondition);
                assert_eq!(c.state, State::Failed as i32);
                assert!(c.encrypted_result.is_empty());
                assert_eq!(w1_state, PState::Failed as i32);
                failed += 1;
            }
            other => panic!("exactly one must win: {other:?}"),
        }
    }
    assert_eq!(succeeded + failed, 20);
    k.shutdown().await;
}
