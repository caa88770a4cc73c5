//! Request figures that control planes add up ([`Figures`]): requests by status class and a
//! latency histogram with the fixed bounds of [`LATENCY_BOUNDS_MS`]. Counting a request touches
//! three atomics and nothing else (no lock, no allocation); reading them makes a [`Traffic`].
//! An instance's figures also count the requests in flight ([`Figures::in_flight`]) and the
//! time they spent in flight (the integral of the count over time, so that its growth over any
//! span divided by the span is the average concurrency over it, not a sample of a moment),
//! which its region autoscales on. Both live in two atomics: one word holds the count and when
//! it last changed, updated with a compare-and-swap, the other the time accrued before that.
//!
//! An instance's count in flight may be limited ([`Figures::limit_in_flight`]): a request
//! beyond the limit waits for room ([`Figures::admit`]), in a queue as long as the limit and
//! for at most [`WAIT`], and is refused past either bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use crate::wake::Refusal;

/// How long a request waits for room under an instance's limit of requests in flight.
pub const WAIT: Duration = Duration::from_secs(1);

use meridian_xds::meridian::{Traffic, LATENCY_BOUNDS_MS};

/// How many latency buckets there are: one per bound, and one for slower requests.
pub const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// Cumulative figures of the requests answered for one instance or one cluster.
#[derive(Debug)]
pub struct Figures {
    by_class: [AtomicU64; 5],
    micros: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
    /// Requests received whose answer's head is not sent yet, and when that count last
    /// changed: see [`InFlightWord`].
    in_flight: AtomicU64,
    /// Request-microseconds in flight accrued up to the last change of the count.
    busy_micros: AtomicU64,
    /// What the times of `in_flight` count from.
    epoch: Instant,
    /// Most requests in flight (0: unlimited).
    limit: AtomicU64,
    /// Requests waiting for room under the limit.
    waiting: AtomicU64,
    /// Told when a request in flight ends while some wait.
    room: Notify,
    /// When counting started, in milliseconds since the Unix epoch.
    started_ms: u64,
}

/// The word of [`Figures::in_flight`]: the requests in flight in its low [`COUNT_BITS`] bits,
/// the microseconds since [`Figures::epoch`] of the count's last change in the others (they
/// wrap after about 200 days, and only differences between them are used).
#[derive(Debug, Clone, Copy)]
struct InFlightWord(u64);

/// How many bits of an [`InFlightWord`] count requests: at most a million in flight per
/// instance are counted (more are counted as that many).
const COUNT_BITS: u32 = 20;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

impl InFlightWord {
    fn count(self) -> u64 {
        self.0 & COUNT_MASK
    }

    fn changed(self) -> u64 {
        self.0 >> COUNT_BITS
    }

    fn new(count: u64, changed: u64) -> InFlightWord {
        InFlightWord((changed << COUNT_BITS) | count.min(COUNT_MASK))
    }

    /// Request-microseconds spent in flight from the last change to `now`.
    fn accrued(self, now: u64) -> u64 {
        let span = now.wrapping_sub(self.changed()) & (u64::MAX >> COUNT_BITS);
        self.count().saturating_mul(span)
    }
}

impl Default for Figures {
    fn default() -> Self {
        let started_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Figures {
            by_class: std::array::from_fn(|_| AtomicU64::new(0)),
            micros: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            in_flight: AtomicU64::new(0),
            busy_micros: AtomicU64::new(0),
            epoch: Instant::now(),
            limit: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            room: Notify::new(),
            started_ms,
        }
    }
}

