//! A region's services and endpoints, kept rendered in the xDS cache: a change to one service
//! re-renders that service only, and resources it no longer has are removed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use std::net::SocketAddr;
use std::time::Instant;

use tokio::sync::Notify;

use envoy_types::pb::google::protobuf::Any;
use meridian_model::{Endpoint, EndpointHealth, RegionReport, RegionalDeployment, ServiceHealth};
use meridian_xds::meridian::{Assignment, NodeReport, ServiceInstance, ASSIGNMENT};
use meridian_xds::{node_namespace, render, role_namespace, Cache, Update, LISTENER, ROUTE};
use prost::Message;

use crate::elsewhere::{Elsewhere, RemoteRegion};
use crate::fleet::Fleet;
use crate::vips::{SavedVip, Vips};

/// Identifies a service: org, app and name.
pub type ServiceId = (String, String, String);

/// What the region runs, and the cache it is rendered into.
pub struct RegionState {
    region: String,
    /// The installation's trust domain, when the region's proxies reach agent-run instances
    /// over mutual TLS.
    trust_domain: Option<String>,
    /// Where the region's gateway listens.
    gateway: GatewayListeners,
    cache: Arc<Cache>,
    deployments: BTreeMap<ServiceId, RegionalDeployment>,
    /// Endpoints registered through the global API, by service.
    registered: BTreeMap<ServiceId, Vec<Endpoint>>,
    /// Endpoints of the instances agents run, by service.
    reported: BTreeMap<ServiceId, Vec<Endpoint>>,
    /// The region's nodes and where instances are placed.
    fleet: Fleet,
    /// Cache names of the assignments rendered.
    assignments: BTreeSet<String>,
    /// Cache names rendered for each service, by type URL.
    rendered: HashMap<ServiceId, BTreeSet<(&'static str, String)>>,
    /// Healthy instances of services in other regions, by priority (1 for the nearest region
    /// that runs the service, then 2, …).
    elsewhere: BTreeMap<ServiceId, Vec<ServiceInstance>>,
    /// Services deployed only in other regions, as the nearest of them runs them.
    remote: BTreeMap<ServiceId, RegionalDeployment>,
    /// Every region's last summary, by name.
    summaries: BTreeMap<String, RemoteRegion>,
    /// Told whenever the region's report upward may have changed.
    report_due: Arc<Notify>,
    /// Each service's virtual IP.
    vips: Vips,
}

/// Where a region's gateway listens.
#[derive(Debug, Clone, Copy, Default)]
pub struct GatewayListeners {
    /// For edges, over mutual TLS (only edges may call); reported upward, edges reach the
    /// region there.
    pub mesh: Option<SocketAddr>,
    /// Plain HTTP, for operators and tests; never reported.
    pub plaintext: Option<SocketAddr>,
}

/// The name of the gateway's plain-HTTP listener.
const GATEWAY_PLAINTEXT: &str = "gateway-plaintext";

impl RegionState {
    /// An empty state for `region`, rendering into `cache`; the region's gateway listens where
    /// `gateway` says; with `trust_domain`, proxies reach the instances agents run over mutual
    /// TLS (endpoints registered through the API stay plaintext), and the gateway's edge
    /// listener is mutual TLS.
    pub fn new(
        region: &str,
        cache: Arc<Cache>,
        gateway: GatewayListeners,
        trust_domain: Option<&str>,
    ) -> RegionState {
        let mut put = Vec::new();
        if let Some(address) = gateway.mesh {
            let mesh = trust_domain.is_some();
            let listener = render::gateway_listener(render::GATEWAY, address, mesh);
            put.push((gateway_cache_name(), listener));
        }
        if let Some(address) = gateway.plaintext {
            let listener = render::gateway_listener(GATEWAY_PLAINTEXT, address, false);
            put.push((
                format!("{}{GATEWAY_PLAINTEXT}", role_namespace("gateway")),
                listener,
            ));
        }
        cache.apply(
            LISTENER,
            Update {
                put,
                remove: Vec::new(),
            },
        );
        let state = RegionState {
            region: region.to_owned(),
            trust_domain: trust_domain.map(str::to_owned),
            gateway,
            cache,
            deployments: BTreeMap::new(),
            registered: BTreeMap::new(),
            reported: BTreeMap::new(),
            fleet: Fleet::new(Instant::now() + crate::fleet::SETTLE),
            assignments: BTreeSet::new(),
            rendered: HashMap::new(),
            elsewhere: BTreeMap::new(),
            remote: BTreeMap::new(),
            summaries: BTreeMap::new(),
            report_due: Arc::new(Notify::new()),
            vips: Vips::default(),
        };
        state.render_gateway_routes();
        state
    }

