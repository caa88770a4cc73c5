//! The region's side of autoscaling (`scale.targets`): the figures agents report for the
//! instances of autoscaled services feed each one's [`Load`]; every report and every tick,
//! each service's [`Autoscaler`] decides how many instances it wants, placement follows
//! (scale-down drains the instances it removes), each change is logged as an
//! `autoscale decision` with its inputs, and the last decision goes up in the region's report.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use meridian_model::AutoscaleStatus;
use meridian_xds::meridian::NodeReport;

use super::rollouts::unix_ms;
use super::RegionState;
use crate::autoscale::{Autoscaler, Figures, Inputs, Load, Policy};
use crate::region::ServiceId;

/// One autoscaled service's figures, decisions and last decision.
#[derive(Debug)]
pub(super) struct Scaled {
    load: Load,
    scaler: Autoscaler,
    last: Option<AutoscaleStatus>,
}

/// The autoscaled services of a region.
pub(super) type Autoscaled = BTreeMap<ServiceId, Scaled>;

impl RegionState {
    /// Keeps the figures `report`, received at `now`, carries for the instances of
    /// autoscaled services.
    pub(super) fn sample_load(&mut self, report: &NodeReport, now: Instant) {
        let mut by_service: BTreeMap<ServiceId, Vec<(&str, Figures)>> = BTreeMap::new();
        for instance in &report.instances {
            let id = (
                instance.org.clone(),
                instance.app.clone(),
                instance.service.clone(),
            );
            let traffic = instance.traffic.as_ref();
            let figures = Figures {
                in_flight: traffic.map_or(0, |t| t.in_flight),
                requests: traffic.map_or(0, |t| t.requests),
                busy_micros: traffic.map_or(0, |t| t.busy_micros),
                cpu_micros: instance.usage.map_or(0, |u| u.cpu_micros),
                memory_bytes: instance.usage.map_or(0, |u| u.memory_bytes),
            };
            by_service
                .entry(id)
                .or_default()
                .push((instance.instance.as_str(), figures));
        }
        for (id, instances) in by_service {
            let Some(scaled) = self.scaled_entry(&id) else {
                continue;
            };
            for (instance, figures) in instances {
                scaled.load.record(instance, now, figures);
            }
        }
    }

    /// Decides, at `now`, how many instances each autoscaled service wants; returns those
    /// whose count changed (to be placed again).
    pub(super) fn autoscale(&mut self, now: Instant) -> BTreeSet<ServiceId> {
        let policies: Vec<(ServiceId, Policy)> = self
            .deployments
            .iter()
            .filter_map(|(id, d)| Some((id.clone(), Policy::of(&d.spec.scale, &d.spec.resources)?)))
            .collect();
        self.autoscaled
            .retain(|id, _| policies.iter().any(|(with, _)| with == id));
        let placements: usize = self.fleet.node_list().iter().map(|(_, _, n)| n).sum();
        let capacity = self.fleet.capacity();
        let mut changed = BTreeSet::new();
        for (id, policy) in policies {
            let current: usize = self.fleet.summary(&id).values().map(|(p, _)| p).sum();
            let in_service = u32::try_from(current).unwrap_or(u32::MAX);
            let others = u32::try_from(placements.saturating_sub(current)).unwrap_or(u32::MAX);
            let Some(scaled) = self.scaled_entry(&id) else {
                continue;
            };
            let measured = scaled.load.total(&policy, now);
            let inputs = Inputs {
                load: measured.load,
                since: measured.since,
                current: in_service,
                room: capacity.saturating_sub(others),
            };
            let decision = scaled.scaler.decide(&policy, now, inputs);
            if decision.changed() {
                tracing::info!(
                    service = %format!("{}/{}/{}", id.0, id.1, id.2),
                    from = decision.previous,
                    to = decision.desired,
                    load = inputs.load,
                    current = inputs.current,
                    room = inputs.room,
                    reason = %decision.reason,
                    "autoscale decision"
                );
                changed.insert(id.clone());
            }
            scaled.last = Some(AutoscaleStatus {
                current: in_service,
                desired: decision.desired,
                reason: decision.reason,
                decided_at: unix_ms(),
            });
        }
        changed
    }

    /// The count autoscaling wants of service `id`, if it is autoscaled. Before the first
    /// placement (a control plane that restarted), as many as its agents report running,
    /// within its bounds: the first placement adopts them rather than trim them to `min`.
    pub(super) fn autoscaled_count(&self, id: &ServiceId) -> Option<u32> {
        if let Some(scaled) = self.autoscaled.get(id) {
            return Some(scaled.scaler.desired());
        }
        let spec = &self.deployments.get(id)?.spec;
        let policy = Policy::of(&spec.scale, &spec.resources)?;
        let running = u32::try_from(self.fleet.running_reported(id)).unwrap_or(u32::MAX);
        Some(running.clamp(policy.min, policy.max))
    }

    /// Service `id`'s last autoscaling decision, if it is autoscaled.
    pub(super) fn autoscale_status(&self, id: &ServiceId) -> Option<AutoscaleStatus> {
        self.autoscaled.get(id).and_then(|s| s.last.clone())
    }

    /// Service `id`'s autoscaling, made on first use; `None` unless its deployment here
    /// names a target, and before the first placement (which adopts the instances running).
    /// Its figures keep only the instances placed in service.
    fn scaled_entry(&mut self, id: &ServiceId) -> Option<&mut Scaled> {
        if !self.fleet.placed_once() {
            return None;
        }
        let spec = &self.deployments.get(id)?.spec;
        let policy = Policy::of(&spec.scale, &spec.resources)?;
        let in_service: BTreeSet<String> = self
            .fleet
            .reports_of(id)
            .map(|(instance, _, _)| instance.to_owned())
            .collect();
        let current = u32::try_from(in_service.len()).unwrap_or(u32::MAX);
        let scaled = self.autoscaled.entry(id.clone()).or_insert_with(|| Scaled {
            load: Load::default(),
            scaler: Autoscaler::new(&policy, current),
            last: None,
        });
        scaled.load.retain(|name| in_service.contains(name));
        Some(scaled)
    }
}
