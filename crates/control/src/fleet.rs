//! The region's nodes and the instances placed on them: nodes are known from their agents'
//! reports and forgotten when the reports stop; instances are placed across live nodes (spread,
//! within each node's capacity), stay where they are while they can, and are placed anew when
//! their node is gone or they failed past their restart limit.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use meridian_model::{Endpoint, EndpointHealth};
use meridian_xds::meridian::{InstanceReport, NodeReport};

use meridian_model::Strategy;

use crate::region::ServiceId;
use crate::rollout::{Bounds, Member, Step};
use crate::room::{self, Amounts};

/// A node whose agent has not reported for this long is gone; its instances are placed anew.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// One placed instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The service it is an instance of.
    pub service: ServiceId,
    /// Its id, unique within the service: `<service>-<n>`.
    pub instance: String,
    /// The node that runs it.
    pub node: String,
    /// The deployment version it runs.
    pub version: u64,
    /// Whether it is leaving service (out of the endpoints, stopped soon).
    pub draining: bool,
}

/// An instance: its service and its id within the service.
pub type InstanceKey = (ServiceId, String);

#[derive(Debug)]
struct Node {
    capacity: u32,
    /// The CPU and memory it offers its instances (0: not said, not counted).
    offer: Amounts,
    last_seen: Instant,
    /// The node's last report of each instance, by service and instance id (instance ids are
    /// unique within a service only: two orgs may both run a `web-0`).
    instances: BTreeMap<InstanceKey, InstanceReport>,
}

/// What is placed on a node.
#[derive(Debug, Clone, Copy, Default)]
struct Load {
    /// Instances of the service being placed.
    of_service: u32,
    /// Instances.
    all: u32,
    /// What they ask of it.
    asked: Amounts,
}

/// What one agent's report changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reported {
    /// The set of live nodes or their capacities changed, or an instance failed: placement
    /// must be redone.
    pub reshaped: bool,
    /// The services whose instances on the node were reported differently than before (new,
    /// gone, or with another state or address): only their endpoints may have changed.
    pub services: BTreeSet<ServiceId>,
}

/// How long a new control plane waits for agents to report before it places instances: the
/// instances they already run are adopted where they are, and new ones spread over the nodes
/// that reported.
pub const SETTLE: Duration = Duration::from_secs(2);

/// What a region wants of one service's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desired {
    /// The version new instances run.
    pub version: u64,
    /// How many, and how far a rollout may go above and below that.
    pub bounds: Bounds,
    /// How long at most an instance leaving service keeps its assignment after it left the
    /// endpoints (sooner once the proxies acknowledged that: [`Fleet::acknowledged`]).
    pub drain_delay: Duration,
    /// How the instances of another version are replaced.
    pub strategy: Strategy,
    /// How long an instance of another version keeps running after it left service, if
    /// longer than `drain_delay` (a blue-green deploy keeps the previous set a while).
    pub keep_previous: Duration,
    /// Whether its rollout is paused: no instance leaves service, none starts but to make
    /// up the scale.
    pub paused: bool,
    /// What each new instance asks of its node (its definition's `resources`).
    pub asks: Amounts,
}

/// What a placement changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Moves {
    /// Instances placed, moved or removed: their assignments change.
    pub assignments: BTreeSet<InstanceKey>,
    /// Services whose instances in service changed (placed, removed, or draining): their
    /// endpoints may have changed.
    pub services: BTreeSet<ServiceId>,
    /// Instances that started draining (their services are in `services`).
    pub drained: BTreeSet<InstanceKey>,
}

impl Moves {
    /// Fills `services` from the assignments changed and the instances drained.
    fn finish(mut self) -> Moves {
        self.services = self.assignments.iter().map(|(s, _)| s.clone()).collect();
        self.services
            .extend(self.drained.iter().map(|(service, _)| service.clone()));
        self
    }
}

/// Where an instance is placed and what it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placed {
    node: String,
    /// The deployment version it runs.
    version: u64,
    /// Set once it leaves service: it is out of the endpoints, and removed at that time.
    draining: Option<Instant>,
    /// Not removed before this, whatever the proxies acknowledge (a blue-green or canary
    /// deploy keeps the previous set running a while).
    kept_until: Option<Instant>,
    /// What it asks of its node (its version's `resources` when it was placed).
    asks: Amounts,
}

/// The region's nodes and placements.
#[derive(Debug)]
pub struct Fleet {
    nodes: BTreeMap<String, Node>,
    /// By (service, instance id).
    placements: BTreeMap<(ServiceId, String), Placed>,
    /// The draining instances by the end of their delay (an entry whose instance is no longer
    /// placed, or no longer with that delay, is stale and skipped).
    draining: BTreeSet<(Instant, InstanceKey)>,
    /// Nodes being drained (`meridian node drain`): no new placements; their instances are
    /// replaced elsewhere as a rollout replaces an old version's.
    cordoned: BTreeSet<String>,
    /// No placement before this; reported instances are adopted until the first placement.
    settle_until: Instant,
    placed_once: bool,
    /// The services with instances that fit on no node: how many, and why.
    unplaced: BTreeMap<ServiceId, (u32, String)>,
}

impl Fleet {
    /// An empty fleet that places nothing before `settle_until`.
    pub fn new(settle_until: Instant) -> Fleet {
        Fleet {
            nodes: BTreeMap::new(),
            placements: BTreeMap::new(),
            draining: BTreeSet::new(),
            cordoned: BTreeSet::new(),
            settle_until,
            placed_once: false,
            unplaced: BTreeMap::new(),
        }
    }

    /// Whether the first placement is due (the settling time is over and none was made).
    pub fn first_placement_due(&self, now: Instant) -> bool {
        !self.placed_once && now >= self.settle_until
    }

