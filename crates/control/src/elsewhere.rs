//! Other regions as a region sees them: from every region's summary, the healthy instances of
//! each service elsewhere with a priority by distance (1 for the nearest region that has some,
//! then 2, …; 0 is the region's own), and the services deployed only elsewhere. Pure.

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

/// What region `here` reaches elsewhere.
#[derive(Debug, Default, PartialEq)]
pub struct Elsewhere {
    /// Healthy instances in other regions, by service, nearest region first.
    pub instances: BTreeMap<ServiceId, Vec<ServiceInstance>>,
    /// Every service deployed in another region, as the nearest of them runs it.
    pub deployments: BTreeMap<ServiceId, RegionalDeployment>,
}

/// What region `here` reaches in the other `regions` (by name; `here`'s own entry gives its
/// coordinates).
pub fn elsewhere(here: &str, regions: &BTreeMap<String, RemoteRegion>) -> Elsewhere {
    let at = regions.get(here).map_or((0.0, 0.0), |r| (r.lat, r.lon));
    let mut others: Vec<(&String, &RemoteRegion)> =
        regions.iter().filter(|(name, _)| *name != here).collect();
    others.sort_by(|a, b| {
        let distance = |r: &RemoteRegion| meridian_model::distance_km(at, (r.lat, r.lon));
        distance(a.1).total_cmp(&distance(b.1))
    });
    let mut reach = Elsewhere::default();
    for (name, region) in others {
        for service in &region.services {
            reach
                .deployments
                .entry(service.id.clone())
                .or_insert_with(|| RegionalDeployment {
                    org: service.id.0.clone(),
                    app: service.id.1.clone(),
                    service: service.id.2.clone(),
                    region: name.clone(),
                    version: service.version,
                    spec: service.spec.clone(),
                });
            if service.addresses.is_empty() {
                continue;
            }
            let instances = reach.instances.entry(service.id.clone()).or_default();
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
    }
    reach
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
        let reach = elsewhere("fra", &regions);
        let api = ("acme".to_owned(), "shop".to_owned(), "api".to_owned());
        let order: Vec<(&str, u32)> = reach.instances[&api]
            .iter()
            .map(|i| (i.region.as_str(), i.priority))
            .collect();
        // par is nearest but has no healthy instance: iad is priority 1, sin 2.
        assert_eq!(order, [("iad", 1), ("iad", 1), ("sin", 2)]);
        // The spec comes from the nearest region that deploys it, healthy or not.
        assert_eq!(reach.deployments[&api].region, "par");
        // A region never reaches itself elsewhere.
        assert!(reach.instances[&api].iter().all(|i| i.region != "fra"));
    }
}
