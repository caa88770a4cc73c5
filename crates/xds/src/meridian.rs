//! Meridian's own resource types, carried by the same delta-ADS machinery as Envoy's under
//! `type.googleapis.com/meridian.v1.*` type URLs, and the messages of the report service that
//! carries instance states upward.
//!
//! A resource's service spec travels as JSON (the documented definition format, see
//! `docs/definition.md`) inside a protobuf field, so that one schema describes it.

/// Type URL of an instance assignment, sent by a regional control plane to the agent of the
/// node that runs the instance.
pub const ASSIGNMENT: &str = "type.googleapis.com/meridian.v1.Assignment";

/// Type URL of a service as the region's agents see it: its spec and its instances in the
/// region, from which each node builds its node proxy (inbound mesh listeners with the
/// service's policy, outbound routes by name).
pub const SERVICE: &str = "type.googleapis.com/meridian.v1.Service";

/// Type URL of a regional deployment, sent by the global control plane to the control plane of
/// its region (named `<org>/<app>/<service>` there).
pub const REGIONAL_DEPLOYMENT: &str = "type.googleapis.com/meridian.v1.RegionalDeployment";

/// Type URL of a region's summary, sent by the global control plane to every regional control
/// plane and every edge (named after the region there): where the region is, whether it
/// reports and its gateway. Each service it runs is a [`REGION_SERVICE`] of its own.
pub const REGION_SUMMARY: &str = "type.googleapis.com/meridian.v1.RegionSummary";

/// Type URL of a service deployed in a region, sent with the [`REGION_SUMMARY`] resources
/// (named `<region>/<org>/<app>/<service>` there): its spec and the healthy instances there,
/// through which other regions' services and the edges reach them. One resource per service,
/// so that a change to one service sends only its own.
pub const REGION_SERVICE: &str = "type.googleapis.com/meridian.v1.RegionService";

/// The namespace of [`REGION_SUMMARY`] and [`REGION_SERVICE`] resources, shared by every
/// regional control plane and edge.
pub const REGIONS_NAMESPACE: &str = "regions/";

/// Type URL of an ACME challenge the edges must answer while the global control plane orders a
/// certificate, named `challenge/<token>` in [`EDGE_NAMESPACE`]: HTTP-01 answers
/// `GET /.well-known/acme-challenge/<token>` with the key authorization; TLS-ALPN-01 answers a
/// handshake offering ALPN `acme-tls/1` for the domain with a certificate carrying the
/// `acmeIdentifier` extension (SHA-256 of the key authorization, RFC 8737).
pub const ACME_CHALLENGE: &str = "type.googleapis.com/meridian.v1.AcmeChallenge";
/// Type URL of the secrets the global control plane sends its edges (Envoy's `Secret`):
/// `certificate/<domain>` (a `tls_certificate` with the PEM chain and key inline) for each
/// domain with a valid certificate (a wildcard domain keeps its `*.`), and
/// [`SESSION_TICKET_KEYS`] (`session_ticket_keys`, 80-byte keys, newest first: the first
/// encrypts new tickets, all decrypt).
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// Type URL of a purge of the edges' caches ([`CachePurge`]), named [`purge_name`] in
/// [`EDGE_NAMESPACE`]: the global control plane holds the newest purges
/// (`meridian_model::PURGE_HISTORY`) and every edge follows them all.
pub const CACHE_PURGE: &str = "type.googleapis.com/meridian.v1.CachePurge";
/// The name prefix of a [`CACHE_PURGE`].
pub const PURGE_PREFIX: &str = "purge/";

/// The name of the purge numbered `sequence`: [`PURGE_PREFIX`] and the number in 20 digits,
/// so that names sort as the numbers do.
pub fn purge_name(sequence: u64) -> String {
    format!("{PURGE_PREFIX}{sequence:020}")
}

