//! Sleep and wake of the instance an inbound listener serves ([`WakeGate`]): the node proxy
//! counts what uses the instance (requests until their response ends, switched connections
//! such as WebSockets until they close) so that the embedding agent knows when it is idle; while
//! the agent keeps it asleep, requests are held in a bounded queue, the first one rings the
//! agent (a notification, no polling), and all go on the moment the agent opens the gate.
//! Beyond the queue's bound or past the wake timeout they are answered `503` with
//! `Retry-After`. An instance that never sleeps pays one atomic load per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::{HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use tokio::sync::{watch, Notify};

use crate::answers::local_response;
use crate::body::ProxyBody;
use crate::lock;

/// The gate of one instance, shared by the node proxy's listeners for it and its agent.
#[derive(Debug)]
pub struct WakeGate {
    /// Whether requests must wait (read on every request: the fast path).
    asleep: AtomicBool,
    /// `true` while requests may go to the instance; held requests wait for it.
    open: watch::Sender<bool>,
    /// Rung by a held request or a nudge.
    wake: Notify,
    /// Whether a nudge ([`crate::nudge`]) asked for a wake that has not begun.
    nudged: AtomicBool,
    /// Requests, response bodies and switched connections using the instance now.
    busy: AtomicUsize,
    /// Requests held now.
    held: AtomicUsize,
    /// When the instance was last used, in milliseconds since `epoch`.
    last_used_ms: AtomicU64,
    epoch: Instant,
    /// Most requests held at once.
    queue: AtomicUsize,
    /// Longest a request is held, in milliseconds.
    timeout_ms: AtomicU64,
    /// Requests answered 503 because the queue was full / the wake took too long.
    refused: [AtomicU64; 2],
}

impl Default for WakeGate {
    fn default() -> Self {
        WakeGate {
            asleep: AtomicBool::new(false),
            open: watch::Sender::new(true),
            wake: Notify::new(),
            nudged: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            last_used_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            queue: AtomicUsize::new(100),
            timeout_ms: AtomicU64::new(30_000),
            refused: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }
}

/// Why a held request was answered by the proxy (while its instance wakes, or at its limit
/// of requests in flight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The queue of held requests was full.
    QueueFull,
    /// The instance did not wake within the wake timeout.
    Timeout,
    /// As many requests waited for room under the instance's limit as the limit.
    LimitQueueFull,
    /// No room came under the instance's limit within [`crate::figures::WAIT`].
    LimitTimeout,
    /// The instance was at its limit and the sender would retry elsewhere
    /// ([`crate::elsewhere`]).
    Elsewhere,
}

