//! Rendering a region's services and endpoints into xDS resources.
//!
//! Today's form is the one proxyless gRPC clients accept (and Envoy too): for each port of each
//! service, named `<service>.<app>.internal:<port>` inside its org's scope,
//! - a Listener with an `api_listener` holding an HttpConnectionManager that takes its routes
//!   from RDS over ADS and runs the router filter,
//! - a RouteConfiguration sending everything to
//! - a Cluster of type EDS with round robin, whose endpoints come from
//! - a ClusterLoadAssignment with the region's endpoints, their locality and health.
//!
//! A `protocol: tcp` port has no RouteConfiguration, and its Listener is the one Envoy takes for
//! TCP: on the service's virtual IP and the port, one filter chain with a `tcp_proxy` to that
//! Cluster (proxyless gRPC clients have no use for it).
//!
//! For Meridian's proxies (namespace `proxy/`), each port of each service is a Cluster
//! `<org>/<app>/<service>:<port name>` (EDS, least request, outlier detection) with its
//! ClusterLoadAssignment, and a region's gateway gets a Listener `gateway` on its address whose
//! RouteConfiguration `gateway` routes each service's public domains and path prefixes to those
//! clusters.
//!
//! Rendering is a pure function of one service's regional deployment and endpoints (and, for the
//! gateway routes, of the region's deployments), so a change re-renders only what it touches.

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as TransportSocketConfig;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus, Locality, Metadata,
    SocketAddress, TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{
    RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection;
use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier as TcpClusterSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use meridian_model::{Endpoint, EndpointHealth, Protocol, RegionalDeployment};
use std::net::SocketAddr;

use crate::meridian::ServiceInstance;
use crate::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

/// Packs a message into an `Any` under its type URL.
pub fn pack<M: prost::Message + prost::Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// A service's resources, by type URL, each as (cache name, resource).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Rendered {
    /// `(type URL, cache name, resource)` for every resource.
    pub resources: Vec<(&'static str, String, Any)>,
}

/// A name a proxyless gRPC client reaches a service's port by: `host:port`, and the host alone.
struct Host<'a> {
    name: String,
    host: &'a str,
    port: u32,
}

