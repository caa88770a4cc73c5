//! A stored response's age (RFC 9111 §4.2.3).

use std::time::{Duration, SystemTime};

use http::header::{AGE, DATE};
use http::HeaderMap;

use crate::date::http_date;
use crate::directives::DELTA_SECONDS_MAX;

/// When a response was asked for and received, and its age on arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// When the cache received the response.
    pub response_time: SystemTime,
    /// The response's age when it arrived (`corrected_initial_age`).
    pub initial_age: Duration,
}

impl Timing {
    /// The timing of a response with `headers` to a request sent at `request_time`,
    /// received at `response_time` (§4.2.3): the larger of its apparent age (`response_time`
    /// minus `Date`) and its `Age` plus the time the request took.
    pub fn new(headers: &HeaderMap, request_time: SystemTime, response_time: SystemTime) -> Timing {
        let apparent_age = http_date(headers, &DATE)
            .and_then(|date| response_time.duration_since(date).ok())
            .unwrap_or_default();
        let response_delay = response_time
            .duration_since(request_time)
            .unwrap_or_default();
        let corrected_age_value =
            Duration::from_secs(age_value(headers).unwrap_or(0)) + response_delay;
        Timing {
            response_time,
            initial_age: apparent_age.max(corrected_age_value),
        }
    }

    /// The response's age at `now`: its initial age plus the time it has been stored.
    pub fn current_age(&self, now: SystemTime) -> Duration {
        self.initial_age + now.duration_since(self.response_time).unwrap_or_default()
    }
}

/// The `Age` field's value (§5.1): its first member, a non-negative integer (capped like any
/// delta-seconds); `None` when absent or invalid (then it is ignored).
pub fn age_value(headers: &HeaderMap) -> Option<u64> {
    let text = headers.get(AGE)?.to_str().ok()?;
    let first = text.split(',').next()?.trim();
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        first
            .parse::<u64>()
            .map_or(DELTA_SECONDS_MAX, |v| v.min(DELTA_SECONDS_MAX)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::date::format;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    fn headers(list: &[(&'static str, String)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in list {
            headers.append(*name, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn rfc9111_4_2_3_age_is_the_larger_of_apparent_and_corrected_age_plus_residence() {
        // Date says 10 s old on arrival; Age says 3 s plus 2 s of request time.
        let old_date = headers(&[("date", format(at(0))), ("age", "3".into())]);
        let timing = Timing::new(&old_date, at(8), at(10));
        assert_eq!(timing.initial_age, Duration::from_secs(10));
        assert_eq!(timing.current_age(at(15)), Duration::from_secs(15));
        // Age larger than the apparent age.
        let aged = headers(&[("date", format(at(10))), ("age", "100".into())]);
        let timing = Timing::new(&aged, at(8), at(10));
        assert_eq!(timing.initial_age, Duration::from_secs(102));
        // A Date in the future counts as no apparent age.
        let future = headers(&[("date", format(at(100)))]);
        assert_eq!(
            Timing::new(&future, at(10), at(10)).initial_age,
            Duration::ZERO
        );
    }

    #[test]
    fn rfc9111_5_1_age_uses_its_first_member_and_ignores_invalid_values() {
        let age = |value: &str| age_value(&headers(&[("age", value.to_owned())]));
        assert_eq!(age("30"), Some(30));
        assert_eq!(age("30, 60"), Some(30));
        assert_eq!(age("30a"), None);
        assert_eq!(age("-1"), None);
        assert_eq!(age("1.5"), None);
        assert_eq!(age("99999999999999999999"), Some(DELTA_SECONDS_MAX));
    }
}
