//! Raw HTTP against the proxy: requests whose target or framing is ambiguous are refused, the
//! authority the RFCs name is the one routed on and forwarded, and responses are framed as the
//! upstream meant them, or visibly broken off.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_proxy::{Proxy, ERROR_HEADER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The request heads an upstream received.
type Heads = Arc<Mutex<Vec<String>>>;

/// An upstream that reads each request head (and a body of the `content-length` it gives),
/// records the head, answers `answer` and closes the connection.
async fn raw_upstream(answer: &'static [u8]) -> (SocketAddr, Heads) {
    let heads = Heads::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = heads.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut received = Vec::new();
                let mut buf = [0u8; 4096];
                while !received.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => received.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&received).into_owned());
                let _ = stream.write_all(answer).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, heads)
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

/// A proxy routing `shop.example.com` to cluster `shop` and anything else to `other`, both of
/// `protocol` to `endpoint`.
async fn proxy(endpoint: SocketAddr, protocol: &str) -> (Arc<Proxy>, SocketAddr) {
    proxy_to(endpoint, endpoint, protocol).await
}

/// [`proxy`], with cluster `shop` at `shop` and `other` at `other`.
async fn proxy_to(shop: SocketAddr, other: SocketAddr, protocol: &str) -> (Arc<Proxy>, SocketAddr) {
    let text = format!(
        "listeners:
  - name: l
    address: 127.0.0.1:0
    virtual_hosts:
      - {{name: shop, domains: [shop.example.com], routes: [{{cluster: shop}}]}}
      - {{name: other, domains: ['*'], routes: [{{cluster: other}}]}}
clusters:
  - {{name: shop, protocol: {protocol}, endpoints: [{{address: '{shop}'}}]}}
  - {{name: other, protocol: {protocol}, endpoints: [{{address: '{other}'}}]}}
"
    );
    let proxy = Arc::new(Proxy::default());
    proxy.apply_text(&text).await.unwrap();
    let address = proxy.listeners().await[0].1;
    (proxy, address)
}

/// Sends `bytes` on a new connection; all the proxy answered until it closed (or 10 s).
async fn raw(address: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Asserts that `answer` is a 400 from the proxy for `reason`.
fn assert_refused(answer: &str, reason: &str) {
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains(&format!("{ERROR_HEADER}: {reason}")),
        "{answer}"
    );
}

/// An HTTP/2 GET of `uri` (with prior knowledge) with a `host` header for each of `hosts`.
async fn h2_get(
    address: SocketAddr,
    uri: &str,
    hosts: &[&str],
) -> http::Response<hyper::body::Incoming> {
    let stream = TcpStream::connect(address).await.unwrap();
    let mut request = http::Request::builder()
        .uri(uri)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    for host in hosts {
        request.headers_mut().append("host", host.parse().unwrap());
    }
    common::h2_send(stream, request).await
}

#[tokio::test]
async fn two_host_headers_are_refused_over_http1_and_http2() {
    let (upstream, heads) = raw_upstream(OK).await;
    let (_proxy, address) = proxy(upstream, "http1").await;
    let answer = raw(
        address,
        b"GET / HTTP/1.1\r\nhost: shop.example.com\r\nhost: admin.example.com\r\n\r\n",
    )
    .await;
    assert_refused(&answer, "duplicate_host");

    let response = h2_get(address, "/", &["shop.example.com", "admin.example.com"]).await;
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()[ERROR_HEADER], "duplicate_host");
    assert!(heads.lock().unwrap().is_empty(), "forwarded upstream");
}