impl<'a> Host<'a> {
    fn new(host: &'a str, port: u32) -> Host<'a> {
        Host {
            name: format!("{host}:{port}"),
            host,
            port,
        }
    }
}

impl Rendered {
    /// The Listener, RouteConfiguration, Cluster and ClusterLoadAssignment by which `org`'s
    /// proxyless gRPC clients reach a service's port as `host`.
    /// With `tcp` (the service's virtual IP, for a `tcp` port), the Listener is a `tcp_proxy`
    /// there instead, and there is no RouteConfiguration: TCP is not for gRPC clients.
    fn grpc(
        &mut self,
        org: &str,
        host: &Host<'_>,
        assignment: &ClusterLoadAssignment,
        tcp: Option<std::net::Ipv4Addr>,
    ) {
        let name = &host.name;
        let cache_name = format!("{}{name}", crate::tenant_namespace(org));
        let listener = match tcp {
            Some(vip) => tcp_listener(name, vip, host.port),
            None => listener(name),
        };
        self.resources
            .push((LISTENER, cache_name.clone(), pack(&listener)));
        if tcp.is_none() {
            self.resources
                .push((ROUTE, cache_name.clone(), pack(&route(name, host.host))));
        }
        self.resources
            .push((CLUSTER, cache_name.clone(), pack(&cluster(name))));
        self.resources
            .push((ENDPOINT, cache_name, pack(assignment)));
    }
}

/// The other orgs a deployment's `mesh.allow` names (patterns with `*` for the org name none:
/// the orgs of a region are not enumerated for them).
fn allowed_orgs(deployment: &RegionalDeployment) -> std::collections::BTreeSet<&str> {
    deployment
        .spec
        .mesh
        .allow
        .iter()
        .filter_map(|pattern| pattern.split('/').next())
        .filter(|org| *org != "*" && *org != deployment.org)
        .collect()
}

/// Renders the resources of one service in its region, with `spec_json` (its spec, encoded by
/// the caller, who decides what a failure to encode means), `endpoints` (those of this service
/// in this region), `elsewhere` (its healthy instances in other regions, for the region's
/// node proxies) and `vip` (its virtual IP in the region, for the node proxies and DNS).
/// `split` is, while a canary splits requests, its new set (not among `endpoints`) and the
/// percent of requests it gets: the node proxies split their callers' requests the same way.
///
/// With `mesh` (the trust domain), the endpoints are instances run by agents and Meridian's
/// proxies reach them over mutual TLS: on their mesh ports, presenting their own certificate
/// and expecting the service's SPIFFE ID.
pub fn service(
    deployment: &RegionalDeployment,
    spec_json: &[u8],
    endpoints: &[&Endpoint],
    mesh: Option<&str>,
    elsewhere: &[ServiceInstance],
    vip: std::net::Ipv4Addr,
    split: Option<(&[&Endpoint], u32)>,
) -> Rendered {
    let mut rendered = Rendered::default();
    let own_host = format!("{}.{}.internal", deployment.service, deployment.app);
    let full_host = format!(
        "{}.{}.{}.internal",
        deployment.service, deployment.app, deployment.org
    );
    let other_orgs = allowed_orgs(deployment);
    for port in &deployment.spec.ports {
        let assignment = |name: &str| {
            load_assignment(name, &deployment.region, &port.name, port.port, endpoints)
        };
        let tcp = (port.protocol == Protocol::Tcp).then_some(vip);
        let own = Host::new(&own_host, port.port);
        rendered.grpc(&deployment.org, &own, &assignment(&own.name), tcp);
        // Proxyless gRPC clients of an org that `mesh.allow` names reach the service by its
        // full name, as instances behind node proxies do. They declare no app or service, so
        // what they see is decided per org.
        let full = Host::new(&full_host, port.port);
        let full_assignment = assignment(&full.name);
        for org in &other_orgs {
            rendered.grpc(org, &full, &full_assignment, tcp);
        }
    }
    let instance = |e: &&Endpoint, canary: bool| ServiceInstance {
        instance: e.id.clone(),
        address: e.address.clone(),
        healthy: e.health == EndpointHealth::Healthy,
        region: e.region.clone(),
        priority: 0,
        canary,
    };
    let (canary, canary_weight) = split.unwrap_or_default();
    let mut instances: Vec<ServiceInstance> = endpoints
        .iter()
        .map(|e| instance(e, false))
        .chain(canary.iter().map(|e| instance(e, true)))
        .collect();
    instances.extend_from_slice(elsewhere);
    rendered.resources.push(mesh_service(
        deployment,
        spec_json.to_vec(),
        instances,
        vip,
        canary_weight,
    ));
    proxy_clusters(&mut rendered, deployment, "", endpoints, mesh);
    rendered
}

/// The suffix of the clusters of a canary's new set: `<org>/<app>/<service>:<port>/canary`.
pub const CANARY_SUFFIX: &str = "/canary";

/// The clusters of a canary's new set, for Meridian's proxies: one per port, named as the
/// service's with [`CANARY_SUFFIX`], with `endpoints` (those of the new set), reached as
/// [`service`] says for `mesh`.
pub fn canary_clusters(
    deployment: &RegionalDeployment,
    endpoints: &[&Endpoint],
    mesh: Option<&str>,
) -> Rendered {
    let mut rendered = Rendered::default();
    proxy_clusters(&mut rendered, deployment, CANARY_SUFFIX, endpoints, mesh);
    rendered
}

/// One cluster and its load assignment per port of `deployment`, for Meridian's proxies,
/// named as [`proxy_cluster_name`] says followed by `suffix`.
fn proxy_clusters(
    rendered: &mut Rendered,
    deployment: &RegionalDeployment,
    suffix: &str,
    endpoints: &[&Endpoint],
    mesh: Option<&str>,
) {
    for (index, port) in deployment.spec.ports.iter().enumerate() {
        let name = format!("{}{suffix}", proxy_cluster_name(deployment, &port.name));
        let cache_name = format!("{}{name}", crate::PROXY_NAMESPACE);
        let mut cluster = proxy_cluster(&name, port.protocol.is_http2());
        cluster.metadata = deployment
            .spec
            .scale
            .concurrency
            .map(endpoint_limits_metadata);
        let mut target_port = port.port;
        if let Some(trust_domain) = mesh {
            let peer = format!(
                "spiffe://{trust_domain}/org/{}/app/{}/service/{}",
                deployment.org, deployment.app, deployment.service
            );
            cluster.transport_socket = Some(mesh_transport_socket(&peer));
            target_port = u32::from(crate::meridian::mesh_port(index));
        }
        rendered
            .resources
            .push((CLUSTER, cache_name.clone(), pack(&cluster)));
        let assignment = load_assignment(
            &name,
            &deployment.region,
            &port.name,
            target_port,
            endpoints,
        );
        rendered
            .resources
            .push((ENDPOINT, cache_name, pack(&assignment)));
    }
}

/// The name of a service port's cluster for Meridian's proxies: `<org>/<app>/<service>:<port>`.
pub fn proxy_cluster_name(deployment: &RegionalDeployment, port_name: &str) -> String {
    format!(
        "{}/{}/{}:{port_name}",
        deployment.org, deployment.app, deployment.service
    )
}

/// The name of the gateway's Listener and RouteConfiguration.
pub const GATEWAY: &str = "gateway";

/// A gateway's Listener `name`: HTTP on `address` (HTTP/1.1 and h2c; with `mesh`, mutual TLS
/// with the proxy's own certificate, for edges), routes from RDS `gateway`.
pub fn gateway_listener(name: &str, address: SocketAddr, mesh: bool) -> Any {
    let manager = http_connection_manager(GATEWAY);
    let address = socket_address(&address.ip().to_string(), u32::from(address.port()));
    pack(&filter_listener(
        name,
        address,
        (
            "envoy.filters.network.http_connection_manager",
            pack(&manager),
        ),
        mesh.then(gateway_transport_socket),
    ))
}

/// A Listener `name` on `address` with one filter chain: the network `filter` (its name and
/// typed config), over `transport_socket` if any.
fn filter_listener(
    name: &str,
    address: Address,
    (filter, config): (&str, Any),
    transport_socket: Option<TransportSocket>,
) -> Listener {
    Listener {
        name: name.to_owned(),
        address: Some(address),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: filter.to_owned(),
                config_type: Some(FilterConfig::TypedConfig(config)),
            }],
            transport_socket,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The Listener of a `tcp` port for Envoy: on the service's virtual IP and the port, a
/// `tcp_proxy` to the cluster of the same name.
fn tcp_listener(name: &str, vip: std::net::Ipv4Addr, port: u32) -> Listener {
    let proxy = TcpProxy {
        stat_prefix: name.to_owned(),
        cluster_specifier: Some(TcpClusterSpecifier::Cluster(name.to_owned())),
        ..Default::default()
    };
    let address = socket_address(&vip.to_string(), port);
    let filter = ("envoy.filters.network.tcp_proxy", pack(&proxy));
    filter_listener(name, address, filter, None)
}

/// Mutual TLS on a gateway's listener: the proxy's own certificate
/// ([`OWN_CERTIFICATE`](crate::meridian::OWN_CERTIFICATE)), a client certificate required;
/// Meridian's proxies admit only edges there.
fn gateway_transport_socket() -> TransportSocket {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    };
    let context = DownstreamTlsContext {
        require_client_certificate: Some(envoy_types::pb::google::protobuf::BoolValue {
            value: true,
        }),
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                name: crate::meridian::OWN_CERTIFICATE.to_owned(),
                sds_config: Some(ads()),
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_owned(),
        config_type: Some(TransportSocketConfig::TypedConfig(pack(&context))),
    }
}

