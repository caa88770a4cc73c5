//! The edge's loop: every second it reads the regions, their reports and their deployments
//! from the global control plane's API, and applies the configuration they give when it
//! changed. While the API cannot be read, the last configuration goes on serving.

use std::sync::Arc;
use std::time::Duration;

use meridian_model::{Region, RegionalDeployment};
use meridian_proxy::Proxy;
use serde::Deserialize;

use crate::selection::{edge_config, Location, RegionView};

/// How often the edge reads the API.
const POLL: Duration = Duration::from_secs(1);
/// A region whose last report is older than this is not routed to.
const REPORT_STALE_SECONDS: u64 = 10;

/// Where the edge is, where it listens, and the API it follows.
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    /// Its location.
    pub location: Location,
    /// Its public listener's address.
    pub listen: String,
    /// The global control plane's API.
    pub api: String,
    /// A token that may read regions and their reports (an admin token today).
    pub token: String,
}

/// Why reading the API failed.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("{path} answered {status}")]
    Status {
        path: String,
        status: reqwest::StatusCode,
    },
}

#[derive(Deserialize)]
struct ReportAge {
    report: meridian_model::RegionReport,
    age_seconds: u64,
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    /// GETs `path`; `None` on 404.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, ReadError> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        match response.status() {
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => Ok(Some(response.json().await?)),
            status => Err(ReadError::Status {
                path: path.to_owned(),
                status,
            }),
        }
    }

    async fn regions(&self) -> Result<Vec<RegionView>, ReadError> {
        let regions: Vec<Region> = self.get("/v1/regions").await?.unwrap_or_default();
        let mut views = Vec::new();
        for region in regions {
            let report: Option<ReportAge> = self
                .get(&format!("/v1/regions/{}/report", region.name))
                .await?;
            let deployments: Vec<RegionalDeployment> = self
                .get(&format!("/v1/regions/{}/deployments", region.name))
                .await?
                .unwrap_or_default();
            views.push(RegionView {
                name: region.name,
                lat: region.lat,
                lon: region.lon,
                report: report
                    .filter(|r| r.age_seconds <= REPORT_STALE_SECONDS)
                    .map(|r| r.report),
                deployments,
            });
        }
        Ok(views)
    }
}

/// Follows the API and keeps `proxy` configured, for as long as the task runs. Returns after
/// the first configuration is applied through `ready` (once).
pub async fn run_edge(
    options: EdgeOptions,
    proxy: Arc<Proxy>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let api = Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default(),
        base: options.api.trim_end_matches('/').to_owned(),
        token: options.token.clone(),
    };
    let mut ready = Some(ready);
    let mut applied = String::new();
    let mut failing = false;
    loop {
        match api.regions().await {
            Ok(regions) => {
                if failing {
                    tracing::info!("reading the global control plane again");
                    failing = false;
                }
                let config = edge_config(&options.location, &options.listen, &regions).to_string();
                if config != applied {
                    match proxy.apply_text(&config).await {
                        Ok(()) => {
                            tracing::info!(location = %options.location.name, "edge configuration applied");
                            applied = config;
                            if let Some(ready) = ready.take() {
                                let _ = ready.send(());
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "the edge configuration was refused"),
                    }
                }
            }
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot read the global control plane; serving the last configuration");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(POLL).await;
    }
}
