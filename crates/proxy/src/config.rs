//! The proxy's configuration file (YAML or JSON): listeners, routes and clusters, with every
//! problem reported by field path. Documented in `docs/proxy-config.md`; keep the two in step.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use meridian_model::{CachePolicy, HumanDuration, ValidationErrors};
use serde::{Deserialize, Serialize};

/// The whole configuration. Swapped atomically on reload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyConfig {
    /// Sockets the proxy accepts connections on.
    pub listeners: Vec<ListenerConfig>,
    /// Groups of upstream endpoints that routes send traffic to.
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    /// Limits on what clients may send.
    #[serde(default)]
    pub limits: Limits,
    /// Write one JSON line per request to standard output; defaults to false.
    #[serde(default)]
    pub access_log: bool,
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2 with prior knowledge (h2c), routed by `virtual_hosts`.
    #[default]
    Http,
    /// Opaque TCP: each connection is relayed to an endpoint of `cluster`.
    Tcp,
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerConfig {
    /// Unique name, used in metrics.
    pub name: String,
    /// `ip:port` to bind; port 0 picks a free port (see the admin `/listeners`).
    pub address: String,
    /// The protocol; defaults to `http`.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Virtual hosts, tried by their `domains` (`http` listeners).
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHost>,
    /// The cluster connections are relayed to (`tcp` listeners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Terminate TLS on this listener (`http` listeners); ALPN offers `h2` and `http/1.1`, and
    /// with `http3` the listener also serves HTTP/3 over UDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Make this a mesh listener (not with `tls`): mutual TLS with workload identities, and
    /// authorization of the caller; on a `tcp` listener a caller refused is closed before any
    /// byte is relayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshConfig>,
    /// Only connections from these IP addresses are served; others are closed at once and
    /// counted (a node proxy's listeners for one instance take that instance's calls only).
    /// Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// Most client connections open at once (TLS handshakes and relayed connections
    /// included); one accepted beyond it is closed at once and counted. Defaults to 10000.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Whose `x-forwarded-for` and `x-forwarded-host` are kept; defaults to `mesh`.
    #[serde(default)]
    pub trust_forwarded: TrustForwarded,
    /// The instance this listener serves (a node proxy's inbound listener): its requests are
    /// counted per instance (answered, failed, latency) and exposed with its labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceConfig>,
}

/// The instance a listener serves: the listeners naming the same instance count together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// Its name on the node, unique there (`<org>/<app>/<instance>` on a node proxy): the key
    /// its figures are read by.
    pub name: String,
    /// Its service (label `service`), `<org>/<app>/<service>` on a node proxy.
    pub service: String,
    /// The version it runs (label `version`).
    pub version: u64,
    /// Its id (label `instance`).
    pub id: String,
    /// Most requests in flight to it at once (its `scale.concurrency.hard`): more wait, up to
    /// as many again and each for at most a second, then are answered `503` with
    /// `Retry-After`. Unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

/// The default of [`ListenerConfig::max_connections`].
pub(crate) fn default_max_connections() -> u32 {
    10_000
}

/// Which clients' `x-forwarded-for` and `x-forwarded-host` a listener keeps (appending the
/// client to the first). From the others they are replaced: `x-forwarded-for` starts at the
/// client's address, `x-forwarded-host` is the request's authority.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustForwarded {
    /// Nobody's (a listener that faces the internet).
    None,
    /// Those of clients that proved a mesh identity: the platform's own proxies, on mesh
    /// listeners. On other listeners the same as `none`.
    #[default]
    Mesh,
    /// Everybody's (a listener behind a load balancer that sets them).
    All,
}

/// A mesh listener: only TLS 1.3 with a client certificate chaining to the trust bundle gets in;
/// a caller of `org` may call, one of another org only if `allow` names it. The caller's SPIFFE
/// ID reaches the upstream in `x-meridian-peer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshConfig {
    /// This proxy's certificate chain (PEM), leaf first.
    pub cert_file: String,
    /// Its private key (PEM).
    pub key_file: String,
    /// The trust bundle (PEM): the installation's root.
    pub bundle_file: String,
    /// The org whose workloads this listener serves; they may call. Absent: a gateway's
    /// listener, which only edges may call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// Callers of other orgs that may call, as `org/app/service` with `*` for any segment.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// A listener's certificates: a certificate and key as PEM files (read again at every reload),
/// or a certificate source the embedding component registered on the proxy
/// ([`crate::Proxy::add_tls_source`]), which picks a certificate per handshake (by SNI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsConfig {
    /// The certificate chain, leaf first; with `key_file`, not with `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// The name of a registered certificate source; not with the files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Also serve HTTP/3 (QUIC) on UDP at the same address and port, with the same
    /// certificates, and advertise it in `Alt-Svc` on the TCP answers; defaults to false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http3: bool,
}

/// A set of routes for some host names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VirtualHost {
    /// Name, used in metrics.
    pub name: String,
    /// Host names served: exact (`shop.example.com`), suffix wildcard (`*.example.com`), or `*`.
    pub domains: Vec<String>,
    /// Routes, tried in order; the first match wins.
    pub routes: Vec<RouteConfig>,
}

/// A route: what requests it matches and where they go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteConfig {
    /// Name, used in metrics; defaults to the route's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the request must look like.
    #[serde(default, rename = "match")]
    pub matcher: RouteMatch,
    /// The cluster to send to (or use `weighted_clusters`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Clusters to split traffic across by weight (canary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighted_clusters: Option<Vec<WeightedCluster>>,
    /// Answers every request with a redirect to HTTPS instead of forwarding it (or use
    /// `cluster` or `weighted_clusters`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<HttpsRedirect>,
    /// Replaces the matched prefix (or exact path) of the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// Time for the upstream to answer with its headers; defaults to `15s`.
    #[serde(default = "default_route_timeout")]
    pub timeout: HumanDuration,
    /// Retries of failed attempts; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    /// Headers set on the request to the upstream (replacing any of the same name).
    #[serde(default)]
    pub request_headers_add: BTreeMap<String, String>,
    /// Headers removed from the request to the upstream.
    #[serde(default)]
    pub request_headers_remove: Vec<String>,
    /// Headers set on the response to the client.
    #[serde(default)]
    pub response_headers_add: BTreeMap<String, String>,
    /// Headers removed from the response to the client.
    #[serde(default)]
    pub response_headers_remove: Vec<String>,
    /// Answer from, and store in, the proxy's shared HTTP cache (as a service definition's
    /// `cache:` says); not cached when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CachePolicy>,
    /// A cluster to nudge awake with each request of the route (`GET /` for the request's
    /// host with `x-meridian-wake: 1`, at most one at a time, its answer dropped): an edge's
    /// route to a warm region while the nearer one, asleep, wakes (see [`crate::nudge`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_cluster: Option<String>,
}

impl Default for RouteConfig {
    /// A route with every default, matching any path, to no cluster yet.
    fn default() -> Self {
        RouteConfig {
            name: None,
            matcher: RouteMatch::default(),
            cluster: None,
            weighted_clusters: None,
            https_redirect: None,
            prefix_rewrite: None,
            timeout: default_route_timeout(),
            retries: None,
            request_headers_add: BTreeMap::new(),
            request_headers_remove: Vec::new(),
            response_headers_add: BTreeMap::new(),
            response_headers_remove: Vec::new(),
            cache: None,
            wake_cluster: None,
        }
    }
}

