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

#[derive(Debug)]
struct Node {
    capacity: u32,
    last_seen: Instant,
    /// The node's last report of each instance, by service and instance id (an id is unique
    /// only within its service: two orgs' `web-0` may run on one node).
    instances: BTreeMap<(ServiceId, String), InstanceReport>,
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

    /// Records `report` from node `report.node` at `now`; returns whether the set of live nodes
    /// or their capacities changed, or an instance failed (placement must be redone).
    pub fn report(&mut self, report: NodeReport, now: Instant) -> bool {
        let instances: BTreeMap<(ServiceId, String), InstanceReport> = report
            .instances
            .into_iter()
            .map(|i| {
                let service = (i.org.clone(), i.app.clone(), i.service.clone());
                ((service, i.instance.clone()), i)
            })
            .collect();
        let newly_failed = instances.iter().any(|(key, i)| {
            i.state == "failed"
                && self
                    .nodes
                    .get(&report.node)
                    .and_then(|n| n.instances.get(key))
                    .is_none_or(|old| old.state != "failed")
        });
        let node = Node {
            capacity: report.capacity,
            last_seen: now,
            instances,
        };
        let reshaped = match self.nodes.insert(report.node, node) {
            Some(old) => old.capacity != report.capacity,
            None => true,
        };
        reshaped || newly_failed
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
    /// has room. Instances that cannot be placed (no room) wait for the next placement. Before
    /// the settling time is over nothing is placed; the first placement adopts the instances
    /// agents already run (after a restart of the control plane).
    pub fn place(&mut self, desired: &BTreeMap<ServiceId, u32>, now: Instant) {
        if now < self.settle_until {
            return;
        }
        if !self.placed_once {
            self.placed_once = true;
            self.adopt(desired);
        }
        let failed = |fleet: &Fleet, node: &str, key: &(ServiceId, String)| {
            fleet
                .nodes
                .get(node)
                .and_then(|n| n.instances.get(key))
                .is_some_and(|i| i.state == "failed")
        };
        let kept: Vec<((ServiceId, String), String)> = self
            .placements
            .iter()
            .filter(|(key, node)| {
                desired.contains_key(&key.0)
                    && self.nodes.contains_key(*node)
                    && !failed(self, node, key)
            })
            .map(|(key, node)| (key.clone(), node.clone()))
            .collect();
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
        self.placements = kept.into_iter().collect();
        for (service, &count) in desired {
            let mut mine: Vec<(u32, String)> = self
                .placements
                .keys()
                .filter(|(s, _)| s == service)
                .filter_map(|(_, instance)| Some((number_of(instance)?, instance.clone())))
                .collect();
            mine.sort();
            while mine.len() > count as usize {
                if let Some((_, instance)) = mine.pop() {
                    self.placements.remove(&(service.clone(), instance));
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
                    .find(|n| !self.failed_anywhere(service, &instance_id(&service.2, *n)))
                    .unwrap_or(number);
                let instance = instance_id(&service.2, number);
                self.placements
                    .insert((service.clone(), instance.clone()), node);
                mine.push((number, instance));
                mine.sort();
            }
        }
    }

    /// Places the running instances agents report where they run, for the services in
    /// `desired` (surplus is trimmed by the placement that follows).
    fn adopt(&mut self, desired: &BTreeMap<ServiceId, u32>) {
        for (node_name, node) in &self.nodes {
            for (key, report) in &node.instances {
                if matches!(report.state.as_str(), "failed" | "stopped") {
                    continue;
                }
                if desired.contains_key(&key.0) {
                    self.placements
                        .entry(key.clone())
                        .or_insert_with(|| node_name.clone());
                }
            }
        }
    }

    /// Whether instance `instance` of `service` failed on some node.
    fn failed_anywhere(&self, service: &ServiceId, instance: &str) -> bool {
        let key = (service.clone(), instance.to_owned());
        self.nodes
            .values()
            .any(|n| n.instances.get(&key).is_some_and(|i| i.state == "failed"))
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

    /// The endpoints of each service in `region`: its placed instances that their node reports
    /// with an address, healthy or not.
    pub fn endpoints(&self, region: &str) -> BTreeMap<ServiceId, Vec<Endpoint>> {
        let mut endpoints: BTreeMap<ServiceId, Vec<Endpoint>> = BTreeMap::new();
        for (key, node) in &self.placements {
            let (service, instance) = key;
            let Some(report) = self.nodes.get(node).and_then(|n| n.instances.get(key)) else {
                continue;
            };
            if report.address.is_empty() {
                continue;
            }
            let health = match report.state.as_str() {
                "healthy" => EndpointHealth::Healthy,
                _ => EndpointHealth::Unhealthy,
            };
            endpoints
                .entry(service.clone())
                .or_default()
                .push(Endpoint {
                    org: service.0.clone(),
                    app: service.1.clone(),
                    service: service.2.clone(),
                    id: instance.clone(),
                    region: region.to_owned(),
                    address: report.address.clone(),
                    ports: BTreeMap::new(),
                    health,
                    updated_at: 0,
                });
        }
        endpoints
    }

    /// Counts of instances by state, for the region summary: (placed, healthy).
    pub fn summary(&self, service: &ServiceId) -> (usize, usize) {
        let mut placed = 0;
        let mut healthy = 0;
        for (key, node) in &self.placements {
            if key.0 != *service {
                continue;
            }
            placed += 1;
            let state = self
                .nodes
                .get(node)
                .and_then(|n| n.instances.get(key))
                .map(|i| i.state.as_str());
            if state == Some("healthy") {
                healthy += 1;
            }
        }
        (placed, healthy)
    }
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
                    org: "acme".to_owned(),
                    app: "shop".to_owned(),
                    service: instance.rsplit_once('-').map_or("", |(s, _)| s).to_owned(),
                    state: (*state).to_owned(),
                    address: "127.0.0.1".to_owned(),
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
    fn instances_of_the_same_id_in_two_orgs_keep_their_own_reports() {
        let start = Instant::now();
        let mut fleet = Fleet::new(start);
        fleet.report(node("a", 4, &[]), start);
        let (acme, other) = (
            service("web"),
            ("other".to_owned(), "shop".to_owned(), "web".to_owned()),
        );
        fleet.place(
            &BTreeMap::from([(acme.clone(), 1), (other.clone(), 1)]),
            start,
        );
        let ids: Vec<String> = fleet.placements().into_iter().map(|p| p.instance).collect();
        assert_eq!(ids, ["web-0", "web-0"]);
        let report = |org: &str, address: &str, state: &str| InstanceReport {
            instance: "web-0".to_owned(),
            org: org.to_owned(),
            app: "shop".to_owned(),
            service: "web".to_owned(),
            state: state.to_owned(),
            address: address.to_owned(),
            ..Default::default()
        };
        let reported = NodeReport {
            node: "a".to_owned(),
            capacity: 4,
            instances: vec![
                report("acme", "127.0.0.2", "healthy"),
                report("other", "127.0.0.3", "starting"),
            ],
        };
        fleet.report(reported, start);
        let endpoints = fleet.endpoints("fra");
        let of = |id: &ServiceId| {
            let e = &endpoints[id][0];
            (e.address.as_str(), e.health)
        };
        assert_eq!(of(&acme), ("127.0.0.2", EndpointHealth::Healthy));
        assert_eq!(of(&other), ("127.0.0.3", EndpointHealth::Unhealthy));
        assert_eq!(
            (fleet.summary(&acme), fleet.summary(&other)),
            ((1, 1), (1, 0))
        );
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
        assert!(failed);
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
        let mut report = node("b", 4, &[("web-1", "healthy"), ("gone-0", "healthy")]);
        for instance in &mut report.instances {
            instance.org = "acme".to_owned();
            instance.app = "shop".to_owned();
            instance.service = instance.instance.split('-').next().unwrap().to_owned();
        }
        fleet.report(report, start);
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
}
