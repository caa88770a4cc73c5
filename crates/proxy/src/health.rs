//! Active health checking. Health belongs to the endpoint ([`Endpoint`]: its state and its run
//! of results): configuration applies do not reset it. Each endpoint of a checked cluster has a
//! probe task of its own, which runs for as long as the endpoint stays in the cluster and the
//! cluster's check is unchanged, whatever else an apply changes; an endpoint that leaves has its
//! task stopped, one that arrives gets one.
//!
//! An endpoint's first probe comes at a random point of its first interval (a new cluster's
//! endpoints are not all probed at once), then one every interval. At most
//! [`MAX_PROBES_IN_FLIGHT`] probes are in flight per proxy; the others wait for a slot (their
//! timeout counts from when they start).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::cluster::Endpoint;
use crate::config::HealthCheckConfig;
use crate::metrics::ProxyMetrics;

/// Most health-check probes in flight at once, per proxy.
pub const MAX_PROBES_IN_FLIGHT: usize = 64;

/// The client health checks send their requests with (no pooling: each probe is a fresh
/// connection, as a new client would make).
type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

/// What the probe tasks of one proxy share: the HTTP client, the bound on probes in flight, and
/// the metrics.
#[derive(Clone)]
pub struct Prober {
    client: ProbeClient,
    slots: Arc<Semaphore>,
    metrics: Arc<ProxyMetrics>,
}

impl Prober {
    /// A prober that counts health transitions in `metrics`.
    pub fn new(metrics: Arc<ProxyMetrics>) -> Prober {
        Prober {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(HttpConnector::new()),
            slots: Arc::new(Semaphore::new(MAX_PROBES_IN_FLIGHT)),
            metrics,
        }
    }
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

/// A running probe task; stopped when dropped.
struct Task {
    endpoint: Arc<Endpoint>,
    handle: JoinHandle<()>,
}

impl Drop for Task {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// The probe tasks of one checked cluster, one per endpoint. Dropping it stops them all.
pub struct ClusterChecks {
    cluster: Arc<str>,
    check: Arc<HealthCheckConfig>,
    tasks: HashMap<SocketAddr, Task>,
}

impl ClusterChecks {
    /// Checks for `cluster` with `check`, probing no endpoint yet (see [`ClusterChecks::follow`]).
    pub fn new(cluster: &str, check: HealthCheckConfig) -> ClusterChecks {
        ClusterChecks {
            cluster: cluster.into(),
            check: Arc::new(check),
            tasks: HashMap::new(),
        }
    }

    /// The check these tasks run.
    pub fn check(&self) -> &HealthCheckConfig {
        &self.check
    }

    /// Probes exactly `endpoints` from now on: endpoints already probed keep their task (and
    /// their place in the schedule), new ones get a task, and the tasks of endpoints no longer
    /// listed stop. O(endpoints).
    pub fn follow(&mut self, endpoints: &[Arc<Endpoint>], prober: &Prober) {
        let mut tasks = HashMap::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let task = match self.tasks.remove(&endpoint.addr) {
                Some(task) if Arc::ptr_eq(&task.endpoint, endpoint) => task,
                _ => Task {
                    endpoint: endpoint.clone(),
                    handle: tokio::spawn(run(
                        endpoint.clone(),
                        self.check.clone(),
                        self.cluster.clone(),
                        prober.clone(),
                    )),
                },
            };
            tasks.insert(endpoint.addr, task);
        }
        // What is left in `self.tasks` belongs to endpoints that left: dropping stops them.
        self.tasks = tasks;
    }
}

/// Probes `endpoint` every interval (the first time at a random point of the first one) and
/// records each result on it.
async fn run(
    endpoint: Arc<Endpoint>,
    check: Arc<HealthCheckConfig>,
    cluster: Arc<str>,
    prober: Prober,
) {
    let interval = check.interval.0;
    let first = tokio::time::Instant::now() + interval.mul_f64(fastrand::f64());
    let mut tick = tokio::time::interval_at(first, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ok = {
            let Ok(_slot) = prober.slots.acquire().await else {
                return;
            };
            probe(&prober.client, &check, &endpoint).await
        };
        let changed = endpoint.record_check(ok, check.healthy_threshold, check.unhealthy_threshold);
        if let Some(healthy) = changed {
            prober.metrics.health_transition(&cluster, healthy);
            tracing::info!(%cluster, endpoint = %endpoint.addr, healthy,
                "endpoint health changed");
        }
    }
}
