//! A service's instance output from its regions (`GET …/services/{service}/logs`): the last
//! lines of each instance, filtered, and with `follow=true` the lines written next, as JSON
//! lines (`application/x-ndjson`) streamed for as long as the client reads.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::response::{IntoResponse, Response};
use meridian_model::{LogParams, LogRequest};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::ErrorResponses;
use crate::extract::{ApiPath, ApiQuery};
use crate::routes::services::ServicePath;
use crate::{ApiError, ApiState, Caller, LogSource};

/// Most log streams the API serves at once (followers included); more are answered 503.
pub const MAX_LOG_STREAMS: usize = 64;

/// The parameters of a logs query.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Only this region (one the service runs in); default: every region of the service.
    region: Option<String>,
    /// Lines written before this are left out: a duration back from now (`10m`, `1h`) or an
    /// RFC 3339 time.
    since: Option<String>,
    /// The last lines of each instance (at most 10000; default 100, or every line since
    /// `since`, up to 10000).
    tail: Option<u32>,
    /// A regular expression (Rust syntax, at most 256 bytes) lines must match.
    grep: Option<String>,
    /// Keep the answer open and send the lines written next, until the client closes it.
    follow: Option<bool>,
}

/// A service's instance output, from every region it runs in (or one): one JSON object per
/// line, each a `line` (with its region, node, instance and stream), a `notice` (a region or
/// node that did not answer, lines dropped or left out), `caught_up` (the history is complete,
/// new lines follow: `follow` only) or `heartbeat` (sent after 15 s without anything else,
/// `follow` only). The history comes first, ordered by time; a region that does not answer is
/// a notice, not a failure.
#[utoipa::path(get, path = "/v1/orgs/{org}/apps/{app}/services/{service}/logs",
    tag = "services", params(ServicePath, LogsQuery),
    responses(
        (status = 200, description = "Events, one JSON object per line",
            body = meridian_model::LogEvent, content_type = "application/x-ndjson"),
        (status = 503, description = "As many log streams are open as the API serves",
            body = crate::ErrorBody),
        ErrorResponses))]
pub async fn service_logs(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<ServicePath>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    let key = path.authorize(&caller)?;
    let params = LogParams {
        since: query.since.as_deref(),
        tail: query.tail,
        grep: query.grep.as_deref(),
        follow: query.follow.unwrap_or(false),
        region: query.region.as_deref(),
    };
    let request =
        LogRequest::parse(&params, SystemTime::now()).map_err(ApiError::bad_parameters)?;
    let Some(current) = state.store.get_service(&key).await? else {
        return Err(ApiError::not_found(format!("service `{key}`")));
    };
    let runs_in: Vec<String> =
        meridian_model::derive_regional(&current.definition, current.version)
            .into_iter()
            .map(|rd| rd.region)
            .collect();
    let regions = match &request.region {
        Some(region) if runs_in.contains(region) => vec![region.clone()],
        Some(region) => {
            return Err(ApiError::bad_request(format!(
                "service `{key}` does not run in `{region}`; it runs in {}",
                runs_in.join(", ")
            ))
            .with_field("region"))
        }
        None => runs_in,
    };
    let source: &Arc<dyn LogSource> = state.logs.as_ref().ok_or_else(|| {
        ApiError::unavailable("this API reaches no regions: it has no log source")
    })?;
    let permit = state.log_streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable(format!(
            "{MAX_LOG_STREAMS} log streams are open, as many as this API serves; try again later"
        ))
    })?;
    let events = source.open((&key.org, &key.app, &key.name), &request, regions);
    let body = crate::log_stream::ndjson(events, request.follow, permit);
    Ok((
        [
            (CONTENT_TYPE, "application/x-ndjson"),
            (CACHE_CONTROL, "no-store"),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response())
}