/// The gateway's RouteConfiguration: one virtual host per service with public domains and
/// routes, each path prefix (longest first) to the cluster of its port. A domain that overlaps
/// one of another service (equal, or under its wildcard) is given to neither, whatever the
/// order of `deployments`: the store never accepts such claims, and a copy of the data that
/// disagrees for a moment must not send one org's domain to another org's service.
pub fn gateway_routes<'a>(
    deployments: impl IntoIterator<Item = &'a RegionalDeployment> + Clone,
) -> Any {
    let unsplit: Vec<(&RegionalDeployment, Option<u32>)> =
        deployments.into_iter().map(|d| (d, None)).collect();
    gateway_routes_split(unsplit.iter().copied())
}

/// [`gateway_routes`], each deployment with the share of requests (1 to 99) its canary's new
/// set gets, if the proxies split them: its routes then go to the service's clusters and to
/// those of the new set ([`canary_clusters`]) by weight.
pub fn gateway_routes_split<'a>(
    deployments: impl IntoIterator<Item = (&'a RegionalDeployment, Option<u32>)> + Clone,
) -> Any {
    let contested = meridian_model::contested_domains(
        deployments
            .clone()
            .into_iter()
            .map(|(d, _)| ((&d.org, &d.app, &d.service), d.spec.domains.as_slice())),
    );
    let mut virtual_hosts = Vec::new();
    for (deployment, canary) in deployments {
        let spec = &deployment.spec;
        let domains: Vec<String> = spec
            .domains
            .iter()
            .filter(|d| !contested.contains(*d))
            .cloned()
            .collect();
        if domains.is_empty() || spec.routes.is_empty() {
            continue;
        }
        let mut routes: Vec<&meridian_model::Route> = spec.routes.iter().collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        virtual_hosts.push(VirtualHost {
            name: format!(
                "{}/{}/{}",
                deployment.org, deployment.app, deployment.service
            ),
            domains,
            routes: routes
                .into_iter()
                .map(|r| {
                    let cluster = proxy_cluster_name(deployment, &r.port);
                    let mut route = prefix_route(&r.path_prefix, cluster.clone());
                    if let Some(Action::Route(action)) = &mut route.action {
                        action.retry_policy = Some(gateway_retries());
                        if let Some(weight) = canary {
                            action.cluster_specifier = Some(split(cluster, weight));
                        }
                    }
                    route
                })
                .collect(),
            ..Default::default()
        });
    }
    pack(&RouteConfiguration {
        name: GATEWAY.to_owned(),
        virtual_hosts,
        ..Default::default()
    })
}