/// A route that sends clients to HTTPS: `308 Permanent Redirect` to
/// `https://<host>[:port]<path>?<query>` (the request's host without its port; the port only
/// when it is not 443).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpsRedirect {
    /// The HTTPS port clients are sent to; defaults to 443.
    #[serde(default = "default_https_port")]
    pub port: u16,
}

fn default_https_port() -> u16 {
    443
}

fn default_route_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(15))
}

/// What makes an attempt worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// The connection to the endpoint failed (any method: nothing was sent).
    ConnectFailure,
    /// Any 5xx answer.
    #[serde(rename = "5xx")]
    ServerError,
    /// 502, 503, 504, a per-try timeout, or a failure after connecting.
    GatewayError,
    /// gRPC status cancelled, deadline-exceeded, resource-exhausted or unavailable in a
    /// trailers-only answer.
    RetriableGrpc,
}

/// A route's retry policy. A request (of any method) is retried only if the proxy holds its
/// whole body (at most `buffer_limit` bytes) and the cluster's retry budget allows; each retry
/// goes to another endpoint where there is one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Retries after the first attempt, 1–5; defaults to 2.
    #[serde(default = "default_retry_attempts")]
    pub attempts: u32,
    /// Conditions; defaults to `[connect_failure, gateway_error]`.
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    /// Time one attempt may take; defaults to the route's `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<HumanDuration>,
    /// Largest request body kept for replay, in bytes; defaults to 65536.
    #[serde(default = "default_buffer_limit")]
    pub buffer_limit: usize,
    /// Wait before the first retry; each further retry waits twice as long, with full jitter,
    /// up to ten times this. Defaults to `25ms`.
    #[serde(default = "default_retry_backoff")]
    pub backoff: HumanDuration,
    /// Also retry methods that are not idempotent (`POST`, `PATCH`, …) on conditions other than
    /// `connect_failure`, where the upstream may have acted on the request; defaults to false.
    #[serde(default)]
    pub non_idempotent: bool,
}

impl Default for RetryPolicy {
    /// The documented defaults.
    fn default() -> Self {
        RetryPolicy {
            attempts: default_retry_attempts(),
            on: default_retry_on(),
            per_try_timeout: None,
            buffer_limit: default_buffer_limit(),
            backoff: default_retry_backoff(),
            non_idempotent: false,
        }
    }
}

fn default_retry_backoff() -> HumanDuration {
    HumanDuration(Duration::from_millis(25))
}

fn default_retry_attempts() -> u32 {
    2
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectFailure, RetryOn::GatewayError]
}

fn default_buffer_limit() -> usize {
    64 * 1024
}

/// Request conditions; all given ones must hold. With neither `path` nor `prefix`, any path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteMatch {
    /// The path must start with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The path must equal this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Header conditions.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

/// A header condition: with `exact`, the header must have that value; else it must be present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    pub name: String,
    /// Required value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
}

/// A cluster and its share of a route's traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightedCluster {
    /// The cluster.
    pub name: String,
    /// Relative weight, 1–10000.
    pub weight: u32,
}

/// How a cluster picks an endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Power of two choices over peak-EWMA latency × outstanding requests (the default).
    #[default]
    P2cEwma,
    /// Power of two choices over outstanding requests.
    LeastRequest,
    /// Weighted round robin.
    RoundRobin,
    /// Consistent hashing (ring hash) on `hash_on`; requests without the key fall back to P2C.
    RingHash,
}

/// What consistent hashing hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashOn {
    /// A request header's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A cookie's value (sticky sessions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// The protocol spoken to a cluster's endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c); also what gRPC upstreams need.
    Http2,
}

/// A group of upstream endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Unique name, referred to by routes.
    pub name: String,
    /// Load-balancing policy; defaults to `p2c_ewma`.
    #[serde(default)]
    pub lb: LbPolicy,
    /// The hash key for `ring_hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// Protocol to the endpoints; defaults to `http1`.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Time to establish a connection; defaults to `1s`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Passive outlier detection: eject endpoints that keep failing; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Below this percentage of usable (healthy, not ejected) endpoints the cluster ignores
    /// health and spreads load over all endpoints, so it never ejects itself to nothing;
    /// defaults to 50, 0 turns panic mode off.
    #[serde(default = "default_panic_threshold")]
    pub panic_threshold: u32,
    /// Limits that shed load with a 503 rather than queue it.
    #[serde(default)]
    pub circuit_breakers: CircuitBreakers,
    /// Each endpoint's limits of requests in flight (its instance's `scale.concurrency`), which
    /// picks respect; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_limits: Option<EndpointLimits>,
    /// How many retries the cluster accepts on top of its requests.
    #[serde(default)]
    pub retry_budget: RetryBudgetConfig,
    /// Active health checking of the endpoints; without it every endpoint counts as healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    /// Mutual TLS to the endpoints (a mesh hop): this proxy's identity, and the one the
    /// endpoints must prove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<UpstreamMeshConfig>,
    /// The endpoints.
    pub endpoints: Vec<EndpointConfig>,
}

impl ClusterConfig {
    /// A cluster named `name` with every default and no endpoints.
    pub fn empty(name: &str) -> ClusterConfig {
        ClusterConfig {
            name: name.to_owned(),
            lb: LbPolicy::default(),
            hash_on: None,
            protocol: UpstreamProtocol::default(),
            connect_timeout: default_connect_timeout(),
            outlier_detection: None,
            panic_threshold: default_panic_threshold(),
            circuit_breakers: CircuitBreakers::default(),
            endpoint_limits: None,
            retry_budget: RetryBudgetConfig::default(),
            health_check: None,
            mesh: None,
            endpoints: Vec::new(),
        }
    }

    /// Whether `other` is this cluster with at most its endpoints changed.
    pub fn same_but_endpoints(&self, other: &ClusterConfig) -> bool {
        // Destructured in full, so that a new setting cannot be forgotten here.
        let ClusterConfig {
            name,
            lb,
            hash_on,
            protocol,
            connect_timeout,
            outlier_detection,
            panic_threshold,
            circuit_breakers,
            endpoint_limits,
            retry_budget,
            health_check,
            mesh,
            endpoints: _,
        } = self;
        *name == other.name
            && *lb == other.lb
            && *hash_on == other.hash_on
            && *protocol == other.protocol
            && *connect_timeout == other.connect_timeout
            && *outlier_detection == other.outlier_detection
            && *panic_threshold == other.panic_threshold
            && *circuit_breakers == other.circuit_breakers
            && *endpoint_limits == other.endpoint_limits
            && *retry_budget == other.retry_budget
            && *health_check == other.health_check
            && *mesh == other.mesh
    }
}

/// Mutual TLS to a cluster's endpoints: TLS 1.3 with this proxy's certificate; an endpoint's
/// certificate must chain to the bundle and carry the SPIFFE ID `peer`. HTTP/2 is used when the
/// endpoint offers it (one multiplexed connection serves many requests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamMeshConfig {
    /// This proxy's certificate chain (PEM), leaf first.
    pub cert_file: String,
    /// Its private key (PEM).
    pub key_file: String,
    /// The trust bundle (PEM).
    pub bundle_file: String,
    /// The SPIFFE ID the endpoints must have, or `spiffe://<trust domain>/gateway/*` for any
    /// region's gateway (an edge's clusters).
    pub peer: String,
}

