//! The head of an upstream HTTP/1.x response, parsed with httparse, and how its body is
//! delimited and whether the connection can be reused after it (RFC 9112 §6.3, §9.3).

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};

use super::Error;
use crate::hop_by_hop::{KEEP_ALIVE, PROXY_CONNECTION};

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
    /// Status, version and header fields; a reason phrase other than the status code's usual
    /// one is in its extensions ([`hyper::ext::ReasonPhrase`]), as hyper's client puts it.
    pub response: Response<()>,
    /// How the body is delimited.
    pub framing: BodyFraming,
    /// Whether the connection may carry another request once this body has been read to its
    /// end (provided nothing more than the response was received).
    pub reusable: bool,
}

/// Where a complete head's parts are in the buffer it was parsed from.
struct Scan {
    /// Bytes of the head, its final empty line included.
    head_len: usize,
    version: Version,
    code: u16,
    reason: std::ops::Range<usize>,
    /// Each field's name and value.
    fields: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
}

/// Where `part` (a slice of `buf`) is in `buf`.
fn range_in(buf: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// Finds the response head at the start of `buf`; `None` while it is not complete. A head of
/// more than [`MAX_HEADERS`] fields or [`MAX_HEAD`] bytes (complete or not) is an error.
fn scan(buf: &[u8]) -> Result<Option<Scan>, Error> {
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let head_len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(head_len)) if head_len <= MAX_HEAD => head_len,
        Ok(httparse::Status::Complete(_)) => return Err(Error::HeadTooLarge),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(Error::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::TooManyHeaders),
        Err(e) => return Err(Error::MalformedHead(e)),
    };
    // Complete: httparse has set the version, the code and the reason.
    let fields = parsed
        .headers
        .iter()
        .map(|field| {
            (
                range_in(buf, field.name.as_bytes()),
                range_in(buf, field.value),
            )
        })
        .collect();
    Ok(Some(Scan {
        head_len,
        version: match parsed.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        },
        code: parsed.code.unwrap_or_default(),
        reason: range_in(buf, parsed.reason.unwrap_or_default().as_bytes()),
        fields,
    }))
}

/// The head `scan` found, from `head` (its bytes, which the field values share), with its
/// end-to-end fields only: the connection-level ones are read for framing and left out.
fn build(head: &Bytes, scan: Scan, method: &Method) -> Result<Head, Error> {
    let status = StatusCode::from_u16(scan.code).map_err(|_| Error::InvalidStatus(scan.code))?;
    let mut headers = HeaderMap::with_capacity(scan.fields.len());
    let mut connection = ConnectionFields::default();
    for (name, value) in scan.fields {
        let invalid = || Error::InvalidHeader(String::from_utf8_lossy(&head[name.clone()]).into());
        let field_name = HeaderName::from_bytes(&head[name.clone()]).map_err(|_| invalid())?;
        if connection.read(&field_name, &head[value.clone()]) {
            continue;
        }
        let field_value =
            HeaderValue::from_maybe_shared(head.slice(value)).map_err(|_| invalid())?;
        headers.append(field_name, field_value);
    }
    for named in &connection.named {
        headers.remove(named);
    }
    if connection.transfer_encoding {
        // A chunked body's length is where its chunks end, whatever a Content-Length beside it
        // says (RFC 9112 §6.3); the length of the body sent on is the next hop's to set.
        headers.remove(CONTENT_LENGTH);
    }
    let (framing, reusable) = connection.framing(method, status, scan.version)?;
    let mut response = Response::new(());
    // A reason phrase of its own is kept (an HTTP/1.1 client sees it); the usual one is implied.
    let reason = &head[scan.reason];
    if status.canonical_reason().map(str::as_bytes) != Some(reason) {
        if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason) {
            response.extensions_mut().insert(reason);
        }
    }
    *response.status_mut() = status;
    *response.version_mut() = scan.version;
    *response.headers_mut() = headers;
    Ok(Head {
        response,
        framing,
        reusable,
    })
}

