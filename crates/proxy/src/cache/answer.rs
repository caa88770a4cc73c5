//! Responses made from stored objects, and what every response of a cached route says: its
//! `Cache-Status` member, and none of the fields only this cache reads.

use std::time::SystemTime;

use http::{HeaderMap, Method, Response};
use http_body_util::{Either, Full};
use meridian_cache::encoding::{self, Coding};
use meridian_cache::serve::{self, Stored};
use meridian_cache::tags::{CACHE_TAG, SURROGATE_KEY};
use meridian_cache::{CacheStatus, Freshness, Object, MERIDIAN_CACHE_CONTROL};

use crate::body::ProxyBody;

/// The cache's name in `Cache-Status`.
pub const CACHE_NAME: &str = "Meridian";

/// Removes the fields meant for this cache only: `Meridian-Cache-Control`, and the purge
/// tags `Cache-Tag` and `Surrogate-Key`.
pub fn hide_internal(headers: &mut HeaderMap) {
    headers.remove(MERIDIAN_CACHE_CONTROL);
    headers.remove(CACHE_TAG);
    headers.remove(SURROGATE_KEY);
}

/// [`hide_internal`], and appends this cache's `Cache-Status` member.
pub fn finish(headers: &mut HeaderMap, status: &CacheStatus) {
    hide_internal(headers);
    status.append_to(headers, CACHE_NAME);
}

/// Seconds a stored response stays fresh, negative when it is stale.
pub fn ttl(state: &Freshness<'_>) -> i64 {
    let seconds = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    seconds(state.lifetime) - seconds(state.age)
}

/// The answer from `object`, whose fields are `headers` (made by [`Object::headers`]), to a
/// request with `method` and `request` fields at `now` (conditions, ranges and HEAD
/// answered, `Age` set, the content coded as the request asks if `object` has that coding:
/// see `compress::for_request`).
pub fn from_object(
    object: &Object,
    headers: HeaderMap,
    (method, request): (&Method, &HeaderMap),
    now: SystemTime,
    status: CacheStatus,
) -> Response<ProxyBody> {
    let wanted = encoding::wanted(method, request).filter(|c| *c != Coding::Identity);
    let stored = Stored {
        status: object.status,
        headers,
        body: &object.body,
        compressible: object.is_compressible(),
        coded: wanted.and_then(|c| object.coding(c).map(|content| (c, content))),
    };
    let age = object.timing.current_age(now);
    let boundary = || format!("{:032x}", fastrand::u128(..));
    let serve::Answer {
        status: code,
        headers,
        body,
    } = serve::answer(method, request, stored, age, &boundary);
    let mut response = Response::new(Either::Right(Full::new(body)));
    *response.status_mut() = code;
    *response.headers_mut() = headers;
    finish(response.headers_mut(), &status);
    response
}
