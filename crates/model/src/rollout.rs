//! A service's rollout in one region, as the region's control plane reports it upward: which
//! version replaces which, how far it went, and why it failed when a gate failed.
//!
//! The region decides the phases; the global control plane (waves, history, the CLI) reads
//! them. Times are Unix milliseconds, as the region's clock saw them.

use serde::{Deserialize, Serialize};

use crate::analysis::AnalysisFigures;
use crate::deploy::Strategy;

/// A service's rollout in a region: the last one, kept after it ended (succeeded or rolled
/// back) until the next one starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutStatus {
    /// The version rolled out (the regional deployment's version).
    pub version: u64,
    /// The version it replaces, to which the region returns when a gate fails.
    pub previous: u64,
    /// The deploy strategy.
    pub strategy: Strategy,
    /// Where it is.
    pub phase: RolloutPhase,
    /// The step under way, from 0 (a canary's step; 0 for the other strategies).
    #[serde(default)]
    pub step: u32,
    /// How many steps there are (a canary's; 1 for the other strategies).
    #[serde(default = "one")]
    pub steps: u32,
    /// The share of requests each version gets, when the proxies split them by weight
    /// (a canary); empty when requests follow the instances in service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<VersionWeight>,
    /// When it started, in Unix milliseconds.
    pub started_at: u64,
    /// When its phase last changed, in Unix milliseconds.
    pub updated_at: u64,
    /// The gate that failed and its figures (with `failed` and `rolled_back`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<GateFailure>,
    /// How long it was held by pauses that ended, in milliseconds (not counted against
    /// `deploy.progress_deadline`; a pause under way counts from `updated_at`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub paused_ms: u64,
    /// Whether it was promoted (`meridian rollout promote`): the canary's remaining steps
    /// and pauses were skipped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promoted: bool,
    /// The last figures of the metric gates (`deploy.analysis`): each version's requests,
    /// success rate and p99 over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisFigures>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn one() -> u32 {
    1
}

/// One region's rollout of one version of a service, as the global control plane recorded it
/// from the region's reports: an entry of the service's rollout history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutRecord {
    /// The region.
    pub region: String,
    /// The rollout as the region last reported it.
    pub rollout: RolloutStatus,
    /// What happened to it, oldest first, as the region's reports said it: each change of
    /// phase, step or split (at most [`RolloutEvent::KEPT`]; a region reports on change and at
    /// least every few seconds, so steps shorter than that may be seen together).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<RolloutEvent>,
}

/// A change in a region's rollout: its phase, step or split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutEvent {
    /// When, in Unix milliseconds, by the region's clock (the rollout's `updated_at`).
    pub at: u64,
    /// The phase it entered or was in.
    pub phase: RolloutPhase,
    /// The step under way.
    pub step: u32,
    /// The split of requests then (a canary's), empty when requests follow the instances.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<VersionWeight>,
    /// For a failed gate, its words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl RolloutEvent {
    /// How many events a record keeps (the first ones and the last ones, when there are more).
    pub const KEPT: usize = 64;

    /// The event that `now` is after `before` (the rollout as last recorded), if its phase,
    /// step or split changed (or it is new).
    pub fn between(before: Option<&RolloutStatus>, now: &RolloutStatus) -> Option<RolloutEvent> {
        let same = before
            .is_some_and(|b| (b.phase, b.step, &b.weights) == (now.phase, now.step, &now.weights));
        (!same).then(|| RolloutEvent {
            at: now.updated_at,
            phase: now.phase,
            step: now.step,
            weights: now.weights.clone(),
            reason: now
                .failure
                .as_ref()
                .filter(|_| now.phase.failed())
                .map(|f| f.reason.clone()),
        })
    }

    /// Appends `event` to `events`, keeping the first half of [`RolloutEvent::KEPT`] and the
    /// latest ones.
    pub fn append(events: &mut Vec<RolloutEvent>, event: RolloutEvent) {
        if events.len() >= Self::KEPT {
            events.remove(Self::KEPT / 2);
        }
        events.push(event);
    }
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RolloutPhase {
    /// New instances start and take over as the gates pass.
    Progressing,
    /// Held where it is until resumed.
    Paused,
    /// Only the new version is in service, as many ready instances as wanted.
    Succeeded,
    /// A gate failed: the region is returning to the previous version (its instances start
    /// again as needed, the new ones drain).
    Failed,
    /// Back on the previous version: no instance of the new one is in service.
    RolledBack,
}

impl RolloutPhase {
    /// Whether the rollout is over (succeeded or rolled back).
    pub fn ended(self) -> bool {
        matches!(self, RolloutPhase::Succeeded | RolloutPhase::RolledBack)
    }

    /// Whether it is under way: progressing, or paused (its gates keep watching).
    pub fn under_way(self) -> bool {
        matches!(self, RolloutPhase::Progressing | RolloutPhase::Paused)
    }

