//! HTTP/3 (QUIC, RFC 9114) on TLS listeners: a UDP endpoint at the listener's address and port,
//! whose request streams become `http::Request`s for the same request path as HTTP/1.1 and
//! HTTP/2 ([`crate::forward::handle`]), and whose answers are written back as HTTP/3 frames. It
//! only adapts: routing, limits on bodies, metrics and the access log are the request path's.
//! This module owns the UDP socket and the connections; [`stream`] serves one request each;
//! [`checked`] follows the frames of request streams where h3 loses track of them.

mod checked;
mod stream;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Limits;
use crate::idle::Activity;
use crate::server::{ConnectionSlot, ListenerContext};

pub use stream::RequestBody;

/// The ALPN protocol of HTTP/3.
const ALPN: &[u8] = b"h3";

/// Flow-control windows of a client connection (bytes a client may send ahead of the proxy's
/// reading): per request stream, and for the whole connection, so that a client's unread
/// uploads cost at most the latter.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 8 << 20;

/// Unidirectional streams a client may have open: HTTP/3 needs three (control, QPACK encoder
/// and decoder); the rest leaves room for extension streams, which are read and dropped.
const UNI_STREAMS: u32 = 16;

/// Handshakes in progress on a listener above which a client must first prove that it receives
/// at its address (a QUIC Retry, one more round trip), so that a flood of Initial packets from
/// forged addresses cannot hold the listener's connection slots until they time out.
pub const HANDSHAKES_BEFORE_RETRY: usize = 64;

/// Why a QUIC server configuration cannot be made from a listener's TLS configuration.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve HTTP/3 with this TLS configuration: {0}")]
pub struct QuicConfigError(String);

/// The QUIC server configuration of a listener whose TCP side uses `tls`: the same certificate
/// source (certificate, resolver, session storage and tickets are shared), ALPN `h3` alone,
/// TLS 1.3 (all QUIC has), no 0-RTT (a replayed early request could act twice), and the
/// client limits of `limits` (streams per connection, idle timeout).
///
/// This is the one place where HTTP/3 gets its certificates: whatever `rustls::ServerConfig`
/// the TCP listener is given (files, or an in-process SNI resolver) is the one to pass here.
pub fn server_config(
    tls: &rustls::ServerConfig,
    limits: &Limits,
) -> Result<quinn::ServerConfig, QuicConfigError> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| QuicConfigError(e.to_string()))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(limits.max_concurrent_streams.into())
        .max_concurrent_uni_streams(UNI_STREAMS.into())
        .stream_receive_window(STREAM_WINDOW.into())
        .receive_window(CONNECTION_WINDOW.into())
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(limits.idle_timeout.0)
                .map_err(|e| QuicConfigError(format!("limits.idle_timeout: {e}")))?,
        ));
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The `Alt-Svc` value that advertises HTTP/3 on `port` for a day (RFC 7838).
pub fn alt_svc(port: u16) -> http::HeaderValue {
    http::HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400"))
        .unwrap_or(http::HeaderValue::from_static("clear"))
}

/// A bound UDP endpoint, serving nothing until started, and the signal on which its
/// connections wind down (GOAWAY): kept across reloads with the listener that owns it.
pub struct QuicSocket {
    endpoint: quinn::Endpoint,
    stop: watch::Sender<bool>,
}

impl QuicSocket {
    /// Binds UDP at `address`, the bound address of the listener's TCP socket.
    pub fn bind(address: SocketAddr) -> std::io::Result<QuicSocket> {
        let socket = std::net::UdpSocket::bind(address)?;
        socket.set_nonblocking(true)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        Ok(QuicSocket {
            endpoint,
            stop: watch::Sender::new(false),
        })
    }
}

impl Drop for QuicSocket {
    /// New connections are refused; open ones are asked to finish their requests and close
    /// (GOAWAY), after which the UDP port is free.
    fn drop(&mut self) {
        self.endpoint.set_server_config(None);
        self.stop.send_replace(true);
    }
}

/// The HTTP/3 side of a listener: accepts QUIC connections until dropped (its socket with it,
/// unless handed over).
pub struct QuicListener {
    socket: Option<QuicSocket>,
    accept: JoinHandle<()>,
}

impl QuicListener {
    /// Serves HTTP/3 on `socket` with `config`, for the listener of `context`.
    pub fn start(
        socket: QuicSocket,
        config: quinn::ServerConfig,
        context: Arc<ListenerContext>,
    ) -> QuicListener {
        socket.endpoint.set_server_config(Some(config));
        let accept = tokio::spawn(accept_loop(
            socket.endpoint.clone(),
            context,
            socket.stop.subscribe(),
        ));
        QuicListener {
            socket: Some(socket),
            accept,
        }
    }

    /// New connections get `config` (certificates, limits); open ones carry on.
    pub fn reconfigure(&self, config: quinn::ServerConfig) {
        if let Some(socket) = &self.socket {
            socket.endpoint.set_server_config(Some(config));
        }
    }

    /// Stops accepting and hands the socket over to the listener that takes this one's
    /// address; open connections carry on.
    pub fn into_socket(mut self) -> Option<QuicSocket> {
        self.accept.abort();
        self.socket.take()
    }
}

