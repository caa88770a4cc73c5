//! The region's side of the metric gates (`deploy.analysis`): the request figures agents
//! report for the instances of services whose rollout is under way are kept over the
//! analysis window; each report judges them (a failure rolls the version back like a failed
//! health check), and a step or wave is held until a full window passed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use meridian_model::{Analysis, AnalysisFigures, Gate, GateFailure, RolloutPhase, Strategy};
use meridian_xds::meridian::NodeReport;

use super::rollouts::unix_ms;
use super::RegionState;
use crate::region::ServiceId;
use crate::rollout::analysis::{judge, Samples, Verdict};

/// How often the figures shown in a rollout's status move on while their verdict stays the
/// same.
const SHOW_EVERY_MS: u64 = 2_000;

/// The figures of one service under analysis.
#[derive(Debug, Default)]
pub(super) struct Analysed {
    samples: Samples,
    /// When the rollout's status last got its figures.
    shown_at: u64,
    /// Whether the figures it got passed.
    shown_passing: bool,
}

/// A rollout's window, judged.
struct Judged {
    figures: AnalysisFigures,
    verdict: Verdict,
    /// When the window began to count for the step: the step's start, or the new version's
    /// first request if later (none yet: `None`).
    since: Option<u64>,
}

impl RegionState {
    /// Keeps the figures `report` carries for the instances of services under analysis;
    /// returns those services.
    pub(super) fn sample_traffic(&mut self, report: &NodeReport) -> BTreeSet<ServiceId> {
        let now_ms = unix_ms();
        let mut sampled = BTreeSet::new();
        for instance in &report.instances {
            let id = (
                instance.org.clone(),
                instance.app.clone(),
                instance.service.clone(),
            );
            if self.analysis_of(&id).is_none() {
                continue;
            }
            // As placed: a version that runs like the one before takes its instances over.
            let key = (id, instance.instance.clone());
            let version = self.fleet.placed_version(&key).unwrap_or(instance.version);
            let traffic = instance.traffic.clone().unwrap_or_default();
            let entry = self.analysed.entry(key.0.clone()).or_default();
            entry
                .samples
                .record(&instance.instance, version, now_ms, traffic);
            sampled.insert(key.0);
        }
        sampled
    }

    /// Judges the rollouts of `services` over their windows: a metric gate that fails, or a
    /// window still short of requests past `deploy.progress_deadline`, fails the rollout.
    /// Returns the services whose rollout failed now.
    pub(super) fn gate_analysis(&mut self, services: &BTreeSet<ServiceId>) -> BTreeSet<ServiceId> {
        let now_ms = unix_ms();
        let mut failed = BTreeSet::new();
        let mut shown = false;
        for id in services {
            let Some(judged) = self.judge(id, now_ms) else {
                self.analysed.remove(id);
                continue;
            };
            let (Some(status), Some(plan)) = (self.rollouts.get(id), self.plan(id)) else {
                continue;
            };
            let waited = now_ms.saturating_sub(status.updated_at);
            let passing = judged.verdict == Verdict::Pass;
            let failure = match judged.verdict {
                Verdict::Fail(failure) => Some(failure),
                Verdict::Pending if waited >= millis(plan.deadline) => {
                    Some(short_of_requests(&judged.figures, waited, plan.deadline))
                }
                _ => None,
            };
            let entry = self.analysed.entry(id.clone()).or_default();
            let due = now_ms >= entry.shown_at + SHOW_EVERY_MS || passing != entry.shown_passing;
            if failure.is_some() || due {
                entry.shown_at = now_ms;
                entry.shown_passing = passing;
                self.rollouts.set_analysis(id, judged.figures);
                shown = true;
            }
            if let Some(failure) = failure {
                if self.rollouts.fail_gate(id, plan.version, failure, now_ms) {
                    failed.insert(id.clone());
                }
            }
        }
        if !failed.is_empty() {
            self.rollouts_changed(&failed);
        } else if shown {
            self.report_due.notify_one();
        }
        failed
    }

    /// Whether service `id`'s rollout waits for its metric gates before it moves on (its
    /// canary's next step, or its end): until a full window passed since the step began and
    /// the new version took requests, with enough of them, within the bounds. A promoted
    /// rollout is not held.
    pub(super) fn analysis_holds(&self, id: &ServiceId) -> bool {
        let Some(status) = self.rollouts.get(id) else {
            return false;
        };
        let waiting_for_canary = status.strategy == Strategy::Canary && status.weights.is_empty();
        // A promoted rollout is not held for its window (the gates still judge what comes).
        if status.phase != RolloutPhase::Progressing || waiting_for_canary || status.promoted {
            return false;
        }
        let now_ms = unix_ms();
        match (self.analysis_of(id), self.judge(id, now_ms)) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(analysis), Some(judged)) => {
                let full = judged
                    .since
                    .is_some_and(|since| now_ms.saturating_sub(since) >= millis(analysis.window.0));
                !(full && judged.verdict == Verdict::Pass)
            }
        }
    }

    /// Service `id`'s `deploy.analysis`, while its current version's rollout is progressing.
    fn analysis_of(&self, id: &ServiceId) -> Option<&Analysis> {
        let deployment = self.deployments.get(id)?;
        let status = self.rollouts.get(id)?;
        let progressing =
            status.phase == RolloutPhase::Progressing && status.version == deployment.version;
        progressing.then_some(())?;
        deployment.spec.deploy.analysis.as_ref()
    }

    /// Service `id`'s window ending at `now_ms`, judged.
    fn judge(&self, id: &ServiceId, now_ms: u64) -> Option<Judged> {
        let analysis = self.analysis_of(id)?;
        let status = self.rollouts.get(id)?;
        let samples = &self.analysed.get(id)?.samples;
        let window = analysis.window.0;
        let from = now_ms.saturating_sub(millis(window));
        let new = samples.figures(status.version, from);
        let old = samples.figures(status.previous, from);
        let verdict = judge(analysis, window, &new, &old);
        let since = samples
            .first_traffic(status.version)
            .map(|first| first.max(status.updated_at));
        Some(Judged {
            figures: AnalysisFigures {
                at: now_ms,
                window_ms: millis(window),
                versions: vec![new, old],
            },
            verdict,
            since,
        })
    }

    /// Forgets the figures of services no longer under analysis.
    pub(super) fn prune_analysed(&mut self) {
        let now_ms = unix_ms();
        let windows: BTreeMap<ServiceId, u64> = self
            .analysed
            .keys()
            .filter_map(|id| Some((id.clone(), millis(self.analysis_of(id)?.window.0))))
            .collect();
        self.analysed.retain(|id, analysed| match windows.get(id) {
            Some(window) => {
                analysed.samples.prune(now_ms.saturating_sub(*window));
                true
            }
            None => false,
        });
    }
}

/// The failure of a window still short of requests past the deadline.
fn short_of_requests(figures: &AnalysisFigures, waited: u64, deadline: Duration) -> GateFailure {
    let new = figures.versions.first();
    GateFailure {
        gate: Gate::ProgressDeadline,
        instance: None,
        observed: waited,
        limit: millis(deadline),
        reason: format!(
            "only {} requests of version {} in the analysis window after {:.1}s (analysis.min_requests not reached within progress_deadline {:.1}s)",
            new.map_or(0, |f| f.requests),
            new.map_or(0, |f| f.version),
            waited as f64 / 1000.0,
            deadline.as_secs_f64()
        ),
        at: 0,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
