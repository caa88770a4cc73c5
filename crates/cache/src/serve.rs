//! A response made from a stored one for a request it may answer: `Age` set (RFC 9111 §5.1),
//! the client's own conditions answered (§4.3.2), HEAD answered from a stored GET (§4),
//! ranges cut from a stored complete `200` (RFC 9110 §14).

use std::time::Duration;

use bytes::Bytes;
use http::header::{AGE, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::encoding::{self, Coding};
use crate::range::{self, RangeAnswer};
use crate::validation::{not_modified, not_modified_headers};

/// A response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its fields.
    pub headers: HeaderMap,
    /// Its content (empty for HEAD, 304 and 416).
    pub body: Bytes,
}

/// A stored response.
#[derive(Debug, Clone)]
pub struct Stored<'a> {
    /// Its status.
    pub status: StatusCode,
    /// Its fields as stored (made for this answer, which takes them).
    pub headers: HeaderMap,
    /// Its content.
    pub body: &'a Bytes,
    /// Whether the edge may compress its content: the answer varies on `Accept-Encoding`.
    pub compressible: bool,
    /// Its content coded with the coding the request accepts best
    /// ([`encoding::wanted`]), if that is not identity: the whole of it is answered so.
    pub coded: Option<(Coding, &'a Bytes)>,
}

