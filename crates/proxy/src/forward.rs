//! The request path: route, pick an endpoint, rewrite headers, forward, answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use crate::config::UpstreamProtocol;
use crate::metrics::UpstreamError;
use crate::routing::Route;
use crate::server::ListenerContext;

/// A client for upstream endpoints (one per protocol and connect timeout, shared by clusters).
pub type HttpClient = Client<HttpConnector, Incoming>;

/// The body of a response the proxy sends: the upstream's, or one the proxy made.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// The header that says why the proxy itself answered.
pub const ERROR_HEADER: &str = "x-meridian-error";

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// A response made by the proxy, with the reason in [`ERROR_HEADER`].
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

/// The request's host without port: the URI's authority (HTTP/2) or the Host header (HTTP/1.1).
fn request_host(request: &Request<Incoming>) -> &str {
    let raw = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("");
    strip_port(raw)
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

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the Connection header names.
/// `te: trailers` survives: gRPC needs it end to end.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::TRAILER,
    ] {
        headers.remove(name);
    }
    if headers
        .get(header::TE)
        .is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
}

fn request_id() -> HeaderValue {
    let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("0"))
}

/// Sets the forwarding headers: appends the client to `x-forwarded-for`, sets
/// `x-forwarded-proto`, and `x-forwarded-host` and `x-request-id` when absent.
fn forwarding_headers(headers: &mut HeaderMap, peer: SocketAddr, host: &str, scheme: &'static str) {
    let client = peer.ip().to_string();
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {client}"),
        None => client,
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    if !headers.contains_key(&X_FORWARDED_HOST) {
        if let Ok(value) = HeaderValue::from_str(host) {
            headers.insert(X_FORWARDED_HOST.clone(), value);
        }
    }
    if !headers.contains_key(&X_REQUEST_ID) {
        headers.insert(X_REQUEST_ID.clone(), request_id());
    }
}

/// Turns the client's request into the request to `authority`, per `route`.
fn upstream_request(
    request: Request<Incoming>,
    route: &Route,
    authority: &http::uri::Authority,
    protocol: UpstreamProtocol,
    peer: SocketAddr,
) -> Result<Request<Incoming>, http::Error> {
    let host = request_host(&request).to_owned();
    let original_authority = request.uri().authority().cloned();
    let (mut parts, body) = request.into_parts();
    let rewritten = route.rewrite(parts.uri.path(), parts.uri.query());
    let path_and_query = match rewritten {
        Some(path) => http::uri::PathAndQuery::try_from(path)?,
        None => parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    };
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(authority.clone())
        .path_and_query(path_and_query)
        .build()?;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    forwarding_headers(headers, peer, &host, "http");
    if !headers.contains_key(header::HOST) {
        if let Some(value) = original_authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            headers.insert(header::HOST, value);
        }
    }
    for name in &route.request_remove {
        headers.remove(name);
    }
    for (name, value) in &route.request_add {
        headers.insert(name.clone(), value.clone());
    }
    parts.version = match protocol {
        UpstreamProtocol::Http1 => Version::HTTP_11,
        UpstreamProtocol::Http2 => Version::HTTP_2,
    };
    Ok(Request::from_parts(parts, body))
}

/// Serves one request: the whole proxy path for one listener.
pub async fn handle(
    request: Request<Incoming>,
    ctx: Arc<ListenerContext>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let table = ctx.table.load_full();
    let host = request_host(&request);
    let Some(route) = table.find(host, request.uri().path(), request.headers()) else {
        ctx.no_route.inc();
        return local_response(StatusCode::NOT_FOUND, "no_route");
    };
    let target = route.target();
    let cluster = &target.cluster;
    let Some(lease) = cluster.pick(request.headers()) else {
        ctx.shared
            .metrics
            .upstream_error(&cluster.name, UpstreamError::NoEndpoint);
        target.metrics.record(503, started.elapsed().as_secs_f64());
        return local_response(StatusCode::SERVICE_UNAVAILABLE, "no_healthy_endpoint");
    };
    let upstream = match upstream_request(
        request,
        route,
        &lease.endpoint().authority,
        cluster.protocol,
        peer,
    ) {
        Ok(upstream) => upstream,
        Err(_) => {
            target.metrics.record(400, started.elapsed().as_secs_f64());
            return local_response(StatusCode::BAD_REQUEST, "bad_request_target");
        }
    };
    let answer = tokio::time::timeout(route.timeout, cluster.client.request(upstream)).await;
    let mut response = match answer {
        Ok(Ok(response)) => {
            lease.finish();
            response.map(Either::Left)
        }
        Ok(Err(e)) => {
            tracing::debug!(route = %route.name, cluster = %cluster.name,
                endpoint = %lease.endpoint().addr, error = %e, "upstream failed");
            ctx.shared
                .metrics
                .upstream_error(&cluster.name, UpstreamError::Connect);
            local_response(StatusCode::BAD_GATEWAY, "upstream_failed")
        }
        Err(_elapsed) => {
            ctx.shared
                .metrics
                .upstream_error(&cluster.name, UpstreamError::Timeout);
            local_response(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
        }
    };
    let headers = response.headers_mut();
    if !headers.contains_key(ERROR_HEADER) {
        strip_hop_by_hop(headers);
    }
    for name in &route.response_remove {
        headers.remove(name);
    }
    for (name, value) in &route.response_add {
        headers.insert(name.clone(), value.clone());
    }
    target
        .metrics
        .record(response.status().as_u16(), started.elapsed().as_secs_f64());
    response
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
    fn hop_by_hop_headers_go_and_te_trailers_stays() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert(header::TE, "trailers".parse().unwrap());
        headers.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["te", "x-kept"]);
    }
}
