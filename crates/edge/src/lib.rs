//! Meridian's edge: a public listener that routes each host name to the gateway of the nearest
//! region where the service has healthy instances, failing over to the next region by distance.
//! Today it listens in plain HTTP and follows every region's summary on the global control
//! plane's xDS (mutual TLS with its own certificate); ACME certificates, HTTP/2 to clients,
//! caching and the anycast announcement come later and only add to it.
//!
//! It must not keep state the global control plane cannot give again: it rebuilds its
//! configuration from what it reads, and keeps serving its last one while it cannot read.

mod follow;
mod selection;

pub use follow::{run_edge, EdgeOptions};
pub use selection::{edge_config, Location, RegionView};
