//! A region's services and endpoints, kept rendered in the xDS cache: a change to one service
//! re-renders that service only, and resources it no longer has are removed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use meridian_model::{Endpoint, RegionalDeployment};
use std::net::SocketAddr;

use meridian_xds::{render, role_namespace, Cache, Update, LISTENER, ROUTE};

/// Identifies a service: org, app and name.
pub type ServiceId = (String, String, String);

/// What the region runs, and the cache it is rendered into.
pub struct RegionState {
    region: String,
    cache: Arc<Cache>,
    deployments: BTreeMap<ServiceId, RegionalDeployment>,
    /// Cache names rendered for each service, by type URL.
    rendered: HashMap<ServiceId, BTreeSet<(&'static str, String)>>,
}

impl RegionState {
    /// An empty state for `region`, rendering into `cache`; with `gateway`, the region's
    /// gateway listens there.
    pub fn new(region: &str, cache: Arc<Cache>, gateway: Option<SocketAddr>) -> RegionState {
        let gateway_name = gateway_cache_name();
        if let Some(address) = gateway {
            let listener = (gateway_name.clone(), render::gateway_listener(address));
            cache.apply(
                LISTENER,
                Update {
                    put: vec![listener],
                    remove: Vec::new(),
                },
            );
        }
        let state = RegionState {
            region: region.to_owned(),
            cache,
            deployments: BTreeMap::new(),
            rendered: HashMap::new(),
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
        for id in ids {
            let deployment = new_deployments.remove(&id);
            let endpoints = new_endpoints.remove(&id).unwrap_or_default();
            self.set_service(id, deployment, endpoints);
        }
    }

    /// Sets one service's regional deployment (`None`: it no longer runs here) and its endpoints
    /// in this region, and re-renders it.
    pub fn set_service(
        &mut self,
        id: ServiceId,
        deployment: Option<RegionalDeployment>,
        endpoints: Vec<Endpoint>,
    ) {
        let endpoints: Vec<Endpoint> = endpoints
            .into_iter()
            .filter(|e| e.region == self.region)
            .collect();
        let rendered = match &deployment {
            Some(deployment) => {
                let refs: Vec<&Endpoint> = endpoints.iter().collect();
                render::service(deployment, &refs)
            }
            None => render::Rendered::default(),
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
        if let Some(old) = self.rendered.get(&id) {
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
            meridian_xds::CLUSTER,
            meridian_xds::ENDPOINT,
            meridian_xds::ROUTE,
            meridian_xds::LISTENER,
        ] {
            if let Some(update) = by_type.remove(type_url) {
                self.cache.apply(type_url, update);
            }
        }
        let spec_changed = self.deployments.get(&id) != deployment.as_ref();
        match deployment {
            Some(deployment) => {
                self.deployments.insert(id.clone(), deployment);
                self.rendered.insert(id, names);
            }
            None => {
                self.deployments.remove(&id);
                self.rendered.remove(&id);
            }
        }
        if spec_changed {
            self.render_gateway_routes();
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
