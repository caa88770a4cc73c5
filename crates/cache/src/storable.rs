//! Whether a shared cache may store a response (RFC 9111 §3), and which of its fields it
//! must leave out (§3.1, §5.2.2.4, §5.2.2.7).
//!
//! `Set-Cookie`: RFC 9111 §7 notes that it does not inhibit caching, and §3.1 has a cache
//! store every field it stores a response with — so a shared cache that stores such a
//! response hands one client's cookie to the next. A cache is never required to store, so
//! this one stores a response with `Set-Cookie` only when the origin addressed shared
//! caches explicitly (`public`, `s-maxage`, or a targeted field, RFC 9213), or listed
//! `Set-Cookie` in `private="…"` / `no-cache="…"` (then it is stored without the field, as
//! those directives say). Any other response with `Set-Cookie` goes to its client only.

use http::header::{
    HeaderName, AUTHORIZATION, CONNECTION, EXPIRES, SET_COOKIE, TE, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, Method, StatusCode};

use crate::directives::{CacheControl, FieldNames};
use crate::targeted::{ResponsePolicy, Source};
use crate::vary;

/// Why a response is not stored (reported in `Cache-Status` as `detail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Only responses to GET are stored (HEAD is answered from them).
    Method,
    /// An interim, partial, or not understood status code.
    Status,
    /// `no-store` in the request or the response.
    NoStore,
    /// `private` without field names.
    Private,
    /// The request carried `Authorization` and the response did not allow sharing it (§3.5).
    Authorization,
    /// The response sets a cookie and did not address shared caches explicitly.
    SetCookie,
    /// `Vary: *`: no later request can match it (§4.1).
    VaryAll,
    /// Nothing makes it storable: no explicit freshness, `public`, or a status code
    /// cacheable by default.
    NotCacheable,
}

impl Refusal {
    /// A short name for logs and `Cache-Status`'s `detail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Method => "method",
            Refusal::Status => "status",
            Refusal::NoStore => "no-store",
            Refusal::Private => "private",
            Refusal::Authorization => "authorization",
            Refusal::SetCookie => "set-cookie",
            Refusal::VaryAll => "vary-star",
            Refusal::NotCacheable => "not-cacheable",
        }
    }
}

/// A storable response: the fields to leave out of what is stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Storable {
    /// Fields the cache must not store: hop-by-hop fields, those `Connection` lists, and
    /// those a qualified `no-cache` or `private` lists.
    pub omit: Vec<HeaderName>,
}

impl Storable {
    /// `response`'s fields as they are stored.
    pub fn stored_headers(&self, response: &HeaderMap) -> HeaderMap {
        let mut stored = response.clone();
        for name in &self.omit {
            stored.remove(name);
        }
        stored
    }
}