impl Drop for QuicListener {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A handshake in progress, counted until dropped.
struct Handshake(Arc<AtomicUsize>);

impl Handshake {
    fn start(count: &Arc<AtomicUsize>) -> Handshake {
        count.fetch_add(1, Ordering::Relaxed);
        Handshake(count.clone())
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts QUIC connections: those from sources the listener does not serve are ignored, those
/// beyond `max_connections` refused (both counted, as on TCP); above
/// [`HANDSHAKES_BEFORE_RETRY`] handshakes in progress, unvalidated addresses get a Retry.
async fn accept_loop(
    endpoint: quinn::Endpoint,
    context: Arc<ListenerContext>,
    stop: watch::Receiver<bool>,
) {
    let handshakes = Arc::new(AtomicUsize::new(0));
    while let Some(incoming) = endpoint.accept().await {
        let peer = incoming.remote_address();
        if !context.serves(peer.ip()) {
            tracing::debug!(listener = %context.name, %peer, "QUIC connection from a source this listener does not serve");
            incoming.ignore();
            continue;
        }
        if handshakes.load(Ordering::Relaxed) >= HANDSHAKES_BEFORE_RETRY
            && !incoming.remote_address_validated()
        {
            if let Err(refused) = incoming.retry() {
                refused.into_incoming().ignore();
            }
            continue;
        }
        let Some(slot) = context.connection_slot() else {
            tracing::debug!(listener = %context.name, %peer, "refusing a QUIC connection beyond max_connections");
            incoming.refuse();
            continue;
        };
        tokio::spawn(serve_connection(
            incoming,
            (slot, Handshake::start(&handshakes)),
            context.clone(),
            stop.clone(),
        ));
    }
}

/// Completes the handshake (within the header read timeout), then serves HTTP/3 on it.
async fn serve_connection(
    incoming: quinn::Incoming,
    (slot, handshake): (ConnectionSlot, Handshake),
    context: Arc<ListenerContext>,
    stop: watch::Receiver<bool>,
) {
    let peer = incoming.remote_address();
    let limits = context.shared.limits.load_full();
    let handshaken = async { incoming.accept()?.await };
    let handshaken = tokio::time::timeout(limits.header_read_timeout.0, handshaken).await;
    drop(handshake);
    let connection = match handshaken {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            context.shared.metrics.tls_handshake_failed(&context.name);
            tracing::debug!(listener = %context.name, %peer, error = %e, "QUIC handshake failed");
            return;
        }
        Err(_elapsed) => {
            context.shared.metrics.tls_handshake_failed(&context.name);
            tracing::debug!(listener = %context.name, %peer, "QUIC handshake timed out");
            return;
        }
    };
    context.connections.inc();
    let _open = context.shared.open_connection();
    serve_requests(connection, peer, &context, &limits, stop).await;
    context.connections.dec();
    drop(slot);
}

/// Takes the connection's requests until the client closes it, or it is idle for the idle
/// timeout, or the proxy drains or drops the listener: then GOAWAY, and the connection closes
/// once what is in flight has been answered (so that a request crossing the GOAWAY is known to
/// the client as not processed).
async fn serve_requests(
    connection: quinn::Connection,
    peer: SocketAddr,
    context: &Arc<ListenerContext>,
    limits: &Limits,
    mut stop: watch::Receiver<bool>,
) {
    let quic = connection.clone();
    let mut builder = h3::server::builder();
    builder.max_field_section_size(limits.max_header_bytes as u64);
    let built = builder.build::<_, Bytes>(checked::Connection::new(connection));
    let built = tokio::time::timeout(limits.header_read_timeout.0, built).await;
    let Ok(Ok(mut h3)) = built else {
        tracing::debug!(listener = %context.name, %peer, "HTTP/3 connection setup failed");
        return;
    };
    let activity = Arc::new(Activity::default());
    let client = crate::peer::Peer::new(peer, "https");
    let mut draining = false;
    loop {
        // After GOAWAY: a few round trips after the last answer, so that its last packets are
        // acknowledged before the connection closes.
        let linger = (quic.rtt() * 4).max(Duration::from_millis(50));
        let idle = if draining {
            linger
        } else {
            limits.idle_timeout.0
        };
        let wind_down = async {
            let removed = async { stop.wait_for(|stop| *stop).await.is_ok() };
            tokio::select! {
                () = context.shared.open.drain_requested() => {}
                true = removed => {}
            }
        };
        let goaway = tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    let request = stream::serve_request(
                        resolver,
                        context.clone(),
                        client.clone(),
                        activity.request(),
                        limits.header_read_timeout.0,
                    );
                    tokio::spawn(request);
                    false
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(listener = %context.name, %peer, error = %e, "HTTP/3 connection ended");
                    break;
                }
            },
            () = activity.idle_for(idle) => {
                if draining {
                    break;
                }
                tracing::debug!(listener = %context.name, %peer, "closing an idle HTTP/3 connection");
                true
            }
            () = wind_down, if !draining => true,
        };
        if goaway {
            draining = true;
            if let Err(e) = h3.shutdown(1).await {
                tracing::debug!(listener = %context.name, %peer, error = %e, "GOAWAY failed");
                break;
            }
        }
    }
    // Dropping the HTTP/3 connection closes it (H3_NO_ERROR).
}
