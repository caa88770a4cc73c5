//! Closing idle and stalled client connections: a connection with no request in flight and no
//! bytes moving for the idle timeout is dropped, and so is one whose responses wait for the
//! client to take their data for the send timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a connection's watchdog looks at: bytes moved (as a counter of reads and writes) and
/// requests in flight.
#[derive(Default)]
pub struct Activity {
    moves: AtomicU64,
    in_flight: AtomicUsize,
    /// Polls of response bodies: the HTTP layer asks for more when the client takes data.
    polls: AtomicU64,
    /// Response bodies waiting to be asked for a frame: new ones, and those that handed one to
    /// the HTTP layer and were not asked for more since.
    waiting: AtomicUsize,
}

impl Activity {
    /// Marks a request in flight until the guard is dropped; its start and end count as
    /// activity.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.moves.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Counts bytes moved by something that is not a [`Watched`] stream (a spliced relay).
    pub fn moved(&self) {
        self.moves.fetch_add(1, Ordering::Relaxed);
    }

    /// Resolves once the connection has been idle for a whole `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        let mut seen = self.moves.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(timeout).await;
            let now = self.moves.load(Ordering::Relaxed);
            if now == seen && self.in_flight.load(Ordering::Relaxed) == 0 {
                return;
            }
            seen = now;
        }
    }

    /// Resolves once a response has waited a whole `timeout` for the client to take its data
    /// (its body was not asked for a first frame, or for another after handing one over) while
    /// no response body of the connection was asked for a frame: the client reads nothing (a
    /// zero HTTP/2 window, a full TCP window). Noticed within twice `timeout`.
    pub async fn stalled_for(&self, timeout: Duration) {
        let mut seen = (self.polls.load(Ordering::Relaxed), false);
        loop {
            tokio::time::sleep(timeout).await;
            let now = (
                self.polls.load(Ordering::Relaxed),
                self.waiting.load(Ordering::Relaxed) > 0,
            );
            if now.1 && seen.1 && now.0 == seen.0 {
                return;
            }
            seen = now;
        }
    }
}

/// A request in flight on a connection.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.moves.fetch_add(1, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An I/O stream that counts its reads and writes into an [`Activity`].
pub struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Watched { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if result.is_ready() {
            self.activity.moves.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if result.is_ready() {
            self.activity.moves.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if result.is_ready() {
            self.activity.moves.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request counted as in flight until it has been sent or
/// dropped, and says whether it waits for the client to take data (see
/// [`Activity::stalled_for`]).
pub struct Tracked<B> {
    inner: B,
    in_flight: InFlight,
    /// Not asked for a frame yet, or handed one over and not asked for another since.
    waiting: bool,
}

impl<B> Tracked<B> {
    /// `inner`, holding `in_flight`.
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        let mut tracked = Tracked {
            inner,
            in_flight,
            waiting: false,
        };
        tracked.set_waiting(true);
        tracked
    }

    fn set_waiting(&mut self, waiting: bool) {
        if self.waiting == waiting {
            return;
        }
        self.waiting = waiting;
        let count = &self.in_flight.0.waiting;
        if waiting {
            count.fetch_add(1, Ordering::Relaxed);
        } else {
            count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.set_waiting(false);
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        self.in_flight.0.polls.fetch_add(1, Ordering::Relaxed);
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        self.set_waiting(matches!(polled, Poll::Ready(Some(Ok(_)))));
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
