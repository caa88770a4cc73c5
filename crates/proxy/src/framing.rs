//! Whether a request's target and framing can be trusted (RFC 9112 §3.2 and §6.3), and which
//! authority it is for (RFC 9112 §3.2.2, RFC 9113 §8.3.1).

use http::header::{HOST, TRANSFER_ENCODING};
use http::uri::Authority;
use http::{Request, Version};

/// Why `request` must be answered 400 before it is routed (the `x-meridian-error` reason), if
/// it must: more than one `Host`, none on HTTP/1.1, one that is not `host[:port]`, a target
/// authority with user information, or a `Transfer-Encoding` other than `chunked` alone. The
/// proxy decodes no other transfer coding, and one such as `identity, chunked` beside a
/// `Content-Length` (which the HTTP layer drops in favour of chunked) is a message whose length
/// two parties could read differently.
pub fn refusal<B>(request: &Request<B>) -> Option<&'static str> {
    let headers = request.headers();
    let mut hosts = headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some("duplicate_host");
    }
    match host {
        None if request.version() == Version::HTTP_11 => return Some("missing_host"),
        Some(host) if !host.is_empty() && !valid(host.as_bytes()) => return Some("invalid_host"),
        _ => {}
    }
    // A target's authority has been parsed already: only what parsing allows is left to check.
    if request
        .uri()
        .authority()
        .is_some_and(|a| a.as_str().contains('@') || !host_and_port(a.as_str()))
    {
        return Some("invalid_host");
    }
    let mut codings = headers.get_all(TRANSFER_ENCODING).iter();
    let chunked_alone = match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(coding), None) => coding
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    };
    if !chunked_alone {
        return Some("unsupported_transfer_encoding");
    }
    None
}

/// Whether `bytes` are `host[:port]`: no user information, a port (if any) of digits.
fn valid(bytes: &[u8]) -> bool {
    if bytes.contains(&b'@') {
        return false;
    }
    let Ok(authority) = Authority::try_from(bytes) else {
        return false;
    };
    host_and_port(authority.as_str())
}

/// Whether an authority's `text` is a host and an optional port of digits.
fn host_and_port(text: &str) -> bool {
    let host_end = match text.strip_prefix('[') {
        Some(v6) => v6.find(']').map_or(text.len(), |end| end + 2),
        None => text.find(':').unwrap_or(text.len()),
    };
    let (host, port) = text.split_at(host_end);
    !host.is_empty()
        && match port.strip_prefix(':') {
            Some(digits) => digits.is_empty() || digits.parse::<u16>().is_ok(),
            None => port.is_empty(),
        }
}

/// The authority `request` is for, as the client sent it: that of an absolute-form target
/// (HTTP/1.1) or `:authority` (HTTP/2), else `Host`; empty when there is none.
pub fn authority<B>(request: &Request<B>) -> &str {
    match request.uri().authority() {
        Some(authority) => authority.as_str(),
        None => request
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_host_and_optional_port() {
        for good in [
            "shop.example.com",
            "shop.example.com:8080",
            "[::1]:80",
            "[::1]",
            "a:",
        ] {
            assert!(valid(good.as_bytes()), "{good}");
        }
        for bad in [
            "user@shop",
            "shop:http",
            "a b",
            "shop:99999",
            ":80",
            "[::1",
            "a:1:2",
        ] {
            assert!(!valid(bad.as_bytes()), "{bad}");
        }
    }
}
