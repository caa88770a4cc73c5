//! Rollouts: a service's rollout history, as the regions reported it, and what a person does
//! to the rollout under way: abort, pause, resume, promote.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use meridian_model::{
    Deployment, RolloutControl, RolloutMode, RolloutPhase, RolloutRecord, RolloutStatus,
};
use meridian_store::ServiceKey;

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
    current(&state, &key).await?;
    Ok(Json(state.store.list_rollouts(&key).await?))
}

/// Aborts the rollout of the current version: the version it replaces becomes current again
/// (a new version, `origin: rollback`), to which every region returns by the draining path
/// (at once where the previous set is still kept, `keep_previous`). 409 when no region reports
/// a rollout of the current version under way, nor one that ended so recently that the
/// previous set is still kept.
#[utoipa::path(post, path = "/v1/orgs/{org}/apps/{app}/services/{service}/rollout/abort",
    tag = "services", params(ServicePath),
    responses((status = 200, description = "The new current deployment", body = Deployment), ErrorResponses))]
pub async fn abort(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<ServicePath>,
) -> Result<Json<Deployment>, ApiError> {
    let key = path.authorize(&caller)?;
    let current = current(&state, &key).await?;
    let kept = current.definition.deploy.keep_previous();
    let now = unix_ms();
    let abortable = |r: &RolloutStatus| {
        !r.phase.ended() || (r.phase == RolloutPhase::Succeeded && !previous_gone(r, kept, now))
    };
    let Some(rollout) = rollout_of(&state, &key, &current, abortable) else {
        return Err(ApiError::conflict(format!(
            "no region reports a rollout of version {} under way: nothing to abort \
             (`meridian rollback` makes any earlier version current)",
            current.version
        )));
    };
    let deployment = state
        .store
        .rollback(&key, rollout.previous, None)
        .await
        .map_err(|e| ApiError::domain_taken(&caller, e))?;
    tracing::warn!(service = %key, aborted = current.version, to = rollout.previous,
        now = deployment.version, "rollout aborted");
    Ok(Json(deployment))
}

/// Pauses the rollout of the current version in every region that runs it: no instance is
/// replaced, no canary step taken, no further wave released; the gates keep watching (a
/// failing new version still rolls back) and `progress_deadline` does not run. 409 when no
/// rollout is under way or it is paused already.
#[utoipa::path(post, path = "/v1/orgs/{org}/apps/{app}/services/{service}/rollout/pause",
    tag = "services", params(ServicePath),
    responses((status = 200, description = "The pause, for the current version", body = RolloutControl), ErrorResponses))]
pub async fn pause(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<ServicePath>,
) -> Result<Json<RolloutControl>, ApiError> {
    control(state, &path.authorize(&caller)?, RolloutMode::Paused).await
}

/// Promotes the rollout of the current version: a canary skips its remaining steps and
/// pauses, and the new version takes every request as soon as its set is ready (a paused
/// rollout resumes). 409 when no rollout is under way or it is promoted already.
#[utoipa::path(post, path = "/v1/orgs/{org}/apps/{app}/services/{service}/rollout/promote",
    tag = "services", params(ServicePath),
    responses((status = 200, description = "The promotion, for the current version", body = RolloutControl), ErrorResponses))]
pub async fn promote(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<ServicePath>,
) -> Result<Json<RolloutControl>, ApiError> {
    control(state, &path.authorize(&caller)?, RolloutMode::Promoted).await
}

/// Resumes the paused rollout of the current version where it was held (a canary's step
/// pause counts again from the resume). 409 when it is not paused.
#[utoipa::path(post, path = "/v1/orgs/{org}/apps/{app}/services/{service}/rollout/resume",
    tag = "services", params(ServicePath),
    responses((status = 204, description = "Resumed"), ErrorResponses))]
pub async fn resume(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<ServicePath>,
) -> Result<StatusCode, ApiError> {
    let key = path.authorize(&caller)?;
    let current = current(&state, &key).await?;
    let paused = state
        .store
        .get_rollout_control(&key)
        .await?
        .is_some_and(|c| c.version == current.version && c.mode == RolloutMode::Paused);
    if !paused {
        return Err(ApiError::conflict(format!(
            "the rollout of version {} is not paused: nothing to resume \
             (`meridian rollout status` shows where it is)",
            current.version
        )));
    }
    state.store.set_rollout_control(&key, None).await?;
    tracing::info!(service = %key, version = current.version, "rollout resumed");
    Ok(StatusCode::NO_CONTENT)
}

/// Asks `mode` of the rollout of `key`'s current version, if one is under way.
async fn control(
    state: ApiState,
    key: &ServiceKey,
    mode: RolloutMode,
) -> Result<Json<RolloutControl>, ApiError> {
    let current = current(&state, key).await?;
    let (verb, again) = match mode {
        RolloutMode::Paused => (
            "pause",
            "paused already (`meridian rollout resume` continues it)",
        ),
        RolloutMode::Promoted => ("promote", "promoted already: it goes on to 100 %"),
    };
    if rollout_of(&state, key, &current, |r| r.phase.under_way()).is_none() {
        return Err(ApiError::conflict(format!(
            "no region reports a rollout of version {} under way: nothing to {verb} \
             (`meridian rollout status` shows where the last one ended)",
            current.version
        )));
    }
    let control = RolloutControl {
        version: current.version,
        mode,
    };
    if state.store.get_rollout_control(key).await? == Some(control) {
        return Err(ApiError::conflict(format!(
            "the rollout of version {} is {again}",
            current.version
        )));
    }
    state.store.set_rollout_control(key, Some(control)).await?;
    tracing::info!(service = %key, version = current.version, ?mode, "rollout control");
    Ok(Json(control))
}

/// The current deployment of `key`, or 404.
async fn current(state: &ApiState, key: &ServiceKey) -> Result<Deployment, ApiError> {
    state
        .store
        .get_service(key)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("service `{key}`")))
}

/// The first rollout of `current`'s version that a region of it reports and `wanted` takes.
fn rollout_of(
    state: &ApiState,
    key: &ServiceKey,
    current: &Deployment,
    wanted: impl Fn(&RolloutStatus) -> bool,
) -> Option<RolloutStatus> {
    current.definition.regions.iter().find_map(|region| {
        let (report, _) = state.reports.get(region)?;
        let health = report
            .services
            .into_iter()
            .find(|s| s.org == key.org && s.app == key.app && s.service == key.name)?;
        health
            .rollout
            .filter(|r| r.version == current.version && wanted(r))
    })
}

/// Whether the previous set of rollout `r`, kept for `kept` after it ended, is gone by
/// `now_ms` (as the region's clock said when it ended).
fn previous_gone(r: &RolloutStatus, kept: Duration, now_ms: u64) -> bool {
    let kept_ms = u64::try_from(kept.as_millis()).unwrap_or(u64::MAX);
    now_ms >= r.updated_at.saturating_add(kept_ms)
}

/// Now, in Unix milliseconds.
fn unix_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}
