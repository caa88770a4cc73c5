//! The retry budget: how many of a cluster's requests may be retrying at once.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::breaker::Admission;
use crate::config::RetryBudgetConfig;

/// Retries allowed on top of a cluster's requests: while at most `ratio` of the requests in
/// flight are retrying, another may; besides, `min_per_second` retries a second are always
/// allowed (so that a cluster with little traffic can still retry).
#[derive(Debug)]
pub(super) struct RetryBudget {
    ratio: f64,
    min_per_second: u32,
    /// The second `floor_used` counts for.
    floor_second: AtomicU64,
    floor_used: AtomicU32,
}

impl RetryBudget {
    /// The budget `config` sets.
    pub(super) fn new(config: &RetryBudgetConfig) -> RetryBudget {
        RetryBudget {
            ratio: config.ratio,
            min_per_second: config.min_per_second,
            floor_second: AtomicU64::new(0),
            floor_used: AtomicU32::new(0),
        }
    }

    /// Whether `admitted` may retry now, in second `now_second` (counting it as retrying from
    /// then on).
    pub(super) fn allow(&self, admitted: &mut Admission<'_>, now_second: u64) -> bool {
        let (active, others) = admitted.others();
        if !self.allows(now_second, active, others) {
            return false;
        }
        admitted.mark_retrying();
        true
    }

    /// Whether one more request may retry while `retrying` others do, of `active` in flight.
    fn allows(&self, now_second: u64, active: u32, retrying: u32) -> bool {
        if f64::from(retrying + 1) <= self.ratio * f64::from(active) {
            return true;
        }
        if self.floor_second.swap(now_second, Ordering::Relaxed) != now_second {
            self.floor_used.store(0, Ordering::Relaxed);
        }
        self.floor_used.fetch_add(1, Ordering::Relaxed) < self.min_per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_budget_follows_live_requests_with_a_floor_per_second() {
        let budget = RetryBudget::new(&RetryBudgetConfig {
            ratio: 0.2,
            min_per_second: 2,
        });
        // Of 10 requests in flight, 2 may be retrying at once.
        assert!(budget.allows(1, 10, 0));
        assert!(budget.allows(1, 10, 1));
        // More draw on the floor: 2 a second.
        assert!(budget.allows(1, 10, 2));
        assert!(budget.allows(1, 10, 2));
        assert!(!budget.allows(1, 10, 2));
        // More live requests make room again; a new second brings a new floor.
        assert!(budget.allows(1, 20, 3));
        assert!(!budget.allows(1, 10, 5));
        assert!(budget.allows(2, 10, 5));
    }
}
