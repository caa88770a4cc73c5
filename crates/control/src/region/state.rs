//! What a region runs, as a model: its services, their endpoints, its nodes and placements,
//! other regions' summaries and the services' virtual IPs. Every change marks what it touched;
//! [`RegionState::take_work`] then hands out the inputs of exactly those resources, so that they
//! are rendered outside the state's lock and a change costs what it touched.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Notify;

use meridian_model::{
    Endpoint, EndpointHealth, RegionReport, RegionalDeployment, ServiceHealth, Strategy,
    VersionHealth,
};
use meridian_xds::meridian::{NodeReport, SecretValue, ServiceInstance};

use super::{GatewayListeners, ServiceId};
use crate::elsewhere::{OtherRegions, RemoteChanges, RemoteRegion};
use crate::fleet::{Desired, Fleet, InstanceKey, Moves};
use crate::rollout::progress::{Rollouts, SavedRollout};
use crate::rollout::Bounds;
use crate::vips::{SavedVip, Vips};

mod analysis;
mod autoscaling;
mod rollouts;

/// The region's model.
pub(super) struct RegionState {
    region: String,
    /// The installation's trust domain, when the region's proxies reach agent-run instances
    /// over mutual TLS.
    trust_domain: Option<String>,
    /// Where the region's gateway listens.
    gateway: GatewayListeners,
    deployments: BTreeMap<ServiceId, Arc<RegionalDeployment>>,
    /// Earlier deployments whose instances are still placed (a rollout replaces them), by
    /// service and version: their assignments carry the spec they run.
    older: BTreeMap<ServiceId, BTreeMap<u64, Arc<RegionalDeployment>>>,
    /// Endpoints registered through the global API, by service.
    registered: BTreeMap<ServiceId, Vec<Endpoint>>,
    /// Endpoints of the instances agents run, by service.
    reported: BTreeMap<ServiceId, Vec<Endpoint>>,
    /// The region's nodes and where instances are placed.
    pub(super) fleet: Fleet,
    /// Healthy instances of services in other regions, by priority (1 for the nearest region
    /// that runs the service, then 2, …).
    elsewhere: BTreeMap<ServiceId, Vec<ServiceInstance>>,
    /// Services deployed only in other regions, as the nearest of them runs them.
    remote: BTreeMap<ServiceId, RegionalDeployment>,
    /// The other regions, as their summaries and service entries say.
    others: OtherRegions,
    /// Told whenever the region's report upward may have changed.
    report_due: Arc<Notify>,
    /// Told whenever an instance starts draining: its delay ends before the next tick.
    drain_started: Arc<Notify>,
    /// Instances that started draining, with the work that takes them out of the endpoints,
    /// until [`RegionState::take_ack_waits`].
    ack_waits: Vec<(InstanceKey, u64)>,
    /// Each service's virtual IP.
    vips: Vips,
    /// Each service's last rollout.
    rollouts: Rollouts,
    /// The request figures of the services whose rollout is under analysis.
    analysed: BTreeMap<ServiceId, analysis::Analysed>,
    /// The services that scale on their load (`scale.targets`).
    autoscaled: autoscaling::Autoscaled,
    /// Told whenever something the disk copy keeps changed here (a rollout).
    copy_due: Arc<Notify>,
    /// The values of the secrets each service's environment references, as the global
    /// control plane last sent them: in memory only (never in the disk copy), handed to the
    /// agents with the assignments of the service's instances.
    secrets: BTreeMap<ServiceId, Vec<SecretValue>>,
    /// What changed since the last [`RegionState::take_work`].
    dirty: Dirty,
    /// The sequence number of the last work handed out.
    sequence: u64,
}

/// What changed and must be rendered again.
#[derive(Default)]
struct Dirty {
    services: BTreeSet<ServiceId>,
    assignments: BTreeSet<InstanceKey>,
    gateway_routes: bool,
}

