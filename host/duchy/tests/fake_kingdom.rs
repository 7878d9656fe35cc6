//! The duchy against a scripted Kingdom (real gRPC over mTLS on loopback, a real store in a
//! temporary directory): the herald backs off when the Kingdom's streams end without an
//! item, shutdown is bounded by the grace period while the supervisor waits for a Kingdom
//! that does not answer, and a stage's context is refused when the roles file changed under
//! its computation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use halo_duchy::protocol::{PluginPin, Protocol, Role, StaticRegistry, SystemProtocol};
use halo_duchy::store::{NewComputation, START_STAGE, Store};
use halo_duchy::{
    Core, DuchyConfig, DuchyLimits, HeraldConfig, MillConfig, PeerDirectory, RoleConfig,
    RunningDuchy,
};
use halo_identity::{DevPki, Principal, TlsServerLimits};
use halo_proto::system::v1alpha as sys;
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Every wait of these tests is bounded by this (a hang is a failure, not a timing check).
const BOUND: Duration = Duration::from_secs(60);

const ROLES: &str = r#"[honest_majority_share_shuffle]
aggregator = "aggregator"
non_aggregators = ["worker1", "worker2"]
"#;

/// The same duchies with the two non-aggregators swapped.
const ROLES_SWAPPED: &str = r#"[honest_majority_share_shuffle]
aggregator = "aggregator"
non_aggregators = ["worker2", "worker1"]
"#;

#[derive(Clone, Copy)]
enum Streams {
    /// The first open delivers one item and ends; every later one ends at once, empty.
    OneItemThenEmpty,
    /// Open, never delivering anything.
    Silent,
}

#[derive(Clone)]
struct FakeKingdom {
    streams: Streams,
    opens: Arc<AtomicUsize>,
    /// GetComputationParticipant calls; each one waits forever.
    participant_calls: Arc<AtomicUsize>,
}

