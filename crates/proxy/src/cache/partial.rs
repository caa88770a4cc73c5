//! Ranges of representations too large to store whole (RFC 9111 §3.3, §3.4).
//!
//! A range miss fills the cache with the whole representation (RFC 9110 §14.2 lets a cache
//! ask for more than the client did); when that is too large to store, the range goes
//! upstream as the client asked, and the single-part `206` that comes back is stored under
//! the key's [`CacheKey::partial`], combined with the parts stored before when they share a
//! strong validator (`meridian_cache::partial`). A later range request is answered from the
//! stored parts when they hold every byte it asks for and are fresh; otherwise it goes
//! upstream (`fwd=partial`), without first asking for the whole again.

use std::sync::Arc;
use std::time::SystemTime;

use http::header::CONTENT_LENGTH;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{Either, Full};
use meridian_cache::partial::{self, part_of};
use meridian_cache::{
    storable, CacheControl, CacheKey, CacheStatus, Forward, Freshness, Lookup, Object,
    ResponsePolicy, Reuse,
};

use super::fill::{read_whole, Fetched, Fill, Read};
use super::{answer, compress, RouteCache};
use crate::answers::{local_response, ERROR_HEADER};
use crate::body::{ProxyBody, ResponseBody};
use crate::cluster::Cluster;
use crate::forward::{forward, upstream_response_head, ClientRequest};
use crate::metrics::{CacheMetrics, ProxyMetrics};
use crate::pool::ConnectionBody;
use crate::routing::Route;

/// The parts stored for `key` that a request with `request` fields selects.
pub(super) async fn lookup(
    cache: &RouteCache,
    key: &CacheKey,
    request: &HeaderMap,
    metrics: &CacheMetrics,
) -> Option<Arc<Object>> {
    match cache.cache.lookup(&key.partial(), request, metrics).await {
        Lookup::Hit(object) => Some(object),
        Lookup::UriMiss | Lookup::VaryMiss => None,
    }
}

/// The answer to a range request with `request` fields and `directives` from the stored
/// parts `object` at `now`, if they may answer it (fresh, or stale where allowed) and hold
/// every byte it asks for.
pub(super) fn answer(
    object: &Object,
    request: &HeaderMap,
    directives: &CacheControl,
    now: SystemTime,
) -> Option<Response<ProxyBody>> {
    let policy = ResponsePolicy::of(&object.headers());
    let state = Freshness {
        directives: &policy.directives,
        lifetime: object.lifetime,
        age: object.timing.current_age(now),
    };
    if !matches!(state.reuse(directives), Reuse::Fresh | Reuse::Stale) {
        return None;
    }
    let boundary = || format!("{:032x}", fastrand::u128(..));
    let made = partial::answer(request, object, state.age, &boundary)?;
    let status = CacheStatus {
        hit: true,
        ttl: Some(answer::ttl(&state)),
        ..CacheStatus::default()
    };
    let mut response = Response::new(Either::Right(Full::new(made.body)));
    *response.status_mut() = made.status;
    *response.headers_mut() = made.headers;
    answer::finish(response.headers_mut(), &status);
    Some(response)
}

/// Sends a GET range request upstream as it is, for `key` of `cache`, going there for
/// `reason`; stores the part a storable single-part `206` brings back, and answers with
/// what came back.
#[allow(clippy::too_many_arguments)]
pub(super) async fn fetch(
    cache: &RouteCache,
    key: &CacheKey,
    reason: Forward,
    client: ClientRequest<'_>,
    route: &Route,
    cluster: &Arc<Cluster>,
    metrics: &Arc<ProxyMetrics>,
) -> Result<Response<ConnectionBody>, Response<ProxyBody>> {
    let request = client.request.headers().clone();
    let directives = CacheControl::from_headers(&request);
    let partial_key = key.partial();
    let fill = Fill {
        cache,
        key: &partial_key,
        request: &request,
        directives: &directives,
        stored: None,
        reason,
        wanted: None,
    };
    let mut status = CacheStatus {
        forward: Some(reason),
        ..CacheStatus::default()
    };
    let request_time = SystemTime::now();
    let result = forward(client, route, cluster, metrics).await;
    let times = (request_time, SystemTime::now());
    let response = match result {
        Ok(response) => response,
        Err(mut made) => {
            status.forward_status = Some(made.status().as_u16());
            answer::finish(made.headers_mut(), &status);
            return Err(made);
        }
    };
    let (mut parts, body) = response.into_parts();
    let proxy_made = parts.headers.contains_key(ERROR_HEADER);
    upstream_response_head(&mut parts.headers);
    status.forward_status = Some(parts.status.as_u16());
    let policy = ResponsePolicy::of(&parts.headers);
    // A 206 is storable as a 200 is (RFC 9110 §15.3.7); `storable` refuses it only because
    // the whole-representation fill never stores parts.
    let verdict = storable(
        &Method::GET,
        &request,
        &directives,
        StatusCode::OK,
        &parts.headers,
        &policy,
    );
    let max = cache.cache.store.limits().max_object_bytes;
    let length = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let storable = match verdict {
        Ok(storable)
            if parts.status == StatusCode::PARTIAL_CONTENT
                && !proxy_made
                && length.is_none_or(|l| l <= max) =>
        {
            storable
        }
        _ => {
            answer::finish(&mut parts.headers, &status);
            return compress::passed(Response::from_parts(parts, body), None, (cluster, metrics));
        }
    };
    let body = match read_whole(body, max, route.timeout).await {
        Read::Whole(body) => body,
        Read::TooLong(read, rest) => {
            answer::finish(&mut parts.headers, &status);
            let rest = ResponseBody::new(rest, Arc::clone(cluster), Arc::clone(metrics));
            return Err(Response::from_parts(parts, Either::Left(rest.after(read))));
        }
        Read::Failed => {
            metrics.upstream_body_error(&cluster.name);
            let mut made = local_response(StatusCode::BAD_GATEWAY, "upstream_body_failed");
            answer::finish(made.headers_mut(), &status);
            return Err(made);
        }
    };
    if let Some(part) = part_of(parts.status, &parts.headers, body.len()) {
        let held = lookup(cache, key, &request, metrics.cache()).await;
        let headers = storable.stored_headers(&parts.headers);
        let (fields, content) = partial::combine(held.as_deref(), &headers, part, body.clone());
        let object = fill.object((StatusCode::PARTIAL_CONTENT, fields, content), times);
        if let Fetched::Stored(_, kept, _) = fill.keep(object, status.clone()) {
            status = kept;
        }
        if status.stored {
            metrics.cache().stored.inc();
            cache.cache.account(metrics.cache());
        }
    }
    answer::finish(&mut parts.headers, &status);
    Err(Response::from_parts(parts, Either::Right(Full::new(body))))
}
