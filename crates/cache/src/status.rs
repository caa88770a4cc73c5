//! The `Cache-Status` response field (RFC 9211): what this cache did with a request, as one
//! member appended to the list the caches nearer the origin began.

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

/// `Cache-Status`.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Why the request went to the origin (`fwd`, RFC 9211 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// The cache was configured not to handle the request (policy, bypass path).
    Bypass,
    /// The method is not answered from cache.
    Method,
    /// Nothing stored for the URI.
    UriMiss,
    /// Responses stored for the URI, none for the request's varied fields.
    VaryMiss,
    /// A stored response needed validation: stale.
    Stale,
    /// The request asked for validation (`no-cache`, `max-age`, …).
    Request,
    /// Part of the representation was stored, not all of what the request asks for.
    Partial,
}

impl Forward {
    fn as_str(self) -> &'static str {
        match self {
            Forward::Bypass => "bypass",
            Forward::Method => "method",
            Forward::UriMiss => "uri-miss",
            Forward::VaryMiss => "vary-miss",
            Forward::Stale => "stale",
            Forward::Request => "request",
            Forward::Partial => "partial",
        }
    }
}

/// What the cache did with one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStatus {
    /// Answered from the cache without going to the origin (`hit`).
    pub hit: bool,
    /// Why it went to the origin, if it did (`fwd`).
    pub forward: Option<Forward>,
    /// The status the origin answered with (`fwd-status`).
    pub forward_status: Option<u16>,
    /// Seconds the response stays fresh; negative when it is stale (`ttl`).
    pub ttl: Option<i64>,
    /// The response was stored (`stored`).
    pub stored: bool,
    /// The request waited for another one's response (`collapsed`).
    pub collapsed: bool,
    /// The cache key (`key`), when it is useful to show.
    pub key: Option<String>,
    /// Anything else worth saying (`detail`), e.g. why a response was not stored.
    pub detail: Option<String>,
}

impl CacheStatus {
    /// The list member for a cache named `cache` (an sf-token, e.g. `Meridian`).
    pub fn member(&self, cache: &str) -> String {
        let mut member = cache.to_owned();
        if self.hit {
            member.push_str("; hit");
        }
        if let Some(forward) = self.forward {
            member.push_str("; fwd=");
            member.push_str(forward.as_str());
        }
        if let Some(status) = self.forward_status {
            member.push_str(&format!("; fwd-status={status}"));
        }
        if let Some(ttl) = self.ttl {
            member.push_str(&format!("; ttl={ttl}"));
        }
        if self.stored {
            member.push_str("; stored");
        }
        if self.collapsed {
            member.push_str("; collapsed");
        }
        if let Some(key) = &self.key {
            member.push_str("; key=");
            member.push_str(&sf_string(key));
        }
        if let Some(detail) = &self.detail {
            member.push_str("; detail=");
            member.push_str(&sf_string(detail));
        }
        member
    }

    /// Appends this cache's member to `response`'s `Cache-Status` (the last member is the
    /// cache nearest the client).
    pub fn append_to(&self, response: &mut HeaderMap, cache: &str) {
        if let Ok(value) = HeaderValue::from_str(&self.member(cache)) {
            response.append(CACHE_STATUS, value);
        }
    }
}

/// `text` as an sf-string (RFC 8941 §3.3.3): quoted, `"` and `\` escaped, and what it cannot
/// carry (non-printable or non-ASCII) replaced by `?`.
fn sf_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            ' '..='~' => quoted.push(c),
            _ => quoted.push('?'),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9211_2_a_hit_and_a_miss_are_described_with_their_parameters() {
        let hit = CacheStatus {
            hit: true,
            ttl: Some(30),
            ..CacheStatus::default()
        };
        assert_eq!(hit.member("Meridian"), "Meridian; hit; ttl=30");
        let miss = CacheStatus {
            forward: Some(Forward::UriMiss),
            forward_status: Some(200),
            stored: true,
            collapsed: true,
            key: Some("GET https://s.example/\"a\"".into()),
            ..CacheStatus::default()
        };
        assert_eq!(
            miss.member("Meridian"),
            "Meridian; fwd=uri-miss; fwd-status=200; stored; collapsed; key=\"GET https://s.example/\\\"a\\\"\""
        );
        let stale = CacheStatus {
            hit: true,
            ttl: Some(-5),
            detail: Some("stale-while-revalidate".into()),
            ..CacheStatus::default()
        };
        assert_eq!(
            stale.member("M"),
            "M; hit; ttl=-5; detail=\"stale-while-revalidate\""
        );
    }

    #[test]
    fn rfc9211_2_this_caches_member_comes_after_the_origins_caches() {
        let mut response = HeaderMap::new();
        response.insert(CACHE_STATUS, HeaderValue::from_static("OriginCache; hit"));
        let bypass = CacheStatus {
            forward: Some(Forward::Bypass),
            forward_status: Some(200),
            ..CacheStatus::default()
        };
        bypass.append_to(&mut response, "Meridian");
        let members: Vec<_> = response.get_all(CACHE_STATUS).iter().collect();
        assert_eq!(
            members,
            ["OriginCache; hit", "Meridian; fwd=bypass; fwd-status=200"]
        );
    }
}
