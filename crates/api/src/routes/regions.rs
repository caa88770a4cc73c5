//! Regions (admin) and the regional deployments a region's control plane fetches.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use meridian_model::{
    derive_spec, validate_region, Endpoint, Region, RegionInput, RegionalDeployment,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::bearer;
use crate::error::ErrorResponses;
use crate::extract::{ApiPath, JsonBody};
use crate::{ApiError, ApiState, Caller, RootTrust};
use meridian_identity::enroll::JoinToken;
use meridian_identity::{SpiffeId, Subject};

/// Path of one region.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RegionPath {
    /// The region.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    region: String,
}

impl RegionPath {
    /// The region's name.
    pub fn region(&self) -> &str {
        &self.region
    }
}

/// Creates or updates a region (admin only).
#[utoipa::path(put, path = "/v1/regions/{region}", tag = "regions", params(RegionPath),
    request_body = RegionInput,
    responses((status = 200, description = "The region as stored", body = Region), ErrorResponses))]
pub async fn put(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<RegionPath>,
    JsonBody(input): JsonBody<RegionInput>,
) -> Result<Json<Region>, ApiError> {
    caller.require_admin()?;
    validate_region(&path.region, &input)?;
    let region = Region {
        name: path.region,
        lat: input.lat,
        lon: input.lon,
    };
    state.store.put_region(&region).await?;
    tracing::info!(region = %region.name, "region stored");
    Ok(Json(region))
}

/// Lists regions.
#[utoipa::path(get, path = "/v1/regions", tag = "regions",
    responses((status = 200, description = "Regions by name", body = Vec<Region>), ErrorResponses))]
pub async fn list(
    State(state): State<ApiState>,
    _caller: Caller,
) -> Result<Json<Vec<Region>>, ApiError> {
    Ok(Json(state.store.list_regions().await?))
}

/// Deletes a region no service runs in (admin only).
#[utoipa::path(delete, path = "/v1/regions/{region}", tag = "regions", params(RegionPath),
    responses((status = 204, description = "Deleted"), ErrorResponses))]
pub async fn delete(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<RegionPath>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    state.store.delete_region(&path.region).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// How long a region's intermediate CA is valid.
const INTERMEDIATE_VALIDITY: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// A region's control plane asks for its intermediate CA.
#[derive(Deserialize, ToSchema)]
pub struct IntermediateRequest {
    /// A PKCS#10 certificate signing request (PEM) for the region's own key.
    pub csr: String,
}

/// A region's intermediate CA.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct IntermediateIssued {
    /// The installation's trust domain.
    pub trust_domain: String,
    /// The intermediate certificate, then its parents below the root (PEM).
    pub chain_pem: String,
    /// The trust bundle: the installation's root certificate (PEM).
    pub bundle_pem: String,
}

/// Issues the region's intermediate CA to the key of a signing request: what the region's
/// control plane asks at its first start, with a join token made for it
/// (`POST /v1/regions/{region}/join-tokens`, spent by this request) or an admin token.
#[utoipa::path(post, path = "/v1/regions/{region}/intermediate", tag = "regions",
    params(RegionPath), request_body = IntermediateRequest,
    responses((status = 200, description = "The intermediate", body = IntermediateIssued), ErrorResponses))]
pub async fn intermediate(
    State(state): State<ApiState>,
    headers: HeaderMap,
    ApiPath(path): ApiPath<RegionPath>,
    JsonBody(request): JsonBody<IntermediateRequest>,
) -> Result<Json<IntermediateIssued>, ApiError> {
    let secret = bearer(&headers)?;
    match JoinToken::parse(secret) {
        Ok(token) => redeem_region_token(&state, &token, &path.region)?,
        Err(_) => Caller::of(secret, &state).await?.require_admin()?,
    }
    require_region(&state, &path.region).await?;
    let ca = &state.trust()?.ca;
    let chain_pem = ca
        .issue_intermediate_for(&request.csr, &path.region, INTERMEDIATE_VALIDITY)
        .map_err(|e| ApiError::bad_request(e.to_string()).with_field("csr"))?;
    tracing::info!(region = %path.region, "issued the region's intermediate CA");
    Ok(Json(IntermediateIssued {
        trust_domain: ca.trust_domain().to_owned(),
        chain_pem,
        bundle_pem: ca.certificate_pem().to_owned(),
    }))
}

/// Spends `token`, which must admit the control plane of `region`.
fn redeem_region_token(state: &ApiState, token: &JoinToken, region: &str) -> Result<(), ApiError> {
    let admitted = state
        .trust()?
        .region_tokens
        .redeem(token)
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::unauthorized(
                "unknown, spent or expired join token: make another with \
                 `meridian join-token control/<region>`",
            )
        })?;
    match &admitted.subject {
        Subject::Control { region: Some(r) } if r == region => Ok(()),
        _ => Err(ApiError::forbidden(format!(
            "the join token admits {admitted}, not the control plane of region `{region}`; it is \
             spent"
        ))),
    }
}

