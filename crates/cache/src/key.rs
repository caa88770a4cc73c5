//! The primary cache key (RFC 9111 §2): the request method and target URI — GET for GET and
//! HEAD (HEAD is answered from a stored GET, §4), the URI with its scheme and host in lower
//! case, without a default port, and with the query parameters the service keys on.

use std::fmt;

use http::Method;

/// Which query parameters are part of the key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum QueryKey {
    /// All of them, as sent (the default).
    #[default]
    All,
    /// Only these names (all others ignored).
    Include(Vec<String>),
    /// All but these names.
    Exclude(Vec<String>),
}

impl QueryKey {
    fn keeps(&self, name: &str) -> bool {
        match self {
            QueryKey::All => true,
            QueryKey::Include(names) => names.iter().any(|n| n == name),
            QueryKey::Exclude(names) => !names.iter().any(|n| n == name),
        }
    }
}

/// What a key of parts of a representation begins with (see [`CacheKey::partial`]).
const PARTIAL: &str = "GET-PARTIAL ";

/// A primary cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(String);

impl CacheKey {
    /// The key of a request with `method` for `scheme://authority` `path_and_query`, keeping
    /// the query parameters `query` says; `None` for a method whose responses are never
    /// stored (anything but GET and HEAD).
    pub fn of(
        method: &Method,
        scheme: &str,
        authority: &str,
        path_and_query: &str,
        query: &QueryKey,
    ) -> Option<CacheKey> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        Some(CacheKey::of_uri(scheme, authority, path_and_query, query))
    }

    /// A key as [`CacheKey::as_str`] gave it (read back from the disk tier).
    pub(crate) fn from_stored(key: String) -> CacheKey {
        CacheKey(key)
    }

    /// The key a GET of this URI has: what a purge or an invalidation names.
    pub fn of_uri(
        scheme: &str,
        authority: &str,
        path_and_query: &str,
        query: &QueryKey,
    ) -> CacheKey {
        let scheme = scheme.to_ascii_lowercase();
        let mut authority = authority.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => Some(":80"),
            "https" => Some(":443"),
            _ => None,
        };
        if let Some(port) = default_port {
            if authority.ends_with(port) {
                authority.truncate(authority.len() - port.len());
            }
        }
        let (path, query_text) = match path_and_query.split_once('?') {
            Some((path, rest)) => (path, Some(rest)),
            None => (path_and_query, None),
        };
        let path = if path.is_empty() { "/" } else { path };
        let mut key = format!("GET {scheme}://{authority}{path}");
        if let Some(text) = query_text {
            let kept: Vec<&str> = text
                .split('&')
                .filter(|pair| {
                    let name = pair.split_once('=').map_or(*pair, |(name, _)| name);
                    query.keeps(name)
                })
                .collect();
            if !kept.is_empty() || *query == QueryKey::All {
                key.push('?');
                key.push_str(&kept.join("&"));
            }
        }
        CacheKey(key)
    }

    /// The key under which parts of this key's representation are stored (RFC 9111 §3.3),
    /// apart from complete responses: a lookup of the key itself never finds them.
    pub fn partial(&self) -> CacheKey {
        let uri = self.0.strip_prefix("GET ").unwrap_or(&self.0);
        CacheKey(format!("{PARTIAL}{uri}"))
    }

    /// The host of the key's URI, in lower case, without its port.
    pub fn host(&self) -> &str {
        let rest = self.0.split_once("://").map_or("", |(_, rest)| rest);
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => authority.split(':').next().unwrap_or_default(),
        }
    }

    /// The key as text (for `Cache-Status`'s `key` and logs).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(method: Method, uri: &str, query: &QueryKey) -> Option<String> {
        let uri: http::Uri = uri.parse().unwrap();
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        CacheKey::of(
            &method,
            uri.scheme_str().unwrap(),
            uri.authority().unwrap().as_str(),
            path,
            query,
        )
        .map(|k| k.0)
    }

    #[test]
    fn rfc9111_2_the_key_is_the_method_and_the_normalised_target_uri() {
        let all = QueryKey::All;
        let get = key(Method::GET, "https://Shop.Example.com:443/a?x=1", &all);
        assert_eq!(get.as_deref(), Some("GET https://shop.example.com/a?x=1"));
        assert_eq!(
            key(Method::HEAD, "https://shop.example.com/a?x=1", &all),
            get
        );
        assert_eq!(
            key(Method::GET, "http://shop.example.com:8080/a", &all).as_deref(),
            Some("GET http://shop.example.com:8080/a")
        );
        assert_ne!(
            key(Method::GET, "http://shop.example.com/a", &all),
            key(Method::GET, "https://shop.example.com/a", &all)
        );
        assert_eq!(key(Method::POST, "https://shop.example.com/a", &all), None);
        // An empty query is kept apart from none, as the URI differs.
        assert_ne!(
            key(Method::GET, "https://s.example/a?", &all),
            key(Method::GET, "https://s.example/a", &all)
        );
    }

    #[test]
    fn query_parameters_are_kept_as_the_policy_says() {
        let include = QueryKey::Include(vec!["page".into()]);
        assert_eq!(
            key(
                Method::GET,
                "https://s.example/a?utm=x&page=2&sort",
                &include
            )
            .as_deref(),
            Some("GET https://s.example/a?page=2")
        );
        assert_eq!(
            key(Method::GET, "https://s.example/a?utm=x", &include).as_deref(),
            Some("GET https://s.example/a")
        );
        let exclude = QueryKey::Exclude(vec!["utm".into()]);
        assert_eq!(
            key(
                Method::GET,
                "https://s.example/a?utm=x&page=2&sort",
                &exclude
            )
            .as_deref(),
            Some("GET https://s.example/a?page=2&sort")
        );
    }

    #[test]
    fn a_keys_host_is_its_uris_without_port() {
        let host = |authority: &str, path: &str| {
            CacheKey::of_uri("https", authority, path, &QueryKey::All)
                .host()
                .to_owned()
        };
        assert_eq!(host("Shop.Example.com", "/a?b=c"), "shop.example.com");
        assert_eq!(host("shop.example.com:8443", "/"), "shop.example.com");
        assert_eq!(host("shop.example.com", "?q"), "shop.example.com");
        assert_eq!(host("[::1]:8443", "/"), "::1");
    }
}
