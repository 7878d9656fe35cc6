//! The simulated clients (`halo mc`, `halo edp`, `halo demo`) ride out a Kingdom restart:
//! a real Kingdom over real mTLS on loopback is shut down while a client waits on it and
//! started again 2 s later on the same address and data directory; the client's call
//! completes. A retried CreateMeasurement creates one measurement, and errors that are not
//! transient are returned at once, not retried.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr as _;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use halo_identity::{DevPki, Principal};
use halo_kingdom::{KingdomConfig, RunningKingdom};
use halo_proto::halo::v1 as admin;
use halo_proto::system::v1alpha::SetParticipantRequisitionParamsRequest;
use halo_proto::system::v1alpha::computation::State;
use halo_proto::system::v1alpha::computation_participant::RequisitionParams;
use halo_proto::system::v1alpha::computation_participant::requisition_params::{
    HonestMajorityShareShuffle, Protocol as ParamsProtocol,
};
use halo_proto::system::v1alpha::computation_participants_client::ComputationParticipantsClient;
use halo_sim::{edp, mc, retry};
use sqlx::{Connection as _, SqliteConnection};
use tonic::Code;
use tonic::transport::Channel;

const MC: &str = "mc1";
const EDP: &str = "edp1";
const OUTAGE: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(120);

struct Kingdom {
    pki: DevPki,
    config: KingdomConfig,
    running: Option<RunningKingdom>,
    _dir: tempfile::TempDir,
}

impl Kingdom {
    /// A Kingdom on a port of its own (127.0.0.1:0, then kept for restarts).
    async fn start() -> Kingdom {
        halo_identity::init_crypto();
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::generate(&halo_sim::standard_principals(&[EDP.to_owned()], MC)).unwrap();
        let mut config = halo_sim::kingdom_config(
            &pki,
            &dir.path().join("kingdom"),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let running = RunningKingdom::start(config.clone()).await.unwrap();
        config.listen = running.addr;
        Kingdom {
            pki,
            config,
            running: Some(running),
            _dir: dir,
        }
    }

    async fn stop(&mut self) {
        if let Some(k) = self.running.take() {
            k.shutdown().await.unwrap();
        }
    }

    /// Starts it again on the same address and data directory.
    async fn start_again(&mut self) {
        assert!(self.running.is_none());
        self.running = Some(RunningKingdom::start(self.config.clone()).await.unwrap());
    }

    fn channel(&self, who: &Principal) -> Channel {
        self.pki
            .identity(who)
            .unwrap()
            .channel(
                &self.pki.trust_store().unwrap(),
                &Principal::Kingdom,
                &format!("https://{}", self.config.listen),
            )
            .unwrap()
    }

    fn mc(&self) -> Channel {
        self.channel(&Principal::MeasurementConsumer(MC.to_owned()))
    }

    /// Rows in the measurements table (the Kingdom must be stopped).
    async fn measurement_count(&self) -> i64 {
        assert!(self.running.is_none());
        let options = sqlx::sqlite::SqliteConnectOptions::from_str("sqlite:")
            .unwrap()
            .filename(self.config.data_dir.join(halo_kingdom::DB_FILE))
            .read_only(true);
        let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
        let n = sqlx::query_scalar("SELECT COUNT(*) FROM measurements")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        n
    }

    /// Every HMSS participant publishes its requisition params (the computation moves to
    /// PENDING_REQUISITION_FULFILLMENT and its requisitions are listed).
    async fn set_all_params(&self, computation: &str) {
        for d in halo_sim::DUCHIES {
            let who = Principal::Duchy(d.to_owned());
            let der = self.pki.identity(&who).unwrap().certificate_der().unwrap();
            ComputationParticipantsClient::new(self.channel(&who))
                .set_participant_requisition_params(SetParticipantRequisitionParamsRequest {
                    name: format!("{computation}/participants/{d}"),
                    requisition_params: Some(RequisitionParams {
                        duchy_certificate: format!(
                            "duchies/{d}/certificates/{}",
                            halo_kingdom::certificate_id(&der)
                        ),
                        duchy_certificate_der: Vec::new(),
                        protocol: Some(ParamsProtocol::HonestMajorityShareShuffle(
                            HonestMajorityShareShuffle {
                                tink_public_key: if d == "aggregator" {
                                    Vec::new()
                                } else {
                                    format!("public key of {d}").into_bytes()
                                },
                                ..Default::default()
                            },
                        )),
                    }),
                    etag: String::new(),
                })
                .await
                .unwrap();
        }
    }
}

fn spec() -> admin::MeasurementSpec {
    admin::MeasurementSpec {
        measurement_public_key: vec![7; 32],
        r#type: admin::measurement_spec::Type::Reach as i32,
        maximum_frequency: 1,
        ..Default::default()
    }
}

async fn create(k: &Kingdom) -> mc::CreatedMeasurement {
    mc::create_measurement(
        k.mc(),
        MC,
        admin::Protocol::HonestMajorityShareShuffle,
        spec(),
        &[EDP.to_owned()],
    )
    .await
    .unwrap()
}

/// `halo mc` polls for the result: the Kingdom goes away for 2 s and comes back; the wait
/// carries on and sees the measurement end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_result_rides_out_a_kingdom_restart() {
    let mut k = Kingdom::start().await;
    let created = create(&k).await;
    let name = created.measurement.name.clone();
    let waiting = tokio::spawn({
        let (channel, name) = (k.mc(), name.clone());
        async move { mc::wait_until_done(channel, &name, WAIT).await }
    });

