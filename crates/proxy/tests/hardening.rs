//! What a hostile or careless client can no longer do: hold cluster slots with a slow body,
//! open connections without bound, have requests that may have been acted on replayed, or forge
//! the forwarding headers.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use meridian_proxy::{Proxy, ERROR_HEADER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An upstream that counts the requests it receives. `/502` answers 502, `/slow` answers after
/// two seconds, anything else answers the request's headers as JSON after reading its body.
async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let app = axum::Router::new().fallback(move |request: Request| {
        let seen = seen.clone();
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            match request.uri().path() {
                "/502" => return http::StatusCode::BAD_GATEWAY.into_response(),
                "/slow" => tokio::time::sleep(Duration::from_secs(2)).await,
                _ => {}
            }
            let (parts, body) = request.into_parts();
            let _ = axum::body::to_bytes(body, usize::MAX).await;
            let headers: serde_json::Map<String, serde_json::Value> = parts
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                .collect();
            axum::Json(headers).into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, count)
}

/// A proxy with one listener (`listener_extra` added to it) routing everything to cluster `c`
/// (`route_extra` added to the route, `cluster_extra` to the cluster), and `tail` at the end.
async fn proxy(
    endpoints: &[SocketAddr],
    listener_extra: &str,
    route_extra: &str,
    cluster_extra: &str,
    tail: &str,
) -> (Arc<Proxy>, SocketAddr) {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{address: \"{a}\"}}"))
        .collect();
    let text = format!(
        "listeners:
  - name: l
    address: 127.0.0.1:0
{listener_extra}
    virtual_hosts:
      - name: all
        domains: ['*']
        routes:
          - cluster: c
{route_extra}
clusters:
  - name: c
    lb: round_robin
{cluster_extra}
    endpoints: [{}]
{tail}",
        endpoints.join(", ")
    );
    let proxy = Arc::new(Proxy::default());
    proxy.apply_text(&text).await.unwrap();
    let address = proxy.listeners().await[0].1;
    (proxy, address)
}