/// How long a region join token may be redeemed.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegionJoinTokenRequest {
    /// Seconds; default one hour, at most a week.
    #[serde(default = "default_join_ttl")]
    pub ttl_seconds: u64,
}

fn default_join_ttl() -> u64 {
    3600
}

/// The longest a region join token lives: a week.
const MAX_JOIN_TTL_SECONDS: u64 = 7 * 86_400;

/// A region join token, shown once.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RegionJoinToken {
    /// The token (`mrdjoin_<root fingerprint>_<secret>`); only its digest is kept.
    pub token: String,
    /// The identity it admits: the region's control plane.
    pub spiffe_id: String,
    /// How long it may be redeemed.
    pub expires_in_seconds: u64,
}

/// Makes a one-time token with which the region's control plane gets its intermediate CA at
/// its first start (`meridian control --region R --join-token T`), so that it needs no admin
/// token (admin only).
#[utoipa::path(post, path = "/v1/regions/{region}/join-tokens", tag = "regions",
    params(RegionPath), request_body = RegionJoinTokenRequest,
    responses((status = 200, description = "The token, shown once", body = RegionJoinToken), ErrorResponses))]
pub async fn create_join_token(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<RegionPath>,
    JsonBody(request): JsonBody<RegionJoinTokenRequest>,
) -> Result<Json<RegionJoinToken>, ApiError> {
    caller.require_admin()?;
    require_region(&state, &path.region).await?;
    if request.ttl_seconds == 0 || request.ttl_seconds > MAX_JOIN_TTL_SECONDS {
        return Err(
            ApiError::bad_request(format!("must be between 1 and {MAX_JOIN_TTL_SECONDS}"))
                .with_field("ttl_seconds"),
        );
    }
    let RootTrust {
        ca,
        region_tokens: tokens,
    } = state.trust()?;
    let id = SpiffeId {
        trust_domain: ca.trust_domain().to_owned(),
        subject: Subject::Control {
            region: Some(path.region.clone()),
        },
    };
    let ttl = std::time::Duration::from_secs(request.ttl_seconds);
    let token = tokens
        .create(&id, ttl, ca.certificate_pem())
        .map_err(ApiError::internal)?;
    tracing::info!(region = %path.region, "made a join token for the region's control plane");
    Ok(Json(RegionJoinToken {
        token: token.as_str().to_owned(),
        spiffe_id: id.to_string(),
        expires_in_seconds: request.ttl_seconds,
    }))
}

/// Every endpoint registered in the region (admin only; the region's control plane reads it).
#[utoipa::path(get, path = "/v1/regions/{region}/endpoints", tag = "regions",
    params(RegionPath),
    responses((status = 200, description = "Endpoints, by org, app, service and id",
               body = Vec<Endpoint>), ErrorResponses))]
pub async fn endpoints(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<RegionPath>,
) -> Result<Json<Vec<Endpoint>>, ApiError> {
    caller.require_admin()?;
    require_region(&state, &path.region).await?;
    Ok(Json(state.store.endpoints_in_region(&path.region).await?))
}

pub(crate) async fn require_region(state: &ApiState, name: &str) -> Result<(), ApiError> {
    let regions = state.store.list_regions().await?;
    if !regions.iter().any(|r| r.name == name) {
        return Err(ApiError::not_found(format!("region `{name}`")));
    }
    Ok(())
}

/// The regional deployments of every service that runs in the region: each current definition
/// with the region's overrides applied (admin only; this is what the region's control plane reads).
#[utoipa::path(get, path = "/v1/regions/{region}/deployments", tag = "regions",
    params(RegionPath),
    responses((status = 200, description = "Regional deployments, by org, app and service",
               body = Vec<RegionalDeployment>), ErrorResponses))]
pub async fn deployments(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<RegionPath>,
) -> Result<Json<Vec<RegionalDeployment>>, ApiError> {
    caller.require_admin()?;
    require_region(&state, &path.region).await?;
    let derived = state
        .store
        .deployments_in_region(&path.region)
        .await?
        .into_iter()
        .map(|d| {
            let spec = derive_spec(&d.definition, d.definition.overrides.get(&path.region));
            RegionalDeployment {
                org: d.definition.org,
                app: d.definition.app,
                service: d.definition.name,
                region: path.region.clone(),
                version: d.version,
                spec,
            }
        })
        .collect();
    Ok(Json(derived))
}
