//! Prometheus metrics of the API: requests by route and status, latency histogram, store revision.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::ApiState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    method: String,
    route: String,
    status: u16,
}

/// The API's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<StatusLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    revision: Gauge,
    purges: PurgeMetrics,
}

/// What the API counts of cache purges.
#[derive(Debug)]
pub struct PurgeMetrics {
    /// Purges accepted.
    accepted: Counter,
    /// The number of the newest purge accepted.
    newest: Gauge,
    /// From a purge stored until every connected edge applied it.
    applied: Histogram,
    /// Connected edges that had not applied a purge when the API answered.
    unapplied: Counter,
}

impl PurgeMetrics {
    /// Counts purge `sequence`, accepted `elapsed` ago, which `edges` took so (`None`: no
    /// record of them came in time).
    pub fn accepted(
        &self,
        sequence: u64,
        elapsed: std::time::Duration,
        edges: Option<meridian_model::EdgeAcks>,
    ) {
        self.accepted.inc();
        self.newest.set(i64::try_from(sequence).unwrap_or(i64::MAX));
        match edges {
            Some(acks) if acks.applied >= acks.connected => {
                self.applied.observe(elapsed.as_secs_f64());
            }
            Some(acks) => {
                let missing = acks.connected.saturating_sub(acks.applied);
                self.unapplied.inc_by(u64::from(missing));
            }
            None => {}
        }
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Metrics {
    /// The API's metrics, registered under `meridian_api_` in `registry`, which may hold other
    /// metrics of the process (rendered with them on `/metrics`).
    pub fn new(mut registry: Registry) -> Metrics {
        let api = registry.sub_registry_with_prefix("meridian_api");
        let requests = Family::<StatusLabels, Counter>::default();
        let latency =
            Family::<RouteLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        let revision = Gauge::default();
        let purges = PurgeMetrics {
            accepted: Counter::default(),
            newest: Gauge::default(),
            // 1 ms to ~16 s.
            applied: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            unapplied: Counter::default(),
        };
        api.register(
            "cache_purges",
            "Cache purges accepted",
            purges.accepted.clone(),
        );
        api.register(
            "cache_purge_newest",
            "The number of the newest cache purge accepted (an edge's meridian_proxy_cache_purge_applied lags it by the purges it has yet to apply)",
            purges.newest.clone(),
        );
        api.register(
            "cache_purge_apply_seconds",
            "From a cache purge stored until every connected edge applied it",
            purges.applied.clone(),
        );
        api.register(
            "cache_purge_unapplied_edges",
            "Connected edges that had not applied a purge when the API answered (they apply it when they can)",
            purges.unapplied.clone(),
        );
        api.register(
            "requests",
            "API requests by route and status",
            requests.clone(),
        );
        api.register(
            "request_duration_seconds",
            "API request latency by route",
            latency.clone(),
        );
        api.register(
            "store_revision",
            "The store's latest committed revision",
            revision.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            revision,
            purges,
        }
    }

    /// What the API counts of cache purges.
    pub fn purges(&self) -> &PurgeMetrics {
        &self.purges
    }
}

/// Middleware: counts and times every request under its matched route.
pub async fn track(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    // Only standard methods become labels: a made-up one must not mint a series per request.
    let method = match *request.method() {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::HEAD
        | Method::OPTIONS
        | Method::PATCH => request.method().as_str(),
        _ => "OTHER",
    }
    .to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let metrics = &state.metrics;
    metrics
        .latency
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&StatusLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// `GET /metrics`: the Prometheus text exposition.
pub async fn render(State(state): State<ApiState>) -> Response {
    if let Ok(revision) = state.store.revision().await {
        state
            .metrics
            .revision
            .set(i64::try_from(revision).unwrap_or(i64::MAX));
    }
    let mut text = String::new();
    if let Err(e) = encode(&mut text, &state.metrics.registry) {
        tracing::error!(error = %e, "encoding metrics");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
