//! From xDS resources to the proxy's [`ProxyConfig`]: the same config a file gives, checked by the
//! same validation, so that an xDS update has exactly a file reload's guarantees.
//!
//! Supported: Listeners with an address and one network filter — an HttpConnectionManager
//! (routes inline or by RDS, router filter) or a TcpProxy; RouteConfigurations (domains; prefix,
//! path and exact/present header matches; cluster or weighted clusters; prefix rewrite; timeout;
//! retries; header add/remove); Clusters of type EDS or STATIC (round robin or least request,
//! connect timeout, circuit breakers, outlier detection, panic threshold, one HTTP or TCP health
//! check, HTTP/2 upstreams); ClusterLoadAssignments (priorities, weights; endpoints that are
//! unhealthy, draining or timed out are left out). Anything else that changes behaviour is
//! rejected with the resource and the field named.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};
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
use meridian_xds::{render::HTTP_PROTOCOL_OPTIONS, Resources, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use prost::{Message, Name};
use serde_json::{json, Map, Value};

use crate::config::{parse_config, ProxyConfig};

/// The outcome of a translation.
pub enum Translated {
    /// Listeners and clusters have not both arrived yet, or no listener is complete: nothing to
    /// apply.
    NotReady,
    /// A whole configuration.
    Config(ProxyConfig),
}

/// Route configurations the listeners in `resources` name (what to subscribe to).
pub fn route_names(resources: &Resources) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for (name, held) in resources.get(LISTENER).into_iter().flatten() {
        let listener: Listener = decode(&held.resource, "Listener", name)?;
        if let Some(Network::Http(manager)) = network_filter(&listener, name)? {
            if let Some(RouteSpecifier::Rds(rds)) = manager.route_specifier {
                names.push(rds.route_config_name);
            }
        }
    }
    Ok(names)
}

/// Load assignments the EDS clusters in `resources` name (what to subscribe to).
pub fn assignment_names(resources: &Resources) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for (name, held) in resources.get(CLUSTER).into_iter().flatten() {
        let cluster: Cluster = decode(&held.resource, "Cluster", name)?;
        if is_eds(&cluster) {
            names.push(eds_name(&cluster));
        }
    }
    Ok(names)
}

