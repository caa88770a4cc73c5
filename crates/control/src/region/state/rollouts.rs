//! The region's side of its services' rollouts: gates looked at as agents report and every
//! tick, rollouts ended as the instances in service say, and each change told to the report
//! upward and to the disk copy.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meridian_model::RolloutControl;

use crate::region::ServiceId;
use crate::rollout::gates::Observed;
use crate::rollout::progress::Plan;

use super::RegionState;

impl RegionState {
    /// Looks at the gates of the rollouts of `services` (whose instances were reported);
    /// returns the services whose rollout failed now (they run the previous version again).
    pub(super) fn gate_rollouts<'a>(
        &mut self,
        services: impl IntoIterator<Item = &'a ServiceId>,
    ) -> BTreeSet<ServiceId> {
        let now_ms = unix_ms();
        let mut failed = BTreeSet::new();
        for id in services {
            let Some(plan) = self.plan(id) else {
                continue;
            };
            let mut ready = 0;
            let observed: Vec<Observed<'_>> = self
                .fleet
                .reports_of(id)
                .filter(|(_, version, _)| *version == plan.version)
                .filter_map(|(instance, _, report)| {
                    // An instance id placed again for this version may still have the report
                    // of the earlier version's instance of that id (its stop, say): not this
                    // version's state.
                    let report = report.filter(|r| r.version == 0 || r.version == plan.version)?;
                    ready += u32::from(report.state == "healthy");
                    Some(Observed {
                        id: instance,
                        state: &report.state,
                        restarts: report.restarts,
                        detail: &report.detail,
                    })
                })
                .collect();
            if self.rollouts.gate(id, plan, &observed, ready, now_ms) {
                failed.insert(id.clone());
            }
        }
        if !failed.is_empty() {
            self.rollouts_changed(&failed);
        }
        failed
    }

    /// Looks at the deadlines of the rollouts under way (every tick); returns the services
    /// whose rollout failed now.
    pub(super) fn gate_deadlines(&mut self) -> BTreeSet<ServiceId> {
        let progressing: Vec<ServiceId> = self.rollouts.progressing().cloned().collect();
        self.gate_rollouts(&progressing)
    }

    /// Moves the canaries of `services` on (see `Rollouts::advance`): the proxies' split
    /// changes, and at the last step the old set leaves.
    pub(super) fn advance_canaries(&mut self, services: &BTreeSet<ServiceId>, now: Instant) {
        let now_ms = unix_ms();
        let mut moved = BTreeSet::new();
        for id in services {
            let (Some(plan), Some(deployment)) = (self.plan(id), self.deployments.get(id)) else {
                continue;
            };
            if self.analysis_holds(id) {
                continue;
            }
            let canary = deployment.spec.deploy.canary_weights();
            let ready = self
                .fleet
                .summary(id)
                .get(&plan.version)
                .map_or(0, |(_, h)| *h);
            let ready = u32::try_from(ready).unwrap_or(u32::MAX);
            if self.rollouts.advance(id, plan, &canary, ready, now_ms) {
                moved.insert(id.clone());
            }
        }
        if moved.is_empty() {
            return;
        }
        self.rollouts_changed(&moved);
        self.place_some(&moved, now);
    }

    /// Takes what a person asked of service `id`'s rollout (pause, promote; `None`: nothing
    /// or resumed), as the global control plane says; a rollout that changed holds or moves
    /// on at once.
    pub(in crate::region) fn set_control(
        &mut self,
        id: &ServiceId,
        control: Option<RolloutControl>,
    ) {
        if !self.rollouts.set_control(id, control, unix_ms()) {
            return;
        }
        let now = Instant::now();
        let services = BTreeSet::from([id.clone()]);
        self.rollouts_changed(&services);
        self.place_some(&services, now);
        self.advance_canaries(&services, now);
    }

    /// Ends the rollouts of `services` whose instances in service say they are over.
    pub(super) fn settle_rollouts(&mut self, services: &BTreeSet<ServiceId>) {
        let now_ms = unix_ms();
        let mut ended = BTreeSet::new();
        for id in services {
            let Some(plan) = self.plan(id) else {
                continue;
            };
            if self.analysis_holds(id) {
                continue;
            }
            let in_service = self.fleet.summary(id);
            if self.rollouts.settle(id, plan, &in_service, now_ms) {
                ended.insert(id.clone());
            }
        }
        if !ended.is_empty() {
            self.rollouts_changed(&ended);
        }
    }

    /// What the rollout of service `id` goes by, if it runs here and has a rollout.
    pub(super) fn plan(&self, id: &ServiceId) -> Option<Plan> {
        self.rollouts.get(id)?;
        let deployment = self.deployments.get(id)?;
        Some(Plan {
            version: deployment.version,
            scale: deployment.spec.scale.min,
            deadline: deployment.spec.deploy.progress_deadline.0,
        })
    }

    /// The rollouts of `services` changed: the report upward and the disk copy say so.
    /// A canary's split and clusters follow its phase: the services and the gateway's
    /// routes are rendered again.
    pub(super) fn rollouts_changed(&mut self, services: &BTreeSet<ServiceId>) {
        tracing::debug!(?services, "rollouts changed");
        self.dirty.services.extend(services.iter().cloned());
        self.dirty.gateway_routes = true;
        self.report_due.notify_one();
        self.copy_due.notify_one();
    }
}

/// Now, in Unix milliseconds (rollouts' times survive a restart of the control plane).
pub(super) fn unix_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}
