//! Meridian's edge: a public listener that routes each host name to the gateway of the nearest
//! region where the service has healthy instances, failing over to the next region by distance.
//! It listens in plain HTTP and, given an address, in HTTPS (HTTP/1.1 and HTTP/2) with the
//! certificates the global control plane sends it as xDS secrets, picked by SNI, answers the
//! ACME challenges that plane holds, and shares session ticket keys with the other edges; it
//! follows every region's summary on the global control plane's xDS (mutual TLS with its own
//! certificate). It caches what the services' policies allow, and applies the purges the
//! global control plane sends every edge. With anycast addresses, it has its local BIRD
//! announce them over BGP while it is healthy, and withdraws them before it stops ([`anycast`],
//! [`stop`]).
//!
//! It must not keep state the global control plane cannot give again: it rebuilds its
//! configuration from what it reads, and keeps serving its last one while it cannot read.

pub mod anycast;
mod certificates;
mod challenges;
mod follow;
mod purges;
pub mod report;
mod selection;
pub mod stop;
mod tickets;
mod tls;

pub use follow::{run_edge, EdgeOptions, Follower};
pub use selection::{
    edge_config, HttpsListener, Listeners, Location, RegionView, CERTIFICATE_SOURCE,
};