/// An active health check, run against every endpoint of a cluster. Exactly one of `http` or
/// `tcp`. Endpoints start healthy and change state after the thresholds' worth of results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheckConfig {
    /// Healthy when `GET path` answers 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
    /// Healthy when a TCP connection opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHealthCheck>,
    /// Time between checks; defaults to `5s`.
    #[serde(default = "default_check_interval")]
    pub interval: HumanDuration,
    /// Time one check may take; defaults to `1s`; at most `interval`.
    #[serde(default = "default_check_timeout")]
    pub timeout: HumanDuration,
    /// Consecutive successes that make an unhealthy endpoint healthy; defaults to 1.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy endpoint unhealthy; defaults to 3.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    /// A TCP check with the documented defaults.
    fn default() -> Self {
        HealthCheckConfig {
            http: None,
            tcp: Some(TcpHealthCheck {}),
            interval: default_check_interval(),
            timeout: default_check_timeout(),
            healthy_threshold: default_healthy_threshold(),
            unhealthy_threshold: default_unhealthy_threshold(),
        }
    }
}

/// The HTTP variant of a health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpHealthCheck {
    /// The path requested; defaults to `/`.
    #[serde(default = "default_check_path")]
    pub path: String,
}

/// The TCP variant of a health check (no options).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpHealthCheck {}

fn default_check_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

fn default_check_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

fn default_healthy_threshold() -> u32 {
    1
}

fn default_unhealthy_threshold() -> u32 {
    3
}

fn default_check_path() -> String {
    "/".to_owned()
}

fn default_panic_threshold() -> u32 {
    50
}

/// Passive outlier detection settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutlierDetection {
    /// Consecutive 5xx answers (any, including gateway errors) that eject; defaults to 5.
    #[serde(default = "default_consecutive_5xx")]
    pub consecutive_5xx: u32,
    /// Consecutive gateway errors (502, 503, 504, connect failure, timeout) that eject; defaults
    /// to 3.
    #[serde(default = "default_consecutive_gateway")]
    pub consecutive_gateway_errors: u32,
    /// The first ejection's length; the n-th lasts n times this (up to `max_ejection_time`).
    /// Defaults to `10s`.
    #[serde(default = "default_base_ejection")]
    pub base_ejection_time: HumanDuration,
    /// The longest ejection; defaults to `300s`.
    #[serde(default = "default_max_ejection")]
    pub max_ejection_time: HumanDuration,
    /// Most endpoints ejected at once, in percent (one is always allowed); defaults to 50.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    /// The documented defaults.
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: default_consecutive_5xx(),
            consecutive_gateway_errors: default_consecutive_gateway(),
            base_ejection_time: default_base_ejection(),
            max_ejection_time: default_max_ejection(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

fn default_consecutive_5xx() -> u32 {
    5
}

fn default_consecutive_gateway() -> u32 {
    3
}

fn default_base_ejection() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

fn default_max_ejection() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

fn default_max_ejection_percent() -> u32 {
    50
}

/// Limits of requests in flight to each endpoint of a cluster (its instance's
/// `scale.concurrency`), counted by this proxy (its own requests to the endpoint: the
/// least-request balancers' count). A pick takes an endpoint below `soft` while the cluster has
/// one, else one below `hard`, else any. An attempt to an endpoint that may be at `hard` by its
/// own count (other proxies send to it too) and that could be retried elsewhere carries
/// [`crate::elsewhere::HEADER`]: the endpoint's node proxy then answers at once rather than
/// queue it, and the attempt is retried on another endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointLimits {
    /// Above this many, other endpoints are preferred (1 to less than `hard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft: Option<u32>,
    /// At this many, the endpoint takes no more while another has room (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard: Option<u32>,
}

/// Per-cluster limits; over them the proxy answers 503 with `x-meridian-error: overflow_…`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CircuitBreakers {
    /// Most requests in flight to the cluster (retries included); defaults to 1024.
    #[serde(default = "default_breaker_limit")]
    pub max_requests: u32,
    /// Most open connections to the cluster's endpoints, idle ones included; a request that
    /// needs a new connection beyond it answers 503. Defaults to 1024.
    #[serde(default = "default_breaker_limit")]
    pub max_connections: u32,
    /// Most requests waiting for a slot when `max_requests` are in flight (each waits at most
    /// its route's timeout); beyond it a request answers 503 at once. 0: none wait. Defaults to
    /// 1024.
    #[serde(default = "default_breaker_limit")]
    pub max_pending_requests: u32,
}

fn default_breaker_limit() -> u32 {
    1024
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        CircuitBreakers {
            max_requests: default_breaker_limit(),
            max_connections: default_breaker_limit(),
            max_pending_requests: default_breaker_limit(),
        }
    }
}

/// Retries allowed: a request may retry while at most `ratio` of the cluster's requests in
/// flight are retrying; besides, `min_per_second` retries a second are always allowed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryBudgetConfig {
    /// Fraction of the requests in flight that may be retrying at once, 0–1; defaults to 0.2.
    #[serde(default = "default_retry_ratio")]
    pub ratio: f64,
    /// Retries always allowed per second; defaults to 10.
    #[serde(default = "default_min_retries")]
    pub min_per_second: u32,
}

fn default_retry_ratio() -> f64 {
    0.2
}

fn default_min_retries() -> u32 {
    10
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            ratio: default_retry_ratio(),
            min_per_second: default_min_retries(),
        }
    }
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointConfig {
    /// `ip:port`.
    pub address: String,
    /// Relative weight, 1–1000; defaults to 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Priority (locality) level, 0 (best) to 9; defaults to 0.
    #[serde(default)]
    pub priority: u32,
}

fn default_weight() -> u32 {
    1
}

/// Limits on clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest request head (request line and headers), in bytes; larger answers 431. Default 64 KiB.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Time a client has to send a complete request head; defaults to `10s`.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: HumanDuration,
    /// Most concurrent HTTP/2 streams, and HTTP/3 request streams, per client connection;
    /// defaults to 256.
    #[serde(default = "default_max_streams")]
    pub max_concurrent_streams: u32,
    /// A client connection with no request in flight and no bytes moving for this long is
    /// closed; defaults to `60s`.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// On shutdown, how long open connections get to finish their requests; defaults to `15s`.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: HumanDuration,
    /// Largest request body, in bytes; larger answers 413. Unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<u64>,
    /// Time a client has to send a request body that the proxy reads whole before forwarding
    /// (and before the request takes a circuit-breaker slot); defaults to `10s`.
    #[serde(default = "default_request_body_timeout")]
    pub request_body_timeout: HumanDuration,
    /// A connection with a response waiting for its client to take data, and no response of
    /// it making progress, for this long is closed (a client that never opens its HTTP/2
    /// window, or never reads); defaults to `60s`.
    #[serde(default = "default_send_timeout")]
    pub send_timeout: HumanDuration,
    /// Time a client has to complete a TLS handshake; defaults to `10s`.
    #[serde(default = "default_tls_handshake_timeout")]
    pub tls_handshake_timeout: HumanDuration,
    /// Most TLS handshakes in progress at once from one client IP address, per listener;
    /// a connection beyond it is closed at once and counted. Defaults to 64.
    #[serde(default = "default_tls_handshakes_per_ip")]
    pub max_tls_handshakes_per_ip: u32,
    /// A `tcp` listener's relayed connection that moves no byte either way for this long is
    /// closed (both sides); defaults to `1h`, Envoy's `tcp_proxy` default.
    #[serde(default = "default_tcp_idle_timeout")]
    pub tcp_idle_timeout: HumanDuration,
    /// HTTP/2 settings of client connections.
    #[serde(default)]
    pub http2: Http2Limits,
}

