//! Invalidation (RFC 9111 §4.4): a successful unsafe request makes the stored responses of
//! its target URI, and of the `Location` and `Content-Location` URIs of its response when
//! they have the same origin, unusable.

use http::header::{CONTENT_LOCATION, LOCATION};
use http::{HeaderMap, Method, StatusCode};

use crate::key::{CacheKey, QueryKey};

/// Where a request went: its scheme, authority, and path with query.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The host, with its port if any.
    pub authority: &'a str,
    /// The path and query.
    pub path_and_query: &'a str,
}

/// The keys to invalidate after a request with `method` to `target` got a response with
/// `status` and `response` fields: none for safe methods (GET, HEAD, OPTIONS, TRACE) and for
/// error responses; else the target's, and that of each same-origin `Location` and
/// `Content-Location` (relative references resolved against the target).
pub fn invalidated(
    method: &Method,
    target: Target<'_>,
    status: StatusCode,
    response: &HeaderMap,
    query: &QueryKey,
) -> Vec<CacheKey> {
    let safe = [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE];
    if safe.contains(method) || !(status.is_success() || status.is_redirection()) {
        return Vec::new();
    }
    let mut keys = vec![CacheKey::of_uri(
        target.scheme,
        target.authority,
        target.path_and_query,
        query,
    )];
    for name in [LOCATION, CONTENT_LOCATION] {
        let Some(reference) = response.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        if let Some(path) = same_origin_path(target, reference.trim()) {
            let key = CacheKey::of_uri(target.scheme, target.authority, &path, query);
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    keys
}

/// The path and query `reference` names if it has `target`'s origin (RFC 3986 §5.2,
/// without dot-segment removal; a fragment dropped).
fn same_origin_path(target: Target<'_>, reference: &str) -> Option<String> {
    let reference = reference.split('#').next().unwrap_or_default();
    if let Some((scheme, rest)) = reference.split_once("://") {
        let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let same = scheme.eq_ignore_ascii_case(target.scheme)
            && same_authority(target.scheme, authority, target.authority);
        return same.then(|| absolute_path(path));
    }
    if let Some(rest) = reference.strip_prefix("//") {
        let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        return same_authority(target.scheme, authority, target.authority)
            .then(|| absolute_path(path));
    }
    if reference.starts_with('/') {
        return Some(reference.to_owned());
    }
    let base = target.path_and_query.split('?').next().unwrap_or("/");
    if reference.starts_with('?') {
        return Some(format!("{base}{reference}"));
    }
    let directory = &base[..base.rfind('/').map_or(0, |i| i + 1)];
    Some(format!("{}{reference}", absolute_path(directory)))
}

fn absolute_path(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

fn same_authority(scheme: &str, a: &str, b: &str) -> bool {
    let normal = |authority: &str| {
        let authority = authority.to_ascii_lowercase();
        let default = if scheme.eq_ignore_ascii_case("https") {
            ":443"
        } else {
            ":80"
        };
        authority
            .strip_suffix(default)
            .map(str::to_owned)
            .unwrap_or(authority)
    };
    normal(a) == normal(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Target<'static> = Target {
        scheme: "https",
        authority: "shop.example.com",
        path_and_query: "/cart/items?x=1",
    };

    fn keys(method: Method, status: u16, fields: &[(&'static str, &'static str)]) -> Vec<String> {
        let mut response = HeaderMap::new();
        for (name, value) in fields {
            response.append(*name, value.parse().unwrap());
        }
        invalidated(
            &method,
            TARGET,
            StatusCode::from_u16(status).unwrap(),
            &response,
            &QueryKey::All,
        )
        .into_iter()
        .map(|k| k.as_str().to_owned())
        .collect()
    }

    #[test]
    fn rfc9111_4_4_unsafe_methods_invalidate_their_target_on_success() {
        assert_eq!(
            keys(Method::POST, 200, &[]),
            ["GET https://shop.example.com/cart/items?x=1"]
        );
        assert_eq!(keys(Method::DELETE, 303, &[]).len(), 1);
        assert_eq!(
            keys(Method::from_bytes(b"PURGEISH").unwrap(), 204, &[]).len(),
            1
        );
        assert!(keys(Method::POST, 500, &[]).is_empty());
        assert!(keys(Method::POST, 404, &[]).is_empty());
        assert!(keys(Method::GET, 200, &[]).is_empty());
        assert!(keys(Method::OPTIONS, 200, &[]).is_empty());
    }

    #[test]
    fn rfc9111_4_4_location_and_content_location_of_the_same_origin_too() {
        let fields = [("location", "/cart"), ("content-location", "items/1")];
        assert_eq!(
            keys(Method::POST, 201, &fields),
            [
                "GET https://shop.example.com/cart/items?x=1",
                "GET https://shop.example.com/cart",
                "GET https://shop.example.com/cart/items/1",
            ]
        );
        let absolute = [
            ("location", "https://SHOP.example.com:443/a#frag"),
            ("content-location", "//shop.example.com/b"),
        ];
        assert_eq!(
            keys(Method::PUT, 200, &absolute)[1..],
            [
                "GET https://shop.example.com/a",
                "GET https://shop.example.com/b"
            ]
        );
        for other in [
            "https://evil.example.com/a",
            "http://shop.example.com/a",
            "//evil.example.com/a",
        ] {
            let fields = [("location", other)];
            assert_eq!(keys(Method::POST, 200, &fields).len(), 1, "{other}");
        }
    }
}
