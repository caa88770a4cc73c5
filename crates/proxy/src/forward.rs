//! The request path: route, pick an endpoint, rewrite headers, forward, answer.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Body as _;
use hyper::body::Frame;
use prometheus_client::metrics::counter::Counter;

use crate::body::{BodyState, ClientBody, LimitedBody, ResponseBody};
use crate::cluster::{Cluster, Outcome, Overflow};
use crate::config::{RetryOn, RetryPolicy, TrustForwarded, UpstreamProtocol};
use crate::fields::{Added, AddedFields, OutgoingFields};
use crate::forwarding::add_forwarding;
use crate::hop_by_hop::{strip_hop_by_hop, Present};
use crate::metrics::{ProxyMetrics, UpstreamError};
use crate::peer::Peer;
use crate::pool::ConnectionBody;
use crate::routing::Route;
use crate::server::ListenerContext;
use crate::switch::{tunnel, Switch};
use crate::upstream::ConnectionLimitReached;

/// The body of a request to an upstream: the client's, streamed under the body limit, or a
/// buffered copy for replay.
pub type UpstreamBody = Either<LimitedBody, Full<Bytes>>;

/// The body of a response the proxy sends: the upstream's, or one the proxy made.
pub type ProxyBody = Either<ResponseBody, Full<Bytes>>;

/// The header that says why the proxy itself answered.
pub const ERROR_HEADER: &str = "x-meridian-error";
/// [`ERROR_HEADER`] as a header name, so that each response does not parse it again.
static PROXY_ERROR: HeaderName = HeaderName::from_static(ERROR_HEADER);

/// A response made by the proxy, with the reason in [`ERROR_HEADER`].
// Cold: the proxy answers itself on paths most requests do not take; their code is kept apart.
#[cold]
pub fn local_response(status: StatusCode, reason: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(format!(
        "{} {reason}\n",
        status.as_u16()
    )))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(ERROR_HEADER, HeaderValue::from_static(reason));
    response
}

/// `308 Permanent Redirect` to the same host (without its port), path and query over HTTPS on
/// `port` (named unless it is 443); `400 bad_request_target` if no URL can be made of them.
fn to_https(host: &str, port: u16, uri: &Uri) -> Response<ProxyBody> {
    let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let Ok(location) = HeaderValue::try_from(location) else {
        return local_response(StatusCode::BAD_REQUEST, "bad_request_target");
    };
    let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// `response`, asking an HTTP/1 client to close the connection after it (HTTP/2 streams end on
/// their own).
#[cold]
fn closing(mut response: Response<ProxyBody>, version: Version) -> Response<ProxyBody> {
    if version < Version::HTTP_2 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The request's host without port: that of the authority the RFCs name
/// ([`crate::framing::authority`]).
pub(crate) fn request_host<B>(request: &Request<B>) -> &str {
    strip_port(crate::framing::authority(request))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(v6, _)| &host[..v6.len() + 1]);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
}

/// Readies the head of an upstream's response (its end-to-end fields only, as the upstream
/// client gives it) for the client: without `x-meridian-error` (only the proxy says why it
/// answered itself).
pub(crate) fn upstream_response_head(headers: &mut HeaderMap) {
    headers.remove(&PROXY_ERROR);
}

/// `authority` as sent to upstreams that read it in the URI, whose connections are pooled by
/// it: the host in lower case, without port (routing ignores both, and the client's own
/// authority is in `x-forwarded-host`), so that clients choosing case and port open no more
/// upstream connections. `None` if it has no host.
fn pool_authority(authority: &Authority) -> Option<Authority> {
    let host = authority.host();
    if host.is_empty() {
        return None;
    }
    if authority.port().is_none() && !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(authority.clone());
    }
    Authority::try_from(host.to_ascii_lowercase()).ok()
}

