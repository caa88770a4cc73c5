//! The proxy's Prometheus metrics. Per-route handles are made when a config is compiled, so the
//! request path only increments counters it already holds.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::cluster_stats::ClusterStatsSet;
use crate::figures::Figures;
use crate::instance_stats::{InstanceStats, InstanceStatsSet};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    listener: String,
    vhost: String,
    route: String,
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    listener: String,
    vhost: String,
    route: String,
    cluster: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    listener: String,
    protocol: &'static str,
}

/// The `protocol` label of client requests, by HTTP version.
pub const CLIENT_PROTOCOLS: [&str; 3] = ["http1", "http2", "http3"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    cluster: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    cluster: String,
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OverflowLabels {
    cluster: String,
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    listener: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    result: &'static str,
}

/// The tier a purge removed objects from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    tier: &'static str,
}

/// What the shared HTTP cache did, counted; its handles are made once.
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    /// Answered from the cache: fresh, or as stale as the client accepts.
    pub hit: Counter,
    /// Answered stale from the cache (stale-while-revalidate, stale-if-error).
    pub stale: Counter,
    /// Answered with the response another request fetched (collapsed).
    pub collapsed: Counter,
    /// Went upstream with nothing usable stored.
    pub miss: Counter,
    /// Went upstream to validate a stored response.
    pub validate: Counter,
    /// Went upstream as it came: a bypassed path, a HEAD or range with nothing stored.
    pub bypass: Counter,
    /// Responses stored.
    pub stored: Counter,
    /// Contents the cache coded for stored responses (one per response and coding, unless
    /// the response was replaced or purged meanwhile).
    pub codings: Counter,
    /// Bytes the store holds.
    pub bytes: Gauge,
    /// Keys the store holds.
    pub keys: Gauge,
    /// Answered with a response read from the disk tier (counted among hits too).
    pub disk_hit: Counter,
    /// Bytes of the records the disk tier holds.
    pub disk_bytes: Gauge,
    /// Records (responses) the disk tier holds.
    pub disk_records: Gauge,
    /// Purges applied.
    pub purges: Counter,
    /// Keys a purge removed from memory.
    pub purged_memory: Counter,
    /// Records a purge removed from the disk tier.
    pub purged_disk: Counter,
    /// The number of the last purge applied (set by the component that numbers them).
    pub purge_applied: Gauge,
}

impl CacheMetrics {
    fn register(registry: &mut Registry) -> CacheMetrics {
        let requests = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_requests",
            "Requests of routes that cache, by what the cache did (hit, stale, collapsed, miss, validate, bypass)",
            requests.clone(),
        );
        let result = |result| requests.get_or_create(&CacheLabels { result }).clone();
        let metrics = CacheMetrics {
            hit: result("hit"),
            stale: result("stale"),
            collapsed: result("collapsed"),
            miss: result("miss"),
            validate: result("validate"),
            bypass: result("bypass"),
            stored: Counter::default(),
            codings: Counter::default(),
            bytes: Gauge::default(),
            keys: Gauge::default(),
            disk_hit: Counter::default(),
            disk_bytes: Gauge::default(),
            disk_records: Gauge::default(),
            purges: Counter::default(),
            purged_memory: Counter::default(),
            purged_disk: Counter::default(),
            purge_applied: Gauge::default(),
        };
        let purged = Family::<TierLabels, Counter>::default();
        registry.register(
            "cache_purged",
            "Objects purges removed from the cache, by tier (memory: keys, disk: responses)",
            purged.clone(),
        );
        let tier = |tier| purged.get_or_create(&TierLabels { tier }).clone();
        let metrics = CacheMetrics {
            purged_memory: tier("memory"),
            purged_disk: tier("disk"),
            ..metrics
        };
        registry.register(
            "cache_purges",
            "Purges applied to the cache",
            metrics.purges.clone(),
        );
        registry.register(
            "cache_purge_applied",
            "The number of the last purge applied to the cache (the API's meridian_api_cache_purge_newest less this is how many purges it lags)",
            metrics.purge_applied.clone(),
        );
        registry.register(
            "cache_stored",
            "Responses stored in the cache",
            metrics.stored.clone(),
        );
        registry.register(
            "cache_codings",
            "Contents the cache coded (gzip, br, zstd) for stored responses, each made once for concurrent requests",
            metrics.codings.clone(),
        );
        registry.register(
            "cache_bytes",
            "Bytes the cache holds, objects counted with their fields and overhead",
            metrics.bytes.clone(),
        );
        registry.register(
            "cache_keys",
            "Keys the cache holds (each with its variants)",
            metrics.keys.clone(),
        );
        registry.register(
            "cache_disk_hits",
            "Requests answered with a response read from the cache's disk tier",
            metrics.disk_hit.clone(),
        );
        registry.register(
            "cache_disk_bytes",
            "Bytes of the records the cache's disk tier holds",
            metrics.disk_bytes.clone(),
        );
        registry.register(
            "cache_disk_records",
            "Responses the cache's disk tier holds",
            metrics.disk_records.clone(),
        );
        metrics
    }
}