/// The inputs of the resources a change touched, taken under the state's lock and rendered
/// after it. Works are numbered in the order of the changes they follow; a resource is
/// published only from a work newer than the one it was last published from.
pub(super) struct Work {
    /// Orders works: a higher number saw a later state.
    pub sequence: u64,
    /// Services to render again.
    pub services: Vec<ServiceWork>,
    /// Instances whose assignment changed: `None` when no longer placed.
    pub assignments: Vec<(InstanceKey, Option<AssignmentWork>)>,
    /// Every deployment, with the share of requests its canary gets if it is at a canary
    /// step, when the gateway's routes must be rendered again.
    pub gateway_routes: Option<Vec<(Arc<RegionalDeployment>, Option<u32>)>>,
}

/// One service's inputs.
pub(super) struct ServiceWork {
    /// The service.
    pub id: ServiceId,
    /// How it is rendered.
    pub shape: Shape,
}

/// How a service is rendered.
pub(super) enum Shape {
    /// It runs in the region.
    Local {
        /// Its deployment here.
        deployment: Arc<RegionalDeployment>,
        /// Its registered and reported endpoints (but a canary's).
        endpoints: Vec<Endpoint>,
        /// During a canary, the new version's endpoints, served from a cluster of their own.
        canary: Option<Vec<Endpoint>>,
        /// While the canary splits requests (its endpoints are then not among `endpoints`),
        /// the percent of them it gets.
        split: Option<u32>,
        /// The trust domain, when its instances are reached over mutual TLS.
        mesh: Option<String>,
        /// Its healthy instances elsewhere.
        elsewhere: Vec<ServiceInstance>,
        /// Its virtual IP.
        vip: Ipv4Addr,
    },
    /// It runs only in other regions.
    Remote {
        /// As the nearest of them runs it.
        deployment: Box<RegionalDeployment>,
        /// Its healthy instances there.
        elsewhere: Vec<ServiceInstance>,
        /// Its virtual IP.
        vip: Ipv4Addr,
    },
    /// The region no longer knows it: its resources are removed.
    Gone,
}

/// One placed instance's assignment inputs.
pub(super) struct AssignmentWork {
    /// The node that runs it.
    pub node: String,
    /// Its service's deployment.
    pub deployment: Arc<RegionalDeployment>,
    /// The values of the secrets its spec references (those the region has).
    pub secrets: Vec<SecretValue>,
}

impl RegionState {
    /// An empty state for `region`; see [`super::Region::new`].
    pub fn new(region: &str, gateway: GatewayListeners, trust_domain: Option<&str>) -> RegionState {
        RegionState {
            region: region.to_owned(),
            trust_domain: trust_domain.map(str::to_owned),
            gateway,
            deployments: BTreeMap::new(),
            older: BTreeMap::new(),
            registered: BTreeMap::new(),
            reported: BTreeMap::new(),
            fleet: Fleet::new(Instant::now() + crate::fleet::SETTLE),
            elsewhere: BTreeMap::new(),
            remote: BTreeMap::new(),
            others: OtherRegions::new(region),
            report_due: Arc::new(Notify::new()),
            drain_started: Arc::new(Notify::new()),
            ack_waits: Vec::new(),
            vips: Vips::default(),
            rollouts: Rollouts::default(),
            analysed: BTreeMap::new(),
            autoscaled: BTreeMap::new(),
            copy_due: Arc::new(Notify::new()),
            secrets: BTreeMap::new(),
            dirty: Dirty {
                gateway_routes: true,
                ..Dirty::default()
            },
            sequence: 0,
        }
    }

    /// Whether service `id` runs in the region.
    pub fn runs(&self, id: &ServiceId) -> bool {
        self.deployments.contains_key(id)
    }

    /// How many services run in the region.
    pub fn services(&self) -> usize {
        self.deployments.len()
    }