/// How many times a gateway retries a request whose instance could not be reached or failed as a
/// gateway (an instance that just went away): the proxy retries requests whose body it holds,
/// within its retry budget.
const GATEWAY_RETRIES: u32 = 2;

/// The gateway's retry policy: connect failures and gateway errors, to another instance.
fn gateway_retries() -> RetryPolicy {
    RetryPolicy {
        retry_on: "connect-failure,gateway-error".to_owned(),
        num_retries: Some(UInt32Value {
            value: GATEWAY_RETRIES,
        }),
        ..Default::default()
    }
}

/// `cluster` with `100 - weight` of the requests, its canary's with `weight`.
fn split(cluster: String, weight: u32) -> ClusterSpecifier {
    let canary = format!("{cluster}{CANARY_SUFFIX}");
    let share = |name: String, value: u32| ClusterWeight {
        name,
        weight: Some(UInt32Value { value }),
        ..Default::default()
    };
    ClusterSpecifier::WeightedClusters(WeightedCluster {
        clusters: vec![share(cluster, 100 - weight.min(100)), share(canary, weight)],
        ..Default::default()
    })
}

fn prefix_route(prefix: &str, cluster: String) -> Route {
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix(prefix.to_owned())),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn proxy_cluster(name: &str, http2: bool) -> Cluster {
    Cluster {
        lb_policy: LbPolicy::LeastRequest as i32,
        outlier_detection: Some(OutlierDetection {
            consecutive_gateway_failure: Some(UInt32Value { value: 5 }),
            ..Default::default()
        }),
        typed_extension_protocol_options: if http2 {
            http2_options()
        } else {
            Default::default()
        },
        ..cluster(name)
    }
}

