//! Partial content (RFC 9111 §3.3, §3.4): `206` responses of one range are stored, the
//! parts of one representation are combined when they share a strong validator, and a later
//! range request is answered from them only when every byte it asks for was stored.
//!
//! The edge asks for a whole representation when a range misses (`HEAD`/`Range` fill), so
//! parts are stored only of representations too large to be stored whole, whose ranges go
//! upstream as the client asked for them. A stored partial response is an [`Object`] of
//! status `206` whose fields hold one `Content-Range` per part (ascending, apart), and
//! whose content is the parts one after the other; it is kept under the key's
//! [`CacheKey::partial`](crate::CacheKey::partial), never answering a request for the whole.

use std::ops::Range;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{AGE, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG};
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::range::{self, RangeAnswer};
use crate::serve::Answer;
use crate::store::Object;

/// Most parts one stored partial response holds; a part beyond them replaces them.
pub const MAX_PARTS: usize = 64;

/// One range of a representation of `length` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The bytes it holds.
    pub range: Range<u64>,
    /// The representation's complete length.
    pub length: u64,
}

/// The part a `206` response with `headers` and `body_len` bytes of content carries, if it
/// may be stored: one `Content-Range: bytes first-last/length` with a known complete length
/// that `body_len` matches (not `multipart/byteranges`, not an unknown length).
pub fn part_of(status: StatusCode, headers: &HeaderMap, body_len: usize) -> Option<Part> {
    if status != StatusCode::PARTIAL_CONTENT || headers.get_all(CONTENT_RANGE).iter().count() != 1 {
        return None;
    }
    let part = parse(headers.get(CONTENT_RANGE)?.to_str().ok()?)?;
    (part.range.end - part.range.start == body_len as u64).then_some(part)
}

/// A `Content-Range` value `bytes first-last/length`, `first <= last < length`.
fn parse(value: &str) -> Option<Part> {
    let (unit, rest) = value.trim().split_once(' ')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let (range, length) = rest.trim().split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let number = |text: &str| -> Option<u64> {
        let text = text.trim();
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
    };
    let (first, last, length) = (number(first)?, number(last)?, number(length)?);
    (first <= last && last < length).then(|| Part {
        range: first..last + 1,
        length,
    })
}

/// The parts `object` holds, each with its content, if it is a stored partial response.
pub fn parts(object: &Object) -> Option<Vec<(Part, Bytes)>> {
    if object.status != StatusCode::PARTIAL_CONTENT {
        return None;
    }
    let mut offset = 0usize;
    let mut parts = Vec::new();
    for value in object.header_values(&CONTENT_RANGE) {
        let part = parse(value.to_str().ok()?)?;
        let size = usize::try_from(part.range.end - part.range.start).ok()?;
        let content = object.body.get(offset..offset.checked_add(size)?)?;
        parts.push((part, object.body.slice_ref(content)));
        offset += size;
    }
    (!parts.is_empty() && offset == object.body.len()).then_some(parts)
}

/// The strong entity tag of `headers`, if they have one.
fn strong_tag(headers: &HeaderMap) -> Option<&str> {
    let tag = headers.get(ETAG)?.to_str().ok()?.trim();
    tag.starts_with('"').then_some(tag)
}

