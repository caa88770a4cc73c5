//! From xDS resources straight to the proxy's configuration types, one resource at a time: a
//! Listener (with its RouteConfiguration) becomes a [`ListenerConfig`], a Cluster (with its
//! ClusterLoadAssignment) a [`ClusterConfig`], which the proxy then checks, once, by the same
//! rules as a file (`config::validate`), so that an xDS update has a file reload's guarantees.
//!
//! Supported: Listeners with an address and one network filter — an HttpConnectionManager
//! (routes inline or by RDS, router filter) or a TcpProxy; RouteConfigurations (domains; prefix,
//! path and exact/present header matches; cluster or weighted clusters; prefix rewrite; timeout;
//! retries; header add/remove); Clusters of type EDS or STATIC (round robin or least request,
//! connect timeout, circuit breakers, outlier detection, panic threshold, one HTTP or TCP health
//! check, HTTP/2 upstreams); ClusterLoadAssignments (priorities, weights; endpoints that are
//! unhealthy, draining or timed out are left out). Anything else that changes behaviour is
//! rejected with the resource and the field named. No input panics.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy as PbLbPolicy};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::health_check::HealthChecker;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, HeaderValueOption, HealthStatus};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier as TcpClusterSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::UpstreamProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::google::protobuf::{Any, Duration};
use meridian_model::HumanDuration;
use meridian_xds::render::HTTP_PROTOCOL_OPTIONS;
use meridian_xds::Held;
use prost::{Message, Name};

use crate::config::{
    default_max_connections, ClusterConfig, EndpointConfig, EndpointLimits, HeaderMatch,
    HealthCheckConfig, HttpHealthCheck, LbPolicy, ListenerConfig, ListenerProtocol, MeshConfig,
    OutlierDetection, RetryOn, RetryPolicy, RouteConfig, RouteMatch, TcpHealthCheck,
    TrustForwarded, UpstreamMeshConfig, UpstreamProtocol, VirtualHost, WeightedCluster,
};

/// Held resources of one type, by name.
pub type ByName = BTreeMap<String, Held>;

/// A translated Listener.
#[derive(Debug, Clone, PartialEq)]
pub struct TranslatedListener {
    /// The listener; `None` while the RouteConfiguration it names has not arrived.
    pub config: Option<ListenerConfig>,
    /// The RouteConfiguration it takes its routes from (RDS).
    pub routes: Option<String>,
    /// The clusters its routes send to.
    pub clusters: Vec<String>,
}

/// A translated Cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct TranslatedCluster {
    /// The cluster (not validated yet).
    pub config: ClusterConfig,
    /// The ClusterLoadAssignment it takes its endpoints from (EDS).
    pub assignment: Option<String>,
}

/// Translates Listener `name` (held as `any`), taking RDS routes from `routes`; or says what is
/// wrong, naming the resource and the field.
pub fn listener(
    any: &Any,
    name: &str,
    routes: Option<&ByName>,
    identity: Option<&Identity>,
) -> Result<TranslatedListener, String> {
    let listener: Listener = decode(any, "Listener", name)?;
    let at = format!("Listener `{name}`");
    let address = socket_address(&listener.address, &format!("{at}.address"))?;
    let mesh = listener_mesh(&listener, &at, identity)?;
    let mut clusters = Vec::new();
    let base = ListenerConfig {
        name: name.to_owned(),
        address,
        protocol: ListenerProtocol::Http,
        virtual_hosts: Vec::new(),
        cluster: None,
        tls: None,
        mesh: None,
        sources: Vec::new(),
        max_connections: default_max_connections(),
        trust_forwarded: TrustForwarded::default(),
        instance: None,
    };
    match network_filter(&listener, name)? {
        Some(Network::Tcp(_)) if mesh.is_some() => {
            Err(format!("{at}: mutual TLS is for HTTP listeners only"))
        }
        Some(Network::Tcp(tcp)) => {
            let Some(TcpClusterSpecifier::Cluster(cluster)) = tcp.cluster_specifier else {
                return Err(format!("{at}: tcp_proxy needs a cluster"));
            };
            clusters.push(cluster.clone());
            let config = ListenerConfig {
                protocol: ListenerProtocol::Tcp,
                cluster: Some(cluster),
                ..base
            };
            Ok(TranslatedListener {
                config: Some(config),
                routes: None,
                clusters,
            })
        }
        Some(Network::Http(manager)) => {
            for (i, filter) in manager.http_filters.iter().enumerate() {
                let router =
                    filter.name == "envoy.filters.http.router" || filter.name.ends_with(".router");
                if !router && !filter.is_optional {
                    return Err(format!(
                        "{at}: http_filters[{i}] `{}` is not supported (only the router)",
                        filter.name
                    ));
                }
            }
            let (route_config, rds) = match manager.route_specifier {
                Some(RouteSpecifier::RouteConfig(config)) => (Some(config), None),
                Some(RouteSpecifier::Rds(rds)) => {
                    let name = rds.route_config_name;
                    let config = decode_held(routes, &name, "RouteConfiguration")?;
                    (config, Some(name))
                }
                _ => {
                    return Err(format!(
                        "{at}: the http_connection_manager needs rds or route_config"
                    ))
                }
            };
            // Warming: a listener whose routes have not arrived starts once they do.
            let routes_name = rds.clone().unwrap_or_else(|| format!("{name} (inline)"));
            let config = route_config
                .map(|routes| -> Result<ListenerConfig, String> {
                    Ok(ListenerConfig {
                        virtual_hosts: virtual_hosts(&routes, &routes_name, &mut clusters)?,
                        mesh,
                        ..base
                    })
                })
                .transpose()?;
            Ok(TranslatedListener {
                config,
                routes: rds,
                clusters,
            })
        }
        None => Err(format!("{at}.filter_chains: a network filter is required")),
    }
}

