//! Power of two choices: two endpoints of the chosen priority level drawn by weight, the less
//! loaded one taken (by peak-EWMA latency × outstanding requests, or by outstanding requests).

use super::Balance;
use crate::cluster::members::{Members, PickRules};
use crate::fields::OutgoingFields;

/// Power of two choices, by latency or by outstanding requests.
#[derive(Debug)]
pub(in crate::cluster) struct PowerOfTwo {
    by_latency: bool,
}

impl PowerOfTwo {
    /// By peak-EWMA latency × outstanding requests.
    pub(in crate::cluster) const BY_LATENCY: PowerOfTwo = PowerOfTwo { by_latency: true };
    /// By outstanding requests.
    pub(in crate::cluster) const BY_OUTSTANDING: PowerOfTwo = PowerOfTwo { by_latency: false };
}

impl Balance for PowerOfTwo {
    fn pick(&self, members: &Members, _: OutgoingFields<'_>, rules: &PickRules) -> Option<usize> {
        let endpoints = &members.endpoints;
        let chosen = members.levels.choose(endpoints, rules)?;
        let (level, a) = match members.sample(chosen, rules) {
            Some(a) => (chosen, a),
            // A retry whose level has no usable endpoint but the one it avoids goes to the next
            // level that has one.
            None => members
                .levels
                .by_priority
                .iter()
                .find_map(|level| members.sample(level, rules).map(|a| (level, a)))?,
        };
        let b = members.sample_other(level, rules, a);
        let (ea, eb) = (&endpoints[a], &endpoints[b]);
        let a_better = if self.by_latency {
            ea.cost() <= eb.cost()
        } else {
            ea.outstanding() <= eb.outstanding()
        };
        Some(if a_better { a } else { b })
    }
}
