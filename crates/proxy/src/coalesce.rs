//! Writes held to the end of the runtime's round, so that what several requests answer in one
//! round leaves a connection in one write.
//!
//! Under load a client connection's answers come from many tasks (an HTTP/2 stream each) that
//! the runtime runs one after the other. Written as each one finishes, they leave in several
//! small writes, and each write may wake the client again; HAProxy sends once per loop. A
//! [`Coalesced`] stream turns the first write after a flush into a yield that resumes once the
//! runtime has run every task already woken (tokio's `yield_now`: after its next look at the
//! sockets), then writes everything through until the next flush. An idle proxy pays one more
//! look at its sockets (no wait) per flush.
//!
//! Only multiplexed (HTTP/2) connections coalesce: an HTTP/1.1 connection has one answer at a
//! time, which nothing would join (measured: no gain, one more poll per response).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where the stream is between two flushes.
enum Round {
    /// Flushed: the next write waits for the end of the round.
    Flushed,
    /// Waiting for the end of the round.
    Yielding(Pin<Box<dyn Future<Output = ()> + Send + Sync>>),
    /// The round ended: writes go through until the next flush.
    Writing,
    /// Not coalescing: every write goes through.
    Passing,
}

/// A stream whose writes after each flush wait for the end of the runtime's round.
pub struct Coalesced<T> {
    inner: T,
    round: Round,
}

impl<T> Coalesced<T> {
    /// Wraps `inner`; if `coalescing`, its first write waits for the round's end too, else
    /// every write goes through at once.
    pub fn new(inner: T, coalescing: bool) -> Self {
        let round = if coalescing {
            Round::Flushed
        } else {
            Round::Passing
        };
        Coalesced { inner, round }
    }

    /// Ready once the writes may go through.
    fn poll_round(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &mut self.round {
                Round::Writing | Round::Passing => return Poll::Ready(()),
                Round::Flushed => self.round = Round::Yielding(Box::pin(tokio::task::yield_now())),
                Round::Yielding(round) => {
                    std::task::ready!(round.as_mut().poll(cx));
                    self.round = Round::Writing;
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_round(cx));
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_round(cx));
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        if !matches!(self.round, Round::Passing) {
            self.round = Round::Flushed;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// Records, at each write, whether `other` had run by then.
    struct Recorder {
        other: Arc<AtomicBool>,
        writes: Arc<Mutex<Vec<bool>>>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let other = self.other.load(Ordering::SeqCst);
            self.writes.lock().unwrap().push(other);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Writes twice (flushing after each) on a current-thread runtime while another task is
    /// already woken; whether that task had run at each write.
    fn writes_seeing_the_other_task(coalescing: bool) -> Vec<bool> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let other = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(Mutex::new(Vec::new()));
        let recorder = Recorder {
            other: other.clone(),
            writes: writes.clone(),
        };
        runtime.block_on(async move {
            let mut stream = Coalesced::new(recorder, coalescing);
            let ran = other.clone();
            let woken = tokio::spawn(async move { ran.store(true, Ordering::SeqCst) });
            stream.write_all(b"first").await.unwrap();
            stream.flush().await.unwrap();
            other.store(false, Ordering::SeqCst);
            let ran = other.clone();
            let again = tokio::spawn(async move { ran.store(true, Ordering::SeqCst) });
            stream.write_all(b"second").await.unwrap();
            stream.flush().await.unwrap();
            woken.await.unwrap();
            again.await.unwrap();
        });
        let writes = writes.lock().unwrap().clone();
        writes
    }

    #[test]
    fn a_write_after_a_flush_waits_for_the_tasks_already_woken() {
        assert_eq!(writes_seeing_the_other_task(true), vec![true, true]);
    }

    #[test]
    fn without_coalescing_a_write_goes_through_at_once() {
        assert_eq!(writes_seeing_the_other_task(false), vec![false, false]);
    }
}
