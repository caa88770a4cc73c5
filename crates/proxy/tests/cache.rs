//! The shared HTTP cache of a route, between a real client and a real origin on loopback:
//! one test per rule, named after the section of the RFC it checks. The origin counts the
//! requests that reach it per path, and answers each path the way its test needs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use meridian_proxy::Proxy;
use tokio::sync::Semaphore;
use tokio::time::{sleep, Instant};

/// What the origin saw: requests per path, and the last request's fields per path.
#[derive(Default)]
struct Seen {
    count: HashMap<String, usize>,
    last: HashMap<String, HeaderMap>,
}

#[derive(Clone)]
struct Origin {
    address: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    /// `/slow` answers once a permit is added.
    gate: Arc<Semaphore>,
}

impl Origin {
    fn count(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .count
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    fn last(&self, path: &str) -> HeaderMap {
        self.seen
            .lock()
            .unwrap()
            .last
            .get(path)
            .cloned()
            .unwrap_or_default()
    }
}

/// The origin's answer to the `n`th request (from 1) for `path`.
async fn answer(path: &str, n: usize, request: &HeaderMap, gate: &Semaphore) -> Response {
    let body = format!("{path} #{n}");
    let header = |name: &str| {
        request
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    match path {
        "/fresh" | "/item" | "/range" | "/bypass/x" => (
            [
                ("cache-control", "max-age=60"),
                ("content-type", "text/plain"),
            ],
            body,
        )
            .into_response(),
        "/text" => (
            [
                ("cache-control", "max-age=60"),
                ("content-type", "text/plain"),
                ("etag", "\"t\""),
            ],
            "meridian ".repeat(500),
        )
            .into_response(),
        "/no-store" => ([("cache-control", "max-age=60, no-store")], body).into_response(),
        scan if scan.starts_with("/scan/") => (
            [
                ("cache-control", "max-age=60"),
                ("content-type", "image/png"),
            ],
            vec![1u8; 1000],
        )
            .into_response(),
        // Not stored, chunked: coded as it streams through.
        "/stream" => {
            let chunks = (0..STREAM_CHUNKS).map(|i| Ok::<_, std::io::Error>(stream_chunk(i)));
            (
                [
                    ("cache-control", "no-store"),
                    ("content-type", "text/plain"),
                ],
                axum::body::Body::from_stream(futures_util::stream::iter(chunks)),
            )
                .into_response()
        }
        "/png" => (
            [
                ("cache-control", "max-age=60"),
                ("content-type", "image/png"),
            ],
            vec![7u8; 4096],
        )
            .into_response(),
        "/origin-coded" => (
            [
                ("cache-control", "max-age=60"),
                ("content-type", "text/plain"),
                ("content-encoding", "gzip"),
            ],
            vec![0x1fu8; 4096],
        )
            .into_response(),
        "/private" => ([("cache-control", "private, max-age=60")], body).into_response(),
        "/private-field" => (
            [
                ("cache-control", "max-age=60, private=\"x-user\""),
                ("x-user", "alice"),
            ],
            body,
        )
            .into_response(),
        "/cookie" => (
            [("cache-control", "max-age=60"), ("set-cookie", "session=a")],
            body,
        )
            .into_response(),
        "/auth" => ([("cache-control", "max-age=60")], body).into_response(),
        "/targeted" => (
            [
                ("cache-control", "no-store"),
                ("meridian-cache-control", "max-age=60"),
            ],
            body,
        )
            .into_response(),
        "/vary" => {
            let language = header("accept-language").to_owned();
            (
                [("cache-control", "max-age=60"), ("vary", "accept-language")],
                format!("{body} {language}"),
            )
                .into_response()
        }
        "/etag" => {
            if header("if-none-match") == "\"v1\"" {
                let headers = [
                    ("etag", "\"v1\""),
                    ("cache-control", "max-age=0"),
                    ("x-version", "2"),
                ];
                return (StatusCode::NOT_MODIFIED, headers).into_response();
            }
            (
                [
                    ("etag", "\"v1\""),
                    ("cache-control", "max-age=0"),
                    ("x-version", "1"),
                ],
                body,
            )
                .into_response()
        }
        "/flaky" if n > 1 => (StatusCode::SERVICE_UNAVAILABLE, "down").into_response(),
        "/flaky" => ([("cache-control", "max-age=0, stale-if-error=60")], body).into_response(),
        // Stale on arrival (Age over max-age); a 304 without Age freshens it.
        "/aged" if header("if-none-match") == "\"a\"" => {
            (StatusCode::NOT_MODIFIED, [("etag", "\"a\"")]).into_response()
        }
        "/aged" => (
            [
                ("cache-control", "max-age=60"),
                ("etag", "\"a\""),
                ("age", "100"),
            ],
            body,
        )
            .into_response(),
        // Stored with a validator, then no longer storable.
        "/gone-private" if n > 1 => ([("cache-control", "private")], body).into_response(),
        "/gone-private" => {
            ([("cache-control", "max-age=0"), ("etag", "\"g\"")], body).into_response()
        }
        "/swr" => (
            [("cache-control", "max-age=0, stale-while-revalidate=60")],
            body,
        )
            .into_response(),
        "/tagged" => ([("cache-control", "max-age=60"), ("cache-tag", "t1")], body).into_response(),
        // What a gateway answers when it has no route: a 404, cacheable by default.
        "/proxy-made" => (
            StatusCode::NOT_FOUND,
            [("x-meridian-error", "no_route")],
            body,
        )
            .into_response(),
        // Larger than the tests' small stores hold whole; answers single ranges.
        "/video" => {
            let content = video();
            let headers = [
                ("cache-control", "max-age=60"),
                ("content-type", "video/mp4"),
                ("etag", "\"vid\""),
            ];
            let range = header("range").strip_prefix("bytes=");
            match range.and_then(|r| r.split_once('-')) {
                Some((first, last)) => {
                    let (first, last): (usize, usize) =
                        (first.parse().unwrap(), last.parse().unwrap());
                    let range = format!("bytes {first}-{last}/{}", content.len());
                    let part = content[first..=last].to_vec();
                    let status = StatusCode::PARTIAL_CONTENT;
                    (status, headers, [("content-range", range)], part).into_response()
                }
                None => (headers, content).into_response(),
            }
        }
        "/slow" => {
            let _permit = gate.acquire().await;
            ([("cache-control", "max-age=60")], body).into_response()
        }
        _ => (StatusCode::NOT_FOUND, body).into_response(),
    }
}

/// `/video`'s content.
fn video() -> Vec<u8> {
    (0..4000u32).map(|i| (i % 251) as u8).collect()
}

/// Chunks of `/stream`'s body.
const STREAM_CHUNKS: usize = 64;

/// The `i`th chunk of `/stream`'s body (16 KiB of text).
fn stream_chunk(i: usize) -> String {
    format!("chunk {i:04} of a streamed text\n").repeat(16 << 10 >> 5)
}

/// `/stream`'s whole body.
fn stream_body() -> String {
    (0..STREAM_CHUNKS).map(stream_chunk).collect()
}

/// The content of `coded` with `coding` (`br`, `zstd`, `gzip`).
fn decode(coding: &str, coded: &[u8]) -> String {
    use std::io::Read;
    let mut text = String::new();
    match coding {
        "br" => brotli::Decompressor::new(coded, 4096)
            .read_to_string(&mut text)
            .unwrap(),
        "zstd" => zstd::stream::read::Decoder::new(coded)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap(),
        "gzip" => flate2::read::GzDecoder::new(coded)
            .read_to_string(&mut text)
            .unwrap(),
        other => panic!("unknown coding {other}"),
    };
    text
}

/// A response read as bytes.
struct Raw {
    status: u16,
    headers: HeaderMap,
    body: bytes::Bytes,
}

impl Raw {
    fn field(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// `GET path` with `headers`, its content as it came.
async fn get_raw(base: &str, path: &str, headers: &[(&str, &str)]) -> Raw {
    let mut request = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .header("host", "shop.example.com");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    Raw {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.unwrap(),
    }
}

async fn origin() -> Origin {
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let gate = Arc::new(Semaphore::new(0));
    let (state, permits) = (seen.clone(), gate.clone());
    let app = axum::Router::new().fallback(move |request: Request| {
        let (seen, gate) = (state.clone(), permits.clone());
        async move {
            let path = request.uri().path().to_owned();
            let n = {
                let mut seen = seen.lock().unwrap();
                seen.last.insert(path.clone(), request.headers().clone());
                let count = seen.count.entry(path.clone()).or_default();
                *count += 1;
                *count
            };
            answer(&path, n, request.headers(), &gate).await
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.181.1:0")
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Origin {
        address,
        seen,
        gate,
    }
}

/// A proxy in front of a fresh origin, caching with `policy`; its base URL.
async fn edge(policy: &str) -> (Arc<Proxy>, String, Origin) {
    let origin = origin().await;
    let proxy = Arc::new(Proxy::default());
    let base = serve(&proxy, policy, &origin).await;
    (proxy, base, origin)
}

/// Has `proxy` serve `origin`, caching with `policy`; its base URL.
async fn serve(proxy: &Proxy, policy: &str, origin: &Origin) -> String {
    let text = format!(
        r#"
listeners:
  - name: public
    address: 127.0.181.1:0
    virtual_hosts:
      - name: shop
        domains: ["shop.example.com"]
        routes:
          - cluster: origin
            cache: {policy}
clusters:
  - name: origin
    endpoints: [{{address: "{}"}}]
"#,
        origin.address
    );
    proxy.apply_text(&text).await.unwrap();
    let address = proxy.listeners().await[0].1;
    format!("http://{address}")
}

struct Got {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Got {
    fn cache_status(&self) -> &str {
        self.headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn send(base: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Got {
    send_to(base, "shop.example.com", method, path, headers).await
}

/// `GET path` for `host` (its `Host` field).
async fn get_host(base: &str, host: &str, path: &str) -> Got {
    send_to(base, host, "GET", path, &[]).await
}

async fn send_to(
    base: &str,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Got {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client
        .request(method, format!("{base}{path}"))
        .header("host", host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap();
    Got {
        status,
        headers,
        body,
    }
}

async fn get(base: &str, path: &str) -> Got {
    send(base, "GET", path, &[]).await
}

/// Waits for `condition`, failing after a deadline.
async fn until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn rfc9111_4_2_a_fresh_response_is_answered_from_the_cache() {
    let (proxy, base, origin) = edge("{}").await;
    let first = get(&base, "/fresh").await;
    assert_eq!((first.status, first.body.as_str()), (200, "/fresh #1"));
    assert_eq!(
        first.cache_status(),
        "Meridian; fwd=uri-miss; fwd-status=200; ttl=60; stored"
    );
    let second = get(&base, "/fresh").await;
    assert_eq!((second.status, second.body.as_str()), (200, "/fresh #1"));
    assert!(
        second.cache_status().starts_with("Meridian; hit; ttl="),
        "{}",
        second.cache_status()
    );
    assert!(second.headers.contains_key("age"));
    assert_eq!(second.headers["content-type"], "text/plain");
    assert_eq!(origin.count("/fresh"), 1);
    let metrics = proxy.metrics_text();
    for line in [
        "meridian_proxy_cache_requests_total{result=\"hit\"} 1",
        "meridian_proxy_cache_requests_total{result=\"miss\"} 1",
        "meridian_proxy_cache_stored_total 1",
        "meridian_proxy_cache_keys 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert!(
        !metrics.contains("meridian_proxy_cache_bytes 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn rfc9111_3_no_store_private_set_cookie_and_authorization_are_not_shared() {
    let (_proxy, base, origin) = edge("{}").await;
    for (path, detail) in [
        ("/no-store", "no-store"),
        ("/private", "private"),
        ("/cookie", "set-cookie"),
    ] {
        let first = get(&base, path).await;
        assert!(
            first
                .cache_status()
                .ends_with(&format!("detail=\"{detail}\"")),
            "{}",
            first.cache_status()
        );
        let second = get(&base, path).await;
        assert_eq!(second.body, format!("{path} #2"));
        assert_eq!(origin.count(path), 2);
    }
    let auth = [("authorization", "Bearer x")];
    send(&base, "GET", "/auth", &auth).await;
    let second = send(&base, "GET", "/auth", &auth).await;
    assert_eq!(second.body, "/auth #2");
}

#[tokio::test]
async fn rfc9111_5_2_2_7_a_qualified_private_field_reaches_only_the_client_that_fetched_it() {
    let (_proxy, base, origin) = edge("{}").await;
    let first = get(&base, "/private-field").await;
    assert_eq!(first.headers["x-user"], "alice");
    let second = get(&base, "/private-field").await;
    assert!(
        second.cache_status().starts_with("Meridian; hit"),
        "{}",
        second.cache_status()
    );
    assert!(!second.headers.contains_key("x-user"));
    assert_eq!(origin.count("/private-field"), 1);
}

#[tokio::test]
async fn rfc9110_8_4_a_stored_text_is_answered_gzip_coded_to_clients_that_accept_it() {
    use std::io::Read;
    let (_proxy, base, origin) = edge("{}").await;
    let plain = get(&base, "/text").await;
    assert_eq!(plain.body, "meridian ".repeat(500));
    assert_eq!(plain.headers["vary"], "Accept-Encoding");
    assert!(!plain.headers.contains_key("content-encoding"));
    let client = reqwest::Client::new();
    let coded = client
        .get(format!("{base}/text"))
        .header("host", "shop.example.com")
        .header("accept-encoding", "br;q=0.9, gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(coded.headers()["content-encoding"], "gzip");
    assert_eq!(coded.headers()["vary"], "Accept-Encoding");
    assert_eq!(coded.headers()["etag"], "W/\"t\"");
    let bytes = coded.bytes().await.unwrap();
    assert!(bytes.len() < 4500 / 10, "{} bytes", bytes.len());
    let mut text = String::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "meridian ".repeat(500));
    // Never a coded range; and the origin was asked once.
    let part = send(
        &base,
        "GET",
        "/text",
        &[("accept-encoding", "gzip"), ("range", "bytes=0-7")],
    )
    .await;
    assert_eq!((part.status, part.body.as_str()), (206, "meridian"));
    assert_eq!(origin.count("/text"), 1);
}

#[tokio::test]
async fn rfc9110_12_5_3_brotli_zstd_or_gzip_by_q_values_each_coding_stored_once() {
    let (proxy, base, origin) = edge("{}").await;
    let text = "meridian ".repeat(500);
    for (accept, coding) in [
        ("gzip, deflate, br, zstd", "br"),
        ("gzip;q=0.8, zstd", "zstd"),
        ("br;q=0.5, gzip", "gzip"),
        ("*", "br"),
    ] {
        let got = get_raw(&base, "/text", &[("accept-encoding", accept)]).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.field("content-encoding"), coding, "{accept}");
        assert_eq!(got.field("vary"), "Accept-Encoding");
        assert_eq!(got.field("etag"), "W/\"t\"");
        assert_eq!(got.field("content-length"), got.body.len().to_string());
        assert!(
            got.body.len() < 4500 / 10,
            "{coding}: {} bytes",
            got.body.len()
        );
        assert_eq!(decode(coding, &got.body), text, "{accept}");
    }
    // Each coding was made once and stored: the same bytes again, from the cache.
    let first = get_raw(&base, "/text", &[("accept-encoding", "zstd")]).await;
    let again = get_raw(&base, "/text", &[("accept-encoding", "zstd")]).await;
    assert_eq!(first.body, again.body);
    assert!(
        again.field("cache-status").contains("hit"),
        "{}",
        again.field("cache-status")
    );
    let plain = get_raw(&base, "/text", &[("accept-encoding", "identity")]).await;
    assert_eq!(
        (plain.field("content-encoding"), &plain.body[..]),
        ("", text.as_bytes())
    );
    assert_eq!(origin.count("/text"), 1);
    let metrics = proxy.metrics_text();
    assert!(metrics.contains("meridian_proxy_cache_keys 1"), "{metrics}");
}

#[tokio::test]
async fn rfc9110_8_4_1_a_response_not_stored_is_coded_as_it_streams() {
    let (_proxy, base, origin) = edge("{}").await;
    for coding in ["br", "zstd", "gzip"] {
        let got = get_raw(&base, "/stream", &[("accept-encoding", coding)]).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.field("content-encoding"), coding);
        assert_eq!(got.field("vary"), "Accept-Encoding");
        assert!(!got.headers.contains_key("content-length"));
        assert!(
            got.field("cache-status").contains("detail=\"no-store\""),
            "{}",
            got.field("cache-status")
        );
        assert!(
            got.body.len() < stream_body().len() / 10,
            "{coding}: {}",
            got.body.len()
        );
        assert_eq!(decode(coding, &got.body), stream_body(), "{coding}");
    }
    // Not for a client that asks for no coding (but it varies), nor for a range.
    let plain = get_raw(&base, "/stream", &[]).await;
    assert_eq!(plain.field("content-encoding"), "");
    assert_eq!(plain.field("vary"), "Accept-Encoding");
    assert_eq!(plain.body, stream_body().as_bytes());
    let range = get_raw(
        &base,
        "/stream",
        &[("accept-encoding", "br"), ("range", "bytes=0-9")],
    )
    .await;
    assert_eq!(range.field("content-encoding"), "");
    assert_eq!(origin.count("/stream"), 5);
}

#[tokio::test]
async fn rfc9110_8_4_types_that_do_not_compress_and_coded_content_are_not_coded() {
    let (_proxy, base, _origin) = edge("{}").await;
    for _ in 0..2 {
        let png = get_raw(&base, "/png", &[("accept-encoding", "br, gzip")]).await;
        assert_eq!((png.field("content-encoding"), png.field("vary")), ("", ""));
        assert_eq!(png.body.len(), 4096);
        let coded = get_raw(&base, "/origin-coded", &[("accept-encoding", "br, zstd")]).await;
        assert_eq!(coded.field("content-encoding"), "gzip");
        assert_eq!(coded.body, vec![0x1fu8; 4096]);
    }
}

#[tokio::test]
async fn a_downstream_proxys_own_answer_is_never_stored() {
    let (_proxy, base, origin) = edge("{default_ttl: 1m}").await;
    let first = get(&base, "/proxy-made").await;
    assert_eq!(first.status, 404);
    assert!(
        first.cache_status().ends_with("detail=\"proxy-error\""),
        "{}",
        first.cache_status()
    );
    get(&base, "/proxy-made").await;
    assert_eq!(origin.count("/proxy-made"), 2);
}

#[tokio::test]
async fn rfc9111_4_1_a_stored_response_answers_only_requests_with_its_varied_fields() {
    let (_proxy, base, origin) = edge("{}").await;
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    assert_eq!(send(&base, "GET", "/vary", &en).await.body, "/vary #1 en");
    assert_eq!(send(&base, "GET", "/vary", &en).await.body, "/vary #1 en");
    let other = send(&base, "GET", "/vary", &fr).await;
    assert_eq!(other.body, "/vary #2 fr");
    assert!(
        other.cache_status().contains("fwd=vary-miss"),
        "{}",
        other.cache_status()
    );
    assert_eq!(send(&base, "GET", "/vary", &fr).await.body, "/vary #2 fr");
    assert_eq!(origin.count("/vary"), 2);
}

#[tokio::test]
async fn rfc9111_4_3_a_stale_response_is_validated_and_freshened_by_a_304() {
    let (_proxy, base, origin) = edge("{}").await;
    let first = get(&base, "/etag").await;
    assert_eq!(first.headers["x-version"], "1");
    let second = get(&base, "/etag").await;
    assert_eq!((second.status, second.body.as_str()), (200, "/etag #1"));
    assert_eq!(
        second.headers["x-version"], "2",
        "freshened from the 304 (§4.3.4)"
    );
    assert!(
        second.cache_status().contains("fwd=stale; fwd-status=304"),
        "{}",
        second.cache_status()
    );
    assert_eq!(origin.last("/etag")["if-none-match"], "\"v1\"");
    // A client's own condition is answered here.
    let conditional = send(&base, "GET", "/etag", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(conditional.status, 304);
}

#[tokio::test]
async fn rfc9111_4_3_3_a_full_response_to_a_validation_replaces_the_stored_one() {
    let (_proxy, base, origin) = edge("{}").await;
    get(&base, "/gone-private").await;
    // Stale: validated; the origin answers in full, and privately now.
    let second = get(&base, "/gone-private").await;
    assert_eq!(second.body, "/gone-private #2");
    assert!(
        second.cache_status().contains("detail=\"private\""),
        "{}",
        second.cache_status()
    );
    // Nothing left to validate: the next request is a plain miss.
    let third = get(&base, "/gone-private").await;
    assert!(
        third.cache_status().contains("fwd=uri-miss"),
        "{}",
        third.cache_status()
    );
    assert!(!origin.last("/gone-private").contains_key("if-none-match"));
}

#[tokio::test]
async fn a_clients_no_store_does_not_drop_what_others_are_served() {
    let (_proxy, base, origin) = edge("{}").await;
    get(&base, "/fresh").await;
    let forced = [("cache-control", "no-cache, no-store")];
    let refused = send(&base, "GET", "/fresh", &forced).await;
    assert_eq!(refused.body, "/fresh #2");
    assert!(
        refused.cache_status().contains("detail=\"no-store\""),
        "{}",
        refused.cache_status()
    );
    let hit = get(&base, "/fresh").await;
    assert!(
        hit.cache_status().starts_with("Meridian; hit"),
        "{}",
        hit.cache_status()
    );
    assert_eq!(hit.body, "/fresh #1");
    assert_eq!(origin.count("/fresh"), 2);
}

#[tokio::test]
async fn rfc9111_4_head_validating_a_stored_get_refreshes_it_with_a_get() {
    let (_proxy, base, origin) = edge("{}").await;
    get(&base, "/etag").await;
    let head = send(&base, "HEAD", "/etag", &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.headers["x-version"], "2");
    // The stored response kept its content.
    assert_eq!(get(&base, "/etag").await.body, "/etag #1");
    assert_eq!(origin.count("/etag"), 3);
}

#[tokio::test]
async fn rfc9111_4_3_4_a_freshened_response_takes_its_age_from_the_304() {
    let (_proxy, base, origin) = edge("{}").await;
    get(&base, "/aged").await;
    let validated = get(&base, "/aged").await;
    assert!(
        validated
            .cache_status()
            .contains("fwd=stale; fwd-status=304"),
        "{}",
        validated.cache_status()
    );
    let hit = get(&base, "/aged").await;
    assert!(
        hit.cache_status().starts_with("Meridian; hit"),
        "{}",
        hit.cache_status()
    );
    assert_eq!(hit.body, "/aged #1");
    assert_eq!(origin.count("/aged"), 2);
}

#[tokio::test]
async fn rfc9111_4_4_an_unsafe_request_invalidates_its_target() {
    let (_proxy, base, origin) = edge("{}").await;
    get(&base, "/item").await;
    assert_eq!(get(&base, "/item").await.body, "/item #1");
    let post = send(&base, "POST", "/item", &[]).await;
    assert_eq!(post.status, 200);
    assert_eq!(post.cache_status(), "Meridian; fwd=method; fwd-status=200");
    assert_eq!(get(&base, "/item").await.body, "/item #3");
    assert_eq!(origin.count("/item"), 3);
}

#[tokio::test]
async fn rfc9111_4_head_is_answered_from_a_stored_get() {
    let (_proxy, base, origin) = edge("{}").await;
    get(&base, "/fresh").await;
    let head = send(&base, "HEAD", "/fresh", &[]).await;
    assert_eq!(head.status, 200);
    assert!(
        head.cache_status().contains("hit"),
        "{}",
        head.cache_status()
    );
    assert_eq!(head.headers["content-length"], "9");
    assert!(head.body.is_empty());
    assert_eq!(origin.count("/fresh"), 1);
}

#[tokio::test]
async fn rfc9110_14_ranges_are_cut_from_a_stored_response() {
    let (_proxy, base, origin) = edge("{}").await;
    get(&base, "/range").await;
    let part = send(&base, "GET", "/range", &[("range", "bytes=1-5")]).await;
    assert_eq!((part.status, part.body.as_str()), (206, "range"));
    assert_eq!(part.headers["content-range"], "bytes 1-5/9");
    let none = send(&base, "GET", "/range", &[("range", "bytes=100-")]).await;
    assert_eq!(none.status, 416);
    assert_eq!(origin.count("/range"), 1);
}

#[tokio::test]
async fn rfc5861_4_stale_if_error_answers_with_the_stale_response_when_the_origin_fails() {
    let (_proxy, base, origin) = edge("{}").await;
    get(&base, "/flaky").await;
    let stale = get(&base, "/flaky").await;
    assert_eq!((stale.status, stale.body.as_str()), (200, "/flaky #1"));
    assert!(
        stale.cache_status().contains("fwd-status=503"),
        "{}",
        stale.cache_status()
    );
    assert!(
        stale.cache_status().contains("stale-if-error"),
        "{}",
        stale.cache_status()
    );
    assert_eq!(origin.count("/flaky"), 2);
}

#[tokio::test]
async fn rfc5861_3_stale_while_revalidate_answers_at_once_and_revalidates_in_the_background() {
    let (_proxy, base, origin) = edge("{}").await;
    get(&base, "/swr").await;
    let stale = get(&base, "/swr").await;
    assert_eq!(stale.body, "/swr #1");
    assert!(
        stale.cache_status().contains("hit"),
        "{}",
        stale.cache_status()
    );
    until("the background revalidation", || origin.count("/swr") == 2).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let next = get(&base, "/swr").await;
        if next.body != "/swr #1" {
            assert!(next.body.starts_with("/swr #"), "{}", next.body);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the revalidated response never answered"
        );
        sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn rfc9111_5_2_1_7_only_if_cached_without_a_stored_response_is_504() {
    let (_proxy, base, origin) = edge("{}").await;
    let got = send(
        &base,
        "GET",
        "/fresh",
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(got.status, 504);
    assert_eq!(origin.count("/fresh"), 0);
}

#[tokio::test]
async fn rfc9213_meridian_cache_control_governs_and_is_not_passed_on() {
    let (_proxy, base, origin) = edge("{}").await;
    let first = get(&base, "/targeted").await;
    assert!(!first.headers.contains_key("meridian-cache-control"));
    assert_eq!(get(&base, "/targeted").await.body, "/targeted #1");
    assert_eq!(origin.count("/targeted"), 1);
}

#[tokio::test]
async fn a_bypassed_path_is_never_cached_and_tags_are_not_passed_on() {
    let (_proxy, base, origin) = edge("{bypass: [/bypass/]}").await;
    let first = get(&base, "/bypass/x").await;
    assert_eq!(first.cache_status(), "Meridian; fwd=bypass; fwd-status=200");
    get(&base, "/bypass/x").await;
    assert_eq!(origin.count("/bypass/x"), 2);
    let tagged = get(&base, "/tagged").await;
    assert!(!tagged.headers.contains_key("cache-tag"));
}

#[tokio::test]
async fn purges_remove_by_url_by_tag_and_everything() {
    use meridian_proxy::{CachePurge, PurgeError, PurgeScope::AnyHost};
    let (proxy, base, origin) = edge("{key: {query_exclude: [utm]}}").await;
    for path in ["/fresh?utm=a", "/tagged", "/item"] {
        get(&base, path).await;
    }
    // A URL is keyed as its route keys it (utm is not in the key), under either scheme.
    let url = CachePurge::Url("https://shop.example.com/fresh?utm=b".into());
    assert_eq!(proxy.purge_cache(&url, AnyHost).await.unwrap(), 1);
    assert_eq!(get(&base, "/fresh").await.body, "/fresh #2");
    let tag = CachePurge::Tag("t1".into());
    assert_eq!(proxy.purge_cache(&tag, AnyHost).await.unwrap(), 1);
    assert_eq!(get(&base, "/tagged").await.body, "/tagged #2");
    assert_eq!(get(&base, "/item").await.body, "/item #1");
    assert_eq!(
        proxy.purge_cache(&CachePurge::All, AnyHost).await.unwrap(),
        3
    );
    assert_eq!(get(&base, "/item").await.body, "/item #2");
    let bad = proxy
        .purge_cache(&CachePurge::Url("/relative".into()), AnyHost)
        .await;
    assert!(matches!(bad, Err(PurgeError::Url(_))), "{bad:?}");
    assert_eq!(origin.count("/fresh"), 2);
}

#[tokio::test]
async fn a_purge_within_domains_removes_only_their_hosts_responses() {
    use meridian_proxy::{CachePurge, PurgeScope};
    let (proxy, base, _origin) = edge("{}").await;
    let port = base.rsplit(':').next().unwrap().to_owned();
    // The same paths stored for two hosts: one asked for as a client at this port sends it.
    let with_port = format!("shop.example.com:{port}");
    for host in ["shop.example.com", with_port.as_str()] {
        for path in ["/tagged", "/item", "/fresh"] {
            get_host(&base, host, path).await;
        }
    }
    let others = ["other.example.org".to_owned()];
    let elsewhere = PurgeScope::Domains(&others);
    for purge in [
        CachePurge::Tag("t1".into()),
        CachePurge::All,
        CachePurge::Url("http://shop.example.com/item".into()),
    ] {
        assert_eq!(proxy.purge_cache(&purge, elsewhere).await.unwrap(), 0);
    }
    let shop = ["*.example.com".to_owned()];
    let within = PurgeScope::Domains(&shop);
    // A URL without a port names its host's responses at the listener's port too.
    let url = CachePurge::Url("http://shop.example.com/item".into());
    assert_eq!(proxy.purge_cache(&url, within).await.unwrap(), 2);
    let tag = CachePurge::Tag("t1".into());
    assert_eq!(proxy.purge_cache(&tag, within).await.unwrap(), 2);
    assert_eq!(
        proxy.purge_cache(&CachePurge::All, within).await.unwrap(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_on_one_key_make_one_origin_request() {
    let (proxy, base, origin) = edge("{}").await;
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let base = base.clone();
            tokio::spawn(async move { get(&base, "/slow").await })
        })
        .collect();
    until("the first request to reach the origin", || {
        origin.count("/slow") == 1
    })
    .await;
    until("the others to wait on it", || proxy.cache_waiting() == 19).await;
    origin.gate.add_permits(100);
    let mut collapsed = 0;
    for client in clients {
        let got = client.await.unwrap();
        assert_eq!((got.status, got.body.as_str()), (200, "/slow #1"));
        collapsed += usize::from(got.cache_status().contains("collapsed"));
    }
    assert_eq!(origin.count("/slow"), 1);
    assert_eq!(collapsed, 19);
}

/// A proxy caching in memory over a disk tier in `dir` of `size` bytes.
fn on_disk(dir: &std::path::Path, size: u64) -> Arc<Proxy> {
    let tier = meridian_proxy::CacheDiskTier::open(dir, size).unwrap();
    Arc::new(Proxy::with_cache_on_disk(meridian_proxy::DEFAULT_CACHE_LIMITS, tier).unwrap())
}

/// The files of the disk tier's records in `dir`, and their bytes (a file the tier's thread
/// removes while they are counted is not).
fn disk_files(dir: &std::path::Path) -> (usize, u64) {
    let entries = std::fs::read_dir(dir.join("objects")).unwrap();
    let sizes: Vec<u64> = entries
        .filter_map(|e| e.unwrap().metadata().ok())
        .map(|m| m.len())
        .collect();
    (sizes.len(), sizes.iter().sum())
}

#[tokio::test]
async fn the_disk_tier_survives_a_restart_and_serves_only_once_missed_purges_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let first = on_disk(dir.path(), 1 << 20);
    assert_eq!(first.cache_disk_applied(), None);
    first.cache_purges_caught_up();
    let before = origin().await;
    let base = serve(&first, "{}", &before).await;
    for path in ["/fresh", "/tagged", "/item"] {
        assert_eq!(get(&base, path).await.body, format!("{path} #1"));
    }
    until("three records on disk", || disk_files(dir.path()).0 == 3).await;
    first.cache_purge_applied(4);
    until("the purge number on disk", || {
        dir.path().join("purges").exists()
    })
    .await;
    first.drain(Duration::from_secs(1)).await;
    drop(first);

    // Restarted, before a new origin: it knows where its purges stopped, and serves nothing
    // from disk before it has applied those it missed.
    let second = on_disk(dir.path(), 1 << 20);
    assert_eq!(second.cache_disk_applied(), Some(4));
    let origin = origin().await;
    let base = serve(&second, "{}", &origin).await;
    assert_eq!(get(&base, "/item").await.body, "/item #1");
    assert_eq!(origin.count("/item"), 1);
    let missed = meridian_proxy::CachePurge::Tag("t1".into());
    let scope = meridian_proxy::PurgeScope::AnyHost;
    second.purge_cache(&missed, scope).await.unwrap();
    second.cache_purge_applied(5);
    second.cache_purges_caught_up();
    let kept = get(&base, "/fresh").await;
    assert_eq!(kept.body, "/fresh #1", "the first origin's, from disk");
    assert!(
        kept.cache_status().contains("hit"),
        "{}",
        kept.cache_status()
    );
    assert_eq!(origin.count("/fresh"), 0);
    let purged = get(&base, "/tagged").await;
    assert_eq!(purged.body, "/tagged #1", "the second origin's");
    assert_eq!(origin.count("/tagged"), 1);
    let metrics = second.metrics_text();
    for line in [
        "meridian_proxy_cache_disk_hits_total 1",
        "meridian_proxy_cache_purges_total 1",
        "meridian_proxy_cache_purged_total{tier=\"disk\"} 1",
        "meridian_proxy_cache_purged_total{tier=\"memory\"} 0",
        "meridian_proxy_cache_purge_applied 5",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    // The purge's number was recorded after its files went.
    until("purge 5 on disk", || {
        std::fs::read(dir.path().join("purges")).is_ok_and(|b| b[5] == 5)
    })
    .await;
}

#[tokio::test]
async fn the_disk_tiers_bound_holds_under_a_scan_of_ten_times_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let size = 32 << 10;
    let proxy = on_disk(dir.path(), size);
    proxy.cache_purges_caught_up();
    let origin = origin().await;
    let base = serve(&proxy, "{}", &origin).await;
    // Each record is over 1,000 bytes: this scan writes more than ten times the tier.
    let scanned = 10 * size / 1000;
    for i in 0..scanned {
        get(&base, &format!("/scan/{i}")).await;
        let (_, bytes) = disk_files(dir.path());
        assert!(bytes <= size, "{bytes} bytes on disk after {i}");
    }
    until("the tier filled", || disk_files(dir.path()).1 > size / 2).await;
    let (files, bytes) = disk_files(dir.path());
    assert!(bytes <= size && files < 40, "{files} files, {bytes} bytes");
}

#[tokio::test]
async fn rfc9111_4_a_head_miss_fills_the_cache_with_a_get_and_is_answered_from_it() {
    let (_proxy, base, origin) = edge("{}").await;
    let head = send(&base, "HEAD", "/fresh", &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.headers["content-length"], "9");
    assert!(
        head.cache_status().contains("stored"),
        "{}",
        head.cache_status()
    );
    let get = get(&base, "/fresh").await;
    assert_eq!(get.body, "/fresh #1");
    assert!(get.cache_status().contains("hit"), "{}", get.cache_status());
    assert_eq!(origin.count("/fresh"), 1);
}

#[tokio::test]
async fn rfc9110_14_2_a_range_miss_fills_the_cache_and_is_cut_from_the_whole() {
    let (_proxy, base, origin) = edge("{}").await;
    let part = send(&base, "GET", "/range", &[("range", "bytes=1-5")]).await;
    assert_eq!((part.status, part.body.as_str()), (206, "range"));
    assert_eq!(part.headers["content-range"], "bytes 1-5/9");
    // The origin was asked for the whole representation.
    assert!(!origin.last("/range").contains_key("range"));
    let other = send(&base, "GET", "/range", &[("range", "bytes=-2")]).await;
    assert_eq!((other.status, other.body.as_str()), (206, "#1"));
    assert_eq!(get(&base, "/range").await.body, "/range #1");
    assert_eq!(origin.count("/range"), 1);
}

#[tokio::test]
async fn a_range_miss_of_a_representation_too_large_to_store_goes_upstream_as_asked() {
    let limits = meridian_proxy::CacheLimits {
        max_bytes: 1 << 20,
        max_object_bytes: 512,
    };
    let proxy = Arc::new(Proxy::with_cache(limits));
    let origin = origin().await;
    let base = serve(&proxy, "{}", &origin).await;
    let part = send(&base, "GET", "/scan/big", &[("range", "bytes=0-9")]).await;
    assert_eq!(part.status, 200, "the origin ignores ranges");
    assert_eq!(part.body.len(), 1000);
    assert!(
        part.cache_status().contains("fwd=uri-miss"),
        "{}",
        part.cache_status()
    );
    // Asked whole first (to fill), then as the client asked once it was too large.
    assert_eq!(origin.count("/scan/big"), 2, "{}", part.cache_status());
    assert_eq!(origin.last("/scan/big")["range"], "bytes=0-9");
}

#[tokio::test]
async fn rfc9111_3_3_parts_of_a_representation_too_large_to_store_answer_the_ranges_they_hold() {
    use meridian_proxy::{CachePurge, PurgeScope::AnyHost};
    let limits = meridian_proxy::CacheLimits {
        max_bytes: 1 << 20,
        max_object_bytes: 2048,
    };
    let proxy = Arc::new(Proxy::with_cache(limits));
    let origin = origin().await;
    let base = serve(&proxy, "{}", &origin).await;
    let content = video();
    let ask = |spec: &'static str| {
        let base = base.clone();
        async move { get_raw(&base, "/video", &[("range", spec)]).await }
    };
    let first = ask("bytes=0-99").await;
    assert_eq!((first.status, &first.body[..]), (206, &content[..100]));
    assert_eq!(first.field("content-range"), "bytes 0-99/4000");
    assert!(
        first.field("cache-status").contains("stored"),
        "{}",
        first.field("cache-status")
    );
    // Asked whole first (too large to store), then as the client asked.
    assert_eq!(origin.count("/video"), 2);
    assert_eq!(origin.last("/video")["range"], "bytes=0-99");
    let within = ask("bytes=10-49").await;
    assert_eq!((within.status, &within.body[..]), (206, &content[10..50]));
    assert_eq!(within.field("content-range"), "bytes 10-49/4000");
    assert!(
        within.field("cache-status").contains("hit"),
        "{}",
        within.field("cache-status")
    );
    assert_eq!(origin.count("/video"), 2);
    // Bytes not stored go upstream as asked, not whole first; the part is stored.
    let next = ask("bytes=100-199").await;
    assert_eq!((next.status, &next.body[..]), (206, &content[100..200]));
    let status = next.field("cache-status");
    assert!(
        status.contains("fwd=partial") && status.contains("stored"),
        "{status}"
    );
    assert_eq!(origin.count("/video"), 3);
    // §3.4: the two parts share a strong validator and were combined.
    let across = ask("bytes=50-149").await;
    assert_eq!((across.status, &across.body[..]), (206, &content[50..150]));
    assert!(across.field("cache-status").contains("hit"));
    assert_eq!(origin.count("/video"), 3);
    let several = ask("bytes=0-9,190-199").await;
    assert_eq!(several.status, 206);
    assert!(several
        .field("content-type")
        .starts_with("multipart/byteranges"));
    assert_eq!(origin.count("/video"), 3);
    // §5.2.1.7: only-if-cached is answered from the parts when they hold the range.
    let cached_only = |spec: &'static str| {
        let base = base.clone();
        let headers = [("range", spec), ("cache-control", "only-if-cached")];
        async move { get_raw(&base, "/video", &headers).await }
    };
    let held = cached_only("bytes=20-29").await;
    assert_eq!((held.status, &held.body[..]), (206, &content[20..30]));
    assert_eq!(cached_only("bytes=150-249").await.status, 504);
    assert_eq!(origin.count("/video"), 3);
    // Never a byte that was not stored: 200..250 was not.
    let beyond = ask("bytes=150-249").await;
    assert_eq!((beyond.status, &beyond.body[..]), (206, &content[150..250]));
    assert_eq!(origin.count("/video"), 4);
    let whole = get_raw(&base, "/video", &[]).await;
    assert_eq!((whole.status, &whole.body[..]), (200, &content[..]));
    assert_eq!(origin.count("/video"), 5);
    // A purge of the URL removes the parts too.
    let url = CachePurge::Url("http://shop.example.com/video".into());
    assert_eq!(proxy.purge_cache(&url, AnyHost).await.unwrap(), 1);
    ask("bytes=10-49").await;
    assert_eq!(origin.count("/video"), 7);
}

/// An origin that answers every request with a `103 Early Hints` and then a `200` fresh for
/// a minute; its address, and the requests it read.
async fn hinting_origin() -> (Origin, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.181.1:0")
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let count = counted.clone();
            tokio::spawn(async move {
                let (mut buffer, mut read) = (vec![0; 4096], Vec::new());
                loop {
                    let n = socket.read(&mut buffer).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    read.extend_from_slice(&buffer[..n]);
                    while let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                        read.drain(..end + 4);
                        count.fetch_add(1, Ordering::SeqCst);
                        let hint =
                            "HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n";
                        socket.write_all(hint.as_bytes()).await.unwrap();
                        let last = "HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\n\
                                    content-length: 2\r\n\r\nok";
                        socket.write_all(last.as_bytes()).await.unwrap();
                    }
                }
            });
        }
    });
    let origin = Origin {
        address,
        seen: Arc::default(),
        gate: Arc::new(Semaphore::new(0)),
    };
    (origin, count)
}

/// What the proxy at `base` writes back on a connection of its own to `request`, which
/// closes the connection.
async fn raw_exchange(base: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut read = Vec::new();
    socket.read_to_end(&mut read).await.unwrap();
    String::from_utf8(read).unwrap()
}

#[tokio::test]
async fn rfc9110_15_2_a_1xx_response_is_passed_on_to_http_1_1_clients_and_never_stored() {
    use std::sync::atomic::Ordering;
    let (origin, count) = hinting_origin().await;
    let proxy = Arc::new(Proxy::default());
    let base = serve(&proxy, "{}", &origin).await;
    let request = |version: &str, path: &str| {
        format!("GET {path} HTTP/{version}\r\nhost: shop.example.com\r\nconnection: close\r\n\r\n")
    };
    let miss = raw_exchange(&base, &request("1.1", "/hinted")).await;
    assert!(miss.starts_with("HTTP/1.1 103 Early Hints\r\n"), "{miss}");
    let (hint, last) = miss.split_once("\r\n\r\n").unwrap();
    assert!(hint.contains("link: </style.css>; rel=preload"), "{miss}");
    assert!(
        last.starts_with("HTTP/1.1 200 OK\r\n") && last.ends_with("ok"),
        "{miss}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // The 200 was stored, the 103 was not: a hit has no hint.
    let hit = raw_exchange(&base, &request("1.1", "/hinted")).await;
    assert!(hit.starts_with("HTTP/1.1 200 OK\r\n"), "{hit}");
    assert!(hit.contains("hit"), "{hit}");
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // Never to an HTTP/1.0 client.
    let old = raw_exchange(&base, &request("1.0", "/other")).await;
    assert!(old.starts_with("HTTP/1.0 200 OK\r\n"), "{old}");
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn rfc9110_8_4_concurrent_first_requests_for_a_coding_code_the_content_once() {
    let (proxy, base, origin) = edge("{}").await;
    let text = "meridian ".repeat(500);
    let plain = get_raw(&base, "/text", &[("accept-encoding", "identity")]).await;
    assert_eq!((plain.status, plain.field("content-encoding")), (200, ""));
    let requests: Vec<_> = (0..16)
        .map(|_| {
            let base = base.clone();
            tokio::spawn(async move { get_raw(&base, "/text", &[("accept-encoding", "br")]).await })
        })
        .collect();
    for request in requests {
        let got = request.await.unwrap();
        assert_eq!(got.field("content-encoding"), "br");
        assert_eq!(decode("br", &got.body), text);
    }
    let metrics = proxy.metrics_text();
    let made = "meridian_proxy_cache_codings_total 1";
    assert!(metrics.lines().any(|l| l == made), "{made} in\n{metrics}");
    assert_eq!(origin.count("/text"), 1);
}
