//! The node proxy's configuration, built by the agent from what the control plane sends over
//! xDS (its instances' assignments, and every service of the region with its spec, mesh policy
//! and instances). In host mode each instance has an address of its own, and the node proxy
//! listens there too:
//!
//! - `<address>:15443+i` (the mesh port of the service's i-th port): mutual TLS with the
//!   instance's workload certificate; the caller is authorized by the service's policy (its org,
//!   and `mesh.allow` for other orgs) and its identity passed in `x-meridian-peer`; then to the
//!   instance's i-th port (a `tcp` port: the connection is relayed as it is, a caller refused is
//!   closed). The proxy counts these requests per instance (answered, failed,
//!   latency: `meridian_proxy_instance_*` with labels service, version, instance), and the
//!   agent reports the figures for the region's metric gates.
//! - `<address>:15001`: the instance's `HTTP_PROXY`. A request for
//!   `http://<service>.<app>.internal:<port>/` (a service of the instance's org), or
//!   `http://<service>.<app>.<org>.internal:<port>/` (a service of another org whose `mesh.allow`
//!   names the instance's service), goes over mutual TLS, as the instance's service, to a healthy
//!   instance of that service, whose certificate must name it: in this region while it has
//!   healthy ones, else in the nearest region that has (the proxy's priority rule). A name with
//!   a region in front (`<region>.<service>.<app>.internal`) reaches that region's instances
//!   only. Each service's virtual IP (given by the region) is routed like its name. Other
//!   names are not routed. The request goes to the target's first port that is not `tcp`.
//! - `<address>:<relay>` for each [`HostRelay`] the instance was given at its start (its
//!   environment names them, see [`crate::host_relays`]): a `tcp` port of a service it may
//!   reach, relayed over mutual TLS to that port's mesh port on a healthy instance, as below.
//!
//! An instance in a network namespace has its own listeners on its node side, which take
//! connections from the instance only: `<address>:15001` as above, and `<address>:<port>` for
//! each HTTP port of the services it may reach, where a name or virtual IP is routed to that
//! port of the service. The node's DNS answers the instance's names with the service's virtual
//! IP (pinned names with the node side), and the namespace's rules send virtual IPs to the node
//! side, so that `http://api.shop.internal:9090/` and `http://<its virtual IP>:9090/` both work
//! unmodified. A TCP connection says no name, only an address and a port: each `tcp` port of a
//! service the instance sees by its virtual IP gets a relay port of its own on the node side
//! ([`NodeConfig::relays`], from [`RELAY_PORT_BASE`] up), the namespace's rules send that
//! virtual IP and port there, and the node proxy relays it over mutual TLS to that port's mesh
//! port on a healthy instance; so two services with a `tcp` port of the same number are both
//! reached. A (service, port) keeps its relay port across configurations, and a port that an
//! entry of the namespace's rules may still point to is neither another's relay nor an HTTP
//! listener (see [`crate::netns_relays`]): the agent applies this configuration before it
//! updates the rules, and no connection reaches a relay of another service.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use meridian_model::{Protocol, ServiceSpec};

use crate::host_relays::HostRelay;
use crate::netns_relays::{NamespaceRelays, TcpRelay};
use serde_json::{json, Value};

/// Identifies a service: org, app and name.
pub type ServiceKey = (String, String, String);

pub use meridian_xds::meridian::{mesh_port, MESH_PORT_BASE};

/// The port of the outbound listener on each instance's address.
pub const OUTBOUND_PORT: u16 = 15001;

/// The first node-side port of the TCP relays ([`NodeConfig::relays`]).
pub const RELAY_PORT_BASE: u16 = 40000;

/// Most connections open at once on each `tcp` listener of the node proxy: an instance's
/// connections to one TCP service, and a TCP port's callers.
pub const TCP_MAX_CONNECTIONS: u32 = 1024;

/// An instance this node runs.
#[derive(Debug, Clone)]
pub struct LocalInstance {
    /// Its id.
    pub instance: String,
    /// Its service.
    pub service: ServiceKey,
    /// The deployment version it runs.
    pub version: u64,
    /// Its spec.
    pub spec: ServiceSpec,
    /// The node side's address: the node proxy's listeners for the instance are there.
    pub address: Ipv4Addr,
    /// Where the instance listens.
    pub listen: Ipv4Addr,
    /// Whether it takes connections from other proxies: not while it drains (its inbound
    /// listeners are removed, and drained: see `crate::drain`; it still reaches others).
    pub serving: bool,
    /// In host mode, the TCP relays its environment names, fixed at its start (see
    /// [`crate::host_relays`]); none in a namespace.
    pub relays: std::sync::Arc<[HostRelay]>,
}

impl LocalInstance {
    /// The instance's name on the node, unique across orgs and apps: `<org>/<app>/<instance>`
    /// (an instance id, `<service>-<n>`, is unique only within its service). Every listener and
    /// cluster the node proxy has for the instance is named from it, so that two orgs' services
    /// of the same name never give two listeners one name (the proxy would refuse the whole
    /// configuration, for every tenant of the node).
    pub fn name(&self) -> String {
        instance_name(&self.service, &self.instance)
    }
}

/// The name on the node of instance `instance` of `service`: see [`LocalInstance::name`].
pub fn instance_name(service: &ServiceKey, instance: &str) -> String {
    let (org, app, _) = service;
    format!("{org}/{app}/{instance}")
}

/// A service as the control plane sends it: deployed in the region, or reachable in others.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshService {
    /// Its spec.
    pub spec: ServiceSpec,
    /// Its instances, here and in other regions.
    pub instances: Vec<MeshInstance>,
    /// Its virtual IP in the region, if it has one.
    pub vip: Option<Ipv4Addr>,
    /// While a canary splits requests: the percent of them (1–99) its new set gets.
    pub canary_weight: Option<u32>,
}

