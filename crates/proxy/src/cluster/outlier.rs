//! Outlier detection: an endpoint that answers with errors in a row is ejected (no traffic) for
//! a time that grows with each ejection, unless too many of its cluster are out already.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::endpoint::{Endpoint, Outcome};
use crate::config::OutlierDetection;

/// One endpoint's errors in a row and ejections.
#[derive(Debug, Default)]
pub(super) struct OutlierState {
    /// Ejection ends at this time (nanoseconds since the cluster's epoch); 0: not ejected.
    ejected_until_ns: AtomicU64,
    /// Times ejected (the next ejection lasts this many base ejection times, plus one).
    ejections: AtomicU32,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
}

impl OutlierState {
    /// Whether the endpoint is ejected at `now_ns`.
    pub(super) fn ejected_at(&self, now_ns: u64) -> bool {
        self.ejected_until_ns.load(Ordering::Relaxed) > now_ns
    }

    fn clear_streaks(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
    }
}

/// Counts consecutive errors of `endpoint`, one of `members` of cluster `cluster`, and ejects it
/// when a threshold of `o` is reached, unless too many endpoints are ejected already. Returns
/// whether it ejected.
pub(super) fn record(
    cluster: &str,
    members: &[Arc<Endpoint>],
    endpoint: &Endpoint,
    outcome: Outcome,
    o: &OutlierDetection,
    now_ns: u64,
) -> bool {
    let state = &endpoint.outlier;
    let (five, gateway) = match outcome {
        Outcome::Inconclusive => return false,
        Outcome::Success => {
            state.clear_streaks();
            let until = state.ejected_until_ns.load(Ordering::Relaxed);
            if until > 0 && now_ns > until + o.max_ejection_time.0.as_nanos() as u64 {
                state.ejections.store(0, Ordering::Relaxed);
            }
            return false;
        }
        Outcome::ServerError => {
            state.consecutive_gateway.store(0, Ordering::Relaxed);
            (state.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1, 0)
        }
        Outcome::GatewayError => (
            state.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1,
            state.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1,
        ),
    };
    if five < o.consecutive_5xx && gateway < o.consecutive_gateway_errors {
        return false;
    }
    if state.ejected_at(now_ns) {
        return false;
    }
    let ejected = members
        .iter()
        .filter(|e| e.outlier.ejected_at(now_ns))
        .count();
    let allowed = (members.len() * o.max_ejection_percent as usize) / 100;
    if ejected > 0 && ejected + 1 > allowed {
        return false;
    }
    let times = state.ejections.fetch_add(1, Ordering::Relaxed) + 1;
    let length = o
        .base_ejection_time
        .0
        .saturating_mul(times)
        .min(o.max_ejection_time.0);
    state
        .ejected_until_ns
        .store(now_ns + length.as_nanos() as u64, Ordering::Relaxed);
    state.clear_streaks();
    tracing::info!(%cluster, endpoint = %endpoint.addr,
        seconds = length.as_secs_f64(), "endpoint ejected");
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OutlierDetection;

    #[test]
    fn ejections_grow_up_to_the_maximum_and_respect_the_percentage() {
        let o: OutlierDetection = serde_yaml_ng::from_str(
            "{consecutive_gateway_errors: 1, base_ejection_time: 10s, max_ejection_time: 35s, max_ejection_percent: 50}",
        )
        .unwrap();
        let second = 1_000_000_000u64;
        let endpoints: Vec<Arc<Endpoint>> = (1..=4)
            .map(|port| Arc::new(Endpoint::new(([127, 0, 0, 1], port).into()).unwrap()))
            .collect();
        let eject = |index: usize, at: u64| {
            let e = &endpoints[index];
            record("c", &endpoints, e, Outcome::GatewayError, &o, at * second)
        };
        let until = |index: usize| {
            endpoints[index]
                .outlier
                .ejected_until_ns
                .load(Ordering::Relaxed)
                / second
        };
        // Two of four may be out at once (50%); a third stays in.
        assert!(eject(0, 0) && eject(1, 0));
        assert!(!eject(2, 0));
        assert_eq!((until(0), until(1), until(2)), (10, 10, 0));
        // Each ejection of the same endpoint lasts one base time longer, up to the maximum.
        assert!(eject(0, 11));
        assert_eq!(until(0), 11 + 20);
        assert!(eject(0, 32));
        assert_eq!(until(0), 32 + 30);
        assert!(eject(0, 63));
        assert_eq!(until(0), 63 + 35);
    }
}