/// Consumes from `buf` the heads of informational responses (1xx but 101), each given to
/// `informational`, and the final head after them, which it returns; `None` when that head is
/// not complete yet (the informational heads before it are consumed already). What follows
/// the head (the body) stays in `buf`. The head's field values share its bytes (no copy).
pub fn parse_final_head(
    buf: &mut BytesMut,
    method: &Method,
    informational: &mut dyn FnMut(http::Response<()>),
) -> Result<Option<Head>, Error> {
    while let Some(scan) = scan(buf)? {
        let bytes = buf.split_to(scan.head_len).freeze();
        let head = build(&bytes, scan, method)?;
        let status = head.response.status();
        if !status.is_informational() || status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(Some(head));
        }
        informational(head.response);
    }
    Ok(None)
}

/// The fields httparse found, as a header map (their values copied).
pub(super) fn header_map(fields: &[httparse::Header<'_>]) -> Result<HeaderMap, Error> {
    let mut headers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let invalid = || Error::InvalidHeader(field.name.to_owned());
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| invalid())?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| invalid())?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// What a head's connection-level fields (RFC 9110 §7.6.1, RFC 9112 §6.3) say, gathered as its
/// fields are read: how its body is delimited, whether the connection persists, and which
/// fields `Connection` names.
struct ConnectionFields {
    /// A `close` option of `Connection`.
    close: bool,
    /// A `keep-alive` option of `Connection`.
    keep_alive: bool,
    /// The other options of `Connection`: fields that are hop-by-hop too.
    named: Vec<HeaderName>,
    /// Whether there is a `Transfer-Encoding`.
    transfer_encoding: bool,
    /// Whether the last transfer coding so far is chunked.
    chunked_last: bool,
    /// The body length every `Content-Length` value gives (`None` without one), or the first
    /// thing wrong with them: every value (of every field, and of a comma-separated list) must
    /// be digits, fit 64 bits, and be the same. Only an error if the length is needed.
    content_length: Result<Option<u64>, Error>,
}

impl Default for ConnectionFields {
    fn default() -> ConnectionFields {
        ConnectionFields {
            close: false,
            keep_alive: false,
            named: Vec::new(),
            transfer_encoding: false,
            chunked_last: false,
            content_length: Ok(None),
        }
    }
}

impl ConnectionFields {
    /// Reads the field `name: value`; true if it is connection-level (left out of the head
    /// passed on): `Connection`, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`,
    /// `Upgrade`, and a `TE` other than `trailers`.
    fn read(&mut self, name: &HeaderName, value: &[u8]) -> bool {
        if name == CONNECTION {
            for option in elements(value) {
                if option.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if option.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                } else if let Ok(named) = HeaderName::from_bytes(option) {
                    self.named.push(named);
                }
            }
            return true;
        }
        if name == TRANSFER_ENCODING {
            self.transfer_encoding = true;
            if let Some(last) = elements(value).last() {
                self.chunked_last = last.eq_ignore_ascii_case(b"chunked");
            }
            return true;
        }
        if name == CONTENT_LENGTH {
            if let Ok(length) = &mut self.content_length {
                if let Err(e) = add_content_length(length, value) {
                    self.content_length = Err(e);
                }
            }
            return false;
        }
        if name == TE {
            return !value.eq_ignore_ascii_case(b"trailers");
        }
        name == UPGRADE || name == KEEP_ALIVE || name == PROXY_CONNECTION
    }

    /// How the body of a response with `status` to `method` is delimited, and whether the
    /// connection can be reused after it (RFC 9112 §6.3, §6.1, §9.3).
    fn framing(
        self,
        method: &Method,
        status: StatusCode,
        version: Version,
    ) -> Result<(BodyFraming, bool), Error> {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // The connection speaks another protocol from here on.
            return Ok((BodyFraming::Empty, false));
        }
        // HTTP/1.1 persists unless `Connection: close`, HTTP/1.0 only with `keep-alive` (§9.3).
        let keep_alive = !self.close && (version == Version::HTTP_11 || self.keep_alive);
        if method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok((BodyFraming::Empty, keep_alive));
        }
        if self.transfer_encoding {
            // HTTP/1.0 has no transfer codings: its framing is faulty, the connection closes
            // after it (§6.1). A Content-Length beside chunked is ignored, but the message may
            // have been meant to be read otherwise (smuggling): nothing more is read from the
            // connection.
            return Ok(if version == Version::HTTP_11 && self.chunked_last {
                let alone = matches!(self.content_length, Ok(None));
                (BodyFraming::Chunked, keep_alive && alone)
            } else {
                (BodyFraming::UntilClose, false)
            });
        }
        Ok(match self.content_length? {
            Some(length) => (BodyFraming::Length(length), keep_alive),
            None => (BodyFraming::UntilClose, false),
        })
    }
}

