//! The store's revision and change feed (admin only): what control planes follow.

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use meridian_model::Change;
use meridian_store::trace;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ErrorResponses;
use crate::extract::ApiQuery;
use crate::{ApiError, ApiState, Caller};

/// Most changes one request returns.
const MAX_LIMIT: u32 = 1000;
/// Longest a request may wait for a change.
const MAX_WAIT_MS: u64 = 30_000;

/// The store's current revision.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RevisionInfo {
    /// The revision of the last write.
    pub revision: u64,
}

/// Parameters of a change-feed read.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChangesQuery {
    /// Return changes with a revision greater than this; defaults to 0.
    #[serde(default)]
    after: u64,
    /// Most changes to return, 1–1000; defaults to 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// If there is no change yet, wait up to this many milliseconds (0–30000) for one.
    #[param(minimum = 0, maximum = 30000)]
    #[serde(default)]
    wait_ms: u64,
}

/// A page of the change feed.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ChangesPage {
    /// Changes in revision order, without gaps.
    pub changes: Vec<Change>,
    /// Pass this as `after` to read on.
    pub next_after: u64,
}

/// The revision of the last write.
#[utoipa::path(get, path = "/v1/revision", tag = "feed",
    responses((status = 200, description = "The revision", body = RevisionInfo), ErrorResponses))]
pub async fn revision(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<RevisionInfo>, ApiError> {
    caller.require_admin()?;
    Ok(Json(RevisionInfo {
        revision: state.store.revision().await?,
    }))
}

/// Changes after a revision, in order; waits up to `wait_ms` for the next one if there is none.
#[utoipa::path(get, path = "/v1/changes", tag = "feed", params(ChangesQuery),
    responses((status = 200, description = "A page of changes", body = ChangesPage), ErrorResponses))]
pub async fn changes(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ChangesQuery>,
) -> Result<Json<ChangesPage>, ApiError> {
    caller.require_admin()?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(
            ApiError::bad_request(format!("limit must be between 1 and {MAX_LIMIT}"))
                .with_field("limit"),
        );
    }
    if query.wait_ms > MAX_WAIT_MS {
        return Err(
            ApiError::bad_request(format!("wait_ms must be at most {MAX_WAIT_MS}"))
                .with_field("wait_ms"),
        );
    }
    let wait = Duration::from_millis(query.wait_ms);
    trace::stage("asked", query.after, query.after);
    let changes = meridian_store::wait_for_changes(&*state.store, query.after, limit, wait).await?;
    if let (Some(first), Some(last)) = (changes.first(), changes.last()) {
        trace::stage("read", first.revision, last.revision);
    }
    let next_after = changes.last().map_or(query.after, |c| c.revision);
    Ok(Json(ChangesPage {
        changes,
        next_after,
    }))
}
