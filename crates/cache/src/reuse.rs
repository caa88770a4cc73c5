//! Whether a stored response may answer a request (RFC 9111 §4.2, §4.2.4, §5.2; RFC 5861):
//! fresh, stale but allowed, or only after validation.

use std::time::Duration;

use crate::directives::{CacheControl, FieldNames};

/// What the cache may do with a stored response that matches a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Serve it: it is fresh enough for the request.
    Fresh,
    /// Serve it stale: the request's `max-stale` accepts it.
    Stale,
    /// Serve it stale and revalidate it in the background (`stale-while-revalidate`).
    StaleWhileRevalidate,
    /// Validate it with the origin first.
    Validate,
}

/// A stored response's state at the time of a request.
#[derive(Debug, Clone, Copy)]
pub struct Freshness<'a> {
    /// Its governing directives.
    pub directives: &'a CacheControl,
    /// Its freshness lifetime.
    pub lifetime: Duration,
    /// Its current age.
    pub age: Duration,
}

impl Freshness<'_> {
    /// Whether it is fresh (§4.2: its lifetime exceeds its age).
    pub fn is_fresh(&self) -> bool {
        self.lifetime > self.age
    }

    /// The time it stays fresh for (zero when stale).
    pub fn ttl(&self) -> Duration {
        self.lifetime.saturating_sub(self.age)
    }

    /// How long it has been stale (zero when fresh).
    fn staleness(&self) -> Duration {
        self.age.saturating_sub(self.lifetime)
    }

    /// Whether an in-protocol directive forbids serving it stale (§4.2.4): `must-revalidate`,
    /// `proxy-revalidate`, or `s-maxage` (which implies it, §5.2.2.10), or `no-cache`.
    fn stale_forbidden(&self) -> bool {
        let d = self.directives;
        d.must_revalidate
            || d.proxy_revalidate
            || d.s_maxage.is_some()
            || d.no_cache == Some(FieldNames::All)
    }

    /// What the cache may do with it for a request with `request` directives.
    pub fn reuse(&self, request: &CacheControl) -> Reuse {
        // §5.2.2.4: no-cache (unqualified; a qualified one's fields are never stored).
        if self.directives.no_cache == Some(FieldNames::All) || request.no_cache.is_some() {
            return Reuse::Validate;
        }
        // §5.2.1.1: the client accepts no older response.
        if request
            .max_age
            .is_some_and(|max| self.age > Duration::from_secs(max))
        {
            return Reuse::Validate;
        }
        if self.is_fresh() {
            // §5.2.1.3: it must stay fresh for at least `min-fresh` more.
            let enough = request
                .min_fresh
                .is_none_or(|min| self.ttl() >= Duration::from_secs(min));
            return if enough {
                Reuse::Fresh
            } else {
                Reuse::Validate
            };
        }
        if self.stale_forbidden() {
            return Reuse::Validate;
        }
        let within = |allowed: Option<u64>| {
            allowed.is_some_and(|seconds| {
                seconds == u64::MAX || self.staleness() <= Duration::from_secs(seconds)
            })
        };
        if within(request.max_stale) {
            Reuse::Stale
        } else if within(self.directives.stale_while_revalidate) {
            Reuse::StaleWhileRevalidate
        } else {
            Reuse::Validate
        }
    }

    /// Whether it may be served when the origin cannot answer (RFC 5861 §4: the request's
    /// or the response's `stale-if-error` covers its staleness, and nothing forbids serving
    /// it stale).
    pub fn serve_on_error(&self, request: &CacheControl) -> bool {
        if self.is_fresh() {
            return true;
        }
        if self.stale_forbidden() {
            return false;
        }
        [request.stale_if_error, self.directives.stale_if_error]
            .into_iter()
            .flatten()
            .any(|seconds| self.staleness() <= Duration::from_secs(seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CACHE_CONTROL;
    use http::HeaderMap;

    fn cc(text: &str) -> CacheControl {
        let mut headers = HeaderMap::new();
        if !text.is_empty() {
            headers.insert(CACHE_CONTROL, text.parse().unwrap());
        }
        CacheControl::from_headers(&headers)
    }

    fn reuse(response: &str, lifetime: u64, age: u64, request: &str) -> Reuse {
        let directives = cc(response);
        let state = Freshness {
            directives: &directives,
            lifetime: Duration::from_secs(lifetime),
            age: Duration::from_secs(age),
        };
        state.reuse(&cc(request))
    }

    fn on_error(response: &str, lifetime: u64, age: u64, request: &str) -> bool {
        let directives = cc(response);
        let state = Freshness {
            directives: &directives,
            lifetime: Duration::from_secs(lifetime),
            age: Duration::from_secs(age),
        };
        state.serve_on_error(&cc(request))
    }

    #[test]
    fn rfc9111_4_2_a_fresh_response_is_served_and_a_stale_one_validated() {
        assert_eq!(reuse("max-age=60", 60, 59, ""), Reuse::Fresh);
        assert_eq!(reuse("max-age=60", 60, 60, ""), Reuse::Validate);
    }

    #[test]
    fn rfc9111_5_2_2_4_no_cache_always_validates() {
        assert_eq!(reuse("max-age=60, no-cache", 60, 0, ""), Reuse::Validate);
        assert_eq!(reuse("max-age=60", 60, 0, "no-cache"), Reuse::Validate);
        // The qualified form's fields are not stored; the rest is reused.
        assert_eq!(
            reuse("max-age=60, no-cache=\"x-a\"", 60, 0, ""),
            Reuse::Fresh
        );
    }

    #[test]
    fn rfc9111_5_2_1_request_max_age_min_fresh_and_max_stale() {
        assert_eq!(reuse("max-age=60", 60, 30, "max-age=10"), Reuse::Validate);
        assert_eq!(reuse("max-age=60", 60, 30, "max-age=40"), Reuse::Fresh);
        assert_eq!(reuse("max-age=60", 60, 30, "min-fresh=40"), Reuse::Validate);
        assert_eq!(reuse("max-age=60", 60, 30, "min-fresh=20"), Reuse::Fresh);
        assert_eq!(reuse("max-age=60", 60, 90, "max-stale=40"), Reuse::Stale);
        assert_eq!(reuse("max-age=60", 60, 90, "max-stale=20"), Reuse::Validate);
        assert_eq!(reuse("max-age=60", 60, 9000, "max-stale"), Reuse::Stale);
    }

    #[test]
    fn rfc9111_4_2_4_must_revalidate_proxy_revalidate_and_s_maxage_forbid_stale() {
        for forbids in ["must-revalidate", "proxy-revalidate", "s-maxage=60"] {
            let response =
                format!("max-age=60, {forbids}, stale-while-revalidate=100, stale-if-error=100");
            assert_eq!(
                reuse(&response, 60, 90, "max-stale"),
                Reuse::Validate,
                "{forbids}"
            );
            assert!(
                !on_error(&response, 60, 90, "stale-if-error=100"),
                "{forbids}"
            );
            assert_eq!(reuse(&response, 60, 30, ""), Reuse::Fresh, "{forbids}");
        }
    }

    #[test]
    fn rfc5861_3_stale_while_revalidate_serves_stale_within_its_window() {
        let response = "max-age=60, stale-while-revalidate=30";
        assert_eq!(reuse(response, 60, 80, ""), Reuse::StaleWhileRevalidate);
        assert_eq!(reuse(response, 60, 100, ""), Reuse::Validate);
    }

    #[test]
    fn rfc5861_4_stale_if_error_serves_stale_within_its_window_on_errors() {
        assert!(on_error("max-age=60, stale-if-error=30", 60, 80, ""));
        assert!(!on_error("max-age=60, stale-if-error=30", 60, 100, ""));
        assert!(on_error("max-age=60", 60, 80, "stale-if-error=30"));
        assert!(!on_error("max-age=60", 60, 80, ""));
        assert!(on_error("max-age=60", 60, 10, ""));
    }
}
