//! The forwarding fields the proxy adds to each request (`X-Forwarded-For`, `-Proto`, `-Host`,
//! `Forwarded` per RFC 7239, and `X-Request-Id`): kept from a trusted client and extended,
//! replaced for any other.

use bytes::BytesMut;
use http::header::{HeaderMap, HeaderValue};

use crate::fields::{Added, AddedFields};
use crate::hop_by_hop::Present;
use crate::peer::Peer;

/// Sets the forwarding fields of a request from `peer` whose own fields are `headers` (holding
/// what `present` says) and whose authority is `host`: `x-request-id` when absent; and, from a
/// `trusted` client, appends it to `x-forwarded-for` and this hop's element to `Forwarded`, and
/// sets `x-forwarded-host` and `x-forwarded-proto` when absent, while from another client all
/// four are replaced (its address; this hop's element; the request's `host`, or none; this
/// listener's scheme). New values go into `added`; a client's field they replace leaves
/// `headers`.
pub fn add_forwarding(
    headers: &mut HeaderMap,
    present: Present,
    added: &mut AddedFields,
    peer: &Peer,
    host: Option<HeaderValue>,
    trusted: bool,
) {
    let element = forwarded_element(peer, host.as_ref());
    if trusted {
        for (field, value) in [
            (Added::XForwardedFor, peer.ip_value().clone()),
            (Added::Forwarded, element),
        ] {
            let value = match present.has(field) {
                true => match appended(headers, field, &value) {
                    Some(list) => list,
                    // Not a value (it cannot happen: both parts are): the client's stays.
                    None => continue,
                },
                false => value,
            };
            if present.has(field) {
                headers.remove(field.name());
            }
            added.set(field, value);
        }
        if !present.has(Added::XForwardedProto) {
            added.set(
                Added::XForwardedProto,
                HeaderValue::from_static(peer.scheme),
            );
        }
        if let Some(host) = host.filter(|_| !present.has(Added::XForwardedHost)) {
            added.set(Added::XForwardedHost, host);
        }
    } else {
        for field in [
            Added::XForwardedFor,
            Added::Forwarded,
            Added::XForwardedProto,
            Added::XForwardedHost,
        ] {
            if present.has(field) {
                headers.remove(field.name());
            }
        }
        added.set(Added::XForwardedFor, peer.ip_value().clone());
        added.set(Added::Forwarded, element);
        added.set(
            Added::XForwardedProto,
            HeaderValue::from_static(peer.scheme),
        );
        if let Some(host) = host {
            added.set(Added::XForwardedHost, host);
        }
    }
    if !present.has(Added::XRequestId) {
        added.set(Added::XRequestId, request_id());
    }
}

/// The list of `field` in `headers` (several lines of a header are one list, RFC 9110 §5.3: all
/// are kept, in order) with `client` appended, made in one allocation; `client` alone if it has
/// none.
fn appended(headers: &HeaderMap, field: Added, client: &HeaderValue) -> Option<HeaderValue> {
    const SEPARATOR: &[u8] = b", ";
    let earlier = headers.get_all(field.name());
    let (lines, length) = earlier
        .iter()
        .fold((0, 0), |(n, length), v| (n + 1, length + v.len()));
    if lines == 0 {
        return Some(client.clone());
    }
    let mut list = BytesMut::with_capacity(length + lines * SEPARATOR.len() + client.len());
    for value in earlier.iter().chain(std::iter::once(client)) {
        if !list.is_empty() {
            list.extend_from_slice(SEPARATOR);
        }
        list.extend_from_slice(value.as_bytes());
    }
    HeaderValue::from_maybe_shared(list.freeze()).ok()
}

/// This hop's `Forwarded` element (RFC 7239): the peer's `for=` and `proto=`, and `host=` the
/// request's authority (quoted: it may hold a `:`; [`crate::framing`] let no `"` or `\\` in).
fn forwarded_element(peer: &Peer, host: Option<&HeaderValue>) -> HeaderValue {
    let forwarded = peer.forwarded_value();
    let Some(host) = host else {
        return forwarded.clone();
    };
    let mut element = BytesMut::with_capacity(forwarded.len() + host.len() + 8);
    element.extend_from_slice(forwarded.as_bytes());
    element.extend_from_slice(b";host=\"");
    element.extend_from_slice(host.as_bytes());
    element.extend_from_slice(b"\"");
    HeaderValue::from_maybe_shared(element.freeze()).unwrap_or_else(|_| forwarded.clone())
}

/// A random 128-bit request id in hex.
fn request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    let random = fastrand::u128(..);
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = HEX[((random >> (i * 4)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::X_FORWARDED_FOR;

    #[test]
    fn the_client_is_appended_to_every_line_of_the_list() {
        let client = HeaderValue::from_static("10.0.0.9");
        let mut headers = HeaderMap::new();
        let field = Added::XForwardedFor;
        assert_eq!(appended(&headers, field, &client), Some(client.clone()));
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        assert_eq!(
            appended(&headers, field, &client).unwrap(),
            "1.1.1.1, 10.0.0.9"
        );
        headers.append(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("2.2.2.2, 3.3.3.3"),
        );
        assert_eq!(
            appended(&headers, field, &client).unwrap(),
            "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9"
        );
    }

    fn forwarded(client: &[(&str, &str)], trusted: bool) -> (HeaderMap, AddedFields) {
        let mut headers = HeaderMap::new();
        for (name, value) in client {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let peer = Peer::new("10.0.0.9:4000".parse().unwrap(), "https");
        let mut added = AddedFields::default();
        let present = Present::of(&headers);
        let host = Some(HeaderValue::from_static("shop.example.com"));
        add_forwarding(&mut headers, present, &mut added, &peer, host, trusted);
        (headers, added)
    }

    fn value(added: &AddedFields, field: Added) -> Option<&str> {
        added.get(field).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn an_untrusted_clients_forwarding_fields_are_replaced_and_its_request_id_kept() {
        let client = [
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-host", "evil"),
            ("x-request-id", "mine"),
            ("accept", "*/*"),
        ];
        let (headers, added) = forwarded(&client, false);
        let mut kept: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["accept", "x-request-id"]);
        assert_eq!(value(&added, Added::XForwardedFor), Some("10.0.0.9"));
        assert_eq!(
            value(&added, Added::Forwarded),
            Some("for=10.0.0.9;proto=https;host=\"shop.example.com\"")
        );
        assert_eq!(value(&added, Added::XForwardedProto), Some("https"));
        assert_eq!(
            value(&added, Added::XForwardedHost),
            Some("shop.example.com")
        );
        assert_eq!(value(&added, Added::XRequestId), None);
    }

    #[test]
    fn a_trusted_clients_lists_are_extended_and_its_other_fields_kept() {
        let client = [
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "http"),
        ];
        let (headers, added) = forwarded(&client, true);
        let kept: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(kept, ["x-forwarded-proto"]);
        assert_eq!(
            value(&added, Added::XForwardedFor),
            Some("1.1.1.1, 2.2.2.2, 10.0.0.9")
        );
        assert_eq!(value(&added, Added::XForwardedProto), None);
        assert_eq!(
            value(&added, Added::XForwardedHost),
            Some("shop.example.com")
        );
        assert_eq!(value(&added, Added::XRequestId).map(str::len), Some(32));
    }
}