    /// Records `report` from node `report.node` at `now` and says what it changed. The work is
    /// proportional to the report, whatever the size of the fleet.
    pub fn report(&mut self, report: NodeReport, now: Instant) -> Reported {
        let offer = Amounts {
            cpu_millis: report.cpu_millis,
            memory_bytes: report.memory_bytes,
        };
        let instances: BTreeMap<InstanceKey, InstanceReport> = report
            .instances
            .into_iter()
            .map(|i| (instance_key(&i), i))
            .collect();
        let before = self.nodes.get(&report.node);
        let mut reported = Reported {
            reshaped: before.is_none_or(|b| b.capacity != report.capacity || b.offer != offer),
            services: BTreeSet::new(),
        };
        let empty = BTreeMap::new();
        let old = before.map_or(&empty, |b| &b.instances);
        for (key, instance) in &instances {
            let previous = old.get(key);
            if previous.is_none_or(|p| changed(p, instance)) {
                reported.services.insert(key.0.clone());
            }
            if let Some(previous) = previous {
                log_sleep(&report.node, key, &previous.state, &instance.state);
            }
            reported.reshaped |=
                instance.state == "failed" && previous.is_none_or(|p| p.state != "failed");
        }
        for key in old.keys().filter(|key| !instances.contains_key(*key)) {
            reported.services.insert(key.0.clone());
        }
        let node = Node {
            capacity: report.capacity,
            offer,
            last_seen: now,
            instances,
        };
        self.nodes.insert(report.node, node);
        reported
    }

