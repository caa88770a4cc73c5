//! The request path: route, pick an endpoint, forward (retrying per the route), answer. The
//! request is rewritten for upstreams in [`crate::prepared`], its body made ready for attempts
//! in [`crate::request_body`], and attempts judged in [`crate::retry`].

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};
use http::{Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Body as _;

use crate::answers::{body_timed_out, closing, local_response, to_https, too_large, ERROR_HEADER};
use crate::body::{BodyState, ClientBody, LimitedBody, ProxyBody, ResponseBody};
use crate::cluster::{Cluster, Lease, Outcome, Overflow};
use crate::config::TrustForwarded;
use crate::fields::OutgoingFields;
use crate::metrics::{ProxyMetrics, UpstreamError};
use crate::peer::Peer;
use crate::pool::ConnectionBody;
use crate::prepared::Prepared;
use crate::request_body::{content_length, read_body, Body};
use crate::retry::{backoff, Attempt};
use crate::routing::Route;
use crate::server::ListenerContext;
use crate::switch::{tunnel, Switch};
use crate::trace::hop::Hop;
use crate::trace::Tracer;
use crate::upstream::ConnectionLimitReached;

/// [`ERROR_HEADER`] as a header name, so that each response does not parse it again.
static PROXY_ERROR: HeaderName = HeaderName::from_static(ERROR_HEADER);

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

/// Drops the fields only Meridian's own proxies say to each other (a wake nudge, the elsewhere
/// mark) from a request of a public listener's client (`trust_forwarded: none`: an edge, a
/// node proxy's outbound listener). Between its proxies they are kept, over mutual TLS or not.
fn drop_internal_fields(headers: &mut HeaderMap) {
    headers.remove(crate::nudge::WAKE_HEADER);
    headers.remove(crate::elsewhere::HEADER);
}

/// Whether the client's forwarding (and trace) fields are believed on this listener.
fn trusted(ctx: &ListenerContext, peer: &Peer) -> bool {
    match ctx.trust.load() {
        TrustForwarded::None => false,
        TrustForwarded::Mesh => peer.identity().is_some(),
        TrustForwarded::All => true,
    }
}

/// Serves one request, of any HTTP version: the whole proxy path for one listener, traced
/// when the proxy traces ([`crate::Proxy::trace_to`]).
pub async fn handle(
    request: Request<ClientBody>,
    ctx: Arc<ListenerContext>,
    peer: &Peer,
) -> Response<ProxyBody> {
    match ctx.shared.tracer.get() {
        None => serve(request, ctx, peer, None).await,
        Some(tracer) => {
            let tracer = tracer.clone();
            // Boxed: the hop kept across the round trip makes the future larger, which
            // untraced requests (the HTTP/2 streams that hold this future) need not pay for.
            Box::pin(traced(request, ctx, peer, tracer)).await
        }
    }
}

/// Serves one request as a hop of its trace: W3C Trace Context read and passed on, and a span
/// recorded by `tracer` if the trace is sampled.
async fn traced(
    mut request: Request<ClientBody>,
    ctx: Arc<ListenerContext>,
    peer: &Peer,
    tracer: Arc<Tracer>,
) -> Response<ProxyBody> {
    let mut hop = Hop::start(&tracer, &mut request, peer, trusted(&ctx, peer));
    let response = serve(request, ctx, peer, Some(&mut hop)).await;
    hop.answered(&tracer, &response);
    response
}

/// Serves one request; `hop`, when it is traced, learns where it was routed.
async fn serve(
    mut request: Request<ClientBody>,
    ctx: Arc<ListenerContext>,
    peer: &Peer,
    hop: Option<&mut Hop>,
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
    if ctx.trust.load() == TrustForwarded::None {
        drop_internal_fields(request.headers_mut());
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
    if let Some(hop) = hop {
        hop.routed(&ctx.name, &route.name, &target.cluster.name);
    }
    let logged = ctx.shared.access_log.get();
    let logged = logged.map(|log| crate::access_log::Logged::new(log, &request));
    let by = (
        ctx.name.as_str(),
        route.name.as_str(),
        target.cluster.name.as_str(),
    );
    if let Some(wake) = &route.wake {
        wake.send(host);
    }
    if let Some(gate) = target.metrics.gate() {
        // A wake nudge is answered here, never by the instance.
        if crate::nudge::is_nudge(request.headers()) {
            gate.nudge();
            return local_response(StatusCode::NO_CONTENT, "wake_nudge");
        }
    }
    let (_in_flight, mut using) = match admit(&target.metrics, request.headers_mut()).await {
        Ok(admitted) => admitted,
        Err(refusal) => {
            // Counted by the route and logged, not in the instance's figures: it did not
            // fail (the metric gates and autoscaling judge what it answered).
            let response = refusal.answer();
            let elapsed = started.elapsed();
            target
                .metrics
                .record_refusal(response.status().as_u16(), elapsed.as_secs_f64());
            if let Some(logged) = logged {
                logged.answered(by, peer, &response, elapsed);
            }
            return response;
        }
    };
    let metrics = &ctx.shared.metrics;
    // Copied out at once: a guard of the limits is not held for the whole round trip.
    let (body_limit, body_timeout) = {
        let limits = ctx.shared.limits.load();
        (limits.max_request_body_bytes, limits.request_body_timeout.0)
    };
    let switch = Switch::requested(&request);
    let client_side = switch.is_some().then(|| hyper::upgrade::on(&mut request));
    let trusted = trusted(&ctx, peer);
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
                    (open, retiring, using.take()),
                );
            }
            if let Some(switch) = switched {
                *response.status_mut() = switch.answer(response.headers_mut());
            }
            let cluster = target.cluster.clone();
            let metrics = ctx.shared.metrics.clone();
            response
                .map(|body| Either::Left(ResponseBody::new(body, cluster, metrics).holding(using)))
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
        logged.answered(by, peer, &response, elapsed);
    }
    response
}

