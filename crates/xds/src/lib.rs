//! Meridian's xDS: the protocol that carries configuration from control planes to proxies,
//! Envoy and proxyless gRPC clients.
//!
//! It holds a [`Cache`] of resources with per-resource versions, serves it over ADS in both
//! flavours (state of the world and delta, v3) with per-stream subscriptions, ACK/NACK
//! tracking and metrics, and renders a region's services and endpoints into standard Listener,
//! RouteConfiguration, Cluster and ClusterLoadAssignment resources ([`render`]). It knows nothing
//! of stores or HTTP APIs: whoever owns the state feeds the cache; an update wakes only the
//! streams subscribed to what changed. Its delta client ([`run_delta_client`]) is what
//! Meridian's proxies and agents subscribe with.

mod cache;
mod client;
mod delta;
pub mod logs;
pub mod meridian;
mod metrics;
mod node;
pub mod render;
mod server;
mod service;
mod sotw;
mod stream;
mod unary;

pub use cache::{Cache, Delivery, Dirty, Subscriber, Tally, Update, Versioned};
pub use client::{
    apply_delta, connect, kept_alive_channel, run_delta_client, servers, Applied, Changes,
    ClientOptions, Handler, Held, Interest, Interests, Resources,
};
pub use metrics::XdsMetrics;
pub use node::{
    node_namespace, region_namespace, role_namespace, tenant_namespace, Grant, Scope,
    PROXY_NAMESPACE,
};
pub use server::{listen, AdsServer, Limits};
pub use service::AdsService;
pub use unary::UnaryClient;

/// Type URL of a Listener.
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of a RouteConfiguration.
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// Type URL of a Cluster.
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of a ClusterLoadAssignment.
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// A short, bounded label for a type URL in metrics (`other` for types Meridian does not serve).
pub(crate) fn type_label(type_url: &str) -> &'static str {
    match type_url {
        LISTENER => "listener",
        ROUTE => "route",
        CLUSTER => "cluster",
        ENDPOINT => "endpoint",
        meridian::ASSIGNMENT => "assignment",
        meridian::SERVICE => "service",
        meridian::REGIONAL_DEPLOYMENT => "regional_deployment",
        meridian::REGION_SUMMARY => "region_summary",
        meridian::REGION_SERVICE => "region_service",
        meridian::ACME_CHALLENGE => "acme_challenge",
        meridian::SECRET => "secret",
        meridian::CACHE_PURGE => "cache_purge",
        _ => "other",
    }
}

/// Whether the server keeps subscriptions for `type_url`: the four standard types and
/// Meridian's own. A request for any other type gets an empty answer and leaves no state
/// behind, so a client cannot grow the server's memory by inventing type URLs.
pub(crate) fn served(type_url: &str) -> bool {
    type_label(type_url) != "other"
}

/// Whether a request for `type_url` with no names means "everything" (Listener and Cluster: the
/// xDS rule for legacy wildcard subscriptions).
pub fn wildcard_by_default(type_url: &str) -> bool {
    type_url == LISTENER || type_url == CLUSTER
}