    /// Whether a gate failed (the region runs, or returns to, the previous version).
    pub fn failed(self) -> bool {
        matches!(self, RolloutPhase::Failed | RolloutPhase::RolledBack)
    }
}

/// What a person asked of the rollout of one version of a service (`meridian rollout pause`,
/// `promote`): the global control plane keeps it and carries it to every region with the
/// service's regional deployment; it concerns that version only, and `resume` removes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutControl {
    /// The version whose rollout it concerns.
    pub version: u64,
    /// What is asked.
    pub mode: RolloutMode,
}

/// What a [`RolloutControl`] asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RolloutMode {
    /// Hold the rollout where it is: no instance replaced, no canary step taken, no wave
    /// released; the gates keep watching.
    Paused,
    /// Skip the remaining canary steps and pauses: the new version takes every request as
    /// soon as its set is ready.
    Promoted,
}

/// The share of requests one version gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VersionWeight {
    /// The deployment version.
    pub version: u64,
    /// Its share, in percent (the shares add up to 100).
    pub weight: u32,
}

/// The gate a rollout failed, and the figures it failed on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GateFailure {
    /// The gate.
    pub gate: Gate,
    /// The new version's instance that failed it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The figure measured, in the gate's unit (see [`Gate`]).
    pub observed: u64,
    /// The limit it crossed, in the same unit.
    pub limit: u64,
    /// What a person reads: the gate, the instance, the figures and the agent's words.
    pub reason: String,
    /// When the gate failed, in Unix milliseconds (the rollout's `updated_at` then moves on
    /// when it is rolled back).
    #[serde(default)]
    pub at: u64,
}

/// A rollout's gates. Each names the unit of its figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    /// An instance of the new version failed its health checks (figures: restarts, and the
    /// restarts allowed, 0).
    HealthChecks,
    /// An instance of the new version exited or could not start (figures: restarts, and the
    /// restarts allowed, 0).
    CrashLoop,
    /// The new version was not ready in time (figures: milliseconds waited, and
    /// `deploy.progress_deadline` in milliseconds).
    ProgressDeadline,
    /// The new version's share of successful requests over the analysis window was too low
    /// (figures: basis points, 10000 = 100 %).
    SuccessRate,
    /// The new version's p99 latency over the analysis window was too high (figures:
    /// milliseconds).
    Latency,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_changes_of_phase_step_or_split_and_their_number_is_bounded() {
        let text = r#"{"version": 3, "previous": 2, "strategy": "canary",
            "phase": "progressing", "started_at": 1, "updated_at": 2}"#;
        let first: RolloutStatus = serde_json::from_str(text).unwrap();
        let event = RolloutEvent::between(None, &first).unwrap();
        assert_eq!(
            (event.phase, event.step, event.at),
            (RolloutPhase::Progressing, 0, 2)
        );
        let mut later = first.clone();
        later.updated_at = 5;
        assert_eq!(
            RolloutEvent::between(Some(&first), &later),
            None,
            "only the time moved"
        );
        later.weights = vec![VersionWeight {
            version: 3,
            weight: 5,
        }];
        assert!(
            RolloutEvent::between(Some(&first), &later).is_some(),
            "the split moved"
        );
        let mut failed = later.clone();
        failed.phase = RolloutPhase::Failed;
        failed.failure = Some(GateFailure {
            gate: Gate::SuccessRate,
            instance: None,
            observed: 9_000,
            limit: 9_900,
            reason: "90 % of requests succeeded".to_owned(),
            at: 6,
        });
        let event = RolloutEvent::between(Some(&later), &failed).unwrap();
        assert_eq!(event.reason.as_deref(), Some("90 % of requests succeeded"));

        let mut events = Vec::new();
        for at in 0..200 {
            let mut event = event.clone();
            event.at = at;
            RolloutEvent::append(&mut events, event);
        }
        assert_eq!(events.len(), RolloutEvent::KEPT);
        assert_eq!(events[0].at, 0, "the first ones stay");
        assert_eq!(events[RolloutEvent::KEPT / 2 - 1].at, 31);
        assert_eq!(events.last().unwrap().at, 199, "the last ones are kept");
    }

    #[test]
    fn a_rolled_back_rollout_reads_and_writes_its_reason() {
        let text = r#"{"version": 3, "previous": 2, "strategy": "rolling",
            "phase": "rolled_back", "started_at": 1, "updated_at": 2,
            "failure": {"gate": "crash_loop", "instance": "web-2", "observed": 1, "limit": 0,
                        "reason": "web-2 exited"}}"#;
        let status: RolloutStatus = serde_json::from_str(text).unwrap();
        assert_eq!(status.phase, RolloutPhase::RolledBack);
        assert_eq!((status.step, status.steps), (0, 1));
        assert!(status.phase.ended() && status.phase.failed());
        let failure = status.failure.as_ref().unwrap();
        assert_eq!(failure.gate, Gate::CrashLoop);
        let again: RolloutStatus =
            serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap();
        assert_eq!(again, status);
    }
}
