//! The proxy between real clients and real upstream servers on loopback.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::IntoResponse;
use meridian_proxy::{Proxy, ERROR_HEADER};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An upstream that answers every request with JSON describing it, and its own name.
async fn upstream(name: &'static str) -> SocketAddr {
    let app = axum::Router::new().fallback(move |request: Request| async move {
        if request.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        if request.uri().path() == "/pause" {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if request.uri().path() == "/stream" {
            // A response whose body goes quiet for a while between two parts.
            let parts = futures_util::stream::unfold(0, |step| async move {
                match step {
                    0 => Some((Ok::<_, std::io::Error>(bytes::Bytes::from("first ")), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(600)).await;
                        Some((Ok(bytes::Bytes::from("second")), 2))
                    }
                    _ => None,
                }
            });
            return axum::body::Body::from_stream(parts).into_response();
        }
        let (parts, body) = request.into_parts();
        let request = Request::from_parts(parts, ());
        let body_bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_or(0, |b| b.len());
        let headers: HashMap<String, String> = request
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = json!({
            "upstream": name,
            "path": request.uri().to_string(),
            "headers": headers,
            "body_bytes": body_bytes,
        });
        (
            [("x-upstream", name), ("x-internal", "secret")],
            axum::Json(body),
        )
            .into_response()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn config(a: SocketAddr, b: SocketAddr) -> String {
    format!(
        r#"
listeners:
  - name: public
    address: 127.0.0.1:0
    virtual_hosts:
      - name: shop
        domains: ["shop.example.com", "*.shop.example.com"]
        routes:
          - name: canary
            match: {{prefix: /api, headers: [{{name: x-canary, exact: "1"}}]}}
            cluster: b
          - name: api
            match: {{prefix: /api/}}
            cluster: a
            prefix_rewrite: /v2/
            request_headers_add: {{x-route: api}}
            request_headers_remove: [x-debug]
            response_headers_remove: [x-internal]
            response_headers_add: {{x-served-by: meridian}}
          - name: slow
            match: {{path: /slow}}
            cluster: a
            timeout: 200ms
      - name: fallback
        domains: ["*"]
        routes:
          - cluster: b
clusters:
  - name: a
    endpoints: [{{address: "{a}"}}]
  - name: b
    lb: round_robin
    endpoints: [{{address: "{b}"}}]
  - name: dead
    endpoints: [{{address: "127.0.0.1:1"}}]
"#
    )
}

async fn start(text: &str) -> (Arc<Proxy>, String) {
    let proxy = Arc::new(Proxy::default());
    proxy.apply_text(text).await.unwrap();
    let address = proxy.listeners().await[0].1;
    (proxy, format!("http://{address}"))
}

async fn get(
    base: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> (u16, HashMap<String, String>, Value) {
    let client = reqwest::Client::new();
    let mut request = client.get(format!("{base}{path}")).header("host", host);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let text = response.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn routes_by_host_path_and_header_and_rewrites_headers() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let (_proxy, base) = start(&config(a, b)).await;

    let (status, headers, body) = get(
        &base,
        "/api/items?x=1",
        "shop.example.com:8080",
        &[
            ("x-debug", "1"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["upstream"], "a");
    assert_eq!(body["path"], "/v2/items?x=1");
    let seen = &body["headers"];
    assert_eq!(seen["x-route"], "api");
    assert!(seen.get("x-debug").is_none());
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "shop.example.com:8080");
    assert_eq!(seen["x-request-id"].as_str().unwrap().len(), 32);
    assert_eq!(
        seen["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(headers["x-served-by"], "meridian");
    assert!(!headers.contains_key("x-internal"));

    // Header match wins over the later prefix route; a given request id is kept.
    let (_, _, body) = get(
        &base,
        "/api/items",
        "shop.example.com",
        &[("x-canary", "1"), ("x-request-id", "abc")],
    )
    .await;
    assert_eq!(body["upstream"], "b");
    assert_eq!(body["headers"]["x-request-id"], "abc");
    // Wildcard host, then the catch-all virtual host.
    let (_, _, body) = get(&base, "/api/x", "eu.shop.example.com", &[]).await;
    assert_eq!(body["upstream"], "a");
    let (_, _, body) = get(&base, "/api/x", "other.example.org", &[]).await;
    assert_eq!(body["upstream"], "b");
    // A prefix that is not matched falls through to no route in this host.
    let (status, headers, _) = get(&base, "/nothing", "shop.example.com", &[]).await;
    assert_eq!((status, headers[ERROR_HEADER].as_str()), (404, "no_route"));
}

#[tokio::test]
async fn upstream_failures_answer_502_and_504() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let text = config(a, b).replace(
        "routes:\n          - cluster: b",
        "routes:\n          - cluster: dead",
    );
    let (_proxy, base) = start(&text).await;
    let (status, headers, _) = get(&base, "/slow", "shop.example.com", &[]).await;
    assert_eq!(
        (status, headers[ERROR_HEADER].as_str()),
        (504, "upstream_timeout")
    );
    let (status, headers, _) = get(&base, "/", "elsewhere.example.org", &[]).await;
    assert_eq!(
        (status, headers[ERROR_HEADER].as_str()),
        (502, "upstream_failed")
    );
}

#[tokio::test]
async fn weighted_clusters_split_traffic() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let text = config(a, b).replace(
        "routes:\n          - cluster: b",
        "routes:\n          - weighted_clusters: [{name: a, weight: 90}, {name: b, weight: 10}]",
    );
    let (_proxy, base) = start(&text).await;
    let mut to_b = 0;
    for _ in 0..500 {
        let (_, _, body) = get(&base, "/", "any.example.org", &[]).await;
        if body["upstream"] == "b" {
            to_b += 1;
        }
    }
    assert!(
        (20..90).contains(&to_b),
        "{to_b} of 500 went to the 10% cluster"
    );
}

/// Sends one HTTP/2 GET for `uri` over `stream` (prior knowledge); :authority comes from `uri`.
async fn h2_get<S>(stream: S, uri: &str) -> http::Response<hyper::body::Incoming>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let request = http::Request::builder()
        .uri(uri)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    common::h2_send(stream, request).await
}

#[tokio::test]
async fn http2_prior_knowledge_clients_are_served() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let (_proxy, base) = start(&config(a, b)).await;
    // HTTP/2 with prior knowledge over a plain connection; :authority names the virtual host.
    let stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let response = h2_get(stream, "http://shop.example.com/api/h2").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.headers()["x-upstream"], "a");
}

#[tokio::test]
async fn a_config_swap_under_load_drops_nothing_and_bad_configs_change_nothing() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let original = config(a, b);
    let (proxy, base) = start(&original).await;
    let swapped = original.replace(
        &format!("endpoints: [{{address: \"{a}\"}}]"),
        &format!("endpoints: [{{address: \"{b}\"}}]"),
    );
    let load: Vec<_> = (0..4)
        .map(|_| {
            let base = base.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut statuses = Vec::new();
                for _ in 0..150 {
                    let response = client
                        .get(format!("{base}/api/load"))
                        .header("host", "shop.example.com")
                        .send()
                        .await
                        .unwrap();
                    statuses.push(response.status().as_u16());
                }
                statuses
            })
        })
        .collect();
    for i in 0..20 {
        let text = if i % 2 == 0 { &swapped } else { &original };
        proxy.apply_text(text).await.unwrap();
        tokio::task::yield_now().await;
    }
    proxy.apply_text(&swapped).await.unwrap();
    for task in load {
        let statuses = task.await.unwrap();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    let (_, _, body) = get(&base, "/api/after", "shop.example.com", &[]).await;
    assert_eq!(body["upstream"], "b", "new requests see the new config");

    let broken = swapped.replace("lb: round_robin", "lb: fastest");
    let err = proxy.apply_text(&broken).await.unwrap_err().to_string();
    assert!(err.contains("clusters[1].lb"), "{err}");
    let err = proxy
        .apply_text(&swapped.replace(
            "cluster: a\n            prefix_rewrite",
            "cluster: ghost\n            prefix_rewrite",
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("routes[1].cluster: unknown cluster `ghost`"),
        "{err}"
    );
    let (_, _, body) = get(&base, "/api/still", "shop.example.com", &[]).await;
    assert_eq!(body["upstream"], "b");
    let metrics = proxy.metrics_text();
    assert!(
        metrics.contains("meridian_proxy_config_reloads_total{result=\"rejected\"} 2"),
        "{metrics}"
    );
}

/// An upstream whose `/health` answers 200 or 503 as its switch says.
async fn switchable_upstream(
    name: &'static str,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicBool>) {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let switch = healthy.clone();
    let app = axum::Router::new().fallback(move |request: Request| {
        let healthy = healthy.clone();
        async move {
            if request.uri().path() == "/health"
                && !healthy.load(std::sync::atomic::Ordering::SeqCst)
            {
                return (http::StatusCode::SERVICE_UNAVAILABLE, name).into_response();
            }
            ([("x-upstream", name)], name).into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, switch)
}

/// Polls until a request is served by `want`, or fails after a deadline.
async fn until_served_by(base: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let response = reqwest::get(format!("{base}/")).await.unwrap();
        let by = response
            .headers()
            .get("x-upstream")
            .map(|v| v.to_str().unwrap().to_owned());
        if by.as_deref() == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never served by {want} (last: {by:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_checks_move_traffic_to_the_next_priority_and_back() {
    let (primary, primary_ok) = switchable_upstream("primary").await;
    let (backup, _) = switchable_upstream("backup").await;
    let text = failover(primary, backup, "interval: 200ms, timeout: 200ms", 1, "");
    let (proxy, base) = start(&text).await;
    for _ in 0..20 {
        let response = reqwest::get(format!("{base}/")).await.unwrap();
        assert_eq!(response.headers()["x-upstream"], "primary");
    }
    primary_ok.store(false, std::sync::atomic::Ordering::SeqCst);
    until_served_by(&base, "backup").await;
    for _ in 0..20 {
        let response = reqwest::get(format!("{base}/")).await.unwrap();
        assert_eq!(
            response.headers()["x-upstream"],
            "backup",
            "traffic went back too early"
        );
    }
    primary_ok.store(true, std::sync::atomic::Ordering::SeqCst);
    until_served_by(&base, "primary").await;
    for _ in 0..20 {
        let response = reqwest::get(format!("{base}/")).await.unwrap();
        assert_eq!(
            response.headers()["x-upstream"],
            "primary",
            "not all traffic came back"
        );
    }
    let metrics = proxy.metrics_text();
    assert!(
        metrics
            .contains(r#"meridian_proxy_health_transitions_total{cluster="c",to="unhealthy"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"meridian_proxy_health_transitions_total{cluster="c",to="healthy"} 1"#),
        "{metrics}"
    );
}

/// Cluster `c` behind listener `l`: `primary` (of `weight`) at priority 0, `backup` at 1, checked
/// on `/health` with `timing` (interval and timeout) and an unhealthy threshold of 2; then the
/// clusters in `more` (YAML list items).
fn failover(
    primary: SocketAddr,
    backup: SocketAddr,
    timing: &str,
    weight: u32,
    more: &str,
) -> String {
    format!(
        r#"
listeners:
  - name: l
    address: 127.0.0.1:0
    virtual_hosts: [{{name: all, domains: ["*"], routes: [{{cluster: c}}]}}]
clusters:
  - name: c
    health_check: {{http: {{path: /health}}, {timing}, unhealthy_threshold: 2}}
    endpoints: [{{address: "{primary}", weight: {weight}}}, {{address: "{backup}", priority: 1}}]
{more}"#
    )
}

/// The configuration of `a_failing_endpoint_is_ejected_while_updates_arrive`, with the
/// primary's weight and the other cluster's endpoints depending on `turn`.
fn churned(primary: SocketAddr, backup: SocketAddr, turn: u32) -> String {
    let extra = if turn.is_multiple_of(2) {
        String::new()
    } else {
        format!(", {{address: \"127.0.0.1:{}\"}}", 20_000 + turn % 1000)
    };
    let other = format!(
        "  - name: other\n    health_check: {{tcp: {{}}, interval: 300ms, timeout: 250ms}}\n    endpoints: [{{address: \"{backup}\"}}{extra}]\n"
    );
    let timing = "interval: 300ms, timeout: 250ms";
    failover(primary, backup, timing, 1 + turn % 2, &other)
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_while_updates_arrive_every_100ms() {
    let (primary, primary_ok) = switchable_upstream("primary").await;
    let (backup, _) = switchable_upstream("backup").await;
    let (proxy, base) = start(&churned(primary, backup, 0)).await;
    until_served_by(&base, "primary").await;
    // Configuration updates every 100 ms: the checked cluster's endpoints change weight, the
    // other cluster's come and go.
    let churn = tokio::spawn({
        let proxy = proxy.clone();
        async move {
            for turn in 1.. {
                tokio::time::sleep(Duration::from_millis(100)).await;
                proxy
                    .apply_text(&churned(primary, backup, turn))
                    .await
                    .unwrap();
            }
        }
    });
    primary_ok.store(false, std::sync::atomic::Ordering::SeqCst);
    // Within its thresholds: a first probe within one interval, two failures one interval
    // apart, plus room for a loaded machine.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(3 * 300 + 3000);
    loop {
        let response = reqwest::get(format!("{base}/")).await.unwrap();
        if response.headers()["x-upstream"] == "backup" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failing endpoint was not ejected while updates arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // It stays out across further updates: its health belongs to it, not to one apply.
    for _ in 0..30 {
        let response = reqwest::get(format!("{base}/")).await.unwrap();
        assert_eq!(response.headers()["x-upstream"], "backup", "back too early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    churn.abort();
    let metrics = proxy.metrics_text();
    assert!(
        metrics
            .contains(r#"meridian_proxy_health_transitions_total{cluster="c",to="unhealthy"} 1"#),
        "{metrics}"
    );
}

/// Sends raw bytes and returns the status line of the answer.
async fn raw(base: &str, bytes: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn oversized_and_malformed_requests_are_refused() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let text = format!("{}limits: {{max_header_bytes: 8192}}\n", config(a, b));
    let (proxy, base) = start(&text).await;
    let huge = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert!(raw(&base, huge.as_bytes())
        .await
        .starts_with("HTTP/1.1 431"));
    assert!(raw(&base, b"BLAH\x01 / HTTP/1.1\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 400"));
    assert!(raw(&base, b"GET / HTTP/1.1\r\nbad header\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 400"));
    // Still serving.
    let (status, _, _) = get(&base, "/", "x.example.org", &[]).await;
    assert_eq!(status, 200);
    assert!(proxy
        .metrics_text()
        .contains("meridian_proxy_requests_total"));
}

#[tokio::test]
async fn bodies_over_the_limit_answer_413() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let text = format!("{}limits: {{max_request_body_bytes: 1000}}\n", config(a, b));
    let (_proxy, base) = start(&text).await;
    let client = reqwest::Client::new();
    let post = |size: usize| {
        client
            .post(format!("{base}/"))
            .header("host", "x.example.org")
            .body(vec![b'x'; size])
    };
    assert_eq!(post(500).send().await.unwrap().status(), 200);
    let response = post(2000).send().await.unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(response.headers()[ERROR_HEADER], "request_body_too_large");
    // Without a Content-Length the limit is enforced as the body streams.
    let chunked = format!(
        "POST / HTTP/1.1\r\nhost: x.example.org\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n7d0\r\n{}\r\n0\r\n\r\n",
        "x".repeat(2000)
    );
    let answer = raw(&base, chunked.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

/// Whether the proxy closes a connection on which the client sends `bytes` and then nothing.
async fn closes_after(base: &str, bytes: &[u8]) -> bool {
    let mut stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink))
        .await
        .is_ok()
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let text = format!(
        "{}limits: {{header_read_timeout: 300ms, idle_timeout: 300ms}}\n",
        config(a, b)
    );
    let (_proxy, base) = start(&text).await;
    assert!(
        closes_after(&base, b"GET / HTTP/1.1\r\nhost: x\r\n").await,
        "slowloris kept open"
    );
    assert!(
        closes_after(&base, b"").await,
        "silent connection kept open"
    );
}

#[tokio::test]
async fn a_request_head_trickled_past_the_header_timeout_is_cut_off() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    // The idle timeout is far off: only the header timeout can close this connection in time.
    let text = format!(
        "{}limits: {{header_read_timeout: 300ms, idle_timeout: 60s}}\n",
        config(a, b)
    );
    let (_proxy, base) = start(&text).await;
    let stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        writer.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await?;
        loop {
            // A header line every 100 ms: the connection is never idle, the head never ends.
            tokio::time::sleep(Duration::from_millis(100)).await;
            writer.write_all(b"x-pad: 1\r\n").await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    });
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut sink))
        .await
        .is_ok();
    trickle.abort();
    assert!(closed, "a trickled request head kept the connection open");
}

#[tokio::test]
async fn tcp_listeners_relay_bytes_and_skip_dead_endpoints() {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = echo.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut reader, mut writer) = stream.split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            });
        }
    });
    let text = format!(
        "listeners:\n  - {{name: db, address: \"127.0.0.1:0\", protocol: tcp, cluster: db}}\nclusters:\n  - name: db\n    lb: round_robin\n    endpoints: [{{address: \"127.0.0.1:1\"}}, {{address: \"{echo_addr}\"}}]\n"
    );
    let (proxy, base) = start(&text).await;
    for i in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
            .await
            .unwrap();
        let message = format!("ping {i}");
        stream.write_all(message.as_bytes()).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut echoed = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, message);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !proxy.metrics_text().contains(
        r#"meridian_proxy_tcp_relayed_bytes_total{listener="db",direction="upstream"} 24"#,
    ) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            proxy.metrics_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let err = proxy
        .apply_text(&text.replace("protocol: tcp, cluster: db", "protocol: tcp"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("listeners[0].cluster: a `tcp` listener needs a cluster"),
        "{err}"
    );
}

#[tokio::test]
async fn tcp_listeners_relay_a_large_stream_both_ways_intact() {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = echo.accept().await.unwrap();
        let (mut reader, mut writer) = stream.split();
        tokio::io::copy(&mut reader, &mut writer).await.unwrap();
        writer.shutdown().await.unwrap();
    });
    let text = format!(
        "listeners:\n  - {{name: db, address: \"127.0.0.1:0\", protocol: tcp, cluster: db}}\nclusters:\n  - name: db\n    endpoints: [{{address: \"{echo_addr}\"}}]\n"
    );
    let (proxy, base) = start(&text).await;
    // 24 MiB that differ from byte to byte, so that a lost or repeated chunk shows.
    let sent: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let writing = {
        let sent = sent.clone();
        tokio::spawn(async move {
            writer.write_all(&sent).await.unwrap();
            writer.shutdown().await.unwrap();
        })
    };
    let mut echoed = Vec::with_capacity(sent.len());
    tokio::time::timeout(Duration::from_secs(60), reader.read_to_end(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    writing.await.unwrap();
    assert_eq!(echoed.len(), sent.len());
    assert!(
        echoed == sent,
        "the echoed stream differs from the one sent"
    );
    let relayed = format!(
        r#"meridian_proxy_tcp_relayed_bytes_total{{listener="db",direction="downstream"}} {}"#,
        sent.len()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !proxy.metrics_text().contains(&relayed) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            proxy.metrics_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Connects over TLS to `base` for `shop.example.com`, offering `alpn`; returns the stream and the
/// protocol the proxy chose.
async fn tls_connect(
    base: &str,
    ca: &rcgen::Certificate,
    alpn: &[&[u8]],
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Vec<u8>,
) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("shop.example.com").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    let chosen = stream
        .get_ref()
        .1
        .alpn_protocol()
        .unwrap_or_default()
        .to_vec();
    (stream, chosen)
}

#[tokio::test]
async fn tls_listeners_negotiate_http2_and_http1_by_alpn() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let dir = tempfile::tempdir().unwrap();
    let (cert, cert_file, key_file) = common::certificate_files(dir.path());
    let tls = format!(
        "    tls: {{cert_file: \"{}\", key_file: \"{}\"}}\n    virtual_hosts:",
        cert_file.display(),
        key_file.display()
    );
    let (proxy, base) = start(&config(a, b).replacen("    virtual_hosts:", &tls, 1)).await;

    let (stream, chosen) = tls_connect(&base, &cert, &[b"h2", b"http/1.1"]).await;
    assert_eq!(chosen, b"h2");
    let response = h2_get(stream, "https://shop.example.com/api/tls").await;
    assert_eq!(
        (response.status(), response.version()),
        (http::StatusCode::OK, http::Version::HTTP_2)
    );
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let seen: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");

    let (stream, chosen) = tls_connect(&base, &cert, &[b"http/1.1"]).await;
    assert_eq!(chosen, b"http/1.1");
    let (mut h1, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .uri("/api/tls")
        .header("host", "shop.example.com")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = h1.send_request(request).await.unwrap();
    assert_eq!(
        (response.status(), response.version()),
        (http::StatusCode::OK, http::Version::HTTP_11)
    );

    // A plaintext client on a TLS listener fails the handshake and is counted.
    let plaintext = reqwest::Client::new().get(format!("{base}/")).send().await;
    assert!(
        plaintext.is_err(),
        "plaintext was answered on a TLS listener"
    );
    assert!(proxy
        .metrics_text()
        .contains("meridian_proxy_tls_handshake_failures_total"));

    // A missing key file is an error naming the field; the config in force stays.
    let broken =
        config(a, b).replacen("    virtual_hosts:", &tls.replace("key.pem", "nope.pem"), 1);
    let err = proxy.apply_text(&broken).await.unwrap_err().to_string();
    assert!(err.contains("listeners[0].tls.key_file"), "{err}");
    // So is a certificate source nobody registered.
    let sourced = "    tls: {source: edge}\n    virtual_hosts:";
    let unknown = config(a, b).replacen("    virtual_hosts:", sourced, 1);
    let err = proxy.apply_text(&unknown).await.unwrap_err().to_string();
    assert!(
        err.contains("listeners[0].tls.source: no certificate source `edge` is registered"),
        "{err}"
    );
}

#[tokio::test]
async fn draining_finishes_requests_in_flight_and_accepts_no_new_connections() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let (proxy, base) = start(&config(a, b)).await;
    let in_flight = {
        let base = base.clone();
        tokio::spawn(async move { get(&base, "/pause", "elsewhere.example.org", &[]).await })
    };
    let busy = r#"meridian_proxy_active_connections{listener="public"} 1"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !proxy.metrics_text().contains(busy) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.drain(Duration::from_secs(10)).await })
    };
    let address = base.trim_start_matches("http://").to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(&address).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still accepting while draining"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!((status, &body["upstream"]), (200, &json!("b")));
    assert_eq!(drained.await.unwrap(), 0, "connections were cut off");
}

#[tokio::test]
async fn a_listener_can_be_renamed_or_change_protocol_at_the_same_address() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    // A fixed address of our own on a distinct loopback IP, so that it can be reused.
    let address = "127.0.0.57:18557";
    let http = |name: &str, cluster: &str| {
        format!(
            "listeners:\n  - name: {name}\n    address: \"{address}\"\n    virtual_hosts: [{{name: all, domains: [\"*\"], routes: [{{cluster: {cluster}}}]}}]\nclusters:\n  - {{name: a, endpoints: [{{address: \"{a}\"}}]}}\n  - {{name: b, endpoints: [{{address: \"{b}\"}}]}}\n"
        )
    };
    let (proxy, base) = start(&http("web", "a")).await;
    assert_eq!(base, format!("http://{address}"));
    assert_eq!(
        get(&base, "/", "x.example.org", &[]).await.2["upstream"],
        "a"
    );
    proxy.apply_text(&http("site", "b")).await.unwrap();
    assert_eq!(
        get(&base, "/", "x.example.org", &[]).await.2["upstream"],
        "b"
    );
    assert_eq!(
        proxy.listeners().await,
        [("site".to_owned(), address.parse().unwrap())]
    );
    let tcp = format!(
        "listeners:\n  - {{name: site, address: \"{address}\", protocol: tcp, cluster: a}}\nclusters:\n  - {{name: a, endpoints: [{{address: \"{a}\"}}]}}\n"
    );
    proxy.apply_text(&tcp).await.unwrap();
    // Relayed as opaque TCP now: the upstream answers the raw request itself.
    let answer = raw(
        &base,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let duplicate = http("one", "a").replace(
        "clusters:",
        &format!("  - {{name: two, address: \"{address}\"}}\nclusters:"),
    );
    let err = proxy.apply_text(&duplicate).await.unwrap_err().to_string();
    assert!(err.contains("listeners[1].address"), "{err}");
}

#[tokio::test]
async fn a_quiet_streaming_response_is_not_an_idle_connection() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let text = format!("{}limits: {{idle_timeout: 200ms}}\n", config(a, b));
    let (_proxy, base) = start(&text).await;
    let (status, _, body) = get(&base, "/stream", "x.example.org", &[]).await;
    assert_eq!((status, body), (200, Value::String("first second".into())));
}

