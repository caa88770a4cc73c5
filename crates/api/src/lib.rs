//! Meridian's public HTTP API: JSON over HTTP/1.1 with bearer-token auth, described by an
//! OpenAPI 3.1 document at `/openapi.json`.
//!
//! It also serves the web dashboard at `/ui` (its assets built into the binary), which reads
//! everything through this API with the user's token.
//!
//! It validates input (every problem named by field), authorizes by token scope (an org token
//! sees only its org; other orgs' resources answer 404) and then calls the [`Store`]; it keeps no
//! state of its own beyond metrics. It must not reach into a storage backend directly, so that any
//! [`Store`] works behind it.

mod auth;
mod error;
mod extract;
mod images;
mod log_stream;
mod metrics;
mod openapi;
mod purge_acks;
mod readiness;
mod routes;
mod traffic_history;
mod ui;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use meridian_identity::{Authority, JoinTokens, SealingKey};
use meridian_store::Store;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use auth::{bootstrap_admin_token, hash_secret, Caller};
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use extract::MAX_BODY_BYTES;
pub use metrics::Metrics;
pub use purge_acks::{PurgeAcks, PURGE_ACK_WAIT};
pub use readiness::Readiness;
pub use routes::domains::DomainStatus;
pub use routes::feed::{ChangesPage, RevisionInfo};
pub use routes::reports::Reports;
pub use routes::services::{RegionStatus, ServiceStatus, APPLY_HEADER};
pub use routes::tenancy::CreatedToken;
pub use routes::traffic::TargetGroup;
pub use traffic_history::TrafficHistory;

pub use routes::logs::MAX_LOG_STREAMS;

/// Where the API gets instances' output from: the regions, through the global control plane.
pub trait LogSource: Send + Sync + 'static {
    /// Starts `request` of service `(org, app, name)` in `regions`: its events come on the
    /// receiver, which ends when the answer is complete (when following, not before it is
    /// dropped, which cancels the query everywhere).
    fn open(
        &self,
        service: (&str, &str, &str),
        request: &meridian_model::LogRequest,
        regions: Vec<String>,
    ) -> tokio::sync::mpsc::Receiver<meridian_model::LogEvent>;
}

/// Most requests the API serves at once; more wait for a slot.
pub const MAX_CONCURRENT_REQUESTS: usize = 512;

/// Shared state of the API's handlers.
#[derive(Clone)]
pub struct ApiState {
    /// The store behind the API.
    pub store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// The installation's root of trust, when it has one.
    trust: Option<RootTrust>,
    /// The regions' last reports.
    pub(crate) reports: Reports,
    /// The key that seals uploaded private keys and secrets; `None` when the plane runs
    /// without one (then neither is accepted).
    pub(crate) secrets: Option<Arc<SealingKey>>,
    /// What the plane waits for before `/readyz` says it is ready (beyond its store).
    readiness: Readiness,
    /// The registries image tags are resolved at.
    pub(crate) registries: Arc<images::Registries>,
    /// Where instances' output comes from, if anywhere.
    pub(crate) logs: Option<Arc<dyn LogSource>>,
    /// The log streams that may still open ([`MAX_LOG_STREAMS`] in all).
    pub(crate) log_streams: Arc<tokio::sync::Semaphore>,
}

/// Who the caller's token belongs to.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// Whether the token is an installation admin token.
    pub admin: bool,
    /// The org an org token is scoped to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
}

/// Builds the API's router over `store`, for an installation without a CA.
pub fn router(store: Arc<dyn Store>) -> Router {
    router_with(
        store,
        None,
        prometheus_client::registry::Registry::default(),
        Reports::default(),
        None,
        Readiness::default(),
        meridian_model::RegistryOptions::default(),
        None,
    )
}

/// The installation's root of trust, as the API uses it.
#[derive(Clone)]
pub struct RootTrust {
    /// The root CA: its certificate is served at `GET /v1/trust-bundle`, and it issues regions'
    /// intermediates.
    pub ca: Arc<Authority>,
    /// The one-time tokens with which regional control planes get their intermediate
    /// (`POST /v1/regions/{region}/join-tokens` makes them).
    pub region_tokens: Arc<JoinTokens>,
}

