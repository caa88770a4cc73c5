//! Following the global control plane: a full sync of the region, then the change feed (long
//! poll), re-reading only the services a change touches. Any failure keeps the last state and
//! retries with backoff, then syncs in full again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use meridian_model::{derive_regional, ChangeKind, Deployment, Endpoint, RegionalDeployment};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::watch;

use crate::region::{RegionState, ServiceId};

/// Longest wait of one change-feed request, in milliseconds.
const FEED_WAIT_MS: u64 = 25_000;
/// Most changes read per request.
const FEED_PAGE: u32 = 1000;
/// Services re-read at once after a page of changes.
const REFRESH_CONCURRENCY: usize = 8;
/// Backoff after a failure: doubles from the first value up to the second.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(10));

/// Why a request to the global API failed.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The request did not complete.
    #[error("cannot reach the global API: {0}")]
    Unreachable(#[from] reqwest::Error),
    /// The API answered with an error status.
    #[error("the global API answered {status} to {path}: {body}")]
    Status {
        /// The status.
        status: reqwest::StatusCode,
        /// The request path.
        path: String,
        /// The answer's body.
        body: String,
    },
}

/// A client of the global control plane's API, with an admin token.
#[derive(Clone)]
pub struct GlobalApi {
    http: reqwest::Client,
    base: String,
    token: String,
}

#[derive(Deserialize)]
struct ChangesPage {
    changes: Vec<meridian_model::Change>,
    next_after: u64,
}

#[derive(Deserialize)]
struct RevisionInfo {
    revision: u64,
}

impl GlobalApi {
    /// A client of the API at `base` (e.g. `http://127.0.0.1:7070`) using `token`.
    pub fn new(base: &str, token: &str) -> GlobalApi {
        GlobalApi {
            http: reqwest::Client::builder()
                .timeout(Duration::from_millis(FEED_WAIT_MS) + Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    /// GETs `path`; `Ok(None)` when the API answers 404.
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, FollowError> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        decode(response, path).await.map(Some)
    }

    /// POSTs `body` as JSON to `path` and decodes the JSON answer.
    pub(crate) async fn post<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, FollowError> {
        let response = self.send(reqwest::Method::POST, path, body).await?;
        Ok(response.json().await?)
    }

    /// PUTs `body` as JSON to `path` (the answer's body is not read).
    pub(crate) async fn put<B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<(), FollowError> {
        self.send(reqwest::Method::PUT, path, body).await.map(drop)
    }

    /// Sends `body` as JSON to `path`; the response if it succeeded, else the API's error.
    async fn send<B: serde::Serialize>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &B,
    ) -> Result<reqwest::Response, FollowError> {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        succeeded(response, path).await
    }

    async fn must_get<T: DeserializeOwned>(&self, path: &str) -> Result<T, FollowError> {
        self.get(path).await?.ok_or_else(|| FollowError::Status {
            status: reqwest::StatusCode::NOT_FOUND,
            path: path.to_owned(),
            body: "not found".to_owned(),
        })
    }
}

/// The JSON answer of a successful request to `path`, or the error the API gave.
async fn decode<T: DeserializeOwned>(
    response: reqwest::Response,
    path: &str,
) -> Result<T, FollowError> {
    Ok(succeeded(response, path).await?.json().await?)
}

/// `response` if it succeeded, or the error the API gave for `path`.
async fn succeeded(
    response: reqwest::Response,
    path: &str,
) -> Result<reqwest::Response, FollowError> {
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(FollowError::Status {
            status,
            path: path.to_owned(),
            body,
        });
    }
    Ok(response)
}

