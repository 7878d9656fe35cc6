//! (b) StreamActiveComputations: ordering, resumption across a restart, wake-ups, lifetime.

use std::time::{Duration, Instant};

use halo_kingdom::StreamPosition;
use halo_proto::halo::v1::{CancelMeasurementRequest, Protocol};
use halo_proto::system::v1alpha::computation::State as C;
use halo_proto::system::v1alpha::computation_participant::Failure;
use halo_proto::system::v1alpha::{
    FailComputationParticipantRequest, GetComputationRequest, StreamActiveComputationsRequest,
    StreamActiveComputationsResponse,
};
use tonic::Code;

use crate::common::*;

fn summary(item: &StreamActiveComputationsResponse) -> (String, i32, String) {
    let c = item.computation.as_ref().unwrap();
    (c.name.clone(), c.state, item.continuation_token.clone())
}

fn position(token: &str) -> StreamPosition {
    StreamPosition::from_token(token).unwrap()
}

#[tokio::test]
async fn stream_resumes_from_token_after_restart() {
    let mut k = TestKingdom::start().await;
    let hmss = Protocol::HonestMajorityShareShuffle;
    let mut live = k.stream(W1, "").await;

    // Four computations appear as they are created.
    let mut ms = Vec::new();
    for _ in 0..4 {
        ms.push(k.create(hmss, "").await);
    }
    let mut seen = Vec::new();
    for m in &ms {
        let item = next_item(&mut live).await;
        assert_eq!(summary(&item).0, m.computation);
        assert_eq!(summary(&item).1, C::PendingRequisitionParams as i32);
        seen.push(summary(&item));
    }
    // c0 -> PRF (not streamed) -> PENDING_COMPUTATION (streamed).
    let c0 = k.computation(AGG, &ms[0].computation).await;
    k.set_all_params(&c0, hmss).await;
    k.fulfill_all(&ms[0].computation).await;
    // c1 cancelled, c2 failed.
    k.measurements(MC1)
        .cancel_measurement(CancelMeasurementRequest {
            name: ms[1].name.clone(),
        })
        .await
        .unwrap();
    k.participants(W2)
        .fail_computation_participant(FailComputationParticipantRequest {
            name: format!("{}/participants/{W2}", ms[2].computation),
            failure: Some(Failure {
                error_message: "x".to_owned(),
                ..Default::default()
            }),
            etag: String::new(),
        })
        .await
        .unwrap();
    for (m, state) in [
        (&ms[0], C::PendingComputation),
        (&ms[1], C::Cancelled),
        (&ms[2], C::Failed),
    ] {
        let item = next_item(&mut live).await;
        assert_eq!(summary(&item).0, m.computation);
        assert_eq!(summary(&item).1, state as i32);
        seen.push(summary(&item));
    }
    assert_quiet(&mut live, Duration::from_millis(300)).await;
    // Tokens are strictly increasing.
    for w in seen.windows(2) {
        assert!(position(&w[0].2) < position(&w[1].2));
    }
    // seen = [c0 PRP, c1 PRP, c2 PRP, c3 PRP, c0 PC, c1 CANCELLED, c2 FAILED]
    drop(live);

    k.restart().await;

    // Resume after the 4th item (c3 PRP): exactly the later items, same tokens, in order.
    let mut resumed = k.stream(W1, &seen[3].2).await;
    for expected in &seen[4..] {
        assert_eq!(&summary(&next_item(&mut resumed).await), expected);
    }
    assert_quiet(&mut resumed, Duration::from_millis(300)).await;

    // Resume from the 2nd item: c3's PRP entry (item 4) is still its latest state, the older
    // entries of c0..c2 have been superseded by their later ones.
    let mut mid = k.stream(W1, &seen[1].2).await;
    for expected in &seen[3..] {
        assert_eq!(&summary(&next_item(&mut mid).await), expected);
    }
    assert_quiet(&mut mid, Duration::from_millis(200)).await;
    drop(mid);

    // Changes after the restart appear on the resumed stream, after everything before.
    let c3 = k.computation(AGG, &ms[3].computation).await;
    k.set_all_params(&c3, hmss).await; // PRF: not streamed
    k.fulfill_all(&ms[3].computation).await; // PENDING_COMPUTATION
    k.measurements(MC1)
        .cancel_measurement(CancelMeasurementRequest {
            name: ms[0].name.clone(),
        })
        .await
        .unwrap();
    let a = summary(&next_item(&mut resumed).await);
    assert_eq!(
        (a.0.as_str(), a.1),
        (ms[3].computation.as_str(), C::PendingComputation as i32)
    );
    let b = summary(&next_item(&mut resumed).await);
    assert_eq!(
        (b.0.as_str(), b.1),
        (ms[0].computation.as_str(), C::Cancelled as i32)
    );
    assert!(position(&seen[6].2) < position(&a.2));
    assert!(position(&a.2) < position(&b.2));
    assert_quiet(&mut resumed, Duration::from_millis(300)).await;

    // From the start: every computation once, at its latest state, in update order.
    let mut all = k.stream(W1, "").await;
    let expected = [
        (&ms[1], C::Cancelled),
        (&ms[2], C::Failed),
        (&ms[3], C::PendingComputation),
        (&ms[0], C::Cancelled),
    ];
    for (m, state) in expected {
        let s = summary(&next_item(&mut all).await);
        assert_eq!((s.0.as_str(), s.1), (m.computation.as_str(), state as i32));
    }
    assert_quiet(&mut all, Duration::from_millis(200)).await;
    drop(all);
    drop(resumed);
    k.shutdown().await;
}