impl Figures {
    /// Counts one answered request: `status` after `micros` microseconds from its head to the
    /// response's head.
    pub fn record(&self, status: u16, micros: u64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.micros.fetch_add(micros, Ordering::Relaxed);
        // A request of exactly a bound counts in that bound's bucket.
        let bucket = LATENCY_BOUNDS_MS.partition_point(|bound| bound * 1000 < micros);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one request in flight until the guard is dropped (once its answer's head is
    /// sent, or the request is given up).
    pub fn in_flight(self: &Arc<Self>) -> InFlight {
        self.change_in_flight(|count| Some(count + 1));
        InFlight(self.clone())
    }

    /// Sets the most requests in flight ([`Figures::admit`]); `None`: unlimited.
    pub fn limit_in_flight(&self, limit: Option<u32>) {
        self.limit
            .store(limit.map_or(0, u64::from), Ordering::Relaxed);
    }

    /// Counts one request in flight, as [`Figures::in_flight`], once there is room under the
    /// limit: at once while there is, else after waiting for a request in flight to end (as
    /// many may wait as the limit, each for at most [`WAIT`]). A request whose sender would
    /// retry it `elsewhere` does not wait: it is refused at once.
    pub async fn admit(self: &Arc<Self>, elsewhere: bool) -> Result<InFlight, Refusal> {
        let limit = self.limit.load(Ordering::Relaxed);
        if limit == 0 {
            return Ok(self.in_flight());
        }
        match self.try_in_flight(limit) {
            Some(admitted) => Ok(admitted),
            None if elsewhere => Err(Refusal::Elsewhere),
            None => self.wait_for_room(limit).await,
        }
    }

    /// Counts one request in flight if fewer than `limit` are.
    fn try_in_flight(self: &Arc<Self>, limit: u64) -> Option<InFlight> {
        let counted = self.change_in_flight(|count| (count < limit).then_some(count + 1));
        counted.then(|| InFlight(self.clone()))
    }

    #[cold]
    async fn wait_for_room(self: &Arc<Self>, limit: u64) -> Result<InFlight, Refusal> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= limit {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Refusal::LimitQueueFull);
        }
        let _waiting = Waiting(&self.waiting);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if let Some(admitted) = self.try_in_flight(limit) {
                return Ok(admitted);
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(Refusal::LimitTimeout);
            }
        }
    }

    /// Sets the count in flight to `to(count)` unless that is `None`, accruing the time
    /// spent at the old count; whether it changed.
    fn change_in_flight(&self, to: impl Fn(u64) -> Option<u64>) -> bool {
        let now = self.micros_now();
        let mut word = InFlightWord(self.in_flight.load(Ordering::Relaxed));
        loop {
            let Some(count) = to(word.count()) else {
                return false;
            };
            let next = InFlightWord::new(count, now);
            match self.in_flight.compare_exchange_weak(
                word.0,
                next.0,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(seen) => word = InFlightWord(seen),
            }
        }
        // A reader between the swap and this add misses this much until its next read.
        self.busy_micros
            .fetch_add(word.accrued(now), Ordering::Relaxed);
        true
    }

    /// Microseconds since [`Figures::epoch`].
    fn micros_now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Request-microseconds spent in flight so far.
    fn busy_micros(&self) -> u64 {
        let word = InFlightWord(self.in_flight.load(Ordering::Acquire));
        let accrued = self.busy_micros.load(Ordering::Relaxed);
        accrued.saturating_add(word.accrued(self.micros_now()))
    }

    /// The total time of the requests counted, in microseconds.
    pub fn micros(&self) -> u64 {
        self.micros.load(Ordering::Relaxed)
    }

    /// The figures so far, with `open_connections`. Read counter by counter while requests go
    /// on: `requests` is the buckets' sum, so the two always agree (the classes may be a
    /// request or two apart).
    pub fn traffic(&self, open_connections: u64) -> Traffic {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let latency_buckets: Vec<u64> = self.buckets.iter().map(load).collect();
        let by_class: Vec<u64> = self.by_class.iter().map(load).collect();
        Traffic {
            requests: latency_buckets.iter().sum(),
            failures: by_class[4],
            latency_buckets,
            by_class,
            open_connections,
            started_ms: self.started_ms,
            in_flight: InFlightWord(load(&self.in_flight)).count(),
            busy_micros: self.busy_micros(),
        }
    }
}