fn default_tcp_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}

/// How HTTP/2 client connections are bounded (besides `max_concurrent_streams` and
/// `max_header_bytes`): the settings of hyper's (h2's) server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Http2Limits {
    /// Streams the client opened and reset before they were served, at most this many pending
    /// per connection (rapid reset, CVE-2023-44487); beyond it the connection ends with
    /// GOAWAY. Defaults to 20.
    #[serde(default = "default_pending_accept_reset_streams")]
    pub max_pending_accept_reset_streams: u32,
    /// Streams the proxy reset because of the client's errors, at most this many per
    /// connection; beyond it the connection ends with GOAWAY. Defaults to 1024.
    #[serde(default = "default_local_error_reset_streams")]
    pub max_local_error_reset_streams: u32,
    /// Most response bytes buffered per stream waiting for the client's window; defaults to
    /// 409600.
    #[serde(default = "default_max_send_buffer_bytes")]
    pub max_send_buffer_bytes: u32,
    /// Send a PING this often and close the connection if it is not answered within
    /// `keep_alive_timeout`; off when absent (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_interval: Option<HumanDuration>,
    /// How long a PING may go unanswered; defaults to `20s`.
    #[serde(default = "default_keep_alive_timeout")]
    pub keep_alive_timeout: HumanDuration,
    /// The receive window of each stream, in bytes; absent (the default): adaptive, from 64 KiB
    /// up to the measured bandwidth-delay product.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_stream_window_bytes: Option<u32>,
    /// The receive window of each connection, in bytes; absent (the default): adaptive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_connection_window_bytes: Option<u32>,
}

fn default_send_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

fn default_tls_handshake_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

fn default_tls_handshakes_per_ip() -> u32 {
    64
}

fn default_pending_accept_reset_streams() -> u32 {
    20
}

fn default_local_error_reset_streams() -> u32 {
    1024
}

fn default_max_send_buffer_bytes() -> u32 {
    400 * 1024
}

fn default_keep_alive_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(20))
}

impl Default for Http2Limits {
    fn default() -> Self {
        Http2Limits {
            max_pending_accept_reset_streams: default_pending_accept_reset_streams(),
            max_local_error_reset_streams: default_local_error_reset_streams(),
            max_send_buffer_bytes: default_max_send_buffer_bytes(),
            keep_alive_interval: None,
            keep_alive_timeout: default_keep_alive_timeout(),
            initial_stream_window_bytes: None,
            initial_connection_window_bytes: None,
        }
    }
}

fn default_request_body_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

fn default_max_header_bytes() -> usize {
    64 * 1024
}

fn default_header_read_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

fn default_drain_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(15))
}

fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

fn default_max_streams() -> u32 {
    256
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: default_max_header_bytes(),
            header_read_timeout: default_header_read_timeout(),
            max_concurrent_streams: default_max_streams(),
            idle_timeout: default_idle_timeout(),
            drain_timeout: default_drain_timeout(),
            max_request_body_bytes: None,
            request_body_timeout: default_request_body_timeout(),
            send_timeout: default_send_timeout(),
            tls_handshake_timeout: default_tls_handshake_timeout(),
            max_tls_handshakes_per_ip: default_tls_handshakes_per_ip(),
            tcp_idle_timeout: default_tcp_idle_timeout(),
            http2: Http2Limits::default(),
        }
    }
}

/// Parses a configuration from YAML or JSON text and validates it; every problem is reported with
/// its field path.
pub fn parse_config(text: &str) -> Result<ProxyConfig, ValidationErrors> {
    let value: serde_json::Value = serde_yaml_ng::from_str(text).map_err(|e| {
        let mut errors = ValidationErrors::default();
        errors.push("config", format!("not valid YAML or JSON: {e}"));
        errors
    })?;
    if !value.is_object() {
        let mut errors = ValidationErrors::default();
        errors.push(
            "config",
            "must be a mapping (listeners, clusters, limits, access_log)",
        );
        return Err(errors);
    }
    let config: ProxyConfig =
        meridian_model::parse_json(value.to_string().as_bytes()).map_err(name_document_errors)?;
    validate(&config)?;
    Ok(config)
}

/// The JSON parser reports problems of the document as a whole at `body`, and a top-level key
/// that is empty (YAML `? : x`) at an empty path: a missing top-level field is named instead,
/// anything else is about the `config`.
fn name_document_errors(mut errors: ValidationErrors) -> ValidationErrors {
    for error in &mut errors.errors {
        if error.field.is_empty() {
            error.field = "config".to_owned();
            error.message = "unknown field with an empty name".to_owned();
        } else if error.field == "body" {
            let missing = error
                .message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split_once('`'))
                .map(|(field, _)| field);
            error.field = missing.unwrap_or("config").to_owned();
        }
    }
    errors
}

/// Longest name of a listener, virtual host or cluster.
const MAX_NAME_LEN: usize = 253;

/// Names (they appear in metrics and logs): 1–253 characters among letters, digits and `._:/-`,
/// so that xDS names like `acme/shop/api:http` fit.
fn check_name(errs: &mut ValidationErrors, field: String, name: &str) {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        errs.push(
            field,
            format!("must be 1 to {MAX_NAME_LEN} characters long"),
        );
    } else if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._:/-".contains(*c)))
    {
        errs.push(
            field,
            format!("`{name}` contains {bad:?}; use letters, digits and . _ : / -"),
        );
    }
}

fn check_path(errs: &mut ValidationErrors, field: String, path: &str) {
    if let Err(reason) = meridian_model::check_url_path(path) {
        errs.push(field, reason);
    }
}

fn check_header_name(errs: &mut ValidationErrors, field: String, name: &str) {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        errs.push(field, format!("`{name}` is not a valid header name"));
    }
}

fn check_header_map(errs: &mut ValidationErrors, prefix: &str, headers: &BTreeMap<String, String>) {
    for (name, value) in headers {
        check_header_name(errs, format!("{prefix}.{name}"), name);
        if http::HeaderValue::from_str(value).is_err() {
            errs.push(format!("{prefix}.{name}"), "is not a valid header value");
        }
    }
}

fn check_domain(errs: &mut ValidationErrors, field: String, domain: &str) {
    if domain == "*" {
        return;
    }
    let host = domain.strip_prefix("*.").unwrap_or(domain);
    let valid = !host.is_empty()
        && host
            .split('.')
            .all(|label| meridian_model::check_dns_label(label).is_ok());
    if !valid {
        errs.push(
            field,
            format!("`{domain}` is not a host name, `*.` followed by one, or `*`"),
        );
    }
}