/// Translates everything in `resources` into one configuration, or says what is wrong (naming
/// the resource and field). A listener whose routes have not arrived yet is left out until they
/// do; a route to a cluster that does not exist answers 503 (the cluster is there, without
/// endpoints).
pub fn translate(resources: &Resources, identity: Option<&Identity>) -> Result<Translated, String> {
    let (Some(listeners), Some(clusters)) = (resources.get(LISTENER), resources.get(CLUSTER))
    else {
        return Ok(Translated::NotReady);
    };
    let mut out_listeners = Vec::new();
    let mut referenced = Vec::new();
    for (name, held) in listeners {
        let listener: Listener = decode(&held.resource, "Listener", name)?;
        if let Some(value) =
            translate_listener(&listener, name, resources, &mut referenced, identity)?
        {
            out_listeners.push(value);
        }
    }
    if out_listeners.is_empty() {
        // Nothing to serve yet (no listener, or all still waiting for their routes).
        return Ok(Translated::NotReady);
    }
    let mut out_clusters = BTreeMap::new();
    for (name, held) in clusters {
        let cluster: Cluster = decode(&held.resource, "Cluster", name)?;
        out_clusters.insert(
            name.clone(),
            translate_cluster(&cluster, name, resources, identity)?,
        );
    }
    for name in referenced {
        out_clusters
            .entry(name.clone())
            .or_insert_with(|| json!({"name": name, "endpoints": []}));
    }
    let names: Vec<String> = out_clusters.keys().cloned().collect();
    let config = json!({
        "listeners": out_listeners,
        "clusters": out_clusters.into_values().collect::<Vec<_>>(),
    });
    let listener_names: Vec<String> = config["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| l["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    parse_config(&config.to_string())
        .map(Translated::Config)
        .map_err(|errors| {
            let messages: Vec<String> = errors
                .errors
                .iter()
                .map(|e| {
                    let field = name_indices(&e.field, "listeners", "Listener", &listener_names);
                    let field = name_indices(&field, "clusters", "Cluster", &names);
                    format!("{field}: {}", e.message)
                })
                .collect();
            messages.join("; ")
        })
}

/// Rewrites `listeners[2].address` as ``Listener `gw`: address`` so that a NACK names the
/// resource, not an index into a config the server never saw.
fn name_indices(field: &str, list: &str, kind: &str, names: &[String]) -> String {
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

fn duration(value: &Option<Duration>) -> Option<String> {
    value.as_ref().map(|d| {
        let ms = d
            .seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(d.nanos) / 1_000_000);
        format!("{}ms", ms.max(0))
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
) -> Result<Option<Value>, String> {
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
    Ok(Some(json!({
        "cert_file": identity.cert_file,
        "key_file": identity.key_file,
        "bundle_file": identity.bundle_file,
    })))
}

fn translate_listener(
    listener: &Listener,
    name: &str,
    resources: &Resources,
    referenced: &mut Vec<String>,
    identity: Option<&Identity>,
) -> Result<Option<Value>, String> {
    let at = format!("Listener `{name}`");
    let address = socket_address(&listener.address, &format!("{at}.address"))?;
    let mesh = listener_mesh(listener, &at, identity)?;
    match network_filter(listener, name)? {
        Some(Network::Tcp(_)) if mesh.is_some() => {
            Err(format!("{at}: mutual TLS is for HTTP listeners only"))
        }
        Some(Network::Tcp(tcp)) => {
            let Some(TcpClusterSpecifier::Cluster(cluster)) = tcp.cluster_specifier else {
                return Err(format!("{at}: tcp_proxy needs a cluster"));
            };
            referenced.push(cluster.clone());
            Ok(Some(
                json!({"name": name, "address": address, "protocol": "tcp", "cluster": cluster}),
            ))
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
            let routes = match manager.route_specifier {
                Some(RouteSpecifier::RouteConfig(config)) => config,
                Some(RouteSpecifier::Rds(rds)) => {
                    let Some(held) = resources
                        .get(ROUTE)
                        .and_then(|r| r.get(&rds.route_config_name))
                    else {
                        // Warming: the listener starts once its routes arrive.
                        return Ok(None);
                    };
                    decode(&held.resource, "RouteConfiguration", &rds.route_config_name)?
                }
                _ => {
                    return Err(format!(
                        "{at}: the http_connection_manager needs rds or route_config"
                    ))
                }
            };
            let virtual_hosts = translate_routes(&routes, referenced)?;
            let mut out = json!({"name": name, "address": address, "virtual_hosts": virtual_hosts});
            if let Some(mesh) = mesh {
                out["mesh"] = mesh;
            }
            Ok(Some(out))
        }
        None => Ok(None),
    }
}

fn translate_routes(
    config: &RouteConfiguration,
    referenced: &mut Vec<String>,
) -> Result<Vec<Value>, String> {
    let mut hosts = Vec::new();
    for (v, host) in config.virtual_hosts.iter().enumerate() {
        let mut routes = Vec::new();
        for (r, route) in host.routes.iter().enumerate() {
            let at = format!(
                "RouteConfiguration `{}`: virtual_hosts[{v}].routes[{r}]",
                config.name
            );
            routes.push(translate_route(route, &at, referenced)?);
        }
        hosts.push(json!({"name": host.name, "domains": host.domains, "routes": routes}));
    }
    Ok(hosts)
}

fn headers_to_add(options: &[HeaderValueOption]) -> Map<String, Value> {
    options
        .iter()
        .filter_map(|o| o.header.as_ref())
        .map(|h| (h.key.clone(), Value::String(h.value.clone())))
        .collect()
}

fn translate_route(route: &Route, at: &str, referenced: &mut Vec<String>) -> Result<Value, String> {
    let mut out = Map::new();
    if !route.name.is_empty() {
        out.insert("name".into(), route.name.clone().into());
    }
    let mut matcher = Map::new();
    if let Some(m) = &route.r#match {
        match &m.path_specifier {
            Some(PathSpecifier::Prefix(prefix)) if !prefix.is_empty() => {
                matcher.insert("prefix".into(), prefix.clone().into());
            }
            Some(PathSpecifier::Prefix(_)) | None => {}
            Some(PathSpecifier::Path(path)) => {
                matcher.insert("path".into(), path.clone().into());
            }
            Some(_) => {
                return Err(format!(
                    "{at}.match: only prefix and path matches are supported"
                ))
            }
        }
        let mut headers = Vec::new();
        for (h, header) in m.headers.iter().enumerate() {
            if header.invert_match {
                return Err(format!(
                    "{at}.match.headers[{h}].invert_match: is not supported"
                ));
            }
            match &header.header_match_specifier {
                Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                    match_pattern: Some(MatchPattern::Exact(value)),
                    ignore_case: false,
                })) => headers.push(json!({"name": header.name, "exact": value})),
                // The deprecated spelling of the same match, still sent by older servers.
                #[allow(deprecated)]
                Some(HeaderMatchSpecifier::ExactMatch(value)) => {
                    headers.push(json!({"name": header.name, "exact": value}))
                }
                Some(HeaderMatchSpecifier::PresentMatch(true)) | None => {
                    headers.push(json!({"name": header.name}))
                }
                Some(_) => {
                    return Err(format!(
                        "{at}.match.headers[{h}]: only exact and present matches are supported"
                    ))
                }
            }
        }
        if !headers.is_empty() {
            matcher.insert("headers".into(), headers.into());
        }
    }
    out.insert("match".into(), matcher.into());
    let Some(Action::Route(action)) = &route.action else {
        return Err(format!(
            "{at}: only route actions are supported (no redirect or direct_response)"
        ));
    };
    match &action.cluster_specifier {
        Some(ClusterSpecifier::Cluster(cluster)) => {
            referenced.push(cluster.clone());
            out.insert("cluster".into(), cluster.clone().into());
        }
        Some(ClusterSpecifier::WeightedClusters(weighted)) => {
            let clusters: Vec<Value> = weighted
                .clusters
                .iter()
                .map(|c| {
                    referenced.push(c.name.clone());
                    json!({"name": c.name, "weight": c.weight.as_ref().map_or(1, |w| w.value)})
                })
                .collect();
            out.insert("weighted_clusters".into(), clusters.into());
        }
        _ => return Err(format!("{at}.route: needs cluster or weighted_clusters")),
    }
    if !action.prefix_rewrite.is_empty() {
        out.insert(
            "prefix_rewrite".into(),
            action.prefix_rewrite.clone().into(),
        );
    }
    if let Some(timeout) = duration(&action.timeout) {
        // Envoy's 0 means no timeout; the proxy's longest is a day.
        let timeout = if timeout == "0ms" {
            "24h".to_owned()
        } else {
            timeout
        };
        out.insert("timeout".into(), timeout.into());
    }
    if let Some(retry) = &action.retry_policy {
        let mut on = Vec::new();
        for condition in retry
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            on.push(match condition {
                "connect-failure" => "connect_failure",
                "5xx" => "5xx",
                "gateway-error" => "gateway_error",
                "retriable-status-codes"
                | "unavailable"
                | "cancelled"
                | "deadline-exceeded"
                | "resource-exhausted" => "retriable_grpc",
                other => {
                    return Err(format!(
                        "{at}.route.retry_policy.retry_on: `{other}` is not supported"
                    ))
                }
            });
        }
        on.dedup();
        let mut policy = json!({"on": on});
        if let Some(n) = &retry.num_retries {
            policy["attempts"] = n.value.into();
        }
        if let Some(per_try) = duration(&retry.per_try_timeout) {
            policy["per_try_timeout"] = per_try.into();
        }
        out.insert("retries".into(), policy);
    }
    out.insert(
        "request_headers_add".into(),
        headers_to_add(&route.request_headers_to_add).into(),
    );
    out.insert(
        "request_headers_remove".into(),
        route.request_headers_to_remove.clone().into(),
    );
    out.insert(
        "response_headers_add".into(),
        headers_to_add(&route.response_headers_to_add).into(),
    );
    out.insert(
        "response_headers_remove".into(),
        route.response_headers_to_remove.clone().into(),
    );
    Ok(out.into())
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
) -> Result<Option<Value>, String> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
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
    Ok(Some(json!({
        "cert_file": identity.cert_file,
        "key_file": identity.key_file,
        "bundle_file": identity.bundle_file,
        "peer": peer,
    })))
}

