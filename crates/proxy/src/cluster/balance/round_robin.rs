//! Weighted round robin, per priority level.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Balance;
use crate::cluster::members::{Members, PickRules};
use crate::cluster::priority::{Level, Levels};
use crate::fields::OutgoingFields;

/// Weighted round robin: each level's members in their [`Turns`].
#[derive(Debug)]
pub(in crate::cluster) struct RoundRobin {
    /// By level position: its turns (none for a level without weight) and the next ticket.
    levels: Vec<(Option<Turns>, AtomicU64)>,
}

impl RoundRobin {
    /// Turns over `levels`, whose members have `weights` (by endpoint index).
    pub(in crate::cluster) fn new(weights: &[u32], levels: &Levels) -> RoundRobin {
        let levels = levels
            .all()
            .map(|level| {
                let level_weights: Vec<u32> = level.members.iter().map(|i| weights[*i]).collect();
                (Turns::new(&level_weights), AtomicU64::new(0))
            })
            .collect();
        RoundRobin { levels }
    }

    /// The next eligible member of `level` in its weighted round-robin turns; after a few
    /// ineligible turns, the next eligible member in order (so that unhealthy heavy members
    /// cost a bounded number of steps).
    fn next_in_turn(&self, members: &Members, level: &Level, rules: &PickRules) -> Option<usize> {
        let (turns, next) = self.levels.get(level.position)?;
        let turns = turns.as_ref()?;
        let mut position = 0;
        for _ in 0..level.members.len().min(8) {
            position = turns.turn(next.fetch_add(1, Ordering::Relaxed));
            let index = level.members[position];
            if members.eligible(index, rules) {
                return Some(index);
            }
        }
        let count = level.members.len();
        (1..count)
            .map(|step| level.members[(position + step) % count])
            .find(|i| members.eligible(*i, rules))
    }
}

impl Balance for RoundRobin {
    fn pick(&self, members: &Members, _: OutgoingFields<'_>, rules: &PickRules) -> Option<usize> {
        let chosen = members.levels.choose(&members.endpoints, rules)?;
        // A retry whose level has no usable endpoint but the one it avoids goes to the next
        // level that has one.
        self.next_in_turn(members, chosen, rules).or_else(|| {
            members
                .levels
                .by_priority
                .iter()
                .find_map(|l| self.next_in_turn(members, l, rules))
        })
    }
}

/// Interleaved weighted round robin over a level, without a schedule of `sum(weights)` entries:
/// a cycle is `max weight` rounds, and round `r` visits the members whose weight exceeds `r`.
/// The rounds come in a low-discrepancy order (by the fractional part of `r` × the golden
/// ratio), so that heavy members' turns are spread over the cycle rather than bunched at its
/// end. Memory is O(members + max weight), whatever the weights (at most 1000 each).
#[derive(Debug)]
struct Turns {
    /// Positions in the level's `members`, heaviest first (configuration order among equals):
    /// round `r` visits the first (members heavier than `r`) of these.
    by_weight: Vec<usize>,
    /// The rounds in the order they come, each with the visits up to its end (cumulative); the
    /// last end is the cycle's length.
    rounds: Vec<(u32, u64)>,
}

impl Turns {
    fn new(weights: &[u32]) -> Option<Turns> {
        let mut by_weight: Vec<usize> = (0..weights.len()).collect();
        by_weight.sort_by_key(|i| std::cmp::Reverse(weights[*i]));
        let heaviest = weights.iter().copied().max()?;
        // Members heavier than r, for each round r: counted from the heaviest down.
        let mut heavier = vec![0u64; heaviest as usize];
        for w in weights {
            if let Some(count) = heavier.get_mut((*w as usize).saturating_sub(1)) {
                *count += 1;
            }
        }
        let mut above = 0;
        for count in heavier.iter_mut().rev() {
            above += *count;
            *count = above;
        }
        let spread = |r: u32| (f64::from(r) * 0.618_033_988_749_895).fract();
        let mut order: Vec<u32> = (0..heaviest).collect();
        order.sort_by(|a, b| spread(*a).total_cmp(&spread(*b)));
        let mut end = 0;
        let rounds = order
            .into_iter()
            .map(|r| {
                end += heavier[r as usize];
                (r, end)
            })
            .collect();
        Some(Turns { by_weight, rounds })
    }

    /// The member position whose turn `ticket` is.
    fn turn(&self, ticket: u64) -> usize {
        let cycle = self.rounds.last().map_or(1, |(_, end)| *end).max(1);
        let t = ticket % cycle;
        let at = self.rounds.partition_point(|(_, end)| *end <= t);
        let start = at
            .checked_sub(1)
            .map_or(0, |previous| self.rounds[previous].1);
        self.by_weight[(t - start) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_turns_stay_small_and_follow_weights_exactly() {
        // 1,000 endpoints of weights 1..=1000: a schedule would hold 500,500 entries.
        let weights: Vec<u32> = (1..=1000).collect();
        let turns = Turns::new(&weights).unwrap();
        assert_eq!(turns.by_weight.len(), 1000);
        assert_eq!(turns.rounds.len(), 1000);
        let cycle = turns.rounds.last().unwrap().1;
        assert_eq!(cycle, 500_500);
        let mut visits = vec![0u32; weights.len()];
        for ticket in 0..cycle {
            visits[turns.turn(ticket)] += 1;
        }
        assert_eq!(
            visits, weights,
            "one cycle visits each member `weight` times"
        );
        // Spread out: over each tenth of the cycle, the heaviest member gets about a tenth of
        // its turns.
        let tenth = cycle / 10;
        for part in 0..10 {
            let window = part * tenth..(part + 1) * tenth;
            let heaviest = window.filter(|t| turns.turn(*t) == 999).count();
            assert!(
                (80..=120).contains(&heaviest),
                "{heaviest} of 100 in tenth {part}"
            );
        }
    }
}
