//! Listeners: accept loops and per-connection HTTP/1.1 + HTTP/2 (h2c) serving, with the limits
//! of the current configuration (the HTTP server itself is [`crate::http_server`]'s); a TLS
//! listener's HTTP/3 side is [`crate::http3`]'s.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::body::ClientBody;
use crate::cluster::Cluster;
use crate::coalesce::Coalesced;
use crate::config::{Limits, TrustForwarded};
use crate::forward;
use crate::handshakes::HandshakeSlots;
use crate::http3::{QuicListener, QuicSocket};
use crate::http_server::{self, Protocol};
use crate::idle::{Activity, Tracked, Watched};
use crate::mesh::MeshPolicy;
use crate::metrics::ProxyMetrics;
use crate::relay;
use crate::routing::RouteTable;

/// What every listener shares: metrics and the client limits of the current config.
pub struct Shared {
    /// The proxy's metrics.
    pub metrics: Arc<ProxyMetrics>,
    /// Limits on clients, swapped with the config.
    pub limits: ArcSwap<Limits>,
    /// Whether and where requests are logged, swapped with the config.
    pub access_log: crate::access_log::AccessLogSwitch,
    /// Open client connections, for draining.
    pub open: OpenConnections,
    /// The ACME HTTP-01 challenges plain-HTTP listeners answer, if the proxy was given any.
    pub http01: std::sync::OnceLock<Arc<dyn crate::acme::Http01Answers>>,
    /// Where the spans of traced requests go, once the component turned tracing on.
    pub(crate) tracer: std::sync::OnceLock<Arc<crate::trace::Tracer>>,
    /// The wake gates of the instances that sleep (node proxies).
    pub gates: crate::wake::WakeGates,
}

/// Client connections open on all listeners, and the signal that asks them to wind down.
#[derive(Default)]
pub struct OpenConnections {
    count: std::sync::atomic::AtomicUsize,
    closed: tokio::sync::Notify,
    draining: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    /// Counts a connection (or a tunnel, or a relayed stream) as open until the guard is dropped,
    /// so that draining waits for it.
    pub fn open_connection(self: &Arc<Self>) -> OpenGuard {
        self.open
            .count
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        OpenGuard(self.clone())
    }
}

impl OpenConnections {
    /// Asks every connection to finish its requests in flight and close; resolves when all
    /// have closed or `timeout` has passed, and returns how many were still open.
    pub async fn drain(&self, timeout: Duration) -> usize {
        self.draining.send_replace(true);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            let open = self.count.load(std::sync::atomic::Ordering::SeqCst);
            if open == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                return open;
            }
        }
    }

    /// Resolves once draining has begun.
    pub(crate) async fn drain_requested(&self) {
        let mut draining = self.draining.subscribe();
        let _ = draining.wait_for(|d| *d).await;
    }
}

/// An open connection, counted until dropped.
pub struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let open = &self.0.open;
        open.count.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        open.closed.notify_waiters();
    }
}

/// What a listener's connections need: its routes (swapped on reload) and its metric handles.
pub struct ListenerContext {
    /// The listener's name.
    pub name: String,
    /// The current route table (`http` listeners).
    pub table: ArcSwap<RouteTable>,
    /// The cluster connections are relayed to (`tcp` listeners).
    pub relay: ArcSwapOption<Cluster>,
    /// The wake gate of the instance the listener serves, if it sleeps.
    pub gate: ArcSwapOption<crate::wake::WakeGate>,
    /// The TLS acceptor, when the listener terminates TLS.
    pub tls: ArcSwapOption<TlsAcceptor>,
    /// The authorization policy, when it is a mesh listener.
    pub mesh: ArcSwapOption<MeshPolicy>,
    /// The only addresses connections are served from (empty: any).
    pub sources: ArcSwap<Vec<IpAddr>>,
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Requests that matched no route.
    pub no_route: Counter,
    /// Mesh calls denied.
    pub denied: Counter,
    /// Connections relayed to an endpoint (`tcp` listeners).
    pub(crate) relayed_connections: Counter,
    /// Whose forwarding headers are kept.
    pub trust: SharedTrust,
    /// Requests answered 408 because the client did not send its body in time.
    pub body_timeouts: Counter,
    /// Connections closed because of their source address.
    refused: Counter,
    /// Open client connections.
    pub(crate) connections: Gauge,
    /// Requests received, by protocol ([`crate::metrics::CLIENT_PROTOCOLS`]).
    requests: [Counter; 3],
    /// The `Alt-Svc` header of TCP answers, while the listener serves HTTP/3.
    alt_svc: ArcSwapOption<HeaderValue>,
    /// Most connections open at once, and how many are (from accept to close).
    max_connections: AtomicUsize,
    open: AtomicUsize,
    /// Connections closed at once because `max_connections` were open.
    overloaded: Counter,
    /// TLS handshakes in progress by client address.
    handshakes: Arc<HandshakeSlots>,
    /// TLS connections closed at once because their address had its handshakes in progress.
    handshakes_refused: Counter,
    /// Connections closed because a response waited `send_timeout` for the client.
    send_timeouts: Counter,
    /// Its connections, wound down once a reload removes it.
    pub retirement: Arc<crate::retire::Retirement>,
}