    /// Re-renders the gateway's routes from every deployment (unchanged content is no change).
    fn render_gateway_routes(&self) {
        let name = gateway_cache_name();
        let routes = render::gateway_routes(self.deployments.values());
        self.cache.apply(
            ROUTE,
            Update {
                put: vec![(name, routes)],
                remove: Vec::new(),
            },
        );
    }

    /// The region this state is for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Whether service `id` runs in the region.
    pub fn runs(&self, id: &ServiceId) -> bool {
        self.deployments.contains_key(id)
    }

    /// How many services run in the region.
    pub fn services(&self) -> usize {
        self.deployments.len()
    }

    /// Replaces everything: services not in `deployments` are removed.
    pub fn replace_all(&mut self, deployments: Vec<RegionalDeployment>, endpoints: Vec<Endpoint>) {
        let mut new_deployments = BTreeMap::new();
        for deployment in deployments {
            new_deployments.insert(id_of(&deployment), deployment);
        }
        let mut new_endpoints: BTreeMap<ServiceId, Vec<Endpoint>> = BTreeMap::new();
        for endpoint in endpoints {
            let id = (
                endpoint.org.clone(),
                endpoint.app.clone(),
                endpoint.service.clone(),
            );
            new_endpoints.entry(id).or_default().push(endpoint);
        }
        let mut ids: BTreeSet<ServiceId> = self.deployments.keys().cloned().collect();
        ids.extend(new_deployments.keys().cloned());
        let mut reshaped = false;
        for id in ids {
            let deployment = new_deployments.remove(&id);
            let endpoints = new_endpoints.remove(&id).unwrap_or_default();
            reshaped |= self.update_service(id, deployment, endpoints);
        }
        if reshaped {
            self.render_gateway_routes();
            self.reconcile_instances();
        }
    }

    /// Records an agent's report: its node is live, its instances have these states. Placement
    /// is redone when the nodes changed or an instance failed; endpoints follow the states.
    pub fn report(&mut self, report: NodeReport, now: Instant) {
        if self.fleet.report(report, now) {
            self.reconcile_instances();
        } else {
            self.refresh_reported();
        }
        self.report_due.notify_one();
    }

    /// What is told whenever the region's report upward may have changed (an agent reported,
    /// a service or a node changed), so that news goes up at once.
    pub fn report_due(&self) -> Arc<Notify> {
        self.report_due.clone()
    }

    /// Called every second: forgets nodes whose agents stopped reporting (and places their
    /// instances elsewhere), and makes the first placement once agents had time to report.
    pub fn tick(&mut self, now: Instant) {
        let gone = self.fleet.expire(now);
        if !gone.is_empty() {
            tracing::warn!(nodes = ?gone, "nodes stopped reporting; placing their instances elsewhere");
            self.reconcile_instances();
        } else if self.fleet.first_placement_due(now) {
            self.reconcile_instances();
        }
        self.report_due.notify_one();
    }

    /// What the region knows from the global control plane, for its disk copy.
    pub fn disk_copy(&self) -> crate::disk_copy::DiskCopy {
        crate::disk_copy::DiskCopy {
            deployments: self.deployments.values().cloned().collect(),
            endpoints: self.registered.values().flatten().cloned().collect(),
            regions: self.summaries.clone(),
            vips: self.vips.saved(),
        }
    }

    /// Takes back the services' virtual IPs from a disk copy; call before anything else.
    pub fn restore_vips(&mut self, saved: Vec<SavedVip>) {
        self.vips.restore(saved);
    }

