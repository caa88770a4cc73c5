//! Hop-by-hop header fields (RFC 9110 §7.6.1), removed from every message the proxy forwards,
//! and the one pass over a message's field names that says which of the fields the proxy
//! treats specially it holds ([`Present`]).

use http::header::{self, HeaderMap, HeaderName};

use crate::fields::Added;

pub(crate) static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub(crate) static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The headers that are hop-by-hop whatever `Connection` names (`te` aside: see
/// [`strip_hop_by_hop`]), the first `Connection` itself. `Trailer` is not one (RFC 9110
/// §6.6.2): it is end to end, and HTTP/1.1 sends only the trailer fields it declares.
const HOP_BY_HOP: [&HeaderName; 5] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];
/// Where `Transfer-Encoding` is in [`HOP_BY_HOP`].
const TRANSFER_ENCODING_AT: usize = 3;
/// The bit of `te` in [`Present`], after those of [`HOP_BY_HOP`].
const TE_BIT: usize = HOP_BY_HOP.len();
/// The bit of the first [`Added`] field in [`Present`], after `te`'s.
const ADDED_BITS: usize = TE_BIT + 1;

/// Which hop-by-hop fields and which fields the proxy adds ([`Added`]) a message holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Present(u16);

impl Present {
    /// What `headers` holds, from one pass over its names (most messages hold few of these
    /// fields: a look-up each would hash every name).
    pub fn of(headers: &HeaderMap) -> Present {
        let mut present = Present::default();
        for name in headers.keys() {
            if let Some(bit) = bit_of(name) {
                present.0 |= 1 << bit;
            }
        }
        present
    }

    /// Whether the message holds the added field `field`.
    pub fn has(self, field: Added) -> bool {
        self.has_bit(ADDED_BITS + field as usize)
    }

    fn has_bit(self, bit: usize) -> bool {
        self.0 & (1 << bit) != 0
    }

    fn clear(&mut self, name: &HeaderName) {
        if let Some(bit) = bit_of(name) {
            self.0 &= !(1 << bit);
        }
    }
}

/// The bit of `name` in [`Present`], if it is one of the fields it tracks: one match on the
/// name's text, as most names are none of them.
fn bit_of(name: &HeaderName) -> Option<usize> {
    let added = |field: Added| Some(ADDED_BITS + field as usize);
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "transfer-encoding" => Some(TRANSFER_ENCODING_AT),
        "upgrade" => Some(4),
        "te" => Some(TE_BIT),
        "host" => added(Added::Host),
        "x-forwarded-for" => added(Added::XForwardedFor),
        "forwarded" => added(Added::Forwarded),
        "x-forwarded-proto" => added(Added::XForwardedProto),
        "x-forwarded-host" => added(Added::XForwardedHost),
        "x-request-id" => added(Added::XRequestId),
        _ => None,
    }
}

/// Leaves the end-to-end fields of a response head only: no hop-by-hop field, and no
/// `Content-Length` beside `Transfer-Encoding` (a chunked body's length is where its chunks end,
/// whatever a Content-Length beside it says, RFC 9112 §6.3; the length of the body sent on is
/// the next hop's to set).
pub fn strip_response(headers: &mut HeaderMap) {
    if strip_hop_by_hop(headers, &mut Present::of(headers)) {
        headers.remove(header::CONTENT_LENGTH);
    }
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the Connection header names,
/// from `headers`, which hold what `present` says; `present` then says what they hold after.
/// `te: trailers` survives: gRPC needs it end to end. A protocol switch being forwarded sets
/// its own again ([`crate::switch::Switch`]). Returns whether `Transfer-Encoding` was among
/// them.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, present: &mut Present) -> bool {
    // `Connection` (first in HOP_BY_HOP) may name others.
    if present.has_bit(0) && names_other_headers(headers) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            present.clear(&name);
            headers.remove(name);
        }
    }
    let chunked = present.has_bit(TRANSFER_ENCODING_AT);
    for (bit, name) in HOP_BY_HOP.iter().enumerate() {
        if present.has_bit(bit) {
            headers.remove(*name);
            present.clear(name);
        }
    }
    if present.has_bit(TE_BIT)
        && headers
            .get(header::TE)
            .is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
        present.clear(&header::TE);
    }
    chunked
}

/// Whether `Connection` may name a header to remove: anything but the `keep-alive` and `close`
/// options most messages carry, which name no header other than one removed anyway.
fn names_other_headers(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|value| {
        value.as_bytes().split(|b| *b == b',').any(|option| {
            let option = option.trim_ascii();
            !(option.eq_ignore_ascii_case(b"keep-alive") || option.eq_ignore_ascii_case(b"close"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(headers: &mut HeaderMap) -> (bool, Present) {
        let mut present = Present::of(headers);
        let chunked = strip_hop_by_hop(headers, &mut present);
        assert_eq!(present, Present::of(headers), "present after stripping");
        (chunked, present)
    }

    #[test]
    fn hop_by_hop_headers_go_and_te_trailers_stays() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert(header::TE, "trailers".parse().unwrap());
        headers.insert("x-kept", "1".parse().unwrap());
        assert!(!strip(&mut headers).0);
        let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["te", "x-kept"]);
        headers.insert(header::TE, "gzip".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        assert!(strip(&mut headers).0);
        assert_eq!(headers.keys().collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn connection_options_name_headers_only_when_they_are_not_keep_alive_or_close() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "Keep-Alive".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("x-kept", "1".parse().unwrap());
        assert!(!names_other_headers(&headers));
        strip(&mut headers);
        assert_eq!(headers.keys().collect::<Vec<_>>(), ["x-kept"]);
        for named in ["close, x-secret", "x-secret, Keep-Alive"] {
            headers.insert(header::CONNECTION, named.parse().unwrap());
            headers.insert("x-secret", "1".parse().unwrap());
            assert!(names_other_headers(&headers), "{named}");
            strip(&mut headers);
            assert_eq!(headers.keys().collect::<Vec<_>>(), ["x-kept"], "{named}");
        }
    }

    #[test]
    fn every_field_has_its_bit() {
        for (bit, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(bit_of(name), Some(bit), "{name}");
        }
        assert_eq!(bit_of(&header::TE), Some(TE_BIT));
        for field in Added::ALL {
            assert_eq!(bit_of(field.name()), Some(ADDED_BITS + field as usize));
        }
        assert_eq!(bit_of(&header::ACCEPT), None);
    }

    #[test]
    fn a_response_head_loses_hop_by_hop_fields_and_a_length_beside_chunks() {
        let mut chunked = HeaderMap::new();
        chunked.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        chunked.insert(header::CONTENT_LENGTH, "5".parse().unwrap());
        chunked.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        chunked.insert("x-kept", "1".parse().unwrap());
        strip_response(&mut chunked);
        let names: Vec<&str> = chunked.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        let mut sized = HeaderMap::new();
        sized.insert(header::CONTENT_LENGTH, "5".parse().unwrap());
        sized.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        strip_response(&mut sized);
        let names: Vec<&str> = sized.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-length"]);
    }

    #[test]
    fn an_added_field_that_connection_names_is_no_longer_present() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "x-forwarded-proto".parse().unwrap());
        headers.insert("x-forwarded-proto", "https".parse().unwrap());
        headers.insert("x-request-id", "1".parse().unwrap());
        let (_, present) = strip(&mut headers);
        assert!(!present.has(Added::XForwardedProto));
        assert!(present.has(Added::XRequestId));
        assert!(!present.has(Added::Host));
    }
}
