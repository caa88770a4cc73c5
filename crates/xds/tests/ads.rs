//! The ADS server against a real gRPC client (tonic, envoy-types' generated client) on
//! loopback: subscriptions, pushes only to subscribers, ACK/NACK, resume, scopes and limits.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use meridian_xds::render::pack;
use meridian_xds::{AdsServer, Cache, Limits, Update, XdsMetrics, CLUSTER, ENDPOINT, LISTENER};
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const WAIT: Duration = Duration::from_secs(10);

struct Server {
    cache: Arc<Cache>,
    registry: Registry,
    url: String,
}

async fn start(limits: Limits) -> Server {
    start_with(|server| server, limits).await
}

/// [`start`], the server changed by `adjust` before it serves.
async fn start_with(adjust: impl FnOnce(AdsServer) -> AdsServer, limits: Limits) -> Server {
    let cache = Cache::new();
    let mut registry = Registry::default();
    let metrics = XdsMetrics::new(&mut registry);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = adjust(AdsServer::new(cache.clone(), metrics, limits));
    tokio::spawn(server.serve(listener, std::future::pending()));
    Server {
        cache,
        registry,
        url,
    }
}

impl Server {
    fn metric(&self, prefix: &str) -> u64 {
        self.metric_value(prefix) as u64
    }

    /// The sum of the samples whose line starts with `prefix`.
    fn metric_value(&self, prefix: &str) -> f64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

fn assignment(name: &str, tag: u32) -> envoy_types::pb::google::protobuf::Any {
    pack(&ClusterLoadAssignment {
        cluster_name: format!("{name}#{tag}"),
        ..Default::default()
    })
}

fn put(cache: &Cache, type_url: &str, names: &[(&str, u32)]) {
    let update = Update {
        put: names
            .iter()
            .map(|(n, tag)| (n.to_string(), assignment(n, *tag)))
            .collect(),
        remove: Vec::new(),
    };
    cache.apply(type_url, update);
}

fn node(id: &str, org: Option<&str>) -> Node {
    let mut fields = std::collections::HashMap::new();
    if let Some(org) = org {
        fields.insert(
            "org".to_owned(),
            Value {
                kind: Some(Kind::StringValue(org.to_owned())),
            },
        );
    }
    Node {
        id: id.to_owned(),
        metadata: Some(Struct { fields }),
        ..Default::default()
    }
}

/// The tag an assignment was made with, from its cluster name.
fn tag_of(resource: &envoy_types::pb::google::protobuf::Any) -> String {
    ClusterLoadAssignment::decode(resource.value.as_slice())
        .unwrap()
        .cluster_name
}

struct Stream<Req, Resp> {
    tx: mpsc::Sender<Req>,
    rx: Streaming<Resp>,
}

impl<Req, Resp> Stream<Req, Resp> {
    async fn send(&self, request: Req) {
        self.tx.send(request).await.unwrap();
    }

    /// The status the stream ends with.
    async fn error(&mut self) -> tonic::Status {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Ok(Err(status)) => status,
            Ok(Ok(_)) => panic!("the stream goes on instead of ending with an error"),
            Err(_) => panic!("no answer in time"),
        }
    }

    async fn next(&mut self) -> Resp {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("the stream is healthy")
            .expect("the stream is open")
    }
}

