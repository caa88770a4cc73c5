//! A cluster's endpoints and what is derived from them (priority levels, the balancer's state),
//! replaced as a whole when the endpoints change, so that a request sees one consistent set.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::balance::{self, Balance};
use super::endpoint::Endpoint;
use super::priority::{Level, Levels};
use crate::config::{EndpointConfig, HashOn, LbPolicy};
use crate::fields::OutgoingFields;

/// Which endpoints a pick may choose.
pub(super) struct PickRules {
    pub(super) now_ns: u64,
    /// Ignore health and ejections (too few endpoints are usable).
    pub(super) panic: bool,
    /// An endpoint to avoid (the one a retry follows).
    pub(super) avoid: Option<usize>,
    /// Only endpoints with fewer requests outstanding than this (`u32::MAX`: any).
    pub(super) below: u32,
}

/// A cluster's endpoints, their levels, and its balancer over them.
#[derive(Debug)]
pub(super) struct Members {
    pub(super) endpoints: Vec<Arc<Endpoint>>,
    pub(super) levels: Levels,
    balancer: Box<dyn Balance>,
}

impl Members {
    /// Builds the members from validated endpoints, balanced by `lb` (ring hash on `hash_on`).
    /// An endpoint whose address is in `previous` is that same endpoint (its health, streaks,
    /// outlier state and load signals carry on, whatever its new weight or priority); the
    /// look-up is by hash, O(n) in all.
    pub(super) fn build(
        configs: &[EndpointConfig],
        (lb, hash_on): (LbPolicy, &HashOn),
        previous: Option<&Members>,
    ) -> Members {
        let known: HashMap<SocketAddr, &Arc<Endpoint>> = previous
            .map(|p| p.endpoints.iter().map(|e| (e.addr, e)).collect())
            .unwrap_or_default();
        let mut endpoints = Vec::with_capacity(configs.len());
        let mut weights = Vec::with_capacity(configs.len());
        let mut priority_of = Vec::with_capacity(configs.len());
        for config in configs {
            let Ok(addr) = config.address.parse::<SocketAddr>() else {
                continue;
            };
            let endpoint = match known.get(&addr) {
                Some(old) => Arc::clone(old),
                None => match Endpoint::new(addr) {
                    Some(new) => Arc::new(new),
                    None => continue,
                },
            };
            endpoints.push(endpoint);
            weights.push(config.weight);
            priority_of.push(config.priority);
        }
        let levels = Levels::build(&priority_of, &weights);
        let balancer = balance::new(lb, hash_on, &endpoints, &weights, &levels);
        Members {
            endpoints,
            levels,
            balancer,
        }
    }

    /// The balancer's pick for a request with `fields` under `rules`.
    pub(super) fn pick_index(
        &self,
        fields: OutgoingFields<'_>,
        rules: &PickRules,
    ) -> Option<usize> {
        self.balancer.pick(self, fields, rules)
    }

    /// Whether the endpoint at `index` may be picked under `rules`.
    pub(super) fn eligible(&self, index: usize, rules: &PickRules) -> bool {
        let endpoint = &self.endpoints[index];
        Some(index) != rules.avoid
            && (rules.panic || endpoint.usable(rules.now_ns))
            && (rules.below == u32::MAX || endpoint.outstanding() < rules.below)
    }

    /// An eligible member of `level` sampled by weight.
    pub(super) fn sample(&self, level: &Level, rules: &PickRules) -> Option<usize> {
        let total = *level.cumulative.last()?;
        for _ in 0..4 {
            let roll = fastrand::u32(0..total);
            let slot = level.cumulative.partition_point(|c| *c <= roll);
            let index = level.members[slot];
            if self.eligible(index, rules) {
                return Some(index);
            }
        }
        level
            .members
            .iter()
            .copied()
            .find(|i| self.eligible(*i, rules))
    }

    /// An eligible member of `level` other than `first`, weighted at random (`first` when it is
    /// the only one). Two draws of the same endpoint would hand it the request whatever its load:
    /// with two endpoints, a quarter of all requests would go to the worse one.
    pub(super) fn sample_other(&self, level: &Level, rules: &PickRules, first: usize) -> usize {
        if level.members.len() < 2 {
            // No other to draw (a cluster of one endpoint, as many are).
            return first;
        }
        for _ in 0..4 {
            match self.sample(level, rules) {
                Some(other) if other != first => return other,
                _ => {}
            }
        }
        level
            .members
            .iter()
            .copied()
            .find(|i| *i != first && self.eligible(*i, rules))
            .unwrap_or(first)
    }
}