/// The endpoint limits in Cluster metadata (see [`meridian_xds::meridian::EndpointLimits`]),
/// if it has them.
fn endpoint_limits(cluster: &Cluster, at: &str) -> Result<Option<EndpointLimits>, String> {
    use meridian_xds::meridian::{EndpointLimits as Limits, ENDPOINT_LIMITS, ENDPOINT_LIMITS_KEY};
    let Some(any) = cluster
        .metadata
        .as_ref()
        .and_then(|m| m.typed_filter_metadata.get(ENDPOINT_LIMITS_KEY))
    else {
        return Ok(None);
    };
    let field = format!("{at}.metadata.typed_filter_metadata[{ENDPOINT_LIMITS_KEY}]");
    if any.type_url != ENDPOINT_LIMITS {
        return Err(format!("{field}: expected {ENDPOINT_LIMITS}"));
    }
    let limits = Limits::decode(any.value.as_slice()).map_err(|e| format!("{field}: {e}"))?;
    let set = |n: u32| (n > 0).then_some(n);
    Ok(Some(EndpointLimits {
        soft: set(limits.soft),
        hard: set(limits.hard),
    }))
}

/// Translates Cluster `name` (held as `any`), taking EDS endpoints from `assignments`; or says
/// what is wrong, naming the resource and the field. The proxy validates what it applies.
pub fn cluster(
    any: &Any,
    name: &str,
    assignments: Option<&ByName>,
    identity: Option<&Identity>,
) -> Result<TranslatedCluster, String> {
    let cluster: Cluster = decode(any, "Cluster", name)?;
    let at = format!("Cluster `{name}`");
    let lb = match PbLbPolicy::try_from(cluster.lb_policy) {
        Ok(PbLbPolicy::RoundRobin) => LbPolicy::RoundRobin,
        Ok(PbLbPolicy::LeastRequest) => LbPolicy::LeastRequest,
        _ => {
            return Err(format!(
                "{at}.lb_policy: only ROUND_ROBIN and LEAST_REQUEST are supported"
            ))
        }
    };
    let (assignment, source) = if is_eds(&cluster) {
        let eds = eds_name(&cluster);
        let assignment = decode_held(assignments, &eds, "ClusterLoadAssignment")?;
        (assignment, Some(eds))
    } else if cluster.cluster_discovery_type
        == Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32))
    {
        (cluster.load_assignment.clone(), None)
    } else {
        return Err(format!(
            "{at}.type: only EDS and STATIC clusters are supported"
        ));
    };
    let mut config = ClusterConfig::empty(name);
    config.lb = lb;
    if let Some(assignment) = &assignment {
        let source = source.as_deref().unwrap_or(name);
        config.endpoints = endpoints(assignment, source)?;
    }
    if let Some(timeout) = duration(&cluster.connect_timeout) {
        config.connect_timeout = timeout;
    }
    config.mesh = cluster_mesh(&cluster, &at, identity)?;
    if let Some(options) = cluster
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
    {
        let options: HttpProtocolOptions = decode(options, "Cluster", name)?;
        if let Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) =
            options.upstream_protocol_options
        {
            if let Some(ProtocolConfig::Http2ProtocolOptions(_)) = explicit.protocol_config {
                config.protocol = UpstreamProtocol::Http2;
            }
        }
    }
    if let Some(thresholds) = cluster
        .circuit_breakers
        .as_ref()
        .and_then(|b| b.thresholds.first())
    {
        let breakers = &mut config.circuit_breakers;
        if let Some(v) = &thresholds.max_connections {
            breakers.max_connections = v.value;
        }
        if let Some(v) = &thresholds.max_requests {
            breakers.max_requests = v.value;
        }
        if let Some(v) = &thresholds.max_pending_requests {
            breakers.max_pending_requests = v.value;
        }
    }
    config.endpoint_limits = endpoint_limits(&cluster, &at)?;
    if let Some(outlier) = &cluster.outlier_detection {
        let mut detection = OutlierDetection::default();
        if let Some(v) = &outlier.consecutive_5xx {
            detection.consecutive_5xx = v.value;
        }
        if let Some(v) = &outlier.consecutive_gateway_failure {
            detection.consecutive_gateway_errors = v.value;
        }
        if let Some(v) = duration(&outlier.base_ejection_time) {
            detection.base_ejection_time = v;
        }
        if let Some(v) = duration(&outlier.max_ejection_time) {
            detection.max_ejection_time = v;
        }
        if let Some(v) = &outlier.max_ejection_percent {
            detection.max_ejection_percent = v.value;
        }
        config.outlier_detection = Some(detection);
    }
    if let Some(percent) = cluster
        .common_lb_config
        .as_ref()
        .and_then(|c| c.healthy_panic_threshold.as_ref())
    {
        config.panic_threshold = percent.value.round().clamp(0.0, 100.0) as u32;
    }
    if let Some(check) = cluster.health_checks.first() {
        config.health_check = Some(health_check(check, &at)?);
    }
    Ok(TranslatedCluster {
        config,
        assignment: source,
    })
}

