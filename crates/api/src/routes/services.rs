//! Services: apply (create or update), list, get, delete, history, rollback and status.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use meridian_model::waves::{self, Standing};
use meridian_model::{validate_definition, Definition, Deployment, ServiceSummary};
use meridian_model::{RegionReport, RolloutPhase};
use meridian_store::{Applied, MissingOrg, ServiceFilter, ServiceKey};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ErrorResponses;
use crate::extract::{ApiPath, ApiQuery, JsonBody};
use crate::{ApiError, ApiState, Caller};

/// Path of one service.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ServicePath {
    /// Owning org.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub(crate) org: String,
    /// Owning app.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub(crate) app: String,
    /// Service name.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub(crate) service: String,
}

impl ServicePath {
    /// The service's key, when the caller may act on the service's org.
    pub(crate) fn authorize(self, caller: &Caller) -> Result<ServiceKey, ApiError> {
        caller.require_org(&self.org)?;
        Ok(ServiceKey {
            org: self.org,
            app: self.app,
            name: self.service,
        })
    }
}

/// Path of one deployment version.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct VersionPath {
    /// Owning org.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    org: String,
    /// Owning app.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    app: String,
    /// Service name.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    service: String,
    /// Deployment version.
    version: u64,
}

/// Filters for listing services.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ServiceQuery {
    /// Only services of this org.
    org: Option<String>,
    /// Only services of apps with this name.
    app: Option<String>,
    /// Only services with this name.
    name: Option<String>,
}

/// Body of a rollback.
#[derive(Deserialize, ToSchema)]
pub struct RollbackRequest {
    /// The version to copy into a new current version.
    #[schema(minimum = 1)]
    to: u64,
}

/// A service's state in each of its regions.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ServiceStatus {
    /// Owning org.
    pub org: String,
    /// Owning app.
    pub app: String,
    /// Service name.
    pub name: String,
    /// The current deployment version.
    pub version: u64,
    /// One entry per region of the current version.
    pub regions: Vec<RegionStatus>,
}

/// A service's state in one region.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RegionStatus {
    /// The region.
    pub region: String,
    /// Instances wanted: the region's effective `scale.min`, or, when the service scales on
    /// its load, what the region's autoscaling last wanted (see `autoscale`).
    pub desired: u32,
    /// Most instances allowed (the region's effective `scale.max`).
    pub max: u32,
    /// The deployment version the region should run.
    pub version: u64,
    /// Instances placed on the region's nodes, as its control plane last reported; none if it
    /// has not reported, or not for 10 s (nobody vouches for them now).
    pub placed: Option<u32>,
    /// Of those, the healthy ones.
    pub healthy: Option<u32>,
    /// How long ago the region last reported, in seconds; none if it has not reported since
    /// this control plane started.
    pub report_age_seconds: Option<u64>,
    /// `running` (enough healthy instances of the version), `degraded` (fewer), `starting`
    /// (none healthy yet), `updating` (another version reported), `rolling out` (instances of
    /// the version and of earlier ones in service), `rolling back` (a gate failed; the region
    /// returns to the previous version), `rolled back` (it runs the previous version again),
    /// `waiting for wave N` (the version waits for the regions of the waves before N:
    /// `deploy.waves`), `pending` (not reported yet), `unknown` (the region has not reported
    /// for 10 s), `scaled to zero`, or `sleeping (light)` / `sleeping (deep)` (every instance
    /// in service asleep, `scale.sleep`: the first request wakes one).
    pub state: String,
    /// During a rollout, the instances in service by the version they run; empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<meridian_model::VersionHealth>,
    /// The region's last rollout of this version: phase, step, weights, and the failed gate
    /// with its figures; none when the region has not rolled this version out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<meridian_model::RolloutStatus>,
    /// What keeps instances from running as wanted, as the region reports it: instances that
    /// fit on no node and why, instances unhealthy or failed and why (`oom_killed` with the
    /// memory limit); empty when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// When the service scales on its load (`scale.targets`), the region's last decision:
    /// instances in service, wanted, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<meridian_model::AutoscaleStatus>,
    /// When the service sleeps (`scale.sleep`), the longest of its instances' last wakes in
    /// the region, in milliseconds; none before one woke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_ms: Option<u32>,
}

