//! Meridian's control planes. Today: the regional control plane, which follows the global
//! control plane's API (regional deployments and endpoints, then its change feed), renders the
//! region's state into xDS resources and serves them to the region's proxies and gRPC clients.
//!
//! It keeps serving its last state when the global control plane is unreachable, and re-syncs
//! when it is back. It must not write to the global store: it only reads through the API.

mod admin;
mod ca;
pub mod disk_copy;
mod fleet;
mod follow;
mod issuer;
mod join_tokens;
mod region;
mod reports;
mod tls;
mod upward;
mod xds_auth;

pub use admin::{admin_router, JoinTokenAdmin};
pub use ca::{regional_ca, RegionalCa, RegionalCaError};
pub use fleet::{Fleet, Placement, NODE_TIMEOUT};
pub use follow::{follow, FollowError, GlobalApi};
pub use issuer::{Issuer, IssuerError};
pub use join_tokens::{JoinTokens, JoinTokensError};
pub use region::{RegionState, ServiceId};
pub use reports::ReportService;
pub use tls::{tls_incoming, Peer, PeerStream};
pub use upward::{report_upward, REPORT_INTERVAL};
pub use xds_auth::AuthenticatedAds;