/// Polls `condition` until it holds; fails the test after 5 s.
async fn until(condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition never held"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads from `stream` until it closes (or 10 s pass); what arrived.
async fn read_all(stream: &mut tokio::net::TcpStream) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// A proxy to a [`counting_upstream`] whose cluster has one request slot (`max_requests: 1`,
/// none pending), with `request_body_timeout: 500ms`; its address, and the upstream's count.
async fn one_slot_proxy() -> (Arc<Proxy>, SocketAddr, Arc<AtomicUsize>) {
    let (upstream, count) = counting_upstream().await;
    let (proxy, address) = proxy(
        &[upstream],
        "",
        "",
        "    circuit_breakers: {max_requests: 1, max_pending_requests: 0}",
        "limits: {request_body_timeout: 500ms}\n",
    )
    .await;
    (proxy, address, count)
}

/// Asserts that a POST with a small body to the proxy at `address` is answered 200 (`when`: the
/// circumstance, for the failure message).
async fn assert_served(address: SocketAddr, when: &str) {
    let other = reqwest::Client::new()
        .post(format!("http://{address}/"))
        .body("whole")
        .send()
        .await
        .unwrap();
    assert_eq!(
        other.status(),
        200,
        "refused {when}: {:?}",
        other.headers().get(ERROR_HEADER)
    );
}

/// A client sends `head` and the start of a body, then nothing more: the proxy takes no slot of
/// the cluster (`max_requests: 1`) for it, serves another client meanwhile, and cuts it off
/// with 408 once `request_body_timeout` has passed.
async fn trickling_holds_no_cluster_slot(head: &[u8]) {
    let (proxy, address, count) = one_slot_proxy().await;
    let mut slow = tokio::net::TcpStream::connect(address).await.unwrap();
    slow.write_all(head).await.unwrap();
    // Its head arrived whole: once the connection is served, the proxy is reading its body.
    until(|| {
        proxy
            .metrics_text()
            .contains(r#"meridian_proxy_active_connections{listener="l"} 1"#)
    })
    .await;
    let started = std::time::Instant::now();
    assert_served(address, "while a slow body was being read").await;
    let answer = read_all(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_body_timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "the slow request went upstream"
    );
    assert!(proxy
        .metrics_text()
        .contains(r#"meridian_proxy_request_body_timeouts_total{listener="l"} 1"#));
}

#[tokio::test]
async fn a_client_trickling_its_body_holds_no_cluster_slot_and_is_cut_off() {
    trickling_holds_no_cluster_slot(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nab")
        .await;
}

#[tokio::test]
async fn a_client_trickling_a_large_body_holds_no_cluster_slot_and_is_cut_off() {
    trickling_holds_no_cluster_slot(
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 70000\r\n\r\nab",
    )
    .await;
}

#[tokio::test]
async fn a_client_trickling_a_chunked_body_holds_no_cluster_slot_and_is_cut_off() {
    trickling_holds_no_cluster_slot(
        b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n",
    )
    .await;
}

#[tokio::test]
async fn a_streamed_body_that_stalls_is_cut_off_and_frees_its_slot() {
    let (proxy, address, count) = one_slot_proxy().await;
    let mut slow = tokio::net::TcpStream::connect(address).await.unwrap();
    // More than the proxy reads before forwarding, then nothing: it streams, then stalls.
    slow.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 200000\r\n\r\n")
        .await
        .unwrap();
    slow.write_all(&[b'a'; 100_000]).await.unwrap();
    until(|| count.load(Ordering::SeqCst) == 1).await;
    let answer = read_all(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_body_timeout"), "{answer}");
    assert!(proxy
        .metrics_text()
        .contains(r#"meridian_proxy_request_body_timeouts_total{listener="l"} 1"#));
    assert_served(address, "after a stalled body was cut off").await;
}

#[tokio::test]
async fn connections_beyond_the_listener_limit_are_closed_and_counted() {
    let (upstream, _) = counting_upstream().await;
    let (proxy, address) = proxy(&[upstream], "    max_connections: 2", "", "", "").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        // A served request proves the connection holds one of the listener's slots.
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        held.push(stream);
    }
    let mut third = tokio::net::TcpStream::connect(address).await.unwrap();
    let _ = third.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let answer = read_all(&mut third).await;
    assert_eq!(answer, "", "a connection beyond the limit was served");
    assert!(proxy
        .metrics_text()
        .contains(r#"meridian_proxy_overloaded_connections_total{listener="l"} 1"#));
    // A slot comes free when a connection closes.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let served = reqwest::Client::new()
            .get(format!("http://{address}/"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if served {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no slot came free");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `method path` with a small body through the proxy; the status.
async fn send(address: SocketAddr, method: reqwest::Method, path: &str) -> u16 {
    reqwest::Client::new()
        .request(method, format!("http://{address}{path}"))
        .body("order #1")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

const RETRIES: &str =
    "            retries: {attempts: 2, on: [connect_failure, gateway_error], backoff: 1ms";

#[tokio::test]
async fn a_post_answered_502_is_not_retried_unless_the_route_opts_in() {
    let (upstream, count) = counting_upstream().await;
    let route = format!("{RETRIES}}}");
    let (_proxy, address) = proxy(&[upstream], "", &route, "", "").await;
    assert_eq!(send(address, reqwest::Method::POST, "/502").await, 502);
    assert_eq!(count.load(Ordering::SeqCst), 1, "the POST was replayed");
    // Idempotent methods are retried.
    assert_eq!(send(address, reqwest::Method::PUT, "/502").await, 502);
    assert_eq!(count.load(Ordering::SeqCst), 4);

    let (upstream, count) = counting_upstream().await;
    let route = format!("{RETRIES}, non_idempotent: true}}");
    let (_proxy, address) = proxy(&[upstream], "", &route, "", "").await;
    assert_eq!(send(address, reqwest::Method::POST, "/502").await, 502);
    assert_eq!(count.load(Ordering::SeqCst), 3, "the opt-in did not retry");
}

#[tokio::test]
async fn a_post_that_timed_out_is_not_retried() {
    let (upstream, count) = counting_upstream().await;
    let route = format!("{RETRIES}, per_try_timeout: 200ms}}");
    let (_proxy, address) = proxy(&[upstream], "", &route, "", "").await;
    assert_eq!(send(address, reqwest::Method::POST, "/slow").await, 504);
    assert_eq!(count.load(Ordering::SeqCst), 1, "the POST was replayed");
}

#[tokio::test]
async fn a_post_whose_connection_was_refused_is_retried() {
    let (upstream, count) = counting_upstream().await;
    // A port nobody listens on: bound, then closed.
    let dead = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    };
    let route = format!("{RETRIES}}}");
    let (_proxy, address) = proxy(&[dead, upstream], "", &route, "", "").await;
    for _ in 0..4 {
        assert_eq!(send(address, reqwest::Method::POST, "/").await, 200);
    }
    assert_eq!(count.load(Ordering::SeqCst), 4);
}

/// The `x-forwarded-for`, `x-forwarded-host`, `x-forwarded-proto` and `forwarded` the upstream
/// got for a request that claims all four, sent to the proxy at `address`.
async fn forwarded_as_seen(address: SocketAddr) -> [String; 4] {
    let seen: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{address}/"))
        .header("host", "shop.example.com")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "bank.example.com")
        .header("x-forwarded-proto", "https")
        .header("forwarded", "for=6.6.6.6;proto=https")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    [
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "forwarded",
    ]
    .map(|name| seen[name].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn forwarding_headers_of_untrusted_clients_are_replaced() {
    let (upstream, _) = counting_upstream().await;
    let replaced = [
        "127.0.0.1",
        "shop.example.com",
        "http",
        "for=127.0.0.1;proto=http;host=\"shop.example.com\"",
    ];
    // An edge's listener: the default trusts only mesh peers, and a plain client is none.
    let (_proxy, edge) = proxy(&[upstream], "", "", "", "").await;
    assert_eq!(forwarded_as_seen(edge).await, replaced);
    let (_proxy, edge) = proxy(&[upstream], "    trust_forwarded: none", "", "", "").await;
    assert_eq!(forwarded_as_seen(edge).await, replaced);
    // A hop behind a trusted proxy keeps what that proxy said and appends itself.
    let (_proxy, hop) = proxy(&[upstream], "    trust_forwarded: all", "", "", "").await;
    assert_eq!(
        forwarded_as_seen(hop).await,
        [
            "6.6.6.6, 127.0.0.1",
            "bank.example.com",
            "https",
            "for=6.6.6.6;proto=https, for=127.0.0.1;proto=http;host=\"shop.example.com\""
        ]
    );
}

#[tokio::test]
async fn meridians_internal_fields_are_dropped_from_clients_of_public_listeners_only() {
    let (upstream, _) = counting_upstream().await;
    // An edge's listener (none), and a gateway's (the default) reached without mutual TLS.
    for (trust, kept) in [("    trust_forwarded: none", false), ("", true)] {
        let (_proxy, address) = proxy(&[upstream], trust, "", "", "").await;
        let seen: serde_json::Value = reqwest::Client::new()
            .get(format!("http://{address}/"))
            .header("x-meridian-wake", "1")
            .header("x-meridian-elsewhere", "1")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for name in ["x-meridian-wake", "x-meridian-elsewhere"] {
            assert_eq!(seen.get(name).is_some(), kept, "{name} ({trust:?}): {seen}");
        }
    }
}

/// An HTTP/2 (prior knowledge) POST to `address` whose body is `first`, then what is sent on
/// `rest`, ending when it is dropped; its response (within 5 s).
async fn h2_streaming_post(
    address: SocketAddr,
    first: &'static [u8],
    rest: tokio::sync::mpsc::Receiver<bytes::Bytes>,
) -> http::Response<hyper::body::Incoming> {
    let frames =
        futures_util::stream::unfold((Some(first), rest), |(first, mut rest)| async move {
            let data = match first {
                Some(first) => bytes::Bytes::from_static(first),
                None => rest.recv().await?,
            };
            let frame = Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(data));
            Some((frame, (None, rest)))
        });
    let request = http::Request::post(format!("http://{address}/"))
        .body(http_body_util::StreamBody::new(Box::pin(frames)))
        .unwrap();
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let sent = common::h2_send(stream, request);
    tokio::time::timeout(Duration::from_secs(5), sent)
        .await
        .expect("no answer")
}

#[tokio::test]
async fn an_http2_body_of_unknown_length_that_stalls_before_the_answer_is_cut_off() {
    let (proxy, address, count) = one_slot_proxy().await;
    let (tx, rest) = tokio::sync::mpsc::channel(1);
    let response = h2_streaming_post(address, b"ab", rest).await;
    assert_eq!(response.status(), 408);
    assert_eq!(response.headers()[ERROR_HEADER], "request_body_timeout");
    assert_eq!(count.load(Ordering::SeqCst), 1, "it streamed upstream");
    assert!(proxy
        .metrics_text()
        .contains(r#"meridian_proxy_request_body_timeouts_total{listener="l"} 1"#));
    drop(tx);
    assert_served(address, "after a stalled stream was cut off").await;
}

#[tokio::test]
async fn a_body_may_pause_longer_than_the_body_timeout_once_the_upstream_answered() {
    // An upstream that answers at once and echoes the body as it arrives.
    let app = axum::Router::new()
        .fallback(|request: Request| async move { axum::body::Body::new(request.into_body()) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (proxy, address) = proxy(
        &[upstream],
        "",
        "",
        "",
        "limits: {request_body_timeout: 200ms}\n",
    )
    .await;
    let (tx, rest) = tokio::sync::mpsc::channel(1);
    let response = h2_streaming_post(address, b"first ", rest).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first ");
    // The pause under test, longer than request_body_timeout (not a wait for anything).
    tokio::time::sleep(Duration::from_millis(600)).await;
    tx.send(bytes::Bytes::from_static(b"second")).await.unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");
    assert!(proxy
        .metrics_text()
        .contains(r#"meridian_proxy_request_body_timeouts_total{listener="l"} 0"#));
}

#[tokio::test]
async fn a_streamed_body_that_keeps_coming_outlasts_the_body_timeout() {
    let (_proxy, address, count) = one_slot_proxy().await;
    let mut steady = tokio::net::TcpStream::connect(address).await.unwrap();
    steady
        .write_all(
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100010\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    steady.write_all(&[b'a'; 100_000]).await.unwrap();
    until(|| count.load(Ordering::SeqCst) == 1).await;
    // Ten parts 100 ms apart: 1 s in all, twice request_body_timeout, never a pause of 500 ms.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        steady.write_all(b"b").await.unwrap();
    }
    let answer = read_all(&mut steady).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
