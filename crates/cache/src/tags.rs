//! Purge tags: the names an origin gives a response in `Cache-Tag` (comma-separated) and
//! `Surrogate-Key` (space-separated), so that a purge by tag removes every response that
//! carries it.

use http::header::HeaderName;
use http::HeaderMap;

/// `Cache-Tag`: tags separated by commas.
pub const CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

/// `Surrogate-Key`: tags separated by spaces.
pub const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");

/// Most tags kept per response; the rest are ignored.
pub const MAX_TAGS: usize = 64;

/// Longest tag kept, in bytes; longer ones are ignored.
pub const MAX_TAG_LEN: usize = 256;

/// The tags of a response with `headers`: each once, in order, at most [`MAX_TAGS`] of at
/// most [`MAX_TAG_LEN`] bytes.
pub fn tags(headers: &HeaderMap) -> Vec<String> {
    let lines = |name: HeaderName, separator: fn(char) -> bool| {
        headers
            .get_all(name)
            .into_iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(move |value| value.split(separator))
            .map(str::trim)
    };
    let mut tags: Vec<String> = Vec::new();
    let all = lines(CACHE_TAG, |c| c == ',').chain(lines(SURROGATE_KEY, |c| c == ' ' || c == '\t'));
    for tag in all {
        if tags.len() == MAX_TAGS {
            break;
        }
        if !tag.is_empty() && tag.len() <= MAX_TAG_LEN && !tags.iter().any(|t| t == tag) {
            tags.push(tag.to_owned());
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_come_from_cache_tag_and_surrogate_key_each_once() {
        let mut headers = HeaderMap::new();
        headers.append(CACHE_TAG, "product-1, catalog".parse().unwrap());
        headers.append(CACHE_TAG, "catalog".parse().unwrap());
        headers.append(SURROGATE_KEY, "a  b\tproduct-1".parse().unwrap());
        assert_eq!(tags(&headers), ["product-1", "catalog", "a", "b"]);
        let mut many = HeaderMap::new();
        let list: Vec<String> = (0..100).map(|i| format!("t{i}")).collect();
        many.insert(CACHE_TAG, list.join(",").parse().unwrap());
        many.append(CACHE_TAG, "x".repeat(MAX_TAG_LEN + 1).parse().unwrap());
        assert_eq!(tags(&many).len(), MAX_TAGS);
    }
}