fn cluster_labels(cluster: &str) -> ClusterLabels {
    ClusterLabels {
        cluster: cluster.to_owned(),
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Metric handles of one route target (listener, virtual host, route, cluster).
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    by_class: [Counter; 5],
    latency: Histogram,
    /// The figures of the target's cluster.
    cluster: Arc<Figures>,
    /// The figures of the instance the listener serves, if it serves one.
    instance: Option<Arc<InstanceStats>>,
    /// The wake gate of that instance, if it sleeps.
    gate: Option<Arc<crate::wake::WakeGate>>,
}

impl RouteMetrics {
    /// Records one answered request.
    pub fn record(&self, status: u16, seconds: f64) {
        self.count_by_route(status, seconds);
        // Float to integer casts saturate.
        let micros = (seconds * 1e6) as u64;
        self.cluster.record(status, micros);
        if let Some(instance) = &self.instance {
            instance.record(status, micros);
        }
    }

    /// Records one request the proxy answered itself for the instance the listener serves
    /// (its limit, or its wake, refused it): in the route's figures only, not in its
    /// cluster's or instance's, which count what the instance answered.
    pub fn record_refusal(&self, status: u16, seconds: f64) {
        self.count_by_route(status, seconds);
    }

    fn count_by_route(&self, status: u16, seconds: f64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.latency.observe(seconds);
    }

    /// Counts a request in flight in the figures of the instance the listener serves (if it
    /// serves one) until the guard drops, once there is room under the instance's limit
    /// ([`crate::figures::Figures::admit`]); `elsewhere` says (asked only for such a listener)
    /// whether the request's sender would retry it on another instance.
    pub async fn admit(
        &self,
        elsewhere: impl FnOnce() -> bool,
    ) -> Result<Option<crate::figures::InFlight>, crate::wake::Refusal> {
        match &self.instance {
            Some(instance) => instance.admit(elsewhere()).await.map(Some),
            None => Ok(None),
        }
    }

    /// These handles, also counting in `instance`'s figures.
    pub fn with_instance(self, instance: Option<Arc<InstanceStats>>) -> RouteMetrics {
        RouteMetrics { instance, ..self }
    }

    /// These handles, with the wake gate of the instance the listener serves.
    pub fn with_gate(self, gate: Option<Arc<crate::wake::WakeGate>>) -> RouteMetrics {
        RouteMetrics { gate, ..self }
    }

    /// The wake gate of the instance the listener serves, if it sleeps.
    pub fn gate(&self) -> Option<&Arc<crate::wake::WakeGate>> {
        self.gate.as_ref()
    }
}

/// Why a request could not be forwarded.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamError {
    /// The cluster had no healthy endpoint.
    NoEndpoint,
    /// Connecting or talking to the endpoint failed.
    Connect,
    /// The endpoint did not answer within the route's timeout.
    Timeout,
}

impl UpstreamError {
    fn label(self) -> &'static str {
        match self {
            UpstreamError::NoEndpoint => "no_endpoint",
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
        }
    }
}

