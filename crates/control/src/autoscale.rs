//! Autoscaling decisions (`scale.targets`), as pure functions of the figures the node proxies
//! count for a service's instances, the figures their agents read from the instances'
//! cgroups, and time: [`Load`] turns each instance's reported figures (cumulative time in
//! flight, requests answered and CPU time; memory in use) into the service's load on its
//! target's figure, averaged over the span between two reports (not a sample of one moment:
//! requests that come and go make the count in flight at any moment swing well away from its
//! average), and [`Autoscaler`] turns the load over time into a desired instance count with a
//! reason. The load on a percentage target is the sum of the instances' percentages (two
//! instances at 60% of their CPU are 120%, which wants 3 at a target of 50).
//!
//! Each look recommends `ceil(load / target)` instances at once, however many more that is
//! (the current count while the load per instance is within [`TOLERANCE`] of the target),
//! within `scale.min`, `scale.max` and what the region's nodes can run. A recommendation
//! stands from the start of the span its figures were averaged over. The desired count goes
//! up to the least recommendation in force during the last [`UP_WINDOW`] (a rise measured
//! over that long), and down to the greatest in force during the last `scale.down_window` (a
//! fall that lasted that long): fast up, slow down, and no flapping in between. Nothing here
//! reads a clock or does I/O.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use meridian_model::{HumanDuration, Resources, Scale, ScaleTarget};

/// How long the load must ask for more instances before they are added: a second, less
/// the jitter of reports sent every second (a figure averaged over the second before a
/// report that arrives a little early still counts as a second of it).
pub const UP_WINDOW: Duration = Duration::from_millis(900);
/// How far the load per instance may be from the target, as a fraction of it, before the
/// count changes.
pub const TOLERANCE: f64 = 0.1;
/// How old an instance's figures may get before they no longer count (agents report every
/// 2 s at least).
pub const STALE_AFTER: Duration = Duration::from_secs(6);
/// The shortest time over which an instance's figures are averaged: closer reports keep the
/// earlier base.
pub const RATE_SPAN: Duration = Duration::from_millis(500);

/// How a service scales in a region, from its effective `scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Fewest instances.
    pub min: u32,
    /// Most instances.
    pub max: u32,
    /// The figure and its value per instance.
    pub target: ScaleTarget,
    /// The stabilisation window of scale-down.
    pub down_window: Duration,
    /// What each instance may use of what a percentage target is of (cores, or bytes); 1
    /// for the other targets.
    pub whole: f64,
}

impl Policy {
    /// The policy of `scale` for instances with `resources`, if it names a usable target (a
    /// percentage target needs the resource it is of; a service that sleeps keeps one
    /// instance placed, asleep while idle: see [`Scale::fewest_placed`]).
    pub fn of(scale: &Scale, resources: &Resources) -> Option<Policy> {
        let target = scale.targets?.target()?;
        let whole = match target {
            ScaleTarget::Concurrency(_) | ScaleTarget::RequestsPerSecond(_) => 1.0,
            ScaleTarget::CpuPercent(_) => f64::from(resources.cpu?.millis()) / 1000.0,
            ScaleTarget::MemoryPercent(_) => resources.memory?.bytes() as f64,
        };
        Some(Policy {
            min: scale.fewest_placed(),
            max: scale.max,
            target,
            down_window: scale.down_window(),
            whole,
        })
    }
}

/// One instance's figures as its agent reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// Requests in flight now.
    pub in_flight: u64,
    /// Requests answered so far (cumulative).
    pub requests: u64,
    /// Request-microseconds in flight so far (cumulative; 0 from an older agent).
    pub busy_micros: u64,
    /// CPU time the instance's run used so far, in microseconds (cumulative; 0 where its
    /// agent reads no cgroup).
    pub cpu_micros: u64,
    /// Memory the instance uses now, in bytes.
    pub memory_bytes: u64,
}

/// What one instance last reported, with its figures averaged since the report before.
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: Instant,
    in_flight: u64,
    memory_bytes: u64,
    /// The base of the averages: when, and the cumulative figures then.
    base: (Instant, Figures),
    /// The figures averaged over the last span measured, once one was.
    averaged: Option<Averaged>,
}