/// The number of the purge named `name` ([`purge_name`]), if it is one.
pub fn purge_sequence(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PURGE_PREFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The name prefix of a domain's certificate among [`SECRET`]s.
pub const CERTIFICATE_PREFIX: &str = "certificate/";
/// The name prefix of an [`ACME_CHALLENGE`].
pub const CHALLENGE_PREFIX: &str = "challenge/";
/// The name of the [`SECRET`] holding the TLS session ticket keys every edge shares, so that a
/// client resumes its session on whichever edge it reaches.
pub const SESSION_TICKET_KEYS: &str = "session-ticket-keys";
/// The namespace of what only edges see ([`SECRET`], [`ACME_CHALLENGE`] and [`CACHE_PURGE`]
/// resources): private keys go to no other node.
pub const EDGE_NAMESPACE: &str = "edge/";
/// The namespace of [`SERVICE`] resources, shared by every agent of the region.
pub const MESH_NAMESPACE: &str = "mesh/";

/// The network service virtual IPs come from (100.112.0.0/12, part of the shared address
/// space 100.64.0.0/10 that instance networks use below 100.112.0.0): a region gives each
/// service its node proxies may reach one address, which the node's DNS answers for the
/// service's names, and which instances in network namespaces reach through their node proxy.
pub const VIP_NETWORK: std::net::Ipv4Addr = std::net::Ipv4Addr::new(100, 112, 0, 0);

/// The prefix length of [`VIP_NETWORK`].
pub const VIP_PREFIX_LEN: u8 = 12;

/// The mesh port of a service's first port on each of its instances' addresses (the node
/// proxy's inbound listener for it); the service's next ports follow.
pub const MESH_PORT_BASE: u16 = 15443;

/// The mesh port of a service's `index`-th port.
pub fn mesh_port(index: usize) -> u16 {
    MESH_PORT_BASE.saturating_add(u16::try_from(index).unwrap_or(u16::MAX))
}

/// The name of the secret that stands for a proxy's own certificate in the TLS contexts of
/// rendered clusters (an SDS secret name in Envoy's terms; Meridian's proxies use the
/// certificate they enrolled with).
pub const OWN_CERTIFICATE: &str = "default";

/// The gRPC path of the report method: an agent reports its node and instances.
pub const REPORT_PATH: &str = "/meridian.v1.Reports/Report";

/// The gRPC path of the gateway report method: a gateway reports the requests it answered to
/// its region's control plane.
pub const GATEWAY_REPORT_PATH: &str = "/meridian.v1.Reports/GatewayReport";

/// The gRPC path of the edge report method: an edge tells the global control plane where its
/// admin port serves `/metrics`, and whether it announces its anycast prefixes.
pub const EDGE_REPORT_PATH: &str = "/meridian.v1.Reports/EdgeReport";

/// Type URL of [`EndpointLimits`].
pub const ENDPOINT_LIMITS: &str = "type.googleapis.com/meridian.v1.EndpointLimits";

/// The key of a Cluster's `metadata.typed_filter_metadata` that holds its [`EndpointLimits`].
pub const ENDPOINT_LIMITS_KEY: &str = "meridian.endpoint_limits";

/// The limits of requests in flight to each endpoint of a service's cluster (its instances'
/// `scale.concurrency`), in the Cluster sent to Meridian's proxies (under
/// [`ENDPOINT_LIMITS_KEY`]); Envoy ignores it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EndpointLimits {
    /// Above this many, other endpoints are preferred; 0: none.
    #[prost(uint32, tag = "1")]
    pub soft: u32,
    /// At this many, the endpoint takes no more while another has room; 0: none.
    #[prost(uint32, tag = "2")]
    pub hard: u32,
}

/// What an edge reports to the global control plane.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EdgeReport {
    /// The edge's location (must match its certificate).
    #[prost(string, tag = "1")]
    pub location: String,
    /// Where its admin port serves `/metrics` (`ip:port`), for Prometheus discovery.
    #[prost(string, tag = "2")]
    pub metrics_address: String,
    /// Its anycast announcement, if it has anycast addresses.
    #[prost(message, optional, tag = "3")]
    pub anycast: Option<AnycastReport>,
}