/// All of the proxy's metrics.
pub struct ProxyMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    connections: Family<ListenerLabels, Gauge>,
    client_requests: Family<ProtocolLabels, Counter>,
    no_route: Family<ListenerLabels, Counter>,
    mesh_denied: Family<ListenerLabels, Counter>,
    tcp_connections: Family<ListenerLabels, Counter>,
    refused_connections: Family<ListenerLabels, Counter>,
    overloaded_connections: Family<ListenerLabels, Counter>,
    handshakes_refused: Family<ListenerLabels, Counter>,
    send_timeouts: Family<ListenerLabels, Counter>,
    body_timeouts: Family<ListenerLabels, Counter>,
    body_errors: Family<ClusterLabels, Counter>,
    upstream_errors: Family<ErrorLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    health: Family<HealthLabels, Counter>,
    retries: Family<ClusterLabels, Counter>,
    ejections: Family<ClusterLabels, Counter>,
    budget_exhausted: Family<ClusterLabels, Counter>,
    overflows: Family<OverflowLabels, Counter>,
    relayed: Family<DirectionLabels, Counter>,
    tls_failures: Family<ListenerLabels, Counter>,
    upstream_connections: Family<ClusterLabels, Gauge>,
    connect_time: Family<ClusterLabels, Histogram>,
    instances: InstanceStatsSet,
    clusters: ClusterStatsSet,
    cache: CacheMetrics,
    access_log: crate::access_log::AccessLogCounters,
    trace: crate::trace::TraceCounters,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~3 s.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("meridian_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency =
            Family::<RouteLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        let connections = Family::<ListenerLabels, Gauge>::default();
        let client_requests = Family::<ProtocolLabels, Counter>::default();
        registry.register(
            "client_requests",
            "Requests received from clients, by listener and HTTP version (http1, http2, http3)",
            client_requests.clone(),
        );
        let no_route = Family::<ListenerLabels, Counter>::default();
        let mesh_denied = Family::<ListenerLabels, Counter>::default();
        let tcp_connections = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "tcp_connections",
            "Connections tcp listeners relayed to an endpoint, by listener",
            tcp_connections.clone(),
        );
        let refused_connections = Family::<ListenerLabels, Counter>::default();
        let overloaded_connections = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "overloaded_connections",
            "Connections closed at once because the listener had max_connections open",
            overloaded_connections.clone(),
        );
        let handshakes_refused = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "tls_handshakes_refused",
            "TLS connections closed at once because their client address had max_tls_handshakes_per_ip handshakes in progress",
            handshakes_refused.clone(),
        );
        let send_timeouts = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "send_timeouts",
            "Client connections closed because a response waited send_timeout for the client to take data",
            send_timeouts.clone(),
        );
        let body_errors = Family::<ClusterLabels, Counter>::default();
        registry.register(
            "upstream_body_errors",
            "Upstream response bodies that broke off (reset, or shorter than their length), by cluster",
            body_errors.clone(),
        );
        let body_timeouts = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "request_body_timeouts",
            "Requests answered 408 because the client did not send its body within request_body_timeout",
            body_timeouts.clone(),
        );
        let upstream_errors = Family::<ErrorLabels, Counter>::default();
        let reloads = Family::<ResultLabels, Counter>::default();
        let health = Family::<HealthLabels, Counter>::default();
        let retries = Family::<ClusterLabels, Counter>::default();
        let ejections = Family::<ClusterLabels, Counter>::default();
        registry.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection, by cluster",
            ejections.clone(),
        );
        let budget_exhausted = Family::<ClusterLabels, Counter>::default();
        let overflows = Family::<OverflowLabels, Counter>::default();
        let relayed = Family::<DirectionLabels, Counter>::default();
        let tls_failures = Family::<ListenerLabels, Counter>::default();
        let upstream_connections = Family::<ClusterLabels, Gauge>::default();
        let connect_time = Family::<ClusterLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> _,
        );
        registry.register(
            "upstream_connections",
            "Open connections to a cluster's endpoints",
            upstream_connections.clone(),
        );
        registry.register(
            "upstream_connect_seconds",
            "Time to open a connection to an endpoint, by cluster",
            connect_time.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out, by listener",
            tls_failures.clone(),
        );
        registry.register(
            "tcp_relayed_bytes",
            "Bytes relayed by tcp listeners, by direction",
            relayed.clone(),
        );
        registry.register("retries", "Retried attempts, by cluster", retries.clone());
        registry.register(
            "retry_budget_exhausted",
            "Retries refused because the cluster's retry budget was spent",
            budget_exhausted.clone(),
        );
        registry.register(
            "circuit_breaker_overflows",
            "Requests answered 503 because a cluster limit was reached",
            overflows.clone(),
        );
        registry.register(
            "requests",
            "Requests answered, by route target and status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head, by route target",
            latency.clone(),
        );
        registry.register(
            "active_connections",
            "Open client connections",
            connections.clone(),
        );
        registry.register(
            "no_route",
            "Requests that matched no route (404)",
            no_route.clone(),
        );
        registry.register(
            "mesh_denied",
            "Mesh calls refused because the caller may not call (403 forbidden_peer; tcp: connection closed)",
            mesh_denied.clone(),
        );
        registry.register(
            "refused_connections",
            "Connections closed at once because the listener does not serve their source address",
            refused_connections.clone(),
        );
        registry.register(
            "upstream_errors",
            "Requests not forwarded: no endpoint, connect failure or timeout",
            upstream_errors.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration loads by result",
            reloads.clone(),
        );
        registry.register(
            "health_transitions",
            "Endpoints that became healthy or unhealthy, by cluster",
            health.clone(),
        );
        let instances = InstanceStatsSet::default();
        registry.register_collector(Box::new(instances.clone()));
        let cache = CacheMetrics::register(&mut registry);
        let access_log = crate::access_log::AccessLogCounters::default();
        registry.register(
            "access_log_lines",
            "Access-log lines handed to the writer",
            access_log.lines.clone(),
        );
        registry.register(
            "access_log_dropped_lines",
            "Access-log lines dropped: the writer's queue was full, or writing failed",
            access_log.dropped.clone(),
        );
        let trace = crate::trace::TraceCounters::default();
        registry.register(
            "trace_spans_exported",
            "Spans the trace collector accepted",
            trace.exported.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans dropped because the export queue was full",
            trace.dropped.clone(),
        );
        registry.register(
            "trace_spans_failed",
            "Spans in batches the trace collector did not accept (unreachable, refused, timed out)",
            trace.failed.clone(),
        );
        ProxyMetrics {
            access_log,
            trace,
            registry,
            requests,
            latency,
            connections,
            client_requests,
            no_route,
            mesh_denied,
            tcp_connections,
            refused_connections,
            overloaded_connections,
            handshakes_refused,
            send_timeouts,
            body_timeouts,
            body_errors,
            upstream_errors,
            reloads,
            health,
            retries,
            ejections,
            budget_exhausted,
            overflows,
            relayed,
            tls_failures,
            upstream_connections,
            connect_time,
            instances,
            clusters: ClusterStatsSet::default(),
            cache,
        }
    }
}