fn health_check(
    check: &envoy_types::pb::envoy::config::core::v3::HealthCheck,
    at: &str,
) -> Result<HealthCheckConfig, String> {
    let mut health = HealthCheckConfig::default();
    match &check.health_checker {
        Some(HealthChecker::HttpHealthCheck(http)) => {
            let path = if http.path.is_empty() {
                "/"
            } else {
                &http.path
            };
            health.http = Some(HttpHealthCheck {
                path: path.to_owned(),
            });
            health.tcp = None;
        }
        Some(HealthChecker::TcpHealthCheck(_)) => health.tcp = Some(TcpHealthCheck {}),
        _ => {
            return Err(format!(
                "{at}.health_checks[0]: only HTTP and TCP checks are supported"
            ))
        }
    }
    if let Some(v) = duration(&check.interval) {
        health.interval = v;
    }
    if let Some(v) = duration(&check.timeout) {
        health.timeout = v;
    }
    if let Some(v) = &check.healthy_threshold {
        health.healthy_threshold = v.value;
    }
    if let Some(v) = &check.unhealthy_threshold {
        health.unhealthy_threshold = v.value;
    }
    Ok(health)
}

/// Rewrites `listeners[2].address` as ``Listener `gw`: address`` so that a NACK names the
/// resource, not an index into a config the server never saw.
pub fn name_indices(field: &str, list: &str, kind: &str, names: &[&str]) -> String {
    let Some(rest) = field.strip_prefix(&format!("{list}[")) else {
        return field.to_owned();
    };
    let Some((index, rest)) = rest.split_once(']') else {
        return field.to_owned();
    };
    match index.parse::<usize>().ok().and_then(|i| names.get(i)) {
        Some(name) => format!("{kind} `{name}`: {}", rest.trim_start_matches('.')),
        None => field.to_owned(),
    }
}

/// Resource `name` of `held`, decoded, if it is held.
fn decode_held<M: Message + Name + Default>(
    held: Option<&ByName>,
    name: &str,
    kind: &str,
) -> Result<Option<M>, String> {
    held.and_then(|h| h.get(name))
        .map(|h| decode(&h.resource, kind, name))
        .transpose()
}