    /// Forgets the nodes not seen since `now - NODE_TIMEOUT`; returns their names.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let gone: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| now.duration_since(n.last_seen) > NODE_TIMEOUT)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &gone {
            self.nodes.remove(name);
        }
        gone
    }

    /// How many nodes are live.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Drains node `node` (`true`: it takes no new placements, and its instances are replaced
    /// elsewhere, each leaving once its replacement is ready) or ends that; returns whether
    /// that changed anything. Placement must be redone.
    pub fn cordon(&mut self, node: &str, cordoned: bool) -> bool {
        if cordoned {
            self.cordoned.insert(node.to_owned())
        } else {
            self.cordoned.remove(node)
        }
    }

    /// The nodes being drained.
    pub fn cordoned(&self) -> &BTreeSet<String> {
        &self.cordoned
    }

    /// Every live node: its name, capacity and how many instances are placed there.
    pub fn node_list(&self) -> Vec<(&str, u32, usize)> {
        self.nodes
            .iter()
            .map(|(name, node)| {
                let placed = self.placements.values().filter(|p| p.node == *name).count();
                (name.as_str(), node.capacity, placed)
            })
            .collect()
    }

    /// What live node `node` offers its instances and what those placed there ask of it.
    pub fn room_of(&self, node: &str) -> Option<(Amounts, Amounts)> {
        let offer = self.nodes.get(node)?.offer;
        let asked = self
            .load(None)
            .get(node)
            .map(|l| l.asked)
            .unwrap_or_default();
        Some((offer, asked))
    }

    /// Whether the first placement was made (until then, reported instances wait to be
    /// adopted).
    pub fn placed_once(&self) -> bool {
        self.placed_once
    }

    /// How many instances of `service` the live nodes report running (neither failed nor
    /// stopped), placed or not.
    pub fn running_reported(&self, service: &ServiceId) -> usize {
        self.nodes
            .values()
            .flat_map(|node| &node.instances)
            .filter(|(key, report)| {
                key.0 == *service && !matches!(report.state.as_str(), "failed" | "stopped")
            })
            .count()
    }

    /// How many instances the live nodes may run together.
    pub fn capacity(&self) -> u32 {
        self.nodes.values().map(|n| n.capacity).sum()
    }

    /// Places the instances of every service in `desired` (see [`Fleet::place_service`]) and
    /// removes those of services no longer desired. Nothing is placed before the settling time
    /// is over (or a placement was made); the first placement adopts the instances agents
    /// already run (after a restart of the control plane), as the version they say they run
    /// when `known` says the region knows that earlier version of their service, else as the
    /// desired one. Returns what changed.
    pub fn place(
        &mut self,
        desired: &BTreeMap<ServiceId, Desired>,
        known: impl Fn(&ServiceId, u64) -> bool,
        now: Instant,
    ) -> Moves {
        let mut moves = Moves::default();
        if !self.placed_once && now < self.settle_until {
            return moves;
        }
        if !self.placed_once {
            self.placed_once = true;
            moves.assignments = self.adopt(desired, known);
        }
        let gone: Vec<InstanceKey> = self
            .placements
            .keys()
            .filter(|key| !desired.contains_key(&key.0))
            .cloned()
            .collect();
        for key in gone {
            self.placements.remove(&key);
            moves.assignments.insert(key);
        }
        for (service, want) in desired {
            self.place_service(service, want, now, &mut moves);
        }
        moves.finish()
    }

    /// Places the instances of `services` only (each as `desired` says), after their agents
    /// reported: a rollout moves on as its new instances get ready. Nothing before the first
    /// placement.
    pub fn place_some(
        &mut self,
        desired: &BTreeMap<ServiceId, Desired>,
        services: &BTreeSet<ServiceId>,
        now: Instant,
    ) -> Moves {
        let mut moves = Moves::default();
        if !self.placed_once {
            return moves;
        }
        for service in services {
            if let Some(want) = desired.get(service) {
                self.place_service(service, want, now, &mut moves);
            }
        }
        moves.finish()
    }

    /// One service: instances on nodes that are gone or that failed there are removed (a
    /// replacement goes to another node if it can); drained instances whose delay is over are
    /// removed; then a rolling step ([`crate::rollout::step`]) says which instances in service
    /// start draining and how many new ones of the desired version are placed, on the live
    /// node with the fewest instances of the service, then the fewest instances, that has room
    /// (instances that find no room wait for the next placement). New instances get numbers
    /// not in use, so that they start beside the old ones.
    fn place_service(
        &mut self,
        service: &ServiceId,
        want: &Desired,
        now: Instant,
        moves: &mut Moves,
    ) {
        let mut avoid = BTreeSet::new();
        let mut removed = Vec::new();
        for (key, placed) in self.placed(service) {
            let report = self.report_of(key, &placed.node);
            let failed = report.is_some_and(|r| r.state == "failed");
            if failed {
                avoid.insert(placed.node.clone());
            }
            let drained = placed.draining.is_some_and(|until| until <= now);
            if failed || drained || !self.nodes.contains_key(&placed.node) {
                removed.push(key.clone());
            }
        }
        for key in removed {
            self.placements.remove(&key);
            moves.assignments.insert(key);
        }
        self.reinstate_kept(service, want.version, now, moves);

        let members: Vec<Member<'_>> = self
            .placed(service)
            .filter(|(_, placed)| placed.draining.is_none())
            .map(|(key, placed)| Member {
                id: &key.1,
                current: placed.version == want.version && !self.cordoned.contains(&placed.node),
                ready: self
                    .report_of(key, &placed.node)
                    .is_some_and(|r| meridian_model::serves(&r.state)),
            })
            .collect();
        let Step { start, drain } = if want.paused {
            crate::rollout::paused(want.bounds, &members)
        } else {
            crate::rollout::step_for(want.strategy, want.bounds, &members)
        };
        for instance in drain {
            let key = (service.clone(), instance);
            if let Some(placed) = self.placements.get_mut(&key) {
                let mut until = now + want.drain_delay;
                if placed.version != want.version {
                    let kept = now + want.keep_previous;
                    until = until.max(kept);
                    placed.kept_until = Some(kept);
                }
                placed.draining = Some(until);
                self.draining.insert((until, key.clone()));
                moves.drained.insert(key);
            }
        }
        for placed in 0..start {
            let Some(node) = self.best_node(service, want.asks, &avoid) else {
                let reason = self.no_room(want.asks);
                let left = start - placed;
                tracing::debug!(?service, left, %reason, "instances not placed");
                self.unplaced.insert(service.clone(), (left, reason));
                return;
            };
            let used: BTreeSet<u32> = self
                .placed(service)
                .filter_map(|((_, instance), _)| number_of(instance))
                .collect();
            // Not in use here, nor by a failed instance any node still reports.
            let number = (0..)
                .find(|n| {
                    !used.contains(n)
                        && !self.reported_anywhere(&(service.clone(), instance_id(&service.2, *n)))
                })
                .unwrap_or_default();
            let key = (service.clone(), instance_id(&service.2, number));
            let placed = Placed {
                node,
                version: want.version,
                draining: None,
                kept_until: None,
                asks: want.asks,
            };
            self.placements.insert(key.clone(), placed);
            moves.assignments.insert(key);
        }
        self.unplaced.remove(service);
    }

    /// How many instances of `service` fit on no node at its last placement, and why.
    pub fn unplaced(&self, service: &ServiceId) -> Option<&(u32, String)> {
        self.unplaced.get(service)
    }

    /// Why no live node takes one more instance asking `asks`.
    fn no_room(&self, asks: Amounts) -> String {
        let load = self.load(None);
        let of = |name: &str| load.get(name).copied().unwrap_or_default();
        let open: Vec<(&str, &Node)> = self
            .nodes
            .iter()
            .filter(|(name, _)| !self.cordoned.contains(*name))
            .map(|(name, node)| (name.as_str(), node))
            .collect();
        if self.nodes.is_empty() {
            return "no node reports to the region".to_owned();
        }
        if open.is_empty() {
            return "every node is drained".to_owned();
        }
        let with_room: Vec<(&str, Amounts, Amounts)> = open
            .iter()
            .filter(|(name, node)| of(name).all < node.capacity)
            .map(|(name, node)| (*name, node.offer, of(name).asked))
            .collect();
        if with_room.is_empty() {
            return "every node runs as many instances as its capacity allows".to_owned();
        }
        room::no_room(&with_room, asks)
    }

    /// A return to `version` while its set is still kept (it left service in a blue-green or
    /// canary switch, `keep_previous`): those instances serve again at once, instead of new
    /// ones starting.
    fn reinstate_kept(
        &mut self,
        service: &ServiceId,
        version: u64,
        now: Instant,
        moves: &mut Moves,
    ) {
        let kept: Vec<InstanceKey> = self
            .placed(service)
            .filter(|(_, p)| p.version == version && p.draining.is_some())
            .filter(|(_, p)| p.kept_until.is_some_and(|kept| kept > now))
            .map(|(key, _)| key.clone())
            .collect();
        for key in kept {
            if let Some(placed) = self.placements.get_mut(&key) {
                tracing::info!(instance = ?key, version, "a kept instance serves again");
                placed.draining = None;
                placed.kept_until = None;
                moves.services.insert(key.0.clone());
            }
        }
    }

    /// Instances of `service` placed with version `from` are now of version `to` (a new
    /// version that runs the same: they run on); returns them.
    pub fn relabel(&mut self, service: &ServiceId, from: u64, to: u64) -> Vec<InstanceKey> {
        let mut relabeled = Vec::new();
        let start = (service.clone(), String::new());
        for (key, placed) in self.placements.range_mut(start..) {
            if key.0 != *service {
                break;
            }
            if placed.version == from {
                placed.version = to;
                relabeled.push(key.clone());
            }
        }
        relabeled
    }

    /// The version instance `key` is placed as (a version relabelled included), if placed.
    pub fn placed_version(&self, key: &InstanceKey) -> Option<u64> {
        self.placements.get(key).map(|placed| placed.version)
    }

    /// The versions the placed instances of `service` run.
    pub fn versions_of(&self, service: &ServiceId) -> BTreeSet<u64> {
        self.placed(service).map(|(_, p)| p.version).collect()
    }

    /// The earliest time a draining instance's delay is over, if any instance drains.
    pub fn next_drained(&mut self) -> Option<Instant> {
        self.forget_stale_drains();
        self.draining.first().map(|(until, _)| *until)
    }

    /// The services with a draining instance whose delay is over at `now`; looks at those
    /// instances only.
    pub fn drained_by(&mut self, now: Instant) -> BTreeSet<ServiceId> {
        self.forget_stale_drains();
        self.draining
            .iter()
            .take_while(|(until, _)| *until <= now)
            .filter(|(until, key)| self.drains_until(key, *until))
            .map(|(_, (service, _))| service.clone())
            .collect()
    }

    /// Draining instance `key` may go at `until` if that is sooner than its bound (the
    /// proxies acknowledged that it left the endpoints), but not before it is kept until.
    pub fn acknowledged(&mut self, key: &InstanceKey, until: Instant) {
        let Some(placed) = self.placements.get_mut(key) else {
            return;
        };
        let until = placed.kept_until.map_or(until, |kept| until.max(kept));
        if placed.draining.is_some_and(|bound| until < bound) {
            placed.draining = Some(until);
            self.draining.insert((until, key.clone()));
        }
    }

    /// Whether instance `key` is placed and draining until `until`.
    fn drains_until(&self, key: &InstanceKey, until: Instant) -> bool {
        self.placements
            .get(key)
            .is_some_and(|p| p.draining == Some(until))
    }

    /// Forgets the first drains whose instances were removed meanwhile (their services placed
    /// after the delay, or their nodes gone).
    fn forget_stale_drains(&mut self) {
        while let Some((until, key)) = self.draining.first() {
            if self.drains_until(key, *until) {
                break;
            }
            self.draining.pop_first();
        }
    }

    fn report_of(&self, key: &InstanceKey, node: &str) -> Option<&InstanceReport> {
        self.nodes.get(node).and_then(|n| n.instances.get(key))
    }

    /// The placements of `service`, found without looking at the others.
    fn placed<'a>(
        &'a self,
        service: &'a ServiceId,
    ) -> impl Iterator<Item = (&'a InstanceKey, &'a Placed)> + 'a {
        self.placements
            .range((service.clone(), String::new())..)
            .take_while(move |((s, _), _)| s == service)
    }

    /// Places the running instances agents report where they run, for the services in
    /// `desired` (surplus is trimmed by the placement that follows), as the version they say
    /// they run if `known`, else the desired one; returns them.
    fn adopt(
        &mut self,
        desired: &BTreeMap<ServiceId, Desired>,
        known: impl Fn(&ServiceId, u64) -> bool,
    ) -> BTreeSet<InstanceKey> {
        let mut adopted = BTreeSet::new();
        for (node_name, node) in &self.nodes {
            for (key, report) in &node.instances {
                let Some(want) = desired.get(&key.0) else {
                    continue;
                };
                if matches!(report.state.as_str(), "failed" | "stopped") {
                    continue;
                }
                if !self.placements.contains_key(key) {
                    // The version it says it runs (a rollout goes on), else the desired one.
                    let version = if known(&key.0, report.version) {
                        report.version
                    } else {
                        want.version
                    };
                    let placed = Placed {
                        node: node_name.clone(),
                        version,
                        draining: None,
                        kept_until: None,
                        asks: want.asks,
                    };
                    self.placements.insert(key.clone(), placed);
                    adopted.insert(key.clone());
                }
            }
        }
        adopted
    }

    fn reported_anywhere(&self, key: &InstanceKey) -> bool {
        self.nodes
            .values()
            .any(|n| n.instances.get(key).is_some_and(|i| i.state == "failed"))
    }

    /// Each node's load: its instances (of `service`, and all) and what they ask of it.
    fn load(&self, service: Option<&ServiceId>) -> BTreeMap<&str, Load> {
        let mut load: BTreeMap<&str, Load> = BTreeMap::new();
        for ((s, _), placed) in &self.placements {
            let entry = load.entry(placed.node.as_str()).or_default();
            entry.all += 1;
            if Some(s) == service {
                entry.of_service += 1;
            }
            entry.asked = entry.asked.plus(placed.asks);
        }
        load
    }

    /// The live node with room for one more instance of `service` asking `asks` (by count,
    /// CPU and memory): fewest instances of the service, then fewest instances, then nodes not
    /// in `avoid`, then by name.
    fn best_node(
        &self,
        service: &ServiceId,
        asks: Amounts,
        avoid: &BTreeSet<String>,
    ) -> Option<String> {
        let load = self.load(Some(service));
        let of = |name: &str| load.get(name).copied().unwrap_or_default();
        self.nodes
            .iter()
            .filter(|(name, _)| !self.cordoned.contains(*name))
            .filter(|(name, node)| of(name).all < node.capacity)
            .filter(|(name, node)| room::fits(node.offer, of(name).asked, asks))
            .min_by_key(|(name, _)| {
                let load = of(name);
                (
                    avoid.contains(*name),
                    load.of_service,
                    load.all,
                    (*name).clone(),
                )
            })
            .map(|(name, _)| name.clone())
    }

    /// Every placement.
    pub fn placements(&self) -> Vec<Placement> {
        self.placements
            .iter()
            .map(|((service, instance), placed)| Placement {
                service: service.clone(),
                instance: instance.clone(),
                node: placed.node.clone(),
                version: placed.version,
                draining: placed.draining.is_some(),
            })
            .collect()
    }

    /// The node instance `key` is placed on and the version it runs, if it is placed.
    pub fn node_of(&self, key: &InstanceKey) -> Option<(&str, u64)> {
        self.placements
            .get(key)
            .map(|placed| (placed.node.as_str(), placed.version))
    }

    /// The instances of `service` that are placed.
    pub fn placements_of<'a>(
        &'a self,
        service: &'a ServiceId,
    ) -> impl Iterator<Item = &'a InstanceKey> + 'a {
        self.placed(service).map(|(key, _)| key)
    }

    /// Each placed instance of `service` in service (not draining): its id, version and last
    /// report.
    pub fn reports_of<'a>(
        &'a self,
        service: &'a ServiceId,
    ) -> impl Iterator<Item = (&'a str, u64, Option<&'a InstanceReport>)> + 'a {
        self.placed(service)
            .filter(|(_, placed)| placed.draining.is_none())
            .map(|(key, placed)| {
                let report = self.report_of(key, &placed.node);
                (key.1.as_str(), placed.version, report)
            })
    }

    /// The endpoints of `service` in `region`: its placed instances in service (draining ones
    /// have left) that their node reports with an address, healthy or not. Looks at that
    /// service's instances only.
    pub fn endpoints(&self, service: &ServiceId, region: &str) -> Vec<Endpoint> {
        self.reports_of(service)
            .filter_map(|(instance, _, report)| {
                let report = report.filter(|r| !r.address.is_empty())?;
                // An instance asleep takes requests: its node proxy holds them while it wakes.
                let health = if meridian_model::serves(&report.state) {
                    EndpointHealth::Healthy
                } else {
                    EndpointHealth::Unhealthy
                };
                Some(Endpoint {
                    org: service.0.clone(),
                    app: service.1.clone(),
                    service: service.2.clone(),
                    id: instance.to_owned(),
                    region: region.to_owned(),
                    address: report.address.clone(),
                    ports: BTreeMap::new(),
                    health,
                    updated_at: 0,
                })
            })
            .collect()
    }

    /// Counts of the instances of `service` in service, for the region summary: (placed,
    /// healthy) by the version they run.
    pub fn summary(&self, service: &ServiceId) -> BTreeMap<u64, (usize, usize)> {
        let mut counts: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
        for (_, version, report) in self.reports_of(service) {
            let up = report.is_some_and(|r| meridian_model::serves(&r.state));
            let (placed, healthy) = counts.entry(version).or_default();
            *placed += 1;
            *healthy += usize::from(up);
        }
        counts
    }
}

