//! Draining one listener's connections, apart from the rest of the proxy: a listener removed by
//! a reload is *retired* — its connections finish the requests in flight and close (HTTP/1.1
//! idle keep-alive connections at once, HTTP/2 with GOAWAY), while upgraded connections
//! (WebSockets) and relayed TCP connections carry on — until whoever removed it *closes* it
//! ([`Retirement::drained`]), which ends whatever is still open. A node proxy drains the
//! listeners of an instance leaving service this way before the instance is stopped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// Where a listener is in its retirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Configured: connections serve on.
    Serving,
    /// No longer configured: connections finish what is in flight and close.
    Retired,
    /// Whatever is still open closes now.
    Closing,
}

/// One listener's connections (HTTP connections, upgraded connections, relayed connections),
/// counted, and the signals that wind them down.
#[derive(Debug)]
pub struct Retirement {
    phase: watch::Sender<Phase>,
    open: AtomicUsize,
    closed: Notify,
}

impl Default for Retirement {
    fn default() -> Self {
        Retirement {
            phase: watch::Sender::new(Phase::Serving),
            open: AtomicUsize::new(0),
            closed: Notify::new(),
        }
    }
}

/// One connection of a listener, counted until dropped.
#[derive(Debug)]
pub struct Retiring(Arc<Retirement>);

impl Drop for Retiring {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.closed.notify_waiters();
    }
}

impl Retiring {
    /// Resolves once the listener's remaining connections must close.
    pub async fn closing(&self) {
        self.0.reached(Phase::Closing).await;
    }
}

impl Retirement {
    /// Counts one connection until the returned guard is dropped.
    pub fn connection(self: &Arc<Self>) -> Retiring {
        self.open.fetch_add(1, Ordering::SeqCst);
        Retiring(self.clone())
    }

    /// How many connections are open.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// The listener is no longer configured: its connections wind down.
    pub fn retire(&self) {
        self.phase
            .send_if_modified(|phase| advance(phase, Phase::Retired));
    }

    /// Resolves once the listener is retired.
    pub async fn retired(&self) {
        self.reached(Phase::Retired).await;
    }

    /// Resolves once the listener's remaining connections must close.
    pub async fn closing(&self) {
        self.reached(Phase::Closing).await;
    }

    async fn reached(&self, phase: Phase) {
        let mut current = self.phase.subscribe();
        // The sender lives in `self`: waiting cannot fail.
        let _ = current.wait_for(|now| *now >= phase).await;
    }

    /// Retires the listener, waits until its connections have closed or `timeout` has
    /// passed, then closes those left; returns how many were left.
    pub async fn drained(&self, timeout: Duration) -> usize {
        self.retire();
        let deadline = tokio::time::Instant::now() + timeout;
        let left = loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            let open = self.open();
            if open == 0 {
                break 0;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                break self.open();
            }
        };
        self.phase
            .send_if_modified(|phase| advance(phase, Phase::Closing));
        left
    }
}

/// Moves `phase` forward to `to` (never back); says whether it moved.
fn advance(phase: &mut Phase, to: Phase) -> bool {
    if *phase < to {
        *phase = to;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn connections_get_until_the_timeout_and_are_then_told_to_close() {
        let retirement = Arc::new(Retirement::default());
        let quick = retirement.connection();
        let slow = retirement.connection();
        let retired = tokio::spawn({
            let retirement = retirement.clone();
            async move { retirement.retired().await }
        });
        let started = tokio::time::Instant::now();
        let drained = tokio::spawn({
            let retirement = retirement.clone();
            async move { retirement.drained(Duration::from_secs(30)).await }
        });
        retired.await.unwrap();
        // One closes by itself after 1 s; the other would stay open.
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(quick);
        let closing = tokio::spawn(async move {
            slow.closing().await;
            tokio::time::Instant::now()
        });
        assert_eq!(drained.await.unwrap(), 1, "one was left open");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert_eq!(closing.await.unwrap() - started, Duration::from_secs(30));
        assert_eq!(retirement.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_listener_without_connections_drains_at_once() {
        let retirement = Retirement::default();
        let started = tokio::time::Instant::now();
        assert_eq!(retirement.drained(Duration::from_secs(30)).await, 0);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
