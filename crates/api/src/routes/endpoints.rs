//! Endpoints: the instances of a service that proxies send traffic to, registered through the API
//! until agents report them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use meridian_model::{validate_endpoint, Endpoint, EndpointInput};
use serde::Deserialize;
use utoipa::IntoParams;

use super::services::ServicePath;
use crate::error::ErrorResponses;
use crate::extract::{ApiPath, JsonBody};
use crate::{ApiError, ApiState, Caller};

/// Path of one endpoint.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EndpointPath {
    /// Owning org.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    org: String,
    /// Owning app.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    app: String,
    /// Service name.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    service: String,
    /// The endpoint's id.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    endpoint: String,
}

impl EndpointPath {
    fn split(self) -> (ServicePath, String) {
        let service = ServicePath {
            org: self.org,
            app: self.app,
            service: self.service,
        };
        (service, self.endpoint)
    }
}

/// Registers or updates an endpoint of a service: where one of its instances listens, in which
/// region, and whether it is healthy.
#[utoipa::path(put, path = "/v1/orgs/{org}/apps/{app}/services/{service}/endpoints/{endpoint}",
    tag = "endpoints", params(EndpointPath), request_body = EndpointInput,
    responses((status = 200, description = "The endpoint as stored", body = Endpoint), ErrorResponses))]
pub async fn put(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<EndpointPath>,
    JsonBody(input): JsonBody<EndpointInput>,
) -> Result<Json<Endpoint>, ApiError> {
    let (service, id) = path.split();
    let key = service.authorize(&caller)?;
    let Some(current) = state.store.get_service(&key).await? else {
        return Err(ApiError::not_found(format!("service `{key}`")));
    };
    validate_endpoint(&id, &input, &current.definition)?;
    let endpoint = state.store.put_endpoint(&key, &id, &input).await?;
    tracing::info!(service = %key, endpoint = %id, health = ?input.health, "endpoint stored");
    Ok(Json(endpoint))
}

/// The endpoints of a service, by id.
#[utoipa::path(get, path = "/v1/orgs/{org}/apps/{app}/services/{service}/endpoints",
    tag = "endpoints", params(ServicePath),
    responses((status = 200, description = "Endpoints by id", body = Vec<Endpoint>), ErrorResponses))]
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<ServicePath>,
) -> Result<Json<Vec<Endpoint>>, ApiError> {
    let key = path.authorize(&caller)?;
    if state.store.get_service(&key).await?.is_none() {
        return Err(ApiError::not_found(format!("service `{key}`")));
    }
    Ok(Json(state.store.list_endpoints(&key).await?))
}

/// Removes an endpoint.
#[utoipa::path(delete, path = "/v1/orgs/{org}/apps/{app}/services/{service}/endpoints/{endpoint}",
    tag = "endpoints", params(EndpointPath),
    responses((status = 204, description = "Removed"), ErrorResponses))]
pub async fn delete(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<EndpointPath>,
) -> Result<StatusCode, ApiError> {
    let (service, id) = path.split();
    let key = service.authorize(&caller)?;
    state.store.delete_endpoint(&key, &id).await?;
    tracing::info!(service = %key, endpoint = %id, "endpoint removed");
    Ok(StatusCode::NO_CONTENT)
}
