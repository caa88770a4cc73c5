//! Draining: an instance leaving service leaves every proxy's endpoints, and its region waits
//! for the proxies' acknowledgements (bounded, and counted when the bound is reached); its node
//! proxy then lets requests in flight finish and keeps WebSockets open until the definition's
//! `deploy.drain_timeout`; a drained node's instances move away. All under load, without a
//! failed request.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use support::load::{greeted_by, serving_exactly, Lane, Load};
use support::websocket::{closed_at_drain_deadline, Held};
use support::{
    gateway, hello_in_fra, logging_agent, said, stops, Agent, Deployed, RegionalPlane, HELLO,
};

const DEADLINE: Duration = Duration::from_secs(60);
const HOST: &str = support::HELLO_HOST;

/// `scale` instances of `hello` in fra, greeting with `greeting`, health-checked every 200 ms.
fn hello(scale: u32, greeting: &str) -> String {
    hello_deployed(scale, greeting, "{}")
}

/// [`hello`] with `deploy` as its `deploy`.
fn hello_deployed(scale: u32, greeting: &str, deploy: &str) -> String {
    hello_in_fra(
        scale,
        HELLO,
        greeting,
        "/healthz",
        &format!("deploy: {deploy}\n"),
    )
}

/// fra's control plane, its gateway listening for edges at `gateway`.
fn fra(platform: &Deployed, gateway: &str) -> RegionalPlane {
    RegionalPlane::start(&platform.global, &platform.token, "fra", Some(gateway))
}

/// Logging agents for nodes `one` and `two`, their instances from `addresses`.
fn one_and_two(region: &RegionalPlane, addresses: [&str; 2], dir: &Path) -> [Agent; 2] {
    [
        logging_agent(region, "one", addresses[0], dir),
        logging_agent(region, "two", addresses[1], dir),
    ]
}

/// How long a drained instance's WebSockets may stay open in [`drained_hello`].
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// One `hello` greeting with `greeting`, whose drained instances keep their WebSockets for
/// [`DRAIN_TIMEOUT`].
fn drained_hello(greeting: &str) -> String {
    hello_deployed(1, greeting, "{drain_timeout: 3s, stop_timeout: 5s}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_instances_websocket_is_closed_only_at_its_drain_timeout_without_a_failed_request(
) {
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), &drained_hello("hello"));
    let region = fra(&platform, "127.0.137.1:8080");
    let agents = [logging_agent(&region, "one", "127.0.133.1", dir.path())];
    let (_gateway, address) = gateway(&region, dir.path()).await;
    let first = BTreeSet::from(["hello-0".to_owned()]);
    serving_exactly(&address, "hello", &first).await;
    let socket = Held::open(&address, HOST).await;
    let lanes = Lane::every();
    let load = Load::start_lanes(&address, HOST, &lanes);
    load.goes_on_for(50).await;

    // A new version: hello-0 drains once hello-1 is ready and the gateway acknowledged that
    // hello-0 left the endpoints; its WebSocket stays open until the drain timeout.
    platform.deploy(&drained_hello("howdy"));
    let end = Instant::now() + DEADLINE;
    while !agents[0].log().contains("draining instance") {
        assert!(Instant::now() < end, "hello-0 never drained");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stops(&agents), 0, "stopped only once drained");
    assert!(
        socket.echoes(),
        "the WebSocket closed as hello-0 began draining"
    );
    let ended = socket.ended().await;
    let (_, open_for) =
        closed_at_drain_deadline(&ended, &agents, &["hello-0"], DRAIN_TIMEOUT).await;
    while stops(&agents) < 1 {
        assert!(Instant::now() < end, "hello-0 was never stopped");
        load.goes_on_for(10).await;
    }
    let answers = load.answers_of_next(100).await;
    let failures = load.failures();
    let answered = load.stop().await;
    eprintln!(
        "drain: the WebSocket echoed {} times and closed {open_for:?} after the drain began \
         (drain_timeout {DRAIN_TIMEOUT:?}); failed requests: {} of {answered}",
        ended.words,
        failures.len()
    );
    assert_eq!(failures, Vec::<String>::new(), "of {answered} requests");
    assert_eq!(
        greeted_by(&answers, "howdy"),
        BTreeSet::from(["hello-1".to_owned()])
    );
    assert!(greeted_by(&answers, "hello").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_moves_its_instances_away_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), &hello(2, "hello"));
    let region = fra(&platform, "127.0.138.1:8080");
    let agents = one_and_two(&region, ["127.0.134.1", "127.0.135.1"], dir.path());
    let (_gateway, address) = gateway(&region, dir.path()).await;
    let first = BTreeSet::from(["hello-0".to_owned(), "hello-1".to_owned()]);
    serving_exactly(&address, "hello", &first).await;
    assert_eq!(
        said(&agents[0], "starting instance"),
        1,
        "one instance a node"
    );
    let lanes = Lane::every();
    let load = Load::start_lanes(&address, HOST, &lanes);
    load.goes_on_for(50).await;

    let control = region.admin.as_str();
    let unknown = platform
        .cli
        .fails(&["node", "drain", "three", "--control", control]);
    assert!(unknown.contains("no node `three`"), "{unknown}");
    let drained = platform
        .cli
        .ok(&["node", "drain", "one", "--control", control]);
    assert!(drained.contains("node one drains"), "{drained}");

    // A replacement starts on two; then one's instance drains and stops.
    let end = Instant::now() + DEADLINE;
    while said(&agents[0], "stopping instance") < 1 {
        assert!(Instant::now() < end, "one's instance never stopped");
        load.goes_on_for(10).await;
    }
    assert_eq!(said(&agents[1], "starting instance"), 2);
    assert_eq!(
        said(&agents[0], "starting instance"),
        1,
        "nothing new on one"
    );
    let answers = load.answers_of_next(100).await;
    let failures = load.failures();
    let answered = load.stop().await;
    eprintln!(
        "node drain: failed requests: {} of {answered}",
        failures.len()
    );
    assert_eq!(failures, Vec::<String>::new(), "of {answered} requests");
    assert_eq!(greeted_by(&answers, "hello").len(), 2);
    let list = platform.cli.ok(&["node", "list", "--control", control]);
    assert!(list.contains("one\tdrained\t0\t"), "{list}");
    assert!(list.contains("two\tready\t2\t"), "{list}");

    let undrained = platform
        .cli
        .ok(&["node", "undrain", "one", "--control", control]);
    assert!(
        undrained.contains("takes new instances again"),
        "{undrained}"
    );
    let list = platform.cli.ok(&["node", "list", "--control", control]);
    assert!(list.contains("one\tready\t0\t"), "{list}");
}

