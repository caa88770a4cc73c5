//! Renders a region's [`Work`] into xDS resources, outside the state's lock, and publishes them
//! into the cache. A resource is published only from a work newer than the one it was last
//! published from, so renders that overlap cannot put an older view over a newer one. A
//! service whose spec cannot be encoded is an error, logged and counted: its resources (and its
//! instances' assignments) stay as they were, never replaced by an empty spec.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use envoy_types::pb::google::protobuf::Any;
use meridian_model::{Endpoint, RegionalDeployment, ServiceSpec};
use meridian_xds::meridian::{Assignment, ASSIGNMENT};
use meridian_xds::{node_namespace, render, role_namespace, Cache, Update, LISTENER, ROUTE};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::sync::watch;

use super::state::{AssignmentWork, ServiceWork, Shape, Work};
use super::{GatewayListeners, ServiceId};
use crate::fleet::InstanceKey;

/// How a service's spec is encoded for its resources; `serde_json::to_vec` outside tests.
pub(super) type EncodeSpec = fn(&ServiceSpec) -> serde_json::Result<Vec<u8>>;

/// The name of the gateway's plain-HTTP listener.
const GATEWAY_PLAINTEXT: &str = "gateway-plaintext";

/// What the region's renders did, as metrics.
#[derive(Clone, Default)]
pub(super) struct RenderMetrics {
    /// Services rendered.
    pub service_renders: Counter,
    /// Assignments encoded.
    pub assignment_encodes: Counter,
    /// Services whose rendering failed.
    pub failures: Counter,
}

impl RenderMetrics {
    fn new(registry: &mut Registry) -> RenderMetrics {
        let metrics = RenderMetrics::default();
        registry.register(
            "meridian_control_service_renders",
            "Services the regional control plane rendered into xDS resources (one per service a \
             change touched)",
            metrics.service_renders.clone(),
        );
        registry.register(
            "meridian_control_assignment_encodes",
            "Instance assignments the regional control plane encoded for agents (one per \
             instance whose placement or deployment changed)",
            metrics.assignment_encodes.clone(),
        );
        registry.register(
            "meridian_control_render_failures",
            "Services the regional control plane could not render (their spec could not be \
             encoded); their previous resources stay",
            metrics.failures.clone(),
        );
        metrics
    }
}

/// A service's resources: (type URL, cache name).
pub(super) type Names = BTreeSet<(&'static str, String)>;

/// What was last published, and from which work.
#[derive(Default)]
pub(super) struct Published {
    /// Each service's resources (type URL, cache name) and the work they came from.
    services: HashMap<ServiceId, (u64, Names)>,
    /// Each instance's assignment cache name (`None`: removed) and the work it came from.
    assignments: HashMap<InstanceKey, (u64, Option<String>)>,
    /// The work the gateway's routes came from.
    gateway_routes: u64,
    /// The works taken from the state and not yet published.
    pub(super) in_flight: BTreeSet<u64>,
    /// Services and instances whose resources were removed, by the work that removed them:
    /// remembered while an older work may still publish them, then forgotten.
    removed: VecDeque<(u64, Removed)>,
}

/// A service or an instance whose resources were removed.
enum Removed {
    Service(ServiceId),
    Assignment(InstanceKey),
}

impl Published {
    /// Forgets the removals no work in flight is older than.
    fn forget_removed(&mut self) {
        let oldest = self.in_flight.first().copied().unwrap_or(u64::MAX);
        while let Some((sequence, _)) = self.removed.front() {
            if *sequence >= oldest {
                break;
            }
            let Some((sequence, removed)) = self.removed.pop_front() else {
                break;
            };
            match removed {
                Removed::Service(id) => {
                    if self.services.get(&id).is_some_and(|(s, _)| *s == sequence) {
                        self.services.remove(&id);
                    }
                }
                Removed::Assignment(key) => {
                    if self
                        .assignments
                        .get(&key)
                        .is_some_and(|(s, _)| *s == sequence)
                    {
                        self.assignments.remove(&key);
                    }
                }
            }
        }
    }
}

/// Ends a work's flight when its publication ends, even by a panic.
struct Landing<'a> {
    published: &'a Mutex<Published>,
    sequence: u64,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        let mut published = lock(self.published);
        published.in_flight.remove(&self.sequence);
        published.forget_removed();
    }
}