/// Counts a request waiting for room until dropped.
struct Waiting<'a>(&'a AtomicU64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One request in flight, counted in its [`Figures`] until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Figures>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .change_in_flight(|count| Some(count.saturating_sub(1)));
        if self.0.waiting.load(Ordering::SeqCst) > 0 {
            self.0.room.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_count_by_class_and_in_their_latency_bucket() {
        let figures = Figures::default();
        figures.record(200, 900);
        figures.record(204, 1_000);
        figures.record(404, 60_000_000);
        figures.record(503, 301_000);
        figures.record(101, 10);
        let traffic = figures.traffic(3);
        assert_eq!(traffic.by_class, [1, 2, 0, 1, 1]);
        assert_eq!((traffic.requests, traffic.failures), (5, 1));
        assert_eq!(traffic.latency_buckets.len(), BUCKETS);
        assert_eq!(traffic.latency_buckets[0], 3, "up to 1 ms");
        assert_eq!(traffic.latency_buckets[10], 1, "300 to 400 ms");
        assert_eq!(traffic.latency_buckets[BUCKETS - 1], 1, "beyond the last");
        assert_eq!(traffic.open_connections, 3);
        assert!(traffic.started_ms > 0);
        assert_eq!(figures.micros(), 60_302_910);
    }

    #[test]
    fn a_request_is_in_flight_until_its_guard_drops() {
        let figures = Arc::new(Figures::default());
        let first = figures.in_flight();
        let second = figures.in_flight();
        assert_eq!(figures.traffic(0).in_flight, 2);
        drop(first);
        assert_eq!(figures.traffic(0).in_flight, 1);
        drop(second);
        assert_eq!(figures.traffic(0).in_flight, 0);
    }

    #[test]
    fn time_in_flight_accrues_per_request_in_flight() {
        let figures = Arc::new(Figures::default());
        assert_eq!(figures.traffic(0).busy_micros, 0, "nothing in flight yet");
        let first = figures.in_flight();
        let second = figures.in_flight();
        // Two in flight: their time grows twice as fast as the clock.
        let before = figures.traffic(0).busy_micros;
        std::thread::sleep(std::time::Duration::from_millis(20));
        let during = figures.traffic(0).busy_micros;
        assert!(during - before >= 2 * 20_000, "{before} then {during}");
        drop((first, second));
        let ended = figures.traffic(0).busy_micros;
        assert!(ended >= during);
        // Nothing in flight: it stays put, at no more than twice the time they could have
        // been in flight.
        let all = figures.epoch.elapsed();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(figures.traffic(0).busy_micros, ended);
        assert!(ended <= 2 * u64::try_from(all.as_micros()).unwrap());
    }

    #[tokio::test]
    async fn beyond_the_limit_requests_wait_for_room_and_are_refused_past_the_queue_or_the_wait() {
        let figures = Arc::new(Figures::default());
        figures.limit_in_flight(Some(1));
        let first = figures.admit(false).await.unwrap();
        // The second waits for the first to end.
        let second = tokio::spawn({
            let figures = figures.clone();
            async move { figures.admit(false).await.map(drop) }
        });
        while figures.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // The queue is as long as the limit: a third is refused at once.
        assert_eq!(
            figures.admit(false).await.map(drop),
            Err(Refusal::LimitQueueFull)
        );
        drop(first);
        assert_eq!(second.await.unwrap(), Ok(()));
        // Nothing ends while one waits: refused after the wait.
        let held = figures.admit(false).await.unwrap();
        // One its sender would send elsewhere is refused at once.
        assert_eq!(figures.admit(true).await.map(drop), Err(Refusal::Elsewhere));
        assert_eq!(
            figures.admit(false).await.map(drop),
            Err(Refusal::LimitTimeout)
        );
        assert_eq!(figures.traffic(0).in_flight, 1);
        drop(held);
        figures.limit_in_flight(None);
        let unlimited = [figures.admit(false).await, figures.admit(false).await];
        assert_eq!(figures.traffic(0).in_flight, 2);
        drop(unlimited);
    }

    #[test]
    fn the_in_flight_word_keeps_the_count_and_wraps_its_time() {
        let word = InFlightWord::new(3, 1_000);
        assert_eq!((word.count(), word.changed()), (3, 1_000));
        assert_eq!(word.accrued(1_500), 1_500);
        assert_eq!(InFlightWord::new(u64::MAX, 0).count(), COUNT_MASK);
        // The time bits wrapped between the change and now.
        let last = (u64::MAX >> COUNT_BITS) - 9;
        assert_eq!(InFlightWord::new(2, last).accrued(10), 2 * 20);
    }
}
