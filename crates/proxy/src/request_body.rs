//! The client's request body made ready for attempts: read whole before the request takes a
//! slot of its cluster when it is small enough (so that it can be replayed, and so that a slow
//! client holds nothing others need), or streamed once.

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Response, StatusCode, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Body as _;
use hyper::body::Frame;
use prometheus_client::metrics::counter::Counter;

use crate::answers::{body_timed_out, local_response, too_large};
use crate::body::{BodyState, LimitedBody, ProxyBody, UpstreamBody};
use crate::routing::Route;

/// A request body ready for attempts: kept whole for replay, or streamed once.
pub(crate) enum Body {
    Replayable(Bytes),
    /// Streamed to the first attempt; `copied` if a copy is kept that may make it replayable.
    Streamed {
        body: Option<LimitedBody>,
        copied: bool,
    },
}

impl Body {
    /// The body for the next attempt; `None` once a streamed body has been sent.
    pub(crate) fn next(&mut self) -> Option<UpstreamBody> {
        match self {
            Body::Replayable(bytes) => Some(Either::Right(Full::new(bytes.clone()))),
            Body::Streamed { body, .. } => body.take().map(Either::Left),
        }
    }

    pub(crate) fn replayable(&self) -> bool {
        matches!(self, Body::Replayable(_))
    }

    /// Whether another attempt may follow this one (the body is whole, or a copy is kept).
    pub(crate) fn may_replay(&self) -> bool {
        matches!(
            self,
            Body::Replayable(_) | Body::Streamed { copied: true, .. }
        )
    }

    /// After an attempt: a streamed body whose copy holds all of it becomes replayable.
    pub(crate) fn recover(&mut self, state: &BodyState) {
        if let Body::Streamed { copied: true, .. } = self {
            if let Some(bytes) = state.take_copy() {
                *self = Body::Replayable(bytes);
            }
        }
    }
}

pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Largest request body read whole before forwarding on a route without retries (with them:
/// their `buffer_limit`).
const BUFFERED_BODY: usize = 64 * 1024;

/// Reads `body` whole if it is at most `keep` bytes, or its first `keep` bytes otherwise. A body
/// of unknown length over HTTP/2 (as gRPC streams send) streams at once instead, since its
/// client may wait for the answer before sending more; with `copy`, a copy of up to `keep` bytes
/// is kept, so that it can be replayed if it turns out that small. A longer body streams, which
/// rules out retries.
async fn buffer(
    mut body: LimitedBody,
    headers: &HeaderMap,
    version: Version,
    keep: usize,
    copy: bool,
) -> Result<Body, Box<dyn std::error::Error + Send + Sync>> {
    if body.is_end_stream() {
        return Ok(Body::Replayable(Bytes::new()));
    }
    let length = content_length(headers);
    if length.is_some_and(|length| length <= keep as u64) {
        return Ok(Body::Replayable(body.collect().await?.to_bytes()));
    }
    if length.is_none() && version >= Version::HTTP_2 {
        return Ok(Body::Streamed {
            body: Some(if copy { body.keep_copy(keep) } else { body }),
            copied: copy,
        });
    }
    let mut read = std::collections::VecDeque::new();
    let mut size = 0;
    while size <= keep && !body.is_end_stream() {
        let Some(frame) = body.read_frame().await else {
            break;
        };
        let frame = frame?;
        size += frame.data_ref().map_or(0, Bytes::len);
        read.push_back(frame);
    }
    if size > keep || !body.state().finished() || !read.iter().all(Frame::is_data) {
        return Ok(Body::Streamed {
            body: Some(body.unread(read)),
            copied: false,
        });
    }
    let mut whole = bytes::BytesMut::with_capacity(size);
    for data in read.iter().filter_map(Frame::data_ref) {
        whole.extend_from_slice(data);
    }
    Ok(Body::Replayable(whole.freeze()))
}

/// Reads the client's `body` (or its first bytes, see [`buffer`]) before the request takes a
/// slot of the cluster, within the body timeout: a client that sends it slowly holds nothing
/// that others need. Until the upstream answers, the client may pause its body for at most the
/// body timeout. `Err` is the proxy's answer.
pub(crate) async fn read_body(
    body: LimitedBody,
    headers: &HeaderMap,
    route: &Route,
    version: Version,
    (timeout, timeouts): (std::time::Duration, &Counter),
) -> Result<Body, Response<ProxyBody>> {
    let body = body.idle_timeout(timeout);
    let body_state = body.state();
    let keep = route
        .retries
        .as_ref()
        .map_or(BUFFERED_BODY, |p| p.buffer_limit);
    let buffered = buffer(body, headers, version, keep, route.retries.is_some());
    match tokio::time::timeout(timeout, buffered).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(_)) if body_state.over_limit() => Err(too_large()),
        Ok(Err(_)) if body_state.timed_out() => Err(body_timed_out(timeouts, version)),
        Ok(Err(_)) => Err(local_response(
            StatusCode::BAD_REQUEST,
            "request_body_failed",
        )),
        Err(_elapsed) => Err(body_timed_out(timeouts, version)),
    }
}