/// Adds the lengths of one `Content-Length` field's `value` to `length`: each must be digits,
/// fit 64 bits, and be the same as those before.
fn add_content_length(length: &mut Option<u64>, value: &[u8]) -> Result<(), Error> {
    for item in value.split(|&b| b == b',') {
        let invalid = || Error::InvalidContentLength(String::from_utf8_lossy(item).into());
        let digits = item.trim_ascii();
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(invalid());
        }
        let n = digits.iter().try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        });
        let n = n.ok_or_else(invalid)?;
        match *length {
            Some(first) if first != n => return Err(Error::DifferingContentLengths(first, n)),
            _ => *length = Some(n),
        }
    }
    Ok(())
}

/// The comma-separated elements of a field value, trimmed; empty ones skipped.
fn elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Two: 1\r\n\
        x-two: 2\r\nContent-Length: 5\r\n\r\nhello";

    /// What is parsed from `bytes`: the head's length and the head, `None` while partial.
    /// (1xx heads included: [`parse_final_head`] skips them.)
    fn parse_head(bytes: &[u8], method: &Method) -> Result<Option<(usize, Head)>, Error> {
        let Some(scan) = scan(bytes)? else {
            return Ok(None);
        };
        let head_len = scan.head_len;
        Ok(Some((
            head_len,
            build(&Bytes::copy_from_slice(bytes), scan, method)?,
        )))
    }

    fn complete(bytes: &[u8], method: &Method) -> (usize, Head) {
        match parse_head(bytes, method).unwrap() {
            Some(parsed) => parsed,
            None => panic!("partial: {}", String::from_utf8_lossy(bytes)),
        }
    }

    /// The framing and reusability of a response with `head` (an empty line is appended).
    fn framed(method: &Method, head: &str) -> Result<(BodyFraming, bool), Error> {
        let bytes = format!("{head}\r\n\r\n");
        match parse_head(bytes.as_bytes(), method)? {
            Some((_, head)) => Ok((head.framing, head.reusable)),
            None => panic!("partial: {head}"),
        }
    }

    #[test]
    fn a_head_becomes_a_response_and_its_body_stays() {
        let (head_len, head) = complete(SAMPLE, &Method::GET);
        assert_eq!(&SAMPLE[head_len..], b"hello");
        let response = &head.response;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), Version::HTTP_11);
        assert_eq!(response.headers()["content-type"], "text/plain");
        let twos: Vec<_> = response.headers().get_all("x-two").iter().collect();
        assert_eq!(twos, ["1", "2"]);
        assert_eq!(head.framing, BodyFraming::Length(5));
        assert!(head.reusable);
    }

    #[test]
    fn connection_level_fields_are_read_and_left_out() {
        let response = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
            Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\
            Upgrade: h2c\r\nTE: gzip\r\nX-Kept: 1\r\n\r\n";
        let (_, head) = complete(response, &Method::GET);
        let names: Vec<&str> = head.response.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        assert_eq!(head.framing, BodyFraming::Chunked);
        assert!(!head.reusable, "a length beside chunks");
        let response = b"HTTP/1.1 200 OK\r\nTE: trailers\r\nContent-Length: 0\r\n\r\n";
        let (_, head) = complete(response, &Method::GET);
        let names: Vec<&str> = head.response.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["te", "content-length"]);
    }

    #[test]
    fn only_an_unusual_reason_phrase_is_kept() {
        let reason = |line: &str| {
            let (_, head) = complete(format!("{line}\r\n\r\n").as_bytes(), &Method::GET);
            let phrase = head.response.extensions().get::<hyper::ext::ReasonPhrase>();
            phrase.map(|p| String::from_utf8(p.as_bytes().to_vec()).unwrap())
        };
        assert_eq!(reason("HTTP/1.1 200 OK"), None);
        assert_eq!(reason("HTTP/1.1 404 Not Found"), None);
        assert_eq!(
            reason("HTTP/1.1 200 Fine, thanks"),
            Some("Fine, thanks".into())
        );
        assert_eq!(reason("HTTP/1.1 200 "), Some("".into()));
    }

    #[test]
    fn a_head_cut_anywhere_is_partial() {
        let head_len = SAMPLE.len() - 5;
        for cut in 0..head_len {
            assert!(
                matches!(parse_head(&SAMPLE[..cut], &Method::GET), Ok(None)),
                "cut at {cut}"
            );
        }
        assert_eq!(complete(&SAMPLE[..head_len], &Method::GET).0, head_len);
    }

    #[test]
    fn bare_lf_line_ends_are_tolerated() {
        let response = b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok";
        let (head_len, head) = complete(response, &Method::GET);
        assert_eq!(&response[head_len..], b"ok");
        assert_eq!(head.framing, BodyFraming::Length(2));
    }

    #[test]
    fn malformed_heads_are_refused() {
        for bad in [
            &b"HTTP/2.0 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            // obs-fold, and whitespace before the colon.
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A : 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX\x01A: 1\r\n\r\n",
        ] {
            let result = parse_head(bad, &Method::GET);
            assert!(
                matches!(result, Err(Error::MalformedHead(_))),
                "{}: {result:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_head(b"HTTP/1.1 099 Low\r\n\r\n", &Method::GET).unwrap_err(),
            Error::InvalidStatus(99)
        );
    }

    #[test]
    fn more_than_a_hundred_fields_are_refused() {
        let head = |fields: usize| {
            let mut head = String::from("HTTP/1.1 200 OK\r\n");
            for i in 0..fields {
                head.push_str(&format!("x-{i}: {i}\r\n"));
            }
            head.push_str("content-length: 0\r\n\r\n");
            head
        };
        let (_, ok) = complete(head(99).as_bytes(), &Method::GET);
        assert_eq!(ok.response.headers().len(), 100);
        let error = parse_head(head(100).as_bytes(), &Method::GET).unwrap_err();
        assert_eq!(error, Error::TooManyHeaders);
        assert_eq!(
            error.to_string(),
            "upstream response: more than 100 header fields"
        );
    }

    #[test]
    fn a_head_larger_than_64_kib_is_refused_complete_or_not() {
        let mut head = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        head.resize(MAX_HEAD, b'a');
        assert_eq!(
            parse_head(&head, &Method::GET).unwrap_err(),
            Error::HeadTooLarge
        );
        assert!(matches!(
            parse_head(&head[..MAX_HEAD - 1], &Method::GET),
            Ok(None)
        ));
        head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            parse_head(&head, &Method::GET).unwrap_err(),
            Error::HeadTooLarge
        );
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let reusable = |head: &str| framed(&Method::GET, head).unwrap().1;
        assert!(reusable("HTTP/1.1 200 OK\r\ncontent-length: 0"));
        assert!(!reusable(
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close"
        ));
        assert!(!reusable(
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: x-a, Close"
        ));
        assert!(!reusable("HTTP/1.0 200 OK\r\ncontent-length: 0"));
        assert!(reusable(
            "HTTP/1.0 200 OK\r\ncontent-length: 0\r\nconnection: Keep-Alive"
        ));
        assert!(!reusable(
            "HTTP/1.0 200 OK\r\ncontent-length: 0\r\nconnection: keep-alive, close"
        ));
    }

    #[test]
    fn some_responses_have_no_body_whatever_they_say() {
        for (method, status) in [
            (Method::HEAD, "200 OK"),
            (Method::GET, "204 No Content"),
            (Method::GET, "304 Not Modified"),
            (Method::GET, "103 Early Hints"),
        ] {
            for framing in ["content-length: 10", "transfer-encoding: chunked"] {
                let head = format!("HTTP/1.1 {status}\r\n{framing}");
                assert_eq!(
                    framed(&method, &head).unwrap(),
                    (BodyFraming::Empty, true),
                    "{method} {head}"
                );
            }
        }
        assert_eq!(
            framed(
                &Method::GET,
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket"
            )
            .unwrap(),
            (BodyFraming::Empty, false)
        );
    }

    #[test]
    fn chunked_when_it_is_the_final_coding() {
        for te in [
            "chunked",
            "Chunked",
            "gzip, chunked",
            "gzip\r\ntransfer-encoding: chunked",
        ] {
            let head = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: {te}");
            assert_eq!(
                framed(&Method::GET, &head).unwrap(),
                (BodyFraming::Chunked, true),
                "{te}"
            );
        }
        for te in [
            "chunked, gzip",
            "gzip",
            "chunked\r\ntransfer-encoding: gzip",
        ] {
            let head = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: {te}\r\ncontent-length: 3");
            assert_eq!(
                framed(&Method::GET, &head).unwrap(),
                (BodyFraming::UntilClose, false),
                "{te}"
            );
        }
    }

    #[test]
    fn chunked_beside_a_content_length_is_read_chunked_and_ends_the_connection() {
        for cl in ["5", "abc"] {
            let head =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {cl}\r\ntransfer-encoding: chunked");
            assert_eq!(
                framed(&Method::GET, &head).unwrap(),
                (BodyFraming::Chunked, false)
            );
        }
    }

    #[test]
    fn a_transfer_coding_in_http_1_0_is_faulty_framing() {
        let head = "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\nconnection: keep-alive";
        assert_eq!(
            framed(&Method::GET, head).unwrap(),
            (BodyFraming::UntilClose, false)
        );
    }

    #[test]
    fn content_length_values_must_be_digits_and_agree() {
        for (values, length) in [
            ("0", 0),
            ("5", 5),
            ("5, 5", 5),
            ("5\r\ncontent-length: 5", 5),
            ("007", 7),
            ("18446744073709551615", u64::MAX),
        ] {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {values}");
            assert_eq!(
                framed(&Method::GET, &head).unwrap(),
                (BodyFraming::Length(length), true),
                "{values}"
            );
        }
        for (values, error) in [
            ("abc", "invalid content-length `abc`"),
            ("", "invalid content-length ``"),
            ("+5", "invalid content-length `+5`"),
            ("-1", "invalid content-length `-1`"),
            ("0x10", "invalid content-length `0x10`"),
            ("5,", "invalid content-length ``"),
            ("1 2", "invalid content-length `1 2`"),
            (
                "18446744073709551616",
                "invalid content-length `18446744073709551616`",
            ),
            ("5, 6", "content-length values differ (`5` and `6`)"),
            (
                "5\r\ncontent-length: 50",
                "content-length values differ (`5` and `50`)",
            ),
        ] {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {values}");
            let result = framed(&Method::GET, &head);
            assert_eq!(
                result.map_err(|e| e.to_string()),
                Err(format!("upstream response: {error}")),
                "{values}"
            );
        }
    }

    #[test]
    fn without_framing_the_body_lasts_until_the_connection_closes() {
        assert_eq!(
            framed(&Method::GET, "HTTP/1.1 200 OK\r\nx-a: b").unwrap(),
            (BodyFraming::UntilClose, false)
        );
    }

    #[test]
    fn informational_heads_are_given_apart_but_not_a_switch() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 2"[..]);
        let mut given = Vec::new();
        let mut keep = |response: http::Response<()>| given.push(response);
        assert!(parse_final_head(&mut buf, &Method::GET, &mut keep)
            .unwrap()
            .is_none());
        assert_eq!(&buf[..], b"HTTP/1.1 2", "the 1xx heads are consumed");
        assert_eq!(given.len(), 2);
        assert_eq!(given[1].status(), StatusCode::EARLY_HINTS);
        assert_eq!(given[1].headers()["link"], "</a>");
        buf.extend_from_slice(b"00 OK\r\ncontent-length: 2\r\n\r\nok");
        let head = parse_final_head(&mut buf, &Method::GET, &mut |_| {})
            .unwrap()
            .unwrap();
        assert_eq!(head.response.status(), StatusCode::OK);
        assert_eq!(&buf[..], b"ok");

        let mut buf = BytesMut::from(&b"HTTP/1.1 101 Switching Protocols\r\n\r\nframes"[..]);
        let head = parse_final_head(&mut buf, &Method::GET, &mut |_| {})
            .unwrap()
            .unwrap();
        assert_eq!(head.response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(&buf[..], b"frames");
    }
}
