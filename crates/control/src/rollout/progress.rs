//! Each service's rollout in a region, as a record the region keeps, reports upward and saves
//! in its disk copy: started when a version that changes what instances run takes over,
//! failed when a gate fails (the region then runs the previous version again), succeeded or
//! rolled back when the instances in service say so.

use std::collections::BTreeMap;
use std::time::Duration;

use meridian_model::{
    AnalysisFigures, GateFailure, RolloutControl, RolloutMode, RolloutPhase, RolloutStatus,
    Strategy, VersionWeight,
};
use serde::{Deserialize, Serialize};

use super::gates::{self, Observed};
use crate::region::ServiceId;

/// The services' rollouts, by service.
#[derive(Debug, Default)]
pub struct Rollouts {
    by_service: BTreeMap<ServiceId, RolloutStatus>,
    /// What a person asked of the services' rollouts (pause, promote), as the global control
    /// plane last said.
    controls: BTreeMap<ServiceId, RolloutControl>,
}

/// One service's rollout, as the disk copy keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedRollout {
    /// Owning org.
    pub org: String,
    /// Owning app.
    pub app: String,
    /// The service.
    pub service: String,
    /// Its rollout.
    pub status: RolloutStatus,
}

/// What the rollout of one version needs to know of its deployment.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// The version rolled out.
    pub version: u64,
    /// Instances wanted.
    pub scale: u32,
    /// How long it may take to have `scale` ready.
    pub deadline: Duration,
}

impl Rollouts {
    /// Service `id`'s rollout, if it had one.
    pub fn get(&self, id: &ServiceId) -> Option<&RolloutStatus> {
        self.by_service.get(id)
    }

    /// The version whose instances service `id` runs while its deployment is `version`: the
    /// previous one once a gate failed.
    pub fn target(&self, id: &ServiceId, version: u64) -> u64 {
        match self.by_service.get(id) {
            Some(r) if r.version == version && r.phase.failed() => r.previous,
            _ => version,
        }
    }

    /// The version the region serves steadily for service `id` when `before` is replaced: the
    /// one a failed rollout returned to, or the one an unfinished rollout started from (if
    /// `placed` says instances still run it); else `before`.
    pub fn stable(&self, id: &ServiceId, before: u64, placed: impl Fn(u64) -> bool) -> u64 {
        match self.by_service.get(id) {
            Some(r) if r.version == before && r.phase != RolloutPhase::Succeeded => {
                if placed(r.previous) {
                    r.previous
                } else {
                    before
                }
            }
            _ => before,
        }
    }

    /// The earlier version service `id`'s rollout may return to, kept while it has not
    /// succeeded.
    pub fn keeps(&self, id: &ServiceId) -> Option<u64> {
        self.by_service
            .get(id)
            .filter(|r| r.phase != RolloutPhase::Succeeded)
            .map(|r| r.previous)
    }

    /// Starts rolling service `id` out from `previous` to `version` with `strategy`; a
    /// canary goes through the weights of `canary` (see `Deploy::canary_weights`).
    pub fn start(
        &mut self,
        id: &ServiceId,
        (previous, version): (u64, u64),
        strategy: Strategy,
        canary: &[(u32, Duration)],
        now_ms: u64,
    ) {
        tracing::info!(service = ?id, previous, version, "rollout started");
        let status = RolloutStatus {
            version,
            previous,
            strategy,
            phase: RolloutPhase::Progressing,
            step: 0,
            steps: u32::try_from(canary.len()).unwrap_or(u32::MAX).max(1),
            weights: Vec::new(),
            started_at: now_ms,
            updated_at: now_ms,
            failure: None,
            paused_ms: 0,
            promoted: false,
            analysis: None,
        };
        self.by_service.insert(id.clone(), status);
        self.follow_control(id, now_ms);
    }

    /// The new version's share of requests while service `id` is at a canary step of
    /// `version` below 100 %.
    pub fn canary_weight(&self, id: &ServiceId, version: u64) -> Option<u32> {
        let r = self.by_service.get(id)?;
        if r.version != version || !r.phase.under_way() {
            return None;
        }
        let weight = r.weights.iter().find(|w| w.version == version)?.weight;
        (weight < 100).then_some(weight)
    }