/// An edge's anycast announcement ([`EdgeReport::anycast`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AnycastReport {
    /// Whether it announces its prefixes.
    #[prost(bool, tag = "1")]
    pub announced: bool,
    /// Why (a word: `healthy`, `hold_down`, `no_region`, …).
    #[prost(string, tag = "2")]
    pub reason: String,
    /// What that means at the edge, for people.
    #[prost(string, tag = "3")]
    pub detail: String,
    /// For how long it has been so, in seconds.
    #[prost(uint64, tag = "4")]
    pub since_seconds: u64,
    /// The prefixes it announces while healthy.
    #[prost(string, repeated, tag = "5")]
    pub prefixes: Vec<String>,
}

/// The gRPC path of the region report method: a regional control plane reports its region to
/// the global control plane.
pub const REGION_REPORT_PATH: &str = "/meridian.v1.Reports/RegionReport";

/// An ACME challenge for the edges ([`ACME_CHALLENGE`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AcmeChallenge {
    /// The domain being validated (no wildcard).
    #[prost(string, tag = "1")]
    pub domain: String,
    /// `http-01` or `tls-alpn-01`.
    #[prost(string, tag = "2")]
    pub kind: String,
    /// The challenge's token (the last path segment of an HTTP-01 request).
    #[prost(string, tag = "3")]
    pub token: String,
    /// The key authorization (`<token>.<account key thumbprint>`).
    #[prost(string, tag = "4")]
    pub key_authorization: String,
}

/// A purge of the edges' caches ([`CACHE_PURGE`]): exactly one of `url`, `tag` and `all`, of
/// the responses an edge stored for hosts the app's domains cover (as the edge knows them from
/// the region summaries).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CachePurge {
    /// Its number: 1, 2, 3, … without gaps across the installation (its name says it too).
    #[prost(uint64, tag = "1")]
    pub sequence: u64,
    /// The org of the app whose responses it removes.
    #[prost(string, tag = "2")]
    pub org: String,
    /// The app.
    #[prost(string, tag = "3")]
    pub app: String,
    /// Remove the responses stored for this absolute URL (under either scheme).
    #[prost(string, tag = "4")]
    pub url: String,
    /// Remove the responses of the app its origin tagged so.
    #[prost(string, tag = "5")]
    pub tag: String,
    /// Remove every response of the app.
    #[prost(bool, tag = "6")]
    pub all: bool,
}

/// What a regional control plane reports upward.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UpwardReport {
    /// The region (must match the reporter's certificate).
    #[prost(string, tag = "1")]
    pub region: String,
    /// The region's report (nodes, capacity, gateway, services' health), JSON.
    #[prost(bytes = "vec", tag = "2")]
    pub report_json: Vec<u8>,
    /// The windows of request figures completed since the last report that got through
    /// (`[meridian_model::TrafficWindow]`), JSON; empty when none.
    #[prost(bytes = "vec", tag = "3")]
    pub traffic_json: Vec<u8>,
    /// Where the region's components serve `/metrics`
    /// (`[meridian_model::MetricsTarget]`), JSON; empty from an older region.
    #[prost(bytes = "vec", tag = "4")]
    pub targets_json: Vec<u8>,
}

/// One instance a node must run.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Assignment {
    /// The instance's id, unique in the region: `<service>-<app>-<org>-<n>`.
    #[prost(string, tag = "1")]
    pub instance: String,
    /// Owning org.
    #[prost(string, tag = "2")]
    pub org: String,
    /// Owning app.
    #[prost(string, tag = "3")]
    pub app: String,
    /// The service.
    #[prost(string, tag = "4")]
    pub service: String,
    /// The deployment version the spec comes from.
    #[prost(uint64, tag = "5")]
    pub version: u64,
    /// The regional service spec, JSON.
    #[prost(bytes = "vec", tag = "6")]
    pub spec_json: Vec<u8>,
    /// The values of the secrets the spec's environment references (the agent resolves them
    /// into the instance's environment at start).
    #[prost(message, repeated, tag = "7")]
    pub secrets: Vec<SecretValue>,
}