/// An instance of a [`MeshService`].
#[derive(Debug, Clone, PartialEq)]
pub struct MeshInstance {
    /// Its address (its node proxy's mesh listeners are there).
    pub address: String,
    /// Whether it is healthy.
    pub healthy: bool,
    /// Its region.
    pub region: String,
    /// 0 in this region, then 1, 2, … for other regions by distance.
    pub priority: u32,
    /// Whether it belongs to a splitting canary's new set.
    pub canary: bool,
}

/// Which of a service's instances a cluster reaches.
#[derive(Clone, Copy, PartialEq)]
enum Set {
    /// All of them.
    All,
    /// While a canary splits requests, those of the previous version.
    Stable,
    /// While a canary splits requests, those of its new set.
    Canary,
}

impl Set {
    /// Whether `instance` belongs to the set.
    fn has(self, instance: &MeshInstance) -> bool {
        match self {
            Set::All => true,
            Set::Stable => !instance.canary,
            Set::Canary => instance.canary,
        }
    }

    /// What the names of the set's clusters end with.
    fn suffix(self) -> &'static str {
        match self {
            Set::All => "",
            Set::Stable => "/stable",
            Set::Canary => "/canary",
        }
    }
}

/// The best priority level the proxy's config accepts is 0, the worst this.
const WORST_PRIORITY: u32 = 9;

/// A name an instance may reach a service by.
pub struct Reach<'a> {
    /// The name.
    pub domain: String,
    /// The service.
    pub target: &'a ServiceKey,
    /// What the control plane sent about it.
    pub service: &'a MeshService,
    /// For a region-pinned name, the region.
    pub region: Option<&'a str>,
}

/// A workload certificate's files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The chain.
    pub cert: PathBuf,
    /// The key.
    pub key: PathBuf,
    /// The trust bundle.
    pub bundle: PathBuf,
}

/// What [`config`] makes.
#[derive(Debug)]
pub struct NodeConfig {
    /// The node proxy's configuration (the proxy's config format, docs/proxy-config.md).
    pub json: Value,
    /// The TCP relays it listens on for each instance in a namespace, by the instance's node
    /// side (the namespace's rules must send them there).
    pub relays: BTreeMap<Ipv4Addr, Vec<TcpRelay>>,
}

/// The node proxy's configuration for the `local` instances that have certificates in
/// `certs`, reaching the `services` of the region. The TCP relays of instances in a namespace
/// are numbered by their [`NamespaceRelays`] in `namespaces` (by node side), which the caller
/// keeps across configurations and tells what each namespace's map holds; those of instances
/// no longer in `local` are dropped. A node side's port that a map entry may still point to
/// is not listened on for HTTP until the map no longer does (see [`crate::netns_relays`]).
pub fn config(
    local: &[LocalInstance],
    services: &BTreeMap<ServiceKey, MeshService>,
    certs: &BTreeMap<ServiceKey, CertFiles>,
    trust_domain: &str,
    namespaces: &mut BTreeMap<Ipv4Addr, NamespaceRelays>,
) -> NodeConfig {
    let running: BTreeMap<Ipv4Addr, String> = local.iter().map(|l| (l.address, l.name())).collect();
    namespaces
        .retain(|address, relays| running.get(address).is_some_and(|name| relays.is_of(name)));
    let mut listeners = Vec::new();
    let mut all_relays = BTreeMap::new();
    let mut clusters = BTreeMap::new();
    for instance in local {
        let Some(files) = certs.get(&instance.service) else {
            continue;
        };
        let (org, _, _) = &instance.service;
        let name = instance.name();
        let served = json!({
            "name": name, "id": instance.instance, "version": instance.version,
            "service": format!("{org}/{}/{}", instance.service.1, instance.service.2),
            // Its requests wait in the node proxy beyond the hard limit.
            "max_in_flight": instance.spec.scale.concurrency.and_then(|c| c.hard),
        });
        for (index, port) in instance.spec.ports.iter().enumerate() {
            let local_cluster = format!("local/{name}/{}", port.name);
            clusters.insert(
                local_cluster.clone(),
                json!({
                    "name": local_cluster,
                    // gRPC and HTTP/2 ports are spoken to in HTTP/2 (prior knowledge).
                    "protocol": if port.protocol.is_http2() { "http2" } else { "http1" },
                    "endpoints": [{"address": format!("{}:{}", instance.listen, port.port)}],
                }),
            );
            if !instance.serving {
                continue;
            }
            let inbound = format!("in/{name}/{}", port.name);
            let address = format!("{}:{}", instance.address, mesh_port(index));
            let mesh = json!({
                "cert_file": files.cert, "key_file": files.key, "bundle_file": files.bundle,
                "org": org, "allow": instance.spec.mesh.allow,
            });
            if port.protocol == Protocol::Tcp {
                // The mesh port names the instance's port: an admitted caller's connection is
                // relayed to it as it is.
                // Its connections count for the instance (and wait while it wakes, when it
                // sleeps).
                listeners.push(json!({
                    "name": inbound, "address": address, "protocol": "tcp",
                    "mesh": mesh, "cluster": local_cluster,
                    "max_connections": TCP_MAX_CONNECTIONS,
                    "instance": served,
                }));
                continue;
            }
            listeners.push(json!({
                "name": inbound,
                "address": address,
                // Callers are the platform's proxies (mutual TLS): their x-forwarded-* hold.
                "trust_forwarded": "mesh",
                "mesh": mesh,
                "virtual_hosts": [{"name": "local", "domains": ["*"], "routes": [{"cluster": local_cluster}]}],
                // Its requests are counted for the instance (the agent reports the figures).
                "instance": served,
            }));
        }
        let reaches: Vec<Reach> = visible(&instance.service, services).collect();
        let mut outbound = Outbound {
            instance,
            files,
            trust_domain,
            clusters: &mut clusters,
        };
        // The `HTTP_PROXY` listener routes by name to each service's first HTTP port.
        let virtual_hosts: Vec<Value> = reaches
            .iter()
            .filter_map(|r| {
                let ports = &r.service.spec.ports;
                let first = ports.iter().position(|p| p.protocol != Protocol::Tcp)?;
                Some(outbound.route(r, first))
            })
            .collect();
        let in_namespace = instance.address != instance.listen;
        // In a namespace, only the instance itself may call through its listeners.
        let sources: Vec<String> = if in_namespace {
            vec![instance.listen.to_string()]
        } else {
            Vec::new()
        };
        listeners.push(json!({
            "name": format!("out/{name}"),
            "address": format!("{}:{OUTBOUND_PORT}", instance.address),
            // The instance's own x-forwarded-* are not believed: the chain starts at it.
            "trust_forwarded": "none",
            "sources": sources,
            "virtual_hosts": virtual_hosts,
        }));
        if !in_namespace {
            for (relay, reach, index) in host_relays_of(instance, &reaches) {
                listeners.push(json!({
                    "name": format!("out/{name}/to/{}/{}/{}:{}", relay.target.0, relay.target.1, relay.target.2, relay.port),
                    "address": format!("{}:{}", instance.address, relay.relay),
                    "protocol": "tcp",
                    "cluster": outbound.cluster(reach, index, Set::All),
                    "max_connections": TCP_MAX_CONNECTIONS,
                }));
            }
            continue;
        }
        // In its own namespace the instance reaches names and virtual IPs at its node side
        // (DNS answers it; the namespace's rules send virtual IPs there, port unchanged): the
        // node proxy listens there on each HTTP port of the services it sees (but one the
        // namespace's map may still send a relay's connections to), and routes a name on a port
        // to that port of the service; and on a relay port per `tcp` port.
        let namespace = NamespaceRelays::of(namespaces, instance);
        let mut by_port: BTreeMap<u16, Vec<Value>> = BTreeMap::new();
        for reach in &reaches {
            for (index, port) in reach.service.spec.ports.iter().enumerate() {
                let Ok(number) = u16::try_from(port.port) else {
                    continue;
                };
                let free = number != OUTBOUND_PORT && !namespace.holds(number);
                if free && port.protocol != Protocol::Tcp {
                    let route = outbound.route(reach, index);
                    by_port.entry(number).or_default().push(route);
                }
            }
        }
        for (port, virtual_hosts) in by_port {
            listeners.push(json!({
                "name": format!("out/{name}/{port}"),
                "address": format!("{}:{port}", instance.address),
                "trust_forwarded": "none",
                "sources": sources,
                "virtual_hosts": virtual_hosts,
            }));
        }
        let mut relays = Vec::new();
        for (relay, reach, index) in namespace.assign(instance, &reaches) {
            listeners.push(json!({
                "name": format!("out/{name}/{}:{}", relay.vip, relay.port),
                "address": format!("{}:{}", instance.address, relay.relay),
                "protocol": "tcp",
                "sources": sources,
                "cluster": outbound.cluster(reach, index, Set::All),
                "max_connections": TCP_MAX_CONNECTIONS,
            }));
            relays.push(relay);
        }
        all_relays.insert(instance.address, relays);
    }
    let clusters: Vec<Value> = clusters.into_values().collect();
    NodeConfig {
        json: json!({"listeners": listeners, "clusters": clusters}),
        relays: all_relays,
    }
}

