//! Other regions as a region sees them: from every region's summary and service entries, the
//! healthy instances of each service elsewhere with a priority by distance (1 for the nearest
//! region that has some, then 2, …; 0 is the region's own), and the services deployed only
//! elsewhere, one service at a time. Pure.

use std::collections::BTreeMap;

use meridian_model::{RegionalDeployment, ServiceSpec};
use meridian_xds::meridian::ServiceInstance;
use serde::{Deserialize, Serialize};

use crate::region::ServiceId;

/// A region as its summary shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteRegion {
    /// Its latitude, degrees.
    pub lat: f64,
    /// Its longitude, degrees.
    pub lon: f64,
    /// The services deployed there.
    pub services: Vec<RemoteService>,
}

/// A service deployed in a region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteService {
    /// The service.
    pub id: ServiceId,
    /// Its deployment version there.
    pub version: u64,
    /// Its spec there.
    pub spec: ServiceSpec,
    /// The addresses of its healthy instances there.
    pub addresses: Vec<String>,
}

/// What changed in the other regions since they were last taken.
#[derive(Debug, Default)]
pub struct RemoteChanges {
    /// Every region's coordinates, by name (this region's own included).
    pub coordinates: BTreeMap<String, (f64, f64)>,
    /// Entries that came or changed, with their region.
    pub put: Vec<(String, RemoteService)>,
    /// Entries that went, with their region.
    pub removed: Vec<(String, ServiceId)>,
}

/// The other regions as region `here` knows them: where each one is, and each service's
/// entries there. It answers, for one service, what `here` reaches of it elsewhere
/// ([`OtherRegions::view`]), so that a change costs the services it touches.
#[derive(Debug, Default)]
pub struct OtherRegions {
    here: String,
    /// Every region's coordinates, by name.
    coordinates: BTreeMap<String, (f64, f64)>,
    /// The other regions, nearest first.
    nearest: Vec<String>,
    /// Each service's entries, by region.
    services: BTreeMap<ServiceId, BTreeMap<String, RemoteService>>,
}

impl OtherRegions {
    /// Nothing known yet of the regions around `here`.
    pub fn new(here: &str) -> OtherRegions {
        OtherRegions {
            here: here.to_owned(),
            ..OtherRegions::default()
        }
    }

    /// What every region's summary says (`regions`, by name; `here`'s own gives its
    /// coordinates).
    pub fn from_summaries(here: &str, regions: &BTreeMap<String, RemoteRegion>) -> OtherRegions {
        let mut others = OtherRegions::new(here);
        let coordinates = regions
            .iter()
            .map(|(name, r)| (name.clone(), (r.lat, r.lon)))
            .collect();
        others.set_coordinates(coordinates);
        for (name, region) in regions {
            for service in &region.services {
                others.put(name, service.clone());
            }
        }
        others
    }

    /// Takes every region's coordinates; returns whether the order of the other regions by
    /// distance changed (then every service's view may have).
    pub fn set_coordinates(&mut self, coordinates: BTreeMap<String, (f64, f64)>) -> bool {
        if coordinates == self.coordinates {
            return false;
        }
        let at = coordinates.get(&self.here).copied().unwrap_or((0.0, 0.0));
        let distance = |name: &String| meridian_model::distance_km(at, coordinates[name]);
        let mut nearest: Vec<String> = coordinates
            .keys()
            .filter(|name| **name != self.here)
            .cloned()
            .collect();
        nearest.sort_by(|a, b| distance(a).total_cmp(&distance(b)));
        self.coordinates = coordinates;
        let changed = nearest != self.nearest;
        self.nearest = nearest;
        changed
    }

    /// Takes `service`'s entry in `region`.
    pub fn put(&mut self, region: &str, service: RemoteService) {
        let entries = self.services.entry(service.id.clone()).or_default();
        entries.insert(region.to_owned(), service);
    }

    /// Forgets service `id`'s entry in `region`.
    pub fn remove(&mut self, region: &str, id: &ServiceId) {
        if let Some(entries) = self.services.get_mut(id) {
            entries.remove(region);
            if entries.is_empty() {
                self.services.remove(id);
            }
        }
    }

    /// Every service with an entry somewhere.
    pub fn ids(&self) -> impl Iterator<Item = &ServiceId> {
        self.services.keys()
    }

    /// What `here` reaches of service `id` elsewhere: the healthy instances of the other
    /// regions that have some, nearest first, with priorities 1, 2, …, and its deployment as
    /// the nearest other region that deploys it runs it (healthy or not).
    pub fn view(&self, id: &ServiceId) -> (Vec<ServiceInstance>, Option<RegionalDeployment>) {
        let mut instances: Vec<ServiceInstance> = Vec::new();
        let mut deployment = None;
        let Some(entries) = self.services.get(id) else {
            return (instances, deployment);
        };
        for name in &self.nearest {
            let Some(service) = entries.get(name) else {
                continue;
            };
            deployment.get_or_insert_with(|| RegionalDeployment {
                org: id.0.clone(),
                app: id.1.clone(),
                service: id.2.clone(),
                region: name.clone(),
                version: service.version,
                spec: service.spec.clone(),
            });
            let priority = instances
                .last()
                .map_or(1, |last| last.priority + u32::from(last.region != *name));
            instances.extend(service.addresses.iter().map(|address| ServiceInstance {
                instance: format!("{name}/{address}"),
                address: address.clone(),
                healthy: true,
                region: name.clone(),
                priority,
                canary: false,
            }));
        }
        (instances, deployment)
    }

