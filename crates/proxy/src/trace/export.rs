//! The spans' way out: a bounded queue that the request path hands finished spans to without
//! waiting, and a task that takes them off in batches and exports each batch (OTLP over gRPC
//! in production). A span that finds the queue full is dropped and counted; a batch the
//! collector did not take is counted as failed (the exporter retries it a few times first).

use std::time::Duration;

use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::oneshot;

/// Spans waiting for export at most; more are dropped.
pub(crate) const QUEUE_SPANS: usize = 2048;
/// Most spans in one export.
const BATCH_SPANS: usize = 512;
/// How long the first span of a batch waits for others before the batch goes.
const BATCH_DELAY: Duration = Duration::from_secs(1);

/// The trace exporter's counters.
#[derive(Debug, Clone, Default)]
pub struct TraceCounters {
    /// Spans the collector accepted.
    pub exported: Counter,
    /// Spans dropped because the queue was full.
    pub dropped: Counter,
    /// Spans in batches the collector did not accept (unreachable, refused, timed out).
    pub failed: Counter,
}

/// The request path's end of the queue.
pub(crate) struct SpanQueue {
    sender: mpsc::Sender<SpanData>,
    /// Asks the exporting task to export what is queued now; it answers when done.
    flushes: mpsc::Sender<oneshot::Sender<()>>,
    dropped: Counter,
}

impl SpanQueue {
    /// A queue of at most `capacity` spans exported by `exporter` in batches, from a task
    /// spawned on the current Tokio runtime; it ends once the queue is dropped and emptied.
    pub(crate) fn start<E: SpanExporter + 'static>(
        exporter: E,
        capacity: usize,
        counters: TraceCounters,
    ) -> SpanQueue {
        let (sender, queue) = mpsc::channel(capacity);
        let (flushes, flush_requests) = mpsc::channel(1);
        let dropped = counters.dropped.clone();
        let batcher = Batcher {
            queue,
            flushes: flush_requests,
            exporter,
            counters,
            failing: false,
        };
        tokio::spawn(batcher.run());
        SpanQueue {
            sender,
            flushes,
            dropped,
        }
    }

    /// A queue of at most `capacity` spans that nothing exports: its reading end is returned.
    #[cfg(test)]
    pub(crate) fn unread(
        capacity: usize,
        counters: TraceCounters,
    ) -> (SpanQueue, mpsc::Receiver<SpanData>) {
        let (sender, receiver) = mpsc::channel(capacity);
        let (flushes, _) = mpsc::channel(1);
        let dropped = counters.dropped;
        let queue = SpanQueue {
            sender,
            flushes,
            dropped,
        };
        (queue, receiver)
    }

    /// Hands `span` to the exporter, or drops and counts it if the queue is full; never waits.
    pub(crate) fn push(&self, span: SpanData) {
        match self.sender.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Closed(_)) => {
                self.dropped.inc();
            }
        }
    }

    /// Exports the spans queued now (after the batch being gathered, if any), waiting at most
    /// `timeout`; whether it was done in time.
    pub(crate) async fn flush(&self, timeout: Duration) -> bool {
        let (done, finished) = oneshot::channel();
        let flushed = async {
            self.flushes.send(done).await.ok()?;
            finished.await.ok()
        };
        matches!(tokio::time::timeout(timeout, flushed).await, Ok(Some(())))
    }
}

/// The exporting task: takes spans off the queue in batches (at most [`BATCH_SPANS`], waiting
/// at most [`BATCH_DELAY`] after the first) and exports each, until the queue is closed and
/// empty; and exports all that is queued when asked to flush.
struct Batcher<E> {
    queue: mpsc::Receiver<SpanData>,
    flushes: mpsc::Receiver<oneshot::Sender<()>>,
    exporter: E,
    counters: TraceCounters,
    /// Whether the last export failed (an outage is logged once).
    failing: bool,
}

impl<E: SpanExporter> Batcher<E> {
    async fn run(mut self) {
        loop {
            tokio::select! {
                // A flush first: whoever asked is waiting.
                biased;
                Some(done) = self.flushes.recv() => {
                    self.export_queued().await;
                    // The asker may have stopped waiting.
                    let _ = done.send(());
                }
                span = self.queue.recv() => {
                    let Some(first) = span else { return };
                    let batch = self.gather(first).await;
                    self.export(batch).await;
                }
            }
        }
    }

