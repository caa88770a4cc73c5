//! Region reports: each region's control plane reports its nodes and the health of its
//! services (admin only); `status` reads them. With them come the request figures of the
//! region's services ([`TrafficHistory`]) and where its components serve `/metrics`. Reports
//! are soft state, kept in memory: a restarted global control plane knows them again at the
//! regions' next reports. The edges' acknowledgements of purges are kept beside them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use meridian_model::{
    validate_region_report, EdgeAnycast, EdgeStatus, MetricsTarget, RegionReport, TrafficWindow,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ErrorResponses;
use crate::extract::{ApiPath, JsonBody};
use crate::purge_acks::PurgeAcks;
use crate::routes::regions::{require_region, RegionPath};
use crate::traffic_history::TrafficHistory;
use crate::{ApiError, ApiState, Caller};

/// The last report of each region, with when it came. Cheap to clone (shared).
#[derive(Clone)]
pub struct Reports(Arc<ReportsInner>);

struct ReportsInner {
    by_region: RwLock<HashMap<String, (RegionReport, Instant)>>,
    /// Bumped whenever a region reports something new.
    changes: tokio::sync::watch::Sender<u64>,
    /// The request figures of the regions' services.
    traffic: TrafficHistory,
    /// Where each region's components serve `/metrics`, with when the region said so.
    targets: RwLock<HashMap<String, (Vec<MetricsTarget>, Instant)>>,
    /// Where the global control plane serves its own.
    own_target: RwLock<Option<MetricsTarget>>,
    /// Where each edge serves its own, by location, with when it said so.
    edges: RwLock<HashMap<String, (MetricsTarget, Instant)>>,
    /// How the edges took each purge.
    purges: PurgeAcks,
    /// Each edge's last report of its anycast announcement (none: it has no anycast
    /// addresses), by location, with when it came.
    edge_reports: RwLock<HashMap<String, (Option<EdgeAnycast>, Instant)>>,
}

impl Default for Reports {
    fn default() -> Self {
        Reports(Arc::new(ReportsInner {
            by_region: RwLock::default(),
            changes: tokio::sync::watch::channel(0).0,
            traffic: TrafficHistory::default(),
            targets: RwLock::default(),
            own_target: RwLock::default(),
            edges: RwLock::default(),
            purges: PurgeAcks::default(),
            edge_reports: RwLock::default(),
        }))
    }
}

/// Metrics targets older than this are no longer listed (the region's control plane or the
/// edge stopped reporting).
const TARGETS_STALE: Duration = Duration::from_secs(60);

impl Reports {
    /// Records `region`'s windows of request figures (already validated).
    pub fn record_traffic(&self, region: &str, windows: Vec<TrafficWindow>) {
        self.0.traffic.record(region, windows);
    }

    /// The request figures of the regions' services.
    pub fn traffic(&self) -> &TrafficHistory {
        &self.0.traffic
    }

    /// How the edges took each purge (recorded by the plane's publisher of purges).
    pub fn purges(&self) -> &PurgeAcks {
        &self.0.purges
    }

    /// Records where `region`'s components serve `/metrics` (already validated).
    pub fn set_targets(&self, region: &str, targets: Vec<MetricsTarget>) {
        self.0
            .targets
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(region.to_owned(), (targets, Instant::now()));
    }

    /// Has the global control plane's own `/metrics` listed as `target` among the targets.
    pub fn set_own_target(&self, target: MetricsTarget) {
        *self
            .0
            .own_target
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(target);
    }

    /// Records where an edge serves `/metrics` (already checked).
    pub fn set_edge_target(&self, target: MetricsTarget) {
        self.0
            .edges
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(target.node.clone(), (target, Instant::now()));
    }

    /// Records that edge `location` reported, with its anycast announcement (already checked).
    pub fn set_edge_anycast(&self, location: &str, anycast: Option<EdgeAnycast>) {
        self.0
            .edge_reports
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(location.to_owned(), (anycast, Instant::now()));
    }

