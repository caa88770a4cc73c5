//! The request head and body chunks of an HTTP/1.1 request (RFC 9112 §3, §5, §7.1), written
//! into a caller's buffer.

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method};

use crate::fields::AddedFields;

/// How the request body is delimited; the encoder writes the matching framing field and drops
/// any `Content-Length` or `Transfer-Encoding` the request carried, so that the message has
/// exactly one framing, the one the body is sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body. `content-length: 0` is written for methods whose requests usually carry one
    /// (all but GET, HEAD, DELETE, OPTIONS, TRACE and CONNECT), nothing otherwise.
    Empty,
    /// A body of exactly this many bytes: `content-length: N`.
    Length(u64),
    /// A body of unknown length: `transfer-encoding: chunked` (the exchange sends such bodies
    /// through hyper's client for now).
    Chunked,
}

impl RequestFraming {
    /// The framing of a body that has ended already (`end`) or whose exact length is `exact`.
    pub fn of_body(end: bool, exact: Option<u64>) -> RequestFraming {
        match (end, exact) {
            (true, _) | (false, Some(0)) => RequestFraming::Empty,
            (false, Some(length)) => RequestFraming::Length(length),
            (false, None) => RequestFraming::Chunked,
        }
    }
}

/// Appends to `dst` the head of `parts` as an HTTP/1.1 request: `METHOD SP origin-form SP
/// HTTP/1.1 CRLF`, each header field `name: value CRLF` (names are lower case already; the
/// `http` types admit no CR or LF in either), those of `added` after them, the framing field of
/// `framing`, and CRLF. The target is the URI's path and query (`/` when it has none); the
/// caller sets `Host`.
pub fn encode_head(parts: &Parts, added: &AddedFields, framing: RequestFraming, dst: &mut Vec<u8>) {
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |target| target.as_str());
    dst.extend_from_slice(parts.method.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(target.as_bytes());
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    let fields = parts.headers.iter();
    push_fields(
        fields.filter(|(name, _)| *name != CONTENT_LENGTH && *name != TRANSFER_ENCODING),
        dst,
    );
    push_fields(added.iter(), dst);
    match framing {
        RequestFraming::Empty if !bodyless(&parts.method) => {
            dst.extend_from_slice(b"content-length: 0\r\n");
        }
        RequestFraming::Empty => {}
        RequestFraming::Length(length) => {
            dst.extend_from_slice(b"content-length: ");
            push_decimal(length, dst);
            dst.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => dst.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    dst.extend_from_slice(b"\r\n");
}

/// Whether requests with `method` usually have no body (RFC 9110 §9.3).
fn bodyless(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::DELETE,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
    ]
    .contains(method)
}

/// Appends each field as `name: value CRLF`.
fn push_fields<'n, 'v>(
    fields: impl Iterator<Item = (&'n HeaderName, &'v HeaderValue)>,
    dst: &mut Vec<u8>,
) {
    for (name, value) in fields {
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
}

/// Appends `n` in decimal.
fn push_decimal(n: u64, dst: &mut Vec<u8>) {
    push_digits(n, 10, dst);
}

/// Appends `n` written in `base` (at most 16), most significant digit first.
fn push_digits(mut n: u64, base: u64, dst: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = DIGITS[(n % base) as usize];
        n /= base;
        if n == 0 {
            break;
        }
    }
    dst.extend_from_slice(&buf[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn head(request: Request<()>, framing: RequestFraming) -> String {
        head_with(request, &AddedFields::default(), framing)
    }

    fn head_with(request: Request<()>, added: &AddedFields, framing: RequestFraming) -> String {
        let (parts, ()) = request.into_parts();
        let mut dst = b"left".to_vec();
        encode_head(&parts, added, framing, &mut dst);
        assert!(dst.starts_with(b"left"), "appends");
        String::from_utf8(dst[4..].to_vec()).unwrap()
    }

    #[test]
    fn the_head_is_request_line_fields_framing_and_an_empty_line() {
        let request = Request::post("http://ignored.example/a/b?x=1&y")
            .header("host", "shop.example")
            .header("x-two", "1")
            .header("x-two", "2")
            .body(())
            .unwrap();
        assert_eq!(
            head(request, RequestFraming::Length(12345)),
            "POST /a/b?x=1&y HTTP/1.1\r\nhost: shop.example\r\nx-two: 1\r\nx-two: 2\r\n\
             content-length: 12345\r\n\r\n"
        );
    }

    #[test]
    fn added_fields_follow_the_clients() {
        use crate::fields::Added;
        let request = Request::get("/").header("accept", "*/*").body(()).unwrap();
        let mut added = AddedFields::default();
        added.set(Added::XRequestId, HeaderValue::from_static("7"));
        added.set(Added::Host, HeaderValue::from_static("shop.example"));
        assert_eq!(
            head_with(request, &added, RequestFraming::Empty),
            "GET / HTTP/1.1\r\naccept: */*\r\nhost: shop.example\r\nx-request-id: 7\r\n\r\n"
        );
    }

    #[test]
    fn a_target_without_path_is_slash() {
        let request = Request::get("http://shop.example").body(()).unwrap();
        assert_eq!(
            head(request, RequestFraming::Empty),
            "GET / HTTP/1.1\r\n\r\n"
        );
        let request = Request::options("*").body(()).unwrap();
        assert_eq!(
            head(request, RequestFraming::Empty),
            "OPTIONS * HTTP/1.1\r\n\r\n"
        );
    }

    #[test]
    fn the_framing_written_replaces_the_one_the_request_carried() {
        let request = || {
            Request::put("/")
                .header("content-length", "5")
                .header("transfer-encoding", "gzip, chunked")
                .header("x-a", "b")
                .body(())
                .unwrap()
        };
        assert_eq!(
            head(request(), RequestFraming::Chunked),
            "PUT / HTTP/1.1\r\nx-a: b\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(
            head(request(), RequestFraming::Length(0)),
            "PUT / HTTP/1.1\r\nx-a: b\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn an_empty_body_has_a_length_only_where_a_body_is_expected() {
        for (method, expected) in [
            ("GET", ""),
            ("HEAD", ""),
            ("DELETE", ""),
            ("POST", "content-length: 0\r\n"),
            ("PATCH", "content-length: 0\r\n"),
            ("PURGE", "content-length: 0\r\n"),
        ] {
            let request = Request::builder().method(method).uri("/").body(()).unwrap();
            assert_eq!(
                head(request, RequestFraming::Empty),
                format!("{method} / HTTP/1.1\r\n{expected}\r\n")
            );
        }
    }

    #[test]
    fn framing_follows_what_the_body_knows() {
        assert_eq!(RequestFraming::of_body(true, None), RequestFraming::Empty);
        assert_eq!(
            RequestFraming::of_body(true, Some(3)),
            RequestFraming::Empty
        );
        assert_eq!(
            RequestFraming::of_body(false, Some(0)),
            RequestFraming::Empty
        );
        assert_eq!(
            RequestFraming::of_body(false, Some(7)),
            RequestFraming::Length(7)
        );
        assert_eq!(
            RequestFraming::of_body(false, None),
            RequestFraming::Chunked
        );
    }

    #[test]
    fn numbers_are_written_in_full() {
        for n in [0, 9, 10, 255, 256, u64::MAX] {
            let mut decimal = Vec::new();
            push_decimal(n, &mut decimal);
            assert_eq!(decimal, n.to_string().as_bytes());
        }
    }
}
