//! Meridian's data plane: a proxy for HTTP/1.1, HTTP/2 (h2c) and TCP, whose whole
//! configuration (listeners, routes, clusters) can be swapped at run time without dropping
//! requests or connections.
//!
//! It becomes the edge, the regional gateway and the node proxy. A config file
//! (`meridian proxy --config`) or an xDS control plane (`meridian proxy --xds`, [`run_xds`])
//! drives it; both produce the same [`ProxyConfig`], validated and applied the same way. The request
//! path must not allocate or lock what it need not: route tables are swapped with `arc-swap`, and
//! metric handles are made when a config is compiled. Nothing a client sends may panic it.

mod access_log;
mod acme;
mod admin;
mod answers;
mod body;
mod cache;
mod cluster;
mod cluster_stats;
mod coalesce;
mod config;
mod elsewhere;
mod encoder;
mod fields;
mod figures;
mod forward;
mod forwarding;
mod framing;
mod h1;
mod handshakes;
mod health;
mod hop_by_hop;
mod http3;
mod http_server;
mod idle;
mod informational;
mod instance_stats;
mod mesh;
mod metrics;
mod nudge;
mod peer;
mod pool;
mod prepared;
mod relay;
mod reload;
mod request_body;
mod retire;
mod retry;
mod routing;
mod server;
mod splice;
mod switch;
mod tls;
mod trace;
mod upstream;
mod wake;
mod xds;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use meridian_model::ValidationErrors;
use tokio_rustls::TlsAcceptor;

pub use access_log::{AccessLogSource, AccessLogTarget};
pub use acme::{Http01Answers, HTTP01_PATH};
pub use answers::ERROR_HEADER;
pub use cache::{CachePurge, PurgeError, PurgeScope, DEFAULT_LIMITS as DEFAULT_CACHE_LIMITS};
pub use config::{
    parse_config, validate, ClusterConfig, EndpointConfig, EndpointLimits, HashOn, HeaderMatch,
    Http2Limits, HttpsRedirect, InstanceConfig, LbPolicy, Limits, ListenerConfig, ListenerProtocol,
    MeshConfig, ProxyConfig, RouteConfig, RouteMatch, TlsConfig, TrustForwarded, UpstreamProtocol,
    VirtualHost, WeightedCluster,
};
pub use http3::HANDSHAKES_BEFORE_RETRY;
pub use meridian_cache::DiskTier as CacheDiskTier;
pub use meridian_cache::StoreLimits as CacheLimits;
pub use mesh::PEER_HEADER;
pub use nudge::WAKE_HEADER;
pub use reload::{run, serve_admin, serve_admin_with, serve_until, RunError, RunOptions};
pub use tls::{TlsSource, ACME_TLS_ALPN};
pub use trace::receiver as trace_fixture;
pub use trace::{TraceError, TraceOptions};
pub use wake::{Refusal, Use as WakeUse, WakeGate, WakeGates};
pub use xds::fixture as xds_fixture;
pub use xds::{reapply_on_renewal, run_xds, Identity, XdsHandler, XdsOptions, DISK_COPY_EVERY};

use crate::cluster::Cluster;
use crate::metrics::ProxyMetrics;
use crate::routing::RouteTable;
use crate::server::{Listener, Serving, Shared};
use crate::upstream::UpstreamClient;

