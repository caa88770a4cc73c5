//! The region renders what a change touched, and nothing else; a render that fails keeps the
//! previous resources; overlapping renders never publish an older view over a newer one.

use std::time::{Duration, Instant};

use meridian_model::{derive_regional, Definition, EndpointHealth, ServiceSpec};
use meridian_xds::meridian::{Assignment, InstanceReport, Service, ASSIGNMENT, SERVICE};
use meridian_xds::{ENDPOINT, PROXY_NAMESPACE};
use prost::Message;

use super::publish::lock;
use super::*;
use crate::fleet::{InstanceKey, Placement};

const NODES: [&str; 2] = ["a", "b"];
const SERVICES: usize = 40;

fn deployment(name: &str, min: u32, domain: &str) -> RegionalDeployment {
    let definition: Definition = serde_json::from_value(serde_json::json!({
        "org": "acme", "app": "shop", "name": name, "regions": ["fra"],
        "scale": {"min": min, "max": 4},
        "runtime": {"process": {"command": "/bin/true"}},
        "ports": [{"name": "http", "port": 8080}],
        "routes": [{"path_prefix": "/", "port": "http"}],
        "domains": [domain],
    }))
    .unwrap();
    derive_regional(&definition, u64::from(min)).remove(0)
}

fn id(name: &str) -> ServiceId {
    ("acme".to_owned(), "shop".to_owned(), name.to_owned())
}

fn name(i: usize) -> String {
    format!("svc{i}")
}

/// A region running `SERVICES` services with one instance each, placed over two nodes whose
/// instances all report healthy.
struct Fixture {
    region: Region,
    cache: Arc<Cache>,
    start: Instant,
}

impl Fixture {
    fn new(encode_spec: EncodeSpec) -> Fixture {
        let cache = Cache::new();
        let mut registry = Registry::default();
        let region = Region::with_encoder(
            "fra",
            cache.clone(),
            GatewayListeners::default(),
            Some("meridian.test"),
            &mut registry,
            encode_spec,
        );
        let deployments = (0..SERVICES)
            .map(|i| deployment(&name(i), 1, &format!("{}.example.com", name(i))))
            .collect();
        region.replace_all(deployments, Vec::new());
        let fixture = Fixture {
            region,
            cache,
            start: Instant::now(),
        };
        for node in NODES {
            fixture.report(node, fixture.start, |_| "healthy");
        }
        fixture.region.tick(fixture.start + crate::fleet::SETTLE);
        for node in NODES {
            fixture.report(node, fixture.start, |_| "healthy");
        }
        fixture
    }

    /// Node `node` reports at `at` the instances placed on it, in the state `state` gives.
    fn report(&self, node: &str, at: Instant, state: impl Fn(&str) -> &'static str) {
        self.report_with(node, at, |p| InstanceReport {
            state: state(&p.instance).to_owned(),
            ..Default::default()
        });
    }

    /// Node `node` reports at `at` the instances placed on it, as `report` says (the
    /// instance's id, service and address are filled in, and its version unless `report`
    /// says one).
    fn report_with(&self, node: &str, at: Instant, report: impl Fn(&Placement) -> InstanceReport) {
        let instances = self
            .region
            .lock()
            .fleet
            .placements()
            .into_iter()
            .filter(|p| p.node == node)
            .map(|p| {
                let mut instance = report(&p);
                instance.address = format!("10.0.0.{}", p.instance.len());
                if instance.version == 0 {
                    instance.version = p.version;
                }
                (instance.org, instance.app, instance.service) = p.service;
                instance.instance = p.instance;
                instance
            })
            .collect();
        let report = NodeReport {
            node: node.to_owned(),
            capacity: 100,
            instances,
            ..Default::default()
        };
        self.region.report(report, at);
    }

    fn renders(&self) -> u64 {
        self.region.publisher.metrics.service_renders.get()
    }

    fn encodes(&self) -> u64 {
        self.region.publisher.metrics.assignment_encodes.get()
    }

    fn failures(&self) -> u64 {
        self.region.publisher.metrics.failures.get()
    }

    /// Every resource of `type_url` and its version.
    fn versions(&self, type_url: &str) -> BTreeMap<String, String> {
        self.cache
            .names(type_url, "")
            .into_iter()
            .filter_map(|name| {
                let version = self.cache.get(type_url, &name)?.version.clone();
                Some((name, version))
            })
            .collect()
    }

    /// The instances of service `name` and the nodes they are on.
    fn placed(&self, name: &str) -> Vec<(String, String)> {
        let state = self.region.lock();
        let id = id(name);
        let placed = state.fleet.placements_of(&id);
        placed
            .filter_map(|key| Some((key.1.clone(), state.fleet.node_of(key)?.0.to_owned())))
            .collect()
    }
}

/// The names whose version differs between two snapshots (or that only one has).
fn changed(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    let mut names: Vec<String> = before
        .iter()
        .filter(|(name, version)| after.get(*name) != Some(version))
        .map(|(name, _)| name.clone())
        .collect();
    names.extend(after.keys().filter(|n| !before.contains_key(*n)).cloned());
    names
}

#[test]
fn a_report_that_changes_one_instance_renders_its_service_only() {
    let fixture = Fixture::new(serde_json::to_vec);
    assert_eq!(fixture.versions(ASSIGNMENT).len(), SERVICES);
    let endpoints = fixture.versions(ENDPOINT);
    let (renders, encodes) = (fixture.renders(), fixture.encodes());

    // The same report again changes nothing.
    fixture.report("a", fixture.start, |_| "healthy");
    assert_eq!(fixture.renders(), renders);

    // One instance of svc3 becomes unhealthy: svc3 alone is rendered again.
    let (instance, node) = fixture.placed("svc3").remove(0);
    fixture.report(&node, fixture.start, |i| {
        if i == instance {
            "unhealthy"
        } else {
            "healthy"
        }
    });
    assert_eq!(fixture.renders(), renders + 1, "one service rendered");
    assert_eq!(fixture.encodes(), encodes, "no assignment encoded");
    let changed = changed(&endpoints, &fixture.versions(ENDPOINT));
    assert!(changed.contains(&format!("{PROXY_NAMESPACE}acme/shop/svc3:http")));
    assert!(
        changed.iter().all(|name| name.contains("/svc3")),
        "{changed:?}"
    );
}