    /// Replaces everything: services not in `deployments` are removed. Only the services whose
    /// deployment or registered endpoints differ are rendered again.
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
            self.reconcile_instances(Instant::now());
        }
    }

    /// Records an agent's report: its node is live, its instances have these states. Placement
    /// is redone when the nodes changed or an instance failed; otherwise only the services whose
    /// instances the report shows differently are looked at again.
    pub fn report(&mut self, report: NodeReport, now: Instant) {
        let sampled = self.sample_traffic(&report);
        self.sample_load(&report, now);
        let reported = self.fleet.report(report, now);
        // A gate that fails turns the rollout back before anything else moves.
        self.gate_rollouts(&reported.services);
        let failed = self.gate_analysis(&sampled);
        let scaled = self.autoscale(now);
        if reported.reshaped {
            self.reconcile_instances(now);
        } else {
            // A rollout moves on as its instances get ready; autoscaling changes the count.
            let moved = reported.services.union(&failed).chain(&scaled).cloned();
            self.place_some(&moved.collect(), now);
        }
        let moving: BTreeSet<ServiceId> = reported.services.union(&sampled).cloned().collect();
        self.advance_canaries(&moving, now);
        self.settle_rollouts(&moving);
        self.refresh_reported(reported.services);
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
            self.reconcile_instances(now);
        } else if self.fleet.first_placement_due(now) {
            self.reconcile_instances(now);
        }
        let mut late = self.gate_deadlines();
        late.extend(self.autoscale(now));
        if !late.is_empty() {
            self.place_some(&late, now);
        }
        let canaries: BTreeSet<ServiceId> = self.rollouts.progressing().cloned().collect();
        self.advance_canaries(&canaries, now);
        self.prune_analysed();
        self.report_due.notify_one();
    }

    /// Removes the drained instances whose delay is over at `now` (their agents stop them),
    /// and moves their services' rollouts on; returns when the next drained instance is due.
    pub fn drain(&mut self, now: Instant) -> Option<Instant> {
        let due = self.fleet.drained_by(now);
        if !due.is_empty() {
            self.place_some(&due, now);
        }
        self.fleet.next_drained()
    }

    /// What is told whenever an instance starts draining.
    pub fn drain_started(&self) -> Arc<Notify> {
        self.drain_started.clone()
    }

    /// What is told whenever something the disk copy keeps changed in the region itself.
    pub fn copy_due(&self) -> Arc<Notify> {
        self.copy_due.clone()
    }

    /// The instances that started draining since the last call, each with the work that
    /// takes it out of its service's endpoints.
    pub fn take_ack_waits(&mut self) -> Vec<(InstanceKey, u64)> {
        std::mem::take(&mut self.ack_waits)
    }

    /// The proxies acknowledged at `now` that draining instance `key` left the endpoints (or
    /// the wait for them ended): its assignment goes after its service's drain delay.
    pub fn drain_acknowledged(&mut self, key: &InstanceKey, now: Instant) {
        let delay = self
            .deployments
            .get(&key.0)
            .map_or(std::time::Duration::ZERO, |d| d.spec.deploy.drain_delay.0);
        self.fleet.acknowledged(key, now + delay);
    }

    /// What the region knows from the global control plane, and its rollouts, for its disk
    /// copy.
    pub fn disk_copy(&self) -> crate::disk_copy::DiskCopy {
        crate::disk_copy::DiskCopy {
            deployments: self.deployments.values().map(|d| (**d).clone()).collect(),
            endpoints: self.registered.values().flatten().cloned().collect(),
            regions: self.others.summaries(),
            vips: self.vips.saved(),
            older: self
                .older
                .values()
                .flat_map(|versions| versions.values().map(|d| (**d).clone()))
                .collect(),
            rollouts: self.rollouts.saved(),
            drained_nodes: self.fleet.cordoned().iter().cloned().collect(),
        }
    }

    /// Takes back the services' rollouts from a disk copy; call before the services.
    pub fn restore_rollouts(&mut self, saved: Vec<SavedRollout>) {
        self.rollouts.restore(saved);
    }

    /// Drains node `node` (`true`) or ends that (see [`Fleet::cordon`]), and places every
    /// service's instances again; returns whether that changed anything.
    pub fn drain_node(&mut self, node: &str, drained: bool) -> bool {
        let changed = self.fleet.cordon(node, drained);
        if changed {
            self.reconcile_instances(Instant::now());
            self.report_due.notify_one();
        }
        changed
    }

    /// Takes back the earlier deployments rollouts replace, from a disk copy; call before the
    /// services.
    pub fn restore_older(&mut self, older: Vec<RegionalDeployment>) {
        for deployment in older {
            let versions = self.older.entry(id_of(&deployment)).or_default();
            versions.insert(deployment.version, Arc::new(deployment));
        }
    }

    /// Takes back the services' virtual IPs from a disk copy; call before anything else.
    pub fn restore_vips(&mut self, saved: Vec<SavedVip>) {
        self.vips.restore(saved);
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
                    let by_version = self.fleet.summary(id);
                    let (placed, healthy) = by_version
                        .values()
                        .fold((0, 0), |(p, h), (placed, healthy)| {
                            (p + placed, h + healthy)
                        });
                    // Only a rollout's report lists its versions (a rollback runs the
                    // previous one).
                    let target = self.rollouts.target(id, deployment.version);
                    let rolling = by_version.keys().any(|v| *v != target);
                    let versions = by_version
                        .iter()
                        .filter(|_| rolling)
                        .map(|(version, (placed, healthy))| VersionHealth {
                            version: *version,
                            placed: count(*placed),
                            healthy: count(*healthy),
                        })
                        .collect();
                    ServiceHealth {
                        org: id.0.clone(),
                        app: id.1.clone(),
                        service: id.2.clone(),
                        version: deployment.version,
                        placed: count(placed),
                        healthy: count(healthy),
                        versions,
                        rollout: self
                            .rollouts
                            .get(id)
                            .filter(|r| r.version == deployment.version)
                            .cloned(),
                        addresses: self
                            .reported
                            .get(id)
                            .into_iter()
                            .flatten()
                            .filter(|e| e.health == EndpointHealth::Healthy)
                            .map(|e| e.address.clone())
                            .collect(),
                        problems: self.problems(id),
                        instances: self.instance_states(id),
                        autoscale: self.autoscale_status(id),
                        asleep: self.asleep(id),
                        wake_ms: self.wake_ms(id),
                    }
                })
                .collect(),
        }
    }

    /// Whether `id` has instances in service and all of them sleep.
    fn asleep(&self, id: &ServiceId) -> bool {
        let mut reports = self.fleet.reports_of(id).peekable();
        reports.peek().is_some()
            && reports.all(|(_, _, report)| {
                report.is_some_and(|r| {
                    [
                        meridian_model::SLEEPING_LIGHT,
                        meridian_model::SLEEPING_DEEP,
                    ]
                    .contains(&r.state.as_str())
                })
            })
    }

    /// The longest of `id`'s instances' last wakes, in milliseconds (rounded up; 0: none).
    fn wake_ms(&self, id: &ServiceId) -> u32 {
        let micros = self
            .fleet
            .reports_of(id)
            .filter_map(|(_, _, report)| report.map(|r| r.wake_micros))
            .max()
            .unwrap_or(0);
        u32::try_from(micros.div_ceil(1000)).unwrap_or(u32::MAX)
    }

    /// `id`'s instances in service by state: as their agents last reported them, `pending`
    /// while none did.
    fn instance_states(&self, id: &ServiceId) -> BTreeMap<String, u32> {
        let mut states = BTreeMap::new();
        for (_, _, report) in self.fleet.reports_of(id) {
            let state = report.map_or("pending", |r| r.state.as_str());
            if ServiceHealth::STATES.contains(&state) {
                *states.entry(state.to_owned()).or_insert(0u32) += 1;
            }
        }
        states
    }

    /// What keeps `id`'s instances from running as wanted, in words: those that fit on no
    /// node and why, then those unhealthy, failed or failing to pull their image with their
    /// agents' reasons ([`ServiceHealth::is_problem`]); bounded as reports are
    /// ([`ServiceHealth::PROBLEMS`]).
    fn problems(&self, id: &ServiceId) -> Vec<String> {
        let unplaced = self.fleet.unplaced(id).map(|(count, reason)| {
            let plural = if *count == 1 { "" } else { "s" };
            format!("{count} instance{plural} not placed: {reason}")
        });
        let unwell = self
            .fleet
            .reports_of(id)
            .filter_map(|(instance, _, report)| {
                let report = report.filter(|r| ServiceHealth::is_problem(&r.state, &r.detail))?;
                Some(format!("{instance} {}: {}", report.state, report.detail))
            });
        unplaced
            .into_iter()
            .chain(unwell)
            .take(ServiceHealth::PROBLEMS)
            .map(|mut problem| {
                if problem.len() > ServiceHealth::PROBLEM_LEN {
                    let mut end = ServiceHealth::PROBLEM_LEN - 3;
                    while !problem.is_char_boundary(end) {
                        end -= 1;
                    }
                    problem.truncate(end);
                    problem.push_str("...");
                }
                problem
            })
            .collect()
    }

    /// Places every service's instances; the instances whose placement changed get their
    /// assignments and their services' endpoints looked at again.
    fn reconcile_instances(&mut self, now: Instant) {
        let desired = self
            .deployments
            .iter()
            .map(|(id, d)| (id.clone(), self.desired(id, d)))
            .collect();
        let older = &self.older;
        let known =
            |id: &ServiceId, version: u64| older.get(id).is_some_and(|o| o.contains_key(&version));
        let moves = self.fleet.place(&desired, known, now);
        self.moved(moves);
    }

    /// Places the instances of `services` only: the work is theirs, whatever the region's size.
    fn place_some(&mut self, services: &BTreeSet<ServiceId>, now: Instant) {
        let desired = services
            .iter()
            .filter_map(|id| Some((id.clone(), self.desired(id, self.deployments.get(id)?))))
            .collect();
        let moves = self.fleet.place_some(&desired, services, now);
        self.moved(moves);
    }

    /// Marks what a placement changed, and forgets the earlier deployments no instance runs.
    fn moved(&mut self, moves: Moves) {
        for id in &moves.services {
            if let Some(older) = self.older.get_mut(id) {
                // And the one a rollout may return to.
                let mut placed = self.fleet.versions_of(id);
                placed.extend(self.rollouts.keeps(id));
                older.retain(|version, _| placed.contains(version));
                if older.is_empty() {
                    self.older.remove(id);
                }
            }
        }
        if !moves.drained.is_empty() {
            // Rendered again even if its endpoints look the same, so that the drain waits
            // for what the proxies hold after the work that follows.
            for key in &moves.drained {
                self.dirty.services.insert(key.0.clone());
                self.ack_waits.push((key.clone(), self.sequence + 1));
            }
            self.drain_started.notify_one();
        }
        self.dirty.assignments.extend(moves.assignments);
        self.settle_rollouts(&moves.services);
        self.refresh_reported(moves.services);
    }

    /// Looks again at the endpoints of `services` and marks those whose endpoints changed.
    fn refresh_reported(&mut self, services: BTreeSet<ServiceId>) {
        for id in services {
            let endpoints = self.fleet.endpoints(&id, &self.region);
            if self.reported.get(&id).map_or(&[][..], Vec::as_slice) == endpoints.as_slice() {
                continue;
            }
            if endpoints.is_empty() {
                self.reported.remove(&id);
            } else {
                self.reported.insert(id.clone(), endpoints);
            }
            self.dirty.services.insert(id);
        }
    }

    /// Takes every region's summary, by region name (this region's own gives its coordinates):
    /// other regions' healthy instances of each service become reachable from this region's
    /// node proxies, the nearest region first, and services deployed only elsewhere get a
    /// mesh resource of their own. Marks only the services whose view changed.
    pub fn set_region_summaries(&mut self, regions: &BTreeMap<String, RemoteRegion>) {
        self.others = OtherRegions::from_summaries(&self.region, regions);
        for id in self.viewed_elsewhere() {
            self.see_elsewhere(id);
        }
    }

    /// Takes what changed in the other regions ([`set_region_summaries`] for only the
    /// services whose entries changed, or for all of them when the regions' order by distance
    /// changed).
    ///
    /// [`set_region_summaries`]: RegionState::set_region_summaries
    pub fn update_other_regions(&mut self, changes: RemoteChanges) {
        let reordered = self.others.set_coordinates(changes.coordinates);
        let mut ids = BTreeSet::new();
        for (region, service) in changes.put {
            ids.insert(service.id.clone());
            self.others.put(&region, service);
        }
        for (region, id) in changes.removed {
            self.others.remove(&region, &id);
            ids.insert(id);
        }
        if reordered {
            ids.extend(self.viewed_elsewhere());
        }
        for id in ids {
            self.see_elsewhere(id);
        }
    }

    /// Every service that has, had or may have a view elsewhere: those held with one, and
    /// those with an entry in some region.
    fn viewed_elsewhere(&self) -> BTreeSet<ServiceId> {
        let mut ids: BTreeSet<ServiceId> = self.elsewhere.keys().cloned().collect();
        ids.extend(self.remote.keys().cloned());
        ids.extend(self.others.ids().cloned());
        ids
    }

    /// Takes what the other regions say of service `id`; marks it when its view changed.
    fn see_elsewhere(&mut self, id: ServiceId) {
        let (instances, deployment) = self.others.view(&id);
        let held = self.elsewhere.get(&id).map_or(&[][..], Vec::as_slice);
        if held == instances.as_slice() && self.remote.get(&id) == deployment.as_ref() {
            return;
        }
        if instances.is_empty() {
            self.elsewhere.remove(&id);
        } else {
            self.elsewhere.insert(id.clone(), instances);
        }
        match deployment {
            Some(deployment) => self.remote.insert(id.clone(), deployment),
            None => self.remote.remove(&id),
        };
        self.dirty.services.insert(id);
    }

    /// Sets the values of the secrets service `id` references (none: forgets them); when they
    /// differ from those held, the assignments of its instances are encoded again.
    ///
    /// The global control plane sends the values the current version references; a value
    /// held at the version that a spec held here (the current one, or an older one still
    /// running during a rollout) names, and that `values` lacks, is kept, so that an older
    /// version's instances keep what they run with (e.g. a registry credential the new version
    /// dropped) until the service is gone.
    pub fn set_secrets(&mut self, id: &ServiceId, mut values: Vec<SecretValue>) {
        let specs = || {
            let older = self.older.get(id).into_iter().flat_map(BTreeMap::values);
            self.deployments.get(id).into_iter().chain(older)
        };
        let still_used = |held: &&SecretValue| {
            !values.iter().any(|v| v.name == held.name)
                && specs().any(|d| d.spec.secrets.get(&held.name) == Some(&held.version))
        };
        let kept: Vec<SecretValue> = self
            .secrets
            .get(id)
            .into_iter()
            .flatten()
            .filter(still_used)
            .cloned()
            .collect();
        if !kept.is_empty() {
            values.extend(kept);
            values.sort_by(|a, b| a.name.cmp(&b.name));
        }
        if self.secrets.get(id).map_or(&[][..], Vec::as_slice) == values.as_slice() {
            return;
        }
        if values.is_empty() {
            self.secrets.remove(id);
        } else {
            self.secrets.insert(id.clone(), values);
        }
        let placed: Vec<InstanceKey> = self.fleet.placements_of(id).cloned().collect();
        self.dirty.assignments.extend(placed);
    }

    /// Replaces the secret values of every service (see [`RegionState::set_secrets`]).
    pub fn replace_secrets(&mut self, mut all: BTreeMap<ServiceId, Vec<SecretValue>>) {
        let mut ids: BTreeSet<ServiceId> = self.secrets.keys().cloned().collect();
        ids.extend(all.keys().cloned());
        for id in ids {
            let values = all.remove(&id).unwrap_or_default();
            self.set_secrets(&id, values);
        }
    }

    /// Sets one service's regional deployment (`None`: it no longer runs here) and its endpoints
    /// registered in this region (and places its instances again if its spec changed).
    pub fn set_service(
        &mut self,
        id: ServiceId,
        deployment: Option<RegionalDeployment>,
        endpoints: Vec<Endpoint>,
    ) {
        if self.update_service(id, deployment, endpoints) {
            self.reconcile_instances(Instant::now());
        }
    }

    /// Stores one service and marks what changed; returns whether its deployment changed.
    fn update_service(
        &mut self,
        id: ServiceId,
        deployment: Option<RegionalDeployment>,
        endpoints: Vec<Endpoint>,
    ) -> bool {
        let endpoints: Vec<Endpoint> = endpoints
            .into_iter()
            .filter(|e| e.region == self.region && deployment.is_some())
            .collect();
        let spec_changed = self.deployments.get(&id).map(|d| &**d) != deployment.as_ref();
        let endpoints_changed =
            self.registered.get(&id).map_or(&[][..], Vec::as_slice) != endpoints.as_slice();
        if !spec_changed && !endpoints_changed {
            return false;
        }
        self.report_due.notify_one();
        self.dirty.services.insert(id.clone());
        if endpoints.is_empty() {
            self.registered.remove(&id);
        } else {
            self.registered.insert(id.clone(), endpoints);
        }
        if spec_changed {
            let before = match deployment {
                Some(deployment) => self.deployments.insert(id.clone(), Arc::new(deployment)),
                None => {
                    self.older.remove(&id);
                    self.rollouts.remove(&id);
                    self.secrets.remove(&id);
                    self.deployments.remove(&id)
                }
            };
            self.take_over(&id, before);
            self.dirty.gateway_routes = true;
        }
        spec_changed
    }

    /// Service `id`'s new deployment takes over from `before`: instances of a version that
    /// runs the same as the new one run on as the new version (their assignments carry it);
    /// `before` is kept, for the instances that run it until a rollout replaces them.
    fn take_over(&mut self, id: &ServiceId, before: Option<Arc<RegionalDeployment>>) {
        let Some(now) = self.deployments.get(id).cloned() else {
            // Gone: its assignments are removed by the placement that follows.
            return;
        };
        let older = self.older.entry(id.clone()).or_default();
        let before = before.filter(|b| b.version != now.version);
        // What the region serves steadily: a rollout goes from there.
        let stable = before.as_ref().map(|b| {
            self.rollouts
                .stable(id, b.version, |v| older.contains_key(&v))
        });
        if let Some(before) = before {
            older.insert(before.version, before);
        }
        let mut changed: Vec<InstanceKey> = Vec::new();
        older.retain(|version, deployment| {
            if !deployment.spec.runs_like(&now.spec) {
                return true;
            }
            changed.extend(self.fleet.relabel(id, *version, now.version));
            self.rollouts.relabel(id, *version, now.version);
            false
        });
        // Instances already run the new version (a return to a set still kept): it takes
        // over at once, without canary steps.
        let returning = !changed.is_empty();
        // A rollout under way of what now runs goes on; otherwise a version that changes
        // what instances run rolls out from the stable one.
        let going_on = self
            .rollouts
            .get(id)
            .is_some_and(|r| r.version == now.version && !r.phase.failed());
        if let Some(stable) = stable.filter(|s| older.contains_key(s) && !going_on) {
            let deploy = &now.spec.deploy;
            let versions = (stable, now.version);
            let (strategy, canary) = match deploy.strategy {
                Strategy::Canary if returning => (Strategy::BlueGreen, Vec::new()),
                strategy => (strategy, deploy.canary_weights()),
            };
            let now_ms = rollouts::unix_ms();
            self.rollouts.start(id, versions, strategy, &canary, now_ms);
            self.copy_due.notify_one();
        }
        if older.is_empty() {
            self.older.remove(id);
        }
        // Instances of the same version (restored, or adopted) take its spec too.
        changed.extend(
            self.fleet
                .placements_of(id)
                .filter(|key| {
                    self.fleet
                        .node_of(key)
                        .is_some_and(|(_, v)| v == now.version)
                })
                .cloned(),
        );
        self.dirty.assignments.extend(changed);
    }

    /// The inputs of everything marked since the last call, numbered after the last work.
    pub fn take_work(&mut self) -> Work {
        let dirty = std::mem::take(&mut self.dirty);
        self.sequence += 1;
        let services = dirty
            .services
            .into_iter()
            .map(|id| {
                let shape = self.shape(&id);
                if matches!(shape, Shape::Gone) {
                    self.vips.release(&id);
                }
                ServiceWork { id, shape }
            })
            .collect();
        let assignments = dirty
            .assignments
            .into_iter()
            .map(|key| {
                let work = self.fleet.node_of(&key).and_then(|(node, version)| {
                    let current = self.deployments.get(&key.0)?;
                    // An older version's instances keep the spec they run.
                    let deployment = self
                        .older
                        .get(&key.0)
                        .and_then(|older| older.get(&version))
                        .unwrap_or(current);
                    let wanted: BTreeSet<&str> = deployment.spec.secret_names().collect();
                    let secrets = self
                        .secrets
                        .get(&key.0)
                        .into_iter()
                        .flatten()
                        .filter(|s| wanted.contains(s.name.as_str()))
                        .cloned()
                        .collect();
                    Some(AssignmentWork {
                        node: node.to_owned(),
                        deployment: deployment.clone(),
                        secrets,
                    })
                });
                (key, work)
            })
            .collect();
        let gateway_routes = dirty.gateway_routes.then(|| {
            let split = |(id, d): (&ServiceId, &Arc<RegionalDeployment>)| {
                (d.clone(), self.canary_split(id, d.version))
            };
            self.deployments.iter().map(split).collect()
        });
        Work {
            sequence: self.sequence,
            services,
            assignments,
            gateway_routes,
        }
    }

    /// How service `id` is rendered now.
    fn shape(&mut self, id: &ServiceId) -> Shape {
        let elsewhere = self.elsewhere.get(id).cloned().unwrap_or_default();
        if let Some(deployment) = self.deployments.get(id) {
            let registered = self.registered.get(id);
            let mut endpoints: Vec<Endpoint> = registered
                .into_iter()
                .chain(self.reported.get(id))
                .flatten()
                .cloned()
                .collect();
            // A canary's new set has a cluster of its own; while the proxies split requests,
            // the service's cluster has the previous version's instances only.
            let mut split = None;
            let canary = self
                .rollouts
                .canary_set(id, deployment.version)
                .map(|version| {
                    let new: BTreeSet<&str> = self
                        .fleet
                        .reports_of(id)
                        .filter(|(_, v, _)| *v == version)
                        .map(|(instance, _, _)| instance)
                        .collect();
                    let is_new = |e: &Endpoint| new.contains(e.id.as_str());
                    let canary: Vec<Endpoint> =
                        endpoints.iter().filter(|e| is_new(e)).cloned().collect();
                    split = self.rollouts.canary_weight(id, version);
                    if split.is_some() {
                        endpoints.retain(|e| !is_new(e));
                    }
                    canary
                });
            // Instances run by agents are reached on their mesh ports, unless endpoints
            // registered through the API (plaintext) share the service.
            let agent_run = registered.is_none_or(Vec::is_empty);
            return Shape::Local {
                deployment: deployment.clone(),
                endpoints,
                canary,
                split,
                mesh: self.trust_domain.clone().filter(|_| agent_run),
                elsewhere,
                vip: self.vips.of(id),
            };
        }
        match self.remote.get(id) {
            Some(deployment) => Shape::Remote {
                deployment: Box::new(deployment.clone()),
                elsewhere,
                vip: self.vips.of(id),
            },
            None => Shape::Gone,
        }
    }
}

