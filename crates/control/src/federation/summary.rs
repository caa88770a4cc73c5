//! Rendering a region's summary (`meridian.v1.RegionSummary`) without re-encoding what did not
//! change. A summary lists every service deployed in the region; what a service's entry says
//! of its deployment (names, version, spec) changes only when the service does, and is encoded
//! once then ([`ServiceEntry::new`]); each rendering adds only what the region's report says
//! (healthy instances and their addresses). The bytes are exactly those of encoding the whole
//! [`RegionSummary`] message at once (fields in tag order), so content versions do not change.

use std::collections::HashMap;

use envoy_types::pb::google::protobuf::Any;
use meridian_model::{RegionReport, RegionalDeployment, ServiceHealth};
use meridian_xds::meridian::{RegionService, RegionSummary, REGIONS_NAMESPACE, REGION_SUMMARY};
use prost::encoding::{
    bool, encode_key, encode_varint, encoded_len_varint, string, uint32, WireType,
};
use prost::Message;

/// Tag of [`RegionSummary::services`].
const SERVICES_TAG: u32 = 3;
/// Tag of [`RegionService::addresses`].
const ADDRESSES_TAG: u32 = 6;
/// Tag of [`RegionService::healthy`].
const HEALTHY_TAG: u32 = 7;
/// Tag of [`RegionService::asleep`].
const ASLEEP_TAG: u32 = 8;
/// Tag of [`RegionService::wake_ms`].
const WAKE_MS_TAG: u32 = 9;

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
            asleep: false,
            wake_ms: 0,
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
    let reported: HashMap<(&str, &str, &str), &ServiceHealth> = report
        .iter()
        .flat_map(|r| &r.services)
        .map(|s| ((s.org.as_str(), s.app.as_str(), s.service.as_str()), s))
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
        let health = reported.get(&key).copied();
        let addresses = health.map_or(&[][..], |h| h.addresses.as_slice());
        let healthy = health.map_or(0, |h| h.healthy);
        let asleep = health.is_some_and(|h| h.asleep);
        let wake_ms = health.map_or(0, |h| h.wake_ms);
        // Proto3 leaves a zero (or false) out, as prost's own encoding does.
        let uint_len = |tag, n: u32| {
            if n == 0 {
                0
            } else {
                uint32::encoded_len(tag, &n)
            }
        };
        let len = entry.encoded.len()
            + string::encoded_len_repeated(ADDRESSES_TAG, addresses)
            + uint_len(HEALTHY_TAG, healthy)
            + if asleep {
                bool::encoded_len(ASLEEP_TAG, &asleep)
            } else {
                0
            }
            + uint_len(WAKE_MS_TAG, wake_ms);
        value.reserve(len + 1 + encoded_len_varint(len as u64));
        encode_key(SERVICES_TAG, WireType::LengthDelimited, &mut value);
        encode_varint(len as u64, &mut value);
        value.extend_from_slice(&entry.encoded);
        string::encode_repeated(ADDRESSES_TAG, addresses, &mut value);
        if healthy != 0 {
            uint32::encode(HEALTHY_TAG, &healthy, &mut value);
        }
        if asleep {
            bool::encode(ASLEEP_TAG, &asleep, &mut value);
        }
        if wake_ms != 0 {
            uint32::encode(WAKE_MS_TAG, &wake_ms, &mut value);
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
            asleep: false,
            wake_ms: 0,
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
                ServiceHealth {
                    asleep: true,
                    wake_ms: 7,
                    ..health("web", 1, &["10.0.0.3:7000"])
                },
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
                            asleep: reported.is_some_and(|s| s.asleep),
                            wake_ms: reported.map_or(0, |s| s.wake_ms),
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