/// Builds the API's router over `store`, with the installation's root of trust and the
/// process's other metrics in `registry` (rendered with the API's on `/metrics`). Region reports
/// are recorded in `reports`, which the caller may share (e.g. to publish them to the regions).
/// Uploaded certificates' keys and apps' secrets are sealed with `secrets`; without it both
/// are refused. `/readyz` answers 503, naming what is waited for, until `readiness` is ready.
/// Image tags in applied definitions are resolved at the registries as `registries` says.
/// Instances' output is asked of `logs_source`; without it, `…/logs` answers 503.
#[allow(clippy::too_many_arguments)]
pub fn router_with(
    store: Arc<dyn Store>,
    trust: Option<RootTrust>,
    registry: prometheus_client::registry::Registry,
    reports: Reports,
    secrets: Option<Arc<SealingKey>>,
    readiness: Readiness,
    registries: meridian_model::RegistryOptions,
    logs_source: Option<Arc<dyn LogSource>>,
) -> Router {
    use routes::{
        domains, endpoints, feed, logs, purges, regions, reports, rollouts, secrets, services,
        tenancy, traffic,
    };
    let state = ApiState {
        store,
        metrics: Arc::new(Metrics::new(registry)),
        trust,
        reports,
        secrets,
        readiness,
        registries: Arc::new(images::Registries::new(registries)),
        logs: logs_source,
        log_streams: Arc::new(tokio::sync::Semaphore::new(MAX_LOG_STREAMS)),
    };
    let openapi = openapi::document();
    let service_path = "/v1/orgs/{org}/apps/{app}/services/{service}";
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::render))
        .route(
            "/openapi.json",
            get(move || {
                let doc = openapi.clone();
                async move { ([("content-type", "application/json")], doc) }
            }),
        )
        .route("/ui", get(ui::index))
        .route("/ui/", get(ui::index))
        .route("/ui/{digest}/{file}", get(ui::asset))
        .route("/v1/whoami", get(whoami))
        .route("/v1/trust-bundle", get(get_trust_bundle))
        .route(
            "/v1/orgs",
            post(tenancy::create_org).get(tenancy::list_orgs),
        )
        .route(
            "/v1/orgs/{org}",
            get(tenancy::get_org).delete(tenancy::delete_org),
        )
        .route(
            "/v1/orgs/{org}/tokens",
            post(tenancy::create_token).get(tenancy::list_tokens),
        )
        .route(
            "/v1/orgs/{org}/tokens/{id}",
            axum::routing::delete(tenancy::delete_token),
        )
        .route("/v1/orgs/{org}/apps", get(tenancy::list_apps))
        .route(
            "/v1/orgs/{org}/apps/{app}",
            put(tenancy::create_app)
                .get(tenancy::get_app)
                .delete(tenancy::delete_app),
        )
        .route("/v1/orgs/{org}/secrets", get(secrets::list_org))
        .route(
            "/v1/orgs/{org}/secrets/{name}",
            put(secrets::put_org).delete(secrets::delete_org),
        )
        .route("/v1/orgs/{org}/apps/{app}/secrets", get(secrets::list))
        .route(
            "/v1/orgs/{org}/apps/{app}/secrets/{name}",
            put(secrets::put).delete(secrets::delete),
        )
        .route("/v1/orgs/{org}/apps/{app}/purges", post(purges::create))
        .route("/v1/regions", get(regions::list))
        .route(
            "/v1/regions/{region}",
            put(regions::put).delete(regions::delete),
        )
        .route(
            "/v1/regions/{region}/intermediate",
            post(regions::intermediate),
        )
        .route(
            "/v1/regions/{region}/join-tokens",
            post(regions::create_join_token),
        )
        .route(
            "/v1/regions/{region}/deployments",
            get(regions::deployments),
        )
        .route("/v1/regions/{region}/endpoints", get(regions::endpoints))
        .route(
            "/v1/regions/{region}/report",
            get(reports::get).put(reports::put),
        )
        .route("/v1/services", post(services::apply).get(services::list))
        .route(service_path, get(services::get).delete(services::delete))
        .route(
            &format!("{service_path}/deployments"),
            get(services::deployments),
        )
        .route(
            &format!("{service_path}/deployments/{{version}}"),
            get(services::deployment),
        )
        .route(
            &format!("{service_path}/rollback"),
            post(services::rollback),
        )
        .route(&format!("{service_path}/status"), get(services::status))
        .route(
            &format!("{service_path}/metrics"),
            get(traffic::service_metrics),
        )
        .route(&format!("{service_path}/logs"), get(logs::service_logs))
        .route("/v1/prometheus/targets", get(traffic::prometheus_targets))
        .route("/v1/edges", get(reports::edges))
        .route(&format!("{service_path}/rollouts"), get(rollouts::history))
        .route(
            &format!("{service_path}/rollout/abort"),
            post(rollouts::abort),
        )
        .route(
            &format!("{service_path}/rollout/pause"),
            post(rollouts::pause),
        )
        .route(
            &format!("{service_path}/rollout/resume"),
            post(rollouts::resume),
        )
        .route(
            &format!("{service_path}/rollout/promote"),
            post(rollouts::promote),
        )
        .route(&format!("{service_path}/endpoints"), get(endpoints::list))
        .route(
            &format!("{service_path}/endpoints/{{endpoint}}"),
            put(endpoints::put).delete(endpoints::delete),
        )
        .route("/v1/domains", get(domains::list))
        .route("/v1/domains/{domain}/certificate", put(domains::upload))
        .route("/v1/revision", get(feed::revision))
        .route("/v1/changes", get(feed::changes))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            MAX_CONCURRENT_REQUESTS,
        ))
        .with_state(state)
}