/// A region's report older than this says nothing about now: regions report every 2 s, so
/// this is five reports missed (the same age past which the regions' summaries leave it out).
const REPORT_STALE_SECONDS: u64 = 10;

/// The state of a service's regional deployment `rd` from its region's last report; `waiting`
/// is the region's wave (0 first) when that wave has not started.
fn region_status(
    rd: meridian_model::RegionalDeployment,
    report: Option<(RegionReport, u64)>,
    waiting: Option<usize>,
) -> RegionStatus {
    let age = report.as_ref().map(|(_, age)| *age);
    let stale = age.is_some_and(|age| age > REPORT_STALE_SECONDS);
    let health = report.as_ref().filter(|_| !stale).and_then(|(report, _)| {
        report
            .services
            .iter()
            .find(|s| s.org == rd.org && s.app == rd.app && s.service == rd.service)
            .cloned()
    });
    let autoscale = health.as_ref().and_then(|h| h.autoscale.clone());
    let desired = autoscale
        .as_ref()
        .map_or(rd.spec.scale.fewest_placed(), |a| a.desired);
    let asleep = health.as_ref().and_then(asleep);
    let waiting = waiting.map(|wave| format!("waiting for wave {}", wave + 1));
    // The rollout of this version, if the region reports one.
    let rollout = health
        .as_ref()
        .and_then(|h| h.rollout.clone())
        .filter(|r| r.version == rd.version);
    let phase = rollout.as_ref().map(|r| r.phase);
    let state = match (&report, &health) {
        _ if waiting.is_some() => waiting.as_deref().unwrap_or_default(),
        (None, _) => "pending",
        _ if stale => "unknown",
        _ if desired == 0 => "scaled to zero",
        (_, None) => "pending",
        (_, Some(h)) if h.version != rd.version => "updating",
        _ if phase == Some(RolloutPhase::Failed) => "rolling back",
        _ if phase == Some(RolloutPhase::RolledBack) => "rolled back",
        _ if phase == Some(RolloutPhase::Paused) => "paused",
        (_, Some(h)) if h.versions.len() > 1 => "rolling out",
        _ if asleep.is_some() => asleep.unwrap_or_default(),
        (_, Some(h)) if h.healthy >= desired => "running",
        (_, Some(h)) if h.healthy > 0 => "degraded",
        (_, Some(_)) => "starting",
    };
    RegionStatus {
        region: rd.region,
        desired,
        max: rd.spec.scale.max,
        version: rd.version,
        placed: health.as_ref().map(|h| h.placed),
        healthy: health.as_ref().map(|h| h.healthy),
        report_age_seconds: age,
        state: state.to_owned(),
        versions: health
            .as_ref()
            .map(|h| h.versions.clone())
            .unwrap_or_default(),
        wake_ms: health.as_ref().map(|h| h.wake_ms).filter(|ms| *ms > 0),
        problems: health.map(|h| h.problems).unwrap_or_default(),
        rollout,
        autoscale,
    }
}

/// `sleeping (light)` or `sleeping (deep)` when every instance of `health` in service is
/// asleep (`sleeping (light)` when some are frozen and some stopped: it wakes that fast).
fn asleep(health: &meridian_model::ServiceHealth) -> Option<&'static str> {
    let count = |state: &str| health.instances.get(state).copied().unwrap_or(0);
    let (light, deep) = (
        count(meridian_model::SLEEPING_LIGHT),
        count(meridian_model::SLEEPING_DEEP),
    );
    let all: u32 = health.instances.values().sum();
    match (light, deep) {
        (0, 0) => None,
        _ if light + deep < all => None,
        (0, _) => Some(meridian_model::SLEEPING_DEEP),
        _ => Some(meridian_model::SLEEPING_LIGHT),
    }
}

/// The header of an apply's answer that says whether it made a new version: `created` or
/// `unchanged`.
pub const APPLY_HEADER: &str = "meridian-apply";

