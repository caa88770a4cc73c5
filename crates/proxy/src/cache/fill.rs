//! Going upstream for a route that caches: the request asks for the whole representation
//! (the client's preconditions and range are answered here, from what comes back), and is
//! conditional when a stored response is being validated; what comes back is stored when
//! RFC 9111 allows, freshens the stored response if it is a `304` about it, or — on an
//! error — gives way to the stored response if `stale-if-error` allows.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, ETAG, LAST_MODIFIED};
use http::response::Parts;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, Either};
use meridian_cache::encoding::Coding;
use meridian_cache::freshness::lifetime;
use meridian_cache::tags::tags;
use meridian_cache::validation::{add_validators, freshen, selects, strip_preconditions};
use meridian_cache::vary::vary_names;
use meridian_cache::{
    storable, CacheControl, CacheKey, CacheStatus, Forward, Freshness, Object, ResponsePolicy,
    Timing, Variant,
};

use super::{answer, compress, RouteCache};
use crate::answers::{local_response, ERROR_HEADER};
use crate::body::ProxyBody;
use crate::body::ResponseBody;
use crate::cluster::Cluster;
use crate::forward::{forward, upstream_response_head, ClientRequest};
use crate::metrics::ProxyMetrics;
use crate::pool::ConnectionBody;
use crate::routing::Route;

/// One trip upstream for a key.
pub(super) struct Fill<'a> {
    /// The route's caching.
    pub cache: &'a RouteCache,
    /// The key filled.
    pub key: &'a CacheKey,
    /// The client's request fields (a stored response's variant is made of them).
    pub request: &'a HeaderMap,
    /// The client's cache directives.
    pub directives: &'a CacheControl,
    /// The stored response being validated, if any.
    pub stored: Option<&'a Arc<Object>>,
    /// Why the request goes upstream.
    pub reason: Forward,
    /// The coding the client asks for (`encoding::wanted`).
    pub wanted: Option<Coding>,
}

/// What a trip upstream came to.
pub(super) enum Fetched {
    /// A response to answer from: stored (`stored` in its status), or not storable but read
    /// whole, or the stale one served on an error; with the fields of this client's answer
    /// when they are more than those stored (`no-cache="…"`, `private="…"` fields, which
    /// only the client whose request fetched them gets).
    Stored(Arc<Object>, CacheStatus, Option<HeaderMap>),
    /// The upstream's response, passed on as it came (its `Cache-Status` added).
    Passed(Response<ConnectionBody>),
    /// The upstream's response, too large to store by its `Content-Length` (its
    /// `Cache-Status` added): passed on, unless the client asked for less.
    TooLarge(Response<ConnectionBody>),
    /// An answer made here: the proxy's own error, or a response too large to store whose
    /// first bytes were read.
    Made(Response<ProxyBody>),
}

/// The `Cache-Status` detail of a stale response served instead of an error.
pub(super) const STALE_IF_ERROR: &str = "stale-if-error";

