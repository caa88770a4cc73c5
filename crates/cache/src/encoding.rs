//! Content codings for responses the edge compresses itself: which coding a request accepts
//! best (RFC 9110 §12.5.3, with q-values), which responses may be compressed (RFC 9110
//! §7.7: not with `no-transform`; not already coded, not partial, of a compressible type),
//! and the fields of a coded answer (`Content-Encoding`, a weak `ETag`, `Vary`).

use http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_RANGE, CONTENT_TYPE, ETAG, RANGE,
    VARY,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::directives::CacheControl;

/// Smallest content worth compressing, in bytes.
pub const MIN_COMPRESSIBLE: usize = 1024;

/// A content coding the edge can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coding {
    /// Brotli (`br`, RFC 7932).
    Brotli,
    /// Zstandard (`zstd`, RFC 8878).
    Zstd,
    /// gzip (`gzip`, RFC 1952).
    Gzip,
    /// No coding.
    Identity,
}

impl Coding {
    /// The coding's token in `Accept-Encoding` and `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Brotli => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
            Coding::Identity => "identity",
        }
    }
}

/// The codings the edge makes, in its order of preference when a request weighs several
/// alike: Brotli (smallest for text), then zstd (fastest), then gzip (understood by all).
pub const OFFERED: [Coding; 3] = [Coding::Brotli, Coding::Zstd, Coding::Gzip];

/// The coding of its answer a `method` request with `request` fields asks for, if its answer
/// may be coded at all: a GET or HEAD without `Range` (a range is of the content as it is).
/// [`Coding::Identity`] when it accepts none of [`OFFERED`] (or refuses everything: it is
/// sent the content as it is rather than a `406`).
pub fn wanted(method: &Method, request: &HeaderMap) -> Option<Coding> {
    let whole = (*method == Method::GET || *method == Method::HEAD) && !request.contains_key(RANGE);
    whole.then(|| preferred(request, &OFFERED).unwrap_or(Coding::Identity))
}

/// The coding of `offered` (in the edge's order of preference, identity implied last) that a
/// request with `request` fields accepts with the highest weight; ties go to the earlier
/// offered. Without `Accept-Encoding`, identity (RFC 9110 §12.5.3 allows any, but a client
/// that says nothing is sent the content as it is). `None` when not even identity is
/// acceptable (`identity;q=0`, or `*;q=0` without identity).
pub fn preferred(request: &HeaderMap, offered: &[Coding]) -> Option<Coding> {
    let mut weights: Vec<(String, u16)> = Vec::new();
    let mut any = false;
    for value in request.get_all(ACCEPT_ENCODING) {
        any = true;
        let Ok(list) = value.to_str() else {
            continue;
        };
        for member in list.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            let mut parts = member.split(';').map(str::trim);
            let coding = parts.next().unwrap_or_default().to_ascii_lowercase();
            let weight = parts
                .find_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
                .map_or(Some(1000), q_value);
            if let Some(weight) = weight {
                weights.push((coding, weight));
            }
        }
    }
    if !any {
        return Some(Coding::Identity);
    }
    let weight_of = |token: &str| -> Option<u16> {
        let exact = weights.iter().find(|(c, _)| c == token).map(|(_, w)| *w);
        let star = weights.iter().find(|(c, _)| c == "*").map(|(_, w)| *w);
        exact.or(star)
    };
    let mut best: Option<(Coding, u16)> = None;
    for coding in offered.iter().copied().filter(|c| *c != Coding::Identity) {
        let weight = weight_of(coding.token()).unwrap_or(0);
        if weight > 0 && best.is_none_or(|(_, w)| weight > w) {
            best = Some((coding, weight));
        }
    }
    // Identity is acceptable unless refused outright (RFC 9110 §12.5.3).
    let identity = weight_of("identity").unwrap_or(1);
    match best {
        Some((coding, weight)) if weight >= identity => Some(coding),
        _ if identity > 0 => Some(Coding::Identity),
        best => best.map(|(coding, _)| coding),
    }
}

