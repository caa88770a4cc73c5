//! Connections to upstream endpoints: per cluster, the proxy's own pool of HTTP/1.1 connections
//! ([`crate::pool`]), or hyper's pools for connections that may speak HTTP/2; a connector that
//! measures connect time, holds the cluster's `max_connections` limit and, for a mesh cluster,
//! speaks mutual TLS checking the endpoint's SPIFFE ID (HTTP/2 when the endpoint offers it).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{Request, Response, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::net::TcpStream;
use tower::Service as _;

use crate::body::UpstreamBody;
use crate::cluster::Endpoint;
use crate::config::UpstreamProtocol;
use crate::fields::AddedFields;
use crate::pool::{ConnectionBody, Http1Connection, IDLE_PER_ENDPOINT, IDLE_TIMEOUT};

/// The largest HTTP/2 frame a peer may send (both ends): a bulk transfer moves in fewer frames
/// and writes than with the 16 KiB default.
pub const H2_MAX_FRAME: u32 = 256 * 1024;
/// HTTP/2 receive windows (both ends) follow the measured bandwidth-delay product (hyper's
/// adaptive window, up to 16 MiB) instead of a fixed size: a hop across regions grows its window
/// to keep the link full, while a hop on one machine or LAN keeps little data in flight, so the
/// bytes a proxy forwards are still in its CPU cache (about 8% less CPU per GiB on an mTLS bulk
/// hop in `bench/mesh-hop.sh` than fixed 4 / 8 MiB windows).
pub const H2_ADAPTIVE_WINDOW: bool = true;

/// A pool of connections (hyper's), keyed by the request URI's scheme and authority.
type Pool = Client<ClusterConnector, UpstreamBody>;

/// Why a request to an endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection to the endpoint could be opened (the cause says why, e.g.
    /// [`ConnectionLimitReached`]).
    #[error("connecting to the endpoint failed")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The request or its response failed on the connection.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// A request through hyper's pools failed.
    #[error(transparent)]
    Pooled(#[from] hyper_util::client::legacy::Error),
    /// Writing the request or reading the response head failed on the connection.
    #[error("upstream connection: {0}")]
    Io(#[source] io::Error),
    /// The response head broke HTTP/1.1.
    #[error(transparent)]
    Protocol(#[from] crate::h1::Error),
}

impl SendError {
    /// Whether no connection could be made (so nothing was sent).
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Connect(_) => true,
            SendError::Http(_) | SendError::Io(_) | SendError::Protocol(_) => false,
            SendError::Pooled(e) => e.is_connect(),
        }
    }
}

/// The connections to one cluster's endpoints. Connections that may speak HTTP/2
/// (`protocol: http2`, or a mesh hop that negotiates it) carry the authority the client asked
/// for in `:authority` (RFC 9113 §8.3.1), and hyper's pool keys connections by it: each
/// endpoint has a pool per authority (normalised by the request path: lower case, no port), at
/// most [`AUTHORITIES_PER_ENDPOINT`] of them, made when first used. HTTP/1.1 connections name
/// it in `Host` only: each endpoint keeps its idle ones ([`Endpoint::idle`]), whatever the
/// authority.
#[derive(Clone)]
pub struct HttpClient(Pools);

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per_endpoint = matches!(self.0, Pools::PerEndpoint(_));
        f.debug_struct("HttpClient")
            .field("per_endpoint", &per_endpoint)
            .finish_non_exhaustive()
    }
}

/// Most authorities an endpoint has a pool (so at least one HTTP/2 connection) for: a request
/// for one more replaces the pool least recently used, whose connections close once their
/// requests are done. Many hosts of one wildcard domain thus open no more connections than
/// this per endpoint.
const AUTHORITIES_PER_ENDPOINT: usize = 16;

#[derive(Clone)]
enum Pools {
    /// The proxy's own HTTP/1.1 connections, kept per endpoint; this opens them.
    Http1(ClusterConnector),
    /// Pools per endpoint and authority (connections that may speak HTTP/2).
    PerEndpoint(Arc<EndpointPools>),
}