/// Status codes after which a stale response may stand in (RFC 5861 §4).
fn is_error(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

impl Fill<'_> {
    /// The stored response, if it may answer instead of an upstream error with `status`.
    fn stale_on_error(&self, status: StatusCode, now: SystemTime) -> Option<Arc<Object>> {
        let stored = self.stored.filter(|_| is_error(status))?;
        let policy = ResponsePolicy::of(&stored.headers());
        let state = Freshness {
            directives: &policy.directives,
            lifetime: stored.lifetime,
            age: stored.timing.current_age(now),
        };
        state
            .serve_on_error(self.directives)
            .then(|| Arc::clone(stored))
    }

    /// A stored response made of what came back.
    pub(super) fn object(
        &self,
        parts: (StatusCode, HeaderMap, Bytes),
        times: (SystemTime, SystemTime),
    ) -> Object {
        let (status, headers, body) = parts;
        let (request_time, response_time) = times;
        let policy = ResponsePolicy::of(&headers);
        let fresh_for = lifetime(
            status,
            &headers,
            &policy,
            self.cache.default_ttl,
            response_time,
        );
        let mut names = vary_names(&headers);
        names.extend(self.cache.key_headers.iter().cloned());
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        names.dedup();
        let timing = Timing::new(&headers, request_time, response_time);
        let (variant, tags) = (Variant::of(&names, self.request), tags(&headers));
        Object::new(
            status,
            headers,
            body,
            timing,
            fresh_for.duration,
            variant,
            tags,
        )
    }

    /// Removes the responses stored for the key when a full response to their validation
    /// replaced them and cannot be stored itself.
    fn forget(&self) {
        if self.stored.is_some() {
            self.cache.cache.remove_key(self.key);
        }
    }

    /// Stores `object` if it can be of use: fresh for a while, with a validator, or
    /// servable stale (`stale-while-revalidate`, `stale-if-error`).
    pub(super) fn keep(&self, object: Object, mut status: CacheStatus) -> Fetched {
        let age = object.timing.initial_age;
        let directives = ResponsePolicy::of(&object.headers()).directives;
        let useful = object.lifetime > age
            || object.header(&ETAG).is_some()
            || object.header(&LAST_MODIFIED).is_some()
            || directives.stale_while_revalidate.is_some()
            || directives.stale_if_error.is_some();
        let state_ttl = |o: &Object| {
            let seconds = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            seconds(o.lifetime) - seconds(age)
        };
        status.ttl = Some(state_ttl(&object));
        let object = Arc::new(object);
        if useful {
            status.stored = self
                .cache
                .cache
                .store
                .insert(self.key.clone(), Arc::clone(&object));
            if status.stored {
                self.cache.cache.stored(self.key, &object);
            }
        }
        Fetched::Stored(object, status, None)
    }
}