/// The client's request, rewritten for upstreams except for the endpoint: what each attempt
/// sends.
struct Prepared {
    method: Method,
    /// The `:protocol` of an extended CONNECT (RFC 8441) to the upstream.
    protocol: Option<hyper::ext::Protocol>,
    /// The authority the client asked for, where the upstream's URI names it (none: HTTP/1.0
    /// without Host, or an upstream that reads it in Host).
    authority: Option<Authority>,
    path_and_query: PathAndQuery,
    headers: HeaderMap,
    /// The fields the proxy adds to `headers`.
    added: AddedFields,
}

impl Prepared {
    /// Rewrites path and headers per `route`, keeping the client's forwarding headers if it is
    /// `trusted`, and the authority asked for if the upstream `sends_authority`.
    fn new(
        parts: http::request::Parts,
        route: &Route,
        peer: &Peer,
        switch: Option<&Switch>,
        trusted: bool,
        sends_authority: bool,
    ) -> Result<Prepared, http::Error> {
        let http::request::Parts {
            method,
            uri,
            mut headers,
            ..
        } = parts;
        let path_and_query = match route.rewrite(uri.path(), uri.query()) {
            Some(path) => PathAndQuery::try_from(path)?,
            None => uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        };
        let mut present = Present::of(&headers);
        strip_hop_by_hop(&mut headers, &mut present);
        // Connections that may speak HTTP/2 are those that carry the authority in the URI.
        let (method, protocol) = match switch {
            Some(switch) => switch.upstream(method, &mut headers, sends_authority),
            None => (method, None),
        };
        // The authority routed on is the one forwarded: an absolute-form target's or HTTP/2's
        // `:authority` replaces Host (RFC 9112 §3.2.2); HTTP/1.1 upstreams read it in Host.
        let authority = match uri.authority() {
            _ if !sends_authority => None,
            Some(authority) => pool_authority(authority),
            None => headers
                .get(header::HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                .and_then(|authority| pool_authority(&authority)),
        };
        let mut added = AddedFields::default();
        if let Some(authority) = uri.authority() {
            if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
                if present.has(Added::Host) {
                    headers.remove(header::HOST);
                }
                added.set(Added::Host, value);
            }
        }
        let host = added
            .get(Added::Host)
            .or_else(|| headers.get(header::HOST))
            .filter(|h| !h.is_empty())
            .cloned();
        add_forwarding(&mut headers, present, &mut added, peer, host, trusted);
        if sends_authority {
            // The authority travels in the URI (`:authority`, or the Host hyper writes from it
            // on HTTP/1.1): a Host beside it could only disagree (RFC 9113 §8.3.1).
            if present.has(Added::Host) {
                headers.remove(header::HOST);
            }
            added.remove(&header::HOST);
        }
        for name in &route.request_remove {
            headers.remove(name);
            added.remove(name);
        }
        for (name, value) in &route.request_add {
            added.remove(name);
            headers.insert(name.clone(), value.clone());
        }
        Ok(Prepared {
            method,
            protocol,
            authority,
            path_and_query,
            headers,
            added,
        })
    }

    /// The request of one attempt, with `authority` in its URI (origin form without one).
    fn request(
        &self,
        headers: HeaderMap,
        body: UpstreamBody,
        authority: Option<&Authority>,
        protocol: UpstreamProtocol,
    ) -> Result<Request<UpstreamBody>, http::Error> {
        let uri = match authority {
            Some(authority) => Uri::builder()
                .scheme("http")
                .authority(authority.clone())
                .path_and_query(self.path_and_query.clone())
                .build()?,
            None => Uri::from(self.path_and_query.clone()),
        };
        // Set part by part: a builder would move the request through each of its steps.
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = match protocol {
            UpstreamProtocol::Http1 => Version::HTTP_11,
            UpstreamProtocol::Http2 => Version::HTTP_2,
        };
        *request.headers_mut() = headers;
        if let Some(protocol) = &self.protocol {
            request.extensions_mut().insert(protocol.clone());
        }
        Ok(request)
    }
}

/// A request body ready for attempts: kept whole for replay, or streamed once.
enum Body {
    Replayable(Bytes),
    /// Streamed to the first attempt; `copied` if a copy is kept that may make it replayable.
    Streamed {
        body: Option<LimitedBody>,
        copied: bool,
    },
}

