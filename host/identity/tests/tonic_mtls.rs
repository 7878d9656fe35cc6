//! End-to-end over real mTLS on loopback: a tonic server built as the Kingdom and the duchies
//! build theirs (`Identity::server_config`, `tls_incoming`, `AuthenticateLayer`) identifies
//! callers connecting through `Identity::channel`, refuses forged, expired, unknown and CA
//! certificates with UNAUTHENTICATED, and clients refuse a server that is not the principal
//! they meant to reach.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use halo_identity::{
    AuthenticateLayer, DevPki, Identity, MULTIPLE_CLIENT_CERTIFICATES, NO_AKID, NO_IDENTITY,
    Principal, TlsServerLimits, TrustStore, ca_as_leaf_identity, expired_identity,
    forged_akid_identity, identity_with_two_cert_chain, identity_without_akid, impostor_identity,
    tls_incoming,
};
use tonic::body::Body;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::{NamedService, UnaryService};
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;

/// `halo.test.WhoAmI/Get(Empty) -> string`: returns the caller's resource name.
#[derive(Clone)]
struct WhoAmI(Arc<TrustStore>);

impl NamedService for WhoAmI {
    const NAME: &'static str = "halo.test.WhoAmI";
}

struct Get(Arc<TrustStore>);

impl UnaryService<()> for Get {
    type Response = String;
    type Future = BoxFuture<Response<String>, Status>;

    fn call(&mut self, req: Request<()>) -> Self::Future {
        let result = self
            .0
            .authenticate(&req)
            .map(|p| Response::new(p.resource_name()));
        Box::pin(async move { result })
    }
}

impl Service<http::Request<Body>> for WhoAmI {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let trust = self.0.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<String, ()>::default());
            Ok(grpc.unary(Get(trust), req).await)
        })
    }
}

async fn call(
    client: &Identity,
    trust: &TrustStore,
    server: &Principal,
    url: &str,
    path: &'static str,
) -> Result<String, Status> {
    let channel = client.channel(trust, server, url).unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let response = grpc
        .unary(
            Request::new(()),
            PathAndQuery::from_static(path),
            ProstCodec::<(), String>::default(),
        )
        .await?;
    Ok(response.into_inner())
}

async fn who_am_i(client: &Identity, trust: &TrustStore, url: &str) -> Result<String, Status> {
    call(
        client,
        trust,
        &Principal::Kingdom,
        url,
        "/halo.test.WhoAmI/Get",
    )
    .await
}

/// Serves `WhoAmI` as `server` with `Identity::server_config`, `tls_incoming` and
/// `AuthenticateLayer`, as the Kingdom and the duchies do.
async fn serve(
    server: &Identity,
    trust: &TrustStore,
    limits: TlsServerLimits,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let incoming = tls_incoming(
        listener,
        server.server_config(trust).unwrap(),
        trust.clone(),
        limits,
    );
    let router = tonic::transport::Server::builder()
        .layer(AuthenticateLayer::new(trust.clone()))
        .add_service(WhoAmI(Arc::new(trust.clone())));
    let handle = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (url, stop, handle)
}

#[track_caller]
fn assert_unauthenticated(result: Result<String, Status>, needle: &str) {
    let status = result.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains(needle), "{status:?}");
}

