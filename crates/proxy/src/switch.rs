//! Protocol switches through the proxy (WebSocket): asked by an HTTP/1.1 `Upgrade` (RFC 9110
//! §7.8) or an HTTP/2 extended CONNECT (RFC 8441), forwarded in the form the upstream
//! connection speaks, and the tunnel that joins both sides once the upstream agreed.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Version};
use hyper::ext::Protocol;

static SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");

/// A client's request to switch to another protocol.
pub struct Switch {
    /// The protocol (`websocket`).
    protocol: HeaderValue,
    /// Asked by an HTTP/2 extended CONNECT (else by an HTTP/1.1 `Upgrade`).
    connect: bool,
}

impl Switch {
    /// What `request` asks to switch to: an HTTP/1.1 request's `Upgrade` with
    /// `Connection: upgrade`, or an HTTP/2 CONNECT's `:protocol`.
    pub fn requested<B>(request: &Request<B>) -> Option<Switch> {
        match request.version() {
            Version::HTTP_11 => {
                let asks = request
                    .headers()
                    .get_all(header::CONNECTION)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
                let protocol = request.headers().get(header::UPGRADE).filter(|_| asks)?;
                Some(Switch {
                    protocol: protocol.clone(),
                    connect: false,
                })
            }
            Version::HTTP_2 if request.method() == Method::CONNECT => {
                let protocol = request.extensions().get::<Protocol>()?;
                Some(Switch {
                    protocol: HeaderValue::from_str(protocol.as_str()).ok()?,
                    connect: true,
                })
            }
            _ => None,
        }
    }

    /// Shapes the upstream request (its hop-by-hop headers already removed) and returns its
    /// method and `:protocol`: to a connection that may speak HTTP/2 (`upstream_h2`; the
    /// proxy's own mesh listeners do), an extended CONNECT; to an HTTP/1.1 one, a GET with
    /// `Upgrade` and `Connection: upgrade`, and for a WebSocket asked over HTTP/2 (whose client
    /// sends no key) a `Sec-WebSocket-Key` of the proxy's.
    pub fn upstream(
        &self,
        method: Method,
        headers: &mut HeaderMap,
        upstream_h2: bool,
    ) -> (Method, Option<Protocol>) {
        if upstream_h2 {
            let protocol = self.protocol.to_str().ok().map(Protocol::from);
            return (Method::CONNECT, protocol);
        }
        headers.insert(header::UPGRADE, self.protocol.clone());
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if self.connect {
            if self.protocol.as_bytes().eq_ignore_ascii_case(b"websocket")
                && !headers.contains_key(&SEC_WEBSOCKET_KEY)
            {
                headers.insert(SEC_WEBSOCKET_KEY.clone(), websocket_key());
            }
            return (Method::GET, None);
        }
        (method, None)
    }

    /// Whether the upstream's answer `status` agrees to switch: 101 over HTTP/1.1, a 2xx to an
    /// extended CONNECT over HTTP/2.
    pub fn agreed(&self, status: StatusCode, upstream_h2: bool) -> bool {
        if upstream_h2 {
            status.is_success()
        } else {
            status == StatusCode::SWITCHING_PROTOCOLS
        }
    }

    /// The status of the client's answer to an agreed switch, whose `headers` (hop-by-hop ones
    /// removed) it completes: `101` with `Upgrade` and `Connection: upgrade` to an HTTP/1.1
    /// client, `200` to an HTTP/2 one.
    pub fn answer(&self, headers: &mut HeaderMap) -> StatusCode {
        if self.connect {
            return StatusCode::OK;
        }
        headers.insert(header::UPGRADE, self.protocol.clone());
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        StatusCode::SWITCHING_PROTOCOLS
    }
}

/// A random `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455 §4.1), made directly in
/// the base64 alphabet (the 22nd digit carries the last byte's 2 high bits only).
fn websocket_key() -> HeaderValue {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut key = [b'='; 24];
    for digit in &mut key[..21] {
        *digit = ALPHABET[fastrand::usize(..64)];
    }
    key[21] = ALPHABET[fastrand::usize(..4) << 4];
    HeaderValue::from_bytes(&key).unwrap_or(HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}

/// Joins the client's and the upstream's switched connections and copies bytes both ways until
/// either side closes.
pub fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    (open, retiring, using): (
        crate::server::OpenGuard,
        crate::retire::Retiring,
        Option<crate::wake::Use>,
    ),
) {
    tokio::spawn(async move {
        // An instance that sleeps is in use while the connection is open.
        let _open = (open, using);
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut upstream = hyper_util::rt::TokioIo::new(upstream);
                let copied = tokio::select! {
                    copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => copied,
                    // Its listener was removed and its drain is over: both sides are closed.
                    () = retiring.closing() => Ok((0, 0)),
                };
                if let Err(e) = copied {
                    tracing::debug!(error = %e, "switched connection ended with an error");
                }
            }
            Err(e) => tracing::debug!(error = %e, "protocol switch failed"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_keys_are_16_bytes_in_base64() {
        for _ in 0..100 {
            let key = websocket_key();
            let key = key.to_str().unwrap();
            assert_eq!(key.len(), 24);
            assert!(key.ends_with("=="));
            assert!("AQgw".contains(&key[21..22]), "{key}");
        }
    }

    #[test]
    fn an_http2_websocket_becomes_an_http1_upgrade_and_back() {
        let mut request = Request::connect("http://shop/chat")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        request
            .extensions_mut()
            .insert(Protocol::from_static("websocket"));
        let switch = Switch::requested(&request).unwrap();
        let mut headers = HeaderMap::new();
        let (method, protocol) = switch.upstream(Method::CONNECT, &mut headers, false);
        assert_eq!(method, Method::GET);
        assert!(protocol.is_none());
        assert_eq!(headers[header::UPGRADE], "websocket");
        assert!(headers.contains_key(&SEC_WEBSOCKET_KEY));
        assert!(switch.agreed(StatusCode::SWITCHING_PROTOCOLS, false));
        assert_eq!(switch.answer(&mut HeaderMap::new()), StatusCode::OK);
    }

    #[test]
    fn an_http1_upgrade_becomes_an_extended_connect_and_back() {
        let request = Request::get("/chat")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        let switch = Switch::requested(&request).unwrap();
        let mut headers = HeaderMap::new();
        let (method, protocol) = switch.upstream(Method::GET, &mut headers, true);
        assert_eq!(method, Method::CONNECT);
        assert_eq!(protocol.unwrap().as_str(), "websocket");
        assert!(headers.is_empty());
        assert!(switch.agreed(StatusCode::OK, true));
        let mut answer = HeaderMap::new();
        assert_eq!(switch.answer(&mut answer), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(answer[header::CONNECTION], "upgrade");
    }
}