    /// The version whose instances service `id` serves from a cluster of their own: a
    /// canary's new one, until it succeeded or is rolled back.
    pub fn canary_set(&self, id: &ServiceId, version: u64) -> Option<u64> {
        let r = self.by_service.get(id)?;
        let open = r.phase.under_way() || r.phase == RolloutPhase::Failed;
        (r.version == version && r.strategy == Strategy::Canary && open).then_some(version)
    }

    /// Whether service `id`'s canary of `version` holds the new set beside the old one
    /// (progressing, short of 100 %).
    pub fn holds(&self, id: &ServiceId, version: u64) -> bool {
        self.by_service.get(id).is_some_and(|r| {
            let all = r
                .weights
                .iter()
                .any(|w| w.version == version && w.weight == 100);
            r.version == version && r.strategy == Strategy::Canary && r.phase.under_way() && !all
        })
    }

    /// Moves service `id`'s canary of `plan.version` on once its new set has `ready`
    /// instances of `plan.scale`: to its first step of `canary` (the proxies then split the
    /// requests), then to the next each time the step's pause is over. Returns whether it
    /// moved.
    pub fn advance(
        &mut self,
        id: &ServiceId,
        plan: Plan,
        canary: &[(u32, Duration)],
        ready: u32,
        now_ms: u64,
    ) -> bool {
        let Some(r) = self.by_service.get_mut(id) else {
            return false;
        };
        if r.version != plan.version || r.phase != RolloutPhase::Progressing || ready < plan.scale {
            return false;
        }
        if r.promoted {
            return promote(id, r, canary, now_ms);
        }
        if r.weights.is_empty() {
            let Some((first, _)) = canary.first() else {
                return false;
            };
            r.updated_at = now_ms;
            set_weight(r, *first);
            tracing::info!(service = ?id, version = r.version, weight = first, "canary ready");
            return true;
        }
        let step = r.step as usize;
        let (Some((_, pause)), Some((next, _))) = (canary.get(step), canary.get(step + 1)) else {
            return false;
        };
        if Duration::from_millis(now_ms.saturating_sub(r.updated_at)) < *pause {
            return false;
        }
        r.step += 1;
        r.updated_at = now_ms;
        set_weight(r, *next);
        tracing::info!(service = ?id, version = r.version, weight = next, "canary step");
        true
    }

    /// Service `id`'s version `from` is now `to` (a new version that runs the same): its
    /// rollout goes on under the new number.
    pub fn relabel(&mut self, id: &ServiceId, from: u64, to: u64) {
        if let Some(r) = self.by_service.get_mut(id).filter(|r| r.version == from) {
            r.version = to;
        }
    }

    /// Forgets service `id`'s rollout.
    pub fn remove(&mut self, id: &ServiceId) {
        self.by_service.remove(id);
    }