impl Body {
    /// The body for the next attempt; `None` once a streamed body has been sent.
    fn next(&mut self) -> Option<UpstreamBody> {
        match self {
            Body::Replayable(bytes) => Some(Either::Right(Full::new(bytes.clone()))),
            Body::Streamed { body, .. } => body.take().map(Either::Left),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Body::Replayable(_))
    }

    /// Whether another attempt may follow this one (the body is whole, or a copy is kept).
    fn may_replay(&self) -> bool {
        matches!(
            self,
            Body::Replayable(_) | Body::Streamed { copied: true, .. }
        )
    }

    /// After an attempt: a streamed body whose copy holds all of it becomes replayable.
    fn recover(&mut self, state: &BodyState) {
        if let Body::Streamed { copied: true, .. } = self {
            if let Some(bytes) = state.take_copy() {
                *self = Body::Replayable(bytes);
            }
        }
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
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
async fn read_body(
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

/// The pause before retry number `retry` (1, 2, …): exponential from `base`, capped at ten times
/// `base`, with full jitter so that retries of many requests spread out.
fn backoff(base: std::time::Duration, retry: u32) -> std::time::Duration {
    let ceiling = base
        .saturating_mul(1 << retry.saturating_sub(1).min(8))
        .min(base.saturating_mul(10));
    ceiling.mul_f64(fastrand::f64())
}

/// Whether `error`, or an error that caused it, is an `E`.
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<E>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The answer to a client that did not send its body in time (counted). The rest of the body
/// may still be on its way: the connection cannot be reused.
#[cold]
fn body_timed_out(
    timeouts: &prometheus_client::metrics::counter::Counter,
    version: Version,
) -> Response<ProxyBody> {
    timeouts.inc();
    let answer = local_response(StatusCode::REQUEST_TIMEOUT, "request_body_timeout");
    closing(answer, version)
}

#[cold]
fn too_large() -> Response<ProxyBody> {
    local_response(StatusCode::PAYLOAD_TOO_LARGE, "request_body_too_large")
}

/// gRPC codes worth another try: cancelled, deadline-exceeded, resource-exhausted, unavailable.
fn retriable_grpc(headers: &HeaderMap) -> bool {
    matches!(
        headers.get("grpc-status").map(HeaderValue::as_bytes),
        Some(b"1" | b"4" | b"8" | b"14")
    )
}

/// What one attempt came to.
// One per request, on its stack: boxing the response would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Attempt {
    Answered(Response<ConnectionBody>),
    Failed { connect: bool },
    TimedOut,
}

impl Attempt {
    fn outcome(&self) -> Outcome {
        match self {
            Attempt::Answered(response) => Outcome::of_status(response.status().as_u16()),
            Attempt::Failed { .. } | Attempt::TimedOut => Outcome::GatewayError,
        }
    }

    /// Whether `policy` retries this attempt of a `method` request whose body can be replayed.
    /// A connection that could not be made carried nothing, so any method may retry it; after
    /// that the upstream may have acted on the request, so only idempotent methods retry
    /// (RFC 9110 §9.2.2), unless the policy opts in for the others.
    fn retriable(&self, policy: &RetryPolicy, method: &Method) -> bool {
        let on = |condition| policy.on.contains(&condition);
        if let Attempt::Failed { connect: true } = self {
            return on(RetryOn::ConnectFailure);
        }
        if !(policy.non_idempotent || method.is_idempotent()) {
            return false;
        }
        match self {
            Attempt::Failed { .. } | Attempt::TimedOut => on(RetryOn::GatewayError),
            Attempt::Answered(response) => {
                let status = response.status().as_u16();
                (on(RetryOn::ServerError) && status >= 500)
                    || (on(RetryOn::GatewayError) && (502..=504).contains(&status))
                    || (on(RetryOn::RetriableGrpc) && retriable_grpc(response.headers()))
            }
        }
    }
}

/// Serves one request, of any HTTP version: the whole proxy path for one listener.
pub async fn handle(
    mut request: Request<ClientBody>,
    ctx: Arc<ListenerContext>,
    peer: &Peer,
) -> Response<ProxyBody> {
    let started = Instant::now();
    ctx.count_request(request.version());
    if let Some(reason) = crate::framing::refusal(&request) {
        // Where this request ends is in doubt: nothing more is read from the connection.
        return closing(
            local_response(StatusCode::BAD_REQUEST, reason),
            request.version(),
        );
    }
    if let Some(refused) = crate::mesh::refuse(&mut request, &ctx, peer) {
        return refused;
    }
    if peer.scheme == "http" {
        if let Some(answer) = crate::acme::answer(&request, &ctx.shared.http01) {
            return answer;
        }
    }
    let table = ctx.table.load_full();
    let host = request_host(&request);
    let Some(route) = table.find(host, request.uri().path(), request.headers()) else {
        ctx.no_route.inc();
        return local_response(StatusCode::NOT_FOUND, "no_route");
    };
    if let Some(port) = route.https_redirect {
        return to_https(host, port, request.uri());
    }
    let Some(target) = route.target() else {
        return local_response(StatusCode::SERVICE_UNAVAILABLE, "no_cluster");
    };
    let metrics = &ctx.shared.metrics;
    // Copied out at once: a guard of the limits is not held for the whole round trip.
    let (body_limit, body_timeout) = {
        let limits = ctx.shared.limits.load();
        (limits.max_request_body_bytes, limits.request_body_timeout.0)
    };
    let logged = ctx.shared.access_log.get();
    let logged = logged.map(|log| crate::access_log::Logged::new(log, &request));
    let switch = Switch::requested(&request);
    let client_side = switch.is_some().then(|| hyper::upgrade::on(&mut request));
    let trusted = match ctx.trust.load() {
        TrustForwarded::None => false,
        TrustForwarded::Mesh => peer.identity().is_some(),
        TrustForwarded::All => true,
    };
    let client = ClientRequest {
        version: request.version(),
        request,
        peer,
        body_limit,
        switch: switch.as_ref(),
        trusted,
        body_timeout,
        body_timeouts: &ctx.body_timeouts,
    };
    // Boxed: forward's future is large, and the task of an HTTP/2 stream (which holds this
    // one) is moved when spawned; a box is one allocation where each move copied all of it.
    // A route with a cache answers from it where it may (its answers are the proxy's own).
    let forwarded = match &route.cache {
        Some(cache) if switch.is_none() => {
            Box::pin(crate::cache::exchange(
                cache,
                client,
                route,
                &target.cluster,
                &ctx,
            ))
            .await
        }
        _ => Box::pin(forward(client, route, &target.cluster, metrics)).await,
    };
    let mut response = match forwarded {
        Ok(mut response) => {
            upstream_response_head(response.headers_mut());
            let upstream_h2 = target.cluster.client.sends_authority();
            let switched = switch
                .as_ref()
                .filter(|s| s.agreed(response.status(), upstream_h2));
            if let (Some(_), Some(client_side)) = (switched, client_side) {
                let open = ctx.shared.open_connection();
                let retiring = ctx.retirement.connection();
                tunnel(
                    client_side,
                    hyper::upgrade::on(&mut response),
                    (open, retiring),
                );
            }
            if let Some(switch) = switched {
                *response.status_mut() = switch.answer(response.headers_mut());
            }
            let cluster = target.cluster.clone();
            let metrics = ctx.shared.metrics.clone();
            response.map(|body| Either::Left(ResponseBody::new(body, cluster, metrics)))
        }
        Err(answer) => answer,
    };
    let headers = response.headers_mut();
    for name in &route.response_remove {
        headers.remove(name);
    }
    for (name, value) in &route.response_add {
        headers.insert(name.clone(), value.clone());
    }
    let elapsed = started.elapsed();
    target
        .metrics
        .record(response.status().as_u16(), elapsed.as_secs_f64());
    if let Some(logged) = logged {
        let by = (
            ctx.name.as_str(),
            route.name.as_str(),
            target.cluster.name.as_str(),
        );
        logged.answered(by, peer, &response, elapsed);
    }
    response
}

/// A client's request with what forwarding needs to know about it.
pub(crate) struct ClientRequest<'p> {
    pub(crate) request: Request<ClientBody>,
    pub(crate) peer: &'p Peer,
    /// Largest body allowed, in bytes.
    pub(crate) body_limit: Option<u64>,
    /// Whether the client's forwarding headers are kept.
    pub(crate) trusted: bool,
    /// The client's HTTP version.
    pub(crate) version: Version,
    /// The protocol the client asks to switch to, if any.
    pub(crate) switch: Option<&'p Switch>,
    /// Time the client has to send a body the proxy reads whole.
    pub(crate) body_timeout: std::time::Duration,
    /// Counts the requests whose body did not arrive in that time.
    pub(crate) body_timeouts: &'p prometheus_client::metrics::counter::Counter,
}

/// The `x-meridian-error` value of a circuit-breaker overflow.
fn overflow_reason(overflow: Overflow) -> &'static str {
    match overflow {
        Overflow::Requests => "overflow_max_requests",
        Overflow::Pending => "overflow_pending_requests",
        Overflow::Waited => "overflow_pending_timeout",
    }
}

