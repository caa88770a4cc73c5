//! The proxy's own pool of HTTP/1.1 connections to an endpoint, driven by the requests that use
//! them: no task per connection, no hashing per request. A request takes the idle connection
//! last returned to its endpoint (checking first that the endpoint has not closed it) or opens
//! one. A request whose body is all there (empty, or buffered for retries) is exchanged with the
//! proxy's own codec ([`crate::h1`]) in the request's task: head and body in one write, the
//! response head parsed from the connection's read buffer (its field values share those bytes),
//! and the response body ([`ConnectionBody`]) decoded from that buffer as it is read, no copy,
//! no channel. A request whose body still streams in goes through hyper's HTTP/1.1 client on the
//! same connection, polled by the request and then by its response body. Either way the
//! connection goes back to the endpoint's idle list once the body has ended, if the response
//! allows it; a body dropped before its end closes the connection. Idle connections close after
//! [`IDLE_TIMEOUT`]; an endpoint keeps at most [`IDLE_PER_ENDPOINT`] of them.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use std::io;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, Either};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::body::UpstreamBody;
use crate::fields::{Added, AddedFields};
use crate::h1::body::{BodyDecoder, Step};
use crate::h1::decode;
use crate::h1::encode::{encode_head, RequestFraming};
use crate::upstream::{CountedStream, SendError};

/// Idle upstream connections are closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Most idle connections kept per upstream endpoint.
pub const IDLE_PER_ENDPOINT: usize = 1024;
/// How often an endpoint with idle connections closes those idle for longer than
/// [`IDLE_TIMEOUT`]: a connection closes within `IDLE_TIMEOUT` plus this.
const REAP_EVERY: Duration = Duration::from_secs(15);

/// An HTTP/1.1 connection to an endpoint, between requests: its stream, and the buffers its
/// requests are written from and its responses read into. The request buffer (a head's size)
/// is kept for its allocation; the response buffer (at least [`READ_CHUNK`]) is let go while
/// the connection is idle, so that a pool of many idle connections holds no read buffers.
pub struct Http1Connection {
    io: CountedStream,
    read: BytesMut,
    write: Vec<u8>,
}

impl Http1Connection {
    /// A connection on `stream`, which carried no request yet.
    pub fn new(io: CountedStream) -> Http1Connection {
        Http1Connection {
            io,
            read: BytesMut::new(),
            write: Vec::new(),
        }
    }