/// Renders works and publishes them into the cache.
pub(super) struct Publisher {
    cache: Arc<Cache>,
    pub(super) published: Mutex<Published>,
    pub metrics: RenderMetrics,
    encode_spec: EncodeSpec,
    /// Counts the works published.
    landed: watch::Sender<u64>,
}

/// A rendered work, ready to publish.
#[derive(Default)]
struct Rendered {
    services: Vec<(ServiceId, render::Rendered)>,
    assignments: Vec<(InstanceKey, Option<(String, Any)>)>,
    gateway_routes: Option<Any>,
}

impl Publisher {
    /// A publisher into `cache` that counts in `registry`, with the gateway's listeners put in
    /// the cache at once.
    pub fn new(
        cache: Arc<Cache>,
        gateway: GatewayListeners,
        mesh: bool,
        registry: &mut Registry,
        encode_spec: EncodeSpec,
    ) -> Publisher {
        let mut put = Vec::new();
        if let Some(address) = gateway.mesh {
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
        Publisher {
            cache,
            published: Mutex::new(Published::default()),
            metrics: RenderMetrics::new(registry),
            encode_spec,
            landed: watch::Sender::new(0),
        }
    }

    /// Records that work `sequence` was taken from the state; call under the state's lock, so
    /// that no older work can start after it.
    pub fn take_off(&self, sequence: u64) {
        lock(&self.published).in_flight.insert(sequence);
    }

    /// Renders `work` (taken off with [`Publisher::take_off`]) and publishes what is newer than
    /// what the cache holds.
    pub fn publish(&self, work: Work) {
        let sequence = work.sequence;
        let _landing = Landing {
            published: &self.published,
            sequence,
        };
        let rendered = self.render(work);
        let mut published = lock(&self.published);
        let published = &mut *published;
        let mut by_type: BTreeMap<&'static str, Update> = BTreeMap::new();
        for (id, resources) in rendered.services {
            let last = published.services.entry(id.clone()).or_default();
            if last.0 > sequence {
                continue;
            }
            let mut names = BTreeSet::new();
            for (type_url, name, resource) in resources.resources {
                names.insert((type_url, name.clone()));
                by_type
                    .entry(type_url)
                    .or_default()
                    .put
                    .push((name, resource));
            }
            for (type_url, name) in last.1.difference(&names) {
                by_type
                    .entry(type_url)
                    .or_default()
                    .remove
                    .push(name.clone());
            }
            if names.is_empty() {
                published
                    .removed
                    .push_back((sequence, Removed::Service(id)));
            }
            *last = (sequence, names);
        }
        if let Some(routes) = rendered.gateway_routes {
            if published.gateway_routes <= sequence {
                published.gateway_routes = sequence;
                let update = by_type.entry(ROUTE).or_default();
                update.put.push((gateway_cache_name(), routes));
            }
        }
        // Clusters and endpoints before the listeners and routes that refer to them.
        for type_url in [
            meridian_xds::meridian::SERVICE,
            meridian_xds::CLUSTER,
            meridian_xds::ENDPOINT,
            ROUTE,
            LISTENER,
        ] {
            if let Some(update) = by_type.remove(type_url) {
                // Tracked: a drain waits until the proxies acknowledged its endpoints' removal.
                self.cache.apply_tracked(type_url, update);
            }
        }
        let mut assignments = Update::default();
        for (key, assignment) in rendered.assignments {
            let last = published.assignments.entry(key.clone()).or_default();
            if last.0 > sequence {
                continue;
            }
            let name = assignment.as_ref().map(|(name, _)| name.clone());
            if let Some(old) = last.1.take().filter(|old| Some(old) != name.as_ref()) {
                assignments.remove.push(old);
            }
            if name.is_none() {
                published
                    .removed
                    .push_back((sequence, Removed::Assignment(key)));
            }
            *last = (sequence, name);
            assignments.put.extend(assignment);
        }
        if !assignments.put.is_empty() || !assignments.remove.is_empty() {
            self.cache.apply(ASSIGNMENT, assignments);
        }
        self.landed.send_modify(|count| *count += 1);
    }

    /// The resources of service `id` that list its endpoints (type URL, cache name), once
    /// published from work `since` or a later one (`None` before).
    pub fn endpoint_resources(&self, id: &ServiceId, since: u64) -> Option<Names> {
        let published = lock(&self.published);
        let (sequence, names) = published.services.get(id)?;
        let listing = [meridian_xds::ENDPOINT, meridian_xds::meridian::SERVICE];
        (*sequence >= since).then(|| {
            names
                .iter()
                .filter(|(type_url, _)| listing.contains(type_url))
                .cloned()
                .collect()
        })
    }

    /// Changes whenever a work was published.
    pub fn landed(&self) -> watch::Receiver<u64> {
        self.landed.subscribe()
    }

    /// The cache it publishes into.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// Renders `work`, without any lock: a service whose spec cannot be encoded is left out,
    /// with its assignments.
    fn render(&self, work: Work) -> Rendered {
        // Encoded once per service and version: an older version's instances keep its spec.
        let mut specs: HashMap<(ServiceId, u64), Option<Vec<u8>>> = HashMap::new();
        let mut spec_of = |id: &ServiceId, deployment: &RegionalDeployment| {
            specs
                .entry((id.clone(), deployment.version))
                .or_insert_with(|| self.encode(id, &deployment.spec))
                .clone()
        };
        let mut rendered = Rendered::default();
        for ServiceWork { id, shape } in work.services {
            let resources = match shape {
                Shape::Local {
                    deployment,
                    endpoints,
                    canary,
                    split,
                    mesh,
                    elsewhere,
                    vip,
                } => spec_of(&id, &deployment).map(|spec| {
                    let endpoints: Vec<&Endpoint> = endpoints.iter().collect();
                    let canary: Option<Vec<&Endpoint>> =
                        canary.as_ref().map(|canary| canary.iter().collect());
                    let split_set = canary.as_deref().zip(split);
                    let mut rendered = render::service(
                        &deployment,
                        &spec,
                        &endpoints,
                        mesh.as_deref(),
                        &elsewhere,
                        vip,
                        split_set,
                    );
                    if let Some(canary) = canary {
                        let clusters =
                            render::canary_clusters(&deployment, &canary, mesh.as_deref());
                        rendered.resources.extend(clusters.resources);
                    }
                    rendered
                }),
                Shape::Remote {
                    deployment,
                    elsewhere,
                    vip,
                } => spec_of(&id, &deployment).map(|spec| render::Rendered {
                    resources: vec![render::mesh_service(&deployment, spec, elsewhere, vip, 0)],
                }),
                Shape::Gone => Some(render::Rendered::default()),
            };
            if let Some(resources) = resources {
                self.metrics.service_renders.inc();
                rendered.services.push((id, resources));
            }
        }
        for (key, assignment) in work.assignments {
            let encoded = match assignment {
                Some(AssignmentWork {
                    node,
                    deployment,
                    secrets,
                }) => {
                    let Some(spec_json) = spec_of(&key.0, &deployment) else {
                        continue;
                    };
                    self.metrics.assignment_encodes.inc();
                    let (org, app, service) = key.0.clone();
                    let name = format!("{}{org}/{app}/{}", node_namespace(&node), key.1);
                    let assignment = Assignment {
                        instance: key.1.clone(),
                        org,
                        app,
                        service,
                        version: deployment.version,
                        spec_json,
                        secrets,
                    };
                    let resource = Any {
                        type_url: ASSIGNMENT.to_owned(),
                        value: assignment.encode_to_vec(),
                    };
                    Some((name, resource))
                }
                None => None,
            };
            rendered.assignments.push((key, encoded));
        }
        rendered.gateway_routes = work.gateway_routes.map(|deployments| {
            render::gateway_routes_split(deployments.iter().map(|(d, split)| (&**d, *split)))
        });
        rendered
    }

    /// Encodes the spec of service `id`; a failure is logged and counted.
    fn encode(&self, id: &ServiceId, spec: &ServiceSpec) -> Option<Vec<u8>> {
        match (self.encode_spec)(spec) {
            Ok(json) => Some(json),
            Err(e) => {
                self.metrics.failures.inc();
                tracing::error!(service = ?id, error = %e,
                    "cannot encode the service's spec; its resources and assignments stay as they were");
                None
            }
        }
    }
}

/// The cache name of the gateway's listener and of its routes.
fn gateway_cache_name() -> String {
    format!("{}{}", role_namespace("gateway"), render::GATEWAY)
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // What is published is plain maps, usable after a panic elsewhere.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
