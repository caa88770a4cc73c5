//! The ADS gRPC service over the cache, and a function that serves it on a listener.

use std::future::Future;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::service::Routes;
use tonic::transport::server::Connected;

use crate::cache::Cache;
use crate::metrics::XdsMetrics;
use crate::service::AdsService;

/// Connections the kernel queues for an xDS listener before it accepts them (capped by
/// `net.core.somaxconn`). Every proxy of a region reconnects at once when its control plane
/// restarts; with tokio's default of 1,024, a thousand clients connecting while the server was
/// busy overflowed the queue and some were reset (bench/xds-convergence.sh).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener for xDS on `address`, with room queued for a region's worth of
/// proxies connecting at once.
pub fn listen(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Explicit limits on what one client may cost the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request message accepted, in bytes.
    pub max_request_bytes: usize,
    /// Largest response message sent, in bytes.
    pub max_response_bytes: usize,
    /// Most concurrent streams on one HTTP/2 connection.
    pub max_streams_per_connection: u32,
    /// Most names one stream may subscribe to per type.
    pub max_names_per_type: usize,
    /// Responses queued for a client that reads slowly; beyond this the stream waits, and changes
    /// meanwhile collapse into one response per type.
    pub queued_responses: usize,
    /// How long a stream waits after a change before it pushes, so that changes close together
    /// go out in one response. Zero (the default) pushes at once; bench/xds-convergence.sh
    /// measures whether a window lowers the total time of a burst.
    pub coalesce: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 4 << 20,
            max_response_bytes: 64 << 20,
            max_streams_per_connection: 16,
            max_names_per_type: 100_000,
            queued_responses: 4,
            coalesce: std::time::Duration::ZERO,
        }
    }
}

/// The ADS service: state of the world and delta over one [`Cache`].
#[derive(Clone)]
pub struct AdsServer {
    cache: Arc<Cache>,
    metrics: XdsMetrics,
    limits: Limits,
    /// Becomes true when the server shuts down: open streams end then.
    closing: Arc<watch::Sender<bool>>,
    /// When set, streams are answered only once it is true (see [`AdsServer::answering_when`]).
    ready: Option<watch::Receiver<bool>>,
}

/// What a new stream needs from its server.
pub(crate) struct StreamParts<'a> {
    /// The cache it serves.
    pub cache: &'a Arc<Cache>,
    /// Shared metrics.
    pub metrics: XdsMetrics,
    /// Limits on what a client may ask.
    pub limits: Limits,
    /// Becomes true when the server shuts down.
    pub closing: watch::Receiver<bool>,
    /// When set, the stream answers nothing until it is true.
    pub ready: Option<watch::Receiver<bool>>,
}

impl AdsServer {
    /// A service over `cache`, counting in `metrics`.
    pub fn new(cache: Arc<Cache>, metrics: XdsMetrics, limits: Limits) -> AdsServer {
        AdsServer {
            cache,
            metrics,
            limits,
            closing: Arc::new(watch::Sender::new(false)),
            ready: None,
        }
    }

    /// This server, answering no stream until `ready` is true: streams are accepted and their
    /// requests read, and they are answered once it is. For a cache that whoever feeds it loads
    /// at start: before the first load is in, a client resuming with what it holds would be told
    /// that what the cache lacks is gone (delta), or be sent less than everything (state of
    /// the world). If `ready`'s sender goes away before it is true, waiting streams end.
    pub fn answering_when(mut self, ready: watch::Receiver<bool>) -> AdsServer {
        self.ready = Some(ready);
        self
    }

    /// The tonic service, with the message size limits applied.
    pub fn into_service(self) -> AdsService {
        AdsService::new(self)
    }

    /// The limits this server applies.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// What a new stream needs: the cache, metrics, limits, the shutdown signal and the
    /// readiness it waits for.
    pub(crate) fn parts(&self) -> StreamParts<'_> {
        StreamParts {
            cache: &self.cache,
            metrics: self.metrics.clone(),
            limits: self.limits,
            closing: self.closing.subscribe(),
            ready: self.ready.clone(),
        }
    }

    /// Serves ADS over gRPC (HTTP/2 cleartext) on `listener` until `shutdown` completes; then
    /// every open stream ends (clients reconnect elsewhere or later). Nodes are scoped by what
    /// they declare: nothing is authenticated.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let routes = Routes::new(self.clone().into_service());
        let incoming = TcpListenerStream::new(listener).map(|conn| {
            let conn = conn?;
            conn.set_nodelay(true)?;
            Ok::<_, std::io::Error>(conn)
        });
        self.serve_routes(routes, incoming, shutdown).await
    }

    /// Serves `routes` on the connections of `incoming` until `shutdown` completes, with this
    /// server's limits on streams; then every open ADS stream ends. `routes` holds this server's
    /// [`AdsService`] (e.g. behind authentication that sets each request's [`crate::Grant`])
    /// and may hold other HTTP routes (HTTP/1.1 is accepted for them).
    pub async fn serve_routes<I, IO, IE>(
        self,
        routes: Routes,
        incoming: I,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error>
    where
        I: Stream<Item = Result<IO, IE>>,
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let max_streams = self.limits.max_streams_per_connection;
        let closing = self.closing.clone();
        let shutdown = async move {
            shutdown.await;
            closing.send_replace(true);
        };
        tonic::transport::Server::builder()
            .max_concurrent_streams(max_streams)
            .accept_http1(true)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
    }
}
