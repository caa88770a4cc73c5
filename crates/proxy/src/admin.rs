//! The admin port: `/healthz`, `/config` (the live configuration as JSON), `/listeners` (bound
//! addresses) and `/metrics` (Prometheus).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::Proxy;

/// The admin router over `proxy`.
pub fn router(proxy: Arc<Proxy>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/config", get(config))
        .route("/listeners", get(listeners))
        .route("/metrics", get(metrics))
        .with_state(proxy)
}

async fn config(State(proxy): State<Arc<Proxy>>) -> impl IntoResponse {
    Json(proxy.config().await)
}

async fn listeners(State(proxy): State<Arc<Proxy>>) -> impl IntoResponse {
    let bound: serde_json::Map<String, serde_json::Value> = proxy
        .listeners()
        .await
        .into_iter()
        .map(|(name, addr)| (name, addr.to_string().into()))
        .collect();
    Json(bound)
}

async fn metrics(State(proxy): State<Arc<Proxy>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        proxy.metrics_text(),
    )
}
