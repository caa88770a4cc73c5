//! Cache directives (RFC 9111 §5.2): what a `Cache-Control` field (or a targeted field, see
//! [`crate::targeted`]) says, with the RFC's answers to what is odd in it — repeated
//! directives, invalid values, quoted forms.

use http::header::{HeaderName, CACHE_CONTROL};
use http::HeaderMap;

/// The largest delta-seconds kept (RFC 9111 §1.2.2): a larger or overflowing value is this.
pub const DELTA_SECONDS_MAX: u64 = 2_147_483_648;

/// What a `no-cache` or `private` directive covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldNames {
    /// The directive without argument: the whole response.
    All,
    /// The qualified form (`no-cache="Set-Cookie"`): only the fields listed.
    Only(Vec<HeaderName>),
}

/// The cache directives of one message, request or response. A directive given twice keeps
/// its first value (RFC 9111 §4.2.1 allows the first occurrence or staleness; the first lets
/// a response say `max-age=60, max-age=60` without losing its freshness). A delta-seconds
/// that is not one (`max-age=a1`, `max-age=1.5`) counts as 0: the RFC encourages treating
/// invalid freshness information as stale (§4.2.1). A directive malformed around its `=`
/// (`max-age =60`) and unknown directives are ignored (§5.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `max-age`: seconds the response is fresh for (response), or the oldest the client
    /// accepts (request).
    pub max_age: Option<u64>,
    /// `s-maxage` (response): `max-age` for shared caches; implies `proxy-revalidate`.
    pub s_maxage: Option<u64>,
    /// `max-stale` (request): how stale a response the client accepts; without a value, any
    /// ([`u64::MAX`]).
    pub max_stale: Option<u64>,
    /// `min-fresh` (request): the response must stay fresh for this much longer.
    pub min_fresh: Option<u64>,
    /// `stale-while-revalidate` (RFC 5861 §3): seconds a stale response may be served while
    /// it is revalidated in the background.
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error` (RFC 5861 §4): seconds a stale response may be served when the origin
    /// fails.
    pub stale_if_error: Option<u64>,
    /// `no-cache`: validate before every reuse (whole response), or do not reuse the listed
    /// fields without validation.
    pub no_cache: Option<FieldNames>,
    /// `private` (response): for one user only; a shared cache stores none of it, or not the
    /// listed fields.
    pub private: Option<FieldNames>,
    /// `no-store`: do not store the request or response.
    pub no_store: bool,
    /// `public` (response): storable even where it would not be by default.
    pub public: bool,
    /// `must-revalidate` (response): never serve stale.
    pub must_revalidate: bool,
    /// `proxy-revalidate` (response): never serve stale from a shared cache.
    pub proxy_revalidate: bool,
    /// `must-understand` (response): store only if the status code is understood; then it
    /// overrides `no-store`.
    pub must_understand: bool,
    /// `only-if-cached` (request): answer from the cache or with 504.
    pub only_if_cached: bool,
    /// `no-transform`: intermediaries must not transform the content.
    pub no_transform: bool,
    /// `immutable` (RFC 8246): the response will not change while fresh.
    pub immutable: bool,
}

impl CacheControl {
    /// The directives of every `Cache-Control` field line of `headers`.
    pub fn from_headers(headers: &HeaderMap) -> CacheControl {
        let mut directives = CacheControl::default();
        for line in headers.get_all(CACHE_CONTROL) {
            for_each_directive(line.as_bytes(), &mut |name, argument| {
                directives.apply(name, argument)
            });
        }
        directives
    }

    /// Whether no directive was given.
    pub fn is_empty(&self) -> bool {
        *self == CacheControl::default()
    }

    /// Records directive `name` (any case) with its argument, if it had one.
    pub(crate) fn apply(&mut self, name: &str, argument: Option<&str>) {
        let delta = || argument.map_or(0, delta_seconds);
        let first = |slot: &mut Option<u64>, value: u64| {
            slot.get_or_insert(value);
        };
        match name.to_ascii_lowercase().as_str() {
            "max-age" => first(&mut self.max_age, delta()),
            "s-maxage" => first(&mut self.s_maxage, delta()),
            "min-fresh" => first(&mut self.min_fresh, delta()),
            "stale-while-revalidate" => first(&mut self.stale_while_revalidate, delta()),
            "stale-if-error" => first(&mut self.stale_if_error, delta()),
            "max-stale" => first(
                &mut self.max_stale,
                argument.map_or(u64::MAX, delta_seconds),
            ),
            "no-cache" => merge_names(&mut self.no_cache, argument),
            "private" => merge_names(&mut self.private, argument),
            "no-store" => self.no_store = true,
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "must-understand" => self.must_understand = true,
            "only-if-cached" => self.only_if_cached = true,
            "no-transform" => self.no_transform = true,
            "immutable" => self.immutable = true,
            _ => {}
        }
    }
}

/// A delta-seconds value (RFC 9111 §1.2.2): digits only, capped at [`DELTA_SECONDS_MAX`];
/// anything else is 0 (stale).
fn delta_seconds(text: &str) -> u64 {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    text.parse::<u64>()
        .unwrap_or(DELTA_SECONDS_MAX)
        .min(DELTA_SECONDS_MAX)
}

/// Adds a `no-cache` or `private` occurrence: without argument it covers everything; with
/// one, the fields listed (an argument that lists no valid field name covers everything —
/// the restrictive reading).
fn merge_names(slot: &mut Option<FieldNames>, argument: Option<&str>) {
    let listed: Vec<HeaderName> = argument
        .into_iter()
        .flat_map(|list| list.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    *slot = match (slot.take(), listed.is_empty()) {
        (Some(FieldNames::All), _) | (_, true) => Some(FieldNames::All),
        (Some(FieldNames::Only(mut names)), false) => {
            names.extend(listed);
            Some(FieldNames::Only(names))
        }
        (None, false) => Some(FieldNames::Only(listed)),
    };
}

/// Calls `each` with every well-formed directive of one field line: its name and its
/// argument (token or quoted-string, unescaped). Commas inside a quoted string do not end a
/// directive; a malformed directive is skipped up to the next comma.
fn for_each_directive(line: &[u8], each: &mut dyn FnMut(&str, Option<&str>)) {
    let mut at = 0;
    while at < line.len() {
        while at < line.len() && matches!(line[at], b' ' | b'\t' | b',') {
            at += 1;
        }
        let start = at;
        while at < line.len() && is_tchar(line[at]) {
            at += 1;
        }
        let name = &line[start..at];
        let mut argument = None;
        let mut well_formed = !name.is_empty();
        if well_formed && line.get(at) == Some(&b'=') {
            at += 1;
            match parse_argument(line, &mut at) {
                Some(value) => argument = Some(value),
                None => well_formed = false,
            }
        }
        while at < line.len() && matches!(line[at], b' ' | b'\t') {
            at += 1;
        }
        if at < line.len() && line[at] != b',' {
            well_formed = false;
            skip_to_comma(line, &mut at);
        }
        if well_formed {
            // A token is ASCII by construction.
            let name = String::from_utf8_lossy(name);
            each(&name, argument.as_deref());
        }
    }
}

/// Parses a token or a quoted-string at `at`; `None` when it is neither (empty, unterminated).
fn parse_argument(line: &[u8], at: &mut usize) -> Option<String> {
    if line.get(*at) == Some(&b'"') {
        *at += 1;
        let mut value = Vec::new();
        while let Some(&byte) = line.get(*at) {
            *at += 1;
            match byte {
                b'"' => return Some(String::from_utf8_lossy(&value).into_owned()),
                b'\\' => {
                    value.push(*line.get(*at)?);
                    *at += 1;
                }
                _ => value.push(byte),
            }
        }
        return None;
    }
    let start = *at;
    while *at < line.len() && is_tchar(line[*at]) {
        *at += 1;
    }
    (*at > start).then(|| String::from_utf8_lossy(&line[start..*at]).into_owned())
}

/// Moves `at` to the next comma that is not inside a quoted string (or the end).
fn skip_to_comma(line: &[u8], at: &mut usize) {
    let mut quoted = false;
    while *at < line.len() {
        match line[*at] {
            b'"' => quoted = !quoted,
            b'\\' if quoted => *at += 1,
            b',' if !quoted => return,
            _ => {}
        }
        *at += 1;
    }
}

/// A token character (RFC 9110 §5.6.2).
pub(crate) fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> CacheControl {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(CACHE_CONTROL, line.parse().unwrap());
        }
        CacheControl::from_headers(&headers)
    }

    #[test]
    fn rfc9111_5_2_directives_are_case_insensitive_with_token_or_quoted_arguments() {
        let cc = parse(&["Max-Age=60, S-MAXAGE=\"120\", public", "must-revalidate"]);
        assert_eq!(cc.max_age, Some(60));
        assert_eq!(cc.s_maxage, Some(120));
        assert!(cc.public && cc.must_revalidate);
        assert_eq!(parse(&["max-age=003600"]).max_age, Some(3600));
        assert_eq!(parse(&["max-stale"]).max_stale, Some(u64::MAX));
        assert_eq!(parse(&["max-stale=5"]).max_stale, Some(5));
    }

    #[test]
    fn rfc9111_5_2_a_quoted_string_hides_what_looks_like_directives() {
        let cc = parse(&["extension=\"max-age=3600, public\", max-age=1"]);
        assert_eq!(cc.max_age, Some(1));
        assert!(!cc.public);
        let cc = parse(&["max-age=1, extension=\"a\\\"b, max-age=3600\""]);
        assert_eq!(cc.max_age, Some(1));
    }

    #[test]
    fn rfc9111_4_2_1_a_repeated_directive_keeps_its_first_value() {
        assert_eq!(parse(&["max-age=1800, max-age=1"]).max_age, Some(1800));
        assert_eq!(parse(&["max-age=1800", "max-age=1"]).max_age, Some(1800));
        assert_eq!(parse(&["max-age=1", "max-age=1800"]).max_age, Some(1));
    }

    #[test]
    fn rfc9111_4_2_1_invalid_freshness_counts_as_stale() {
        for value in ["a3600", "3600a", "3600.0", "-1", "'3600'", ""] {
            let cc = parse(&[&format!("max-age={value}")]);
            assert_eq!(cc.max_age.unwrap_or(0), 0, "{value}");
        }
        // Malformed around the `=`: ignored (no freshness from it).
        assert_eq!(parse(&["max-age =3600"]).max_age, None);
        assert_eq!(parse(&["max-age= 3600"]).max_age, None);
        // The next directive still counts.
        assert!(parse(&["max-age =3600, no-store"]).no_store);
    }

    #[test]
    fn rfc9111_1_2_2_delta_seconds_overflow_is_capped() {
        let cc = parse(&["max-age=99999999999999999999999"]);
        assert_eq!(cc.max_age, Some(DELTA_SECONDS_MAX));
    }

    #[test]
    fn rfc9111_5_2_2_4_no_cache_and_private_take_lists_of_field_names() {
        let cc = parse(&["no-cache=\"Set-Cookie, x-a\", private=x-b"]);
        assert_eq!(
            cc.no_cache,
            Some(FieldNames::Only(vec![
                HeaderName::from_static("set-cookie"),
                HeaderName::from_static("x-a")
            ]))
        );
        assert_eq!(
            cc.private,
            Some(FieldNames::Only(vec![HeaderName::from_static("x-b")]))
        );
        // Unqualified anywhere wins: the most restrictive directive is honoured.
        assert_eq!(
            parse(&["no-cache=\"x-a\"", "no-cache"]).no_cache,
            Some(FieldNames::All)
        );
        assert_eq!(parse(&["private=\"\""]).private, Some(FieldNames::All));
    }
}
