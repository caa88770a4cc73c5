//! Request figures per instance, for listeners that serve one instance (a node proxy's inbound
//! listeners, `instance` in their configuration): requests by status class, a latency histogram
//! with the fixed bounds of [`LATENCY_BOUNDS_MS`] ([`Figures`]), and the connections open on its
//! listeners. Counting a request touches three atomics and nothing else (no lock, no
//! allocation); the set of instances is looked at only when a configuration is applied, when
//! metrics are rendered, and when the embedding agent reads the figures
//! ([`InstanceStatsSet::traffic`]) to report them.

use meridian_xds::meridian::{Traffic, LATENCY_BOUNDS_MS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::InstanceConfig;
use crate::figures::Figures;
use crate::lock;

/// One instance's cumulative figures.
pub type InstanceStats = Figures;

/// The instances' figures, by the name of the instance on the node (`instance.name` of the
/// listeners' configuration), with the labels they are exposed under. Cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct InstanceStatsSet {
    by_name: Arc<Mutex<HashMap<String, Entry>>>,
}

#[derive(Debug)]
struct Entry {
    labels: InstanceLabels,
    stats: Arc<InstanceStats>,
    /// The open-connection gauges of the listeners serving it.
    connections: Vec<Gauge>,
}

impl Entry {
    fn traffic(&self) -> Traffic {
        let open: i64 = self.connections.iter().map(Gauge::get).sum();
        self.stats.traffic(u64::try_from(open).unwrap_or(0))
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    service: String,
    version: String,
    instance: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    service: String,
    version: String,
    instance: String,
    outcome: &'static str,
}

impl InstanceStatsSet {
    /// The figures of the instance `config` names, made on first use; its labels follow
    /// `config` (a version relabelled keeps its counts).
    pub fn get(&self, config: &InstanceConfig) -> Arc<InstanceStats> {
        let labels = InstanceLabels {
            service: config.service.clone(),
            version: config.version.to_string(),
            instance: config.id.clone(),
        };
        let mut map = lock(&self.by_name);
        let entry = map.entry(config.name.clone()).or_insert_with(|| Entry {
            labels: labels.clone(),
            stats: Arc::default(),
            connections: Vec::new(),
        });
        entry.labels = labels;
        entry.stats.limit_in_flight(config.max_in_flight);
        entry.stats.clone()
    }

    /// Forgets the instances no longer named by a listener (`served` has those that are,
    /// with the open-connection gauges of their listeners, which count as theirs from now on).
    pub fn retain(&self, mut served: HashMap<&str, Vec<Gauge>>) {
        lock(&self.by_name).retain(|name, entry| match served.remove(name.as_str()) {
            Some(gauges) => {
                entry.connections = gauges;
                true
            }
            None => false,
        });
    }

    /// The figures of instance `name` (its name on the node), if a listener serves it.
    pub fn traffic(&self, name: &str) -> Option<Traffic> {
        lock(&self.by_name).get(name).map(Entry::traffic)
    }
}

impl Collector for InstanceStatsSet {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let map = lock(&self.by_name);
        let figures: Vec<(&InstanceLabels, Traffic, u64)> = map
            .values()
            .map(|e| (&e.labels, e.traffic(), e.stats.micros()))
            .collect();
        let mut requests = encoder.encode_descriptor(
            "instance_requests",
            "Requests answered for an instance by its node proxy, by outcome (failed: 5xx, or the instance could not be reached or timed out)",
            None,
            MetricType::Counter,
        )?;
        for (labels, traffic, _) in &figures {
            for (outcome, count) in [
                (
                    "ok",
                    traffic.requests - traffic.failures.min(traffic.requests),
                ),
                ("failed", traffic.failures),
            ] {
                let labels = OutcomeLabels {
                    service: labels.service.clone(),
                    version: labels.version.clone(),
                    instance: labels.instance.clone(),
                    outcome,
                };
                ConstCounter::new(count).encode(requests.encode_family(&labels)?)?;
            }
        }
        let mut latency = encoder.encode_descriptor(
            "instance_request_duration_seconds",
            "Time from request head to response head of the requests answered for an instance by its node proxy",
            None,
            MetricType::Histogram,
        )?;
        for (labels, traffic, micros) in &figures {
            let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_MS
                .iter()
                .map(|ms| *ms as f64 / 1000.0)
                .chain([f64::MAX])
                .zip(traffic.latency_buckets.iter().copied())
                .collect();
            latency
                .encode_family(*labels)?
                .encode_histogram::<NoLabelSet>(
                    *micros as f64 / 1e6,
                    traffic.requests,
                    &buckets,
                    None,
                )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(version: u64) -> InstanceConfig {
        InstanceConfig {
            name: "acme/shop/web-3".to_owned(),
            service: "acme/shop/web".to_owned(),
            version,
            id: "web-3".to_owned(),
            max_in_flight: None,
        }
    }

    #[test]
    fn an_instance_counts_its_listeners_connections_and_is_forgotten_once_unserved() {
        let set = InstanceStatsSet::default();
        let stats = set.get(&web(2));
        stats.record(200, 900);
        stats.record(200, 1_000);
        stats.record(503, 301_000);
        stats.record(404, 60_000_000);
        let gauge = Gauge::default();
        gauge.set(2);
        set.retain([("acme/shop/web-3", vec![gauge.clone(), Gauge::default()])].into());
        let traffic = set.traffic("acme/shop/web-3").unwrap();
        assert_eq!((traffic.requests, traffic.failures), (4, 1));
        assert_eq!(traffic.by_class, [0, 2, 0, 1, 1]);
        assert_eq!(
            traffic.open_connections, 2,
            "its listeners' open connections"
        );
        // The same instance under a new version keeps its counts; gone, it is forgotten.
        assert!(Arc::ptr_eq(&stats, &set.get(&web(3))));
        set.retain(HashMap::new());
        assert_eq!(set.traffic("acme/shop/web-3"), None);
    }

    #[test]
    fn both_versions_show_in_the_metrics() {
        let mut registry = prometheus_client::registry::Registry::with_prefix("meridian_proxy");
        let set = InstanceStatsSet::default();
        registry.register_collector(Box::new(set.clone()));
        set.get(&web(2)).record(500, 3_000);
        let old = InstanceConfig {
            name: "acme/shop/web-1".to_owned(),
            id: "web-1".to_owned(),
            ..web(1)
        };
        set.get(&old).record(200, 3_000);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"meridian_proxy_instance_requests_total{service="acme/shop/web",version="2",instance="web-3",outcome="failed"} 1"#), "{text}");
        assert!(text.contains(r#"meridian_proxy_instance_requests_total{service="acme/shop/web",version="1",instance="web-1",outcome="ok"} 1"#), "{text}");
        assert!(text.contains(r#"meridian_proxy_instance_request_duration_seconds_bucket{le="0.005",service="acme/shop/web",version="1",instance="web-1"} 1"#), "{text}");
    }
}
