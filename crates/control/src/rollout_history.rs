//! The global side of rollouts: every region's rollouts go into the store's history as the
//! regions report them, and once a region has rolled back its failed rollout of a service's
//! current version, the version before it becomes current again (a rollback version, `origin:
//! rollback`), so that every region returns to it — those that took the failed version, and
//! those still waiting for their wave.
//!
//! Every replica of the global control plane gets every region's reports; only the holder of
//! the lease records them and rolls back, so that two replicas never make two rollback versions
//! of one failure. Those writes carry the holder's fence: the store refuses them once its term
//! is over, even if this replica has not noticed yet. A replica that takes the lease records
//! whatever differs from the store.

use std::collections::HashMap;
use std::sync::Arc;

use meridian_model::{RegionReport, RolloutPhase, RolloutStatus};
use meridian_store::{Fence, ServiceKey, Store, StoreError};
use tokio::sync::watch;

use crate::federation::LatestReport;
use crate::lease::LeaseState;

/// Follows the regions' reports (`latest`, woken by `changed`) into `store` while this
/// replica holds the lease (`lease`), until `changed` closes. A store failure is logged; the
/// rollouts it missed are recorded with the next report.
pub async fn record_rollouts(
    store: Arc<dyn Store>,
    latest: Box<LatestReport>,
    mut changed: watch::Receiver<u64>,
    mut lease: LeaseState,
) {
    let mut recorded: HashMap<(ServiceKey, String), RolloutStatus> = HashMap::new();
    loop {
        if let Some(fence) = lease.fence() {
            if let Err(e) = record_reported(&*store, &*latest, &mut recorded, &fence).await {
                tracing::warn!(error = %e, "recording the regions' rollouts failed; retried with the next report");
            }
        } else {
            // What another holder recorded meanwhile is not known here.
            recorded.clear();
        }
        tokio::select! {
            ended = changed.changed() => {
                if ended.is_err() {
                    return;
                }
            }
            Ok(()) = lease.changed() => {}
        }
    }
}

/// Records what the regions' last reports say of their rollouts that differs from `recorded`,
/// and rolls back services whose current version failed somewhere, as `fence`'s holder.
async fn record_reported(
    store: &dyn Store,
    latest: &LatestReport,
    recorded: &mut HashMap<(ServiceKey, String), RolloutStatus>,
    fence: &Fence,
) -> Result<(), StoreError> {
    for region in store.list_regions().await? {
        let Some((report, _)) = latest(&region.name) else {
            continue;
        };
        for (key, rollout) in rollouts_in(&report) {
            let id = (key, region.name.clone());
            if recorded.get(&id) == Some(rollout) {
                continue;
            }
            match store
                .record_rollout(&id.0, &region.name, rollout, Some(fence))
                .await
            {
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            if rollout.phase == RolloutPhase::RolledBack {
                roll_back(store, &id.0, &region.name, rollout, fence).await?;
            }
            recorded.insert(id, rollout.clone());
        }
    }
    Ok(())
}

/// The rollouts a region reports, by service.
fn rollouts_in(report: &RegionReport) -> impl Iterator<Item = (ServiceKey, &RolloutStatus)> {
    report.services.iter().filter_map(|s| {
        let key = ServiceKey {
            org: s.org.clone(),
            app: s.app.clone(),
            name: s.service.clone(),
        };
        Some((key, s.rollout.as_ref()?))
    })
}

/// Makes `rollout.previous` current again if `rollout.version` (which `region` rolled back) is
/// still the current version of `key`; a newer apply, or an earlier rollback, leaves it be.
/// Fenced by `fence`.
async fn roll_back(
    store: &dyn Store,
    key: &ServiceKey,
    region: &str,
    rollout: &RolloutStatus,
    fence: &Fence,
) -> Result<(), StoreError> {
    let current = store.get_service(key).await?;
    if current.is_none_or(|c| c.version != rollout.version) || rollout.previous == 0 {
        return Ok(());
    }
    let reason = rollout
        .failure
        .as_ref()
        .map_or("a gate failed", |f| f.reason.as_str());
    match store.rollback(key, rollout.previous, Some(fence)).await {
        Ok(deployment) => {
            tracing::warn!(service = %key, region, failed = rollout.version,
                to = rollout.previous, now = deployment.version, reason,
                "a rollout failed: the previous version is current again");
            Ok(())
        }
        Err(StoreError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}
