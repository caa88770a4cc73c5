//! The metric gates of a rollout (`deploy.analysis`), as pure functions over the cumulative
//! request figures the agents report for each instance ([`Traffic`], counted by the node
//! proxies in front of the instances): [`Samples`] keeps a service's figures over time,
//! [`Samples::figures`] gives a version's requests, success rate and p99 over a window (the
//! p99 from the instances' merged histograms, never an average of percentiles), and [`judge`]
//! says whether they pass, absolutely and relative to the previous version in the same window.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use meridian_model::analysis::Increase;
use meridian_model::{Analysis, Gate, GateFailure, VersionFigures};
use meridian_xds::meridian::{Traffic, LATENCY_BOUNDS_MS};

/// One instance's reported figures over time, oldest first.
#[derive(Debug, Default)]
struct InstanceSamples {
    version: u64,
    samples: VecDeque<(u64, Traffic)>,
}

/// A service's reported request figures, per instance, over the last window (and one sample
/// before it, from which the window counts).
#[derive(Debug, Default)]
pub struct Samples {
    instances: BTreeMap<String, InstanceSamples>,
    /// When each version first had requests answered, in Unix milliseconds.
    first_traffic: BTreeMap<u64, u64>,
}

impl Samples {
    /// Records that instance `instance` of `version` had answered `traffic` (cumulative) at
    /// `at_ms`.
    pub fn record(&mut self, instance: &str, version: u64, at_ms: u64, traffic: Traffic) {
        let entry = self.instances.entry(instance.to_owned()).or_default();
        if entry.version != version {
            // Another version under the same id: its figures start over.
            entry.samples.clear();
            entry.version = version;
        }
        let before = entry.samples.front().map_or(0, |(_, t)| t.requests);
        if traffic.requests > before {
            self.first_traffic.entry(version).or_insert(at_ms);
        }
        entry.samples.push_back((at_ms, traffic));
    }

    /// Forgets what no window ending now or later needs: samples before the last one at or
    /// before `from_ms`, and instances not reported since then (they are gone).
    pub fn prune(&mut self, from_ms: u64) {
        self.instances.retain(|_, instance| {
            let samples = &mut instance.samples;
            while samples.get(1).is_some_and(|(at, _)| *at <= from_ms) {
                samples.pop_front();
            }
            samples.back().is_some_and(|(at, _)| *at > from_ms)
        });
    }

    /// When `version` first had requests answered, as far as these samples go back.
    pub fn first_traffic(&self, version: u64) -> Option<u64> {
        self.first_traffic.get(&version).copied()
    }

    /// `version`'s figures over the window from `from_ms` to the last samples: each instance
    /// counts from its last sample at or before `from_ms` (or its first, if it is younger).
    pub fn figures(&self, version: u64, from_ms: u64) -> VersionFigures {
        let mut requests = 0;
        let mut failures = 0;
        let mut buckets = vec![0u64; LATENCY_BOUNDS_MS.len() + 1];
        for instance in self.instances.values().filter(|i| i.version == version) {
            let samples = &instance.samples;
            let (Some((_, first)), Some((_, last))) = (samples.front(), samples.back()) else {
                continue;
            };
            let base = samples
                .iter()
                .rev()
                .find(|(at, _)| *at <= from_ms)
                .map_or(first, |(_, t)| t);
            // Counters that went down started over (a new node proxy): all of them count.
            let restarted = last.requests < base.requests;
            let since = |now: u64, then: u64| {
                if restarted {
                    now
                } else {
                    now.saturating_sub(then)
                }
            };
            requests += since(last.requests, base.requests);
            failures += since(last.failures, base.failures);
            for (i, sum) in buckets.iter_mut().enumerate() {
                let at = |t: &Traffic| t.latency_buckets.get(i).copied().unwrap_or(0);
                *sum += since(at(last), at(base));
            }
        }
        let success_rate = if requests == 0 {
            10_000
        } else {
            let ok = requests.saturating_sub(failures.min(requests));
            u32::try_from(ok * 10_000 / requests).unwrap_or(10_000)
        };
        VersionFigures {
            version,
            requests,
            failures,
            success_rate,
            p99_ms: p99(&buckets),
        }
    }
}

/// The 99th percentile of the requests counted in `buckets` (per bucket of
/// [`LATENCY_BOUNDS_MS`], then the slower ones), in whole milliseconds (see
/// [`meridian_model::quantile_ms`]); 0 without requests.
pub fn p99(buckets: &[u64]) -> u64 {
    // Float to integer casts saturate; the quantile is at most the last bound.
    meridian_model::quantile_ms(buckets, 990).map_or(0, |ms| ms as u64)
}