#[tokio::test]
async fn clients_that_abandon_their_bodies_do_not_get_endpoints_ejected() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let text = config(a, b).replace(
        "  - name: b\n    lb: round_robin\n",
        "  - name: b\n    lb: round_robin\n    outlier_detection: {consecutive_gateway_errors: 2}\n",
    );
    let (proxy, base) = start(&text).await;
    for _ in 0..5 {
        let mut stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
            .await
            .unwrap();
        stream
            .write_all(
                b"POST / HTTP/1.1\r\nhost: x.example.org\r\ncontent-length: 1000\r\n\r\nonly this",
            )
            .await
            .unwrap();
        drop(stream);
    }
    let (status, _, body) = get(&base, "/", "x.example.org", &[]).await;
    assert_eq!((status, &body["upstream"]), (200, &json!("b")));
    let metrics = proxy.metrics_text();
    assert!(
        !metrics.contains("meridian_proxy_outlier_ejections_total{"),
        "{metrics}"
    );
}

#[tokio::test]
async fn sticky_sessions_stay_sticky_while_endpoints_are_added() {
    let mut addresses = Vec::new();
    for name in ["s1", "s2", "s3", "s4"] {
        addresses.push(upstream(name).await);
    }
    let text = |count: usize| {
        let endpoints: Vec<String> = addresses[..count]
            .iter()
            .map(|a| format!("{{address: \"{a}\"}}"))
            .collect();
        let endpoints = endpoints.join(", ");
        format!(
            "listeners:
  - name: l
    address: 127.0.0.1:0
    virtual_hosts: [{{name: all, domains: ['*'], routes: [{{match: {{prefix: /h}}, cluster: by_header}}, {{cluster: by_cookie}}]}}]
clusters:
  - name: by_header
    lb: ring_hash
    hash_on: {{header: x-user}}
    endpoints: [{endpoints}]
  - name: by_cookie
    lb: ring_hash
    hash_on: {{cookie: session}}
    endpoints: [{endpoints}]
"
        )
    };
    let (proxy, base) = start(&text(3)).await;
    let users: Vec<String> = (0..30).map(|i| format!("user-{i}")).collect();
    // Where each user's requests go, by header and by cookie (asked twice: it must not vary).
    let placement = |base: String, users: Vec<String>| async move {
        let mut placed = Vec::new();
        for user in &users {
            let cookie = format!("theme=dark; session={user}");
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (_, _, by_header) = get(&base, "/h", "any", &[("x-user", user)]).await;
                let (_, _, by_cookie) = get(&base, "/", "any", &[("cookie", &cookie)]).await;
                seen.push((by_header["upstream"].clone(), by_cookie["upstream"].clone()));
            }
            assert_eq!(seen[0], seen[1], "{user} moved between two requests");
            placed.push(seen.swap_remove(0));
        }
        placed
    };
    let before = placement(base.clone(), users.clone()).await;
    let used: std::collections::HashSet<_> = before.iter().map(|(h, _)| h.clone()).collect();
    assert!(used.len() >= 2, "30 users all hashed to {used:?}");

    proxy.apply_text(&text(4)).await.unwrap();
    let after = placement(base, users).await;
    let mut stayed = 0;
    for ((header_before, cookie_before), (header_after, cookie_after)) in before.iter().zip(&after)
    {
        // A key either keeps its endpoint or moves to the new one: nobody else is reshuffled.
        for (was, is) in [(header_before, header_after), (cookie_before, cookie_after)] {
            assert!(was == is || is == "s4", "moved from {was} to {is}");
            stayed += usize::from(was == is);
        }
    }
    assert!(stayed >= 30, "only {stayed} of 60 placements stayed");
}
