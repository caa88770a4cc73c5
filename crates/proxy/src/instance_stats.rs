//! Request figures per instance, for listeners that serve one instance (a node proxy's inbound
//! listeners, `instance` in their configuration): requests answered, failures, and a latency
//! histogram with the fixed bounds of [`LATENCY_BOUNDS_MS`]. Counting a request touches three
//! atomics and nothing else (no lock, no allocation); the set of instances is looked at only
//! when a configuration is applied, when metrics are rendered, and when the embedding agent
//! reads the figures ([`InstanceStatsSet::traffic`]) to report them.

use meridian_xds::meridian::{Traffic, LATENCY_BOUNDS_MS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::InstanceConfig;

/// How many latency buckets there are: one per bound, and one for slower requests.
const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// One instance's cumulative figures.
#[derive(Debug)]
pub struct InstanceStats {
    failures: AtomicU64,
    micros: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Default for InstanceStats {
    fn default() -> Self {
        InstanceStats {
            failures: AtomicU64::new(0),
            micros: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl InstanceStats {
    /// Counts one answered request: `status` (5xx is a failure) after `micros` microseconds
    /// from its head to the response's head.
    pub fn record(&self, status: u16, micros: u64) {
        if status >= 500 {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.micros.fetch_add(micros, Ordering::Relaxed);
        // A request of exactly a bound counts in that bound's bucket.
        let bucket = LATENCY_BOUNDS_MS.partition_point(|bound| bound * 1000 < micros);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The figures so far. Read counter by counter while requests go on: `requests` is the
    /// buckets' sum, so the two always agree.
    pub fn traffic(&self) -> Traffic {
        let latency_buckets: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        Traffic {
            requests: latency_buckets.iter().sum(),
            failures: self.failures.load(Ordering::Relaxed),
            latency_buckets,
        }
    }
}

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
        });
        entry.labels = labels;
        entry.stats.clone()
    }

    /// Forgets the instances no longer named by a listener (`keep` says which are).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.by_name).retain(|name, _| keep(name));
    }

    /// The figures of instance `name` (its name on the node), if a listener serves it.
    pub fn traffic(&self, name: &str) -> Option<Traffic> {
        lock(&self.by_name).get(name).map(|e| e.stats.traffic())
    }
}

impl Collector for InstanceStatsSet {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let map = lock(&self.by_name);
        let figures: Vec<(&InstanceLabels, Traffic, u64)> = map
            .values()
            .map(|e| {
                let micros = e.stats.micros.load(Ordering::Relaxed);
                (&e.labels, e.stats.traffic(), micros)
            })
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        }
    }

    #[test]
    fn requests_count_in_their_latency_bucket_and_5xx_as_failures() {
        let set = InstanceStatsSet::default();
        let stats = set.get(&web(2));
        stats.record(200, 900);
        stats.record(200, 1_000);
        stats.record(503, 301_000);
        stats.record(404, 60_000_000);
        let traffic = set.traffic("acme/shop/web-3").unwrap();
        assert_eq!((traffic.requests, traffic.failures), (4, 1));
        assert_eq!(traffic.latency_buckets.len(), BUCKETS);
        assert_eq!(traffic.latency_buckets[0], 2, "up to 1 ms");
        assert_eq!(traffic.latency_buckets[10], 1, "300 to 400 ms");
        assert_eq!(traffic.latency_buckets[BUCKETS - 1], 1, "beyond the last");
        // The same instance under a new version keeps its counts; gone, it is forgotten.
        assert!(Arc::ptr_eq(&stats, &set.get(&web(3))));
        set.retain(|name| name != "acme/shop/web-3");
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