/// Why a configuration was not applied. The previous one stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The configuration breaks a rule; every problem names its field.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] ValidationErrors),
    /// A new listener's address could not be bound.
    #[error("listeners[{index}].address: cannot bind {address}: {source}")]
    Bind {
        /// Index of the listener in the configuration.
        index: usize,
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What is in force: the config, its clusters and its bound listeners.
#[derive(Default)]
struct Active {
    config: Option<ProxyConfig>,
    clusters: HashMap<String, Arc<Cluster>>,
    /// By listener name, with the configured address and protocol it was bound for.
    listeners: HashMap<String, (String, ListenerProtocol, Listener)>,
    /// Upstream clients by cluster, protocol, connect timeout and mutual-TLS identity, kept
    /// across reloads so that pooled connections survive a config swap.
    clients: HashMap<ClientKey, UpstreamClient>,
    /// The listeners' TLS acceptors, kept across reloads while their files are unchanged.
    acceptors: tls::Acceptors,
    /// The health checks of each checked cluster; an apply keeps those whose check is
    /// unchanged (they follow the cluster's endpoints).
    checks: HashMap<String, health::ClusterChecks>,
    /// Where each cluster is in `config.clusters`.
    cluster_at: HashMap<String, usize>,
    /// Listeners removed by a reload whose drain nobody asked for yet, by name
    /// ([`Proxy::drain_listeners`]).
    retired: HashMap<String, Arc<retire::Retirement>>,
}

/// The TLS acceptor of each listener (in order), reusing those in `built` whose files are
/// unchanged, with what identifies each; or every problem with the files.
#[allow(clippy::type_complexity)]
fn tls_acceptors(
    config: &ProxyConfig,
    built: &tls::Acceptors,
    sources: &tls::Sources,
) -> Result<Vec<Option<(String, Arc<TlsAcceptor>)>>, ValidationErrors> {
    let mut acceptors = Vec::with_capacity(config.listeners.len());
    let mut errors = ValidationErrors::default();
    for (index, listener) in config.listeners.iter().enumerate() {
        let acceptor = match (&listener.tls, &listener.mesh) {
            (_, Some(mesh)) => tls::mesh_acceptor(mesh, built)
                .map(Some)
                .map_err(|e| ("mesh", e)),
            (Some(tls), None) => tls::acceptor(tls, built, sources)
                .map(Some)
                .map_err(|e| ("tls", e)),
            (None, None) => Ok(None),
        };
        match acceptor {
            Ok(acceptor) => acceptors.push(acceptor),
            Err((section, (field, reason))) => {
                errors.push(format!("listeners[{index}].{section}.{field}"), reason);
                acceptors.push(None);
            }
        }
    }
    errors.into_result().map(|()| acceptors)
}

/// Binds the UDP side (HTTP/3) of listener `index` at `address`, before anything changes.
fn bind_udp(index: usize, address: SocketAddr) -> Result<http3::QuicSocket, ApplyError> {
    http3::QuicSocket::bind(address).map_err(|source| ApplyError::Bind {
        index,
        address,
        source,
    })
}

/// What makes an upstream client reusable: cluster, protocol, connect timeout, and what
/// identifies its mutual-TLS config.
type ClientKey = (String, UpstreamProtocol, Duration, Option<String>);

/// The mutual-TLS client config of each cluster (in order), or every problem with the files.
fn mesh_connectors(
    config: &ProxyConfig,
) -> Result<Vec<Option<tls::MeshConnector>>, ValidationErrors> {
    let mut connectors = Vec::with_capacity(config.clusters.len());
    let mut errors = ValidationErrors::default();
    for (index, cluster) in config.clusters.iter().enumerate() {
        match cluster.mesh.as_ref().map(tls::mesh_connector).transpose() {
            Ok(connector) => connectors.push(connector),
            Err((field, reason)) => {
                errors.push(format!("clusters[{index}].mesh.{field}"), reason);
                connectors.push(None);
            }
        }
    }
    errors.into_result().map(|()| connectors)
}

/// A running proxy. [`Proxy::apply`] swaps its whole configuration atomically.
pub struct Proxy {
    shared: Arc<Shared>,
    active: tokio::sync::Mutex<Active>,
    prober: health::Prober,
    /// Metrics of the component that embeds the proxy, rendered with the proxy's own.
    extra_metrics: std::sync::Mutex<Option<MetricsSource>>,
    /// Certificate sources listeners may name, with their acceptors.
    tls_sources: std::sync::Mutex<tls::Sources>,
    /// The shared HTTP cache of the routes that cache, kept across configurations.
    cache: Arc<cache::HttpCache>,
}

/// How long a stopping proxy waits for its last spans to be exported.
pub const TRACE_FLUSH: Duration = Duration::from_secs(5);

/// Renders a component's metrics in the OpenMetrics text format (ending with `# EOF`).
pub type MetricsSource = Arc<dyn Fn() -> String + Send + Sync>;

impl Default for Proxy {
    fn default() -> Self {
        let metrics = Arc::new(ProxyMetrics::default());
        Proxy {
            shared: Arc::new(Shared {
                metrics: metrics.clone(),
                limits: ArcSwap::from_pointee(Limits::default()),
                access_log: Default::default(),
                open: Default::default(),
                http01: std::sync::OnceLock::new(),
                tracer: std::sync::OnceLock::new(),
                gates: WakeGates::default(),
            }),
            active: tokio::sync::Mutex::new(Active::default()),
            prober: health::Prober::new(metrics),
            extra_metrics: std::sync::Mutex::new(None),
            tls_sources: std::sync::Mutex::new(tls::Sources::new()),
            cache: Arc::default(),
        }
    }
}

impl Proxy {
    /// A proxy whose shared HTTP cache (for routes with `cache`) holds at most `limits`
    /// ([`Proxy::default`]: [`DEFAULT_CACHE_LIMITS`]).
    pub fn with_cache(limits: CacheLimits) -> Proxy {
        Proxy {
            cache: Arc::new(cache::HttpCache::new(limits)),
            ..Proxy::default()
        }
    }

    /// A proxy whose shared HTTP cache holds at most `limits` in memory over the disk tier
    /// `disk` (opened by the caller, off its async workers). The disk tier serves nothing
    /// until [`Proxy::cache_purges_caught_up`].
    pub fn with_cache_on_disk(limits: CacheLimits, disk: CacheDiskTier) -> std::io::Result<Proxy> {
        Ok(Proxy {
            cache: Arc::new(cache::HttpCache::with_disk(limits, disk)?),
            ..Proxy::default()
        })
    }

    /// Logs every request from now on (whatever configurations say) to `target`, each event
    /// naming `source`; a file is opened now. A proxy has one access log: a second call
    /// changes nothing.
    pub fn log_access(
        &self,
        target: &AccessLogTarget,
        source: AccessLogSource,
    ) -> std::io::Result<()> {
        let counters = self.shared.metrics.access_log_counters();
        let log = access_log::AccessLog::open(target, source, counters)?;
        self.shared.access_log.always(log);
        Ok(())
    }

    /// Traces every request from now on (docs/observability.md, "Traces"): W3C Trace Context
    /// at this hop, a server span for the requests sampled, exported over OTLP/gRPC to
    /// `options.endpoint` (`meridian_proxy_trace_spans_*` count them). Needs a Tokio runtime.
    /// A proxy has one tracer: a second call changes nothing and returns `Ok(false)`.
    pub fn trace_to(&self, options: &TraceOptions) -> Result<bool, TraceError> {
        if self.shared.tracer.get().is_some() {
            return Ok(false);
        }
        let counters = self.shared.metrics.trace_counters();
        let tracer = trace::Tracer::start(options, counters)?;
        Ok(self.shared.tracer.set(Arc::new(tracer)).is_ok())
    }

    /// Validates and applies `config`: binds new listeners first (if one fails, nothing changes),
    /// then swaps every route table; listeners no longer configured stop accepting, while their
    /// open connections finish on the config they started with.
    pub async fn apply(&self, config: ProxyConfig) -> Result<(), ApplyError> {
        let result = self.try_apply(config).await;
        self.shared.metrics.reload(result.is_ok());
        result
    }

    async fn try_apply(&self, config: ProxyConfig) -> Result<(), ApplyError> {
        config::validate(&config)?;
        let mut active = self.active.lock().await;
        let acceptors = {
            let sources = lock(&self.tls_sources);
            tls_acceptors(&config, &active.acceptors, &sources)?
        };
        let mut built_acceptors = tls::Acceptors::new();
        // Nothing shared with the running configuration (endpoints, pools) may change before the
        // last fallible step (binding): what to change is collected and done at the commit.
        let mut clusters = HashMap::new();
        let mut clients = HashMap::new();
        let mut unchecked = Vec::new();
        // Clusters kept as they are but for their endpoints, which change at the commit.
        let mut new_endpoints = Vec::new();
        let connectors = mesh_connectors(&config)?;
        for (cluster, connector) in config.clusters.iter().zip(connectors) {
            let (tls, fingerprint) = connector.unzip();
            let key = (
                cluster.name.clone(),
                cluster.protocol,
                cluster.connect_timeout.0,
                fingerprint,
            );
            let limit = cluster.circuit_breakers.max_connections;
            let upstream = active.clients.get(&key).cloned().unwrap_or_else(|| {
                let (open, connect_time) = self.shared.metrics.upstream(&cluster.name);
                upstream::client(key.1, key.2, tls.clone(), limit, open, connect_time)
            });
            let previous = active.clusters.get(&cluster.name);
            let in_force = active
                .cluster_at
                .get(&cluster.name)
                .zip(active.config.as_ref())
                .and_then(|(at, config)| config.clusters.get(*at));
            let kept = match (previous, in_force) {
                (Some(previous), Some(old))
                    if active.clients.contains_key(&key) && old.same_but_endpoints(cluster) =>
                {
                    if old.endpoints != cluster.endpoints {
                        new_endpoints.push((previous.clone(), cluster));
                    }
                    Some(previous.clone())
                }
                _ => None,
            };
            let built = kept.unwrap_or_else(|| {
                let previous = previous.map(Arc::as_ref);
                let built = Cluster::build(cluster, upstream.client.clone(), previous);
                Arc::new(built.with_tls(tls))
            });
            if cluster.health_check.is_none() {
                unchecked.push(built.clone());
            }
            clients.insert(key, (upstream, limit));
            clusters.insert(cluster.name.clone(), built);
        }
        let tables: Vec<RouteTable> = config
            .listeners
            .iter()
            .map(|l| {
                let instances = self.shared.metrics.instances();
                let instance = l.instance.as_ref().map(|i| instances.get(i));
                let gate = l
                    .instance
                    .as_ref()
                    .and_then(|i| self.shared.gates.get(&i.name));
                RouteTable::build(
                    &l.name,
                    &l.virtual_hosts,
                    &|name| clusters.get(name).cloned(),
                    &|listener, vhost, route, cluster| {
                        let metrics = self.shared.metrics.route(listener, vhost, route, cluster);
                        metrics
                            .with_instance(instance.clone())
                            .with_gate(gate.clone())
                    },
                    &self.cache,
                )
            })
            .collect();
        // Listeners whose name, address and protocol are unchanged keep their socket; a new one
        // at the address of an old listener that goes away takes that socket over (no gap, no
        // "address in use"); the rest are bound now, before anything changes, since binding is
        // the only step that can fail.
        let unchanged = |l: &ListenerConfig| {
            matches!(active.listeners.get(&l.name),
                Some((address, protocol, _)) if *address == l.address && *protocol == l.protocol)
        };
        let kept_names: HashSet<&str> = config
            .listeners
            .iter()
            .filter(|l| unchanged(l))
            .map(|l| l.name.as_str())
            .collect();
        let mut taken = HashSet::new();
        let mut fresh = HashMap::new();
        let mut reused = Vec::new();
        let mut handovers = Vec::new();
        let listeners = config.listeners.iter().zip(tables).zip(acceptors);
        for (index, ((listener, table), acceptor)) in listeners.enumerate() {
            let acceptor = acceptor.map(|(fingerprint, acceptor)| {
                built_acceptors.insert(fingerprint, acceptor.clone());
                acceptor
            });
            let quic = match (&listener.tls, &acceptor) {
                (Some(tls), Some(acceptor)) if tls.http3 => Some(
                    http3::server_config(acceptor.config(), &config.limits).map_err(|e| {
                        let mut errors = ValidationErrors::default();
                        errors.push(format!("listeners[{index}].tls.http3"), e.to_string());
                        ApplyError::Invalid(errors)
                    })?,
                ),
                _ => None,
            };
            let relay = listener
                .cluster
                .as_ref()
                .and_then(|name| clusters.get(name).cloned());
            let parts = Serving {
                table,
                relay,
                tls: acceptor,
                mesh: listener
                    .mesh
                    .as_ref()
                    .map(|m| Arc::new(mesh::MeshPolicy::new(m))),
                sources: listener
                    .sources
                    .iter()
                    .filter_map(|s| s.parse().ok())
                    .collect(),
                max_connections: listener.max_connections,
                trust: listener.trust_forwarded,
                quic,
                gate: listener
                    .instance
                    .as_ref()
                    .and_then(|i| self.shared.gates.get(&i.name)),
            };
            if unchanged(listener) {
                // A kept listener that starts serving HTTP/3 binds its UDP side now.
                let udp = match active.listeners.get(&listener.name) {
                    Some((_, _, kept)) if parts.quic.is_some() && !kept.serves_http3() => {
                        Some(bind_udp(index, kept.bound)?)
                    }
                    _ => None,
                };
                reused.push((listener.name.clone(), parts, udp));
                continue;
            }
            let address: SocketAddr = listener.address.parse().map_err(|_| {
                let mut errors = ValidationErrors::default();
                errors.push(
                    format!("listeners[{index}].address"),
                    "not an ip:port address",
                );
                ApplyError::Invalid(errors)
            })?;
            let owner = active
                .listeners
                .iter()
                .find(|(name, (old_address, _, _))| {
                    address.port() != 0
                        && *old_address == listener.address
                        && !kept_names.contains(name.as_str())
                        && !taken.contains(name.as_str())
                })
                .map(|(name, _)| name.clone());
            if let Some(owner) = owner {
                // The UDP side is taken over too; one the old listener lacks is bound now.
                let udp = match active.listeners.get(&owner) {
                    Some((_, _, old)) if parts.quic.is_some() && !old.serves_http3() => {
                        Some(bind_udp(index, address)?)
                    }
                    _ => None,
                };
                taken.insert(owner.clone());
                handovers.push((listener, parts, owner, udp));
                continue;
            }
            let shared = self.shared.clone();
            let bound = Listener::bind(&listener.name, address, parts, shared)
                .await
                .map_err(|source| ApplyError::Bind {
                    index,
                    address,
                    source,
                })?;
            let entry = (listener.address.clone(), listener.protocol, bound);
            fresh.insert(listener.name.clone(), entry);
        }
        // Commit: from here on nothing fails.
        active.acceptors = built_acceptors;
        active.clients = clients
            .into_iter()
            .map(|(key, (upstream, limit))| {
                upstream.set_max_connections(limit);
                (key, upstream)
            })
            .collect();
        for (cluster, config) in new_endpoints {
            cluster.set_endpoints(&config.endpoints);
        }
        for cluster in unchecked {
            // Unchecked endpoints are healthy, whatever an earlier check had said.
            cluster.endpoints().iter().for_each(|e| e.reset_health());
        }
        self.shared.limits.store(Arc::new(config.limits.clone()));
        self.shared.access_log.configure(config.access_log, || {
            let source = AccessLogSource {
                component: "proxy".to_owned(),
                node: String::new(),
                region: None,
            };
            let counters = self.shared.metrics.access_log_counters();
            access_log::AccessLog::open(&AccessLogTarget::Stdout, source, counters)
        });
        let mut kept = std::mem::take(&mut active.listeners);
        for (name, serving, udp) in reused {
            if let Some(mut entry) = kept.remove(&name) {
                entry.2.update(serving, udp);
                fresh.insert(name, entry);
            }
        }
        for (listener, serving, owner, udp) in handovers {
            let Some((_, _, old)) = kept.remove(&owner) else {
                continue;
            };
            let shared = self.shared.clone();
            let started = match old.into_socket().await {
                Some((tcp, old_udp)) => {
                    Listener::start(&listener.name, tcp, udp.or(old_udp), serving, shared)
                }
                None => Err(std::io::Error::other("the previous accept loop had ended")),
            };
            match started {
                Ok(bound) => {
                    let entry = (listener.address.clone(), listener.protocol, bound);
                    fresh.insert(listener.name.clone(), entry);
                }
                Err(e) => tracing::error!(listener = %listener.name, error = %e,
                    "could not take over the socket; the listener is not serving"),
            }
        }
        // Whatever is left in `kept` is no longer configured: dropping it stops its accept loop,
        // and its connections wind down. Those retired earlier whose connections all closed
        // need no drain any more.
        active.retired.retain(|_, retirement| retirement.open() > 0);
        for (name, (_, _, listener)) in kept {
            let retirement = listener.context.retirement.clone();
            retirement.retire();
            active.retired.insert(name, retirement);
        }
        active.listeners = fresh;
        let mut checks = std::mem::take(&mut active.checks);
        for cluster in &config.clusters {
            let (Some(check), Some(built)) = (&cluster.health_check, clusters.get(&cluster.name))
            else {
                continue;
            };
            let mut entry = match checks.remove(&cluster.name) {
                Some(entry) if entry.check() == check => entry,
                _ => health::ClusterChecks::new(&cluster.name, check.clone()),
            };
            entry.follow(&built.endpoints(), &self.prober);
            active.checks.insert(cluster.name.clone(), entry);
        }
        // The checks of clusters that are gone or no longer checked stop here.
        drop(checks);
        active.clusters = clusters;
        active.cluster_at = config
            .clusters
            .iter()
            .enumerate()
            .map(|(at, c)| (c.name.clone(), at))
            .collect();
        let mut served: HashMap<&str, Vec<prometheus_client::metrics::gauge::Gauge>> =
            HashMap::new();
        for listener in &config.listeners {
            if let Some(instance) = &listener.instance {
                let gauge = self.shared.metrics.connections(&listener.name);
                served.entry(&instance.name).or_default().push(gauge);
            }
        }
        self.shared.metrics.instances().retain(served);
        let clusters: HashSet<&str> = config.clusters.iter().map(|c| c.name.as_str()).collect();
        self.shared.metrics.clusters().retain(&clusters);
        active.config = Some(config);
        tracing::info!(
            listeners = active.listeners.len(),
            clusters = active.clusters.len(),
            "configuration applied"
        );
        Ok(())
    }

    /// Applies new versions of clusters in force that differ in their endpoints alone (each given
    /// whole), with work proportional to those clusters: their endpoints are replaced (endpoints
    /// that stay keep their state, see [`Proxy::apply`]); nothing else is touched. Returns
    /// `Ok(false)`, changing nothing, when a cluster is not in force or differs in more than its
    /// endpoints: apply the whole configuration then. Invalid clusters are refused with their
    /// fields named by position in `clusters` (`clusters[i].endpoints[0].weight`).
    pub async fn apply_endpoints(&self, clusters: &[ClusterConfig]) -> Result<bool, ApplyError> {
        let result = self.try_apply_endpoints(clusters).await;
        if !matches!(result, Ok(false)) {
            self.shared.metrics.reload(result.is_ok());
        }
        result
    }

    async fn try_apply_endpoints(&self, clusters: &[ClusterConfig]) -> Result<bool, ApplyError> {
        let mut active = self.active.lock().await;
        let Some(config) = active.config.as_ref() else {
            return Ok(false);
        };
        let mut errors = ValidationErrors::default();
        let mut changes = Vec::with_capacity(clusters.len());
        for (i, cluster) in clusters.iter().enumerate() {
            let Some(&at) = active.cluster_at.get(&cluster.name) else {
                return Ok(false);
            };
            if !config.clusters[at].same_but_endpoints(cluster) {
                return Ok(false);
            }
            if let Err(e) = config::validate_cluster_alone(&format!("clusters[{i}]"), cluster) {
                errors.errors.extend(e.errors);
            }
            changes.push(at);
        }
        errors.into_result()?;
        // Commit: from here on nothing fails.
        let active = &mut *active;
        for (cluster, at) in clusters.iter().zip(changes) {
            let Some(built) = active.clusters.get(&cluster.name) else {
                continue;
            };
            built.set_endpoints(&cluster.endpoints);
            if let Some(checks) = active.checks.get_mut(&cluster.name) {
                checks.follow(&built.endpoints(), &self.prober);
            }
            if let Some(config) = active.config.as_mut() {
                config.clusters[at] = cluster.clone();
            }
        }
        tracing::debug!(clusters = clusters.len(), "endpoints applied");
        Ok(true)
    }

    /// Parses `text` (YAML or JSON) and applies it; see [`Proxy::apply`].
    pub async fn apply_text(&self, text: &str) -> Result<(), ApplyError> {
        match parse_config(text) {
            Ok(config) => self.apply(config).await,
            Err(errors) => {
                self.shared.metrics.reload(false);
                Err(ApplyError::Invalid(errors))
            }
        }
    }

    /// The configuration in force, if any.
    pub async fn config(&self) -> Option<ProxyConfig> {
        self.active.lock().await.config.clone()
    }

    /// The bound address of each listener, by name.
    pub async fn listeners(&self) -> Vec<(String, SocketAddr)> {
        let active = self.active.lock().await;
        let mut listeners: Vec<(String, SocketAddr)> = active
            .listeners
            .iter()
            .map(|(name, (_, _, l))| (name.clone(), l.bound))
            .collect();
        listeners.sort();
        listeners
    }

    /// Drains the listeners a reload removed whose names start with `prefix`: their
    /// connections finished the requests in flight and closed when they were removed
    /// (HTTP/1.1 idle connections at once, HTTP/2 with GOAWAY); this waits until the others
    /// (upgraded, relayed) have closed too, at most `timeout`, then closes those left. Returns
    /// how many were left. The listeners are forgotten.
    pub async fn drain_listeners(&self, prefix: &str, timeout: Duration) -> usize {
        let retirements: Vec<Arc<retire::Retirement>> = {
            let mut active = self.active.lock().await;
            let names: Vec<String> = active
                .retired
                .keys()
                .filter(|name| name.starts_with(prefix))
                .cloned()
                .collect();
            names
                .iter()
                .filter_map(|name| active.retired.remove(name))
                .collect()
        };
        let mut left = 0;
        let deadline = tokio::time::Instant::now() + timeout;
        for retirement in retirements {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            left += retirement.drained(remaining).await;
        }
        left
    }

    /// Stops accepting connections, asks open ones to finish their requests in flight and close,
    /// and waits for them up to `timeout`. Returns how many were still open at the end. The
    /// spans of traced requests still queued are then exported (at most [`TRACE_FLUSH`]).
    pub async fn drain(&self, timeout: Duration) -> usize {
        {
            let mut active = self.active.lock().await;
            active.listeners.clear();
            active.checks.clear();
        }
        let left = self.shared.open.drain(timeout).await;
        self.flush_traces().await;
        left
    }

    /// Exports the spans of traced requests still queued, waiting at most [`TRACE_FLUSH`]; a
    /// component that stops calls it last (after [`Proxy::drain`], which does).
    pub async fn flush_traces(&self) {
        let Some(tracer) = self.shared.tracer.get() else {
            return;
        };
        if !tracer.flush(TRACE_FLUSH).await {
            tracing::warn!("the last spans could not all be exported before the stop");
        }
    }

    /// The client limits in force.
    pub fn limits(&self) -> Arc<Limits> {
        self.shared.limits.load_full()
    }

    /// The Prometheus text exposition of the proxy's metrics, and of the embedding component's
    /// ([`Proxy::add_metrics`]).
    pub fn metrics_text(&self) -> String {
        let text = self.shared.metrics.render();
        let extra = lock(&self.extra_metrics).clone();
        match extra {
            Some(source) => {
                let own = text.strip_suffix("# EOF\n").unwrap_or(&text);
                format!("{own}{}", source())
            }
            None => text,
        }
    }

    /// Registers the certificate source `name`, which listeners name in `tls: {source: NAME}`
    /// (docs/proxy-config.md); applies from the next configuration applied. Its acceptor offers
    /// TLS 1.2 and 1.3 and ALPN `h2`, `http/1.1` and [`ACME_TLS_ALPN`]. Fails only if rustls
    /// refuses the source's configuration.
    pub fn add_tls_source(&self, name: &str, source: TlsSource) -> Result<(), rustls::Error> {
        let acceptor = source.acceptor(true)?;
        lock(&self.tls_sources).insert(name.to_owned(), (source, acceptor));
        Ok(())
    }

    /// The certificate source registered as `name`, if any: for listeners of other protocols
    /// (QUIC) to build their configuration from it ([`TlsSource::server_config`]).
    pub fn tls_source(&self, name: &str) -> Option<TlsSource> {
        lock(&self.tls_sources)
            .get(name)
            .map(|(source, _)| source.clone())
    }

    /// Removes from the shared HTTP cache what `purge` names within `scope` (a URL as the route
    /// that serves it in the configuration in force keys it); the number of keys removed.
    pub async fn purge_cache(
        &self,
        purge: &CachePurge,
        scope: PurgeScope<'_>,
    ) -> Result<u64, PurgeError> {
        let served = {
            let active = self.active.lock().await;
            let listeners = active.listeners.values().map(|(_, _, listener)| listener);
            cache::Served {
                tables: listeners
                    .clone()
                    .map(|listener| listener.context.table.load_full())
                    .collect(),
                ports: listeners.map(|listener| listener.bound.port()).collect(),
            }
        };
        self.cache
            .purge(purge, scope, &served, self.shared.metrics.cache())
    }

    /// The number of the last purge the cache's disk tier had applied when it was opened;
    /// `None` without a disk tier or when it did not know (every purge is then missed).
    pub fn cache_disk_applied(&self) -> Option<u64> {
        self.cache.disk_applied()
    }

    /// Records `number` as the last purge applied to the cache (kept beside the disk tier's
    /// records, after the files it removed are deleted).
    pub fn cache_purge_applied(&self, number: u64) {
        self.cache
            .purge_applied(number, self.shared.metrics.cache());
    }

    /// The purges made while the cache's disk tier was closed have been applied: from now on
    /// it serves what it holds.
    pub fn cache_purges_caught_up(&self) {
        self.cache.purges_caught_up();
    }

    /// Requests waiting for another request's response to fill the shared HTTP cache (for
    /// metrics and tests).
    pub fn cache_waiting(&self) -> usize {
        self.cache.waiting()
    }

    /// Has every plain-HTTP listener answer ACME HTTP-01 challenges from `answers`
    /// ([`HTTP01_PATH`]), before routing. Once per proxy: `false` (changing nothing) if answers
    /// were set already.
    pub fn set_http01_answers(&self, answers: Arc<dyn Http01Answers>) -> bool {
        self.shared.http01.set(answers).is_ok()
    }

    /// The wake gates of the instances that sleep: a gate made for an instance before a
    /// configuration with its listeners is applied holds that configuration's requests for it.
    pub fn wake_gates(&self) -> WakeGates {
        self.shared.gates.clone()
    }

    /// The figures of the requests answered for instance `name` (`instance.name` of the
    /// listeners serving it) since a listener first served it, while one does.
    pub fn instance_traffic(&self, name: &str) -> Option<meridian_xds::meridian::Traffic> {
        self.shared.metrics.instances().traffic(name)
    }

    /// The figures of the requests sent to each cluster (those with requests), since the
    /// cluster is in the configuration.
    pub fn cluster_traffic(&self) -> Vec<meridian_xds::meridian::ClusterTraffic> {
        self.shared.metrics.clusters().traffic()
    }

    /// Has the admin port's `/metrics` also render `source`: the metrics of the component that
    /// embeds the proxy (an agent's, around its node proxy).
    pub fn add_metrics(&self, source: MetricsSource) {
        *lock(&self.extra_metrics) = Some(source);
    }
}

/// The value behind `mutex`, also if a holder panicked (what it guards stays consistent).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