fn translate_cluster(
    cluster: &Cluster,
    name: &str,
    resources: &Resources,
    identity: Option<&Identity>,
) -> Result<Value, String> {
    let at = format!("Cluster `{name}`");
    let lb = match LbPolicy::try_from(cluster.lb_policy) {
        Ok(LbPolicy::RoundRobin) => "round_robin",
        Ok(LbPolicy::LeastRequest) => "least_request",
        _ => {
            return Err(format!(
                "{at}.lb_policy: only ROUND_ROBIN and LEAST_REQUEST are supported"
            ))
        }
    };
    let assignment = if is_eds(cluster) {
        let eds = eds_name(cluster);
        match resources.get(ENDPOINT).and_then(|e| e.get(&eds)) {
            Some(held) => Some(decode::<ClusterLoadAssignment>(
                &held.resource,
                "ClusterLoadAssignment",
                &eds,
            )?),
            None => None,
        }
    } else if cluster.cluster_discovery_type
        == Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32))
    {
        cluster.load_assignment.clone()
    } else {
        return Err(format!(
            "{at}.type: only EDS and STATIC clusters are supported"
        ));
    };
    let mut out = json!({
        "name": name,
        "lb": lb,
        "endpoints": assignment.as_ref().map(endpoints).transpose()?.unwrap_or_default(),
    });
    if let Some(timeout) = duration(&cluster.connect_timeout) {
        out["connect_timeout"] = timeout.into();
    }
    if let Some(mesh) = cluster_mesh(cluster, &at, identity)? {
        out["mesh"] = mesh;
    }
    if let Some(options) = cluster
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
    {
        let options: HttpProtocolOptions = decode(options, "Cluster", name)?;
        if let Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) =
            options.upstream_protocol_options
        {
            if let Some(ProtocolConfig::Http2ProtocolOptions(_)) = explicit.protocol_config {
                out["protocol"] = "http2".into();
            }
        }
    }
    if let Some(thresholds) = cluster
        .circuit_breakers
        .as_ref()
        .and_then(|b| b.thresholds.first())
    {
        let mut breakers = Map::new();
        if let Some(v) = &thresholds.max_connections {
            breakers.insert("max_connections".into(), v.value.into());
        }
        if let Some(v) = &thresholds.max_requests {
            breakers.insert("max_requests".into(), v.value.into());
        }
        if let Some(v) = &thresholds.max_pending_requests {
            breakers.insert("max_pending_requests".into(), v.value.into());
        }
        out["circuit_breakers"] = breakers.into();
    }
    if let Some(outlier) = &cluster.outlier_detection {
        let mut detection = Map::new();
        if let Some(v) = &outlier.consecutive_5xx {
            detection.insert("consecutive_5xx".into(), v.value.into());
        }
        if let Some(v) = &outlier.consecutive_gateway_failure {
            detection.insert("consecutive_gateway_errors".into(), v.value.into());
        }
        if let Some(v) = duration(&outlier.base_ejection_time) {
            detection.insert("base_ejection_time".into(), v.into());
        }
        if let Some(v) = duration(&outlier.max_ejection_time) {
            detection.insert("max_ejection_time".into(), v.into());
        }
        if let Some(v) = &outlier.max_ejection_percent {
            detection.insert("max_ejection_percent".into(), v.value.into());
        }
        out["outlier_detection"] = detection.into();
    }
    if let Some(percent) = cluster
        .common_lb_config
        .as_ref()
        .and_then(|c| c.healthy_panic_threshold.as_ref())
    {
        out["panic_threshold"] = (percent.value.round().clamp(0.0, 100.0) as u32).into();
    }
    if let Some(check) = cluster.health_checks.first() {
        let mut health = Map::new();
        match &check.health_checker {
            Some(HealthChecker::HttpHealthCheck(http)) => {
                health.insert(
                    "http".into(),
                    json!({"path": if http.path.is_empty() { "/" } else { &http.path }}),
                );
            }
            Some(HealthChecker::TcpHealthCheck(_)) => {
                health.insert("tcp".into(), json!({}));
            }
            _ => {
                return Err(format!(
                    "{at}.health_checks[0]: only HTTP and TCP checks are supported"
                ))
            }
        }
        if let Some(v) = duration(&check.interval) {
            health.insert("interval".into(), v.into());
        }
        if let Some(v) = duration(&check.timeout) {
            health.insert("timeout".into(), v.into());
        }
        if let Some(v) = &check.healthy_threshold {
            health.insert("healthy_threshold".into(), v.value.into());
        }
        if let Some(v) = &check.unhealthy_threshold {
            health.insert("unhealthy_threshold".into(), v.value.into());
        }
        out["health_check"] = health.into();
    }
    Ok(out)
}

/// The usable endpoints of an assignment: healthy or of unknown health (or degraded).
fn endpoints(assignment: &ClusterLoadAssignment) -> Result<Vec<Value>, String> {
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
            let at = format!(
                "ClusterLoadAssignment `{}`: endpoints[{l}].lb_endpoints[{e}]",
                assignment.cluster_name
            );
            let Some(HostIdentifier::Endpoint(host)) = &endpoint.host_identifier else {
                return Err(format!("{at}: needs an endpoint"));
            };
            let address = socket_address(&host.address, &format!("{at}.endpoint.address"))?;
            let weight = endpoint
                .load_balancing_weight
                .as_ref()
                .map_or(1, |w| w.value);
            out.push(json!({"address": address, "weight": weight, "priority": locality.priority}));
        }
    }
    Ok(out)
}