/// An instance's figures averaged over a span between two of its reports.
#[derive(Debug, Clone, Copy)]
struct Averaged {
    /// When the span started.
    since: Instant,
    /// Requests answered per second.
    rate: f64,
    /// Requests in flight on average (`None` from an older agent, which counts no time in
    /// flight: its count of the moment stands in).
    concurrency: Option<f64>,
    /// Cores used on average.
    cpu: f64,
}

impl Averaged {
    /// The averages from `base` to `figures` reported `span` later (at least [`RATE_SPAN`]).
    fn between(since: Instant, base: Figures, figures: Figures, span: Duration) -> Averaged {
        let seconds = span.as_secs_f64();
        let busy = figures.busy_micros - base.busy_micros;
        Averaged {
            since,
            rate: (figures.requests - base.requests) as f64 / seconds,
            concurrency: (figures.busy_micros > 0).then(|| busy as f64 / 1e6 / seconds),
            cpu: (figures.cpu_micros - base.cpu_micros) as f64 / 1e6 / seconds,
        }
    }
}

/// A service's load on its target's figure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// The load: the sum over the instances whose figures are fresh.
    pub load: f64,
    /// The start of the span it was averaged over (the latest among the instances'), or the
    /// moment of the figures where none is averaged yet.
    pub since: Instant,
}

/// A service's instances' latest figures.
#[derive(Debug, Default)]
pub struct Load {
    by_instance: BTreeMap<String, Seen>,
}

impl Load {
    /// Records `figures` reported for `instance` at `at`.
    pub fn record(&mut self, instance: &str, at: Instant, figures: Figures) {
        let seen = self.by_instance.entry(instance.to_owned()).or_insert(Seen {
            at,
            in_flight: 0,
            memory_bytes: 0,
            base: (at, figures),
            averaged: None,
        });
        seen.at = at;
        seen.in_flight = figures.in_flight;
        seen.memory_bytes = figures.memory_bytes;
        let (since, base) = seen.base;
        let anew = figures.requests < base.requests
            || figures.busy_micros < base.busy_micros
            || figures.cpu_micros < base.cpu_micros;
        if anew {
            // Counted anew (its node proxy restarted, or it did): measured from here.
            seen.base = (at, figures);
            seen.averaged = None;
        } else if at.duration_since(since) >= RATE_SPAN {
            let span = at.duration_since(since);
            seen.averaged = Some(Averaged::between(since, base, figures, span));
            seen.base = (at, figures);
        }
    }

    /// Forgets the instances `keep` does not keep.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.by_instance.retain(|name, _| keep(name));
    }

    /// The service's load on `policy`'s figure at `now`: the sum over the instances whose
    /// figures are fresh of their last averages (and of their memory in use). Before an
    /// instance has one, it adds nothing (what it carries shows in the others' last averages
    /// until they report again); after, an older agent, which counts no time in flight, adds
    /// its count in flight at its last report.
    pub fn total(&self, policy: &Policy, now: Instant) -> Measured {
        let percent = |used: f64| used / policy.whole * 100.0;
        let fresh = self
            .by_instance
            .values()
            .filter(|seen| now.saturating_duration_since(seen.at) <= STALE_AFTER);
        let mut since: Option<Instant> = None;
        let mut load = 0.0;
        for seen in fresh {
            let averaged = seen.averaged;
            let (value, from) = match (policy.target, averaged) {
                (ScaleTarget::Concurrency(_), Some(a)) => match a.concurrency {
                    Some(concurrency) => (concurrency, a.since),
                    None => (seen.in_flight as f64, seen.at),
                },
                (ScaleTarget::RequestsPerSecond(_), Some(a)) => (a.rate, a.since),
                (ScaleTarget::CpuPercent(_), Some(a)) => (percent(a.cpu), a.since),
                (ScaleTarget::MemoryPercent(_), _) => (percent(seen.memory_bytes as f64), seen.at),
                (_, None) => continue,
            };
            load += value;
            since = Some(since.map_or(from, |s| s.max(from)));
        }
        Measured {
            load,
            since: since.unwrap_or(now),
        }
    }
}

/// What a look at the load says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inputs {
    /// The service's load on its target's figure.
    pub load: f64,
    /// The start of the span the load was averaged over ([`Measured::since`]).
    pub since: Instant,
    /// Instances in service now.
    pub current: u32,
    /// Most instances of the service the region's nodes can run now.
    pub room: u32,
}

