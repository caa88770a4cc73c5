//! W3C Trace Context (https://www.w3.org/TR/trace-context/): `traceparent` parsed strictly and
//! written, `tracestate` checked and bounded. Pure: no I/O, nothing kept between requests. A
//! field that breaks the rules is treated as absent; nothing here can panic on a client's bytes.

use http::header::{HeaderMap, HeaderValue};

/// `traceparent`.
pub(crate) static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
/// `tracestate`.
pub(crate) static TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// Most bytes of `tracestate` passed on (the spec asks for at least 512 to be propagated).
pub(crate) const TRACESTATE_MAX_BYTES: usize = 512;
/// Most list members of `tracestate` (the spec's limit).
const TRACESTATE_MAX_MEMBERS: usize = 32;
/// A member longer than this goes first when `tracestate` is over [`TRACESTATE_MAX_BYTES`].
const TRACESTATE_LONG_MEMBER: usize = 128;
/// Length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;
/// Bit of `trace-flags` that says the caller recorded (sampled) its part of the trace.
pub(crate) const SAMPLED: u8 = 0x01;

/// The caller's position in a trace, as its `traceparent` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parent {
    /// The trace's id (never all zeros).
    pub(crate) trace_id: [u8; 16],
    /// The caller's span id (never all zeros).
    pub(crate) span_id: [u8; 8],
    /// The caller's trace flags.
    pub(crate) flags: u8,
}

impl Parent {
    /// Whether the caller sampled the trace.
    pub(crate) fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

/// The parent `headers` name: exactly one `traceparent` field, valid per the spec (a version
/// above 00 is read as 00 where it can be); `None` otherwise.
pub(crate) fn parent(headers: &HeaderMap) -> Option<Parent> {
    let mut values = headers.get_all(&TRACEPARENT).iter();
    let value = values.next()?;
    if values.next().is_some() {
        // Two fields cannot be told apart: neither is believed.
        return None;
    }
    parse_traceparent(value.as_bytes())
}

/// Parses one `traceparent` value.
pub(crate) fn parse_traceparent(text: &[u8]) -> Option<Parent> {
    if text.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = hex_byte(&text[0..2])?;
    if version == 0xff {
        return None;
    }
    // Version 00 is exactly 55 bytes; a later version may add fields after a `-`.
    match (version, text.len()) {
        (0, TRACEPARENT_LEN) => {}
        (0, _) => return None,
        (_, TRACEPARENT_LEN) => {}
        (_, _) if text[TRACEPARENT_LEN] == b'-' => {}
        _ => return None,
    }
    if text[2] != b'-' || text[35] != b'-' || text[52] != b'-' {
        return None;
    }
    let trace_id: [u8; 16] = hex_bytes(&text[3..35])?;
    let span_id: [u8; 8] = hex_bytes(&text[36..52])?;
    let flags = hex_byte(&text[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    // Flags a later version defines mean nothing to a version-00 reader.
    let flags = if version == 0 { flags } else { flags & SAMPLED };
    Some(Parent {
        trace_id,
        span_id,
        flags,
    })
}

/// The `traceparent` value (version 00) for `trace_id`, `span_id` and `flags`.
pub(crate) fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> HeaderValue {
    let mut text = [0u8; TRACEPARENT_LEN];
    text[..3].copy_from_slice(b"00-");
    write_hex(trace_id, &mut text[3..35]);
    text[35] = b'-';
    write_hex(span_id, &mut text[36..52]);
    text[52] = b'-';
    write_hex(&[flags], &mut text[53..55]);
    // Every byte is a hex digit or a dash: always a valid value.
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The `tracestate` to pass on from `headers` (several fields are one list): `None` when
/// there is none, or it breaks the spec's grammar or has more than 32 members; when it is over
/// [`TRACESTATE_MAX_BYTES`], members longer than 128 bytes go first, then members from the
/// end, until it fits.
pub(crate) fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let fields = headers.get_all(&TRACESTATE);
    let mut fields_iter = fields.iter();
    let first = fields_iter.next()?;
    let single = fields_iter.next().is_none();
    let mut members: Vec<&[u8]> = Vec::new();
    for field in fields.iter() {
        for member in field.as_bytes().split(|b| *b == b',') {
            let member = trim_ows(member);
            if member.is_empty() {
                continue;
            }
            if !valid_member(member) || members.len() == TRACESTATE_MAX_MEMBERS {
                return None;
            }
            members.push(member);
        }
    }
    if members.is_empty() {
        return None;
    }
    let joined = |members: &[&[u8]]| -> usize {
        members.iter().map(|m| m.len()).sum::<usize>() + members.len().saturating_sub(1)
    };
    if single && first.len() <= TRACESTATE_MAX_BYTES {
        return Some(first.clone());
    }
    if joined(&members) > TRACESTATE_MAX_BYTES {
        members.retain(|m| m.len() <= TRACESTATE_LONG_MEMBER);
    }
    while joined(&members) > TRACESTATE_MAX_BYTES {
        members.pop();
    }
    if members.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&members.join(&b","[..])).ok()
}

/// Whether `member` is `key=value` per the spec's grammar.
fn valid_member(member: &[u8]) -> bool {
    let Some(at) = member.iter().position(|b| *b == b'=') else {
        return false;
    };
    valid_key(&member[..at]) && valid_value(&member[at + 1..])
}

/// `simple-key` or `tenant-id@system-id`.
fn valid_key(key: &[u8]) -> bool {
    let rest = |b: &u8| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/');
    match key.iter().position(|b| *b == b'@') {
        None => {
            (1..=256).contains(&key.len())
                && key[0].is_ascii_lowercase()
                && key[1..].iter().all(rest)
        }
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            (1..=241).contains(&tenant.len())
                && matches!(tenant[0], b'a'..=b'z' | b'0'..=b'9')
                && tenant[1..].iter().all(rest)
                && (1..=14).contains(&system.len())
                && system[0].is_ascii_lowercase()
                && system[1..].iter().all(rest)
        }
    }
}

/// 1 to 256 printable ASCII characters but `,` and `=`, not ending in a space.
fn valid_value(value: &[u8]) -> bool {
    (1..=256).contains(&value.len())
        && value
            .iter()
            .all(|b| matches!(b, 0x20..=0x2b | 0x2d..=0x3c | 0x3e..=0x7e))
        && value.last() != Some(&b' ')
}

/// `text` without leading and trailing spaces and tabs.
fn trim_ows(text: &[u8]) -> &[u8] {
    let start = text.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = text.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(start), Some(end)) => &text[start..=end],
        _ => &[],
    }
}