    /// Every edge that reported since this control plane started, by location, with its
    /// metrics address and its announcement as of now (its `since` counts the report's age).
    pub fn edges(&self) -> Vec<EdgeStatus> {
        let targets = self
            .0
            .edges
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let reports = self
            .0
            .edge_reports
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut edges: Vec<EdgeStatus> = reports
            .iter()
            .map(|(location, (anycast, at))| {
                let age = at.elapsed().as_secs();
                EdgeStatus {
                    location: location.clone(),
                    metrics_address: targets.get(location).map(|(t, _)| t.address.clone()),
                    reported_seconds_ago: age,
                    anycast: anycast.clone().map(|a| EdgeAnycast {
                        since_seconds: a.since_seconds.saturating_add(age),
                        ..a
                    }),
                }
            })
            .collect();
        edges.sort_by(|a, b| a.location.cmp(&b.location));
        edges
    }

    /// Every component's metrics target, with its region (none for the global control
    /// plane's and the edges'), as the regions and edges reported them lately.
    pub fn targets(&self) -> Vec<(Option<String>, MetricsTarget)> {
        let own = self
            .0
            .own_target
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let by_region = self
            .0
            .targets
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all: Vec<(Option<String>, MetricsTarget)> =
            own.map(|t| (None, t)).into_iter().collect();
        let mut regions: Vec<_> = by_region
            .iter()
            .filter(|(_, (_, at))| at.elapsed() <= TARGETS_STALE)
            .collect();
        regions.sort_by(|a, b| a.0.cmp(b.0));
        for (region, (targets, _)) in regions {
            all.extend(targets.iter().map(|t| (Some(region.clone()), t.clone())));
        }
        let edges = self
            .0
            .edges
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut edges: Vec<&MetricsTarget> = edges
            .values()
            .filter(|(_, at)| at.elapsed() <= TARGETS_STALE)
            .map(|(target, _)| target)
            .collect();
        edges.sort();
        all.extend(edges.into_iter().map(|t| (None, t.clone())));
        all
    }

    /// The last report of `region` and its age.
    pub fn get(&self, region: &str) -> Option<(RegionReport, Duration)> {
        let reports = self
            .0
            .by_region
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        reports
            .get(region)
            .map(|(report, at)| (report.clone(), at.elapsed()))
    }

    /// A receiver that sees a change whenever a region reports something new (a report equal
    /// to the region's last one only refreshes its age).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.changes.subscribe()
    }

    /// Records `region`'s report (already validated) as its last one.
    pub fn record(&self, region: String, report: RegionReport) {
        let old = self
            .0
            .by_region
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(region, (report.clone(), Instant::now()));
        if old.is_none_or(|(old, _)| old != report) {
            self.0.changes.send_modify(|n| *n += 1);
        }
    }
}

/// A region's last report.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RegionReportAge {
    /// The report.
    pub report: RegionReport,
    /// How long ago it came, in seconds.
    pub age_seconds: u64,
}

/// Records the region's report (admin only; its control plane sends it every few seconds).
#[utoipa::path(put, path = "/v1/regions/{region}/report", tag = "regions", params(RegionPath),
    request_body = RegionReport,
    responses((status = 204, description = "Recorded"), ErrorResponses))]
pub async fn put(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<RegionPath>,
    JsonBody(report): JsonBody<RegionReport>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    validate_region_report(&report)?;
    require_region(&state, path.region()).await?;
    state.reports.record(path.region().to_owned(), report);
    Ok(StatusCode::NO_CONTENT)
}

/// The region's last report (admin only).
#[utoipa::path(get, path = "/v1/regions/{region}/report", tag = "regions", params(RegionPath),
    responses((status = 200, description = "The last report", body = RegionReportAge), ErrorResponses))]
pub async fn get(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<RegionPath>,
) -> Result<Json<RegionReportAge>, ApiError> {
    caller.require_admin()?;
    require_region(&state, path.region()).await?;
    match state.reports.get(path.region()) {
        Some((report, age)) => Ok(Json(RegionReportAge {
            report,
            age_seconds: age.as_secs(),
        })),
        None => Err(ApiError::not_found(format!(
            "a report of region `{}` (its control plane has not reported since this one started)",
            path.region()
        ))),
    }
}

/// The edges that reported since this control plane started, with their anycast announcement
/// (admin only): `meridian get edges`.
#[utoipa::path(get, path = "/v1/edges", tag = "regions",
    responses((status = 200, description = "The edges", body = [EdgeStatus]), ErrorResponses))]
pub async fn edges(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<EdgeStatus>>, ApiError> {
    caller.require_admin()?;
    Ok(Json(state.reports.edges()))
}
