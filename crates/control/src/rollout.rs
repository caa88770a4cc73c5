//! One step of a rolling deploy in a region, as a pure function: given a service's instances in
//! service (which run the current version, which are ready), which ones leave service and how
//! many new ones start. New instances start beside the old ones; an old instance leaves only
//! when enough others are ready, so that at most `scale + surge` instances are in service and at
//! least `scale - unavailable` of them ready. With no old instance left, the same step keeps
//! the service at its scale (starts the missing, lets the surplus go).
//!
//! [`blue_green`] is the step of the other strategy ([`step_for`] picks); [`gates`] says when
//! a new version fails, [`analysis`] when its requests fail the metric gates; [`progress`] keeps each service's rollout, which returns the region to
//! the previous version when a gate fails.

pub mod analysis;
pub mod blue_green;
pub mod gates;
pub mod progress;

use meridian_model::Strategy;

/// One instance in service (instances already draining are not members).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    /// Its id, `<service>-<n>`.
    pub id: &'a str,
    /// Whether it runs the current version (or one that runs the same).
    pub current: bool,
    /// Whether it is ready: running and passing its health checks, as its agent reports.
    pub ready: bool,
}

/// What a step does.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// How many new instances of the current version to start.
    pub start: u32,
    /// The instances that leave service (drain, then stop), by id.
    pub drain: Vec<String>,
}

/// The bounds of a rollout to `scale` instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Instances wanted.
    pub scale: u32,
    /// How many more may be in service during the rollout.
    pub surge: u32,
    /// How many fewer may be ready during the rollout.
    pub unavailable: u32,
}