/// The longest duration any setting accepts (keeps deadline arithmetic far from overflow).
const LONGEST: Duration = Duration::from_secs(24 * 3600);

/// Every duration setting of `config`, with its field path.
fn durations(config: &ProxyConfig) -> Vec<(String, Duration)> {
    let mut all = vec![
        (
            "limits.header_read_timeout".to_owned(),
            config.limits.header_read_timeout.0,
        ),
        (
            "limits.idle_timeout".to_owned(),
            config.limits.idle_timeout.0,
        ),
        (
            "limits.drain_timeout".to_owned(),
            config.limits.drain_timeout.0,
        ),
        (
            "limits.request_body_timeout".to_owned(),
            config.limits.request_body_timeout.0,
        ),
        (
            "limits.send_timeout".to_owned(),
            config.limits.send_timeout.0,
        ),
        (
            "limits.tls_handshake_timeout".to_owned(),
            config.limits.tls_handshake_timeout.0,
        ),
        (
            "limits.http2.keep_alive_timeout".to_owned(),
            config.limits.http2.keep_alive_timeout.0,
        ),
    ];
    if let Some(interval) = config.limits.http2.keep_alive_interval {
        all.push(("limits.http2.keep_alive_interval".to_owned(), interval.0));
    }
    for (l, listener) in config.listeners.iter().enumerate() {
        for (v, vhost) in listener.virtual_hosts.iter().enumerate() {
            for (r, route) in vhost.routes.iter().enumerate() {
                let at = format!("listeners[{l}].virtual_hosts[{v}].routes[{r}]");
                all.push((format!("{at}.timeout"), route.timeout.0));
                if let Some(retries) = &route.retries {
                    all.push((format!("{at}.retries.backoff"), retries.backoff.0));
                    if let Some(t) = retries.per_try_timeout {
                        all.push((format!("{at}.retries.per_try_timeout"), t.0));
                    }
                }
            }
        }
    }
    for (c, cluster) in config.clusters.iter().enumerate() {
        cluster_durations(&mut all, &format!("clusters[{c}]"), cluster);
    }
    all
}

/// Every duration setting of `cluster`, with its field path under `at`, added to `all`.
fn cluster_durations(all: &mut Vec<(String, Duration)>, at: &str, cluster: &ClusterConfig) {
    all.push((format!("{at}.connect_timeout"), cluster.connect_timeout.0));
    if let Some(check) = &cluster.health_check {
        all.push((format!("{at}.health_check.interval"), check.interval.0));
        all.push((format!("{at}.health_check.timeout"), check.timeout.0));
    }
    if let Some(o) = &cluster.outlier_detection {
        all.push((
            format!("{at}.outlier_detection.base_ejection_time"),
            o.base_ejection_time.0,
        ));
        all.push((
            format!("{at}.outlier_detection.max_ejection_time"),
            o.max_ejection_time.0,
        ));
    }
}

fn check_longest(errs: &mut ValidationErrors, durations: Vec<(String, Duration)>) {
    for (field, duration) in durations {
        if duration > LONGEST {
            errs.push(field, "must be at most 24h");
        }
    }
}

/// Checks one cluster on its own, with its fields under `at` (`clusters[3]`): every rule of
/// [`validate`] that concerns the cluster alone (not whether its name is unique).
pub fn validate_cluster_alone(at: &str, cluster: &ClusterConfig) -> Result<(), ValidationErrors> {
    let mut errs = ValidationErrors::default();
    let mut all = Vec::new();
    cluster_durations(&mut all, at, cluster);
    check_longest(&mut errs, all);
    validate_cluster(&mut errs, at, cluster);
    errs.into_result()
}

/// Checks every rule that parsing alone does not.
pub fn validate(config: &ProxyConfig) -> Result<(), ValidationErrors> {
    let mut errs = ValidationErrors::default();
    check_longest(&mut errs, durations(config));
    let clusters: HashSet<&str> = config.clusters.iter().map(|c| c.name.as_str()).collect();
    if config.listeners.is_empty() {
        errs.push("listeners", "must declare at least one listener");
    }
    let mut listener_names = HashSet::new();
    let mut addresses = HashSet::new();
    for (i, listener) in config.listeners.iter().enumerate() {
        let at = format!("listeners[{i}]");
        check_name(&mut errs, format!("{at}.name"), &listener.name);
        if !listener_names.insert(listener.name.as_str()) {
            errs.push(
                format!("{at}.name"),
                format!("duplicate listener `{}`", listener.name),
            );
        }
        match listener.address.parse::<SocketAddr>() {
            Err(_) => errs.push(
                format!("{at}.address"),
                format!("`{}` is not an ip:port address", listener.address),
            ),
            Ok(address) if address.port() != 0 && !addresses.insert(address) => errs.push(
                format!("{at}.address"),
                format!("{address} is used by another listener"),
            ),
            Ok(_) => {}
        }
        if !(1..=1_000_000).contains(&listener.max_connections) {
            errs.push(
                format!("{at}.max_connections"),
                "must be between 1 and 1000000",
            );
        }
        for (s, source) in listener.sources.iter().enumerate() {
            if source.parse::<std::net::IpAddr>().is_err() {
                errs.push(
                    format!("{at}.sources[{s}]"),
                    format!("`{source}` is not an IP address"),
                );
            }
        }
        validate_virtual_hosts(&mut errs, &at, &listener.virtual_hosts, &clusters);
        match (listener.protocol, &listener.cluster) {
            (ListenerProtocol::Http, Some(_)) => errs.push(
                format!("{at}.cluster"),
                "only `tcp` listeners name a cluster; `http` ones route by `virtual_hosts`",
            ),
            (ListenerProtocol::Tcp, None) => {
                errs.push(format!("{at}.cluster"), "a `tcp` listener needs a cluster")
            }
            (ListenerProtocol::Tcp, Some(cluster)) => {
                if !clusters.contains(cluster.as_str()) {
                    errs.push(
                        format!("{at}.cluster"),
                        format!("unknown cluster `{cluster}`"),
                    );
                }
                if listener.tls.is_some() {
                    errs.push(
                        format!("{at}.tls"),
                        "TLS is terminated on `http` listeners only",
                    );
                }
                if let Some(mesh) = &listener.mesh {
                    validate_mesh(&mut errs, &format!("{at}.mesh"), mesh);
                }
                if !listener.virtual_hosts.is_empty() {
                    errs.push(
                        format!("{at}.virtual_hosts"),
                        "a `tcp` listener has no virtual hosts",
                    );
                }
            }
            (ListenerProtocol::Http, None) => {
                if let Some(tls) = &listener.tls {
                    validate_tls(&mut errs, &format!("{at}.tls"), tls);
                }
                if let Some(mesh) = &listener.mesh {
                    validate_mesh(&mut errs, &format!("{at}.mesh"), mesh);
                    if listener.tls.is_some() {
                        errs.push(
                            format!("{at}.mesh"),
                            "a listener has `tls` or `mesh`, not both",
                        );
                    }
                }
            }
        }
    }
    let mut cluster_names = HashSet::new();
    for (i, cluster) in config.clusters.iter().enumerate() {
        validate_cluster(&mut errs, &format!("clusters[{i}]"), cluster);
        if !cluster_names.insert(cluster.name.as_str()) {
            errs.push(
                format!("clusters[{i}].name"),
                format!("duplicate cluster `{}`", cluster.name),
            );
        }
    }
    let limits = &config.limits;
    if !(8192..=1024 * 1024).contains(&limits.max_header_bytes) {
        errs.push(
            "limits.max_header_bytes",
            "must be between 8192 and 1048576",
        );
    }
    if limits.idle_timeout.0 < Duration::from_millis(10) {
        errs.push("limits.idle_timeout", "must be at least 10ms");
    }
    if limits.tcp_idle_timeout.0 < Duration::from_millis(10) {
        errs.push("limits.tcp_idle_timeout", "must be at least 10ms");
    }
    if limits.header_read_timeout.0.is_zero() {
        errs.push("limits.header_read_timeout", "must be more than zero");
    }
    if limits.request_body_timeout.0.is_zero() {
        errs.push("limits.request_body_timeout", "must be more than zero");
    }
    if !(1..=10_000).contains(&limits.max_concurrent_streams) {
        errs.push(
            "limits.max_concurrent_streams",
            "must be between 1 and 10000",
        );
    }
    for (field, timeout) in [
        ("limits.send_timeout", limits.send_timeout),
        ("limits.tls_handshake_timeout", limits.tls_handshake_timeout),
        (
            "limits.http2.keep_alive_timeout",
            limits.http2.keep_alive_timeout,
        ),
    ] {
        if timeout.0 < Duration::from_millis(10) {
            errs.push(field, "must be at least 10ms");
        }
    }
    if !(1..=100_000).contains(&limits.max_tls_handshakes_per_ip) {
        errs.push(
            "limits.max_tls_handshakes_per_ip",
            "must be between 1 and 100000",
        );
    }
    validate_http2(&mut errs, &limits.http2);
    errs.into_result()
}

