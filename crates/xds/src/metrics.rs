//! The xDS server's Prometheus metrics (`meridian_xds_*`).

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabels {
    api: &'static str,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    api: &'static str,
    type_url: &'static str,
}

/// Handles to the xDS metrics; clones share the same series.
#[derive(Clone)]
pub struct XdsMetrics {
    connected: Family<ClientLabels, Gauge>,
    pushes: Family<TypeLabels, Counter>,
    resources_sent: Family<TypeLabels, Counter>,
    nacks: Family<TypeLabels, Counter>,
    push_seconds: Histogram,
    convergence_seconds: Histogram,
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~13 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

impl XdsMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> XdsMetrics {
        let metrics = XdsMetrics {
            connected: Family::default(),
            pushes: Family::default(),
            resources_sent: Family::default(),
            nacks: Family::default(),
            push_seconds: latency_histogram(),
            convergence_seconds: latency_histogram(),
        };
        registry.register(
            "meridian_xds_connected_clients",
            "Open ADS streams, by API flavour (sotw, delta) and node role",
            metrics.connected.clone(),
        );
        registry.register(
            "meridian_xds_pushes",
            "Responses sent, by API flavour and type URL",
            metrics.pushes.clone(),
        );
        registry.register(
            "meridian_xds_resources_sent",
            "Resources sent in responses, by API flavour and type URL",
            metrics.resources_sent.clone(),
        );
        registry.register(
            "meridian_xds_nacks",
            "Responses a client rejected, by API flavour and type URL",
            metrics.nacks.clone(),
        );
        registry.register(
            "meridian_xds_push_seconds",
            "From a resource change entering the cache to its response being queued for a client",
            metrics.push_seconds.clone(),
        );
        registry.register(
            "meridian_xds_convergence_seconds",
            "From a resource change entering the cache to the client's ACK of it",
            metrics.convergence_seconds.clone(),
        );
        metrics
    }

    /// Counts an open stream until the returned guard is dropped.
    pub(crate) fn connected(&self, api: &'static str, role: &str) -> ConnectedGuard {
        let gauge = self
            .connected
            .get_or_create(&ClientLabels {
                api,
                role: role.to_owned(),
            })
            .clone();
        gauge.inc();
        ConnectedGuard(gauge)
    }

    /// Records a response carrying `resources` resources, the oldest change among them made at
    /// `oldest_change`.
    pub(crate) fn pushed(
        &self,
        api: &'static str,
        type_url: &str,
        resources: usize,
        oldest_change: Option<Instant>,
    ) {
        let labels = TypeLabels {
            api,
            type_url: crate::type_label(type_url),
        };
        self.pushes.get_or_create(&labels).inc();
        self.resources_sent
            .get_or_create(&labels)
            .inc_by(resources as u64);
        if let Some(at) = oldest_change {
            self.push_seconds.observe(at.elapsed().as_secs_f64());
        }
    }

    /// Records a NACK.
    pub(crate) fn nacked(&self, api: &'static str, type_url: &str) {
        let labels = TypeLabels {
            api,
            type_url: crate::type_label(type_url),
        };
        self.nacks.get_or_create(&labels).inc();
    }

    /// Records the ACK of a response whose oldest change was made at `oldest_change`.
    pub(crate) fn acked(&self, oldest_change: Option<Instant>) {
        if let Some(at) = oldest_change {
            self.convergence_seconds.observe(at.elapsed().as_secs_f64());
        }
    }
}

/// Keeps a stream counted in `meridian_xds_connected_clients`.
pub(crate) struct ConnectedGuard(Gauge);

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