    /// Looks at the instances in service of the version service `id` rolls out (`plan`):
    /// fails the rollout if one failed its health checks or crashed, or if `ready` of them are
    /// fewer than wanted past the deadline. Returns whether it failed now.
    pub fn gate(
        &mut self,
        id: &ServiceId,
        plan: Plan,
        instances: &[Observed<'_>],
        ready: u32,
        now_ms: u64,
    ) -> bool {
        let Some(r) = self.by_service.get_mut(id) else {
            return false;
        };
        if r.version != plan.version || !r.phase.under_way() {
            return false;
        }
        // The deadline does not run while paused.
        let waited = now_ms
            .saturating_sub(r.started_at)
            .saturating_sub(r.paused_ms);
        let waited = Duration::from_millis(waited);
        let progress = || {
            let counts = r.phase == RolloutPhase::Progressing;
            counts
                .then(|| gates::progress(waited, plan.deadline, ready, plan.scale))
                .flatten()
        };
        let failure = gates::health(instances).or_else(progress);
        let Some(failure) = failure else {
            return false;
        };
        fail(id, r, failure, now_ms);
        true
    }

    /// Ends service `id`'s rollout when the instances in service (`in_service`: placed and
    /// healthy by version) say so: succeeded when only the new version is, with `scale` ready;
    /// rolled back when none of the new version is and the previous one has `scale` ready.
    /// Returns whether the phase changed.
    pub fn settle(
        &mut self,
        id: &ServiceId,
        plan: Plan,
        in_service: &BTreeMap<u64, (usize, usize)>,
        now_ms: u64,
    ) -> bool {
        let Some(r) = self
            .by_service
            .get_mut(id)
            .filter(|r| r.version == plan.version)
        else {
            return false;
        };
        let ready = |version: u64| in_service.get(&version).map_or(0, |(_, healthy)| *healthy);
        let scale = plan.scale as usize;
        let only_new = in_service.keys().all(|v| *v == r.version);
        let phase = match r.phase {
            RolloutPhase::Progressing | RolloutPhase::Paused
                if only_new && ready(r.version) >= scale =>
            {
                RolloutPhase::Succeeded
            }
            RolloutPhase::Failed
                if !in_service.contains_key(&r.version) && ready(r.previous) >= scale =>
            {
                RolloutPhase::RolledBack
            }
            _ => return false,
        };
        tracing::info!(service = ?id, version = r.version, ?phase, "rollout ended");
        r.phase = phase;
        r.weights.clear();
        r.updated_at = now_ms;
        true
    }

    /// Fails service `id`'s rollout of `version`, if it is progressing, on `failure` (a
    /// metric gate). Returns whether it failed now.
    pub fn fail_gate(
        &mut self,
        id: &ServiceId,
        version: u64,
        failure: GateFailure,
        now_ms: u64,
    ) -> bool {
        match self.by_service.get_mut(id) {
            Some(r) if r.version == version && r.phase == RolloutPhase::Progressing => {
                fail(id, r, failure, now_ms);
                true
            }
            _ => false,
        }
    }

    /// Records the last figures of the metric gates of service `id`'s rollout of
    /// `figures`' first version, if it is progressing.
    pub fn set_analysis(&mut self, id: &ServiceId, figures: AnalysisFigures) {
        let version = figures.versions.first().map(|f| f.version);
        if let Some(r) = self
            .by_service
            .get_mut(id)
            .filter(|r| Some(r.version) == version && r.phase == RolloutPhase::Progressing)
        {
            r.analysis = Some(figures);
        }
    }

    /// The services with a rollout under way (progressing), for the deadline.
    pub fn progressing(&self) -> impl Iterator<Item = &ServiceId> + '_ {
        self.by_service
            .iter()
            .filter(|(_, r)| r.phase == RolloutPhase::Progressing)
            .map(|(id, _)| id)
    }

    /// Every rollout, for the disk copy.
    pub fn saved(&self) -> Vec<SavedRollout> {
        self.by_service
            .iter()
            .map(|((org, app, service), status)| SavedRollout {
                org: org.clone(),
                app: app.clone(),
                service: service.clone(),
                status: status.clone(),
            })
            .collect()
    }

    /// Takes back the rollouts of a disk copy.
    pub fn restore(&mut self, saved: Vec<SavedRollout>) {
        for s in saved {
            self.by_service.insert((s.org, s.app, s.service), s.status);
        }
    }
}

impl Rollouts {
    /// Takes what a person asked of service `id`'s rollout, as the global control plane
    /// says (`None`: nothing, or resumed), and applies it to the rollout of that version: a
    /// pause holds it (phase `paused`; the deadline stops, a canary's step pause counts again
    /// from the resume), a promotion skips a canary's remaining steps. Returns whether the
    /// rollout changed.
    pub fn set_control(
        &mut self,
        id: &ServiceId,
        control: Option<RolloutControl>,
        now_ms: u64,
    ) -> bool {
        match control {
            Some(control) => self.controls.insert(id.clone(), control),
            None => self.controls.remove(id),
        };
        self.follow_control(id, now_ms)
    }

    /// Whether service `id`'s rollout of `version` is paused: its instances stay as they are.
    pub fn paused(&self, id: &ServiceId, version: u64) -> bool {
        self.by_service
            .get(id)
            .is_some_and(|r| r.version == version && r.phase == RolloutPhase::Paused)
    }