/// The largest HTTP/2 flow-control window (RFC 9113 §6.9.1).
const MAX_WINDOW: u32 = (1 << 31) - 1;

fn validate_http2(errs: &mut ValidationErrors, http2: &Http2Limits) {
    if http2.max_pending_accept_reset_streams > 100_000 {
        errs.push(
            "limits.http2.max_pending_accept_reset_streams",
            "must be at most 100000",
        );
    }
    if http2.max_local_error_reset_streams > 100_000 {
        errs.push(
            "limits.http2.max_local_error_reset_streams",
            "must be at most 100000",
        );
    }
    if !(16 * 1024..=16 * 1024 * 1024).contains(&http2.max_send_buffer_bytes) {
        errs.push(
            "limits.http2.max_send_buffer_bytes",
            "must be between 16384 and 16777216",
        );
    }
    if http2
        .keep_alive_interval
        .is_some_and(|i| i.0 < Duration::from_millis(10))
    {
        errs.push("limits.http2.keep_alive_interval", "must be at least 10ms");
    }
    for (field, window) in [
        (
            "limits.http2.initial_stream_window_bytes",
            http2.initial_stream_window_bytes,
        ),
        (
            "limits.http2.initial_connection_window_bytes",
            http2.initial_connection_window_bytes,
        ),
    ] {
        if window.is_some_and(|w| !(65_535..=MAX_WINDOW).contains(&w)) {
            errs.push(field, "must be between 65535 and 2147483647");
        }
    }
}

fn validate_virtual_hosts(
    errs: &mut ValidationErrors,
    at: &str,
    hosts: &[VirtualHost],
    clusters: &HashSet<&str>,
) {
    let mut domains = HashSet::new();
    for (v, vhost) in hosts.iter().enumerate() {
        let at = format!("{at}.virtual_hosts[{v}]");
        check_name(errs, format!("{at}.name"), &vhost.name);
        if vhost.domains.is_empty() {
            errs.push(
                format!("{at}.domains"),
                "must list at least one domain (or `*`)",
            );
        }
        for (d, domain) in vhost.domains.iter().enumerate() {
            check_domain(errs, format!("{at}.domains[{d}]"), domain);
            if !domains.insert(domain.to_ascii_lowercase()) {
                errs.push(
                    format!("{at}.domains[{d}]"),
                    format!("`{domain}` is already served by another virtual host"),
                );
            }
        }
        for (r, route) in vhost.routes.iter().enumerate() {
            validate_route(errs, &format!("{at}.routes[{r}]"), route, clusters);
        }
    }
}

fn validate_tls(errs: &mut ValidationErrors, at: &str, tls: &TlsConfig) {
    match (&tls.source, &tls.cert_file, &tls.key_file) {
        (Some(source), None, None) => {
            if source.is_empty() {
                errs.push(format!("{at}.source"), "must name a certificate source");
            }
        }
        (Some(_), _, _) => errs.push(
            format!("{at}.source"),
            "give `source` or `cert_file` with `key_file`, not both",
        ),
        (None, Some(_), Some(_)) => {}
        (None, None, _) => errs.push(
            format!("{at}.cert_file"),
            "give `cert_file` with `key_file`, or `source`",
        ),
        (None, Some(_), None) => errs.push(format!("{at}.key_file"), "goes with `cert_file`"),
    }
}