/// What the figures of a window say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Too few requests of the new version to say.
    Pending,
    /// Within every bound.
    Pass,
    /// Out of a bound: the gate failed (its time is left to the caller).
    Fail(GateFailure),
}

/// Judges the new version's figures `new` over `window` against `analysis`: absolutely, and
/// relative to the previous version's `old` in the same window when it had at least
/// `min_requests` too.
pub fn judge(
    analysis: &Analysis,
    window: Duration,
    new: &VersionFigures,
    old: &VersionFigures,
) -> Verdict {
    if new.requests < analysis.min_requests {
        return Verdict::Pending;
    }
    let compared = (old.requests >= analysis.min_requests).then_some(old);
    let fail = |gate, observed: u64, limit: u64, bound: String| {
        Verdict::Fail(GateFailure {
            gate,
            instance: None,
            observed,
            limit,
            reason: format!("{} over {}s ({bound})", describe(new), window.as_secs_f64(),)
                + &compared
                    .map(|o| format!("; previous {}", describe(o)))
                    .unwrap_or_default(),
            at: 0,
        })
    };
    let rate = u64::from(new.success_rate);
    if let Some(min) = analysis.min_success() {
        if rate < u64::from(min) {
            return fail(
                Gate::SuccessRate,
                rate,
                min.into(),
                format!("success_rate.min {}", percent(min.into())),
            );
        }
    }
    if let (Some(drop), Some(old)) = (analysis.max_drop(), compared) {
        let limit = u64::from(old.success_rate.saturating_sub(drop));
        if rate < limit {
            return fail(
                Gate::SuccessRate,
                rate,
                limit,
                format!("success_rate.max_drop {}", percent(drop.into())),
            );
        }
    }
    if let Some(max) = analysis.max_p99() {
        let limit = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        if new.p99_ms > limit {
            return fail(
                Gate::Latency,
                new.p99_ms,
                limit,
                format!("p99.max {limit}ms"),
            );
        }
    }
    if let (Some(increase), Some(old)) = (analysis.max_increase(), compared) {
        let (limit, bound) = match increase {
            Increase::By(by) => {
                let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
                (
                    old.p99_ms.saturating_add(by),
                    format!("p99.max_increase {by}ms"),
                )
            }
            Increase::Share(share) => (
                old.p99_ms + old.p99_ms * u64::from(share) / 10_000,
                format!("p99.max_increase {}", percent(share.into())),
            ),
        };
        if new.p99_ms > limit {
            return fail(Gate::Latency, new.p99_ms, limit, bound);
        }
    }
    Verdict::Pass
}

/// A version's figures as a person reads them.
pub fn describe(f: &VersionFigures) -> String {
    format!(
        "version {}: {} requests, {} succeeded, p99 {}ms",
        f.version,
        f.requests,
        percent(f.success_rate.into()),
        f.p99_ms
    )
}

