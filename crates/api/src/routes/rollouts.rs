//! Rollouts: a service's rollout history, as the regions reported it, and aborting the rollout
//! under way.

use axum::extract::State;
use axum::Json;
use meridian_model::{Deployment, RolloutRecord};

use crate::error::ErrorResponses;
use crate::extract::ApiPath;
use crate::routes::services::ServicePath;
use crate::{ApiError, ApiState, Caller};

/// A service's rollouts per region, newest version first: strategy, phase, times and, when a
/// gate failed, which one with its figures.
#[utoipa::path(get, path = "/v1/orgs/{org}/apps/{app}/services/{service}/rollouts",
    tag = "services", params(ServicePath),
    responses((status = 200, description = "The rollout history", body = Vec<RolloutRecord>), ErrorResponses))]
pub async fn history(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<ServicePath>,
) -> Result<Json<Vec<RolloutRecord>>, ApiError> {
    let key = path.authorize(&caller)?;
    if state.store.get_service(&key).await?.is_none() {
        return Err(ApiError::not_found(format!("service `{key}`")));
    }
    Ok(Json(state.store.list_rollouts(&key).await?))
}

/// Aborts the rollout of the current version: the version it replaces becomes current again
/// (a new version, `origin: rollback`), to which every region returns by the draining path.
/// 409 when no region reports a rollout of the current version under way.
#[utoipa::path(post, path = "/v1/orgs/{org}/apps/{app}/services/{service}/rollout/abort",
    tag = "services", params(ServicePath),
    responses((status = 200, description = "The new current deployment", body = Deployment), ErrorResponses))]
pub async fn abort(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<ServicePath>,
) -> Result<Json<Deployment>, ApiError> {
    let key = path.authorize(&caller)?;
    let Some(current) = state.store.get_service(&key).await? else {
        return Err(ApiError::not_found(format!("service `{key}`")));
    };
    let under_way = current.definition.regions.iter().find_map(|region| {
        let (report, _) = state.reports.get(region)?;
        let health = report
            .services
            .into_iter()
            .find(|s| s.org == key.org && s.app == key.app && s.service == key.name)?;
        health
            .rollout
            .filter(|r| r.version == current.version && !r.phase.ended())
    });
    let Some(rollout) = under_way else {
        return Err(ApiError::conflict(format!(
            "no region reports a rollout of version {} under way: nothing to abort \
             (`meridian rollback` makes any earlier version current)",
            current.version
        )));
    };
    let deployment = state
        .store
        .rollback(&key, rollout.previous)
        .await
        .map_err(|e| ApiError::domain_taken(&caller, e))?;
    tracing::warn!(service = %key, aborted = current.version, to = rollout.previous,
        now = deployment.version, "rollout aborted");
    Ok(Json(deployment))
}
