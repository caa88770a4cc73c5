//! Traces through two proxies on loopback (a public one that trusts nobody, then one that
//! trusts its callers, as an edge and a gateway): W3C Trace Context carried to the upstream,
//! one server span per hop exported over OTLP/gRPC to a receiver the test runs, sampling.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use meridian_proxy::trace_fixture::{OtlpReceiver, ReceivedSpan};
use meridian_proxy::{Proxy, TraceOptions};

const DEADLINE: Duration = Duration::from_secs(20);
/// The address block of this test's listeners.
const LOOPBACK: &str = "127.0.140.1";

/// An upstream answering each request with its `traceparent` and `tracestate`.
async fn upstream() -> SocketAddr {
    let app = axum::Router::new().fallback(|request: Request| async move {
        let field = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        format!("{}\n{}", field("traceparent"), field("tracestate"))
    });
    let listener = tokio::net::TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

/// A proxy whose one listener (`trust_forwarded: trust`) sends everything to `to`, traced to
/// `receiver` as `component` with `ratio`; its listener's address.
async fn proxy(
    component: &str,
    trust: &str,
    to: SocketAddr,
    receiver: &OtlpReceiver,
    ratio: f64,
) -> (Arc<Proxy>, SocketAddr) {
    let proxy = Arc::new(Proxy::default());
    let options = TraceOptions {
        endpoint: receiver.endpoint(),
        sample_ratio: ratio,
        component: component.to_owned(),
        node: format!("{component}-1"),
        region: Some("fra".to_owned()),
    };
    assert!(proxy.trace_to(&options).unwrap());
    assert!(!proxy.trace_to(&options).unwrap(), "one tracer per proxy");
    let config = format!(
        r#"
listeners:
  - name: {component}
    address: {LOOPBACK}:0
    trust_forwarded: {trust}
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes: [{{name: everything, cluster: next}}]
clusters:
  - name: next
    endpoints: [{{address: "{to}"}}]
"#
    );
    proxy.apply_text(&config).await.unwrap();
    let address = proxy.listeners().await[0].1;
    (proxy, address)
}

/// The chain edge → gateway → upstream, traced to a new receiver with `ratio`.
struct Chain {
    receiver: OtlpReceiver,
    edge: (Arc<Proxy>, SocketAddr),
    gateway: Arc<Proxy>,
}

impl Chain {
    async fn start(ratio: f64) -> Chain {
        let receiver = OtlpReceiver::start(format!("{LOOPBACK}:0").parse().unwrap())
            .await
            .unwrap();
        let upstream = upstream().await;
        let (gateway, at) = proxy("gateway", "all", upstream, &receiver, ratio).await;
        let edge = proxy("edge", "none", at, &receiver, ratio).await;
        Chain {
            receiver,
            edge,
            gateway,
        }
    }

    /// `GET /items/1` through the chain with `fields`: the upstream's `traceparent` and
    /// `tracestate`.
    async fn get(&self, fields: &[(&str, &str)]) -> (String, String) {
        let mut request = reqwest::Client::new()
            .get(format!("http://{}/items/1?x=2", self.edge.1))
            .header("host", "shop.example.com");
        for (name, value) in fields {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        let (traceparent, tracestate) = text.split_once('\n').unwrap();
        (traceparent.to_owned(), tracestate.to_owned())
    }

    /// The spans of `trace_id` once there are `count` of them.
    async fn spans(&self, trace_id: &str, count: usize) -> Vec<ReceivedSpan> {
        let end = Instant::now() + DEADLINE;
        loop {
            let spans: Vec<ReceivedSpan> = self
                .receiver
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            if spans.len() >= count {
                return spans;
            }
            assert!(
                Instant::now() < end,
                "{} of {count} spans: {spans:#?}",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The span `service` recorded among `spans`.
fn by<'a>(spans: &'a [ReceivedSpan], service: &str) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|s| s.resource["service.name"] == service)
        .unwrap_or_else(|| panic!("no span of {service}: {spans:#?}"))
}

fn fields(traceparent: &str) -> (&str, &str, &str) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    (parts[1], parts[2], parts[3])
}

#[tokio::test]
async fn a_request_without_a_trace_starts_one_whose_spans_chain_to_the_upstream() {
    let chain = Chain::start(1.0).await;
    let (traceparent, tracestate) = chain.get(&[("tracestate", "rojo=1")]).await;
    let (trace_id, parent_id, flags) = fields(&traceparent);
    assert_eq!(flags, "01");
    assert_eq!(tracestate, "", "a new trace keeps no state of the client's");
    let spans = chain.spans(trace_id, 2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let (edge, gateway) = (by(&spans, "meridian-edge"), by(&spans, "meridian-gateway"));
    assert_eq!(edge.parent_span_id, "", "the edge started the trace");
    assert_eq!(gateway.parent_span_id, edge.span_id);
    assert_eq!(
        parent_id, gateway.span_id,
        "the upstream's parent is the last hop"
    );
    for span in [edge, gateway] {
        assert_eq!(span.kind, 2, "a server span");
        assert_eq!(span.name, "GET");
        let attribute = |key: &str| span.attributes.get(key).map(String::as_str);
        assert_eq!(attribute("http.request.method"), Some("GET"));
        assert_eq!(attribute("url.path"), Some("/items/1"));
        assert_eq!(attribute("http.response.status_code"), Some("200"));
        assert_eq!(attribute("server.address"), Some("shop.example.com"));
        assert_eq!(attribute("network.protocol.version"), Some("1.1"));
        assert_eq!(attribute("meridian.route"), Some("everything"));
        assert_eq!(attribute("meridian.cluster"), Some("next"));
        assert_eq!(attribute("error.type"), None);
        assert_eq!(span.resource["meridian.region"], "fra");
    }
    until_metric(&chain.edge.0, "meridian_proxy_trace_spans_exported_total 1").await;
    assert!(chain
        .edge
        .0
        .metrics_text()
        .contains("meridian_proxy_trace_spans_dropped_total 0"));
}

#[tokio::test]
async fn a_clients_trace_is_continued_and_its_state_passed_on() {
    let chain = Chain::start(1.0).await;
    let client = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let state = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    let (traceparent, tracestate) = chain
        .get(&[("traceparent", client), ("tracestate", state)])
        .await;
    let (trace_id, parent_id, _) = fields(&traceparent);
    assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(tracestate, state);
    let spans = chain.spans(trace_id, 2).await;
    let (edge, gateway) = (by(&spans, "meridian-edge"), by(&spans, "meridian-gateway"));
    assert_eq!(edge.parent_span_id, "00f067aa0ba902b7");
    assert_eq!(gateway.parent_span_id, edge.span_id);
    assert_eq!(parent_id, gateway.span_id);
}

#[tokio::test]
async fn the_hop_that_decides_samples_by_the_ratio_and_the_next_follows_it() {
    let chain = Chain::start(0.0).await;
    // The public hop does not believe a client that says "sampled": ratio 0 records nothing,
    // and the trusted hop behind it follows the public hop's "not sampled".
    let client = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (traceparent, _) = chain.get(&[("traceparent", client)]).await;
    assert_eq!(
        traceparent,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    );
    // An invalid one is as none: a new trace, not sampled either.
    let bad = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
    let (traceparent, _) = chain.get(&[("traceparent", bad)]).await;
    let (trace_id, _, flags) = fields(&traceparent);
    assert_ne!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(flags, "00");
    // A trusted caller's "sampled" is followed, whatever the ratio.
    let gateway_at = chain.gateway.listeners().await[0].1;
    let response = reqwest::Client::new()
        .get(format!("http://{gateway_at}/direct"))
        .header("traceparent", client)
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    let (trace_id, parent_id, flags) = fields(text.lines().next().unwrap());
    assert_eq!(
        (trace_id, flags),
        ("4bf92f3577b34da6a3ce929d0e0e4736", "01")
    );
    let spans = chain.spans(trace_id, 1).await;
    let gateway = by(&spans, "meridian-gateway");
    assert_eq!(gateway.span_id, parent_id);
    assert_eq!(gateway.parent_span_id, "00f067aa0ba902b7");
    assert!(spans
        .iter()
        .all(|s| s.resource["service.name"] != "meridian-edge"));
}

#[tokio::test]
async fn without_tracing_the_clients_fields_pass_through_untouched() {
    let upstream = upstream().await;
    let proxy = Proxy::default();
    let config = format!(
        "listeners: [{{name: p, address: \"{LOOPBACK}:0\", virtual_hosts: [{{name: all, domains: [\"*\"], routes: [{{cluster: next}}]}}]}}]\nclusters: [{{name: next, endpoints: [{{address: \"{upstream}\"}}]}}]\n"
    );
    proxy.apply_text(&config).await.unwrap();
    let at = proxy.listeners().await[0].1;
    // Even what tracing would refuse (uppercase hex) and reshape (spaces) is left alone.
    let traceparent = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
    let tracestate = "rojo=1 ,  congo=2";
    let text = reqwest::Client::new()
        .get(format!("http://{at}/"))
        .header("traceparent", traceparent)
        .header("tracestate", tracestate)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, format!("{traceparent}\n{tracestate}"));
    assert!(proxy
        .metrics_text()
        .contains("meridian_proxy_trace_spans_exported_total 0"));
}

#[tokio::test]
async fn a_stopping_proxy_exports_its_last_spans_before_it_returns() {
    let chain = Chain::start(1.0).await;
    let (traceparent, _) = chain.get(&[]).await;
    let (trace_id, _, _) = fields(&traceparent);
    // No waiting for the batch delay: the drain exports what is queued before it returns.
    chain.edge.0.drain(Duration::from_secs(1)).await;
    let exported: Vec<ReceivedSpan> = chain.receiver.spans();
    assert!(
        exported
            .iter()
            .any(|s| s.trace_id == trace_id && s.resource["service.name"] == "meridian-edge"),
        "{exported:#?}"
    );
}

#[tokio::test]
async fn a_collector_that_is_down_costs_failed_spans_not_requests() {
    // A receiver started and stopped: its port refuses connections.
    let gone = OtlpReceiver::start(format!("{LOOPBACK}:0").parse().unwrap())
        .await
        .unwrap();
    let upstream = upstream().await;
    let (proxy, at) = proxy("edge", "none", upstream, &gone, 1.0).await;
    drop(gone);
    for _ in 0..3 {
        let response = reqwest::get(format!("http://{at}/")).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    until_metric(&proxy, "meridian_proxy_trace_spans_failed_total 3").await;
}

/// Waits until `proxy`'s metrics have the line `line`.
async fn until_metric(proxy: &Proxy, line: &str) {
    let end = Instant::now() + DEADLINE;
    loop {
        let metrics = proxy.metrics_text();
        if metrics.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < end, "never {line}: {metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
