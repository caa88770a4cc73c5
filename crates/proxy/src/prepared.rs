//! The client's request rewritten for upstreams, except for the endpoint: path rewrites,
//! hop-by-hop fields stripped, forwarding fields and the authority as upstreams read it, and the
//! route's field edits. Each attempt then makes its request from it.

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Uri, Version};

use crate::body::UpstreamBody;
use crate::config::UpstreamProtocol;
use crate::fields::{Added, AddedFields};
use crate::forwarding::add_forwarding;
use crate::hop_by_hop::{strip_hop_by_hop, Present};
use crate::peer::Peer;
use crate::routing::Route;
use crate::switch::Switch;

/// `authority` as sent to upstreams that read it in the URI, whose connections are pooled by
/// it: the host in lower case, without port (routing ignores both, and the client's own
/// authority is in `x-forwarded-host`), so that clients choosing case and port open no more
/// upstream connections. `None` if it has no host.
fn pool_authority(authority: &Authority) -> Option<Authority> {
    let host = authority.host();
    if host.is_empty() {
        return None;
    }
    if authority.port().is_none() && !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(authority.clone());
    }
    Authority::try_from(host.to_ascii_lowercase()).ok()
}

/// The client's request, rewritten for upstreams except for the endpoint: what each attempt
/// sends.
pub(crate) struct Prepared {
    pub(crate) method: Method,
    /// The `:protocol` of an extended CONNECT (RFC 8441) to the upstream.
    protocol: Option<hyper::ext::Protocol>,
    /// Where the 1xx responses the upstream sends go (`crate::informational`).
    informational: Option<hyper::ext::InformationalSender>,
    /// The authority the client asked for, where the upstream's URI names it (none: HTTP/1.0
    /// without Host, or an upstream that reads it in Host).
    pub(crate) authority: Option<Authority>,
    path_and_query: PathAndQuery,
    pub(crate) headers: HeaderMap,
    /// The fields the proxy adds to `headers`.
    pub(crate) added: AddedFields,
}

impl Prepared {
    /// Rewrites path and headers per `route`, keeping the client's forwarding headers if it is
    /// `trusted`, and the authority asked for if the upstream `sends_authority`.
    pub(crate) fn new(
        parts: http::request::Parts,
        route: &Route,
        peer: &Peer,
        switch: Option<&Switch>,
        trusted: bool,
        sends_authority: bool,
    ) -> Result<Prepared, http::Error> {
        let http::request::Parts {
            method,
            uri,
            mut headers,
            mut extensions,
            ..
        } = parts;
        let informational = extensions.remove::<hyper::ext::InformationalSender>();
        let path_and_query = match route.rewrite(uri.path(), uri.query()) {
            Some(path) => PathAndQuery::try_from(path)?,
            None => uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        };
        let mut present = Present::of(&headers);
        strip_hop_by_hop(&mut headers, &mut present);
        // Connections that may speak HTTP/2 are those that carry the authority in the URI.
        let (method, protocol) = match switch {
            Some(switch) => switch.upstream(method, &mut headers, sends_authority),
            None => (method, None),
        };
        // The authority routed on is the one forwarded: an absolute-form target's or HTTP/2's
        // `:authority` replaces Host (RFC 9112 §3.2.2); HTTP/1.1 upstreams read it in Host.
        let authority = match uri.authority() {
            _ if !sends_authority => None,
            Some(authority) => pool_authority(authority),
            None => headers
                .get(header::HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                .and_then(|authority| pool_authority(&authority)),
        };
        let mut added = AddedFields::default();
        if let Some(authority) = uri.authority() {
            if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
                if present.has(Added::Host) {
                    headers.remove(header::HOST);
                }
                added.set(Added::Host, value);
            }
        }
        let host = added
            .get(Added::Host)
            .or_else(|| headers.get(header::HOST))
            .filter(|h| !h.is_empty())
            .cloned();
        add_forwarding(&mut headers, present, &mut added, peer, host, trusted);
        if sends_authority {
            // The authority travels in the URI (`:authority`, or the Host hyper writes from it
            // on HTTP/1.1): a Host beside it could only disagree (RFC 9113 §8.3.1).
            if present.has(Added::Host) {
                headers.remove(header::HOST);
            }
            added.remove(&header::HOST);
        }
        for name in &route.request_remove {
            headers.remove(name);
            added.remove(name);
        }
        for (name, value) in &route.request_add {
            added.remove(name);
            headers.insert(name.clone(), value.clone());
        }
        Ok(Prepared {
            method,
            protocol,
            informational,
            authority,
            path_and_query,
            headers,
            added,
        })
    }

    /// The request of one attempt, with `authority` in its URI (origin form without one).
    pub(crate) fn request(
        &self,
        headers: HeaderMap,
        body: UpstreamBody,
        authority: Option<&Authority>,
        protocol: UpstreamProtocol,
    ) -> Result<Request<UpstreamBody>, http::Error> {
        let uri = match authority {
            Some(authority) => Uri::builder()
                .scheme("http")
                .authority(authority.clone())
                .path_and_query(self.path_and_query.clone())
                .build()?,
            None => Uri::from(self.path_and_query.clone()),
        };
        // Set part by part: a builder would move the request through each of its steps.
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = match protocol {
            UpstreamProtocol::Http1 => Version::HTTP_11,
            UpstreamProtocol::Http2 => Version::HTTP_2,
        };
        *request.headers_mut() = headers;
        if let Some(protocol) = &self.protocol {
            request.extensions_mut().insert(protocol.clone());
        }
        if let Some(sender) = &self.informational {
            request.extensions_mut().insert(sender.clone());
        }
        Ok(request)
    }
}
