//! Range requests answered from a stored complete response (RFC 9110 §14): one range as a
//! `206` with `Content-Range`, several as `multipart/byteranges`, none satisfiable as `416`;
//! a `Range` that is not understood, too long, or whose `If-Range` fails gets the whole
//! representation.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use http::HeaderMap;

use crate::date::http_date;

/// Most ranges one request may ask for; more get the whole representation.
pub const MAX_RANGES: usize = 16;

/// How to answer a request for a stored representation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The whole representation (`200`).
    Full,
    /// One range (`206`, `Content-Range: bytes first-last/length`).
    Single(Range<u64>),
    /// Several ranges, ascending and not overlapping (`206`, `multipart/byteranges`).
    Multiple(Vec<Range<u64>>),
    /// No range can be satisfied (`416`, `Content-Range: bytes */length`).
    Unsatisfiable,
}

/// The answer to `request` for a stored representation with `stored` fields and `length`
/// bytes.
pub fn answer(request: &HeaderMap, stored: &HeaderMap, length: u64) -> RangeAnswer {
    let Some(spec) = request.get(RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeAnswer::Full;
    };
    if request.contains_key(IF_RANGE) && !if_range_holds(request, stored) {
        return RangeAnswer::Full;
    }
    let Some(specs) = parse(spec) else {
        return RangeAnswer::Full;
    };
    let mut ranges: Vec<Range<u64>> = specs
        .into_iter()
        .filter_map(|(first, last)| resolve(first, last, length))
        .collect();
    if ranges.is_empty() {
        return RangeAnswer::Unsatisfiable;
    }
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    match merged.len() {
        1 => RangeAnswer::Single(merged.remove(0)),
        _ => RangeAnswer::Multiple(merged),
    }
}

/// `bytes=` followed by at most [`MAX_RANGES`] specs: `(Some(first), last)` or `(None,
/// Some(suffix length))`.
fn parse(spec: &str) -> Option<Vec<(Option<u64>, Option<u64>)>> {
    let (unit, list) = spec.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let specs: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if specs.is_empty() || specs.len() > MAX_RANGES {
        return None;
    }
    let number = |text: &str| -> Option<u64> {
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
    };
    specs
        .into_iter()
        .map(|spec| {
            let (first, last) = spec.split_once('-')?;
            match (first.trim(), last.trim()) {
                ("", suffix) => Some((None, Some(number(suffix)?))),
                (first, "") => Some((Some(number(first)?), None)),
                (first, last) => {
                    let (first, last) = (number(first)?, number(last)?);
                    (first <= last).then_some((Some(first), Some(last)))
                }
            }
        })
        .collect()
}

/// The bytes a spec selects of `length`, if it is satisfiable.
fn resolve(first: Option<u64>, last: Option<u64>, length: u64) -> Option<Range<u64>> {
    match (first, last) {
        (Some(first), last) if first < length => {
            Some(first..last.map_or(length, |l| l.saturating_add(1).min(length)))
        }
        (None, Some(suffix)) if suffix > 0 && length > 0 => {
            Some(length.saturating_sub(suffix)..length)
        }
        _ => None,
    }
}

