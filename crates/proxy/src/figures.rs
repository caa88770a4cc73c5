//! Request figures that control planes add up ([`Figures`]): requests by status class and a
//! latency histogram with the fixed bounds of [`LATENCY_BOUNDS_MS`]. Counting a request touches
//! three atomics and nothing else (no lock, no allocation); reading them makes a [`Traffic`].
//! An instance's figures also count the requests in flight ([`Figures::in_flight`]), which
//! its region autoscales on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use meridian_xds::meridian::{Traffic, LATENCY_BOUNDS_MS};

/// How many latency buckets there are: one per bound, and one for slower requests.
pub const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// Cumulative figures of the requests answered for one instance or one cluster.
#[derive(Debug)]
pub struct Figures {
    by_class: [AtomicU64; 5],
    micros: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
    /// Requests received whose answer's head is not sent yet.
    in_flight: AtomicU64,
    /// When counting started, in milliseconds since the Unix epoch.
    started_ms: u64,
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
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
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
            in_flight: load(&self.in_flight),
        }
    }
}

/// One request in flight, counted in its [`Figures`] until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Figures>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
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
}
