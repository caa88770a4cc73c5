//! Meridian's control planes. The global control plane publishes each region's regional
//! deployments over delta xDS (federation). A regional control plane follows its share over
//! mutual TLS, keeps a disk copy, places instances on its nodes, issues certificates, renders
//! the region's state into xDS resources for the region's proxies, agents and gRPC clients, and
//! reports a summary upward.
//!
//! A region keeps serving its last state when the global control plane is unreachable, and
//! re-syncs when it is back. A regional control plane never writes to the global store: it reads
//! its share over xDS and reports through the API.

mod admin;
mod ca;
pub mod disk_copy;
mod elsewhere;
mod federation;
mod fleet;
mod global_api;
mod issuer;
mod known_admins;
mod own_certificate;
mod region;
mod reports;
mod tls;
mod upward;
mod vips;
mod xds_auth;

pub use admin::{admin_router, JoinTokenAdmin};
pub use ca::{regional_ca, RegionalCa, RegionalCaError};
pub use elsewhere::{RemoteRegion, RemoteService};
pub use federation::{follow_global, publish_regional_deployments, ReportSource};
pub use fleet::{Fleet, Placement, NODE_TIMEOUT};
pub use global_api::{GlobalApi, GlobalApiError};
pub use issuer::{Issuer, IssuerError};
pub use known_admins::KnownAdmins;
pub use meridian_identity::{JoinTokens, JoinTokensError};
pub use own_certificate::{issue_own_certificate, keep_own_certificate};
pub use region::{GatewayListeners, Region, ServiceId};
pub use reports::{NodeReports, RegionReports, ReportMethod, ReportService};
pub use tls::{tls_incoming, Peer, PeerStream};
pub use upward::{report_upward, REPORT_INTERVAL};
pub use vips::SavedVip;
pub use xds_auth::AuthenticatedAds;
