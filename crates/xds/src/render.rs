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
//! Rendering is a pure function of one service's regional deployment and endpoints, so a change
//! re-renders only the service it touches.

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus, Locality,
    SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use meridian_model::{Endpoint, EndpointHealth, RegionalDeployment};

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

/// The name a service's port has for clients of its org: `<service>.<app>.internal:<port>`.
pub fn internal_name(deployment: &RegionalDeployment, port: u32) -> String {
    format!("{}.{}.internal:{port}", deployment.service, deployment.app)
}

/// Renders the resources of one service in its region, with `endpoints` (those of this service
/// in this region).
pub fn service(deployment: &RegionalDeployment, endpoints: &[&Endpoint]) -> Rendered {
    let mut rendered = Rendered::default();
    for port in &deployment.spec.ports {
        let name = internal_name(deployment, port.port);
        let cache_name = format!("{}{name}", crate::tenant_namespace(&deployment.org));
        rendered
            .resources
            .push((LISTENER, cache_name.clone(), pack(&listener(&name))));
        rendered
            .resources
            .push((ROUTE, cache_name.clone(), pack(&route(&name, deployment))));
        rendered
            .resources
            .push((CLUSTER, cache_name.clone(), pack(&cluster(&name))));
        let assignment =
            load_assignment(&name, &deployment.region, &port.name, port.port, endpoints);
        rendered
            .resources
            .push((ENDPOINT, cache_name, pack(&assignment)));
    }
    rendered
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn listener(name: &str) -> Listener {
    let manager = HttpConnectionManager {
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
    };
    Listener {
        name: name.to_owned(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack(&manager)),
        }),
        ..Default::default()
    }
}

fn route(name: &str, deployment: &RegionalDeployment) -> RouteConfiguration {
    let host = format!("{}.{}.internal", deployment.service, deployment.app);
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: name.to_owned(),
            domains: vec![name.to_owned(), host],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix(String::new())),
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(name.to_owned())),
                    ..Default::default()
                })),
                ..Default::default()
            }],
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
                    address: Some(Address {
                        address: Some(AddressKind::SocketAddress(SocketAddress {
                            address: endpoint.address.clone(),
                            port_specifier: Some(PortSpecifier::PortValue(port)),
                            ..Default::default()
                        })),
                    }),
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
