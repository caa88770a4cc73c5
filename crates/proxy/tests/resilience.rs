//! Resilience against real upstreams on loopback: killed endpoints, sick endpoints, full clusters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::response::IntoResponse;
use meridian_proxy::{Proxy, ERROR_HEADER};
use tokio::sync::watch;

/// An upstream that can be killed: it stops accepting and closes every open connection.
struct Upstream {
    addr: SocketAddr,
    kill: watch::Sender<bool>,
    sick: Arc<AtomicBool>,
}

impl Upstream {
    async fn start(name: &'static str) -> Upstream {
        Upstream::start_at(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// An upstream on `address` (port 0: any free port).
    async fn start_at(name: &'static str, address: SocketAddr) -> Upstream {
        let sick = Arc::new(AtomicBool::new(false));
        let app = {
            let sick = sick.clone();
            axum::Router::new().fallback(move || {
                let sick = sick.clone();
                async move {
                    if sick.load(Ordering::SeqCst) {
                        return (
                            http::StatusCode::SERVICE_UNAVAILABLE,
                            [("x-upstream", name)],
                            "sick",
                        )
                            .into_response();
                    }
                    if name == "slow" {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    ([("x-upstream", name)], name).into_response()
                }
            })
        };
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (kill, killed) = watch::channel(false);
        tokio::spawn(async move {
            let mut stop = killed.clone();
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => accepted.unwrap(),
                    _ = stop.changed() => return,
                };
                let app = app.clone();
                let mut stop = killed.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let app = app.clone();
                            async move {
                                use tower::ServiceExt;
                                app.oneshot(request.map(axum::body::Body::new)).await
                            }
                        },
                    );
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = stop.changed() => {}
                    }
                });
            }
        });
        Upstream { addr, kill, sick }
    }

    fn kill(&self) {
        let _ = self.kill.send(true);
    }
}

async fn proxy(cluster: &str, route_extra: &str) -> (Arc<Proxy>, String) {
    let text = format!(
        "listeners:\n  - name: l\n    address: 127.0.0.1:0\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - cluster: c\n{route_extra}\nclusters:\n{cluster}\n"
    );
    let proxy = Arc::new(Proxy::default());
    proxy.apply_text(&text).await.unwrap();
    let address = proxy.listeners().await[0].1;
    (proxy, format!("http://{address}/"))
}

fn endpoints(upstreams: &[&Upstream]) -> String {
    let list: Vec<String> = upstreams
        .iter()
        .map(|u| format!("{{address: \"{}\"}}", u.addr))
        .collect();
    format!("[{}]", list.join(", "))
}

