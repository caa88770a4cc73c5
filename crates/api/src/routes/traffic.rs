//! What the regions measured: a service's request figures per region over a window
//! (`GET …/services/{service}/metrics`, org-scoped), and where every component serves
//! `/metrics`, in Prometheus' HTTP service-discovery format (`GET /v1/prometheus/targets`,
//! admin only).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use meridian_model::{parse_metrics_range, ServiceMetrics};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ErrorResponses;
use crate::extract::{ApiPath, ApiQuery};
use crate::routes::services::ServicePath;
use crate::{ApiError, ApiState, Caller};

/// The window and step of a metrics query.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// How far back, a duration (`5m`, `1h`; at most 1h; default 5m).
    window: Option<String>,
    /// The length of each point, a duration that is a multiple of 10s dividing the window
    /// (default 10s; at most 360 points).
    step: Option<String>,
}

/// A service's request figures per region over a window: requests/s, error ratios by class,
/// latency percentiles from the merged histograms of its proxies, open connections, and its
/// instances by state. Regions count in windows of 10 s and report them within seconds.
#[utoipa::path(get, path = "/v1/orgs/{org}/apps/{app}/services/{service}/metrics",
    tag = "services", params(ServicePath, MetricsQuery),
    responses((status = 200, description = "Figures by region", body = ServiceMetrics),
        ErrorResponses))]
pub async fn service_metrics(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<ServicePath>,
    ApiQuery(query): ApiQuery<MetricsQuery>,
) -> Result<Json<ServiceMetrics>, ApiError> {
    let key = path.authorize(&caller)?;
    let (window, step) = parse_metrics_range(query.window.as_deref(), query.step.as_deref())
        .map_err(ApiError::bad_parameters)?;
    let Some(current) = state.store.get_service(&key).await? else {
        return Err(ApiError::not_found(format!("service `{key}`")));
    };
    let regions = meridian_model::derive_regional(&current.definition, current.version)
        .into_iter()
        .map(|rd| {
            let instances = state
                .reports
                .get(&rd.region)
                .and_then(|(report, _)| {
                    report
                        .services
                        .into_iter()
                        .find(|s| s.org == key.org && s.app == key.app && s.service == key.name)
                })
                .map(|s| s.instances)
                .unwrap_or_default();
            (rd.region, instances)
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let id = (key.org, key.app, key.name);
    let metrics = state
        .reports
        .traffic()
        .query(&id, window, step, regions, now);
    Ok(Json(metrics))
}

/// A group of Prometheus targets with their labels (Prometheus' `http_sd_configs` format).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TargetGroup {
    /// The `ip:port` addresses scraped at `/metrics`.
    pub targets: Vec<String>,
    /// The labels of every target of the group: `role` (control, agent, gateway, edge),
    /// `node` and `region` (none for the global control plane and the edges).
    pub labels: BTreeMap<String, String>,
}

/// Every component's metrics address, for Prometheus' HTTP service discovery (admin only):
/// the global control plane, each region's control plane, agents and gateways as the region
/// last reported them, and the edges.
#[utoipa::path(get, path = "/v1/prometheus/targets", tag = "regions",
    responses((status = 200, description = "Target groups", body = [TargetGroup]),
        ErrorResponses))]
pub async fn prometheus_targets(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<TargetGroup>>, ApiError> {
    caller.require_admin()?;
    let groups = state
        .reports
        .targets()
        .into_iter()
        .map(|(region, target)| {
            let mut labels = BTreeMap::from([
                ("role".to_owned(), target.role),
                ("node".to_owned(), target.node),
            ]);
            if let Some(region) = region {
                labels.insert("region".to_owned(), region);
            }
            TargetGroup {
                targets: vec![target.address],
                labels,
            }
        })
        .collect();
    Ok(Json(groups))
}