/// Sends the request to `cluster`, retrying per the route's policy; `Err` is the proxy's own
/// answer.
pub(crate) async fn forward(
    client: ClientRequest<'_>,
    route: &Route,
    cluster: &Cluster,
    metrics: &ProxyMetrics,
) -> Result<Response<ConnectionBody>, Response<ProxyBody>> {
    let (parts, body) = client.request.into_parts();
    let mut prepared = Prepared::new(
        parts,
        route,
        client.peer,
        client.switch,
        client.trusted,
        cluster.client.sends_authority(),
    )
    .map_err(|_| local_response(StatusCode::BAD_REQUEST, "bad_request_target"))?;
    let body_limit = client.body_limit.unwrap_or(u64::MAX);
    if content_length(&prepared.headers).is_some_and(|length| length > body_limit) {
        return Err(too_large());
    }
    let body = LimitedBody::new(body, body_limit);
    let body_state = body.state();
    let mut body = if body.is_end_stream() {
        // No body (most requests): nothing to read, and no timer to set for it.
        Body::Replayable(Bytes::new())
    } else {
        // Boxed: only requests with a body pay for the room reading it takes.
        let timeouts = (client.body_timeout, client.body_timeouts);
        Box::pin(read_body(
            body,
            &prepared.headers,
            route,
            client.version,
            timeouts,
        ))
        .await?
    };
    let deadline = Instant::now() + route.timeout;
    let mut admitted = match cluster.admit(deadline.into()).await {
        Ok(admitted) => admitted,
        Err(overflow) => {
            metrics.overflow(&cluster.name, overflow.limit());
            return Err(local_response(
                StatusCode::SERVICE_UNAVAILABLE,
                overflow_reason(overflow),
            ));
        }
    };
    let mut avoid = None;
    let mut retries = 0;
    loop {
        let fields = OutgoingFields {
            headers: &prepared.headers,
            added: Some(&prepared.added),
        };
        let Some(lease) = cluster.pick(fields, avoid) else {
            metrics.upstream_error(&cluster.name, UpstreamError::NoEndpoint);
            return Err(local_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_healthy_endpoint",
            ));
        };
        // Only a replayable body allows a second attempt, so this holds on every attempt made.
        let Some(attempt_body) = body.next() else {
            return Err(local_response(StatusCode::BAD_GATEWAY, "upstream_failed"));
        };
        // A single attempt (a route without retries, or a body sent once): its headers can move
        // instead of being copied.
        let headers = if route.retries.is_some() && body.may_replay() {
            prepared.headers.clone()
        } else {
            std::mem::take(&mut prepared.headers)
        };
        let upstream = prepared
            .request(
                headers,
                attempt_body,
                cluster
                    .client
                    .uri_authority(lease.endpoint(), prepared.authority.as_ref()),
                cluster.protocol,
            )
            .map_err(|_| local_response(StatusCode::BAD_REQUEST, "bad_request_target"))?;
        let left = deadline.saturating_duration_since(Instant::now());
        let per_try = route
            .retries
            .as_ref()
            .and_then(|p| p.per_try_timeout)
            .map_or(left, |t| t.0.min(left));
        let sent = cluster
            .client
            .request(lease.endpoint(), upstream, &prepared.added);
        let attempt = match tokio::time::timeout(per_try, sent).await {
            Ok(Ok(response)) => {
                body_state.answered();
                Attempt::Answered(response)
            }
            Ok(Err(e)) => {
                if body_state.over_limit() {
                    return Err(too_large());
                }
                if body_state.timed_out() {
                    lease.finish(Outcome::Inconclusive);
                    return Err(body_timed_out(client.body_timeouts, client.version));
                }
                if body_state.failed() {
                    // The client's body broke off: not the endpoint's fault.
                    lease.finish(Outcome::Inconclusive);
                    return Err(local_response(
                        StatusCode::BAD_REQUEST,
                        "request_body_failed",
                    ));
                }
                if caused_by::<ConnectionLimitReached>(&e) {
                    metrics.overflow(&cluster.name, "max_connections");
                    return Err(local_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "overflow_max_connections",
                    ));
                }
                tracing::debug!(route = %route.name, cluster = %cluster.name,
                    endpoint = %lease.endpoint().addr, error = %e, "upstream failed");
                Attempt::Failed {
                    connect: e.is_connect(),
                }
            }
            Err(_elapsed) => Attempt::TimedOut,
        };
        let endpoint = lease.endpoint().addr;
        // A streamed body the client had not finished sending: a failure or timeout may be the
        // client's doing (a slow upload), so it says nothing about the endpoint.
        let client_unfinished = !body.replayable() && !body_state.finished();
        let outcome = match attempt {
            Attempt::Failed { connect: false } | Attempt::TimedOut if client_unfinished => {
                Outcome::Inconclusive
            }
            _ => attempt.outcome(),
        };
        if lease.finish(outcome) {
            metrics.ejection(&cluster.name);
        }
        body.recover(&body_state);
        let policy = route.retries.as_ref();
        let wants_retry = body.replayable()
            && policy
                .is_some_and(|p| retries < p.attempts && attempt.retriable(p, &prepared.method))
            && Instant::now() < deadline;
        if wants_retry {
            if cluster.allow_retry(&mut admitted) {
                retries += 1;
                avoid = Some(endpoint);
                metrics.retry(&cluster.name);
                if let Some(policy) = &route.retries {
                    let pause = backoff(policy.backoff.0, retries)
                        .min(deadline.saturating_duration_since(Instant::now()));
                    tokio::time::sleep(pause).await;
                }
                continue;
            }
            metrics.retry_budget_exhausted(&cluster.name);
        }
        return match attempt {
            Attempt::Answered(response) => Ok(response),
            Attempt::Failed { .. } => {
                metrics.upstream_error(&cluster.name, UpstreamError::Connect);
                Err(local_response(StatusCode::BAD_GATEWAY, "upstream_failed"))
            }
            Attempt::TimedOut => {
                metrics.upstream_error(&cluster.name, UpstreamError::Timeout);
                Err(local_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                ))
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_backoff_grows_and_is_capped() {
        let base = std::time::Duration::from_millis(25);
        for retry in 1..=10u32 {
            let ceiling = (base * 2u32.pow(retry - 1)).min(base * 10);
            for _ in 0..50 {
                assert!(backoff(base, retry) <= ceiling, "retry {retry}");
            }
        }
        assert!(
            (0..50).any(|_| backoff(base, 4) > base * 2),
            "never above the early ceiling"
        );
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("shop.example.com:8080"), "shop.example.com");
        assert_eq!(strip_port("shop.example.com"), "shop.example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port(""), "");
    }

    #[test]
    fn an_upstream_response_head_loses_the_error_header() {
        let mut headers = HeaderMap::new();
        headers.insert(ERROR_HEADER, "forged".parse().unwrap());
        headers.insert("x-kept", "1".parse().unwrap());
        upstream_response_head(&mut headers);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }
}
