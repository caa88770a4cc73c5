//! One upstream endpoint and its live signals: health (active checks), requests outstanding,
//! peak-EWMA latency, and its outlier state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;

use super::outlier::OutlierState;
use crate::pool::IdleConnections;

/// Time constant of the latency EWMA.
const EWMA_DECAY: Duration = Duration::from_secs(10);
/// Latency assumed for an endpoint not measured yet.
const INITIAL_LATENCY_NS: f64 = 1_000_000.0;

/// One upstream endpoint and its live load signals.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `ip:port`, ready for request URIs.
    pub authority: Authority,
    healthy: AtomicBool,
    /// Consecutive active health-check results that disagree with `healthy` (see `health`).
    check_streak: AtomicU32,
    in_flight: AtomicU32,
    /// Peak-EWMA latency in nanoseconds (f64 bits).
    ewma_ns: AtomicU64,
    /// When `ewma_ns` was last updated, in nanoseconds since the cluster was built.
    stamp_ns: AtomicU64,
    /// Its errors in a row and ejections (see [`super::outlier`]).
    pub(super) outlier: OutlierState,
    /// Its idle HTTP/1.1 connections (see [`crate::pool`]); they close when it is dropped.
    pub idle: Arc<IdleConnections>,
}

impl Endpoint {
    pub(crate) fn new(addr: SocketAddr) -> Option<Endpoint> {
        Some(Endpoint {
            addr,
            authority: Authority::try_from(addr.to_string()).ok()?,
            healthy: AtomicBool::new(true),
            check_streak: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            ewma_ns: AtomicU64::new(INITIAL_LATENCY_NS.to_bits()),
            stamp_ns: AtomicU64::new(0),
            outlier: OutlierState::default(),
            idle: Arc::default(),
        })
    }

    /// Whether the endpoint is healthy and not ejected at `now_ns`.
    pub(super) fn usable(&self, now_ns: u64) -> bool {
        self.is_healthy() && !self.outlier.ejected_at(now_ns)
    }

    /// Its peak-EWMA latency weighted by its requests outstanding (one more: the next).
    pub(super) fn cost(&self) -> f64 {
        let ewma = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        ewma * f64::from(self.outstanding() + 1)
    }

    /// Requests picked for it and not finished.
    pub(super) fn outstanding(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts one more request outstanding (a lease taken).
    pub(super) fn lease_taken(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one request fewer outstanding (a lease ended).
    pub(super) fn lease_ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Feeds a round trip of `rtt_ns` ending at `now_ns` into the peak EWMA: a slower answer
    /// counts at once, a faster one decays in.
    pub(super) fn record_latency(&self, rtt_ns: f64, now_ns: u64) {
        let last = self.stamp_ns.swap(now_ns, Ordering::Relaxed);
        let old = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        let next = if rtt_ns > old {
            rtt_ns
        } else {
            let elapsed = now_ns.saturating_sub(last) as f64;
            let w = (-elapsed / EWMA_DECAY.as_nanos() as f64).exp();
            old * w + rtt_ns * (1.0 - w)
        };
        self.ewma_ns.store(next.to_bits(), Ordering::Relaxed);
    }

    /// Whether the endpoint may receive traffic.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Marks the endpoint healthy or not (health checks and outlier detection call this).
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Records one active health-check result; after `threshold` results in a row that disagree
    /// with its health (`unhealthy` failures, or `healthy` successes), the endpoint changes
    /// state. Returns the new state when it changed. One checker per endpoint calls this.
    pub fn record_check(
        &self,
        ok: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        let healthy = self.is_healthy();
        if ok == healthy {
            self.check_streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.check_streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if healthy {
            unhealthy_threshold
        } else {
            healthy_threshold
        };
        if streak < needed {
            return None;
        }
        self.check_streak.store(0, Ordering::Relaxed);
        self.set_healthy(ok);
        Some(ok)
    }

    /// Forgets active health checking: healthy, no streak (its cluster is no longer checked).
    pub fn reset_health(&self) {
        self.check_streak.store(0, Ordering::Relaxed);
        self.set_healthy(true);
    }
}

/// How a request to an endpoint ended, for load balancing and outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered, not with a 5xx.
    Success,
    /// Answered 500 or another 5xx that is not a gateway error.
    ServerError,
    /// Answered 502, 503 or 504, or could not be connected to, or timed out.
    GatewayError,
    /// Failed in a way that may be the client's doing (its body broke off or was too slow):
    /// recorded neither as latency nor as an error.
    Inconclusive,
}

impl Outcome {
    /// The outcome of an answer with `status`.
    pub fn of_status(status: u16) -> Outcome {
        match status {
            502..=504 => Outcome::GatewayError,
            500..=599 => Outcome::ServerError,
            _ => Outcome::Success,
        }
    }
}
