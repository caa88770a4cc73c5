//! An app's and an org's secrets: set (create or change), list (names and versions, never
//! values), delete.
//! Values are sealed with the control plane's secrets key before they reach the store, and no
//! read of the API ever returns one.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use meridian_model::env::SECRET_VALUE_MAX;
use meridian_model::{
    check_dns_label, check_secret_name, SecretInfo, SecretOwner, ValidationErrors,
};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::error::ErrorResponses;
use crate::extract::{ApiPath, JsonBody};
use crate::{ApiError, ApiState, Caller};

/// Path of an app's secrets.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SecretsPath {
    /// The org.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    org: String,
    /// The app.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    app: String,
}

/// Path of one secret.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SecretPath {
    /// The org.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    org: String,
    /// The app.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    app: String,
    /// The secret: letters, digits and `_`, not starting with a digit, at most 128 characters.
    #[param(pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
    name: String,
}

/// Path of an org's secrets.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct OrgSecretsPath {
    /// The org.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    org: String,
}

/// Path of one secret of an org.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct OrgSecretPath {
    /// The org.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    org: String,
    /// The secret: letters, digits and `_`, not starting with a digit, at most 128 characters.
    #[param(pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
    name: String,
}

/// The value of a secret to set.
#[derive(Deserialize, ToSchema)]
pub struct SecretValue {
    /// The value: UTF-8 text without NUL characters, at most 65536 bytes. Never shown again.
    value: String,
}

fn invalid(field: &str, reason: impl Into<String>) -> ApiError {
    let mut errors = ValidationErrors::default();
    errors.push(field, reason);
    ApiError::invalid(errors)
}

/// Sets a secret of an app (creating the app when missing): its version grows by one when the
/// value changes, and each service that uses it gets a new version equal to its current one
/// (origin `secret`), which rolls its instances over to the new value as its
/// `deploy.strategy` says. Setting the value it already has changes nothing.
#[utoipa::path(put, path = "/v1/orgs/{org}/apps/{app}/secrets/{name}", tag = "secrets",
    params(SecretPath), request_body = SecretValue,
    responses((status = 200, description = "The secret's name and version (never its value)",
        body = SecretInfo), ErrorResponses))]
pub async fn put(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<SecretPath>,
    JsonBody(body): JsonBody<SecretValue>,
) -> Result<Json<SecretInfo>, ApiError> {
    let owner = app_owner(&caller, &path.org, &path.app)?;
    set(&state, &owner, &path.name, &body.value).await
}

/// The secrets of an app: names and versions, never values.
#[utoipa::path(get, path = "/v1/orgs/{org}/apps/{app}/secrets", tag = "secrets",
    params(SecretsPath),
    responses((status = 200, description = "The app's secrets, by name", body = [SecretInfo]),
        ErrorResponses))]
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<SecretsPath>,
) -> Result<Json<Vec<SecretInfo>>, ApiError> {
    let owner = app_owner(&caller, &path.org, &path.app)?;
    Ok(Json(state.store.list_secrets(&owner).await?))
}

/// Deletes a secret of an app. While services of the app use it, only if the org has a secret
/// of that name: they then get a new version (origin `secret`) that rolls them over to the
/// org's; otherwise 409 naming them.
#[utoipa::path(delete, path = "/v1/orgs/{org}/apps/{app}/secrets/{name}", tag = "secrets",
    params(SecretPath), responses((status = 204, description = "Deleted"), ErrorResponses))]
pub async fn delete(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<SecretPath>,
) -> Result<StatusCode, ApiError> {
    let owner = app_owner(&caller, &path.org, &path.app)?;
    remove(&state, &owner, &path.name).await
}

/// Sets a secret of an org, seen by every app of the org that has no secret of the same name
/// (an app's secret shadows its org's): its version grows by one when the value changes, and
/// each service of the org that uses it (and whose app does not shadow it) gets a new version
/// equal to its current one (origin `secret`), which rolls its instances over to the new value
/// as its `deploy.strategy` says. Setting the value it already has changes nothing.
#[utoipa::path(put, path = "/v1/orgs/{org}/secrets/{name}", tag = "secrets",
    params(OrgSecretPath), request_body = SecretValue,
    responses((status = 200, description = "The secret's name and version (never its value)",
        body = SecretInfo), ErrorResponses))]