fn validate_route(
    errs: &mut ValidationErrors,
    at: &str,
    route: &RouteConfig,
    clusters: &HashSet<&str>,
) {
    let m = &route.matcher;
    if m.prefix.is_some() && m.path.is_some() {
        errs.push(format!("{at}.match"), "give `prefix` or `path`, not both");
    }
    if let Some(wake) = route.wake_cluster.as_deref() {
        if !clusters.contains(wake) {
            errs.push(
                format!("{at}.wake_cluster"),
                format!("unknown cluster `{wake}`"),
            );
        }
    }
    if let Some(prefix) = &m.prefix {
        check_path(errs, format!("{at}.match.prefix"), prefix);
    }
    if let Some(path) = &m.path {
        check_path(errs, format!("{at}.match.path"), path);
    }
    for (h, header) in m.headers.iter().enumerate() {
        check_header_name(errs, format!("{at}.match.headers[{h}].name"), &header.name);
        if let Some(value) = &header.exact {
            if http::HeaderValue::from_str(value).is_err() {
                errs.push(
                    format!("{at}.match.headers[{h}].exact"),
                    "is not a valid header value",
                );
            }
        }
    }
    match (&route.cluster, &route.weighted_clusters) {
        (None, None) if route.https_redirect.is_some() => {
            if route.https_redirect.is_some_and(|r| r.port == 0) {
                errs.push(
                    format!("{at}.https_redirect.port"),
                    "must be a port, 1-65535",
                );
            }
        }
        _ if route.https_redirect.is_some() => errs.push(
            format!("{at}.https_redirect"),
            "a redirecting route has no `cluster` or `weighted_clusters`",
        ),
        (Some(cluster), None) => {
            if !clusters.contains(cluster.as_str()) {
                errs.push(
                    format!("{at}.cluster"),
                    format!("unknown cluster `{cluster}`"),
                );
            }
        }
        (None, Some(split)) => {
            if split.is_empty() {
                errs.push(
                    format!("{at}.weighted_clusters"),
                    "must list at least one cluster",
                );
            }
            for (w, entry) in split.iter().enumerate() {
                if !clusters.contains(entry.name.as_str()) {
                    errs.push(
                        format!("{at}.weighted_clusters[{w}].name"),
                        format!("unknown cluster `{}`", entry.name),
                    );
                }
                if !(1..=10_000).contains(&entry.weight) {
                    errs.push(
                        format!("{at}.weighted_clusters[{w}].weight"),
                        "must be between 1 and 10000",
                    );
                }
            }
        }
        _ => errs.push(
            at.to_owned(),
            "give exactly one of `cluster`, `weighted_clusters` or `https_redirect`",
        ),
    }
    if let Some(retries) = &route.retries {
        if !(1..=5).contains(&retries.attempts) {
            errs.push(format!("{at}.retries.attempts"), "must be between 1 and 5");
        }
        if retries.on.is_empty() {
            errs.push(
                format!("{at}.retries.on"),
                "must name at least one condition",
            );
        }
        if retries.per_try_timeout.is_some_and(|t| t.0.is_zero()) {
            errs.push(
                format!("{at}.retries.per_try_timeout"),
                "must be more than zero",
            );
        }
        if retries.backoff.0 > Duration::from_secs(10) {
            errs.push(format!("{at}.retries.backoff"), "must be at most 10s");
        }
        if retries.buffer_limit > 16 * 1024 * 1024 {
            errs.push(
                format!("{at}.retries.buffer_limit"),
                "must be at most 16777216",
            );
        }
    }
    if let Some(rewrite) = &route.prefix_rewrite {
        check_path(errs, format!("{at}.prefix_rewrite"), rewrite);
    }
    if route.timeout.0.is_zero() {
        errs.push(format!("{at}.timeout"), "must be more than zero");
    }
    check_header_map(
        errs,
        &format!("{at}.request_headers_add"),
        &route.request_headers_add,
    );
    check_header_map(
        errs,
        &format!("{at}.response_headers_add"),
        &route.response_headers_add,
    );
    for (h, name) in route.request_headers_remove.iter().enumerate() {
        check_header_name(errs, format!("{at}.request_headers_remove[{h}]"), name);
    }
    for (h, name) in route.response_headers_remove.iter().enumerate() {
        check_header_name(errs, format!("{at}.response_headers_remove[{h}]"), name);
    }
    if let Some(cache) = &route.cache {
        meridian_model::validate_cache(errs, &format!("{at}.cache"), cache);
    }
}

fn validate_mesh(errs: &mut ValidationErrors, at: &str, mesh: &MeshConfig) {
    if let Some(Err(reason)) = mesh.org.as_deref().map(meridian_model::check_dns_label) {
        errs.push(format!("{at}.org"), reason);
    }
    for (i, pattern) in mesh.allow.iter().enumerate() {
        let segments: Vec<&str> = pattern.split('/').collect();
        let valid = segments.len() == 3
            && segments
                .iter()
                .all(|s| *s == "*" || meridian_model::check_dns_label(s).is_ok());
        if !valid {
            errs.push(
                format!("{at}.allow[{i}]"),
                format!("`{pattern}` is not org/app/service (DNS labels or `*`)"),
            );
        }
    }
}

fn validate_cluster(errs: &mut ValidationErrors, at: &str, cluster: &ClusterConfig) {
    check_name(errs, format!("{at}.name"), &cluster.name);
    if let Some(mesh) = &cluster.mesh {
        if let Err(reason) = crate::tls::mesh_peer(&mesh.peer) {
            errs.push(format!("{at}.mesh.peer"), reason);
        }
    }
    for (e, endpoint) in cluster.endpoints.iter().enumerate() {
        if endpoint.address.parse::<SocketAddr>().is_err() {
            errs.push(
                format!("{at}.endpoints[{e}].address"),
                format!("`{}` is not an ip:port address", endpoint.address),
            );
        }
        if !(1..=1000).contains(&endpoint.weight) {
            errs.push(
                format!("{at}.endpoints[{e}].weight"),
                "must be between 1 and 1000",
            );
        }
        if endpoint.priority > 9 {
            errs.push(
                format!("{at}.endpoints[{e}].priority"),
                "must be between 0 and 9",
            );
        }
    }
    let hash_key = cluster
        .hash_on
        .as_ref()
        .map(|h| (h.header.is_some(), h.cookie.is_some()));
    match (cluster.lb, hash_key) {
        (LbPolicy::RingHash, Some((true, false)) | Some((false, true))) => {}
        (LbPolicy::RingHash, _) => errs.push(
            format!("{at}.hash_on"),
            "ring_hash needs exactly one of `header` or `cookie`",
        ),
        (_, Some(_)) => errs.push(format!("{at}.hash_on"), "only used with `lb: ring_hash`"),
        (_, None) => {}
    }
    if cluster.connect_timeout.0.is_zero() {
        errs.push(format!("{at}.connect_timeout"), "must be more than zero");
    }
    if let Some(check) = &cluster.health_check {
        validate_health_check(errs, &format!("{at}.health_check"), check);
    }
    if let Some(o) = &cluster.outlier_detection {
        let at = format!("{at}.outlier_detection");
        for (name, value) in [
            ("consecutive_5xx", o.consecutive_5xx),
            ("consecutive_gateway_errors", o.consecutive_gateway_errors),
        ] {
            if !(1..=1000).contains(&value) {
                errs.push(format!("{at}.{name}"), "must be between 1 and 1000");
            }
        }
        if o.base_ejection_time.0.is_zero() || o.base_ejection_time > o.max_ejection_time {
            errs.push(
                format!("{at}.base_ejection_time"),
                "must be more than zero and at most `max_ejection_time`",
            );
        }
        if o.max_ejection_percent > 100 {
            errs.push(format!("{at}.max_ejection_percent"), "must be at most 100");
        }
    }
    if cluster.panic_threshold > 100 {
        errs.push(format!("{at}.panic_threshold"), "must be at most 100");
    }
    if cluster.circuit_breakers.max_requests == 0 {
        errs.push(
            format!("{at}.circuit_breakers.max_requests"),
            "must be at least 1",
        );
    }
    if let Some(limits) = &cluster.endpoint_limits {
        match (limits.soft, limits.hard) {
            (Some(0), _) => errs.push(format!("{at}.endpoint_limits.soft"), "must be at least 1"),
            (_, Some(0)) => errs.push(format!("{at}.endpoint_limits.hard"), "must be at least 1"),
            (Some(soft), Some(hard)) if soft >= hard => errs.push(
                format!("{at}.endpoint_limits.soft"),
                "must be less than `hard`",
            ),
            _ => {}
        }
    }
    if cluster.circuit_breakers.max_connections == 0 {
        errs.push(
            format!("{at}.circuit_breakers.max_connections"),
            "must be at least 1",
        );
    }
    let budget = &cluster.retry_budget;
    if !(0.0..=1.0).contains(&budget.ratio) {
        errs.push(
            format!("{at}.retry_budget.ratio"),
            "must be between 0 and 1",
        );
    }
    if budget.min_per_second > 10_000 {
        errs.push(
            format!("{at}.retry_budget.min_per_second"),
            "must be at most 10000",
        );
    }
}

