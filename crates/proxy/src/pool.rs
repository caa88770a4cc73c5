//! The proxy's own pool of HTTP/1.1 connections to an endpoint, driven by the requests that use
//! them: no task per connection, no hashing per request. A request takes the idle connection
//! last returned to its endpoint (checking first that the endpoint has not closed it) or opens
//! one, polls the connection itself until the response head arrives, and hands it to the
//! response body ([`ConnectionBody`]), which polls it while the body streams and returns it to
//! the endpoint's idle list once the body has ended. A body dropped before its end closes the
//! connection. Idle connections close after [`IDLE_TIMEOUT`]; an endpoint keeps at most
//! [`IDLE_PER_ENDPOINT`] of them.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;

use crate::forward::UpstreamBody;
use crate::upstream::{CountedStream, SendError};

/// Idle upstream connections are closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Most idle connections kept per upstream endpoint.
pub const IDLE_PER_ENDPOINT: usize = 1024;
/// How often an endpoint with idle connections closes those idle for longer than
/// [`IDLE_TIMEOUT`]: a connection closes within `IDLE_TIMEOUT` plus this.
const REAP_EVERY: Duration = Duration::from_secs(15);

/// An HTTP/1.1 connection to an endpoint: its sender and the connection state, polled by
/// whoever uses it.
pub struct Http1Connection {
    send: http1::SendRequest<UpstreamBody>,
    /// Boxed: the connection's state is large, and it moves between the idle list, the
    /// request's future and the response body.
    conn: Box<http1::Connection<CountedStream, UpstreamBody>>,
}

impl Http1Connection {
    /// Performs the (I/O-free) HTTP/1.1 handshake on `stream`.
    pub async fn new(stream: CountedStream) -> Result<Http1Connection, hyper::Error> {
        let (send, conn) = http1::handshake(stream).await?;
        Ok(Http1Connection {
            send,
            conn: Box::new(conn),
        })
    }

    /// Whether the connection can carry a request now: polled once, it has not closed or failed
    /// (the endpoint may have closed it while it was idle) and waits for a request.
    fn usable(&mut self, cx: &mut Context<'_>) -> bool {
        Pin::new(&mut self.conn).poll(cx).is_pending() && self.send.is_ready()
    }
}

/// The idle connections of one endpoint, most recently returned last.
#[derive(Default)]
pub struct IdleConnections {
    list: Mutex<IdleList>,
}

impl std::fmt::Debug for IdleConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleConnections")
            .field("idle", &self.len())
            .finish()
    }
}

#[derive(Default)]
struct IdleList {
    /// With the time each was returned; oldest first.
    connections: Vec<(Instant, Http1Connection)>,
    /// Whether a task closes the expired ones ([`IdleConnections::reap`]).
    reaping: bool,
}

impl IdleConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, IdleList> {
        self.list.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many connections are idle.
    pub fn len(&self) -> usize {
        self.lock().connections.len()
    }

    /// Closes every idle connection (connections in use close once their response is done if
    /// this is called again then; they are returned otherwise).
    pub fn close_all(&self) {
        let closed = std::mem::take(&mut self.lock().connections);
        drop(closed);
    }

    /// The most recently returned connection that can carry a request; those found closed on
    /// the way are dropped.
    fn take(&self, cx: &mut Context<'_>) -> Option<Http1Connection> {
        loop {
            let (_, mut connection) = self.lock().connections.pop()?;
            if connection.usable(cx) {
                return Some(connection);
            }
        }
    }

    /// Keeps `connection` for the next request, unless the endpoint has as many idle already
    /// or no runtime is there to close it once it expires.
    fn put(self: &Arc<Self>, connection: Http1Connection) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut list = self.lock();
        if list.connections.len() >= IDLE_PER_ENDPOINT {
            drop(list);
            return;
        }
        list.connections.push((Instant::now(), connection));
        if !list.reaping {
            list.reaping = true;
            runtime.spawn(Self::reap(Arc::downgrade(self)));
        }
    }

    /// Closes the connections idle for longer than [`IDLE_TIMEOUT`], every [`REAP_EVERY`], until
    /// none is idle or the endpoint is gone.
    async fn reap(idle: Weak<IdleConnections>) {
        loop {
            tokio::time::sleep(REAP_EVERY).await;
            let Some(idle) = idle.upgrade() else {
                return;
            };
            let mut list = idle.lock();
            let fresh = list
                .connections
                .iter()
                .position(|(since, _)| since.elapsed() < IDLE_TIMEOUT)
                .unwrap_or(list.connections.len());
            let expired: Vec<_> = list.connections.drain(..fresh).collect();
            let done = list.connections.is_empty();
            if done {
                list.reaping = false;
            }
            drop(list);
            drop(expired);
            if done {
                return;
            }
        }
    }
}