    /// Every region's summary, by name, as the region's disk copy keeps them.
    pub fn summaries(&self) -> BTreeMap<String, RemoteRegion> {
        let mut regions: BTreeMap<String, RemoteRegion> = self
            .coordinates
            .iter()
            .map(|(name, &(lat, lon))| {
                let services = Vec::new();
                (name.clone(), RemoteRegion { lat, lon, services })
            })
            .collect();
        for entries in self.services.values() {
            for (name, service) in entries {
                if let Some(region) = regions.get_mut(name) {
                    region.services.push(service.clone());
                }
            }
        }
        regions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServiceSpec {
        let definition = meridian_model::parse_definition_json(
            br#"{"org": "acme", "app": "shop", "name": "api", "regions": ["iad"],
                "runtime": {"process": {"command": "api"}},
                "ports": [{"name": "http", "port": 80}]}"#,
        )
        .unwrap();
        meridian_model::derive_regional(&definition, 1)[0]
            .spec
            .clone()
    }

    fn region(lat: f64, lon: f64, addresses: &[&str]) -> RemoteRegion {
        RemoteRegion {
            lat,
            lon,
            services: vec![RemoteService {
                id: ("acme".into(), "shop".into(), "api".into()),
                version: 1,
                spec: spec(),
                addresses: addresses.iter().map(|a| a.to_string()).collect(),
            }],
        }
    }

    #[test]
    fn nearer_regions_with_healthy_instances_come_first() {
        let regions = BTreeMap::from([
            ("fra".to_owned(), region(50.11, 8.68, &[])),
            (
                "iad".to_owned(),
                region(38.95, -77.45, &["10.0.0.1", "10.0.0.2"]),
            ),
            ("sin".to_owned(), region(1.35, 103.82, &["10.0.1.1"])),
            ("par".to_owned(), region(48.86, 2.35, &[])),
        ]);
        let others = OtherRegions::from_summaries("fra", &regions);
        let api = ("acme".to_owned(), "shop".to_owned(), "api".to_owned());
        let (instances, deployment) = others.view(&api);
        let order: Vec<(&str, u32)> = instances
            .iter()
            .map(|i| (i.region.as_str(), i.priority))
            .collect();
        // par is nearest but has no healthy instance: iad is priority 1, sin 2.
        assert_eq!(order, [("iad", 1), ("iad", 1), ("sin", 2)]);
        // The spec comes from the nearest region that deploys it, healthy or not.
        assert_eq!(deployment.unwrap().region, "par");
        // A region never reaches itself elsewhere.
        assert!(instances.iter().all(|i| i.region != "fra"));
        assert_eq!(others.summaries(), regions, "the summaries it was made of");
    }

    #[test]
    fn an_entry_that_comes_or_goes_changes_only_its_service_and_a_move_reorders() {
        let regions = BTreeMap::from([
            ("fra".to_owned(), region(50.11, 8.68, &[])),
            ("iad".to_owned(), region(38.95, -77.45, &["10.0.0.1"])),
        ]);
        let mut others = OtherRegions::from_summaries("fra", &regions);
        let api = ("acme".to_owned(), "shop".to_owned(), "api".to_owned());
        let mut sin = region(1.35, 103.82, &["10.0.1.1"]).services.remove(0);
        // sin has no summary yet: its entry waits for one.
        others.put("sin", sin.clone());
        assert_eq!(others.view(&api).0.len(), 1);
        let mut coordinates: BTreeMap<String, (f64, f64)> = regions
            .iter()
            .map(|(name, r)| (name.clone(), (r.lat, r.lon)))
            .collect();
        coordinates.insert("sin".to_owned(), (1.35, 103.82));
        assert!(others.set_coordinates(coordinates.clone()));
        assert!(
            !others.set_coordinates(coordinates.clone()),
            "nothing moved"
        );
        let regions_of = |others: &OtherRegions| -> Vec<String> {
            others.view(&api).0.into_iter().map(|i| i.region).collect()
        };
        assert_eq!(regions_of(&others), ["iad", "sin"]);
        // sin moves next door: it comes first.
        coordinates.insert("sin".to_owned(), (50.0, 8.0));
        assert!(others.set_coordinates(coordinates));
        assert_eq!(regions_of(&others), ["sin", "iad"]);
        sin.addresses.clear();
        others.put("sin", sin);
        assert_eq!(regions_of(&others), ["iad"]);
        assert_eq!(
            others.view(&api).1.unwrap().region,
            "sin",
            "still deployed there"
        );
        others.remove("sin", &api);
        others.remove("iad", &api);
        assert_eq!(
            others.view(&api),
            (Vec::new(), None),
            "fra's own is not elsewhere"
        );
        others.remove("fra", &api);
        assert_eq!(others.ids().count(), 0);
    }
}