    /// Whether the connection can carry a request now: it has no unread byte, and a read finds
    /// neither data nor its end (the endpoint may have closed it while it was idle).
    fn usable(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut byte = [0u8; 1];
        let mut probe = tokio::io::ReadBuf::new(&mut byte);
        Pin::new(self.io.transport())
            .poll_read(cx, &mut probe)
            .is_pending()
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

    /// Keeps `connection` (without its read buffer) for the next request, unless the endpoint
    /// has as many idle already or no runtime is there to close it once it expires.
    fn put(self: &Arc<Self>, mut connection: Http1Connection) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        connection.read = BytesMut::new();
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

/// Bytes a response read asks for at least.
const READ_CHUNK: usize = 8 * 1024;
/// A request body up to this size goes in the same write as the head.
const INLINE_BODY: usize = 16 * 1024;

/// A request as the exchange sends it: whole (its body empty or buffered), sent with the lean
/// codec ([`crate::h1`]) in the request's task; with a body still streaming in, or switching
/// protocols, sent through hyper's HTTP/1.1 client.
enum Message {
    Whole(http::request::Parts, Bytes),
    Streaming(Request<UpstreamBody>),
    Switching(Request<UpstreamBody>),
}

impl Message {
    /// `request` as whole when its body is empty or buffered, unless it switches protocols;
    /// the `added` fields go into the header map of a request that goes through hyper (the
    /// lean codec writes them from where they are).
    async fn of(mut request: Request<UpstreamBody>, added: &AddedFields) -> Message {
        if request.headers().contains_key(header::UPGRADE) {
            added.merge_into(request.headers_mut());
            return Message::Switching(request);
        }
        let (mut parts, body) = request.into_parts();
        match body {
            Either::Right(full) => {
                let data = match full.collect().await {
                    Ok(collected) => collected.to_bytes(),
                    Err(never) => match never {},
                };
                Message::Whole(parts, data)
            }
            Either::Left(body) if body.is_end_stream() => Message::Whole(parts, Bytes::new()),
            body => {
                added.merge_into(&mut parts.headers);
                Message::Streaming(Request::from_parts(parts, body))
            }
        }
    }
}

/// Sends `request` (origin-form, with a Host) with the `added` fields on an idle connection of
/// `idle`, or on one that `connect` opens; a request that a reused connection could not start
/// (the endpoint closed it meanwhile) goes once more on a new connection. A request to switch
/// protocols (`Upgrade`) gets a connection of its own, served by a task until the switch is
/// done; it is not pooled. The response has its end-to-end fields only.
pub async fn send<C, F>(
    idle: &Arc<IdleConnections>,
    connect: C,
    request: Request<UpstreamBody>,
    added: &AddedFields,
) -> Result<Response<ConnectionBody>, SendError>
where
    C: Fn() -> F,
    F: Future<Output = Result<Http1Connection, SendError>> + Send,
{
    let mut message = Message::of(request, added).await;
    loop {
        let reused = std::future::poll_fn(|cx| Poll::Ready(idle.take(cx))).await;
        let (connection, was_reused) = match reused {
            Some(connection) => (connection, true),
            None => (cold(connect()).await?, false),
        };
        match message {
            Message::Whole(ref parts, ref data) => {
                match lean_exchange(connection, (parts, added), data, idle).await {
                    Ok(response) => return Ok(response),
                    Err(Failure::Unsent(_)) if was_reused => {}
                    Err(Failure::Unsent(error) | Failure::Failed(error)) => return Err(error),
                }
            }
            Message::Streaming(request) => match cold(exchange(connection, request, idle)).await {
                Ok(response) => return Ok(end_to_end(response)),
                Err((_, Some(unsent))) if was_reused => message = Message::Streaming(unsent),
                Err((error, _)) => return Err(SendError::Http(error)),
            },
            Message::Switching(request) => match cold(upgraded(connection, request)).await {
                Ok(response) => return Ok(end_to_end(response)),
                Err((_, Some(unsent))) if was_reused => message = Message::Switching(unsent),
                Err((error, _)) => return Err(SendError::Http(error)),
            },
        }
    }
}

/// `future` boxed behind a trait object: the code of a path most requests do not take (a new
/// connection, hyper's exchanges) stays out of the hot path's, which is the smaller for it in
/// the instruction cache, and its state out of the caller's future.
fn cold<'a, T>(
    future: impl Future<Output = T> + Send + 'a,
) -> Pin<Box<dyn Future<Output = T> + Send + 'a>> {
    Box::pin(future)
}

/// How a lean exchange failed: before anything was sent (the request may go on another
/// connection), or after.
enum Failure {
    Unsent(SendError),
    Failed(SendError),
}

/// Sends the head of `parts` with the `added` fields and `data` on `connection` and reads the
/// response head; the response body then reads the rest and returns the connection to `idle`
/// at its end.
async fn lean_exchange(
    mut connection: Http1Connection,
    (parts, added): (&http::request::Parts, &AddedFields),
    data: &Bytes,
    idle: &Arc<IdleConnections>,
) -> Result<Response<ConnectionBody>, Failure> {
    let failed = |e| Failure::Failed(SendError::Io(e));
    let framing = RequestFraming::of_body(data.is_empty(), Some(data.len() as u64));
    let mut out = std::mem::take(&mut connection.write);
    out.clear();
    encode_head(parts, added, framing, &mut out);
    let inline = data.len() <= INLINE_BODY;
    if inline {
        out.extend_from_slice(data);
    }
    let io = connection.io.transport();
    // The first write says whether the connection still takes requests; failing, it sent nothing.
    let written = io
        .write(&out)
        .await
        .map_err(|e| Failure::Unsent(SendError::Io(e)))?;
    io.write_all(&out[written..]).await.map_err(failed)?;
    if !inline {
        io.write_all(data).await.map_err(failed)?;
    }
    io.flush().await.map_err(failed)?;
    connection.write = out;
    let sender = parts.extensions.get::<hyper::ext::InformationalSender>();
    let mut informational = |response| {
        if let Some(sender) = sender {
            crate::informational::pass_on(sender, response);
        }
    };
    let head = loop {
        let parsed =
            decode::parse_final_head(&mut connection.read, &parts.method, &mut informational)
                .map_err(|e| Failure::Failed(SendError::Protocol(e)))?;
        if let Some(head) = parsed {
            break head;
        }
        connection.read.reserve(READ_CHUNK);
        let read = connection.io.transport().read_buf(&mut connection.read);
        if read.await.map_err(failed)? == 0 {
            return Err(failed(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the upstream closed the connection before the response head",
            )));
        }
    };
    let decode::Head {
        response,
        framing,
        reusable,
    } = head;
    let lean = Lean {
        connection: Some(connection),
        decoder: BodyDecoder::new(framing),
        reusable,
        home: idle.clone(),
    };
    Ok(response.map(|()| ConnectionBody::new(Source::Lean(lean))))
}

