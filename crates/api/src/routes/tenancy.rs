//! Orgs, their tokens and their apps.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use meridian_model::{check_dns_label, App, Org, TokenInfo, ValidationErrors};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::mint_token;
use crate::error::ErrorResponses;
use crate::extract::{ApiPath, JsonBody};
use crate::{ApiError, ApiState, Caller};

/// Body of an org creation.
#[derive(Deserialize, ToSchema)]
pub struct CreateOrg {
    /// The org's name; a DNS label.
    #[schema(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    name: String,
}

/// Body of a token creation.
#[derive(Deserialize, ToSchema)]
pub struct CreateToken {
    /// What the token is for (shown when listing tokens); 1–200 characters.
    label: String,
}

/// A newly created token: the secret is shown only here, once.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// The bearer secret. Store it now: it cannot be shown again.
    pub secret: String,
    /// The token's public record.
    pub token: TokenInfo,
}

/// Path of one org.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct OrgPath {
    /// The org.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    org: String,
}

/// Path of one token.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TokenPath {
    /// The org.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    org: String,
    /// The token's id.
    id: String,
}

/// Path of one app.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AppPath {
    /// The org.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    org: String,
    /// The app.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    app: String,
}

fn check_label(field: &str, value: &str) -> Result<(), ApiError> {
    check_dns_label(value).map_err(|reason| {
        let mut errors = ValidationErrors::default();
        errors.push(field, reason);
        ApiError::invalid(errors)
    })
}

/// Creates an org (admin only).
#[utoipa::path(post, path = "/v1/orgs", tag = "orgs", request_body = CreateOrg,
    responses((status = 201, description = "Created", body = Org), ErrorResponses))]
pub async fn create_org(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateOrg>,
) -> Result<(StatusCode, Json<Org>), ApiError> {
    caller.require_admin()?;
    check_label("name", &body.name)?;
    let org = state.store.create_org(&body.name).await?;
    Ok((StatusCode::CREATED, Json(org)))
}

/// Lists orgs: all of them for an admin, its own for an org token.
#[utoipa::path(get, path = "/v1/orgs", tag = "orgs",
    responses((status = 200, description = "Orgs by name", body = Vec<Org>), ErrorResponses))]
pub async fn list_orgs(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<Org>>, ApiError> {
    let mut orgs = state.store.list_orgs().await?;
    if let Some(own) = &caller.org {
        orgs.retain(|o| &o.name == own);
    }
    Ok(Json(orgs))
}

/// One org.
#[utoipa::path(get, path = "/v1/orgs/{org}", tag = "orgs", params(OrgPath),
    responses((status = 200, description = "The org", body = Org), ErrorResponses))]
pub async fn get_org(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<OrgPath>,
) -> Result<Json<Org>, ApiError> {
    caller.require_org(&path.org)?;
    match state.store.get_org(&path.org).await? {
        Some(org) => Ok(Json(org)),
        None => Err(ApiError::not_found(format!("org `{}`", path.org))),
    }
}

/// Deletes an org that has no apps, and its tokens (admin only).
#[utoipa::path(delete, path = "/v1/orgs/{org}", tag = "orgs", params(OrgPath),
    responses((status = 204, description = "Deleted"), ErrorResponses))]
pub async fn delete_org(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<OrgPath>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    state.store.delete_org(&path.org).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates a token scoped to the org. Its secret is in the answer and nowhere else.
#[utoipa::path(post, path = "/v1/orgs/{org}/tokens", tag = "orgs", params(OrgPath),
    request_body = CreateToken,
    responses((status = 201, description = "Created", body = CreatedToken), ErrorResponses))]
pub async fn create_token(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<OrgPath>,
    JsonBody(body): JsonBody<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    caller.require_org(&path.org)?;
    let label = body.label.trim();
    if label.is_empty() || label.chars().count() > 200 {
        let mut errors = ValidationErrors::default();
        errors.push("label", "must be 1 to 200 characters");
        return Err(ApiError::invalid(errors));
    }
    let minted = mint_token(Some(path.org), label.to_owned())?;
    let token = state.store.create_token(minted.record).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            secret: minted.secret,
            token,
        }),
    ))
}

/// Lists the org's tokens (never their secrets).
#[utoipa::path(get, path = "/v1/orgs/{org}/tokens", tag = "orgs", params(OrgPath),
    responses((status = 200, description = "Tokens", body = Vec<TokenInfo>), ErrorResponses))]
pub async fn list_tokens(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<OrgPath>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    caller.require_org(&path.org)?;
    Ok(Json(state.store.list_tokens(Some(&path.org)).await?))
}

/// Revokes one of the org's tokens.
#[utoipa::path(delete, path = "/v1/orgs/{org}/tokens/{id}", tag = "orgs", params(TokenPath),
    responses((status = 204, description = "Revoked"), ErrorResponses))]
pub async fn delete_token(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<TokenPath>,
) -> Result<StatusCode, ApiError> {
    caller.require_org(&path.org)?;
    let tokens = state.store.list_tokens(Some(&path.org)).await?;
    if !tokens.iter().any(|t| t.id == path.id) {
        return Err(ApiError::not_found(format!("token `{}`", path.id)));
    }
    state.store.delete_token(&path.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates an app in the org.
#[utoipa::path(put, path = "/v1/orgs/{org}/apps/{app}", tag = "apps", params(AppPath),
    responses((status = 201, description = "Created", body = App), ErrorResponses))]
pub async fn create_app(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<AppPath>,
) -> Result<(StatusCode, Json<App>), ApiError> {
    caller.require_org(&path.org)?;
    check_label("app", &path.app)?;
    let app = state.store.create_app(&path.org, &path.app).await?;
    Ok((StatusCode::CREATED, Json(app)))
}

/// Lists the org's apps.
#[utoipa::path(get, path = "/v1/orgs/{org}/apps", tag = "apps", params(OrgPath),
    responses((status = 200, description = "Apps by name", body = Vec<App>), ErrorResponses))]
pub async fn list_apps(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<OrgPath>,
) -> Result<Json<Vec<App>>, ApiError> {
    caller.require_org(&path.org)?;
    if state.store.get_org(&path.org).await?.is_none() {
        return Err(ApiError::not_found(format!("org `{}`", path.org)));
    }
    Ok(Json(state.store.list_apps(Some(&path.org)).await?))
}

/// One app.
#[utoipa::path(get, path = "/v1/orgs/{org}/apps/{app}", tag = "apps", params(AppPath),
    responses((status = 200, description = "The app", body = App), ErrorResponses))]
pub async fn get_app(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<AppPath>,
) -> Result<Json<App>, ApiError> {
    caller.require_org(&path.org)?;
    match state.store.get_app(&path.org, &path.app).await? {
        Some(app) => Ok(Json(app)),
        None => Err(ApiError::not_found(format!(
            "app `{}/{}`",
            path.org, path.app
        ))),
    }
}

/// Deletes an app that has no services.
#[utoipa::path(delete, path = "/v1/orgs/{org}/apps/{app}", tag = "apps", params(AppPath),
    responses((status = 204, description = "Deleted"), ErrorResponses))]
pub async fn delete_app(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<AppPath>,
) -> Result<StatusCode, ApiError> {
    caller.require_org(&path.org)?;
    state.store.delete_app(&path.org, &path.app).await?;
    Ok(StatusCode::NO_CONTENT)
}
