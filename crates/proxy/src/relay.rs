//! `tcp` listeners: each connection is relayed to an endpoint of the listener's cluster, picked
//! with the same balancing, health and ejections as HTTP requests. Either side may be a mesh
//! hop: a mesh listener takes mutual TLS and admits the caller by its identity before relaying
//! (a node proxy's inbound side), and a mesh cluster is reached over mutual TLS, its endpoint
//! proving the cluster's peer identity (the outbound side). Plain to plain is spliced in the
//! kernel ([`crate::splice`]); with TLS on a side, bytes are copied through buffers. A relay
//! that moves nothing either way for `limits.tcp_idle_timeout` is closed.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor};

use crate::cluster::{Cluster, Outcome};
use crate::idle::{Activity, Watched};
use crate::metrics::UpstreamError;
use crate::server::{tls_handshake, ConnectionSlot, ListenerContext};
use crate::splice::BUFFER_BYTES;

/// How many endpoints are tried to connect, one after the other.
const CONNECT_TRIES: usize = 3;

/// A relayed connection's client side.
pub(crate) enum Client {
    /// Plain TCP.
    Plain(TcpStream),
    /// Mutual TLS, the caller admitted.
    Mesh(Box<server::TlsStream<TcpStream>>),
}

/// A relayed connection's endpoint side.
enum Upstream {
    Plain(TcpStream),
    Mesh(Box<client::TlsStream<TcpStream>>),
}

/// Completes the mutual-TLS handshake of a mesh `tcp` listener's connection, admits the caller
/// by the listener's policy (a caller refused is closed before a byte is relayed, counted and
/// logged: see [`crate::mesh::admits`]), then relays it.
pub(crate) async fn mesh_connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Arc<TlsAcceptor>,
    cluster: Arc<Cluster>,
    context: Arc<ListenerContext>,
    slot: ConnectionSlot,
) {
    let Some((mut tls, caller)) = Box::pin(tls_handshake(stream, peer, acceptor, &context)).await
    else {
        return;
    };
    let admitted = context
        .mesh
        .load_full()
        .is_some_and(|policy| crate::mesh::admits(&policy, &context, caller.as_ref(), peer, "tcp"));
    if !admitted {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
        return;
    }
    connection(Client::Mesh(Box::new(tls)), cluster, context, slot).await;
}

/// Relays `client` to an endpoint of `cluster`, trying up to [`CONNECT_TRIES`] endpoints to
/// connect; bytes flow both ways until both sides have ended (an end of stream is passed on
/// as a write shutdown, so half-closed connections work), either fails, the relay idles, or
/// the listener's drain is over.
pub(crate) async fn connection(
    client: Client,
    cluster: Arc<Cluster>,
    context: Arc<ListenerContext>,
    _slot: ConnectionSlot,
) {
    context.connections.inc();
    let _open = context.shared.open_connection();
    // An instance that sleeps: in use while the connection is open, which waits here while it
    // wakes (closed at once when it cannot: the queue is full or the wake took too long).
    let _using = match context.gate.load_full() {
        Some(gate) => {
            let using = gate.use_now();
            if gate.pass().await.is_err() {
                context.connections.dec();
                return;
            }
            Some(using)
        }
        None => None,
    };
    let retiring = context.retirement.connection();
    let metrics = &context.shared.metrics;
    let no_headers = http::HeaderMap::new();
    let mut avoid = None;
    for _ in 0..CONNECT_TRIES {
        let Some(lease) = cluster.pick(&no_headers, avoid) else {
            metrics.upstream_error(&cluster.name, UpstreamError::NoEndpoint);
            break;
        };
        let address = lease.endpoint().addr;
        let connected = tokio::time::timeout(cluster.connect_timeout, connect(&cluster, address));
        let Ok(Ok(upstream)) = connected.await else {
            metrics.upstream_error(&cluster.name, UpstreamError::Connect);
            if lease.finish(Outcome::GatewayError) {
                metrics.ejection(&cluster.name);
            }
            avoid = Some(address);
            continue;
        };
        lease.observe(Outcome::Success);
        context.relayed_connections.inc();
        let activity = Arc::new(Activity::default());
        let idle_timeout = context.shared.limits.load().tcp_idle_timeout.0;
        let relayed = tokio::select! {
            relayed = carry(client, upstream, &activity) => relayed,
            () = activity.idle_for(idle_timeout) => {
                tracing::debug!(listener = %context.name, "closing an idle relayed connection");
                break;
            }
            () = retiring.closing() => break,
        };
        match relayed {
            Ok((sent, received)) => metrics.relayed(&context.name, sent, received),
            Err(e) => tracing::debug!(listener = %context.name, error = %e,
                "relayed connection ended with an error"),
        }
        break;
    }
    context.connections.dec();
}

/// Opens a connection to `address`, over mutual TLS for a mesh cluster (the endpoint must prove
/// the cluster's peer identity).
async fn connect(cluster: &Cluster, address: SocketAddr) -> std::io::Result<Upstream> {
    let tcp = TcpStream::connect(address).await?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &cluster.tls else {
        return Ok(Upstream::Plain(tcp));
    };
    let mut stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(meridian_identity::mesh_server_name(), tcp)
        .await?;
    stream
        .get_mut()
        .1
        .set_buffer_limit(Some(crate::tls::MESH_SEND_BUFFER));
    Ok(Upstream::Mesh(Box::new(stream)))
}

/// Moves bytes both ways between `client` and `upstream` until both directions have ended;
/// returns the bytes sent upstream and received from it.
async fn carry(
    client: Client,
    upstream: Upstream,
    activity: &Arc<Activity>,
) -> std::io::Result<(u64, u64)> {
    match (client, upstream) {
        (Client::Plain(mut a), Upstream::Plain(mut b)) => {
            crate::splice::relay(&mut a, &mut b, activity).await
        }
        (Client::Plain(a), Upstream::Mesh(b)) => copy(a, *b, activity).await,
        (Client::Mesh(a), Upstream::Plain(b)) => copy(*a, b, activity).await,
        (Client::Mesh(a), Upstream::Mesh(b)) => copy(*a, *b, activity).await,
    }
}

/// Copies bytes both ways between `a` and `b` through buffers, passing each end of stream on
/// as a write shutdown (a TLS side sends its `close_notify`), counting activity on `a`.
async fn copy<A, B>(a: A, mut b: B, activity: &Arc<Activity>) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a = Watched::new(a, activity.clone());
    tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, BUFFER_BYTES, BUFFER_BYTES).await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Two ends of one loopback TCP connection.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap());
        let (near, far) = tokio::join!(near, listener.accept());
        (near.unwrap(), far.unwrap().0)
    }

    #[tokio::test]
    async fn a_spliced_relay_passes_each_end_of_stream_on_and_counts_the_bytes() {
        let (mut client, a) = pair().await;
        let (b, mut server) = pair().await;
        let activity = Arc::new(Activity::default());
        let relay =
            tokio::spawn(
                async move { carry(Client::Plain(a), Upstream::Plain(b), &activity).await },
            );
        // The client half-closes; the server still answers, after reading it all.
        client.write_all(b"question").await.unwrap();
        client.shutdown().await.unwrap();
        let mut asked = Vec::new();
        server.read_to_end(&mut asked).await.unwrap();
        assert_eq!(asked, b"question");
        server.write_all(b"answer").await.unwrap();
        server.shutdown().await.unwrap();
        let mut answered = Vec::new();
        client.read_to_end(&mut answered).await.unwrap();
        assert_eq!(answered, b"answer");
        assert_eq!(relay.await.unwrap().unwrap(), (8, 6));
    }
}