/// An autoscaling decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Instances wanted.
    pub desired: u32,
    /// The count wanted before this decision.
    pub previous: u32,
    /// Why, with the inputs, in words.
    pub reason: String,
}

impl Decision {
    /// Whether the decision changes the count wanted.
    pub fn changed(&self) -> bool {
        self.desired != self.previous
    }
}

/// One service's autoscaling in a region: the recommendations over the last down window (and
/// the one in force at its start), and the count it wants.
#[derive(Debug)]
pub struct Autoscaler {
    recommendations: VecDeque<(Instant, u32)>,
    desired: u32,
}

impl Autoscaler {
    /// Starts wanting `current` instances, within the policy's bounds.
    pub fn new(policy: &Policy, current: u32) -> Autoscaler {
        Autoscaler {
            recommendations: VecDeque::new(),
            desired: current.clamp(policy.min, policy.max),
        }
    }

    /// The count wanted.
    pub fn desired(&self) -> u32 {
        self.desired
    }

    /// Looks at `inputs` at `now` (not earlier than the last look) under `policy`: records
    /// what they recommend and decides the count wanted.
    pub fn decide(&mut self, policy: &Policy, now: Instant, inputs: Inputs) -> Decision {
        let previous = self.desired.clamp(policy.min, policy.max);
        let (recommended, bound) = recommend(policy, previous, inputs);
        // It stands from when its figures were measured, never before the one before it.
        let last = self.recommendations.back().map(|(at, _)| *at);
        let from = inputs.since.min(now).max(last.unwrap_or(inputs.since));
        self.recommendations.push_back((from, recommended));
        self.forget_before(now, policy.down_window);
        let up = self.in_force(now, UP_WINDOW).map(|(least, _)| least);
        let down = self.in_force(now, policy.down_window).map(|(_, most)| most);
        let (desired, why) = match (up, down) {
            (Some(up), _) if up > previous => (up, "up"),
            (_, Some(down)) if down < previous => (down, "down"),
            _ if recommended > previous => (previous, "rising"),
            _ if recommended < previous => (previous, "falling"),
            _ => (previous, "steady"),
        };
        self.desired = desired;
        let figures = describe(policy, inputs);
        let reason = match why {
            "up" => format!("scaling up from {previous} to {desired}{bound}: {figures}"),
            "down" => format!(
                "scaling down from {previous} to {desired}{bound}: {figures} for {}",
                HumanDuration(policy.down_window)
            ),
            "rising" => format!(
                "{recommended} wanted{bound} once the rise lasts {}: {figures}",
                HumanDuration(UP_WINDOW)
            ),
            "falling" => format!(
                "{recommended} wanted{bound} once the fall lasts {}: {figures}",
                HumanDuration(policy.down_window)
            ),
            _ => format!("steady at {desired}{bound}: {figures}"),
        };
        Decision {
            desired,
            previous,
            reason,
        }
    }

    /// Drops the recommendations that went out of force before the window ending at `now`.
    fn forget_before(&mut self, now: Instant, window: Duration) {
        let Some(start) = now.checked_sub(window) else {
            return;
        };
        while self
            .recommendations
            .get(1)
            .is_some_and(|(at, _)| *at <= start)
        {
            self.recommendations.pop_front();
        }
    }

    /// The least and greatest recommendations in force during the `window` ending at `now`;
    /// `None` unless the recommendations go back that far.
    fn in_force(&self, now: Instant, window: Duration) -> Option<(u32, u32)> {
        let start = now.checked_sub(window)?;
        let first = self
            .recommendations
            .iter()
            .rposition(|(at, _)| *at <= start)?;
        let values = self.recommendations.iter().skip(first).map(|(_, n)| *n);
        let least = values.clone().min()?;
        let most = values.max()?;
        Some((least, most))
    }
}

/// The count `inputs` recommend when `desired` are wanted, with what bounded it (`""`, or
/// ` (max)`, ` (min)`, ` (node capacity)`).
fn recommend(policy: &Policy, desired: u32, inputs: Inputs) -> (u32, &'static str) {
    let per_instance = f64::from(policy.target.per_instance());
    let ratio = inputs.load / (f64::from(desired.max(1)) * per_instance);
    let wanted = if desired > 0 && (ratio - 1.0).abs() <= TOLERANCE {
        desired
    } else {
        // Float to integer casts saturate.
        (inputs.load / per_instance).ceil() as u32
    };
    let room = inputs.room.max(inputs.current).max(policy.min);
    if wanted > policy.max && policy.max <= room {
        (policy.max, " (max)")
    } else if wanted > room {
        (room, " (node capacity)")
    } else if wanted < policy.min {
        (policy.min, " (min)")
    } else {
        (wanted, "")
    }
}