    /// The region's nodes and placements.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// The region's report for the global control plane: nodes, capacity, and each service's
    /// placed and healthy instances, with the addresses of the healthy ones its agents run.
    pub fn report_upward(&self) -> RegionReport {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        RegionReport {
            // A port chosen by the system (0) is not an address anyone can reach.
            gateway: self
                .gateway
                .mesh
                .filter(|g| g.port() != 0)
                .map(|g| g.to_string()),
            nodes: count(self.fleet.nodes()),
            capacity: self.fleet.capacity(),
            services: self
                .deployments
                .iter()
                .map(|(id, deployment)| {
                    let (placed, healthy) = self.fleet.summary(id);
                    ServiceHealth {
                        org: id.0.clone(),
                        app: id.1.clone(),
                        service: id.2.clone(),
                        version: deployment.version,
                        placed: count(placed),
                        healthy: count(healthy),
                        addresses: self
                            .reported
                            .get(id)
                            .into_iter()
                            .flatten()
                            .filter(|e| e.health == EndpointHealth::Healthy)
                            .map(|e| e.address.clone())
                            .collect(),
                    }
                })
                .collect(),
        }
    }

    /// Places every service's instances and renders the assignments and endpoints.
    fn reconcile_instances(&mut self) {
        let desired = self
            .deployments
            .iter()
            .map(|(id, d)| (id.clone(), d.spec.scale.min))
            .collect();
        self.fleet.place(&desired, Instant::now());
        self.render_assignments();
        self.refresh_reported();
    }

    /// Renders one Assignment per placement into its node's namespace, and removes the others.
    fn render_assignments(&mut self) {
        let mut put = Vec::new();
        let mut names = BTreeSet::new();
        for placement in self.fleet.placements() {
            let Some(deployment) = self.deployments.get(&placement.service) else {
                continue;
            };
            let (org, app, service) = placement.service.clone();
            let name = format!(
                "{}{org}/{app}/{}",
                node_namespace(&placement.node),
                placement.instance
            );
            let assignment = Assignment {
                instance: placement.instance,
                org,
                app,
                service,
                version: deployment.version,
                spec_json: serde_json::to_vec(&deployment.spec).unwrap_or_default(),
            };
            let resource = Any {
                type_url: ASSIGNMENT.to_owned(),
                value: assignment.encode_to_vec(),
            };
            names.insert(name.clone());
            put.push((name, resource));
        }
        let remove = self.assignments.difference(&names).cloned().collect();
        self.cache.apply(ASSIGNMENT, Update { put, remove });
        self.assignments = names;
    }

    /// Re-renders the services whose reported endpoints changed.
    fn refresh_reported(&mut self) {
        let mut fresh = self.fleet.endpoints(&self.region);
        let mut ids: BTreeSet<ServiceId> = self.reported.keys().cloned().collect();
        ids.extend(fresh.keys().cloned());
        for id in ids {
            let endpoints = fresh.remove(&id).unwrap_or_default();
            if self.reported.get(&id).map_or(&[][..], Vec::as_slice) == endpoints.as_slice() {
                continue;
            }
            if endpoints.is_empty() {
                self.reported.remove(&id);
            } else {
                self.reported.insert(id.clone(), endpoints);
            }
            self.render_service(&id);
        }
    }

    /// Takes every region's summary, by region name (this region's own gives its coordinates):
    /// other regions' healthy instances of each service become reachable from this region's
    /// node proxies, the nearest region first, and services deployed only elsewhere get a
    /// mesh resource of their own. Re-renders only the services whose view changed.
    pub fn set_region_summaries(&mut self, regions: &BTreeMap<String, RemoteRegion>) {
        let Elsewhere {
            instances: elsewhere,
            deployments: remote,
        } = crate::elsewhere::elsewhere(&self.region, regions);
        let mut ids: BTreeSet<ServiceId> = self.elsewhere.keys().cloned().collect();
        ids.extend(self.remote.keys().cloned());
        ids.extend(elsewhere.keys().cloned());
        ids.extend(remote.keys().cloned());
        let changed: Vec<ServiceId> = ids
            .into_iter()
            .filter(|id| {
                self.elsewhere.get(id) != elsewhere.get(id) || self.remote.get(id) != remote.get(id)
            })
            .collect();
        self.elsewhere = elsewhere;
        self.remote = remote;
        self.summaries = regions.clone();
        for id in changed {
            self.render_service(&id);
        }
    }

