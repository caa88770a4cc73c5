//! Freshness lifetime (RFC 9111 §4.2.1, §4.2.2): how long a stored response is fresh for.

use std::time::{Duration, SystemTime};

use http::header::{DATE, EXPIRES, LAST_MODIFIED};
use http::{HeaderMap, StatusCode};

use crate::date::http_date;
use crate::storable::cacheable_by_default;
use crate::targeted::ResponsePolicy;

/// The share of a response's age at its `Date` since its `Last-Modified` that heuristic
/// freshness gives it (the RFC's example, §4.2.2), in percent.
pub const HEURISTIC_PERCENT: u32 = 10;

/// The longest heuristic freshness lifetime.
pub const HEURISTIC_MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// How a freshness lifetime was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// `s-maxage`, `max-age` or `Expires`.
    Explicit,
    /// The service's default TTL for responses without freshness information.
    Default,
    /// A share of the time since `Last-Modified` (§4.2.2).
    Heuristic,
    /// Nothing: the response is stale at once (it may still be validated).
    None,
}

/// A response's freshness lifetime and its basis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// How long the response is fresh for, from its generation.
    pub duration: Duration,
    /// Where the duration comes from.
    pub basis: Basis,
}

/// The freshness lifetime of a response with `status` and `headers`, governed by `policy`,
/// received at `response_time` (used for a missing `Date`). The first that applies:
/// `s-maxage` (a shared cache), `max-age`, `Expires` minus `Date` (an invalid `Expires` is
/// in the past, §5.3), then — only for status codes cacheable by default or `public`
/// responses — the service's `default_ttl` if set, else 10% of the time from
/// `Last-Modified` to `Date` up to [`HEURISTIC_MAX`].
pub fn lifetime(
    status: StatusCode,
    headers: &HeaderMap,
    policy: &ResponsePolicy,
    default_ttl: Option<Duration>,
    response_time: SystemTime,
) -> Lifetime {
    let explicit = |duration| Lifetime {
        duration,
        basis: Basis::Explicit,
    };
    let directives = &policy.directives;
    if let Some(seconds) = directives.s_maxage.or(directives.max_age) {
        return explicit(Duration::from_secs(seconds));
    }
    let date = http_date(headers, &DATE).unwrap_or(response_time);
    if policy.uses_expires() && headers.contains_key(EXPIRES) {
        let expires = http_date(headers, &EXPIRES).unwrap_or(SystemTime::UNIX_EPOCH);
        return explicit(expires.duration_since(date).unwrap_or_default());
    }
    if !(cacheable_by_default(status) || directives.public) {
        return Lifetime {
            duration: Duration::ZERO,
            basis: Basis::None,
        };
    }
    if let Some(duration) = default_ttl {
        return Lifetime {
            duration,
            basis: Basis::Default,
        };
    }
    match http_date(headers, &LAST_MODIFIED).and_then(|modified| date.duration_since(modified).ok())
    {
        Some(since) => Lifetime {
            duration: (since * HEURISTIC_PERCENT / 100).min(HEURISTIC_MAX),
            basis: Basis::Heuristic,
        },
        None => Lifetime {
            duration: Duration::ZERO,
            basis: Basis::None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::date::format;
    use http::header::HeaderName;

    const HOUR: Duration = Duration::from_secs(3600);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn of(status: u16, list: &[(&str, String)], default_ttl: Option<Duration>) -> Lifetime {
        let mut headers = HeaderMap::new();
        for (name, value) in list {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let policy = ResponsePolicy::of(&headers);
        lifetime(
            StatusCode::from_u16(status).unwrap(),
            &headers,
            &policy,
            default_ttl,
            now(),
        )
    }

    fn text(value: &str) -> String {
        value.to_owned()
    }

    #[test]
    fn rfc9111_4_2_1_s_maxage_wins_over_max_age_which_wins_over_expires() {
        let expires = ("expires", format(now() + HOUR));
        let date = ("date", format(now()));
        let all = [
            ("cache-control", text("max-age=60, s-maxage=120")),
            expires.clone(),
            date.clone(),
        ];
        assert_eq!(of(200, &all, None).duration, Duration::from_secs(120));
        let max_age = [
            ("cache-control", text("max-age=60")),
            expires.clone(),
            date.clone(),
        ];
        assert_eq!(of(200, &max_age, None).duration, Duration::from_secs(60));
        let only_expires = [expires, date];
        assert_eq!(
            of(200, &only_expires, None),
            Lifetime {
                duration: HOUR,
                basis: Basis::Explicit
            }
        );
    }

    #[test]
    fn rfc9111_5_3_an_invalid_or_past_expires_is_stale() {
        for value in ["0", "yesterday", &format(now() - HOUR)] {
            let headers = [("expires", text(value)), ("date", format(now()))];
            assert_eq!(
                of(200, &headers, None),
                Lifetime {
                    duration: Duration::ZERO,
                    basis: Basis::Explicit
                },
                "{value}"
            );
        }
        // Without Date, the time the response was received stands in.
        assert_eq!(
            of(200, &[("expires", format(now() + HOUR))], None).duration,
            HOUR
        );
    }

    #[test]
    fn rfc9111_4_2_2_heuristic_freshness_is_a_tenth_of_the_last_modified_age_capped() {
        let modified = |ago: Duration| {
            [
                ("last-modified", format(now() - ago)),
                ("date", format(now())),
            ]
        };
        assert_eq!(
            of(200, &modified(10 * HOUR), None),
            Lifetime {
                duration: HOUR,
                basis: Basis::Heuristic
            }
        );
        assert_eq!(
            of(200, &modified(1000 * HOUR), None).duration,
            HEURISTIC_MAX
        );
        // Only where a status code is cacheable by default (or the response is public).
        assert_eq!(of(302, &modified(10 * HOUR), None).basis, Basis::None);
        let mut public = modified(10 * HOUR).to_vec();
        public.push(("cache-control", text("public")));
        assert_eq!(of(302, &public, None).duration, HOUR);
        // Never when freshness is explicit.
        let mut explicit = modified(10 * HOUR).to_vec();
        explicit.push(("cache-control", text("max-age=5")));
        assert_eq!(of(200, &explicit, None).duration, Duration::from_secs(5));
        assert_eq!(
            of(200, &[], None),
            Lifetime {
                duration: Duration::ZERO,
                basis: Basis::None
            }
        );
    }

    #[test]
    fn a_default_ttl_applies_only_without_freshness_information() {
        let ttl = Some(Duration::from_secs(30));
        assert_eq!(
            of(200, &[], ttl),
            Lifetime {
                duration: Duration::from_secs(30),
                basis: Basis::Default
            }
        );
        assert_eq!(
            of(200, &[("cache-control", text("max-age=5"))], ttl).duration,
            Duration::from_secs(5)
        );
        assert_eq!(of(500, &[], ttl).basis, Basis::None);
    }
}
