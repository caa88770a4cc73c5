//! Federation: the global control plane serves each region its regional deployments over delta
//! xDS (Meridian's `meridian.v1.RegionalDeployment` type), and every region the others'
//! summaries (`meridian.v1.RegionSummary`: where they are and their healthy instances); each
//! regional control plane follows its share.

mod follow;
mod publish;
mod secrets;
mod summary;

pub use follow::{follow_global, keep_disk_copy};
pub use publish::{
    publish_regional_deployments, FirstLoad, LatestReport, ReportSource, PUBLISHED, REPORTED,
};
