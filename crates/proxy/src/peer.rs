//! The client of a connection, as the request path sees it: its address, how it connected,
//! the SPIFFE ID of its certificate, and the header values that name it, made once per
//! connection.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;
use meridian_identity::SpiffeId;

/// The client of a connection, with the header value that names it, made once per connection.
#[derive(Clone)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// Its IP address as a header value.
    ip: HeaderValue,
    /// This hop's `Forwarded` element but for the host: `for=<ip>;proto=<scheme>`.
    forwarded: HeaderValue,
    /// `http` or `https`: how the client reached the proxy.
    pub(crate) scheme: &'static str,
    /// The SPIFFE ID of its client certificate (mesh listeners), with its header value.
    identity: Option<Arc<(SpiffeId, HeaderValue)>>,
}

impl Peer {
    /// The peer at `addr`, connected over `scheme` (`http` or `https`).
    pub fn new(addr: SocketAddr, scheme: &'static str) -> Peer {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
        // RFC 7239 §6: an IPv6 address is bracketed, and then quoted (`:` is no token char).
        let node = match addr.ip() {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        let forwarded = HeaderValue::from_str(&format!("for={node};proto={scheme}"))
            .unwrap_or(HeaderValue::from_static("for=unknown"));
        Peer {
            addr,
            ip,
            forwarded,
            scheme,
            identity: None,
        }
    }

    /// The same peer, known by the SPIFFE ID of its certificate.
    pub fn with_identity(mut self, identity: Option<SpiffeId>) -> Peer {
        self.identity = identity.and_then(|id| {
            let header = crate::mesh::header_value(&id)?;
            Some(Arc::new((id, header)))
        });
        self
    }

    /// The peer's SPIFFE ID and its header value, if it presented a certificate.
    pub fn identity(&self) -> Option<(&SpiffeId, &HeaderValue)> {
        self.identity.as_deref().map(|(id, header)| (id, header))
    }

    /// Its IP address, as `X-Forwarded-For` names it.
    pub fn ip_value(&self) -> &HeaderValue {
        &self.ip
    }

    /// This hop's `Forwarded` element but for the host: `for=<ip>;proto=<scheme>`.
    pub fn forwarded_value(&self) -> &HeaderValue {
        &self.forwarded
    }
}