/// Logs an instance falling asleep or waking (`scale.sleep`), as its agent reported it: the
/// region's events of scale to zero.
fn log_sleep(node: &str, key: &InstanceKey, before: &str, now: &str) {
    let asleep = |state: &str| {
        state == meridian_model::SLEEPING_LIGHT || state == meridian_model::SLEEPING_DEEP
    };
    let ((org, app, service), instance) = key;
    match (asleep(before), asleep(now)) {
        (_, true) if before != now => {
            tracing::info!(
                node,
                org,
                app,
                service,
                instance,
                state = now,
                "instance asleep"
            );
        }
        (true, false) => {
            tracing::info!(
                node,
                org,
                app,
                service,
                instance,
                state = now,
                was = before,
                "instance awake"
            );
        }
        _ => {}
    }
}

/// The key of a reported instance.
fn instance_key(report: &InstanceReport) -> InstanceKey {
    (
        (
            report.org.clone(),
            report.app.clone(),
            report.service.clone(),
        ),
        report.instance.clone(),
    )
}

fn instance_id(service: &str, number: u32) -> String {
    format!("{service}-{number}")
}

/// The number in an instance id `<service>-<n>`.
pub(crate) fn number_of(instance: &str) -> Option<u32> {
    instance.rsplit_once('-')?.1.parse().ok()
}

