//! The region's nodes and the instances placed on them: nodes are known from their agents'
//! reports and forgotten when the reports stop; instances are placed across live nodes (spread,
//! within each node's capacity), stay where they are while they can, and are placed anew when
//! their node is gone or they failed past their restart limit.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use meridian_model::{Endpoint, EndpointHealth};
use meridian_xds::meridian::{InstanceReport, NodeReport};

use crate::region::ServiceId;

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
}

/// An instance: its service and its id within the service.
pub type InstanceKey = (ServiceId, String);

#[derive(Debug)]
struct Node {
    capacity: u32,
    last_seen: Instant,
    /// The node's last report of each instance, by service and instance id (instance ids are
    /// unique within a service only: two orgs may both run a `web-0`).
    instances: BTreeMap<InstanceKey, InstanceReport>,
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

/// The region's nodes and placements.
#[derive(Debug)]
pub struct Fleet {
    nodes: BTreeMap<String, Node>,
    /// By (service, instance id).
    placements: BTreeMap<(ServiceId, String), String>,
    /// No placement before this; reported instances are adopted until the first placement.
    settle_until: Instant,
    placed_once: bool,
}

impl Fleet {
    /// An empty fleet that places nothing before `settle_until`.
    pub fn new(settle_until: Instant) -> Fleet {
        Fleet {
            nodes: BTreeMap::new(),
            placements: BTreeMap::new(),
            settle_until,
            placed_once: false,
        }
    }

    /// Whether the first placement is due (the settling time is over and none was made).
    pub fn first_placement_due(&self, now: Instant) -> bool {
        !self.placed_once && now >= self.settle_until
    }