/// Cluster metadata carrying an instance's concurrency limits to Meridian's proxies (see
/// [`crate::meridian::EndpointLimits`]).
fn endpoint_limits_metadata(limits: meridian_model::Concurrency) -> Metadata {
    let limits = crate::meridian::EndpointLimits {
        soft: limits.soft.unwrap_or(0),
        hard: limits.hard.unwrap_or(0),
    };
    let any = Any {
        type_url: crate::meridian::ENDPOINT_LIMITS.to_owned(),
        value: prost::Message::encode_to_vec(&limits),
    };
    Metadata {
        typed_filter_metadata: [(crate::meridian::ENDPOINT_LIMITS_KEY.to_owned(), any)].into(),
        ..Default::default()
    }
}

/// The key of a cluster's upstream HTTP protocol options.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Protocol options that make a cluster speak HTTP/2 (prior knowledge) to its endpoints.
fn http2_options() -> std::collections::HashMap<String, Any> {
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            },
        )),
        ..Default::default()
    };
    std::collections::HashMap::from([(HTTP_PROTOCOL_OPTIONS.to_owned(), pack(&options))])
}

fn socket_address(ip: &str, port: u32) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn http_connection_manager(name: &str) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: name.to_owned(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: name.to_owned(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_owned(),
            config_type: Some(ConfigType::TypedConfig(pack(&Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn listener(name: &str) -> Listener {
    let manager = http_connection_manager(name);
    Listener {
        name: name.to_owned(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack(&manager)),
        }),
        ..Default::default()
    }
}

fn route(name: &str, host: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: name.to_owned(),
            domains: vec![name.to_owned(), host.to_owned()],
            routes: vec![prefix_route("", name.to_owned())],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.to_owned(),
        }),
        lb_policy: LbPolicy::RoundRobin as i32,
        connect_timeout: Some(Duration {
            seconds: 5,
            nanos: 0,
        }),
        ..Default::default()
    }
}

fn health_status(health: EndpointHealth) -> HealthStatus {
    match health {
        EndpointHealth::Healthy => HealthStatus::Healthy,
        EndpointHealth::Unhealthy => HealthStatus::Unhealthy,
        EndpointHealth::Draining => HealthStatus::Draining,
    }
}

fn load_assignment(
    name: &str,
    region: &str,
    port_name: &str,
    default_port: u32,
    endpoints: &[&Endpoint],
) -> ClusterLoadAssignment {
    let lb_endpoints = endpoints
        .iter()
        .map(|endpoint| {
            let port = endpoint
                .ports
                .get(port_name)
                .copied()
                .unwrap_or(default_port);
            LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                    address: Some(socket_address(&endpoint.address, port)),
                    ..Default::default()
                })),
                health_status: health_status(endpoint.health) as i32,
                ..Default::default()
            }
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            locality: Some(Locality {
                region: region.to_owned(),
                ..Default::default()
            }),
            lb_endpoints,
            // gRPC ignores localities without a weight.
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            priority: 0,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The [`meridian::Service`](crate::meridian::Service) resource of a deployment with its spec
/// (`spec_json`, encoded by the caller), instances, virtual IP and the percent of requests its
/// canary's new set gets while a canary splits them (0 otherwise), for the region's agents
/// (cache name `mesh/<org>/<app>/<service>`).
pub fn mesh_service(
    deployment: &RegionalDeployment,
    spec_json: Vec<u8>,
    instances: Vec<ServiceInstance>,
    vip: std::net::Ipv4Addr,
    canary_weight: u32,
) -> (&'static str, String, Any) {
    use crate::meridian::{Service, MESH_NAMESPACE, SERVICE};
    let service = Service {
        org: deployment.org.clone(),
        app: deployment.app.clone(),
        service: deployment.service.clone(),
        version: deployment.version,
        spec_json,
        instances,
        vip: vip.to_string(),
        canary_weight,
    };
    let name = format!(
        "{MESH_NAMESPACE}{}/{}/{}",
        deployment.org, deployment.app, deployment.service
    );
    let resource = Any {
        type_url: SERVICE.to_owned(),
        value: prost::Message::encode_to_vec(&service),
    };
    (SERVICE, name, resource)
}

