//! Rendering a region's summary (`meridian.v1.RegionSummary`) without re-encoding what did not
//! change. A summary lists every service deployed in the region; what a service's entry says
//! of its deployment (names, version, spec) changes only when the service does, and is encoded
//! once then ([`ServiceEntry::new`]); each rendering adds only what the region's report says
//! (healthy instances and their addresses). The bytes are exactly those of encoding the whole
//! [`RegionSummary`] message at once (fields in tag order), so content versions do not change.

use std::collections::HashMap;

use envoy_types::pb::google::protobuf::Any;
use meridian_model::{RegionReport, RegionalDeployment};
use meridian_xds::meridian::{RegionService, RegionSummary, REGIONS_NAMESPACE, REGION_SUMMARY};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, string, uint32, WireType};
use prost::Message;

/// Tag of [`RegionSummary::services`].
const SERVICES_TAG: u32 = 3;
/// Tag of [`RegionService::addresses`].
const ADDRESSES_TAG: u32 = 6;
/// Tag of [`RegionService::healthy`].
const HEALTHY_TAG: u32 = 7;

/// A service's entry in its region's summary, as far as its deployment says.
pub(super) struct ServiceEntry {
    /// Fields 1–5 of its [`RegionService`] (org, app, service, version, spec), encoded.
    encoded: Vec<u8>,
}

impl ServiceEntry {
    /// The entry of `deployment`.
    pub(super) fn new(deployment: &RegionalDeployment) -> ServiceEntry {
        let fields = RegionService {
            org: deployment.org.clone(),
            app: deployment.app.clone(),
            service: deployment.service.clone(),
            version: deployment.version,
            spec_json: serde_json::to_vec(&deployment.spec).unwrap_or_default(),
            addresses: Vec::new(),
            healthy: 0,
        };
        ServiceEntry {
            encoded: fields.encode_to_vec(),
        }
    }
}

/// One region's summary as a cache entry: its coordinates and, for each of `services` (the
/// deployments there, with their entries), what `report` (the region's last fresh one) says
/// of it.
pub(super) fn render<'a>(
    region: &str,
    (lat, lon): (f64, f64),
    services: impl Iterator<Item = (&'a RegionalDeployment, &'a ServiceEntry)>,
    report: Option<&RegionReport>,
) -> (String, Any) {
    let reported: HashMap<(&str, &str, &str), (u32, &[String])> = report
        .iter()
        .flat_map(|r| &r.services)
        .map(|s| {
            let key = (s.org.as_str(), s.app.as_str(), s.service.as_str());
            (key, (s.healthy, s.addresses.as_slice()))
        })
        .collect();
    let mut value = Vec::new();
    let head = RegionSummary {
        lat,
        lon,
        ..RegionSummary::default()
    };
    head.encode_raw(&mut value);
    for (deployment, entry) in services {
        let key = (
            deployment.org.as_str(),
            deployment.app.as_str(),
            deployment.service.as_str(),
        );
        let (healthy, addresses) = reported.get(&key).copied().unwrap_or_default();
        // Proto3 leaves a zero out, as prost's own encoding does.
        let healthy_len = if healthy == 0 {
            0
        } else {
            uint32::encoded_len(HEALTHY_TAG, &healthy)
        };
        let len = entry.encoded.len()
            + string::encoded_len_repeated(ADDRESSES_TAG, addresses)
            + healthy_len;
        value.reserve(len + 1 + encoded_len_varint(len as u64));
        encode_key(SERVICES_TAG, WireType::LengthDelimited, &mut value);
        encode_varint(len as u64, &mut value);
        value.extend_from_slice(&entry.encoded);
        string::encode_repeated(ADDRESSES_TAG, addresses, &mut value);
        if healthy != 0 {
            uint32::encode(HEALTHY_TAG, &healthy, &mut value);
        }
    }
    let tail = RegionSummary {
        reported: report.is_some(),
        gateway: report.and_then(|r| r.gateway.clone()).unwrap_or_default(),
        ..RegionSummary::default()
    };
    tail.encode_raw(&mut value);
    (
        format!("{REGIONS_NAMESPACE}{region}"),
        Any {
            type_url: REGION_SUMMARY.to_owned(),
            value,
        },
    )
}

#[cfg(test)]
mod tests {
    use meridian_model::{derive_regional, ServiceHealth};

    use super::*;

    fn deployment(service: &str, version: u64) -> RegionalDeployment {
        let definition = serde_json::from_value(serde_json::json!({
            "org": "acme", "app": "shop", "name": service, "regions": ["fra"],
            "scale": {"min": 1, "max": 2},
            "runtime": {"process": {"command": "/bin/server"}},
            "ports": [{"name": "http", "port": 8080}],
        }))
        .unwrap();
        derive_regional(&definition, version).remove(0)
    }

    fn health(service: &str, healthy: u32, addresses: &[&str]) -> ServiceHealth {
        ServiceHealth {
            org: "acme".to_owned(),
            app: "shop".to_owned(),
            service: service.to_owned(),
            version: 1,
            placed: healthy,
            healthy,
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            versions: Vec::new(),
            rollout: None,
            problems: Vec::new(),
            instances: Default::default(),
            autoscale: None,
        }
    }

    #[test]
    fn a_rendered_summary_is_the_encoding_of_the_whole_message() {
        let deployments = [
            deployment("api", 3),
            deployment("web", 1),
            deployment("db", 2),
        ];
        let entries: Vec<ServiceEntry> = deployments.iter().map(ServiceEntry::new).collect();
        let report = RegionReport {
            nodes: 2,
            capacity: 8,
            gateway: Some("127.0.0.1:4443".to_owned()),
            services: vec![
                health("api", 2, &["10.0.0.1:7000", "10.0.0.2:7000"]),
                health("db", 0, &[]),
            ],
        };
        for report in [Some(&report), None] {
            let (name, rendered) =
                render("fra", (50.1, 8.7), deployments.iter().zip(&entries), report);
            let expected = RegionSummary {
                lat: 50.1,
                lon: 8.7,
                services: deployments
                    .iter()
                    .map(|d| {
                        let reported =
                            report.and_then(|r| r.services.iter().find(|s| s.service == d.service));
                        RegionService {
                            org: d.org.clone(),
                            app: d.app.clone(),
                            service: d.service.clone(),
                            version: d.version,
                            spec_json: serde_json::to_vec(&d.spec).unwrap(),
                            addresses: reported.map(|s| s.addresses.clone()).unwrap_or_default(),
                            healthy: reported.map_or(0, |s| s.healthy),
                        }
                    })
                    .collect(),
                reported: report.is_some(),
                gateway: report.and_then(|r| r.gateway.clone()).unwrap_or_default(),
            };
            assert_eq!(name, format!("{REGIONS_NAMESPACE}fra"));
            assert_eq!(rendered.value, expected.encode_to_vec());
        }
    }
}