impl Refusal {
    /// The `x-meridian-error` reason.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::QueueFull => "wake_queue_full",
            Refusal::Timeout => "wake_timeout",
            Refusal::LimitQueueFull => "concurrency_queue_full",
            Refusal::LimitTimeout => "concurrency_timeout",
            Refusal::Elsewhere => crate::elsewhere::REASON,
        }
    }

    /// The proxy's answer: `503` with `Retry-After: 1` (without it when the sender retries
    /// elsewhere at once).
    #[cold]
    pub(crate) fn answer(self) -> Response<ProxyBody> {
        let mut response = local_response(StatusCode::SERVICE_UNAVAILABLE, self.reason());
        if self != Refusal::Elsewhere {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// One use of an instance (a request until its response ends, a switched connection until it
/// closes): the instance is not idle while one lives.
#[derive(Debug)]
pub struct Use(Arc<WakeGate>);

impl Drop for Use {
    fn drop(&mut self) {
        let gate = &self.0;
        gate.last_used_ms.store(gate.now_ms(), Ordering::SeqCst);
        gate.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Decrements the held count when a held request leaves the queue.
struct Held<'a>(&'a AtomicUsize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl WakeGate {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts a use of the instance until the guard drops. Taken before [`WakeGate::pass`],
    /// so that the agent, which puts the instance to sleep only while none is counted, never
    /// freezes it under a request that passed.
    pub fn use_now(self: &Arc<Self>) -> Use {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Use(self.clone())
    }

    /// Lets a request go on: at once while the instance is awake; else holds it (bounded by
    /// the queue and the wake timeout), ringing the agent, until the gate opens.
    pub async fn pass(&self) -> Result<(), Refusal> {
        if !self.asleep.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.hold().await
    }

    #[cold]
    async fn hold(&self) -> Result<(), Refusal> {
        let queue = self.queue.load(Ordering::Relaxed);
        if self.held.fetch_add(1, Ordering::SeqCst) >= queue {
            self.held.fetch_sub(1, Ordering::SeqCst);
            self.refused[0].fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::QueueFull);
        }
        let _held = Held(&self.held);
        let mut open = self.open.subscribe();
        self.wake.notify_one();
        let timeout = Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed));
        let opened = tokio::time::timeout(timeout, open.wait_for(|open| *open))
            .await
            .is_ok_and(|opened| opened.is_ok());
        if opened {
            return Ok(());
        }
        self.refused[1].fetch_add(1, Ordering::Relaxed);
        Err(Refusal::Timeout)
    }

    /// Sets the most requests held at once and how long each is held.
    pub fn set_hold(&self, queue: usize, timeout: Duration) {
        self.queue.store(queue, Ordering::Relaxed);
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// How long the instance has gone unused; `None` while something uses it. An instance
    /// never used counts from the gate's making.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.busy.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let last = self.last_used_ms.load(Ordering::SeqCst);
        Some(Duration::from_millis(self.now_ms().saturating_sub(last)))
    }

    /// Closes the gate if nothing uses the instance: from now on requests are held. Whether it
    /// closed (`false`: something uses it, and the gate stays open).
    pub fn close_if_idle(&self) -> bool {
        self.asleep.store(true, Ordering::SeqCst);
        self.open.send_replace(false);
        if self.busy.load(Ordering::SeqCst) > 0 {
            self.open_now();
            return false;
        }
        true
    }

    /// Closes the gate whatever uses the instance (it is going away and comes back).
    pub fn close(&self) {
        self.asleep.store(true, Ordering::SeqCst);
        self.open.send_replace(false);
    }

    /// Opens the gate: held requests go on, new ones pass at once.
    pub fn open_now(&self) {
        self.asleep.store(false, Ordering::SeqCst);
        self.open.send_replace(true);
    }

    /// Whether requests are held now (the instance sleeps, or wakes).
    pub fn is_closed(&self) -> bool {
        self.asleep.load(Ordering::SeqCst)
    }

    /// Waits until a request is held (the gate is closed and one arrived), or a nudge came.
    pub async fn woken(&self) {
        loop {
            let rung = self.wake.notified();
            tokio::pin!(rung);
            rung.as_mut().enable();
            let nudged = self.nudged.swap(false, Ordering::SeqCst);
            if nudged || self.held.load(Ordering::SeqCst) > 0 {
                return;
            }
            rung.await;
        }
    }

    /// Asks for a wake without a request to hold (a wake nudge, see [`crate::nudge`]):
    /// rings the agent if the gate is closed. A nudge is a use, asleep or awake: the edge that
    /// sends it has requests for the service and wants it awake here, so an instance it woke
    /// does not fall asleep again before the edge sends it those requests.
    pub fn nudge(&self) {
        self.last_used_ms.store(self.now_ms(), Ordering::SeqCst);
        if self.asleep.load(Ordering::SeqCst) {
            self.nudged.store(true, Ordering::SeqCst);
            self.wake.notify_one();
        }
    }

    /// Requests held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Requests answered 503 so far: (the queue was full, the wake took too long).
    pub fn refused(&self) -> (u64, u64) {
        (
            self.refused[0].load(Ordering::Relaxed),
            self.refused[1].load(Ordering::Relaxed),
        )
    }
}

/// The gates of the instances the agent puts to sleep, by the instance's name on the node
/// (`instance.name` of the inbound listeners' configuration). Cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct WakeGates(Arc<Mutex<HashMap<String, Arc<WakeGate>>>>);

impl WakeGates {
    /// Instance `name`'s gate, if it has one.
    pub fn get(&self, name: &str) -> Option<Arc<WakeGate>> {
        lock(&self.0).get(name).cloned()
    }

    /// Instance `name`'s gate, made (open) if it has none.
    pub fn make(&self, name: &str) -> Arc<WakeGate> {
        lock(&self.0).entry(name.to_owned()).or_default().clone()
    }

    /// Forgets instance `name`'s gate (it no longer sleeps, or is gone); requests it holds
    /// go on as if it opened.
    pub fn remove(&self, name: &str) {
        if let Some(gate) = lock(&self.0).remove(name) {
            gate.open_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_open_gate_passes_and_counts_uses() {
        let gate = Arc::new(WakeGate::default());
        let using = gate.use_now();
        assert_eq!(gate.pass().await, Ok(()));
        assert_eq!(gate.idle_for(), None, "in use");
        assert!(!gate.close_if_idle(), "a use keeps it open");
        assert_eq!(gate.pass().await, Ok(()));
        drop(using);
        assert!(gate.idle_for().is_some());
        assert!(gate.close_if_idle());
    }

    #[tokio::test]
    async fn a_held_request_rings_the_agent_and_goes_once_the_gate_opens() {
        let gate = Arc::new(WakeGate::default());
        assert!(gate.close_if_idle());
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move {
                let _use = gate.use_now();
                gate.pass().await
            }
        });
        gate.woken().await;
        assert_eq!(gate.held(), 1);
        gate.open_now();
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(gate.held(), 0);
    }

    #[tokio::test]
    async fn a_nudge_rings_the_agent_of_a_closed_gate_only() {
        let gate = Arc::new(WakeGate::default());
        gate.nudge();
        assert!(
            !gate.nudged.load(Ordering::SeqCst),
            "an open gate needs no wake"
        );
        assert!(gate.close_if_idle());
        gate.nudge();
        gate.woken().await;
        assert_eq!(gate.held(), 0, "woken without a request held");
    }

    #[tokio::test]
    async fn beyond_the_queue_or_past_the_timeout_requests_are_refused() {
        let gate = Arc::new(WakeGate::default());
        gate.set_hold(1, Duration::from_millis(50));
        gate.close();
        let first = tokio::spawn({
            let gate = gate.clone();
            async move { gate.pass().await }
        });
        gate.woken().await;
        assert_eq!(gate.pass().await, Err(Refusal::QueueFull));
        assert_eq!(first.await.unwrap(), Err(Refusal::Timeout));
        assert_eq!(gate.refused(), (1, 1));
        let answer = Refusal::Timeout.answer();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.headers()[RETRY_AFTER], "1");
        assert_eq!(answer.headers()[crate::ERROR_HEADER], "wake_timeout");
    }
}