    /// A batch starting with `first`: the spans that come within [`BATCH_DELAY`], at most
    /// [`BATCH_SPANS`].
    async fn gather(&mut self, first: SpanData) -> Vec<SpanData> {
        let mut batch = Vec::with_capacity(BATCH_SPANS);
        batch.push(first);
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < BATCH_SPANS {
            match tokio::time::timeout_at(deadline, self.queue.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        batch
    }

    /// Exports every span queued now, in batches.
    async fn export_queued(&mut self) {
        loop {
            let mut batch = Vec::new();
            while batch.len() < BATCH_SPANS {
                match self.queue.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                return;
            }
            self.export(batch).await;
        }
    }

    /// Exports `batch`, counting its spans as exported or failed.
    async fn export(&mut self, batch: Vec<SpanData>) {
        let spans = batch.len() as u64;
        match self.exporter.export(batch).await {
            Ok(()) => {
                self.counters.exported.inc_by(spans);
                if self.failing {
                    tracing::info!("the trace collector takes spans again");
                    self.failing = false;
                }
            }
            Err(e) => {
                self.counters.failed.inc_by(spans);
                // Said once per outage; the counter tells the rest.
                if !self.failing {
                    tracing::warn!(error = %e, spans, "the trace collector did not take spans");
                    self.failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// Keeps the size of the batches it is given; each export first waits at `gate`, and
    /// fails while `fail` holds.
    #[derive(Debug, Clone)]
    struct Kept {
        batches: Arc<Mutex<Vec<usize>>>,
        entered: Arc<AtomicUsize>,
        gate: Arc<tokio::sync::Semaphore>,
        fail: Arc<AtomicBool>,
    }

    impl Kept {
        /// An exporter whose exports wait at its gate until permits are added.
        fn gated() -> Kept {
            Kept {
                batches: Arc::default(),
                entered: Arc::default(),
                gate: Arc::new(tokio::sync::Semaphore::new(0)),
                fail: Arc::default(),
            }
        }
    }

    impl SpanExporter for Kept {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.entered.fetch_add(1, Ordering::SeqCst);
            let _pass = self.gate.acquire().await;
            self.batches.lock().unwrap().push(batch.len());
            if self.fail.load(Ordering::SeqCst) {
                return Err(OTelSdkError::InternalFailure("refused".to_owned()));
            }
            Ok(())
        }
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(tokio::time::Instant::now() < end, "never {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn spans_are_exported_in_batches_and_a_full_queue_drops_and_counts() {
        let exporter = Kept::gated();
        let counters = TraceCounters::default();
        let queue = SpanQueue::start(exporter.clone(), 4, counters.clone());
        let span = crate::trace::hop::tests::sample_span;
        queue.push(span());
        // The exporter holds the first batch at its gate: the queue (4) fills behind it.
        until("the first export", || {
            exporter.entered.load(Ordering::SeqCst) == 1
        })
        .await;
        for _ in 0..6 {
            queue.push(span());
        }
        assert_eq!(counters.dropped.get(), 2);
        exporter.gate.add_permits(100);
        until("every span queued exported", || {
            counters.exported.get() == 5
        })
        .await;
        assert_eq!(*exporter.batches.lock().unwrap(), [1, 4]);
        exporter.fail.store(true, Ordering::SeqCst);
        queue.push(span());
        until("a failed export counted", || counters.failed.get() == 1).await;
        assert_eq!(counters.exported.get(), 5);
    }

    #[tokio::test]
    async fn a_flush_exports_what_is_queued() {
        let exporter = Kept::gated();
        let counters = TraceCounters::default();
        let queue = SpanQueue::start(exporter.clone(), 16, counters.clone());
        // Held at the gate, the first batch lets the next spans wait in the queue.
        queue.push(crate::trace::hop::tests::sample_span());
        until("the first export", || {
            exporter.entered.load(Ordering::SeqCst) == 1
        })
        .await;
        for _ in 0..3 {
            queue.push(crate::trace::hop::tests::sample_span());
        }
        exporter.gate.add_permits(100);
        assert!(queue.flush(Duration::from_secs(10)).await);
        assert_eq!(counters.exported.get(), 4);
        assert_eq!(*exporter.batches.lock().unwrap(), [1, 3]);
    }
}
