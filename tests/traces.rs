//! Traces end to end, each component its own process: client → edge → gateway → node proxy →
//! instance, and a mesh call from that instance to its service by name (→ node proxy outbound →
//! node proxy inbound → instance). Every proxy exports its spans over OTLP/gRPC to a receiver
//! the test runs; one request's spans share a trace and chain hop by hop, and each instance
//! gets the last hop's span as its parent.

mod support;

use std::time::{Duration, Instant};

use meridian_proxy::trace_fixture::{OtlpReceiver, ReceivedSpan};
use support::{agent_with, edge_with, gateway_with, Deployed, RegionalPlane, HELLO};

const DEADLINE: Duration = Duration::from_secs(30);

fn shop() -> String {
    format!(
        "\
org: acme
app: shop
name: web
regions: [fra]
runtime: {{process: {{command: {HELLO}}}}}
ports: [{{name: http, port: 8080}}]
routes: [{{path_prefix: /, port: http}}]
domains: [shop.example.com]
health_checks: [{{http: {{port: http, path: /healthz}}, interval: 200ms, timeout: 200ms, grace_period: 5s}}]
"
    )
}

/// `GET http://shop.example.com{path}` through `edge`: the body, once answered 200.
async fn get(edge: &str, path: &str) -> String {
    let response = reqwest::Client::new()
        .get(format!("http://{edge}{path}"))
        .header("host", "shop.example.com")
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// The trace id and parent id of the (last) `traceparent: …` line in `body`.
fn traceparent(body: &str) -> (String, String) {
    let line = body
        .lines()
        .rfind(|l| l.contains("traceparent: "))
        .unwrap_or_else(|| panic!("no traceparent in {body}"));
    let value = line.rsplit("traceparent: ").next().unwrap();
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[3], "01", "sampled: {value}");
    (parts[1].to_owned(), parts[2].to_owned())
}

/// The spans of `trace_id` once there are `count` of them.
async fn spans(receiver: &OtlpReceiver, trace_id: &str, count: usize) -> Vec<ReceivedSpan> {
    let end = Instant::now() + DEADLINE;
    loop {
        let spans: Vec<ReceivedSpan> = receiver
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        if spans.len() >= count {
            return spans;
        }
        assert!(
            Instant::now() < end,
            "{} of {count}: {spans:#?}",
            spans.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The one span among `spans` whose parent is `parent` (empty: the root).
fn child<'a>(spans: &'a [ReceivedSpan], parent: &str) -> &'a ReceivedSpan {
    let children: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.parent_span_id == parent)
        .collect();
    assert_eq!(children.len(), 1, "children of {parent:?}: {spans:#?}");
    children[0]
}