/// Service `name`'s entry in another region, with healthy instances at `addresses`.
fn remote(name: &str, addresses: &[&str]) -> crate::RemoteService {
    let deployment = deployment(name, 1, &format!("{name}.example.com"));
    crate::RemoteService {
        id: id(name),
        version: deployment.version,
        spec: deployment.spec,
        addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
    }
}

#[test]
fn another_regions_entry_that_changes_renders_its_service_only() {
    let fixture = Fixture::new(serde_json::to_vec);
    let coordinates = BTreeMap::from([
        ("fra".to_owned(), (50.11, 8.68)),
        ("iad".to_owned(), (38.95, -77.45)),
    ]);
    let services = (0..SERVICES)
        .map(|i| remote(&name(i), &["10.9.0.1"]))
        .collect();
    let regions = BTreeMap::from([
        (
            "fra".to_owned(),
            crate::RemoteRegion {
                lat: 50.11,
                lon: 8.68,
                services: Vec::new(),
            },
        ),
        (
            "iad".to_owned(),
            crate::RemoteRegion {
                lat: 38.95,
                lon: -77.45,
                services,
            },
        ),
    ]);
    fixture.region.set_region_summaries(&regions);
    let services = fixture.versions(SERVICE);
    let renders = fixture.renders();

    // iad's entry of svc3 shows another instance: svc3 alone is rendered again.
    let svc3_grew = || crate::elsewhere::RemoteChanges {
        coordinates: coordinates.clone(),
        put: vec![("iad".to_owned(), remote("svc3", &["10.9.0.1", "10.9.0.2"]))],
        removed: Vec::new(),
    };
    fixture.region.update_other_regions(svc3_grew());
    assert_eq!(fixture.renders(), renders + 1, "one service rendered");
    let changed = changed(&services, &fixture.versions(SERVICE));
    assert!(!changed.is_empty());
    assert!(
        changed.iter().all(|name| name.contains("/svc3")),
        "{changed:?}"
    );

    // The same again, and nothing else, renders nothing.
    fixture.region.update_other_regions(svc3_grew());
    fixture
        .region
        .update_other_regions(crate::elsewhere::RemoteChanges {
            coordinates,
            ..Default::default()
        });
    assert_eq!(fixture.renders(), renders + 1, "nothing more rendered");
    assert_eq!(
        fixture.region.disk_copy().regions["iad"].services.len(),
        SERVICES
    );
}

#[test]
fn a_lost_node_re_encodes_the_assignments_of_its_instances_only() {
    let fixture = Fixture::new(serde_json::to_vec);
    let assignments = fixture.versions(ASSIGNMENT);
    let on_b = (0..SERVICES)
        .filter(|i| fixture.placed(&name(*i))[0].1 == "b")
        .count();
    assert!(
        on_b > 0 && on_b < SERVICES,
        "instances spread over both nodes"
    );
    let encodes = fixture.encodes();

    // Node b stops reporting; a goes on.
    let later = fixture.start + crate::fleet::NODE_TIMEOUT + Duration::from_secs(1);
    fixture.report("a", later, |_| "healthy");
    fixture.region.tick(later);

    assert_eq!(fixture.encodes(), encodes + on_b as u64);
    let now = fixture.versions(ASSIGNMENT);
    assert_eq!(now.len(), SERVICES);
    assert!(now.keys().all(|name| name.starts_with("node/a/")));
    let kept = assignments.iter().filter(|(n, v)| now.get(*n) == Some(v));
    assert_eq!(
        kept.count(),
        SERVICES - on_b,
        "node a's assignments untouched"
    );
}

/// Fails to encode the specs that claim `unencodable.example`, as a broken serialiser would.
fn failing(spec: &ServiceSpec) -> serde_json::Result<Vec<u8>> {
    if spec.domains.iter().any(|d| d == "unencodable.example") {
        return Err(<serde_json::Error as serde::ser::Error>::custom("broken"));
    }
    serde_json::to_vec(spec)
}

#[test]
fn a_spec_that_cannot_be_encoded_keeps_the_previous_resources() {
    let fixture = Fixture::new(failing);
    let services = fixture.versions(SERVICE);
    let assignments = fixture.versions(ASSIGNMENT);

    // svc1 gets a new deployment (two instances) whose spec cannot be encoded.
    let broken = deployment("svc1", 2, "unencodable.example");
    fixture
        .region
        .set_service(id("svc1"), Some(broken), Vec::new());

    assert_eq!(fixture.failures(), 1, "one failure, counted once");
    assert_eq!(
        fixture.versions(SERVICE),
        services,
        "no service resource changed"
    );
    assert_eq!(
        fixture.versions(ASSIGNMENT),
        assignments,
        "no assignment changed"
    );
    let name = format!("{}acme/shop/svc1", meridian_xds::meridian::MESH_NAMESPACE);
    let held = fixture.cache.get(SERVICE, &name).unwrap();
    let service = Service::decode(held.resource.value.as_slice()).unwrap();
    let spec: ServiceSpec = serde_json::from_slice(&service.spec_json).unwrap();
    assert_eq!(
        spec.domains,
        ["svc1.example.com"],
        "the previous spec, whole"
    );
    let assignment = fixture
        .cache
        .names(ASSIGNMENT, "")
        .into_iter()
        .find(|n| n.ends_with("/svc1-0"));
    let held = fixture.cache.get(ASSIGNMENT, &assignment.unwrap()).unwrap();
    let assignment = Assignment::decode(held.resource.value.as_slice()).unwrap();
    assert_eq!(assignment.version, 1);
    assert!(!assignment.spec_json.is_empty());

    // A deployment that can be encoded goes out.
    let fixed = deployment("svc1", 3, "svc1.example.com");
    fixture
        .region
        .set_service(id("svc1"), Some(fixed), Vec::new());
    assert_eq!(fixture.failures(), 1);
    assert_eq!(fixture.versions(ASSIGNMENT).len(), SERVICES + 2);
}