/// A listener's [`TrustForwarded`], read by every request and swapped on reload without a
/// reference count to take.
pub struct SharedTrust(AtomicU8);

impl SharedTrust {
    /// Holding `trust`.
    pub fn new(trust: TrustForwarded) -> SharedTrust {
        SharedTrust(AtomicU8::new(trust as u8))
    }

    /// The current setting.
    pub fn load(&self) -> TrustForwarded {
        match self.0.load(Ordering::Relaxed) {
            x if x == TrustForwarded::None as u8 => TrustForwarded::None,
            x if x == TrustForwarded::All as u8 => TrustForwarded::All,
            _ => TrustForwarded::Mesh,
        }
    }

    /// Replaces the setting.
    pub fn store(&self, trust: TrustForwarded) {
        self.0.store(trust as u8, Ordering::Relaxed);
    }
}

/// A bound listener. Dropping it stops accepting; open connections carry on.
pub struct Listener {
    /// Its context (route table and metrics).
    pub context: Arc<ListenerContext>,
    /// The address it is bound to.
    pub bound: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    accept: JoinHandle<TcpListener>,
    /// The HTTP/3 side, while the listener serves it.
    quic: Option<QuicListener>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// How a listener serves its connections; swapped as a whole on reload.
pub struct Serving {
    /// Routes (`http` listeners).
    pub table: RouteTable,
    /// The cluster connections are relayed to (`tcp` listeners).
    pub relay: Option<Arc<Cluster>>,
    /// The TLS acceptor, if the listener terminates TLS.
    pub tls: Option<Arc<TlsAcceptor>>,
    /// The authorization policy of a mesh listener.
    pub mesh: Option<Arc<MeshPolicy>>,
    /// The only addresses connections are served from (empty: any).
    pub sources: Vec<IpAddr>,
    /// Most connections open at once.
    pub max_connections: u32,
    /// Whose forwarding headers are kept.
    pub trust: TrustForwarded,
    /// The QUIC configuration, when the listener also serves HTTP/3 (taken by the
    /// [`Listener`], not the context).
    pub quic: Option<quinn::ServerConfig>,
    /// The wake gate of the instance the listener serves, if it sleeps (`tcp` listeners hold
    /// their connections at it; `http` ones their requests, through their routes).
    pub gate: Option<Arc<crate::wake::WakeGate>>,
}

impl ListenerContext {
    /// Serves new connections and requests the new way.
    pub fn update(&self, serving: Serving) {
        self.table.store(Arc::new(serving.table));
        self.relay.store(serving.relay);
        self.gate.store(serving.gate);
        self.tls.store(serving.tls);
        self.mesh.store(serving.mesh);
        self.sources.store(Arc::new(serving.sources));
        self.trust.store(serving.trust);
        self.max_connections
            .store(serving.max_connections as usize, Ordering::Relaxed);
    }

    /// Whether connections from `ip` are served (`sources`).
    pub(crate) fn serves(&self, ip: IpAddr) -> bool {
        let sources = self.sources.load();
        let served = sources.is_empty() || sources.contains(&ip);
        if !served {
            self.refused.inc();
        }
        served
    }

    /// Counts a request of HTTP `version`.
    pub(crate) fn count_request(&self, version: http::Version) {
        let protocol = match version {
            http::Version::HTTP_2 => 1,
            http::Version::HTTP_3 => 2,
            _ => 0,
        };
        self.requests[protocol].inc();
    }

