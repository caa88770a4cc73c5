//! Region reports: each region's control plane reports its nodes and the health of its
//! services (admin only); `status` reads them. Reports are soft state, kept in memory: a
//! restarted global control plane knows them again at the regions' next reports.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use meridian_model::{validate_region_report, RegionReport};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ErrorResponses;
use crate::extract::{ApiPath, JsonBody};
use crate::routes::regions::{require_region, RegionPath};
use crate::{ApiError, ApiState, Caller};

/// The last report of each region, with when it came.
#[derive(Clone, Default)]
pub struct Reports(Arc<RwLock<HashMap<String, (RegionReport, Instant)>>>);

impl Reports {
    /// The last report of `region` and its age in seconds.
    pub fn get(&self, region: &str) -> Option<(RegionReport, u64)> {
        let reports = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        reports
            .get(region)
            .map(|(report, at)| (report.clone(), at.elapsed().as_secs()))
    }

    fn put(&self, region: String, report: RegionReport) {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(region, (report, Instant::now()));
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
    state.reports.put(path.region().to_owned(), report);
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
        Some((report, age_seconds)) => Ok(Json(RegionReportAge {
            report,
            age_seconds,
        })),
        None => Err(ApiError::not_found(format!(
            "a report of region `{}` (its control plane has not reported since this one started)",
            path.region()
        ))),
    }
}