/// The answer to a GET or HEAD with `request` fields from `stored`, whose current age is
/// `age`; `boundary` makes the separator of the parts of a multi-range answer (called only
/// for one).
pub fn answer(
    method: &Method,
    request: &HeaderMap,
    stored: Stored<'_>,
    age: Duration,
    boundary: &dyn Fn() -> String,
) -> Answer {
    let age_value = HeaderValue::from(age.as_secs());
    let length = stored.body.len() as u64;
    let ranges = if stored.status == StatusCode::OK && *method == Method::GET {
        range::answer(request, &stored.headers, length)
    } else {
        RangeAnswer::Full
    };
    let mut headers = stored.headers;
    // Ranges are of the content as it is; a coding only for the whole of it.
    let coded = stored
        .coded
        .filter(|_| stored.compressible && ranges == RangeAnswer::Full);
    if stored.compressible {
        encoding::vary_on_accept_encoding(&mut headers);
    }
    if let Some((coding, _)) = coded {
        encoding::mark_coded(&mut headers, coding);
    }
    if not_modified(request, &headers) {
        let mut headers = not_modified_headers(&headers);
        headers.insert(AGE, age_value);
        return Answer {
            status: StatusCode::NOT_MODIFIED,
            headers,
            body: Bytes::new(),
        };
    }
    headers.insert(AGE, age_value);
    let (status, body) = match ranges {
        RangeAnswer::Full => match coded {
            Some((_, content)) => (stored.status, content.clone()),
            None => (stored.status, stored.body.clone()),
        },
        RangeAnswer::Single(part) => {
            let value = range::content_range(Some(&part), length);
            headers.insert(CONTENT_RANGE, header_value(&value));
            // Ranges are resolved within the body's length.
            let part = stored.body.slice(part.start as usize..part.end as usize);
            (StatusCode::PARTIAL_CONTENT, part)
        }
        RangeAnswer::Multiple(parts) => {
            let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
            let content_type = content_type.map(str::to_owned);
            // Ranges are resolved within the body's length.
            let parts: Vec<_> = parts
                .into_iter()
                .map(|r| {
                    (
                        r.clone(),
                        stored.body.slice(r.start as usize..r.end as usize),
                    )
                })
                .collect();
            let (body, multipart_type) =
                range::byteranges(&parts, length, content_type.as_deref(), &boundary());
            headers.insert(CONTENT_TYPE, header_value(&multipart_type));
            (StatusCode::PARTIAL_CONTENT, body)
        }
        RangeAnswer::Unsatisfiable => {
            headers.insert(
                CONTENT_RANGE,
                header_value(&range::content_range(None, length)),
            );
            (StatusCode::RANGE_NOT_SATISFIABLE, Bytes::new())
        }
    };
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    let body = if *method == Method::HEAD {
        Bytes::new()
    } else {
        body
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn header_value(text: &str) -> HeaderValue {
    // Made of ASCII digits, tokens and the boundary (a token).
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fields;
    use http::header::{CONTENT_ENCODING, ETAG, VARY};

    fn serve(method: Method, request: &[(&'static str, &'static str)]) -> Answer {
        let stored_headers = fields(&[
            ("etag", "\"v1\""),
            ("content-type", "text/plain"),
            ("content-length", "10"),
            ("age", "1"),
        ]);
        let body = Bytes::from_static(b"0123456789");
        let stored = Stored {
            status: StatusCode::OK,
            headers: stored_headers,
            body: &body,
            compressible: false,
            coded: None,
        };
        answer(
            &method,
            &fields(request),
            stored,
            Duration::from_secs(7),
            &|| "B".to_owned(),
        )
    }

    #[test]
    fn rfc9111_5_1_a_served_response_carries_its_current_age() {
        let answer = serve(Method::GET, &[]);
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.headers[AGE], "7");
        assert_eq!(answer.headers.get_all(AGE).iter().count(), 1);
        assert_eq!(&answer.body[..], b"0123456789");
    }

    #[test]
    fn rfc9111_4_head_is_answered_from_a_stored_get() {
        let answer = serve(Method::HEAD, &[]);
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.headers[CONTENT_LENGTH], "10");
        assert_eq!(answer.headers[CONTENT_TYPE], "text/plain");
        assert!(answer.body.is_empty());
    }

    #[test]
    fn rfc9111_4_3_2_a_matching_client_condition_gets_304() {
        let answer = serve(Method::GET, &[("if-none-match", "\"v1\"")]);
        assert_eq!(answer.status, StatusCode::NOT_MODIFIED);
        assert_eq!(answer.headers["etag"], "\"v1\"");
        assert!(answer.body.is_empty() && !answer.headers.contains_key(CONTENT_TYPE));
    }

    fn serve_coded(method: Method, request: &[(&'static str, &'static str)]) -> Answer {
        let stored_headers = fields(&[("etag", "\"v1\""), ("content-type", "text/plain")]);
        let body = Bytes::from_static(b"0123456789");
        let gzip = Bytes::from_static(b"gz");
        let request = fields(request);
        let wanted = encoding::wanted(&method, &request);
        let stored = Stored {
            status: StatusCode::OK,
            headers: stored_headers,
            body: &body,
            compressible: true,
            coded: Some((Coding::Gzip, &gzip)).filter(|_| wanted == Some(Coding::Gzip)),
        };
        answer(&method, &request, stored, Duration::ZERO, &|| {
            "B".to_owned()
        })
    }

    #[test]
    fn rfc9110_8_4_a_coded_answer_for_clients_that_accept_it_varies_on_accept_encoding() {
        let coded = serve_coded(Method::GET, &[("accept-encoding", "gzip, br;q=0.5")]);
        assert_eq!(&coded.body[..], b"gz");
        assert_eq!(coded.headers[CONTENT_ENCODING], "gzip");
        assert_eq!(coded.headers[CONTENT_LENGTH], "2");
        assert_eq!(coded.headers[ETAG], "W/\"v1\"");
        assert_eq!(coded.headers[VARY], "Accept-Encoding");
        let plain = serve_coded(Method::GET, &[]);
        assert_eq!(&plain.body[..], b"0123456789");
        assert!(!plain.headers.contains_key(CONTENT_ENCODING));
        assert_eq!(plain.headers[ETAG], "\"v1\"");
        assert_eq!(plain.headers[VARY], "Accept-Encoding");
        // Never for a range; a HEAD says what a GET would get.
        let part = serve_coded(
            Method::GET,
            &[("accept-encoding", "gzip"), ("range", "bytes=0-1")],
        );
        assert_eq!(
            (part.status, &part.body[..]),
            (StatusCode::PARTIAL_CONTENT, &b"01"[..])
        );
        let head = serve_coded(Method::HEAD, &[("accept-encoding", "gzip")]);
        assert_eq!(head.headers[CONTENT_LENGTH], "2");
        // A client holding the coded answer's weak tag gets 304.
        let again = serve_coded(
            Method::GET,
            &[("accept-encoding", "gzip"), ("if-none-match", "W/\"v1\"")],
        );
        assert_eq!(again.status, StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers[ETAG], "W/\"v1\"");
    }

    #[test]
    fn rfc9110_14_ranges_of_a_stored_200() {
        let single = serve(Method::GET, &[("range", "bytes=2-4")]);
        assert_eq!(single.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(single.headers[CONTENT_RANGE], "bytes 2-4/10");
        assert_eq!(single.headers[CONTENT_LENGTH], "3");
        assert_eq!(&single.body[..], b"234");
        let multiple = serve(Method::GET, &[("range", "bytes=0-0,9-9")]);
        assert_eq!(multiple.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            multiple.headers[CONTENT_TYPE],
            "multipart/byteranges; boundary=B"
        );
        assert_eq!(
            multiple.headers[CONTENT_LENGTH],
            multiple.body.len().to_string().as_str()
        );
        let none = serve(Method::GET, &[("range", "bytes=10-")]);
        assert_eq!(none.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(none.headers[CONTENT_RANGE], "bytes */10");
        assert!(none.body.is_empty());
    }
}
