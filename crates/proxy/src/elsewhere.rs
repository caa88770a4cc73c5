//! "Go elsewhere" between a sending proxy and an instance's node proxy at the instance's hard
//! limit of requests in flight (`scale.concurrency.hard`). The sender counts only its own
//! requests to each instance; other proxies send to it too. So an attempt that the sender
//! could retry on another instance says so ([`HEADER`]); the node proxy of an instance at its
//! limit then turns it away at once ([`crate::wake::Refusal::Elsewhere`], a `503` whose
//! reason is [`REASON`], before the instance saw anything) instead of queueing it, and the
//! sender retries it on another instance, any method, without holding it against the first.
//! The last attempt does not say so: it waits in the queue of the instance it reaches.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

/// The request field of an attempt its sender would retry on another instance.
pub const HEADER: HeaderName = HeaderName::from_static("x-meridian-elsewhere");

/// The `x-meridian-error` reason of an attempt turned away at the hard limit.
pub const REASON: &str = "concurrency_elsewhere";

/// Sets or clears [`HEADER`] on an attempt's request fields: set when the attempt `may` be
/// retried on another instance.
pub(crate) fn mark(headers: &mut HeaderMap, may: bool) {
    if may {
        headers.insert(HEADER, HeaderValue::from_static("1"));
    } else {
        headers.remove(HEADER);
    }
}

/// Whether the request's sender would retry it elsewhere; the field is removed (the instance
/// does not see it).
pub(crate) fn asked(headers: &mut HeaderMap) -> bool {
    headers.remove(HEADER).is_some()
}

/// Whether `response` turned an attempt away at the instance's hard limit.
pub(crate) fn turned_away<B>(response: &Response<B>) -> bool {
    response.status() == StatusCode::SERVICE_UNAVAILABLE
        && response
            .headers()
            .get(crate::ERROR_HEADER)
            .is_some_and(|reason| reason.as_bytes() == REASON.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_is_set_cleared_and_read_once() {
        let mut headers = HeaderMap::new();
        mark(&mut headers, true);
        assert_eq!(headers[HEADER], "1");
        mark(&mut headers, false);
        assert!(!headers.contains_key(HEADER));
        mark(&mut headers, true);
        assert!(asked(&mut headers));
        assert!(!asked(&mut headers), "removed once read");
        let refused = crate::wake::Refusal::Elsewhere.answer();
        assert!(turned_away(&refused));
        assert!(!refused.headers().contains_key(http::header::RETRY_AFTER));
        assert!(!turned_away(&crate::wake::Refusal::LimitTimeout.answer()));
    }
}
