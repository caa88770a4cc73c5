//! A region's services, endpoints, nodes and placements ([`state`]), kept rendered in the xDS
//! cache ([`publish`]). Reports, issuance and federation share the state's lock only to change
//! or read the model; a change marks what it touched, and the touched resources are rendered
//! and published after the lock is released: an agent's report that changes one instance
//! re-renders that instance's service, a placement change re-encodes the assignments of the
//! instances that moved.

mod drain;
mod publish;
mod state;
mod traffic;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use meridian_model::{
    Endpoint, MetricsTarget, RegionReport, RegionalDeployment, RolloutControl, TrafficWindow,
};
use meridian_xds::meridian::{GatewayReport, NodeReport, SecretValue};
use meridian_xds::Cache;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;

use crate::disk_copy::DiskCopy;
use crate::elsewhere::{RemoteChanges, RemoteRegion};
use drain::DrainMetrics;
pub use drain::{AckWait, ACK_WAIT};
use publish::{EncodeSpec, Publisher};
use state::RegionState;
use traffic::TrafficWindows;

/// Identifies a service: org, app and name.
pub type ServiceId = (String, String, String);

/// A node the region does not know (no agent of that name reports).
#[derive(Debug, thiserror::Error)]
#[error("no node `{0}` reports to this region")]
pub struct UnknownNode(pub String);

/// One node as the region sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeStatus {
    /// Its name.
    pub name: String,
    /// Whether its agent reports.
    pub live: bool,
    /// Whether it is drained (`meridian node drain`).
    pub drained: bool,
    /// How many instances it may run.
    pub capacity: u32,
    /// How many instances are placed there (draining ones included).
    pub instances: usize,
    /// The CPU it offers its instances, in thousandths of a core (0: not said).
    pub cpu_millis: u64,
    /// The CPU its instances ask (their `resources.cpu`), in thousandths of a core.
    pub cpu_millis_asked: u64,
    /// The memory it offers its instances, in bytes (0: not said).
    pub memory_bytes: u64,
    /// The memory its instances ask, in bytes.
    pub memory_bytes_asked: u64,
}

impl NodeStatus {
    /// Node `name`, whose agent does not report (drained or not): nothing placed, nothing
    /// offered.
    pub fn gone(name: String, drained: bool) -> NodeStatus {
        NodeStatus {
            name,
            live: false,
            drained,
            capacity: 0,
            instances: 0,
            cpu_millis: 0,
            cpu_millis_asked: 0,
            memory_bytes: 0,
            memory_bytes_asked: 0,
        }
    }
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

/// What a region runs, rendered into its xDS cache. Shared by the tasks of a regional control
/// plane behind an [`Arc`]; every method takes `&self`.
pub struct Region {
    name: String,
    state: Mutex<RegionState>,
    publisher: Publisher,
    drain_metrics: DrainMetrics,
    /// The request figures its proxies report, in windows; a lock of its own (never held
    /// with the state's).
    traffic: Mutex<TrafficWindows>,
}

impl Region {
    /// An empty region `region`, rendering into `cache` and counting its renders in
    /// `registry`; the region's gateway listens where `gateway` says; with `trust_domain`,
    /// proxies reach the instances agents run over mutual TLS (endpoints registered through the
    /// API stay plaintext), and the gateway's edge listener is mutual TLS.
    pub fn new(
        region: &str,
        cache: Arc<Cache>,
        gateway: GatewayListeners,
        trust_domain: Option<&str>,
        registry: &mut Registry,
    ) -> Region {
        let encode_spec: EncodeSpec = serde_json::to_vec;
        Region::with_encoder(region, cache, gateway, trust_domain, registry, encode_spec)
    }

    fn with_encoder(
        region: &str,
        cache: Arc<Cache>,
        gateway: GatewayListeners,
        trust_domain: Option<&str>,
        registry: &mut Registry,
        encode_spec: EncodeSpec,
    ) -> Region {
        let mesh = trust_domain.is_some();
        let publisher = Publisher::new(cache, gateway, mesh, registry, encode_spec);
        let region = Region {
            name: region.to_owned(),
            state: Mutex::new(RegionState::new(region, gateway, trust_domain)),
            publisher,
            drain_metrics: DrainMetrics::new(registry),
            traffic: Mutex::new(TrafficWindows::new(unix_millis())),
        };
        // The gateway's routes, empty.
        region.change(|_| ());
        region
    }

    /// Changes the model with `change`, then renders and publishes what it touched outside the
    /// state's lock.
    fn change<T>(&self, change: impl FnOnce(&mut RegionState) -> T) -> T {
        let (out, work) = {
            let mut state = self.lock();
            let out = change(&mut state);
            let work = state.take_work();
            self.publisher.take_off(work.sequence);
            (out, work)
        };
        self.publisher.publish(work);
        out
    }