fn decode<M: Message + Name + Default>(any: &Any, kind: &str, name: &str) -> Result<M, String> {
    if any.type_url != M::type_url() {
        return Err(format!(
            "{kind} `{name}`: is a {}, not a {}",
            any.type_url,
            M::type_url()
        ));
    }
    M::decode(any.value.as_slice()).map_err(|e| format!("{kind} `{name}`: cannot decode: {e}"))
}

/// A protobuf duration in whole milliseconds (negative ones as zero, which validation refuses
/// where zero is not allowed).
fn duration(value: &Option<Duration>) -> Option<HumanDuration> {
    value.as_ref().map(|d| {
        let ms = d
            .seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(d.nanos) / 1_000_000);
        HumanDuration(std::time::Duration::from_millis(ms.max(0) as u64))
    })
}

/// `ip:port` of a socket address (IPv6 in brackets).
fn socket_address(address: &Option<Address>, at: &str) -> Result<String, String> {
    let Some(Address {
        address: Some(AddressKind::SocketAddress(socket)),
    }) = address
    else {
        return Err(format!("{at}: must be a socket address"));
    };
    let Some(PortSpecifier::PortValue(port)) = socket.port_specifier else {
        return Err(format!(
            "{at}.port_value: is required (named ports are not supported)"
        ));
    };
    Ok(if socket.address.contains(':') {
        format!("[{}]:{port}", socket.address)
    } else {
        format!("{}:{port}", socket.address)
    })
}

enum Network {
    Http(Box<HttpConnectionManager>),
    Tcp(Box<TcpProxy>),
}

fn network_filter(listener: &Listener, name: &str) -> Result<Option<Network>, String> {
    let at = format!("Listener `{name}`");
    if listener.api_listener.is_some() {
        return Err(format!(
            "{at}: api_listener is for proxyless gRPC clients; a proxy needs address and filter_chains"
        ));
    }
    let [chain] = listener.filter_chains.as_slice() else {
        return Err(format!(
            "{at}.filter_chains: exactly one filter chain is supported"
        ));
    };
    let [filter] = chain.filters.as_slice() else {
        return Err(format!(
            "{at}.filter_chains[0].filters: exactly one network filter is supported"
        ));
    };
    let Some(FilterConfig::TypedConfig(config)) = &filter.config_type else {
        return Err(format!(
            "{at}.filter_chains[0].filters[0]: typed_config is required"
        ));
    };
    if config.type_url == HttpConnectionManager::type_url() {
        return Ok(Some(Network::Http(Box::new(decode(
            config, "Listener", name,
        )?))));
    }
    if config.type_url == TcpProxy::type_url() {
        return Ok(Some(Network::Tcp(Box::new(decode(
            config, "Listener", name,
        )?))));
    }
    Err(format!(
        "{at}.filter_chains[0].filters[0]: {} is not supported (http_connection_manager or tcp_proxy)",
        config.type_url
    ))
}

/// The `mesh` section of a listener whose filter chain has a TLS transport socket: a gateway's
/// listener for edges (a client certificate required, the proxy's own certificate), which only
/// edges may call.
fn listener_mesh(
    listener: &Listener,
    at: &str,
    identity: Option<&Identity>,
) -> Result<Option<MeshConfig>, String> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
    let Some(socket) = listener
        .filter_chains
        .first()
        .and_then(|c| c.transport_socket.as_ref())
    else {
        return Ok(None);
    };
    let at = format!("{at}.filter_chains[0].transport_socket");
    if socket.name != meridian_xds::render::TLS_TRANSPORT_SOCKET {
        return Err(format!(
            "{at}: only {} is supported, not `{}`",
            meridian_xds::render::TLS_TRANSPORT_SOCKET,
            socket.name
        ));
    }
    let Some(ConfigType::TypedConfig(config)) = &socket.config_type else {
        return Err(format!("{at}: typed_config is missing"));
    };
    let context: DownstreamTlsContext = decode(config, "DownstreamTlsContext", &at)?;
    if !context.require_client_certificate.is_some_and(|r| r.value) {
        return Err(format!(
            "{at}: require_client_certificate must be true (mutual TLS only)"
        ));
    }
    let own = context.common_tls_context.is_some_and(|common| {
        common
            .tls_certificate_sds_secret_configs
            .iter()
            .any(|s| s.name == meridian_xds::meridian::OWN_CERTIFICATE)
    });
    if !own {
        return Err(format!(
            "{at}: the certificate must be the proxy's own (SDS secret `{}`)",
            meridian_xds::meridian::OWN_CERTIFICATE
        ));
    }
    let Some(identity) = identity else {
        return Err(format!(
            "{at}: mutual TLS needs this proxy's identity; run it with an https:// xDS server \
             and a join token"
        ));
    };
    Ok(Some(MeshConfig {
        cert_file: identity.cert_file.clone(),
        key_file: identity.key_file.clone(),
        bundle_file: identity.bundle_file.clone(),
        org: None,
        allow: Vec::new(),
    }))
}