#[tokio::test]
async fn load_keeps_flowing_while_an_upstream_is_killed() {
    let ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let cluster = format!(
        "  - name: c\n    outlier_detection: {{consecutive_gateway_errors: 2, base_ejection_time: 30s}}\n    endpoints: {}",
        endpoints(&[&ups[0], &ups[1], &ups[2]])
    );
    let (proxy, base) = proxy(
        &cluster,
        "            retries: {attempts: 2, on: [connect_failure, gateway_error]}",
    )
    .await;
    let (progress_tx, mut progress) = watch::channel(0usize);
    let progress_tx = Arc::new(progress_tx);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (base, progress_tx) = (base.clone(), progress_tx.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut failures = Vec::new();
                for _ in 0..250 {
                    let response = client.get(&base).send().await.unwrap();
                    if response.status() != 200 {
                        failures.push(response.status().as_u16());
                    }
                    progress_tx.send_modify(|n| *n += 1);
                }
                failures
            })
        })
        .collect();
    // Kill one upstream once the load is under way.
    progress.wait_for(|n| *n >= 200).await.unwrap();
    ups[1].kill();
    for client in clients {
        let failures = client.await.unwrap();
        assert!(failures.is_empty(), "failed requests: {failures:?}");
    }
    let metrics = proxy.metrics_text();
    assert!(
        metrics.contains(r#"meridian_proxy_outlier_ejections_total{cluster="c"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"meridian_proxy_retries_total{cluster="c"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_sick_endpoint_is_ejected_and_comes_back() {
    let healthy = Upstream::start("healthy").await;
    let sick = Upstream::start("sick").await;
    sick.sick.store(true, Ordering::SeqCst);
    let cluster = format!(
        "  - name: c\n    lb: round_robin\n    outlier_detection: {{consecutive_gateway_errors: 3, base_ejection_time: 300ms}}\n    endpoints: {}",
        endpoints(&[&healthy, &sick])
    );
    let (proxy, base) = proxy(&cluster, "").await;
    let client = reqwest::Client::new();
    let mut served_by_sick = 0;
    for _ in 0..40 {
        let response = client.get(&base).send().await.unwrap();
        if response.headers()["x-upstream"] == "sick" {
            served_by_sick += 1;
        }
    }
    assert_eq!(
        served_by_sick, 3,
        "ejected after exactly three gateway errors"
    );
    assert!(proxy
        .metrics_text()
        .contains(r#"meridian_proxy_outlier_ejections_total{cluster="c"} 1"#));
    // Healed; after the ejection time it gets traffic again.
    sick.sick.store(false, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = client.get(&base).send().await.unwrap();
        if response.headers()["x-upstream"] == "sick" {
            assert_eq!(response.status(), 200);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the endpoint never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GETs `base` in a task of its own; the answer's status and `x-meridian-error`.
fn spawn_get(base: String) -> tokio::task::JoinHandle<(u16, Option<String>)> {
    tokio::spawn(async move {
        let response = reqwest::get(&base).await.unwrap();
        let reason = response
            .headers()
            .get(ERROR_HEADER)
            .map(|v| v.to_str().unwrap().to_owned());
        (response.status().as_u16(), reason)
    })
}

/// Sends `count` requests at once; returns each answer's status and `x-meridian-error`.
async fn concurrent_gets(base: &str, count: usize) -> Vec<(u16, Option<String>)> {
    let requests: Vec<_> = (0..count).map(|_| spawn_get(base.to_owned())).collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.unwrap());
    }
    answers
}

#[tokio::test]
async fn a_full_cluster_sheds_load_with_503_and_says_why() {
    let slow = Upstream::start("slow").await;
    let cluster = format!(
        "  - name: c\n    circuit_breakers: {{max_requests: 2, max_pending_requests: 0}}\n    endpoints: {}",
        endpoints(&[&slow])
    );
    let (proxy, base) = proxy(&cluster, "").await;
    let answers = concurrent_gets(&base, 6).await;
    let served = answers.iter().filter(|(s, _)| *s == 200).count();
    let shed: Vec<_> = answers.iter().filter(|(s, _)| *s == 503).collect();
    assert!(served >= 2, "{answers:?}");
    assert!(!shed.is_empty(), "{answers:?}");
    assert!(shed
        .iter()
        .all(|(_, why)| why.as_deref() == Some("overflow_max_requests")));
    assert!(proxy.metrics_text().contains(
        r#"meridian_proxy_circuit_breaker_overflows_total{cluster="c",limit="max_requests"}"#
    ));
}

/// An upstream that holds every request until the gate opens; `arrived` counts requests.
async fn gated_upstream() -> (SocketAddr, watch::Sender<bool>, watch::Receiver<usize>) {
    let (gate, opened) = watch::channel(false);
    let (arrivals, arrived) = watch::channel(0usize);
    let arrivals = Arc::new(arrivals);
    let app = axum::Router::new().fallback(move || {
        let (mut opened, arrivals) = (opened.clone(), arrivals.clone());
        async move {
            arrivals.send_modify(|n| *n += 1);
            let _ = opened.wait_for(|open| *open).await;
            "done"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, gate, arrived)
}

#[tokio::test]
async fn a_full_cluster_queues_up_to_its_pending_limit_and_sheds_the_rest() {
    let (addr, gate, mut arrived) = gated_upstream().await;
    let cluster = format!(
        "  - name: c\n    circuit_breakers: {{max_requests: 1, max_pending_requests: 1}}\n    endpoints: [{{address: \"{addr}\"}}]"
    );
    let (proxy, base) = proxy(&cluster, "").await;
    // The first request takes the cluster's only slot and waits upstream.
    let first = spawn_get(base.clone());
    arrived.wait_for(|n| *n == 1).await.unwrap();
    // Of two more, one waits for the slot and one is turned away at once.
    let (second, third) = (spawn_get(base.clone()), spawn_get(base.clone()));
    let (turned_away, waiting) = match futures_util::future::select(second, third).await {
        futures_util::future::Either::Left((answer, other))
        | futures_util::future::Either::Right((answer, other)) => (answer.unwrap(), other),
    };
    assert_eq!(
        turned_away,
        (503, Some("overflow_pending_requests".to_owned()))
    );
    gate.send_replace(true);
    assert_eq!(first.await.unwrap(), (200, None));
    assert_eq!(waiting.await.unwrap(), (200, None));
    assert_eq!(
        *arrived.borrow(),
        2,
        "the waiting request reached the upstream"
    );
    assert!(proxy.metrics_text().contains(
        r#"meridian_proxy_circuit_breaker_overflows_total{cluster="c",limit="pending_requests"} 1"#
    ));
}

#[tokio::test]
async fn a_cluster_at_its_connection_limit_sheds_load_with_503() {
    let slow = Upstream::start("slow").await;
    let cluster = format!(
        "  - name: c\n    circuit_breakers: {{max_connections: 1}}\n    endpoints: {}",
        endpoints(&[&slow])
    );
    let (proxy, base) = proxy(&cluster, "").await;
    let answers = concurrent_gets(&base, 4).await;
    assert!(answers.iter().any(|(s, _)| *s == 200), "{answers:?}");
    assert!(
        answers
            .iter()
            .any(|(s, why)| *s == 503 && why.as_deref() == Some("overflow_max_connections")),
        "{answers:?}"
    );
    let metrics = proxy.metrics_text();
    assert!(metrics.contains(r#"limit="max_connections""#), "{metrics}");
    assert!(
        metrics.contains(r#"meridian_proxy_upstream_connect_seconds_count{cluster="c"}"#),
        "{metrics}"
    );
}

/// The sum of the samples of `name` for cluster `c` in the proxy's metrics.
fn cluster_metric(proxy: &Proxy, name: &str) -> u64 {
    let prefix = format!("{name}{{cluster=\"c\"}} ");
    proxy
        .metrics_text()
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix)?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn the_retry_budget_decides_whether_a_sick_cluster_is_retried() {
    let sick = Upstream::start("sick").await;
    sick.sick.store(true, Ordering::SeqCst);
    let retries = "            retries: {on: [5xx], attempts: 1, backoff: 1ms}";
    for (ratio, retried) in [(1.0, true), (0.0, false)] {
        let cluster = format!(
            "  - name: c\n    retry_budget: {{ratio: {ratio}, min_per_second: 0}}\n    endpoints: {}",
            endpoints(&[&sick])
        );
        let (proxy, base) = proxy(&cluster, retries).await;
        for _ in 0..5 {
            assert_eq!(reqwest::get(&base).await.unwrap().status(), 503);
        }
        let (made, refused) = (
            cluster_metric(&proxy, "meridian_proxy_retries_total"),
            cluster_metric(&proxy, "meridian_proxy_retry_budget_exhausted_total"),
        );
        // One request in flight at a time: a ratio of 1 lets each retry, 0 none.
        let expected = if retried { (5, 0) } else { (0, 5) };
        assert_eq!((made, refused), expected, "ratio {ratio}");
    }
}

/// Which upstream served a GET of `base` (`None`: the proxy answered itself).
async fn served_by(base: &str) -> Option<String> {
    let response = reqwest::get(base).await.unwrap();
    response
        .headers()
        .get("x-upstream")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Polls until `base` is served by `want`, or fails after a deadline.
async fn until_served_by(base: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while served_by(base).await.as_deref() != Some(want) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never served by {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until `base` is served by `want`, then checks that the next 20 requests are too.
async fn settles_on(base: &str, want: &str) {
    until_served_by(base, want).await;
    for _ in 0..20 {
        assert_eq!(served_by(base).await.as_deref(), Some(want));
    }
}

#[tokio::test]
async fn tcp_health_checks_follow_whether_the_endpoint_accepts_connections() {
    let primary = Upstream::start("primary").await;
    let backup = Upstream::start("backup").await;
    let cluster = format!(
        "  - name: c\n    health_check: {{tcp: {{}}, interval: 200ms, timeout: 200ms, unhealthy_threshold: 2}}\n    endpoints: [{{address: \"{}\"}}, {{address: \"{}\", priority: 1}}]",
        primary.addr, backup.addr
    );
    let (proxy, base) = proxy(&cluster, "").await;
    until_served_by(&base, "primary").await;
    primary.kill();
    settles_on(&base, "backup").await;
    // Listening again on the same address brings the traffic back.
    let _revived = Upstream::start_at("primary", primary.addr).await;
    settles_on(&base, "primary").await;
    let metrics = proxy.metrics_text();
    for to in ["unhealthy", "healthy"] {
        let line =
            format!("meridian_proxy_health_transitions_total{{cluster=\"c\",to=\"{to}\"}} 1");
        assert!(metrics.contains(&line), "{metrics}");
    }
}

#[tokio::test]
async fn a_per_try_timeout_moves_a_slow_attempt_to_another_endpoint() {
    let slow = Upstream::start("slow").await;
    let fast = Upstream::start("fast").await;
    let cluster = format!(
        "  - name: c\n    lb: round_robin\n    endpoints: {}",
        endpoints(&[&slow, &fast])
    );
    let retries = "            retries: {on: [gateway_error], attempts: 1, per_try_timeout: 250ms, backoff: 1ms}";
    let (proxy, base) = proxy(&cluster, retries).await;
    // Round robin sends every other first attempt to the slow endpoint (300 ms).
    for _ in 0..6 {
        assert_eq!(served_by(&base).await.as_deref(), Some("fast"));
    }
    assert!(cluster_metric(&proxy, "meridian_proxy_retries_total") >= 2);
}

#[tokio::test]
async fn the_default_balancer_prefers_the_faster_endpoint() {
    let slow = Upstream::start("slow").await;
    let fast = Upstream::start("fast").await;
    let cluster = format!("  - name: c\n    endpoints: {}", endpoints(&[&slow, &fast]));
    let (_proxy, base) = proxy(&cluster, "").await;
    let mut to_slow = 0;
    for _ in 0..30 {
        if served_by(&base).await.as_deref() == Some("slow") {
            to_slow += 1;
        }
    }
    // Peak-EWMA: once the slow endpoint's latency is known, the fast one wins every choice.
    assert!(
        to_slow <= 3,
        "{to_slow} of 30 requests went to the slow endpoint"
    );
}