/// A pool of one endpoint for one authority, with when it was last used (seconds since
/// [`EndpointPools::epoch`]).
struct AuthorityPool {
    pool: Pool,
    last_used: AtomicU64,
}

/// Pools by endpoint and authority, read without a lock; the lock is taken only to add one.
struct EndpointPools {
    builder: hyper_util::client::legacy::Builder,
    connector: ClusterConnector,
    pools: arc_swap::ArcSwap<HashMap<SocketAddr, HashMap<Authority, Arc<AuthorityPool>>>>,
    adding: std::sync::Mutex<()>,
    /// What `last_used` counts from.
    epoch: Instant,
}

impl HttpClient {
    /// Whether requests carry the client's authority in their URI (see
    /// [`HttpClient::uri_authority`]).
    pub fn sends_authority(&self) -> bool {
        matches!(self.0, Pools::PerEndpoint(_))
    }

    /// The authority the URI of a request to `endpoint` names: the `client`'s where it is
    /// sent on (per-endpoint pools), the endpoint's where the client did not name one; `None`
    /// for HTTP/1.1 connections, whose requests are in origin form (the client's authority
    /// travels in Host).
    pub fn uri_authority<'a>(
        &self,
        endpoint: &'a Endpoint,
        client: Option<&'a Authority>,
    ) -> Option<&'a Authority> {
        match &self.0 {
            Pools::Http1(_) => None,
            Pools::PerEndpoint(_) => Some(client.unwrap_or(&endpoint.authority)),
        }
    }

    /// Sends `request`, whose URI names [`HttpClient::uri_authority`], with the `added` fields
    /// to `endpoint`; the response has its end-to-end fields only (RFC 9110 §7.6.1).
    pub async fn request(
        &self,
        endpoint: &Endpoint,
        mut request: Request<UpstreamBody>,
        added: &AddedFields,
    ) -> Result<Response<ConnectionBody>, SendError> {
        match &self.0 {
            Pools::PerEndpoint(pools) => {
                added.merge_into(request.headers_mut());
                let authority = request.uri().authority().unwrap_or(&endpoint.authority);
                let response = pools
                    .request(endpoint.addr, authority.clone(), request)
                    .await?;
                Ok(crate::pool::end_to_end(response).map(ConnectionBody::detached))
            }
            Pools::Http1(connector) => {
                crate::pool::ensure_host(&mut request, added, &endpoint.authority);
                let connect = || connector.connect_http1(endpoint);
                // Boxed: the request's future (and the task of an HTTP/2 stream, moved when
                // spawned) stays small, whatever the size of a connection's state.
                Box::pin(crate::pool::send(&endpoint.idle, connect, request, added)).await
            }
        }
    }

    /// Closes the idle connections to `endpoint` (for one leaving the cluster: its connections
    /// in use close when their requests are done, as the endpoint is dropped then).
    pub fn close_idle(&self, endpoint: &Endpoint) {
        endpoint.idle.close_all();
        if let Pools::PerEndpoint(pools) = &self.0 {
            pools.remove(endpoint.addr);
        }
    }
}

impl EndpointPools {
    /// Sends `request` through the pool of `endpoint` for `authority`, made if it has none.
    fn request(
        &self,
        endpoint: SocketAddr,
        authority: Authority,
        request: Request<UpstreamBody>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        let now = self.epoch.elapsed().as_secs();
        let pools = self.pools.load();
        if let Some(found) = pools.get(&endpoint).and_then(|p| p.get(&authority)) {
            // Most requests fall in a second already recorded: no shared write for them.
            if found.last_used.load(Ordering::Relaxed) != now {
                found.last_used.store(now, Ordering::Relaxed);
            }
            return found.pool.request(request);
        }
        drop(pools);
        self.add(endpoint, authority, now).pool.request(request)
    }

    /// Drops the pools of `endpoint`: their idle connections close, those in use once done.
    fn remove(&self, endpoint: SocketAddr) {
        let _adding = self
            .adding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.pools.load();
        if current.contains_key(&endpoint) {
            let mut pools = HashMap::clone(&current);
            pools.remove(&endpoint);
            self.pools.store(Arc::new(pools));
        }
    }

