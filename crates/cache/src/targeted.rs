//! Targeted cache-control fields (RFC 9213): which field governs a response at our edges.
//! `Meridian-Cache-Control` (only Meridian's edges obey it) wins over `CDN-Cache-Control`,
//! which wins over `Cache-Control` and `Expires`.

use http::header::HeaderName;
use http::HeaderMap;

use crate::directives::CacheControl;
use crate::structured::{parse_dictionary, Member};

/// `Meridian-Cache-Control`: cache directives for Meridian's edges only. The edge removes it
/// from the responses it sends.
pub const MERIDIAN_CACHE_CONTROL: HeaderName = HeaderName::from_static("meridian-cache-control");

/// `CDN-Cache-Control` (RFC 9213 §3): cache directives for CDNs.
pub const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// The field whose directives govern a response here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `Meridian-Cache-Control`.
    Meridian,
    /// `CDN-Cache-Control`.
    Cdn,
    /// `Cache-Control` (and `Expires`): no targeted field had a valid, non-empty value.
    CacheControl,
}

/// A response's caching policy at the edge: its governing directives and where they came
/// from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponsePolicy {
    /// The field the directives come from.
    pub source: Source,
    /// The directives.
    pub directives: CacheControl,
}

impl ResponsePolicy {
    /// The policy of a response with `headers` (RFC 9213 §2.1): the first targeted field in
    /// our target list (`Meridian-Cache-Control`, `CDN-Cache-Control`) whose value is a valid,
    /// non-empty Structured Field Dictionary; then `Cache-Control` and `Expires` are ignored.
    /// Without one, `Cache-Control`.
    pub fn of(headers: &HeaderMap) -> ResponsePolicy {
        for (source, name) in [
            (Source::Meridian, MERIDIAN_CACHE_CONTROL),
            (Source::Cdn, CDN_CACHE_CONTROL),
        ] {
            if let Some(directives) = targeted(headers, &name) {
                return ResponsePolicy { source, directives };
            }
        }
        ResponsePolicy {
            source: Source::CacheControl,
            directives: CacheControl::from_headers(headers),
        }
    }

    /// Whether `Expires` counts for freshness (only when `Cache-Control` governs).
    pub fn uses_expires(&self) -> bool {
        self.source == Source::CacheControl
    }
}

/// The directives of targeted field `name`, if its lines together are a valid, non-empty
/// dictionary whose directives have values of their types (RFC 9213 §2.1: an integer for
/// the delta-seconds ones, a boolean for the flags, a boolean or a string of field names for
/// `no-cache` and `private`; extensions any).
fn targeted(headers: &HeaderMap, name: &HeaderName) -> Option<CacheControl> {
    let lines: Vec<&str> = headers
        .get_all(name)
        .iter()
        .map(|value| value.to_str().ok())
        .collect::<Option<_>>()?;
    let members = parse_dictionary(&lines.join(", "))?;
    if members.is_empty() {
        return None;
    }
    let mut directives = CacheControl::default();
    for (key, member) in &members {
        let argument = match (kind(key), member) {
            (_, Member::False) => continue,
            (Kind::Delta, Member::Integer(seconds)) if !seconds.starts_with('-') => Some(seconds),
            (Kind::Flag | Kind::Names, Member::True) => None,
            (Kind::Names, Member::String(names)) => Some(names),
            (Kind::Extension, _) => continue,
            // A directive with a value of the wrong type: the field is invalid.
            _ => return None,
        };
        directives.apply(key, argument.map(String::as_str));
    }
    Some(directives)
}

/// What a directive's value must be.
enum Kind {
    /// A non-negative integer.
    Delta,
    /// True.
    Flag,
    /// True, or a string listing field names.
    Names,
    /// Not a directive this cache knows: anything.
    Extension,
}