/// Lets a request (with `headers`) to the instance the listener serves (if it serves one) go
/// on: counted in flight until the answer's head goes back, once the instance's limit leaves
/// room (or refused at once if its sender would retry it elsewhere, see [`crate::elsewhere`]);
/// and, if it sleeps, a use of it until the response ends (or a switched connection closes),
/// held here while it wakes.
async fn admit(
    metrics: &crate::metrics::RouteMetrics,
    headers: &mut http::HeaderMap,
) -> Result<(Option<crate::figures::InFlight>, Option<crate::wake::Use>), crate::wake::Refusal> {
    let in_flight = metrics.admit(|| crate::elsewhere::asked(headers)).await?;
    let using = match metrics.gate() {
        Some(gate) => {
            let using = gate.use_now();
            gate.pass().await?;
            Some(using)
        }
        None => None,
    };
    Ok((in_flight, using))
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
    let ClientRequest {
        request,
        peer,
        body_limit,
        trusted,
        version,
        switch,
        body_timeout,
        body_timeouts,
    } = client;
    let (parts, body) = request.into_parts();
    let sends_authority = cluster.client.sends_authority();
    let mut prepared = Prepared::new(parts, route, peer, switch, trusted, sends_authority)
        .map_err(|_| local_response(StatusCode::BAD_REQUEST, "bad_request_target"))?;
    let body_limit = body_limit.unwrap_or(u64::MAX);
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
        let timeouts = (body_timeout, body_timeouts);
        Box::pin(read_body(body, &prepared.headers, route, version, timeouts)).await?
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
    let client = Sent {
        version,
        body_timeouts,
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
        if cluster.may_go_elsewhere() {
            let retry_left = route.retries.as_ref().is_some_and(|p| retries < p.attempts);
            let may = retry_left && body.replayable();
            crate::elsewhere::mark(&mut prepared.headers, may);
        }
        let per_try = route
            .retries
            .as_ref()
            .and_then(|p| p.per_try_timeout)
            .map_or(deadline, |t| deadline.min(Instant::now() + t.0));
        let exchange = (&mut prepared, &mut body, &*body_state);
        let attempt = send_attempt(
            exchange,
            &lease,
            (route, cluster, metrics),
            per_try,
            &client,
        )
        .await?;
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
            // An attempt turned away at an instance's limit reached nothing: it goes to
            // another instance at once, outside the retry budget (its attempts still bound it).
            let turned_away = attempt.turned_away();
            if turned_away || cluster.allow_retry(&mut admitted) {
                retries += 1;
                avoid = Some(endpoint);
                metrics.retry(&cluster.name);
                if let Some(policy) = route.retries.as_ref().filter(|_| !turned_away) {
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
            Attempt::Failed { .. } => Err(failure_answer(false, cluster, metrics)),
            Attempt::TimedOut => Err(failure_answer(true, cluster, metrics)),
        };
    }
}

/// What an attempt's failure answers need to know of the client.
struct Sent<'p> {
    /// The client's HTTP version.
    version: Version,
    /// Counts the requests whose body did not arrive in time.
    body_timeouts: &'p prometheus_client::metrics::counter::Counter,
}

/// Makes one attempt: sends the request with the next copy of its body to the endpoint of
/// `lease`, waiting for the answer until `per_try`. `Err` is the proxy's answer when the request
/// cannot go on whatever the retry policy says (the client's body was too large, too slow or
/// broke off; the cluster has no connection to spare); the lease then has its outcome.
async fn send_attempt(
    (prepared, body, body_state): (&mut Prepared, &mut Body, &BodyState),
    lease: &Lease<'_>,
    (route, cluster, metrics): (&Route, &Cluster, &ProxyMetrics),
    per_try: Instant,
    client: &Sent<'_>,
) -> Result<Attempt, Response<ProxyBody>> {
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
    let authority = cluster
        .client
        .uri_authority(lease.endpoint(), prepared.authority.as_ref());
    let upstream = prepared
        .request(headers, attempt_body, authority, cluster.protocol)
        .map_err(|_| local_response(StatusCode::BAD_REQUEST, "bad_request_target"))?;
    let sent = cluster
        .client
        .request(lease.endpoint(), upstream, &prepared.added);
    let e = match tokio::time::timeout_at(per_try.into(), sent).await {
        Ok(Ok(response)) => {
            body_state.answered();
            return Ok(Attempt::Answered(response));
        }
        Ok(Err(e)) => e,
        Err(_elapsed) => return Ok(Attempt::TimedOut),
    };
    if body_state.over_limit() {
        return Err(too_large());
    }
    if body_state.timed_out() {
        lease.observe(Outcome::Inconclusive);
        return Err(body_timed_out(client.body_timeouts, client.version));
    }
    if body_state.failed() {
        // The client's body broke off: not the endpoint's fault.
        lease.observe(Outcome::Inconclusive);
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
    Ok(Attempt::Failed {
        connect: e.is_connect(),
    })
}

/// The proxy's answer to the client once no attempt follows one that failed (`timed_out`, or
/// could not be sent or answered), counted as an upstream error.
fn failure_answer(
    timed_out: bool,
    cluster: &Cluster,
    metrics: &ProxyMetrics,
) -> Response<ProxyBody> {
    if timed_out {
        metrics.upstream_error(&cluster.name, UpstreamError::Timeout);
        return local_response(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
    }
    metrics.upstream_error(&cluster.name, UpstreamError::Connect);
    local_response(StatusCode::BAD_GATEWAY, "upstream_failed")
}

#[cfg(test)]
mod tests {
    use super::*;

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
