//! When to renew and when to try again: renewal at two thirds of a certificate's lifetime (or
//! in the window the CA suggests, RFC 9773), and a doubling backoff after failures.

use std::time::Duration;

/// The first retry after a failure.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(60);
/// The longest wait between retries.
pub const BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);

/// When a certificate valid from `not_before` to `not_after` (seconds since the epoch) is
/// renewed: at two thirds of its lifetime.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    let lifetime = not_after.saturating_sub(not_before).max(0);
    not_before.saturating_add(lifetime / 3 * 2)
}

/// When to renew within a CA's suggested window `[start, end]` (RFC 9773 §4.2): at its start,
/// or now when the window has begun or passed.
pub fn renew_in_window(start: i64, end: i64, now: i64) -> i64 {
    if end <= now {
        now
    } else {
        start.max(now)
    }
}

/// How long to wait after `attempts` failures in a row (1 or more): one minute, doubling, at
/// most six hours.
pub fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    BACKOFF_FIRST
        .saturating_mul(1 << doublings)
        .min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_lifetime() {
        assert_eq!(renew_at(0, 90 * 86_400), 60 * 86_400);
        assert_eq!(renew_at(1_000, 1_300), 1_200);
        assert_eq!(
            renew_at(500, 100),
            500,
            "a backwards validity renews at once"
        );
    }

    #[test]
    fn a_suggested_window_in_the_past_means_now() {
        assert_eq!(renew_in_window(100, 200, 50), 100);
        assert_eq!(renew_in_window(100, 200, 150), 150);
        assert_eq!(renew_in_window(100, 200, 300), 300);
    }

    #[test]
    fn backoff_doubles_from_a_minute_to_six_hours() {
        let waits: Vec<u64> = (1..=11).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(
            waits,
            [60, 120, 240, 480, 960, 1920, 3840, 7680, 15360, 21600, 21600]
        );
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
        assert_eq!(backoff(0), BACKOFF_FIRST);
    }
}
