//! Active health checking: one task per checked cluster probes every endpoint on an interval and
//! flips its health after the configured run of successes or failures.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;

use crate::cluster::{Cluster, Endpoint};
use crate::config::HealthCheckConfig;
use crate::metrics::ProxyMetrics;

/// The client health checks send their requests with (no pooling: each probe is a fresh
/// connection, as a new client would make).
pub type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

/// A client for HTTP probes.
pub fn probe_client() -> ProbeClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(HttpConnector::new())
}

async fn probe(client: &ProbeClient, check: &HealthCheckConfig, endpoint: &Endpoint) -> bool {
    let attempt = async {
        match &check.http {
            Some(http) => {
                let uri = format!("http://{}{}", endpoint.authority, http.path);
                let Ok(uri) = uri.parse::<http::Uri>() else {
                    return false;
                };
                match client.get(uri).await {
                    Ok(response) => response.status().is_success(),
                    Err(_) => false,
                }
            }
            None => tokio::net::TcpStream::connect(endpoint.addr).await.is_ok(),
        }
    };
    tokio::time::timeout(check.timeout.0, attempt)
        .await
        .unwrap_or(false)
}

/// Starts checking `cluster`'s endpoints; the task ends when the handle is aborted.
pub fn spawn(
    cluster: Arc<Cluster>,
    check: HealthCheckConfig,
    client: ProbeClient,
    metrics: Arc<ProxyMetrics>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let endpoints = cluster.endpoints().to_vec();
        // Consecutive results in the current direction, per endpoint.
        let mut streaks = vec![0u32; endpoints.len()];
        let mut tick = tokio::time::interval(check.interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let probes = endpoints.iter().map(|e| probe(&client, &check, e));
            let results = join_all(probes).await;
            for ((endpoint, streak), ok) in endpoints.iter().zip(&mut streaks).zip(results) {
                let healthy = endpoint.is_healthy();
                if ok == healthy {
                    *streak = 0;
                    continue;
                }
                *streak += 1;
                let needed = if healthy {
                    check.unhealthy_threshold
                } else {
                    check.healthy_threshold
                };
                if *streak >= needed {
                    *streak = 0;
                    endpoint.set_healthy(ok);
                    metrics.health_transition(&cluster.name, ok);
                    tracing::info!(cluster = %cluster.name, endpoint = %endpoint.addr,
                        healthy = ok, "endpoint health changed");
                }
            }
        }
    })
}