type ItemStream =
    Pin<Box<dyn Stream<Item = Result<sys::StreamActiveComputationsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl sys::computations_server::Computations for FakeKingdom {
    async fn get_computation(
        &self,
        _: Request<sys::GetComputationRequest>,
    ) -> Result<Response<sys::Computation>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type StreamActiveComputationsStream = ItemStream;

    async fn stream_active_computations(
        &self,
        _: Request<sys::StreamActiveComputationsRequest>,
    ) -> Result<Response<ItemStream>, Status> {
        let n = self.opens.fetch_add(1, Ordering::SeqCst) + 1;
        let stream: ItemStream = match self.streams {
            Streams::OneItemThenEmpty if n == 1 => {
                // A computation this duchy takes no part in: recorded as seen, nothing more.
                let item = sys::StreamActiveComputationsResponse {
                    computation: Some(sys::Computation {
                        name: "computations/someone-else".into(),
                        ..Default::default()
                    }),
                    continuation_token: "t1".into(),
                };
                Box::pin(tokio_stream::iter(vec![Ok(item)]))
            }
            Streams::OneItemThenEmpty => Box::pin(tokio_stream::empty()),
            Streams::Silent => Box::pin(tokio_stream::pending()),
        };
        Ok(Response::new(stream))
    }

    async fn set_computation_result(
        &self,
        _: Request<sys::SetComputationResultRequest>,
    ) -> Result<Response<sys::Computation>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

#[tonic::async_trait]
impl sys::computation_participants_server::ComputationParticipants for FakeKingdom {
    async fn get_computation_participant(
        &self,
        _: Request<sys::GetComputationParticipantRequest>,
    ) -> Result<Response<sys::ComputationParticipant>, Status> {
        self.participant_calls.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }

    async fn set_participant_requisition_params(
        &self,
        _: Request<sys::SetParticipantRequisitionParamsRequest>,
    ) -> Result<Response<sys::ComputationParticipant>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn fail_computation_participant(
        &self,
        _: Request<sys::FailComputationParticipantRequest>,
    ) -> Result<Response<sys::ComputationParticipant>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn confirm_computation_participant(
        &self,
        _: Request<sys::ConfirmComputationParticipantRequest>,
    ) -> Result<Response<sys::ComputationParticipant>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

struct Setup {
    pki: DevPki,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        halo_identity::init_crypto();
        let principals = [
            Principal::Kingdom,
            Principal::Duchy("worker1".into()),
            Principal::Duchy("worker2".into()),
            Principal::Duchy("aggregator".into()),
        ];
        Setup {
            pki: DevPki::generate(&principals).unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Serves `fake` as the Kingdom; returns its URL.
    async fn serve(&self, fake: FakeKingdom) -> String {
        let trust = self.pki.trust_store().unwrap();
        let me = self.pki.identity(&Principal::Kingdom).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = me.server_config(&trust).unwrap();
        let incoming =
            halo_identity::tls_incoming(listener, tls, trust.clone(), TlsServerLimits::default());
        let server = tonic::transport::Server::builder()
            .layer(halo_identity::AuthenticateLayer::new(trust))
            .add_service(sys::computations_server::ComputationsServer::new(
                fake.clone(),
            ))
            .add_service(
                sys::computation_participants_server::ComputationParticipantsServer::new(fake),
            )
            .serve_with_incoming(incoming);
        tokio::spawn(server);
        format!("https://{addr}")
    }

    fn config(&self, kingdom_url: &str, roles: &str, herald: HeraldConfig) -> DuchyConfig {
        DuchyConfig {
            id: "worker1".into(),
            data_dir: self.dir.path().join("duchy"),
            listen: "127.0.0.1:0".parse().unwrap(),
            identity: self
                .pki
                .identity(&Principal::Duchy("worker1".into()))
                .unwrap()
                .clone(),
            trust: self.pki.trust_store().unwrap(),
            kingdom_url: kingdom_url.into(),
            peers: PeerDirectory::default(),
            roles: RoleConfig::from_toml(roles, "test").unwrap(),
            mill: MillConfig::default(),
            herald,
            protocols: Arc::new(StaticRegistry::new(vec![protocol()])),
            max_payload_bytes: halo_duchy::DEFAULT_MAX_PAYLOAD_BYTES,
            tls_limits: TlsServerLimits::default(),
            limits: DuchyLimits::default(),
        }
    }
}

fn protocol() -> Arc<dyn Protocol> {
    Arc::new(halo_testkit::TestSumProtocol::new("1.0.0"))
}

fn fake(streams: Streams) -> FakeKingdom {
    FakeKingdom {
        streams,
        opens: Arc::new(AtomicUsize::new(0)),
        participant_calls: Arc::new(AtomicUsize::new(0)),
    }
}

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    tokio::time::timeout(BOUND, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// A computation of `worker1` as the herald would have recorded it, in the Kingdom's
/// participant order (non-aggregators, then the aggregator).
fn computation(pin: PluginPin, role: Role) -> NewComputation {
    let gid = "c1";
    let c = sys::Computation {
        name: halo_protocol::names::computation_name(gid),
        computation_participants: ["worker1", "worker2", "aggregator"]
            .iter()
            .map(|d| sys::ComputationParticipant {
                name: halo_protocol::names::participant_name(gid, d),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    NewComputation {
        global_id: gid.into(),
        protocol: SystemProtocol::HonestMajorityShareShuffle,
        role,
        pin,
        stage: START_STAGE,
        queued: true,
        kingdom_state: 1,
        computation: prost::Message::encode_to_vec(&c),
        plugin_state: Vec::new(),
    }
}

/// A Kingdom whose streams end at once without an item: the herald waits `backoff_initial`
/// (an hour here) before reconnecting, instead of reconnecting in a busy loop; after a
/// stream that delivered an item it reconnects at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_herald_backs_off_after_a_stream_without_items() {
    let s = Setup::new();
    let fake = fake(Streams::OneItemThenEmpty);
    let url = s.serve(fake.clone()).await;
    let herald = HeraldConfig {
        backoff_initial: Duration::from_secs(3600),
        backoff_max: Duration::from_secs(3600),
    };
    let core = Arc::new(Core::new(s.config(&url, ROLES, herald)).await.unwrap());
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(halo_duchy::herald::run(core.clone(), stop_rx));
    // The first stream delivered an item: the second open follows at once.
    wait_until("the second stream", || {
        fake.opens.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert_eq!(
        core.store.continuation_token().await.unwrap(),
        "t1",
        "the item was processed"
    );
    // The second ended empty: no third open for an hour. (Without the backoff there would
    // be thousands in this time.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fake.opens.load(Ordering::SeqCst),
        2,
        "reconnected without backing off"
    );
    // And the backoff sleep ends at shutdown.
    stop.send(true).unwrap();
    tokio::time::timeout(BOUND, task).await.unwrap().unwrap();
}

/// The supervisor reporting a failure to a Kingdom that never answers: shutdown does not
/// wait for that call beyond the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_kingdom_call_beyond_the_grace_period() {
    let s = Setup::new();
    let fake = fake(Streams::Silent);
    let url = s.serve(fake.clone()).await;
    let config = s.config(&url, ROLES, HeraldConfig::default());
    // A failure not yet acknowledged by the Kingdom, left by an earlier run.
    let store = Store::open(&config.data_dir).await.unwrap();
    let pin = protocol().pin();
    assert!(
        store
            .insert(computation(pin, Role::FirstNonAggregator), &[], "test")
            .await
            .unwrap()
    );
    assert!(
        store
            .fail("c1", None, "failed earlier", None)
            .await
            .unwrap()
    );
    store.close().await;
    drop(store);
    let duchy = RunningDuchy::start(config).await.unwrap();
    wait_until("the supervisor's call to the Kingdom", || {
        fake.participant_calls.load(Ordering::SeqCst) >= 1
    })
    .await;
    // The call never returns; a hang here is the failure.
    tokio::time::timeout(BOUND, duchy.shutdown_graceful(Duration::from_millis(100)))
        .await
        .expect("shutdown waited for the Kingdom call")
        .unwrap();
}

/// The roles file gives the participants other roles than the computation was created with
/// (edited, and the duchy restarted, mid-computation): building a stage's context fails
/// with a message saying so, rather than playing along with the wrong roles.
#[tokio::test]
async fn a_changed_roles_file_fails_the_stage_context() {
    let s = Setup::new();
    let url = "https://127.0.0.1:1";
    let pin = protocol().pin();
    let core = Core::new(s.config(url, ROLES, HeraldConfig::default()))
        .await
        .unwrap();
    assert!(
        core.store
            .insert(computation(pin, Role::FirstNonAggregator), &[], "test")
            .await
            .unwrap()
    );
    let row = core.store.get("c1").await.unwrap().unwrap();
    let ctx = core.context(&row).unwrap();
    assert_eq!(ctx.role, Role::FirstNonAggregator);
    core.store.close().await;
    drop(core);

    let core = Core::new(s.config(url, ROLES_SWAPPED, HeraldConfig::default()))
        .await
        .unwrap();
    let row = core.store.get("c1").await.unwrap().unwrap();
    let err = format!("{:#}", core.context(&row).unwrap_err());
    assert!(
        err.contains("the roles file changed while the computation was running"),
        "{err}"
    );
    assert!(err.contains("disagrees with the Kingdom"), "{err}");
}

/// Only this duchy's own role changed (the participants' order still matches): caught too.
#[tokio::test]
async fn a_changed_own_role_fails_the_stage_context() {
    let s = Setup::new();
    let url = "https://127.0.0.1:1";
    let core = Core::new(s.config(url, ROLES, HeraldConfig::default()))
        .await
        .unwrap();
    // Stored as if created when worker1 was the second non-aggregator.
    assert!(
        core.store
            .insert(
                computation(protocol().pin(), Role::SecondNonAggregator),
                &[],
                "test"
            )
            .await
            .unwrap()
    );
    let row = core.store.get("c1").await.unwrap().unwrap();
    let err = format!("{:#}", core.context(&row).unwrap_err());
    assert!(
        err.contains("created with role SecondNonAggregator"),
        "{err}"
    );
}