#[tokio::test]
async fn a_missing_or_invalid_host_is_refused() {
    let (upstream, heads) = raw_upstream(OK).await;
    let (_proxy, address) = proxy(upstream, "http1").await;
    assert_refused(
        &raw(address, b"GET / HTTP/1.1\r\n\r\n").await,
        "missing_host",
    );
    for host in [
        "shop.example.com@evil.example.org",
        "shop.example.com:https",
        "a b",
    ] {
        let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n");
        assert_refused(&raw(address, request.as_bytes()).await, "invalid_host");
    }
    assert!(heads.lock().unwrap().is_empty(), "forwarded upstream");
    // HTTP/1.0 needs no Host.
    let answer = raw(address, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_body_framed_by_both_transfer_encoding_and_content_length_is_refused() {
    let (upstream, heads) = raw_upstream(OK).await;
    let (_proxy, address) = proxy(upstream, "http1").await;
    let answer = raw(
        address,
        b"POST / HTTP/1.1\r\nhost: shop.example.com\r\ntransfer-encoding: identity, chunked\r\ncontent-length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_refused(&answer, "unsupported_transfer_encoding");
    assert!(heads.lock().unwrap().is_empty(), "forwarded upstream");
    // Chunked alone is fine.
    let answer = raw(
        address,
        b"POST / HTTP/1.1\r\nhost: shop.example.com\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_response_with_content_length_and_chunked_is_read_as_chunked() {
    let (upstream, _) = raw_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\na\r\n0123456789\r\n0\r\n\r\n",
    )
    .await;
    let (_proxy, address) = proxy(upstream, "http1").await;
    let response = reqwest::Client::new()
        .get(format!("http://{address}/"))
        .header("host", "shop.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_ne!(
        response
            .headers()
            .get("content-length")
            .map(|v| v.to_str().unwrap()),
        Some("5"),
        "the upstream's content-length was forwarded"
    );
    assert_eq!(response.text().await.unwrap(), "0123456789");
}

#[tokio::test]
async fn a_response_shorter_than_its_content_length_is_broken_off_and_counted() {
    let (upstream, _) =
        raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\n01234")
            .await;
    let (proxy, address) = proxy(upstream, "http1").await;
    let answer = raw(
        address,
        b"GET / HTTP/1.1\r\nhost: shop.example.com\r\nconnection: close\r\n\r\n",
    )
    .await;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(head.contains("content-length: 10"), "{answer}");
    assert_eq!(
        body, "01234",
        "the client sees a body cut short of its length"
    );
    assert!(
        proxy
            .metrics_text()
            .contains(r#"meridian_proxy_upstream_body_errors_total{cluster="shop"} 1"#),
        "{}",
        proxy.metrics_text()
    );
}

#[tokio::test]
async fn the_target_authority_wins_over_host_and_is_forwarded() {
    let (shop, shop_heads) = raw_upstream(OK).await;
    let (other, other_heads) = raw_upstream(OK).await;
    let (_proxy, address) = proxy_to(shop, other, "http1").await;
    // HTTP/1.1 absolute form: the target's authority, not Host (RFC 9112 §3.2.2).
    let answer = raw(
        address,
        b"GET http://shop.example.com/cart HTTP/1.1\r\nhost: other.example.org\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // HTTP/2: :authority, not host (RFC 9113 §8.3.1).
    let response = h2_get(
        address,
        "http://shop.example.com/cart",
        &["other.example.org"],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(other_heads.lock().unwrap().is_empty(), "routed by Host");
    let heads = shop_heads.lock().unwrap();
    assert_eq!(heads.len(), 2);
    for head in heads.iter() {
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("get /cart http/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nhost: shop.example.com\r\n"), "{head}");
        assert!(!head.contains("other.example.org"), "{head}");
    }
}

/// The `:authority` and `host` headers of each request an upstream received.
type Authorities = Arc<Mutex<Vec<(String, Vec<String>)>>>;

/// An HTTP/2 (prior knowledge) upstream that records the `:authority` and `host` headers of
/// each request.
async fn h2_upstream() -> (SocketAddr, Authorities) {
    let seen = Authorities::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let record = record.clone();
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let authority = request
                        .uri()
                        .authority()
                        .map_or("", |a| a.as_str())
                        .to_owned();
                    let hosts = request
                        .headers()
                        .get_all("host")
                        .iter()
                        .map(|h| h.to_str().unwrap().to_owned())
                        .collect();
                    record.lock().unwrap().push((authority, hosts));
                    async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from("ok")),
                        ))
                    }
                });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn http2_clusters_get_the_clients_authority() {
    let (upstream, seen) = h2_upstream().await;
    let (_proxy, address) = proxy(upstream, "http2").await;
    for host in ["shop.example.com", "other.example.org:8080"] {
        let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        let answer = raw(address, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let seen = seen.lock().unwrap();
    // Routing ignores the port, and so does the authority sent on (it pools connections).
    for ((authority, hosts), want) in seen.iter().zip(["shop.example.com", "other.example.org"]) {
        assert_eq!(authority, want);
        assert!(
            hosts.iter().all(|h| h == want),
            "host {hosts:?} beside :authority {authority}"
        );
    }
    assert_eq!(seen.len(), 2);
}

/// The number of open connections from `proxy` to cluster `cluster`.
fn upstream_connections(proxy: &Proxy, cluster: &str) -> Option<u64> {
    let text = proxy.metrics_text();
    let prefix = format!("meridian_proxy_upstream_connections{{cluster=\"{cluster}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test]
async fn clients_choosing_port_and_case_of_host_share_one_http2_connection() {
    let (upstream, seen) = h2_upstream().await;
    let (proxy, address) = proxy(upstream, "http2").await;
    for i in 0..20 {
        let host = if i % 2 == 0 {
            format!("Shop.Example.COM:{}", i + 1)
        } else {
            format!("shop.example.com:{}", i + 1)
        };
        let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        let answer = raw(address, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert_eq!(upstream_connections(&proxy, "shop"), Some(1));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 20);
    assert!(
        seen.iter()
            .all(|(authority, _)| authority == "shop.example.com"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn many_hosts_of_a_wildcard_open_a_bounded_number_of_http2_connections() {
    let (upstream, seen) = h2_upstream().await;
    let (proxy, address) = proxy(upstream, "http2").await;
    for i in 0..40 {
        let request =
            format!("GET / HTTP/1.1\r\nhost: t{i}.example.org\r\nconnection: close\r\n\r\n");
        let answer = raw(address, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // The bound docs/proxy-config.md gives: 16 authorities per endpoint.
    let bound = 16;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while upstream_connections(&proxy, "other").is_none_or(|open| open > bound) {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?} connections open",
            upstream_connections(&proxy, "other")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Each request still carried its own authority.
    let seen = seen.lock().unwrap();
    assert!(seen
        .iter()
        .enumerate()
        .all(|(i, (authority, _))| authority == &format!("t{i}.example.org")));
}

#[tokio::test]
async fn an_empty_host_is_not_sent_beside_the_endpoints_authority() {
    let (upstream, seen) = h2_upstream().await;
    let (_proxy, address) = proxy(upstream, "http2").await;
    // An empty Host is what a client sends for a target without authority (RFC 9112 §3.2).
    let answer = raw(
        address,
        b"GET / HTTP/1.1\r\nhost: \r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let (authority, hosts) = &seen[0];
    assert_eq!(authority, &upstream.to_string());
    assert!(
        hosts.is_empty(),
        "host {hosts:?} beside :authority {authority}"
    );
}

#[tokio::test]
async fn requests_whose_length_is_in_doubt_are_refused_and_never_forwarded() {
    let (upstream, heads) = raw_upstream(OK).await;
    let (_proxy, address) = proxy(upstream, "http1").await;
    // Each is a request another party could frame differently (RFC 9112 §6.3, §5.2, §7.1).
    let smuggling: [(&str, &[u8]); 7] = [
        (
            "two different Content-Lengths",
            b"POST / HTTP/1.1\r\nhost: shop.example.com\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        ),
        (
            "a Content-Length list",
            b"POST / HTTP/1.1\r\nhost: shop.example.com\r\ncontent-length: 5, 6\r\n\r\nhello!",
        ),
        (
            "a chunk size that is not hex",
            b"POST / HTTP/1.1\r\nhost: shop.example.com\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "a chunk size that overflows",
            b"POST / HTTP/1.1\r\nhost: shop.example.com\r\ntransfer-encoding: chunked\r\n\r\n1ffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "a line folded onto the next (obs-fold)",
            b"POST / HTTP/1.1\r\nhost: shop.example.com\r\ncontent-length: 5\r\nx-note: a\r\n transfer-encoding: chunked\r\n\r\nhello",
        ),
        (
            "whitespace before a colon",
            b"POST / HTTP/1.1\r\nhost: shop.example.com\r\ncontent-length : 5\r\n\r\nhello",
        ),
        (
            "a transfer coding the proxy does not decode",
            b"POST / HTTP/1.1\r\nhost: shop.example.com\r\ntransfer-encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
    ];
    for (what, request) in smuggling {
        let answer = raw(address, request).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
    }
    assert!(
        heads.lock().unwrap().is_empty(),
        "forwarded: {:?}",
        heads.lock().unwrap()
    );
    // The proxy serves the next client.
    let answer = raw(
        address,
        b"GET / HTTP/1.1\r\nhost: shop.example.com\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_request_framed_by_chunked_and_content_length_is_forwarded_chunked_and_ends_its_connection(
) {
    let (upstream, heads) = raw_upstream(OK).await;
    let (_proxy, address) = proxy(upstream, "http1").await;
    // Read by Content-Length, the body would end after "5\r\nh" and "ello…" would start a
    // second request; read as chunked (RFC 9112 §6.3), a request pipelined after it would.
    let answer = raw(
        address,
        b"POST / HTTP/1.1\r\nhost: shop.example.com\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: shop.example.com\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
    let heads = heads.lock().unwrap();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = heads[0].to_ascii_lowercase();
    assert!(!head.contains("content-length: 4"), "{head}");
    assert!(!head.contains("smuggled"), "{head}");
}