async fn delta(url: &str) -> Stream<DeltaDiscoveryRequest, DeltaDiscoveryResponse> {
    let mut client = AggregatedDiscoveryServiceClient::connect(url.to_owned())
        .await
        .unwrap();
    let (tx, requests) = mpsc::channel(16);
    let rx = client
        .delta_aggregated_resources(ReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    Stream { tx, rx }
}

async fn sotw(url: &str) -> Stream<DiscoveryRequest, DiscoveryResponse> {
    let mut client = AggregatedDiscoveryServiceClient::connect(url.to_owned())
        .await
        .unwrap();
    let (tx, requests) = mpsc::channel(16);
    let rx = client
        .stream_aggregated_resources(ReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    Stream { tx, rx }
}

fn subscribe(node: Option<Node>, type_url: &str, names: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node,
        type_url: type_url.to_owned(),
        resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    }
}

fn ack(type_url: &str, nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.to_owned(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn delta_pushes_a_change_only_to_the_subscribers_of_that_resource() {
    let server = start(Limits::default()).await;
    put(&server.cache, ENDPOINT, &[("proxy/a", 1), ("proxy/b", 1)]);
    let mut first = delta(&server.url).await;
    let mut second = delta(&server.url).await;
    first
        .send(subscribe(
            Some(node("n1", None)),
            ENDPOINT,
            &["a", "missing"],
        ))
        .await;
    second
        .send(subscribe(Some(node("n2", None)), ENDPOINT, &["b"]))
        .await;

    let response = first.next().await;
    assert_eq!(response.resources.len(), 1);
    assert_eq!(response.resources[0].name, "a");
    assert_eq!(
        tag_of(response.resources[0].resource.as_ref().unwrap()),
        "proxy/a#1"
    );
    assert_eq!(
        response.removed_resources,
        ["missing"],
        "an unknown name is announced gone"
    );
    first.send(ack(ENDPOINT, &response.nonce)).await;
    let response = second.next().await;
    assert_eq!(response.resources[0].name, "b");
    second.send(ack(ENDPOINT, &response.nonce)).await;

    // A change to `a` goes to the first stream only: the next thing the second one hears
    // about is the later change to `b`.
    put(&server.cache, ENDPOINT, &[("proxy/a", 2)]);
    let response = first.next().await;
    assert_eq!(response.resources.len(), 1);
    assert_eq!(
        tag_of(response.resources[0].resource.as_ref().unwrap()),
        "proxy/a#2"
    );
    first.send(ack(ENDPOINT, &response.nonce)).await;
    put(&server.cache, ENDPOINT, &[("proxy/b", 2)]);
    let response = second.next().await;
    assert_eq!(response.resources.len(), 1);
    assert_eq!(
        tag_of(response.resources[0].resource.as_ref().unwrap()),
        "proxy/b#2"
    );

    // An identical put is no change; a removal is pushed as such.
    put(&server.cache, ENDPOINT, &[("proxy/a", 2)]);
    server.cache.apply(
        ENDPOINT,
        Update {
            put: Vec::new(),
            remove: vec!["proxy/a".to_owned()],
        },
    );
    let response = first.next().await;
    assert!(response.resources.is_empty());
    assert_eq!(response.removed_resources, ["a"]);
    assert_eq!(server.metric("meridian_xds_connected_clients"), 2);
}

#[tokio::test]
async fn a_nack_is_counted_and_the_next_change_still_arrives() {
    let server = start(Limits::default()).await;
    put(&server.cache, ENDPOINT, &[("proxy/a", 1)]);
    let mut stream = delta(&server.url).await;
    stream
        .send(subscribe(Some(node("n1", None)), ENDPOINT, &["a"]))
        .await;
    let response = stream.next().await;
    stream
        .send(DeltaDiscoveryRequest {
            type_url: ENDPOINT.to_owned(),
            response_nonce: response.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "endpoint a: bad port".to_owned(),
                details: Vec::new(),
            }),
            ..Default::default()
        })
        .await;
    put(&server.cache, ENDPOINT, &[("proxy/a", 2)]);
    let response = stream.next().await;
    assert_eq!(
        tag_of(response.resources[0].resource.as_ref().unwrap()),
        "proxy/a#2"
    );
    stream.send(ack(ENDPOINT, &response.nonce)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.metric("meridian_xds_nacks_total") != 1
        || server.metric("meridian_xds_convergence_seconds_count") != 1
        || server.metric("meridian_xds_push_seconds_count") != 1
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the NACK and ACK were not recorded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_ack_of_a_later_response_completes_the_earlier_changes_too() {
    let server = start(Limits::default()).await;
    put(&server.cache, ENDPOINT, &[("proxy/a", 1)]);
    let mut stream = delta(&server.url).await;
    stream
        .send(subscribe(Some(node("n1", None)), ENDPOINT, &["a"]))
        .await;
    let first = stream.next().await;
    stream.send(ack(ENDPOINT, &first.nonce)).await;
    // Two changes; the client acknowledges only the second response, as a client that
    // applies the newest configuration may.
    put(&server.cache, ENDPOINT, &[("proxy/a", 2)]);
    let _second = stream.next().await;
    let gap = Duration::from_millis(300);
    tokio::time::sleep(gap).await;
    put(&server.cache, ENDPOINT, &[("proxy/a", 3)]);
    let third = stream.next().await;
    stream.send(ack(ENDPOINT, &third.nonce)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.metric("meridian_xds_convergence_seconds_count") != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ACK was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let converged = server.metric_value("meridian_xds_convergence_seconds_sum");
    assert!(
        converged >= gap.as_secs_f64(),
        "the ACK completes the first change, made {gap:?} before the second: {converged} s"
    );
}

#[tokio::test]
async fn delta_answers_unknown_types_with_removals_and_keeps_serving_known_ones() {
    const UNKNOWN: &str = "type.googleapis.com/example.Unknown";
    let server = start(Limits::default()).await;
    put(&server.cache, ENDPOINT, &[("proxy/a", 1)]);
    let mut stream = delta(&server.url).await;
    stream
        .send(subscribe(Some(node("n1", None)), UNKNOWN, &["x", "y"]))
        .await;
    let response = stream.next().await;
    assert_eq!(response.type_url, UNKNOWN);
    assert!(response.resources.is_empty());
    assert_eq!(response.removed_resources, ["x", "y"]);
    // The ACK of that answer gets none; the next subscription on the stream is served.
    stream.send(ack(UNKNOWN, &response.nonce)).await;
    stream.send(subscribe(None, ENDPOINT, &["a"])).await;
    let response = stream.next().await;
    assert_eq!(response.type_url, ENDPOINT);
    assert_eq!(
        tag_of(response.resources[0].resource.as_ref().unwrap()),
        "proxy/a#1"
    );
}

#[tokio::test]
async fn a_resumed_delta_stream_gets_only_what_it_lacks() {
    let server = start(Limits::default()).await;
    put(
        &server.cache,
        ENDPOINT,
        &[("proxy/same", 1), ("proxy/changed", 1)],
    );
    let mut stream = delta(&server.url).await;
    stream
        .send(subscribe(
            Some(node("n1", None)),
            ENDPOINT,
            &["same", "changed", "gone"],
        ))
        .await;
    let response = stream.next().await;
    let versions: std::collections::HashMap<String, String> = response
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(stream);

    put(&server.cache, ENDPOINT, &[("proxy/changed", 2)]);
    let mut resumed = delta(&server.url).await;
    let mut request = subscribe(
        Some(node("n1", None)),
        ENDPOINT,
        &["same", "changed", "gone"],
    );
    request.initial_resource_versions = versions;
    request
        .initial_resource_versions
        .insert("gone".to_owned(), "7".to_owned());
    resumed.send(request).await;
    let response = resumed.next().await;
    let names: Vec<&str> = response.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["changed"],
        "an unchanged resource is not sent again"
    );
    assert_eq!(response.removed_resources, ["gone"]);
}

#[tokio::test]
async fn a_server_answering_when_ready_answers_a_resumed_stream_from_its_first_load() {
    let (ready, gate) = tokio::sync::watch::channel(false);
    let server = start_with(|server| server.answering_when(gate), Limits::default()).await;
    // A client resumes with what it held before the server started, while the server's cache
    // is still empty: the server has read its request (it counts it connected)…
    let mut resumed = delta(&server.url).await;
    let mut request = subscribe(Some(node("n1", None)), ENDPOINT, &["*"]);
    request.initial_resource_versions = [("kept", "old"), ("gone", "old")]
        .into_iter()
        .map(|(name, version)| (name.to_owned(), version.to_owned()))
        .collect();
    resumed.send(request).await;
    let end = tokio::time::Instant::now() + WAIT;
    while server.metric("meridian_xds_connected_clients{") == 0 {
        assert!(
            tokio::time::Instant::now() < end,
            "the request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // …and answers once the first load is in: what the client lacks, and as removed only what
    // the load does not hold.
    put(
        &server.cache,
        ENDPOINT,
        &[("proxy/kept", 1), ("proxy/new", 1)],
    );
    ready.send_replace(true);
    let response = resumed.next().await;
    let names: Vec<&str> = response.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["kept", "new"]);
    assert_eq!(response.removed_resources, ["gone"]);
}

#[tokio::test]
async fn sotw_wildcard_sees_only_the_nodes_org_and_answers_unknown_types_empty() {
    let server = start(Limits::default()).await;
    put(
        &server.cache,
        LISTENER,
        &[
            ("grpc/acme/api:80", 1),
            ("grpc/acme/web:80", 1),
            ("grpc/globex/api:80", 1),
        ],
    );
    let mut stream = sotw(&server.url).await;
    stream
        .send(DiscoveryRequest {
            node: Some(node("grpc-1", Some("acme"))),
            type_url: LISTENER.to_owned(),
            ..Default::default()
        })
        .await;
    let response = stream.next().await;
    let mut tags: Vec<String> = response.resources.iter().map(tag_of).collect();
    tags.sort();
    assert_eq!(tags, ["grpc/acme/api:80#1", "grpc/acme/web:80#1"]);
    let first_version = response.version_info.clone();
    stream
        .send(DiscoveryRequest {
            type_url: LISTENER.to_owned(),
            version_info: first_version.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await;

    // Another org's change is invisible; this org's change brings the whole set again.
    put(&server.cache, LISTENER, &[("grpc/globex/api:80", 2)]);
    put(&server.cache, LISTENER, &[("grpc/acme/web:80", 2)]);
    let response = stream.next().await;
    let mut tags: Vec<String> = response.resources.iter().map(tag_of).collect();
    tags.sort();
    assert_eq!(tags, ["grpc/acme/api:80#1", "grpc/acme/web:80#2"]);
    assert_ne!(response.version_info, first_version);

    stream
        .send(DiscoveryRequest {
            type_url: "type.googleapis.com/example.Unknown".to_owned(),
            resource_names: vec!["x".to_owned()],
            ..Default::default()
        })
        .await;
    let response = stream.next().await;
    assert_eq!(response.type_url, "type.googleapis.com/example.Unknown");
    assert!(response.resources.is_empty());
}

#[tokio::test]
async fn a_sotw_push_carries_the_changed_resources_new_and_the_others_as_they_were() {
    let server = start(Limits::default()).await;
    put(&server.cache, ENDPOINT, &[("proxy/a", 1), ("proxy/b", 1)]);
    let mut stream = sotw(&server.url).await;
    let request = |names: &[&str], nonce: &str| DiscoveryRequest {
        node: Some(node("n1", None)),
        type_url: ENDPOINT.to_owned(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    };
    let tags = |response: &DiscoveryResponse| {
        let mut tags: Vec<String> = response.resources.iter().map(tag_of).collect();
        tags.sort();
        tags
    };
    // `c` does not exist yet: the answer holds what does.
    stream.send(request(&["a", "b", "c"], "")).await;
    assert_eq!(tags(&stream.next().await), ["proxy/a#1", "proxy/b#1"]);

    put(&server.cache, ENDPOINT, &[("proxy/a", 2)]);
    assert_eq!(tags(&stream.next().await), ["proxy/a#2", "proxy/b#1"]);
    server.cache.apply(
        ENDPOINT,
        Update {
            put: Vec::new(),
            remove: vec!["proxy/b".to_owned()],
        },
    );
    assert_eq!(tags(&stream.next().await), ["proxy/a#2"]);
    put(&server.cache, ENDPOINT, &[("proxy/c", 1)]);
    assert_eq!(tags(&stream.next().await), ["proxy/a#2", "proxy/c#1"]);
    put(&server.cache, ENDPOINT, &[("proxy/b", 3)]);
    let last = stream.next().await;
    assert_eq!(tags(&last), ["proxy/a#2", "proxy/b#3", "proxy/c#1"]);

    // Dropping a name leaves it out; a later change to it is not sent, one to another name is.
    stream.send(request(&["b", "c"], &last.nonce)).await;
    assert_eq!(tags(&stream.next().await), ["proxy/b#3", "proxy/c#1"]);
    put(&server.cache, ENDPOINT, &[("proxy/a", 3)]);
    put(&server.cache, ENDPOINT, &[("proxy/c", 2)]);
    assert_eq!(tags(&stream.next().await), ["proxy/b#3", "proxy/c#2"]);
}

#[tokio::test]
async fn a_stale_sotw_nonce_is_ignored_and_too_many_names_close_the_stream() {
    let server = start(Limits {
        max_names_per_type: 3,
        ..Limits::default()
    })
    .await;
    put(&server.cache, CLUSTER, &[("proxy/c1", 1)]);
    let mut stream = sotw(&server.url).await;
    stream
        .send(DiscoveryRequest {
            node: Some(node("n", None)),
            type_url: CLUSTER.to_owned(),
            resource_names: vec!["c1".to_owned()],
            ..Default::default()
        })
        .await;
    let first = stream.next().await;
    // A request answering a nonce the server never sent asks for nothing.
    stream
        .send(DiscoveryRequest {
            type_url: CLUSTER.to_owned(),
            resource_names: vec!["c1".to_owned(), "c2".to_owned()],
            response_nonce: "not-a-nonce".to_owned(),
            ..Default::default()
        })
        .await;
    stream
        .send(DiscoveryRequest {
            type_url: CLUSTER.to_owned(),
            resource_names: (0..4).map(|i| format!("c{i}")).collect(),
            response_nonce: first.nonce.clone(),
            ..Default::default()
        })
        .await;
    let status = stream.error().await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.message().contains("resource_names"), "{status:?}");
}

#[tokio::test]
async fn a_client_that_never_reads_holds_bounded_memory_and_slows_no_one() {
    let server = start(Limits::default()).await;
    let padding = "x".repeat(256 * 1024);
    let big = |i: u32| Update {
        put: vec![(
            "proxy/big".to_owned(),
            pack(&ClusterLoadAssignment {
                cluster_name: format!("big#{i}#{padding}"),
                ..Default::default()
            }),
        )],
        remove: Vec::new(),
    };
    server.cache.apply(ENDPOINT, big(0));
    let slow = delta(&server.url).await;
    slow.send(subscribe(Some(node("slow", None)), ENDPOINT, &["big"]))
        .await;
    let mut fast = delta(&server.url).await;
    fast.send(subscribe(Some(node("fast", None)), ENDPOINT, &["big"]))
        .await;
    let first = fast.next().await;
    fast.send(ack(ENDPOINT, &first.nonce)).await;

    // 50 changes of 256 KiB each: the reader gets the last one while the other never reads.
    for i in 1..=50 {
        server.cache.apply(ENDPOINT, big(i));
    }
    loop {
        let response = fast.next().await;
        fast.send(ack(ENDPOINT, &response.nonce)).await;
        let tag = tag_of(response.resources[0].resource.as_ref().unwrap());
        if tag.starts_with("big#50#") {
            break;
        }
    }
    // What the server queued for the client that does not read is bounded (the queue of
    // `Limits::queued_responses` and what HTTP/2 flow control lets through), not one response
    // per change.
    let pushes = server.metric("meridian_xds_pushes_total");
    let fast_at_most = 51;
    let slow_at_most = Limits::default().queued_responses as u64 + 3;
    assert!(
        pushes <= fast_at_most + slow_at_most,
        "{pushes} responses were pushed"
    );
    drop(slow);
}

#[tokio::test]
async fn a_request_over_the_size_limit_ends_the_stream_with_the_reason() {
    let server = start(Limits {
        max_request_bytes: 1024,
        ..Limits::default()
    })
    .await;
    put(&server.cache, ENDPOINT, &[("proxy/a", 1)]);
    let mut stream = delta(&server.url).await;
    stream
        .send(subscribe(Some(node("n1", None)), ENDPOINT, &["a"]))
        .await;
    stream.next().await;
    let long = "x".repeat(2048);
    stream.send(subscribe(None, ENDPOINT, &[&long])).await;
    let status = stream.error().await;
    assert!(
        status.message().contains("too large"),
        "{:?}: {}",
        status.code(),
        status.message()
    );
}

#[tokio::test]
async fn streams_beyond_the_limit_per_connection_wait_for_a_free_one() {
    let server = start(Limits {
        max_streams_per_connection: 2,
        ..Limits::default()
    })
    .await;
    put(&server.cache, ENDPOINT, &[("proxy/a", 1)]);
    // One client, one HTTP/2 connection, three streams.
    let client = AggregatedDiscoveryServiceClient::connect(server.url.clone())
        .await
        .unwrap();
    let open = |mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>| async move {
        let (tx, requests) = mpsc::channel(16);
        tx.send(subscribe(Some(node("n1", None)), ENDPOINT, &["a"]))
            .await
            .unwrap();
        let rx = client
            .delta_aggregated_resources(ReceiverStream::new(requests))
            .await
            .unwrap()
            .into_inner();
        Stream { tx, rx }
    };
    let mut first = open(client.clone()).await;
    let mut second = open(client.clone()).await;
    first.next().await;
    second.next().await;
    let third = tokio::spawn(open(client.clone()));
    // The third stream is not opened while two are.
    let waited = tokio::time::timeout(Duration::from_millis(500), async {
        while !third.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_err(), "a third stream opened beside two");
    drop(first);
    let mut third = tokio::time::timeout(WAIT, third)
        .await
        .expect("the third stream opens once the first is gone")
        .unwrap();
    let response = third.next().await;
    assert_eq!(response.resources.len(), 1);
}

/// Waits until `delivery` owes `count` acknowledgements.
async fn owed(delivery: &meridian_xds::Delivery, count: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while delivery.pending() != count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} acknowledgements owed, not {count}",
            delivery.pending()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_tracked_put_completes_once_every_subscriber_then_acked_it_or_went_away() {
    let server = start(Limits::default()).await;
    put(&server.cache, ENDPOINT, &[("proxy/a", 1), ("proxy/b", 1)]);
    // Owing: a wildcard delta stream, a delta stream of `a`, a SotW stream of `a`. Not owing:
    // a stream of `b` only.
    let mut wildcard = delta(&server.url).await;
    let mut named = delta(&server.url).await;
    let mut other = delta(&server.url).await;
    let mut sotw_stream = sotw(&server.url).await;
    wildcard
        .send(subscribe(Some(node("n1", None)), ENDPOINT, &["*"]))
        .await;
    named
        .send(subscribe(Some(node("n2", None)), ENDPOINT, &["a"]))
        .await;
    other
        .send(subscribe(Some(node("n3", None)), ENDPOINT, &["b"]))
        .await;
    let sotw_request = |nonce: &str| DiscoveryRequest {
        node: Some(node("n4", None)),
        type_url: ENDPOINT.to_owned(),
        resource_names: vec!["a".to_owned()],
        response_nonce: nonce.to_owned(),
        ..Default::default()
    };
    sotw_stream.send(sotw_request("")).await;
    for stream in [&mut wildcard, &mut named, &mut other] {
        let first = stream.next().await;
        stream.send(ack(ENDPOINT, &first.nonce)).await;
    }
    let first = sotw_stream.next().await;
    sotw_stream.send(sotw_request(&first.nonce)).await;

    let delivery = server.cache.apply_tracked(
        ENDPOINT,
        Update {
            put: vec![("proxy/a".to_owned(), assignment("proxy/a", 2))],
            remove: Vec::new(),
        },
    );
    assert_eq!(delivery.pending(), 3);
    let done = tokio::spawn({
        let delivery = delivery.clone();
        async move { delivery.acknowledged().await }
    });
    // A NACK is no acknowledgement.
    let pushed = named.next().await;
    let mut nack = ack(ENDPOINT, &pushed.nonce);
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "no".into(),
        details: Vec::new(),
    });
    named.send(nack).await;
    let pushed = wildcard.next().await;
    assert_eq!(
        tag_of(pushed.resources[0].resource.as_ref().unwrap()),
        "proxy/a#2"
    );
    wildcard.send(ack(ENDPOINT, &pushed.nonce)).await;
    owed(&delivery, 2).await;
    let pushed = sotw_stream.next().await;
    sotw_stream.send(sotw_request(&pushed.nonce)).await;
    owed(&delivery, 1).await;
    assert!(!done.is_finished(), "the named stream still owes its ACK");
    // The stream that rejected it goes away: nothing more is owed.
    drop(named);
    tokio::time::timeout(WAIT, done)
        .await
        .expect("complete once the last owing stream is gone")
        .unwrap();
    assert_eq!(delivery.pending(), 0);
    // Three were owed; two came (the stream that went away acknowledged nothing).
    assert_eq!(
        delivery.tally(),
        meridian_xds::Tally {
            owed: 3,
            acknowledged: 2
        }
    );

    // A put nobody subscribes to, or that changes nothing, owes nothing.
    let nobody = server.cache.apply_tracked(
        CLUSTER,
        Update {
            put: vec![("proxy/z".to_owned(), assignment("proxy/z", 1))],
            remove: Vec::new(),
        },
    );
    let unchanged = server.cache.apply_tracked(
        ENDPOINT,
        Update {
            put: vec![("proxy/b".to_owned(), assignment("proxy/b", 1))],
            remove: Vec::new(),
        },
    );
    for delivery in [nobody, unchanged] {
        assert_eq!(delivery.pending(), 0);
        tokio::time::timeout(WAIT, delivery.acknowledged())
            .await
            .unwrap();
    }
}