/// The value of a lowercase hex digit.
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Two lowercase hex digits as a byte.
fn hex_byte(text: &[u8]) -> Option<u8> {
    Some(hex_digit(text[0])? << 4 | hex_digit(text[1])?)
}

/// `2 * N` lowercase hex digits as `N` bytes.
fn hex_bytes<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        *byte = hex_byte(pair)?;
    }
    Some(bytes)
}

/// Writes `bytes` in lowercase hex into `out` (twice as long).
fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn parsed(text: &str) -> Option<Parent> {
        parse_traceparent(text.as_bytes())
    }

    #[test]
    fn the_specs_example_is_read_and_written_back() {
        let parent = parsed(VALID).unwrap();
        assert_eq!(
            parent.trace_id,
            [
                0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80,
                0x31, 0x9c
            ]
        );
        assert_eq!(
            parent.span_id,
            [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]
        );
        assert!(parent.sampled());
        let written = traceparent(&parent.trace_id, &parent.span_id, parent.flags);
        assert_eq!(written, VALID);
        let unsampled = parsed("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00");
        assert!(!unsampled.unwrap().sampled());
    }

    #[test]
    fn invalid_traceparents_are_absent() {
        for bad in [
            "",
            // Uppercase hex.
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-B7AD6B7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0A",
            // All-zero ids.
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            // Version ff, and a version that is not hex.
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "0g-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            // Version 00 with more after it, or too short, or a field too short.
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-011",
            // Wrong separators, signs, spaces.
            "00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01",
            "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            " 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 ",
            // A later version followed by something else than a dash.
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
        ] {
            assert_eq!(parsed(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_as_00_where_it_can_be() {
        let future =
            "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03-what-the-future-holds";
        let parent = parsed(future).unwrap();
        // Flags it does not know are not carried on.
        assert_eq!(parent.flags, SAMPLED);
        assert!(parsed(&future[..TRACEPARENT_LEN]).is_some());
    }

    #[test]
    fn two_traceparent_fields_are_none() {
        let mut headers = HeaderMap::new();
        assert_eq!(parent(&headers), None);
        headers.append(&TRACEPARENT, HeaderValue::from_static(VALID));
        assert!(parent(&headers).is_some());
        headers.append(&TRACEPARENT, HeaderValue::from_static(VALID));
        assert_eq!(parent(&headers), None);
    }

    fn state(fields: &[&str]) -> Option<String> {
        let mut headers = HeaderMap::new();
        for field in fields {
            headers.append(&TRACESTATE, HeaderValue::from_str(field).unwrap());
        }
        tracestate(&headers).map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn tracestate_is_passed_on_as_it_is_when_valid() {
        let one = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
        assert_eq!(state(&[one]).as_deref(), Some(one));
        // Several fields are one list; blank members are left out.
        assert_eq!(
            state(&["rojo=1 ,, ", "fw529a3039@dt=x y"]).as_deref(),
            Some("rojo=1,fw529a3039@dt=x y")
        );
        assert_eq!(state(&[]), None);
        assert_eq!(state(&[" , "]), None);
    }

    #[test]
    fn an_invalid_tracestate_is_dropped() {
        for bad in [
            "Rojo=1",
            "rojo",
            "rojo=",
            "rojo=a,b",
            "rojo=a=b",
            "rojo=a\tb",
            "1abc=x",
            "t@toolongsystemid1=x",
            "@sys=x",
        ] {
            assert_eq!(state(&[bad]), None, "{bad:?}");
        }
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(state(&[&many.join(",")]), None);
        assert!(state(&[&many[..32].join(",")]).is_some());
    }

    #[test]
    fn a_long_tracestate_loses_long_members_then_the_last() {
        let long = format!("long={}", "v".repeat(200));
        let short: Vec<String> = (0..30).map(|i| format!("key{i:02}=value{i:02}")).collect();
        // 30 short members of 13 bytes: 419 bytes; with the long one, over 512.
        let mut fields = vec![long.clone()];
        fields.extend(short.iter().cloned());
        let kept = state(&[&fields.join(",")]).unwrap();
        assert_eq!(kept, short.join(","));
        let medium: Vec<String> = (0..30)
            .map(|i| format!("k{i:02}={}", "m".repeat(20)))
            .collect();
        let kept = state(&[&medium.join(",")]).unwrap();
        assert!(kept.len() <= TRACESTATE_MAX_BYTES);
        assert!(medium.join(",").starts_with(&kept));
        assert_eq!(kept.split(',').count(), 20);
    }
}