/// Whether an instance's report says more than `before` did, request and usage figures aside
/// (they move with every request; the metric gates and autoscaling read them, see
/// `RegionState::sample_traffic` and `RegionState::sample_load`).
fn changed(before: &InstanceReport, now: &InstanceReport) -> bool {
    let InstanceReport {
        instance,
        state,
        address,
        restarts,
        detail,
        org,
        app,
        service,
        version,
        traffic: _,
        usage: _,
        wake_micros,
    } = now;
    (instance, state, address, restarts, detail, wake_micros)
        != (
            &before.instance,
            &before.state,
            &before.address,
            &before.restarts,
            &before.detail,
            &before.wake_micros,
        )
        || (org, app, service, version)
            != (&before.org, &before.app, &before.service, &before.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str) -> ServiceId {
        ("acme".to_owned(), "shop".to_owned(), name.to_owned())
    }

    /// Knows no earlier version.
    fn unknown(_: &ServiceId, _: u64) -> bool {
        false
    }

    /// `scale` instances of version 1, one more while rolling, drained at once.
    fn want(scale: u32) -> Desired {
        version(1, scale)
    }

    fn version(version: u64, scale: u32) -> Desired {
        Desired {
            version,
            bounds: Bounds {
                scale,
                surge: 1,
                unavailable: 0,
            },
            drain_delay: Duration::ZERO,
            strategy: Strategy::Rolling,
            keep_previous: Duration::ZERO,
            paused: false,
            asks: Amounts::default(),
        }
    }

    fn node(name: &str, capacity: u32, instances: &[(&str, &str)]) -> NodeReport {
        NodeReport {
            node: name.to_owned(),
            capacity,
            cpu_millis: 0,
            memory_bytes: 0,
            metrics_address: String::new(),
            instances: instances
                .iter()
                .map(|(instance, state)| InstanceReport {
                    instance: (*instance).to_owned(),
                    state: (*state).to_owned(),
                    address: "127.0.0.1".to_owned(),
                    org: "acme".to_owned(),
                    app: "shop".to_owned(),
                    service: instance.split('-').next().unwrap().to_owned(),
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn nodes_of(fleet: &Fleet, name: &str) -> Vec<String> {
        fleet
            .placements()
            .into_iter()
            .filter(|p| p.service.2 == name && !p.draining)
            .map(|p| p.node)
            .collect()
    }

    #[test]
    fn instances_spread_over_nodes_and_respect_capacity() {
        let mut fleet = Fleet::new(Instant::now());
        let now = Instant::now();
        fleet.report(node("a", 2, &[]), now);
        fleet.report(node("b", 2, &[]), now);
        let mut desired = BTreeMap::from([(service("web"), want(2)), (service("api"), want(2))]);
        fleet.place(&desired, unknown, now);
        for name in ["web", "api"] {
            let mut nodes = nodes_of(&fleet, name);
            nodes.sort();
            assert_eq!(nodes, ["a", "b"], "{name}'s instances go to two nodes");
        }
        // Four slots for five instances: one waits.
        desired.insert(service("web"), want(3));
        fleet.place(&desired, unknown, now);
        assert_eq!(fleet.placements().len(), 4);
        // Room appears: the waiting instance is placed there, the others stay.
        let before = fleet.placements();
        fleet.report(node("c", 4, &[]), now);
        fleet.place(&desired, unknown, now);
        assert_eq!(fleet.placements().len(), 5);
        assert!(nodes_of(&fleet, "web").contains(&"c".to_owned()));
        for placement in before {
            assert!(
                fleet.placements().contains(&placement),
                "{placement:?} moved"
            );
        }
    }

    #[test]
    fn a_lost_node_or_a_failed_instance_is_replaced_elsewhere() {
        let mut fleet = Fleet::new(Instant::now());
        let start = Instant::now();
        fleet.report(node("a", 4, &[]), start);
        fleet.report(node("b", 4, &[]), start);
        let desired = BTreeMap::from([(service("web"), want(1))]);
        fleet.place(&desired, unknown, start);
        let first = fleet.placements()[0].clone();
        let other = if first.node == "a" { "b" } else { "a" };

        // It fails past its restart limit: a new instance goes to the other node.
        let failed = fleet.report(node(&first.node, 4, &[(&first.instance, "failed")]), start);
        assert!(failed.reshaped);
        fleet.place(&desired, unknown, start);
        let second = fleet.placements()[0].clone();
        assert_eq!(second.node, other);
        assert_ne!(second.instance, first.instance);

        // Its node stops reporting: it is placed on the node that is left.
        let later = start + NODE_TIMEOUT + Duration::from_secs(1);
        fleet.report(node(&first.node, 4, &[]), later);
        assert_eq!(fleet.expire(later), vec![other.to_owned()]);
        fleet.place(&desired, unknown, later);
        assert_eq!(nodes_of(&fleet, "web"), vec![first.node.clone()]);

        // Scaling down to zero drains it, then removes it.
        let none = BTreeMap::from([(service("web"), want(0))]);
        fleet.place(&none, unknown, later);
        assert!(fleet.placements()[0].draining);
        assert_eq!(nodes_of(&fleet, "web"), Vec::<String>::new());
        fleet.place(&none, unknown, later);
        assert!(fleet.placements().is_empty());
    }

    #[test]
    fn a_new_control_plane_adopts_the_instances_agents_run() {
        let start = Instant::now();
        let mut fleet = Fleet::new(start + SETTLE);
        fleet.report(
            node("b", 4, &[("web-1", "healthy"), ("gone-0", "healthy")]),
            start,
        );
        fleet.report(node("a", 4, &[]), start);
        let desired = BTreeMap::from([(service("web"), want(2))]);
        fleet.place(&desired, unknown, start);
        assert!(
            fleet.placements().is_empty(),
            "nothing is placed while agents report"
        );
        assert!(!fleet.first_placement_due(start));
        let settled = start + SETTLE;
        assert!(fleet.first_placement_due(settled));
        fleet.place(&desired, unknown, settled);
        let placed = fleet.placements();
        assert_eq!(placed.len(), 2);
        assert!(placed.contains(&Placement {
            service: service("web"),
            instance: "web-1".to_owned(),
            node: "b".to_owned(),
            version: 1,
            draining: false,
        }));
        assert!(placed
            .iter()
            .any(|p| p.instance == "web-0" && p.node == "a"));
    }

    #[test]
    fn a_report_names_only_the_services_whose_instances_changed() {
        let start = Instant::now();
        let mut fleet = Fleet::new(start);
        let first = fleet.report(
            node("a", 4, &[("web-0", "healthy"), ("api-0", "healthy")]),
            start,
        );
        assert!(first.reshaped, "a new node");
        let again = fleet.report(
            node("a", 4, &[("web-0", "healthy"), ("api-0", "healthy")]),
            start,
        );
        assert_eq!(again, Reported::default(), "nothing changed");
        let one = fleet.report(
            node("a", 4, &[("web-0", "unhealthy"), ("api-0", "healthy")]),
            start,
        );
        assert_eq!(one.services, BTreeSet::from([service("web")]));
        assert!(!one.reshaped);
        let gone = fleet.report(node("a", 4, &[("web-0", "unhealthy")]), start);
        assert_eq!(gone.services, BTreeSet::from([service("api")]));
    }

    #[test]
    fn two_orgs_may_run_instances_of_the_same_name_on_one_node() {
        let start = Instant::now();
        let mut fleet = Fleet::new(start);
        let mut report = node("a", 4, &[("web-0", "healthy"), ("web-0", "unhealthy")]);
        report.instances[1].org = "other".to_owned();
        fleet.report(report, start);
        let other = ("other".to_owned(), "shop".to_owned(), "web".to_owned());
        let desired = BTreeMap::from([(service("web"), want(1)), (other.clone(), want(1))]);
        fleet.place(&desired, unknown, start);
        let health = |id: &ServiceId| fleet.endpoints(id, "fra")[0].health;
        assert_eq!(health(&service("web")), EndpointHealth::Healthy);
        assert_eq!(health(&other), EndpointHealth::Unhealthy);
    }

    #[test]
    fn an_instance_asleep_takes_requests_and_counts_healthy() {
        let start = Instant::now();
        for state in ["sleeping (light)", "sleeping (deep)"] {
            let mut fleet = Fleet::new(start);
            fleet.report(node("a", 4, &[("web-0", state)]), start);
            fleet.place(&BTreeMap::from([(service("web"), want(1))]), unknown, start);
            let endpoints = fleet.endpoints(&service("web"), "fra");
            assert_eq!(endpoints[0].health, EndpointHealth::Healthy, "{state}");
            let summary = fleet.summary(&service("web"));
            assert_eq!(summary.values().next(), Some(&(1, 1)), "{state}");
        }
    }

    /// The instances of `web` in service, by id, with their versions.
    fn serving(fleet: &Fleet) -> Vec<(String, u64)> {
        fleet
            .placements()
            .into_iter()
            .filter(|p| !p.draining)
            .map(|p| (p.instance, p.version))
            .collect()
    }

    /// Node `a` reports every placed instance of `web`, those of `ready` healthy.
    fn report_a(fleet: &mut Fleet, ready: &[&str], now: Instant) {
        let placed: Vec<(String, &str)> = fleet
            .placements()
            .into_iter()
            .map(|p| {
                let state = if ready.contains(&p.instance.as_str()) {
                    "healthy"
                } else {
                    "starting"
                };
                (p.instance, state)
            })
            .collect();
        let placed: Vec<(&str, &str)> = placed.iter().map(|(i, s)| (i.as_str(), *s)).collect();
        fleet.report(node("a", 8, &placed), now);
    }

    #[test]
    fn a_new_version_starts_beside_the_old_one_which_drains_once_the_new_one_is_ready() {
        let start = Instant::now();
        let mut fleet = Fleet::new(start);
        fleet.report(node("a", 8, &[]), start);
        let web = || service("web");
        fleet.place(&BTreeMap::from([(web(), version(1, 2))]), unknown, start);
        report_a(&mut fleet, &["web-0", "web-1"], start);

        // Version 2: one new instance, under a number not in use; the old ones serve on.
        let mut two = version(2, 2);
        two.drain_delay = Duration::from_secs(1);
        let desired = BTreeMap::from([(web(), two)]);
        let moves = fleet.place(&desired, unknown, start);
        let started = (web(), "web-2".to_owned());
        assert_eq!(moves.assignments, BTreeSet::from([started]));
        assert!(moves.drained.is_empty());
        let all = |list: &[(&str, u64)]| -> Vec<(String, u64)> {
            list.iter().map(|(i, v)| ((*i).to_owned(), *v)).collect()
        };
        assert_eq!(
            serving(&fleet),
            all(&[("web-0", 1), ("web-1", 1), ("web-2", 2)])
        );
        // Starting, it changes nothing; ready, an old one drains and the next new one starts.
        report_a(&mut fleet, &["web-0", "web-1"], start);
        let only_web = BTreeSet::from([web()]);
        assert_eq!(
            fleet.place_some(&desired, &only_web, start),
            Moves::default()
        );
        report_a(&mut fleet, &["web-0", "web-1", "web-2"], start);
        let moves = fleet.place_some(&desired, &only_web, start);
        let web_1 = (web(), "web-1".to_owned());
        assert_eq!(moves.drained, BTreeSet::from([web_1.clone()]));
        assert_eq!(
            serving(&fleet),
            all(&[("web-0", 1), ("web-2", 2), ("web-3", 2)])
        );
        // web-1 left the endpoints; web-3 is not reported yet.
        let endpoints = fleet.endpoints(&web(), "fra");
        let ids: Vec<&str> = endpoints.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["web-0", "web-2"]);
        // The drained one keeps its assignment until its delay is over.
        let due = fleet.next_drained().unwrap();
        assert_eq!(due, start + Duration::from_secs(1));
        assert!(fleet.drained_by(start).is_empty());
        assert_eq!(fleet.drained_by(due), only_web);
        let moves = fleet.place_some(&desired, &only_web, due);
        assert_eq!(
            moves.assignments,
            BTreeSet::from([(web(), "web-1".to_owned())])
        );
        assert_eq!(fleet.placements().len(), 3);

        // The second new one gets ready: the last old one drains; then it is gone.
        report_a(&mut fleet, &["web-0", "web-2", "web-3"], due);
        fleet.place_some(&desired, &only_web, due);
        assert_eq!(serving(&fleet), all(&[("web-2", 2), ("web-3", 2)]));
        let end = fleet.next_drained().unwrap();
        fleet.place_some(&desired, &only_web, end);
        assert_eq!(fleet.versions_of(&web()), BTreeSet::from([2]));
        assert_eq!(fleet.placements().len(), 2);
        assert_eq!(fleet.summary(&web()), BTreeMap::from([(2, (2, 2))]));
    }

    #[test]
    fn an_early_acknowledgement_keeps_the_previous_set_for_keep_previous() {
        let start = Instant::now();
        let mut fleet = Fleet::new(start);
        fleet.report(node("a", 8, &[]), start);
        let web = || service("web");
        fleet.place(&BTreeMap::from([(web(), version(1, 1))]), unknown, start);
        report_a(&mut fleet, &["web-0"], start);
        let mut two = version(2, 1);
        two.drain_delay = Duration::from_secs(6);
        two.keep_previous = Duration::from_secs(3);
        let desired = BTreeMap::from([(web(), two)]);
        fleet.place(&desired, unknown, start);
        report_a(&mut fleet, &["web-0", "web-1"], start);
        let only_web = BTreeSet::from([web()]);
        let moves = fleet.place_some(&desired, &only_web, start);
        let web_0 = (web(), "web-0".to_owned());
        assert_eq!(moves.drained, BTreeSet::from([web_0.clone()]));
        // The proxies acknowledge at once: the drain ends at keep_previous, not before.
        fleet.acknowledged(&web_0, start + Duration::from_secs(1));
        assert_eq!(fleet.next_drained(), Some(start + Duration::from_secs(3)));
    }

    #[test]
    fn a_return_to_the_kept_set_serves_it_again_without_starting_an_instance() {
        let start = Instant::now();
        let mut fleet = Fleet::new(start);
        fleet.report(node("a", 8, &[]), start);
        let web = || service("web");
        let only_web = BTreeSet::from([web()]);
        let blue_green = |v: u64| Desired {
            strategy: Strategy::BlueGreen,
            keep_previous: Duration::from_secs(60),
            ..version(v, 2)
        };
        fleet.place(&BTreeMap::from([(web(), blue_green(1))]), unknown, start);
        report_a(&mut fleet, &["web-0", "web-1"], start);
        let two = BTreeMap::from([(web(), blue_green(2))]);
        fleet.place_some(&two, &only_web, start);
        report_a(&mut fleet, &["web-0", "web-1", "web-2", "web-3"], start);
        let moves = fleet.place_some(&two, &only_web, start);
        assert_eq!(moves.drained.len(), 2, "the switch");
        assert_eq!(nodes_of(&fleet, "web").len(), 2);
        // Back to version 1 while its set is kept: it serves again, version 2 leaves, and
        // nothing starts.
        let later = start + Duration::from_secs(5);
        let one = BTreeMap::from([(web(), blue_green(1))]);
        let moves = fleet.place_some(&one, &only_web, later);
        let ids = |keys: &BTreeSet<InstanceKey>| -> Vec<String> {
            keys.iter().map(|k| k.1.clone()).collect()
        };
        assert_eq!(ids(&moves.drained), ["web-2", "web-3"]);
        assert!(
            ids(&moves.assignments).is_empty(),
            "no instance placed: {moves:?}"
        );
        let endpoints = fleet.endpoints(&web(), "fra");
        let serving: Vec<&str> = endpoints.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(serving, ["web-0", "web-1"]);
        // Once the kept set is gone, a return places new instances (under the numbers the
        // removed ones had: new assignments).
        let gone = later + Duration::from_secs(120);
        report_a(&mut fleet, &["web-0", "web-1", "web-2", "web-3"], gone);
        let moves = fleet.place_some(&two, &only_web, gone);
        assert_eq!(ids(&moves.assignments), ["web-2", "web-3"]);
        assert_eq!(fleet.versions_of(&web()), BTreeSet::from([1, 2]));
    }

    #[test]
    fn a_paused_rollout_replaces_nothing_but_makes_up_the_scale() {
        let start = Instant::now();
        let mut fleet = Fleet::new(start);
        fleet.report(node("a", 8, &[]), start);
        let web = || service("web");
        let only_web = BTreeSet::from([web()]);
        fleet.place(&BTreeMap::from([(web(), version(1, 2))]), unknown, start);
        report_a(&mut fleet, &["web-0", "web-1"], start);
        let mut paused = version(2, 2);
        paused.paused = true;
        let desired = BTreeMap::from([(web(), paused)]);
        assert_eq!(
            fleet.place_some(&desired, &only_web, start),
            Moves::default(),
            "nothing starts, nothing drains"
        );
        let resumed = BTreeMap::from([(web(), version(2, 2))]);
        let moves = fleet.place_some(&resumed, &only_web, start);
        assert_eq!(moves.assignments.len(), 1, "one new instance starts");
    }

    #[test]
    fn a_drained_node_gets_no_placement_and_its_instances_move_once_replaced() {
        let start = Instant::now();
        let mut fleet = Fleet::new(start);
        fleet.report(node("a", 4, &[]), start);
        let web = || service("web");
        let desired = BTreeMap::from([(web(), version(1, 1))]);
        fleet.place(&desired, unknown, start);
        let ready = |fleet: &mut Fleet, a: &[(&str, &str)], b: &[(&str, &str)]| {
            fleet.report(node("a", 4, a), start);
            fleet.report(node("b", 4, b), start);
        };
        // Node a drains while it is the only node: nothing can move, web-0 serves on.
        assert!(fleet.cordon("a", true));
        assert!(!fleet.cordon("a", true), "already draining");
        ready(&mut fleet, &[("web-0", "healthy")], &[]);
        fleet.nodes.remove("b");
        fleet.place(&desired, unknown, start);
        assert_eq!(serving(&fleet), [("web-0".to_owned(), 1)]);
        // Node b comes: the replacement goes there first; web-0 drains once it is ready.
        ready(&mut fleet, &[("web-0", "healthy")], &[]);
        fleet.place(&desired, unknown, start);
        assert_eq!(nodes_of(&fleet, "web"), ["a", "b"]);
        ready(
            &mut fleet,
            &[("web-0", "healthy")],
            &[("web-1", "starting")],
        );
        let only_web = BTreeSet::from([web()]);
        assert!(fleet
            .place_some(&desired, &only_web, start)
            .drained
            .is_empty());
        ready(&mut fleet, &[("web-0", "healthy")], &[("web-1", "healthy")]);
        let moves = fleet.place_some(&desired, &only_web, start);
        assert_eq!(moves.drained, BTreeSet::from([(web(), "web-0".to_owned())]));
        assert_eq!(nodes_of(&fleet, "web"), ["b"]);
        assert_eq!(fleet.node_list(), [("a", 4, 1), ("b", 4, 1)]);
        // Undrained, it takes placements again.
        assert!(fleet.cordon("a", false));
        let two = BTreeMap::from([(web(), version(1, 2))]);
        fleet.place(&two, unknown, start + Duration::from_secs(1));
        let mut nodes = nodes_of(&fleet, "web");
        nodes.sort();
        assert_eq!(nodes, ["a", "b"]);
    }

    #[test]
    fn placement_counts_resources_against_what_nodes_offer_and_says_why_one_fits_nowhere() {
        let start = Instant::now();
        let mut fleet = Fleet::new(start);
        let offering = |name: &str, cpu_millis: u64| NodeReport {
            cpu_millis,
            memory_bytes: 1 << 30,
            ..node(name, 8, &[])
        };
        fleet.report(offering("a", 2000), start);
        let mut web = want(3);
        web.asks = Amounts {
            cpu_millis: 1000,
            memory_bytes: 256 << 20,
        };
        let desired = BTreeMap::from([(service("web"), web)]);
        fleet.place(&desired, unknown, start);
        assert_eq!(nodes_of(&fleet, "web"), ["a", "a"], "two of 1 cpu on 2 cpu");
        assert_eq!(
            fleet.unplaced(&service("web")),
            Some(&(
                1,
                "no node has 1 cpu free (the most: 0 on node a)".to_owned()
            ))
        );
        // Another node offers room: the third goes there, and nothing is left unplaced.
        let reshaped = fleet.report(offering("b", 1500), start);
        assert!(reshaped.reshaped);
        fleet.place(&desired, unknown, start);
        assert_eq!(nodes_of(&fleet, "web"), ["a", "a", "b"]);
        assert_eq!(fleet.unplaced(&service("web")), None);
        let asked = |cpu_millis| Amounts {
            cpu_millis,
            memory_bytes: cpu_millis / 1000 * (256 << 20),
        };
        assert_eq!(fleet.room_of("a").unwrap().1, asked(2000));
        assert_eq!(fleet.room_of("b").unwrap().1, asked(1000));
        // An agent that says nothing counts nothing.
        let mut fleet = Fleet::new(start);
        fleet.report(node("c", 8, &[]), start);
        fleet.place(&desired, unknown, start);
        assert_eq!(nodes_of(&fleet, "web").len(), 3);
    }
}