#[tokio::test]
async fn stream_pages_past_batch_size() {
    let k = TestKingdom::start().await;
    let n = 60;
    let mut created = Vec::new();
    for _ in 0..n {
        created.push(
            k.create(Protocol::HonestMajorityShareShuffle, "")
                .await
                .computation,
        );
    }
    let mut stream = k.stream(AGG, "").await;
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(next_item(&mut stream).await);
    }
    assert_eq!(
        got.iter().map(|i| summary(i).0).collect::<Vec<_>>(),
        created
    );
    for w in got.windows(2) {
        assert!(position(&w[0].continuation_token) < position(&w[1].continuation_token));
    }
    assert_quiet(&mut stream, Duration::from_millis(200)).await;
    k.shutdown().await;
}

#[tokio::test]
async fn stream_wakes_on_commit_not_poll() {
    // With a one-minute poll interval, only the commit notification can deliver in time.
    let k = TestKingdom::start_with(|c, _| c.stream_poll_interval = Duration::from_secs(60)).await;
    let mut stream = k.stream(W2, "").await;
    assert_quiet(&mut stream, Duration::from_millis(100)).await;
    let started = Instant::now();
    let m = k.create(Protocol::LiquidLegionsV2, "").await;
    let item = next_item(&mut stream).await;
    assert_eq!(summary(&item).0, m.computation);
    assert!(started.elapsed() < Duration::from_secs(3));
    k.shutdown().await;
}

#[tokio::test]
async fn stream_ends_normally_after_max_duration() {
    let k =
        TestKingdom::start_with(|c, _| c.stream_max_duration = Duration::from_millis(400)).await;
    k.create(Protocol::LiquidLegionsV2, "").await;
    let started = Instant::now();
    let mut stream = k.stream(W1, "").await;
    next_item(&mut stream).await;
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap();
    assert!(end.is_none(), "stream should end OK");
    assert!(started.elapsed() >= Duration::from_millis(300));
    k.shutdown().await;
}

#[tokio::test]
async fn stream_only_lists_the_callers_computations() {
    // worker3 is in the PKI but not configured: it may not use the system API at all.
    let k = TestKingdom::start().await;
    assert_code(
        k.computations(W3)
            .stream_active_computations(StreamActiveComputationsRequest::default())
            .await,
        Code::PermissionDenied,
    );
    k.shutdown().await;

    // Configured and in the LLv2 ring of the roles, worker3 takes part in LLv2 but not in HMSS.
    let k = TestKingdom::start_with(add_worker3).await;
    let hmss = k.create(Protocol::HonestMajorityShareShuffle, "").await;
    let llv2 = k.create(Protocol::LiquidLegionsV2, "").await;
    let mut s3 = k.stream(W3, "").await;
    assert_eq!(summary(&next_item(&mut s3).await).0, llv2.computation);
    assert_quiet(&mut s3, Duration::from_millis(200)).await;
    let mut s1 = k.stream(W1, "").await;
    assert_eq!(summary(&next_item(&mut s1).await).0, hmss.computation);
    assert_eq!(summary(&next_item(&mut s1).await).0, llv2.computation);
    k.computations(W3)
        .get_computation(GetComputationRequest {
            name: llv2.computation.clone(),
        })
        .await
        .unwrap();
    // A non-participant cannot read or fulfil an HMSS computation.
    assert_code(
        k.computations(W3)
            .get_computation(GetComputationRequest {
                name: hmss.computation.clone(),
            })
            .await,
        Code::NotFound,
    );
    let c = k.computation(AGG, &hmss.computation).await;
    assert_code(
        k.try_fulfill(W3, &c.requisitions[0].name, 7, "").await,
        Code::PermissionDenied,
    );
    drop(s1);
    drop(s3);
    k.shutdown().await;
}

#[tokio::test]
async fn stream_rejects_malformed_token() {
    let k = TestKingdom::start().await;
    for token in ["not a token!", "%%%"] {
        assert_code(
            k.computations(W1)
                .stream_active_computations(StreamActiveComputationsRequest {
                    continuation_token: token.to_owned(),
                })
                .await,
            Code::InvalidArgument,
        );
    }
    k.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let k = TestKingdom::start().await;
    let mut stream = k.stream(W1, "").await;
    assert_quiet(&mut stream, Duration::from_millis(100)).await;
    let started = Instant::now();
    k.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap();
    assert!(matches!(end, Ok(None) | Err(_)));
}
