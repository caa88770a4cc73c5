//! When each domain needs work next, on a clock of wall-clock seconds that follows tokio's
//! clock (so that paused time in tests moves it too).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock seconds since the epoch, advancing with tokio's clock.
#[derive(Clone, Copy)]
pub struct Clock {
    epoch: i64,
    start: tokio::time::Instant,
}

impl Clock {
    /// A clock that reads the system's time now.
    pub fn new() -> Self {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        Clock {
            epoch,
            start: tokio::time::Instant::now(),
        }
    }

    /// Seconds since the epoch.
    pub fn now(&self) -> i64 {
        self.epoch
            .saturating_add(i64::try_from(self.start.elapsed().as_secs()).unwrap_or(i64::MAX))
    }

    /// The tokio instant at `at` (seconds since the epoch; the past is now).
    pub fn instant_at(&self, at: i64) -> tokio::time::Instant {
        let after = u64::try_from(at.saturating_sub(self.epoch)).unwrap_or(0);
        self.start + Duration::from_secs(after)
    }
}

/// Domains by the time they need work next; each has at most one time.
pub struct Schedule {
    clock: Clock,
    by_time: BTreeSet<(i64, String)>,
    by_domain: HashMap<String, i64>,
}

impl Schedule {
    /// An empty schedule on `clock`.
    pub fn new(clock: Clock) -> Self {
        Schedule {
            clock,
            by_time: BTreeSet::new(),
            by_domain: HashMap::new(),
        }
    }

    /// Plans `domain` at `at`, or nothing for it with `None`.
    pub fn set(&mut self, domain: &str, at: Option<i64>) {
        if let Some(old) = self.by_domain.remove(domain) {
            self.by_time.remove(&(old, domain.to_owned()));
        }
        if let Some(at) = at {
            self.by_domain.insert(domain.to_owned(), at);
            self.by_time.insert((at, domain.to_owned()));
        }
    }

    /// The earliest planned time (`i64::MAX` when nothing is planned).
    pub fn next(&self) -> i64 {
        self.by_time.first().map_or(i64::MAX, |(at, _)| *at)
    }

    /// Sleeps until `at` (seconds since the epoch) on the schedule's clock.
    pub async fn sleep_until(&self, at: i64) {
        if at == i64::MAX {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep_until(self.clock.instant_at(at)).await;
    }

    /// Removes and returns the domains due now, earliest first.
    pub fn take_due(&mut self) -> Vec<String> {
        let now = self.clock.now();
        let mut due = Vec::new();
        while let Some((at, domain)) = self.by_time.first().cloned() {
            if at > now {
                break;
            }
            self.by_time.remove(&(at, domain.clone()));
            self.by_domain.remove(&domain);
            due.push(domain);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::super::renew::{backoff, renew_at};
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_renewal_and_the_retries_after_it_come_due_on_time() {
        let clock = Clock::new();
        let mut schedule = Schedule::new(clock);
        let start = clock.now();
        // A 90-day certificate issued now is renewed after 60 days, and not before.
        let renew = renew_at(start, start + 90 * 86_400);
        schedule.set("a.example", Some(renew));
        schedule.set("b.example", Some(start + 100 * 86_400));
        schedule.sleep_until(schedule.next()).await;
        assert_eq!(clock.now() - start, 60 * 86_400);
        assert_eq!(schedule.take_due(), ["a.example"]);
        // The renewal fails: retried after 1, 2 and 4 minutes.
        let mut waited = Vec::new();
        for attempts in 1..=3 {
            let failed_at = clock.now();
            let retry = failed_at + i64::try_from(backoff(attempts).as_secs()).unwrap();
            schedule.set("a.example", Some(retry));
            schedule.sleep_until(schedule.next()).await;
            assert_eq!(schedule.take_due(), ["a.example"]);
            waited.push(clock.now() - failed_at);
        }
        assert_eq!(waited, [60, 120, 240]);
        // Replanning moves a domain; dropping it leaves the rest.
        schedule.set("b.example", None);
        assert_eq!(schedule.next(), i64::MAX);
        assert!(schedule.take_due().is_empty());
    }
}