/// The virtual hosts of RouteConfiguration `name`.
fn virtual_hosts(
    config: &RouteConfiguration,
    name: &str,
    referenced: &mut Vec<String>,
) -> Result<Vec<VirtualHost>, String> {
    let mut hosts = Vec::with_capacity(config.virtual_hosts.len());
    for (v, host) in config.virtual_hosts.iter().enumerate() {
        let mut routes = Vec::with_capacity(host.routes.len());
        for (r, route) in host.routes.iter().enumerate() {
            let at = format!("RouteConfiguration `{name}`: virtual_hosts[{v}].routes[{r}]");
            routes.push(translate_route(route, &at, referenced)?);
        }
        hosts.push(VirtualHost {
            name: host.name.clone(),
            domains: host.domains.clone(),
            routes,
        });
    }
    Ok(hosts)
}

fn headers_to_add(options: &[HeaderValueOption]) -> BTreeMap<String, String> {
    options
        .iter()
        .filter_map(|o| o.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

fn route_match(route: &Route, at: &str) -> Result<RouteMatch, String> {
    let mut matcher = RouteMatch::default();
    let Some(m) = &route.r#match else {
        return Ok(matcher);
    };
    match &m.path_specifier {
        Some(PathSpecifier::Prefix(prefix)) if !prefix.is_empty() => {
            matcher.prefix = Some(prefix.clone());
        }
        Some(PathSpecifier::Prefix(_)) | None => {}
        Some(PathSpecifier::Path(path)) => matcher.path = Some(path.clone()),
        Some(_) => {
            return Err(format!(
                "{at}.match: only prefix and path matches are supported"
            ))
        }
    }
    for (h, header) in m.headers.iter().enumerate() {
        if header.invert_match {
            return Err(format!(
                "{at}.match.headers[{h}].invert_match: is not supported"
            ));
        }
        let exact = match &header.header_match_specifier {
            Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(value)),
                ignore_case: false,
            })) => Some(value.clone()),
            // The deprecated spelling of the same match, still sent by older servers.
            #[allow(deprecated)]
            Some(HeaderMatchSpecifier::ExactMatch(value)) => Some(value.clone()),
            Some(HeaderMatchSpecifier::PresentMatch(true)) | None => None,
            Some(_) => {
                return Err(format!(
                    "{at}.match.headers[{h}]: only exact and present matches are supported"
                ))
            }
        };
        matcher.headers.push(HeaderMatch {
            name: header.name.clone(),
            exact,
        });
    }
    Ok(matcher)
}

fn retry_policy(
    retry: &envoy_types::pb::envoy::config::route::v3::RetryPolicy,
    at: &str,
) -> Result<RetryPolicy, String> {
    let mut on = Vec::new();
    for condition in retry
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        on.push(match condition {
            "connect-failure" => RetryOn::ConnectFailure,
            "5xx" => RetryOn::ServerError,
            "gateway-error" => RetryOn::GatewayError,
            "retriable-status-codes"
            | "unavailable"
            | "cancelled"
            | "deadline-exceeded"
            | "resource-exhausted" => RetryOn::RetriableGrpc,
            other => {
                return Err(format!(
                    "{at}.route.retry_policy.retry_on: `{other}` is not supported"
                ))
            }
        });
    }
    on.dedup();
    let mut policy = RetryPolicy {
        on,
        ..RetryPolicy::default()
    };
    if let Some(n) = &retry.num_retries {
        policy.attempts = n.value;
    }
    policy.per_try_timeout = duration(&retry.per_try_timeout);
    Ok(policy)
}

