//! xDS resources of a gateway in front of `n` services, for tests, fuzzing and benchmarks:
//! Listener `gateway` (routes by RDS `gateway`), whose RouteConfiguration has one virtual host
//! per service (`s{i}.example.com`) routing to EDS Cluster `s{i}`, whose ClusterLoadAssignment
//! `s{i}` lists endpoints on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use meridian_xds::render::{gateway_listener, pack, GATEWAY};
use meridian_xds::{Held, Resources, CLUSTER, ENDPOINT, LISTENER, ROUTE};

/// The name of service `i`'s Cluster and ClusterLoadAssignment.
pub fn service(i: usize) -> String {
    format!("s{i}")
}

/// Listener `gateway` on `address`.
pub fn listener(address: SocketAddr) -> Any {
    gateway_listener(GATEWAY, address, false)
}

/// RouteConfiguration `gateway`: a virtual host per service.
pub fn routes(n: usize) -> Any {
    let virtual_hosts = (0..n)
        .map(|i| VirtualHost {
            name: service(i),
            domains: vec![format!("{}.example.com", service(i))],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".to_owned())),
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(service(i))),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    pack(&RouteConfiguration {
        name: GATEWAY.to_owned(),
        virtual_hosts,
        ..Default::default()
    })
}

/// EDS Cluster `s{i}`, round robin.
pub fn cluster(i: usize) -> Any {
    pack(&Cluster {
        name: service(i),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: None,
            service_name: service(i),
        }),
        lb_policy: LbPolicy::RoundRobin as i32,
        ..Default::default()
    })
}

/// ClusterLoadAssignment `s{i}`: an endpoint on 127.0.0.1 per port (weight 1).
pub fn assignment(i: usize, ports: &[u16]) -> Any {
    let lb_endpoints = ports
        .iter()
        .map(|port| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(AddressKind::SocketAddress(SocketAddress {
                        address: "127.0.0.1".to_owned(),
                        port_specifier: Some(PortSpecifier::PortValue(u32::from(*port))),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            ..Default::default()
        })
        .collect();
    pack(&ClusterLoadAssignment {
        cluster_name: service(i),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// Every resource of the gateway with `n` services, each with one endpoint (port 10000 + i %
/// 50000), as a client holds them.
pub fn resources(n: usize, address: SocketAddr) -> Resources {
    let held = |any: Any| Held {
        version: "1".to_owned(),
        resource: Arc::new(any),
    };
    let mut resources = Resources::new();
    resources
        .entry(LISTENER.to_owned())
        .or_default()
        .insert(GATEWAY.to_owned(), held(listener(address)));
    resources
        .entry(ROUTE.to_owned())
        .or_default()
        .insert(GATEWAY.to_owned(), held(routes(n)));
    let clusters = resources.entry(CLUSTER.to_owned()).or_default();
    for i in 0..n {
        clusters.insert(service(i), held(cluster(i)));
    }
    let assignments = resources.entry(ENDPOINT.to_owned()).or_default();
    for i in 0..n {
        let port = 10_000 + (i % 50_000) as u16;
        assignments.insert(service(i), held(assignment(i, &[port])));
    }
    resources
}
