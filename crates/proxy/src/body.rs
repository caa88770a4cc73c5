//! The client's request body, counted against the configured limit as it streams, and watched so
//! that a failure of the client's own making is not blamed on the upstream; and the upstream's
//! response body, whose failures are counted, coded on the fly when the edge compresses it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::cluster::Cluster;
use crate::encoder::Encoder;
use crate::metrics::ProxyMetrics;
use crate::pool::{BodyError, ConnectionBody};

/// The error a [`LimitedBody`] yields once the body is over its limit.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than the limit")]
pub struct OverLimit;

/// The error a [`LimitedBody`] yields when the client sent no part of it within its idle
/// timeout before the upstream answered.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no part of the request body within the idle timeout")]
pub struct IdleTimeout;

/// What became of a request body while it streamed (the upstream client reports body errors
/// without their cause, so the body keeps its own record).
#[derive(Debug, Default)]
pub struct BodyState {
    over_limit: AtomicBool,
    failed: AtomicBool,
    finished: AtomicBool,
    timed_out: AtomicBool,
    answered: AtomicBool,
    /// The copy kept for replay ([`LimitedBody::keep_copy`]); `None` when none is kept, or once
    /// the body outgrew it.
    copy: Mutex<Option<BytesMut>>,
}

impl BodyState {
    /// The body went over its limit.
    pub fn over_limit(&self) -> bool {
        self.over_limit.load(Ordering::Relaxed)
    }

    /// Reading the body from the client failed (it went away, or sent garbage).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// The client sent no part of the body within the idle timeout ([`IdleTimeout`]).
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// The upstream's response head has arrived: from now on the body may pause for as long as
    /// the client and the upstream like (the request no longer holds a cluster slot).
    pub fn answered(&self) {
        self.answered.store(true, Ordering::Relaxed);
    }

    /// The whole body has been read from the client.
    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }

    /// The whole body, once it has been read to its end within the copy's size (taken: it is
    /// returned once).
    pub fn take_copy(&self) -> Option<Bytes> {
        if !self.finished() {
            return None;
        }
        let mut copy = self.copy.lock().unwrap_or_else(PoisonError::into_inner);
        copy.take().map(BytesMut::freeze)
    }
}

/// The error of a body from a client.
/// The body of a request to an upstream: the client's, streamed under the body limit, or a
/// buffered copy for replay.
pub type UpstreamBody = Either<LimitedBody, Full<Bytes>>;

/// The body of a response the proxy sends: the upstream's, or one the proxy made.
pub type ProxyBody = Either<ResponseBody, Full<Bytes>>;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body: from hyper (HTTP/1.1, HTTP/2) or from an HTTP/3 request stream.
pub enum ClientBody {
    /// HTTP/1.1 or HTTP/2.
    Hyper(Incoming),
    /// HTTP/3: boxed, since an HTTP/3 stream is several times larger than hyper's body, which
    /// would otherwise make every request's body as large.
    Http3(Box<crate::http3::RequestBody>),
    /// None: a request the proxy makes itself (a cache's background revalidation).
    Empty,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ClientBody::Http3(body) => Pin::new(body.as_mut()).poll_frame(cx),
            ClientBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(body) => body.is_end_stream(),
            ClientBody::Http3(body) => body.is_end_stream(),
            ClientBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(body) => body.size_hint(),
            ClientBody::Http3(body) => body.size_hint(),
            ClientBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A request body that fails once more than its limit has been read, and records how it ended.
pub struct LimitedBody {
    inner: ClientBody,
    left: u64,
    state: Arc<BodyState>,
    /// Most bytes the copy for replay may hold, while one is kept.
    keep: Option<usize>,
    /// Frames already read (and counted) that go out before the rest.
    pending: VecDeque<Frame<Bytes>>,
    /// Longest pause allowed between frames until the upstream answers.
    idle: Option<Idle>,
}

/// The idle timer of a body: instead of being reset on every frame (a timer-wheel update per
/// frame), it runs a whole `timeout` and, when it fires, starts again if a frame arrived
/// meanwhile. A pause of more than `timeout` is thus caught within twice it.
struct Idle {
    timeout: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// A frame arrived since the timer was last started.
    progressed: bool,
}

impl LimitedBody {
    /// `inner`, limited to `limit` bytes.
    pub fn new(inner: ClientBody, limit: u64) -> LimitedBody {
        let state = BodyState::default();
        state
            .finished
            .store(inner.is_end_stream(), Ordering::Relaxed);
        LimitedBody {
            inner,
            left: limit,
            state: Arc::new(state),
            keep: None,
            pending: VecDeque::new(),
            idle: None,
        }
    }