#[test]
fn an_older_render_never_overwrites_a_newer_one() {
    let cache = Cache::new();
    let publisher = Publisher::new(
        cache.clone(),
        GatewayListeners::default(),
        false,
        &mut Registry::default(),
        serde_json::to_vec,
    );
    let mut state = RegionState::new("fra", GatewayListeners::default(), None);
    let name = format!("{}acme/shop/web", meridian_xds::meridian::MESH_NAMESPACE);
    let version = |cache: &Cache| {
        let held = cache.get(SERVICE, &name)?;
        Some(
            Service::decode(held.resource.value.as_slice())
                .unwrap()
                .version,
        )
    };
    let take = |state: &mut RegionState, deployment: Option<RegionalDeployment>| {
        state.set_service(id("web"), deployment, Vec::new());
        let work = state.take_work();
        publisher.take_off(work.sequence);
        work
    };

    // Version 1 then 2 are taken; 2 is published first.
    let first = take(&mut state, Some(deployment("web", 1, "a.example")));
    let second = take(&mut state, Some(deployment("web", 2, "a.example")));
    publisher.publish(second);
    publisher.publish(first);
    assert_eq!(version(&cache), Some(2));

    // The service is removed, and a render of it taken before lands after the removal.
    let third = take(&mut state, Some(deployment("web", 3, "a.example")));
    let gone = take(&mut state, None);
    publisher.publish(gone);
    assert_eq!(version(&cache), None);
    publisher.publish(third);
    assert_eq!(version(&cache), None, "the removed service stays removed");
    assert!(lock(&publisher.published).in_flight.is_empty());
}

/// The version in the assignment of instance `instance`, if it is assigned.
fn assigned_version(fixture: &Fixture, instance: &str) -> Option<u64> {
    assigned_in(&fixture.cache, instance)
}

/// The version in the assignment of instance `instance` in `cache`, if it is assigned.
fn assigned_in(cache: &Cache, instance: &str) -> Option<u64> {
    Some(assignment_in(cache, instance)?.version)
}

/// The assignment of instance `instance` in `cache`, if it is assigned.
fn assignment_in(cache: &Cache, instance: &str) -> Option<Assignment> {
    let name = cache
        .names(ASSIGNMENT, "")
        .into_iter()
        .find(|n| n.ends_with(&format!("/{instance}")))?;
    let held = cache.get(ASSIGNMENT, &name)?;
    Assignment::decode(held.resource.value.as_slice()).ok()
}

/// The command in the assignment of instance `instance`, if it is assigned.
fn assigned_command(fixture: &Fixture, instance: &str) -> Option<String> {
    let assignment = assignment_in(&fixture.cache, instance)?;
    let spec: ServiceSpec = serde_json::from_slice(&assignment.spec_json).ok()?;
    spec.runtime.process.map(|p| p.command)
}

/// The instances of `svc` the region's endpoints list as healthy.
fn healthy_instances(region: &Region, svc: &ServiceId) -> Vec<String> {
    let endpoints = region.lock().fleet.endpoints(svc, "fra");
    let healthy = endpoints
        .into_iter()
        .filter(|e| e.health == EndpointHealth::Healthy);
    healthy.map(|e| e.id).collect()
}

/// svc0 as `deployment` makes it, with `command`, at `version`.
fn svc0(command: &str, version: u64) -> RegionalDeployment {
    let mut deployment = deployment("svc0", 1, "svc0.example.com");
    if let Some(process) = deployment.spec.runtime.process.as_mut() {
        process.command = command.to_owned();
    }
    deployment.version = version;
    deployment
}

#[test]
fn a_rollout_keeps_the_old_instance_on_its_spec_until_it_drained() {
    let fixture = Fixture::new(serde_json::to_vec);
    let svc = id("svc0");
    let in_service = || healthy_instances(&fixture.region, &svc);
    assert_eq!(in_service(), ["svc0-0"]);

    // The same spec as a new version: the instance takes it, nothing else moves.
    fixture
        .region
        .set_service(svc.clone(), Some(svc0("/bin/true", 2)), Vec::new());
    assert_eq!(assigned_version(&fixture, "svc0-0"), Some(2));
    assert_eq!(assigned_version(&fixture, "svc0-1"), None);

    // Another command: a new instance beside the old one, which keeps its version's spec.
    fixture
        .region
        .set_service(svc.clone(), Some(svc0("/bin/false", 3)), Vec::new());
    assert_eq!(assigned_version(&fixture, "svc0-0"), Some(2));
    assert_eq!(assigned_version(&fixture, "svc0-1"), Some(3));
    let later = fixture.start + Duration::from_millis(100);
    for node in NODES {
        fixture.report(node, later, |i| {
            if i == "svc0-1" {
                "starting"
            } else {
                "healthy"
            }
        });
    }
    assert_eq!(in_service(), ["svc0-0"]);

    // The new one is ready: the old one leaves the endpoints at once, its assignment after
    // the proxies' acknowledgements (or their bound) and the drain delay.
    for node in NODES {
        fixture.report(node, later, |_| "healthy");
    }
    assert_eq!(in_service(), ["svc0-1"]);
    assert_eq!(assigned_version(&fixture, "svc0-0"), Some(2));
    let due = later + ACK_WAIT + Duration::from_secs(1);
    assert_eq!(fixture.region.drain(later), Some(due));
    assert_eq!(fixture.region.drain(due), None);
    assert_eq!(assigned_version(&fixture, "svc0-0"), None);
    assert_eq!(assigned_version(&fixture, "svc0-1"), Some(3));
}

