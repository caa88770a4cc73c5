//! The header fields of a request on its way to an upstream: the client's, rewritten, in a
//! header map, and beside it those the proxy adds (`Host` for a client that named the authority
//! elsewhere, the forwarding fields, a request id). Added fields stay out of the map: the proxy's
//! own HTTP/1.1 encoder writes them after the client's fields, so a request forwarded that way
//! costs no map insertion for them; a request that goes through hyper's clients has them merged
//! into its map first ([`AddedFields::merge_into`]). They are lent to each attempt, not moved
//! with it.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `x-forwarded-for`: the client addresses a request came through.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`: the scheme the client used.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `x-forwarded-host`: the authority the client asked for.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `x-request-id`: the request's id, made by the first proxy it reaches.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A field the proxy adds to the requests it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// `Host`.
    Host,
    /// `X-Forwarded-For`.
    XForwardedFor,
    /// `Forwarded` (RFC 7239).
    Forwarded,
    /// `X-Forwarded-Proto`.
    XForwardedProto,
    /// `X-Forwarded-Host`.
    XForwardedHost,
    /// `X-Request-Id`.
    XRequestId,
}

impl Added {
    /// Every added field, in the order they are written.
    pub const ALL: [Added; 6] = [
        Added::Host,
        Added::XForwardedFor,
        Added::Forwarded,
        Added::XForwardedProto,
        Added::XForwardedHost,
        Added::XRequestId,
    ];

    /// Its name.
    pub fn name(self) -> &'static HeaderName {
        match self {
            Added::Host => &header::HOST,
            Added::XForwardedFor => &X_FORWARDED_FOR,
            Added::Forwarded => &header::FORWARDED,
            Added::XForwardedProto => &X_FORWARDED_PROTO,
            Added::XForwardedHost => &X_FORWARDED_HOST,
            Added::XRequestId => &X_REQUEST_ID,
        }
    }

    /// The added field named `name`, if it is one.
    pub fn named(name: &str) -> Option<Added> {
        Added::ALL.into_iter().find(|added| added.name() == name)
    }

    /// The added field `name` is, if it is one (cheaper than [`Added::named`]: standard names
    /// compare as numbers).
    pub fn of(name: &HeaderName) -> Option<Added> {
        Added::ALL.into_iter().find(|added| added.name() == name)
    }
}

/// The fields the proxy adds to one request, each at most once. A field set here replaces any
/// the client sent of that name: whoever sets it removes the client's from the map.
#[derive(Debug, Clone, Default)]
pub struct AddedFields([Option<HeaderValue>; Added::ALL.len()]);

impl AddedFields {
    /// Sets `field` to `value`.
    pub fn set(&mut self, field: Added, value: HeaderValue) {
        self.0[field as usize] = Some(value);
    }

    /// The value of `field`, if set.
    pub fn get(&self, field: Added) -> Option<&HeaderValue> {
        self.0[field as usize].as_ref()
    }

    /// Unsets the field named `name`, if it is one of them.
    pub fn remove(&mut self, name: &HeaderName) {
        if let Some(field) = Added::of(name) {
            self.0[field as usize] = None;
        }
    }

    /// The fields set, in [`Added`] order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static HeaderName, &HeaderValue)> {
        Added::ALL
            .into_iter()
            .zip(&self.0)
            .filter_map(|(field, value)| Some((field.name(), value.as_ref()?)))
    }

    /// Puts the fields set into `headers`, each replacing any of its name there.
    pub fn merge_into(&self, headers: &mut HeaderMap) {
        for (name, value) in self.iter() {
            headers.insert(name, value.clone());
        }
    }
}

/// A request's fields as the upstream gets them, looked up by name: an added field, else the
/// client's.
#[derive(Clone, Copy)]
pub struct OutgoingFields<'a> {
    /// The client's fields (rewritten).
    pub headers: &'a HeaderMap,
    /// The fields the proxy adds, if any.
    pub added: Option<&'a AddedFields>,
}

impl<'a> OutgoingFields<'a> {
    /// The (first) value of the field named `name`.
    pub fn get(&self, name: &str) -> Option<&'a HeaderValue> {
        let added = self
            .added
            .zip(Added::named(name))
            .and_then(|(added, field)| added.get(field));
        added.or_else(|| self.headers.get(name))
    }
}

impl<'a> From<&'a HeaderMap> for OutgoingFields<'a> {
    fn from(headers: &'a HeaderMap) -> OutgoingFields<'a> {
        OutgoingFields {
            headers,
            added: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_fields_are_written_in_order_and_replace_the_clients_when_merged() {
        let mut added = AddedFields::default();
        added.set(Added::XRequestId, HeaderValue::from_static("id"));
        added.set(Added::Host, HeaderValue::from_static("shop"));
        added.set(Added::XForwardedFor, HeaderValue::from_static("10.0.0.1"));
        added.remove(&X_FORWARDED_FOR);
        added.remove(&header::ACCEPT);
        let names: Vec<&str> = added.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["host", "x-request-id"]);
        let mut headers = HeaderMap::new();
        headers.append(header::HOST, HeaderValue::from_static("client"));
        headers.append(header::HOST, HeaderValue::from_static("again"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let fields = OutgoingFields {
            headers: &headers,
            added: Some(&added),
        };
        assert_eq!(fields.get("host").unwrap(), "shop");
        assert_eq!(fields.get("accept").unwrap(), "*/*");
        assert!(fields.get("x-forwarded-for").is_none());
        added.merge_into(&mut headers);
        let host: Vec<_> = headers.get_all(header::HOST).iter().collect();
        assert_eq!(host, ["shop"]);
        assert_eq!(headers.get(&X_REQUEST_ID).unwrap(), "id");
    }
}
