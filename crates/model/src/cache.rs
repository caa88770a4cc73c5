//! A service's caching policy at the edges (`cache:` in a definition) and its validation.

use serde::{Deserialize, Serialize};

use crate::names::check_url_path;
use crate::{HumanDuration, ValidationErrors};

/// How the edges cache a service's responses (RFC 9111, as the responses' own fields allow).
/// Absent: nothing is cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CachePolicy {
    /// Whether the edges cache at all; defaults to true (set false to keep the section but
    /// stop caching).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How long a response without freshness information (no `s-maxage`, `max-age` or
    /// `Expires`) of a status cacheable by default is fresh; none when absent (then only a
    /// heuristic from `Last-Modified` applies). More than zero, at most a year.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub default_ttl: Option<HumanDuration>,
    /// What the cache key holds besides the method and the URI's scheme, host and path.
    #[serde(default, skip_serializing_if = "CacheKeyPolicy::is_default")]
    pub key: CacheKeyPolicy,
    /// Path prefixes never answered from or stored in the cache.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bypass: Vec<String>,
}

fn default_true() -> bool {
    true
}

/// The query parameters and request fields in the cache key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CacheKeyPolicy {
    /// Only these query parameters are in the key (the others do not tell responses apart);
    /// all of them when absent. Not with `query_exclude`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_include: Option<Vec<String>>,
    /// These query parameters are left out of the key (e.g. `utm_source`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_exclude: Vec<String>,
    /// Request fields whose values are in the key, as if every response varied on them
    /// (e.g. `x-device`); lower case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
}

impl CacheKeyPolicy {
    /// Whether every field has its default (then it is left out of documents).
    pub fn is_default(&self) -> bool {
        *self == CacheKeyPolicy::default()
    }
}

/// Explicit bounds on a cache policy.
impl CachePolicy {
    /// Longest `default_ttl`.
    pub const DEFAULT_TTL_MAX: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);
    /// Most query parameter names in `query_include` or `query_exclude`.
    pub const QUERY_PARAMS: usize = 64;
    /// Most key headers.
    pub const KEY_HEADERS: usize = 16;
    /// Most bypass prefixes.
    pub const BYPASS: usize = 64;
    /// Longest name or prefix.
    pub const NAME_LEN: usize = 256;
}

/// Checks `cache`, each problem naming its field under `at` (`cache` in a definition,
/// `listeners[0].virtual_hosts[0].routes[0].cache` in a proxy configuration).
pub fn validate_cache(errs: &mut ValidationErrors, at: &str, cache: &CachePolicy) {
    if let Some(ttl) = &cache.default_ttl {
        if ttl.0.is_zero() || ttl.0 > CachePolicy::DEFAULT_TTL_MAX {
            errs.push(
                format!("{at}.default_ttl"),
                "must be more than zero and at most a year (365d)",
            );
        }
    }
    let key = &cache.key;
    if key.query_include.is_some() && !key.query_exclude.is_empty() {
        errs.push(
            format!("{at}.key.query_exclude"),
            "give query_include or query_exclude, not both",
        );
    }
    let include = key.query_include.as_deref().unwrap_or_default();
    for (field, names) in [
        ("query_include", include),
        ("query_exclude", &key.query_exclude),
    ] {
        let at = format!("{at}.key.{field}");
        if bounded(errs, &at, names.len(), CachePolicy::QUERY_PARAMS) {
            for (i, name) in names.iter().enumerate() {
                query_name(errs, &format!("{at}[{i}]"), name);
            }
        }
    }
    if bounded(
        errs,
        "cache.key.headers",
        key.headers.len(),
        CachePolicy::KEY_HEADERS,
    ) {
        for (i, name) in key.headers.iter().enumerate() {
            header_name(errs, &format!("{at}.key.headers[{i}]"), name);
        }
    }
    if bounded(
        errs,
        "cache.bypass",
        cache.bypass.len(),
        CachePolicy::BYPASS,
    ) {
        for (i, prefix) in cache.bypass.iter().enumerate() {
            let at = format!("{at}.bypass[{i}]");
            if let Err(reason) = check_url_path(prefix) {
                errs.push(at, reason);
            } else if prefix.len() > CachePolicy::NAME_LEN {
                errs.push(at, too_long());
            }
        }
    }
}

fn too_long() -> String {
    format!("must be at most {} bytes", CachePolicy::NAME_LEN)
}

/// Whether `len` is within `max`; says so at `field` when not.
fn bounded(errs: &mut ValidationErrors, field: &str, len: usize, max: usize) -> bool {
    if len > max {
        errs.push(
            field,
            format!("has {len} entries; at most {max} are allowed"),
        );
    }
    len <= max
}

fn query_name(errs: &mut ValidationErrors, field: &str, name: &str) {
    if name.is_empty() || name.len() > CachePolicy::NAME_LEN {
        errs.push(
            field,
            format!("must be 1 to {} bytes", CachePolicy::NAME_LEN),
        );
    } else if name
        .chars()
        .any(|c| matches!(c, '&' | '=' | '#' | '?') || c.is_whitespace() || c.is_control())
    {
        errs.push(
            field,
            format!("`{name}` is not a query parameter name (no &, =, #, ?, whitespace)"),
        );
    }
}

fn header_name(errs: &mut ValidationErrors, field: &str, name: &str) {
    let token =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || name.len() > CachePolicy::NAME_LEN || !name.chars().all(token) {
        errs.push(
            field,
            format!("`{name}` is not a lower-case header field name"),
        );
    }
}
