//! Meridian's control planes. The global control plane publishes each region's regional
//! deployments over delta xDS (federation). A regional control plane follows its share over
//! mutual TLS, keeps a disk copy, places instances on its nodes, issues certificates, renders
//! the region's state into xDS resources for the region's proxies, agents and gRPC clients, and
//! reports a summary upward.
//!
//! A region keeps serving its last state when the global control plane is unreachable, and
//! re-syncs when it is back. A regional control plane never writes to the global store: it reads
//! its share over xDS and reports through the API.
//!
//! Both planes are assembled here ([`run_regional`], [`run_global`]), their tasks supervised:
//! restarted when that loses nothing, or stopping the plane with an error when not. The crate
//! does not parse command lines or print; the caller gives options and a [`Say`] for what an
//! operator should read.

mod admin;
mod autoscale;
mod ca;
mod certificates;
pub mod disk_copy;
mod elsewhere;
mod federation;
mod fleet;
mod global_api;
mod issuer;
mod known_admins;
pub mod lease;
mod logs;
mod nodes_admin;
mod own_certificate;
mod plane;
mod purges;
mod region;
mod reports;
mod rollout;
mod rollout_history;
mod room;
mod supervise;
mod tls;
mod upward;
mod vips;
mod xds_auth;

pub use admin::{admin_router, JoinTokenAdmin};
pub use ca::{regional_ca, RegionalCa, RegionalCaError};
pub use certificates::{AcmeOptions, CertificateOptions, ChallengeKind, LocalCa};
pub use elsewhere::{RemoteRegion, RemoteService};
pub use federation::{
    follow_global, keep_disk_copy, publish_regional_deployments, FirstLoad, ReportSource,
    PUBLISHED, REPORTED,
};
pub use fleet::{Desired, Fleet, Moves, Placement, NODE_TIMEOUT};
pub use global_api::{GlobalApi, GlobalApiError};
pub use issuer::{Issuer, IssuerError};
pub use known_admins::KnownAdmins;
pub use logs::{agents_of, regional_planes, GlobalLogs, RegionLogs, REGION_LOG_QUERIES};
pub use meridian_identity::{JoinTokens, JoinTokensError};
pub use own_certificate::{issue_own_certificate, keep_own_certificate};
pub use plane::{run_global, run_regional, GlobalOptions, RegionalOptions, RunError, Say};
pub use region::{GatewayListeners, NodeStatus, Region, ServiceId, UnknownNode};
pub use reports::{
    EdgeReports, GatewayReports, NodeReports, RegionRecorder, RegionReports, ReportMethod,
    ReportService,
};
pub use rollout::Bounds;
pub use supervise::TaskEnded;
pub use tls::{tls_incoming, Peer, PeerStream};
pub use upward::{report_upward, REPORT_INTERVAL};
pub use vips::SavedVip;
pub use xds_auth::AuthenticatedAds;