    /// Puts service `id`'s rollout in the phase its control asks; returns whether it changed.
    fn follow_control(&mut self, id: &ServiceId, now_ms: u64) -> bool {
        let Some(r) = self.by_service.get_mut(id) else {
            return false;
        };
        let mode = self
            .controls
            .get(id)
            .filter(|c| c.version == r.version)
            .map(|c| c.mode);
        let before = (r.phase, r.promoted);
        if mode == Some(RolloutMode::Promoted) && r.phase.under_way() {
            r.promoted = true;
        }
        match (r.phase, mode) {
            (RolloutPhase::Progressing, Some(RolloutMode::Paused)) => {
                tracing::info!(service = ?id, version = r.version, "rollout paused");
                r.phase = RolloutPhase::Paused;
                r.updated_at = now_ms;
            }
            (RolloutPhase::Paused, mode) if mode != Some(RolloutMode::Paused) => {
                tracing::info!(service = ?id, version = r.version, "rollout resumed");
                r.paused_ms += now_ms.saturating_sub(r.updated_at);
                r.phase = RolloutPhase::Progressing;
                r.updated_at = now_ms;
            }
            _ => {}
        }
        before != (r.phase, r.promoted)
    }
}

/// Moves a promoted canary to its last step (every request to the new version) at once;
/// returns whether it moved.
fn promote(id: &ServiceId, r: &mut RolloutStatus, canary: &[(u32, Duration)], now_ms: u64) -> bool {
    let all = r
        .weights
        .iter()
        .any(|w| w.version == r.version && w.weight == 100);
    if all {
        return false;
    }
    r.step = u32::try_from(canary.len().saturating_sub(1)).unwrap_or(u32::MAX);
    r.updated_at = now_ms;
    set_weight(r, 100);
    tracing::info!(service = ?id, version = r.version, "canary promoted");
    true
}

/// The new version gets `weight` percent of the requests, the previous one the rest.
fn set_weight(r: &mut RolloutStatus, weight: u32) {
    r.weights = vec![VersionWeight {
        version: r.version,
        weight,
    }];
    if weight < 100 {
        r.weights.insert(
            0,
            VersionWeight {
                version: r.previous,
                weight: 100 - weight,
            },
        );
    }
}