    fn lock(&self) -> MutexGuard<'_, RegionState> {
        // The model's maps stay usable after a panic elsewhere; the region keeps serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The region's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether service `id` runs in the region.
    pub fn runs(&self, id: &ServiceId) -> bool {
        self.lock().runs(id)
    }

    /// How many services run in the region.
    pub fn services(&self) -> usize {
        self.lock().services()
    }

    /// Replaces every service: services not in `deployments` are removed; only the services
    /// whose deployment or registered endpoints differ are rendered again.
    pub fn replace_all(&self, deployments: Vec<RegionalDeployment>, endpoints: Vec<Endpoint>) {
        self.change(|state| state.replace_all(deployments, endpoints));
    }

    /// Sets the values of the secrets service `id` references, kept in memory only (none:
    /// forgets them); the assignments of its instances carry them to their agents.
    pub fn set_secrets(&self, id: &ServiceId, values: Vec<SecretValue>) {
        self.change(|state| state.set_secrets(id, values));
    }

    /// Replaces the secret values of every service (see [`Region::set_secrets`]).
    pub fn replace_secrets(&self, all: BTreeMap<ServiceId, Vec<SecretValue>>) {
        self.change(|state| state.replace_secrets(all));
    }

    /// Sets one service's regional deployment (`None`: it no longer runs here) and its
    /// endpoints registered in this region, and renders it again (and its instances'
    /// placement if its deployment changed).
    pub fn set_service(
        &self,
        id: ServiceId,
        deployment: Option<RegionalDeployment>,
        endpoints: Vec<Endpoint>,
    ) {
        self.change(|state| state.set_service(id, deployment, endpoints));
    }

    /// Records an agent's report (checked by the caller): its node is live, its instances have
    /// these states. Only the services whose instances it shows differently are rendered
    /// again; placement is redone when the nodes changed or an instance failed.
    pub fn report(&self, report: NodeReport, now: Instant) {
        self.traffic().node_report(&report, now);
        self.change(|state| state.report(report, now));
    }

    /// Records a gateway's report (checked by the caller): its figures count from the next
    /// window on.
    pub fn gateway_report(&self, report: GatewayReport, now: Instant) {
        self.traffic().gateway_report(report, now);
    }

    /// Ends the window of request figures that ends at `end` (Unix seconds, a multiple of
    /// [`meridian_model::TRAFFIC_STEP_SECONDS`]), and has the region report upward.
    pub fn close_traffic_window(&self, end: u64, now: Instant) {
        self.traffic().close(end, now);
        self.lock().report_due().notify_one();
    }

    /// The windows of request figures the global control plane has not acknowledged.
    pub fn pending_traffic(&self) -> Vec<TrafficWindow> {
        self.traffic().pending()
    }

    /// The global control plane has the windows up to the one starting at `through`.
    pub fn traffic_acknowledged(&self, through: u64) {
        self.traffic().acknowledged(through);
    }

    /// Where the agents and gateways that report serve `/metrics`.
    pub fn metrics_targets(&self) -> Vec<MetricsTarget> {
        self.traffic().targets()
    }