/// The value of one secret (an app's or an org's), as the global control plane sends it to the regions
/// whose services reference it, and a region to the agents that run their instances (over
/// the same mutual-TLS streams). Its `Debug` shows the name and version, never the value.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct SecretValue {
    /// The secret's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its version (as in the spec's `secrets`).
    #[prost(uint64, tag = "2")]
    pub version: u64,
    /// Its value.
    #[prost(string, tag = "3")]
    pub value: String,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// A service's deployment in one region, with the endpoints registered for it there through
/// the API.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RegionalDeployment {
    /// The regional deployment (the definition with the region's overrides applied), JSON.
    #[prost(bytes = "vec", tag = "1")]
    pub deployment_json: Vec<u8>,
    /// The endpoints registered in the region, a JSON array.
    #[prost(bytes = "vec", tag = "2")]
    pub endpoints_json: Vec<u8>,
    /// The pause or promotion of the service's rollout (`meridian_model::RolloutControl`),
    /// JSON; empty when none was asked.
    #[prost(bytes = "vec", tag = "3")]
    pub control_json: Vec<u8>,
    /// The values of the secrets the deployment's environment references, at the versions
    /// its spec's `secrets` names. The region keeps them in memory only.
    #[prost(message, repeated, tag = "4")]
    pub secrets: Vec<SecretValue>,
}

/// A region as every regional control plane sees it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RegionSummary {
    /// The region's latitude, degrees.
    #[prost(double, tag = "1")]
    pub lat: f64,
    /// The region's longitude, degrees.
    #[prost(double, tag = "2")]
    pub lon: f64,
    // Tag 3 listed the services deployed there, which are [`RegionService`] resources now.
    /// Whether the region reported lately (if not, nothing of it is known to be healthy).
    #[prost(bool, tag = "4")]
    pub reported: bool,
    /// Where its gateway listens (`ip:port`), empty if it has none.
    #[prost(string, tag = "5")]
    pub gateway: String,
}

/// A service deployed in a region (a [`REGION_SERVICE`] resource).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RegionService {
    /// Owning org.
    #[prost(string, tag = "1")]
    pub org: String,
    /// Owning app.
    #[prost(string, tag = "2")]
    pub app: String,
    /// The service.
    #[prost(string, tag = "3")]
    pub service: String,
    /// The deployment version of its spec.
    #[prost(uint64, tag = "4")]
    pub version: u64,
    /// Its spec in that region, JSON (ports, mesh policy).
    #[prost(bytes = "vec", tag = "5")]
    pub spec_json: Vec<u8>,
    /// The addresses of its healthy instances there, as the region last reported them (its
    /// node proxies' mesh listeners are there).
    #[prost(string, repeated, tag = "6")]
    pub addresses: Vec<String>,
    /// How many of its instances there are healthy (agent-run or registered).
    #[prost(uint32, tag = "7")]
    pub healthy: u32,
    /// Whether all of its instances there sleep (a request waits for a wake).
    #[prost(bool, tag = "8")]
    pub asleep: bool,
    /// The longest of its instances' last wakes there, in milliseconds (0: none measured).
    #[prost(uint32, tag = "9")]
    pub wake_ms: u32,
}

/// A service in the region, for node proxies.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Service {
    /// Owning org.
    #[prost(string, tag = "1")]
    pub org: String,
    /// Owning app.
    #[prost(string, tag = "2")]
    pub app: String,
    /// The service.
    #[prost(string, tag = "3")]
    pub service: String,
    /// The deployment version of its spec.
    #[prost(uint64, tag = "4")]
    pub version: u64,
    /// The regional service spec, JSON (ports, mesh policy).
    #[prost(bytes = "vec", tag = "5")]
    pub spec_json: Vec<u8>,
    /// Its instances in the region.
    #[prost(message, repeated, tag = "6")]
    pub instances: Vec<ServiceInstance>,
    /// Its virtual IP in the region (in [`VIP_NETWORK`]), empty if it has none.
    #[prost(string, tag = "7")]
    pub vip: String,
    /// While a canary splits requests: the percent of them (1–99) that its new set (the
    /// instances marked [`ServiceInstance::canary`]) gets, the others the rest; 0 otherwise.
    #[prost(uint32, tag = "8")]
    pub canary_weight: u32,
}