#[test]
fn a_restarted_region_goes_on_with_the_rollout_it_finds() {
    let fixture = Fixture::new(serde_json::to_vec);
    let svc = id("svc0");
    fixture
        .region
        .set_service(svc.clone(), Some(svc0("/bin/false", 3)), Vec::new());
    let placed: Vec<Placement> = fixture.region.lock().fleet.placements();
    let copy = fixture.region.disk_copy();
    assert_eq!(copy.older.len(), 1, "version 1 of svc0, which svc0-0 runs");

    // A new control plane restores the copy; the agents report what they run.
    let cache = Cache::new();
    let region = Region::new(
        "fra",
        cache.clone(),
        GatewayListeners::default(),
        Some("meridian.test"),
        &mut Registry::default(),
    );
    region.restore(copy);
    let start = Instant::now();
    let report = |node: &str, ready: bool| {
        let instances = placed
            .iter()
            .filter(|p| p.node == node && p.service == svc)
            .map(|p| InstanceReport {
                state: if p.version == 1 || ready {
                    "healthy"
                } else {
                    "starting"
                }
                .to_owned(),
                address: format!("10.0.0.{}", p.instance.len()),
                org: p.service.0.clone(),
                app: p.service.1.clone(),
                service: p.service.2.clone(),
                instance: p.instance.clone(),
                version: p.version,
                ..Default::default()
            })
            .collect();
        NodeReport {
            node: node.to_owned(),
            capacity: 100,
            instances,
            ..Default::default()
        }
    };
    for node in NODES {
        region.report(report(node, false), start);
    }
    region.tick(start + crate::fleet::SETTLE);

    // Each instance keeps the version it runs; the old one serves until the new one is ready.
    assert_eq!(assigned_in(&cache, "svc0-0"), Some(1));
    assert_eq!(assigned_in(&cache, "svc0-1"), Some(3));
    let serving = || healthy_instances(&region, &svc);
    assert_eq!(serving(), ["svc0-0"]);
    assert!(region.take_ack_waits().is_empty());
    for node in NODES {
        region.report(report(node, true), start + crate::fleet::SETTLE);
    }
    assert_eq!(serving(), ["svc0-1"]);
    // The old one drains as it would have: its removal waits for the proxies again.
    let waits: Vec<InstanceKey> = region
        .take_ack_waits()
        .into_iter()
        .map(|w| w.instance)
        .collect();
    assert_eq!(waits, [(svc.clone(), "svc0-0".to_owned())]);
}

/// Rolls svc0 over to another command: the old instance svc0-0 starts draining. Returns its
/// wait for the proxies' acknowledgements and when it started.
fn drain_svc0(fixture: &Fixture) -> (AckWait, Instant) {
    let svc = id("svc0");
    fixture
        .region
        .set_service(svc.clone(), Some(svc0("/bin/false", 2)), Vec::new());
    let now = Instant::now();
    for node in NODES {
        fixture.report(node, now, |_| "healthy");
    }
    assert_eq!(healthy_instances(&fixture.region, &svc), ["svc0-1"]);
    let mut waits = fixture.region.take_ack_waits();
    assert_eq!(waits.len(), 1);
    let wait = waits.remove(0);
    assert_eq!(wait.instance, (svc, "svc0-0".to_owned()));
    (wait, now)
}

