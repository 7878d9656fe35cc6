//! Server-side TLS: our own rustls configuration and accept loop, and a tower layer that
//! authenticates every request before it reaches a service.
//!
//! Why not tonic's `ServerTlsConfig`: it verifies client chains with webpki against the whole
//! bundle of trusted roots, so a leaf that chains (by issuer *name*) to any trusted root passes,
//! and a leaf that does not is refused inside the handshake, where the client only sees a
//! transport error. Here the handshake requires a client certificate and proof that the client
//! holds its private key; which principal (if any) verifiably issued it is decided by
//! [`TrustStore::identify`] for every request, so a bad certificate is refused with a gRPC
//! `UNAUTHENTICATED` that names the reason. The accept loop also bounds handshakes: each runs in
//! its own task under a timeout, at most `max_pending` at once, so clients that never finish a
//! handshake cannot hold up others or pile up without bound.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::{Identity, IdentityError, Principal, TrustStore};

/// Limits of the TLS accept loop.
#[derive(Clone, Copy, Debug)]
pub struct TlsServerLimits {
    /// A connection whose TLS handshake has not finished after this long is closed.
    pub handshake_timeout: Duration,
    /// A connection that has not sent its first byte (the ClientHello) after this long is
    /// closed, so silent connections free their handshake slot quickly.
    pub client_hello_timeout: Duration,
    /// At most this many handshakes run at once; further connections wait in the kernel's
    /// accept queue until one finishes.
    pub max_pending_handshakes: usize,
    /// At most this many established connections at once (further ones wait in the kernel's
    /// accept queue).
    pub max_connections: usize,
    /// Connections whose client certificate identifies no principal are kept only long
    /// enough to answer UNAUTHENTICATED (this long), and at most this many at once (more are
    /// closed at once).
    pub unauthenticated_lifetime: Duration,
    pub max_unauthenticated: usize,
}

impl Default for TlsServerLimits {
    fn default() -> Self {
        TlsServerLimits {
            handshake_timeout: Duration::from_secs(10),
            client_hello_timeout: Duration::from_secs(3),
            max_pending_handshakes: 256,
            max_connections: 4096,
            unauthenticated_lifetime: Duration::from_secs(5),
            max_unauthenticated: 64,
        }
    }
}

/// Requires a client certificate and checks the client's proof of possession of its key; the
/// chain itself is judged per request by [`TrustStore::identify`].
#[derive(Debug)]
struct PossessionVerifier {
    algorithms: WebPkiSupportedAlgorithms,
    hints: Vec<DistinguishedName>,
}

impl ClientCertVerifier for PossessionVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Identity (issuer signature, validity, CA flag, key usage) is checked per request by
        // `TrustStore::identify`, which answers UNAUTHENTICATED with the reason.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl Identity {
    /// The rustls server configuration of this identity: presents its certificate, requires a
    /// client certificate with proof of possession, speaks HTTP/2 only. Serve it with
    /// [`tls_incoming`] and [`AuthenticateLayer`].
    pub fn server_config(
        &self,
        trust: &TrustStore,
    ) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
        crate::init_crypto();
        let context = format!("server TLS identity of {}", self.principal);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let hints = trust
            .roots_der()
            .filter_map(|der| {
                crate::trust::parse_cert(&CertificateDer::from(der))
                    .ok()
                    .map(|c| DistinguishedName::from(c.subject().as_raw().to_vec()))
            })
            .collect();
        let verifier = Arc::new(PossessionVerifier {
            algorithms: provider.signature_verification_algorithms,
            hints,
        });
        let chain = self.chain_der()?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(IdentityError::pem(&context))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| IdentityError::Tls {
                context: context.clone(),
                message: e.to_string(),
            })?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| IdentityError::Tls {
                context,
                message: e.to_string(),
            })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// What the server decided about a connection's client once, right after the handshake (it is
/// the tonic `ConnectInfo` of [`TlsConn`], so it is in every request's extensions).
#[derive(Clone, Debug)]
pub struct PeerInfo {
    remote: Option<SocketAddr>,
    local: Option<SocketAddr>,
    /// The principal and the leaf's notAfter (Unix seconds), or why it identifies no one.
    identity: Result<(Principal, i64), Status>,
}

impl PeerInfo {
    /// The client's address.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote
    }

    /// The local address the client connected to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// The principal of this connection, or UNAUTHENTICATED with the reason (also once its
    /// certificate has expired while connected).
    pub fn principal(&self) -> Result<&Principal, Status> {
        match &self.identity {
            Ok((principal, not_after)) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(i64::MAX, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                if now > *not_after {
                    Err(Status::unauthenticated(format!(
                        "{}: the certificate expired during the connection",
                        crate::INVALID_CLIENT_CERTIFICATE
                    )))
                } else {
                    Ok(principal)
                }
            }
            Err(status) => Err(status.clone()),
        }
    }
}

/// An accepted TLS connection, identified once (see [`PeerInfo`]). It holds a slot of the
/// connection cap for its lifetime; an unidentified one is closed after
/// [`TlsServerLimits::unauthenticated_lifetime`].
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    _permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
}