/// One instance of a [`Service`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServiceInstance {
    /// Its id.
    #[prost(string, tag = "1")]
    pub instance: String,
    /// Its address (its node proxy's mesh listeners are there too).
    #[prost(string, tag = "2")]
    pub address: String,
    /// Whether it is healthy.
    #[prost(bool, tag = "3")]
    pub healthy: bool,
    /// Its region.
    #[prost(string, tag = "4")]
    pub region: String,
    /// How near it is: 0 in the node's region, then 1, 2, … for other regions by distance.
    /// Calls go to the nearest priority with healthy instances.
    #[prost(uint32, tag = "5")]
    pub priority: u32,
    /// Whether it belongs to the new set of a canary that splits requests (see
    /// [`Service::canary_weight`]).
    #[prost(bool, tag = "6")]
    pub canary: bool,
}

/// What an agent reports: its node, and the state of each instance it runs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeReport {
    /// The node's name (must match the agent's certificate).
    #[prost(string, tag = "1")]
    pub node: String,
    /// How many instances the node may run.
    #[prost(uint32, tag = "2")]
    pub capacity: u32,
    /// The instances it runs.
    #[prost(message, repeated, tag = "3")]
    pub instances: Vec<InstanceReport>,
    /// The CPU it offers its instances, in thousandths of a core (0: not said, by an older
    /// agent: not counted).
    #[prost(uint64, tag = "4")]
    pub cpu_millis: u64,
    /// The memory it offers its instances, in bytes (0: not said: not counted).
    #[prost(uint64, tag = "5")]
    pub memory_bytes: u64,
    /// Where the agent's admin port serves `/metrics` (its node proxy's with its own),
    /// `ip:port`, for Prometheus discovery; empty when not said.
    #[prost(string, tag = "6")]
    pub metrics_address: String,
}

/// The state of one instance.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InstanceReport {
    /// The instance's id, as assigned.
    #[prost(string, tag = "1")]
    pub instance: String,
    /// `starting`, `healthy`, `unhealthy`, `failed` (past its restart limit) or `stopped`.
    #[prost(string, tag = "2")]
    pub state: String,
    /// The address it listens on (the agent gives each instance one of its own).
    #[prost(string, tag = "3")]
    pub address: String,
    /// How often it was restarted.
    #[prost(uint32, tag = "4")]
    pub restarts: u32,
    /// A short human-readable reason for the state.
    #[prost(string, tag = "5")]
    pub detail: String,
    /// Owning org of its service (so that a restarted control plane can adopt it).
    #[prost(string, tag = "6")]
    pub org: String,
    /// Owning app.
    #[prost(string, tag = "7")]
    pub app: String,
    /// The service.
    #[prost(string, tag = "8")]
    pub service: String,
    /// The deployment version of the spec it runs (0: not said, by an older agent), so that a
    /// restarted control plane adopts it as that version.
    #[prost(uint64, tag = "9")]
    pub version: u64,
    /// The requests its node proxy answered for it since its inbound listeners were first
    /// configured (none from an older agent, or before any).
    #[prost(message, optional, tag = "10")]
    pub traffic: Option<Traffic>,
    /// What its current run used, from its cgroup (none from an older agent, or where the
    /// agent runs instances without cgroups).
    #[prost(message, optional, tag = "11")]
    pub usage: Option<Usage>,
    /// How long its last wake from sleep took, in microseconds (from the first request held
    /// to its gate open; 0: it has not woken, or does not sleep).
    #[prost(uint64, tag = "12")]
    pub wake_micros: u64,
}