impl ProxyMetrics {
    /// Handles for one route target.
    pub fn route(&self, listener: &str, vhost: &str, route: &str, cluster: &str) -> RouteMetrics {
        let labels = RouteLabels {
            listener: listener.to_owned(),
            vhost: vhost.to_owned(),
            route: route.to_owned(),
            cluster: cluster.to_owned(),
        };
        let by_class = STATUS_CLASSES.map(|status| {
            self.requests
                .get_or_create(&RequestLabels {
                    listener: labels.listener.clone(),
                    vhost: labels.vhost.clone(),
                    route: labels.route.clone(),
                    cluster: labels.cluster.clone(),
                    status,
                })
                .clone()
        });
        RouteMetrics {
            by_class,
            latency: self.latency.get_or_create(&labels).clone(),
            cluster: self.clusters.get(cluster),
            instance: None,
            gate: None,
        }
    }

    /// The access log's counters (shared handles).
    pub(crate) fn access_log_counters(&self) -> crate::access_log::AccessLogCounters {
        self.access_log.clone()
    }

    /// The trace exporter's counters.
    pub(crate) fn trace_counters(&self) -> crate::trace::TraceCounters {
        self.trace.clone()
    }

    /// The shared HTTP cache's counters.
    pub fn cache(&self) -> &CacheMetrics {
        &self.cache
    }

    /// The figures of the instances listeners serve (`instance` in their configuration).
    pub fn instances(&self) -> &InstanceStatsSet {
        &self.instances
    }

    /// The figures of the clusters route targets send to.
    pub fn clusters(&self) -> &ClusterStatsSet {
        &self.clusters
    }

    /// The open-connections gauge of a listener.
    pub fn connections(&self, listener: &str) -> Gauge {
        self.connections
            .get_or_create(&ListenerLabels {
                listener: listener.to_owned(),
            })
            .clone()
    }

    /// The request counters of a listener, one per protocol of [`CLIENT_PROTOCOLS`].
    pub fn client_requests(&self, listener: &str) -> [Counter; 3] {
        CLIENT_PROTOCOLS.map(|protocol| {
            self.client_requests
                .get_or_create(&ProtocolLabels {
                    listener: listener.to_owned(),
                    protocol,
                })
                .clone()
        })
    }

    /// The no-route counter of a listener.
    pub fn no_route(&self, listener: &str) -> Counter {
        self.no_route
            .get_or_create(&ListenerLabels {
                listener: listener.to_owned(),
            })
            .clone()
    }

    /// The counter of connections `listener` closed because of their source address.
    pub fn refused_connections(&self, listener: &str) -> Counter {
        self.refused_connections
            .get_or_create(&ListenerLabels {
                listener: listener.to_owned(),
            })
            .clone()
    }