    fn traffic(&self) -> MutexGuard<'_, TrafficWindows> {
        self.traffic
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Called every second: forgets nodes whose agents stopped reporting (and places their
    /// instances elsewhere), and makes the first placement once agents had time to report.
    pub fn tick(&self, now: Instant) {
        self.change(|state| state.tick(now));
    }

    /// Removes the drained instances whose delay is over at `now` (their agents then stop
    /// them) and moves their rollouts on; returns when the next drained instance is due.
    pub fn drain(&self, now: Instant) -> Option<Instant> {
        self.change(|state| state.drain(now))
    }

    /// What is told whenever an instance starts draining (leaves the endpoints), so that
    /// [`Region::take_ack_waits`] and [`Region::drain`] are called again.
    pub fn drain_started(&self) -> Arc<Notify> {
        self.lock().drain_started()
    }

    /// The instances that started draining since the last call: run
    /// [`Region::wait_for_acks`] for each.
    pub fn take_ack_waits(&self) -> Vec<AckWait> {
        let waits = self.lock().take_ack_waits();
        waits
            .into_iter()
            .map(|(instance, since)| AckWait { instance, since })
            .collect()
    }

    /// Waits until the region's proxies acknowledged that `wait`'s instance left its
    /// service's endpoints, at most [`ACK_WAIT`] (counted when it gets there), then lets
    /// [`Region::drain`] remove its assignment after its drain delay. Returns whether every
    /// acknowledgement came.
    pub async fn wait_for_acks(&self, wait: &AckWait) -> bool {
        let started = tokio::time::Instant::now();
        let service = &wait.instance.0;
        let waited = drain::acknowledged(&self.publisher, service, wait.since);
        let acknowledged = tokio::time::timeout(ACK_WAIT, waited).await.is_ok();
        self.drain_metrics
            .waits
            .observe(started.elapsed().as_secs_f64());
        if !acknowledged {
            self.drain_metrics.timeouts.inc();
            tracing::warn!(instance = ?wait.instance, wait = ?ACK_WAIT,
                "some proxies did not acknowledge that a draining instance left the endpoints");
        }
        self.change(|state| state.drain_acknowledged(&wait.instance, Instant::now()));
        acknowledged
    }

    /// Takes what a person asked of service `id`'s rollout (pause, promote; `None`: nothing
    /// or resumed), as the global control plane says.
    pub fn set_rollout_control(&self, id: &ServiceId, control: Option<RolloutControl>) {
        self.change(|state| state.set_control(id, control));
    }

    /// Takes every region's summary, by region name (this region's own gives its coordinates):
    /// other regions' healthy instances become reachable from this region's node proxies, and
    /// services deployed only elsewhere get a mesh resource. Renders only the services whose
    /// view changed.
    pub fn set_region_summaries(&self, regions: &BTreeMap<String, RemoteRegion>) {
        self.change(|state| state.set_region_summaries(regions));
    }

    /// Takes what changed in the other regions since they were last taken; renders only the
    /// services whose view changed.
    pub fn update_other_regions(&self, changes: RemoteChanges) {
        self.change(|state| state.update_other_regions(changes));
    }

    /// Takes back what a disk copy holds (virtual IPs first, then the earlier deployments
    /// rollouts replace and the rollouts, then services and summaries).
    pub fn restore(&self, copy: DiskCopy) {
        self.change(|state| {
            state.restore_vips(copy.vips);
            state.restore_older(copy.older);
            state.restore_rollouts(copy.rollouts);
            for node in &copy.drained_nodes {
                state.drain_node(node, true);
            }
            state.replace_all(copy.deployments, copy.endpoints);
            state.set_region_summaries(&copy.regions);
        });
    }

    /// Drains node `node` (`true`): it takes no new placements, and each of its instances is
    /// replaced on another node (when one has room) and then drained, as in a rollout; or ends
    /// that (`false`). Draining a node the region does not know is an error; returns whether
    /// anything changed.
    pub fn drain_node(&self, node: &str, drained: bool) -> Result<bool, UnknownNode> {
        self.change(|state| {
            let known = state
                .fleet
                .node_list()
                .iter()
                .any(|(name, _, _)| *name == node);
            if drained && !known {
                return Err(UnknownNode(node.to_owned()));
            }
            Ok(state.drain_node(node, drained))
        })
    }

    /// The region's live nodes, by name, and the drained ones it no longer hears from.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        let state = self.lock();
        let drained = state.fleet.cordoned();
        let mut nodes: Vec<NodeStatus> = state
            .fleet
            .node_list()
            .into_iter()
            .map(|(name, capacity, instances)| {
                let (offer, asked) = state.fleet.room_of(name).unwrap_or_default();
                NodeStatus {
                    name: name.to_owned(),
                    live: true,
                    drained: drained.contains(name),
                    capacity,
                    instances,
                    cpu_millis: offer.cpu_millis,
                    cpu_millis_asked: asked.cpu_millis,
                    memory_bytes: offer.memory_bytes,
                    memory_bytes_asked: asked.memory_bytes,
                }
            })
            .collect();
        for name in drained {
            if !nodes.iter().any(|n| n.name == *name) {
                nodes.push(NodeStatus::gone(name.clone(), true));
            }
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes
    }

    /// What the region knows from the global control plane, for its disk copy.
    pub fn disk_copy(&self) -> DiskCopy {
        self.lock().disk_copy()
    }

    /// The region's report for the global control plane: nodes, capacity, and each service's
    /// placed and healthy instances, with the addresses of the healthy ones its agents run.
    pub fn report_upward(&self) -> RegionReport {
        self.lock().report_upward()
    }

    /// What is told whenever the region's report upward may have changed (an agent reported,
    /// a service or a node changed), so that news goes up at once.
    pub fn report_due(&self) -> Arc<Notify> {
        self.lock().report_due()
    }

    /// What is told whenever something the disk copy keeps changed in the region itself (a
    /// rollout started, failed or ended), so that the copy is written again.
    pub fn copy_due(&self) -> Arc<Notify> {
        self.lock().copy_due()
    }
}

/// Now, in milliseconds since the Unix epoch.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