pub async fn put_org(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<OrgSecretPath>,
    JsonBody(body): JsonBody<SecretValue>,
) -> Result<Json<SecretInfo>, ApiError> {
    let owner = org_owner(&caller, &path.org)?;
    set(&state, &owner, &path.name, &body.value).await
}

/// The secrets of an org: names and versions, never values.
#[utoipa::path(get, path = "/v1/orgs/{org}/secrets", tag = "secrets",
    params(OrgSecretsPath),
    responses((status = 200, description = "The org's secrets, by name", body = [SecretInfo]),
        ErrorResponses))]
pub async fn list_org(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<OrgSecretsPath>,
) -> Result<Json<Vec<SecretInfo>>, ApiError> {
    let owner = org_owner(&caller, &path.org)?;
    Ok(Json(state.store.list_secrets(&owner).await?))
}

/// Deletes a secret of an org that no service of the org resolves to it any more (409 naming
/// the services that do).
#[utoipa::path(delete, path = "/v1/orgs/{org}/secrets/{name}", tag = "secrets",
    params(OrgSecretPath), responses((status = 204, description = "Deleted"), ErrorResponses))]
pub async fn delete_org(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<OrgSecretPath>,
) -> Result<StatusCode, ApiError> {
    let owner = org_owner(&caller, &path.org)?;
    remove(&state, &owner, &path.name).await
}

/// The secrets of app `org/app`, once the caller may manage them and the names are checked.
fn app_owner(caller: &Caller, org: &str, app: &str) -> Result<SecretOwner, ApiError> {
    caller.require_org(org)?;
    check_dns_label(org).map_err(|reason| invalid("org", reason))?;
    check_dns_label(app).map_err(|reason| invalid("app", reason))?;
    Ok(SecretOwner::app(org, app))
}

/// The secrets of org `org`, once the caller may manage them and the name is checked.
fn org_owner(caller: &Caller, org: &str) -> Result<SecretOwner, ApiError> {
    caller.require_org(org)?;
    check_dns_label(org).map_err(|reason| invalid("org", reason))?;
    Ok(SecretOwner::org(org))
}

/// Sets secret `name` of `owner` to `value`, sealed; nothing changes when it has that value.
async fn set(
    state: &ApiState,
    owner: &SecretOwner,
    name: &str,
    value: &str,
) -> Result<Json<SecretInfo>, ApiError> {
    check_secret_name(name).map_err(|reason| invalid("name", reason))?;
    if value.len() > SECRET_VALUE_MAX {
        return Err(invalid(
            "value",
            format!(
                "is {} bytes long; at most {SECRET_VALUE_MAX} are allowed",
                value.len()
            ),
        ));
    }
    if value.contains('\0') {
        return Err(invalid(
            "value",
            "contains a NUL character, which an environment variable cannot hold",
        ));
    }
    let Some(key) = &state.secrets else {
        return Err(ApiError::not_found(
            "secrets (this control plane runs without --secrets-key)",
        ));
    };
    let label = owner.seal_label(name);
    let store = &state.store;
    if let Some((info, sealed)) = store.get_secret(owner, name).await? {
        // A value that opens no more (another key) is simply replaced.
        if key
            .open(&label, &sealed)
            .is_ok_and(|v| v == value.as_bytes())
        {
            return Ok(Json(info));
        }
    }
    let sealed = key
        .seal(&label, value.as_bytes())
        .map_err(ApiError::internal)?;
    let info = store.put_secret(owner, name, &sealed).await?;
    tracing::info!(owner = %owner, secret = %name, version = info.version, "secret set");
    Ok(Json(info))
}

/// Deletes secret `name` of `owner`.
async fn remove(state: &ApiState, owner: &SecretOwner, name: &str) -> Result<StatusCode, ApiError> {
    check_secret_name(name).map_err(|reason| invalid("name", reason))?;
    state.store.delete_secret(owner, name).await?;
    tracing::info!(owner = %owner, secret = %name, "secret deleted");
    Ok(StatusCode::NO_CONTENT)
}