    k.stop().await;
    tokio::time::sleep(OUTAGE).await;
    assert!(
        !waiting.is_finished(),
        "the wait ended while the Kingdom was down: {:?}",
        waiting.await
    );
    k.start_again().await;

    // The consumer cancels it (any terminal state ends the wait).
    admin::measurements_client::MeasurementsClient::new(k.mc())
        .cancel_measurement(admin::CancelMeasurementRequest { name: name.clone() })
        .await
        .unwrap();
    let m = waiting.await.unwrap().unwrap();
    assert_eq!(m.name, name);
    assert_eq!(m.state, State::Cancelled as i32);
    k.stop().await;
    assert_eq!(k.measurement_count().await, 1);
}

/// `halo mc` creates its measurement while the Kingdom is down: the call waits for it and
/// creates exactly one measurement; sending the same request again (a retry after a lost
/// answer) returns that measurement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_measurement_rides_out_a_kingdom_restart_and_creates_one() {
    let mut k = Kingdom::start().await;
    k.stop().await;
    let new = mc::new_measurement(
        MC,
        admin::Protocol::HonestMajorityShareShuffle,
        spec(),
        &[EDP.to_owned()],
        None,
    );
    let deadline = std::time::Instant::now() + WAIT;
    let creating = tokio::spawn({
        let (channel, request) = (k.mc(), new.request.clone());
        async move { mc::send_create(channel, &request, deadline).await }
    });
    tokio::time::sleep(OUTAGE).await;
    assert!(
        !creating.is_finished(),
        "creation ended while the Kingdom was down: {:?}",
        creating.await
    );
    k.start_again().await;
    let first = creating.await.unwrap().unwrap();
    assert_eq!(first.state, State::PendingRequisitionParams as i32);

    let replay = mc::send_create(k.mc(), &new.request, deadline)
        .await
        .unwrap();
    assert_eq!(replay, first);
    k.stop().await;
    assert_eq!(k.measurement_count().await, 1);
}

/// `halo edp` waits for its requisition: the Kingdom restarts meanwhile; once the duchies
/// have published their params the requisition is listed and the wait ends with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_requisitions_rides_out_a_kingdom_restart() {
    let mut k = Kingdom::start().await;
    let created = create(&k).await;
    let computation = created.measurement.computation.clone();
    let edp_channel = k.channel(&Principal::DataProvider(EDP.to_owned()));
    let waiting = tokio::spawn(edp::wait_for_requisitions(edp_channel, EDP, 1, WAIT));

    k.stop().await;
    tokio::time::sleep(OUTAGE).await;
    assert!(
        !waiting.is_finished(),
        "the wait ended while the Kingdom was down: {:?}",
        waiting.await
    );
    k.start_again().await;
    k.set_all_params(&computation).await;

    let listed = waiting.await.unwrap().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].computation.as_ref().map(|c| c.name.as_str()),
        Some(computation.as_str())
    );
    k.stop().await;
}

/// A refused connection (nothing listening) is UNAVAILABLE, so it is retried; errors the
/// Kingdom sends for a bad or forbidden request are returned after one attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_transient_errors_are_retried() {
    let mut k = Kingdom::start().await;
    let created = create(&k).await;
    let deadline = || retry::deadline_in(WAIT);

    // PERMISSION_DENIED: another consumer's measurement.
    let attempts = AtomicU32::new(0);
    let foreign = created
        .measurement
        .name
        .replace("measurementConsumers/mc1/", "measurementConsumers/mc2/");
    let client = admin::measurements_client::MeasurementsClient::new(k.mc());
    let err = retry::retry("GetMeasurement", deadline(), || {
        attempts.fetch_add(1, Ordering::SeqCst);
        let mut client = client.clone();
        let name = foreign.clone();
        async move {
            client
                .get_measurement(admin::GetMeasurementRequest { name })
                .await
        }
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(attempts.load(Ordering::SeqCst), 1);

    // INVALID_ARGUMENT: no data provider.
    let attempts = AtomicU32::new(0);
    let mut bad = mc::new_measurement(
        MC,
        admin::Protocol::HonestMajorityShareShuffle,
        spec(),
        &[],
        None,
    )
    .request;
    bad.data_providers.clear();
    let err = retry::retry("CreateMeasurement", deadline(), || {
        attempts.fetch_add(1, Ordering::SeqCst);
        let mut client = client.clone();
        let request = bad.clone();
        async move { client.create_measurement(request).await }
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    // Through the simulator's own path, the same error comes back as is.
    let err = mc::send_create(k.mc(), &bad, std::time::Instant::now() + WAIT)
        .await
        .unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().unwrap();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Nothing listening: UNAVAILABLE, transient; retried until the deadline.
    k.stop().await;
    let status = client
        .clone()
        .get_measurement(admin::GetMeasurementRequest {
            name: created.measurement.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(retry::is_transient(&status));
    let attempts = AtomicU32::new(0);
    let err = retry::retry(
        "GetMeasurement",
        retry::deadline_in(Duration::from_secs(3)),
        || {
            attempts.fetch_add(1, Ordering::SeqCst);
            let mut client = client.clone();
            let name = created.measurement.name.clone();
            async move {
                client
                    .get_measurement(admin::GetMeasurementRequest { name })
                    .await
            }
        },
    )
    .await
    .unwrap_err();
    // The last attempt either failed (UNAVAILABLE) or was still in flight at the deadline
    // (DEADLINE_EXCEEDED, on a loaded machine): both say the retries gave up.
    assert!(
        matches!(err.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{err:?}"
    );
    assert!(err.message().contains("gave up after"), "{err:?}");
    assert!(attempts.load(Ordering::SeqCst) > 1);
}