/// Makes the trip: see the module's documentation.
pub(super) async fn fetch(
    fill: Fill<'_>,
    mut client: ClientRequest<'_>,
    route: &Route,
    cluster: &Arc<Cluster>,
    metrics: &Arc<ProxyMetrics>,
) -> Fetched {
    // The whole representation, also for a HEAD whose stored response is validated: what
    // comes back replaces what is stored (a HEAD is answered from it).
    *client.request.method_mut() = Method::GET;
    let headers = client.request.headers_mut();
    strip_preconditions(headers);
    if let Some(stored) = fill.stored {
        add_validators(headers, &stored.headers());
    }
    let request_time = SystemTime::now();
    let result = forward(client, route, cluster, metrics).await;
    let response_time = SystemTime::now();
    let times = (request_time, response_time);
    let mut status = CacheStatus {
        forward: Some(fill.reason),
        ..CacheStatus::default()
    };
    let response = match result {
        Ok(response) => response,
        Err(mut made) => {
            status.forward_status = Some(made.status().as_u16());
            if let Some(stale) = fill.stale_on_error(made.status(), response_time) {
                status.detail = Some(STALE_IF_ERROR.into());
                return Fetched::Stored(stale, status, None);
            }
            answer::finish(made.headers_mut(), &status);
            return Fetched::Made(made);
        }
    };
    let (mut parts, body) = response.into_parts();
    // A downstream Meridian proxy's own answer (no route, no healthy instance) says nothing
    // about the origin's resource: never stored, whatever its status.
    let proxy_made = parts.headers.contains_key(ERROR_HEADER);
    upstream_response_head(&mut parts.headers);
    status.forward_status = Some(parts.status.as_u16());
    if let Some(stale) = fill.stale_on_error(parts.status, response_time) {
        status.detail = Some(STALE_IF_ERROR.into());
        return Fetched::Stored(stale, status, None);
    }
    if parts.status == StatusCode::NOT_MODIFIED {
        let stored = fill.stored.map(|stored| (stored, stored.headers()));
        match stored {
            Some((stored, held)) if selects(&parts.headers, &held) => {
                let headers = freshen(&held, &parts.headers);
                let mut object = fill.object((stored.status, headers, stored.body.clone()), times);
                // Its age is the 304's (its Date and Age), not the stored response's.
                object.timing = Timing::new(&parts.headers, request_time, response_time);
                // The content is the same: so are its codings.
                object = object.with_codings_of(stored);
                return fill.keep(object, status);
            }
            // Not Modified, about another representation than the one stored (§4.3.4): the
            // stored one is outdated, and the client asked for no condition.
            Some(_) => {
                fill.forget();
                let mut made =
                    local_response(StatusCode::BAD_GATEWAY, "upstream_validation_mismatch");
                answer::finish(made.headers_mut(), &status);
                return Fetched::Made(made);
            }
            None => return passed(parts, body, &status),
        }
    }
    let policy = ResponsePolicy::of(&parts.headers);
    let verdict = storable(
        &Method::GET,
        fill.request,
        fill.directives,
        parts.status,
        &parts.headers,
        &policy,
    );
    let storable = match verdict {
        Ok(storable) if !proxy_made => storable,
        Ok(_) => {
            status.detail = Some("proxy-error".into());
            return passed(parts, body, &status);
        }
        Err(refusal) => {
            // What was stored no longer stands for the resource (§4.3.3) if the response
            // itself cannot be stored: not because of this request (its no-store, its
            // Authorization), which would let any client drop what others are served; and
            // a server error says nothing of it.
            let unstorable = storable(
                &Method::GET,
                &HeaderMap::new(),
                &CacheControl::default(),
                parts.status,
                &parts.headers,
                &policy,
            )
            .is_err();
            if unstorable && !parts.status.is_server_error() {
                fill.forget();
            }
            status.detail = Some(refusal.as_str().into());
            return passed(parts, body, &status);
        }
    };
    let max = fill.cache.cache.store.limits().max_object_bytes;
    let length = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok());
    if length
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|l| l > max)
    {
        status.detail = Some("too-large".into());
        answer::finish(&mut parts.headers, &status);
        return Fetched::TooLarge(Response::from_parts(parts, body));
    }
    let body = match read_whole(body, max, route.timeout).await {
        Read::Whole(body) => body,
        Read::TooLong(read, rest) => {
            status.detail = Some("too-large".into());
            answer::finish(&mut parts.headers, &status);
            let rest = ResponseBody::new(rest, Arc::clone(cluster), Arc::clone(metrics));
            let rest = rest.after(read);
            let rest = compress::passed_body(&mut parts.headers, parts.status, rest, fill.wanted);
            return Fetched::Made(Response::from_parts(parts, Either::Left(rest)));
        }
        Read::Failed => {
            metrics.upstream_body_error(&cluster.name);
            let mut made = local_response(StatusCode::BAD_GATEWAY, "upstream_body_failed");
            answer::finish(made.headers_mut(), &status);
            return Fetched::Made(made);
        }
    };
    let headers = storable.stored_headers(&parts.headers);
    let fuller = headers.len() < parts.headers.len();
    let object = fill.object((parts.status, headers, body), times);
    let object = compress::prepare(object, fill.wanted).await;
    match fill.keep(object, status) {
        Fetched::Stored(object, status, None) if fuller => {
            Fetched::Stored(object, status, Some(parts.headers))
        }
        kept => kept,
    }
}

/// The upstream's response as it came, with `status` said.
fn passed(mut parts: Parts, body: ConnectionBody, status: &CacheStatus) -> Fetched {
    answer::finish(&mut parts.headers, status);
    Fetched::Passed(Response::from_parts(parts, body))
}

/// A body read to its end, or as far as it was allowed.
pub(super) enum Read {
    Whole(Bytes),
    /// More than the limit: what was read, and the rest.
    TooLong(Bytes, ConnectionBody),
    /// It failed, or paused longer than allowed.
    Failed,
}

/// Reads `body` whole if it is at most `max` bytes, each frame within `pause`.
pub(super) async fn read_whole(mut body: ConnectionBody, max: usize, pause: Duration) -> Read {
    let mut read = BytesMut::new();
    loop {
        match tokio::time::timeout(pause, body.frame()).await {
            Ok(None) => return Read::Whole(read.freeze()),
            Ok(Some(Ok(frame))) => {
                // Trailers are not stored.
                if let Ok(data) = frame.into_data() {
                    read.extend_from_slice(&data);
                    if read.len() > max {
                        return Read::TooLong(read.freeze(), body);
                    }
                }
            }
            Ok(Some(Err(_))) | Err(_) => return Read::Failed,
        }
    }
}