/// Whether `If-Range` holds for the stored response (RFC 9110 §13.1.5): an entity tag
/// matches the stored one strongly, or a date equals the stored `Last-Modified`.
fn if_range_holds(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let Some(condition) = request.get(IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let condition = condition.trim();
    if condition.starts_with('"') || condition.starts_with("W/") {
        let stored = stored.get(ETAG).and_then(|v| v.to_str().ok());
        return !condition.starts_with("W/") && stored.is_some_and(|tag| tag.trim() == condition);
    }
    let requested = http_date(request, &IF_RANGE);
    requested.is_some() && requested == http_date(stored, &LAST_MODIFIED)
}

/// The `Content-Range` of `range` of `length` bytes (`*/length` for none).
pub fn content_range(range: Option<&Range<u64>>, length: u64) -> String {
    match range {
        Some(range) => format!("bytes {}-{}/{length}", range.start, range.end - 1),
        None => format!("bytes */{length}"),
    }
}

/// A `multipart/byteranges` body of `parts` (each a range of a representation of `length`
/// bytes, and its content) (RFC 9110 §14.6), each part with `content_type` if known,
/// separated by `boundary`; and its `Content-Type`.
pub fn byteranges(
    parts: &[(Range<u64>, Bytes)],
    length: u64,
    content_type: Option<&str>,
    boundary: &str,
) -> (Bytes, String) {
    let mut out = BytesMut::new();
    for (range, content) in parts {
        out.put_slice(format!("\r\n--{boundary}\r\n").as_bytes());
        if let Some(content_type) = content_type {
            out.put_slice(format!("content-type: {content_type}\r\n").as_bytes());
        }
        let header = format!(
            "content-range: {}\r\n\r\n",
            content_range(Some(range), length)
        );
        out.put_slice(header.as_bytes());
        out.put_slice(content);
    }
    out.put_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let content_type = format!("multipart/byteranges; boundary={boundary}");
    (out.freeze(), content_type)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fields;

    fn range(spec: &'static str) -> RangeAnswer {
        answer(&fields(&[("range", spec)]), &HeaderMap::new(), 100)
    }

    #[test]
    fn rfc9110_14_2_one_range_is_partial_content() {
        assert_eq!(range("bytes=0-9"), RangeAnswer::Single(0..10));
        assert_eq!(range("bytes=90-"), RangeAnswer::Single(90..100));
        assert_eq!(range("bytes=-5"), RangeAnswer::Single(95..100));
        assert_eq!(range("bytes=95-1000"), RangeAnswer::Single(95..100));
        assert_eq!(range("Bytes=-1000"), RangeAnswer::Single(0..100));
        assert_eq!(content_range(Some(&(0..10)), 100), "bytes 0-9/100");
    }

    #[test]
    fn rfc9110_14_6_several_ranges_are_multipart_coalesced_when_they_overlap() {
        assert_eq!(
            range("bytes=50-59, 0-9"),
            RangeAnswer::Multiple(vec![0..10, 50..60])
        );
        assert_eq!(range("bytes=0-9, 5-19"), RangeAnswer::Single(0..20));
        let parts = [
            (0..2, Bytes::from_static(b"01")),
            (8..10, Bytes::from_static(b"89")),
        ];
        let (multipart, content_type) = byteranges(&parts, 10, Some("text/plain"), "B");
        assert_eq!(content_type, "multipart/byteranges; boundary=B");
        assert_eq!(
            &multipart[..],
            b"\r\n--B\r\ncontent-type: text/plain\r\ncontent-range: bytes 0-1/10\r\n\r\n01\
              \r\n--B\r\ncontent-type: text/plain\r\ncontent-range: bytes 8-9/10\r\n\r\n89\
              \r\n--B--\r\n"
        );
    }

    #[test]
    fn rfc9110_15_5_17_no_satisfiable_range_is_416() {
        assert_eq!(range("bytes=100-"), RangeAnswer::Unsatisfiable);
        assert_eq!(range("bytes=-0"), RangeAnswer::Unsatisfiable);
        assert_eq!(content_range(None, 100), "bytes */100");
    }

    #[test]
    fn rfc9110_14_2_a_range_not_understood_gets_the_whole_representation() {
        for spec in ["items=0-1", "bytes=5-1", "bytes=a-b", "bytes=", "bytes 0-1"] {
            assert_eq!(range(spec), RangeAnswer::Full, "{spec}");
        }
        let many = (0..=MAX_RANGES)
            .map(|i| format!("{}-{}", i * 2, i * 2))
            .collect::<Vec<_>>()
            .join(",");
        let request = fields(&[("range", Box::leak(format!("bytes={many}").into_boxed_str()))]);
        assert_eq!(answer(&request, &HeaderMap::new(), 100), RangeAnswer::Full);
    }

    #[test]
    fn rfc9110_13_1_5_if_range_needs_a_strong_match() {
        let stored = fields(&[
            ("etag", "\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let ask = |condition: &'static str| {
            answer(
                &fields(&[("range", "bytes=0-0"), ("if-range", condition)]),
                &stored,
                10,
            )
        };
        assert_eq!(ask("\"v1\""), RangeAnswer::Single(0..1));
        assert_eq!(ask("W/\"v1\""), RangeAnswer::Full);
        assert_eq!(ask("\"v2\""), RangeAnswer::Full);
        assert_eq!(
            ask("Sun, 06 Nov 1994 08:49:37 GMT"),
            RangeAnswer::Single(0..1)
        );
        assert_eq!(ask("Mon, 07 Nov 1994 08:49:37 GMT"), RangeAnswer::Full);
    }
}