    /// Records `report` from node `report.node` at `now` and says what it changed. The work is
    /// proportional to the report, whatever the size of the fleet.
    pub fn report(&mut self, report: NodeReport, now: Instant) -> Reported {
        let instances: BTreeMap<InstanceKey, InstanceReport> = report
            .instances
            .into_iter()
            .map(|i| (instance_key(&i), i))
            .collect();
        let before = self.nodes.get(&report.node);
        let mut reported = Reported {
            reshaped: before.is_none_or(|b| b.capacity != report.capacity),
            services: BTreeSet::new(),
        };
        let empty = BTreeMap::new();
        let old = before.map_or(&empty, |b| &b.instances);
        for (key, instance) in &instances {
            let previous = old.get(key);
            if previous != Some(instance) {
                reported.services.insert(key.0.clone());
            }
            reported.reshaped |=
                instance.state == "failed" && previous.is_none_or(|p| p.state != "failed");
        }
        for key in old.keys().filter(|key| !instances.contains_key(*key)) {
            reported.services.insert(key.0.clone());
        }
        let node = Node {
            capacity: report.capacity,
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

    /// How many instances the live nodes may run together.
    pub fn capacity(&self) -> u32 {
        self.nodes.values().map(|n| n.capacity).sum()
    }

    /// Places `desired` instances of each service: keeps placements on live nodes that have not
    /// failed there, drops the surplus (highest numbers first), and puts the missing ones on
    /// the live node with the fewest instances of that service, then the fewest instances, that
    /// has room. Instances that cannot be placed (no room) wait for the next placement. Nothing
    /// is placed before the settling time is over (or a placement was made); the first
    /// placement adopts the instances agents already run (after a restart of the control
    /// plane). Returns the instances whose placement changed (placed, moved or removed).
    pub fn place(
        &mut self,
        desired: &BTreeMap<ServiceId, u32>,
        now: Instant,
    ) -> BTreeSet<InstanceKey> {
        let mut changed = BTreeSet::new();
        if !self.placed_once && now < self.settle_until {
            return changed;
        }
        if !self.placed_once {
            self.placed_once = true;
            changed = self.adopt(desired);
        }
        let failed = |fleet: &Fleet, node: &str, key: &InstanceKey| {
            fleet
                .nodes
                .get(node)
                .and_then(|n| n.instances.get(key))
                .is_some_and(|i| i.state == "failed")
        };
        // Where each failed instance failed, so that its replacement goes elsewhere if it can.
        let failed_on: BTreeMap<ServiceId, BTreeSet<String>> = self
            .placements
            .iter()
            .filter(|(key, node)| failed(self, node, key))
            .fold(BTreeMap::new(), |mut acc, ((service, _), node)| {
                acc.entry(service.clone())
                    .or_insert_with(BTreeSet::new)
                    .insert(node.clone());
                acc
            });
        let dropped: Vec<InstanceKey> = self
            .placements
            .iter()
            .filter(|(key, node)| {
                !desired.contains_key(&key.0)
                    || !self.nodes.contains_key(*node)
                    || failed(self, node, key)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in dropped {
            self.placements.remove(&key);
            changed.insert(key);
        }
        for (service, &count) in desired {
            let mut mine: Vec<(u32, String)> = self
                .placed(service)
                .filter_map(|((_, instance), _)| Some((number_of(instance)?, instance.clone())))
                .collect();
            mine.sort();
            while mine.len() > count as usize {
                if let Some((_, instance)) = mine.pop() {
                    let key = (service.clone(), instance);
                    self.placements.remove(&key);
                    changed.insert(key);
                }
            }
            let avoid = failed_on.get(service).cloned().unwrap_or_default();
            while mine.len() < count as usize {
                let Some(node) = self.best_node(service, &avoid) else {
                    break;
                };
                let used: BTreeSet<u32> = mine.iter().map(|(n, _)| *n).collect();
                let number = (0..).find(|n| !used.contains(n)).unwrap_or_default();
                // A replacement of a failed instance gets a number not in use on any node.
                let number = (number..)
                    .find(|n| {
                        !self.reported_anywhere(&(service.clone(), instance_id(&service.2, *n)))
                    })
                    .unwrap_or(number);
                let instance = instance_id(&service.2, number);
                let key = (service.clone(), instance.clone());
                self.placements.insert(key.clone(), node);
                changed.insert(key);
                mine.push((number, instance));
                mine.sort();
            }
        }
        changed
    }

    /// The placements of `service`, found without looking at the others.
    fn placed<'a>(
        &'a self,
        service: &'a ServiceId,
    ) -> impl Iterator<Item = (&'a InstanceKey, &'a String)> + 'a {
        self.placements
            .range((service.clone(), String::new())..)
            .take_while(move |((s, _), _)| s == service)
    }

    /// Places the running instances agents report where they run, for the services in
    /// `desired` (surplus is trimmed by the placement that follows); returns them.
    fn adopt(&mut self, desired: &BTreeMap<ServiceId, u32>) -> BTreeSet<InstanceKey> {
        let mut adopted = BTreeSet::new();
        for (node_name, node) in &self.nodes {
            for (key, report) in &node.instances {
                if matches!(report.state.as_str(), "failed" | "stopped")
                    || !desired.contains_key(&key.0)
                {
                    continue;
                }
                if !self.placements.contains_key(key) {
                    self.placements.insert(key.clone(), node_name.clone());
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

    /// The live node with room for one more instance of `service`: fewest instances of the
    /// service, then fewest instances, then nodes not in `avoid`, then by name.
    fn best_node(&self, service: &ServiceId, avoid: &BTreeSet<String>) -> Option<String> {
        let mut load: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
        for ((s, _), node) in &self.placements {
            let entry = load.entry(node.as_str()).or_default();
            entry.1 += 1;
            if s == service {
                entry.0 += 1;
            }
        }
        self.nodes
            .iter()
            .filter(|(name, node)| load.get(name.as_str()).map_or(0, |l| l.1) < node.capacity)
            .min_by_key(|(name, _)| {
                let (same, all) = load.get(name.as_str()).copied().unwrap_or_default();
                (avoid.contains(*name), same, all, (*name).clone())
            })
            .map(|(name, _)| name.clone())
    }

    /// Every placement.
    pub fn placements(&self) -> Vec<Placement> {
        self.placements
            .iter()
            .map(|((service, instance), node)| Placement {
                service: service.clone(),
                instance: instance.clone(),
                node: node.clone(),
            })
            .collect()
    }

    /// The node instance `key` is placed on, if it is placed.
    pub fn node_of(&self, key: &InstanceKey) -> Option<&str> {
        self.placements.get(key).map(String::as_str)
    }

    /// The instances of `service` that are placed, and each one's node.
    pub fn placements_of<'a>(
        &'a self,
        service: &'a ServiceId,
    ) -> impl Iterator<Item = (&'a InstanceKey, &'a str)> + 'a {
        self.placed(service).map(|(key, node)| (key, node.as_str()))
    }

    /// The last report of each placed instance of `service`, with its id.
    fn reports_of<'a>(
        &'a self,
        service: &'a ServiceId,
    ) -> impl Iterator<Item = (&'a str, Option<&'a InstanceReport>)> + 'a {
        self.placed(service).map(|(key, node)| {
            let report = self.nodes.get(node).and_then(|n| n.instances.get(key));
            (key.1.as_str(), report)
        })
    }

    /// The endpoints of `service` in `region`: its placed instances that their node reports
    /// with an address, healthy or not. Looks at that service's instances only.
    pub fn endpoints(&self, service: &ServiceId, region: &str) -> Vec<Endpoint> {
        self.reports_of(service)
            .filter_map(|(instance, report)| {
                let report = report.filter(|r| !r.address.is_empty())?;
                let health = match report.state.as_str() {
                    "healthy" => EndpointHealth::Healthy,
                    _ => EndpointHealth::Unhealthy,
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

    /// Counts of instances by state, for the region summary: (placed, healthy).
    pub fn summary(&self, service: &ServiceId) -> (usize, usize) {
        self.reports_of(service)
            .fold((0, 0), |(placed, healthy), (_, report)| {
                let up = report.is_some_and(|r| r.state == "healthy");
                (placed + 1, healthy + usize::from(up))
            })
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

fn number_of(instance: &str) -> Option<u32> {
    instance.rsplit_once('-')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str) -> ServiceId {
        ("acme".to_owned(), "shop".to_owned(), name.to_owned())
    }

    fn node(name: &str, capacity: u32, instances: &[(&str, &str)]) -> NodeReport {
        NodeReport {
            node: name.to_owned(),
            capacity,
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
            .filter(|p| p.service.2 == name)
            .map(|p| p.node)
            .collect()
    }

    #[test]
    fn instances_spread_over_nodes_and_respect_capacity() {
        let mut fleet = Fleet::new(Instant::now());
        let now = Instant::now();
        fleet.report(node("a", 2, &[]), now);
        fleet.report(node("b", 2, &[]), now);
        let mut desired = BTreeMap::from([(service("web"), 2), (service("api"), 2)]);
        fleet.place(&desired, now);
        for name in ["web", "api"] {
            let mut nodes = nodes_of(&fleet, name);
            nodes.sort();
            assert_eq!(nodes, ["a", "b"], "{name}'s instances go to two nodes");
        }
        // Four slots for five instances: one waits.
        desired.insert(service("web"), 3);
        fleet.place(&desired, now);
        assert_eq!(fleet.placements().len(), 4);
        // Room appears: the waiting instance is placed there, the others stay.
        let before = fleet.placements();
        fleet.report(node("c", 4, &[]), now);
        fleet.place(&desired, now);
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
        let desired = BTreeMap::from([(service("web"), 1)]);
        fleet.place(&desired, start);
        let first = fleet.placements()[0].clone();
        let other = if first.node == "a" { "b" } else { "a" };

        // It fails past its restart limit: a new instance goes to the other node.
        let failed = fleet.report(node(&first.node, 4, &[(&first.instance, "failed")]), start);
        assert!(failed.reshaped);
        fleet.place(&desired, start);
        let second = fleet.placements()[0].clone();
        assert_eq!(second.node, other);
        assert_ne!(second.instance, first.instance);

        // Its node stops reporting: it is placed on the node that is left.
        let later = start + NODE_TIMEOUT + Duration::from_secs(1);
        fleet.report(node(&first.node, 4, &[]), later);
        assert_eq!(fleet.expire(later), vec![other.to_owned()]);
        fleet.place(&desired, later);
        assert_eq!(nodes_of(&fleet, "web"), vec![first.node.clone()]);

        // Scaling down to zero removes it.
        fleet.place(&BTreeMap::from([(service("web"), 0)]), later);
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
        let desired = BTreeMap::from([(service("web"), 2)]);
        fleet.place(&desired, start);
        assert!(
            fleet.placements().is_empty(),
            "nothing is placed while agents report"
        );
        assert!(!fleet.first_placement_due(start));
        let settled = start + SETTLE;
        assert!(fleet.first_placement_due(settled));
        fleet.place(&desired, settled);
        let placed = fleet.placements();
        assert_eq!(placed.len(), 2);
        assert!(placed.contains(&Placement {
            service: service("web"),
            instance: "web-1".to_owned(),
            node: "b".to_owned(),
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
        let desired = BTreeMap::from([(service("web"), 1), (other.clone(), 1)]);
        fleet.place(&desired, start);
        let health = |id: &ServiceId| fleet.endpoints(id, "fra")[0].health;
        assert_eq!(health(&service("web")), EndpointHealth::Healthy);
        assert_eq!(health(&other), EndpointHealth::Unhealthy);
    }
}
