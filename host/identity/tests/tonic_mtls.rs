//! End-to-end: a tonic server configured with `Identity::server_tls` identifies callers
//! connecting through `Identity::channel` with `TrustStore::authenticate`.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use halo_identity::{
    DevPki, Identity, MULTIPLE_CLIENT_CERTIFICATES, NO_AKID, Principal, TrustStore,
    identity_with_two_cert_chain, identity_without_akid, impostor_identity,
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

async fn who_am_i(client: &Identity, trust: &TrustStore, url: &str) -> Result<String, Status> {
    let channel = client.channel(trust, url).unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let response = grpc
        .unary(
            Request::new(()),
            PathAndQuery::from_static("/halo.test.WhoAmI/Get"),
            ProstCodec::<(), String>::default(),
        )
        .await?;
    Ok(response.into_inner())
}

#[tokio::test]
async fn tonic_server_identifies_clients() {
    halo_identity::init_crypto();
    let worker1 = Principal::Duchy("worker1".into());
    let edp1 = Principal::DataProvider("edp1".into());
    let pki = DevPki::generate(&[Principal::Kingdom, worker1.clone(), edp1.clone()]).unwrap();
    let trust = pki.trust_store().unwrap();
    let kingdom = pki.identity(&Principal::Kingdom).unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(kingdom.server_tls(&trust))
            .unwrap()
            .add_service(WhoAmI(Arc::new(trust.clone())))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );

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

    // The impostor's root is unknown to the server: the TLS handshake fails.
    let impostor = impostor_identity(&worker1).unwrap();
    let status = who_am_i(&impostor, &trust, &url).await.unwrap_err();
    assert_ne!(status.code(), Code::Ok);
    assert_ne!(status.code(), Code::Unauthenticated, "{status:?}");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