impl TlsConn {
    /// Whether an unidentified connection's time is up.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready())
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Ok(())); // end of stream
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The TLS connections accepted on `listener`, identified by `trust` once each:
/// - at most `limits.max_connections` established at once (the accept loop waits for a slot);
/// - each handshake runs in its own task, at most `limits.max_pending_handshakes` at once; a
///   client that sends nothing for `limits.client_hello_timeout`, or has not finished after
///   `limits.handshake_timeout`, is dropped;
/// - a connection whose certificate identifies no principal (see [`TrustStore::identify`]) is
///   served only for `limits.unauthenticated_lifetime` (enough to answer UNAUTHENTICATED), at
///   most `limits.max_unauthenticated` at once.
///
/// Feed the stream to tonic's `Server::serve_with_incoming*` with [`AuthenticateLayer`]. The
/// accept task ends when the stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    trust: TrustStore,
    limits: TlsServerLimits,
) -> impl tokio_stream::Stream<Item = Result<TlsConn, io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<Result<TlsConn, io::Error>>(64);
    let acceptor = TlsAcceptor::from(config);
    let trust = Arc::new(trust);
    let pending = Arc::new(Semaphore::new(limits.max_pending_handshakes.max(1)));
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let unauthenticated = Arc::new(Semaphore::new(limits.max_unauthenticated));
    tokio::spawn(async move {
        loop {
            let permits = tokio::select! {
                permits = async {
                    let c = connections.clone().acquire_owned().await?;
                    let p = pending.clone().acquire_owned().await?;
                    Ok::<_, tokio::sync::AcquireError>((c, p))
                } => match permits {
                    Ok(p) => p,
                    Err(_) => return,
                },
                () = tx.closed() => return,
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Per-connection errors (reset before accept, fd exhaustion): back off a
                    // little instead of spinning, then keep serving.
                    tracing::debug!(error = %e, "accept failed");
                    drop(permits);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let trust = trust.clone();
            let unauthenticated = unauthenticated.clone();
            tokio::spawn(async move {
                let (connection, pending) = permits;
                let local = tcp.local_addr().ok();
                if tokio::time::timeout(limits.client_hello_timeout, tcp.readable())
                    .await
                    .is_err()
                {
                    tracing::debug!(%peer, "no ClientHello in time");
                    return;
                }
                let handshake =
                    tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await;
                drop(pending);
                let tls = match handshake {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let identity = {
                    let certs = tls.get_ref().1.peer_certificates();
                    trust.identify_until(certs)
                };
                let (deadline, unauthenticated_permit) = match &identity {
                    Ok(_) => (None, None),
                    Err(status) => {
                        let Ok(permit) = unauthenticated.try_acquire_owned() else {
                            tracing::debug!(%peer, "too many unauthenticated connections");
                            return;
                        };
                        tracing::debug!(%peer, reason = %status.message(), "unauthenticated connection");
                        (
                            Some(Box::pin(tokio::time::sleep(
                                limits.unauthenticated_lifetime,
                            ))),
                            Some(permit),
                        )
                    }
                };
                let conn = TlsConn {
                    inner: tls,
                    info: PeerInfo {
                        remote: Some(peer),
                        local,
                        identity,
                    },
                    deadline,
                    _permits: (connection, unauthenticated_permit),
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A tower layer for tonic servers: every request must come from a client that
/// [`TrustStore::identify`] accepts, or it is answered `UNAUTHENTICATED` without reaching the
/// service. The identified [`Principal`] is put into the request's extensions, where
/// [`TrustStore::authenticate`] finds it.
#[derive(Clone, Debug)]
pub struct AuthenticateLayer {
    trust: Arc<TrustStore>,
}

impl AuthenticateLayer {
    pub fn new(trust: TrustStore) -> Self {
        AuthenticateLayer {
            trust: Arc::new(trust),
        }
    }
}

impl<S> tower_layer::Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            trust: self.trust.clone(),
        }
    }
}

/// The service of [`AuthenticateLayer`].
#[derive(Clone, Debug)]
pub struct Authenticate<S> {
    inner: S,
    trust: Arc<TrustStore>,
}

/// The principal [`AuthenticateLayer`] identified for a request.
#[derive(Clone, Debug)]
pub(crate) struct Authenticated(pub(crate) Principal);

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for Authenticate<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let identified = match req.extensions().get::<PeerInfo>() {
            // Decided once for the connection (the normal case, see `tls_incoming`).
            Some(info) => info.principal().cloned(),
            None => {
                let certs = req
                    .extensions()
                    .get::<TlsConnectInfo<TcpConnectInfo>>()
                    .and_then(|info| info.peer_certs());
                self.trust.identify(certs.as_deref().map(Vec::as_slice))
            }
        };
        match identified {
            Ok(principal) => {
                req.extensions_mut().insert(Authenticated(principal));
                // The clone is ready only after poll_ready; swap so `self.inner` (ready) serves.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move { inner.call(req).await })
            }
            Err(status) => {
                tracing::debug!(status = %status.message(), "request refused: not authenticated");
                let response = status.into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}
