//! The head of an upstream HTTP/1.x response, parsed with httparse, and how its body is
//! delimited and whether the connection can be reused after it (RFC 9112 §6.3, §9.3).

use bytes::{Buf, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};

use super::Error;

/// Most header fields in a response head (and in a trailer section).
pub const MAX_HEADERS: usize = 100;
/// Most bytes in a response head.
pub const MAX_HEAD: usize = 64 * 1024;

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (a response to HEAD, 1xx, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
}

/// A response head and what it says about its body and its connection.
#[derive(Debug)]
pub struct Head {
    /// Status, version and header fields (the reason phrase is dropped).
    pub response: Response<()>,
    /// How the body is delimited.
    pub framing: BodyFraming,
    /// Whether the connection may carry another request once this body has been read to its
    /// end (provided nothing more than the response was received).
    pub reusable: bool,
}

/// What [`parse_head`] found in a buffer.
#[derive(Debug)]
pub enum Parsed {
    /// The head is not complete yet: read more.
    Partial,
    /// The head, in the buffer's first `head_len` bytes.
    Complete {
        /// Bytes of the head, its final empty line included.
        head_len: usize,
        /// The head.
        head: Head,
    },
}

/// Parses the response head at the start of `buf`, for a request with `method`. A head of more
/// than [`MAX_HEADERS`] fields or [`MAX_HEAD`] bytes (complete or not) is an error. An
/// informational (1xx) head is returned like any other; [`parse_final_head`] skips them.
pub fn parse_head(buf: &[u8], method: &Method) -> Result<Parsed, Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) if head_len <= MAX_HEAD => head_len,
        Ok(httparse::Status::Complete(_)) => return Err(Error::HeadTooLarge),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(Error::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::TooManyHeaders),
        Err(e) => return Err(Error::MalformedHead(e)),
    };
    // Complete: httparse has set the version and the code.
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let code = parsed.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| Error::InvalidStatus(code))?;
    let headers = header_map(parsed.headers)?;
    let (framing, reusable) = framing(method, status, version, &headers)?;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Parsed::Complete {
        head_len,
        head: Head {
            response,
            framing,
            reusable,
        },
    })
}

/// Consumes from `buf` the heads of informational responses (1xx but 101) and the final head
/// after them, which it returns; `None` when that head is not complete yet (the informational
/// heads before it are consumed already). What follows the head (the body) stays in `buf`.
pub fn parse_final_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, Error> {
    loop {
        match parse_head(buf, method)? {
            Parsed::Partial => return Ok(None),
            Parsed::Complete { head_len, head } => {
                buf.advance(head_len);
                let status = head.response.status();
                if !status.is_informational() || status == StatusCode::SWITCHING_PROTOCOLS {
                    return Ok(Some(head));
                }
            }
        }
    }
}

/// The fields httparse found, as a header map.
fn header_map(fields: &[httparse::Header<'_>]) -> Result<HeaderMap, Error> {
    let mut headers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let invalid = || Error::InvalidHeader(field.name.to_owned());
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| invalid())?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| invalid())?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// How the body of a response with `status` to `method` is delimited, and whether the
/// connection can be reused after it (RFC 9112 §6.3, §6.1, §9.3).
fn framing(
    method: &Method,
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
) -> Result<(BodyFraming, bool), Error> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // The connection speaks another protocol from here on.
        return Ok((BodyFraming::Empty, false));
    }
    let keep_alive = keep_alive(version, headers);
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((BodyFraming::Empty, keep_alive));
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        // HTTP/1.0 has no transfer codings: its framing is faulty, the connection closes after
        // it (§6.1). A Content-Length beside chunked is ignored, but the message may have been
        // meant to be read otherwise (smuggling): nothing more is read from the connection.
        return Ok(if version == Version::HTTP_11 && chunked_last(headers) {
            let alone = !headers.contains_key(CONTENT_LENGTH);
            (BodyFraming::Chunked, keep_alive && alone)
        } else {
            (BodyFraming::UntilClose, false)
        });
    }
    Ok(match content_length(headers)? {
        Some(length) => (BodyFraming::Length(length), keep_alive),
        None => (BodyFraming::UntilClose, false),
    })
}

/// Whether the connection persists after the message: HTTP/1.1 unless `Connection: close`,
/// HTTP/1.0 only with `Connection: keep-alive` (§9.3).
fn keep_alive(version: Version, headers: &HeaderMap) -> bool {
    let mut keep_alive = version == Version::HTTP_11;
    for token in list(headers, &CONNECTION) {
        if token.eq_ignore_ascii_case(b"close") {
            return false;
        }
        if token.eq_ignore_ascii_case(b"keep-alive") {
            keep_alive = true;
        }
    }
    keep_alive
}

/// Whether the final transfer coding is chunked.
fn chunked_last(headers: &HeaderMap) -> bool {
    list(headers, &TRANSFER_ENCODING)
        .last()
        .is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"))
}

/// The body length `Content-Length` gives, if it is there: every value (of every field, and of
/// a comma-separated list) must be digits, fit 64 bits, and be the same.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let invalid = || Error::InvalidContentLength(String::from_utf8_lossy(item).into());
            let digits = item.trim_ascii();
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(invalid());
            }
            let n = digits.iter().try_fold(0u64, |n, &d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            });
            let n = n.ok_or_else(invalid)?;
            match length {
                Some(first) if first != n => return Err(Error::DifferingContentLengths(first, n)),
                _ => length = Some(n),
            }
        }
    }
    Ok(length)
}

/// The comma-separated elements of every `name` field, trimmed; empty ones skipped.
fn list<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}