fn fail(id: &ServiceId, r: &mut RolloutStatus, mut failure: GateFailure, now_ms: u64) {
    failure.at = now_ms;
    tracing::warn!(service = ?id, version = r.version, previous = r.previous, gate = ?failure.gate, reason = %failure.reason, "rollout failed; returning to the previous version");
    r.phase = RolloutPhase::Failed;
    r.weights.clear();
    r.updated_at = now_ms;
    r.failure = Some(failure);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> ServiceId {
        ("acme".to_owned(), "shop".to_owned(), "web".to_owned())
    }

    const PLAN: Plan = Plan {
        version: 2,
        scale: 2,
        deadline: Duration::from_secs(60),
    };

    /// The new version's instance, crashed.
    const CRASHED: Observed<'static> = Observed {
        id: "web-2",
        state: "unhealthy",
        restarts: 0,
        detail: "exited (exit status: 1)",
    };

    fn started() -> Rollouts {
        let mut rollouts = Rollouts::default();
        rollouts.start(&web(), (1, 2), Strategy::Rolling, &[], 1_000);
        rollouts
    }

    #[test]
    fn a_rollout_succeeds_once_only_the_new_version_serves_at_scale() {
        let mut rollouts = started();
        assert_eq!(rollouts.target(&web(), 2), 2);
        assert_eq!(rollouts.keeps(&web()), Some(1));
        let both = BTreeMap::from([(1, (1, 1)), (2, (2, 2))]);
        assert!(!rollouts.settle(&web(), PLAN, &both, 2_000));
        let starting = BTreeMap::from([(2, (2, 1))]);
        assert!(!rollouts.settle(&web(), PLAN, &starting, 2_000));
        let done = BTreeMap::from([(2, (2, 2))]);
        assert!(rollouts.settle(&web(), PLAN, &done, 3_000));
        let status = rollouts.get(&web()).unwrap();
        assert_eq!(
            (status.phase, status.updated_at),
            (RolloutPhase::Succeeded, 3_000)
        );
        assert_eq!(rollouts.keeps(&web()), None);
        // A later deploy starts from the version that succeeded.
        assert_eq!(rollouts.stable(&web(), 2, |_| true), 2);
    }

    #[test]
    fn a_failed_gate_returns_to_the_previous_version_until_no_new_instance_serves() {
        let mut rollouts = started();
        let crashed = [CRASHED];
        assert!(rollouts.gate(&web(), PLAN, &crashed, 0, 1_500));
        assert!(!rollouts.gate(&web(), PLAN, &crashed, 0, 1_600), "once");
        assert_eq!(rollouts.target(&web(), 2), 1);
        // Another version of the same service is not concerned.
        assert_eq!(rollouts.target(&web(), 3), 3);
        let status = rollouts.get(&web()).unwrap();
        assert_eq!(status.phase, RolloutPhase::Failed);
        assert_eq!(
            status.failure.as_ref().unwrap().gate,
            meridian_model::Gate::CrashLoop
        );
        let draining = BTreeMap::from([(1, (2, 2)), (2, (1, 0))]);
        assert!(!rollouts.settle(&web(), PLAN, &draining, 2_000));
        let starting = BTreeMap::from([(1, (2, 1))]);
        assert!(!rollouts.settle(&web(), PLAN, &starting, 2_000));
        let back = BTreeMap::from([(1, (2, 2))]);
        assert!(rollouts.settle(&web(), PLAN, &back, 2_000));
        assert_eq!(
            rollouts.get(&web()).unwrap().phase,
            RolloutPhase::RolledBack
        );
        assert_eq!(rollouts.target(&web(), 2), 1);
        // The next deploy starts from the version it returned to, if instances run it.
        assert_eq!(rollouts.stable(&web(), 2, |_| true), 1);
        assert_eq!(rollouts.stable(&web(), 2, |_| false), 2);
    }

    /// Asserts that web's canary of version 2 is at `step`, its last: every request to the
    /// new version, whose set no longer holds beside the old one.
    fn at_the_last_step(rollouts: &Rollouts, step: u32) {
        let status = rollouts.get(&web()).unwrap();
        assert_eq!(status.step, step);
        assert_eq!(
            status.weights,
            [VersionWeight {
                version: 2,
                weight: 100
            }]
        );
        assert!(!rollouts.holds(&web(), 2), "the last step switches");
    }

    #[test]
    fn a_canary_moves_step_by_step_once_its_set_is_ready_and_its_pause_is_over() {
        let mut rollouts = Rollouts::default();
        let second = Duration::from_secs(1);
        let steps = [(5, second), (50, Duration::ZERO), (100, Duration::ZERO)];
        rollouts.start(&web(), (1, 2), Strategy::Canary, &steps, 0);
        assert_eq!(rollouts.get(&web()).unwrap().steps, 3);
        assert_eq!(
            rollouts.canary_weight(&web(), 2),
            None,
            "no split before it is ready"
        );
        assert!(rollouts.holds(&web(), 2));
        assert!(!rollouts.advance(&web(), PLAN, &steps, 1, 500), "not ready");
        assert!(rollouts.advance(&web(), PLAN, &steps, 2, 1_000));
        assert_eq!(rollouts.canary_weight(&web(), 2), Some(5));
        assert!(rollouts.holds(&web(), 2));
        assert!(!rollouts.advance(&web(), PLAN, &steps, 2, 1_500), "paused");
        assert!(rollouts.advance(&web(), PLAN, &steps, 2, 2_000));
        assert_eq!(rollouts.canary_weight(&web(), 2), Some(50));
        assert!(rollouts.advance(&web(), PLAN, &steps, 2, 2_000));
        at_the_last_step(&rollouts, 2);
        assert!(
            !rollouts.advance(&web(), PLAN, &steps, 2, 9_000),
            "no step after"
        );
        assert_eq!(rollouts.canary_set(&web(), 2), Some(2));
        let done = BTreeMap::from([(2, (2, 2))]);
        assert!(rollouts.settle(&web(), PLAN, &done, 9_000));
        assert_eq!(rollouts.canary_set(&web(), 2), None);
    }

    #[test]
    fn a_paused_canary_holds_its_step_keeps_its_gates_and_stops_its_deadline() {
        let mut rollouts = Rollouts::default();
        let steps = [(5, Duration::from_secs(1)), (100, Duration::ZERO)];
        rollouts.start(&web(), (1, 2), Strategy::Canary, &steps, 0);
        assert!(rollouts.advance(&web(), PLAN, &steps, 2, 1_000));
        let pause = |version| RolloutControl {
            version,
            mode: RolloutMode::Paused,
        };
        // A pause of another version does not concern this rollout.
        assert!(!rollouts.set_control(&web(), Some(pause(3)), 1_500));
        assert!(rollouts.set_control(&web(), Some(pause(2)), 1_500));
        assert!(rollouts.paused(&web(), 2));
        assert_eq!(rollouts.get(&web()).unwrap().phase, RolloutPhase::Paused);
        assert!(!rollouts.set_control(&web(), Some(pause(2)), 1_600), "once");
        // Held at 5 % past the step's pause, and past the deadline.
        assert!(!rollouts.advance(&web(), PLAN, &steps, 2, 9_000));
        assert_eq!(rollouts.canary_weight(&web(), 2), Some(5));
        assert!(rollouts.holds(&web(), 2));
        assert_eq!(rollouts.progressing().count(), 0);
        assert!(!rollouts.gate(&web(), PLAN, &[], 1, 120_000), "no deadline");
        // Resumed: the step's pause counts from the resume, the deadline without the pause.
        assert!(rollouts.set_control(&web(), None, 120_000));
        let status = rollouts.get(&web()).unwrap();
        assert_eq!(
            (status.phase, status.paused_ms),
            (RolloutPhase::Progressing, 118_500)
        );
        assert!(!rollouts.advance(&web(), PLAN, &steps, 2, 120_500));
        assert!(
            !rollouts.gate(&web(), PLAN, &[], 1, 120_500),
            "60 s not spent"
        );
        assert!(rollouts.gate(&web(), PLAN, &[], 1, 178_500), "60 s spent");

        // The gates keep watching while paused.
        let mut rollouts = started();
        rollouts.set_control(&web(), Some(pause(2)), 1_000);
        let crashed = [CRASHED];
        assert!(rollouts.gate(&web(), PLAN, &crashed, 0, 1_500));
        assert_eq!(rollouts.target(&web(), 2), 1);
        assert!(!rollouts.paused(&web(), 2));
    }

    #[test]
    fn a_promoted_canary_goes_to_its_last_step_once_its_set_is_ready() {
        let mut rollouts = Rollouts::default();
        let hour = Duration::from_secs(3600);
        let steps = [(5, hour), (50, hour), (100, Duration::ZERO)];
        rollouts.start(&web(), (1, 2), Strategy::Canary, &steps, 0);
        let promote = RolloutControl {
            version: 2,
            mode: RolloutMode::Promoted,
        };
        // Promoting a paused canary resumes it.
        rollouts.set_control(
            &web(),
            Some(RolloutControl {
                mode: RolloutMode::Paused,
                ..promote
            }),
            0,
        );
        assert!(rollouts.set_control(&web(), Some(promote), 100));
        let status = rollouts.get(&web()).unwrap();
        assert!(status.promoted && status.phase == RolloutPhase::Progressing);
        assert!(!rollouts.advance(&web(), PLAN, &steps, 1, 200), "not ready");
        assert!(rollouts.advance(&web(), PLAN, &steps, 2, 300));
        at_the_last_step(&rollouts, 2);
        assert!(!rollouts.advance(&web(), PLAN, &steps, 2, 400), "once");
    }

    #[test]
    fn the_deadline_counts_from_the_start_and_survives_a_restart() {
        let mut rollouts = started();
        assert!(!rollouts.gate(&web(), PLAN, &[], 1, 60_999));
        let mut restored = Rollouts::default();
        restored.restore(rollouts.saved());
        assert!(restored.gate(&web(), PLAN, &[], 1, 61_000));
        let failure = restored.get(&web()).unwrap().failure.clone().unwrap();
        assert_eq!(failure.gate, meridian_model::Gate::ProgressDeadline);
        assert_eq!((failure.observed, failure.at), (60_000, 61_000));
    }
}