#[tokio::test]
async fn tonic_server_identifies_clients() {
    halo_identity::init_crypto();
    let worker1 = Principal::Duchy("worker1".into());
    let edp1 = Principal::DataProvider("edp1".into());
    let pki = DevPki::generate(&[Principal::Kingdom, worker1.clone(), edp1.clone()]).unwrap();
    let trust = pki.trust_store().unwrap();
    let kingdom = pki.identity(&Principal::Kingdom).unwrap();
    let (url, stop, server) = serve(kingdom, &trust, TlsServerLimits::default()).await;

    for p in [&worker1, &edp1, &Principal::Kingdom] {
        let name = who_am_i(pki.identity(p).unwrap(), &trust, &url)
            .await
            .unwrap();
        assert_eq!(name, p.resource_name());
    }

    let no_akid = identity_without_akid(&pki, &worker1).unwrap();
    let status = who_am_i(&no_akid, &trust, &url).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, NO_AKID)
    );

    let chained = identity_with_two_cert_chain(&pki, &edp1).unwrap();
    let status = who_am_i(&chained, &trust, &url).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, MULTIPLE_CLIENT_CERTIFICATES)
    );

    // The attack this layer exists for: a data provider issues itself, with its own root key,
    // a leaf whose AKID is worker1's root SKID. Without the signature check it would be taken
    // for worker1.
    for victim_issuer_name in [false, true] {
        let forged = forged_akid_identity(&pki, &edp1, &worker1, victim_issuer_name).unwrap();
        assert_unauthenticated(
            who_am_i(&forged, &trust, &url).await,
            "root of duchies/worker1",
        );
    }
    let forged = forged_akid_identity(&pki, &edp1, &worker1, false).unwrap();
    // Refused before routing: an unknown method is UNAUTHENTICATED, not UNIMPLEMENTED.
    assert_unauthenticated(
        call(
            &forged,
            &trust,
            &Principal::Kingdom,
            &url,
            "/halo.test.WhoAmI/Nope",
        )
        .await,
        "invalid client certificate",
    );
    // A leaf from an unknown CA (its AKID names no trusted root).
    let impostor = impostor_identity(&worker1).unwrap();
    assert_unauthenticated(who_am_i(&impostor, &trust, &url).await, NO_IDENTITY);
    // An expired leaf from the right root.
    let expired = expired_identity(&pki, &worker1).unwrap();
    assert_unauthenticated(who_am_i(&expired, &trust, &url).await, "expired");
    // A CA certificate issued by worker1's root, used as a leaf.
    let root = ca_as_leaf_identity(&pki, &worker1).unwrap();
    assert_unauthenticated(who_am_i(&root, &trust, &url).await, "CA certificate");

    stop.send(()).unwrap();
    server.await.unwrap();
}