fn kind(directive: &str) -> Kind {
    match directive {
        "max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error" => Kind::Delta,
        "no-store" | "public" | "must-revalidate" | "proxy-revalidate" | "must-understand"
        | "no-transform" | "immutable" => Kind::Flag,
        "no-cache" | "private" => Kind::Names,
        _ => Kind::Extension,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CACHE_CONTROL;

    fn headers(fields: &[(&HeaderName, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(*name, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn rfc9213_2_1_meridian_wins_over_cdn_which_wins_over_cache_control() {
        let all = headers(&[
            (&CACHE_CONTROL, "max-age=10"),
            (&CDN_CACHE_CONTROL, "max-age=20"),
            (&MERIDIAN_CACHE_CONTROL, "max-age=30"),
        ]);
        let policy = ResponsePolicy::of(&all);
        assert_eq!(policy.source, Source::Meridian);
        assert_eq!(policy.directives.max_age, Some(30));
        assert!(!policy.uses_expires());
        let cdn = headers(&[
            (&CACHE_CONTROL, "no-store"),
            (&CDN_CACHE_CONTROL, "max-age=20, stale-if-error=5"),
        ]);
        let policy = ResponsePolicy::of(&cdn);
        assert_eq!(policy.source, Source::Cdn);
        assert!(!policy.directives.no_store, "Cache-Control is ignored");
        assert_eq!(policy.directives.stale_if_error, Some(5));
        let plain = headers(&[(&CACHE_CONTROL, "max-age=10")]);
        assert_eq!(ResponsePolicy::of(&plain).source, Source::CacheControl);
        assert!(ResponsePolicy::of(&plain).uses_expires());
    }

    #[test]
    fn rfc9213_2_1_an_invalid_or_empty_targeted_field_is_ignored() {
        for invalid in ["Max-Age=20", "max-age=20,", ""] {
            let fields = headers(&[
                (&CACHE_CONTROL, "max-age=10"),
                (&CDN_CACHE_CONTROL, invalid),
            ]);
            let policy = ResponsePolicy::of(&fields);
            assert_eq!(policy.source, Source::CacheControl, "{invalid}");
            assert_eq!(policy.directives.max_age, Some(10));
        }
        // An invalid Meridian field falls back to a valid CDN one.
        let fields = headers(&[
            (&MERIDIAN_CACHE_CONTROL, "max-age=\"x"),
            (&CDN_CACHE_CONTROL, "no-store"),
        ]);
        assert_eq!(ResponsePolicy::of(&fields).source, Source::Cdn);
    }

    #[test]
    fn rfc9213_2_1_targeted_directives_read_like_cache_control() {
        let fields = headers(&[(
            &MERIDIAN_CACHE_CONTROL,
            "s-maxage=60, private=\"set-cookie\", must-revalidate=?1, no-store=?0",
        )]);
        let directives = ResponsePolicy::of(&fields).directives;
        assert_eq!(directives.s_maxage, Some(60));
        assert!(directives.must_revalidate);
        assert!(!directives.no_store);
        assert_eq!(
            directives.private,
            Some(crate::FieldNames::Only(vec![http::header::SET_COOKIE]))
        );
    }

    #[test]
    fn rfc9213_2_1_a_directive_of_the_wrong_type_invalidates_the_field() {
        for wrong in [
            "max-age=\"10000\"",
            "max-age=1.5",
            "max-age=-1",
            "no-store=1",
            "private=1",
        ] {
            let fields = headers(&[(&CACHE_CONTROL, "no-store"), (&CDN_CACHE_CONTROL, wrong)]);
            let policy = ResponsePolicy::of(&fields);
            assert_eq!(policy.source, Source::CacheControl, "{wrong}");
            assert!(policy.directives.no_store, "{wrong}");
        }
        // Unknown directives take anything.
        let fields = headers(&[(&CDN_CACHE_CONTROL, "foo=\"x\", bar=1.5, max-age=60")]);
        assert_eq!(ResponsePolicy::of(&fields).directives.max_age, Some(60));
    }
}