/// A response through hyper's client, or why there is none, with the request if it was not sent.
type Sent = Result<Response<ConnectionBody>, (hyper::Error, Option<Request<UpstreamBody>>)>;

/// hyper's error for a request, and the request if it was not sent.
fn unsent(
    mut error: hyper::client::conn::TrySendError<Request<UpstreamBody>>,
) -> (hyper::Error, Option<Request<UpstreamBody>>) {
    let request = error.take_message();
    (error.into_error(), request)
}

/// Sends `request` (its body still streaming in) on `connection` through hyper's HTTP/1.1
/// client, polling the connection until the response head arrives; the response body then
/// drives it, and returns it to `idle` at its end.
async fn exchange(
    connection: Http1Connection,
    mut request: Request<UpstreamBody>,
    idle: &Arc<IdleConnections>,
) -> Sent {
    crate::informational::through_hyper(&mut request);
    let (mut send, conn) = match http1::handshake(connection.io).await {
        Ok(handshake) => handshake,
        Err(error) => return Err((error, Some(request))),
    };
    let mut conn = Some(Box::new(conn));
    let mut sent = pin!(send.try_send_request(request));
    let response = std::future::poll_fn(|cx| {
        if let Some(running) = conn.as_mut() {
            if running.poll_without_shutdown(cx).is_ready() {
                // Closed or failed: dropping it fails the request, if it was still waiting.
                conn = None;
            }
        }
        sent.as_mut().poll(cx)
    })
    .await
    .map_err(unsent)?;
    let driver = conn.map(|conn| Driver {
        send: Some(send),
        conn,
        home: idle.clone(),
    });
    Ok(response.map(|body| ConnectionBody::new(Source::Hyper { body, driver })))
}

/// Sends a request to switch protocols on `connection`, served by a task of its own that hands
/// the connection over once the switch is agreed (or finishes the exchange if it is refused).
async fn upgraded(connection: Http1Connection, request: Request<UpstreamBody>) -> Sent {
    let (mut send, conn) = match http1::handshake(connection.io).await {
        Ok(handshake) => handshake,
        Err(error) => return Err((error, Some(request))),
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection of a protocol switch failed");
        }
    });
    let response = send.try_send_request(request).await.map_err(unsent)?;
    Ok(response.map(ConnectionBody::detached))
}

/// `response` of hyper's client with its end-to-end fields only, as the lean codec gives them.
pub fn end_to_end<B>(mut response: Response<B>) -> Response<B> {
    crate::hop_by_hop::strip_response(response.headers_mut());
    response
}

/// Sets `Host` to `authority` when neither the request nor the fields `added` to it have one
/// (an HTTP/1.0 client's): HTTP/1.1 requires it.
pub fn ensure_host(
    request: &mut Request<UpstreamBody>,
    added: &AddedFields,
    authority: &http::uri::Authority,
) {
    if added.get(Added::Host).is_none() && !request.headers().contains_key(header::HOST) {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            request.headers_mut().insert(header::HOST, host);
        }
    }
}

/// A hyper connection lent to a response body, and where its stream goes back to.
struct Driver {
    /// Dropped at the body's end, so that the connection lets its stream go.
    send: Option<http1::SendRequest<UpstreamBody>>,
    conn: Box<http1::Connection<CountedStream, UpstreamBody>>,
    home: Arc<IdleConnections>,
}

