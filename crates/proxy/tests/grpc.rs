//! gRPC through the proxy, with tonic on both sides: unary calls, server streaming, and status
//! codes carried in trailers.

use std::sync::Arc;
use std::time::Duration;

use meridian_proxy::Proxy;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[tokio::test]
async fn grpc_unary_and_streaming_calls_pass_through() {
    // A real gRPC server: the standard health service.
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("shop", tonic_health::ServingStatus::Serving)
        .await;
    let upstream = grpc_upstream(tonic::service::Routes::new(service)).await;
    let (_proxy, address) = proxy_to(upstream, "").await;
    let mut client = HealthClient::new(channel(address).await);

    let unary = client
        .check(HealthCheckRequest {
            service: "shop".into(),
        })
        .await
        .unwrap();
    assert_eq!(unary.into_inner().status(), ServingStatus::Serving);

    // An error status travels in the trailers of a trailers-only answer.
    let missing = client
        .check(HealthCheckRequest {
            service: "nothing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // Server streaming: each change arrives as its own message.
    let mut watch = client
        .watch(HealthCheckRequest {
            service: "shop".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    reporter
        .set_service_status("shop", tonic_health::ServingStatus::NotServing)
        .await;
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
}

/// The listener's connections as the stream tonic's server takes.
fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}

/// A health service whose first `failures` checks answer UNAVAILABLE; it counts every check.
struct Flaky {
    failures: u32,
    calls: Arc<std::sync::atomic::AtomicU32>,
}

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for Flaky {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
        let call = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if call < self.failures {
            return Err(tonic::Status::unavailable("warming up"));
        }
        // The request arrives whole on every attempt.
        assert_eq!(request.into_inner().service, "shop");
        Ok(tonic::Response::new(
            tonic_health::pb::HealthCheckResponse {
                status: ServingStatus::Serving as i32,
            },
        ))
    }

    type WatchStream =
        futures_util::stream::Empty<Result<tonic_health::pb::HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("watch"))
    }
}

#[tokio::test]
async fn a_grpc_call_answered_unavailable_is_retried_with_its_body() {
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let service = tonic_health::pb::health_server::HealthServer::new(Flaky {
        failures: 1,
        calls: calls.clone(),
    });
    let upstream = grpc_upstream(tonic::service::Routes::new(service)).await;
    let retries =
        ", retries: {on: [retriable_grpc], attempts: 2, backoff: 1ms, non_idempotent: true}";
    let (_proxy, address) = proxy_to(upstream, retries).await;
    let answer = HealthClient::new(channel(address).await)
        .check(HealthCheckRequest {
            service: "shop".into(),
        })
        .await
        .expect("the retry succeeds");
    assert_eq!(answer.into_inner().status(), ServingStatus::Serving);
    assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_bidirectional_stream_flows_both_ways_through_a_route_with_retries() {
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    use meridian_xds::{render::pack, AdsServer, Cache, Limits, Update, XdsMetrics, ENDPOINT};
    // A real bidirectional gRPC service: xDS, whose responses follow changes while the
    // request stream stays open.
    let cache = Cache::new();
    let metrics = XdsMetrics::new(&mut prometheus_client::registry::Registry::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let server = AdsServer::new(cache.clone(), metrics, Limits::default());
    tokio::spawn(server.serve(listener, std::future::pending()));
    let put = |tag: &str| {
        let resource = pack(&ClusterLoadAssignment {
            cluster_name: tag.to_owned(),
            ..Default::default()
        });
        cache.apply(
            ENDPOINT,
            Update {
                put: vec![("proxy/a".to_owned(), resource)],
                remove: Vec::new(),
            },
        );
    };
    put("first");
    let (_proxy, address) = proxy_to(upstream, ", retries: {on: [retriable_grpc]}").await;
    let mut client = AggregatedDiscoveryServiceClient::new(channel(address).await);
    let (requests, stream) = tokio::sync::mpsc::channel(4);
    requests
        .send(DeltaDiscoveryRequest {
            type_url: ENDPOINT.to_owned(),
            resource_names_subscribe: vec!["a".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut responses = client
        .delta_aggregated_resources(futures_util::stream::unfold(stream, |mut stream| async {
            stream.recv().await.map(|request| (request, stream))
        }))
        .await
        .unwrap()
        .into_inner();
    let tag =
        |response: &envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse| {
            use prost::Message;
            let any = response.resources[0].resource.as_ref().unwrap();
            ClusterLoadAssignment::decode(any.value.as_slice())
                .unwrap()
                .cluster_name
        };
    let first = next_message(&mut responses).await;
    assert_eq!(tag(&first), "first");
    // The client's ACK goes up the open request stream; a change comes down the response stream.
    requests
        .send(DeltaDiscoveryRequest {
            type_url: ENDPOINT.to_owned(),
            response_nonce: first.nonce.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    put("second");
    let second = next_message(&mut responses).await;
    assert_eq!(tag(&second), "second");
}

/// The next message of `responses`, within a deadline.
async fn next_message<T>(responses: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("a message in time")
        .unwrap()
        .expect("the stream is open")
}

/// Serves `routes` with tonic on a loopback port of its own; its address.
async fn grpc_upstream(routes: tonic::service::Routes) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(tokio_stream_from(listener))
            .await
            .unwrap();
    });
    upstream
}

/// A proxy whose one route (with `route_extra` fields, e.g. `, retries: {…}`) goes to
/// `upstream` over HTTP/2; the proxy and its listener's address.
async fn proxy_to(
    upstream: std::net::SocketAddr,
    route_extra: &str,
) -> (Arc<Proxy>, std::net::SocketAddr) {
    let config = format!(
        "listeners:\n  - name: grpc\n    address: 127.0.0.1:0\n    virtual_hosts: [{{name: all, domains: [\"*\"], routes: [{{cluster: up{route_extra}}}]}}]\nclusters:\n  - name: up\n    protocol: http2\n    endpoints: [{{address: \"{upstream}\"}}]\n"
    );
    let proxy = Arc::new(Proxy::default());
    proxy.apply_text(&config).await.unwrap();
    let address = proxy.listeners().await[0].1;
    (proxy, address)
}

/// A tonic channel to `address`.
async fn channel(address: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}