    /// The body, failing with [`IdleTimeout`] once the client sends no frame for `timeout`
    /// while the upstream has not answered ([`BodyState::answered`]).
    pub fn idle_timeout(mut self, timeout: Duration) -> LimitedBody {
        self.idle = Some(Idle {
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            progressed: false,
        });
        self
    }

    /// Reads the next frame, to be sent before the rest by [`LimitedBody::unread`].
    pub async fn read_frame(&mut self) -> Option<Result<Frame<Bytes>, <Self as Body>::Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_frame(cx)).await
    }

    /// The body with `frames` (read from it earlier) sent again first.
    pub fn unread(mut self, frames: VecDeque<Frame<Bytes>>) -> LimitedBody {
        self.pending = frames;
        self
    }

    /// Polls the idle timer after the client had nothing to send: `true` once it ran out before
    /// the upstream answered (after that answer the timer is dropped).
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(idle) = self.idle.as_mut() else {
            return false;
        };
        if idle.timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        if self.state.answered.load(Ordering::Relaxed) {
            self.idle = None;
            return false;
        }
        if idle.progressed {
            idle.progressed = false;
            let deadline = tokio::time::Instant::now() + idle.timeout;
            idle.timer.as_mut().reset(deadline);
            // Polled once so that the timer wakes this task again.
            if idle.timer.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
            return false;
        }
        self.state.timed_out.store(true, Ordering::Relaxed);
        true
    }

    /// The body, keeping a copy of what streams through (up to `cap` bytes) so that a request
    /// whose body had to stream can still be replayed once the client has sent all of it. A
    /// body larger than `cap`, or with trailers, drops its copy.
    pub fn keep_copy(mut self, cap: usize) -> LimitedBody {
        *self
            .state
            .copy
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(BytesMut::new());
        self.keep = Some(cap);
        self
    }

    /// Adds `frame` to the copy, or drops the copy if it cannot hold the frame.
    fn copy(&mut self, frame: &Frame<Bytes>) {
        let Some(cap) = self.keep else {
            return;
        };
        let mut copy = self
            .state
            .copy
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match (copy.as_mut(), frame.data_ref()) {
            (Some(bytes), Some(data)) if bytes.len() + data.len() <= cap => {
                bytes.extend_from_slice(data);
            }
            _ => {
                *copy = None;
                self.keep = None;
            }
        }
    }

    /// The record of how the body fares.
    pub fn state(&self) -> Arc<BodyState> {
        self.state.clone()
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(frame) = self.pending.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending if self.idle_expired(cx) => {
                return Poll::Ready(Some(Err(IdleTimeout.into())))
            }
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                self.state.finished.store(true, Ordering::Relaxed);
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => {
                self.state.failed.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(e)));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if let Some(data) = frame.data_ref() {
            let length = data.len() as u64;
            if length > self.left {
                self.state.over_limit.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(OverLimit.into())));
            }
            self.left -= length;
        }
        self.copy(&frame);
        if let Some(idle) = self.idle.as_mut() {
            idle.progressed = true;
        }
        if self.inner.is_end_stream() {
            self.state.finished.store(true, Ordering::Relaxed);
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let unread: u64 = self
            .pending
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        let rest = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + unread);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + unread);
        }
        hint
    }
}

