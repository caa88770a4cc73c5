//! Meridian's control planes. Today: the regional control plane, which follows the global
//! control plane's API (regional deployments and endpoints, then its change feed), renders the
//! region's state into xDS resources and serves them to the region's proxies and gRPC clients.
//!
//! It keeps serving its last state when the global control plane is unreachable, and re-syncs
//! when it is back. It must not write to the global store: it only reads through the API.

mod admin;
mod ca;
mod follow;
mod region;

pub use admin::admin_router;
pub use ca::{regional_ca, RegionalCaError};
pub use follow::{follow, FollowError, GlobalApi};
pub use region::RegionState;