    /// A slot for a newly accepted connection, held until it closes; `None` when
    /// `max_connections` are open.
    pub(crate) fn connection_slot(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let max = self.max_connections.load(Ordering::Relaxed);
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            });
        match taken {
            Ok(_) => Some(ConnectionSlot(self.clone())),
            Err(_) => {
                self.overloaded.inc();
                None
            }
        }
    }
}

/// One of a listener's `max_connections`, given back when dropped.
pub(crate) struct ConnectionSlot(Arc<ListenerContext>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Listener {
    /// Binds `address` (and, for HTTP/3, UDP at the same address and port) and starts
    /// accepting.
    pub async fn bind(
        name: &str,
        address: SocketAddr,
        serving: Serving,
        shared: Arc<Shared>,
    ) -> std::io::Result<Listener> {
        let socket = TcpListener::bind(address).await?;
        let udp = match serving.quic {
            Some(_) => Some(QuicSocket::bind(socket.local_addr()?)?),
            None => None,
        };
        Listener::start(name, socket, udp, serving, shared)
    }

    /// Starts accepting on an already bound `socket`, and HTTP/3 on `udp` if `serving` has a
    /// QUIC configuration.
    pub fn start(
        name: &str,
        socket: TcpListener,
        udp: Option<QuicSocket>,
        mut serving: Serving,
        shared: Arc<Shared>,
    ) -> std::io::Result<Listener> {
        let bound = socket.local_addr()?;
        let quic = serving.quic.take();
        let context = Arc::new(ListenerContext {
            name: name.to_owned(),
            table: ArcSwap::from_pointee(serving.table),
            relay: ArcSwapOption::new(serving.relay),
            gate: ArcSwapOption::new(serving.gate),
            tls: ArcSwapOption::new(serving.tls),
            mesh: ArcSwapOption::new(serving.mesh),
            sources: ArcSwap::from_pointee(serving.sources),
            trust: SharedTrust::new(serving.trust),
            body_timeouts: shared.metrics.request_body_timeouts(name),
            max_connections: AtomicUsize::new(serving.max_connections as usize),
            open: AtomicUsize::new(0),
            overloaded: shared.metrics.overloaded_connections(name),
            handshakes: Arc::default(),
            handshakes_refused: shared.metrics.tls_handshakes_refused(name),
            send_timeouts: shared.metrics.send_timeouts(name),
            refused: shared.metrics.refused_connections(name),
            no_route: shared.metrics.no_route(name),
            requests: shared.metrics.client_requests(name),
            alt_svc: ArcSwapOption::empty(),
            denied: shared.metrics.mesh_denied(name),
            relayed_connections: shared.metrics.tcp_connections(name),
            connections: shared.metrics.connections(name),
            retirement: Arc::default(),
            shared,
        });
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let accept = tokio::spawn(accept_loop(socket, context.clone(), stopped));
        tracing::info!(listener = name, address = %bound, "listening");
        let mut listener = Listener {
            context,
            bound,
            stop: Some(stop),
            accept,
            quic: None,
        };
        listener.serve_http3(quic, udp);
        Ok(listener)
    }
}

impl Listener {
    /// Stops accepting and hands back the bound sockets (TCP, and UDP if it serves HTTP/3), so
    /// that a listener of the next config can take over its address without a gap. `None` if
    /// the accept loop had ended.
    pub async fn into_socket(mut self) -> Option<(TcpListener, Option<QuicSocket>)> {
        let udp = self.quic.take().and_then(QuicListener::into_socket);
        let stop = self.stop.take()?;
        let _ = stop.send(());
        let tcp = (&mut self.accept).await.ok()?;
        Some((tcp, udp))
    }

    /// Whether it serves HTTP/3.
    pub fn serves_http3(&self) -> bool {
        self.quic.is_some()
    }

    /// Serves new connections and requests the new way: HTTP/3 with `serving`'s QUIC
    /// configuration (on the UDP socket it has, or else on `udp`), or no longer.
    pub fn update(&mut self, mut serving: Serving, udp: Option<QuicSocket>) {
        let quic = serving.quic.take();
        self.context.update(serving);
        self.serve_http3(quic, udp);
    }

    /// Serves HTTP/3 with `config` (on the UDP socket it has, or else on `udp`), or stops
    /// serving it; `Alt-Svc` follows.
    fn serve_http3(&mut self, config: Option<quinn::ServerConfig>, udp: Option<QuicSocket>) {
        match (config, &self.quic) {
            (Some(config), Some(quic)) => quic.reconfigure(config),
            (Some(config), None) => {
                self.quic = udp.map(|udp| QuicListener::start(udp, config, self.context.clone()));
            }
            (None, _) => self.quic = None,
        }
        let alt_svc = self
            .quic
            .as_ref()
            .map(|_| Arc::new(crate::http3::alt_svc(self.bound.port())));
        self.context.alt_svc.store(alt_svc);
    }
}

/// Accepts until told to stop; returns the socket then.
async fn accept_loop(
    socket: TcpListener,
    context: Arc<ListenerContext>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> TcpListener {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stop => return socket,
            accepted = socket.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if !context.serves(peer.ip()) {
                    tracing::debug!(listener = %context.name, %peer, "connection from a source this listener does not serve");
                    continue;
                }
                let Some(slot) = context.connection_slot() else {
                    tracing::debug!(listener = %context.name, %peer, "closing a connection beyond max_connections");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let context = context.clone();
                // A task per kind of connection, each as large as its own future only: an idle
                // HTTP/2 client does not carry a relay's or a handshake's state.
                match (context.relay.load_full(), context.tls.load_full()) {
                    (Some(cluster), None) => {
                        let client = relay::Client::Plain(stream);
                        tokio::spawn(relay::connection(client, cluster, context, slot));
                    }
                    (Some(cluster), Some(acceptor)) => {
                        tokio::spawn(relay::mesh_connection(
                            stream, peer, acceptor, cluster, context, slot,
                        ));
                    }
                    (None, Some(acceptor)) => {
                        tokio::spawn(serve_tls(stream, peer, acceptor, context, slot));
                    }
                    (None, None) => {
                        let peer = crate::peer::Peer::new(peer, "http");
                        tokio::spawn(serve_plain(stream, peer, context, slot));
                    }
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %context.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Completes the TLS handshake, then serves HTTP on it. The handshake's state lives on the
/// heap until the handshake ends, so that the task serving an established connection is as
/// small as the HTTP serving needs (hyper's connection is on the heap too).
async fn serve_tls(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: Arc<TlsAcceptor>,
    context: Arc<ListenerContext>,
    slot: ConnectionSlot,
) {
    let Some(tls) = Box::pin(tls_handshake(stream, peer, acceptor, &context)).await else {
        return;
    };
    let protocol = Protocol::of_alpn(tls.0.get_ref().1.alpn_protocol());
    let peer = crate::peer::Peer::new(peer, "https").with_identity(tls.1);
    serve_connection(tls.0, protocol, peer, context, slot).await
}

/// Serves HTTP on a plaintext connection once its first bytes say which version it speaks
/// (within `header_read_timeout`; a drain or the listener's retirement meanwhile closes it).
async fn serve_plain(
    stream: tokio::net::TcpStream,
    peer: crate::peer::Peer,
    context: Arc<ListenerContext>,
    slot: ConnectionSlot,
) {
    let timeout = context.shared.limits.load().header_read_timeout.0;
    let protocol = tokio::select! {
        sniffed = tokio::time::timeout(timeout, http_server::sniff(&stream)) => match sniffed {
            Ok(Ok(protocol)) => protocol,
            Ok(Err(_)) | Err(_) => return,
        },
        () = context.shared.open.drain_requested() => return,
        () = context.retirement.retired() => return,
    };
    serve_connection(stream, protocol, peer, context, slot).await
}

/// A TLS connection that is to serve HTTP, with the SPIFFE ID of its client certificate.
pub(crate) type Established = (
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    Option<meridian_identity::SpiffeId>,
);

/// Completes the TLS handshake (within `tls_handshake_timeout`, as one of the client address's
/// `max_tls_handshakes_per_ip`); `None` when it failed or was an ACME validation (the
/// connection is then closed).
pub(crate) async fn tls_handshake(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: Arc<TlsAcceptor>,
    context: &ListenerContext,
) -> Option<Established> {
    let (timeout, per_ip) = {
        let limits = context.shared.limits.load();
        (
            limits.tls_handshake_timeout.0,
            limits.max_tls_handshakes_per_ip,
        )
    };
    let Some(slot) = context.handshakes.take(peer.ip(), per_ip) else {
        context.handshakes_refused.inc();
        tracing::debug!(listener = %context.name, %peer, "closing a connection beyond max_tls_handshakes_per_ip");
        return None;
    };
    let handshake = tokio::time::timeout(timeout, acceptor.accept(stream)).await;
    drop(slot);
    match handshake {
        Ok(Ok(mut tls)) => {
            if tls.get_ref().1.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) {
                // An ACME validation (RFC 8737): the handshake was the answer; no HTTP follows.
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                return None;
            }
            if context.mesh.load().is_some() {
                tls.get_mut()
                    .1
                    .set_buffer_limit(Some(crate::tls::MESH_SEND_BUFFER));
            }
            let identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(meridian_identity::peer_id);
            Some((tls, identity))
        }
        Ok(Err(e)) => {
            context.shared.metrics.tls_handshake_failed(&context.name);
            tracing::debug!(listener = %context.name, %peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_elapsed) => {
            context.shared.metrics.tls_handshake_failed(&context.name);
            tracing::debug!(listener = %context.name, %peer, "TLS handshake timed out");
            None
        }
    }
}

/// Serves HTTP/1.1 and HTTP/2 on `stream` until the client closes it, it idles or stalls, or
/// the proxy drains; `slot` is held until then. The connection is built before the returned
/// future and lives on the heap, so that the future, and the task awaiting it, hold neither a
/// second copy of `stream` nor HTTP/1.1 state beside HTTP/2 state for as long as it lasts.
fn serve_connection<S>(
    stream: S,
    protocol: Protocol,
    peer: crate::peer::Peer,
    context: Arc<ListenerContext>,
    slot: ConnectionSlot,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = context.shared.limits.load_full();
    let activity = Arc::new(Activity::default());
    let address = peer.addr;
    // Shared by the connection's requests: one reference count to take per request.
    let peer = Arc::new(peer);
    let service = {
        let context = context.clone();
        let activity = activity.clone();
        service_fn(move |request| {
            let context = context.clone();
            let peer = peer.clone();
            let in_flight = activity.request();
            // Boxed: hyper spawns a task per HTTP/2 stream around this future, moving it several
            // times on the way; a box moves as a pointer.
            Box::pin(async move {
                let request = request.map(ClientBody::Hyper);
                let mut response = forward::handle(request, context.clone(), &peer).await;
                if let Some(alt_svc) = context.alt_svc.load().as_deref() {
                    response
                        .headers_mut()
                        .insert(http::header::ALT_SVC, alt_svc.clone());
                }
                // In flight until the body has been sent: a quiet stream is not an idle connection.
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
            })
        })
    };
    // HTTP/2 answers of one round leave in one write (see `crate::coalesce`).
    let stream = Coalesced::new(stream, protocol == Protocol::Http2);
    let io = TokioIo::new(Watched::new(stream, activity.clone()));
    let mut connection = http_server::serve(protocol, io, service, &limits);
    async move {
        let _slot = slot;
        context.connections.inc();
        let _open = context.shared.open_connection();
        let _retiring = context.retirement.connection();
        let served = tokio::select! {
            served = connection.as_mut() => Some(served),
            () = activity.idle_for(limits.idle_timeout.0) => {
                tracing::debug!(listener = %context.name, peer = %address, "closing an idle connection");
                None
            }
            () = activity.stalled_for(limits.send_timeout.0) => {
                context.send_timeouts.inc();
                tracing::debug!(listener = %context.name, peer = %address, "closing a connection whose client takes no data");
                None
            }
            () = context.shared.open.drain_requested() => {
                // Finish what is in flight (HTTP/2: GOAWAY; HTTP/1.1: close after the response).
                connection.as_mut().graceful_shutdown();
                Some(connection.await)
            }
            () = context.retirement.retired() => {
                // The same, until the listener's drain is over.
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    served = connection.as_mut() => Some(served),
                    () = context.retirement.closing() => None,
                }
            }
        };
        if let Some(Err(e)) = served {
            tracing::debug!(listener = %context.name, peer = %address, error = %e, "connection ended with an error");
        }
        context.connections.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_trust_holds_each_setting() {
        let shared = SharedTrust::new(TrustForwarded::None);
        assert_eq!(shared.load(), TrustForwarded::None);
        for trust in [
            TrustForwarded::All,
            TrustForwarded::Mesh,
            TrustForwarded::None,
        ] {
            shared.store(trust);
            assert_eq!(shared.load(), trust);
        }
    }
}