/// Builds one local instance's outbound routes, and the clusters they need.
struct Outbound<'a> {
    instance: &'a LocalInstance,
    files: &'a CertFiles,
    trust_domain: &'a str,
    clusters: &'a mut BTreeMap<String, Value>,
}

impl Outbound<'_> {
    /// The virtual host for `reach` on the target's `index`-th port (its name, and its virtual
    /// IP for a name not pinned to a region); adds its cluster: over mutual TLS, as the
    /// instance's service, to the target's healthy instances, whose certificates must name it.
    /// While the target's canary splits requests (and its new set has a healthy instance where
    /// the name reaches), they are split the same way between the previous version's
    /// instances and the new set's, as the gateways split them.
    fn route(&mut self, reach: &Reach, index: usize) -> Value {
        let split = reach.service.canary_weight.filter(|_| {
            reach
                .service
                .instances
                .iter()
                .any(|i| i.canary && i.healthy && reach.region.is_none_or(|r| r == i.region))
        });
        let Reach {
            domain,
            service,
            region,
            ..
        } = reach;
        let mut domains = vec![domain.clone()];
        if let (None, Some(vip)) = (region, service.vip) {
            domains.push(vip.to_string());
        }
        // An instance that just went away is retried elsewhere (requests whose body the proxy
        // holds, within its retry budget): any method when it refused the connection,
        // idempotent ones when it failed after (the proxy's default).
        let retries = json!({"attempts": 2, "on": ["connect_failure", "gateway_error"]});
        let route = match split {
            Some(weight) => json!({
                "weighted_clusters": [
                    {"name": self.cluster(reach, index, Set::Stable), "weight": 100 - weight},
                    {"name": self.cluster(reach, index, Set::Canary), "weight": weight},
                ],
                "retries": retries,
            }),
            None => json!({"cluster": self.cluster(reach, index, Set::All), "retries": retries}),
        };
        json!({"name": domain, "domains": domains, "routes": [route]})
    }

    /// The name of the cluster of `reach`'s `index`-th port, added if new: over mutual TLS, as
    /// the instance's service, to the target's healthy instances of `set` (those of the pinned
    /// region only, for a pinned name), whose certificates must name it.
    fn cluster(&mut self, reach: &Reach, index: usize, set: Set) -> String {
        let Reach {
            target,
            service,
            region,
            ..
        } = reach;
        let port_name = service
            .spec
            .ports
            .get(index)
            .map_or("", |port| port.name.as_str());
        let (org, app, name) = &self.instance.service;
        let cluster = format!(
            "via/{org}/{app}/{name}/to/{}/{}/{}:{port_name}{}{}",
            target.0,
            target.1,
            target.2,
            region.map(|r| format!("/in/{r}")).unwrap_or_default(),
            set.suffix(),
        );
        if !self.clusters.contains_key(&cluster) {
            let peer = format!(
                "spiffe://{}/org/{}/app/{}/service/{}",
                self.trust_domain, target.0, target.1, target.2
            );
            let endpoints: Vec<Value> = service
                .instances
                .iter()
                .filter(|i| i.healthy && set.has(i) && region.is_none_or(|r| r == i.region))
                .map(|i| {
                    json!({
                        "address": format!("{}:{}", i.address, mesh_port(index)),
                        "priority": i.priority.min(WORST_PRIORITY),
                    })
                })
                .collect();
            let files = self.files;
            let mut config = json!({
                "name": cluster,
                "mesh": {
                    "cert_file": files.cert, "key_file": files.key, "bundle_file": files.bundle,
                    "peer": peer,
                },
                "endpoints": endpoints,
            });
            // The target's instances' limits: picks prefer instances below them.
            if let Some(limits) = service.spec.scale.concurrency {
                config["endpoint_limits"] = json!({"soft": limits.soft, "hard": limits.hard});
            }
            self.clusters.insert(cluster.clone(), config);
        }
        cluster
    }
}

