//! Priority levels. Rule (as Envoy's): each level takes `min(100%, 1.4 × its usable fraction)`
//! of the traffic still unassigned, best level first, so a level keeps all traffic while at
//! least ~72% of its endpoints are usable and spills the rest to the next level as more fail. If
//! the levels together cover less than 100%, the shares are scaled up to 100%; below the
//! cluster's panic threshold, health is ignored and every endpoint is one level.

use std::sync::Arc;

use super::endpoint::Endpoint;
use super::members::PickRules;

/// How much headroom a priority level is assumed to have (Envoy's overprovisioning factor).
const OVERPROVISION: f64 = 1.4;

/// The endpoints of one priority level.
#[derive(Debug)]
pub(super) struct Level {
    /// Its place among the levels (best first; the level of every endpoint comes last), for
    /// balancers that keep state per level.
    pub(super) position: usize,
    /// Indices into the members' endpoints.
    pub(super) members: Vec<usize>,
    /// Cumulative weights of `members`, for weighted sampling.
    pub(super) cumulative: Vec<u32>,
}

impl Level {
    fn new(position: usize, members: Vec<usize>, weights: &[u32]) -> Level {
        let cumulative = members
            .iter()
            .scan(0u32, |sum, i| {
                *sum += weights[*i];
                Some(*sum)
            })
            .collect();
        Level {
            position,
            members,
            cumulative,
        }
    }

    /// The fraction of its endpoints (of `endpoints`) that are usable at `now_ns`.
    fn usable_fraction(&self, endpoints: &[Arc<Endpoint>], now_ns: u64) -> f64 {
        let usable = self
            .members
            .iter()
            .filter(|i| endpoints[**i].usable(now_ns))
            .count();
        usable as f64 / self.members.len().max(1) as f64
    }
}

/// A cluster's priority levels, best first, and every endpoint as one level for panic mode.
#[derive(Debug)]
pub(super) struct Levels {
    /// By priority, best first.
    pub(super) by_priority: Vec<Level>,
    /// Every endpoint, for panic mode.
    pub(super) everyone: Level,
}

impl Levels {
    /// The levels of endpoints with priorities `priority_of` and weights `weights`.
    pub(super) fn build(priority_of: &[u32], weights: &[u32]) -> Levels {
        let mut priorities = priority_of.to_vec();
        priorities.sort_unstable();
        priorities.dedup();
        let by_priority: Vec<Level> = priorities
            .iter()
            .enumerate()
            .map(|(position, p)| {
                let members = (0..priority_of.len())
                    .filter(|i| priority_of[*i] == *p)
                    .collect();
                Level::new(position, members, weights)
            })
            .collect();
        let everyone = Level::new(by_priority.len(), (0..weights.len()).collect(), weights);
        Levels {
            by_priority,
            everyone,
        }
    }

    /// Every level, the one of every endpoint last (positions in order).
    pub(super) fn all(&self) -> impl Iterator<Item = &Level> {
        self.by_priority.iter().chain([&self.everyone])
    }

    /// How much of the traffic the levels can take together (1.0: all of it), by the priority
    /// rule; below the panic threshold the cluster ignores health.
    pub(super) fn availability(&self, endpoints: &[Arc<Endpoint>], now_ns: u64) -> f64 {
        self.by_priority
            .iter()
            .map(|level| level.usable_fraction(endpoints, now_ns) * OVERPROVISION)
            .sum::<f64>()
            .min(1.0)
    }

    /// The level to use for this request, by the priority rule in the module doc.
    pub(super) fn choose(&self, endpoints: &[Arc<Endpoint>], rules: &PickRules) -> Option<&Level> {
        if rules.panic {
            return Some(&self.everyone);
        }
        let usable_fraction = |level: &Level| level.usable_fraction(endpoints, rules.now_ns);
        let first = self.by_priority.first()?;
        if usable_fraction(first) * OVERPROVISION >= 1.0 {
            return Some(first);
        }
        let mut shares = Vec::with_capacity(self.by_priority.len());
        let mut left = 1.0;
        for level in &self.by_priority {
            let share = (usable_fraction(level) * OVERPROVISION).min(left);
            shares.push(share);
            left -= share;
        }
        let total: f64 = shares.iter().sum();
        if total <= 0.0 {
            return None;
        }
        let mut roll = fastrand::f64() * total;
        for (level, share) in self.by_priority.iter().zip(&shares) {
            if roll < *share {
                return Some(level);
            }
            roll -= share;
        }
        self.by_priority
            .iter()
            .zip(&shares)
            .rev()
            .find(|(_, s)| **s > 0.0)
            .map(|(l, _)| l)
    }
}