    /// The pool of `endpoint` for `authority`, made if it has none (replacing the least
    /// recently used one of the endpoint when it has [`AUTHORITIES_PER_ENDPOINT`]).
    fn add(&self, endpoint: SocketAddr, authority: Authority, now: u64) -> Arc<AuthorityPool> {
        let _adding = self
            .adding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.pools.load();
        if let Some(found) = current.get(&endpoint).and_then(|p| p.get(&authority)) {
            return found.clone();
        }
        // Pools unused for longer than a connection stays idle hold no connection: they go.
        let stale = now.saturating_sub(IDLE_TIMEOUT.as_secs());
        let mut pools: HashMap<_, HashMap<_, _>> = current
            .iter()
            .map(|(addr, by_authority)| {
                let fresh = by_authority
                    .iter()
                    .filter(|(_, p)| p.last_used.load(Ordering::Relaxed) >= stale)
                    .map(|(authority, p)| (authority.clone(), p.clone()))
                    .collect();
                (*addr, fresh)
            })
            .filter(|(_, by_authority): &(_, HashMap<_, _>)| !by_authority.is_empty())
            .collect();
        let by_authority = pools.entry(endpoint).or_default();
        if by_authority.len() >= AUTHORITIES_PER_ENDPOINT {
            let oldest = by_authority
                .iter()
                .min_by_key(|(_, p)| p.last_used.load(Ordering::Relaxed))
                .map(|(authority, _)| authority.clone());
            if let Some(oldest) = oldest {
                by_authority.remove(&oldest);
            }
        }
        let mut connector = self.connector.clone();
        connector.target = Some(endpoint);
        let added = Arc::new(AuthorityPool {
            pool: self.builder.build(connector),
            last_used: AtomicU64::new(now),
        });
        by_authority.insert(authority, added.clone());
        self.pools.store(Arc::new(pools));
        added
    }
}

/// The error a connection attempt fails with when the cluster is at `max_connections`.
#[derive(Debug, thiserror::Error)]
#[error("the cluster has reached its max_connections limit")]
pub struct ConnectionLimitReached;

impl ClusterConnector {
    /// Opens an HTTP/1.1 connection to `endpoint`.
    async fn connect_http1(&self, endpoint: &Endpoint) -> Result<Http1Connection, SendError> {
        let uri = Uri::builder()
            .scheme("http")
            .authority(endpoint.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| SendError::Connect(e.into()))?;
        let stream = self.clone().call(uri).await.map_err(SendError::Connect)?;
        Ok(Http1Connection::new(stream))
    }
}

/// A cluster's client with the handle to its connection limit.
#[derive(Clone)]
pub struct UpstreamClient {
    /// The pooled client.
    pub client: HttpClient,
    max: Arc<AtomicI64>,
}

impl UpstreamClient {
    /// Sets the cluster's connection limit (applied to new connections).
    pub fn set_max_connections(&self, max: u32) {
        self.max.store(i64::from(max), Ordering::Relaxed);
    }
}

/// Opens TCP connections for one cluster, counting them against its limit.
#[derive(Clone)]
pub struct ClusterConnector {
    inner: HttpConnector,
    /// Mutual TLS to the endpoints (mesh clusters).
    tls: Option<tokio_rustls::TlsConnector>,
    open: Gauge,
    max: Arc<AtomicI64>,
    connect_seconds: Histogram,
    /// The endpoint every connection goes to, whatever the request names (per-endpoint pools).
    target: Option<SocketAddr>,
}

type Connecting = Pin<
    Box<
        dyn Future<Output = Result<CountedStream, Box<dyn std::error::Error + Send + Sync>>> + Send,
    >,
>;