/// The inputs in words: `concurrency 7.5 over 1 instance, target 2 each`.
fn describe(policy: &Policy, inputs: Inputs) -> String {
    let plural = if inputs.current == 1 { "" } else { "s" };
    format!(
        "{} {:.1} over {} instance{plural}, target {} each",
        policy.target.name(),
        inputs.load,
        inputs.current,
        policy.target.per_instance()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn policy() -> Policy {
        Policy {
            min: 1,
            max: 3,
            target: ScaleTarget::Concurrency(2),
            down_window: Duration::from_secs(300),
            whole: 1.0,
        }
    }

    /// `load` measured at `at` (not averaged) over `current` instances.
    fn inputs(load: f64, current: u32, at: Instant) -> Inputs {
        Inputs {
            load,
            since: at,
            current,
            room: 100,
        }
    }

    /// Looks every second from `start + from` s to `start + to` s (inclusive) at `load`
    /// carried by as many instances as wanted; returns the decisions that changed the count,
    /// with the second they came at.
    fn run(
        scaler: &mut Autoscaler,
        policy: &Policy,
        start: Instant,
        seconds: std::ops::RangeInclusive<u64>,
        load: impl Fn(u64) -> f64,
    ) -> Vec<(u64, u32)> {
        let mut changes = Vec::new();
        for s in seconds {
            let current = scaler.desired();
            let at = start + SECOND * s as u32;
            let decision = scaler.decide(policy, at, inputs(load(s), current, at));
            if decision.changed() {
                changes.push((s, decision.desired));
            }
        }
        changes
    }

    #[test]
    fn a_sustained_rise_scales_up_within_two_seconds_and_never_beyond_max() {
        let (policy, start) = (policy(), Instant::now());
        let mut scaler = Autoscaler::new(&policy, 1);
        assert!(run(&mut scaler, &policy, start, 0..=10, |_| 1.0).is_empty());
        // 5 in flight at 2 each: 3 wanted, from second 11 on.
        let changes = run(&mut scaler, &policy, start, 11..=20, |_| 5.0);
        assert_eq!(
            changes,
            [(12, 3)],
            "one second after the first look at the rise"
        );
        // 20 in flight would want 10: max is 3.
        let decision = scaler.decide(
            &policy,
            start + SECOND * 21,
            inputs(20.0, 3, start + SECOND * 21),
        );
        assert_eq!(decision.desired, 3);
        assert!(
            decision.reason.starts_with("steady at 3 (max)"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn a_single_spike_does_not_scale_up() {
        let (policy, start) = (policy(), Instant::now());
        let mut scaler = Autoscaler::new(&policy, 1);
        let spiky = |s: u64| if s == 5 { 6.0 } else { 1.0 };
        assert!(run(&mut scaler, &policy, start, 0..=30, spiky).is_empty());
    }

    #[test]
    fn scale_down_waits_for_the_whole_window_and_never_goes_below_min() {
        let policy = Policy {
            down_window: Duration::from_secs(60),
            ..policy()
        };
        let start = Instant::now();
        let mut scaler = Autoscaler::new(&policy, 1);
        assert_eq!(run(&mut scaler, &policy, start, 0..=5, |_| 6.0), [(1, 3)]);
        // The load stops at second 6; a blip at 30 restarts the wait.
        let quiet = |s: u64| if s == 30 { 6.0 } else { 0.0 };
        let changes = run(&mut scaler, &policy, start, 6..=200, quiet);
        assert_eq!(changes, [(91, 1)], "60 s after the last look that wanted 3");
        let decision = scaler.decide(
            &policy,
            start + SECOND * 201,
            inputs(0.0, 1, start + SECOND * 201),
        );
        assert!(
            decision.reason.starts_with("steady at 1 (min)"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn a_load_near_the_target_holds_the_count() {
        let policy = Policy {
            max: 10,
            down_window: Duration::from_secs(10),
            ..policy()
        };
        let start = Instant::now();
        let mut scaler = Autoscaler::new(&policy, 4);
        // 8.7 in flight over 4 at 2 each is within 10% (9 would be 5 instances otherwise), and
        // 7.3 too (4 otherwise anyway, 3.65 → 4): noise around the target changes nothing.
        let noisy = |s: u64| if s % 2 == 0 { 8.7 } else { 7.3 };
        assert!(run(&mut scaler, &policy, start, 0..=120, noisy).is_empty());
        assert_eq!(scaler.desired(), 4);
    }

    #[test]
    fn node_capacity_bounds_the_count() {
        let (policy, start) = (policy(), Instant::now());
        let mut scaler = Autoscaler::new(&policy, 1);
        let full = |at| Inputs {
            room: 2,
            ..inputs(6.0, 1, at)
        };
        scaler.decide(&policy, start, full(start));
        let decision = scaler.decide(&policy, start + SECOND, full(start + SECOND));
        assert_eq!(decision.desired, 2);
        assert!(
            decision.reason.starts_with("scaling up from 1 to 2 (node capacity): concurrency 6.0 over 1 instance, target 2 each"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn rates_come_from_the_reported_counts_and_stale_instances_do_not_count() {
        let start = Instant::now();
        let mut load = Load::default();
        let figures = |in_flight, requests| Figures {
            in_flight,
            requests,
            ..Figures::default()
        };
        load.record("web-0", start, figures(2, 100));
        load.record("web-1", start, figures(1, 0));
        load.record("web-0", start + SECOND, figures(3, 150));
        load.record("web-1", start + SECOND, figures(1, 30));
        // Too close to measure a rate from: the earlier one stays.
        load.record(
            "web-1",
            start + SECOND + Duration::from_millis(100),
            figures(0, 31),
        );
        let now = start + SECOND * 2;
        let rps = &Policy {
            target: ScaleTarget::RequestsPerSecond(10),
            ..policy()
        };
        assert_eq!(load.total(rps, now).load, 80.0);
        assert_eq!(load.total(&policy(), now).load, 3.0);
        // web-1's proxy restarted: counted anew.
        load.record("web-1", start + SECOND * 3, figures(0, 2));
        assert_eq!(load.total(rps, start + SECOND * 3).load, 50.0);
        assert_eq!(load.total(rps, start + SECOND * 10).load, 0.0, "both stale");
        load.retain(|name| name == "web-0");
        assert_eq!(load.total(rps, start + SECOND * 3).load, 50.0);
    }

    #[test]
    fn concurrency_is_averaged_between_reports_and_a_second_of_it_scales_up_at_once() {
        let (policy, start) = (policy(), Instant::now());
        let mut load = Load::default();
        let mut scaler = Autoscaler::new(&policy, 1);
        let report = |load: &mut Load, s: u32, in_flight, busy_seconds: u64| {
            let figures = Figures {
                in_flight,
                requests: 0,
                busy_micros: busy_seconds * 1_000_000,
                ..Figures::default()
            };
            load.record("web-0", start + SECOND * s, figures);
        };
        let look = |scaler: &mut Autoscaler, load: &Load, s: u32| {
            let now = start + SECOND * s;
            let measured = load.total(&policy, now);
            let inputs = Inputs {
                load: measured.load,
                since: measured.since,
                current: scaler.desired(),
                room: 100,
            };
            scaler.decide(&policy, now, inputs)
        };
        // A second at 1 in flight on average, whatever the count at the report.
        report(&mut load, 0, 0, 10);
        report(&mut load, 1, 3, 11);
        assert_eq!(load.total(&policy, start + SECOND).load, 1.0);
        assert!(!look(&mut scaler, &load, 1).changed());
        // Then a second at 6 on average (caught at a report with 2 in flight): the figure of
        // the whole second past asks for 3 at 2 each, and gets them at this look.
        report(&mut load, 2, 2, 17);
        let decision = look(&mut scaler, &load, 2);
        assert_eq!(decision.desired, 3, "{}", decision.reason);
        assert!(
            decision
                .reason
                .starts_with("scaling up from 1 to 3: concurrency 6.0 over 1 instance"),
            "{}",
            decision.reason
        );
        // A new instance adds nothing before it has an average (what it carries is still in
        // web-0's), and does not move when the load was measured from.
        let figures = Figures {
            in_flight: 3,
            requests: 1,
            busy_micros: 500_000,
            ..Figures::default()
        };
        load.record("web-1", start + SECOND * 2, figures);
        let measured = load.total(&policy, start + SECOND * 2);
        assert_eq!((measured.load, measured.since), (6.0, start + SECOND));
    }

    #[test]
    fn half_a_second_of_a_rise_is_not_enough() {
        let (policy, start) = (policy(), Instant::now());
        let mut scaler = Autoscaler::new(&policy, 1);
        let half = Duration::from_millis(500);
        let at = |t: Duration| Inputs {
            since: start + t - half,
            ..inputs(6.0, 1, start + t)
        };
        scaler.decide(&policy, start, inputs(1.0, 1, start));
        assert!(!scaler.decide(&policy, start + SECOND, at(SECOND)).changed());
        let decision = scaler.decide(&policy, start + SECOND + half, at(SECOND + half));
        assert_eq!(decision.desired, 3, "{}", decision.reason);
    }

    #[test]
    fn cpu_and_memory_are_percentages_of_each_instance_s_resources() {
        let start = Instant::now();
        let resources: Resources =
            serde_json::from_str(r#"{"cpu": 0.5, "memory": "100Mi"}"#).unwrap();
        let scale = |targets: &str| -> Scale {
            serde_json::from_str(&format!(r#"{{"min":1,"max":10,"targets":{targets}}}"#)).unwrap()
        };
        let cpu = Policy::of(&scale(r#"{"cpu_percent":50}"#), &resources).unwrap();
        let memory = Policy::of(&scale(r#"{"memory_percent":80}"#), &resources).unwrap();
        assert_eq!(
            Policy::of(&scale(r#"{"cpu_percent":50}"#), &Resources::default()),
            None,
            "no resources.cpu, nothing to scale on"
        );
        let mut load = Load::default();
        let figures = |cpu_seconds: f64, mib: u64| Figures {
            cpu_micros: (cpu_seconds * 1e6) as u64,
            memory_bytes: mib << 20,
            ..Figures::default()
        };
        load.record("web-0", start, figures(10.0, 10));
        load.record("web-1", start, figures(0.0, 10));
        // Over 2 s, web-0 used 0.8 s of CPU (0.4 cores: 80% of 0.5), web-1 1.2 s (120%:
        // beyond its quota is not possible, but the figures say what they say).
        load.record("web-0", start + SECOND * 2, figures(10.8, 60));
        load.record("web-1", start + SECOND * 2, figures(1.2, 90));
        let now = start + SECOND * 2;
        let measured = load.total(&cpu, now);
        assert!((measured.load - 200.0).abs() < 1e-9, "{measured:?}");
        assert_eq!(measured.since, start);
        let measured = load.total(&memory, now);
        assert!((measured.load - 150.0).abs() < 1e-9, "{measured:?}");
        assert_eq!(
            measured.since, now,
            "memory in use is a figure of the moment"
        );
        // 200% of CPU at 50% each wants 4; 150% of memory at 80% each wants 2.
        let mut scaler = Autoscaler::new(&cpu, 2);
        let look = |scaler: &mut Autoscaler, policy: &Policy, measured: Measured| {
            let inputs = Inputs {
                load: measured.load,
                since: measured.since,
                current: 2,
                room: 100,
            };
            scaler.decide(policy, now, inputs)
        };
        scaler.decide(&cpu, start, inputs(100.0, 2, start));
        let decision = look(&mut scaler, &cpu, load.total(&cpu, now));
        assert_eq!(decision.desired, 4, "{}", decision.reason);
        assert!(
            decision.reason.starts_with(
                "scaling up from 2 to 4: cpu_percent 200.0 over 2 instances, target 50 each"
            ),
            "{}",
            decision.reason
        );
        let mut scaler = Autoscaler::new(&memory, 2);
        let decision = look(&mut scaler, &memory, load.total(&memory, now));
        assert_eq!(
            decision.reason,
            "steady at 2: memory_percent 150.0 over 2 instances, target 80 each"
        );
        // A run that started again is measured from its new start.
        load.record("web-1", start + SECOND * 3, figures(0.1, 10));
        let measured = load.total(&cpu, start + SECOND * 3);
        assert!((measured.load - 80.0).abs() < 1e-9, "{measured:?}");
    }
}