/// Sends `request` (origin-form, with a Host) on an idle connection of `idle`, or on one that
/// `connect` opens; a request that a reused connection could not start (the endpoint closed it
/// meanwhile) goes once more on a new connection. A request to switch protocols (`Upgrade`)
/// gets a connection of its own, served by a task until the switch is done; it is not pooled.
pub async fn send<C, F>(
    idle: &Arc<IdleConnections>,
    connect: C,
    mut request: Request<UpstreamBody>,
) -> Result<Response<ConnectionBody>, SendError>
where
    C: Fn() -> F,
    F: Future<Output = Result<Http1Connection, SendError>>,
{
    let upgrade = request.headers().contains_key(header::UPGRADE);
    loop {
        let reused = std::future::poll_fn(|cx| Poll::Ready(idle.take(cx))).await;
        let (connection, was_reused) = match reused {
            Some(connection) => (connection, true),
            None => (connect().await?, false),
        };
        let result = if upgrade {
            upgraded(connection, request).await
        } else {
            exchange(connection, request, idle).await
        };
        match result {
            Ok(response) => return Ok(response),
            Err(mut error) => match error.take_message() {
                Some(unsent) if was_reused => request = unsent,
                _ => return Err(SendError::Http(error.into_error())),
            },
        }
    }
}

type Sent =
    Result<Response<ConnectionBody>, hyper::client::conn::TrySendError<Request<UpstreamBody>>>;

/// Sends `request` on `connection`, polling the connection until the response head arrives;
/// the response body then drives it, and returns it to `idle` at its end.
async fn exchange(
    connection: Http1Connection,
    request: Request<UpstreamBody>,
    idle: &Arc<IdleConnections>,
) -> Sent {
    let Http1Connection { mut send, conn } = connection;
    let mut conn = Some(conn);
    let mut sent = pin!(send.try_send_request(request));
    let response = std::future::poll_fn(|cx| {
        if let Some(running) = conn.as_mut() {
            if Pin::new(running).poll(cx).is_ready() {
                // Closed or failed: dropping it fails the request, if it was still waiting.
                conn = None;
            }
        }
        sent.as_mut().poll(cx)
    })
    .await?;
    let driver = conn.map(|conn| Driver {
        connection: Http1Connection { send, conn },
        home: idle.clone(),
    });
    Ok(response.map(|body| ConnectionBody::new(body, driver)))
}

/// Sends a request to switch protocols on `connection`, served by a task of its own that hands
/// the connection over once the switch is agreed (or finishes the exchange if it is refused).
async fn upgraded(connection: Http1Connection, request: Request<UpstreamBody>) -> Sent {
    let Http1Connection { mut send, conn } = connection;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection of a protocol switch failed");
        }
    });
    let response = send.try_send_request(request).await?;
    Ok(response.map(ConnectionBody::detached))
}

/// Sets `Host` to `authority` when the request has none (an HTTP/1.0 client's): HTTP/1.1
/// requires it.
pub fn ensure_host(request: &mut Request<UpstreamBody>, authority: &http::uri::Authority) {
    if !request.headers().contains_key(header::HOST) {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            request.headers_mut().insert(header::HOST, host);
        }
    }
}

/// A connection lent to a response body, and where it goes back to.
struct Driver {
    connection: Http1Connection,
    home: Arc<IdleConnections>,
}

/// An upstream response body; from the proxy's own pool, it drives its connection and returns
/// it to the endpoint's idle connections once the body has ended.
pub struct ConnectionBody {
    body: Incoming,
    driver: Option<Driver>,
    /// The body has been read to its end.
    ended: bool,
    /// The last poll yielded data (see [`Body::poll_frame`] below).
    after_data: bool,
    /// An error held back for one poll after data.
    held: Option<hyper::Error>,
}

impl ConnectionBody {
    fn new(body: Incoming, driver: Option<Driver>) -> ConnectionBody {
        let mut this = ConnectionBody {
            body,
            driver,
            ended: false,
            after_data: false,
            held: None,
        };
        // A response without a body (204, 304, HEAD, Content-Length: 0) is done already; the
        // server side may never poll it.
        if this.body.is_end_stream() {
            this.end();
        }
        this
    }