/// Status codes heuristically cacheable, i.e. cacheable by default (RFC 9110 §15.1).
pub fn cacheable_by_default(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Status codes whose caching semantics this cache implements (for `must-understand`): the
/// ones cacheable by default, and the temporary redirects.
fn understood(status: StatusCode) -> bool {
    cacheable_by_default(status) || matches!(status.as_u16(), 302 | 307)
}

/// Hop-by-hop fields (RFC 9110 §7.6.1), never stored.
const HOP_BY_HOP: [&str; 5] = [
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// Whether a shared cache may store the response with `status` and `response` fields,
/// governed by `policy` (see [`ResponsePolicy`]), to a request with `method`, `request`
/// fields and `request_directives` (RFC 9111 §3).
pub fn storable(
    method: &Method,
    request: &HeaderMap,
    request_directives: &CacheControl,
    status: StatusCode,
    response: &HeaderMap,
    policy: &ResponsePolicy,
) -> Result<Storable, Refusal> {
    let directives = &policy.directives;
    if method != Method::GET {
        return Err(Refusal::Method);
    }
    // 206 is cacheable by default, but only complete responses are stored (and asked for).
    if status.is_informational() || status == StatusCode::PARTIAL_CONTENT {
        return Err(Refusal::Status);
    }
    if directives.must_understand {
        // §5.2.2.3: store only what is understood; then `no-store` does not apply.
        if !understood(status) {
            return Err(Refusal::Status);
        }
    } else if directives.no_store {
        return Err(Refusal::NoStore);
    }
    if request_directives.no_store {
        return Err(Refusal::NoStore);
    }
    if directives.private == Some(FieldNames::All) {
        return Err(Refusal::Private);
    }
    let addressed_to_shared =
        directives.public || directives.s_maxage.is_some() || policy.source != Source::CacheControl;
    if request.contains_key(AUTHORIZATION)
        && !(directives.must_revalidate || directives.public || directives.s_maxage.is_some())
    {
        return Err(Refusal::Authorization);
    }
    if vary::varies_on_everything(response) {
        return Err(Refusal::VaryAll);
    }
    let explicit = directives.max_age.is_some()
        || directives.s_maxage.is_some()
        || (policy.uses_expires() && response.contains_key(EXPIRES));
    if !(explicit || directives.public || cacheable_by_default(status)) {
        return Err(Refusal::NotCacheable);
    }
    let omit = omitted_fields(response, directives);
    if response.contains_key(SET_COOKIE) && !addressed_to_shared && !omit.contains(&SET_COOKIE) {
        return Err(Refusal::SetCookie);
    }
    Ok(Storable { omit })
}

/// The fields of a response (or of a `304` freshening one) that are never stored.
pub(crate) fn storable_fields(response: &HeaderMap) -> Storable {
    Storable {
        omit: omitted_fields(response, &ResponsePolicy::of(response).directives),
    }
}

/// The fields not stored: hop-by-hop ones, those `Connection` names, and those listed by a
/// qualified `no-cache` or `private`.
fn omitted_fields(response: &HeaderMap, directives: &CacheControl) -> Vec<HeaderName> {
    let mut omit: Vec<HeaderName> = vec![CONNECTION, TE, TRANSFER_ENCODING, UPGRADE];
    omit.extend(HOP_BY_HOP.iter().map(|name| HeaderName::from_static(name)));
    let listed = response
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok());
    omit.extend(listed);
    for names in [&directives.no_cache, &directives.private] {
        if let Some(FieldNames::Only(names)) = names {
            omit.extend(names.iter().cloned());
        }
    }
    omit.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    omit.dedup();
    omit
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fields;

    fn check(
        request: &[(&str, &str)],
        status: u16,
        response: &[(&str, &str)],
    ) -> Result<Storable, Refusal> {
        let request = fields(request);
        let response = fields(response);
        storable(
            &Method::GET,
            &request,
            &CacheControl::from_headers(&request),
            StatusCode::from_u16(status).unwrap(),
            &response,
            &ResponsePolicy::of(&response),
        )
    }

    #[test]
    fn rfc9111_3_only_final_complete_responses_to_get_are_stored() {
        let response = fields(&[("cache-control", "max-age=60")]);
        let policy = ResponsePolicy::of(&response);
        let none = HeaderMap::new();
        let post = storable(
            &Method::POST,
            &none,
            &CacheControl::default(),
            StatusCode::OK,
            &response,
            &policy,
        );
        assert_eq!(post, Err(Refusal::Method));
        assert_eq!(
            check(&[], 206, &[("cache-control", "max-age=60")]),
            Err(Refusal::Status)
        );
        assert_eq!(
            check(&[], 103, &[("cache-control", "max-age=60")]),
            Err(Refusal::Status)
        );
        assert!(check(&[], 200, &[("cache-control", "max-age=60")]).is_ok());
    }

    #[test]
    fn rfc9111_3_storable_by_default_status_or_explicit_freshness() {
        assert!(check(&[], 200, &[]).is_ok());
        assert!(check(&[], 404, &[]).is_ok());
        assert_eq!(check(&[], 302, &[]), Err(Refusal::NotCacheable));
        assert_eq!(check(&[], 500, &[]), Err(Refusal::NotCacheable));
        assert!(check(&[], 302, &[("cache-control", "max-age=60")]).is_ok());
        assert!(check(&[], 500, &[("expires", "Thu, 01 Jan 2037 00:00:00 GMT")]).is_ok());
        assert!(check(&[], 307, &[("cache-control", "public")]).is_ok());
        // Expires does not count when a targeted field governs.
        let targeted = [
            ("cdn-cache-control", "no-transform"),
            ("expires", "Thu, 01 Jan 2037 00:00:00 GMT"),
        ];
        assert_eq!(check(&[], 500, &targeted), Err(Refusal::NotCacheable));
    }

    #[test]
    fn rfc9111_5_2_2_5_no_store_in_the_response_or_the_request_refuses() {
        assert_eq!(
            check(&[], 200, &[("cache-control", "max-age=60, no-store")]),
            Err(Refusal::NoStore)
        );
        assert_eq!(
            check(
                &[("cache-control", "no-store")],
                200,
                &[("cache-control", "max-age=60")]
            ),
            Err(Refusal::NoStore)
        );
    }

    #[test]
    fn rfc9111_5_2_2_3_must_understand_overrides_no_store_for_understood_status_codes() {
        let cc = [("cache-control", "max-age=60, no-store, must-understand")];
        assert!(check(&[], 200, &cc).is_ok());
        assert_eq!(check(&[], 299, &cc), Err(Refusal::Status));
    }

    #[test]
    fn rfc9111_5_2_2_7_private_refuses_and_its_qualified_form_omits_fields() {
        assert_eq!(
            check(&[], 200, &[("cache-control", "private, max-age=60")]),
            Err(Refusal::Private)
        );
        let stored = check(
            &[],
            200,
            &[
                ("cache-control", "private=\"x-user\", max-age=60"),
                ("x-user", "a"),
                ("x-other", "b"),
            ],
        )
        .unwrap();
        let response = fields(&[("x-user", "a"), ("x-other", "b")]);
        let kept = stored.stored_headers(&response);
        assert!(kept.contains_key("x-other") && !kept.contains_key("x-user"));
    }

    #[test]
    fn rfc9111_5_2_2_4_qualified_no_cache_omits_the_listed_fields() {
        let response = [
            ("cache-control", "no-cache=\"a, b\", max-age=60"),
            ("a", "1"),
            ("b", "2"),
            ("c", "3"),
        ];
        let stored = check(&[], 200, &response)
            .unwrap()
            .stored_headers(&fields(&response));
        assert!(!stored.contains_key("a") && !stored.contains_key("b"));
        assert_eq!(stored["c"], "3");
    }

    #[test]
    fn rfc9111_3_1_connection_and_the_fields_it_lists_are_not_stored() {
        let response = [
            ("connection", "a, b"),
            ("a", "1"),
            ("b", "2"),
            ("c", "3"),
            ("keep-alive", "timeout=5"),
        ];
        let stored = check(&[], 200, &response)
            .unwrap()
            .stored_headers(&fields(&response));
        assert_eq!(stored.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["c"]);
    }

    #[test]
    fn rfc9111_3_5_a_request_with_authorization_needs_explicit_permission() {
        let auth = [("authorization", "Bearer x")];
        assert_eq!(
            check(&auth, 200, &[("cache-control", "max-age=60")]),
            Err(Refusal::Authorization)
        );
        for allowed in ["public", "s-maxage=60", "must-revalidate, max-age=60"] {
            assert!(
                check(&auth, 200, &[("cache-control", allowed)]).is_ok(),
                "{allowed}"
            );
        }
    }

    #[test]
    fn rfc9111_7_set_cookie_is_stored_only_when_the_origin_addressed_shared_caches() {
        let cookie = ("set-cookie", "a=b");
        assert_eq!(
            check(&[], 200, &[("cache-control", "max-age=60"), cookie]),
            Err(Refusal::SetCookie)
        );
        assert!(check(&[], 200, &[("cache-control", "s-maxage=60"), cookie]).is_ok());
        assert!(check(&[], 200, &[("cache-control", "public, max-age=60"), cookie]).is_ok());
        assert!(check(&[], 200, &[("cdn-cache-control", "max-age=60"), cookie]).is_ok());
        let without = check(
            &[],
            200,
            &[("cache-control", "max-age=60, private=set-cookie"), cookie],
        )
        .unwrap();
        assert!(without.omit.contains(&SET_COOKIE));
    }

    #[test]
    fn rfc9111_4_1_vary_star_is_not_stored() {
        let response = [("cache-control", "max-age=60"), ("vary", "accept, *")];
        assert_eq!(check(&[], 200, &response), Err(Refusal::VaryAll));
    }
}