/// Creates or updates a service from its definition. An apply creates a new deployment version,
/// unless the definition equals the current version's: then nothing changes, and the current
/// version comes back. The answer's [`APPLY_HEADER`] says which (`created` or `unchanged`).
///
/// Image tags (`runtime.image.ref`, and overrides') are resolved to the digests they name at
/// their registry and stored pinned (`REPOSITORY:TAG@sha256:…`); an unknown tag or an
/// unreachable registry is a 422 naming the field, and nothing changes.
///
/// An admin token may apply into any org (creating it if missing); an org token only into its
/// own. The app is created if missing. A public domain belongs to one service across all orgs:
/// if another service serves one of `domains` (or a wildcard overlapping it), the answer is 409
/// `domain_taken` with the field (`domains[i]`) and nothing changes; the message names the
/// holder to an admin (and an org its own service), never another org's service to an org.
#[utoipa::path(post, path = "/v1/services", tag = "services",
    request_body = Definition,
    responses((status = 200, description = "The current deployment: the new version, or the unchanged current one", body = Deployment,
        headers(("meridian-apply" = String, description = "`created` when the apply made a new version, `unchanged` when the definition equalled the current version's"))),
        ErrorResponses))]
pub async fn apply(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(mut definition): JsonBody<Definition>,
) -> Result<([(&'static str, &'static str); 1], Json<Deployment>), ApiError> {
    caller.require_org(&definition.org)?;
    let regions = state.store.list_regions().await?;
    let exists = |name: &str| regions.iter().any(|r| r.name == name);
    validate_definition(&definition, &exists)?;
    let sealing = state.secrets.as_deref();
    state
        .registries
        .pin(&mut definition, state.store.as_ref(), sealing)
        .await?;
    let missing_org = if caller.is_admin() {
        MissingOrg::Create
    } else {
        MissingOrg::Reject
    };
    let Applied {
        deployment,
        changed,
    } = state
        .store
        .apply_service(&definition, missing_org)
        .await
        .map_err(|e| ApiError::domain_taken(&caller, e))?;
    tracing::info!(
        service = %ServiceKey::of(&definition),
        version = deployment.version,
        revision = deployment.revision,
        changed,
        "applied service"
    );
    let outcome = if changed { "created" } else { "unchanged" };
    Ok(([(APPLY_HEADER, outcome)], Json(deployment)))
}

/// Lists services visible to the caller, optionally filtered.
#[utoipa::path(get, path = "/v1/services", tag = "services", params(ServiceQuery),
    responses((status = 200, description = "Services, by org, app and name", body = Vec<ServiceSummary>), ErrorResponses))]
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ServiceQuery>,
) -> Result<Json<Vec<ServiceSummary>>, ApiError> {
    let Some(org) = caller.listing_org(query.org) else {
        return Ok(Json(Vec::new()));
    };
    let filter = ServiceFilter {
        org,
        app: query.app,
        name: query.name,
    };
    Ok(Json(state.store.list_services(&filter).await?))
}

/// The current deployment of a service.
#[utoipa::path(get, path = "/v1/orgs/{org}/apps/{app}/services/{service}", tag = "services",
    params(ServicePath),
    responses((status = 200, description = "The current deployment", body = Deployment), ErrorResponses))]
pub async fn get(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<ServicePath>,
) -> Result<Json<Deployment>, ApiError> {
    let key = path.authorize(&caller)?;
    match state.store.get_service(&key).await? {
        Some(deployment) => Ok(Json(deployment)),
        None => Err(ApiError::not_found(format!("service `{key}`"))),
    }
}

/// Deletes a service and its deployment history.
#[utoipa::path(delete, path = "/v1/orgs/{org}/apps/{app}/services/{service}", tag = "services",
    params(ServicePath),
    responses((status = 204, description = "Deleted"), ErrorResponses))]
pub async fn delete(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<ServicePath>,
) -> Result<StatusCode, ApiError> {
    let key = path.authorize(&caller)?;
    state.store.delete_service(&key).await?;
    tracing::info!(service = %key, "deleted service");
    Ok(StatusCode::NO_CONTENT)
}