fn translate_route(
    route: &Route,
    at: &str,
    referenced: &mut Vec<String>,
) -> Result<RouteConfig, String> {
    let mut out = RouteConfig {
        name: (!route.name.is_empty()).then(|| route.name.clone()),
        matcher: route_match(route, at)?,
        ..RouteConfig::default()
    };
    let Some(Action::Route(action)) = &route.action else {
        return Err(format!(
            "{at}: only route actions are supported (no redirect or direct_response)"
        ));
    };
    match &action.cluster_specifier {
        Some(ClusterSpecifier::Cluster(cluster)) => {
            referenced.push(cluster.clone());
            out.cluster = Some(cluster.clone());
        }
        Some(ClusterSpecifier::WeightedClusters(weighted)) => {
            let clusters = weighted
                .clusters
                .iter()
                .map(|c| {
                    referenced.push(c.name.clone());
                    WeightedCluster {
                        name: c.name.clone(),
                        weight: c.weight.as_ref().map_or(1, |w| w.value),
                    }
                })
                .collect();
            out.weighted_clusters = Some(clusters);
        }
        _ => return Err(format!("{at}.route: needs cluster or weighted_clusters")),
    }
    if !action.prefix_rewrite.is_empty() {
        out.prefix_rewrite = Some(action.prefix_rewrite.clone());
    }
    if let Some(timeout) = duration(&action.timeout) {
        // Envoy's 0 means no timeout; the proxy's longest is a day.
        out.timeout = if timeout.0.is_zero() {
            HumanDuration(std::time::Duration::from_secs(24 * 3600))
        } else {
            timeout
        };
    }
    if let Some(retry) = &action.retry_policy {
        out.retries = Some(retry_policy(retry, at)?);
    }
    out.request_headers_add = headers_to_add(&route.request_headers_to_add);
    out.request_headers_remove = route.request_headers_to_remove.clone();
    out.response_headers_add = headers_to_add(&route.response_headers_to_add);
    out.response_headers_remove = route.response_headers_to_remove.clone();
    Ok(out)
}

fn is_eds(cluster: &Cluster) -> bool {
    cluster.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
}

fn eds_name(cluster: &Cluster) -> String {
    cluster
        .eds_cluster_config
        .as_ref()
        .map(|c| c.service_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| cluster.name.clone())
}

/// The proxy's own certificate, key and trust bundle files, for clusters that want mutual TLS.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The certificate chain.
    pub cert_file: String,
    /// The key.
    pub key_file: String,
    /// The trust bundle.
    pub bundle_file: String,
}

/// The `mesh` section of a cluster whose transport socket asks for mutual TLS with this
/// proxy's own certificate and the endpoints' URI SAN; `None` for a cluster without one.
fn cluster_mesh(
    cluster: &Cluster,
    at: &str,
    identity: Option<&Identity>,
) -> Result<Option<UpstreamMeshConfig>, String> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    let Some(socket) = &cluster.transport_socket else {
        return Ok(None);
    };
    if socket.name != meridian_xds::render::TLS_TRANSPORT_SOCKET {
        return Err(format!(
            "{at}.transport_socket: only {} is supported, not `{}`",
            meridian_xds::render::TLS_TRANSPORT_SOCKET,
            socket.name
        ));
    }
    let Some(ConfigType::TypedConfig(config)) = &socket.config_type else {
        return Err(format!("{at}.transport_socket: typed_config is missing"));
    };
    let context: UpstreamTlsContext = decode(config, "UpstreamTlsContext", at)?;
    let common = context.common_tls_context.unwrap_or_default();
    let own = common
        .tls_certificate_sds_secret_configs
        .iter()
        .any(|s| s.name == meridian_xds::meridian::OWN_CERTIFICATE);
    if !own {
        return Err(format!(
            "{at}.transport_socket: the certificate must be the proxy's own (SDS secret `{}`)",
            meridian_xds::meridian::OWN_CERTIFICATE
        ));
    }
    let peer = match common.validation_context_type {
        Some(ValidationContextType::ValidationContext(validation)) => validation
            .match_typed_subject_alt_names
            .into_iter()
            .find(|m| m.san_type == SanType::Uri as i32)
            .and_then(|m| m.matcher)
            .and_then(|m| match m.match_pattern {
                Some(MatchPattern::Exact(uri)) => Some(uri),
                _ => None,
            }),
        _ => None,
    };
    let Some(peer) = peer else {
        return Err(format!(
            "{at}.transport_socket: the validation context must name the endpoints' URI SAN exactly"
        ));
    };
    let Some(identity) = identity else {
        return Err(format!(
            "{at}.transport_socket: mutual TLS needs this proxy's identity; run it with an \
             https:// xDS server and a join token"
        ));
    };
    Ok(Some(UpstreamMeshConfig {
        cert_file: identity.cert_file.clone(),
        key_file: identity.key_file.clone(),
        bundle_file: identity.bundle_file.clone(),
        peer,
    }))
}