    /// Sets one service's regional deployment (`None`: it no longer runs here) and its endpoints
    /// registered in this region, and re-renders it (and its instances' placement if its spec
    /// changed).
    pub fn set_service(
        &mut self,
        id: ServiceId,
        deployment: Option<RegionalDeployment>,
        endpoints: Vec<Endpoint>,
    ) {
        if self.update_service(id, deployment, endpoints) {
            self.render_gateway_routes();
            self.reconcile_instances();
        }
    }

    /// Stores and renders one service; returns whether its spec changed.
    fn update_service(
        &mut self,
        id: ServiceId,
        deployment: Option<RegionalDeployment>,
        endpoints: Vec<Endpoint>,
    ) -> bool {
        self.report_due.notify_one();
        let endpoints: Vec<Endpoint> = endpoints
            .into_iter()
            .filter(|e| e.region == self.region)
            .collect();
        self.registered.insert(id.clone(), endpoints);
        let spec_changed = self.deployments.get(&id) != deployment.as_ref();
        match deployment {
            Some(deployment) => {
                self.deployments.insert(id.clone(), deployment);
            }
            None => {
                self.deployments.remove(&id);
                self.registered.remove(&id);
            }
        }
        self.render_service(&id);
        spec_changed
    }

    /// Renders one service from its deployment and its registered and reported endpoints, and
    /// removes what it no longer has.
    fn render_service(&mut self, id: &ServiceId) {
        let elsewhere = self.elsewhere.get(id).map_or(&[][..], Vec::as_slice);
        let rendered = match self.deployments.get(id) {
            Some(deployment) => {
                let endpoints: Vec<&Endpoint> = self
                    .registered
                    .get(id)
                    .into_iter()
                    .chain(self.reported.get(id))
                    .flatten()
                    .collect();
                // Instances run by agents are reached on their mesh ports, unless endpoints
                // registered through the API (plaintext) share the service.
                let agent_run = self.registered.get(id).is_none_or(Vec::is_empty);
                let mesh = self.trust_domain.as_deref().filter(|_| agent_run);
                let vip = self.vips.of(id);
                render::service(deployment, &endpoints, mesh, elsewhere, vip)
            }
            None => match self.remote.get(id) {
                Some(deployment) => render::Rendered {
                    resources: vec![render::mesh_service(
                        deployment,
                        elsewhere.to_vec(),
                        self.vips.of(id),
                    )],
                },
                None => render::Rendered::default(),
            },
        };
        let mut by_type: BTreeMap<&'static str, Update> = BTreeMap::new();
        let mut names = BTreeSet::new();
        for (type_url, name, resource) in rendered.resources {
            names.insert((type_url, name.clone()));
            by_type
                .entry(type_url)
                .or_default()
                .put
                .push((name, resource));
        }
        if let Some(old) = self.rendered.get(id) {
            for (type_url, name) in old.difference(&names) {
                by_type
                    .entry(type_url)
                    .or_default()
                    .remove
                    .push(name.clone());
            }
        }
        // Clusters and endpoints before the listeners and routes that refer to them.
        for type_url in [
            meridian_xds::meridian::SERVICE,
            meridian_xds::CLUSTER,
            meridian_xds::ENDPOINT,
            meridian_xds::ROUTE,
            meridian_xds::LISTENER,
        ] {
            if let Some(update) = by_type.remove(type_url) {
                self.cache.apply(type_url, update);
            }
        }
        if names.is_empty() {
            self.rendered.remove(id);
            self.vips.release(id);
        } else {
            self.rendered.insert(id.clone(), names);
        }
    }
}

/// The cache name of the gateway's listener and of its routes.
fn gateway_cache_name() -> String {
    format!("{}{}", role_namespace("gateway"), render::GATEWAY)
}

fn id_of(deployment: &RegionalDeployment) -> ServiceId {
    (
        deployment.org.clone(),
        deployment.app.clone(),
        deployment.service.clone(),
    )
}