/// Every deployment version of a service, oldest first.
#[utoipa::path(get, path = "/v1/orgs/{org}/apps/{app}/services/{service}/deployments",
    tag = "services", params(ServicePath),
    responses((status = 200, description = "The history", body = Vec<Deployment>), ErrorResponses))]
pub async fn deployments(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<ServicePath>,
) -> Result<Json<Vec<Deployment>>, ApiError> {
    let key = path.authorize(&caller)?;
    Ok(Json(state.store.list_deployments(&key).await?))
}

/// One deployment version of a service.
#[utoipa::path(get, path = "/v1/orgs/{org}/apps/{app}/services/{service}/deployments/{version}",
    tag = "services", params(VersionPath),
    responses((status = 200, description = "The deployment", body = Deployment), ErrorResponses))]
pub async fn deployment(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<VersionPath>,
) -> Result<Json<Deployment>, ApiError> {
    let version = path.version;
    let key = ServicePath {
        org: path.org,
        app: path.app,
        service: path.service,
    }
    .authorize(&caller)?;
    match state.store.get_deployment(&key, version).await? {
        Some(deployment) => Ok(Json(deployment)),
        None => Err(ApiError::not_found(format!(
            "version {version} of service `{key}`"
        ))),
    }
}

/// Makes a new current version equal to an earlier one (409 `domain_taken` if another service
/// has since claimed one of its domains).
#[utoipa::path(post, path = "/v1/orgs/{org}/apps/{app}/services/{service}/rollback",
    tag = "services", params(ServicePath), request_body = RollbackRequest,
    responses((status = 200, description = "The new current deployment", body = Deployment), ErrorResponses))]
pub async fn rollback(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<ServicePath>,
    JsonBody(request): JsonBody<RollbackRequest>,
) -> Result<Json<Deployment>, ApiError> {
    let key = path.authorize(&caller)?;
    let deployment = state
        .store
        .rollback(&key, request.to, None)
        .await
        .map_err(|e| ApiError::domain_taken(&caller, e))?;
    tracing::info!(service = %key, to = request.to, version = deployment.version, "rolled back");
    Ok(Json(deployment))
}

/// Per region: desired instances, the version it should run, and its state.
#[utoipa::path(get, path = "/v1/orgs/{org}/apps/{app}/services/{service}/status",
    tag = "services", params(ServicePath),
    responses((status = 200, description = "Status by region", body = ServiceStatus), ErrorResponses))]