/// The relays of a host-mode `instance` that have a service to reach, each with its reach and
/// port index: a relay's service may be gone, no longer reachable by the instance (its
/// `mesh.allow` changed), or its port no longer `tcp` (then the relay port is not listened on
/// until it is again).
fn host_relays_of<'r, 'a>(
    instance: &'r LocalInstance,
    reaches: &'r [Reach<'a>],
) -> impl Iterator<Item = (&'r HostRelay, &'r Reach<'a>, usize)> {
    instance.relays.iter().filter_map(|relay| {
        let reach = reaches
            .iter()
            .find(|r| r.region.is_none() && *r.target == relay.target)?;
        let index = reach
            .service
            .spec
            .ports
            .iter()
            .position(|p| p.name == relay.port && p.protocol == Protocol::Tcp)?;
        Some((relay, reach, index))
    })
}

/// The services an instance of `caller` may reach, with the names it reaches each by: services of
/// its org as `<service>.<app>.internal`, other orgs' services whose `mesh.allow` names it as
/// `<service>.<app>.<org>.internal`; and each of those with a region in front for each region
/// where the service has instances.
pub fn visible<'a>(
    caller: &'a ServiceKey,
    services: &'a BTreeMap<ServiceKey, MeshService>,
) -> impl Iterator<Item = Reach<'a>> + 'a {
    services.iter().flat_map(move |(target, service)| {
        let domain = if target.0 == caller.0 {
            format!("{}.{}.internal", target.2, target.1)
        } else if allows(&service.spec.mesh.allow, caller) {
            format!("{}.{}.{}.internal", target.2, target.1, target.0)
        } else {
            return Vec::new();
        };
        let mut regions: Vec<&str> = service
            .instances
            .iter()
            .map(|i| i.region.as_str())
            .collect();
        regions.sort_unstable();
        regions.dedup();
        let pinned: Vec<Reach> = regions
            .into_iter()
            .map(|region| Reach {
                domain: format!("{region}.{domain}"),
                target,
                service,
                region: Some(region),
            })
            .collect();
        let mut names = vec![Reach {
            domain,
            target,
            service,
            region: None,
        }];
        names.extend(pinned);
        names
    })
}

/// The DNS table of each local instance that runs in a namespace (by the instance's address):
/// the names it may reach, answered with the service's virtual IP (a region-pinned name, or a
/// service without one, with the node side's address), which its node proxy serves on their
/// ports.
pub fn dns_tables(
    local: &[LocalInstance],
    services: &BTreeMap<ServiceKey, MeshService>,
) -> std::collections::HashMap<std::net::IpAddr, std::sync::Arc<meridian_dns::Table>> {
    local
        .iter()
        .filter(|instance| instance.address != instance.listen)
        .map(|instance| {
            let table = visible(&instance.service, services)
                .map(
                    |Reach {
                         domain,
                         service,
                         region,
                         ..
                     }| {
                        let ports = service
                            .spec
                            .ports
                            .iter()
                            .filter_map(|p| Some((p.name.clone(), u16::try_from(p.port).ok()?)))
                            .collect();
                        let address = match (region, service.vip) {
                            (None, Some(vip)) => vip,
                            _ => instance.address,
                        };
                        let entry = meridian_dns::Entry { address, ports };
                        (domain, entry)
                    },
                )
                .collect();
            (
                std::net::IpAddr::V4(instance.listen),
                std::sync::Arc::new(table),
            )
        })
        .collect()
}