/// The usable endpoints of ClusterLoadAssignment `name`: healthy or of unknown health (or
/// degraded).
fn endpoints(
    assignment: &ClusterLoadAssignment,
    name: &str,
) -> Result<Vec<EndpointConfig>, String> {
    let mut out = Vec::new();
    for (l, locality) in assignment.endpoints.iter().enumerate() {
        for (e, endpoint) in locality.lb_endpoints.iter().enumerate() {
            let usable = matches!(
                HealthStatus::try_from(endpoint.health_status),
                Ok(HealthStatus::Unknown | HealthStatus::Healthy | HealthStatus::Degraded)
            );
            if !usable {
                continue;
            }
            let at = format!("ClusterLoadAssignment `{name}`: endpoints[{l}].lb_endpoints[{e}]");
            let Some(HostIdentifier::Endpoint(host)) = &endpoint.host_identifier else {
                return Err(format!("{at}: needs an endpoint"));
            };
            let address = socket_address(&host.address, &format!("{at}.endpoint.address"))?;
            let weight = endpoint
                .load_balancing_weight
                .as_ref()
                .map_or(1, |w| w.value);
            out.push(EndpointConfig {
                address,
                weight,
                priority: locality.priority,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Cluster the region renders for port `http` of a service with `scale`.
    fn rendered_cluster(scale: &str) -> Cluster {
        let json = format!(
            r#"{{"org": "acme", "app": "shop", "name": "web", "regions": ["fra"],
                "runtime": {{"process": {{"command": "/bin/true"}}}}, "scale": {scale},
                "ports": [{{"name": "http", "port": 8080}}]}}"#
        );
        let definition = meridian_model::parse_definition_json(json.as_bytes()).unwrap();
        let deployment = &meridian_model::derive_regional(&definition, 1)[0];
        let vip = std::net::Ipv4Addr::LOCALHOST;
        let rendered = meridian_xds::render::service(deployment, b"{}", &[], None, &[], vip, None);
        let (_, _, any) = rendered
            .resources
            .iter()
            .find(|(t, name, _)| {
                *t == meridian_xds::CLUSTER && name.ends_with("acme/shop/web:http")
            })
            .unwrap();
        Cluster::decode(any.value.as_slice()).unwrap()
    }

    #[test]
    fn a_service_s_concurrency_limits_reach_its_proxies_clusters() {
        let at = "Cluster `c`";
        let limited = rendered_cluster(r#"{"concurrency": {"soft": 2, "hard": 5}}"#);
        assert_eq!(
            endpoint_limits(&limited, at),
            Ok(Some(EndpointLimits {
                soft: Some(2),
                hard: Some(5)
            }))
        );
        let hard_only = rendered_cluster(r#"{"concurrency": {"hard": 5}}"#);
        let limits = endpoint_limits(&hard_only, at).unwrap().unwrap();
        assert_eq!((limits.soft, limits.hard), (None, Some(5)));
        assert_eq!(endpoint_limits(&rendered_cluster("{}"), at), Ok(None));
        let mut wrong = limited;
        let key = meridian_xds::meridian::ENDPOINT_LIMITS_KEY;
        if let Some(metadata) = wrong.metadata.as_mut() {
            if let Some(any) = metadata.typed_filter_metadata.get_mut(key) {
                any.type_url = "type.googleapis.com/meridian.v1.Other".to_owned();
            }
        }
        let error = endpoint_limits(&wrong, at).unwrap_err();
        assert!(
            error.starts_with(
                "Cluster `c`.metadata.typed_filter_metadata[meridian.endpoint_limits]: expected"
            ),
            "{error}"
        );
    }
}
