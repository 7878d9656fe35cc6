//! The store functions behind graceful shutdown and the lifecycle metrics: shutdown releases
//! (not an attempt, claimable at once), lease takeovers, queue depth per stage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use halo_duchy::protocol::{PluginPin, Role, SystemProtocol};
use halo_duchy::store::{Claim, NewComputation, START_STAGE, Store};

fn pin() -> PluginPin {
    PluginPin {
        name: "hmss".into(),
        version: "1.0.0".into(),
        digest: "00".into(),
    }
}

async fn add(store: &Store, id: &str, stage: i32, queued: bool) {
    let created = store
        .insert(
            NewComputation {
                global_id: id.into(),
                protocol: SystemProtocol::HonestMajorityShareShuffle,
                role: Role::Aggregator,
                pin: pin(),
                stage,
                queued,
                kingdom_state: 1,
                computation: Vec::new(),
                plugin_state: Vec::new(),
            },
            &[],
            "test",
        )
        .await
        .unwrap();
    assert!(created);
}

fn claim_of(owner: &str, row: &halo_duchy::store::ComputationRow) -> Claim {
    Claim {
        owner: owner.into(),
        stage: row.stage,
        attempt: row.attempt,
    }
}

#[tokio::test]
async fn a_shutdown_release_does_not_count_and_is_claimable_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    add(&store, "c1", START_STAGE, true).await;
    let lease = Duration::from_secs(3600);
    let (row, previous) = store.claim_next("w1", lease).await.unwrap().unwrap();
    assert_eq!(previous, None);
    assert_eq!(row.attempt, 1);
    let claim = claim_of("w1", &row);
    // Held for an hour: nobody else gets it.
    assert!(store.claim_next("w2", lease).await.unwrap().is_none());
    assert!(store.release_at_shutdown("c1", &claim).await.unwrap());
    // Released once only: the claim is gone.
    assert!(!store.release_at_shutdown("c1", &claim).await.unwrap());
    // At once, and the interrupted claim was not an attempt: the next one is attempt 1 again,
    // and it is no takeover (the lease was given back, not left to expire).
    let (row, previous) = store.claim_next("w2", lease).await.unwrap().unwrap();
    assert_eq!(row.attempt, 1);
    assert_eq!(previous, None);
    let log = store.audit_log("c1").await.unwrap();
    assert!(
        log.iter()
            .any(|(_, e, d)| e == "lease" && d.contains("released at shutdown by w1")),
        "{log:?}"
    );
    // A stale claim (another attempt) releases nothing.
    assert!(
        !store
            .release_at_shutdown(
                "c1",
                &Claim {
                    attempt: 7,
                    ..claim_of("w2", &row)
                }
            )
            .await
            .unwrap()
    );
    store.close().await;
}

#[tokio::test]
async fn claiming_an_expired_lease_is_a_takeover() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    add(&store, "c1", START_STAGE, true).await;
    let (row, _) = store
        .claim_next("stalled", Duration::from_millis(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.attempt, 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (row, previous) = store
        .claim_next("w2", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(previous.as_deref(), Some("stalled"));
    // The stalled worker's claim counted: this is the second attempt.
    assert_eq!(row.attempt, 2);
    let log = store.audit_log("c1").await.unwrap();
    assert!(
        log.iter()
            .any(|(_, e, d)| e == "lease" && d == "took over the expired lease of stalled"),
        "{log:?}"
    );
    store.close().await;
}

#[tokio::test]
async fn queue_depth_counts_queued_unfinished_stages() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    add(&store, "a", START_STAGE, true).await;
    add(&store, "b", START_STAGE, true).await;
    add(&store, "c", 3, true).await;
    add(&store, "d", 4, false).await; // waiting for inputs: not queued
    add(&store, "e", 3, true).await;
    assert!(store.finish("e", "COMPLETE", "done").await.unwrap());
    let mut depth = store.queue_depth().await.unwrap();
    depth.sort_by_key(|(_, stage, _)| *stage);
    assert_eq!(depth, vec![(pin(), START_STAGE, 2), (pin(), 3, 1)]);
    store.close().await;
}