    /// The counter of TLS connections `listener` closed because their client address had
    /// `max_tls_handshakes_per_ip` handshakes in progress.
    pub fn tls_handshakes_refused(&self, listener: &str) -> Counter {
        self.handshakes_refused
            .get_or_create(&ListenerLabels {
                listener: listener.to_owned(),
            })
            .clone()
    }

    /// The counter of connections `listener` closed because a response waited `send_timeout`
    /// for its client.
    pub fn send_timeouts(&self, listener: &str) -> Counter {
        self.send_timeouts
            .get_or_create(&ListenerLabels {
                listener: listener.to_owned(),
            })
            .clone()
    }

    /// The counter of connections `listener` closed because it had `max_connections` open.
    pub fn overloaded_connections(&self, listener: &str) -> Counter {
        self.overloaded_connections
            .get_or_create(&ListenerLabels {
                listener: listener.to_owned(),
            })
            .clone()
    }

    /// The counter of requests `listener` answered 408 for a body sent too slowly.
    pub fn request_body_timeouts(&self, listener: &str) -> Counter {
        self.body_timeouts
            .get_or_create(&ListenerLabels {
                listener: listener.to_owned(),
            })
            .clone()
    }

    /// Counts an upstream response body of `cluster` that broke off.
    pub fn upstream_body_error(&self, cluster: &str) {
        self.body_errors
            .get_or_create(&cluster_labels(cluster))
            .inc();
    }

    /// The counter of connections `listener` relayed to an endpoint (`tcp` listeners).
    pub fn tcp_connections(&self, listener: &str) -> Counter {
        self.tcp_connections
            .get_or_create(&ListenerLabels {
                listener: listener.to_owned(),
            })
            .clone()
    }

    /// The counter of mesh calls `listener` refused.
    pub fn mesh_denied(&self, listener: &str) -> Counter {
        self.mesh_denied
            .get_or_create(&ListenerLabels {
                listener: listener.to_owned(),
            })
            .clone()
    }

    /// Counts a request that could not be forwarded to `cluster`.
    pub fn upstream_error(&self, cluster: &str, error: UpstreamError) {
        self.upstream_errors
            .get_or_create(&ErrorLabels {
                cluster: cluster.to_owned(),
                kind: error.label(),
            })
            .inc();
    }

    /// Counts a configuration load.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "applied" } else { "rejected" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// Counts a retry to `cluster`.
    pub fn retry(&self, cluster: &str) {
        self.retries.get_or_create(&cluster_labels(cluster)).inc();
    }

    /// The open-connections gauge and connect-time histogram of `cluster`.
    pub fn upstream(&self, cluster: &str) -> (Gauge, Histogram) {
        let labels = cluster_labels(cluster);
        (
            self.upstream_connections.get_or_create(&labels).clone(),
            self.connect_time.get_or_create(&labels).clone(),
        )
    }

    /// Counts a failed TLS handshake on `listener`.
    pub fn tls_handshake_failed(&self, listener: &str) {
        self.tls_failures
            .get_or_create(&ListenerLabels {
                listener: listener.to_owned(),
            })
            .inc();
    }

    /// Counts the bytes of one finished relayed TCP connection.
    pub fn relayed(&self, listener: &str, sent: u64, received: u64) {
        for (direction, bytes) in [("upstream", sent), ("downstream", received)] {
            let labels = DirectionLabels {
                listener: listener.to_owned(),
                direction,
            };
            self.relayed.get_or_create(&labels).inc_by(bytes);
        }
    }

    /// Counts an outlier ejection in `cluster`.
    pub fn ejection(&self, cluster: &str) {
        self.ejections.get_or_create(&cluster_labels(cluster)).inc();
    }

    /// Counts a retry refused by `cluster`'s budget.
    pub fn retry_budget_exhausted(&self, cluster: &str) {
        self.budget_exhausted
            .get_or_create(&cluster_labels(cluster))
            .inc();
    }

    /// Counts a request refused because `cluster` reached `limit`.
    pub fn overflow(&self, cluster: &str, limit: &'static str) {
        let labels = OverflowLabels {
            cluster: cluster.to_owned(),
            limit,
        };
        self.overflows.get_or_create(&labels).inc();
    }

    /// Counts an endpoint of `cluster` becoming healthy or unhealthy.
    pub fn health_transition(&self, cluster: &str, healthy: bool) {
        let to = if healthy { "healthy" } else { "unhealthy" };
        self.health
            .get_or_create(&HealthLabels {
                cluster: cluster.to_owned(),
                to,
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        text
    }
}
