//! One step of a blue-green deploy in a region, as a pure function: a full set of the new
//! version starts beside the old one, which keeps all the traffic until every new instance is
//! ready; then every old instance leaves service at once. With no old instance left (or to
//! return to the previous version while the old set still serves), it is a rolling step. A
//! canary holds the two sets side by side ([`hold`]) until its last step.

use super::{Bounds, Member, Step};

/// The next step for `members` within `bounds` (only `scale` counts: the new set is a full
/// one, whatever the surge).
pub fn step(bounds: Bounds, members: &[Member<'_>]) -> Step {
    full_set(bounds, members, true)
}

/// As [`step`], but the old set stays in service beside the new one, ready or not.
pub fn hold(bounds: Bounds, members: &[Member<'_>]) -> Step {
    full_set(bounds, members, false)
}

fn full_set(bounds: Bounds, members: &[Member<'_>], switch: bool) -> Step {
    let scale = bounds.scale as usize;
    let current = members.iter().filter(|m| m.current);
    let ready = current.clone().filter(|m| m.ready).count();
    let old = members.iter().filter(|m| !m.current);
    if old.clone().next().is_none() || (switch && ready >= scale) {
        // Steady, or the new set is ready: the switch (a rolling step with every old
        // instance free to leave, since enough are ready without them).
        let all = Bounds {
            surge: bounds.scale,
            ..bounds
        };
        return super::step(all, members);
    }
    // Old instances that are not ready serve nothing: they leave at once.
    Step {
        start: u32::try_from(scale.saturating_sub(current.count())).unwrap_or(u32::MAX),
        drain: old.filter(|m| !m.ready).map(|m| m.id.to_owned()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::tests::TWO;

    fn step_of(list: &[(&str, bool, bool)]) -> (u32, Vec<String>) {
        crate::rollout::tests::step_with(step, TWO, list)
    }

    #[test]
    fn a_full_new_set_starts_and_takes_over_at_once_when_all_of_it_is_ready() {
        let old = [("web-0", false, true), ("web-1", false, true)];
        assert_eq!(
            step_of(&old),
            (2, vec![]),
            "the whole set, beyond the surge"
        );
        let one = [
            old[0],
            old[1],
            ("web-2", true, true),
            ("web-3", true, false),
        ];
        assert_eq!(step_of(&one), (0, vec![]), "the old set serves on");
        let all = [old[0], old[1], ("web-2", true, true), ("web-3", true, true)];
        let (start, mut drain) = step_of(&all);
        drain.sort();
        assert_eq!(
            (start, drain),
            (0, vec!["web-0".to_owned(), "web-1".to_owned()])
        );
        let done = [("web-2", true, true), ("web-3", true, true)];
        assert_eq!(step_of(&done), (0, vec![]));
    }

    #[test]
    fn a_canary_holds_both_sets() {
        let both = [
            ("web-0", false, true),
            ("web-1", false, true),
            ("web-2", true, true),
            ("web-3", true, true),
        ];
        assert_eq!(
            crate::rollout::tests::step_with(hold, TWO, &both),
            (0, vec![])
        );
    }

    #[test]
    fn old_instances_that_are_not_ready_leave_at_once() {
        let members = [("web-0", false, false), ("web-1", false, true)];
        assert_eq!(step_of(&members), (2, vec!["web-0".to_owned()]));
    }

    #[test]
    fn returning_to_the_old_set_while_it_serves_drains_the_new_one_at_once() {
        // The previous version is current again; the new set is the old one now.
        let back = [
            ("web-0", true, true),
            ("web-1", true, true),
            ("web-2", false, true),
            ("web-3", false, false),
        ];
        let (start, mut drain) = step_of(&back);
        drain.sort();
        assert_eq!(
            (start, drain),
            (0, vec!["web-2".to_owned(), "web-3".to_owned()])
        );
    }
}
