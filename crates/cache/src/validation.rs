//! Validation (RFC 9111 §4.3): the conditional request that validates a stored response, a
//! client's own conditional request answered from the cache, and a stored response freshened
//! by a 304.

use http::header::{
    HeaderName, CONTENT_LENGTH, DATE, ETAG, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE,
    IF_UNMODIFIED_SINCE, LAST_MODIFIED, RANGE,
};
use http::HeaderMap;

use crate::date::http_date;
use crate::storable::{storable_fields, Storable};

/// Removes a client's preconditions and `Range` from a request the cache forwards to fill
/// itself: it asks for the whole representation, and answers the client's conditions
/// itself from what it receives.
pub fn strip_preconditions(request: &mut HeaderMap) {
    for name in [
        IF_MATCH,
        IF_NONE_MATCH,
        IF_MODIFIED_SINCE,
        IF_UNMODIFIED_SINCE,
        IF_RANGE,
        RANGE,
    ] {
        request.remove(name);
    }
}

/// Adds to `request` the conditions that validate a stored response with `stored` fields
/// (§4.3.1): `If-None-Match` with its entity tag, and `If-Modified-Since` with its
/// `Last-Modified` (else its `Date`, which the origin generated). `false` when it has no
/// validator: then it cannot be validated, only fetched again.
pub fn add_validators(request: &mut HeaderMap, stored: &HeaderMap) -> bool {
    let etag = stored.get(ETAG).cloned();
    let since = stored
        .get(LAST_MODIFIED)
        .filter(|_| http_date(stored, &LAST_MODIFIED).is_some())
        .cloned();
    if let Some(etag) = &etag {
        request.insert(IF_NONE_MATCH, etag.clone());
    }
    match (since, etag.is_some()) {
        (Some(modified), _) => {
            request.insert(IF_MODIFIED_SINCE, modified);
        }
        (None, true) => {}
        (None, false) => return false,
    }
    true
}

/// Whether a client's conditional GET or HEAD with `request` fields is answered `304 Not
/// Modified` by a response with `stored` fields (§4.3.2; RFC 9110 §13.1.2, §13.1.3):
/// `If-None-Match` when present (weak comparison, `*` matches any), else
/// `If-Modified-Since` against `Last-Modified` (or `Date`).
pub fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    if request.contains_key(IF_NONE_MATCH) {
        let Some(etag) = stored.get(ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        return request
            .get_all(IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|list| list.split(','))
            .map(str::trim)
            .any(|tag| tag == "*" || weak_equal(tag, etag));
    }
    let Some(since) = http_date(request, &IF_MODIFIED_SINCE) else {
        return false;
    };
    let modified = http_date(stored, &LAST_MODIFIED).or_else(|| http_date(stored, &DATE));
    modified.is_some_and(|modified| modified <= since)
}

/// Weak comparison of two entity tags (RFC 9110 §8.8.3.2): equal opaque tags, either weak.
pub fn weak_equal(a: &str, b: &str) -> bool {
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    opaque(a) == opaque(b)
}

/// The fields of a `304` answered from a stored response (RFC 9110 §15.4.5).
pub fn not_modified_headers(stored: &HeaderMap) -> HeaderMap {
    let mut fields = HeaderMap::new();
    for name in [
        "cache-control",
        "content-location",
        "date",
        "etag",
        "expires",
        "vary",
        "last-modified",
    ] {
        for value in stored.get_all(name) {
            fields.append(HeaderName::from_static(name), value.clone());
        }
    }
    fields
}

/// Whether a `304` with `not_modified` fields, received for validating a stored response
/// with `stored` fields, is about that response (§4.3.4): its entity tag, if it sends one,
/// is the stored one (weakly); else its `Last-Modified`, if it sends one, is the stored
/// one; a 304 that sends neither is about the response it validated.
pub fn selects(not_modified: &HeaderMap, stored: &HeaderMap) -> bool {
    let text = |headers: &HeaderMap, name: &HeaderName| -> Option<String> {
        Some(headers.get(name)?.to_str().ok()?.to_owned())
    };
    if let Some(tag) = text(not_modified, &ETAG) {
        return text(stored, &ETAG).is_some_and(|stored| weak_equal(&tag, &stored));
    }
    if let Some(modified) = http_date(not_modified, &LAST_MODIFIED) {
        return http_date(stored, &LAST_MODIFIED) == Some(modified);
    }
    true
}