/// Keeps `state` in step with the global API until the process ends. `synced` becomes true
/// after the first full sync (the control plane is ready then).
pub async fn follow(
    api: GlobalApi,
    state: Arc<Mutex<RegionState>>,
    synced: watch::Sender<bool>,
    disk_copy: std::path::PathBuf,
) {
    let region = lock(&state).region().to_owned();
    let mut backoff = BACKOFF.0;
    loop {
        match sync_then_follow(&api, &state, &region, &synced, &disk_copy).await {
            Ok(()) => backoff = BACKOFF.0,
            Err(e) => {
                tracing::warn!(%region, error = %e, retry_in = ?backoff,
                    "lost the global control plane; serving the last known state");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        }
    }
}

fn lock(state: &Mutex<RegionState>) -> std::sync::MutexGuard<'_, RegionState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn sync_then_follow(
    api: &GlobalApi,
    state: &Mutex<RegionState>,
    region: &str,
    synced: &watch::Sender<bool>,
    disk_copy: &std::path::Path,
) -> Result<(), FollowError> {
    let RevisionInfo { mut revision } = api.must_get("/v1/revision").await?;
    let deployments: Vec<RegionalDeployment> = api
        .must_get(&format!("/v1/regions/{region}/deployments"))
        .await?;
    let endpoints: Vec<Endpoint> = api
        .must_get(&format!("/v1/regions/{region}/endpoints"))
        .await?;
    {
        let mut state = lock(state);
        state.replace_all(deployments, endpoints);
        tracing::info!(%region, revision, services = state.services(), "synced with the global control plane");
    }
    keep_copy(state, disk_copy).await;
    synced.send_replace(true);
    loop {
        let page: ChangesPage = api
            .must_get(&format!(
                "/v1/changes?after={revision}&limit={FEED_PAGE}&wait_ms={FEED_WAIT_MS}"
            ))
            .await?;
        let mut touched = std::collections::BTreeSet::new();
        for change in &page.changes {
            match change.kind {
                ChangeKind::Service | ChangeKind::Endpoint => {
                    let mut parts = change.key.splitn(4, '/');
                    if let (Some(org), Some(app), Some(service)) =
                        (parts.next(), parts.next(), parts.next())
                    {
                        touched.insert((org.to_owned(), app.to_owned(), service.to_owned()));
                    }
                }
                ChangeKind::Region if change.key == region => return Ok(()),
                _ => {}
            }
        }
        // Re-read the touched services a few at a time: a burst of changes is mostly waiting
        // on the API.
        futures_util::stream::iter(touched)
            .map(|id| refresh(api, state, region, id))
            .buffer_unordered(REFRESH_CONCURRENCY)
            .try_collect::<()>()
            .await?;
        if !page.changes.is_empty() {
            keep_copy(state, disk_copy).await;
        }
        revision = page.next_after;
    }
}

/// Writes the region's disk copy; a failure is logged (the region goes on from memory).
async fn keep_copy(state: &Mutex<RegionState>, path: &std::path::Path) {
    let copy = lock(state).disk_copy();
    if let Err(e) = crate::disk_copy::save(path, &copy).await {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the region's disk copy");
    }
}

/// Re-reads one service and its endpoints and re-renders it.
async fn refresh(
    api: &GlobalApi,
    state: &Mutex<RegionState>,
    region: &str,
    id: ServiceId,
) -> Result<(), FollowError> {
    let (org, app, service) = &id;
    let path = format!("/v1/orgs/{org}/apps/{app}/services/{service}");
    let current: Option<Deployment> = api.get(&path).await?;
    let regional = current.and_then(|d| {
        derive_regional(&d.definition, d.version)
            .into_iter()
            .find(|r| r.region == region)
    });
    let endpoints: Vec<Endpoint> = match regional {
        Some(_) => api
            .get(&format!("{path}/endpoints"))
            .await?
            .unwrap_or_default(),
        None => Vec::new(),
    };
    tracing::debug!(%region, service = %format!("{org}/{app}/{service}"),
        runs_here = regional.is_some(), endpoints = endpoints.len(), "service changed");
    lock(state).set_service(id, regional, endpoints);
    Ok(())
}