/// The OpenAPI document, as served at `/openapi.json`.
pub fn openapi_json() -> String {
    openapi::document()
}

async fn readyz(State(state): State<ApiState>) -> Result<(StatusCode, String), ApiError> {
    // Ready when the database answers a real read and the plane waits for nothing else.
    state.store.check_reachable().await?;
    let waiting = state.readiness.waiting();
    let description = state.readiness.description();
    if waiting.is_empty() {
        return Ok((StatusCode::OK, format!("ready\n{description}")));
    }
    Ok((
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "not ready: waiting for {}\n{description}",
            waiting.join(", ")
        ),
    ))
}

/// Who the token belongs to.
#[utoipa::path(get, path = "/v1/whoami", tag = "auth",
    responses((status = 200, description = "The token's scope", body = WhoAmI), error::ErrorResponses))]
async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        admin: caller.is_admin(),
        org: caller.org,
    })
}

/// The installation's trust bundle: the root CA certificate (PEM) that every mesh certificate
/// chains to.
#[utoipa::path(get, path = "/v1/trust-bundle", tag = "auth",
    responses((status = 200, description = "The root certificate, PEM", body = String,
               content_type = "application/x-pem-file"), error::ErrorResponses))]
async fn get_trust_bundle(
    State(state): State<ApiState>,
    _caller: Caller,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    let trust = state.trust()?;
    Ok((
        [("content-type", "application/x-pem-file")],
        trust.ca.certificate_pem().to_owned(),
    ))
}

impl ApiState {
    /// The installation's root of trust, or 404 if it has no CA.
    pub(crate) fn trust(&self) -> Result<&RootTrust, ApiError> {
        self.trust
            .as_ref()
            .ok_or_else(|| ApiError::not_found("a CA (this installation has none)"))
    }
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("route `{}`", uri.path()))
}

async fn method_not_allowed() -> (StatusCode, Json<ErrorBody>) {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(ErrorBody {
            error: ErrorDetail {
                code: "method_not_allowed",
                message: "this route does not support that method".to_owned(),
                field: None,
                details: Vec::new(),
            },
        }),
    )
}