/// Basis points as a percentage (`99.50%`).
fn percent(basis_points: u64) -> String {
    format!("{}.{:02}%", basis_points / 100, basis_points % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `requests` of which `failures` failed, all in the bucket ending at `ms`.
    fn traffic(requests: u64, failures: u64, ms: u64) -> Traffic {
        let mut latency_buckets = vec![0; LATENCY_BOUNDS_MS.len() + 1];
        let bucket = LATENCY_BOUNDS_MS.partition_point(|b| *b < ms);
        latency_buckets[bucket] = requests;
        Traffic {
            requests,
            failures,
            latency_buckets,
            ..Default::default()
        }
    }

    fn analysis(text: &str) -> Analysis {
        serde_json::from_str(text).unwrap()
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_window_counts_from_the_last_sample_before_it_and_merges_instances() {
        let mut samples = Samples::default();
        // web-0 (version 1) served 1000 requests before the window, 100 in it.
        samples.record("web-0", 1, 0, traffic(1_000, 0, 5));
        samples.record("web-0", 1, 10_000, traffic(1_100, 0, 5));
        // web-2 (version 2) is younger than the window: all of it counts.
        samples.record("web-2", 2, 6_000, traffic(0, 0, 5));
        samples.record("web-2", 2, 10_000, traffic(40, 2, 5));
        let old = samples.figures(1, 5_000);
        assert_eq!(
            (old.requests, old.failures, old.success_rate),
            (100, 0, 10_000)
        );
        let new = samples.figures(2, 5_000);
        assert_eq!(
            (new.requests, new.failures, new.success_rate),
            (40, 2, 9_500)
        );
        assert_eq!(samples.first_traffic(2), Some(10_000));
        // Pruned to a later window, the base moves on; the figures of that window stay right.
        samples.prune(6_000);
        assert_eq!(samples.figures(2, 6_000).requests, 40);
        samples.prune(20_000);
        assert_eq!(samples.figures(2, 20_000).requests, 0, "gone");
    }

    #[test]
    fn the_p99_comes_from_the_merged_histogram_not_an_average() {
        let mut samples = Samples::default();
        // 99 fast requests on one instance, 1 slow one on another: the 99th is fast.
        samples.record("web-2", 2, 0, traffic(0, 0, 1));
        samples.record("web-2", 2, 1_000, traffic(99, 0, 1));
        samples.record("web-3", 2, 0, traffic(0, 0, 1));
        samples.record("web-3", 2, 1_000, traffic(1, 0, 2_000));
        assert_eq!(samples.figures(2, 0).p99_ms, 1);
        // Interpolated within the bucket: 100 requests between 300 and 400 ms.
        assert_eq!(p99(&traffic(100, 0, 400).latency_buckets), 399);
        assert_eq!(p99(&traffic(10, 0, 60_000).latency_buckets), 10_000);
        assert_eq!(p99(&traffic(0, 0, 1).latency_buckets), 0);
    }

    fn figures(version: u64, requests: u64, success_rate: u32, p99_ms: u64) -> VersionFigures {
        VersionFigures {
            version,
            requests,
            failures: 0,
            success_rate,
            p99_ms,
        }
    }

    #[test]
    fn too_few_requests_give_no_verdict() {
        let gate = analysis(r#"{"min_requests": 20, "success_rate": {"min": "99%"}}"#);
        let new = figures(2, 19, 0, 0);
        assert_eq!(
            judge(&gate, SECOND, &new, &figures(1, 0, 0, 0)),
            Verdict::Pending
        );
        let new = figures(2, 20, 10_000, 0);
        assert_eq!(
            judge(&gate, SECOND, &new, &figures(1, 0, 0, 0)),
            Verdict::Pass
        );
    }

    #[test]
    fn absolute_bounds_fail_with_the_gate_and_figures() {
        let gate = analysis(r#"{"success_rate": {"min": "99%"}, "p99": {"max": "200ms"}}"#);
        let old = figures(1, 100, 10_000, 2);
        let Verdict::Fail(failure) = judge(&gate, SECOND, &figures(2, 40, 9_500, 2), &old) else {
            panic!("5 % errors pass");
        };
        assert_eq!(
            (failure.gate, failure.observed, failure.limit),
            (Gate::SuccessRate, 9_500, 9_900)
        );
        assert!(
            failure
                .reason
                .contains("version 2: 40 requests, 95.00% succeeded"),
            "{}",
            failure.reason
        );
        assert!(
            failure.reason.contains("success_rate.min 99.00%"),
            "{}",
            failure.reason
        );
        let Verdict::Fail(failure) = judge(&gate, SECOND, &figures(2, 40, 10_000, 399), &old)
        else {
            panic!("+300 ms passes");
        };
        assert_eq!(
            (failure.gate, failure.observed, failure.limit),
            (Gate::Latency, 399, 200)
        );
    }

    #[test]
    fn relative_bounds_compare_with_the_previous_version_when_it_had_enough_requests() {
        let gate =
            analysis(r#"{"success_rate": {"max_drop": "1%"}, "p99": {"max_increase": "50%"}}"#);
        let old = figures(1, 100, 9_000, 100);
        // 89.50 % against 90 %: within 1 point; 151 ms against 100 ms: beyond 50 %.
        assert_eq!(
            judge(&gate, SECOND, &figures(2, 40, 8_950, 150), &old),
            Verdict::Pass
        );
        let Verdict::Fail(failure) = judge(&gate, SECOND, &figures(2, 40, 8_950, 151), &old) else {
            panic!("+51 % passes");
        };
        assert_eq!((failure.gate, failure.limit), (Gate::Latency, 150));
        let Verdict::Fail(failure) = judge(&gate, SECOND, &figures(2, 40, 8_899, 100), &old) else {
            panic!("a drop of 1.01 points passes");
        };
        assert_eq!((failure.gate, failure.limit), (Gate::SuccessRate, 8_900));
        // Without enough requests of the previous version there is nothing to compare.
        let quiet = figures(1, 3, 10_000, 1);
        assert_eq!(
            judge(&gate, SECOND, &figures(2, 40, 5_000, 900), &quiet),
            Verdict::Pass
        );
        let by_time = analysis(r#"{"p99": {"max_increase": "100ms"}}"#);
        assert!(matches!(
            judge(&by_time, SECOND, &figures(2, 40, 10_000, 201), &old),
            Verdict::Fail(_)
        ));
    }
}