/// The stored fields updated from a `304` (§3.2, §4.3.4): each field the 304 sends replaces
/// the stored one of that name, except `Content-Length` (the stored content is unchanged)
/// and the fields never stored (hop-by-hop, `Connection`-listed, those `no-cache="…"` or
/// `private="…"` list).
pub fn freshen(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let omitted: Storable = storable_fields(not_modified);
    let mut updated = stored.clone();
    let mut replaced: Vec<&HeaderName> = Vec::new();
    for (name, value) in not_modified {
        if *name == CONTENT_LENGTH || omitted.omit.contains(name) {
            continue;
        }
        if !replaced.contains(&name) {
            updated.remove(name);
            replaced.push(name);
        }
        updated.append(name.clone(), value.clone());
    }
    updated
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fields;

    const LM: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const LATER: &str = "Mon, 07 Nov 1994 08:49:37 GMT";

    #[test]
    fn rfc9111_4_3_1_validation_sends_the_entity_tag_and_last_modified() {
        let mut request = fields(&[("if-none-match", "\"client\""), ("range", "bytes=0-1")]);
        strip_preconditions(&mut request);
        assert!(request.is_empty());
        assert!(add_validators(
            &mut request,
            &fields(&[("etag", "\"v1\""), ("last-modified", LM)])
        ));
        assert_eq!(request[IF_NONE_MATCH], "\"v1\"");
        assert_eq!(request[IF_MODIFIED_SINCE], LM);
        let mut request = HeaderMap::new();
        assert!(add_validators(
            &mut request,
            &fields(&[("etag", "W/\"v1\"")])
        ));
        assert_eq!(request.len(), 1);
        let mut request = HeaderMap::new();
        assert!(!add_validators(
            &mut request,
            &fields(&[("last-modified", "garbage")])
        ));
        assert!(request.is_empty());
    }

    #[test]
    fn rfc9111_4_3_2_a_clients_conditional_request_is_answered_from_the_stored_response() {
        let stored = fields(&[("etag", "\"v1\""), ("last-modified", LM)]);
        assert!(not_modified(
            &fields(&[("if-none-match", "\"v0\", W/\"v1\"")]),
            &stored
        ));
        assert!(not_modified(&fields(&[("if-none-match", "*")]), &stored));
        assert!(!not_modified(
            &fields(&[("if-none-match", "\"v2\"")]),
            &stored
        ));
        // If-None-Match decides alone when present.
        assert!(!not_modified(
            &fields(&[("if-none-match", "\"v2\""), ("if-modified-since", LATER)]),
            &stored
        ));
        assert!(not_modified(
            &fields(&[("if-modified-since", LATER)]),
            &stored
        ));
        assert!(not_modified(&fields(&[("if-modified-since", LM)]), &stored));
        assert!(!not_modified(
            &fields(&[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")]),
            &stored
        ));
        assert!(!not_modified(&fields(&[]), &stored));
        let headers = not_modified_headers(&fields(&[
            ("etag", "\"v1\""),
            ("content-type", "text/plain"),
            ("cache-control", "max-age=5"),
        ]));
        assert!(headers.contains_key(ETAG) && headers.contains_key("cache-control"));
        assert!(!headers.contains_key("content-type"));
    }

    #[test]
    fn rfc9111_4_3_4_a_304_selects_the_response_it_validates() {
        let stored = fields(&[("etag", "\"v1\""), ("last-modified", LM)]);
        assert!(selects(&fields(&[("etag", "W/\"v1\"")]), &stored));
        assert!(!selects(&fields(&[("etag", "\"v2\"")]), &stored));
        assert!(selects(
            &fields(&[("last-modified", LM)]),
            &fields(&[("last-modified", LM)])
        ));
        assert!(!selects(
            &fields(&[("last-modified", LATER)]),
            &fields(&[("last-modified", LM)])
        ));
        assert!(selects(&fields(&[("cache-control", "max-age=5")]), &stored));
    }

    #[test]
    fn rfc9111_3_2_a_304_replaces_the_stored_fields_it_sends_but_content_length() {
        let stored = fields(&[
            ("cache-control", "max-age=1"),
            ("content-length", "5"),
            ("x-a", "old"),
            ("x-a", "older"),
            ("x-kept", "1"),
        ]);
        let update = fields(&[
            ("cache-control", "max-age=60"),
            ("content-length", "0"),
            ("x-a", "new"),
            ("x-new", "2"),
            ("connection", "x-hop"),
            ("x-hop", "h"),
        ]);
        let freshened = freshen(&stored, &update);
        assert_eq!(freshened["cache-control"], "max-age=60");
        assert_eq!(freshened["content-length"], "5");
        assert_eq!(freshened.get_all("x-a").iter().collect::<Vec<_>>(), ["new"]);
        assert_eq!(freshened["x-kept"], "1");
        assert_eq!(freshened["x-new"], "2");
        assert!(!freshened.contains_key("x-hop") && !freshened.contains_key("connection"));
    }
}
