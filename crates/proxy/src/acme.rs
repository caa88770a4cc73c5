//! ACME HTTP-01 answers (RFC 8555 §8.3): on plain-HTTP listeners, `GET
//! /.well-known/acme-challenge/<token>` for any host is answered from the embedding component's
//! challenges, before routing. Other requests pay one path prefix comparison.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::body::ProxyBody;

/// Where HTTP-01 challenges are asked for: the token follows.
pub const HTTP01_PATH: &str = "/.well-known/acme-challenge/";

/// The HTTP-01 challenges a proxy answers ([`crate::Proxy::set_http01_answers`]).
pub trait Http01Answers: Send + Sync {
    /// The key authorization of the held HTTP-01 challenge of `token`, if any.
    fn key_authorization(&self, token: &str) -> Option<Bytes>;
}

/// The answer to `request` if it asks for an HTTP-01 challenge (`None`: route it): `200
/// text/plain` with the key authorization, or `404` for a token no challenge holds.
pub(crate) fn answer<B>(
    request: &Request<B>,
    answers: &std::sync::OnceLock<std::sync::Arc<dyn Http01Answers>>,
) -> Option<Response<ProxyBody>> {
    let token = request.uri().path().strip_prefix(HTTP01_PATH)?;
    let answers = answers.get()?;
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return None;
    }
    let (status, body) = match answers.key_authorization(token) {
        Some(key_authorization) => (StatusCode::OK, key_authorization),
        None => (
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"no such challenge\n"),
        ),
    };
    let mut response = Response::new(Either::Right(Full::new(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, OnceLock};

    struct One;

    impl Http01Answers for One {
        fn key_authorization(&self, token: &str) -> Option<Bytes> {
            (token == "tok").then(|| Bytes::from_static(b"tok.thumb"))
        }
    }

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[test]
    fn only_challenge_paths_are_answered_and_only_with_answers_set() {
        let none = OnceLock::new();
        assert!(answer(&get("/.well-known/acme-challenge/tok"), &none).is_none());
        let set: OnceLock<Arc<dyn Http01Answers>> = OnceLock::new();
        let _ = set.set(Arc::new(One));
        let held = answer(&get("/.well-known/acme-challenge/tok"), &set).unwrap();
        assert_eq!(held.status(), StatusCode::OK);
        assert_eq!(held.headers()[header::CONTENT_TYPE], "text/plain");
        let unknown = answer(&get("/.well-known/acme-challenge/other"), &set).unwrap();
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
        assert!(answer(&get("/.well-known/acme-challengex"), &set).is_none());
        assert!(answer(&get("/index.html"), &set).is_none());
        let post = Request::post("/.well-known/acme-challenge/tok")
            .body(())
            .unwrap();
        assert!(answer(&post, &set).is_none());
    }
}