/// The fields and content of a stored partial response holding `part` (its content `body`),
/// which came with `headers`, and — as §3.4 allows — the parts of `stored` when both have the
/// same strong entity tag and complete length: the new fields replace the stored ones.
/// Overlapping and touching parts are joined.
pub fn combine(
    stored: Option<&Object>,
    headers: &HeaderMap,
    part: Part,
    body: Bytes,
) -> (HeaderMap, Bytes) {
    let mut all = vec![(part.clone(), body)];
    let same = |held: &Object| {
        let tag = strong_tag(headers);
        tag.is_some()
            && held
                .header(&ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                == tag
    };
    if let Some(held) = stored.filter(|held| same(held)).and_then(parts) {
        all.extend(held.into_iter().filter(|(p, _)| p.length == part.length));
    }
    all.sort_by_key(|(p, _)| p.range.start);
    let mut joined: Vec<(Range<u64>, BytesMut)> = Vec::new();
    for (p, content) in all {
        match joined.last_mut() {
            Some((range, held)) if p.range.start <= range.end => {
                if p.range.end > range.end {
                    // Within `content`: p.range.start <= range.end < p.range.end.
                    let skip = (range.end - p.range.start) as usize;
                    held.extend_from_slice(&content[skip..]);
                    range.end = p.range.end;
                }
            }
            _ => joined.push((p.range, BytesMut::from(&content[..]))),
        }
    }
    if joined.len() > MAX_PARTS {
        joined.retain(|(range, _)| range.start <= part.range.start && part.range.end <= range.end);
    }
    let mut fields = headers.clone();
    fields.remove(CONTENT_RANGE);
    fields.remove(CONTENT_LENGTH);
    let mut content = BytesMut::new();
    for (range, held) in &joined {
        let value = range::content_range(Some(range), part.length);
        if let Ok(value) = HeaderValue::from_str(&value) {
            fields.append(CONTENT_RANGE, value);
        }
        content.extend_from_slice(held);
    }
    (fields, content.freeze())
}

/// The answer to a GET with `request` fields from `object`, a stored partial response whose
/// current age is `age`, if every byte the request asks for was stored (or none can be: a
/// `416`); `None` when the request asks for the whole representation, for bytes not stored,
/// or with conditions (`If-Range` aside) the origin is to answer. `boundary` makes the
/// separator of a multi-range answer.
pub fn answer(
    request: &HeaderMap,
    object: &Object,
    age: Duration,
    boundary: &dyn Fn() -> String,
) -> Option<Answer> {
    let conditional = [
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
    ];
    if conditional.iter().any(|name| request.contains_key(*name)) {
        return None;
    }
    let held = parts(object)?;
    let length = held.first()?.0.length;
    let mut headers = object.headers();
    headers.remove(CONTENT_RANGE);
    let cut = |wanted: &Range<u64>| {
        held.iter().find_map(|(part, content)| {
            let range = &part.range;
            (range.start <= wanted.start && wanted.end <= range.end).then(|| {
                let start = (wanted.start - range.start) as usize;
                content.slice(start..start + (wanted.end - wanted.start) as usize)
            })
        })
    };
    let (status, body) = match range::answer(request, &headers, length) {
        RangeAnswer::Full => return None,
        RangeAnswer::Single(wanted) => {
            let body = cut(&wanted)?;
            let value = range::content_range(Some(&wanted), length);
            headers.insert(CONTENT_RANGE, HeaderValue::from_str(&value).ok()?);
            (StatusCode::PARTIAL_CONTENT, body)
        }
        RangeAnswer::Multiple(wanted) => {
            let cuts: Option<Vec<_>> = wanted
                .into_iter()
                .map(|w| Some((w.clone(), cut(&w)?)))
                .collect();
            let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
            let content_type = content_type.map(str::to_owned);
            let (body, multipart_type) =
                range::byteranges(&cuts?, length, content_type.as_deref(), &boundary());
            headers.insert(CONTENT_TYPE, HeaderValue::from_str(&multipart_type).ok()?);
            (StatusCode::PARTIAL_CONTENT, body)
        }
        RangeAnswer::Unsatisfiable => {
            let value = range::content_range(None, length);
            headers.insert(CONTENT_RANGE, HeaderValue::from_str(&value).ok()?);
            (StatusCode::RANGE_NOT_SATISFIABLE, Bytes::new())
        }
    };
    headers.insert(AGE, HeaderValue::from(age.as_secs()));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    Some(Answer {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fields;
    use crate::{Timing, Variant};
    use std::time::SystemTime;

    const CONTENT: &[u8; 20] = b"abcdefghijklmnopqrst";

    /// The `206` of `range` of [`CONTENT`] with entity tag `tag`: its fields, part, content.
    fn piece(range: Range<u64>, tag: &'static str) -> (HeaderMap, Part, Bytes) {
        let value = range::content_range(Some(&range), 20);
        let mut headers = fields(&[("etag", tag), ("content-type", "text/plain")]);
        headers.insert(CONTENT_RANGE, value.parse().unwrap());
        let body = Bytes::copy_from_slice(&CONTENT[range.start as usize..range.end as usize]);
        let part = part_of(StatusCode::PARTIAL_CONTENT, &headers, body.len()).unwrap();
        (headers, part, body)
    }

    fn stored((headers, body): (HeaderMap, Bytes)) -> Object {
        let now = SystemTime::now();
        let timing = Timing::new(&headers, now, now);
        Object::new(
            StatusCode::PARTIAL_CONTENT,
            headers,
            body,
            timing,
            Duration::from_secs(60),
            Variant::default(),
            Vec::new(),
        )
    }

    fn ask(object: &Object, spec: &'static str) -> Option<Answer> {
        answer(&fields(&[("range", spec)]), object, Duration::ZERO, &|| {
            "B".into()
        })
    }

    #[test]
    fn rfc9111_3_3_only_a_single_part_of_known_length_is_stored() {
        let single = fields(&[("content-range", "bytes 0-4/20")]);
        let part = part_of(StatusCode::PARTIAL_CONTENT, &single, 5);
        assert_eq!(
            part,
            Some(Part {
                range: 0..5,
                length: 20
            })
        );
        assert_eq!(part_of(StatusCode::PARTIAL_CONTENT, &single, 4), None);
        assert_eq!(part_of(StatusCode::OK, &single, 5), None);
        for value in [
            "bytes 0-4/*",
            "bytes */20",
            "bytes 5-4/20",
            "bytes 0-20/20",
            "items 0-4/20",
        ] {
            let headers = fields(&[("content-range", value)]);
            assert_eq!(
                part_of(StatusCode::PARTIAL_CONTENT, &headers, 5),
                None,
                "{value}"
            );
        }
        let multipart = fields(&[("content-type", "multipart/byteranges; boundary=B")]);
        assert_eq!(part_of(StatusCode::PARTIAL_CONTENT, &multipart, 5), None);
    }

    #[test]
    fn rfc9111_3_3_a_stored_part_answers_only_ranges_within_it() {
        let (headers, part, body) = piece(5..10, "\"v\"");
        let object = stored(combine(None, &headers, part, body));
        let inside = ask(&object, "bytes=6-8").unwrap();
        assert_eq!(inside.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(&inside.body[..], b"ghi");
        assert_eq!(inside.headers[CONTENT_RANGE], "bytes 6-8/20");
        assert_eq!(inside.headers[CONTENT_LENGTH], "3");
        // Never a byte that was not stored, nor the whole.
        assert!(ask(&object, "bytes=8-12").is_none());
        assert!(ask(&object, "bytes=0-1").is_none());
        assert!(answer(&HeaderMap::new(), &object, Duration::ZERO, &|| "B".into()).is_none());
        let unsatisfiable = ask(&object, "bytes=30-").unwrap();
        assert_eq!(unsatisfiable.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(unsatisfiable.headers[CONTENT_RANGE], "bytes */20");
    }

    #[test]
    fn rfc9111_3_4_parts_with_the_same_strong_validator_are_combined() {
        let (headers, part, body) = piece(0..5, "\"v\"");
        let first = stored(combine(None, &headers, part, body));
        let (headers, part, body) = piece(3..8, "\"v\"");
        let joined = stored(combine(Some(&first), &headers, part, body));
        let (headers, part, body) = piece(15..20, "\"v\"");
        let both = stored(combine(Some(&joined), &headers, part, body));
        let held: Vec<_> = parts(&both)
            .unwrap()
            .into_iter()
            .map(|(p, c)| (p.range, c))
            .collect();
        assert_eq!(
            held,
            vec![
                (0..8, Bytes::from_static(b"abcdefgh")),
                (15..20, Bytes::from_static(b"pqrst"))
            ]
        );
        assert_eq!(&ask(&both, "bytes=2-6").unwrap().body[..], b"cdefg");
        let multipart = ask(&both, "bytes=0-1,18-19").unwrap();
        assert_eq!(
            multipart.headers[CONTENT_TYPE],
            "multipart/byteranges; boundary=B"
        );
        let text = String::from_utf8(multipart.body.to_vec()).unwrap();
        assert!(
            text.contains("bytes 0-1/20\r\n\r\nab") && text.contains("bytes 18-19/20\r\n\r\nst")
        );
        assert!(ask(&both, "bytes=7-15").is_none(), "8..15 was never stored");
    }

    #[test]
    fn rfc9111_3_4_parts_without_the_same_strong_validator_replace_each_other() {
        let (headers, part, body) = piece(0..5, "\"v\"");
        let first = stored(combine(None, &headers, part, body));
        for tag in ["\"w\"", "W/\"v\""] {
            let (headers, part, body) = piece(10..15, tag);
            let next = stored(combine(Some(&first), &headers, part, body));
            let held: Vec<_> = parts(&next)
                .unwrap()
                .into_iter()
                .map(|(p, _)| p.range)
                .collect();
            assert_eq!(held, vec![10..15], "{tag}");
            assert!(ask(&next, "bytes=0-1").is_none());
        }
    }

    #[test]
    fn a_conditional_range_request_goes_to_the_origin() {
        let (headers, part, body) = piece(0..5, "\"v\"");
        let object = stored(combine(None, &headers, part, body));
        let request = fields(&[("range", "bytes=0-1"), ("if-none-match", "\"v\"")]);
        assert!(answer(&request, &object, Duration::ZERO, &|| "B".into()).is_none());
        let if_range = fields(&[("range", "bytes=0-1"), ("if-range", "\"other\"")]);
        assert!(answer(&if_range, &object, Duration::ZERO, &|| "B".into()).is_none());
    }
}
