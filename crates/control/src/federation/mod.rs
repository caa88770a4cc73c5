//! Federation: the global control plane serves each region its regional deployments over delta
//! xDS (Meridian's `meridian.v1.RegionalDeployment` type), and every region the others'
//! summaries (`meridian.v1.RegionSummary`: where they are) and service entries
//! (`meridian.v1.RegionService`: each service's healthy instances there); each regional control
//! plane follows its share.

mod follow;
mod publish;
mod secrets;
mod summary;

pub use follow::{follow_global, keep_disk_copy};
pub use publish::{
    publish_regional_deployments, FirstLoad, LatestReport, ReportSource, PUBLISHED, REPORTED,
};

/// What the federation's tests build reports from.
#[cfg(test)]
mod fixtures {
    use meridian_model::ServiceHealth;

    /// What a region reports of acme/shop/`service` running `version`, with `healthy`
    /// instances and the healthy ones at `addresses`.
    pub(super) fn health(
        service: &str,
        version: u64,
        healthy: u32,
        addresses: &[&str],
    ) -> ServiceHealth {
        ServiceHealth {
            org: "acme".to_owned(),
            app: "shop".to_owned(),
            service: service.to_owned(),
            version,
            placed: healthy,
            healthy,
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            versions: Vec::new(),
            rollout: None,
            problems: Vec::new(),
            instances: Default::default(),
            autoscale: None,
            asleep: false,
            wake_ms: 0,
        }
    }
}