/// A client checks that the server is the principal it meant to reach, not any holder of a
/// certificate from a trusted root.
#[tokio::test]
async fn clients_check_the_server_principal() {
    halo_identity::init_crypto();
    let worker1 = Principal::Duchy("worker1".into());
    let worker2 = Principal::Duchy("worker2".into());
    let edp1 = Principal::DataProvider("edp1".into());
    let pki = DevPki::generate(&[
        Principal::Kingdom,
        worker1.clone(),
        worker2.clone(),
        edp1.clone(),
    ])
    .unwrap();
    let trust = pki.trust_store().unwrap();
    let client = pki.identity(&edp1).unwrap();
    let path = "/halo.test.WhoAmI/Get";

    // worker2 serves with its own valid certificate.
    let (url, stop, server) = serve(
        pki.identity(&worker2).unwrap(),
        &trust,
        TlsServerLimits::default(),
    )
    .await;
    assert_eq!(
        call(client, &trust, &worker2, &url, path).await.unwrap(),
        edp1.resource_name()
    );
    for meant in [&worker1, &Principal::Kingdom] {
        let status = call(client, &trust, meant, &url, path).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    stop.send(()).unwrap();
    server.await.unwrap();

    // A server presenting a forged certificate (signed by edp1's root, AKID = worker1's SKID,
    // subject worker1) is not worker1.
    let forged = forged_akid_identity(&pki, &edp1, &worker1, true).unwrap();
    let (url, stop, server) = serve(&forged, &trust, TlsServerLimits::default()).await;
    let status = call(client, &trust, &worker1, &url, path)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    stop.send(()).unwrap();
    server.await.unwrap();

    // No root for the principal: refused before connecting.
    let stranger = Principal::Duchy("stranger".into());
    assert!(
        client
            .channel(&trust, &stranger, "https://127.0.0.1:1")
            .is_err()
    );
}

/// A connection that never finishes its TLS handshake is closed after the handshake timeout
/// and does not stop other clients from being served meanwhile.
#[tokio::test]
async fn stalled_handshakes_are_dropped() {
    use tokio::io::AsyncReadExt as _;
    halo_identity::init_crypto();
    let worker1 = Principal::Duchy("worker1".into());
    let pki = DevPki::generate(&[Principal::Kingdom, worker1.clone()]).unwrap();
    let trust = pki.trust_store().unwrap();
    let limits = TlsServerLimits {
        handshake_timeout: std::time::Duration::from_millis(300),
        client_hello_timeout: std::time::Duration::from_millis(300),
        max_pending_handshakes: 8,
        ..TlsServerLimits::default()
    };
    let (url, stop, server) =
        serve(pki.identity(&Principal::Kingdom).unwrap(), &trust, limits).await;
    let addr = url.trim_start_matches("https://").to_owned();
    // More silent connections than the pending-handshake bound.
    let mut silent = Vec::new();
    for i in 0..20 {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 1 {
            // Half of them start a ClientHello (a TLS record header) and stall there.
            use tokio::io::AsyncWriteExt as _;
            conn.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
                .await
                .unwrap();
        }
        silent.push(conn);
    }
    // A real client still gets through (it waits at most a few handshake timeouts).
    let name = who_am_i(pki.identity(&worker1).unwrap(), &trust, &url)
        .await
        .unwrap();
    assert_eq!(name, worker1.resource_name());
    // Every silent connection is closed by the server (read returns EOF or an error).
    for mut conn in silent {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(std::time::Duration::from_secs(30), conn.read(&mut buf))
            .await
            .expect("the server must close a stalled handshake");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    stop.send(()).unwrap();
    server.await.unwrap();
}

/// Opens a raw TLS connection to `addr` as `client` (trusting `server`'s roots) and reads
/// until the server closes it or `wait` passes. Returns (bytes read, closed by the server).
async fn raw_connection(
    client: &Identity,
    trust: &TrustStore,
    server: &Principal,
    addr: &str,
    wait: std::time::Duration,
) -> (usize, bool) {
    use rustls_pki_types::pem::PemObject as _;
    use tokio::io::AsyncReadExt as _;
    let mut roots = rustls::RootCertStore::empty();
    for der in
        rustls_pki_types::CertificateDer::pem_slice_iter(trust.roots_pem_of(server).as_bytes())
    {
        roots.add(der.unwrap()).unwrap();
    }
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(client.chain_der().unwrap(), key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let Ok(mut tls) = connector.connect(name, tcp).await else {
        return (0, true);
    };
    let mut total = 0;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
            Err(_) => return (total, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (total, true),
            Ok(Ok(n)) => total += n,
        }
    }
}

/// A connection whose certificate identifies no principal is answered (UNAUTHENTICATED) but
/// not kept: it is closed after the unauthenticated lifetime, and beyond the cap at once; an
/// identified client's connection stays open.
#[tokio::test]
async fn unauthenticated_connections_are_short_lived_and_capped() {
    halo_identity::init_crypto();
    let worker1 = Principal::Duchy("worker1".into());
    let edp1 = Principal::DataProvider("edp1".into());
    let pki = DevPki::generate(&[Principal::Kingdom, worker1.clone(), edp1.clone()]).unwrap();
    let trust = pki.trust_store().unwrap();
    let limits = TlsServerLimits {
        unauthenticated_lifetime: std::time::Duration::from_millis(400),
        max_unauthenticated: 3,
        ..TlsServerLimits::default()
    };
    let (url, stop, server) =
        serve(pki.identity(&Principal::Kingdom).unwrap(), &trust, limits).await;
    let addr = url.trim_start_matches("https://").to_owned();
    let forged = forged_akid_identity(&pki, &edp1, &worker1, false).unwrap();
    let long = std::time::Duration::from_secs(3);

    // Still answered with the reason over gRPC.
    assert_unauthenticated(
        who_am_i(&forged, &trust, &url).await,
        "root of duchies/worker1",
    );
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;

    // One forged connection: served (the HTTP/2 preface arrives), then closed.
    let (read, closed) = raw_connection(&forged, &trust, &Principal::Kingdom, &addr, long).await;
    assert!(read > 0 && closed, "read {read}, closed {closed}");

    // An identified client's connection is not closed.
    let good = pki.identity(&worker1).unwrap();
    let (read, closed) = raw_connection(
        good,
        &trust,
        &Principal::Kingdom,
        &addr,
        std::time::Duration::from_secs(1),
    )
    .await;
    assert!(read > 0 && !closed, "read {read}, closed {closed}");

    // Eight forged connections at once: at most three are served, all are closed.
    let results = futures::future::join_all(
        (0..8).map(|_| raw_connection(&forged, &trust, &Principal::Kingdom, &addr, long)),
    )
    .await;
    assert!(results.iter().all(|(_, closed)| *closed), "{results:?}");
    let served = results.iter().filter(|(read, _)| *read > 0).count();
    assert!((1..=3).contains(&served), "{results:?}");

    stop.send(()).unwrap();
    server.await.unwrap();
}