/// Whether an `allow` pattern (`org/app/service`, `*` for any segment) names `caller`.
fn allows(patterns: &[String], caller: &ServiceKey) -> bool {
    patterns.iter().any(|pattern| {
        let segments: Vec<&str> = pattern.split('/').collect();
        let wanted = [caller.0.as_str(), caller.1.as_str(), caller.2.as_str()];
        segments.len() == 3
            && segments
                .iter()
                .zip(wanted)
                .all(|(pattern, name)| *pattern == "*" || *pattern == name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(org: &str, app: &str, service: &str) -> ServiceKey {
        (org.to_owned(), app.to_owned(), service.to_owned())
    }

    #[test]
    fn two_orgs_services_of_one_name_on_one_node_get_a_configuration_the_proxy_takes() {
        let config = two_orgs_config(true);
        let names = listener_names(&config);
        assert_eq!(
            names,
            [
                "in/acme/shop/web-0/http",
                "out/acme/shop/web-0",
                "in/other/shop/web-0/http",
                "out/other/shop/web-0"
            ]
        );
    }

    #[test]
    fn a_draining_instance_takes_no_connections_and_still_reaches_others() {
        let config = two_orgs_config(false);
        assert_eq!(
            listener_names(&config),
            ["out/acme/shop/web-0", "out/other/shop/web-0"]
        );
        // Its local cluster stays, for the connections its removed listeners still serve.
        let clusters = config["clusters"].as_array().unwrap();
        assert!(clusters
            .iter()
            .any(|c| c["name"] == "local/acme/shop/web-0/http"));
    }

    fn listener_names(config: &Value) -> Vec<&str> {
        config["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap())
            .collect()
    }

    /// The configuration of `web-0` of two orgs on one node, each `serving` or draining.
    fn two_orgs_config(serving: bool) -> Value {
        let spec: ServiceSpec = serde_json::from_value(serde_json::json!({
            "scale": {"min": 1, "max": 1},
            "runtime": {"process": {"command": "x"}},
            "ports": [{"name": "http", "port": 8080}],
            "routes": [], "domains": [], "health_checks": [], "mesh": {"allow": []},
        }))
        .unwrap();
        let orgs = ["acme", "other"];
        let local: Vec<LocalInstance> = orgs
            .iter()
            .zip([2, 3])
            .map(|(org, last)| LocalInstance {
                instance: "web-0".to_owned(),
                service: key(org, "shop", "web"),
                version: 1,
                spec: spec.clone(),
                address: Ipv4Addr::new(127, 0, 0, last),
                listen: Ipv4Addr::new(127, 0, 0, last),
                serving,
                relays: Default::default(),
            })
            .collect();
        let services = orgs
            .iter()
            .map(|org| {
                let service = MeshService {
                    spec: spec.clone(),
                    instances: Vec::new(),
                    vip: None,
                    canary_weight: None,
                };
                (key(org, "shop", "web"), service)
            })
            .collect();
        let files = CertFiles {
            cert: "cert.pem".into(),
            key: "key.pem".into(),
            bundle: "bundle.pem".into(),
        };
        let certs = orgs
            .iter()
            .map(|org| (key(org, "shop", "web"), files.clone()))
            .collect();
        let config = config(
            &local,
            &services,
            &certs,
            "meridian.local",
            &mut BTreeMap::new(),
        )
        .json;
        let parsed = meridian_proxy::parse_config(&config.to_string());
        assert!(parsed.is_ok(), "{parsed:?}");
        config
    }

    /// A spec with `ports` (name, number, protocol).
    fn spec_with(ports: &[(&str, u16, &str)]) -> ServiceSpec {
        let ports: Vec<Value> = ports
            .iter()
            .map(|(name, port, protocol)| json!({"name": name, "port": port, "protocol": protocol}))
            .collect();
        serde_json::from_value(json!({
            "scale": {"min": 1, "max": 1},
            "runtime": {"process": {"command": "x"}},
            "ports": ports,
            "routes": [], "domains": [], "health_checks": [], "mesh": {"allow": []},
        }))
        .unwrap()
    }

    /// A healthy instance in fra at `address`, of a splitting canary's new set if `canary`.
    fn fra_instance(address: &str, canary: bool) -> MeshInstance {
        MeshInstance {
            address: address.to_owned(),
            healthy: true,
            region: "fra".to_owned(),
            priority: 0,
            canary,
        }
    }

    /// The configuration of web-0 of acme/shop, in a namespace, seeing acme/shop's `services`
    /// (each with a healthy instance at 127.0.0.9; virtual IPs 100.112.0.7, .8, … in order).
    fn web_seeing(services: &[(&str, ServiceSpec)]) -> Value {
        web_seeing_instances(services, &[fra_instance("127.0.0.9", false)], None).json
    }

    /// [`web_seeing`], each service with `instances` and `canary_weight`.
    fn web_seeing_instances(
        services: &[(&str, ServiceSpec)],
        instances: &[MeshInstance],
        canary_weight: Option<u32>,
    ) -> NodeConfig {
        let local = web_0(
            spec_with(&[("db", 5432, "tcp"), ("http", 8080, "http")]),
            (Ipv4Addr::new(100, 64, 0, 2), Ipv4Addr::new(100, 64, 0, 3)),
            &[],
        );
        let services = services
            .iter()
            .zip(7..)
            .map(|((name, spec), last)| {
                let service = MeshService {
                    spec: spec.clone(),
                    instances: instances.to_vec(),
                    vip: Some(Ipv4Addr::new(100, 112, 0, last)),
                    canary_weight,
                };
                (key("acme", "shop", name), service)
            })
            .collect();
        config_of(local, &services)
    }

    /// web-0 of acme/shop with `spec`, its node side and its own address `(address, listen)`,
    /// and `relays`.
    fn web_0(
        spec: ServiceSpec,
        (address, listen): (Ipv4Addr, Ipv4Addr),
        relays: &[HostRelay],
    ) -> LocalInstance {
        LocalInstance {
            instance: "web-0".to_owned(),
            service: key("acme", "shop", "web"),
            version: 1,
            spec,
            address,
            listen,
            serving: true,
            relays: relays.into(),
        }
    }

    /// The configuration of `local`, with its certificate, seeing `services`; the proxy takes
    /// it.
    fn config_of(local: LocalInstance, services: &BTreeMap<ServiceKey, MeshService>) -> NodeConfig {
        config_kept(local, services, &mut BTreeMap::new())
    }

    /// [`config_of`], with the relays of instances in a namespace kept in `namespaces`.
    fn config_kept(
        local: LocalInstance,
        services: &BTreeMap<ServiceKey, MeshService>,
        namespaces: &mut BTreeMap<Ipv4Addr, NamespaceRelays>,
    ) -> NodeConfig {
        let files = CertFiles {
            cert: "cert.pem".into(),
            key: "key.pem".into(),
            bundle: "bundle.pem".into(),
        };
        let certs = [(local.service.clone(), files)].into_iter().collect();
        let made = config(&[local], services, &certs, "meridian.local", namespaces);
        let parsed = meridian_proxy::parse_config(&made.json.to_string());
        assert!(parsed.is_ok(), "{parsed:?}");
        made
    }

    /// The addresses of the endpoints of cluster `name`.
    fn endpoints_of(config: &Value, name: &str) -> Vec<String> {
        let cluster = config["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no cluster {name}"));
        cluster["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["address"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_splitting_canary_splits_the_callers_requests_by_its_weight_and_not_their_connections() {
        let api = spec_with(&[("http", 8080, "http"), ("db", 5433, "tcp")]);
        let instances = [
            fra_instance("127.0.0.9", false),
            fra_instance("127.0.0.10", true),
        ];
        let config = web_seeing_instances(&[("api", api.clone())], &instances, Some(20)).json;
        let http = listener(&config, "out/acme/shop/web-0/8080").unwrap();
        let route = &http["virtual_hosts"][0]["routes"][0];
        assert!(route["cluster"].is_null(), "{route}");
        let split: Vec<(String, u64)> = route["weighted_clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (
                    w["name"].as_str().unwrap().to_owned(),
                    w["weight"].as_u64().unwrap(),
                )
            })
            .collect();
        let base = "via/acme/shop/web/to/acme/shop/api:http";
        assert_eq!(
            split,
            [
                (format!("{base}/stable"), 80),
                (format!("{base}/canary"), 20)
            ]
        );
        let mesh = |port: u16| vec![format!("127.0.0.9:{port}")];
        assert_eq!(endpoints_of(&config, &split[0].0), mesh(mesh_port(0)));
        let canary = vec![format!("127.0.0.10:{}", mesh_port(0))];
        assert_eq!(endpoints_of(&config, &split[1].0), canary);
        // A TCP connection is not split: it reaches every instance.
        let tcp = listener(&config, "out/acme/shop/web-0/100.112.0.7:5433").unwrap();
        let tcp_cluster = tcp["cluster"].as_str().unwrap();
        assert_eq!(endpoints_of(&config, tcp_cluster).len(), 2);

        // With no healthy instance in the new set, every request goes to the previous version.
        let unhealthy = [
            fra_instance("127.0.0.9", false),
            MeshInstance {
                healthy: false,
                ..fra_instance("127.0.0.10", true)
            },
        ];
        let config = web_seeing_instances(&[("api", api)], &unhealthy, Some(20)).json;
        let http = listener(&config, "out/acme/shop/web-0/8080").unwrap();
        let route = &http["virtual_hosts"][0]["routes"][0];
        assert_eq!(route["cluster"], base);
        assert_eq!(endpoints_of(&config, base), mesh(mesh_port(0)));
    }

    fn listener<'a>(config: &'a Value, name: &str) -> Option<&'a Value> {
        config["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
    }

    #[test]
    fn a_tcp_port_is_a_mesh_tcp_listener_and_a_tcp_service_has_an_outbound_tcp_listener() {
        let db = spec_with(&[("pg", 5432, "tcp"), ("admin", 9000, "http")]);
        let config = web_seeing(&[("db", db)]);
        // Inbound: the tcp port's mesh port relays to the instance's port, after admitting
        // the caller by the service's policy.
        let inbound = listener(&config, "in/acme/shop/web-0/db").unwrap();
        assert_eq!(inbound["protocol"], "tcp");
        assert_eq!(inbound["address"], "100.64.0.2:15443");
        assert_eq!(inbound["cluster"], "local/acme/shop/web-0/db");
        assert_eq!(inbound["mesh"]["org"], "acme");
        assert_eq!(inbound["max_connections"], TCP_MAX_CONNECTIONS);
        // Outbound: the tcp service's port relays over mutual TLS to its instances' mesh port
        // of that port, expecting its identity.
        let outbound = listener(&config, "out/acme/shop/web-0/100.112.0.7:5432").unwrap();
        assert_eq!(outbound["protocol"], "tcp");
        assert_eq!(outbound["address"], format!("100.64.0.2:{RELAY_PORT_BASE}"));
        assert_eq!(outbound["sources"], json!(["100.64.0.3"]));
        let cluster_name = outbound["cluster"].as_str().unwrap();
        let cluster = config["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == cluster_name)
            .unwrap();
        assert_eq!(
            cluster["mesh"]["peer"],
            "spiffe://meridian.local/org/acme/app/shop/service/db"
        );
        assert_eq!(cluster["endpoints"][0]["address"], "127.0.0.9:15443");
        // The HTTP port stays HTTP; `HTTP_PROXY` routes the name to the first HTTP port.
        assert!(
            listener(&config, "out/acme/shop/web-0/9000").unwrap()["virtual_hosts"][0]["routes"][0]
                ["cluster"]
                .as_str()
                .unwrap()
                .ends_with("/db:admin")
        );
        let proxy = listener(&config, "out/acme/shop/web-0").unwrap();
        let routed: Vec<&str> = proxy["virtual_hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["routes"][0]["cluster"].as_str().unwrap())
            .collect();
        assert!(
            routed
                .iter()
                .all(|c| !c.ends_with(":pg") && !c.ends_with(":db")),
            "{routed:?}"
        );
    }

    #[test]
    fn tcp_ports_of_one_number_get_relays_of_their_own_beside_http_ones() {
        let db = spec_with(&[("pg", 5432, "tcp")]);
        let replica = spec_with(&[("pg", 5432, "tcp")]);
        // api's HTTP port has the number the first relay would take.
        let api = spec_with(&[("http", 5432, "http"), ("other", RELAY_PORT_BASE, "http")]);
        let services = [("db", db), ("replica", replica), ("api", api)];
        let config = web_seeing(&services);
        let relay = |vip: &str| listener(&config, &format!("out/acme/shop/web-0/{vip}:5432"));
        let (db, replica) = (relay("100.112.0.7").unwrap(), relay("100.112.0.8").unwrap());
        let next = RELAY_PORT_BASE + 1;
        assert_eq!(db["address"], format!("100.64.0.2:{next}"));
        assert_eq!(replica["address"], format!("100.64.0.2:{}", next + 1));
        let ends =
            |listener: &Value, with: &str| listener["cluster"].as_str().unwrap().ends_with(with);
        assert!(ends(db, "/db:pg") && ends(replica, "/replica:pg"));
        // api's HTTP port 5432 stays HTTP, with api's names (nearest, and pinned to fra).
        let shared = listener(&config, "out/acme/shop/web-0/5432").unwrap();
        assert_ne!(shared["protocol"], "tcp");
        let names: Vec<&str> = shared["virtual_hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["api.shop.internal", "fra.api.shop.internal"]);
        // The relays the namespace's rules send each virtual IP and port to.
        let made = web_seeing_instances(&services, &[fra_instance("127.0.0.9", false)], None);
        let relays: Vec<(String, u16, u16)> = made.relays[&Ipv4Addr::new(100, 64, 0, 2)]
            .iter()
            .map(|r| (r.vip.to_string(), r.port, r.relay))
            .collect();
        assert_eq!(
            relays,
            [
                ("100.112.0.7".to_owned(), 5432, next),
                ("100.112.0.8".to_owned(), 5432, next + 1)
            ]
        );
    }

    /// The configuration of web-0 of acme/shop in a namespace (node side 100.64.0.2), with its
    /// relays kept in `namespaces`, seeing acme/shop's `services` (name, spec, last byte of its
    /// virtual IP 100.112.0.x; each with a healthy instance at 127.0.0.9).
    fn namespace_web(
        services: &[(&str, &ServiceSpec, u8)],
        namespaces: &mut BTreeMap<Ipv4Addr, NamespaceRelays>,
    ) -> NodeConfig {
        let local = web_0(
            spec_with(&[("http", 8080, "http")]),
            (Ipv4Addr::new(100, 64, 0, 2), Ipv4Addr::new(100, 64, 0, 3)),
            &[],
        );
        let services = services
            .iter()
            .map(|(name, spec, last)| {
                let service = MeshService {
                    spec: (*spec).clone(),
                    instances: vec![fra_instance("127.0.0.9", false)],
                    vip: Some(Ipv4Addr::new(100, 112, 0, *last)),
                    canary_weight: None,
                };
                (key("acme", "shop", name), service)
            })
            .collect();
        config_kept(local, &services, namespaces)
    }

    /// The relays of `made` for web-0's namespace: virtual IP and port, the relay, and the
    /// service and port the relay's listener reaches.
    fn namespace_relays(made: &NodeConfig) -> Vec<(String, u16, String)> {
        made.relays[&Ipv4Addr::new(100, 64, 0, 2)]
            .iter()
            .map(|r| {
                let name = format!("out/acme/shop/web-0/{}:{}", r.vip, r.port);
                let listener = listener(&made.json, &name).unwrap();
                assert_eq!(listener["address"], format!("100.64.0.2:{}", r.relay));
                let cluster = listener["cluster"].as_str().unwrap();
                let (_, target) = cluster.split_once("/to/acme/shop/").unwrap();
                (format!("{}:{}", r.vip, r.port), r.relay, target.to_owned())
            })
            .collect()
    }

    #[test]
    fn namespace_relays_keep_their_numbers_while_services_before_them_come_and_go() {
        let mut namespaces = BTreeMap::new();
        let node_side = Ipv4Addr::new(100, 64, 0, 2);
        let (pg, redis) = (
            spec_with(&[("pg", 5432, "tcp")]),
            spec_with(&[("redis", 6379, "tcp")]),
        );
        let base = RELAY_PORT_BASE;
        let relay =
            |vip: &str, relay: u16, target: &str| (vip.to_owned(), relay, target.to_owned());
        let db = |number: u16| relay("100.112.0.7:5432", number, "db:pg");
        let made = namespace_web(&[("db", &pg, 7)], &mut namespaces);
        assert_eq!(namespace_relays(&made), [db(base)]);
        // The agent set the namespace's map once the proxy applied the configuration.
        let mapped = |namespaces: &mut BTreeMap<Ipv4Addr, NamespaceRelays>, made: &NodeConfig| {
            namespaces
                .get_mut(&node_side)
                .unwrap()
                .mapped(&made.relays[&node_side]);
        };
        mapped(&mut namespaces, &made);

        // A service that sorts first comes: db keeps its relay (the map points there), the
        // newcomer gets the next.
        let cache = relay("100.112.0.8:6379", base + 1, "cache:redis");
        let made = namespace_web(&[("cache", &redis, 8), ("db", &pg, 7)], &mut namespaces);
        assert_eq!(namespace_relays(&made), [cache.clone(), db(base)]);
        mapped(&mut namespaces, &made);

        // cache goes and another comes before db, while the map still points to cache's relay:
        // that number is not given to the newcomer.
        let made = namespace_web(&[("a", &redis, 9), ("db", &pg, 7)], &mut namespaces);
        let a = relay("100.112.0.9:6379", base + 2, "a:redis");
        assert_eq!(namespace_relays(&made), [a.clone(), db(base)]);
        mapped(&mut namespaces, &made);

        // A service whose HTTP port is db's relay number comes: db moves to the number the map
        // no longer points to; the HTTP port is not listened on while the map still sends db's
        // connections there, and is once it no longer does.
        let http = spec_with(&[("http", base, "http")]);
        let services = [("a", &redis, 9), ("b", &http, 10), ("db", &pg, 7)];
        let made = namespace_web(&services, &mut namespaces);
        assert_eq!(namespace_relays(&made), [a.clone(), db(base + 1)]);
        let http_listener = format!("out/acme/shop/web-0/{base}");
        assert!(listener(&made.json, &http_listener).is_none());
        mapped(&mut namespaces, &made);
        let made = namespace_web(&services, &mut namespaces);
        assert_eq!(namespace_relays(&made), [a.clone(), db(base + 1)]);
        let listened = listener(&made.json, &http_listener).unwrap();
        assert_eq!(listened["virtual_hosts"][0]["name"], "b.shop.internal");

        // A service whose tcp port is db's relay number comes: until the map sends its virtual
        // IP and port to its relay, a connection there goes to the node side at that port,
        // where db's relay must not be. db moves, to a number the map does not point to.
        let odd = spec_with(&[("odd", base + 1, "tcp")]);
        let services = [
            ("a", &redis, 9),
            ("b", &http, 10),
            ("c", &odd, 11),
            ("db", &pg, 7),
        ];
        let made = namespace_web(&services, &mut namespaces);
        let c = relay(&format!("100.112.0.11:{}", base + 1), base + 3, "c:odd");
        assert_eq!(namespace_relays(&made), [a, c, db(base + 4)]);

        // Another instance at that node side starts afresh.
        let mut other = web_0(
            spec_with(&[("http", 8080, "http")]),
            (node_side, Ipv4Addr::new(100, 64, 0, 3)),
            &[],
        );
        other.instance = "web-1".to_owned();
        let services = [(
            key("acme", "shop", "db"),
            MeshService {
                spec: pg.clone(),
                instances: vec![fra_instance("127.0.0.9", false)],
                vip: Some(Ipv4Addr::new(100, 112, 0, 7)),
                canary_weight: None,
            },
        )]
        .into_iter()
        .collect();
        let made = config_kept(other, &services, &mut namespaces);
        assert_eq!(made.relays[&node_side][0].relay, base);
    }

    /// `services` (each with a healthy instance at 127.0.0.9).
    fn host_services(services: &[(ServiceKey, ServiceSpec)]) -> BTreeMap<ServiceKey, MeshService> {
        services
            .iter()
            .map(|(target, spec)| {
                let service = MeshService {
                    spec: spec.clone(),
                    instances: vec![fra_instance("127.0.0.9", false)],
                    vip: None,
                    canary_weight: None,
                };
                (target.clone(), service)
            })
            .collect()
    }

    /// The configuration of host-mode web-0 of acme/shop at 127.62.0.5 with `relays`, seeing
    /// [`host_services`] of `services`.
    fn host_web(relays: &[HostRelay], services: &[(ServiceKey, ServiceSpec)]) -> Value {
        let address = Ipv4Addr::new(127, 62, 0, 5);
        let local = web_0(
            spec_with(&[("http", 8080, "http")]),
            (address, address),
            relays,
        );
        let made = config_of(local, &host_services(services));
        assert!(made.relays.is_empty(), "no namespace rules in host mode");
        made.json
    }

    /// The host-mode relay listeners of `config`: the target (`org/app/service:port`), the
    /// address, and the mesh endpoints relayed to.
    fn host_relay_listeners(config: &Value) -> Vec<(String, String, String)> {
        config["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| {
                let (_, target) = l["name"].as_str().unwrap().split_once("/to/")?;
                let endpoints = endpoints_of(config, l["cluster"].as_str().unwrap());
                let address = l["address"].as_str().unwrap().to_owned();
                Some((target.to_owned(), address, endpoints.join(",")))
            })
            .collect()
    }

    #[test]
    fn host_relays_keep_their_ports_while_services_come_change_and_go() {
        let caller = key("acme", "shop", "web");
        let db = key("acme", "shop", "db");
        let partner = key("partner", "q", "broker");
        let pg = spec_with(&[("pg", 5432, "tcp")]);
        let mut amqp = spec_with(&[("amqp", 5672, "tcp")]);
        amqp.mesh.allow = vec!["acme/shop/web".to_owned()];
        let at_start = [(db.clone(), pg.clone()), (partner.clone(), amqp.clone())];
        let relays = crate::host_relays::assign(&caller, &[], &host_services(&at_start));
        let config = host_web(&relays, &at_start);
        let (first, second) = (RELAY_PORT_BASE, RELAY_PORT_BASE + 1);
        let relayed = |target: &str, port: u16, mesh: usize| {
            (
                target.to_owned(),
                format!("127.62.0.5:{port}"),
                format!("127.0.0.9:{}", mesh_port(mesh)),
            )
        };
        let (broker, pg_at) = ("partner/q/broker:amqp", "acme/shop/db:pg");
        assert_eq!(
            host_relay_listeners(&config),
            [relayed(broker, first, 0), relayed(pg_at, second, 0)]
        );
        let listener = listener(&config, "out/acme/shop/web-0/to/acme/shop/db:pg").unwrap();
        assert!(listener["sources"].is_null(), "{listener}");

        // Later: a service whose variable sorts first appears, and db's pg becomes its second
        // port. The relays keep their ports (the instance's environment names them); the new
        // service gets none; db's relay reaches its pg port's new mesh port.
        let moved = spec_with(&[("http", 8080, "http"), ("pg", 5432, "tcp")]);
        let later = [
            (key("acme", "aaa", "aaa"), pg.clone()),
            (db.clone(), moved),
            (partner.clone(), amqp.clone()),
        ];
        assert_eq!(
            host_relay_listeners(&host_web(&relays, &later)),
            [relayed(broker, first, 0), relayed(pg_at, second, 1)]
        );

        // The partner no longer allows web, and db is gone: neither is listened on.
        amqp.mesh.allow.clear();
        let gone = [(partner, amqp)];
        assert_eq!(host_relay_listeners(&host_web(&relays, &gone)), []);
    }

    #[test]
    fn allow_patterns_name_callers_by_segment() {
        let patterns = ["partner/*/*".to_owned(), "initech/billing/api".to_owned()];
        assert!(allows(&patterns, &key("partner", "x", "y")));
        assert!(allows(&patterns, &key("initech", "billing", "api")));
        assert!(!allows(&patterns, &key("initech", "billing", "web")));
        assert!(!allows(&patterns, &key("other", "x", "y")));
        assert!(!allows(
            &["partner/*".to_owned()],
            &key("partner", "x", "y")
        ));
    }
}