/// The next step for `members` within `bounds` under `strategy`. `Canary` holds the new set
/// beside the old one; a canary at its last step (or returning to the previous version) steps
/// as `BlueGreen`.
pub fn step_for(strategy: Strategy, bounds: Bounds, members: &[Member<'_>]) -> Step {
    match strategy {
        Strategy::Rolling => step(bounds, members),
        Strategy::BlueGreen => blue_green::step(bounds, members),
        Strategy::Canary => blue_green::hold(bounds, members),
    }
}

/// The step of a paused rollout: no instance leaves service, and new ones start only to make
/// up `bounds.scale` instances in service (one lost with its node).
pub fn paused(bounds: Bounds, members: &[Member<'_>]) -> Step {
    let missing = (bounds.scale as usize).saturating_sub(members.len());
    Step {
        start: u32::try_from(missing).unwrap_or(u32::MAX),
        drain: Vec::new(),
    }
}

/// The next rolling step for `members` within `bounds`. Old instances that are not ready leave first,
/// then ready old ones as far as the ready count allows; current instances beyond the scale
/// leave (the ones not ready first, then the highest numbers); new instances start up to the
/// scale as far as the surge allows.
pub fn step(bounds: Bounds, members: &[Member<'_>]) -> Step {
    let count = |pick: &dyn Fn(&Member<'_>) -> bool| members.iter().filter(|m| pick(m)).count();
    let scale = bounds.scale as usize;
    let min_ready = bounds.scale.saturating_sub(bounds.unavailable) as usize;
    let max_total = scale + bounds.surge as usize;
    let mut drain: Vec<&Member<'_>> = Vec::new();

    // Surplus of the current version: the ones not ready, then the highest numbers.
    let mut current: Vec<&Member<'_>> = members.iter().filter(|m| m.current).collect();
    current.sort_by_key(|m| (m.ready, std::cmp::Reverse(number(m.id))));
    let surplus = current.len().saturating_sub(scale);
    drain.extend(current.iter().take(surplus).copied());

    // Old instances: those not ready serve nothing; ready ones as far as readiness allows.
    let mut ready = count(&|m| m.ready) - drain.iter().filter(|m| m.ready).count();
    let mut old: Vec<&Member<'_>> = members.iter().filter(|m| !m.current).collect();
    old.sort_by_key(|m| (m.ready, std::cmp::Reverse(number(m.id))));
    for member in old {
        if member.ready {
            if ready <= min_ready {
                break;
            }
            ready -= 1;
        }
        drain.push(member);
    }

    let in_service = members.len() - drain.len();
    let missing = scale.saturating_sub(current.len());
    let room = max_total.saturating_sub(in_service);
    Step {
        start: u32::try_from(missing.min(room)).unwrap_or(u32::MAX),
        drain: drain.into_iter().map(|m| m.id.to_owned()).collect(),
    }
}

/// The number in an instance id `<service>-<n>` (0 when there is none).
fn number(id: &str) -> u32 {
    crate::fleet::number_of(id).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two instances, one more while rolling.
    pub(super) const TWO: Bounds = Bounds {
        scale: 2,
        surge: 1,
        unavailable: 0,
    };

    fn member(id: &str, current: bool, ready: bool) -> Member<'_> {
        Member { id, current, ready }
    }

    fn step_of(bounds: Bounds, members: &[(&str, bool, bool)]) -> (u32, Vec<String>) {
        step_with(step, bounds, members)
    }

    /// What `step` does for `members` given as (id, current, ready), within `bounds`.
    pub(super) fn step_with(
        step: fn(Bounds, &[Member<'_>]) -> Step,
        bounds: Bounds,
        members: &[(&str, bool, bool)],
    ) -> (u32, Vec<String>) {
        let members: Vec<Member<'_>> = members
            .iter()
            .map(|&(id, current, ready)| member(id, current, ready))
            .collect();
        let Step { start, drain } = step(bounds, &members);
        (start, drain)
    }

    #[test]
    fn a_rolling_deploy_surges_one_and_removes_an_old_one_only_once_a_new_one_is_ready() {
        // The new version is applied: one new instance starts, nothing leaves.
        let old = [("web-0", false, true), ("web-1", false, true)];
        assert_eq!(step_of(TWO, &old), (1, vec![]));
        // It is starting: nothing more.
        let starting = [old[0], old[1], ("web-2", true, false)];
        assert_eq!(step_of(TWO, &starting), (0, vec![]));
        // It is ready: an old one leaves, and the second new one starts.
        let one_ready = [old[0], old[1], ("web-2", true, true)];
        assert_eq!(step_of(TWO, &one_ready), (1, vec!["web-1".to_owned()]));
        let second = [old[0], ("web-2", true, true), ("web-3", true, false)];
        assert_eq!(step_of(TWO, &second), (0, vec![]));
        // Both ready: the last old one leaves; then the service is steady.
        let both = [old[0], ("web-2", true, true), ("web-3", true, true)];
        assert_eq!(step_of(TWO, &both), (0, vec!["web-0".to_owned()]));
        let done = [("web-2", true, true), ("web-3", true, true)];
        assert_eq!(step_of(TWO, &done), (0, vec![]));
    }

    #[test]
    fn unavailability_lets_old_instances_leave_before_new_ones_are_ready() {
        let bounds = Bounds {
            scale: 2,
            surge: 0,
            unavailable: 1,
        };
        let old = [("web-0", false, true), ("web-1", false, true)];
        assert_eq!(step_of(bounds, &old), (1, vec!["web-1".to_owned()]));
    }

    #[test]
    fn old_instances_that_are_not_ready_leave_at_once() {
        // And their places go to new ones at once: three in service at most.
        let members = [("web-0", false, false), ("web-1", false, true)];
        assert_eq!(step_of(TWO, &members), (2, vec!["web-0".to_owned()]));
    }

    #[test]
    fn a_new_version_that_never_gets_ready_leaves_the_old_ones_serving() {
        let stuck = [
            ("web-0", false, true),
            ("web-1", false, true),
            ("web-2", true, false),
        ];
        assert_eq!(step_of(TWO, &stuck), (0, vec![]));
    }

    #[test]
    fn a_steady_service_starts_what_is_missing_and_lets_the_surplus_go() {
        assert_eq!(step_of(TWO, &[]), (2, vec![]));
        let three = [
            ("web-0", true, true),
            ("web-1", true, false),
            ("web-2", true, true),
            ("web-10", true, true),
        ];
        assert_eq!(
            step_of(TWO, &three),
            (0, vec!["web-1".to_owned(), "web-10".to_owned()])
        );
        let down = Bounds { scale: 0, ..TWO };
        assert_eq!(
            step_of(down, &[("web-0", true, true)]),
            (0, vec!["web-0".to_owned()])
        );
    }

    #[test]
    fn scaling_down_in_the_same_deploy_keeps_the_new_scale_ready() {
        let bounds = Bounds { scale: 1, ..TWO };
        let old = [
            ("web-0", false, true),
            ("web-1", false, true),
            ("web-2", false, true),
        ];
        let (start, drain) = step_of(bounds, &old);
        assert_eq!((start, drain.len()), (1, 2));
        assert!(!drain.contains(&"web-0".to_owned()), "{drain:?}");
    }
}