/// A q-value (RFC 9110 §12.4.2) in thousandths: `0`, `0.5`, `1`, `1.000`.
fn q_value(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths: u16 = format!("{fraction:0<3}").parse().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// Whether a response with `status`, `response` fields and `length` bytes of content (`None`
/// when it is not known before the end, as for a chunked response), to a request with
/// `request` fields, may be compressed by the edge: a complete `200` to a request without
/// `Range`, not coded already, without `no-transform`, at least [`MIN_COMPRESSIBLE`] bytes
/// when its length is known, of a textual type.
pub fn compressible(
    status: StatusCode,
    response: &HeaderMap,
    request: &HeaderMap,
    length: Option<usize>,
) -> bool {
    let coded = response
        .get_all(CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let transform_forbidden =
        response.contains_key(CACHE_CONTROL) && CacheControl::from_headers(response).no_transform;
    status == StatusCode::OK
        && !request.contains_key(RANGE)
        && !response.contains_key(CONTENT_RANGE)
        && !coded
        && !transform_forbidden
        && length.is_none_or(|length| length >= MIN_COMPRESSIBLE)
        && response
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(textual)
}

/// Adds `Accept-Encoding` to `Vary` unless it is there (RFC 9110 §12.5.5: the answer of a
/// response the edge may compress depends on it, coded or not).
pub fn vary_on_accept_encoding(headers: &mut HeaderMap) {
    let listed = headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|name| name.trim().eq_ignore_ascii_case("accept-encoding"));
    if !listed {
        headers.append(VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// Says that the content of a response with `headers` is coded with `coding`: its
/// `Content-Encoding`, and its entity tag made weak (RFC 9110 §8.8.3: a coded representation
/// is not the same bytes, so a strong tag cannot stand for both).
pub fn mark_coded(headers: &mut HeaderMap, coding: Coding) {
    headers.insert(CONTENT_ENCODING, HeaderValue::from_static(coding.token()));
    let Some(tag) = headers.get(ETAG) else {
        return;
    };
    if tag.as_bytes().starts_with(b"\"") {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(tag.as_bytes());
        if let Ok(weak) = HeaderValue::from_bytes(&weak) {
            headers.insert(ETAG, weak);
        }
    }
}

/// Whether a media type compresses well: text, JSON, XML, JavaScript, SVG, WebAssembly.
fn textual(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let (kind, subtype) = essence.split_once('/').unwrap_or((&essence, ""));
    kind == "text"
        || subtype.ends_with("+json")
        || subtype.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/json"
                | "application/javascript"
                | "application/xml"
                | "application/wasm"
                | "application/manifest+json"
                | "image/svg+xml"
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fields;

    const ALL: [Coding; 3] = [Coding::Brotli, Coding::Zstd, Coding::Gzip];

    fn accept(value: &'static str) -> Option<Coding> {
        preferred(&fields(&[("accept-encoding", value)]), &ALL)
    }

    #[test]
    fn rfc9110_12_5_3_the_coding_with_the_highest_weight_wins_ties_by_preference() {
        assert_eq!(accept("gzip, deflate, br"), Some(Coding::Brotli));
        assert_eq!(accept("gzip, zstd"), Some(Coding::Zstd));
        assert_eq!(accept("br;q=0.5, gzip"), Some(Coding::Gzip));
        assert_eq!(accept("BR;Q=1.0, gzip;q=0.999"), Some(Coding::Brotli));
        assert_eq!(accept("*"), Some(Coding::Brotli));
        assert_eq!(accept("*;q=0.1, gzip;q=0"), Some(Coding::Brotli));
        assert_eq!(accept("deflate"), Some(Coding::Identity));
        assert_eq!(accept(""), Some(Coding::Identity));
        assert_eq!(preferred(&HeaderMap::new(), &ALL), Some(Coding::Identity));
        assert_eq!(
            preferred(&fields(&[("accept-encoding", "br")]), &[Coding::Gzip]),
            Some(Coding::Identity)
        );
    }

    #[test]
    fn rfc9110_12_5_3_zero_weights_refuse_and_identity_can_be_refused() {
        assert_eq!(accept("gzip;q=0"), Some(Coding::Identity));
        assert_eq!(accept("gzip;q=0.5, identity;q=0.8"), Some(Coding::Identity));
        assert_eq!(accept("gzip;q=0.5, identity;q=0"), Some(Coding::Gzip));
        assert_eq!(accept("deflate, *;q=0"), None);
        assert_eq!(accept("identity;q=0"), None);
        // Invalid weights drop the member.
        assert_eq!(accept("br;q=2, gzip"), Some(Coding::Gzip));
        assert_eq!(accept("br;q=0.1234, gzip;q=0.5"), Some(Coding::Gzip));
    }

    #[test]
    fn rfc9110_12_5_3_only_whole_gets_and_heads_ask_for_a_coding() {
        let asks = |method: Method, list: &[(&str, &str)]| wanted(&method, &fields(list));
        let all = [("accept-encoding", "gzip, deflate, br, zstd")];
        assert_eq!(asks(Method::GET, &all), Some(Coding::Brotli));
        assert_eq!(asks(Method::HEAD, &all), Some(Coding::Brotli));
        assert_eq!(asks(Method::GET, &[]), Some(Coding::Identity));
        let refused = [("accept-encoding", "identity;q=0")];
        assert_eq!(asks(Method::GET, &refused), Some(Coding::Identity));
        let range = [("accept-encoding", "br"), ("range", "bytes=0-1")];
        assert_eq!(asks(Method::GET, &range), None);
        assert_eq!(asks(Method::POST, &all), None);
    }

    #[test]
    fn rfc9110_8_8_3_a_coded_answer_has_a_weak_tag_and_varies_on_accept_encoding() {
        let mut headers = fields(&[("etag", "\"v1\""), ("vary", "Origin")]);
        mark_coded(&mut headers, Coding::Zstd);
        vary_on_accept_encoding(&mut headers);
        vary_on_accept_encoding(&mut headers);
        assert_eq!(headers[CONTENT_ENCODING], "zstd");
        assert_eq!(headers[ETAG], "W/\"v1\"");
        let vary: Vec<_> = headers.get_all(VARY).iter().collect();
        assert_eq!(vary, ["Origin", "Accept-Encoding"]);
        let mut weak = fields(&[("etag", "W/\"v1\"")]);
        mark_coded(&mut weak, Coding::Gzip);
        assert_eq!(weak[ETAG], "W/\"v1\"");
    }

    #[test]
    fn rfc9110_7_7_only_complete_uncoded_textual_responses_without_no_transform_compress() {
        let text = [("content-type", "text/html; charset=utf-8")];
        assert!(compressible(
            StatusCode::OK,
            &fields(&text),
            &HeaderMap::new(),
            Some(2048)
        ));
        assert!(!compressible(
            StatusCode::OK,
            &fields(&text),
            &HeaderMap::new(),
            Some(100)
        ));
        assert!(!compressible(
            StatusCode::NOT_FOUND,
            &fields(&text),
            &HeaderMap::new(),
            Some(2048)
        ));
        let range = fields(&[("range", "bytes=0-10")]);
        assert!(!compressible(
            StatusCode::OK,
            &fields(&text),
            &range,
            Some(2048)
        ));
        // A length not known yet (chunked) may still be compressed.
        assert!(compressible(
            StatusCode::OK,
            &fields(&text),
            &HeaderMap::new(),
            None
        ));
        let coded = [("content-type", "text/html"), ("content-encoding", "gzip")];
        assert!(!compressible(
            StatusCode::OK,
            &fields(&coded),
            &HeaderMap::new(),
            Some(2048)
        ));
        let kept = [
            ("content-type", "text/html"),
            ("cache-control", "max-age=60, no-transform"),
        ];
        assert!(!compressible(
            StatusCode::OK,
            &fields(&kept),
            &HeaderMap::new(),
            Some(2048)
        ));
        for (kind, yes) in [
            ("application/json", true),
            ("application/vnd.api+json", true),
            ("image/svg+xml", true),
            ("image/png", false),
            ("application/octet-stream", false),
            ("video/mp4", false),
        ] {
            let headers = HeaderMap::from_iter([(CONTENT_TYPE, kind.parse().unwrap())]);
            assert_eq!(
                compressible(StatusCode::OK, &headers, &HeaderMap::new(), Some(4096)),
                yes,
                "{kind}"
            );
        }
    }
}
