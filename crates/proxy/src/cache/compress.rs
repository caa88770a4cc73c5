//! The edge's own compression on a route that caches (RFC 9110 §8.4), for responses the
//! origin did not compress (`meridian_cache::encoding::compressible`): Brotli, zstd or gzip,
//! whichever the request accepts best (`encoding::wanted`).
//!
//! A stored response keeps one content per coding, each made the first time a request asks
//! for it (off the async workers; once for concurrent requests, which wait for it as
//! collapsed misses wait) and put in the store in the place of the object it was made from. A response that is not stored is coded as it streams through, in bounded
//! memory. Either way the answer varies on `Accept-Encoding`.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{ACCEPT_RANGES, CONTENT_LENGTH};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::Either;
use meridian_cache::encoding::{self, compressible, Coding};
use meridian_cache::{CacheKey, Join, Object};

use super::HttpCache;

use crate::body::{ProxyBody, ResponseBody};
use crate::cluster::Cluster;
use crate::encoder::{code_whole, Effort, Encoder};
use crate::metrics::{CacheMetrics, ProxyMetrics};
use crate::pool::ConnectionBody;

/// `object`, about to be stored, marked compressible if it may be, and with its content coded
/// as `wanted` (what the request that fetched it asks for) if that is a coding.
pub(super) async fn prepare(object: Object, wanted: Option<Coding>) -> Object {
    let length = Some(object.body.len());
    if !compressible(object.status, &object.headers(), &HeaderMap::new(), length) {
        return object;
    }
    let object = object.compressible();
    match wanted.filter(|c| *c != Coding::Identity) {
        Some(coding) => match whole(object.body.clone(), coding).await {
            Some(content) => object.with_coded(coding, content),
            None => object,
        },
        None => object,
    }
}

/// The object to answer a `method` request with `request` fields from: `object`, or — when
/// the request asks for a coding of a compressible object not made yet — a copy with that
/// coding made, which takes `object`'s place under `key` in `cache`'s store if it is still
/// there. Concurrent requests for one key and coding make it once: the others wait (as
/// collapsed misses do) and take the copy if it is of their object, or make their own.
pub(super) async fn for_request(
    cache: &HttpCache,
    key: &CacheKey,
    object: Arc<Object>,
    (method, request): (&Method, &HeaderMap),
    metrics: &CacheMetrics,
) -> Arc<Object> {
    let wanted = encoding::wanted(method, request).filter(|c| *c != Coding::Identity);
    let Some(coding) = wanted.filter(|c| object.is_compressible() && object.coding(*c).is_none())
    else {
        return object;
    };
    let leader = match cache.coders.join(&(key.clone(), coding)).await {
        Join::Lead(leader) => Some(leader),
        Join::Shared(recoded) if recoded.body.as_ptr() == object.body.as_ptr() => return recoded,
        Join::Shared(_) | Join::Alone(_) => None,
    };
    let Some(content) = whole(object.body.clone(), coding).await else {
        return object;
    };
    metrics.codings.inc();
    let recoded = Arc::new(Object::clone(&object).with_coded(coding, content));
    cache.store.recode(key, &object, &recoded);
    if let Some(leader) = leader {
        leader.share(Arc::clone(&recoded));
    }
    recoded
}

/// `content` coded whole with `coding`, on a blocking thread.
async fn whole(content: Bytes, coding: Coding) -> Option<Bytes> {
    let coded = tokio::task::spawn_blocking(move || code_whole(&content, coding)).await;
    match coded {
        Ok(Ok(coded)) => coded,
        Ok(Err(error)) => {
            tracing::warn!(%error, coding = coding.token(), "coding a stored response failed");
            None
        }
        Err(_) => None,
    }
}

/// The upstream's `response` to a request that asks for `wanted` (`encoding::wanted`),
/// passed on without being stored: coded on the fly when it may be compressed and the
/// request asks for a coding (`Err`, the proxy's own answer, its body read through a
/// [`ResponseBody`] of `cluster`), or as it came (`Ok`).
// The request path's own result (`forward`'s), returned once per request: not worth a box.
#[allow(clippy::result_large_err)]
pub(super) fn passed(
    response: Response<ConnectionBody>,
    wanted: Option<Coding>,
    (cluster, metrics): (&Arc<Cluster>, &Arc<ProxyMetrics>),
) -> Result<Response<ConnectionBody>, Response<ProxyBody>> {
    let (mut parts, body) = response.into_parts();
    let length = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    match encoder(&mut parts.headers, parts.status, wanted, length) {
        None => Ok(Response::from_parts(parts, body)),
        Some(encoder) => {
            let body = ResponseBody::new(body, Arc::clone(cluster), Arc::clone(metrics));
            Err(Response::from_parts(
                parts,
                Either::Left(body.coded(encoder)),
            ))
        }
    }
}

/// `body` (of unknown length) of a response passed on with `status` and `headers` to a
/// request that asks for `wanted`: coded on the fly when it may be.
pub(super) fn passed_body(
    headers: &mut HeaderMap,
    status: StatusCode,
    body: ResponseBody,
    wanted: Option<Coding>,
) -> ResponseBody {
    match encoder(headers, status, wanted, None) {
        Some(encoder) => body.coded(encoder),
        None => body,
    }
}

/// The coder of a response passed on with `status`, `headers` and a content of `length`
/// bytes if known, to a request that asks for `wanted`, if it is to be coded; its fields
/// say so (a response that may be compressed varies on `Accept-Encoding`, coded or not; a
/// coded one's length is not known, and ranges of it are not served).
fn encoder(
    headers: &mut HeaderMap,
    status: StatusCode,
    wanted: Option<Coding>,
    length: Option<usize>,
) -> Option<Encoder> {
    let wanted = wanted.filter(|_| compressible(status, headers, &HeaderMap::new(), length))?;
    encoding::vary_on_accept_encoding(headers);
    let encoder = Encoder::new(wanted, Effort::Stream)
        .inspect_err(
            |error| tracing::warn!(%error, coding = wanted.token(), "starting a coder failed"),
        )
        .ok()
        .flatten()?;
    encoding::mark_coded(headers, wanted);
    headers.remove(CONTENT_LENGTH);
    headers.remove(ACCEPT_RANGES);
    Some(encoder)
}