/// A proxyless gRPC client of org acme on the region's plaintext xDS port that subscribes to
/// hello's endpoints, acknowledges the first answer and then never acknowledges anything: the
/// requests it sends (kept open) and the answers it gets.
async fn stuck_client(
    region: &RegionalPlane,
) -> (
    tokio::sync::mpsc::Sender<envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest>,
    tonic::Streaming<envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse>,
) {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    let url = format!("http://{}", region.xds_plaintext);
    let mut client = AggregatedDiscoveryServiceClient::connect(url)
        .await
        .unwrap();
    let (requests, outgoing) = tokio::sync::mpsc::channel(4);
    let mut answers = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .unwrap()
        .into_inner();
    let text = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let metadata = Struct {
        fields: [("org", text("acme")), ("role", text("grpc-client"))]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    };
    let request = |version: &str, nonce: &str| DiscoveryRequest {
        node: Some(Node {
            id: "stuck".to_owned(),
            metadata: Some(metadata.clone()),
            ..Default::default()
        }),
        type_url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment".to_owned(),
        resource_names: vec!["hello.shop.internal:8080".to_owned()],
        version_info: version.to_owned(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    };
    requests.send(request("", "")).await.unwrap();
    let first = tokio::time::timeout(DEADLINE, answers.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.resources.len(), 1, "hello's endpoints");
    requests
        .send(request(&first.version_info, &first.nonce))
        .await
        .unwrap();
    (requests, answers)
}

/// fra's control plane's count of drains whose wait for acknowledgements timed out.
async fn ack_timeouts(region: &RegionalPlane) -> String {
    let metrics = reqwest::get(format!("{}/metrics", region.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find(|l| l.starts_with("meridian_control_drain_ack_timeouts_total"))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_acknowledges_delays_a_drain_to_its_bound_which_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), &hello(1, "hello"));
    let region = fra(&platform, "127.0.139.1:8080");
    let agents = [logging_agent(&region, "one", "127.0.136.1", dir.path())];
    let (_gateway, address) = gateway(&region, dir.path()).await;
    serving_exactly(&address, "hello", &BTreeSet::from(["hello-0".to_owned()])).await;
    let (_requests, mut answers) = stuck_client(&region).await;
    assert_eq!(
        ack_timeouts(&region).await,
        "meridian_control_drain_ack_timeouts_total 0"
    );

    platform.deploy(&hello(1, "howdy"));
    // The client is sent hello's endpoints without hello-0 (after hello-1's arrival), and
    // does not acknowledge them.
    let end = Instant::now() + DEADLINE;
    let mut left = None;
    while left.is_none() {
        let answer = tokio::time::timeout_at(end.into(), answers.message())
            .await
            .expect("hello-0 never left the endpoints")
            .unwrap()
            .unwrap();
        let bytes = &answer.resources[0].value;
        // hello-0 listens on 127.0.136.1, hello-1 on the next address.
        if !bytes.windows(11).any(|w| w == b"127.0.136.1") {
            left = Some(Instant::now());
        }
    }
    let left = left.unwrap();
    while !agents[0].log().contains("draining instance") {
        assert!(Instant::now() < end, "hello-0 never drained");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waited = left.elapsed();
    eprintln!("drain: hello-0 lost its assignment {waited:?} after it left the endpoints");
    // At most 5 s for the acknowledgement, then the 1 s drain delay.
    assert!(waited >= Duration::from_secs(5), "{waited:?}");
    assert_eq!(
        ack_timeouts(&region).await,
        "meridian_control_drain_ack_timeouts_total 1"
    );
}