    /// A body whose connection is driven elsewhere (another pool, or a task).
    pub fn detached(body: Incoming) -> ConnectionBody {
        ConnectionBody {
            body,
            driver: None,
            ended: false,
            after_data: false,
            held: None,
        }
    }

    /// The body has ended: its connection can carry another request.
    fn end(&mut self) {
        self.ended = true;
        if let Some(Driver { connection, home }) = self.driver.take() {
            home.put(connection);
        }
    }

    /// Polls the connection, which reads what the body waits for; drops it once it is done
    /// (the body then ends or fails with what the connection gave it).
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = self.driver.as_mut() {
            if Pin::new(&mut driver.connection.conn).poll(cx).is_ready() {
                self.driver = None;
            }
        }
    }
}

impl Body for ConnectionBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(error) = this.held.take() {
            return Poll::Ready(Some(Err(error)));
        }
        let mut frame = Pin::new(&mut this.body).poll_frame(cx);
        if frame.is_pending() && this.driver.is_some() {
            this.drive(cx);
            frame = Pin::new(&mut this.body).poll_frame(cx);
        }
        match frame {
            Poll::Ready(None) => this.end(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.end(),
            Poll::Ready(Some(Err(error))) => {
                this.driver = None;
                if std::mem::take(&mut this.after_data) {
                    // The connection broke right after data read in the same turn: the error
                    // waits one poll, so that the server side sends that data (and the head)
                    // to the client before it cuts the response off, as when it comes later.
                    this.held = Some(error);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                return Poll::Ready(Some(Err(error)));
            }
            _ => {}
        }
        this.after_data = matches!(&frame, Poll::Ready(Some(Ok(_))));
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for ConnectionBody {
    fn drop(&mut self) {
        // A body dropped before its end leaves the connection mid-response: it closes (dropped
        // with the driver).
        if self.body.is_end_stream() && !self.ended {
            self.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Either, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;

    use crate::cluster::Endpoint;
    use crate::upstream::HttpClient;

    /// What the test upstream reports about a connection.
    #[derive(Debug, PartialEq)]
    enum Seen {
        /// It closed its side after answering (`close_after`).
        Closed,
        /// The proxy closed the connection.
        ClosedByPeer,
    }

    /// An HTTP/1.1 upstream answering `200 ok` to each request; with `close_after`, it closes each
    /// connection once it has answered (without saying so in the response). Counts connections.
    async fn upstream(
        close_after: bool,
    ) -> (SocketAddr, Arc<AtomicUsize>, mpsc::UnboundedReceiver<Seen>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (seen, events) = mpsc::unbounded_channel();
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let n = socket.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            let _ = seen.send(Seen::ClosedByPeer);
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            socket
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await
                                .unwrap();
                            if close_after {
                                drop(socket);
                                let _ = seen.send(Seen::Closed);
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted, events)
    }

    fn client() -> HttpClient {
        crate::upstream::test_client()
    }

    async fn get(client: &HttpClient, endpoint: &Endpoint) -> Bytes {
        let request = Request::builder()
            .uri("/")
            .header(header::HOST, "example.test")
            .body(Either::Right(Full::new(Bytes::new())))
            .unwrap();
        let response = client.request(endpoint, request).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap().to_bytes()
    }

    async fn next(events: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("the upstream saw nothing in time")
            .unwrap()
    }

    #[tokio::test]
    async fn one_connection_carries_requests_in_turn() {
        let (addr, accepted, _events) = upstream(false).await;
        let (client, endpoint) = (client(), Endpoint::new(addr).unwrap());
        for _ in 0..3 {
            assert_eq!(get(&client, &endpoint).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(endpoint.idle.len(), 1);
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_is_not_used() {
        let (addr, accepted, mut events) = upstream(true).await;
        let (client, endpoint) = (client(), Endpoint::new(addr).unwrap());
        assert_eq!(get(&client, &endpoint).await, "ok");
        assert_eq!(next(&mut events).await, Seen::Closed);
        // The closed connection is idle in the pool: the next request must not fail on it.
        assert_eq!(get(&client, &endpoint).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_idle_connections_of_an_endpoint_can_be_closed() {
        let (addr, _accepted, mut events) = upstream(false).await;
        let (client, endpoint) = (client(), Endpoint::new(addr).unwrap());
        assert_eq!(get(&client, &endpoint).await, "ok");
        assert_eq!(endpoint.idle.len(), 1);
        client.close_idle(&endpoint);
        assert_eq!(endpoint.idle.len(), 0);
        assert_eq!(next(&mut events).await, Seen::ClosedByPeer);
    }
}