/// An upstream's response body. Reading it can fail (the connection reset, or closed before
/// the body reached its length); the failure goes on to the client, whose response is broken
/// off, and is counted in `meridian_proxy_upstream_body_errors_total`.
pub struct ResponseBody {
    inner: ConnectionBody,
    cluster: Arc<Cluster>,
    metrics: Arc<ProxyMetrics>,
    /// Bytes of the body already read from `inner`, sent first.
    read: Option<Bytes>,
    /// The use of an instance that sleeps, until the body is done with.
    _using: Option<crate::wake::Use>,
    /// Codes the content as it passes, when the edge compresses it on the fly.
    coder: Option<Box<Coder>>,
}

/// A body's coding on the fly: the coder until the content has ended, then the trailers
/// that came after it, sent after the last coded bytes.
struct Coder {
    encoder: Option<Encoder>,
    trailers: Option<HeaderMap>,
}

impl Coder {
    /// The content's last coded bytes, with the trailers that ended it if any.
    fn finish(&mut self, trailers: Option<HeaderMap>) -> Result<Frame<Bytes>, BodyError> {
        self.trailers = trailers;
        let encoder = self.encoder.take();
        let tail = encoder.map(Encoder::finish).transpose();
        Ok(Frame::data(
            tail.map_err(BodyError::Coding)?.unwrap_or_default(),
        ))
    }
}

impl ResponseBody {
    /// `inner`, from an endpoint of `cluster`.
    pub fn new(inner: ConnectionBody, cluster: Arc<Cluster>, metrics: Arc<ProxyMetrics>) -> Self {
        ResponseBody {
            inner,
            cluster,
            metrics,
            read: None,
            _using: None,
            coder: None,
        }
    }

    /// The same body, keeping the instance it comes from in use until it is done with.
    pub(crate) fn holding(mut self, using: Option<crate::wake::Use>) -> Self {
        self._using = using;
        self
    }

    /// The same body with its content coded by `encoder` as it passes.
    pub(crate) fn coded(mut self, encoder: Encoder) -> Self {
        self.coder = Some(Box::new(Coder {
            encoder: Some(encoder),
            trailers: None,
        }));
        self
    }

    /// The next frame as it came: the bytes read first, then `inner`'s, failures counted.
    fn poll_plain(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(read) = self.read.take() {
            return Poll::Ready(Some(Ok(Frame::data(read))));
        }
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &frame {
            tracing::debug!(cluster = %self.cluster.name, error = %e, "upstream response body failed");
            self.metrics.upstream_body_error(&self.cluster.name);
        }
        frame
    }

    /// The same body with its first bytes, already read from it, put back in front.
    pub(crate) fn after(mut self, read: Bytes) -> Self {
        self.read = Some(read).filter(|b| !b.is_empty());
        self
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = crate::pool::BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(coder) = this.coder.as_mut().filter(|c| c.encoder.is_none()) {
                return Poll::Ready(coder.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let frame = std::task::ready!(this.poll_plain(cx));
            let Some(coder) = this.coder.as_mut() else {
                return Poll::Ready(frame);
            };
            let Some(encoder) = coder.encoder.as_mut() else {
                continue;
            };
            let coded = match frame {
                None => coder.finish(None),
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => match encoder.write(&data) {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => Ok(Frame::data(out)),
                        Err(error) => Err(BodyError::Coding(error)),
                    },
                    Err(frame) => coder.finish(frame.into_trailers().ok()),
                },
            };
            return Poll::Ready(Some(coded));
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.coder {
            Some(coder) => coder.encoder.is_none() && coder.trailers.is_none(),
            None => self.read.is_none() && self.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.coder.is_some() {
            return SizeHint::default();
        }
        let Some(read) = &self.read else {
            return self.inner.size_hint();
        };
        let read = read.len() as u64;
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + read);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + read);
        }
        hint
    }
}