pub async fn status(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<ServicePath>,
) -> Result<Json<ServiceStatus>, ApiError> {
    let key = path.authorize(&caller)?;
    let Some(current) = state.store.get_service(&key).await? else {
        return Err(ApiError::not_found(format!("service `{key}`")));
    };
    let regional = meridian_model::derive_regional(&current.definition, current.version);
    let reports: Vec<Option<(RegionReport, u64)>> = regional
        .iter()
        .map(|rd| {
            let report = state.reports.get(&rd.region);
            report.map(|(report, age)| (report, age.as_secs()))
        })
        .collect();
    let standings: Vec<Standing> = regional
        .iter()
        .zip(&reports)
        .map(|(rd, report)| {
            let fresh = report
                .as_ref()
                .filter(|(_, age)| *age <= REPORT_STALE_SECONDS);
            let health = fresh.and_then(|(report, _)| waves::service_in(report, rd));
            waves::standing(rd, health, false)
        })
        .collect();
    let released = waves::released(&standings);
    let regions = regional
        .into_iter()
        .zip(reports)
        .zip(standings.iter().zip(released))
        .map(|((rd, report), (standing, released))| {
            region_status(rd, report, (!released).then_some(standing.wave))
        })
        .collect();
    Ok(Json(ServiceStatus {
        org: key.org,
        app: key.app,
        name: key.name,
        version: current.version,
        regions,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// acme/shop/web in fra, two instances wanted.
    fn web_in_fra() -> meridian_model::RegionalDeployment {
        let definition = meridian_model::parse_definition_json(
            br#"{"org":"acme","app":"shop","name":"web","regions":["fra"],
                "scale":{"min":2,"max":3},"runtime":{"process":{"command":"x"}}}"#,
        )
        .unwrap();
        meridian_model::derive_regional(&definition, 1).remove(0)
    }

    /// A report of fra with every instance of web placed and healthy.
    fn all_healthy() -> RegionReport {
        serde_json::from_value(serde_json::json!({"nodes": 2, "capacity": 16, "services": [
            {"org": "acme", "app": "shop", "service": "web", "version": 1, "placed": 2, "healthy": 2}
        ]}))
        .unwrap()
    }

    #[test]
    fn a_failed_rollout_shows_rolling_back_then_rolled_back_with_its_reason() {
        let report = |phase: &str, version: u64| -> RegionReport {
            serde_json::from_value(serde_json::json!({"nodes": 2, "capacity": 16,
                "services": [{"org": "acme", "app": "shop", "service": "web", "version": 1,
                    "placed": 2, "healthy": 2, "rollout": {"version": version, "previous": 0,
                    "strategy": "rolling", "phase": phase, "started_at": 1, "updated_at": 2,
                    "failure": {"gate": "crash_loop", "instance": "web-2", "observed": 1,
                        "limit": 0, "reason": "web-2 crashed"}}}]}))
            .unwrap()
        };
        let status = region_status(web_in_fra(), Some((report("failed", 1), 1)), None);
        assert_eq!(status.state, "rolling back");
        let status = region_status(web_in_fra(), Some((report("rolled_back", 1), 1)), None);
        assert_eq!(status.state, "rolled back");
        let failure = status.rollout.unwrap().failure.unwrap();
        assert_eq!(failure.reason, "web-2 crashed");
        // A rollout of another version says nothing of this one.
        let other = region_status(web_in_fra(), Some((report("rolled_back", 7), 1)), None);
        assert_eq!((other.state.as_str(), other.rollout), ("running", None));
    }

    #[test]
    fn a_rollout_shows_each_versions_instances() {
        let report = serde_json::from_value(serde_json::json!({"nodes": 2, "capacity": 16,
            "services": [{"org": "acme", "app": "shop", "service": "web", "version": 1,
                "placed": 3, "healthy": 3, "versions": [
                    {"version": 0, "placed": 2, "healthy": 2},
                    {"version": 1, "placed": 1, "healthy": 1}]}]}))
        .unwrap();
        let status = region_status(web_in_fra(), Some((report, 1)), None);
        assert_eq!(status.state, "rolling out");
        let versions: Vec<(u64, u32)> = status
            .versions
            .iter()
            .map(|v| (v.version, v.healthy))
            .collect();
        assert_eq!(versions, [(0, 2), (1, 1)]);
        let steady = region_status(web_in_fra(), Some((all_healthy(), 1)), None);
        assert!(steady.versions.is_empty());
    }

    #[test]
    fn a_fresh_report_counts_its_instances_and_says_how_old_it_is() {
        let status = region_status(web_in_fra(), Some((all_healthy(), 3)), None);
        assert_eq!(status.state, "running");
        assert_eq!((status.placed, status.healthy), (Some(2), Some(2)));
        assert_eq!(status.report_age_seconds, Some(3));
    }

    #[test]
    fn a_region_that_stopped_reporting_is_unknown_with_the_age_of_its_report_and_no_count() {
        let status = region_status(web_in_fra(), Some((all_healthy(), 11)), None);
        assert_eq!(status.state, "unknown");
        assert_eq!((status.placed, status.healthy), (None, None));
        assert_eq!(status.report_age_seconds, Some(11));
    }

    #[test]
    fn a_region_whose_wave_has_not_started_says_so() {
        let status = region_status(web_in_fra(), Some((all_healthy(), 1)), Some(1));
        assert_eq!(status.state, "waiting for wave 2");
        assert_eq!(status.healthy, Some(2));
        let status = region_status(web_in_fra(), None, Some(0));
        assert_eq!(status.state, "waiting for wave 1");
    }

    #[test]
    fn a_region_that_never_reported_is_pending() {
        let status = region_status(web_in_fra(), None, None);
        assert_eq!(status.state, "pending");
        assert_eq!(status.report_age_seconds, None);
    }
}