impl tower::Service<Uri> for ClusterConnector {
    type Response = CountedStream;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        if self.open.inc() >= self.max.load(Ordering::Relaxed) {
            self.open.dec();
            return Box::pin(std::future::ready(Err(ConnectionLimitReached.into())));
        }
        let uri = match self.target {
            Some(target) => Uri::try_from(format!("http://{target}")).unwrap_or(uri),
            None => uri,
        };
        let connecting = self.inner.call(uri);
        let (open, histogram) = (self.open.clone(), self.connect_seconds.clone());
        let tls = self.tls.clone();
        let started = Instant::now();
        Box::pin(async move {
            let connected = async {
                let tcp = connecting.await?.into_inner();
                let Some(tls) = tls else {
                    return Ok::<_, Box<dyn std::error::Error + Send + Sync>>((
                        Transport::Plain(tcp),
                        false,
                    ));
                };
                let buffered = tokio::io::BufReader::with_capacity(TLS_READ_BUFFER, tcp);
                let mut stream = tls
                    .connect(meridian_identity::mesh_server_name(), buffered)
                    .await?;
                stream
                    .get_mut()
                    .1
                    .set_buffer_limit(Some(crate::tls::MESH_SEND_BUFFER));
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                Ok((Transport::Tls(Box::new(stream)), h2))
            };
            match connected.await {
                Ok((transport, h2)) => {
                    histogram.observe(started.elapsed().as_secs_f64());
                    Ok(CountedStream {
                        inner: TokioIo::new(transport),
                        h2,
                        open,
                    })
                }
                Err(e) => {
                    open.dec();
                    Err(e)
                }
            }
        })
    }
}

/// Bytes read from the socket at once under TLS: rustls asks for at most 4 KiB per read, and
/// each read syscall costs more than copying the bytes out of this buffer.
const TLS_READ_BUFFER: usize = 64 * 1024;

/// A connection to an endpoint: plain TCP, or mutual TLS on a mesh cluster.
pub enum Transport {
    /// Cleartext.
    Plain(TcpStream),
    /// Mutual TLS.
    Tls(Box<tokio_rustls::client::TlsStream<tokio::io::BufReader<TcpStream>>>),
}

impl tokio::io::AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// An upstream connection that leaves the cluster's count when dropped.
pub struct CountedStream {
    inner: TokioIo<Transport>,
    /// Whether TLS negotiated HTTP/2.
    h2: bool,
    open: Gauge,
}

impl CountedStream {
    /// The connection itself, for the lean HTTP/1.1 exchange ([`crate::pool`]).
    pub(crate) fn transport(&mut self) -> &mut Transport {
        self.inner.inner_mut()
    }
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl Connection for CountedStream {
    fn connected(&self) -> Connected {
        if self.h2 {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl hyper::rt::Read for CountedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for CountedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
}

/// A client for a cluster speaking `protocol`, connecting within `connect_timeout` (and with
/// mutual TLS when `tls` is given); `open` and `connect_seconds` are the cluster's metric handles.
pub fn client(
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    max_connections: u32,
    open: Gauge,
    connect_seconds: Histogram,
) -> UpstreamClient {
    let mut inner = HttpConnector::new();
    inner.set_nodelay(true);
    inner.set_connect_timeout(Some(connect_timeout));
    let max = Arc::new(AtomicI64::new(i64::from(max_connections)));
    let connector = ClusterConnector {
        inner,
        tls: tls.map(tokio_rustls::TlsConnector::from),
        open,
        max: max.clone(),
        connect_seconds,
        target: None,
    };
    let may_speak_h2 = protocol == UpstreamProtocol::Http2 || connector.tls.is_some();
    if !may_speak_h2 {
        return UpstreamClient {
            client: HttpClient(Pools::Http1(connector)),
            max,
        };
    }
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_max_idle_per_host(IDLE_PER_ENDPOINT)
        .http2_only(protocol == UpstreamProtocol::Http2)
        .http2_max_frame_size(H2_MAX_FRAME)
        .http2_adaptive_window(H2_ADAPTIVE_WINDOW);
    let pools = Pools::PerEndpoint(Arc::new(EndpointPools {
        builder,
        connector,
        pools: Default::default(),
        adding: Default::default(),
        epoch: Instant::now(),
    }));
    UpstreamClient {
        client: HttpClient(pools),
        max,
    }
}

/// A plain HTTP/1.1 client with a 1 s connect timeout and room for 1024 connections (tests).
#[cfg(test)]
pub(crate) fn test_client() -> HttpClient {
    client(
        UpstreamProtocol::Http1,
        Duration::from_secs(1),
        None,
        1024,
        Gauge::default(),
        Histogram::new([1.0]),
    )
    .client
}