impl Driver {
    /// Returns the stream to the idle connections if the connection is done with it and read
    /// nothing past the response.
    fn release(mut self) {
        drop(self.send.take());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if let Poll::Ready(Ok(())) = self.conn.poll_without_shutdown(&mut cx) {
            let parts = self.conn.into_parts();
            if parts.read_buf.is_empty() {
                self.home.put(Http1Connection::new(parts.io));
            }
        }
    }
}

/// A response read with the lean codec, and where its connection goes back to.
struct Lean {
    /// Gone once the body has ended or failed.
    connection: Option<Http1Connection>,
    decoder: BodyDecoder,
    /// The response lets the connection carry another request after it.
    reusable: bool,
    home: Arc<IdleConnections>,
}

impl Lean {
    /// The next frame of the body, reading the connection as needed.
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            let Some(connection) = self.connection.as_mut() else {
                return Poll::Ready(None);
            };
            let step = match self.decoder.decode(&mut connection.read) {
                Ok(step) => step,
                Err(error) => {
                    self.connection = None;
                    return Poll::Ready(Some(Err(BodyError::Protocol(error))));
                }
            };
            match step {
                Step::Data(data) => {
                    if self.decoder.is_end() {
                        self.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Step::Trailers(trailers) => {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Step::End => {
                    self.release();
                    return Poll::Ready(None);
                }
                Step::NeedMore => {}
            }
            connection.read.reserve(READ_CHUNK);
            let read = tokio_util::io::poll_read_buf(
                Pin::new(connection.io.transport()),
                cx,
                &mut connection.read,
            );
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    self.connection = None;
                    return match self.decoder.eof() {
                        Ok(()) => Poll::Ready(None),
                        Err(error) => Poll::Ready(Some(Err(BodyError::Protocol(error)))),
                    };
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(error)) => {
                    self.connection = None;
                    return Poll::Ready(Some(Err(BodyError::Io(error))));
                }
            }
        }
    }

    /// The body has ended: the connection goes back to the idle ones if the response allows
    /// it and nothing was read past it.
    fn release(&mut self) {
        if let Some(connection) = self.connection.take() {
            if self.reusable && connection.read.is_empty() {
                self.home.put(connection);
            }
        }
    }
}

/// Why an upstream response body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Read through hyper's client.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// The connection failed.
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    /// The response broke HTTP/1.1.
    #[error(transparent)]
    Protocol(#[from] crate::h1::Error),
    /// Coding the content on its way to the client failed.
    #[error("coding the response: {0}")]
    Coding(io::Error),
}

/// Where a response body comes from.
enum Source {
    /// hyper's client: the body, and the connection it drives (none for a body whose
    /// connection is driven elsewhere).
    Hyper {
        body: Incoming,
        driver: Option<Driver>,
    },
    /// The lean codec.
    Lean(Lean),
}

/// An upstream response body; from the proxy's own pool, it drives its connection and returns
/// it to the endpoint's idle connections once the body has ended.
pub struct ConnectionBody {
    source: Source,
    /// The body has been read to its end.
    ended: bool,
    /// The last poll yielded data (see [`Body::poll_frame`] below).
    after_data: bool,
    /// An error held back for one poll after data.
    held: Option<BodyError>,
}

impl ConnectionBody {
    fn new(source: Source) -> ConnectionBody {
        let mut this = ConnectionBody {
            source,
            ended: false,
            after_data: false,
            held: None,
        };
        // A response without a body (204, 304, HEAD, Content-Length: 0) is done already; the
        // server side may never poll it.
        if this.source_ended() {
            this.end();
        }
        this
    }

    /// A body whose connection is driven elsewhere (another pool, or a task).
    pub fn detached(body: Incoming) -> ConnectionBody {
        ConnectionBody {
            source: Source::Hyper { body, driver: None },
            ended: false,
            after_data: false,
            held: None,
        }
    }

    fn source_ended(&self) -> bool {
        match &self.source {
            Source::Hyper { body, .. } => body.is_end_stream(),
            Source::Lean(lean) => lean.decoder.is_end(),
        }
    }

    /// The body has ended: its connection can carry another request.
    fn end(&mut self) {
        self.ended = true;
        match &mut self.source {
            Source::Hyper { driver, .. } => {
                if let Some(driver) = driver.take() {
                    driver.release();
                }
            }
            Source::Lean(lean) => lean.release(),
        }
    }