/// Checks that `spans` form a chain from the root, recorded by `components` in order, with
/// `path` their `url.path`s; returns the last span's id.
fn chain(spans: &[ReceivedSpan], hops: &[(&str, &str)]) -> String {
    assert_eq!(spans.len(), hops.len(), "{spans:#?}");
    let mut parent = String::new();
    for (component, path) in hops {
        let span = child(spans, &parent);
        assert_eq!(
            span.resource["service.name"],
            format!("meridian-{component}")
        );
        assert_eq!(span.kind, 2, "a server span: {span:#?}");
        assert_eq!(span.attributes["http.request.method"], "GET");
        assert_eq!(span.attributes["url.path"], *path, "{span:#?}");
        assert_eq!(span.attributes["http.response.status_code"], "200");
        assert!(!span.attributes.contains_key("error.type"), "{span:#?}");
        parent = span.span_id.clone();
    }
    parent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_spans_chain_from_the_edge_to_the_instance_and_across_a_mesh_call() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = OtlpReceiver::start("127.0.140.250:0".parse().unwrap())
        .await
        .unwrap();
    let otlp = receiver.endpoint();
    let traced = ["--otlp-endpoint", otlp.as_str()];
    let platform = Deployed::start_on(dir.path(), &shop(), "127.0.140.1");
    let (global, token) = (&platform.global, &platform.token);
    let region = RegionalPlane::start_on(
        global,
        token,
        "fra",
        Some("127.0.140.2:8080"),
        "127.0.140.3",
    );
    let mut agent_args = vec!["--instance-addresses", "127.0.140.201"];
    agent_args.extend(["--isolation", "host"]);
    agent_args.extend(traced);
    let node = agent_with(&region, "fra-1", dir.path(), &agent_args);
    let (_gateway, _) = gateway_with(&region, dir.path(), &traced).await;
    let (_edge, edge) = edge_with(&platform, &region, dir.path(), &traced);
    support::until_the_shop_answers(&edge, "a greeting", |body| body.contains(" in fra ")).await;

    // edge → gateway → node proxy → instance.
    let seen = get(&edge, "/forwarded").await;
    let (trace_id, parent) = traceparent(&seen);
    let hops = [
        ("edge", "/forwarded"),
        ("gateway", "/forwarded"),
        ("node-proxy", "/forwarded"),
    ];
    let last = chain(&spans(&receiver, &trace_id, 3).await, &hops);
    assert_eq!(
        parent, last,
        "the instance's parent is the node proxy's span"
    );
    let spans_of = spans(&receiver, &trace_id, 3).await;
    let node_proxy = child(
        &spans_of,
        &child(&spans_of, &child(&spans_of, "").span_id).span_id,
    );
    assert_eq!(node_proxy.resource["meridian.region"], "fra");
    assert_eq!(node_proxy.resource["meridian.node"], "fra-1");

    // The instance calls its own service by name, passing its trace context on: the node
    // proxy's outbound hop, then its inbound hop, record spans in the same trace.
    let called = "http://web.shop.internal:8080/forwarded";
    let seen = get(&edge, &format!("/call?url={called}")).await;
    assert!(seen.contains("answered 200"), "{seen}");
    let (trace_id, parent) = traceparent(&seen);
    let hops = [
        ("edge", "/call"),
        ("gateway", "/call"),
        ("node-proxy", "/call"),
        ("node-proxy", "/forwarded"),
        ("node-proxy", "/forwarded"),
    ];
    let last = chain(&spans(&receiver, &trace_id, 5).await, &hops);
    assert_eq!(
        parent, last,
        "the called instance's parent is the inbound hop's span"
    );

    // The node proxy counts what it exported (5 spans of these two requests, and those of the
    // requests before them).
    let end = Instant::now() + DEADLINE;
    loop {
        let metrics = support::metrics(&node.admin).await;
        let exported = metrics
            .lines()
            .find_map(|l| l.strip_prefix("meridian_proxy_trace_spans_exported_total "))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if exported >= 4 {
            break;
        }
        assert!(Instant::now() < end, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first port from `from` (by steps of 7) that is free with those at `offsets` from it,
/// on 127.0.0.1 (where `meridian dev` listens).
fn free_ports(from: u16, offsets: &[u16]) -> u16 {
    (from..from + 10_000)
        .step_by(7)
        .find(|base| {
            offsets
                .iter()
                .all(|d| std::net::TcpListener::bind(("127.0.0.1", base + d)).is_ok())
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meridian_dev_passes_its_endpoint_to_every_proxy() {
    let receiver = OtlpReceiver::start("127.0.140.251:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Ports of its gateways (three, and three 100 up), edges (two) and their HTTPS side (two),
    // all free.
    let gateways = free_ports(40_000, &[0, 1, 2, 100, 101, 102]);
    let edges = free_ports(gateways + 200, &[0, 1]);
    let https = free_ports(edges + 10, &[0, 1]);
    let dev = std::process::Command::new(support::MERIDIAN)
        .args(["dev", "--listen", "127.0.140.5:0", "--exit-when-ready"])
        .arg("--data-dir")
        .arg(dir.path().join("dev"))
        .args(["--gateway-port", &gateways.to_string()])
        .args(["--edge-port", &edges.to_string()])
        .args(["--edge-https-port", &https.to_string()])
        .args(["--otlp-endpoint", &receiver.endpoint()])
        .env("MERIDIAN_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Dev asks every gateway and edge for the example before it stops everything.
    let ended = tokio::task::spawn_blocking(move || dev.wait_with_output().unwrap())
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&ended.stderr);
    assert!(ended.status.success(), "{said}");
    let end = Instant::now() + DEADLINE;
    let wanted = ["meridian-edge", "meridian-gateway", "meridian-node-proxy"];
    loop {
        let spans = receiver.spans();
        let seen = |service: &str| spans.iter().any(|s| s.resource["service.name"] == service);
        if wanted.iter().all(|w| seen(w)) {
            break;
        }
        let services: std::collections::BTreeSet<&str> = spans
            .iter()
            .map(|s| s.resource["service.name"].as_str())
            .collect();
        assert!(Instant::now() < end, "spans only of {services:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