#[tokio::test(start_paused = true)]
async fn a_drain_waits_for_the_proxies_that_had_the_endpoints_and_then_its_delay() {
    let fixture = Fixture::new(serde_json::to_vec);
    // A proxy subscribed to every service's instances, which has not acknowledged anything
    // yet.
    let mut proxy = fixture.cache.subscriber();
    proxy.subscribe_wildcard(SERVICE, "");
    let (wait, started) = drain_svc0(&fixture);
    let waiting = fixture.region.wait_for_acks(&wait);
    tokio::pin!(waiting);
    let second = tokio::time::timeout(Duration::from_secs(1), &mut waiting).await;
    assert!(second.is_err(), "the proxy has not acknowledged");
    let bound = started + ACK_WAIT + Duration::from_secs(1);
    assert_eq!(fixture.region.drain(started), Some(bound));
    assert_eq!(assigned_version(&fixture, "svc0-0"), Some(1));

    // The proxy goes away (as one that acknowledged, it owes nothing more).
    drop(proxy);
    assert!(waiting.await, "acknowledged");
    assert_eq!(fixture.region.drain_metrics.timeouts.get(), 0);
    let due = fixture.region.drain(Instant::now()).unwrap();
    assert!(
        due < bound,
        "the drain delay now counts from the acknowledgement"
    );
    assert_eq!(fixture.region.drain(due), None);
    assert_eq!(assigned_version(&fixture, "svc0-0"), None);
    assert_eq!(assigned_version(&fixture, "svc0-1"), Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_proxy_that_never_acknowledges_delays_a_drain_only_to_its_bound_which_is_counted() {
    let fixture = Fixture::new(serde_json::to_vec);
    let mut proxy = fixture.cache.subscriber();
    proxy.subscribe_wildcard(SERVICE, "");
    let (wait, started) = drain_svc0(&fixture);
    let waited = tokio::time::Instant::now();
    assert!(!fixture.region.wait_for_acks(&wait).await);
    assert_eq!(waited.elapsed(), ACK_WAIT);
    assert_eq!(fixture.region.drain_metrics.timeouts.get(), 1);
    // Removed at its bound, not later.
    let bound = started + ACK_WAIT + Duration::from_secs(1);
    assert!(fixture
        .region
        .drain(started)
        .is_some_and(|due| due <= bound));
    assert_eq!(fixture.region.drain(bound), None);
    assert_eq!(assigned_version(&fixture, "svc0-0"), None);
    drop(proxy);
}

#[tokio::test(start_paused = true)]
async fn a_drain_nobody_subscribed_to_waits_for_nothing() {
    let fixture = Fixture::new(serde_json::to_vec);
    let (wait, _) = drain_svc0(&fixture);
    let waited = tokio::time::Instant::now();
    assert!(fixture.region.wait_for_acks(&wait).await);
    assert_eq!(waited.elapsed(), Duration::ZERO);
}

/// Every node reports its instances healthy, but those `crashed` names: unhealthy, having
/// exited.
fn report_crashed(fixture: &Fixture, at: Instant, crashed: &[&str]) {
    for node in NODES {
        fixture.report_with(node, at, |p| {
            let down = crashed.contains(&p.instance.as_str());
            InstanceReport {
                state: if down { "unhealthy" } else { "healthy" }.to_owned(),
                detail: if down {
                    "exited (exit status: 1); restarting in 1s"
                } else {
                    ""
                }
                .to_owned(),
                ..Default::default()
            }
        });
    }
}

/// svc0's rollout as the region reports it upward.
fn rollout_of(region: &Region) -> Option<meridian_model::RolloutStatus> {
    let report = region.report_upward();
    let svc0 = report.services.into_iter().find(|s| s.service == "svc0")?;
    svc0.rollout
}

/// A new region (as a restarted regional control plane) that restored `fixture`'s disk copy.
fn restarted(fixture: &Fixture) -> Region {
    let region = Region::new(
        "fra",
        Cache::new(),
        GatewayListeners::default(),
        Some("meridian.test"),
        &mut Registry::default(),
    );
    region.restore(fixture.region.disk_copy());
    region
}

#[test]
fn a_report_of_an_earlier_versions_instance_of_the_same_id_fails_no_gate() {
    use meridian_model::RolloutPhase;
    let fixture = Fixture::new(serde_json::to_vec);
    fixture
        .region
        .set_service(id("svc0"), Some(svc0("/bin/false", 2)), Vec::new());
    assert_eq!(assigned_version(&fixture, "svc0-1"), Some(2));
    // The agent still reports svc0-1 as the version 1 instance it stops.
    let later = fixture.start + Duration::from_millis(100);
    for node in NODES {
        fixture.report_with(node, later, |p| InstanceReport {
            state: "starting".to_owned(),
            restarts: u32::from(p.instance == "svc0-1"),
            detail: "no longer assigned".to_owned(),
            version: 1,
            ..Default::default()
        });
    }
    let rollout = rollout_of(&fixture.region).unwrap();
    assert_eq!(rollout.phase, RolloutPhase::Progressing, "{rollout:?}");
    // Its report as the version rolled out does.
    report_crashed(&fixture, later, &["svc0-1"]);
    let rollout = rollout_of(&fixture.region).unwrap();
    assert_ne!(rollout.phase, RolloutPhase::Progressing, "{rollout:?}");
    let failure = rollout.failure.unwrap();
    assert!(failure.reason.contains("exited"), "{}", failure.reason);
}

#[test]
fn a_new_version_that_crashes_is_rolled_back_and_the_region_says_why() {
    use meridian_model::{Gate, RolloutPhase};
    let fixture = Fixture::new(serde_json::to_vec);
    let svc = id("svc0");
    fixture
        .region
        .set_service(svc.clone(), Some(svc0("/bin/false", 2)), Vec::new());
    let rollout = rollout_of(&fixture.region).unwrap();
    assert_eq!((rollout.version, rollout.previous), (2, 1));
    assert_eq!(rollout.phase, RolloutPhase::Progressing);
    assert_eq!(assigned_version(&fixture, "svc0-1"), Some(2));

    // The new instance crashes: the rollout fails at once, the new one drains, the old one
    // serves on.
    let later = fixture.start + Duration::from_millis(100);
    report_crashed(&fixture, later, &["svc0-1"]);
    let rollout = rollout_of(&fixture.region).unwrap();
    assert_eq!(rollout.phase, RolloutPhase::RolledBack, "{rollout:?}");
    let failure = rollout.failure.unwrap();
    assert_eq!(failure.gate, Gate::CrashLoop);
    assert_eq!(failure.instance.as_deref(), Some("svc0-1"));
    assert!(
        failure.reason.contains("exited (exit status: 1)"),
        "{}",
        failure.reason
    );
    assert_eq!(healthy_instances(&fixture.region, &svc), ["svc0-0"]);
    let report = fixture.region.report_upward();
    let health = report
        .services
        .iter()
        .find(|s| s.service == "svc0")
        .unwrap();
    assert!(
        health.versions.is_empty(),
        "back on one version: {health:?}"
    );
    meridian_model::validate_region_report(&report).unwrap();
    let due = fixture.region.drain(later).unwrap();
    fixture.region.drain(due);
    assert_eq!(assigned_version(&fixture, "svc0-1"), None);
    assert_eq!(assigned_version(&fixture, "svc0-0"), Some(1));

    // A restarted region stays on the previous version and keeps the reason.
    let region = restarted(&fixture);
    assert_eq!(rollout_of(&region).unwrap().phase, RolloutPhase::RolledBack);
    assert_eq!(
        region.lock().desired(&svc, &svc0("/bin/false", 2)).version,
        1
    );

    // The same version applied again (a retry) rolls out anew.
    fixture
        .region
        .set_service(svc.clone(), Some(svc0("/bin/false", 3)), Vec::new());
    let rollout = rollout_of(&fixture.region).unwrap();
    assert_eq!((rollout.version, rollout.previous), (3, 1));
    assert_eq!(rollout.phase, RolloutPhase::Progressing);
}

#[test]
fn a_rollback_starts_the_previous_version_again_when_its_instances_were_gone() {
    use meridian_model::{Amount, RolloutPhase};
    let fixture = Fixture::new(serde_json::to_vec);
    let svc = id("svc0");
    // No surge: the old instance leaves before the new one starts.
    let mut next = svc0("/bin/false", 2);
    next.spec.deploy.max_surge = Amount::Count(0);
    next.spec.deploy.max_unavailable = Amount::Count(1);
    fixture
        .region
        .set_service(svc.clone(), Some(next), Vec::new());
    assert_eq!(assigned_version(&fixture, "svc0-1"), Some(2));
    let later = fixture.start + Duration::from_millis(100);
    let due = fixture.region.drain(later).unwrap();
    fixture.region.drain(due);
    assert_eq!(
        assigned_version(&fixture, "svc0-0"),
        None,
        "the old one is gone"
    );

    for node in NODES {
        fixture.report(node, due, |_| "starting");
    }

    // The new one crashes: an instance of version 1 starts again, with version 1's spec
    // (rendered in the same work as the service's endpoints, with the current spec).
    report_crashed(&fixture, due, &["svc0-1"]);
    assert_eq!(
        rollout_of(&fixture.region).unwrap().phase,
        RolloutPhase::Failed
    );
    assert_eq!(assigned_version(&fixture, "svc0-0"), Some(1));
    assert_eq!(
        assigned_command(&fixture, "svc0-0").as_deref(),
        Some("/bin/true")
    );
    report_crashed(&fixture, due, &[]);
    assert_eq!(healthy_instances(&fixture.region, &svc), ["svc0-0"]);
    assert_eq!(
        rollout_of(&fixture.region).unwrap().phase,
        RolloutPhase::RolledBack
    );
}

#[test]
fn a_version_that_passes_its_gates_succeeds() {
    use meridian_model::RolloutPhase;
    let fixture = Fixture::new(serde_json::to_vec);
    let svc = id("svc0");
    fixture
        .region
        .set_service(svc.clone(), Some(svc0("/bin/false", 2)), Vec::new());
    let later = fixture.start + Duration::from_millis(100);
    report_crashed(&fixture, later, &[]);
    assert_eq!(healthy_instances(&fixture.region, &svc), ["svc0-1"]);
    let rollout = rollout_of(&fixture.region).unwrap();
    assert_eq!(rollout.phase, RolloutPhase::Succeeded);
    assert_eq!(rollout.failure, None);
}

/// The clusters the gateway's route for svc0 goes to, with their weights (100 for a single
/// cluster).
fn gateway_split(fixture: &Fixture) -> Vec<(String, u32)> {
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    let name = format!("{}gateway", meridian_xds::role_namespace("gateway"));
    let held = fixture.cache.get(meridian_xds::ROUTE, &name).unwrap();
    let routes = RouteConfiguration::decode(held.resource.value.as_slice()).unwrap();
    let host = routes
        .virtual_hosts
        .iter()
        .find(|v| v.name == "acme/shop/svc0")
        .unwrap();
    let Some(Action::Route(action)) = &host.routes[0].action else {
        panic!("{host:?}");
    };
    match &action.cluster_specifier {
        Some(ClusterSpecifier::Cluster(cluster)) => vec![(cluster.clone(), 100)],
        Some(ClusterSpecifier::WeightedClusters(split)) => split
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value)))
            .collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_canary_splits_the_gateways_requests_once_ready_and_stops_at_once_when_a_gate_fails() {
    use meridian_model::{CanaryStep, HumanDuration, RolloutPhase, Strategy};
    let fixture = Fixture::new(serde_json::to_vec);
    let svc = id("svc0");
    let mut next = svc0("/bin/false", 2);
    next.spec.deploy.strategy = Strategy::Canary;
    next.spec.deploy.steps = vec![CanaryStep {
        weight: 30,
        pause: HumanDuration(Duration::from_secs(3600)),
    }];
    fixture
        .region
        .set_service(svc.clone(), Some(next), Vec::new());
    let whole = || vec![("acme/shop/svc0:http".to_owned(), 100)];
    assert_eq!(
        gateway_split(&fixture),
        whole(),
        "not before the new set is ready"
    );

    // Ready: 30 % to the new set's cluster, which the service's no longer lists.
    let later = fixture.start + Duration::from_millis(100);
    report_crashed(&fixture, later, &[]);
    assert_eq!(
        gateway_split(&fixture),
        [
            ("acme/shop/svc0:http".to_owned(), 70),
            ("acme/shop/svc0:http/canary".to_owned(), 30)
        ]
    );
    let rollout = rollout_of(&fixture.region).unwrap();
    assert_eq!((rollout.step, rollout.weights.len()), (0, 2));
    assert_eq!(
        healthy_instances(&fixture.region, &svc),
        ["svc0-0", "svc0-1"]
    );
    assert_eq!(assigned_version(&fixture, "svc0-0"), Some(1), "held beside");

    // The new instance crashes: the split ends in the same change, the new set leaves.
    report_crashed(&fixture, later, &["svc0-1"]);
    assert_eq!(gateway_split(&fixture), whole());
    assert_eq!(
        rollout_of(&fixture.region).unwrap().phase,
        RolloutPhase::RolledBack
    );
    assert_eq!(healthy_instances(&fixture.region, &svc), ["svc0-0"]);
}

#[test]
fn a_promoted_canary_s_kept_set_takes_a_return_back_at_once_without_canary_steps() {
    use meridian_model::{CanaryStep, HumanDuration, RolloutPhase, Strategy};
    let fixture = Fixture::new(serde_json::to_vec);
    let svc = id("svc0");
    let canary = |command: &str, version: u64| {
        let mut deployment = svc0(command, version);
        let deploy = &mut deployment.spec.deploy;
        deploy.strategy = Strategy::Canary;
        deploy.keep_previous = Some(HumanDuration(Duration::from_secs(3600)));
        deploy.steps = vec![CanaryStep {
            weight: 30,
            pause: HumanDuration(Duration::ZERO),
        }];
        deployment
    };
    fixture
        .region
        .set_service(svc.clone(), Some(canary("/bin/false", 2)), Vec::new());
    let later = fixture.start + Duration::from_millis(100);
    report_crashed(&fixture, later, &[]);
    assert_eq!(
        rollout_of(&fixture.region).unwrap().weights.len(),
        2,
        "30 %"
    );
    // Promoted: the split ends and the old set leaves service, kept for an hour.
    let promote = meridian_model::RolloutControl {
        version: 2,
        mode: meridian_model::RolloutMode::Promoted,
    };
    fixture.region.set_rollout_control(&svc, Some(promote));
    assert_eq!(
        rollout_of(&fixture.region).unwrap().phase,
        RolloutPhase::Succeeded
    );
    assert_eq!(healthy_instances(&fixture.region, &svc), ["svc0-1"]);
    assert_eq!(assigned_version(&fixture, "svc0-0"), Some(1), "kept");

    // Version 3 runs as version 1 did: its kept instance serves again at once, in one
    // switch (no canary step), and nothing starts.
    fixture
        .region
        .set_service(svc.clone(), Some(canary("/bin/true", 3)), Vec::new());
    assert_eq!(healthy_instances(&fixture.region, &svc), ["svc0-0"]);
    assert_eq!(assigned_version(&fixture, "svc0-0"), Some(3));
    assert_eq!(assigned_version(&fixture, "svc0-2"), None);
    let rollout = rollout_of(&fixture.region).unwrap();
    assert_eq!(
        (rollout.strategy, rollout.previous),
        (Strategy::BlueGreen, 2)
    );
    assert_eq!(
        gateway_split(&fixture),
        [("acme/shop/svc0:http".to_owned(), 100)]
    );
}

#[test]
fn a_paused_rollout_stays_paused_in_a_restarted_region_until_resumed() {
    use meridian_model::{RolloutControl, RolloutMode, RolloutPhase};
    let fixture = Fixture::new(serde_json::to_vec);
    let svc = id("svc0");
    fixture
        .region
        .set_service(svc.clone(), Some(svc0("/bin/false", 3)), Vec::new());
    let paused = RolloutControl {
        version: 3,
        mode: RolloutMode::Paused,
    };
    fixture.region.set_rollout_control(&svc, Some(paused));
    assert_eq!(
        rollout_of(&fixture.region).unwrap().phase,
        RolloutPhase::Paused
    );

    let region = restarted(&fixture);
    assert_eq!(rollout_of(&region).unwrap().phase, RolloutPhase::Paused);
    // The global control plane says the same again: nothing changes; then it resumes.
    region.set_rollout_control(&svc, Some(paused));
    assert_eq!(rollout_of(&region).unwrap().phase, RolloutPhase::Paused);
    region.set_rollout_control(&svc, None);
    assert_eq!(
        rollout_of(&region).unwrap().phase,
        RolloutPhase::Progressing
    );
}

/// Every node reports its instances healthy, the new version's (`version`) having answered
/// `requests` of which `failures` failed, all within 1 ms.
fn report_traffic(fixture: &Fixture, version: u64, requests: u64, failures: u64) {
    let bounds = meridian_xds::meridian::LATENCY_BOUNDS_MS.len();
    for node in NODES {
        fixture.report_with(node, Instant::now(), |p| {
            let mut latency_buckets = vec![0; bounds + 1];
            let (requests, failures) = if p.version == version {
                (requests, failures)
            } else {
                (0, 0)
            };
            latency_buckets[0] = requests;
            InstanceReport {
                state: "healthy".to_owned(),
                traffic: Some(meridian_xds::meridian::Traffic {
                    requests,
                    failures,
                    latency_buckets,
                    ..Default::default()
                }),
                ..Default::default()
            }
        });
    }
}

#[test]
fn a_rolling_deploy_under_analysis_ends_only_after_a_full_window_within_bounds() {
    use meridian_model::{Gate, RolloutPhase};
    let fixture = Fixture::new(serde_json::to_vec);
    let svc = id("svc0");
    let analysed = |version: u64, command: &str| {
        let mut next = svc0(command, version);
        next.spec.deploy.analysis = Some(
            serde_json::from_str(
                r#"{"window": "1s", "min_requests": 5, "success_rate": {"min": "99%"}}"#,
            )
            .unwrap(),
        );
        next
    };
    fixture
        .region
        .set_service(svc.clone(), Some(analysed(2, "/bin/false")), Vec::new());
    // The new instance is ready and alone in service, but has answered nothing: held.
    report_traffic(&fixture, 2, 0, 0);
    assert_eq!(healthy_instances(&fixture.region, &svc), ["svc0-1"]);
    let phase = || rollout_of(&fixture.region).unwrap().phase;
    assert_eq!(phase(), RolloutPhase::Progressing);
    // It answers: still held until a full window of requests passed, then it succeeds.
    let first = Instant::now();
    let mut requests = 0;
    while phase() == RolloutPhase::Progressing {
        assert!(first.elapsed() < Duration::from_secs(10), "never ended");
        requests += 10;
        report_traffic(&fixture, 2, requests, 0);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        first.elapsed() >= Duration::from_secs(1),
        "{:?}",
        first.elapsed()
    );
    let rollout = rollout_of(&fixture.region).unwrap();
    assert_eq!(rollout.phase, RolloutPhase::Succeeded);
    let figures = rollout.analysis.unwrap();
    assert_eq!(figures.versions[0].version, 2);
    assert!(figures.versions[0].requests >= 5, "{figures:?}");

    // A version failing 2 of 10 requests fails the gate at the report that says so.
    fixture
        .region
        .set_service(svc.clone(), Some(analysed(3, "/bin/true")), Vec::new());
    report_traffic(&fixture, 3, 0, 0);
    report_traffic(&fixture, 3, 10, 2);
    let rollout = rollout_of(&fixture.region).unwrap();
    assert!(rollout.phase.failed(), "{rollout:?}");
    let failure = rollout.failure.unwrap();
    assert_eq!(
        (failure.gate, failure.observed, failure.limit),
        (Gate::SuccessRate, 8_000, 9_900)
    );
}

#[test]
fn a_promoted_rollout_is_not_held_for_its_analysis_window() {
    use meridian_model::{
        CanaryStep, HumanDuration, RolloutControl, RolloutMode, RolloutPhase, Strategy,
    };
    let fixture = Fixture::new(serde_json::to_vec);
    let svc = id("svc0");
    let mut next = svc0("/bin/false", 2);
    let deploy = &mut next.spec.deploy;
    deploy.strategy = Strategy::Canary;
    deploy.steps = vec![CanaryStep {
        weight: 30,
        pause: HumanDuration(Duration::ZERO),
    }];
    deploy.analysis = Some(
        serde_json::from_str(
            r#"{"window": "1h", "min_requests": 5, "success_rate": {"min": "99%"}}"#,
        )
        .unwrap(),
    );
    fixture
        .region
        .set_service(svc.clone(), Some(next), Vec::new());
    report_traffic(&fixture, 2, 10, 0);
    let phase = || rollout_of(&fixture.region).unwrap().phase;
    assert_eq!(phase(), RolloutPhase::Progressing, "held for its window");
    let promote = RolloutControl {
        version: 2,
        mode: RolloutMode::Promoted,
    };
    fixture.region.set_rollout_control(&svc, Some(promote));
    report_traffic(&fixture, 2, 20, 0);
    assert_eq!(phase(), RolloutPhase::Succeeded);
}

#[test]
fn secret_values_go_only_to_assignments_that_reference_them_and_never_to_the_disk_copy() {
    let fixture = Fixture::new(serde_json::to_vec);
    let value = |version: u64, value: &str| meridian_xds::meridian::SecretValue {
        name: "DB".to_owned(),
        version,
        value: value.to_owned(),
    };
    let mut using = deployment("svc1", 1, "svc1.example.com");
    using.spec.runtime.env_mut().unwrap().insert(
        "PASSWORD".to_owned(),
        serde_json::from_str(r#"{"secret":"DB"}"#).unwrap(),
    );
    using.spec.secrets.insert("DB".to_owned(), 1);
    fixture
        .region
        .set_secrets(&id("svc1"), vec![value(1, "first-value")]);
    fixture
        .region
        .set_service(id("svc1"), Some(using.clone()), Vec::new());
    let delivered = |instance: &str| {
        assignment_in(&fixture.cache, instance)
            .unwrap()
            .secrets
            .into_iter()
            .map(|s| (s.name, s.version, s.value))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        delivered("svc1-0"),
        [("DB".to_owned(), 1, "first-value".to_owned())]
    );
    assert_eq!(delivered("svc2-0"), []);

    // A new version: the value comes first, then the spec that names it.
    fixture
        .region
        .set_secrets(&id("svc1"), vec![value(2, "second-value")]);
    using.spec.secrets.insert("DB".to_owned(), 2);
    fixture
        .region
        .set_service(id("svc1"), Some(using), Vec::new());
    assert_eq!(
        delivered("svc1-0"),
        [("DB".to_owned(), 2, "second-value".to_owned())]
    );
    let spec: ServiceSpec =
        serde_json::from_slice(&assignment_in(&fixture.cache, "svc1-0").unwrap().spec_json)
            .unwrap();
    assert_eq!(spec.secrets.get("DB"), Some(&2));

    let copy = serde_json::to_string(&fixture.region.disk_copy()).unwrap();
    assert!(copy.contains("\"DB\""), "the copy names the secret");
    assert!(!copy.contains("first-value") && !copy.contains("second-value"));
}

#[test]
fn an_older_version_keeps_a_secret_value_the_new_one_dropped_while_it_runs() {
    let fixture = Fixture::new(serde_json::to_vec);
    let value = meridian_xds::meridian::SecretValue {
        name: "DB".to_owned(),
        version: 1,
        value: "kept-value".to_owned(),
    };
    let mut using = deployment("svc1", 1, "svc1.example.com");
    using.spec.runtime.env_mut().unwrap().insert(
        "PASSWORD".to_owned(),
        serde_json::from_str(r#"{"secret":"DB"}"#).unwrap(),
    );
    using.spec.secrets.insert("DB".to_owned(), 1);
    fixture.region.set_secrets(&id("svc1"), vec![value]);
    fixture
        .region
        .set_service(id("svc1"), Some(using), Vec::new());
    let delivered = |instance: &str| {
        assignment_in(&fixture.cache, instance)
            .map(|a| a.secrets.into_iter().map(|s| s.value).collect::<Vec<_>>())
    };
    assert_eq!(delivered("svc1-0"), Some(vec!["kept-value".to_owned()]));

    // Version 2 references no secret: the global plane sends none; the running version-1
    // instance keeps its value, the new one gets none.
    fixture.region.set_secrets(&id("svc1"), Vec::new());
    fixture.region.set_service(
        id("svc1"),
        Some(deployment("svc1", 2, "svc1.example.com")),
        Vec::new(),
    );
    assert_eq!(delivered("svc1-0"), Some(vec!["kept-value".to_owned()]));
    assert_eq!(delivered("svc1-1"), Some(vec![]));

    // Once the service is gone, so is the value.
    fixture.region.set_secrets(&id("svc1"), Vec::new());
    fixture.region.set_service(id("svc1"), None, Vec::new());
    assert_eq!(delivered("svc1-0"), None);
}

/// Every node reports its instances healthy at `at`, svc0's with `in_flight` requests each.
fn report_in_flight(fixture: &Fixture, at: Instant, in_flight: u64) {
    for node in NODES {
        fixture.report_with(node, at, |p| InstanceReport {
            state: "healthy".to_owned(),
            traffic: Some(meridian_xds::meridian::Traffic {
                in_flight: if p.service.2 == "svc0" { in_flight } else { 0 },
                ..Default::default()
            }),
            ..Default::default()
        });
    }
}

/// svc0's autoscaling as the region reports it upward: (placed, current, desired).
fn autoscaled(region: &Region) -> (u32, u32, u32) {
    let report = region.report_upward();
    let svc0 = report.services.into_iter().find(|s| s.service == "svc0");
    let svc0 = svc0.unwrap();
    let status = svc0.autoscale.unwrap();
    (svc0.placed, status.current, status.desired)
}

#[test]
fn an_autoscaled_service_gets_instances_under_load_and_drains_them_after_the_down_window() {
    let fixture = Fixture::new(serde_json::to_vec);
    let svc = id("svc0");
    let mut scaled = svc0("/bin/true", 2);
    scaled.spec.scale.targets = serde_json::from_str(r#"{"concurrency": 2}"#).unwrap();
    scaled.spec.scale.down_window = serde_json::from_str(r#""10s""#).unwrap();
    fixture
        .region
        .set_service(svc.clone(), Some(scaled), Vec::new());
    let second = |s: u64| fixture.start + Duration::from_secs(10 + s);
    report_in_flight(&fixture, second(0), 1);
    assert_eq!(autoscaled(&fixture.region), (1, 1, 1));

    // 7 in flight at 2 each would want 4, the max: once the rise lasted a second.
    report_in_flight(&fixture, second(1), 7);
    assert_eq!(autoscaled(&fixture.region).2, 1, "not at once");
    fixture.region.tick(second(2));
    assert_eq!(autoscaled(&fixture.region), (4, 1, 4));
    // The new ones count once they have figures over a span (2 each: still 4 wanted).
    report_in_flight(&fixture, second(2), 2);
    report_in_flight(&fixture, second(2) + Duration::from_millis(600), 2);
    assert_eq!(healthy_instances(&fixture.region, &svc).len(), 4);

    // A restarted control plane adopts the four its agents run, and trims none to `min`.
    let region = restarted(&fixture);
    let restart = Instant::now();
    for node in NODES {
        let instances = fixture
            .region
            .lock()
            .fleet
            .placements()
            .into_iter()
            .filter(|p| p.node == node)
            .map(|p| InstanceReport {
                state: "healthy".to_owned(),
                address: format!("10.0.0.{}", p.instance.len()),
                version: p.version,
                org: p.service.0,
                app: p.service.1,
                service: p.service.2,
                instance: p.instance,
                ..Default::default()
            })
            .collect();
        let report = NodeReport {
            node: node.to_owned(),
            capacity: 100,
            instances,
            ..Default::default()
        };
        region.report(report, restart);
    }
    region.tick(restart + crate::fleet::SETTLE);
    assert_eq!(healthy_instances(&region, &svc).len(), 4, "adopted");
    assert_eq!(autoscaled(&region), (4, 4, 4));

    // The load stops, which wants 1: held for the 10 s window, then the others drain.
    for s in 3..=12 {
        fixture.region.tick(second(s));
        report_in_flight(&fixture, second(s), 0);
        assert_eq!(autoscaled(&fixture.region).2, 4, "at second {s}");
    }
    fixture.region.tick(second(13));
    assert_eq!(autoscaled(&fixture.region), (1, 4, 1));
    let reason = fixture.region.report_upward().services[0].autoscale.clone();
    assert!(
        reason
            .as_ref()
            .is_some_and(|r| r.reason.starts_with("scaling down from 4 to 1 (min)")),
        "{reason:?}"
    );
    assert_eq!(
        healthy_instances(&fixture.region, &svc).len(),
        1,
        "the others drain"
    );
}