fn validate_health_check(errs: &mut ValidationErrors, at: &str, check: &HealthCheckConfig) {
    match (&check.http, &check.tcp) {
        (Some(http), None) => check_path(errs, format!("{at}.http.path"), &http.path),
        (None, Some(_)) => {}
        _ => errs.push(at.to_owned(), "give exactly one of `http` or `tcp`"),
    }
    if check.interval.0 < Duration::from_millis(10) {
        errs.push(format!("{at}.interval"), "must be at least 10ms");
    }
    if check.timeout.0.is_zero() || check.timeout > check.interval {
        errs.push(
            format!("{at}.timeout"),
            "must be more than zero and at most `interval`",
        );
    }
    for (name, value) in [
        ("healthy_threshold", check.healthy_threshold),
        ("unhealthy_threshold", check.unhealthy_threshold),
    ] {
        if !(1..=100).contains(&value) {
            errs.push(format!("{at}.{name}"), "must be between 1 and 100");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
listeners:
  - name: public
    address: 127.0.0.1:8080
    virtual_hosts:
      - name: shop
        domains: ["shop.example.com", "*.shop.example.com"]
        routes:
          - match: {prefix: /api, headers: [{name: x-canary, exact: "1"}]}
            weighted_clusters: [{name: api, weight: 90}, {name: api-v2, weight: 10}]
            prefix_rewrite: /
          - cluster: web
clusters:
  - name: api
    endpoints: [{address: "127.0.0.1:9000"}, {address: "127.0.0.1:9001", priority: 1}]
  - name: api-v2
    lb: ring_hash
    hash_on: {cookie: session}
    endpoints: [{address: "127.0.0.1:9002", weight: 3}]
  - name: web
    lb: round_robin
    endpoints: [{address: "127.0.0.1:9003"}]
"#;

    #[test]
    fn a_full_config_parses_with_defaults() {
        let config = parse_config(VALID).unwrap();
        let route = &config.listeners[0].virtual_hosts[0].routes[1];
        assert_eq!(route.timeout.0, Duration::from_secs(15));
        assert_eq!(config.clusters[0].lb, LbPolicy::P2cEwma);
        assert_eq!(config.clusters[0].endpoints[0].weight, 1);
        assert_eq!(config.limits.max_header_bytes, 64 * 1024);
    }

    #[test]
    fn every_problem_names_its_field() {
        let text = VALID
            .replace("127.0.0.1:8080", "nowhere")
            .replace("name: api-v2, weight: 10", "name: ghost, weight: 0")
            .replace("hash_on: {cookie: session}", "hash_on: {}")
            .replace("prefix: /api,", "prefix: api,");
        let err = parse_config(&text).unwrap_err();
        let fields: Vec<&str> = err.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "listeners[0].address",
                "listeners[0].virtual_hosts[0].routes[0].match.prefix",
                "listeners[0].virtual_hosts[0].routes[0].weighted_clusters[1].name",
                "listeners[0].virtual_hosts[0].routes[0].weighted_clusters[1].weight",
                "clusters[1].hash_on",
            ],
            "{err}"
        );
    }

    /// The fields `parse_config` names for `VALID` with `listener` added to its listener and
    /// `route` in place of its last route's target.
    fn refused(listener: &str, route: &str) -> Vec<String> {
        let text = VALID
            .replace(
                "    address: 127.0.0.1:8080",
                &format!("    address: 127.0.0.1:8080\n{listener}"),
            )
            .replace("- cluster: web", route);
        let err = parse_config(&text).unwrap_err();
        err.errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_routes_cache_is_checked_field_by_field() {
        let route = "listeners[0].virtual_hosts[0].routes[1]";
        let bad = "- {cluster: web, cache: {default_ttl: 0s, bypass: [api]}}";
        assert_eq!(
            refused("", bad),
            [
                format!("{route}.cache.default_ttl"),
                format!("{route}.cache.bypass[0]")
            ]
        );
        let good = "- {cluster: web, cache: {default_ttl: 1m, key: {headers: [x-device]}}}";
        let config = parse_config(&VALID.replace("- cluster: web", good)).unwrap();
        let cache = config.listeners[0].virtual_hosts[0].routes[1]
            .cache
            .clone()
            .unwrap();
        assert!(cache.enabled);
        assert_eq!(cache.key.headers, ["x-device"]);
    }

    #[test]
    fn tls_takes_files_or_a_source_and_a_redirect_route_nothing_else() {
        let at = "listeners[0]";
        let route = "listeners[0].virtual_hosts[0].routes[1]";
        let both = "    tls: {source: edge, cert_file: a.pem, key_file: b.pem}";
        assert_eq!(
            refused(both, "- cluster: web"),
            [format!("{at}.tls.source")]
        );
        assert_eq!(
            refused("    tls: {}", "- cluster: web"),
            [format!("{at}.tls.cert_file")]
        );
        let half = "    tls: {cert_file: a.pem}";
        assert_eq!(
            refused(half, "- cluster: web"),
            [format!("{at}.tls.key_file")]
        );
        let mixed = "- {cluster: web, https_redirect: {}}";
        assert_eq!(refused("", mixed), [format!("{route}.https_redirect")]);
        let port = "- https_redirect: {port: 0}";
        assert_eq!(refused("", port), [format!("{route}.https_redirect.port")]);
        let text = VALID
            .replace("- cluster: web", "- https_redirect: {}")
            .replace(
                "    address: 127.0.0.1:8080",
                "    address: 127.0.0.1:8080\n    tls: {source: edge}",
            );
        let config = parse_config(&text).unwrap();
        let redirect = config.listeners[0].virtual_hosts[0].routes[1].https_redirect;
        assert_eq!(redirect, Some(HttpsRedirect { port: 443 }));
    }

    #[test]
    fn problems_of_the_whole_document_name_a_field() {
        let err = parse_config("clusters: []").unwrap_err();
        assert_eq!(err.errors[0].field, "listeners", "{err}");
        let err = parse_config("[1, 2]").unwrap_err();
        assert_eq!(err.errors[0].field, "config", "{err}");
        let err = parse_config("listeners: []\n? \n").unwrap_err();
        assert_eq!(err.errors[0].field, "config", "{err}");
    }

    #[test]
    fn bad_client_limits_name_their_field() {
        let text = format!(
            "{VALID}limits: {{send_timeout: 0s, max_tls_handshakes_per_ip: 0, http2: \
             {{max_send_buffer_bytes: 10, initial_stream_window_bytes: 100, keep_alive_interval: 25h}}}}\n"
        );
        let err = parse_config(&text).unwrap_err();
        let mut fields: Vec<&str> = err.errors.iter().map(|e| e.field.as_str()).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "limits.http2.initial_stream_window_bytes",
                "limits.http2.keep_alive_interval",
                "limits.http2.max_send_buffer_bytes",
                "limits.max_tls_handshakes_per_ip",
                "limits.send_timeout",
            ],
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_path() {
        let err =
            parse_config(&VALID.replace("lb: round_robin", "lb: round_robin\n    colour: red"))
                .unwrap_err();
        assert_eq!(err.errors[0].field, "clusters[2].colour");
    }
}