/// The name of the TLS transport socket.
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

/// Mutual TLS to a cluster's endpoints: the proxy's own certificate
/// ([`OWN_CERTIFICATE`](crate::meridian::OWN_CERTIFICATE)), and the endpoints' certificates must
/// carry the URI SAN `peer`.
pub fn mesh_transport_socket(peer: &str) -> TransportSocket {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, CommonTlsContext, SdsSecretConfig, SubjectAltNameMatcher,
        UpstreamTlsContext,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
    let context = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                name: crate::meridian::OWN_CERTIFICATE.to_owned(),
                sds_config: Some(ads()),
            }],
            validation_context_type: Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                        san_type: SanType::Uri as i32,
                        matcher: Some(StringMatcher {
                            match_pattern: Some(MatchPattern::Exact(peer.to_owned())),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_owned(),
        config_type: Some(TransportSocketConfig::TypedConfig(pack(&context))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn orgs_that_mesh_allow_names_see_the_service_by_its_full_name() {
        let definition = meridian_model::parse_definition_json(
            br#"{"org": "acme", "app": "shop", "name": "api", "regions": ["fra"],
                "runtime": {"process": {"command": "/bin/true"}},
                "ports": [{"name": "grpc", "port": 9090, "protocol": "http2"}],
                "mesh": {"allow": ["partner/*/*", "*/billing/*", "acme/x/y"]}}"#,
        )
        .unwrap();
        let deployment = &meridian_model::derive_regional(&definition, 1)[0];
        let loopback = std::net::Ipv4Addr::LOCALHOST;
        let rendered = service(deployment, b"{}", &[], None, &[], loopback, None);
        let grpc: Vec<(&str, &str)> = rendered
            .resources
            .iter()
            .filter(|(_, name, _)| name.starts_with("grpc/"))
            .map(|(type_url, name, _)| (*type_url, name.as_str()))
            .collect();
        let expected = |org: &str, name: &str| {
            let name = format!("grpc/{org}/{name}");
            [LISTENER, ROUTE, CLUSTER, ENDPOINT].map(|t| (t, name.clone()))
        };
        let mut wanted: Vec<(&str, String)> = expected("acme", "api.shop.internal:9090")
            .into_iter()
            .chain(expected("partner", "api.shop.acme.internal:9090"))
            .collect();
        wanted.sort();
        let mut got: Vec<(&str, String)> = grpc.iter().map(|(t, n)| (*t, n.to_string())).collect();
        got.sort();
        // `*` as the org names no org in particular; the service's own org is not "another".
        assert_eq!(got, wanted);
        let route = rendered
            .resources
            .iter()
            .find(|(t, n, _)| *t == ROUTE && n == "grpc/partner/api.shop.acme.internal:9090")
            .map(|(_, _, any)| RouteConfiguration::decode(any.value.as_slice()).unwrap())
            .unwrap();
        assert_eq!(
            route.virtual_hosts[0].domains,
            ["api.shop.acme.internal:9090", "api.shop.acme.internal"]
        );
    }

    #[test]
    fn a_tcp_port_is_a_tcp_proxy_listener_on_the_virtual_ip_without_routes() {
        let definition = meridian_model::parse_definition_json(
            br#"{"org": "acme", "app": "shop", "name": "db", "regions": ["fra"],
                "runtime": {"process": {"command": "/bin/true"}},
                "ports": [{"name": "pg", "port": 5432, "protocol": "tcp"}]}"#,
        )
        .unwrap();
        let deployment = &meridian_model::derive_regional(&definition, 1)[0];
        let vip = std::net::Ipv4Addr::new(100, 112, 0, 9);
        let rendered = service(deployment, b"{}", &[], None, &[], vip, None);
        let name = "grpc/acme/db.shop.internal:5432";
        let of = |wanted: &str| {
            rendered
                .resources
                .iter()
                .find(|(t, n, _)| *t == wanted && n == name)
                .map(|(_, _, any)| any.clone())
        };
        assert!(of(ROUTE).is_none());
        assert!(of(CLUSTER).is_some() && of(ENDPOINT).is_some());
        let listener = Listener::decode(of(LISTENER).unwrap().value.as_slice()).unwrap();
        assert!(listener.api_listener.is_none());
        let Some(AddressKind::SocketAddress(address)) = listener.address.unwrap().address else {
            panic!("no socket address");
        };
        assert_eq!(address.address, "100.112.0.9");
        assert_eq!(address.port_specifier, Some(PortSpecifier::PortValue(5432)));
        let filter = &listener.filter_chains[0].filters[0];
        assert_eq!(filter.name, "envoy.filters.network.tcp_proxy");
        let Some(FilterConfig::TypedConfig(config)) = &filter.config_type else {
            panic!("{filter:?}");
        };
        let proxy = TcpProxy::decode(config.value.as_slice()).unwrap();
        assert_eq!(
            proxy.cluster_specifier,
            Some(TcpClusterSpecifier::Cluster(
                "db.shop.internal:5432".to_owned()
            ))
        );
    }

    /// acme/shop/web in fra as `org` claiming `domains` (a JSON list), one port `http`.
    fn web(org: &str, domains: &str) -> RegionalDeployment {
        let definition = meridian_model::parse_definition_json(
            format!(
                r#"{{"org": "{org}", "app": "shop", "name": "web", "regions": ["fra"],
                "runtime": {{"process": {{"command": "/bin/true"}}}},
                "ports": [{{"name": "http", "port": 8080}}],
                "routes": [{{"port": "http"}}], "domains": {domains}}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        meridian_model::derive_regional(&definition, 1).remove(0)
    }

    #[test]
    fn a_canarys_routes_split_requests_between_the_service_and_its_new_set() {
        let acme = web("acme", r#"["shop.example.com"]"#);
        let routes = gateway_routes_split([(&acme, Some(20))]);
        let routes = RouteConfiguration::decode(routes.value.as_slice()).unwrap();
        let Some(Action::Route(action)) = &routes.virtual_hosts[0].routes[0].action else {
            panic!("{routes:?}");
        };
        let Some(ClusterSpecifier::WeightedClusters(split)) = &action.cluster_specifier else {
            panic!("{action:?}");
        };
        let shares: Vec<(&str, u32)> = split
            .clusters
            .iter()
            .map(|c| (c.name.as_str(), c.weight.as_ref().unwrap().value))
            .collect();
        let canary = "acme/shop/web:http/canary";
        assert_eq!(shares, [("acme/shop/web:http", 80), (canary, 20)]);
        assert!(action.retry_policy.is_some());
        let clusters = canary_clusters(&acme, &[], None);
        let names: Vec<&str> = clusters
            .resources
            .iter()
            .map(|(_, n, _)| n.as_str())
            .collect();
        assert!(names.iter().all(|n| n.ends_with(canary)), "{names:?}");
        assert_eq!(names.len(), 2, "a cluster and its endpoints");
    }

    #[test]
    fn the_gateway_gives_a_domain_two_services_claim_to_neither() {
        let owner = web("acme", r#"["shop.example.com", "acme.example.net"]"#);
        let intruder = web("aaa", r#"["*.example.com", "aaa.example.net"]"#);
        for order in [[&owner, &intruder], [&intruder, &owner]] {
            let routes = gateway_routes(order);
            let routes = RouteConfiguration::decode(routes.value.as_slice()).unwrap();
            let mut hosts: Vec<(String, String)> = routes
                .virtual_hosts
                .iter()
                .flat_map(|v| v.domains.iter().map(|d| (d.clone(), v.name.clone())))
                .collect();
            hosts.sort();
            assert_eq!(
                hosts,
                [
                    ("aaa.example.net".to_owned(), "aaa/shop/web".to_owned()),
                    ("acme.example.net".to_owned(), "acme/shop/web".to_owned()),
                ]
            );
        }
    }
}