/// What an instance's current run used, from its cgroup.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Usage {
    /// CPU time used so far (cumulative), in microseconds.
    #[prost(uint64, tag = "1")]
    pub cpu_micros: u64,
    /// Memory in use now, in bytes.
    #[prost(uint64, tag = "2")]
    pub memory_bytes: u64,
}

/// The bounds of the latency buckets of [`Traffic`], in milliseconds, ascending; a last
/// bucket holds what is slower than the last bound. Agents and control planes share them.
pub use meridian_model::LATENCY_BOUNDS_MS;

/// Cumulative figures of the requests a node proxy answered for one instance (every port):
/// each only grows while the instance runs on the node.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Traffic {
    /// Requests answered.
    #[prost(uint64, tag = "1")]
    pub requests: u64,
    /// Of which failed: answered 5xx by the instance, or by the proxy when the instance could
    /// not be reached or did not answer in time.
    #[prost(uint64, tag = "2")]
    pub failures: u64,
    /// Requests by time from request head to response head: one count per bucket of
    /// [`LATENCY_BOUNDS_MS`] (a request of exactly a bound counts in its bucket), then one for
    /// the slower ones.
    #[prost(uint64, repeated, tag = "3")]
    pub latency_buckets: Vec<u64>,
    /// Requests answered by status class: 1xx, 2xx, 3xx, 4xx, 5xx (empty from an older
    /// proxy).
    #[prost(uint64, repeated, tag = "4")]
    pub by_class: Vec<u64>,
    /// Client connections open now (on an instance's inbound listeners; 0 for a cluster).
    #[prost(uint64, tag = "5")]
    pub open_connections: u64,
    /// When these counts started, in milliseconds since the Unix epoch (0: not said): a
    /// control plane that starts later counts from its first look, not from zero.
    #[prost(uint64, tag = "6")]
    pub started_ms: u64,
    /// Requests in flight now: received, their answer's head not yet sent (0 from an older
    /// proxy, and for a cluster).
    #[prost(uint64, tag = "7")]
    pub in_flight: u64,
    /// Request-microseconds in flight so far (the integral over time of `in_flight`): its
    /// growth over a span divided by the span is the average count in flight over it (0
    /// from an older proxy, and for a cluster).
    #[prost(uint64, tag = "8")]
    pub busy_micros: u64,
}

/// What a gateway reports to its region's control plane: the requests it answered per
/// cluster (`<org>/<app>/<service>:<port>`, with `/canary` for a canary's new set).
#[derive(Clone, PartialEq, prost::Message)]
pub struct GatewayReport {
    /// The gateway's node id.
    #[prost(string, tag = "1")]
    pub node: String,
    /// Identifies this run of the gateway (two gateways may share a node id; a restarted one
    /// counts anew).
    #[prost(string, tag = "2")]
    pub run: String,
    /// Where its admin port serves `/metrics` (`ip:port`), for Prometheus discovery.
    #[prost(string, tag = "3")]
    pub metrics_address: String,
    /// Its cumulative figures, per cluster.
    #[prost(message, repeated, tag = "4")]
    pub clusters: Vec<ClusterTraffic>,
}

/// One cluster's figures in a [`GatewayReport`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClusterTraffic {
    /// The cluster's name.
    #[prost(string, tag = "1")]
    pub cluster: String,
    /// Its cumulative figures.
    #[prost(message, optional, tag = "2")]
    pub traffic: Option<Traffic>,
}

/// The answer to a report.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReportAck {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_names_sort_as_their_numbers_and_give_them_back() {
        let names: Vec<String> = [9, 10, 1, u64::MAX].map(purge_name).into();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, [1, 9, 10, u64::MAX].map(purge_name));
        for (name, sequence) in names.iter().zip([9, 10, 1, u64::MAX]) {
            assert_eq!(purge_sequence(name), Some(sequence));
        }
        for bad in [
            "purge/1",
            "purge/0000000000000000000x",
            "challenge/00000000000000000001",
        ] {
            assert_eq!(purge_sequence(bad), None, "{bad}");
        }
    }
}
