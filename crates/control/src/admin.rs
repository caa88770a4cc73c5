//! The regional control plane's admin port: `/healthz`, `/readyz` and `/metrics`, and
//! `POST /v1/join-tokens` for administrators.

use std::sync::Arc;

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::global_api::{GlobalApi, GlobalApiError};
use crate::issuer::{Issuer, IssuerError};
use crate::known_admins::KnownAdmins;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// Who may make join tokens, and with what.
#[derive(Clone)]
pub struct JoinTokenAdmin {
    /// The issuer that will redeem them.
    pub issuer: Arc<Issuer>,
    /// The global control plane's API, which says whether the caller's bearer token is the
    /// installation's admin token (the region keeps no admin token of its own).
    pub global_api: String,
    /// The tokens it confirmed, for while it is away.
    pub known_admins: Arc<KnownAdmins>,
}

/// The body of `POST /v1/join-tokens`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinTokenRequest {
    /// `gateway`, `agent/<node>`, `edge/<location>` or `org/<org>/app/<app>/service/<service>`.
    identity: String,
    /// How long the token may be redeemed; default one hour.
    #[serde(default = "default_ttl")]
    ttl_seconds: u64,
}

fn default_ttl() -> u64 {
    3600
}

/// The longest a join token lives: a week.
const MAX_TTL_SECONDS: u64 = 7 * 86_400;

async fn create_join_token(
    State(admin): State<JoinTokenAdmin>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, IssuerError> {
    let refused = "join tokens are for administrators: send the installation's admin token as \
                   `Authorization: Bearer …` (MERIDIAN_TOKEN)";
    require_admin(&admin, &headers, refused).await?;
    let request: JoinTokenRequest = serde_json::from_slice(&body)
        .map_err(|e| IssuerError::BadRequest(format!("the body: {e}")))?;
    if request.ttl_seconds == 0 || request.ttl_seconds > MAX_TTL_SECONDS {
        return Err(IssuerError::BadRequest(format!(
            "ttl_seconds: must be between 1 and {MAX_TTL_SECONDS}"
        )));
    }
    let (token, id) = admin
        .issuer
        .join_token(&request.identity, Duration::from_secs(request.ttl_seconds))?;
    Ok(Json(serde_json::json!({
        "token": token.as_str(),
        "spiffe_id": id.to_string(),
        "expires_in_seconds": request.ttl_seconds,
    })))
}

/// Checks that `headers` carry the installation's admin token (the global control plane says
/// so, or said so while it is away); `refused` says why not.
pub(crate) async fn require_admin(
    admin: &JoinTokenAdmin,
    headers: &HeaderMap,
    refused: &str,
) -> Result<(), IssuerError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    if presented.is_empty() {
        return Err(IssuerError::Unauthenticated(refused.to_owned()));
    }
    match GlobalApi::new(&admin.global_api, presented)
        .is_admin()
        .await
    {
        Ok(true) => admin.known_admins.set(presented, true),
        Ok(false) => {
            admin.known_admins.set(presented, false);
            return Err(IssuerError::Forbidden(refused.to_owned()));
        }
        Err(GlobalApiError::Status { status, .. }) if status.is_client_error() => {
            admin.known_admins.set(presented, false);
            return Err(IssuerError::Unauthenticated(refused.to_owned()));
        }
        Err(e) if admin.known_admins.contains(presented) => {
            tracing::info!(error = %e, "the global control plane is away; the token is one it confirmed as the admin token");
        }
        Err(e) => {
            return Err(IssuerError::Unavailable(format!(
                "cannot check the token with the global control plane, which says whether it is \
                 the admin token: {e}; try again when it is back"
            )))
        }
    }
    Ok(())
}

/// The admin routes: `/readyz` answers 200 once `synced` is true (the first full sync with the
/// global control plane is done), 503 before; `/metrics` renders `registry`; with `join`,
/// `POST /v1/join-tokens` makes join tokens for administrators.
pub fn admin_router(
    registry: Arc<Registry>,
    synced: watch::Receiver<bool>,
    join: Option<JoinTokenAdmin>,
) -> Router {
    let join_tokens = match join {
        Some(admin) => Router::new()
            .route("/v1/join-tokens", post(create_join_token))
            .layer(DefaultBodyLimit::max(16 * 1024))
            .with_state(admin),
        None => Router::new(),
    };
    Router::new()
        .merge(join_tokens)
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = *synced.borrow();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not synced with the global control plane yet\n",
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut text = String::new();
                    match prometheus_client::encoding::text::encode(&mut text, &registry) {
                        Ok(()) => (
                            StatusCode::OK,
                            [(
                                header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            text,
                        )
                            .into_response(),
                        Err(e) => {
                            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
                        }
                    }
                }
            }),
        )
}