    /// The next frame from the source.
    fn poll_source(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let (body, driver) = match &mut self.source {
            Source::Lean(lean) => return lean.poll_frame(cx),
            Source::Hyper { body, driver } => (body, driver),
        };
        let mut frame = Pin::new(&mut *body).poll_frame(cx);
        if frame.is_pending() {
            if let Some(running) = driver.as_mut() {
                // Polls the connection, which reads what the body waits for; drops it once it
                // is done (the body then ends or fails with what the connection gave it).
                if running.conn.poll_without_shutdown(cx).is_ready() {
                    *driver = None;
                }
                frame = Pin::new(&mut *body).poll_frame(cx);
            }
        }
        if let Poll::Ready(Some(Err(_))) = &frame {
            *driver = None;
        }
        frame.map(|f| f.map(|f| f.map_err(BodyError::Hyper)))
    }
}

impl Body for ConnectionBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(error) = this.held.take() {
            return Poll::Ready(Some(Err(error)));
        }
        let frame = this.poll_source(cx);
        match frame {
            Poll::Ready(None) => this.end(),
            Poll::Ready(Some(Ok(_))) if this.source_ended() => this.end(),
            Poll::Ready(Some(Err(error))) => {
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
        self.ended || self.source_ended()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Hyper { body, .. } => body.size_hint(),
            Source::Lean(lean) => lean.decoder.size_hint(),
        }
    }
}

impl Drop for ConnectionBody {
    fn drop(&mut self) {
        // A body dropped before its end leaves the connection mid-response: it closes (dropped
        // with the driver).
        if self.source_ended() && !self.ended {
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
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
        upstream_answering(ok, close_after).await
    }

    /// An HTTP/1.1 upstream answering `answer` to each request, as [`upstream`] does.
    async fn upstream_answering(
        answer: Vec<u8>,
        close_after: bool,
    ) -> (SocketAddr, Arc<AtomicUsize>, mpsc::UnboundedReceiver<Seen>) {
        let answer: Arc<[u8]> = answer.into();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (seen, events) = mpsc::unbounded_channel();
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let (seen, answer) = (seen.clone(), answer.clone());
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
                            socket.write_all(&answer).await.unwrap();
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
        let response = client
            .request(endpoint, request, &AddedFields::default())
            .await
            .unwrap();
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

    /// Two requests in turn to an upstream answering `answer`: their bodies, and the
    /// connections the upstream accepted.
    async fn two_gets(answer: &[u8]) -> (Bytes, Bytes, usize) {
        let (addr, accepted, _events) = upstream_answering(answer.to_vec(), false).await;
        let (client, endpoint) = (client(), Endpoint::new(addr).unwrap());
        let first = get(&client, &endpoint).await;
        let second = get(&client, &endpoint).await;
        (first, second, accepted.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_chunked_response_is_read_whole_and_its_connection_reused() {
        let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        assert_eq!(two_gets(answer).await, ("ok".into(), "ok".into(), 1));
    }

    #[tokio::test]
    async fn a_response_framed_both_ways_is_read_as_chunked_and_its_connection_closed() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 40\r\n\
            transfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        assert_eq!(two_gets(answer).await, ("ok".into(), "ok".into(), 2));
    }

    #[tokio::test]
    async fn informational_heads_before_the_response_are_skipped() {
        let answer = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
            HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(two_gets(answer).await, ("ok".into(), "ok".into(), 1));
    }

    #[tokio::test]
    async fn a_response_head_over_64_kib_fails_the_request() {
        let mut answer = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        answer.resize(70 * 1024, b'a');
        answer.extend_from_slice(b"\r\ncontent-length: 2\r\n\r\nok");
        let (addr, _accepted, _events) = upstream_answering(answer, false).await;
        let (client, endpoint) = (client(), Endpoint::new(addr).unwrap());
        let request = Request::builder()
            .uri("/")
            .header(header::HOST, "example.test")
            .body(Either::Right(Full::new(Bytes::new())))
            .unwrap();
        let Err(error) = client
            .request(&endpoint, request, &AddedFields::default())
            .await
        else {
            panic!("a 70 KiB response head was taken");
        };
        assert!(error.to_string().contains("head larger than"), "{error}");
    }
}
