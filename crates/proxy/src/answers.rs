//! The proxy's own answers, each with its reason in `x-meridian-error`: errors, the redirect
//! to HTTPS, and the marks a response takes when its connection is to close.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};

use crate::body::ProxyBody;

/// The header that says why the proxy itself answered.
pub const ERROR_HEADER: &str = "x-meridian-error";
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
pub(crate) fn to_https(host: &str, port: u16, uri: &Uri) -> Response<ProxyBody> {
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
pub(crate) fn closing(mut response: Response<ProxyBody>, version: Version) -> Response<ProxyBody> {
    if version < Version::HTTP_2 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The answer to a client that did not send its body in time (counted). The rest of the body
/// may still be on its way: the connection cannot be reused.
#[cold]
pub(crate) fn body_timed_out(
    timeouts: &prometheus_client::metrics::counter::Counter,
    version: Version,
) -> Response<ProxyBody> {
    timeouts.inc();
    let answer = local_response(StatusCode::REQUEST_TIMEOUT, "request_body_timeout");
    closing(answer, version)
}

#[cold]
pub(crate) fn too_large() -> Response<ProxyBody> {
    local_response(StatusCode::PAYLOAD_TOO_LARGE, "request_body_too_large")
}
