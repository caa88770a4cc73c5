//! Rendering what every region and edge is told of a region: its summary
//! (`meridian.v1.RegionSummary`, named `regions/<region>`: where it is, whether it reports, its
//! gateway) and each service deployed there (`meridian.v1.RegionService`, named
//! `regions/<region>/<org>/<app>/<service>`), one resource each, so that a change to one
//! service renders and sends only its own. What a service's entry says of its deployment
//! (names, version, spec) changes only when the service does, and is encoded once then
//! ([`ServiceEntry::new`]); a rendering adds what the region's report says of it ([`Shown`]).
//! The bytes are exactly those of encoding the whole message at once (fields in tag order), so
//! content versions do not depend on how an entry was made.

use envoy_types::pb::google::protobuf::Any;
use meridian_model::{RegionReport, RegionalDeployment, ServiceHealth};
use meridian_xds::meridian::{
    RegionService, RegionSummary, REGIONS_NAMESPACE, REGION_SERVICE, REGION_SUMMARY,
};
use prost::encoding::{bool, string, uint32};
use prost::Message;

/// Tag of [`RegionService::addresses`].
const ADDRESSES_TAG: u32 = 6;
/// Tag of [`RegionService::healthy`].
const HEALTHY_TAG: u32 = 7;
/// Tag of [`RegionService::asleep`].
const ASLEEP_TAG: u32 = 8;
/// Tag of [`RegionService::wake_ms`].
const WAKE_MS_TAG: u32 = 9;

/// A service's entry in its region, as far as its deployment says.
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

/// What a region's report says of a service, as the service's entry shows it (nothing when
/// the region has no fresh report or does not list the service).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Shown {
    addresses: Vec<String>,
    healthy: u32,
    asleep: bool,
    wake_ms: u32,
}

impl Shown {
    /// What `health` (a report's entry of the service, if any) shows.
    pub(super) fn of(health: Option<&ServiceHealth>) -> Shown {
        health.map_or_else(Shown::default, |h| Shown {
            addresses: h.addresses.clone(),
            healthy: h.healthy,
            asleep: h.asleep,
            wake_ms: h.wake_ms,
        })
    }
}

/// The cache name of `region`'s summary.
pub(super) fn summary_name(region: &str) -> String {
    format!("{REGIONS_NAMESPACE}{region}")
}

/// The cache name of the entry of `service` (`org/app/service`) in `region`.
pub(super) fn service_name(region: &str, service: &str) -> String {
    format!("{REGIONS_NAMESPACE}{region}/{service}")
}

/// `region`'s summary as a cache entry: its coordinates, and what `report` (its last fresh
/// one) says of its gateway.
pub(super) fn render_summary(
    region: &str,
    (lat, lon): (f64, f64),
    report: Option<&RegionReport>,
) -> (String, Any) {
    let summary = RegionSummary {
        lat,
        lon,
        reported: report.is_some(),
        gateway: report.and_then(|r| r.gateway.clone()).unwrap_or_default(),
    };
    let value = summary.encode_to_vec();
    let any = Any {
        type_url: REGION_SUMMARY.to_owned(),
        value,
    };
    (summary_name(region), any)
}

/// The entry of `service` (`org/app/service`) in `region` as a cache entry: `entry`, and what
/// the region's report says of it (`shown`).
pub(super) fn render_service(
    region: &str,
    service: &str,
    entry: &ServiceEntry,
    shown: &Shown,
) -> (String, Any) {
    let mut value = entry.encoded.clone();
    // Proto3 leaves a zero (or false) out, as prost's own encoding does.
    string::encode_repeated(ADDRESSES_TAG, &shown.addresses, &mut value);
    if shown.healthy != 0 {
        uint32::encode(HEALTHY_TAG, &shown.healthy, &mut value);
    }
    if shown.asleep {
        bool::encode(ASLEEP_TAG, &shown.asleep, &mut value);
    }
    if shown.wake_ms != 0 {
        uint32::encode(WAKE_MS_TAG, &shown.wake_ms, &mut value);
    }
    let any = Any {
        type_url: REGION_SERVICE.to_owned(),
        value,
    };
    (service_name(region, service), any)
}

#[cfg(test)]
mod tests {
    use meridian_model::derive_regional;

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

    fn health(healthy: u32, addresses: &[&str], asleep: bool, wake_ms: u32) -> ServiceHealth {
        ServiceHealth {
            asleep,
            wake_ms,
            ..super::super::fixtures::health("api", 1, healthy, addresses)
        }
    }

    #[test]
    fn a_rendered_entry_is_the_encoding_of_the_whole_message() {
        let api = deployment("api", 3);
        let entry = ServiceEntry::new(&api);
        let reported = [
            Some(health(2, &["10.0.0.1:7000", "10.0.0.2:7000"], false, 0)),
            Some(health(1, &["10.0.0.3:7000"], true, 7)),
            Some(health(0, &[], false, 0)),
            None,
        ];
        for health in &reported {
            let shown = Shown::of(health.as_ref());
            let (name, rendered) = render_service("fra", "acme/shop/api", &entry, &shown);
            let expected = RegionService {
                org: api.org.clone(),
                app: api.app.clone(),
                service: api.service.clone(),
                version: 3,
                spec_json: serde_json::to_vec(&api.spec).unwrap(),
                addresses: health
                    .as_ref()
                    .map(|h| h.addresses.clone())
                    .unwrap_or_default(),
                healthy: health.as_ref().map_or(0, |h| h.healthy),
                asleep: health.as_ref().is_some_and(|h| h.asleep),
                wake_ms: health.as_ref().map_or(0, |h| h.wake_ms),
            };
            assert_eq!(name, "regions/fra/acme/shop/api");
            assert_eq!(rendered.type_url, REGION_SERVICE);
            assert_eq!(rendered.value, expected.encode_to_vec());
        }
    }

    #[test]
    fn a_summary_says_whether_the_region_reports_and_where_its_gateway_is() {
        let report = RegionReport {
            nodes: 2,
            capacity: 8,
            gateway: Some("127.0.0.1:4443".to_owned()),
            services: vec![health(1, &["10.0.0.1:7000"], false, 0)],
        };
        let (name, rendered) = render_summary("fra", (50.1, 8.7), Some(&report));
        assert_eq!(name, "regions/fra");
        let summary = RegionSummary::decode(rendered.value.as_slice()).unwrap();
        assert_eq!((summary.lat, summary.lon), (50.1, 8.7));
        assert!(summary.reported);
        assert_eq!(summary.gateway, "127.0.0.1:4443");
        let (_, silent) = render_summary("fra", (50.1, 8.7), None);
        let summary = RegionSummary::decode(silent.value.as_slice()).unwrap();
        assert!(!summary.reported && summary.gateway.is_empty());
    }
}