impl RegionState {
    /// The share of requests service `id`'s canary of `version` gets, while the proxies
    /// split them.
    fn canary_split(&self, id: &ServiceId, version: u64) -> Option<u32> {
        self.rollouts.canary_weight(id, version)
    }

    /// What the region wants of service `id`'s instances under `deployment`: its version's,
    /// or the previous version's when its rollout failed.
    pub(super) fn desired(&self, id: &ServiceId, deployment: &RegionalDeployment) -> Desired {
        let scale = self
            .autoscaled_count(id)
            .unwrap_or(deployment.spec.scale.fewest_placed());
        let target = self.rollouts.target(id, deployment.version);
        let mut want = desired(deployment, target, scale);
        want.paused = self.rollouts.paused(id, deployment.version);
        // A canary switches as blue-green at its last step, or to return.
        if want.strategy == Strategy::Canary && !self.rollouts.holds(id, deployment.version) {
            want.strategy = Strategy::BlueGreen;
        }
        want
    }
}

/// What the region wants of a service's instances under `deployment`, running `version`:
/// `scale` of them (`scale.min`, or what autoscaling wants).
fn desired(deployment: &RegionalDeployment, version: u64, scale: u32) -> Desired {
    let spec = &deployment.spec;
    let (surge, unavailable) = spec.deploy.bounds(scale);
    Desired {
        version,
        bounds: Bounds {
            scale,
            surge,
            unavailable,
        },
        drain_delay: super::drain::ACK_WAIT + spec.deploy.drain_delay.0,
        strategy: spec.deploy.strategy,
        keep_previous: spec.deploy.keep_previous(),
        paused: false,
        asks: crate::room::Amounts::asked(&spec.resources),
    }
}

fn id_of(deployment: &RegionalDeployment) -> ServiceId {
    (
        deployment.org.clone(),
        deployment.app.clone(),
        deployment.service.clone(),
    )
}
