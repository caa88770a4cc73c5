//! The regional control plane's node admin routes, for administrators (the installation's
//! admin token): `GET /v1/nodes` lists the region's nodes; `POST /v1/nodes/{node}/drain`
//! drains one — it takes no new placements, and each of its instances is replaced on another
//! node (when one has room) and then drained, as in a rollout —; `POST
//! /v1/nodes/{node}/undrain` ends that. A drain is kept in the region's disk copy.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::Notify;

use crate::admin::{require_admin, JoinTokenAdmin};
use crate::{NodeStatus, Region};

/// What the node routes need.
#[derive(Clone)]
pub struct NodeAdmin {
    /// Who may call them.
    pub admin: JoinTokenAdmin,
    /// The region.
    pub region: Arc<Region>,
    /// Told when the disk copy should be written again.
    pub copy_due: Arc<Notify>,
}

const REFUSED: &str = "nodes are for administrators: send the installation's admin token as \
                       `Authorization: Bearer …` (MERIDIAN_TOKEN)";

/// The node routes.
pub fn node_router(nodes: NodeAdmin) -> Router {
    Router::new()
        .route("/v1/nodes", get(list))
        .route("/v1/nodes/{node}/drain", post(drain))
        .route("/v1/nodes/{node}/undrain", post(undrain))
        .with_state(nodes)
}

async fn list(State(nodes): State<NodeAdmin>, headers: HeaderMap) -> Response {
    if let Err(e) = require_admin(&nodes.admin, &headers, REFUSED).await {
        return e.into_response();
    }
    Json(nodes.region.nodes()).into_response()
}

async fn drain(
    State(nodes): State<NodeAdmin>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_drained(nodes, node, headers, true).await
}

async fn undrain(
    State(nodes): State<NodeAdmin>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_drained(nodes, node, headers, false).await
}

/// Drains node `node` or ends that; answers with the node as the region now sees it.
async fn set_drained(
    nodes: NodeAdmin,
    node: String,
    headers: HeaderMap,
    drained: bool,
) -> Response {
    if let Err(e) = require_admin(&nodes.admin, &headers, REFUSED).await {
        return e.into_response();
    }
    match nodes.region.drain_node(&node, drained) {
        Ok(changed) => {
            if changed {
                tracing::info!(%node, drained, "node drain changed");
                nodes.copy_due.notify_one();
            }
            let status: Option<NodeStatus> =
                nodes.region.nodes().into_iter().find(|n| n.name == node);
            Json(status.unwrap_or_else(|| NodeStatus::gone(node, drained))).into_response()
        }
        Err(e) => {
            let body =
                serde_json::json!({"error": {"code": "not_found", "message": e.to_string()}});
            (StatusCode::NOT_FOUND, Json(body)).into_response()
        }
    }
}
