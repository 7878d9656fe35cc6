//! Idle connections: a server connection that has had no call in flight for the idle timeout
//! is closed (like gRPC's `MAX_CONNECTION_IDLE`). HTTP/2 pings do not count as activity, so a
//! client cannot hold a connection open by pinging.
//!
//! [`track`] wraps the accepted connections; the returned [`IdleLayer`] (a tower layer for the
//! tonic server) counts each connection's calls in flight, from the request until the end of
//! the response body. The two meet through the connection's remote address.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// Data just read defers an idle close by this long (a request whose bytes arrived is not yet
/// counted as in flight until the server dispatches it).
const READ_GRACE: Duration = Duration::from_secs(1);

/// Connection info that knows the peer's address.
pub trait RemoteAddr {
    fn remote(&self) -> Option<SocketAddr>;
}

impl RemoteAddr for TcpConnectInfo {
    fn remote(&self) -> Option<SocketAddr> {
        self.remote_addr()
    }
}

impl RemoteAddr for halo_identity::PeerInfo {
    fn remote(&self) -> Option<SocketAddr> {
        self.remote_addr()
    }
}

impl<T: RemoteAddr> RemoteAddr for TlsConnectInfo<T> {
    fn remote(&self) -> Option<SocketAddr> {
        self.get_ref().remote()
    }
}

#[derive(Debug)]
struct ConnState {
    active: AtomicUsize,
    /// When the last call ended (or the connection was accepted).
    idle_since: Mutex<Instant>,
}

impl ConnState {
    fn idle_since(&self) -> Instant {
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type Registry = Arc<Mutex<HashMap<SocketAddr, Arc<ConnState>>>>;

/// Wraps a stream of accepted connections so that each is closed after `idle` without a call
/// in flight; serve it with the returned layer installed (`Server::builder().layer(..)`).
pub fn track<S, IO, E>(
    incoming: S,
    idle: Duration,
) -> (
    impl Stream<Item = Result<Tracked<IO>, E>> + Send + 'static,
    IdleLayer,
)
where
    S: Stream<Item = Result<IO, E>> + Send + 'static,
    IO: Connected + Send + 'static,
    IO::ConnectInfo: RemoteAddr,
    E: Send + 'static,
{
    let registry: Registry = Arc::default();
    let layer = IdleLayer {
        registry: registry.clone(),
    };
    let stream = incoming.map(move |io| {
        io.map(|io| {
            let addr = io.connect_info().remote();
            let now = Instant::now();
            let state = Arc::new(ConnState {
                active: AtomicUsize::new(0),
                idle_since: Mutex::new(now),
            });
            if let Some(addr) = addr {
                registry
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(addr, state.clone());
            }
            Tracked {
                io,
                state,
                addr,
                registry: registry.clone(),
                idle,
                last_read: now,
                timer: Box::pin(tokio::time::sleep_until(now + idle)),
            }
        })
    });
    (stream, layer)
}

/// An accepted connection under idle tracking.
pub struct Tracked<IO> {
    io: IO,
    state: Arc<ConnState>,
    addr: Option<SocketAddr>,
    registry: Registry,
    idle: Duration,
    last_read: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<IO> Tracked<IO> {
    /// Ready(Err) once the connection has been idle too long; otherwise arms the timer.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            let deadline = if self.state.active.load(Ordering::SeqCst) > 0 {
                now + self.idle
            } else {
                (self.state.idle_since() + self.idle).max(self.last_read + READ_GRACE)
            };
            if deadline <= now {
                tracing::debug!(peer = ?self.addr, "closing idle connection");
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle for too long",
                )));
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl<IO> Drop for Tracked<IO> {
    fn drop(&mut self) {
        if let Some(addr) = self.addr {
            let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            if registry
                .get(&addr)
                .is_some_and(|s| Arc::ptr_eq(s, &self.state))
            {
                registry.remove(&addr);
            }
        }
    }
}

impl<IO: Connected> Connected for Tracked<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => this.poll_idle(cx),
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.last_read = Instant::now();
                }
                Poll::Ready(r)
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Counts calls in flight per connection (see the module documentation).
#[derive(Clone, Debug)]
pub struct IdleLayer {
    registry: Registry,
}

impl<S> tower_layer::Layer<S> for IdleLayer {
    type Service = IdleService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdleService {
            inner,
            registry: self.registry.clone(),
        }
    }
}

/// The service of [`IdleLayer`].
#[derive(Clone, Debug)]
pub struct IdleService<S> {
    inner: S,
    registry: Registry,
}

/// A call in flight; dropping it (end of the response body) may start the idle clock.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn start(state: Arc<ConnState>) -> Self {
        state.active.fetch_add(1, Ordering::SeqCst);
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Update the clock first so a timer that sees zero calls also sees the new start.
        *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn remote_of<B>(req: &http::Request<B>) -> Option<SocketAddr> {
    let ext = req.extensions();
    ext.get::<halo_identity::PeerInfo>()
        .and_then(RemoteAddr::remote)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(RemoteAddr::remote)
        })
        .or_else(|| ext.get::<TcpConnectInfo>().and_then(RemoteAddr::remote))
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for IdleService<S>
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

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let state = remote_of(&req).and_then(|addr| {
            self.registry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&addr)
                .cloned()
        });
        let guard = state.map(InFlight::start);
        // The clone is ready only after poll_ready; swap so `self.inner` (ready) serves.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(req).await?;
            Ok(match guard {
                Some(guard) => response.map(|body| {
                    tonic::body::Body::new(GuardedBody {
                        inner: body,
                        _guard: guard,
                    })
                }),
                None => response,
            })
        })
    }
}

/// A response body that keeps its call counted until it ends or is dropped.
struct GuardedBody {
    inner: tonic::body::Body,
    _guard: InFlight,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (server, client)
    }

    fn tracked(io: TcpStream, idle: Duration) -> (Tracked<TcpStream>, IdleLayer) {
        let (stream, layer) = track(tokio_stream::iter(vec![Ok::<_, io::Error>(io)]), idle);
        let mut stream = Box::pin(stream);
        let t = futures::executor::block_on(stream.next()).unwrap().unwrap();
        (t, layer)
    }

    #[tokio::test]
    async fn idle_connection_read_fails_after_timeout() {
        let (server, _client) = pair().await;
        let (mut t, _layer) = tracked(server, Duration::from_millis(300));
        let mut buf = [0u8; 8];
        let err = t.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn call_in_flight_keeps_connection_open() {
        let (server, mut client) = pair().await;
        let (mut t, layer) = tracked(server, Duration::from_millis(300));
        let state = layer
            .registry
            .lock()
            .unwrap()
            .values()
            .next()
            .cloned()
            .unwrap();
        let guard = InFlight::start(state);
        let mut buf = [0u8; 8];
        // Several idle timeouts pass with a call in flight: still open.
        let r = tokio::time::timeout(Duration::from_millis(1500), t.read(&mut buf)).await;
        assert!(r.is_err(), "read must still be pending: {r:?}");
        client.write_all(b"x").await.unwrap();
        assert_eq!(t.read(&mut buf).await.unwrap(), 1);
        drop(guard);
        let err = t.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(t);
        assert!(layer.registry.lock().unwrap().is_empty());
    }
}
