//! The client's request body, counted against the configured limit as it streams.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// The error a [`LimitedBody`] yields once the body is over its limit.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than the limit")]
pub struct OverLimit;

/// A request body that fails once more than its limit has been read, and remembers that it did
/// (the upstream client reports body errors without their cause).
pub struct LimitedBody {
    inner: Incoming,
    left: u64,
    tripped: Arc<AtomicBool>,
}

impl LimitedBody {
    /// `inner`, limited to `limit` bytes.
    pub fn new(inner: Incoming, limit: u64) -> LimitedBody {
        LimitedBody {
            inner,
            left: limit,
            tripped: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A flag that turns true when the body goes over its limit.
    pub fn tripped(&self) -> Arc<AtomicBool> {
        self.tripped.clone()
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if let Some(data) = frame.data_ref() {
            let length = data.len() as u64;
            if length > self.left {
                self.tripped.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(OverLimit.into())));
            }
            self.left -= length;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
